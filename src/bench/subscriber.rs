//! DNO subscribers: one per subscriber of the relay, reading `AlertFeed.Subscribe` and
//! acknowledging cumulatively from a separate task (so acks never hold up reading), and
//! reconnecting from the oldest unacknowledged alert if the stream breaks. Every alert is
//! stamped on arrival and matched to its scripted outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::fleet::Fleet;
use super::model::Model;
use crate::domain::{AlertKind, DeviceId, UtcMillis};
use crate::proto::alert_feed_client::AlertFeedClient;
use crate::proto::{AckRequest, Alert, SubscribeRequest};

/// Receipts that match no scripted outage, described for the report, at most.
const UNKNOWN_KEPT: usize = 20;
/// How often a subscriber acknowledges what it received.
const ACK_EVERY: Duration = Duration::from_millis(5);
/// Wait before reconnecting a broken subscription.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Marks a receipt that matches no scripted outage.
pub const NO_OUTAGE: u32 = u32::MAX;

/// One alert as a subscriber received it (times in ms from the run's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The scripted outage, or [`NO_OUTAGE`].
    pub outage: u32,
    /// POA or PRA.
    pub kind: AlertKind,
    /// As the alert says.
    pub learned_late: bool,
    /// Per-subscriber sequence.
    pub sequence: u64,
    /// When it arrived.
    pub received: i64,
    /// The alert's `due_at`.
    pub due: i64,
    /// The alert's `deadline`.
    pub deadline: i64,
}

/// Everything one subscriber received.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// In order of arrival.
    pub receipts: Vec<Receipt>,
    /// Descriptions of the first receipts that matched no scripted outage.
    pub unknown: Vec<String>,
    /// Subscriptions reopened after a failure.
    pub reconnects: u64,
}

/// Live counts shared with the progress display and the end-of-run wait.
#[derive(Debug)]
pub struct Counters {
    /// Alerts received (re-deliveries included).
    pub received: AtomicU64,
    /// Distinct alerts received that the model requires whatever the timing.
    pub required_received: AtomicU64,
    /// Per outage: bit 0 POA seen, bit 1 PRA seen.
    seen: Vec<AtomicU8>,
}

impl Counters {
    /// Counters for `outages` outages.
    pub fn new(outages: usize) -> Self {
        Self {
            received: AtomicU64::new(0),
            required_received: AtomicU64::new(0),
            seen: (0..outages).map(|_| AtomicU8::new(0)).collect(),
        }
    }
}

/// What every subscriber shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The relay's gRPC URL.
    pub url: String,
    /// The run's start, on the tokio clock...
    pub start: Instant,
    /// ...and on the wall clock.
    pub t0: UtcMillis,
    /// The scenario.
    pub model: Arc<Model>,
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// Live counts.
    pub counters: Arc<Counters>,
}

/// Reads `subscriber`'s feed from `from_sequence` until `stop`; returns what it received.
pub async fn run(
    shared: Shared,
    subscriber: String,
    from_sequence: u64,
    stop: CancellationToken,
) -> anyhow::Result<Received> {
    let mut received = Received::default();
    let mut from = from_sequence;
    let latest = Arc::new(AtomicU64::new(0));
    let acker = tokio::spawn(acker(
        shared.url.clone(),
        subscriber.clone(),
        Arc::clone(&latest),
        stop.clone(),
    ));
    while !stop.is_cancelled() {
        match session(&shared, &subscriber, from, &latest, &mut received, &stop).await {
            Ok(()) => {}
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {
                acker.abort();
                anyhow::bail!("cannot subscribe as {subscriber}: {status}");
            }
            Err(status) => tracing::warn!(%status, subscriber, "subscription broke; resuming"),
        }
        if stop.is_cancelled() {
            break;
        }
        received.reconnects += 1;
        from = 0;
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
    let _ = acker.await;
    Ok(received)
}

async fn session(
    shared: &Shared,
    subscriber: &str,
    from_sequence: u64,
    latest: &AtomicU64,
    received: &mut Received,
    stop: &CancellationToken,
) -> Result<(), tonic::Status> {
    let mut client = AlertFeedClient::connect(shared.url.clone())
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let request = SubscribeRequest {
        subscriber: subscriber.to_owned(),
        from_sequence,
    };
    let mut stream = client.subscribe(request).await?.into_inner();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let alert = tokio::select! {
            biased;
            message = stream.message() => match message? {
                Some(alert) => alert,
                None => return Err(tonic::Status::unavailable("the relay ended the stream")),
            },
            () = &mut stopped => return Ok(()),
        };
        let at = i64::try_from(shared.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        let receipt = shared.receipt(&alert, at, received);
        shared.count(&receipt);
        latest.fetch_max(alert.sequence, Ordering::Relaxed);
        received.receipts.push(receipt);
    }
}

impl Shared {
    fn offset(&self, ts: Option<&prost_types::Timestamp>) -> Option<i64> {
        ts.and_then(UtcMillis::from_proto)
            .map(|at| at.0 - self.t0.0)
    }

    fn receipt(&self, alert: &Alert, at: i64, received: &mut Received) -> Receipt {
        let kind = AlertKind::from_proto(alert.kind).unwrap_or(AlertKind::Outage);
        let outage = alert
            .device_id
            .parse::<DeviceId>()
            .ok()
            .and_then(|device| self.fleet.index_of(device))
            .zip(self.offset(alert.lost_at.as_ref()))
            .and_then(|(device, lost_at)| self.model.find(device, lost_at));
        if outage.is_none() && received.unknown.len() < UNKNOWN_KEPT {
            received.unknown.push(format!(
                "{} (device {}, seq {})",
                alert.alert_id, alert.device_id, alert.sequence
            ));
        }
        Receipt {
            outage: outage.unwrap_or(NO_OUTAGE),
            kind,
            learned_late: alert.learned_late,
            sequence: alert.sequence,
            received: at,
            due: self.offset(alert.due_at.as_ref()).unwrap_or(at),
            deadline: self.offset(alert.deadline.as_ref()).unwrap_or(at),
        }
    }

    fn count(&self, receipt: &Receipt) {
        let counters = &self.counters;
        counters.received.fetch_add(1, Ordering::Relaxed);
        let Some(outage) = self.model.outages.get(receipt.outage as usize) else {
            return;
        };
        let bit = if receipt.kind == AlertKind::Outage {
            1
        } else {
            2
        };
        let before = counters.seen[receipt.outage as usize].fetch_or(bit, Ordering::Relaxed);
        let long = outage
            .restored_at
            .is_none_or(|r| r >= outage.lost_at + self.model.timing.debounce_ms);
        let required = long && (bit == 1 || outage.restored_at.is_some());
        if before & bit == 0 && required {
            counters.required_received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Acknowledges the latest received sequence every [`ACK_EVERY`] when it moved (acks are
/// cumulative; receiving never waits for them); a last ack at `stop`.
async fn acker(url: String, subscriber: String, latest: Arc<AtomicU64>, stop: CancellationToken) {
    let mut client = None;
    let mut acked = 0u64;
    let mut tick = tokio::time::interval(ACK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let sequence = latest.load(Ordering::Relaxed);
        if sequence > acked {
            if client.is_none() {
                client = AlertFeedClient::connect(url.clone()).await.ok();
            }
            if let Some(feed) = client.as_mut() {
                let request = AckRequest {
                    subscriber: subscriber.clone(),
                    sequence,
                };
                match tokio::time::timeout(Duration::from_secs(5), feed.ack(request)).await {
                    Ok(Ok(_)) => acked = sequence,
                    Ok(Err(status)) => tracing::warn!(%status, subscriber, "ack failed"),
                    Err(_) => tracing::warn!(subscriber, "ack timed out"),
                }
            }
        }
        if stopping {
            return;
        }
    }
}
