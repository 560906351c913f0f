//! The readers' side: the sparse index of synced segments the writer publishes to at each
//! `sync`, and [`SegmentReader`], which reads through it.

use std::collections::VecDeque;
use std::fs::File;
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use super::files::segment_path;
use super::frame::{HEADER_BYTES, SPARSE_EVERY, Window};
use super::{Closed, SegmentError};

/// The reader side of a log: shares the writer's index; cheap to clone, usable from any
/// thread while the writer runs.
#[derive(Clone)]
pub struct SegmentReader {
    shared: Arc<Shared>,
}

/// What the writer and its readers share.
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    index: RwLock<Index>,
}

/// The synced segments, as readers see them.
pub(super) struct Index {
    /// Every segment before the last, oldest first.
    head: VecDeque<Indexed>,
    last: Indexed,
}

/// One segment in the index.
pub(super) struct Indexed {
    pub(super) base: u64,
    /// A read-only handle, shared by every reader.
    pub(super) file: Arc<File>,
    /// Offset of frame `k * SPARSE_EVERY`, for every such frame synced.
    pub(super) sparse: Vec<u64>,
    /// Synced records.
    pub(super) records: u64,
    /// Synced bytes.
    pub(super) len: u64,
}

/// Frames written to one segment, waiting for `sync` to publish them.
pub(super) struct Written {
    /// A read handle when these frames started a new segment.
    pub(super) new_segment: Option<Arc<File>>,
    pub(super) base: u64,
    /// Offsets of the written frames that go into the sparse index.
    pub(super) sparse: Vec<u64>,
    pub(super) records: u64,
    pub(super) len: u64,
}

/// A segment's frames from a sparse index entry on: what a reader copies out of the index
/// before reading without the lock.
struct Span {
    base: u64,
    file: Arc<File>,
    /// Position and offset of the frame to start scanning at.
    start: u64,
    offset: u64,
    /// Synced bounds of the segment.
    end: u64,
    end_offset: u64,
}

/// Records a read collects, within its limits.
struct Batch {
    records: Vec<(u64, Vec<u8>)>,
    bytes: usize,
    max: usize,
    max_bytes: usize,
    /// The next record would have passed `max_bytes`.
    over_budget: bool,
}

impl SegmentReader {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Up to `max` synced records from position `from` on, stopping before the payloads
    /// would pass `max_bytes` (but with at least one record when there is one). `from` below
    /// [`first`](Self::first) is [`SegmentError::Gone`]; at or past [`next`](Self::next) the
    /// result is empty.
    pub fn read(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SegmentError> {
        let available = self.next().saturating_sub(from);
        let mut batch = Batch::new(max, max_bytes, available);
        let mut position = from;
        while !batch.is_full() {
            let found = self.shared.index.read().span(position);
            let span = match found {
                Ok(Some(span)) => span,
                Ok(None) => break,
                // Truncated behind this read: what it has is still good.
                Err(_) if !batch.records.is_empty() => break,
                Err(gone) => return Err(gone),
            };
            position = span.read_into(&self.shared.dir, position, &mut batch)?;
        }
        Ok(batch.records)
    }

    /// The first position still stored.
    pub fn first(&self) -> u64 {
        self.shared.index.read().first()
    }

    /// One past the last synced position: the writer's `next` as of its last `sync`.
    pub fn next(&self) -> u64 {
        self.shared.index.read().next()
    }

    /// The position after the last record of each synced segment but the newest, oldest
    /// first: where [`SegmentLog::truncate_before`](super::SegmentLog::truncate_before) can
    /// cut.
    pub fn segment_ends(&self) -> Vec<u64> {
        let index = self.shared.index.read();
        index.head.iter().map(|s| s.base + s.records).collect()
    }
}

impl Shared {
    pub(super) fn new(dir: &Path, index: Index) -> Self {
        Self {
            dir: dir.to_path_buf(),
            index: RwLock::new(index),
        }
    }

    /// Shows what `write` wrote to readers, in order.
    pub(super) fn publish(&self, written: impl Iterator<Item = Written>) {
        let mut index = self.index.write();
        for written in written {
            index.publish(written);
        }
    }

    /// Removes from the index the segments before the last that end (the position after their
    /// last record) at or before `end_limit`; returns their bases, oldest first.
    pub(super) fn remove_ending_by(&self, end_limit: u64) -> Vec<u64> {
        let mut index = self.index.write();
        let mut removed = Vec::new();
        while let Some(front) = index.head.front() {
            let end = index.head.get(1).map_or(index.last.base, |s| s.base);
            if end > end_limit {
                break;
            }
            removed.push(front.base);
            index.head.pop_front();
        }
        removed
    }
}

impl Index {
    pub(super) fn new(head: VecDeque<Indexed>, last: Indexed) -> Self {
        Self { head, last }
    }

    pub(super) fn first(&self) -> u64 {
        self.head.front().map_or(self.last.base, |s| s.base)
    }

    pub(super) fn next(&self) -> u64 {
        self.last.base + self.last.records
    }

    /// The segments before the last, as the writer keeps them.
    pub(super) fn closed(&self) -> impl Iterator<Item = Closed> {
        self.head.iter().map(|s| Closed {
            base: s.base,
            len: s.len,
        })
    }

    fn publish(&mut self, written: Written) {
        match written.new_segment {
            Some(file) => {
                let segment = Indexed {
                    base: written.base,
                    file,
                    sparse: written.sparse,
                    records: written.records,
                    len: written.len,
                };
                let previous = mem::replace(&mut self.last, segment);
                self.head.push_back(previous);
            }
            None => {
                debug_assert_eq!(self.last.base, written.base);
                self.last.sparse.extend(written.sparse);
                self.last.records += written.records;
                self.last.len += written.len;
            }
        }
    }

    /// Where to start reading `position`: `None` when it is not synced yet.
    fn span(&self, position: u64) -> Result<Option<Span>, SegmentError> {
        let first = self.first();
        if position < first {
            return Err(SegmentError::Gone {
                requested: position,
                first,
            });
        }
        if position >= self.next() {
            return Ok(None);
        }
        // Newest first: readers mostly follow the tail.
        let mut segments = self.head.iter().chain(std::iter::once(&self.last));
        let segment = segments.rfind(|s| s.base <= position);
        Ok(segment.map(|s| s.span(position)))
    }
}

impl Indexed {
    fn span(&self, position: u64) -> Span {
        let entry = (position - self.base) / SPARSE_EVERY;
        // Frame 0 at offset 0 is always a correct (if slower) place to start.
        let (start, offset) = usize::try_from(entry)
            .ok()
            .and_then(|k| self.sparse.get(k))
            .map_or((self.base, 0), |&offset| {
                (self.base + entry * SPARSE_EVERY, offset)
            });
        Span {
            base: self.base,
            file: Arc::clone(&self.file),
            start,
            offset,
            end: self.base + self.records,
            end_offset: self.len,
        }
    }
}

impl Span {
    /// Reads this span's records from `from` on into `batch`; returns the position after the
    /// last record taken.
    fn read_into(&self, dir: &Path, from: u64, batch: &mut Batch) -> Result<u64, SegmentError> {
        let path = || segment_path(dir, self.base);
        let mut window = Window::new(&self.file, self.end_offset);
        let (mut position, mut offset) = (self.start, self.offset);
        while position < self.end && !batch.is_full() {
            let frame = window.frame(offset).map_err(|source| SegmentError::Io {
                path: path(),
                source,
            })?;
            let payload = frame.map_err(|why| SegmentError::Corrupt {
                segment: path(),
                offset,
                why,
            })?;
            offset += HEADER_BYTES + payload.len() as u64;
            if position >= from && !batch.take(position, payload) {
                break;
            }
            position += 1;
        }
        Ok(position)
    }
}

impl Batch {
    /// A batch sized for its limits and the `available` records, allocated once.
    fn new(max: usize, max_bytes: usize, available: u64) -> Self {
        // Records are at least one byte: `max_bytes + 1` of them at most pass the budget.
        let capacity = usize::try_from(available)
            .unwrap_or(usize::MAX)
            .min(max)
            .min(max_bytes.saturating_add(1));
        Self {
            records: Vec::with_capacity(capacity),
            bytes: 0,
            max,
            max_bytes,
            over_budget: false,
        }
    }

    fn is_full(&self) -> bool {
        self.over_budget || self.records.len() >= self.max
    }

    /// Takes the record unless it would pass `max_bytes` (the first record is always taken).
    fn take(&mut self, position: u64, payload: &[u8]) -> bool {
        if !self.records.is_empty() && self.bytes + payload.len() > self.max_bytes {
            self.over_budget = true;
            return false;
        }
        self.bytes += payload.len();
        self.records.push((position, payload.to_vec()));
        true
    }
}
