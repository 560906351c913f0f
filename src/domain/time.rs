//! Time: device timestamps as UTC milliseconds, and the relay's one clock.
//!
//! The relay's wall clock is derived from `tokio::time::Instant` (one wall-clock reading taken
//! at start plus monotonic time elapsed since), so a paused tokio clock in tests drives wall
//! time and timers together, and an NTP step never moves a deadline backwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A UTC instant with millisecond resolution (milliseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UtcMillis(pub i64);

impl UtcMillis {
    /// Adds a duration, saturating at the representable maximum.
    pub fn plus(self, duration: Duration) -> Self {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// How long after `earlier` this instant is; zero when it is not later.
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// Seconds elapsed from `earlier` to `self`, negative when `self` is earlier.
    pub fn seconds_since(self, earlier: Self) -> f64 {
        self.0.saturating_sub(earlier.0) as f64 / 1000.0
    }

    /// Converts a protobuf timestamp, rejecting ones outside the representable range.
    pub fn from_proto(ts: &prost_types::Timestamp) -> Option<Self> {
        if !(0..1_000_000_000).contains(&ts.nanos) {
            return None;
        }
        let millis = ts
            .seconds
            .checked_mul(1000)?
            .checked_add(i64::from(ts.nanos / 1_000_000))?;
        Some(Self(millis))
    }

    /// The protobuf form of this instant.
    pub fn to_proto(self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.0.div_euclid(1000),
            nanos: i32::try_from(self.0.rem_euclid(1000) * 1_000_000).unwrap_or(0),
        }
    }

    /// The current system time; used once to anchor [`Clock`] and by client tools.
    pub fn system_now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The last millisecond RFC 3339 can write (the end of year 9999).
const LAST_RFC3339_MILLIS: i64 = 253_402_300_799_999;

impl std::fmt::Display for UtcMillis {
    /// RFC 3339 with milliseconds for years 1970 to 9999; other instants (a device may send
    /// any) as a count of milliseconds, since humantime fails on them and `format!` would
    /// panic.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !(0..=LAST_RFC3339_MILLIS).contains(&self.0) {
            return write!(f, "{} ms since the Unix epoch", self.0);
        }
        let secs = u64::try_from(self.0.div_euclid(1000)).unwrap_or(0);
        let millis = u32::try_from(self.0.rem_euclid(1000)).unwrap_or(0);
        let at = UNIX_EPOCH + Duration::new(secs, millis * 1_000_000);
        write!(f, "{}", humantime::format_rfc3339_millis(at))
    }
}

/// The relay's clock: wall time for deadlines and alert timestamps, and the matching tokio
/// `Instant` for timers. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor_wall: UtcMillis,
    anchor_instant: Instant,
}

impl Clock {
    /// A clock anchored on the system's wall time now.
    pub fn system() -> Self {
        Self::starting_at(UtcMillis::system_now())
    }

    /// A clock whose wall time is `wall` at the current tokio instant (for tests).
    pub fn starting_at(wall: UtcMillis) -> Self {
        Self {
            anchor_wall: wall,
            anchor_instant: Instant::now(),
        }
    }

    /// Wall time now.
    pub fn now(&self) -> UtcMillis {
        self.anchor_wall.plus(self.anchor_instant.elapsed())
    }

    /// The tokio instant at which wall time reaches `at` (now, if `at` is past).
    pub fn instant_at(&self, at: UtcMillis) -> Instant {
        let now = Instant::now();
        now + at.since(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_round_trip_keeps_milliseconds() {
        for millis in [0, 1, 999, 1_764_000_000_123, -1_500] {
            let t = UtcMillis(millis);
            assert_eq!(UtcMillis::from_proto(&t.to_proto()), Some(t));
        }
    }

    #[test]
    fn from_proto_rejects_bad_nanos_and_overflow() {
        let bad_nanos = prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(UtcMillis::from_proto(&bad_nanos), None);
        let huge = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(UtcMillis::from_proto(&huge), None);
    }

    #[test]
    fn display_writes_rfc3339_and_numbers_outside_it() {
        assert_eq!(UtcMillis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            UtcMillis(LAST_RFC3339_MILLIS).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
        for (millis, text) in [
            (-1, "-1 ms since the Unix epoch"),
            (
                LAST_RFC3339_MILLIS + 1,
                "253402300800000 ms since the Unix epoch",
            ),
            (i64::MAX, "9223372036854775807 ms since the Unix epoch"),
            (i64::MIN, "-9223372036854775808 ms since the Unix epoch"),
        ] {
            assert_eq!(UtcMillis(millis).to_string(), text);
        }
    }

    #[test]
    fn since_is_zero_for_earlier_instants() {
        assert_eq!(UtcMillis(5).since(UtcMillis(10)), Duration::ZERO);
        assert_eq!(UtcMillis(10).since(UtcMillis(5)), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn clock_follows_paused_tokio_time() {
        let clock = Clock::starting_at(UtcMillis(1_000));
        tokio::time::advance(Duration::from_secs(180)).await;
        assert_eq!(clock.now(), UtcMillis(181_000));
        let at = clock.instant_at(UtcMillis(241_000));
        assert_eq!(at - Instant::now(), Duration::from_secs(60));
    }
}
