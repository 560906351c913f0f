//! Due-time queues: the relay's timers (debounce timers, SLA deadlines), keyed by a
//! millisecond of time the caller chooses (log time for debounce timers, so a replay fires
//! them at the same places; the wall clock for deadlines).
//!
//! A [`DueQueue`] is a `BTreeMap` from due millisecond to the items due then, kept in a `Vec`.
//! Items come out in `(due, item)` order, every time, whatever order they went in. Timers
//! arrive in bulk at a handful of due times (a substation trip arms 100,000 in one second):
//! an insert is a short B-tree descent to a bucket that usually exists and a push, and expiry
//! takes whole buckets off the front, so both stay fast at a million timers, where a binary
//! heap pays a `log n` sift with a cache miss per level on every pop, and a tokio
//! `DelayQueue` fires by the runtime's clock only and costs about 56 bytes a timer
//! (`benches/timing_wheel.rs` measures the three).

use std::collections::BTreeMap;

use crate::domain::UtcMillis;

/// Items by due time; see the module doc.
#[derive(Debug, Clone)]
pub struct DueQueue<T> {
    buckets: BTreeMap<UtcMillis, Vec<T>>,
    /// Whether the first bucket is sorted in reverse (popped from its end).
    front_sorted: bool,
    len: usize,
}

impl<T> Default for DueQueue<T> {
    fn default() -> Self {
        Self {
            buckets: BTreeMap::new(),
            front_sorted: false,
            len: 0,
        }
    }
}

impl<T: Ord> DueQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `item`, due at `due`.
    pub fn insert(&mut self, due: UtcMillis, item: T) {
        if self
            .buckets
            .first_key_value()
            .is_none_or(|(first, _)| due <= *first)
        {
            self.front_sorted = false;
        }
        self.buckets.entry(due).or_default().push(item);
        self.len += 1;
    }

    /// The earliest due time held.
    pub fn next_due(&self) -> Option<UtcMillis> {
        self.buckets.first_key_value().map(|(due, _)| *due)
    }

    /// Takes the first item due at or before `to`, in `(due, item)` order.
    pub fn pop_due(&mut self, to: UtcMillis) -> Option<(UtcMillis, T)> {
        let mut first = self.buckets.first_entry()?;
        let due = *first.key();
        if due > to {
            return None;
        }
        if !self.front_sorted {
            first.get_mut().sort_unstable_by(|a, b| b.cmp(a));
            self.front_sorted = true;
        }
        let item = first.get_mut().pop()?;
        if first.get().is_empty() {
            first.remove();
            self.front_sorted = false;
        }
        self.len -= 1;
        Some((due, item))
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Ord> FromIterator<(UtcMillis, T)> for DueQueue<T> {
    fn from_iter<I: IntoIterator<Item = (UtcMillis, T)>>(items: I) -> Self {
        let mut queue = Self::new();
        for (due, item) in items {
            queue.insert(due, item);
        }
        queue
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn items_come_out_by_due_time_then_item() {
        let mut queue = DueQueue::new();
        for (due, item) in [(5, 'b'), (3, 'z'), (5, 'a'), (4, 'q'), (3, 'y')] {
            queue.insert(UtcMillis(due), item);
        }
        assert_eq!(queue.len(), 5);
        assert_eq!(queue.next_due(), Some(UtcMillis(3)));
        assert_eq!(queue.pop_due(UtcMillis(2)), None, "nothing due yet");
        let mut out = Vec::new();
        while let Some((due, item)) = queue.pop_due(UtcMillis(5)) {
            out.push((due.0, item));
        }
        assert_eq!(out, [(3, 'y'), (3, 'z'), (4, 'q'), (5, 'a'), (5, 'b')]);
        assert!(queue.is_empty());
    }

    #[test]
    fn an_item_added_to_a_bucket_being_drained_keeps_the_order() {
        let mut queue = DueQueue::new();
        queue.insert(UtcMillis(1), 5);
        queue.insert(UtcMillis(1), 7);
        assert_eq!(queue.pop_due(UtcMillis(1)), Some((UtcMillis(1), 5)));
        queue.insert(UtcMillis(1), 6);
        queue.insert(UtcMillis(0), 9);
        let out: Vec<_> = std::iter::from_fn(|| queue.pop_due(UtcMillis(1))).collect();
        assert_eq!(
            out,
            [(UtcMillis(0), 9), (UtcMillis(1), 6), (UtcMillis(1), 7)]
        );
    }

    proptest! {
        /// The queue pops exactly what a sorted list of the same items gives, however pops
        /// and inserts interleave.
        #[test]
        fn pops_match_a_sorted_model(ops in prop::collection::vec((any::<bool>(), 0i64..20, 0u8..10), 0..200)) {
            let mut queue = DueQueue::new();
            let mut model: Vec<(i64, u8)> = Vec::new();
            for (insert, due, item) in ops {
                if insert {
                    queue.insert(UtcMillis(due), item);
                    model.push((due, item));
                } else {
                    model.sort_unstable();
                    let expected = model.first().copied().filter(|(d, _)| *d <= due);
                    if expected.is_some() {
                        model.remove(0);
                    }
                    prop_assert_eq!(queue.pop_due(UtcMillis(due)).map(|(d, i)| (d.0, i)), expected);
                }
                prop_assert_eq!(queue.len(), model.len());
            }
        }
    }
}
