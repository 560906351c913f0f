//! The report's figures, from the alerts and their fates: what became of each alert
//! ([`Outcome`]), one [`Row`] per subscriber, day and kind, and the latency histogram.
//!
//! The definitions are the SLA watch's (`crate::sla`): an alert's deadline is its `deadline`
//! (`due_at` + the kind's SLA window); it is **within SLA** when acknowledged at or before
//! it; **late** when acknowledged after it but before the end of the period, blamed on
//! `upstream` when its event reached the relay at or after the deadline and on the `relay`
//! otherwise; **never delivered** when not acknowledged by the end of the period, or removed
//! by retention unacknowledged; **pending** when not acknowledged and its deadline is still
//! ahead when the report is made. Delivery latency is the ack time less `due_at`: the time
//! the SLA window counts from. An alert belongs to the UTC day it became due.

use std::collections::BTreeMap;

use super::period::{Day, Period, day_of};
use crate::domain::{AlertKind, BreachCause, UtcMillis};
use crate::log::Fate;

/// Upper edges (ms) of the latency histogram's buckets; the last bucket is open.
pub const BUCKET_EDGES_MS: [u64; 11] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 45_000, 60_000, 90_000, 120_000, 300_000,
];

/// One alert as the report sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its subscriber (a DNO).
    pub subscriber: String,
    /// POA or PRA.
    pub kind: AlertKind,
    /// When it became due.
    pub due_at: UtcMillis,
    /// When it had to be acknowledged by.
    pub deadline: UtcMillis,
    /// Who is to blame if it was late.
    pub cause: BreachCause,
    /// Acknowledged, expired or pending.
    pub fate: Fate,
}

/// What became of an alert, by the end of the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged by its deadline, this many ms after it was due.
    Within(u64),
    /// Acknowledged after its deadline, within the period.
    Late(BreachCause, u64),
    /// Not acknowledged by the end of the period, or removed unacknowledged.
    Never,
    /// Not acknowledged, and its deadline is after `now`.
    Pending,
}

impl Outcome {
    /// The outcome of `record` for a period ending at `end`, reported at `now`.
    pub fn of(record: &Record, end: UtcMillis, now: UtcMillis) -> Self {
        let latency = |at: UtcMillis| u64::try_from(at.0 - record.due_at.0).unwrap_or(0);
        match record.fate {
            Fate::Acked(at) if at <= record.deadline => Self::Within(latency(at)),
            Fate::Acked(at) if at < end => Self::Late(record.cause, latency(at)),
            Fate::Pending if record.deadline > now => Self::Pending,
            Fate::Acked(_) | Fate::Expired(_) | Fate::Pending => Self::Never,
        }
    }

    /// The delivery latency, when acknowledged in time for the report.
    pub fn latency(self) -> Option<u64> {
        match self {
            Self::Within(ms) | Self::Late(_, ms) => Some(ms),
            Self::Never | Self::Pending => None,
        }
    }
}

/// The figures of one subscriber, day and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The subscriber.
    pub subscriber: String,
    /// The UTC day the alerts became due.
    pub day: Day,
    /// POA or PRA.
    pub kind: AlertKind,
    /// Alerts that became due.
    pub alerts: u64,
    /// Acknowledged at or before their deadline.
    pub within_sla: u64,
    /// Acknowledged late, the relay to blame.
    pub late_relay: u64,
    /// Acknowledged late, their events came too late.
    pub late_upstream: u64,
    /// Not acknowledged by the end of the period (or removed unacknowledged).
    pub never_delivered: u64,
    /// Deadline still ahead, not acknowledged yet.
    pub pending: u64,
    /// Delivery latency of the acknowledged ones, ms: median, 99th percentile, largest.
    pub latency: Option<Latency>,
}

impl Row {
    /// Share of the decided alerts (all but pending) delivered within SLA, percent.
    pub fn compliance(&self) -> Option<f64> {
        compliance(self.within_sla, self.alerts - self.pending)
    }
}

/// `within` of `decided` as a percentage; `None` when nothing was decided.
pub fn compliance(within: u64, decided: u64) -> Option<f64> {
    (decided > 0).then(|| within as f64 * 100.0 / decided as f64)
}

/// Delivery latency percentiles, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest (exact).
    pub max: u64,
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The days covered.
    pub period: Period,
    /// When it was made.
    pub made_at: UtcMillis,
    /// Rows by subscriber, day and kind; only where alerts became due.
    pub rows: Vec<Row>,
    /// Acknowledged alerts per latency bucket ([`BUCKET_EDGES_MS`], then the open one):
    /// POAs, then PRAs.
    pub histogram: [Vec<u64>; 2],
    /// Every subscriber, alerts or not, in name order.
    pub subscribers: Vec<String>,
}

/// Accumulates one row.
struct Tally {
    row: Row,
    latencies: Vec<u64>,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        let row = &mut self.row;
        row.alerts += 1;
        match outcome {
            Outcome::Within(_) => row.within_sla += 1,
            Outcome::Late(BreachCause::Relay, _) => row.late_relay += 1,
            Outcome::Late(BreachCause::Upstream, _) => row.late_upstream += 1,
            Outcome::Never => row.never_delivered += 1,
            Outcome::Pending => row.pending += 1,
        }
        self.latencies.extend(outcome.latency());
    }

    fn finish(mut self) -> Row {
        self.latencies.sort_unstable();
        self.row.latency = Latency::of_sorted(&self.latencies);
        self.row
    }
}

impl Latency {
    /// Nearest-rank percentiles of `sorted` (ascending); `None` when empty.
    fn of_sorted(sorted: &[u64]) -> Option<Self> {
        let rank = |q: f64| {
            let index = (q * sorted.len() as f64).ceil() as usize;
            sorted.get(index.saturating_sub(1)).copied()
        };
        Some(Self {
            p50: rank(0.5)?,
            p99: rank(0.99)?,
            max: *sorted.last()?,
        })
    }
}

/// The report of `records` over `period`, made at `now`, for `subscribers` (records of
/// alerts due outside the period are left out).
pub fn report(
    records: &[Record],
    subscribers: &[String],
    period: Period,
    now: UtcMillis,
) -> Report {
    let (start, end) = (period.start(), period.end());
    let mut tallies: BTreeMap<(&str, Day, AlertKind), Tally> = BTreeMap::new();
    let mut histogram = [
        vec![0; BUCKET_EDGES_MS.len() + 1],
        vec![0; BUCKET_EDGES_MS.len() + 1],
    ];
    for record in records {
        if record.due_at < start || record.due_at >= end {
            continue;
        }
        let outcome = Outcome::of(record, end, now);
        let day = day_of(record.due_at);
        let key = (record.subscriber.as_str(), day, record.kind);
        tallies
            .entry(key)
            .or_insert_with(|| Tally {
                row: Row {
                    subscriber: record.subscriber.clone(),
                    day,
                    kind: record.kind,
                    alerts: 0,
                    within_sla: 0,
                    late_relay: 0,
                    late_upstream: 0,
                    never_delivered: 0,
                    pending: 0,
                    latency: None,
                },
                latencies: Vec::new(),
            })
            .add(outcome);
        if let Some(ms) = outcome.latency() {
            let bucket = BUCKET_EDGES_MS.partition_point(|edge| *edge < ms);
            let kind = usize::from(record.kind == AlertKind::Restoration);
            if let Some(count) = histogram[kind].get_mut(bucket) {
                *count += 1;
            }
        }
    }
    let mut names: Vec<String> = subscribers.to_vec();
    names.extend(records.iter().map(|r| r.subscriber.clone()));
    names.sort();
    names.dedup();
    Report {
        period,
        made_at: now,
        rows: tallies.into_values().map(Tally::finish).collect(),
        histogram,
        subscribers: names,
    }
}

impl Report {
    /// Compliance per day of `subscriber`, both kinds together: `(day, percent)` for the days
    /// with decided alerts.
    pub fn daily_compliance(&self, subscriber: &str) -> Vec<(Day, f64)> {
        let mut days: BTreeMap<Day, (u64, u64)> = BTreeMap::new();
        for row in self.rows.iter().filter(|r| r.subscriber == subscriber) {
            let day = days.entry(row.day).or_default();
            day.0 += row.within_sla;
            day.1 += row.alerts - row.pending;
        }
        days.into_iter()
            .filter_map(|(day, (within, decided))| Some((day, compliance(within, decided)?)))
            .collect()
    }

    /// Sums of every row: alerts, within SLA, late (relay), late (upstream), never, pending.
    pub fn totals(&self) -> [u64; 6] {
        self.rows.iter().fold([0; 6], |mut t, r| {
            for (total, value) in t.iter_mut().zip([
                r.alerts,
                r.within_sla,
                r.late_relay,
                r.late_upstream,
                r.never_delivered,
                r.pending,
            ]) {
                *total += value;
            }
            t
        })
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
