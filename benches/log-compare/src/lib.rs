//! The logs compared, behind one small trait: the relay's [`SegmentLog`], `mrecordlog`, `fjall`
//! and `redb`, each used as a log of 50-byte records numbered by position, the relay's workload
//! for its event and alert logs. Every append is one durable commit of a whole batch.
//!
//! `mrecordlog` 0.4.0 (the newest release) never calls fsync: its `sync` and its
//! `SyncPolicy::OnAppend` only flush a user-space buffer to the kernel (quickwit-oss/mrecordlog
//! issue #48; the fix, PR #60, is merged upstream but unreleased). It is therefore measured
//! twice: as shipped ([`Kind::MrecordlogFlush`], not durable), and with an `fdatasync` of its
//! current file through a handle of our own after each batch ([`Kind::MrecordlogFdatasync`]),
//! which is what a durable commit costs it.

use std::fs::File;
use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use mrecordlog::{MultiRecordLog, SyncPolicy};
use outage_relay::log::local::segment::{SegmentLog, SegmentOptions, SegmentReader};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// Payload size of every record: a typical encoded event or alert.
pub const PAYLOAD_BYTES: usize = 50;

/// The redb table: position → payload.
const REDB_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// The mrecordlog queue.
const QUEUE: &str = "log";

/// Which log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The relay's segment log: push the batch, write, sync (fdatasync).
    Segment,
    /// mrecordlog: `append_records` of the batch, then an fdatasync of its current file.
    MrecordlogFdatasync,
    /// mrecordlog as shipped: `append_records` with `SyncPolicy::OnAppend` (no fsync).
    MrecordlogFlush,
    /// fjall: one keyspace, a write batch keyed by big-endian position, `PersistMode::SyncData`.
    Fjall,
    /// redb: one write transaction of the batch's inserts, `Durability::Immediate`.
    Redb,
}

impl Kind {
    /// Every log, in table order.
    pub const ALL: [Kind; 5] = [
        Kind::Segment,
        Kind::MrecordlogFdatasync,
        Kind::MrecordlogFlush,
        Kind::Fjall,
        Kind::Redb,
    ];

    /// A short name for benchmark ids and command lines.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Segment => "segment",
            Kind::MrecordlogFdatasync => "mrecordlog_fdatasync",
            Kind::MrecordlogFlush => "mrecordlog_no_fsync",
            Kind::Fjall => "fjall",
            Kind::Redb => "redb",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Opens (or reopens) this log in `dir`.
    pub fn open(self, dir: &Path) -> Box<dyn Log> {
        match self {
            Kind::Segment => Box::new(Segment::open(dir)),
            Kind::MrecordlogFdatasync => Box::new(Mrecordlog::open(dir, true)),
            Kind::MrecordlogFlush => Box::new(Mrecordlog::open(dir, false)),
            Kind::Fjall => Box::new(Fjall::open(dir)),
            Kind::Redb => Box::new(Redb::open(dir)),
        }
    }
}

/// A log of records numbered from 0.
pub trait Log {
    /// Appends `records` at the next positions in one durable commit.
    fn append(&mut self, records: &[[u8; PAYLOAD_BYTES]]);
    /// Reads every retained record in position order; returns how many and their byte sum.
    fn read_all(&mut self) -> (u64, u64);
    /// Drops what lies below `before`, as far as the log can.
    fn truncate_before(&mut self, before: u64);
}

/// Record `position`'s payload.
pub fn payload(position: u64) -> [u8; PAYLOAD_BYTES] {
    let mut payload = [0x5a; PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&position.to_le_bytes());
    payload
}

/// Appends positions `0..count` in batches of `batch`.
pub fn populate(log: &mut dyn Log, count: u64, batch: u64) {
    let mut records = Vec::with_capacity(batch as usize);
    for start in (0..count).step_by(batch as usize) {
        records.clear();
        records.extend((start..(start + batch).min(count)).map(payload));
        log.append(&records);
    }
}

fn sum(payload: &[u8]) -> u64 {
    payload.iter().map(|&b| u64::from(b)).sum()
}

struct Segment {
    log: SegmentLog,
    reader: SegmentReader,
}

impl Segment {
    fn open(dir: &Path) -> Self {
        let (log, _) =
            SegmentLog::open(&dir.join("segments"), 0, SegmentOptions::default()).expect("open");
        let reader = log.reader();
        Self { log, reader }
    }
}

impl Log for Segment {
    fn append(&mut self, records: &[[u8; PAYLOAD_BYTES]]) {
        for record in records {
            self.log.push(record).expect("push");
        }
        self.log.write().expect("write");
        self.log.sync().expect("sync");
    }

    fn read_all(&mut self) -> (u64, u64) {
        let (mut count, mut bytes) = (0, 0);
        let mut from = self.reader.first();
        loop {
            let records = self.reader.read(from, 10_000, 1 << 20).expect("read");
            let Some((last, _)) = records.last() else {
                return (count, bytes);
            };
            from = last + 1;
            count += records.len() as u64;
            bytes += records.iter().map(|(_, p)| sum(p)).sum::<u64>();
        }
    }

    fn truncate_before(&mut self, before: u64) {
        self.log.truncate_before(before).expect("truncate");
    }
}

struct Mrecordlog {
    runtime: tokio::runtime::Runtime,
    log: MultiRecordLog,
    dir: PathBuf,
    /// The file an fdatasync goes to, and the log's file count it was picked at; `None`
    /// measures mrecordlog as shipped.
    current: Option<(File, usize)>,
}

impl Mrecordlog {
    fn open(dir: &Path, fdatasync: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let log = runtime.block_on(async {
            let mut log = MultiRecordLog::open_with_prefs(dir, SyncPolicy::OnAppend)
                .await
                .expect("open");
            if !log.queue_exists(QUEUE) {
                log.create_queue(QUEUE).await.expect("create queue");
            }
            log
        });
        let mut this = Self {
            runtime,
            log,
            dir: dir.to_path_buf(),
            current: None,
        };
        if fdatasync {
            this.current = Some((this.newest_file(), this.log.on_disk_size()));
        }
        this
    }

    fn newest_file(&self) -> File {
        let newest = std::fs::read_dir(&self.dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .filter(|name| name.to_string_lossy().starts_with("wal-"))
            .max()
            .expect("a wal file");
        File::open(self.dir.join(newest)).expect("open wal file")
    }

    /// fdatasyncs the file(s) the last append went to: the previous one too after a roll.
    fn fdatasync(&mut self) {
        let size = self.log.on_disk_size();
        let rolled = match &self.current {
            None => return,
            Some((file, seen)) if *seen != size => {
                file.sync_data().expect("fdatasync");
                true
            }
            Some(_) => false,
        };
        if rolled {
            self.current = Some((self.newest_file(), size));
        }
        if let Some((file, _)) = &self.current {
            file.sync_data().expect("fdatasync");
        }
    }
}

impl Log for Mrecordlog {
    fn append(&mut self, records: &[[u8; PAYLOAD_BYTES]]) {
        let payloads = records.iter().map(|r| &r[..]);
        self.runtime
            .block_on(self.log.append_records(QUEUE, None, payloads))
            .expect("append");
        self.fdatasync();
    }

    fn read_all(&mut self) -> (u64, u64) {
        let (mut count, mut bytes) = (0, 0);
        for (_, payload) in self.log.range(QUEUE, ..).expect("range") {
            count += 1;
            bytes += sum(&payload);
        }
        (count, bytes)
    }

    fn truncate_before(&mut self, before: u64) {
        if before > 0 {
            self.runtime
                .block_on(self.log.truncate(QUEUE, before - 1))
                .expect("truncate");
        }
    }
}

struct Fjall {
    db: Database,
    log: Keyspace,
    next: u64,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = Database::builder(dir.join("fjall")).open().expect("open");
        let log = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .expect("keyspace");
        let next = log.last_key_value().map_or(0, |last| {
            let (key, _) = last.into_inner().expect("last");
            u64::from_be_bytes(key[..].try_into().expect("u64 key")) + 1
        });
        Self { db, log, next }
    }
}

impl Log for Fjall {
    fn append(&mut self, records: &[[u8; PAYLOAD_BYTES]]) {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for record in records {
            batch.insert(&self.log, self.next.to_be_bytes(), &record[..]);
            self.next += 1;
        }
        batch.commit().expect("commit");
    }

    fn read_all(&mut self) -> (u64, u64) {
        let (mut count, mut bytes) = (0, 0);
        for entry in self.log.iter() {
            let (_, value) = entry.into_inner().expect("entry");
            count += 1;
            bytes += sum(&value);
        }
        (count, bytes)
    }

    fn truncate_before(&mut self, _before: u64) {}
}

struct Redb {
    db: redb::Database,
    next: u64,
}

impl Redb {
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("log.redb")).expect("open");
        let txn = db.begin_write().expect("begin");
        let next = {
            let table = txn.open_table(REDB_LOG).expect("table");
            let last = table.last().expect("last");
            last.map_or(0, |(key, _)| key.value() + 1)
        };
        txn.commit().expect("commit");
        Self { db, next }
    }
}

impl Log for Redb {
    fn append(&mut self, records: &[[u8; PAYLOAD_BYTES]]) {
        let mut txn = self.db.begin_write().expect("begin");
        txn.set_durability(Durability::Immediate)
            .expect("durability");
        {
            let mut table = txn.open_table(REDB_LOG).expect("table");
            for record in records {
                table.insert(self.next, &record[..]).expect("insert");
                self.next += 1;
            }
        }
        txn.commit().expect("commit");
    }

    fn read_all(&mut self) -> (u64, u64) {
        let txn = self.db.begin_read().expect("begin");
        let table = txn.open_table(REDB_LOG).expect("table");
        let (mut count, mut bytes) = (0, 0);
        for entry in table.range::<u64>(..).expect("range") {
            let (_, value) = entry.expect("entry");
            count += 1;
            bytes += sum(value.value());
        }
        (count, bytes)
    }

    fn truncate_before(&mut self, _before: u64) {}
}
