//! The storage interface: open outages, tombstones and de-duplication keys (what the state
//! machines are rebuilt from), per-subscriber alert logs with sequence numbers, acknowledgement
//! cursors, and the parked-alert log.
//!
//! Semantics every implementation keeps:
//! - [`Store::commit`] applies a group of [`Write`]s atomically, in order, and returns only
//!   once they are as durable as the implementation promises. Nothing is acknowledged to a
//!   publisher or a subscriber before its write returned.
//! - Each log numbers its entries from 1, contiguously; a sequence is never reused, not even
//!   after a restart or after retention removed entries.
//! - Acks are cumulative and idempotent and may not pass the head. Entries up to the ack
//!   cursor (and entries retention removed) are dropped; reading below the first retained
//!   sequence is [`StoreError::Gone`], never a silent skip.
//! - [`Store::recover`] returns what the state machines need to resume exactly where the
//!   last successful commit left them.
//!
//! Implementations: [`memory::MemoryStore`] (nothing survives a restart; the reference for
//! the semantics and for tests) and [`durable::DurableStore`] (redb, fsync per commit group).

pub mod codec;
#[cfg(test)]
mod conformance;
pub mod durable;
pub mod memory;

pub use crate::debounce::Tombstone;
use crate::debounce::{OpenOutage, OutageChange};
use crate::domain::event::EventKey;
use crate::domain::{Alert, DeviceId, SupplyPoint, UtcMillis};
use crate::route::{ParkReason, Route, SubscriberId};

pub use durable::DurableStore;
pub use memory::MemoryStore;

/// Which log: a subscriber's, or the parked alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogId {
    /// A subscriber's delivery log.
    Subscriber(SubscriberId),
    /// Alerts that routed nowhere.
    Parked,
}

/// Where an alert was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To a subscriber, with the routing facts the DNO sees.
    Routed(Route),
    /// Nowhere yet, and why.
    Parked(ParkReason),
}

/// One stored alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in its log, from 1.
    pub sequence: u64,
    /// The alert.
    pub alert: Alert,
    /// Its route, or why it is parked.
    pub destination: Destination,
}

/// Cursor positions of one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStatus {
    /// Last sequence written (0 when empty).
    pub head: u64,
    /// Last sequence acknowledged (0 when none).
    pub acked: u64,
    /// First sequence still readable.
    pub first_retained: u64,
}

impl LogStatus {
    /// Entries written and not acknowledged.
    pub fn backlog(&self) -> u64 {
        self.head - self.acked
    }
}

/// An accepted event's de-duplication key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenEvent {
    /// The device (decides the shard on recovery).
    pub device: DeviceId,
    /// The key.
    pub key: EventKey,
    /// When it was accepted (relay time; expiry counts from here).
    pub seen_at: UtcMillis,
}

/// One change to store; a commit group is a slice of these, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A shard's batch: accepted event keys, outage changes and tombstones.
    State {
        /// Accepted event keys.
        events: Vec<SeenEvent>,
        /// Open-outage changes, in order.
        outages: Vec<OutageChange>,
        /// New tombstones.
        tombstones: Vec<Tombstone>,
    },
    /// Alerts appended to a log, in order.
    Append {
        /// The log.
        log: LogId,
        /// The alerts and their destinations.
        entries: Vec<(Alert, Destination)>,
    },
    /// A cumulative acknowledgement.
    Ack {
        /// The log.
        log: LogId,
        /// Up to and including this sequence.
        upto: u64,
    },
    /// Forget event keys and tombstones accepted/closed before the given times.
    Expire {
        /// Event keys seen before this are dropped.
        events_before: UtcMillis,
        /// Tombstones closed before this are dropped.
        tombstones_before: UtcMillis,
    },
    /// Retention: drop a log's entries below `first_retained`, acknowledged or not.
    Truncate {
        /// The log.
        log: LogId,
        /// The new first retained sequence.
        first_retained: u64,
    },
}

/// What one [`Write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report.
    Done,
    /// An append: its sequences and the log's new head.
    Appended {
        /// First sequence assigned.
        first: u64,
        /// Last sequence assigned (the new head).
        last: u64,
    },
    /// An ack: the entries it acknowledged and the log's cursors after it.
    Acked {
        /// Entries newly acknowledged.
        entries: Vec<LogEntry>,
        /// Cursors after the ack.
        status: LogStatus,
    },
    /// A truncation: how many unacknowledged entries it removed.
    Truncated {
        /// Unacknowledged entries dropped.
        unacked_removed: u64,
    },
}

/// Everything needed to rebuild the state machines.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Open outages.
    pub outages: Vec<(SupplyPoint, OpenOutage)>,
    /// Live tombstones.
    pub tombstones: Vec<Tombstone>,
    /// Live event keys.
    pub events: Vec<SeenEvent>,
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The requested sequence is no longer retained.
    #[error("sequence {requested} is no longer retained; the oldest available is {first_retained}")]
    Gone {
        /// What was asked for.
        requested: u64,
        /// The oldest readable sequence.
        first_retained: u64,
    },
    /// An ack or read past the last written sequence.
    #[error("sequence {requested} is beyond the last written sequence {head}")]
    BeyondHead {
        /// What was asked for.
        requested: u64,
        /// The head.
        head: u64,
    },
    /// The store cannot take more (disk full).
    #[error("store is full: {0}")]
    Full(String),
    /// The store failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The storage interface; see the module doc for the semantics.
pub trait Store: Send + Sync + 'static {
    /// Applies `writes` atomically and in order; one outcome per write. An ack beyond the
    /// head fails the whole group, so the caller validates acks first.
    fn commit(&self, writes: &[Write]) -> Result<Vec<Outcome>, StoreError>;
    /// Up to `max` entries from sequence `from` on.
    fn read(&self, log: LogId, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError>;
    /// Cursor positions.
    fn status(&self, log: LogId) -> Result<LogStatus, StoreError>;
    /// What the state machines are rebuilt from at start.
    fn recover(&self) -> Result<Recovered, StoreError>;
}
