//! Drives one run: subscribers connect, publishers send the timeline on schedule, the monitor
//! samples; once everything is sent and acknowledged, the run waits until every alert the
//! model surely requires has arrived and the last due time plus a settling period has
//! passed (bounded, so a relay that loses alerts ends the run rather than hanging it), then
//! stops every task and collects what they saw. With summaries watched, a watcher per
//! subscriber runs beside its reader.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fleet::Fleet;
use super::model::Model;
use super::monitor::{self, Sample, Watched};
use super::publisher::{self, Tracker};
use super::relay::{Relay, SubscriberInfo};
use super::subscriber::{self, Counters, Received};
use super::summaries;
use super::system::ProcStats;
use crate::domain::UtcMillis;

/// How the run is driven.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Publishers (one stream each).
    pub publishers: usize,
    /// Events per batch at most.
    pub batch_size: usize,
    /// Show the progress bar.
    pub progress: bool,
    /// Prefix of event IDs, unique to the run.
    pub run_id: String,
    /// Watch every subscriber's storm summaries at this interval.
    pub watch_summaries: Option<Duration>,
}

/// What the run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The run's start on the wall clock.
    pub t0: UtcMillis,
    /// Per subscriber, in the relay's order.
    pub received: Vec<Received>,
    /// Per subscriber, its summary stream's counts (none unless watched).
    pub summaries: Vec<summaries::Watch>,
    /// Periodic samples.
    pub samples: Vec<Sample>,
    /// Alerts parked at the end.
    pub parked: Option<u64>,
    /// The child relay's CPU and memory at the end.
    pub relay_final: Option<ProcStats>,
    /// Length of the run, ms.
    pub end_ms: i64,
}

/// Runs the scenario against `relay`.
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    relay: &mut Relay,
    model: Arc<Model>,
    fleet: Arc<Fleet>,
    subscribers: &[SubscriberInfo],
    settings: &Settings,
    tracker: Arc<Tracker>,
    counters: Arc<Counters>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let (start, t0) = (Instant::now(), UtcMillis::system_now());
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let sub_shared = subscriber::Shared {
        url: relay.url.clone(),
        start,
        t0,
        model: Arc::clone(&model),
        fleet: Arc::clone(&fleet),
        counters: Arc::clone(&counters),
    };
    let mut readers: Vec<JoinHandle<anyhow::Result<Received>>> = subscribers
        .iter()
        .map(|sub| {
            let from = if sub.head == 0 { 0 } else { sub.head + 1 };
            let task = subscriber::run(sub_shared.clone(), sub.name.clone(), from, stop.clone());
            tokio::spawn(task)
        })
        .collect();
    let mut watchers: Vec<JoinHandle<anyhow::Result<summaries::Watch>>> = settings
        .watch_summaries
        .map(|interval| {
            subscribers
                .iter()
                .map(|sub| {
                    let task = summaries::watch(
                        relay.url.clone(),
                        sub.name.clone(),
                        interval,
                        stop.clone(),
                    );
                    tokio::spawn(task)
                })
                .collect()
        })
        .unwrap_or_default();
    let pub_shared = publisher::Shared {
        url: relay.url.clone(),
        batch_size: settings.batch_size,
        run_id: settings.run_id.clone(),
        start,
        t0,
        model: Arc::clone(&model),
        fleet: Arc::clone(&fleet),
        tracker: Arc::clone(&tracker),
    };
    let count = settings.publishers.max(1);
    let mut shares: Vec<Vec<_>> = vec![Vec::new(); count];
    for event in &model.events {
        let device = model.outages[event.outage as usize].device as usize;
        shares[device % count].push(*event);
    }
    let mut senders: Vec<JoinHandle<anyhow::Result<()>>> = shares
        .into_iter()
        .map(|events| tokio::spawn(publisher::run(pub_shared.clone(), events, stop.clone())))
        .collect();
    let (poa, pra) = model.surely_required();
    let last = model.last_moment();
    let watched = Watched {
        probe: relay.probe(),
        pid: relay.pid(),
        tracker: Arc::clone(&tracker),
        counters: Arc::clone(&counters),
        events: model.events.len() as u64,
        required: poa + pra,
        start,
    };
    // After the last due time, one SLA window (0.5–10 s) for stray alerts to show up.
    let settle = model
        .timing
        .poa_window_ms
        .max(model.timing.pra_window_ms)
        .clamp(500, 10_000);
    let bar = monitor::progress_bar(u64::try_from(last + settle).unwrap_or(0), settings.progress);
    let sampler = tokio::spawn(monitor::run(
        watched,
        bar,
        monitor::period(last),
        stop.clone(),
    ));

    let now = || i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
    let mut published_at: Option<i64> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("interrupted"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if let Some(exit) = relay.exited() {
            anyhow::bail!("the relay exited during the run: {exit}");
        }
        let mut i = 0;
        while i < senders.len() {
            if senders[i].is_finished() {
                senders.swap_remove(i).await??;
            } else {
                i += 1;
            }
        }
        if let Some(reader) = readers.iter().position(JoinHandle::is_finished) {
            readers.swap_remove(reader).await??;
            anyhow::bail!("a subscriber stopped before the end of the run");
        }
        if let Some(watcher) = watchers.iter().position(JoinHandle::is_finished) {
            watchers.swap_remove(watcher).await??;
            anyhow::bail!("a summary watcher stopped before the end of the run");
        }
        if published_at.is_none() && senders.is_empty() {
            published_at = Some(now());
        }
        let Some(published) = published_at else {
            continue;
        };
        let quiet_from = last.max(published) + settle;
        let give_up = quiet_from + (30 * settle).max(60_000);
        let all_in = counters.required_received.load(Ordering::Relaxed) >= poa + pra;
        if (all_in && now() >= quiet_from) || now() >= give_up {
            break;
        }
    }
    let end_ms = now();
    stop.cancel();
    let mut received = Vec::with_capacity(readers.len());
    for reader in readers {
        received.push(reader.await??);
    }
    let mut watched = Vec::with_capacity(watchers.len());
    for watcher in watchers {
        watched.push(watcher.await??);
    }
    let samples = sampler.await?;
    let probe = relay.probe();
    Ok(Outcome {
        t0,
        received,
        summaries: watched,
        samples,
        parked: probe.parked().await,
        relay_final: relay.pid().and_then(ProcStats::of),
        end_ms,
    })
}
