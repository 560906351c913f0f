//! The durable store: one redb database file, `outage-relay.redb`, in the data directory.
//!
//! # Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `logs` | log name (`&str`: subscriber name, or `(parked)`) | stable log number `u16` |
//! | `cursors` | log number | `(acked, first_retained, head)` |
//! | `alerts` | `(log number, sequence)` | log entry, see [`super::codec`] |
//! | `outages` | `(device, phase)` | open outage, see [`super::codec`] |
//! | `tombstones` | `(closed_at, device, phase)` | `restored_at` |
//! | `events` | `(seen_at, device, event key)` | `()` |
//!
//! Logs are stored under their subscriber's *name*, so reordering, adding or removing
//! subscribers in the config never mixes two subscribers' alerts; a removed subscriber's
//! log stays on disk untouched.
//!
//! # Durability
//!
//! Every [`Store::commit`] is one redb write transaction with `Durability::Immediate`: it
//! returns after redb's two-phase commit has fsynced. The commit stage groups everything that
//! arrived while the previous commit was running into one call (group commit), so the fsync
//! cost is shared by many batches.
//!
//! # Recovery
//!
//! redb recovers to the last committed transaction after a crash. On start the relay reads
//! `outages`, `tombstones` and `events` back into the state machines (timers re-armed at
//! their original due times) and the cursors into the delivery stage. Acknowledged and
//! truncated entries are deleted in the transaction that acknowledges them; tombstones and
//! event keys are deleted by `Expire`, by time range.
//!
//! # Invariants
//!
//! - `first_retained <= acked + 1 <= head + 1`, and `alerts` holds exactly the sequences
//!   `acked + 1 ..= head` of each log (retention moves `acked` up with `first_retained`).
//! - `head` only grows, so sequences are never reused.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::codec::{decode_entry, decode_outage, encode_entry, encode_outage};
use super::{
    LogEntry, LogId, LogStatus, Outcome, Recovered, SeenEvent, Store, StoreError, Tombstone, Write,
};
use crate::debounce::OutageChange;
use crate::domain::event::EventKey;
use crate::domain::{DeviceId, Phase, SupplyPoint, UtcMillis};
use crate::telemetry::PARKED_SUBSCRIBER;

const LOGS: TableDefinition<&str, u16> = TableDefinition::new("logs");
const CURSORS: TableDefinition<u16, (u64, u64, u64)> = TableDefinition::new("cursors");
const ALERTS: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("alerts");
const OUTAGES: TableDefinition<(u64, u8), &[u8]> = TableDefinition::new("outages");
const TOMBSTONES: TableDefinition<(i64, u64, u8), i64> = TableDefinition::new("tombstones");
const EVENTS: TableDefinition<(i64, u64, u128), ()> = TableDefinition::new("events");

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "outage-relay.redb";

/// ENOSPC on Linux.
const NO_SPACE: i32 = 28;

fn map_err(err: impl Into<redb::Error>) -> StoreError {
    match err.into() {
        redb::Error::Io(io)
            if io.raw_os_error() == Some(NO_SPACE)
                || io.kind() == std::io::ErrorKind::StorageFull =>
        {
            StoreError::Full(io.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn corrupt(err: super::codec::Corrupt) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// The redb-backed store.
pub struct DurableStore {
    db: Database,
    path: PathBuf,
    // Log numbers by current subscriber index; the last one is the parked log.
    log_numbers: Vec<u16>,
    // Serialises writers so a failed commit can never interleave with another.
    write: Mutex<()>,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore")
            .field("path", &self.path)
            .finish()
    }
}

impl DurableStore {
    /// Opens (or creates) the store in `dir` for subscribers named `subscribers`, in the
    /// order of the routing table.
    pub fn open(dir: &Path, subscribers: &[&str]) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, subscribers, crate::config::DEFAULT_STORE_CACHE_BYTES)
    }

    /// Like [`DurableStore::open`], with redb's page cache bounded to `cache_bytes` (its own
    /// default is 1 GiB, which would make the relay's memory grow with the database).
    pub fn open_with_cache(
        dir: &Path,
        subscribers: &[&str],
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|err| {
            StoreError::Unavailable(format!("cannot create {}: {err}", dir.display()))
        })?;
        let path = dir.join(FILE_NAME);
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(map_err)?;
        let names: Vec<&str> = subscribers
            .iter()
            .copied()
            .chain([PARKED_SUBSCRIBER])
            .collect();
        let txn = db.begin_write().map_err(map_err)?;
        let mut log_numbers = Vec::with_capacity(names.len());
        {
            let mut logs = txn.open_table(LOGS).map_err(map_err)?;
            let mut cursors = txn.open_table(CURSORS).map_err(map_err)?;
            let mut next = logs.len().map_err(map_err)?;
            for name in names {
                let existing = logs.get(name).map_err(map_err)?.map(|n| n.value());
                let number = match existing {
                    Some(number) => number,
                    None => {
                        let number = u16::try_from(next)
                            .map_err(|_| StoreError::Unavailable("more than 65535 logs".into()))?;
                        next += 1;
                        logs.insert(name, number).map_err(map_err)?;
                        cursors.insert(number, (0, 1, 0)).map_err(map_err)?;
                        number
                    }
                };
                log_numbers.push(number);
            }
            txn.open_table(ALERTS).map_err(map_err)?;
            txn.open_table(OUTAGES).map_err(map_err)?;
            txn.open_table(TOMBSTONES).map_err(map_err)?;
            txn.open_table(EVENTS).map_err(map_err)?;
        }
        txn.commit().map_err(map_err)?;
        Ok(Self {
            db,
            path,
            log_numbers,
            write: Mutex::new(()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn number(&self, log: LogId) -> Result<u16, StoreError> {
        let index = match log {
            LogId::Subscriber(id) => usize::from(id.0),
            LogId::Parked => self.log_numbers.len() - 1,
        };
        self.log_numbers
            .get(index)
            .copied()
            .ok_or_else(|| StoreError::Unavailable(format!("no log for {log:?}")))
    }
}

fn status_of(cursor: (u64, u64, u64)) -> LogStatus {
    let (acked, first_retained, head) = cursor;
    LogStatus {
        head,
        acked,
        first_retained,
    }
}

fn phase_byte(phase: Phase) -> u8 {
    u8::try_from(phase.to_proto()).unwrap_or(0)
}

fn phase_of(byte: u8) -> Result<Phase, StoreError> {
    Phase::from_proto(i32::from(byte))
        .ok_or_else(|| StoreError::Unavailable("corrupt phase".into()))
}

/// The write transaction's open tables.
struct Tables<'txn> {
    cursors: redb::Table<'txn, u16, (u64, u64, u64)>,
    alerts: redb::Table<'txn, (u16, u64), &'static [u8]>,
    outages: redb::Table<'txn, (u64, u8), &'static [u8]>,
    tombstones: redb::Table<'txn, (i64, u64, u8), i64>,
    events: redb::Table<'txn, (i64, u64, u128), ()>,
}

impl Tables<'_> {
    fn cursor(&self, number: u16) -> Result<(u64, u64, u64), StoreError> {
        Ok(self
            .cursors
            .get(number)
            .map_err(map_err)?
            .map_or((0, 1, 0), |c| c.value()))
    }

    fn apply(&mut self, store: &DurableStore, write: &Write) -> Result<Outcome, StoreError> {
        match write {
            Write::State {
                events,
                outages,
                tombstones,
            } => {
                for event in events {
                    self.events
                        .insert((event.seen_at.0, event.device.0, event.key.0), ())
                        .map_err(map_err)?;
                }
                for change in outages {
                    match change {
                        OutageChange::Upsert(point, outage) => {
                            let key = (point.device.0, phase_byte(point.phase));
                            self.outages
                                .insert(key, encode_outage(outage).as_slice())
                                .map_err(map_err)?;
                        }
                        OutageChange::Closed(point) => {
                            self.outages
                                .remove((point.device.0, phase_byte(point.phase)))
                                .map_err(map_err)?;
                        }
                    }
                }
                for t in tombstones {
                    let key = (t.closed_at.0, t.point.device.0, phase_byte(t.point.phase));
                    self.tombstones
                        .insert(key, t.restored_at.0)
                        .map_err(map_err)?;
                }
                Ok(Outcome::Done)
            }
            Write::Append { log, entries } => {
                let number = store.number(*log)?;
                let (acked, first_retained, head) = self.cursor(number)?;
                let first = head + 1;
                for (offset, (alert, destination)) in entries.iter().enumerate() {
                    let bytes = encode_entry(alert, destination);
                    self.alerts
                        .insert((number, first + offset as u64), bytes.as_slice())
                        .map_err(map_err)?;
                }
                let last = head + entries.len() as u64;
                self.cursors
                    .insert(number, (acked, first_retained, last))
                    .map_err(map_err)?;
                Ok(Outcome::Appended { first, last })
            }
            Write::Ack { log, upto } => {
                let number = store.number(*log)?;
                let (acked, first_retained, head) = self.cursor(number)?;
                if *upto > head {
                    return Err(StoreError::BeyondHead {
                        requested: *upto,
                        head,
                    });
                }
                let mut entries = Vec::new();
                if *upto > acked {
                    let mut removed = self
                        .alerts
                        .extract_from_if((number, acked + 1)..=(number, *upto), |_, _| true)
                        .map_err(map_err)?;
                    for item in removed.by_ref() {
                        let (key, value) = item.map_err(map_err)?;
                        let (alert, destination) = decode_entry(value.value()).map_err(corrupt)?;
                        entries.push(LogEntry {
                            sequence: key.value().1,
                            alert,
                            destination,
                        });
                    }
                }
                let acked = acked.max(*upto);
                let cursor = (acked, first_retained.max(acked + 1), head);
                self.cursors.insert(number, cursor).map_err(map_err)?;
                Ok(Outcome::Acked {
                    entries,
                    status: status_of(cursor),
                })
            }
            Write::Expire {
                events_before,
                tombstones_before,
            } => {
                self.events
                    .retain_in(..(events_before.0, 0, 0), |_, _| false)
                    .map_err(map_err)?;
                self.tombstones
                    .retain_in(..(tombstones_before.0, 0, 0), |_, _| false)
                    .map_err(map_err)?;
                Ok(Outcome::Done)
            }
            Write::Truncate {
                log,
                first_retained,
            } => {
                let number = store.number(*log)?;
                let (acked, old_first, head) = self.cursor(number)?;
                let first = (*first_retained).min(head + 1).max(old_first);
                let mut unacked_removed = 0;
                if first > acked + 1 {
                    self.alerts
                        .retain_in((number, acked + 1)..(number, first), |_, _| {
                            unacked_removed += 1;
                            false
                        })
                        .map_err(map_err)?;
                }
                let cursor = (acked.max(first - 1), first, head);
                self.cursors.insert(number, cursor).map_err(map_err)?;
                Ok(Outcome::Truncated { unacked_removed })
            }
        }
    }
}

impl Store for DurableStore {
    fn commit(&self, writes: &[Write]) -> Result<Vec<Outcome>, StoreError> {
        let _writer = self.write.lock();
        let mut txn = self.db.begin_write().map_err(map_err)?;
        txn.set_durability(Durability::Immediate).map_err(map_err)?;
        let outcomes = {
            let mut tables = Tables {
                cursors: txn.open_table(CURSORS).map_err(map_err)?,
                alerts: txn.open_table(ALERTS).map_err(map_err)?,
                outages: txn.open_table(OUTAGES).map_err(map_err)?,
                tombstones: txn.open_table(TOMBSTONES).map_err(map_err)?,
                events: txn.open_table(EVENTS).map_err(map_err)?,
            };
            writes
                .iter()
                .map(|write| tables.apply(self, write))
                .collect::<Result<Vec<_>, _>>()?
        };
        txn.commit().map_err(map_err)?;
        Ok(outcomes)
    }

    fn read(&self, log: LogId, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let number = self.number(log)?;
        let txn = self.db.begin_read().map_err(map_err)?;
        let cursors = txn.open_table(CURSORS).map_err(map_err)?;
        let status = status_of(
            cursors
                .get(number)
                .map_err(map_err)?
                .map_or((0, 1, 0), |c| c.value()),
        );
        if from < status.first_retained {
            return Err(StoreError::Gone {
                requested: from,
                first_retained: status.first_retained,
            });
        }
        if from > status.head + 1 {
            return Err(StoreError::BeyondHead {
                requested: from,
                head: status.head,
            });
        }
        let alerts = txn.open_table(ALERTS).map_err(map_err)?;
        let mut out = Vec::new();
        for item in alerts
            .range((number, from)..=(number, u64::MAX))
            .map_err(map_err)?
            .take(max)
        {
            let (key, value) = item.map_err(map_err)?;
            let (alert, destination) = decode_entry(value.value()).map_err(corrupt)?;
            out.push(LogEntry {
                sequence: key.value().1,
                alert,
                destination,
            });
        }
        Ok(out)
    }

    fn status(&self, log: LogId) -> Result<LogStatus, StoreError> {
        let number = self.number(log)?;
        let txn = self.db.begin_read().map_err(map_err)?;
        let cursors = txn.open_table(CURSORS).map_err(map_err)?;
        Ok(status_of(
            cursors
                .get(number)
                .map_err(map_err)?
                .map_or((0, 1, 0), |c| c.value()),
        ))
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        let txn = self.db.begin_read().map_err(map_err)?;
        let mut recovered = Recovered::default();
        for item in txn
            .open_table(OUTAGES)
            .map_err(map_err)?
            .iter()
            .map_err(map_err)?
        {
            let (key, value) = item.map_err(map_err)?;
            let (device, phase) = key.value();
            let point = SupplyPoint {
                device: DeviceId(device),
                phase: phase_of(phase)?,
            };
            recovered
                .outages
                .push((point, decode_outage(value.value()).map_err(corrupt)?));
        }
        for item in txn
            .open_table(TOMBSTONES)
            .map_err(map_err)?
            .iter()
            .map_err(map_err)?
        {
            let (key, value) = item.map_err(map_err)?;
            let (closed_at, device, phase) = key.value();
            recovered.tombstones.push(Tombstone {
                point: SupplyPoint {
                    device: DeviceId(device),
                    phase: phase_of(phase)?,
                },
                restored_at: UtcMillis(value.value()),
                closed_at: UtcMillis(closed_at),
            });
        }
        for item in txn
            .open_table(EVENTS)
            .map_err(map_err)?
            .iter()
            .map_err(map_err)?
        {
            let (key, _) = item.map_err(map_err)?;
            let (seen_at, device, event_key) = key.value();
            recovered.events.push(SeenEvent {
                device: DeviceId(device),
                key: EventKey(event_key),
                seen_at: UtcMillis(seen_at),
            });
        }
        Ok(recovered)
    }
}

#[cfg(test)]
#[path = "durable_tests.rs"]
mod tests;
