//! Latency, SLA compliance and time series from the delivered alerts.
//!
//! - **Latency** is `due_at → received` by the subscriber, the SLA quantity, and the
//!   **relay's share** is `max(due_at, first send of the triggering event) → received`: it
//!   leaves out whatever upstream lateness the scenario scripted (outages learned late,
//!   restorations reported after a device's random delay) or the publishers' own lag.
//!   Percentiles come from HdrHistograms (3 significant figures), in milliseconds.
//! - **Compliance**: an alert met its SLA if received by its own `deadline`; a breach is
//!   caused **upstream** if its triggering event was sent at or after that deadline, and by
//!   the **relay** otherwise.

use hdrhistogram::Histogram;

use super::check::Delivery;
use crate::domain::AlertKind;

/// Upper edges (ms) of the latency histogram's buckets; the last bucket is open.
pub const BUCKET_EDGES_MS: [u64; 16] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// Percentiles of one latency distribution, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Values.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

/// SLA outcome of one kind of alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Compliance {
    /// Alerts delivered.
    pub alerts: u64,
    /// Received by their deadline.
    pub met: u64,
    /// Missed, the triggering event sent at or after the deadline.
    pub breached_upstream: u64,
    /// Missed, the triggering event sent in time.
    pub breached_relay: u64,
    /// `met / alerts`, %.
    pub compliance_pct: f64,
    /// `met / (alerts - breached_upstream)`, %: the relay's own record.
    pub relay_compliance_pct: f64,
    /// Least time to spare (negative: late), ms.
    pub min_slack_ms: i64,
    /// Median time to spare, ms.
    pub median_slack_ms: i64,
}

/// Measurements of one alert kind.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KindStats {
    /// `poa` or `pra`.
    pub kind: String,
    /// `due_at → received`.
    pub latency: Percentiles,
    /// `max(due_at, sent) → received`.
    pub relay_share: Percentiles,
    /// The relay's share per subscriber (by name).
    pub per_subscriber: Vec<(String, Percentiles)>,
    /// SLA outcome.
    pub compliance: Compliance,
    /// Relay-share counts per bucket of [`BUCKET_EDGES_MS`] (one more: the open bucket).
    pub histogram: Vec<u64>,
}

/// Per-bin series over the run (bin `i` covers `[i, i+1) × bin_seconds` from the start).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Series {
    /// Bin width, seconds.
    pub bin_seconds: f64,
    /// POAs received per second, per bin.
    pub poa_per_second: Vec<f64>,
    /// PRAs received per second, per bin.
    pub pra_per_second: Vec<f64>,
    /// 99th percentile of the relay's share among alerts received in the bin, ms.
    pub p99_ms: Vec<u64>,
    /// Largest relay share among alerts received in the bin, ms.
    pub max_ms: Vec<u64>,
    /// Alerts due by the end of the bin and not yet received.
    pub outstanding: Vec<u64>,
}

/// Everything measured about the alerts.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Measured {
    /// POA, then PRA.
    pub kinds: Vec<KindStats>,
    /// Over time.
    pub series: Series,
}

/// Measures `deliveries`; `subscribers` names them by index; `end_ms` is the run's length.
pub fn measure(deliveries: &[Delivery], subscribers: &[String], end_ms: i64) -> Measured {
    let kinds = [AlertKind::Outage, AlertKind::Restoration]
        .into_iter()
        .map(|kind| kind_stats(deliveries, subscribers, kind))
        .collect();
    Measured {
        kinds,
        series: series(deliveries, end_ms),
    }
}

/// The relay's share of one delivery, ms.
pub fn relay_share(d: &Delivery) -> u64 {
    let from = d.due.max(d.trigger_sent.unwrap_or(d.due));
    u64::try_from(d.received - from).unwrap_or(0)
}

/// Largest latency tracked (a week, the relay's oldest accepted event); larger ones count
/// as a week.
const MAX_TRACKED_MS: u64 = 7 * 24 * 3_600_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_MS, 3).expect("valid bounds and precision")
}

fn kind_stats(deliveries: &[Delivery], subscribers: &[String], kind: AlertKind) -> KindStats {
    let mut latency = histogram();
    let mut share = histogram();
    let mut per_sub: Vec<Histogram<u64>> = subscribers.iter().map(|_| histogram()).collect();
    let mut buckets = vec![0u64; BUCKET_EDGES_MS.len() + 1];
    let mut slack = Vec::new();
    let mut compliance = Compliance::default();
    for d in deliveries.iter().filter(|d| d.kind == kind) {
        let relay = relay_share(d);
        latency.saturating_record(u64::try_from(d.received - d.due).unwrap_or(0));
        share.saturating_record(relay);
        if let Some(h) = per_sub.get_mut(usize::from(d.subscriber)) {
            h.saturating_record(relay);
        }
        buckets[BUCKET_EDGES_MS.partition_point(|edge| *edge <= relay)] += 1;
        slack.push(d.deadline - d.received);
        compliance.alerts += 1;
        if d.received <= d.deadline {
            compliance.met += 1;
        } else if d.trigger_sent.is_none_or(|sent| sent >= d.deadline) {
            compliance.breached_upstream += 1;
        } else {
            compliance.breached_relay += 1;
        }
    }
    slack.sort_unstable();
    compliance.min_slack_ms = slack.first().copied().unwrap_or(0);
    compliance.median_slack_ms = slack.get(slack.len() / 2).copied().unwrap_or(0);
    let pct = |part: u64, whole: u64| {
        if whole == 0 {
            100.0
        } else {
            part as f64 * 100.0 / whole as f64
        }
    };
    compliance.compliance_pct = pct(compliance.met, compliance.alerts);
    compliance.relay_compliance_pct = pct(
        compliance.met,
        compliance.alerts - compliance.breached_upstream,
    );
    KindStats {
        kind: kind.as_str().to_owned(),
        latency: Percentiles::of(&latency),
        relay_share: Percentiles::of(&share),
        per_subscriber: subscribers
            .iter()
            .zip(&per_sub)
            .filter(|(_, h)| !h.is_empty())
            .map(|(name, h)| (name.clone(), Percentiles::of(h)))
            .collect(),
        compliance,
        histogram: buckets,
    }
}

fn series(deliveries: &[Delivery], end_ms: i64) -> Series {
    // About 1,200 bins at most, of whole seconds.
    let bin_ms = ((end_ms / 1_200 / 1_000 + 1) * 1_000).max(1_000);
    let bins = usize::try_from(end_ms / bin_ms + 1).unwrap_or(1);
    let bin_of = |t: i64| {
        usize::try_from(t.max(0) / bin_ms)
            .unwrap_or(0)
            .min(bins - 1)
    };
    let mut series = Series {
        bin_seconds: bin_ms as f64 / 1000.0,
        poa_per_second: vec![0.0; bins],
        pra_per_second: vec![0.0; bins],
        p99_ms: vec![0; bins],
        max_ms: vec![0; bins],
        outstanding: vec![0; bins],
    };
    let mut shares: Vec<Vec<u64>> = vec![Vec::new(); bins];
    // Outstanding at the end of bin i: due before it ends and received after it ends.
    let mut delta = vec![0i64; bins + 1];
    let per_second = 1000.0 / bin_ms as f64;
    for d in deliveries {
        let bin = bin_of(d.received);
        match d.kind {
            AlertKind::Outage => series.poa_per_second[bin] += per_second,
            AlertKind::Restoration => series.pra_per_second[bin] += per_second,
        }
        shares[bin].push(relay_share(d));
        // Due in bin `from` and received in bin `to`: outstanding at the ends of from..to.
        let (from, to) = (bin_of(d.due), bin_of(d.received));
        if to > from {
            delta[from] += 1;
            delta[to] -= 1;
        }
    }
    let mut open = 0i64;
    for i in 0..bins {
        open += delta[i];
        series.outstanding[i] = u64::try_from(open).unwrap_or(0);
        let values = &mut shares[i];
        if !values.is_empty() {
            values.sort_unstable();
            let at = (values.len() * 99).div_ceil(100).saturating_sub(1);
            series.p99_ms[i] = values[at];
            series.max_ms[i] = values[values.len() - 1];
        }
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(received: i64, due: i64, deadline: i64, sent: Option<i64>) -> Delivery {
        Delivery {
            kind: AlertKind::Restoration,
            subscriber: 0,
            received,
            due,
            deadline,
            trigger_sent: sent,
        }
    }

    #[test]
    fn breaches_are_attributed_by_when_the_triggering_event_was_sent() {
        let deliveries = [
            delivery(1_500, 1_000, 61_000, Some(1_000)),
            // Sent after its deadline: upstream's fault.
            delivery(90_000, 1_000, 61_000, Some(89_000)),
            // Sent in time, delivered late: the relay's.
            delivery(70_000, 1_000, 61_000, Some(2_000)),
        ];
        let measured = measure(&deliveries, &["dno".to_owned()], 100_000);
        let pra = &measured.kinds[1];
        let c = &pra.compliance;
        assert_eq!(
            (c.alerts, c.met, c.breached_upstream, c.breached_relay),
            (3, 1, 1, 1)
        );
        assert!((c.relay_compliance_pct - 50.0).abs() < 1e-9);
        assert_eq!(c.min_slack_ms, -29_000);
        // due → received keeps large values (not clamped): 500, 69,000 and 89,000 ms.
        assert!(pra.latency.max >= 88_900, "{:?}", pra.latency);
        // The relay's share starts at the later of due and sent: 500, 1,000 and 68,000 ms.
        assert_eq!(relay_share(&deliveries[1]), 1_000);
        assert!(pra.relay_share.max >= 67_900, "{:?}", pra.relay_share);
        assert_eq!(pra.histogram.iter().sum::<u64>(), 3);
        assert_eq!(measured.kinds[0].compliance.alerts, 0);
    }

    #[test]
    fn outstanding_counts_alerts_due_and_not_yet_received() {
        let deliveries = [
            delivery(3_500, 500, 1_500, None),
            delivery(1_200, 1_100, 2_100, None),
        ];
        let series = measure(&deliveries, &["dno".to_owned()], 5_000).series;
        assert_eq!(series.bin_seconds, 1.0);
        assert_eq!(&series.outstanding[..5], &[1, 1, 1, 0, 0]);
        assert_eq!(series.pra_per_second[1] + series.pra_per_second[3], 2.0);
    }
}
