//! # The embedded backend: append-only logs with group commit, and checkpoints
//!
//! One relay owns a data directory (it is locked):
//!
//! ```text
//! data_dir/
//!   FORMAT                  "outage-relay embedded log" version and partition count
//!   LOCK                    held by the running relay
//!   events/<p>/             partition p's event records          (segment log, positions from 1)
//!   alerts/<name>/entries/  the subscriber's alerts               (segment log, sequence = position)
//!   alerts/<name>/cursor/   its cursor and SLA watch progress     (segment log of cursor records)
//!   alerts/<name>/journal/  when its alerts were settled          (segment log, see `journal`)
//!   parked/<p>/             partition p's parked alerts           (segment log, see `meta`)
//!   checkpoints/p<p>.ckpt   partition p's last checkpoint
//! ```
//!
//! - **Records** are framed `[len u32][crc32c u32][payload]` in segment files ([`segment`]);
//!   event records, alert entries and cursor records are laid out in `log::codec` and
//!   [`meta`].
//! - **Fsync policy: group commit.** One writer thread (`writer.rs`) takes every append that
//!   queued while it wrote the previous group, writes each log once and fdatasyncs each log
//!   once, side by side; only then are appends answered and readers shown the new heads. A
//!   publisher's ack therefore means its events are on disk.
//! - **Recovery.** On open every frame is checked. A torn frame at the end of a log (a write
//!   cut short by a crash) is cut off, logged and counted (`outage_relay_log_torn_tails_total`);
//!   a bad frame anywhere else refuses the start: data that was durable is never dropped
//!   silently. Each owner then loads its checkpoint and replays its partition's records after
//!   it.
//! - **Truncation.** After a checkpoint is saved, the event log's segments before it whose
//!   records all arrived longer ago than `store.event_retention` are deleted (the newer ones
//!   stay for `outage-relay replay`; a restart still replays from the checkpoint only); an alert log's segments go once every alert in them was acknowledged or
//!   expired longer ago than `store.report_retention` (the compliance report reads them).
//! - **Backlog on disk.** An alert log keeps in memory only a sparse index (8 bytes per 64
//!   entries) and its cursor: an absent DNO's backlog costs disk, not memory.
//! - **Older data directories.** A directory holding the redb store of earlier versions
//!   (`outage-relay.redb`) is refused with a message; it is not migrated.

pub mod archive;
pub mod checkpoints;
pub mod journal;
pub mod meta;
pub mod recent;
pub mod segment;
mod sync_pool;
mod writer;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use metrics::counter;
use tokio::sync::{mpsc, oneshot, watch};

use self::checkpoints::CheckpointFiles;
use self::meta::{Cursor, ParkedRecord, decode_cursor, decode_parked};
use self::recent::Recent;
use self::segment::{Recovery, SegmentError, SegmentLog, SegmentOptions, SegmentReader};
use self::writer::{EventPartition, ParkedLog, Published, Request, SubscriberLog, Writer};
use super::codec::{decode_entry, decode_record};
use super::{
    AlertHeads, AlertLog, AlertReader, Appended, Checkpoints, Delivered, EventLog, EventReader,
    EventRecord, Expired, LogEntry, LogError, LogStatus, Logged, Parked, Partition, Retention,
    Sequencing, SlaMark, Stored,
};
use crate::config::Config;
use crate::domain::{Alert, UtcMillis};
use crate::route::{ParkReason, Route, RoutingTable, SubscriberId};

/// What the `FORMAT` file starts with.
const FORMAT: &str = "outage-relay embedded log";
const FORMAT_VERSION: u32 = 1;
/// Threads the writer syncs a group's logs on, side by side (fdatasync blocks each for the
/// disk's flush; a group touches up to two logs per subscriber plus each partition's log).
const SYNC_THREADS: usize = 8;

/// The file of the redb store earlier versions kept.
const REDB_FILE: &str = "outage-relay.redb";
/// Segments of the bookkeeping logs (cursors, parked alerts) are small.
const META_SEGMENT_BYTES: u64 = 64 * 1024;
/// Payload bytes read at a time.
const READ_BYTES: usize = 4 << 20;

/// Settings of the embedded backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Size of one segment file.
    pub segment_bytes: u64,
    /// Memory for the newest alerts of the subscribers' logs, kept decoded for readers.
    pub cache_bytes: usize,
}

impl Options {
    /// The settings in `config.store`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            segment_bytes: config.store.segment_bytes,
            cache_bytes: config.store.cache_bytes,
        }
    }
}

/// Maps a segment log error onto the log's.
pub(super) fn segment_error(err: SegmentError) -> LogError {
    match err {
        SegmentError::Io { path, source } => io_error(&path, &source),
        SegmentError::Corrupt { .. } => LogError::Corrupt(err.to_string()),
        SegmentError::Gone { requested, first } => LogError::Gone {
            requested,
            first_retained: first,
        },
        other => LogError::Unavailable(other.to_string()),
    }
}

/// Maps an I/O error on `path`: a full disk is [`LogError::Full`].
pub(super) fn io_error(path: &Path, err: &std::io::Error) -> LogError {
    /// ENOSPC on Linux.
    const NO_SPACE: i32 = 28;
    let message = format!("{}: {err}", path.display());
    if err.raw_os_error() == Some(NO_SPACE) || err.kind() == std::io::ErrorKind::StorageFull {
        LogError::Full(message)
    } else {
        LogError::Unavailable(message)
    }
}

/// An open embedded backend.
pub struct Local {
    partitions: u16,
    events: Arc<LocalEvents>,
    alerts: Arc<LocalAlerts>,
    checkpoints: Arc<CheckpointFiles>,
    writer: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Local {
    /// Opens (or creates) the data directory `dir` for the subscribers of `table`. A new
    /// directory gets `partitions` partitions; an existing one keeps its own.
    pub fn open(
        dir: &Path,
        table: &RoutingTable,
        partitions: u16,
        options: &Options,
    ) -> Result<Self, LogError> {
        fs::create_dir_all(dir).map_err(|err| io_error(dir, &err))?;
        let lock = lock(dir)?;
        let partitions = format(dir, partitions)?;
        let segments = SegmentOptions {
            segment_bytes: options.segment_bytes,
        };
        let meta = SegmentOptions {
            segment_bytes: META_SEGMENT_BYTES,
        };
        let mut events = Vec::with_capacity(usize::from(partitions));
        let mut event_readers = Vec::with_capacity(usize::from(partitions));
        for partition in 0..partitions {
            let (log, recovery) =
                open_segments(&dir.join("events").join(partition.to_string()), segments)?;
            report_cut("events", &recovery);
            event_readers.push(log.reader());
            events.push(EventPartition { log });
        }
        let mut subscribers = Vec::with_capacity(table.len());
        let mut statuses = Vec::with_capacity(table.len());
        let mut journals = Vec::with_capacity(table.len());
        let recent = options.cache_bytes / size_of::<LogEntry>() / table.len().max(1);
        for (_, name) in table.iter() {
            let log = open_subscriber(
                &dir.join("alerts").join(name),
                name,
                (segments, meta),
                recent,
            )?;
            journals.push(log.journal.reader());
            statuses.push((
                log.entries_reader.clone(),
                log.status.subscribe(),
                Arc::clone(&log.recent),
            ));
            subscribers.push(log);
        }
        let mut parked = Vec::with_capacity(usize::from(partitions));
        for partition in 0..partitions {
            parked.push(open_parked(
                &dir.join("parked").join(partition.to_string()),
                meta,
            )?);
        }
        let checkpoints = Arc::new(CheckpointFiles::open(&dir.join("checkpoints"))?);
        // Unbounded: appends are sent the moment they are made, so the writer sees them in
        // call order; the callers bound what they keep in flight (owners, acks, watches).
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            events,
            subscribers,
            parked,
            guards: Default::default(),
            failed: None,
            commit_seconds: metrics::histogram!(crate::telemetry::STORE_COMMIT_LATENCY),
            syncs: sync_pool::SyncPool::start(SYNC_THREADS).map_err(|err| {
                LogError::Unavailable(format!("cannot start the log sync threads: {err}"))
            })?,
        };
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|err| LogError::Unavailable(format!("cannot start the log writer: {err}")))?;
        let names = table.iter().map(|(_, name)| name.to_owned()).collect();
        Ok(Self {
            partitions,
            events: Arc::new(LocalEvents {
                tx: tx.clone(),
                readers: event_readers,
            }),
            alerts: Arc::new(LocalAlerts {
                tx,
                logs: statuses,
                journals,
                names,
            }),
            checkpoints,
            writer: Some(thread),
            _lock: lock,
        })
    }

    /// Partitions of the device space (fixed when the directory was created).
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The event log.
    pub fn events(&self) -> Arc<dyn EventLog> {
        Arc::clone(&self.events) as Arc<dyn EventLog>
    }

    /// The alert logs.
    pub fn alerts(&self) -> Arc<dyn AlertLog> {
        Arc::clone(&self.alerts) as Arc<dyn AlertLog>
    }

    /// The checkpoints.
    pub fn checkpoints(&self) -> Arc<dyn Checkpoints> {
        Arc::clone(&self.checkpoints) as Arc<dyn Checkpoints>
    }

    /// Stops the writer once it has committed what was queued before; handles still held
    /// elsewhere fail from then on.
    pub fn close(mut self) {
        let writer = self.writer.take();
        let _ = self.events.tx.send(Request::Close);
        drop(self);
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the log writer panicked");
        }
    }
}

/// Takes the directory's lock: one relay per data directory.
fn lock(dir: &Path) -> Result<File, LogError> {
    let path = dir.join("LOCK");
    let file = File::create(&path).map_err(|err| io_error(&path, &err))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::Unavailable(format!(
            "{} is in use by another outage-relay (one relay per data directory)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(err)) => Err(io_error(&path, &err)),
    }
}

/// Checks (or writes) the directory's `FORMAT`; the partition count it holds.
fn format(dir: &Path, partitions: u16) -> Result<u16, LogError> {
    let path = dir.join("FORMAT");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let stored = stored_partitions(&text).ok_or_else(|| {
                LogError::Corrupt(format!(
                    "{} is not a FORMAT file this version reads",
                    path.display()
                ))
            })?;
            if stored != partitions {
                tracing::warn!(
                    configured = partitions,
                    stored,
                    "the data directory was created with {stored} partitions; it keeps them (shards is fixed at creation)"
                );
            }
            Ok(stored)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(REDB_FILE).exists() {
                return Err(LogError::Unavailable(format!(
                    "{} holds the store of an earlier outage-relay ({REDB_FILE}), which this \
                     version does not read: let the earlier version deliver its backlog (every \
                     subscriber acknowledged, GetDeliveryStatus backlog 0), stop it, and start \
                     this version with an empty --data-dir (keep the old directory as a backup)",
                    dir.display()
                )));
            }
            let text = format!("{FORMAT}\nversion {FORMAT_VERSION}\npartitions {partitions}\n");
            fs::write(&path, text)
                .and_then(|()| File::open(&path)?.sync_all())
                .and_then(|()| File::open(dir)?.sync_all())
                .map_err(|err| io_error(&path, &err))?;
            Ok(partitions)
        }
        Err(err) => Err(io_error(&path, &err)),
    }
}

/// The partition count a `FORMAT` file's `text` holds, if it is one this version reads.
fn stored_partitions(text: &str) -> Option<u16> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let version = lines
        .next()
        .and_then(|line| line.strip_prefix("version "))
        .and_then(|v| v.parse::<u32>().ok());
    let stored = lines
        .next()
        .and_then(|line| line.strip_prefix("partitions "))
        .and_then(|p| p.parse::<u16>().ok());
    match (header == FORMAT, version, stored) {
        (true, Some(FORMAT_VERSION), Some(stored)) if stored > 0 => Some(stored),
        _ => None,
    }
}

/// Opens (creating it and its parents) the segment log in `dir`.
fn open_segments(dir: &Path, options: SegmentOptions) -> Result<(SegmentLog, Recovery), LogError> {
    fs::create_dir_all(dir).map_err(|err| io_error(dir, &err))?;
    SegmentLog::open(dir, 1, options).map_err(segment_error)
}

fn report_cut(log: &'static str, recovery: &Recovery) {
    if let Some(cut) = &recovery.cut {
        counter!(crate::telemetry::LOG_TORN_TAILS, "log" => log).increment(1);
        tracing::warn!(
            segment = %cut.segment.display(),
            offset = cut.offset,
            dropped_bytes = cut.dropped_bytes,
            why = cut.why,
            "a torn write at the end of a log was cut off"
        );
    }
}

/// Every record of a small bookkeeping log, in order, with its position.
fn read_all(log: &SegmentLog) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
    read_all_from(&log.reader())
}

/// Every record `reader` can read, in order, with its position.
fn read_all_from(reader: &SegmentReader) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
    let mut next = reader.first();
    let mut records = Vec::new();
    while next < reader.next() {
        let frames = reader
            .read(next, usize::MAX, READ_BYTES)
            .map_err(segment_error)?;
        let Some((last, _)) = frames.last() else {
            break;
        };
        next = last + 1;
        records.extend(frames);
    }
    Ok(records)
}

fn open_subscriber(
    dir: &Path,
    name: &str,
    (segments, meta): (SegmentOptions, SegmentOptions),
    recent: usize,
) -> Result<SubscriberLog, LogError> {
    let (entries, recovery) = open_segments(&dir.join("entries"), segments)?;
    report_cut("alerts", &recovery);
    let (cursors, recovery) = open_segments(&dir.join("cursor"), meta)?;
    report_cut("cursor", &recovery);
    let cursor = match read_all(&cursors)?.last() {
        Some((_, record)) => decode_cursor(record)?,
        None => Cursor {
            acked: entries.first() - 1,
            first_retained: entries.first(),
            ..Cursor::default()
        },
    };
    let head = entries.next() - 1;
    let (journal, marks) = journal::open(&dir.join("journal"), meta)?;
    Ok(SubscriberLog {
        name: name.to_owned(),
        unreported: entries.first(),
        journal,
        marks,
        entries_reader: entries.reader(),
        entries,
        cursors,
        cursor,
        status: watch::Sender::new(Published::of(&cursor, head)),
        recent: Arc::new(Recent::new(recent)),
        fresh: Vec::new(),
    })
}

fn open_parked(dir: &Path, meta: SegmentOptions) -> Result<ParkedLog, LogError> {
    let (log, recovery) = open_segments(dir, meta)?;
    report_cut("parked", &recovery);
    let mut entries = BTreeMap::new();
    let mut moving = None;
    for (key, payload) in read_all(&log)? {
        match decode_parked(&payload)? {
            ParkedRecord::Parked(alert, destination) => {
                entries.insert(
                    key,
                    LogEntry {
                        sequence: key,
                        alert,
                        destination,
                        emitted_by: None,
                    },
                );
            }
            ParkedRecord::Unparked(keys) => {
                for key in keys {
                    entries.remove(&key);
                }
            }
            ParkedRecord::Moving(heads) => moving = Some(heads),
            ParkedRecord::Moved => moving = None,
        }
    }
    Ok(ParkedLog {
        log,
        entries,
        moving,
    })
}

/// Sends `request` to the writer now; the future resolves with its answer.
fn ask<T: Send + 'static>(
    tx: &mpsc::UnboundedSender<Request>,
    request: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Request,
) -> BoxFuture<'static, Result<T, LogError>> {
    let (reply, answer) = oneshot::channel();
    if tx.send(request(reply)).is_err() {
        return futures::future::ready(Err(stopped())).boxed();
    }
    async move { answer.await.map_err(|_| stopped())? }.boxed()
}

fn stopped() -> LogError {
    LogError::Unavailable("the embedded log writer has stopped".into())
}

/// The event logs: appends go to the writer; reads go straight to the segment files.
struct LocalEvents {
    tx: mpsc::UnboundedSender<Request>,
    readers: Vec<SegmentReader>,
}

#[async_trait]
impl EventLog for LocalEvents {
    fn sequencing(&self) -> Sequencing {
        Sequencing::Owner
    }

    fn append(
        &self,
        partition: Partition,
        record: EventRecord,
    ) -> BoxFuture<'static, Result<Appended, LogError>> {
        ask(&self.tx, |reply| Request::Events {
            partition,
            record,
            reply,
        })
    }

    async fn reader(
        &self,
        partition: Partition,
        after: u64,
    ) -> Result<Box<dyn EventReader>, LogError> {
        let reader = self
            .readers
            .get(usize::from(partition))
            .ok_or_else(|| LogError::Unavailable(format!("no partition {partition}")))?
            .clone();
        let first = reader.first();
        if after + 1 < first {
            return Err(LogError::Corrupt(format!(
                "partition {partition}: the checkpoint covers records up to {after}, but the \
                 log starts at {first}"
            )));
        }
        let end = reader.next();
        Ok(Box::new(LocalEventReader {
            reader,
            next: after + 1,
            end,
            buffered: Vec::new().into_iter(),
        }))
    }

    async fn truncate(
        &self,
        partition: Partition,
        through: u64,
        keep_since: UtcMillis,
    ) -> Result<(), LogError> {
        ask(&self.tx, |reply| Request::Truncate {
            partition,
            through,
            keep_since,
            reply,
        })
        .await
    }
}

/// Replays a partition's records stored when it was opened.
struct LocalEventReader {
    reader: SegmentReader,
    next: u64,
    end: u64,
    buffered: std::vec::IntoIter<(u64, Vec<u8>)>,
}

#[async_trait]
impl EventReader for LocalEventReader {
    async fn next(&mut self) -> Result<Option<Logged>, LogError> {
        if self.buffered.len() == 0 {
            if self.next >= self.end {
                return Ok(None);
            }
            let frames = self
                .reader
                .read(self.next, 1024, READ_BYTES)
                .map_err(segment_error)?;
            self.buffered = frames.into_iter();
        }
        let Some((position, payload)) = self.buffered.next() else {
            return Ok(None);
        };
        self.next = position + 1;
        Ok(Some(Logged {
            position,
            record: decode_record(&payload)?,
        }))
    }

    fn lag(&self) -> u64 {
        self.end.saturating_sub(self.next) + self.buffered.len() as u64
    }
}

/// The alert logs: writes go to the writer; status and reads come from what it published.
struct LocalAlerts {
    tx: mpsc::UnboundedSender<Request>,
    /// Per subscriber: its entries, what the writer published of it, its newest entries.
    logs: Vec<(SegmentReader, watch::Receiver<Published>, Arc<Recent>)>,
    /// Per subscriber: its delivery journal.
    journals: Vec<SegmentReader>,
    names: Vec<String>,
}

impl LocalAlerts {
    fn log(
        &self,
        log: SubscriberId,
    ) -> Result<&(SegmentReader, watch::Receiver<Published>, Arc<Recent>), LogError> {
        self.logs
            .get(usize::from(log.0))
            .ok_or_else(|| LogError::Unavailable(format!("no subscriber log {}", log.0)))
    }
}

/// Reads a subscriber's entries, waiting on its published status.
struct LocalAlertReader {
    reader: SegmentReader,
    status: watch::Receiver<Published>,
    recent: Arc<Recent>,
    next: u64,
}

#[async_trait]
impl AlertReader for LocalAlertReader {
    async fn next(&mut self, max: usize) -> Result<Vec<LogEntry>, LogError> {
        loop {
            let status = self.status.borrow_and_update().status;
            self.next = self.next.max(status.first_retained);
            if self.next <= status.head {
                if let Some(entries) = self.recent.read(self.next, max.max(1)) {
                    if let Some(last) = entries.last() {
                        self.next = last.sequence + 1;
                    }
                    return Ok(entries);
                }
                match self.reader.read(self.next, max.max(1), READ_BYTES) {
                    Ok(frames) if !frames.is_empty() => {
                        let mut entries = Vec::with_capacity(frames.len());
                        for (sequence, payload) in frames {
                            let (alert, destination) = decode_entry(&payload)?;
                            entries.push(LogEntry {
                                sequence,
                                alert,
                                destination,
                                emitted_by: None,
                            });
                        }
                        if let Some(last) = entries.last() {
                            self.next = last.sequence + 1;
                        }
                        return Ok(entries);
                    }
                    Ok(_) => {}
                    Err(SegmentError::Gone { first, .. }) => {
                        self.next = self.next.max(first);
                        continue;
                    }
                    Err(err) => return Err(segment_error(err)),
                }
            }
            self.status.changed().await.map_err(|_| stopped())?;
        }
    }
}

#[async_trait]
impl AlertLog for LocalAlerts {
    fn append(
        &self,
        alerts: Vec<(Alert, Route)>,
    ) -> BoxFuture<'static, Result<Vec<Stored>, LogError>> {
        ask(&self.tx, |reply| Request::Alerts { alerts, reply })
    }

    fn park(
        &self,
        partition: Partition,
        alerts: Vec<(Alert, ParkReason)>,
    ) -> BoxFuture<'static, Result<(), LogError>> {
        ask(&self.tx, |reply| Request::Park {
            partition,
            alerts,
            reply,
        })
    }

    async fn reader(&self, log: SubscriberId, from: u64) -> Result<Box<dyn AlertReader>, LogError> {
        let (reader, status, recent) = self.log(log)?;
        Ok(Box::new(LocalAlertReader {
            reader: reader.clone(),
            status: status.clone(),
            recent: Arc::clone(recent),
            next: from,
        }))
    }

    async fn status(&self, log: SubscriberId) -> Result<LogStatus, LogError> {
        Ok(self.log(log)?.1.borrow().status)
    }

    async fn ack(
        &self,
        log: SubscriberId,
        upto: u64,
        at: UtcMillis,
    ) -> Result<LogStatus, LogError> {
        ask(&self.tx, |reply| Request::Ack {
            log,
            upto,
            at,
            reply,
        })
        .await
    }

    async fn deliveries(
        &self,
        log: SubscriberId,
        from: UtcMillis,
        to: UtcMillis,
    ) -> Result<Vec<Delivered>, LogError> {
        let (entries, status, _) = self.log(log)?;
        let head = status.borrow().status.head;
        let journal = self
            .journals
            .get(usize::from(log.0))
            .ok_or_else(|| LogError::Unavailable(format!("no subscriber log {}", log.0)))?
            .clone();
        let entries = entries.clone();
        // Reads a month of files: off the async workers.
        tokio::task::spawn_blocking(move || journal::deliveries(&entries, head, &journal, from, to))
            .await
            .map_err(|err| LogError::Unavailable(format!("the journal read failed: {err}")))?
    }

    async fn sla_mark(&self, log: SubscriberId) -> Result<SlaMark, LogError> {
        Ok(self.log(log)?.1.borrow().sla)
    }

    async fn record_sla(
        &self,
        log: SubscriberId,
        seen: u64,
        checked_through: UtcMillis,
        new_breaches: u64,
    ) -> Result<SlaMark, LogError> {
        ask(&self.tx, |reply| Request::Sla {
            log,
            seen,
            checked_through,
            new_breaches,
            reply,
        })
        .await
    }

    async fn parked(&self, partition: Partition) -> Result<Vec<Parked>, LogError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::ListParked {
                partition: Some(partition),
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    async fn move_parked(
        &self,
        partition: Partition,
        moves: Vec<(u64, Alert, Route)>,
    ) -> Result<Vec<Stored>, LogError> {
        ask(&self.tx, |reply| Request::MoveParked {
            partition,
            moves,
            reply,
        })
        .await
    }

    async fn list_parked(&self, limit: usize) -> Result<(Vec<LogEntry>, u64), LogError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::ListParked {
                partition: None,
                reply,
            })
            .map_err(|_| stopped())?;
        let mut parked = answer.await.map_err(|_| stopped())?;
        parked.sort_by_key(|parked| (parked.entry.alert.emitted_at, parked.key));
        Ok(Parked::oldest(parked, limit))
    }

    async fn maintain(
        &self,
        now: UtcMillis,
        retention: Retention,
    ) -> Result<Vec<Expired>, LogError> {
        ask(&self.tx, |reply| Request::Maintain {
            now,
            retention,
            reply,
        })
        .await
    }

    fn heads(&self, _partition: Partition) -> AlertHeads {
        AlertHeads(
            self.names
                .iter()
                .zip(&self.logs)
                .map(|(name, (_, published, _))| (name.clone(), published.borrow().status.head))
                .collect(),
        )
    }

    async fn guard_replay(
        &self,
        partition: Partition,
        partitions: u16,
        heads: &AlertHeads,
    ) -> Result<(), LogError> {
        let heads = heads.clone();
        ask(&self.tx, |reply| Request::Guard {
            partition,
            partitions,
            heads,
            reply,
        })
        .await
    }

    fn replayed(&self, partition: Partition) {
        let _ = self.tx.send(Request::Replayed { partition });
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;

#[cfg(test)]
mod model_props;
