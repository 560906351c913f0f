//! The open outages of one partition, packed for a million of them.
//!
//! A `HashMap<SupplyPoint, OpenOutage>` keeps 48-byte entries in its buckets, and a table that
//! has just doubled has half of them empty: about 100 bytes per outage, and while it grows the
//! old and the new table are both alive. Here the outages are dense 40-byte rows in a vector
//! (the point's phase and the outage's state share one word's padding), and a
//! [`hashbrown::HashTable`] holds only their 4-byte row numbers: about 50 bytes per outage,
//! and a growth copies only the small table. Removing an outage moves the last row into its
//! place and renumbers it, so rows stay dense. `benches/state_machine.rs` measures it against
//! the `HashMap` it replaces (time per operation and bytes per outage).

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::machine::{OpenOutage, OutageState};
use crate::domain::{DeviceId, MpanCore, Phase, SupplyPoint, UtcMillis};

/// One open outage and its supply point, flattened into 40 bytes.
#[derive(Debug, Clone, Copy)]
struct Row {
    device: DeviceId,
    lost_at: UtcMillis,
    received_at: UtcMillis,
    mpan: Option<MpanCore>,
    phase: Phase,
    state: OutageState,
}

impl Row {
    fn new(point: SupplyPoint, outage: OpenOutage) -> Self {
        Self {
            device: point.device,
            lost_at: outage.lost_at,
            received_at: outage.received_at,
            mpan: outage.mpan,
            phase: point.phase,
            state: outage.state,
        }
    }

    fn point(&self) -> SupplyPoint {
        SupplyPoint {
            device: self.device,
            phase: self.phase,
        }
    }

    fn outage(&self) -> OpenOutage {
        OpenOutage {
            lost_at: self.lost_at,
            received_at: self.received_at,
            state: self.state,
            mpan: self.mpan,
        }
    }
}

/// Open outages by supply point; see the module doc.
#[derive(Default)]
pub struct OpenOutages {
    rows: Vec<Row>,
    /// Row numbers, hashed by their row's supply point.
    index: HashTable<u32>,
    hasher: RandomState,
}

impl std::fmt::Debug for OpenOutages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOutages")
            .field("len", &self.rows.len())
            .finish_non_exhaustive()
    }
}

/// A row number; a partition holds fewer than 2^32 open outages (each costs 50 bytes).
fn row_number(row: usize) -> u32 {
    u32::try_from(row).expect("fewer than 2^32 open outages in one partition")
}

impl OpenOutages {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for `additional` more outages at once (a restore knows how many).
    pub fn reserve(&mut self, additional: usize) {
        let Self {
            rows,
            index,
            hasher,
        } = self;
        rows.reserve_exact(additional);
        index.reserve(additional, |&row| {
            hasher.hash_one(rows[row as usize].point())
        });
    }

    /// Open outages.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no outage is open.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Heap bytes held (rows and index, including spare capacity), for the benchmark.
    pub fn allocated_bytes(&self) -> usize {
        self.rows.capacity() * std::mem::size_of::<Row>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
    }

    fn row_of(&self, point: &SupplyPoint) -> Option<usize> {
        let hash = self.hasher.hash_one(point);
        self.index
            .find(hash, |&row| self.rows[row as usize].point() == *point)
            .map(|&row| row as usize)
    }

    /// The open outage of `point`.
    pub fn get(&self, point: &SupplyPoint) -> Option<OpenOutage> {
        self.row_of(point).map(|row| self.rows[row].outage())
    }

    /// Whether `point` has an open outage.
    pub fn contains(&self, point: &SupplyPoint) -> bool {
        self.row_of(point).is_some()
    }

    /// Sets the state of `point`'s open outage; false if it has none.
    pub fn set_state(&mut self, point: &SupplyPoint, state: OutageState) -> bool {
        self.update(point, |outage| outage.state = state).is_some()
    }

    /// Applies `change` to `point`'s open outage in one lookup; `None` if it has none.
    pub fn update<R>(
        &mut self,
        point: &SupplyPoint,
        change: impl FnOnce(&mut OpenOutage) -> R,
    ) -> Option<R> {
        let index = self.row_of(point)?;
        let row = &mut self.rows[index];
        let mut outage = row.outage();
        let result = change(&mut outage);
        *row = Row::new(*point, outage);
        Some(result)
    }

    /// Opens (or replaces) `point`'s outage; returns the one replaced.
    pub fn insert(&mut self, point: SupplyPoint, outage: OpenOutage) -> Option<OpenOutage> {
        let Self {
            rows,
            index,
            hasher,
        } = self;
        let hash = hasher.hash_one(point);
        let found = index.entry(
            hash,
            |&row| rows[row as usize].point() == point,
            |&row| hasher.hash_one(rows[row as usize].point()),
        );
        match found {
            Entry::Occupied(entry) => {
                let row = &mut rows[*entry.get() as usize];
                let replaced = row.outage();
                *row = Row::new(point, outage);
                Some(replaced)
            }
            Entry::Vacant(entry) => {
                entry.insert(row_number(rows.len()));
                rows.push(Row::new(point, outage));
                None
            }
        }
    }

    /// Closes `point`'s outage; returns it.
    pub fn remove(&mut self, point: &SupplyPoint) -> Option<OpenOutage> {
        let Self {
            rows,
            index,
            hasher,
        } = self;
        let hash = hasher.hash_one(point);
        let (row, _) = index
            .find_entry(hash, |&row| rows[row as usize].point() == *point)
            .ok()?
            .remove();
        let row = row as usize;
        let removed = rows.swap_remove(row).outage();
        if let Some(moved) = rows.get(row) {
            // The last row filled the hole: its number changes from the old length to `row`.
            let was = row_number(rows.len());
            if let Some(number) = index.find_mut(hasher.hash_one(moved.point()), |&n| n == was) {
                *number = row_number(row);
            }
        }
        Some(removed)
    }

    /// Every open outage, in no particular order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (SupplyPoint, OpenOutage)> + '_ {
        self.rows.iter().map(|row| (row.point(), row.outage()))
    }
}

#[cfg(test)]
#[path = "open_table_tests.rs"]
mod tests;
