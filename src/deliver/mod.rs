//! Delivery stage: getting each subscriber's alert log to its DNO.
//!
//! - [`feed`]: the `AlertFeed` gRPC service (resumable Subscribe stream, cumulative Ack).
//! - [`push`]: push mode, calling a DNO-hosted `AlertReceiver` with retries and backoff.
//!
//! [`Delivery`] is the read side they share: every log's cursors (kept in memory, updated by
//! the commit stage after each durable commit), a `watch` per log announcing its head so
//! readers wait without polling, and per-subscriber metrics. Writes (acks included) go
//! through the commit stage. A subscriber's cursor advances only when that subscriber (or
//! its receiver) acknowledges; one slow subscriber holds only its own log.

pub mod convert;
pub mod feed;
pub mod push;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::domain::{AlertKind, BreachCause, Clock};
use crate::route::{RoutingTable, SubscriberId};
use crate::store::{LogEntry, LogId, LogStatus, Store, StoreError};
use crate::telemetry::{PARKED_SUBSCRIBER, SubscriberMetrics};

/// Per-log live state.
#[derive(Debug)]
struct LogState {
    status: Mutex<LogStatus>,
    head: watch::Sender<u64>,
    connected: AtomicU32,
    breaches: AtomicU64,
    last_error: Mutex<String>,
    metrics: SubscriberMetrics,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckSummary {
    /// Highest acknowledged sequence now.
    pub acked: u64,
    /// Entries still unacknowledged.
    pub backlog: u64,
}

/// Read-side state shared by the commit stage, the feed service, push tasks, the SLA watch
/// and Admin.
pub struct Delivery {
    store: Arc<dyn Store>,
    table: Arc<RoutingTable>,
    clock: Clock,
    logs: Vec<LogState>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("logs", &self.logs.len())
            .finish()
    }
}

impl Delivery {
    /// Builds the shared state, reading each log's cursors from the store.
    pub fn new(
        store: Arc<dyn Store>,
        table: Arc<RoutingTable>,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let mut logs = Vec::with_capacity(table.len() + 1);
        let names = table
            .iter()
            .map(|(_, name)| name.to_owned())
            .chain([PARKED_SUBSCRIBER.to_owned()]);
        for (index, name) in names.enumerate() {
            let status = store.status(Self::log_id_at(&table, index))?;
            let metrics = SubscriberMetrics::new(&name);
            metrics.backlog.set(status.backlog() as f64);
            logs.push(LogState {
                status: Mutex::new(status),
                head: watch::Sender::new(status.head),
                connected: AtomicU32::new(0),
                breaches: AtomicU64::new(0),
                last_error: Mutex::new(String::new()),
                metrics,
            });
        }
        Ok(Self {
            store,
            table,
            clock,
            logs,
        })
    }

    fn log_id_at(table: &RoutingTable, index: usize) -> LogId {
        if index < table.len() {
            LogId::Subscriber(SubscriberId(u16::try_from(index).unwrap_or(u16::MAX)))
        } else {
            LogId::Parked
        }
    }

    fn state(&self, log: LogId) -> &LogState {
        let index = match log {
            LogId::Subscriber(id) => usize::from(id.0).min(self.logs.len() - 1),
            LogId::Parked => self.logs.len() - 1,
        };
        &self.logs[index]
    }

    /// The store (for reading entries).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The routing table (subscriber names and modes).
    pub fn table(&self) -> &Arc<RoutingTable> {
        &self.table
    }

    /// The relay clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Every log: subscribers in table order, then the parked log.
    pub fn log_ids(&self) -> impl Iterator<Item = LogId> + '_ {
        (0..self.logs.len()).map(|index| Self::log_id_at(&self.table, index))
    }

    /// Index of a log in [`Delivery::log_ids`] order.
    pub fn log_index(&self, log: LogId) -> usize {
        match log {
            LogId::Subscriber(id) => usize::from(id.0),
            LogId::Parked => self.logs.len() - 1,
        }
    }

    /// Label value for a log's metrics and messages.
    pub fn log_name(&self, log: LogId) -> &str {
        match log {
            LogId::Subscriber(id) => self.table.name(id),
            LogId::Parked => PARKED_SUBSCRIBER,
        }
    }

    /// Cursor positions of a log, as of the last durable commit.
    pub fn status(&self, log: LogId) -> LogStatus {
        *self.state(log).status.lock()
    }

    /// Up to `max` of a log's oldest unacknowledged entries. Retention may move the cursor
    /// between reading it and reading the store; the read then starts where it now begins.
    pub fn read_unacked(&self, log: LogId, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let mut from = self.status(log).acked + 1;
        loop {
            match self.store.read(log, from, max) {
                Err(StoreError::Gone { first_retained, .. }) if first_retained > from => {
                    from = first_retained;
                }
                other => return other,
            }
        }
    }

    /// Commit stage: entries up to `head` are durable.
    pub fn appended(&self, log: LogId, head: u64, count: u64) {
        let state = self.state(log);
        state.status.lock().head = head;
        state.head.send_replace(head);
        state.metrics.backlog.increment(count as f64);
    }

    /// Commit stage: an acknowledgement is durable; records the delivery latency of what it
    /// acknowledged.
    pub fn acked(&self, log: LogId, status: LogStatus, entries: &[LogEntry]) {
        let state = self.state(log);
        *state.status.lock() = status;
        if log != LogId::Parked {
            let now = self.clock.now();
            for entry in entries {
                state
                    .metrics
                    .delivered(entry.alert.kind, now.seconds_since(entry.alert.due_at));
            }
        }
        state.metrics.backlog.set(status.backlog() as f64);
    }

    /// Commit stage: retention removed `removed` unacknowledged entries.
    pub fn truncated(&self, log: LogId, status: LogStatus, removed: u64) {
        let state = self.state(log);
        *state.status.lock() = status;
        state.metrics.backlog.set(status.backlog() as f64);
        state.metrics.expired.increment(removed);
    }

    /// Waits-for-new-entries handle of a log.
    pub fn watch_head(&self, log: LogId) -> watch::Receiver<u64> {
        self.state(log).head.subscribe()
    }

    /// Counts an SLA breach against a log.
    pub fn breach(&self, log: LogId, kind: AlertKind, cause: BreachCause) {
        let state = self.state(log);
        state.breaches.fetch_add(1, Ordering::Relaxed);
        state.metrics.breach(kind, cause);
    }

    /// SLA breaches counted against a log since start.
    pub fn breaches(&self, log: LogId) -> u64 {
        self.state(log).breaches.load(Ordering::Relaxed)
    }

    /// Marks a stream or push connection opened; the guard marks it closed when dropped.
    pub fn connect(self: &Arc<Self>, log: LogId) -> ConnectionGuard {
        let state = self.state(log);
        state.connected.fetch_add(1, Ordering::Relaxed);
        state.metrics.connected.increment(1.0);
        ConnectionGuard {
            delivery: Arc::clone(self),
            log,
        }
    }

    /// Open streams or push connections of a log.
    pub fn connected(&self, log: LogId) -> u32 {
        self.state(log).connected.load(Ordering::Relaxed)
    }

    /// Records the latest push error of a log ("" clears it).
    pub fn set_last_error(&self, log: LogId, error: String) {
        *self.state(log).last_error.lock() = error;
    }

    /// The latest push error of a log.
    pub fn last_error(&self, log: LogId) -> String {
        self.state(log).last_error.lock().clone()
    }
}

/// Keeps a log's connection count up while alive.
#[derive(Debug)]
pub struct ConnectionGuard {
    delivery: Arc<Delivery>,
    log: LogId,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let state = self.delivery.state(self.log);
        state.connected.fetch_sub(1, Ordering::Relaxed);
        state.metrics.connected.decrement(1.0);
    }
}
