//! The delivery journal of the embedded backend: when each subscriber's alerts were settled,
//! for the compliance report (`outage-relay report`).
//!
//! Each subscriber has a `journal/` segment log next to its `entries/` and `cursor/` logs.
//! Every move of its cursor appends one record, in the same group commit as the cursor
//! record (so one small write per ack call, never one per alert):
//!
//! The records (`log::codec`'s journal record) say "sequences `from..=upto` were acknowledged
//! (or removed by retention unacknowledged) at `at`".
//!
//! The alerts themselves are the `entries/` records: they are no longer deleted when
//! acknowledged, but kept until `store.report_retention` after they were settled. The writer
//! keeps a sparse index of the journal in memory ([`JournalMarks`], one mark a minute at
//! most) to find what maintenance may delete: the journal's segments before the newest mark
//! older than the retention, and the entries' segments before the first sequence it
//! settled. Deletion is by whole segment, so a little more than the retention stays;
//! entries whose journal records are gone are left out of reports.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use super::segment::{SegmentLog, SegmentOptions, SegmentReader};
use super::{READ_BYTES, segment_error};
use crate::domain::UtcMillis;
use crate::log::codec::{decode_entry, decode_settled};
use crate::log::{Delivered, LogError, Settled};

/// Marks of the in-memory index are at least this far apart.
const MARK_EVERY: Duration = Duration::from_secs(60);

/// A sparse index of a journal: `(position, record)` at most one a minute, oldest first.
#[derive(Debug, Default)]
pub struct JournalMarks {
    marks: VecDeque<(u64, Settled)>,
}

/// What maintenance may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forget {
    /// Journal records before this position.
    pub journal_before: u64,
    /// Entries before this sequence.
    pub entries_before: u64,
}

impl JournalMarks {
    /// Notes the record written at `position`.
    pub fn note(&mut self, position: u64, settled: Settled) {
        let due = self.marks.back().is_none_or(|(_, last)| {
            settled.at.0 - last.at.0 >= i64::try_from(MARK_EVERY.as_millis()).unwrap_or(0)
        });
        if due {
            self.marks.push_back((position, settled));
        }
    }

    /// What may go once records before `cutoff` are no longer wanted: everything before the
    /// newest mark older than `cutoff` (which stays, as the oldest mark).
    pub fn forget_before(&mut self, cutoff: UtcMillis) -> Option<Forget> {
        let mut newest_old = None;
        while let Some(&(position, settled)) = self.marks.front()
            && settled.at < cutoff
        {
            newest_old = Some((position, settled));
            self.marks.pop_front();
        }
        let (position, settled) = newest_old?;
        self.marks.push_front((position, settled));
        Some(Forget {
            journal_before: position,
            entries_before: settled.from,
        })
    }
}

/// Every record of the journal `reader` reads, in order, with its position.
pub fn read_journal(reader: &SegmentReader) -> Result<Vec<(u64, Settled)>, LogError> {
    let mut next = reader.first();
    let end = reader.next();
    let mut records = Vec::new();
    while next < end {
        let frames = reader
            .read(next, 64 * 1024, READ_BYTES)
            .map_err(segment_error)?;
        let Some((last, _)) = frames.last() else {
            break;
        };
        next = last + 1;
        for (position, payload) in frames {
            records.push((position, decode_settled(&payload)?));
        }
    }
    Ok(records)
}

/// The alerts of a subscriber's `entries` due in `[from, to)`, with their fate by `journal`,
/// reading entries stored up to `head`.
pub fn deliveries(
    entries: &SegmentReader,
    head: u64,
    journal: &SegmentReader,
    from: UtcMillis,
    to: UtcMillis,
) -> Result<Vec<Delivered>, LogError> {
    let records: Vec<Settled> = read_journal(journal)?
        .into_iter()
        .map(|(_, settled)| settled)
        .collect();
    let mut found = Vec::new();
    let mut next = entries.first();
    while next <= head {
        let frames = match entries.read(next, 4096, READ_BYTES) {
            Ok(frames) => frames,
            Err(super::segment::SegmentError::Gone { first, .. }) => {
                next = next.max(first);
                continue;
            }
            Err(err) => return Err(segment_error(err)),
        };
        let Some((last, _)) = frames.last() else {
            break;
        };
        next = last + 1;
        let mut alerts = Vec::with_capacity(frames.len());
        for (sequence, payload) in frames.into_iter().filter(|(s, _)| *s <= head) {
            alerts.push((sequence, decode_entry(&payload)?.0));
        }
        found.extend(Settled::deliveries(&records, alerts, from, to));
    }
    Ok(found)
}

/// Reads the deliveries of every subscriber of the embedded data directory `dir`, which no
/// running relay may hold (its `LOCK` is taken while reading): `(subscriber, deliveries)` in
/// name order.
pub fn read_data_dir(
    dir: &Path,
    from: UtcMillis,
    to: UtcMillis,
) -> Result<Vec<(String, Vec<Delivered>)>, LogError> {
    if !dir.join("FORMAT").exists() {
        return Err(LogError::Unavailable(format!(
            "{} is not an outage-relay data directory (no FORMAT file)",
            dir.display()
        )));
    }
    let _lock = super::lock(dir)?;
    let alerts = dir.join("alerts");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&alerts).map_err(|err| super::io_error(&alerts, &err))? {
        let entry = entry.map_err(|err| super::io_error(&alerts, &err))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    let options = SegmentOptions {
        segment_bytes: super::META_SEGMENT_BYTES,
    };
    let mut all = Vec::with_capacity(names.len());
    for name in names {
        let log = alerts.join(&name);
        let (entries, _) = super::open_segments(&log.join("entries"), options)?;
        let (journal, _) = super::open_segments(&log.join("journal"), options)?;
        let head = entries.next() - 1;
        let found = deliveries(&entries.reader(), head, &journal.reader(), from, to)?;
        all.push((name, found));
    }
    Ok(all)
}

/// Opens a subscriber's journal in `dir`: the log and its marks.
pub fn open(dir: &Path, options: SegmentOptions) -> Result<(SegmentLog, JournalMarks), LogError> {
    let (log, recovery) = super::open_segments(dir, options)?;
    super::report_cut("journal", &recovery);
    let mut marks = JournalMarks::default();
    for (position, settled) in read_journal(&log.reader())? {
        marks.note(position, settled);
    }
    Ok((log, marks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::codec::encode_settled;

    fn settled(from: u64, upto: u64, at: i64) -> Settled {
        Settled {
            from,
            upto,
            at: UtcMillis(at),
            expired: false,
        }
    }

    #[test]
    fn a_journal_record_reads_back_as_written() {
        let record = Settled {
            expired: true,
            ..settled(3, 9, -4)
        };
        assert_eq!(decode_settled(&encode_settled(&record)), Ok(record));
        assert!(decode_settled(&encode_settled(&record)[..24]).is_err());
        assert!(decode_settled(&[1; 25]).is_err());
    }

    #[test]
    fn marks_are_a_minute_apart_and_forgetting_keeps_the_newest_old_one() {
        let mut marks = JournalMarks::default();
        for (position, at) in [(1, 0), (2, 30_000), (3, 60_000), (4, 130_000), (5, 200_000)] {
            marks.note(position, settled(position, position, at));
        }
        assert_eq!(
            marks.marks.len(),
            4,
            "the one 30 s after the first is not a mark"
        );
        assert_eq!(marks.forget_before(UtcMillis(0)), None);
        assert_eq!(
            marks.forget_before(UtcMillis(130_001)),
            Some(Forget {
                journal_before: 4,
                entries_before: 4
            })
        );
        assert_eq!(marks.marks.front().map(|(p, _)| *p), Some(4));
    }
}
