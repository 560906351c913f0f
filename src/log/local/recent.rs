//! The newest entries of a subscriber's alert log, decoded, for readers at its head.
//!
//! Feeds and the SLA watch follow a live log a few entries behind the writer. The writer
//! hands each group's new entries (as it built them, before encoding) to the log's
//! [`Recent`] once they are synced; a reader whose position is among them copies them from
//! memory instead of reading, checking and decoding the segment file. Older entries (a
//! backlog, a reader catching up) come from the file. At most `capacity` entries are kept.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::log::LogEntry;

/// A subscriber log's newest entries; see the module doc.
#[derive(Debug)]
pub struct Recent {
    chunks: Mutex<Chunks>,
    capacity: usize,
}

/// The groups held, oldest first, each a run of consecutive sequences following the one
/// before, and how many entries they hold together.
#[derive(Debug, Default)]
struct Chunks {
    groups: VecDeque<Arc<[LogEntry]>>,
    held: usize,
}

impl Recent {
    /// Keeps at most `capacity` entries (0: none).
    pub fn new(capacity: usize) -> Self {
        Self {
            chunks: Mutex::new(Chunks::default()),
            capacity,
        }
    }

    /// Adds entries just synced, which follow the ones held; drops the oldest beyond the
    /// capacity.
    pub fn push(&self, entries: Vec<LogEntry>) {
        if entries.is_empty() || self.capacity == 0 {
            return;
        }
        let mut chunks = self.chunks.lock();
        let contiguous = chunks
            .groups
            .back()
            .and_then(|chunk| chunk.last())
            .is_none_or(|last| {
                entries
                    .first()
                    .is_some_and(|e| e.sequence == last.sequence + 1)
            });
        if !contiguous {
            chunks.groups.clear();
            chunks.held = 0;
        }
        chunks.held += entries.len();
        chunks.groups.push_back(entries.into());
        while chunks.held > self.capacity
            && let Some(oldest) = chunks.groups.pop_front()
        {
            chunks.held -= oldest.len();
        }
    }

    /// Up to `max` entries from sequence `from`, if `from` is among those held.
    pub fn read(&self, from: u64, max: usize) -> Option<Vec<LogEntry>> {
        let chunks = self.chunks.lock();
        let first = chunks.groups.front()?.first()?.sequence;
        if from < first {
            return None;
        }
        // Groups are consecutive and non-empty: the first one ending at or after `from`
        // holds it (readers follow the head, so this is usually one of the last).
        let start_at = chunks
            .groups
            .partition_point(|chunk| chunk.last().is_some_and(|end| end.sequence < from));
        let mut entries = Vec::new();
        let mut next = from;
        for chunk in chunks.groups.range(start_at..) {
            let (Some(start), Some(end)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            if next > end.sequence {
                continue;
            }
            let skip = usize::try_from(next - start.sequence).ok()?;
            for entry in chunk
                .iter()
                .skip(skip)
                .take(max.saturating_sub(entries.len()))
            {
                entries.push(entry.clone());
            }
            next = entries.last().map_or(next, |entry| entry.sequence + 1);
            if entries.len() >= max {
                break;
            }
        }
        (!entries.is_empty()).then_some(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DeviceId;
    use crate::log::Destination;
    use crate::log::conformance::poa;
    use crate::route::ParkReason;

    fn entries(from: u64, count: u64) -> Vec<LogEntry> {
        (from..from + count)
            .map(|sequence| LogEntry {
                sequence,
                alert: poa(DeviceId(sequence), 0),
                destination: Destination::Parked(ParkReason::UnknownDevice),
                emitted_by: None,
            })
            .collect()
    }

    fn sequences(entries: &[LogEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.sequence).collect()
    }

    #[test]
    fn reads_come_from_the_entries_held_across_chunks() {
        let recent = Recent::new(100);
        recent.push(entries(1, 3));
        recent.push(entries(4, 3));
        assert_eq!(
            recent.read(2, 10).as_deref().map(sequences),
            Some(vec![2, 3, 4, 5, 6])
        );
        assert_eq!(recent.read(5, 1).as_deref().map(sequences), Some(vec![5]));
        assert!(recent.read(7, 10).is_none(), "nothing past the head");
    }

    #[test]
    fn the_oldest_entries_go_beyond_the_capacity_and_are_read_from_the_file() {
        let recent = Recent::new(4);
        recent.push(entries(1, 3));
        recent.push(entries(4, 3));
        assert!(
            recent.read(2, 10).is_none(),
            "dropped: the reader goes to the file"
        );
        assert_eq!(
            recent.read(4, 10).as_deref().map(sequences),
            Some(vec![4, 5, 6])
        );
    }

    #[test]
    fn a_read_starts_in_the_group_that_holds_its_sequence() {
        let recent = Recent::new(1_000);
        for sequence in (1..=200).step_by(2) {
            recent.push(entries(sequence, 2));
        }
        assert_eq!(
            recent.read(57, 3).as_deref().map(sequences),
            Some(vec![57, 58, 59])
        );
        assert_eq!(
            recent.read(200, 5).as_deref().map(sequences),
            Some(vec![200])
        );
        assert_eq!(
            recent.read(1, 2).as_deref().map(sequences),
            Some(vec![1, 2])
        );
    }

    #[test]
    fn a_gap_starts_over() {
        let recent = Recent::new(100);
        recent.push(entries(1, 3));
        recent.push(entries(9, 2));
        assert!(recent.read(2, 10).is_none());
        assert_eq!(
            recent.read(9, 10).as_deref().map(sequences),
            Some(vec![9, 10])
        );
    }
}
