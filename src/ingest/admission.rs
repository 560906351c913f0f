//! Whether ingest may go ahead: refused while the data directory is low on space (before any
//! state changes), and for good once an append failed (the owners' state would be ahead of
//! the log; only a restart, rebuilding it from the log, lifts that fence).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::RelayError;
use crate::log::LogError;

/// Ingest's go-ahead, shared by ingest, the owners and maintenance.
#[derive(Debug, Default)]
pub struct Admission {
    disk_low: AtomicBool,
    failed: Mutex<Option<LogError>>,
}

impl Admission {
    /// `Ok` when a batch may be applied.
    pub fn check(&self) -> Result<(), RelayError> {
        if let Some(err) = self.failed.lock().clone() {
            // A full disk answers RESOURCE_EXHAUSTED, any other failure UNAVAILABLE.
            return Err(RelayError::Log(err));
        }
        if self.disk_low.load(Ordering::Relaxed) {
            return Err(RelayError::Exhausted {
                message: "the data directory has less free space than store.min_free_disk_bytes; ingest paused".into(),
                retry_after: Duration::from_secs(5),
            });
        }
        Ok(())
    }

    /// Whether ingest is refused now, for the `ingest_refused` gauge.
    pub fn refused(&self) -> bool {
        self.failed.lock().is_some() || self.disk_low.load(Ordering::Relaxed)
    }

    /// Records the data directory's free-space state.
    pub fn set_disk_low(&self, low: bool) {
        self.disk_low.store(low, Ordering::Relaxed);
    }

    /// An append failed: ingest is refused until a restart. The first failure is kept.
    pub fn fail(&self, err: LogError) {
        let fenced = match err {
            LogError::Full(message) => LogError::Full(format!(
                "{message}; ingest is refused until the relay restarts"
            )),
            other => LogError::Unavailable(format!(
                "{other}; ingest is refused until the relay restarts"
            )),
        };
        self.failed.lock().get_or_insert(fenced);
    }
}
