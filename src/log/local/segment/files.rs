//! The log's directory and segment files: names, creation, locking, and loading them at open
//! under the recovery rules of the module doc.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::scan;
use super::index::{Index, Indexed};
use super::{Active, SegmentError, TornTail};

/// Extension of segment files.
const SEGMENT_EXTENSION: &str = "seg";
/// Digits of the base in a segment file name: enough for any `u64`.
const BASE_DIGITS: usize = 20;

/// What [`load`] found in a log's directory.
pub(super) struct Loaded {
    pub(super) index: Index,
    pub(super) active: Active,
    pub(super) cut: Option<TornTail>,
}

/// Opens (creating it if missing) and locks the log's directory.
pub(super) fn open_dir(dir: &Path) -> Result<File, SegmentError> {
    if !dir.exists() {
        fs::create_dir(dir).map_err(io_at(dir))?;
        let parent = match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        File::open(parent)
            .and_then(|p| p.sync_all())
            .map_err(io_at(parent))?;
    }
    let file = File::open(dir).map_err(io_at(dir))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(SegmentError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(io_at(dir)(source)),
    }
}

/// Loads every segment in `dir` (creating the first, at `start`, in an empty one), checks
/// them, cuts a torn tail off the last, and makes what it found durable.
pub(super) fn load(dir: &Path, dir_file: &File, start: u64) -> Result<Loaded, SegmentError> {
    let bases = segment_bases(dir)?;
    let (last_base, older) = match bases.split_last() {
        Some((last, older)) => (*last, older),
        None => {
            create_segment(dir, start)?;
            (start, &[][..])
        }
    };
    let mut head = VecDeque::with_capacity(older.len());
    let mut expected = None;
    for &base in older {
        let (indexed, end) = load_closed(dir, base, expected)?;
        head.push_back(indexed);
        expected = Some(end);
    }
    let (active, last, cut) = load_last(dir, last_base, expected)?;
    dir_file.sync_all().map_err(io_at(dir))?;
    Ok(Loaded {
        index: Index::new(head, last),
        active,
        cut,
    })
}

/// The bases of the segment files in `dir`, in order.
pub(super) fn segment_bases(dir: &Path) -> Result<Vec<u64>, SegmentError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        if let Some(base) = parse_segment_name(&entry.file_name().to_string_lossy()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

pub(super) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:0BASE_DIGITS$}.{SEGMENT_EXTENSION}"))
}

/// Creates the segment file for `base`: a read-write handle and a read-only one.
pub(super) fn create_segment(dir: &Path, base: u64) -> Result<(File, File), SegmentError> {
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_at(&path))?;
    let reader = File::open(&path).map_err(io_at(&path))?;
    Ok((file, reader))
}

/// Wraps an I/O error with the path it happened on.
pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The base of a segment file name: twenty digits and `.seg`.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXTENSION)?.strip_suffix('.')?;
    if digits.len() != BASE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Loads a segment before the last: it must be whole. Returns it and the position after it.
fn load_closed(
    dir: &Path,
    base: u64,
    expected: Option<u64>,
) -> Result<(Indexed, u64), SegmentError> {
    let path = segment_path(dir, base);
    let file = File::open(&path).map_err(io_at(&path))?;
    let scan = scan(&file, &path)?;
    if let Some(why) = scan.bad {
        return Err(SegmentError::Corrupt {
            segment: path,
            offset: scan.len,
            why,
        });
    }
    let end = segment_end(&path, base, expected, scan.records)?;
    let indexed = Indexed {
        base,
        file: Arc::new(file),
        sparse: scan.sparse,
        records: scan.records,
        len: scan.len,
    };
    Ok((indexed, end))
}

/// Loads the last segment, cutting a torn tail, and fsyncs it.
fn load_last(
    dir: &Path,
    base: u64,
    expected: Option<u64>,
) -> Result<(Active, Indexed, Option<TornTail>), SegmentError> {
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))?;
    let scan = scan(&file, &path)?;
    segment_end(&path, base, expected, scan.records)?;
    let cut = scan.bad.map(|why| TornTail {
        segment: path.clone(),
        offset: scan.len,
        dropped_bytes: scan.file_len - scan.len,
        why,
    });
    if cut.is_some() {
        file.set_len(scan.len).map_err(io_at(&path))?;
    }
    // A full fsync: a cut changed the file's size.
    file.sync_all().map_err(io_at(&path))?;
    let reader = File::open(&path).map_err(io_at(&path))?;
    let active = Active {
        base,
        file: Arc::new(file),
        len: scan.len,
        records: scan.records,
        dirty: false,
    };
    let indexed = Indexed {
        base,
        file: Arc::new(reader),
        sparse: scan.sparse,
        records: scan.records,
        len: scan.len,
    };
    Ok((active, indexed, cut))
}

/// Checks that the segment at `base` starts where the previous one ended (`expected`), and
/// returns the position after its last record.
fn segment_end(
    path: &Path,
    base: u64,
    expected: Option<u64>,
    records: u64,
) -> Result<u64, SegmentError> {
    if expected.is_some_and(|end| end != base) {
        return Err(SegmentError::Corrupt {
            segment: path.to_path_buf(),
            offset: 0,
            why: "segment does not start where the previous one ends",
        });
    }
    base.checked_add(records).ok_or(SegmentError::Exhausted)
}
