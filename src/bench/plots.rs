//! The plots of `report.html`: latency histogram per kind (relay share), latency over time,
//! backlog over time (due and not yet received, and unacknowledged at the relay), alerts
//! received per second, events acknowledged per second, and the relay's resident memory.

use super::measure::BUCKET_EDGES_MS;
use super::monitor::Sample;
use super::report::BenchResult;
use super::svg::{Bars, Frame, Line, bar_chart, line_chart};

const POA: &str = "#d9480f";
const PRA: &str = "#1971c2";
const GREY: &str = "#868e96";
const GREEN: &str = "#2b8a3e";

/// Appends the plots section to `out`.
pub fn write(out: &mut String, result: &BenchResult) {
    out.push_str("<h2>Plots</h2><div class=\"plots\">");
    let categories: Vec<String> = BUCKET_EDGES_MS
        .iter()
        .map(|e| format!("≤{e} ms"))
        .chain([format!(
            ">{} ms",
            BUCKET_EDGES_MS[BUCKET_EDGES_MS.len() - 1]
        )])
        .collect();
    for k in &result.alerts.kinds {
        let title = format!("{} latency, relay share", k.kind.to_uppercase());
        let color = if k.kind == "poa" { POA } else { PRA };
        out.push_str(&bar_chart(
            &Frame {
                title: &title,
                x_label: "",
                y_label: "alerts",
            },
            &categories,
            &[Bars {
                name: &k.kind,
                color,
                values: k.histogram.iter().map(|c| *c as f64).collect(),
            }],
        ));
    }
    let series = &result.alerts.series;
    let at = |i: usize| i as f64 * series.bin_seconds;
    let points = |values: &[f64]| -> Vec<(f64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (at(i), *v))
            .collect()
    };
    let ints = |values: &[u64]| -> Vec<f64> { values.iter().map(|v| *v as f64).collect() };
    let x_label = format!(
        "wall seconds from start (×{} = scenario seconds)",
        result.scenario.timing.scale
    );
    let frame = |title| Frame {
        title,
        x_label: &x_label,
        y_label: "",
    };
    let line = |name, color, values: Vec<f64>| Line {
        name,
        color,
        points: points(&values),
    };
    out.push_str(&line_chart(
        &Frame {
            y_label: "ms",
            ..frame("Latency over time (relay share, by receipt)")
        },
        &[
            line("p99", POA, ints(&series.p99_ms)),
            line("max", GREY, ints(&series.max_ms)),
        ],
    ));
    let samples = &result.samples;
    let sampled = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        samples.iter().filter_map(|s| Some((s.t, f(s)?))).collect()
    };
    out.push_str(&line_chart(
        &Frame {
            y_label: "alerts",
            ..frame("Backlog over time (upstream delays included)")
        },
        &[
            line("due, not yet received", POA, ints(&series.outstanding)),
            Line {
                name: "unacknowledged at the relay",
                color: PRA,
                points: sampled(&|s| s.relay_backlog.map(|b| b as f64)),
            },
        ],
    ));
    out.push_str(&line_chart(
        &Frame {
            y_label: "alerts/s",
            ..frame("Alerts received per second")
        },
        &[
            line("POA", POA, series.poa_per_second.clone()),
            line("PRA", PRA, series.pra_per_second.clone()),
        ],
    ));
    let rates: Vec<(f64, f64)> = samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].t - w[0].t).max(1e-3);
            (w[1].t, (w[1].events_acked - w[0].events_acked) as f64 / dt)
        })
        .collect();
    out.push_str(&line_chart(
        &Frame {
            y_label: "events/s",
            ..frame("Events acknowledged per second")
        },
        &[Line {
            name: "events/s",
            color: GREEN,
            points: rates,
        }],
    ));
    if result.resources.measured {
        out.push_str(&line_chart(
            &Frame {
                y_label: "MiB",
                ..frame("Relay resident memory")
            },
            &[Line {
                name: "RSS",
                color: GREY,
                points: sampled(&|s| s.relay_rss_bytes.map(|b| b as f64 / 1_048_576.0)),
            }],
        ));
    }
    out.push_str("</div>");
}
