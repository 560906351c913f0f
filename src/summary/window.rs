//! A count of events over the last minute, in one-second buckets: what "lost within a minute"
//! and a loss rate in losses per minute are measured with.

use crate::domain::UtcMillis;

/// Buckets kept: one per second of the minute.
const SECONDS: usize = 60;

/// Events counted by the second they happened in, over the last [`SECONDS`] seconds. An
/// event up to a minute older than the newest one still counts in its own second; older ones
/// are ignored. 248 bytes.
#[derive(Debug, Clone)]
pub struct MinuteCounter {
    /// The newest second counted (seconds since the epoch).
    head: i64,
    buckets: [u32; SECONDS],
}

impl Default for MinuteCounter {
    fn default() -> Self {
        Self {
            head: i64::MIN,
            buckets: [0; SECONDS],
        }
    }
}

fn second_of(at: UtcMillis) -> i64 {
    at.0.div_euclid(1000)
}

fn slot(second: i64) -> usize {
    // rem_euclid of a positive modulus is in 0..SECONDS.
    second.rem_euclid(SECONDS as i64) as usize
}

impl MinuteCounter {
    /// Counts one event at `at`.
    pub fn add(&mut self, at: UtcMillis) {
        let second = second_of(at);
        if self.head == i64::MIN || second >= self.head.saturating_add(SECONDS as i64) {
            self.buckets = [0; SECONDS];
            self.head = second;
        } else if second > self.head {
            for cleared in self.head + 1..=second {
                self.buckets[slot(cleared)] = 0;
            }
            self.head = second;
        } else if second <= self.head - SECONDS as i64 {
            return;
        }
        let bucket = &mut self.buckets[slot(second)];
        *bucket = bucket.saturating_add(1);
    }

    /// Events counted in the minute up to and including `now`'s second.
    pub fn last_minute(&self, now: UtcMillis) -> u64 {
        if self.head == i64::MIN {
            return 0;
        }
        let now = second_of(now);
        (0..SECONDS as i64)
            .map(|back| self.head - back)
            .filter(|second| *second <= now && now - second < SECONDS as i64)
            .map(|second| u64::from(self.buckets[slot(second)]))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: f64) -> UtcMillis {
        UtcMillis((seconds * 1000.0) as i64)
    }

    #[test]
    fn counts_the_last_minute_only() {
        let mut counter = MinuteCounter::default();
        assert_eq!(counter.last_minute(at(0.0)), 0);
        counter.add(at(1_000.2));
        counter.add(at(1_000.9));
        counter.add(at(1_030.0));
        assert_eq!(counter.last_minute(at(1_030.5)), 3);
        assert_eq!(counter.last_minute(at(1_059.9)), 3);
        assert_eq!(
            counter.last_minute(at(1_060.0)),
            1,
            "second 1000 left the minute"
        );
        assert_eq!(counter.last_minute(at(1_090.0)), 0);
    }

    #[test]
    fn a_late_event_counts_in_its_own_second_and_a_stale_one_not_at_all() {
        let mut counter = MinuteCounter::default();
        counter.add(at(2_000.0));
        counter.add(at(1_990.0));
        counter.add(at(1_900.0));
        assert_eq!(counter.last_minute(at(2_000.0)), 2);
        assert_eq!(counter.last_minute(at(2_049.0)), 2);
        assert_eq!(counter.last_minute(at(2_050.0)), 1);
    }

    #[test]
    fn a_long_gap_clears_every_bucket() {
        let mut counter = MinuteCounter::default();
        for second in 0..60 {
            counter.add(at(f64::from(second)));
        }
        assert_eq!(counter.last_minute(at(59.0)), 60);
        counter.add(at(500.0));
        assert_eq!(counter.last_minute(at(500.0)), 1);
    }
}
