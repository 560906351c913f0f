//! Commit stage: the single writer between the state machines and the store.
//!
//! Shards send what each batch (or timer sweep) changed; subscribers' acks, registry reloads
//! and periodic maintenance come the same way. One thread takes everything queued, routes the
//! batches' alerts (registry → subscriber, or the parked log), and applies the whole group in
//! one durable [`Store::commit`] (group commit: one fsync for many batches). Only then does it
//! answer the publishers, move the subscribers' heads and cursors, and hand the new alerts to
//! the SLA watch. Routing here, in commit order, is what keeps a PRA behind its POA even
//! across a registry reload that re-routes parked alerts.
//!
//! If a commit fails, what the state machines hold is ahead of the store: the stage fences
//! itself, every later write fails `UNAVAILABLE`, and ingest is refused until a restart
//! rebuilds the state from the store. Running out of disk is avoided before it happens: a
//! data directory below `store.min_free_disk` refuses ingest with `RESOURCE_EXHAUSTED`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::config::StoreConfig;
use crate::debounce::{ApplyReport, OutageChange};
use crate::deliver::{AckSummary, Delivery};
use crate::domain::{Alert, UtcMillis};
use crate::error::RelayError;
use crate::route::{Registry, Router};
use crate::sla::{SlaInbox, Tracked};
use crate::store::{
    Destination, LogEntry, LogId, Outcome, SeenEvent, Store, StoreError, Tombstone, Write,
};
use crate::telemetry::Metrics;

/// Requests one commit group may hold.
const MAX_GROUP: usize = 512;

/// What a shard's batch (or timer sweep) changed.
#[derive(Debug, Default)]
pub struct Batch {
    /// Accepted event keys.
    pub events: Vec<SeenEvent>,
    /// Open-outage changes.
    pub outages: Vec<OutageChange>,
    /// New tombstones.
    pub tombstones: Vec<Tombstone>,
    /// Emitted alerts, in order.
    pub alerts: Vec<Alert>,
}

/// A request to the commit stage.
#[derive(Debug)]
enum Request {
    Batch {
        batch: Batch,
        report: ApplyReport,
        reply: Option<oneshot::Sender<Result<ApplyReport, StoreError>>>,
    },
    Ack {
        log: LogId,
        upto: u64,
        reply: oneshot::Sender<Result<AckSummary, StoreError>>,
    },
    Reload {
        registry: Registry,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Maintain {
        now: UtcMillis,
    },
}

/// A caller waiting for the commit that carries its request.
enum Waiting {
    Batch(
        ApplyReport,
        oneshot::Sender<Result<ApplyReport, StoreError>>,
    ),
    Ack(oneshot::Sender<Result<AckSummary, StoreError>>),
}

/// Whether ingest may go ahead: refused while the disk is low or after a store failure.
#[derive(Debug, Default)]
pub struct Admission {
    disk_low: AtomicBool,
    failed: Mutex<Option<StoreError>>,
}

impl Admission {
    /// `Ok` when a batch may be applied.
    pub fn check(&self) -> Result<(), RelayError> {
        if let Some(err) = self.failed.lock().clone() {
            // A full disk answers RESOURCE_EXHAUSTED, any other failure UNAVAILABLE; either
            // way only a restart (rebuilding state from the store) lifts the fence.
            return Err(RelayError::Store(err));
        }
        if self.disk_low.load(Ordering::Relaxed) {
            return Err(RelayError::Exhausted {
                message: "the data directory has less free space than store.min_free_disk_bytes; ingest paused".into(),
                retry_after: Duration::from_secs(5),
            });
        }
        Ok(())
    }

    /// Records the data directory's free-space state.
    pub fn set_disk_low(&self, low: bool) {
        self.disk_low.store(low, Ordering::Relaxed);
    }

    fn fail(&self, err: StoreError) {
        let fenced = match err {
            StoreError::Full(message) => StoreError::Full(format!(
                "{message}; ingest is refused until the relay restarts"
            )),
            other => StoreError::Unavailable(format!(
                "{other}; ingest is refused until the relay restarts"
            )),
        };
        self.failed.lock().get_or_insert(fenced);
    }
}

/// Cloneable handle to the commit stage.
#[derive(Debug, Clone)]
pub struct CommitHandle {
    tx: mpsc::Sender<Request>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the commit stage has stopped".into())
}

impl CommitHandle {
    /// Queues a shard's batch; `reply` gets `report` once it is durable.
    pub async fn batch(
        &self,
        batch: Batch,
        report: ApplyReport,
        reply: Option<oneshot::Sender<Result<ApplyReport, StoreError>>>,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Request::Batch {
                batch,
                report,
                reply,
            })
            .await
            .map_err(|_| stopped())
    }

    /// Acknowledges a log up to `upto`, durably.
    pub async fn ack(&self, log: LogId, upto: u64) -> Result<AckSummary, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Ack { log, upto, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Swaps in a new registry and re-routes parked alerts; returns how many found an owner.
    pub async fn reload(&self, registry: Registry) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Reload { registry, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Expires old event keys and tombstones and applies retention.
    pub async fn maintain(&self, now: UtcMillis) -> Result<(), StoreError> {
        self.tx
            .send(Request::Maintain { now })
            .await
            .map_err(|_| stopped())
    }
}

/// The stage's parts.
pub struct CommitStage {
    /// The store written to.
    pub store: Arc<dyn Store>,
    /// Routing.
    pub router: Arc<Router>,
    /// Read side, announced after each commit.
    pub delivery: Arc<Delivery>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// SLA watch hand-off.
    pub sla: Arc<SlaInbox>,
    /// Ingest admission.
    pub admission: Arc<Admission>,
    /// Expiry and retention settings.
    pub config: StoreConfig,
    /// De-duplication window (event keys older are expired).
    pub dedup_window: Duration,
    /// Tombstone lifetime.
    pub tombstone_ttl: Duration,
}

impl CommitStage {
    /// Starts the stage on its own thread; it stops when every handle is dropped.
    pub fn spawn(
        self,
        queue: usize,
    ) -> std::io::Result<(CommitHandle, std::thread::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel(queue);
        let thread = std::thread::Builder::new()
            .name("commit".into())
            .spawn(move || {
                let mut group = Vec::with_capacity(MAX_GROUP);
                while let Some(first) = rx.blocking_recv() {
                    self.take_group(first, &mut rx, &mut group);
                }
                tracing::info!("commit stage stopped");
            })?;
        Ok((CommitHandle { tx }, thread))
    }

    /// Runs the stage as a tokio task instead of a thread, so paused-clock tests see it as
    /// part of the runtime (the in-memory store never blocks).
    #[cfg(test)]
    pub fn spawn_task(self, queue: usize) -> CommitHandle {
        let (tx, mut rx) = mpsc::channel(queue);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(MAX_GROUP);
            while let Some(first) = rx.recv().await {
                self.take_group(first, &mut rx, &mut group);
            }
        });
        CommitHandle { tx }
    }

    fn take_group(
        &self,
        first: Request,
        rx: &mut mpsc::Receiver<Request>,
        group: &mut Vec<Request>,
    ) {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        self.process(group);
    }

    fn process(&self, group: &mut Vec<Request>) {
        // A reload reads the parked log, so what precedes it must be committed first.
        let mut pending = Vec::new();
        for request in group.drain(..) {
            match request {
                Request::Reload { registry, reply } => {
                    self.commit(std::mem::take(&mut pending));
                    let _ = reply.send(self.reload(registry));
                }
                other => pending.push(other),
            }
        }
        self.commit(pending);
    }

    fn commit(&self, requests: Vec<Request>) {
        if requests.is_empty() {
            return;
        }
        let mut writes = Vec::new();
        let mut waiting = Vec::with_capacity(requests.len());
        for request in requests {
            match request {
                Request::Batch {
                    batch,
                    report,
                    reply,
                } => {
                    let changed = !(batch.events.is_empty()
                        && batch.outages.is_empty()
                        && batch.tombstones.is_empty());
                    if changed {
                        writes.push(Write::State {
                            events: batch.events,
                            outages: batch.outages,
                            tombstones: batch.tombstones,
                        });
                    }
                    self.route(&batch.alerts, &mut writes);
                    waiting.extend(reply.map(|reply| Waiting::Batch(report, reply)));
                }
                Request::Ack { log, upto, reply } => {
                    let head = self.delivery.status(log).head + self.pending_appends(&writes, log);
                    if upto > head {
                        let _ = reply.send(Err(StoreError::BeyondHead {
                            requested: upto,
                            head,
                        }));
                        continue;
                    }
                    writes.push(Write::Ack { log, upto });
                    waiting.push(Waiting::Ack(reply));
                }
                Request::Maintain { now } => self.maintenance(now, &mut writes),
                Request::Reload { reply, .. } => {
                    // `process` handles reloads; one reaching here is a bug, not a reason to
                    // drop the group.
                    let _ = reply.send(Err(StoreError::Unavailable("reload out of order".into())));
                }
            }
        }
        if writes.is_empty() {
            // Only duplicates (or stale timers): nothing to store, and everything before
            // this group is already committed.
            Self::reply(waiting, &writes, &[]);
            return;
        }
        let started = Instant::now();
        let result = self.store.commit(&writes);
        self.metrics
            .store_commit
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => {
                self.announce(&writes, &outcomes, |_| true);
                Self::reply(waiting, &writes, &outcomes);
            }
            Err(err) => {
                tracing::error!(%err, "store commit failed; ingest refused until restart");
                self.metrics.store_errors.increment(1);
                self.metrics.ingest_refused.set(1.0);
                self.admission.fail(err.clone());
                for waiting in waiting {
                    match waiting {
                        Waiting::Batch(_, reply) => {
                            let _ = reply.send(Err(err.clone()));
                        }
                        Waiting::Ack(reply) => {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
            }
        }
    }

    fn pending_appends(&self, writes: &[Write], log: LogId) -> u64 {
        writes
            .iter()
            .map(|w| match w {
                Write::Append { log: l, entries } if *l == log => entries.len() as u64,
                _ => 0,
            })
            .sum()
    }

    fn route(&self, alerts: &[Alert], writes: &mut Vec<Write>) {
        if alerts.is_empty() {
            return;
        }
        let now = self.delivery.clock().now();
        let mut per_log: Vec<Vec<(Alert, Destination)>> =
            vec![Vec::new(); self.delivery.log_ids().count()];
        for alert in alerts {
            let could_emit_at = alert.due_at.max(alert.received_at);
            self.metrics
                .alert_emitted(alert.kind, now.seconds_since(could_emit_at));
            self.place(*alert, &mut per_log);
        }
        self.push_appends(per_log, writes);
    }

    fn place(&self, alert: Alert, per_log: &mut [Vec<(Alert, Destination)>]) {
        match self.router.route(alert.point.device, alert.event_mpan) {
            Ok(route) => {
                per_log[usize::from(route.subscriber.0)].push((alert, Destination::Routed(route)))
            }
            Err(reason) => {
                self.metrics.parked(reason.as_label());
                tracing::debug!(alert_id = %alert.id(), %reason, "alert parked");
                if let Some(parked) = per_log.last_mut() {
                    parked.push((alert, Destination::Parked(reason)));
                }
            }
        }
    }

    fn push_appends(&self, per_log: Vec<Vec<(Alert, Destination)>>, writes: &mut Vec<Write>) {
        for (log, entries) in self.delivery.log_ids().zip(per_log) {
            if !entries.is_empty() {
                writes.push(Write::Append { log, entries });
            }
        }
    }

    fn maintenance(&self, now: UtcMillis, writes: &mut Vec<Write>) {
        writes.push(Write::Expire {
            events_before: UtcMillis(
                now.0 - i64::try_from(self.dedup_window.as_millis()).unwrap_or(i64::MAX),
            ),
            tombstones_before: UtcMillis(
                now.0 - i64::try_from(self.tombstone_ttl.as_millis()).unwrap_or(i64::MAX),
            ),
        });
        for log in self.delivery.log_ids() {
            let status = self.delivery.status(log);
            let mut first = status.first_retained;
            if status.head - first.saturating_sub(1) > self.config.retention_max_alerts {
                first = status.head + 1 - self.config.retention_max_alerts;
            }
            first = first.max(self.first_young_enough(log, first, now));
            if first > status.first_retained {
                writes.push(Write::Truncate {
                    log,
                    first_retained: first,
                });
            }
        }
    }

    /// The first sequence from `from` whose alert is younger than the retention age (at most
    /// one read batch further, so a maintenance pass stays short).
    fn first_young_enough(&self, log: LogId, from: u64, now: UtcMillis) -> u64 {
        let cutoff = UtcMillis(
            now.0 - i64::try_from(self.config.retention_max_age.as_millis()).unwrap_or(i64::MAX),
        );
        // The common case, nothing too old, costs one entry read.
        let oldest_is_young = self
            .store
            .read(log, from, 1)
            .map(|first| first.first().is_none_or(|e| e.alert.emitted_at >= cutoff));
        if oldest_is_young.unwrap_or(true) {
            return from;
        }
        match self.store.read(log, from, 4096) {
            Ok(entries) => entries
                .iter()
                .find(|e| e.alert.emitted_at >= cutoff)
                .map_or(from + entries.len() as u64, |e| e.sequence),
            Err(_) => from,
        }
    }

    fn announce(&self, writes: &[Write], outcomes: &[Outcome], track: impl Fn(&Alert) -> bool) {
        for (write, outcome) in writes.iter().zip(outcomes) {
            match (write, outcome) {
                (Write::Append { log, entries }, Outcome::Appended { first, last }) => {
                    let tracked = entries
                        .iter()
                        .zip(*first..)
                        .filter(|((alert, _), _)| track(alert));
                    self.sla.push(tracked.map(|((alert, _), sequence)| Tracked {
                        log: *log,
                        sequence,
                        kind: alert.kind,
                        deadline: alert.deadline,
                        cause: alert.breach_cause(),
                        id: alert.id(),
                    }));
                    self.delivery.appended(*log, *last, entries.len() as u64);
                }
                (Write::Ack { log, .. }, Outcome::Acked { entries, status }) => {
                    self.delivery.acked(*log, *status, entries);
                    if *log == LogId::Parked {
                        self.metrics.unparked(entries.len());
                    }
                }
                (Write::Truncate { log, .. }, Outcome::Truncated { unacked_removed }) => {
                    let status = self.store.status(*log).unwrap_or_default();
                    self.delivery.truncated(*log, status, *unacked_removed);
                    if *unacked_removed > 0 {
                        tracing::warn!(
                            subscriber = self.delivery.log_name(*log),
                            removed = unacked_removed,
                            first_retained = status.first_retained,
                            "retention removed unacknowledged alerts"
                        );
                    }
                }
                _ => {}
            }
        }
    }

    fn reply(waiting: Vec<Waiting>, writes: &[Write], outcomes: &[Outcome]) {
        let mut acks = writes
            .iter()
            .zip(outcomes)
            .filter_map(|(w, o)| match (w, o) {
                (Write::Ack { .. }, Outcome::Acked { status, .. }) => Some(AckSummary {
                    acked: status.acked,
                    backlog: status.backlog(),
                }),
                _ => None,
            });
        for waiting in waiting {
            match waiting {
                Waiting::Batch(report, reply) => {
                    let _ = reply.send(Ok(report));
                }
                Waiting::Ack(reply) => {
                    let _ = reply.send(acks.next().ok_or_else(stopped));
                }
            }
        }
    }

    fn reload(&self, registry: Registry) -> Result<u64, StoreError> {
        self.router.replace_registry(registry);
        let status = self.delivery.status(LogId::Parked);
        let mut parked: Vec<LogEntry> = Vec::new();
        let mut next = status.acked + 1;
        while next <= status.head {
            let chunk = self.store.read(LogId::Parked, next, 4096)?;
            let Some(last) = chunk.last() else { break };
            next = last.sequence + 1;
            parked.extend(chunk);
        }
        let mut per_log: Vec<Vec<(Alert, Destination)>> =
            vec![Vec::new(); self.delivery.log_ids().count()];
        let now = self.delivery.clock().now();
        for entry in &parked {
            self.place(entry.alert, &mut per_log);
        }
        let reparked = per_log.last().map_or(0, Vec::len) as u64;
        let mut writes = vec![Write::Ack {
            log: LogId::Parked,
            upto: status.head,
        }];
        self.push_appends(per_log, &mut writes);
        let outcomes = self.store.commit(&writes).inspect_err(|err| {
            self.admission.fail(err.clone());
            self.metrics.store_errors.increment(1);
        })?;
        // A parked alert whose deadline passed was already reported against the parked log.
        self.announce(&writes, &outcomes, |alert| alert.deadline > now);
        Ok(parked.len() as u64 - reparked)
    }
}

#[cfg(test)]
#[path = "commit_tests.rs"]
mod tests;
