//! CSP publishers: each sends its share of the timeline (devices split by index) over one
//! `Ingest.Publish` stream, every event when its time comes, in batches of everything due
//! (up to `--batch-size`), with a few batches in flight. A stream that fails (say
//! `RESOURCE_EXHAUSTED` from a saturated relay) is reopened and every unacknowledged batch
//! resent, in order; the relay counts the repeats as duplicates. Falling behind the
//! schedule shows as publish lag, and the events' own device times stay as scripted.
//!
//! What was sent and acknowledged, and when, goes into a shared [`Tracker`]: the model
//! check and the breach attribution read it at the end.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::fleet::Fleet;
use super::model::{Event, EventKind, Model};
use crate::domain::UtcMillis;
use crate::proto::ingest_client::IngestClient;
use crate::proto::{BatchAck, DeviceEvent, EventBatch, SupplyLost, SupplyRestored, device_event};

/// Batches sent ahead of their acknowledgements on one stream.
const WINDOW: usize = 8;
/// Rejection reasons kept for the report.
const REJECTIONS_KEPT: usize = 20;
/// Wait before reopening a failed stream, unless the relay hints otherwise.
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// Marks a time not yet recorded.
const UNSET: i64 = i64::MIN;

/// Shared record of what the publishers did (times are ms from the run's start).
#[derive(Debug)]
pub struct Tracker {
    /// Per outage: first send of its loss.
    pub loss_sent: Vec<AtomicI64>,
    /// Per outage: first send of its restoration.
    pub restore_sent: Vec<AtomicI64>,
    /// Per outage: first acknowledgement of its restoration.
    pub restore_acked: Vec<AtomicI64>,
    /// Event sends (resends included).
    pub sent: AtomicU64,
    /// Events in acknowledged batches.
    pub acked: AtomicU64,
    /// Accepted for the first time, per the relay's acks.
    pub accepted: AtomicU64,
    /// Acknowledged as duplicates.
    pub duplicates: AtomicU64,
    /// Rejected.
    pub rejected: AtomicU64,
    /// Streams reopened after a failure.
    pub retries: AtomicU64,
    /// Largest delay between an event's scheduled and actual send, ms.
    pub max_lag_ms: AtomicI64,
    /// First send of anything, ms from the run's start.
    pub first_sent_ms: AtomicI64,
    /// Last acknowledgement, ms from the run's start.
    pub last_acked_ms: AtomicI64,
    /// The first rejection reasons.
    pub rejections: Mutex<Vec<String>>,
}

impl Tracker {
    /// A tracker for `outages` outages.
    pub fn new(outages: usize) -> Self {
        let times = || (0..outages).map(|_| AtomicI64::new(UNSET)).collect();
        Self {
            loss_sent: times(),
            restore_sent: times(),
            restore_acked: times(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            max_lag_ms: AtomicI64::new(0),
            first_sent_ms: AtomicI64::new(i64::MAX),
            last_acked_ms: AtomicI64::new(0),
            rejections: Mutex::new(Vec::new()),
        }
    }

    /// A recorded time, if set.
    pub fn get(times: &[AtomicI64], outage: u32) -> Option<i64> {
        let at = times.get(outage as usize)?.load(Ordering::Relaxed);
        (at != UNSET).then_some(at)
    }

    fn first(times: &[AtomicI64], outage: u32, at: i64) {
        if let Some(slot) = times.get(outage as usize) {
            let _ = slot.compare_exchange(UNSET, at, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// What every publisher shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The relay's gRPC URL.
    pub url: String,
    /// Events per batch at most.
    pub batch_size: usize,
    /// Prefix of every event ID, unique to the run.
    pub run_id: String,
    /// The run's start, on the tokio clock...
    pub start: Instant,
    /// ...and on the wall clock.
    pub t0: UtcMillis,
    /// The scenario.
    pub model: Arc<Model>,
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// Where sends and acks are recorded.
    pub tracker: Arc<Tracker>,
}

impl Shared {
    fn now(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// A batch sent and not yet acknowledged: its ID and its events' positions.
struct InFlight {
    id: u64,
    events: Range<usize>,
}

/// Sends `events` (ordered by `send_at`) on schedule until all are acknowledged or `stop`.
pub async fn run(
    shared: Shared,
    events: Vec<Event>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut next = 0usize;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut batch_id = 0u64;
    let mut first_stream = true;
    while next < events.len() || !in_flight.is_empty() {
        if !first_stream {
            shared.tracker.retries.fetch_add(1, Ordering::Relaxed);
        }
        first_stream = false;
        let Some(mut client) = connect(&shared.url, &stop).await else {
            return Ok(());
        };
        let (tx, rx) = mpsc::channel(WINDOW + 1);
        for batch in &in_flight {
            let _ = tx.try_send(build(&shared, &events, batch));
        }
        let mut acks = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            opened = client.publish(ReceiverStream::new(rx)) => match opened {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    retry_or_fail(&status, &stop).await?;
                    continue;
                }
            },
        };
        loop {
            let ready = next < events.len() && in_flight.len() < WINDOW;
            let due = shared.start
                + Duration::from_millis(
                    u64::try_from(events.get(next).map_or(0, |e| e.send_at)).unwrap_or(0),
                );
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                message = acks.message() => match message {
                    Ok(Some(ack)) => {
                        let batch = in_flight.pop_front().ok_or_else(|| {
                            anyhow::anyhow!("the relay acknowledged batch {} that was not sent", ack.batch_id)
                        })?;
                        if ack.batch_id != batch.id {
                            anyhow::bail!("got the ack of batch {}, expected {}", ack.batch_id, batch.id);
                        }
                        record_ack(&shared, &events, &batch, &ack);
                        if next == events.len() && in_flight.is_empty() {
                            return Ok(());
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        retry_or_fail(&status, &stop).await?;
                        break;
                    }
                },
                () = tokio::time::sleep_until(due), if ready => {
                    let now = shared.now();
                    let end = (next..events.len())
                        .take(shared.batch_size)
                        .take_while(|i| events[*i].send_at <= now)
                        .last()
                        .map_or(next, |last| last + 1);
                    if end == next {
                        continue;
                    }
                    let lag = now - events[next].send_at;
                    shared.tracker.max_lag_ms.fetch_max(lag, Ordering::Relaxed);
                    batch_id += 1;
                    let batch = InFlight { id: batch_id, events: next..end };
                    record_sends(&shared, &events[next..end], now);
                    next = end;
                    let message = build(&shared, &events, &batch);
                    in_flight.push_back(batch);
                    if tx.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn connect(
    url: &str,
    stop: &CancellationToken,
) -> Option<IngestClient<tonic::transport::Channel>> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            client = IngestClient::connect(url.to_owned()) => match client {
                Ok(client) => return Some(client),
                Err(error) => tracing::warn!(%error, url, "publisher cannot connect; retrying"),
            },
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// Waits before a retry (the relay's `retry-after-ms` hint, if any), or fails on a status
/// that retrying cannot fix.
async fn retry_or_fail(status: &tonic::Status, stop: &CancellationToken) -> anyhow::Result<()> {
    if matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::PermissionDenied
            | Code::Unauthenticated
    ) {
        anyhow::bail!("the relay refused a batch: {status}");
    }
    let hint = status
        .metadata()
        .get("retry-after-ms")
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .map(Duration::from_millis);
    tracing::debug!(%status, "publish stream failed; resending unacknowledged batches");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(hint.unwrap_or(RETRY_DELAY).max(Duration::from_millis(10))) => {}
    }
    Ok(())
}

fn record_sends(shared: &Shared, events: &[Event], now: i64) {
    let tracker = &shared.tracker;
    tracker
        .sent
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    tracker.first_sent_ms.fetch_min(now, Ordering::Relaxed);
    for event in events {
        match event.kind {
            EventKind::Lost => Tracker::first(&tracker.loss_sent, event.outage, now),
            EventKind::Restored => Tracker::first(&tracker.restore_sent, event.outage, now),
        }
    }
}

fn record_ack(shared: &Shared, events: &[Event], batch: &InFlight, ack: &BatchAck) {
    let tracker = &shared.tracker;
    let now = shared.now();
    tracker
        .acked
        .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
    tracker.last_acked_ms.fetch_max(now, Ordering::Relaxed);
    tracker.accepted.fetch_add(ack.accepted, Ordering::Relaxed);
    tracker
        .duplicates
        .fetch_add(ack.duplicates, Ordering::Relaxed);
    tracker
        .rejected
        .fetch_add(ack.rejected.len() as u64, Ordering::Relaxed);
    if !ack.rejected.is_empty() {
        let mut kept = tracker.rejections.lock();
        for error in &ack.rejected {
            if kept.len() < REJECTIONS_KEPT {
                kept.push(error.reason.clone());
            }
        }
    }
    for event in &events[batch.events.clone()] {
        if event.kind == EventKind::Restored {
            Tracker::first(&tracker.restore_acked, event.outage, now);
        }
    }
}

fn build(shared: &Shared, events: &[Event], batch: &InFlight) -> EventBatch {
    let model = &shared.model;
    let events = events[batch.events.clone()]
        .iter()
        .map(|event| {
            let outage = &model.outages[event.outage as usize];
            let at = |offset: i64| Some(UtcMillis(shared.t0.0 + offset).to_proto());
            let (kind, code, tag) = match (event.kind, outage.restored_at) {
                (EventKind::Restored, Some(restored_at)) => {
                    let long = restored_at - outage.lost_at >= model.timing.debounce_ms;
                    let restored = SupplyRestored {
                        restored_at: at(restored_at),
                        lost_at: at(outage.lost_at),
                    };
                    (
                        device_event::Kind::Restored(restored),
                        0x8F35 + u32::from(long),
                        'r',
                    )
                }
                _ => {
                    let lost = SupplyLost {
                        lost_at: at(outage.lost_at),
                    };
                    (device_event::Kind::Lost(lost), 0, 'l')
                }
            };
            DeviceEvent {
                event_id: format!("{}-{}-{tag}", shared.run_id, event.outage),
                device_id: shared.fleet.device_id(outage.device).to_string(),
                phase: 0,
                mpan_core: shared
                    .fleet
                    .supply(outage.device)
                    .map(|supply| supply.mpan.to_string()),
                kind: Some(kind),
                alert_code: code,
            }
        })
        .collect();
    EventBatch {
        events,
        batch_id: batch.id,
    }
}
