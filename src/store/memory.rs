//! In-memory [`Store`]: logs in `VecDeque`s behind one mutex each, open outages in a striped
//! map. Nothing survives a restart; this is the reference implementation of the interface's
//! semantics and the store for tests.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use super::{Destination, LogEntry, LogId, LogStatus, Store, StoreError};
use crate::debounce::{OpenOutage, OutageChange};
use crate::domain::{Alert, SupplyPoint};

const OUTAGE_STRIPES: usize = 16;

#[derive(Debug, Default)]
struct MemoryLog {
    acked: u64,
    entries: VecDeque<LogEntry>,
}

impl MemoryLog {
    fn head(&self) -> u64 {
        self.acked + self.entries.len() as u64
    }
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    logs: Vec<Mutex<MemoryLog>>,
    outages: Vec<Mutex<HashMap<SupplyPoint, OpenOutage>>>,
}

impl MemoryStore {
    /// A store with one log per subscriber plus the parked log.
    pub fn new(subscribers: usize) -> Self {
        Self {
            logs: (0..=subscribers).map(|_| Mutex::default()).collect(),
            outages: (0..OUTAGE_STRIPES).map(|_| Mutex::default()).collect(),
        }
    }

    fn log(&self, log: LogId) -> Result<&Mutex<MemoryLog>, StoreError> {
        let index = match log {
            LogId::Subscriber(id) => usize::from(id.0),
            LogId::Parked => self.logs.len() - 1,
        };
        self.logs
            .get(index)
            .ok_or_else(|| StoreError::Unavailable(format!("no log for {log:?}")))
    }

    fn stripe(&self, point: &SupplyPoint) -> &Mutex<HashMap<SupplyPoint, OpenOutage>> {
        let index = (point.device.0 as usize) % OUTAGE_STRIPES;
        &self.outages[index]
    }
}

impl Store for MemoryStore {
    fn append(&self, log: LogId, entries: &[(Alert, Destination)]) -> Result<u64, StoreError> {
        let mut log = self.log(log)?.lock();
        let mut sequence = log.head();
        for (alert, destination) in entries {
            sequence += 1;
            log.entries.push_back(LogEntry {
                sequence,
                alert: *alert,
                destination: *destination,
            });
        }
        Ok(sequence)
    }

    fn read(&self, log: LogId, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let log = self.log(log)?.lock();
        let first_retained = log.acked + 1;
        if from < first_retained {
            return Err(StoreError::Gone {
                requested: from,
                first_retained,
            });
        }
        if from > log.head() + 1 {
            return Err(StoreError::BeyondHead {
                requested: from,
                head: log.head(),
            });
        }
        let skip = usize::try_from(from - first_retained).unwrap_or(usize::MAX);
        Ok(log.entries.iter().skip(skip).take(max).copied().collect())
    }

    fn ack(&self, log: LogId, upto: u64) -> Result<Vec<LogEntry>, StoreError> {
        let mut log = self.log(log)?.lock();
        if upto > log.head() {
            return Err(StoreError::BeyondHead {
                requested: upto,
                head: log.head(),
            });
        }
        let count = usize::try_from(upto.saturating_sub(log.acked)).unwrap_or(0);
        log.acked = log.acked.max(upto);
        Ok(log.entries.drain(..count).collect())
    }

    fn status(&self, log: LogId) -> Result<LogStatus, StoreError> {
        let log = self.log(log)?.lock();
        Ok(LogStatus {
            head: log.head(),
            acked: log.acked,
            first_retained: log.acked + 1,
        })
    }

    fn record_outages(&self, changes: &[OutageChange]) -> Result<(), StoreError> {
        for change in changes {
            match change {
                OutageChange::Upsert(point, outage) => {
                    self.stripe(point).lock().insert(*point, *outage);
                }
                OutageChange::Closed(point) => {
                    self.stripe(point).lock().remove(point);
                }
            }
        }
        Ok(())
    }

    fn open_outages(&self) -> Result<Vec<(SupplyPoint, OpenOutage)>, StoreError> {
        Ok(self
            .outages
            .iter()
            .flat_map(|stripe| {
                stripe
                    .lock()
                    .iter()
                    .map(|(p, o)| (*p, *o))
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
