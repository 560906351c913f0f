//! Event-id de-duplication: remembers the keys of recently accepted events for a time window,
//! bounded in count, so a re-sent event is acknowledged as a duplicate and changes nothing.
//!
//! The state machine is already idempotent for repeated events (tombstones and open outages
//! absorb them); this window exists so publishers learn which events were re-sends, and so the
//! common retry case costs one hash lookup instead of a state-machine step.
//!
//! Keys are kept once, in arrival order, in a queue of 24-byte entries; a
//! [`hashbrown::HashTable`] holds each entry's 4-byte sequence number, hashed by its key, and
//! a lookup compares the key in the queue. A `HashSet<u128>` beside the queue would hold every
//! key twice: at a million keys per partition that is 17 MiB of set against 5 MiB of index.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::Duration;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use crate::domain::UtcMillis;
use crate::domain::event::EventKey;

/// Keys seen within `window`, at most `capacity` of them (oldest forgotten first).
pub struct EventIdWindow {
    window: Duration,
    capacity: usize,
    /// Keys in the order they were seen.
    order: VecDeque<Seen>,
    /// The sequence number of `order[0]`; `order[i]` has `front + i` (wrapping).
    front: u32,
    /// Sequence numbers, hashed by their entry's key.
    index: HashTable<u32>,
    hasher: RandomState,
}

impl std::fmt::Debug for EventIdWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventIdWindow")
            .field("window", &self.window)
            .field("capacity", &self.capacity)
            .field("len", &self.order.len())
            .finish_non_exhaustive()
    }
}

/// When a key was seen, in 24 bytes (a `u128` field would align the pair to 32).
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: UtcMillis,
    key: [u64; 2],
}

impl Seen {
    fn new(at: UtcMillis, key: u128) -> Self {
        Self {
            at,
            key: [(key >> 64) as u64, key as u64],
        }
    }

    fn key(self) -> u128 {
        u128::from(self.key[0]) << 64 | u128::from(self.key[1])
    }
}

impl EventIdWindow {
    /// An empty window (a capacity beyond 2^32 - 1 keys is taken as that).
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.min(u32::MAX as usize),
            order: VecDeque::new(),
            front: 0,
            index: HashTable::new(),
            hasher: RandomState::default(),
        }
    }

    /// Makes room for `additional` more keys at once (a restore knows how many).
    pub fn reserve(&mut self, additional: usize) {
        let additional = additional.min(self.capacity.saturating_sub(self.order.len()));
        let Self {
            order,
            front,
            index,
            hasher,
            ..
        } = self;
        order.reserve_exact(additional);
        index.reserve(additional, |&sequence| {
            hasher.hash_one(order[sequence.wrapping_sub(*front) as usize].key())
        });
    }

    /// Records `key` seen at `now`; returns `false` if it was already in the window.
    pub fn insert(&mut self, key: EventKey, now: UtcMillis) -> bool {
        self.forget_before(now);
        if self.capacity == 0 {
            return true;
        }
        let hash = self.hasher.hash_one(key.0);
        let (order, front) = (&self.order, self.front);
        if self
            .index
            .find(hash, |&sequence| {
                order[sequence.wrapping_sub(front) as usize].key() == key.0
            })
            .is_some()
        {
            return false;
        }
        if self.order.len() == self.capacity {
            self.forget_oldest();
        }
        let sequence = self.front.wrapping_add(self.order.len() as u32);
        self.order.push_back(Seen::new(now, key.0));
        let Self {
            order,
            front,
            index,
            hasher,
            ..
        } = self;
        index.insert_unique(hash, sequence, |&sequence| {
            hasher.hash_one(order[sequence.wrapping_sub(*front) as usize].key())
        });
        true
    }

    /// Re-remembers a key read back from the store; call in `seen_at` order.
    pub fn restore(&mut self, key: EventKey, seen_at: UtcMillis) {
        self.insert(key, seen_at);
    }

    /// Keys remembered, with when each was seen, oldest first (what a checkpoint keeps).
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (UtcMillis, EventKey)> + '_ {
        self.order
            .iter()
            .map(|seen| (seen.at, EventKey(seen.key())))
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Heap bytes held (queue and index, including spare capacity), for the benchmark.
    pub fn allocated_bytes(&self) -> usize {
        self.order.capacity() * std::mem::size_of::<Seen>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
    }

    fn forget_before(&mut self, now: UtcMillis) {
        while let Some(oldest) = self.order.front() {
            if oldest.at.plus(self.window) > now {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        let Some(oldest) = self.order.pop_front() else {
            return;
        };
        let sequence = self.front;
        self.front = self.front.wrapping_add(1);
        if let Ok(entry) = self
            .index
            .find_entry(self.hasher.hash_one(oldest.key()), |&s| s == sequence)
        {
            entry.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u128) -> EventKey {
        EventKey(n)
    }

    #[test]
    fn a_key_is_new_once_within_the_window() {
        let mut w = EventIdWindow::new(Duration::from_secs(10), 100);
        assert!(w.insert(key(1), UtcMillis(0)));
        assert!(!w.insert(key(1), UtcMillis(9_999)));
        assert!(
            w.insert(key(1), UtcMillis(10_000)),
            "forgotten after the window"
        );
    }

    #[test]
    fn capacity_forgets_the_oldest_first() {
        let mut w = EventIdWindow::new(Duration::from_secs(10), 2);
        assert!(w.insert(key(1), UtcMillis(0)));
        assert!(w.insert(key(2), UtcMillis(0)));
        assert!(w.insert(key(3), UtcMillis(0)));
        assert_eq!(w.len(), 2);
        assert!(!w.insert(key(3), UtcMillis(1)));
        assert!(w.insert(key(1), UtcMillis(1)));
    }

    proptest::proptest! {
        /// Against a model that scans a queue: same answers, same keys kept, in order.
        #[test]
        fn it_answers_as_a_scanned_queue_does(
            capacity in 0usize..12,
            steps in proptest::collection::vec((0u128..24, 0i64..4_000), 0..300),
        ) {
            let window = Duration::from_secs(10);
            let mut w = EventIdWindow::new(window, capacity);
            let mut model: VecDeque<(UtcMillis, u128)> = VecDeque::new();
            let mut now = UtcMillis(0);
            for (k, step) in steps {
                now = UtcMillis(now.0 + step);
                model.retain(|(at, _)| at.plus(window) > now);
                let fresh = capacity == 0 || !model.iter().any(|(_, seen)| *seen == k);
                if fresh && capacity > 0 {
                    if model.len() == capacity {
                        model.pop_front();
                    }
                    model.push_back((now, k));
                }
                proptest::prop_assert_eq!(w.insert(key(k), now), fresh);
                let kept: Vec<(UtcMillis, u128)> = w.entries().map(|(at, k)| (at, k.0)).collect();
                proptest::prop_assert_eq!(kept, Vec::from(model.clone()));
            }
        }
    }

    #[test]
    fn zero_capacity_disables_deduplication() {
        let mut w = EventIdWindow::new(Duration::from_secs(10), 0);
        assert!(w.insert(key(1), UtcMillis(0)));
        assert!(w.insert(key(1), UtcMillis(0)));
        assert!(w.is_empty());
    }
}
