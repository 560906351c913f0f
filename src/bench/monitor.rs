//! The run's pulse: samples the relay (backlog, its own breach count, CPU and RSS of a child
//! relay) and the load generator's counters at a fixed period, and drives the progress bar
//! (hidden when stdout is not a terminal or with `--quiet`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::publisher::Tracker;
use super::relay::Probe;
use super::subscriber::Counters;
use super::system::ProcStats;

/// One sample (time in seconds from the run's start).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Seconds from the run's start.
    pub t: f64,
    /// Events in acknowledged batches so far.
    pub events_acked: u64,
    /// Events the relay accepted for the first time so far.
    pub events_accepted: u64,
    /// Alerts received so far (re-deliveries included).
    pub alerts_received: u64,
    /// Alerts not yet acknowledged, over every subscriber, as the relay reports.
    pub relay_backlog: Option<u64>,
    /// SLA breaches the relay has counted itself.
    pub relay_breaches: Option<u64>,
    /// The child relay's resident set, bytes.
    pub relay_rss_bytes: Option<u64>,
    /// The child relay's CPU seconds so far.
    pub relay_cpu_seconds: Option<f64>,
}

/// What the monitor watches.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Admin queries.
    pub probe: Probe,
    /// The child relay's PID, if the benchmark started it.
    pub pid: Option<u32>,
    /// Publisher counters.
    pub tracker: Arc<Tracker>,
    /// Subscriber counters.
    pub counters: Arc<Counters>,
    /// Events to send in all.
    pub events: u64,
    /// Alerts required whatever the timing.
    pub required: u64,
    /// The run's start.
    pub start: Instant,
}

/// A progress bar over `length_ms` of planned run time, or a hidden one.
pub fn progress_bar(length_ms: u64, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(length_ms),
        if visible {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    let style =
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
            .map(|style| style.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

/// The sampling period for a run planned to last `length_ms`: about 600 samples, 0.25–5 s apart.
pub fn period(length_ms: i64) -> Duration {
    let ms = u64::try_from(length_ms / 600)
        .unwrap_or(0)
        .clamp(250, 5_000);
    Duration::from_millis(ms)
}

/// Samples every `period` until `stop`; returns the samples.
pub async fn run(
    watched: Watched,
    bar: ProgressBar,
    period: Duration,
    stop: CancellationToken,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let sample = sample(&watched).await;
        bar.set_position(u64::try_from(watched.start.elapsed().as_millis()).unwrap_or(0));
        bar.set_message(format!(
            "events {}/{} · alerts {} (required {}/{}) · relay backlog {} · lag {:.1}s",
            sample.events_acked,
            watched.events,
            sample.alerts_received,
            watched.counters.required_received.load(Ordering::Relaxed),
            watched.required,
            sample
                .relay_backlog
                .map_or("?".to_owned(), |b| b.to_string()),
            watched.tracker.max_lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        ));
        samples.push(sample);
    }
    samples.push(sample(&watched).await);
    bar.finish_and_clear();
    samples
}

async fn sample(watched: &Watched) -> Sample {
    let tracker = &watched.tracker;
    let backlog = watched.probe.backlog().await;
    let stats = watched.pid.and_then(ProcStats::of);
    Sample {
        t: watched.start.elapsed().as_secs_f64(),
        events_acked: tracker.acked.load(Ordering::Relaxed),
        events_accepted: tracker.accepted.load(Ordering::Relaxed),
        alerts_received: watched.counters.received.load(Ordering::Relaxed),
        relay_backlog: backlog.map(|(b, _)| b),
        relay_breaches: backlog.map(|(_, s)| s),
        relay_rss_bytes: stats.map(|s| s.rss_bytes),
        relay_cpu_seconds: stats.map(|s| s.cpu_seconds),
    }
}
