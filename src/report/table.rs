//! `compliance.csv`: one row per subscriber, day and kind, a column for every figure.

use super::aggregate::Report;
use super::period::format_day;

/// The header, in column order.
pub const COLUMNS: [&str; 13] = [
    "subscriber",
    "day",
    "kind",
    "alerts",
    "within_sla",
    "late_relay",
    "late_upstream",
    "never_delivered",
    "pending",
    "compliance_pct",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
];

/// The CSV text of `report` (empty cells where there is nothing to measure).
pub fn render(report: &Report) -> Result<String, csv::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(COLUMNS)?;
    for row in &report.rows {
        let optional = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_default();
        out.write_record([
            row.subscriber.clone(),
            format_day(row.day),
            row.kind.as_str().to_owned(),
            row.alerts.to_string(),
            row.within_sla.to_string(),
            row.late_relay.to_string(),
            row.late_upstream.to_string(),
            row.never_delivered.to_string(),
            row.pending.to_string(),
            row.compliance()
                .map(|pct| format!("{pct:.2}"))
                .unwrap_or_default(),
            optional(row.latency.map(|l| l.p50)),
            optional(row.latency.map(|l| l.p99)),
            optional(row.latency.map(|l| l.max)),
        ])?;
    }
    let bytes = out
        .into_inner()
        .map_err(|err| csv::Error::from(err.into_error()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AlertKind;
    use crate::report::aggregate::{Latency, Row};
    use crate::report::period::{Period, parse_day};

    #[test]
    fn every_row_is_a_line_with_every_figure() {
        let day = parse_day("2026-11-02").expect("a date");
        let row = Row {
            subscriber: "ukpn".into(),
            day,
            kind: AlertKind::Restoration,
            alerts: 5,
            within_sla: 2,
            late_relay: 1,
            late_upstream: 1,
            never_delivered: 1,
            pending: 0,
            latency: Some(Latency {
                p50: 800,
                p99: 70_000,
                max: 71_000,
            }),
        };
        let empty = Row {
            subscriber: "nged".into(),
            alerts: 1,
            within_sla: 0,
            late_relay: 0,
            late_upstream: 0,
            never_delivered: 0,
            pending: 1,
            latency: None,
            ..row.clone()
        };
        let report = Report {
            period: Period {
                first: day,
                last: day,
            },
            made_at: crate::domain::UtcMillis(0),
            rows: vec![row, empty],
            histogram: [vec![], vec![]],
            subscribers: vec![],
        };
        let text = render(&report).expect("csv");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        assert_eq!(
            lines[1],
            "ukpn,2026-11-02,pra,5,2,1,1,1,0,40.00,800,70000,71000"
        );
        assert_eq!(lines[2], "nged,2026-11-02,pra,1,0,0,0,0,1,,,,");
    }
}
