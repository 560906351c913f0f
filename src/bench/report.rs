//! The result of a run: one serde tree written as `result.json`, printed as a summary table,
//! and rendered as `report.html` by [`super::html`].

use std::fmt::Write as _;
use std::path::Path;

use super::check::Check;
use super::measure::{Measured, Percentiles};
use super::model::Timing;
use super::monitor::Sample;
use super::summaries::Seen;
use super::system::Machine;

/// The whole result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    /// PASS or FAIL, and why.
    pub verdict: Verdict,
    /// The command line, as typed.
    pub command: String,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
    /// Where it ran.
    pub machine: Machine,
    /// Which relay it measured.
    pub relay: RelayInfo,
    /// What it ran.
    pub scenario: ScenarioInfo,
    /// The model check.
    pub check: Check,
    /// Latency, compliance and series of the delivered alerts.
    pub alerts: Measured,
    /// Storm summaries watched beside the alerts (`--watch-summaries`), or null.
    pub summaries: Option<Seen>,
    /// What the publishers saw.
    pub ingest: Ingest,
    /// CPU and memory.
    pub resources: Resources,
    /// Periodic samples.
    pub samples: Vec<Sample>,
}

/// The verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// Model check passed and the SLA held.
    pub passed: bool,
    /// Every alert did what the model says.
    pub model_check_passed: bool,
    /// No alert missed its deadline by the relay's fault.
    pub sla_held: bool,
    /// One line.
    pub summary: String,
}

/// The relay measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayInfo {
    /// `child` (started by the benchmark) or `target` (`--target`).
    pub mode: String,
    /// Its gRPC URL.
    pub url: String,
    /// A child's `serve` command line.
    pub command: Option<String>,
    /// SLA breaches the relay counted itself (by acknowledgement), at the end.
    pub breaches_counted: Option<u64>,
}

/// The scenario.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioInfo {
    /// Preset names.
    pub presets: Vec<String>,
    /// What each preset scripted.
    pub descriptions: Vec<String>,
    /// The seed (replays the run).
    pub seed: u64,
    /// Fleet size.
    pub devices: u64,
    /// IDNO share of the fleet.
    pub idno_share: f64,
    /// Scripted outages.
    pub outages: u64,
    /// Event sends scheduled (repeats included).
    pub events: u64,
    /// Debounce and windows as run.
    pub timing: Timing,
    /// The time scale, said plainly.
    pub time_statement: String,
}

/// What the publishers saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Ingest {
    /// Publishers (CSP streams).
    pub publishers: usize,
    /// Events per batch at most.
    pub batch_size: usize,
    /// Event sends, resends included.
    pub sent: u64,
    /// Events in acknowledged batches.
    pub acked: u64,
    /// Accepted for the first time.
    pub accepted: u64,
    /// Acknowledged as duplicates.
    pub duplicates: u64,
    /// Rejected.
    pub rejected: u64,
    /// First rejection reasons.
    pub rejections: Vec<String>,
    /// Streams reopened after a failure.
    pub stream_retries: u64,
    /// From the first send to the last ack, seconds.
    pub publish_seconds: f64,
    /// Acknowledged events per second over `publish_seconds`.
    pub events_per_second: f64,
    /// Highest acknowledged-events rate between two samples.
    pub peak_events_per_second: f64,
    /// Largest delay of a send behind its schedule, ms.
    pub max_publish_lag_ms: i64,
}

/// CPU and memory.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Resources {
    /// Whether the relay's resources were measured (a child relay on Linux).
    pub measured: bool,
    /// What the numbers mean, or why there are none.
    pub note: String,
    /// Relay CPU seconds (user + system) over the run.
    pub relay_cpu_seconds: Option<f64>,
    /// Relay peak RSS (`VmHWM`), bytes.
    pub relay_peak_rss_bytes: Option<u64>,
    /// Relay RSS once serving with the registry loaded, before any event, bytes.
    pub relay_idle_rss_bytes: Option<u64>,
    /// Idle RSS / devices.
    pub bytes_per_device: Option<f64>,
    /// Most outages open at once (scripted).
    pub max_open_outages: u64,
    /// (Peak − idle RSS) / most outages open at once.
    pub bytes_per_open_outage: Option<f64>,
    /// The benchmark's own CPU seconds (it shares the machine).
    pub bench_cpu_seconds: Option<f64>,
    /// The benchmark's own peak RSS, bytes.
    pub bench_peak_rss_bytes: Option<u64>,
}

/// How the time scale is said in the report.
pub fn time_statement(timing: &Timing) -> String {
    let ms = |v: i64| {
        humantime::format_duration(std::time::Duration::from_millis(v.unsigned_abs())).to_string()
    };
    if (timing.scale - 1.0).abs() < f64::EPSILON {
        format!(
            "Real time: debounce {}, POA window {}, PRA window {}, as the SEC sets them.",
            ms(timing.debounce_ms),
            ms(timing.poa_window_ms),
            ms(timing.pra_window_ms)
        )
    } else {
        format!(
            "Compressed ×{}: scenario time runs {} times faster, with debounce {} (real: 3 min) \
             and POA/PRA windows {} / {} (real: 60 s) scaled together. Device timestamps are \
             real wall-clock times.",
            timing.scale,
            timing.scale,
            ms(timing.debounce_ms),
            ms(timing.poa_window_ms),
            ms(timing.pra_window_ms)
        )
    }
}

/// Writes `result.json` into `dir`.
pub fn write_json(result: &BenchResult, dir: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(dir.join("result.json"))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), result)?;
    Ok(())
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn percentile_row(out: &mut String, kind: &str, who: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "  {kind:<4} {who:<10} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}",
        thousands(p.count),
        p.p50,
        p.p90,
        p.p99,
        p.p999,
        p.max
    );
}

/// The summary table printed at the end of a run.
pub fn summary(result: &BenchResult) -> String {
    let mut out = String::new();
    let v = &result.verdict;
    let s = &result.scenario;
    let _ = writeln!(
        out,
        "outage-relay bench: {} — {}",
        if v.passed { "PASS" } else { "FAIL" },
        v.summary
    );
    let _ = writeln!(
        out,
        "scenario {} · {} devices · {} outages · seed {:#x}\n{}",
        s.presets.join(","),
        thousands(s.devices),
        thousands(s.outages),
        s.seed,
        s.time_statement
    );
    let c = &result.check;
    let _ = writeln!(
        out,
        "model check: {} — expected {}, received {}, missing {}, unexpected {}, duplicated {}, \
         double-emitted {}, misrouted {}, wrong fields {}, out of order {}, timing-dependent {} \
         ({} alerted), rejected events {}, parked {}",
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
    for example in c.examples.iter().take(10) {
        let _ = writeln!(out, "  {example}");
    }
    let i = &result.ingest;
    let _ = writeln!(
        out,
        "ingest: {} events acknowledged ({} accepted, {} duplicates, {} rejected) in {:.1} s: \
         {:.0} events/s, peak {:.0}/s; max publish lag {:.2} s; {} stream retries",
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
    if let Some(seen) = &result.summaries {
        let _ = writeln!(out, "storm summaries watched: {}", seen.line());
    }
    let _ = writeln!(
        out,
        "\nrelay share of latency, ms (max(due, sent) → received):\n  kind who          count     p50     p90     p99   p99.9     max"
    );
    for k in &result.alerts.kinds {
        percentile_row(&mut out, &k.kind, "all", &k.relay_share);
        for (name, p) in &k.per_subscriber {
            percentile_row(&mut out, "", name, p);
        }
    }
    let _ = writeln!(out, "due → received (end to end), ms:");
    for k in &result.alerts.kinds {
        percentile_row(&mut out, &k.kind, "all", &k.latency);
    }
    let _ = writeln!(
        out,
        "\nSLA:  kind    alerts       met  compliance  upstream  relay  relay-compliance  min slack"
    );
    for k in &result.alerts.kinds {
        let p = &k.compliance;
        let _ = writeln!(
            out,
            "      {:<4} {:>9} {:>9} {:>10.3}% {:>9} {:>6} {:>16.3}% {:>8} ms",
            k.kind,
            thousands(p.alerts),
            thousands(p.met),
            p.compliance_pct,
            p.breached_upstream,
            p.breached_relay,
            p.relay_compliance_pct,
            p.min_slack_ms
        );
    }
    if let Some(counted) = result.relay.breaches_counted {
        let _ = writeln!(
            out,
            "      the relay counted {counted} breaches itself (by ack)"
        );
    }
    let r = &result.resources;
    let _ = writeln!(out, "\nresources: {}", r.note);
    if r.measured {
        let _ = writeln!(
            out,
            "  relay CPU {:.1} s, peak RSS {}, idle RSS {} ({:.0} B/device), {:.0} B per open \
             outage (max open {})",
            r.relay_cpu_seconds.unwrap_or(0.0),
            mib(r.relay_peak_rss_bytes.unwrap_or(0)),
            mib(r.relay_idle_rss_bytes.unwrap_or(0)),
            r.bytes_per_device.unwrap_or(0.0),
            r.bytes_per_open_outage.unwrap_or(0.0),
            thousands(r.max_open_outages)
        );
    }
    let _ = writeln!(
        out,
        "  benchmark itself: CPU {:.1} s, peak RSS {}; wall {:.1} s",
        r.bench_cpu_seconds.unwrap_or(0.0),
        mib(r.bench_peak_rss_bytes.unwrap_or(0)),
        result.wall_seconds
    );
    out
}
