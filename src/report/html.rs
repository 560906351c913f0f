//! `compliance.html`: one self-contained page (inline CSS and SVG, nothing fetched): the
//! period, what each figure means, a summary per DNO, a day-by-day compliance line per DNO,
//! the latency histogram, and every row of `compliance.csv`.

use std::fmt::Write as _;

use super::aggregate::{BUCKET_EDGES_MS, Report, Row, compliance};
use super::period::format_day;
use crate::bench::svg::{Bars, Frame, Line, bar_chart, escape, line_chart};

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1180px;color:#212529}\
h1{font-size:24px;margin-bottom:4px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #dee2e6;padding:3px 8px;text-align:right}\
th{background:#f1f3f5}td.l,th.l{text-align:left}.bad{color:#c92a2a;font-weight:bold}\
.plots{display:flex;flex-wrap:wrap;gap:12px}.note{color:#495057;max-width:1100px}";

/// One colour per DNO line, in turn.
const COLOURS: [&str; 8] = [
    "#1c7ed6", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0c8599", "#5f3dc4", "#868e96",
];

/// The page of `report`.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let period = format!(
        "{} to {} (UTC days, both included)",
        format_day(report.period.first),
        format_day(report.period.last)
    );
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>outage-relay SLA \
         compliance {}</title><style>{STYLE}</style></head><body><h1>SLA compliance</h1>\
         <p><b>{}</b> · made {}</p>",
        escape(&period),
        escape(&period),
        report.made_at
    );
    out.push_str(
        "<p class=\"note\">An alert belongs to the day it became due. <b>Within SLA</b>: \
         acknowledged by the DNO at or before its deadline (due + the kind's SLA window). \
         <b>Late</b>: acknowledged after it, blamed on <i>upstream</i> when its event reached \
         the relay at or after the deadline, else on the <i>relay</i>. <b>Never</b>: not \
         acknowledged by the end of the period, or removed by retention unacknowledged. \
         <b>Pending</b>: not acknowledged, deadline still ahead. Compliance = within SLA / \
         (alerts − pending). Latency = acknowledgement time − due time.</p>",
    );
    summary(&mut out, report);
    out.push_str("<div class=\"plots\">");
    out.push_str(&compliance_chart(report));
    out.push_str(&latency_chart(report));
    out.push_str("</div>");
    rows(&mut out, &report.rows);
    out.push_str("</body></html>\n");
    out
}

/// Per DNO: every count over the period, and its compliance.
fn summary(out: &mut String, report: &Report) {
    out.push_str(
        "<table><tr><th class=\"l\">DNO</th><th>alerts</th><th>within SLA</th>\
         <th>late (relay)</th><th>late (upstream)</th><th>never</th><th>pending</th>\
         <th>compliance</th></tr>",
    );
    for name in &report.subscribers {
        let mut sums = [0u64; 6];
        for row in report.rows.iter().filter(|r| &r.subscriber == name) {
            for (sum, value) in sums.iter_mut().zip(counts(row)) {
                *sum += value;
            }
        }
        summary_row(out, &escape(name), sums);
    }
    summary_row(out, "<b>all</b>", report.totals());
    out.push_str("</table>");
}

fn counts(row: &Row) -> [u64; 6] {
    [
        row.alerts,
        row.within_sla,
        row.late_relay,
        row.late_upstream,
        row.never_delivered,
        row.pending,
    ]
}

fn summary_row(out: &mut String, name: &str, sums: [u64; 6]) {
    let _ = write!(out, "<tr><td class=\"l\">{name}</td>");
    for (index, value) in sums.iter().enumerate() {
        let bad = (2..=4).contains(&index) && *value > 0;
        let _ = write!(
            out,
            "<td{}>{value}</td>",
            if bad { " class=\"bad\"" } else { "" }
        );
    }
    let _ = write!(
        out,
        "<td>{}</td></tr>",
        percent(compliance(sums[1], sums[0] - sums[5]))
    );
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |pct| format!("{pct:.2}%"))
}

/// Compliance per day, one line per DNO.
fn compliance_chart(report: &Report) -> String {
    let first = report.period.first;
    let lines: Vec<Line<'_>> = report
        .subscribers
        .iter()
        .zip(COLOURS.iter().cycle())
        .map(|(name, colour)| Line {
            name,
            color: colour,
            points: report
                .daily_compliance(name)
                .into_iter()
                .map(|(day, pct)| ((day - first) as f64, pct))
                .collect(),
        })
        .collect();
    let x_label = format!("day of the period (0 = {})", format_day(first));
    line_chart(
        &Frame {
            title: "Compliance per day, per DNO",
            x_label: &x_label,
            y_label: "% within SLA",
        },
        &lines,
    )
}

/// Acknowledged alerts per latency bucket, POAs and PRAs.
fn latency_chart(report: &Report) -> String {
    let mut categories = Vec::with_capacity(BUCKET_EDGES_MS.len() + 1);
    let mut lower = 0;
    for edge in BUCKET_EDGES_MS {
        categories.push(format!("{}–{} s", lower / 1000, edge / 1000));
        lower = edge;
    }
    categories.push(format!("> {} s", lower / 1000));
    let values = |kind: usize| report.histogram[kind].iter().map(|&n| n as f64).collect();
    bar_chart(
        &Frame {
            title: "Delivery latency (due → acknowledged)",
            x_label: "",
            y_label: "alerts",
        },
        &categories,
        &[
            Bars {
                name: "POA",
                color: "#1c7ed6",
                values: values(0),
            },
            Bars {
                name: "PRA",
                color: "#e8590c",
                values: values(1),
            },
        ],
    )
}

/// Every row, as in `compliance.csv`.
fn rows(out: &mut String, rows: &[Row]) {
    out.push_str(
        "<h2>By DNO, day and kind</h2><table><tr><th class=\"l\">DNO</th><th class=\"l\">day</th>\
         <th class=\"l\">kind</th><th>alerts</th><th>within SLA</th><th>late (relay)</th>\
         <th>late (upstream)</th><th>never</th><th>pending</th><th>compliance</th>\
         <th>p50 ms</th><th>p99 ms</th><th>max ms</th></tr>",
    );
    for row in rows {
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>",
            escape(&row.subscriber),
            format_day(row.day),
            row.kind.as_str()
        );
        for value in counts(row) {
            let _ = write!(out, "<td>{value}</td>");
        }
        let latency = |pick: fn(&super::aggregate::Latency) -> u64| {
            row.latency
                .as_ref()
                .map_or_else(|| "–".to_owned(), |l| pick(l).to_string())
        };
        let _ = write!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            percent(row.compliance()),
            latency(|l| l.p50),
            latency(|l| l.p99),
            latency(|l| l.max)
        );
    }
    out.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AlertKind, BreachCause, UtcMillis};
    use crate::log::Fate;
    use crate::report::aggregate::{Record, report};
    use crate::report::period::{Period, parse_day, start_of};

    #[test]
    fn the_page_is_self_contained_with_a_line_per_dno_and_the_histogram() {
        let day = parse_day("2026-11-02").expect("a date");
        let record = |subscriber: &str, at: i64, acked_after: i64| {
            let due_at = UtcMillis(start_of(day).0 + at);
            Record {
                subscriber: subscriber.into(),
                kind: AlertKind::Outage,
                due_at,
                deadline: UtcMillis(due_at.0 + 60_000),
                cause: BreachCause::Relay,
                fate: Fate::Acked(UtcMillis(due_at.0 + acked_after)),
            }
        };
        let records = [
            record("ukpn", 0, 500),
            record("ukpn", 86_000_000, 500),
            record("n<ged", 1_000, 90_000),
        ];
        let period = Period {
            first: day - 1,
            last: day,
        };
        let page = render(&report(&records, &[], period, UtcMillis(i64::MAX)));
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("2026-11-01 to 2026-11-02"));
        for external in ["<script", "<link", "src=", "url(", "https://"] {
            assert!(!page.contains(external), "{external}");
        }
        assert_eq!(page.matches("<svg").count(), 2, "two charts");
        assert_eq!(
            page.matches("stroke-width=\"1.5\"").count(),
            2,
            "a line per DNO"
        );
        assert!(page.contains("n&lt;ged"), "names are escaped");
        assert!(!page.contains("n<ged"));
        assert!(
            page.contains("<td class=\"bad\">1</td>"),
            "the late one stands out"
        );
        assert!(page.contains("66.67%"), "2 of 3 within SLA");
    }
}
