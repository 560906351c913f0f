//! The shard task: single writer for one slice of the supply points.
//!
//! It owns a [`Debouncer`], an [`EventIdWindow`] and a `DelayQueue` of debounce timers, and
//! `select!`s on its bounded command queue and the wheel. Each batch is applied, its timers
//! armed, and everything it changed handed to the commit stage together with the publisher's
//! reply, which the commit stage answers once the change is durable: an acknowledged event's
//! consequences are in the store. The shard goes on with the next batch meanwhile, so the
//! commit stage can group many batches into one fsync. A full queue, here or at the commit
//! stage, is the ingest's backpressure signal.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::dedup::EventIdWindow;
use super::machine::Tombstone;
use super::machine::{Arrival, Debouncer, Effects, OpenOutage, Outcome};
use crate::commit::{Batch, CommitHandle};
use crate::domain::{Clock, DeviceEvent, DeviceId, EventKind, SupplyPoint, UtcMillis};
use crate::error::RelayError;
use crate::server::Tasks;
use crate::store::{SeenEvent, StoreError};
use crate::telemetry::Metrics;

/// Timers handled per wake-up before commands get a turn.
const EXPIRY_BATCH: usize = 4096;

/// What a shard is asked to do.
#[derive(Debug)]
pub enum ShardCommand {
    /// Apply validated events received at `received_at`.
    Apply {
        /// The events, in arrival order.
        events: Vec<DeviceEvent>,
        /// When ingest received them.
        received_at: UtcMillis,
        /// Answered once the events' effects are stored.
        reply: oneshot::Sender<Result<ApplyReport, StoreError>>,
    },
    /// List open outages (of one device, or all).
    Outages {
        /// Only this device's, if set.
        device: Option<DeviceId>,
        /// At most this many.
        limit: usize,
        /// The answer.
        reply: oneshot::Sender<OutageListing>,
    },
}

/// Result of applying a batch slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyReport {
    /// Events seen for the first time.
    pub accepted: u64,
    /// Events already seen.
    pub duplicates: u64,
}

/// Open outages of a shard.
#[derive(Debug, Clone, Default)]
pub struct OutageListing {
    /// Up to the requested limit.
    pub outages: Vec<(SupplyPoint, OpenOutage)>,
    /// How many match in all.
    pub total: usize,
}

/// One shard's part of the recovered state, each list in time order.
#[derive(Debug, Default)]
pub struct Restored {
    /// Open outages.
    pub outages: Vec<(SupplyPoint, OpenOutage)>,
    /// Tombstones, by `closed_at`.
    pub tombstones: Vec<Tombstone>,
    /// Event keys, by `seen_at`.
    pub events: Vec<SeenEvent>,
}

/// Cloneable handle to a running shard.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    tx: mpsc::Sender<ShardCommand>,
}

impl ShardHandle {
    /// Applies events, waiting at most `wait` for room in the shard's queue.
    pub async fn apply(
        &self,
        events: Vec<DeviceEvent>,
        received_at: UtcMillis,
        wait: Duration,
    ) -> Result<ApplyReport, RelayError> {
        let (reply, answer) = oneshot::channel();
        let command = ShardCommand::Apply {
            events,
            received_at,
            reply,
        };
        self.tx
            .send_timeout(command, wait)
            .await
            .map_err(|err| match err {
                mpsc::error::SendTimeoutError::Timeout(_) => RelayError::Exhausted {
                    message: format!("relay is saturated: a shard queue stayed full for {wait:?}"),
                    retry_after: Duration::from_millis(250),
                },
                mpsc::error::SendTimeoutError::Closed(_) => stopped(),
            })?;
        Ok(answer.await.map_err(|_| stopped())??)
    }

    /// Lists open outages.
    pub async fn outages(
        &self,
        device: Option<DeviceId>,
        limit: usize,
    ) -> Result<OutageListing, RelayError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(ShardCommand::Outages {
                device,
                limit,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

fn stopped() -> RelayError {
    RelayError::Unavailable("relay is shutting down".into())
}

/// A shard before it runs.
pub struct Shard {
    machine: Debouncer,
    dedup: EventIdWindow,
    wheel: DelayQueue<(SupplyPoint, UtcMillis)>,
    effects: Effects,
    seen: Vec<SeenEvent>,
    clock: Clock,
    commit: CommitHandle,
    metrics: Arc<Metrics>,
    reported: (usize, usize),
}

impl Shard {
    /// A shard with an empty state machine.
    pub fn new(
        machine: Debouncer,
        dedup: EventIdWindow,
        clock: Clock,
        commit: CommitHandle,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            machine,
            dedup,
            wheel: DelayQueue::new(),
            effects: Effects::default(),
            seen: Vec::new(),
            clock,
            commit,
            metrics,
            reported: (0, 0),
        }
    }

    /// Rebuilds the shard's state from the store: outages (timers re-armed at their original
    /// due times; overdue ones fire at once), tombstones and event keys (each in time order).
    pub fn restore(&mut self, recovered: Restored) {
        for (point, outage) in recovered.outages {
            if let Some(due_at) = self.machine.restore(point, outage) {
                self.wheel
                    .insert_at((point, due_at), self.clock.instant_at(due_at));
            }
        }
        for tombstone in recovered.tombstones {
            self.machine.restore_tombstone(tombstone);
        }
        for event in recovered.events {
            self.dedup.restore(event.key, event.seen_at);
        }
        self.report_gauges();
    }

    /// Starts the task; it stops when `shutdown` is cancelled or every handle is dropped.
    pub fn spawn(
        self,
        queue: usize,
        name: &str,
        tasks: &Tasks,
        shutdown: CancellationToken,
    ) -> ShardHandle {
        let (tx, rx) = mpsc::channel(queue);
        tasks.spawn(name, self.run(rx, shutdown));
        ShardHandle { tx }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<ShardCommand>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(expired) = futures::future::poll_fn(|cx| self.wheel.poll_expired(cx)), if !self.wheel.is_empty() => {
                    self.on_expired(expired.into_inner()).await;
                }
                command = rx.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => break,
                },
            }
        }
        self.metrics
            .pending_timers
            .decrement(self.reported.0 as f64);
        self.metrics.open_outages.decrement(self.reported.1 as f64);
    }

    async fn on_expired(&mut self, first: (SupplyPoint, UtcMillis)) {
        let now = self.clock.now();
        let (point, due_at) = first;
        self.machine.on_timer(point, due_at, now, &mut self.effects);
        for _ in 1..EXPIRY_BATCH {
            let next = futures::future::poll_fn(|cx| self.wheel.poll_expired(cx)).now_or_never();
            let Some(Some(expired)) = next else { break };
            let (point, due_at) = expired.into_inner();
            self.machine.on_timer(point, due_at, now, &mut self.effects);
        }
        if let Err(err) = self.flush(ApplyReport::default(), None).await {
            tracing::error!(%err, "cannot store alerts from expired timers");
        }
    }

    async fn on_command(&mut self, command: ShardCommand) {
        match command {
            ShardCommand::Apply {
                events,
                received_at,
                reply,
            } => {
                let report = self.apply(&events, received_at);
                if let Err(err) = self.flush(report, Some(reply)).await {
                    tracing::error!(%err, "cannot hand a batch to the commit stage");
                }
            }
            ShardCommand::Outages {
                device,
                limit,
                reply,
            } => {
                let _ = reply.send(self.list(device, limit));
            }
        }
    }

    fn apply(&mut self, events: &[DeviceEvent], received_at: UtcMillis) -> ApplyReport {
        let at = Arrival {
            received: received_at,
            now: self.clock.now(),
        };
        self.machine.expire_tombstones(at.now);
        let mut report = ApplyReport::default();
        for event in events {
            let restored = matches!(event.kind, EventKind::Restored { .. });
            let outcome = if self.dedup.insert(event.key, at.now) {
                report.accepted += 1;
                self.seen.push(SeenEvent {
                    device: event.point.device,
                    key: event.key,
                    seen_at: at.now,
                });
                self.machine.on_event(event, at, &mut self.effects)
            } else {
                report.duplicates += 1;
                Outcome::Duplicate
            };
            self.metrics.event(restored, outcome);
        }
        report
    }

    /// Arms the effects' timers and hands everything else to the commit stage; `reply` is
    /// answered there once durable.
    async fn flush(
        &mut self,
        report: ApplyReport,
        reply: Option<oneshot::Sender<Result<ApplyReport, StoreError>>>,
    ) -> Result<(), StoreError> {
        for (point, due_at) in self.effects.timers.drain(..) {
            self.wheel
                .insert_at((point, due_at), self.clock.instant_at(due_at));
        }
        self.report_gauges();
        let batch = Batch {
            events: std::mem::take(&mut self.seen),
            outages: std::mem::take(&mut self.effects.changes),
            tombstones: std::mem::take(&mut self.effects.tombstones),
            alerts: std::mem::take(&mut self.effects.alerts),
        };
        let unchanged = batch.events.is_empty()
            && batch.outages.is_empty()
            && batch.tombstones.is_empty()
            && batch.alerts.is_empty();
        if unchanged && reply.is_none() {
            return Ok(());
        }
        // Even a batch of duplicates goes through the commit stage: its reply must not
        // overtake the commit of the batch that first carried those events.
        self.commit.batch(batch, report, reply).await
    }

    fn report_gauges(&mut self) {
        let now = (self.machine.pending_count(), self.machine.open_count());
        let adjust = |gauge: &metrics::Gauge, before: usize, after: usize| {
            if after >= before {
                gauge.increment((after - before) as f64);
            } else {
                gauge.decrement((before - after) as f64);
            }
        };
        adjust(&self.metrics.pending_timers, self.reported.0, now.0);
        adjust(&self.metrics.open_outages, self.reported.1, now.1);
        self.reported = now;
    }

    fn list(&self, device: Option<DeviceId>, limit: usize) -> OutageListing {
        let mut listing = OutageListing::default();
        for (point, outage) in self.machine.outages() {
            if device.is_some_and(|d| d != point.device) {
                continue;
            }
            listing.total += 1;
            if listing.outages.len() < limit {
                listing.outages.push((*point, *outage));
            }
        }
        listing
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
