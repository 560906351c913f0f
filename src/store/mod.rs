//! The storage interface: per-subscriber alert logs with sequence numbers and cumulative
//! acknowledgement cursors, the parked-alert log, and the set of open outages.
//!
//! Semantics every implementation keeps:
//! - Each log numbers its entries from 1, contiguously; a sequence is never reused.
//! - `ack(log, n)` is cumulative and idempotent; it may not pass the head.
//! - Entries up to the ack cursor may be dropped; reading below the first retained
//!   sequence is an error ([`StoreError::Gone`]), never a silent skip.
//! - `append` returns only once the entries are stored as durably as the implementation
//!   promises; the in-memory store ([`memory::MemoryStore`]) promises nothing across a restart.

pub mod memory;

use crate::debounce::{OpenOutage, OutageChange};
use crate::domain::{Alert, SupplyPoint};
use crate::route::{ParkReason, Route, SubscriberId};

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
    /// The store cannot take more (disk or memory limit).
    #[error("store is full: {0}")]
    Full(String),
    /// The store failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The storage interface; see the module doc for the semantics.
pub trait Store: Send + Sync + 'static {
    /// Appends entries to a log in order; returns the new head.
    fn append(&self, log: LogId, entries: &[(Alert, Destination)]) -> Result<u64, StoreError>;
    /// Up to `max` entries from sequence `from` on.
    fn read(&self, log: LogId, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError>;
    /// Acknowledges every entry up to `upto`; returns the entries this call acknowledged.
    fn ack(&self, log: LogId, upto: u64) -> Result<Vec<LogEntry>, StoreError>;
    /// Cursor positions.
    fn status(&self, log: LogId) -> Result<LogStatus, StoreError>;
    /// Applies changes to the open-outage set.
    fn record_outages(&self, changes: &[OutageChange]) -> Result<(), StoreError>;
    /// Every open outage, for rebuilding the state machines at start.
    fn open_outages(&self) -> Result<Vec<(SupplyPoint, OpenOutage)>, StoreError>;
}
