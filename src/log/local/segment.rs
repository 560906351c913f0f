//! An append-only, checksummed, segmented record log: the storage primitive under the
//! embedded backend (a partition's event log, each subscriber's alert log).
//!
//! # Files
//!
//! A log owns one directory. Its records are numbered with consecutive `u64` *positions*.
//! The directory holds segment files named `{base:020}.seg`, `base` being the position of the
//! segment's first record; other files are ignored. A segment is a sequence of frames:
//!
//! ```text
//! [len: u32 LE][crc: u32 LE][payload: len bytes]
//! ```
//!
//! `crc` is the CRC-32C of the payload, and `1 <= len <=` [`MAX_RECORD_BYTES`]. A zero `len`
//! is never written: zeroed space (a file extended but not written before a crash) reads as the
//! end of the data, so empty records are refused. A segment is full once its size reaches
//! [`SegmentOptions::segment_bytes`]; the next frame starts a new segment file.
//!
//! # Writing and fsync policy
//!
//! One writer, [`SegmentLog`], runs group commit: [`push`](SegmentLog::push) buffers records
//! in memory, [`write`](SegmentLog::write) hands them to the kernel (one write per segment
//! touched), and [`sync`](SegmentLog::sync) makes them durable: `fdatasync` of the segment
//! written, plus an `fsync` of the directory when a segment file was created since the last
//! sync. Only then are the records published to readers, so a reader never sees a record a
//! crash could take back.
//!
//! - Before the first frame goes into a new segment, the current one is fdatasynced (and the
//!   directory fsynced if it changed): every segment but the last is complete on disk before a
//!   later one exists. That is what lets recovery tell a torn write from corruption.
//! - [`truncate_before`](SegmentLog::truncate_before) deletes whole segments, oldest first,
//!   each unlink followed by a directory fsync, so a crash leaves a contiguous run of segments.
//! - An I/O error in `write`, `sync` or `truncate_before` poisons the writer: after a failed
//!   fsync the kernel may have dropped the dirty pages, so nothing written since can be trusted.
//!   Every later call fails with [`SegmentError::Poisoned`]; reopening runs recovery.
//! - [`open`](SegmentLog::open) takes an exclusive `flock` on the directory, held until the
//!   writer is dropped: a second writer gets [`SegmentError::Locked`].
//! - Dropping the writer neither writes nor syncs: records not yet written are lost, records
//!   written but not synced may or may not survive a crash.
//!
//! # Recovery
//!
//! [`open`](SegmentLog::open) reads every frame of every segment and checks its `len` and `crc`.
//!
//! - A bad frame (short header, zero or oversized `len`, short payload, checksum mismatch) in
//!   the **last** segment is a torn write: the log ends there. The file is cut back to the
//!   last good frame and fsynced, and the cut is returned in [`Recovery::cut`] for the caller
//!   to log and count.
//! - A bad frame in any other segment, or a segment not starting where the previous one ends,
//!   is [`SegmentError::Corrupt`]: data that was durable is never dropped silently.
//! - An empty last segment is fine (a crash right after a roll). An empty directory is a new
//!   log whose first position is `start`; its first segment file is created at once, so the
//!   positions survive a restart even before the first record. With segments present, `start`
//!   is ignored.
//! - Open fsyncs the last segment and the directory, so everything it found is durable and
//!   readable at once.
//!
//! # Reading
//!
//! [`SegmentReader`]s (cheap clones, shared across threads) read synced records with
//! positional reads on shared read-only handles, one per segment. A sparse in-memory index
//! keeps the offset of every 64th frame of each segment: 8 bytes per 64 records, so a
//! million-record backlog costs about 125 KiB of RAM and its disk space. Reads check each
//! frame's `len` and `crc` again. The index lock is held only to copy a segment's handle and
//! bounds; all I/O happens outside it. A read racing a truncation gets
//! [`SegmentError::Gone`], or the records if it had found their segment first.
//!
//! # Invariants
//!
//! - Positions are consecutive: the log holds exactly `first .. next` (the newest of them
//!   possibly still in memory or unsynced), and each segment's base is the previous segment's
//!   base plus its record count. `first == next` only while the log holds no record.
//! - Readers see exactly `first .. synced next`, where `synced next` is `next` as of the last
//!   `sync` (or open).
//! - The last segment, and the segment holding `next - 1`, are never deleted, so the file names
//!   keep the positions across a restart, and `first` only moves forward.

mod files;
mod frame;
mod index;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::mem;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::files::{create_segment, io_at, load, open_dir, segment_path};
use self::frame::Chunk;
use self::index::{Shared, Written};

pub use self::index::SegmentReader;

/// The largest payload a record may have; a frame claiming more is corrupt.
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// The default [`SegmentOptions::segment_bytes`].
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// How a log lays out its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentOptions {
    /// A segment is full once its size reaches this; the next record starts a new segment.
    /// Truncation frees disk space a whole segment at a time.
    pub segment_bytes: u64,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// What [`SegmentLog::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The first position stored (equal to `next` when the log holds no record).
    pub first: u64,
    /// The position the next record gets.
    pub next: u64,
    /// The torn tail cut off the last segment, if there was one.
    pub cut: Option<TornTail>,
}

/// A torn tail recovery cut off: the unsynced end of the last segment that a crash left
/// incomplete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file cut.
    pub segment: PathBuf,
    /// Where the first bad frame started; the file now ends here.
    pub offset: u64,
    /// How many bytes were cut.
    pub dropped_bytes: u64,
    /// What was wrong with the frame at `offset`.
    pub why: &'static str,
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A file system call failed.
    #[error("segment log I/O on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Data that was durable does not read back: never dropped silently.
    #[error("segment {} is corrupt at byte {offset}: {why}", segment.display())]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Where in the file.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A read from a position that truncation already removed.
    #[error("position {requested} is gone: the log starts at {first}")]
    Gone {
        /// What was asked for.
        requested: u64,
        /// The first position still stored.
        first: u64,
    },
    /// A record over [`MAX_RECORD_BYTES`].
    #[error("a record of {len} bytes is over the limit of {MAX_RECORD_BYTES}")]
    TooLarge {
        /// The record's size.
        len: usize,
    },
    /// An empty record (a zero `len` marks the end of a segment's data).
    #[error("a record must not be empty")]
    Empty,
    /// The next position would pass `u64::MAX`.
    #[error("the log has used every position")]
    Exhausted,
    /// Another writer has the directory open.
    #[error("{} is locked by another writer", dir.display())]
    Locked {
        /// The log's directory.
        dir: PathBuf,
    },
    /// An earlier `write`, `sync` or `truncate_before` failed; reopen the log.
    #[error("the log failed earlier and must be reopened")]
    Poisoned,
}

/// The writer: owns the files, and is the only one to change them. See the module doc.
pub struct SegmentLog {
    shared: Arc<Shared>,
    options: SegmentOptions,
    /// The directory, open: fsynced after segment files come or go; carries the writer's lock.
    dir: Arc<File>,
    /// The segments before the active one, oldest first.
    closed: VecDeque<Closed>,
    /// The segment being appended to.
    active: Active,
    /// Records pushed for segments before the tail's, waiting for `write`.
    full: Vec<Chunk>,
    /// Records pushed for the newest segment, waiting for `write`.
    tail: Chunk,
    /// What `write` wrote that readers have not been given yet.
    unpublished: Vec<Written>,
    /// A segment file was created since the directory was last fsynced.
    dir_dirty: bool,
    poisoned: bool,
}

/// A segment before the active one, as the writer keeps it.
struct Closed {
    base: u64,
    len: u64,
}

/// The segment the writer appends to.
struct Active {
    base: u64,
    file: Arc<File>,
    /// Bytes written.
    len: u64,
    /// Records written.
    records: u64,
    /// Written since its last fdatasync.
    dirty: bool,
}

impl SegmentLog {
    /// Opens the log in `dir`, creating the directory (its parent must exist) and, when it holds
    /// no segment, a log whose first position is `start`. Every frame is checked; see the module
    /// doc for the recovery rules.
    pub fn open(
        dir: &Path,
        start: u64,
        options: SegmentOptions,
    ) -> Result<(Self, Recovery), SegmentError> {
        let dir_file = open_dir(dir)?;
        let loaded = load(dir, &dir_file, start)?;
        let recovery = Recovery {
            first: loaded.index.first(),
            next: loaded.index.next(),
            cut: loaded.cut,
        };
        let closed = loaded.index.closed().collect();
        let log = Self {
            shared: Arc::new(Shared::new(dir, loaded.index)),
            options,
            dir: Arc::new(dir_file),
            closed,
            tail: Chunk::after(&loaded.active),
            active: loaded.active,
            full: Vec::new(),
            unpublished: Vec::new(),
            dir_dirty: false,
            poisoned: false,
        };
        Ok((log, recovery))
    }

    /// The first position still stored.
    pub fn first(&self) -> u64 {
        self.closed.front().map_or(self.active.base, |s| s.base)
    }

    /// The position the next [`push`](Self::push) gets.
    pub fn next(&self) -> u64 {
        self.tail.end()
    }

    /// Buffers one record and returns its position. Nothing reaches the file before
    /// [`write`](Self::write), and no reader sees it before [`sync`](Self::sync).
    pub fn push(&mut self, payload: &[u8]) -> Result<u64, SegmentError> {
        self.usable()?;
        if payload.is_empty() {
            return Err(SegmentError::Empty);
        }
        let len = match u32::try_from(payload.len()) {
            Ok(len) if payload.len() <= MAX_RECORD_BYTES => len,
            _ => return Err(SegmentError::TooLarge { len: payload.len() }),
        };
        let position = self.next();
        if position == u64::MAX {
            return Err(SegmentError::Exhausted);
        }
        if self.tail.segment_len() >= self.options.segment_bytes && self.tail.end() > self.tail.base
        {
            let full = mem::replace(&mut self.tail, Chunk::starting(position));
            self.full.push(full);
        }
        self.tail.push(len, payload);
        Ok(position)
    }

    /// Writes everything buffered: one write per segment touched, rolling to new segment
    /// files as they fill.
    pub fn write(&mut self) -> Result<(), SegmentError> {
        self.usable()?;
        let result = self.write_buffered();
        self.poison_on_error(result)
    }

    /// Makes everything written durable (`fdatasync` of the active segment, `fsync` of the
    /// directory when a segment was created), then shows it to readers.
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        let job = self.sync_job()?;
        let result = job.run();
        self.finish_sync(result)
    }

    /// [`sync`](Self::sync) in two halves, so that the fdatasync can run on another thread
    /// (a writer syncing several logs side by side): the job makes what was written durable;
    /// its result goes to [`finish_sync`](Self::finish_sync). Nothing may be written to the
    /// log in between.
    pub fn sync_job(&self) -> Result<SyncJob, SegmentError> {
        self.usable()?;
        Ok(SyncJob {
            shared: Arc::clone(&self.shared),
            segment: self
                .active
                .dirty
                .then(|| (Arc::clone(&self.active.file), self.active.base)),
            dir: self.dir_dirty.then(|| Arc::clone(&self.dir)),
        })
    }

    /// Ends a sync begun with [`sync_job`](Self::sync_job): on success the records written
    /// are shown to readers; a failure poisons the log.
    pub fn finish_sync(&mut self, result: Result<(), SegmentError>) -> Result<(), SegmentError> {
        self.poison_on_error(result)?;
        self.mark_synced();
        self.shared.publish(self.unpublished.drain(..));
        Ok(())
    }

    /// Deletes every segment whose records all lie below `before`, except the last one and the
    /// one holding `next - 1`, and only among synced segments; returns the new
    /// [`first`](Self::first). Whole segments only: `first` may stay below `before`.
    pub fn truncate_before(&mut self, before: u64) -> Result<u64, SegmentError> {
        self.usable()?;
        // A segment ending at `next` holds `next - 1`.
        let end_limit = before.min(self.next().saturating_sub(1));
        let removed = self.shared.remove_ending_by(end_limit);
        let result = self.delete_segments(&removed);
        self.poison_on_error(result)?;
        Ok(self.first())
    }

    /// A reader sharing this log's index.
    pub fn reader(&self) -> SegmentReader {
        SegmentReader::new(Arc::clone(&self.shared))
    }

    /// Bytes written to segment files, synced or not.
    pub fn disk_bytes(&self) -> u64 {
        self.closed.iter().map(|s| s.len).sum::<u64>() + self.active.len
    }

    fn usable(&self) -> Result<(), SegmentError> {
        if self.poisoned {
            Err(SegmentError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison_on_error<T>(&mut self, result: Result<T, SegmentError>) -> Result<T, SegmentError> {
        self.poisoned |= result.is_err();
        result
    }

    fn write_buffered(&mut self) -> Result<(), SegmentError> {
        for mut chunk in mem::take(&mut self.full) {
            self.write_chunk(&mut chunk)?;
        }
        let mut tail = mem::take(&mut self.tail);
        self.write_chunk(&mut tail)?;
        tail.restart_after(&self.active);
        self.tail = tail;
        Ok(())
    }

    fn write_chunk(&mut self, chunk: &mut Chunk) -> Result<(), SegmentError> {
        if chunk.records == 0 {
            return Ok(());
        }
        let new_segment = if chunk.base == self.active.base {
            None
        } else {
            Some(self.roll(chunk.base)?)
        };
        let active = &mut self.active;
        active
            .file
            .write_all_at(&chunk.frames, active.len)
            .map_err(io_at(&segment_path(&self.shared.dir, active.base)))?;
        let len = chunk.frames.len() as u64;
        active.len += len;
        active.records += chunk.records;
        active.dirty = true;
        self.unpublished.push(Written {
            new_segment,
            base: chunk.base,
            sparse: mem::take(&mut chunk.sparse),
            records: chunk.records,
            len,
        });
        Ok(())
    }

    /// Makes the active segment durable, then starts a new one at `base`; returns a read
    /// handle on it for the index.
    fn roll(&mut self, base: u64) -> Result<Arc<File>, SegmentError> {
        self.flush()?;
        let (file, reader) = create_segment(&self.shared.dir, base)?;
        self.dir_dirty = true;
        let old = mem::replace(&mut self.active, Active::new(base, file));
        self.closed.push_back(Closed {
            base: old.base,
            len: old.len,
        });
        Ok(Arc::new(reader))
    }

    fn flush(&mut self) -> Result<(), SegmentError> {
        self.sync_job()?.run()?;
        self.mark_synced();
        Ok(())
    }

    /// After a sync succeeded: nothing written is waiting for one.
    fn mark_synced(&mut self) {
        self.active.dirty = false;
        self.dir_dirty = false;
    }

    fn delete_segments(&mut self, bases: &[u64]) -> Result<(), SegmentError> {
        for &base in bases {
            let closed = self.closed.pop_front();
            debug_assert_eq!(closed.map(|s| s.base), Some(base));
            let path = segment_path(&self.shared.dir, base);
            fs::remove_file(&path).map_err(io_at(&path))?;
            self.dir.sync_all().map_err(io_at(&self.shared.dir))?;
        }
        Ok(())
    }
}

/// What one sync of a [`SegmentLog`] must make durable, detached from the log so that it
/// can run on another thread; see [`SegmentLog::sync_job`].
pub struct SyncJob {
    shared: Arc<Shared>,
    /// The active segment and its base, when written since its last fdatasync.
    segment: Option<(Arc<File>, u64)>,
    /// The directory, when a segment file was created since its last fsync.
    dir: Option<Arc<File>>,
}

impl SyncJob {
    /// `fdatasync` of the segment, then `fsync` of the directory, as needed.
    pub fn run(&self) -> Result<(), SegmentError> {
        if let Some((file, base)) = &self.segment {
            file.sync_data()
                .map_err(io_at(&segment_path(&self.shared.dir, *base)))?;
        }
        if let Some(dir) = &self.dir {
            dir.sync_all().map_err(io_at(&self.shared.dir))?;
        }
        Ok(())
    }
}

impl Active {
    fn new(base: u64, file: File) -> Self {
        Self {
            base,
            file: Arc::new(file),
            len: 0,
            records: 0,
            dirty: false,
        }
    }
}

#[cfg(test)]
#[path = "segment_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "segment_props.rs"]
mod props;
