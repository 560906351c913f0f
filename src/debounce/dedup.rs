//! Event-id de-duplication: remembers the keys of recently accepted events for a time window,
//! bounded in count, so a re-sent event is acknowledged as a duplicate and changes nothing.
//!
//! The state machine is already idempotent for repeated events (tombstones and open outages
//! absorb them); this window exists so publishers learn which events were re-sends, and so the
//! common retry case costs one hash lookup instead of a state-machine step.

use std::collections::VecDeque;

use foldhash::HashSet;
use foldhash::HashSetExt as _;
use std::time::Duration;

use crate::domain::UtcMillis;
use crate::domain::event::EventKey;

/// Keys seen within `window`, at most `capacity` of them (oldest forgotten first).
#[derive(Debug)]
pub struct EventIdWindow {
    window: Duration,
    capacity: usize,
    seen: HashSet<u128>,
    order: VecDeque<Seen>,
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
    /// An empty window.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `key` seen at `now`; returns `false` if it was already in the window.
    pub fn insert(&mut self, key: EventKey, now: UtcMillis) -> bool {
        self.forget_before(now);
        if self.capacity == 0 || !self.seen.insert(key.0) {
            return self.capacity == 0;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest.key());
        }
        self.order.push_back(Seen::new(now, key.0));
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

    fn forget_before(&mut self, now: UtcMillis) {
        while let Some(&oldest) = self.order.front() {
            if oldest.at.plus(self.window) > now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&oldest.key());
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

    #[test]
    fn zero_capacity_disables_deduplication() {
        let mut w = EventIdWindow::new(Duration::from_secs(10), 0);
        assert!(w.insert(key(1), UtcMillis(0)));
        assert!(w.insert(key(1), UtcMillis(0)));
        assert!(w.is_empty());
    }
}
