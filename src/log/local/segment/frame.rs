//! Frames: `[len u32 LE][crc32c u32 LE][payload]`. Encoding into the writer's buffer
//! ([`Chunk`]), decoding by positional reads ([`Window`]), and the recovery scan of a whole
//! segment ([`scan`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::files::io_at;
use super::{Active, MAX_RECORD_BYTES, SegmentError};

/// Size of a frame header: `len` and `crc`.
pub(super) const HEADER_BYTES: u64 = 8;
/// The index keeps the offset of every `SPARSE_EVERY`-th frame of a segment.
pub(super) const SPARSE_EVERY: u64 = 64;
/// Bytes a [`Window`]'s first positional read fetches: small reads stay small.
const FIRST_READ: u64 = 16 << 10;
/// Each further read fetches twice as much as the one before, up to this.
const MAX_READ: u64 = 256 << 10;

/// Frames pushed for one segment, not yet written.
#[derive(Default)]
pub(super) struct Chunk {
    pub(super) base: u64,
    /// Where in the segment the first buffered frame goes.
    offset: u64,
    /// Index in the segment of the first buffered frame.
    first_record: u64,
    pub(super) records: u64,
    pub(super) frames: Vec<u8>,
    /// Offsets of the buffered frames that go into the sparse index.
    pub(super) sparse: Vec<u64>,
}

/// A view of `file` up to `end`, filled by positional reads growing from [`FIRST_READ`] to
/// [`MAX_READ`] bytes.
pub(super) struct Window<'a> {
    file: &'a File,
    end: u64,
    /// Size of the next read.
    read: u64,
    start: u64,
    buf: Vec<u8>,
}

/// What a recovery scan found in one segment.
pub(super) struct Scan {
    /// Whole records, and the bytes they fill from the start of the file.
    pub(super) records: u64,
    pub(super) len: u64,
    pub(super) sparse: Vec<u64>,
    /// What is wrong with the frame at `len`, when the file goes on past the whole frames.
    pub(super) bad: Option<&'static str>,
    pub(super) file_len: u64,
}

impl Chunk {
    /// An empty chunk continuing the active segment.
    pub(super) fn after(active: &Active) -> Self {
        let mut chunk = Self::default();
        chunk.restart_after(active);
        chunk
    }

    /// An empty chunk for a new segment starting at `base`.
    pub(super) fn starting(base: u64) -> Self {
        Self {
            base,
            ..Self::default()
        }
    }

    /// Empties this chunk (keeping its buffers) to continue the active segment.
    pub(super) fn restart_after(&mut self, active: &Active) {
        self.base = active.base;
        self.offset = active.len;
        self.first_record = active.records;
        self.records = 0;
        self.frames.clear();
        self.sparse.clear();
    }

    /// The segment's size once this chunk is written.
    pub(super) fn segment_len(&self) -> u64 {
        self.offset + self.frames.len() as u64
    }

    /// The position after this chunk's last record.
    pub(super) fn end(&self) -> u64 {
        self.base + self.first_record + self.records
    }

    /// Appends the frame of `payload`, `len` bytes long.
    pub(super) fn push(&mut self, len: u32, payload: &[u8]) {
        if (self.first_record + self.records).is_multiple_of(SPARSE_EVERY) {
            self.sparse.push(self.segment_len());
        }
        self.frames.extend_from_slice(&len.to_le_bytes());
        self.frames
            .extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        self.frames.extend_from_slice(payload);
        self.records += 1;
    }
}

impl<'a> Window<'a> {
    pub(super) fn new(file: &'a File, end: u64) -> Self {
        Self {
            file,
            end,
            read: FIRST_READ,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// The frame at `offset`: its payload, or what makes it no frame.
    pub(super) fn frame(&mut self, offset: u64) -> io::Result<Result<&[u8], &'static str>> {
        let room = self.end.saturating_sub(offset);
        if room < HEADER_BYTES {
            return Ok(Err("truncated frame header"));
        }
        let mut header = [0; HEADER_BYTES as usize];
        header.copy_from_slice(self.bytes(offset, HEADER_BYTES)?);
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len = u64::from(u32::from_le_bytes([l0, l1, l2, l3]));
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        if len == 0 {
            return Ok(Err("zero length"));
        }
        if len > MAX_RECORD_BYTES as u64 {
            return Ok(Err("length over the record limit"));
        }
        if room - HEADER_BYTES < len {
            return Ok(Err("truncated payload"));
        }
        let payload = self.bytes(offset + HEADER_BYTES, len)?;
        if crc32c::crc32c(payload) != crc {
            return Ok(Err("checksum mismatch"));
        }
        Ok(Ok(payload))
    }

    /// `len` bytes at `offset`; the caller has checked that they end by `self.end`.
    fn bytes(&mut self, offset: u64, len: u64) -> io::Result<&[u8]> {
        let buffered = self.start + self.buf.len() as u64;
        if offset < self.start || offset + len > buffered {
            let want = len.max(self.read).min(self.end - offset);
            self.read = (self.read * 2).min(MAX_READ);
            self.buf.resize(want as usize, 0);
            self.file.read_exact_at(&mut self.buf, offset)?;
            self.start = offset;
        }
        let from = (offset - self.start) as usize;
        Ok(&self.buf[from..from + len as usize])
    }
}

/// Reads the segment `file` frame by frame up to its end or its first bad frame.
pub(super) fn scan(file: &File, path: &Path) -> Result<Scan, SegmentError> {
    let file_len = file.metadata().map_err(io_at(path))?.len();
    let mut window = Window::new(file, file_len);
    let mut scan = Scan {
        records: 0,
        len: 0,
        sparse: Vec::new(),
        bad: None,
        file_len,
    };
    while scan.len < file_len {
        match window.frame(scan.len).map_err(io_at(path))? {
            Ok(payload) => {
                if scan.records.is_multiple_of(SPARSE_EVERY) {
                    scan.sparse.push(scan.len);
                }
                scan.records += 1;
                scan.len += HEADER_BYTES + payload.len() as u64;
            }
            Err(why) => {
                scan.bad = Some(why);
                break;
            }
        }
    }
    Ok(scan)
}
