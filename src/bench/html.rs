//! `report.html`: one self-contained page (inline CSS and SVG, nothing fetched) that someone
//! who did not run the benchmark can open and read: a PASS/FAIL banner, the time scale said
//! plainly, the machine and command line, the tables of the summary, and plots of latency
//! per kind, latency and backlog over time, alerts and events per second, and relay memory.

use std::fmt::Write as _;
use std::path::Path;

use super::measure::Percentiles;
use super::report::{BenchResult, mib, thousands};
use super::svg::escape;

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1180px;color:#212529}\
.banner{padding:18px 24px;border-radius:8px;color:white;font-size:28px;font-weight:bold}\
.pass{background:#2b8a3e}.fail{background:#c92a2a}.banner small{display:block;font-size:15px;font-weight:normal;margin-top:6px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #dee2e6;padding:3px 8px;text-align:right}\
th{background:#f1f3f5}td.l,th.l{text-align:left}code{background:#f1f3f5;padding:2px 4px;word-break:break-all}\
.plots{display:flex;flex-wrap:wrap;gap:12px}.note{color:#495057}";

/// Writes `report.html` into `dir`.
pub fn write(result: &BenchResult, dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.html"), render(result))?;
    Ok(())
}

/// The page.
pub fn render(result: &BenchResult) -> String {
    let mut out = String::new();
    let v = &result.verdict;
    let s = &result.scenario;
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>outage-relay \
         bench: {}</title><style>{STYLE}</style></head><body>",
        if v.passed { "PASS" } else { "FAIL" }
    );
    let _ = write!(
        out,
        "<div class=\"banner {}\">{} — SLA {} · model check {}<small>{}</small></div>",
        if v.passed { "pass" } else { "fail" },
        if v.passed { "PASS" } else { "FAIL" },
        if v.sla_held { "held" } else { "NOT held" },
        if v.model_check_passed {
            "passed"
        } else {
            "FAILED"
        },
        escape(&v.summary)
    );
    let _ = write!(
        out,
        "<p><b>{}</b></p><p class=\"note\">{} · {} CPUs ({}) · {} build · started {}<br><code>{}</code></p>",
        escape(&s.time_statement),
        escape(&result.machine.hostname),
        result.machine.cpus,
        escape(&result.machine.cpu),
        escape(&result.machine.build),
        escape(&result.started_at),
        escape(&result.command)
    );
    sla_table(&mut out, result);
    super::plots::write(&mut out, result);
    latency_tables(&mut out, result);
    check_table(&mut out, result);
    run_table(&mut out, result);
    let r = &result.resources;
    let _ = write!(
        out,
        "<h2>Resources</h2><p class=\"note\">{}</p><table><tr><th class=\"l\">relay CPU</th><td>{}</td></tr><tr><th class=\"l\">relay peak RSS</th><td>{}</td></tr><tr><th class=\"l\">relay idle RSS (registry loaded)</th><td>{}</td></tr><tr><th class=\"l\">bytes per device</th><td>{}</td></tr><tr><th class=\"l\">bytes per open outage (max open {})</th><td>{}</td></tr><tr><th class=\"l\">benchmark CPU / peak RSS</th><td>{:.1} s / {}</td></tr></table>",
        escape(&r.note),
        r.relay_cpu_seconds
            .map_or("not measured".into(), |c| format!("{c:.1} s")),
        r.relay_peak_rss_bytes.map_or("not measured".into(), mib),
        r.relay_idle_rss_bytes.map_or("not measured".into(), mib),
        r.bytes_per_device
            .map_or("not measured".into(), |b| format!("{b:.0}")),
        thousands(r.max_open_outages),
        r.bytes_per_open_outage
            .map_or("not measured".into(), |b| format!("{b:.0}")),
        r.bench_cpu_seconds.unwrap_or(0.0),
        mib(r.bench_peak_rss_bytes.unwrap_or(0)),
    );
    out.push_str("</body></html>\n");
    out
}

fn run_table(out: &mut String, result: &BenchResult) {
    let s = &result.scenario;
    out.push_str("<h2>Run</h2><table>");
    let m = &result.machine;
    let rows = [
        (
            "command",
            format!("<code>{}</code>", escape(&result.command)),
        ),
        ("started", escape(&result.started_at)),
        (
            "scenario",
            format!(
                "{} — {} devices, {} outages, {} event sends, seed {:#x}",
                escape(&s.presets.join(",")),
                thousands(s.devices),
                thousands(s.outages),
                thousands(s.events),
                s.seed
            ),
        ),
        (
            "relay",
            format!(
                "{} at {}{}",
                escape(&result.relay.mode),
                escape(&result.relay.url),
                result
                    .relay
                    .command
                    .as_ref()
                    .map_or(String::new(), |c| format!("<br><code>{}</code>", escape(c)))
            ),
        ),
        (
            "machine",
            format!(
                "{} · {} · {} CPUs · {} RAM · Linux {} · load {} at start · {} build v{}",
                escape(&m.hostname),
                escape(&m.cpu),
                m.cpus,
                mib(m.memory_bytes),
                escape(&m.kernel),
                escape(&m.load_average),
                escape(&m.build),
                escape(&m.version)
            ),
        ),
        (
            "storm summaries",
            result.summaries.as_ref().map_or_else(
                || "not watched".to_owned(),
                |seen| format!("watched: {}", escape(&seen.line())),
            ),
        ),
        ("wall time", format!("{:.1} s", result.wall_seconds)),
    ];
    for (name, value) in rows {
        let _ = write!(
            out,
            "<tr><th class=\"l\">{name}</th><td class=\"l\">{value}</td></tr>"
        );
    }
    out.push_str("</table><ul>");
    for d in &s.descriptions {
        let _ = write!(out, "<li>{}</li>", escape(d));
    }
    out.push_str("</ul>");
}

fn sla_table(out: &mut String, result: &BenchResult) {
    out.push_str(
        "<h2>SLA compliance</h2><table><tr><th class=\"l\">kind</th><th>alerts</th><th>met</th>\
         <th>compliance</th><th>breached: upstream</th><th>breached: relay</th>\
         <th>relay compliance</th><th>min slack</th><th>median slack</th></tr>",
    );
    for k in &result.alerts.kinds {
        let c = &k.compliance;
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{:.3} %</td><td>{}</td><td>{}</td><td>{:.3} %</td><td>{} ms</td><td>{} ms</td></tr>",
            k.kind.to_uppercase(),
            thousands(c.alerts),
            thousands(c.met),
            c.compliance_pct,
            thousands(c.breached_upstream),
            thousands(c.breached_relay),
            c.relay_compliance_pct,
            c.min_slack_ms,
            c.median_slack_ms
        );
    }
    out.push_str(
        "</table><p class=\"note\">An alert met its SLA if the subscriber received it by its own \
         deadline; a miss is upstream's when the event that made it due was sent at or after \
         that deadline, the relay's otherwise.",
    );
    if let Some(counted) = result.relay.breaches_counted {
        let _ = write!(
            out,
            " The relay's own count (by acknowledgement): {}.",
            thousands(counted)
        );
    }
    out.push_str("</p>");
}

fn percentile_cells(out: &mut String, p: &Percentiles) {
    let _ = write!(
        out,
        "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        thousands(p.count),
        p.p50,
        p.p90,
        p.p99,
        p.p999,
        p.max
    );
}

fn latency_tables(out: &mut String, result: &BenchResult) {
    out.push_str(
        "<h2>Latency (ms)</h2><table><tr><th class=\"l\">kind</th><th class=\"l\">measure</th>\
         <th class=\"l\">subscriber</th><th>count</th><th>p50</th><th>p90</th><th>p99</th>\
         <th>p99.9</th><th>max</th></tr>",
    );
    for k in &result.alerts.kinds {
        let kind = k.kind.to_uppercase();
        let _ = write!(
            out,
            "<tr><td class=\"l\">{kind}</td><td class=\"l\">due → received</td><td class=\"l\">all</td>"
        );
        percentile_cells(out, &k.latency);
        let _ = write!(
            out,
            "<tr><td class=\"l\">{kind}</td><td class=\"l\">relay share</td><td class=\"l\">all</td>"
        );
        percentile_cells(out, &k.relay_share);
        for (name, p) in &k.per_subscriber {
            let _ = write!(
                out,
                "<tr><td class=\"l\">{kind}</td><td class=\"l\">relay share</td><td class=\"l\">{}</td>",
                escape(name)
            );
            percentile_cells(out, p);
        }
    }
    out.push_str(
        "</table><p class=\"note\">Relay share: from the later of the alert's due time and the \
         first send of the event that made it due, to receipt by the subscriber.</p>",
    );
}

fn check_table(out: &mut String, result: &BenchResult) {
    let c = &result.check;
    let i = &result.ingest;
    let _ = write!(
        out,
        "<h2>Correctness (model check: {})</h2><table><tr><th>expected</th><th>received</th>\
         <th>missing</th><th>unexpected</th><th>duplicated</th><th>double-emitted</th>\
         <th>misrouted</th><th>wrong fields</th><th>out of order</th><th>timing-dependent \
         (alerted)</th><th>rejected events</th><th>parked</th></tr><tr><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{} ({})</td><td>{}</td><td>{}</td></tr></table>",
        if c.passed { "passed" } else { "FAILED" },
        thousands(c.expected),
        thousands(c.received),
        c.missing,
        c.unexpected,
        c.duplicated,
        c.double_emitted,
        c.misrouted,
        c.wrong_fields,
        c.out_of_order,
        c.timing_dependent,
        c.timing_dependent_alerted,
        c.rejected_events,
        c.parked.map_or("?".to_owned(), |p| p.to_string())
    );
    if !c.examples.is_empty() {
        out.push_str("<ul>");
        for e in &c.examples {
            let _ = write!(out, "<li><code>{}</code></li>", escape(e));
        }
        out.push_str("</ul>");
    }
    let _ = write!(
        out,
        "<h2>Ingest</h2><p>{} publishers, batches of up to {}: {} events acknowledged ({} \
         accepted, {} duplicates, {} rejected) in {:.1} s — <b>{:.0} events/s</b>, peak {:.0}/s; \
         largest publish lag {:.2} s; {} stream retries.</p>",
        i.publishers,
        i.batch_size,
        thousands(i.acked),
        thousands(i.accepted),
        thousands(i.duplicates),
        i.rejected,
        i.publish_seconds,
        i.events_per_second,
        i.peak_events_per_second,
        i.max_publish_lag_ms as f64 / 1000.0,
        i.stream_retries
    );
}
