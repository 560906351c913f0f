//! In-memory [`Store`]: the reference implementation of the interface's semantics, and the
//! store for tests. Nothing survives a restart.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use super::{
    LogEntry, LogId, LogStatus, Outcome, Recovered, SeenEvent, Store, StoreError, Tombstone, Write,
};
use crate::debounce::{OpenOutage, OutageChange};
use crate::domain::SupplyPoint;

#[derive(Debug, Default)]
struct MemoryLog {
    acked: u64,
    first_retained: u64,
    head: u64,
    entries: VecDeque<LogEntry>,
}

impl MemoryLog {
    fn head(&self) -> u64 {
        self.head
    }

    fn status(&self) -> LogStatus {
        LogStatus {
            head: self.head(),
            acked: self.acked,
            first_retained: self.first_retained,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    logs: Vec<MemoryLog>,
    outages: HashMap<SupplyPoint, OpenOutage>,
    tombstones: Vec<Tombstone>,
    events: VecDeque<SeenEvent>,
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// A store with one log per subscriber plus the parked log.
    pub fn new(subscribers: usize) -> Self {
        let logs = (0..=subscribers)
            .map(|_| MemoryLog {
                first_retained: 1,
                ..MemoryLog::default()
            })
            .collect();
        Self {
            state: Mutex::new(State {
                logs,
                ..State::default()
            }),
        }
    }
}

fn log_index(logs: usize, log: LogId) -> Result<usize, StoreError> {
    let index = match log {
        LogId::Subscriber(id) => usize::from(id.0),
        LogId::Parked => logs - 1,
    };
    if index < logs {
        Ok(index)
    } else {
        Err(StoreError::Unavailable(format!("no log for {log:?}")))
    }
}

impl State {
    fn log(&mut self, log: LogId) -> Result<&mut MemoryLog, StoreError> {
        let index = log_index(self.logs.len(), log)?;
        Ok(&mut self.logs[index])
    }

    fn apply(&mut self, write: &Write) -> Result<Outcome, StoreError> {
        match write {
            Write::State {
                events,
                outages,
                tombstones,
            } => {
                self.events.extend(events.iter().copied());
                for change in outages {
                    match change {
                        OutageChange::Upsert(point, outage) => {
                            self.outages.insert(*point, *outage);
                        }
                        OutageChange::Closed(point) => {
                            self.outages.remove(point);
                        }
                    }
                }
                self.tombstones.extend(tombstones.iter().copied());
                Ok(Outcome::Done)
            }
            Write::Append { log, entries } => {
                let log = self.log(*log)?;
                let first = log.head() + 1;
                for (offset, (alert, destination)) in entries.iter().enumerate() {
                    log.entries.push_back(LogEntry {
                        sequence: first + offset as u64,
                        alert: *alert,
                        destination: *destination,
                    });
                }
                log.head += entries.len() as u64;
                Ok(Outcome::Appended {
                    first,
                    last: log.head(),
                })
            }
            Write::Ack { log, upto } => {
                let log = self.log(*log)?;
                if *upto > log.head() {
                    return Err(StoreError::BeyondHead {
                        requested: *upto,
                        head: log.head(),
                    });
                }
                let mut acked = Vec::new();
                while log.entries.front().is_some_and(|e| e.sequence <= *upto) {
                    acked.extend(log.entries.pop_front());
                }
                log.acked = log.acked.max(*upto);
                log.first_retained = log.first_retained.max(log.acked + 1);
                Ok(Outcome::Acked {
                    entries: acked,
                    status: log.status(),
                })
            }
            Write::Expire {
                events_before,
                tombstones_before,
            } => {
                while self
                    .events
                    .front()
                    .is_some_and(|e| e.seen_at < *events_before)
                {
                    self.events.pop_front();
                }
                self.tombstones
                    .retain(|t| t.closed_at >= *tombstones_before);
                Ok(Outcome::Done)
            }
            Write::Truncate {
                log,
                first_retained,
            } => {
                let log = self.log(*log)?;
                let first_retained = &(*first_retained).min(log.head + 1);
                let mut unacked_removed = 0;
                while log
                    .entries
                    .front()
                    .is_some_and(|e| e.sequence < *first_retained)
                {
                    log.entries.pop_front();
                    unacked_removed += 1;
                }
                log.first_retained = log.first_retained.max(*first_retained);
                log.acked = log.acked.max(log.first_retained - 1);
                Ok(Outcome::Truncated { unacked_removed })
            }
        }
    }
}

impl Store for MemoryStore {
    fn commit(&self, writes: &[Write]) -> Result<Vec<Outcome>, StoreError> {
        let mut state = self.state.lock();
        writes.iter().map(|write| state.apply(write)).collect()
    }

    fn read(&self, log: LogId, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let mut state = self.state.lock();
        let log = state.log(log)?;
        if from < log.first_retained {
            return Err(StoreError::Gone {
                requested: from,
                first_retained: log.first_retained,
            });
        }
        if from > log.head() + 1 {
            return Err(StoreError::BeyondHead {
                requested: from,
                head: log.head(),
            });
        }
        // Sequences are contiguous, so the entry for `from` is at a fixed offset.
        let start = log
            .entries
            .front()
            .map_or(0, |first| from.saturating_sub(first.sequence));
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        Ok(log.entries.iter().skip(start).take(max).copied().collect())
    }

    fn status(&self, log: LogId) -> Result<LogStatus, StoreError> {
        let mut state = self.state.lock();
        Ok(state.log(log)?.status())
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        let state = self.state.lock();
        Ok(Recovered {
            outages: state.outages.iter().map(|(p, o)| (*p, *o)).collect(),
            tombstones: state.tombstones.clone(),
            events: state.events.iter().copied().collect(),
        })
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
