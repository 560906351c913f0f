//! Delivery stage: getting each subscriber's alert log to its DNO, whatever the backend.
//!
//! - [`feed`]: the `AlertFeed` gRPC service (resumable Subscribe stream, cumulative Ack).
//! - [`push`]: push mode, calling a DNO-hosted `AlertReceiver` with retries and backoff.
//!
//! [`Delivery`] is what they share: the alert log, and this instance's view of each
//! subscriber (open streams and push connections, the last push error, the alerts sent and
//! not yet acknowledged, for the delivery-latency histogram, and the subscriber's metrics).
//! A subscriber's cursor advances only when that subscriber (or its receiver) acknowledges;
//! one slow subscriber holds only its own log.

pub mod convert;
pub mod feed;
pub mod push;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use crate::domain::{AlertKind, BreachCause, Clock, UtcMillis};
use crate::log::{AlertLog, LogEntry, LogStatus};
use crate::route::{RoutingTable, SubscriberId};
use crate::telemetry::SubscriberMetrics;

/// Alerts sent and not yet acknowledged that are remembered per subscriber for the
/// delivery-latency histogram (beyond this the oldest are forgotten; only the metric loses
/// them).
const SENT_REMEMBERED: usize = 100_000;

/// This instance's view of one subscriber.
#[derive(Debug)]
struct SubscriberState {
    connected: AtomicU32,
    last_error: Mutex<String>,
    /// Sent and not yet acknowledged: sequence → (kind, due time).
    sent: Mutex<BTreeMap<u64, (AlertKind, UtcMillis)>>,
    metrics: SubscriberMetrics,
}

/// The delivery side shared by the feed service, push sessions, SLA watches and Admin.
pub struct Delivery {
    alerts: Arc<dyn AlertLog>,
    table: Arc<RoutingTable>,
    clock: Clock,
    subscribers: Vec<SubscriberState>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// The delivery side of `alerts` for the subscribers of `table`.
    pub fn new(alerts: Arc<dyn AlertLog>, table: Arc<RoutingTable>, clock: Clock) -> Self {
        let subscribers = table
            .iter()
            .map(|(_, name)| SubscriberState {
                connected: AtomicU32::new(0),
                last_error: Mutex::new(String::new()),
                sent: Mutex::new(BTreeMap::new()),
                metrics: SubscriberMetrics::new(name),
            })
            .collect();
        Self {
            alerts,
            table,
            clock,
            subscribers,
        }
    }

    fn state(&self, log: SubscriberId) -> Option<&SubscriberState> {
        self.subscribers.get(usize::from(log.0))
    }

    /// The alert log.
    pub fn alerts(&self) -> &Arc<dyn AlertLog> {
        &self.alerts
    }

    /// The routing table (subscriber names and modes).
    pub fn table(&self) -> &Arc<RoutingTable> {
        &self.table
    }

    /// The relay clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// A subscriber's name, for metrics and messages.
    pub fn name(&self, log: SubscriberId) -> &str {
        self.table.name(log)
    }

    /// Remembers entries just sent, so their acknowledgement records the delivery latency.
    pub fn sent(&self, log: SubscriberId, entries: &[LogEntry]) {
        let Some(state) = self.state(log) else { return };
        let mut sent = state.sent.lock();
        for entry in entries {
            sent.insert(entry.sequence, (entry.alert.kind, entry.alert.due_at));
        }
        while sent.len() > SENT_REMEMBERED {
            sent.pop_first();
        }
    }

    /// An acknowledgement is durable: records the delivery latency of what it acknowledged
    /// (of what this instance sent) and the backlog.
    pub fn acked(&self, log: SubscriberId, status: LogStatus) {
        let Some(state) = self.state(log) else { return };
        let now = self.clock.now();
        // Only what the ack covers is taken out (the map may hold many more sent since).
        let mut sent = state.sent.lock();
        while let Some(first) = sent.first_entry()
            && *first.key() <= status.acked
        {
            let (kind, due_at) = first.remove();
            state.metrics.delivered(kind, now.seconds_since(due_at));
        }
        drop(sent);
        state.metrics.backlog.set(status.backlog() as f64);
    }

    /// The backlog as an SLA watch last saw it.
    pub fn backlog(&self, log: SubscriberId, backlog: u64) {
        if let Some(state) = self.state(log) {
            state.metrics.backlog.set(backlog as f64);
        }
    }

    /// Retention removed `removed` unacknowledged alerts of `log`.
    pub fn expired(&self, log: SubscriberId, removed: u64, status: LogStatus) {
        if let Some(state) = self.state(log) {
            state.metrics.expired.increment(removed);
            state.metrics.backlog.set(status.backlog() as f64);
        }
    }

    /// Counts SLA breaches against a log.
    pub fn breaches(&self, log: SubscriberId, kind: AlertKind, cause: BreachCause, count: u64) {
        if let Some(state) = self.state(log) {
            for _ in 0..count {
                state.metrics.breach(kind, cause);
            }
        }
    }

    /// Marks a stream or push connection opened; the guard marks it closed when dropped.
    pub fn connect(self: &Arc<Self>, log: SubscriberId) -> ConnectionGuard {
        if let Some(state) = self.state(log) {
            state.connected.fetch_add(1, Ordering::Relaxed);
            state.metrics.connected.increment(1.0);
        }
        ConnectionGuard {
            delivery: Arc::clone(self),
            log,
        }
    }

    /// Open streams or push connections of a log on this instance.
    pub fn connected(&self, log: SubscriberId) -> u32 {
        self.state(log)
            .map_or(0, |state| state.connected.load(Ordering::Relaxed))
    }

    /// Records the latest push error of a log ("" clears it).
    pub fn set_last_error(&self, log: SubscriberId, error: String) {
        if let Some(state) = self.state(log) {
            *state.last_error.lock() = error;
        }
    }

    /// The latest push error of a log, as seen on this instance.
    pub fn last_error(&self, log: SubscriberId) -> String {
        self.state(log)
            .map(|state| state.last_error.lock().clone())
            .unwrap_or_default()
    }
}

/// Keeps a log's connection count up while alive.
#[derive(Debug)]
pub struct ConnectionGuard {
    delivery: Arc<Delivery>,
    log: SubscriberId,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(state) = self.delivery.state(self.log) {
            state.connected.fetch_sub(1, Ordering::Relaxed);
            state.metrics.connected.decrement(1.0);
        }
    }
}
