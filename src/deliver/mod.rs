//! Delivery stage: getting each subscriber's alert log to its DNO.
//!
//! - [`outbox`]: routes emitted alerts and appends them to subscriber logs (or parks them).
//! - [`feed`]: the `AlertFeed` gRPC service (resumable Subscribe stream, cumulative Ack).
//! - [`push`]: push mode, calling a DNO-hosted `AlertReceiver` with retries and backoff.
//!
//! [`Delivery`] is the state they share: the store, a `watch` per log announcing its head
//! (so readers wait without polling), acknowledgement handling, and per-subscriber counters.
//! A subscriber's cursor advances only when that subscriber (or its receiver) acknowledges;
//! one slow subscriber holds only its own log.

pub mod convert;
pub mod feed;
pub mod outbox;
pub mod push;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::domain::Clock;
use crate::route::{RoutingTable, SubscriberId};
use crate::store::{LogEntry, LogId, LogStatus, Store, StoreError};
use crate::telemetry::{PARKED_SUBSCRIBER, SubscriberMetrics};

/// Per-log live state.
#[derive(Debug)]
struct LogState {
    head: watch::Sender<u64>,
    connected: AtomicU32,
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

/// State shared by the outbox, the feed service, push tasks, the SLA watch and Admin.
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
    /// Builds the shared state, reading each log's current head from the store.
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
            let log = Self::log_id_at(&table, index);
            let status = store.status(log)?;
            let metrics = SubscriberMetrics::new(&name);
            metrics.backlog.set(status.backlog() as f64);
            logs.push(LogState {
                head: watch::Sender::new(status.head),
                connected: AtomicU32::new(0),
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

    /// The store.
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

    /// Label value for a log's metrics and messages.
    pub fn log_name(&self, log: LogId) -> &str {
        match log {
            LogId::Subscriber(id) => self.table.name(id),
            LogId::Parked => PARKED_SUBSCRIBER,
        }
    }

    /// Announces entries appended up to `head`.
    pub fn appended(&self, log: LogId, head: u64, count: usize) {
        let state = self.state(log);
        state.head.send_replace(head);
        state.metrics.backlog.increment(count as f64);
    }

    /// Waits-for-new-entries handle of a log.
    pub fn watch_head(&self, log: LogId) -> watch::Receiver<u64> {
        self.state(log).head.subscribe()
    }

    /// Acknowledges a log up to `upto`, recording delivery latency of what it acknowledged.
    pub fn ack(&self, log: LogId, upto: u64) -> Result<AckSummary, StoreError> {
        self.take(log, upto)?;
        let status = self.store.status(log)?;
        Ok(AckSummary {
            acked: status.acked,
            backlog: status.backlog(),
        })
    }

    /// Acknowledges a log up to `upto` and returns the entries this acknowledged.
    pub fn take(&self, log: LogId, upto: u64) -> Result<Vec<LogEntry>, StoreError> {
        let acked = self.store.ack(log, upto)?;
        let state = self.state(log);
        if log != LogId::Parked {
            let now = self.clock.now();
            for entry in &acked {
                state
                    .metrics
                    .delivered(entry.alert.kind, now.seconds_since(entry.alert.due_at));
            }
        }
        state.metrics.backlog.decrement(acked.len() as f64);
        Ok(acked)
    }

    /// Cursor positions of a log.
    pub fn status(&self, log: LogId) -> Result<LogStatus, StoreError> {
        self.store.status(log)
    }

    /// Counts an SLA breach against a log.
    pub fn breach(
        &self,
        log: LogId,
        kind: crate::domain::AlertKind,
        cause: crate::domain::BreachCause,
    ) {
        self.state(log).metrics.breach(kind, cause);
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
