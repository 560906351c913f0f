//! The window a replay reports on, and what the retained log can say about it: pure.
//!
//! A replay rebuilds each partition's state from the first record its log still holds, so
//! that an outage that began before the window is known in it, and applies every retained
//! record, so that an event reported late (after the window) still gives the alert due in
//! the window it gives live. It reports the alerts *due* in `[from, to)`. Its clock stops at
//! `to`, or now if that is earlier: timers due later fire in neither run.

use std::time::Duration;

use crate::domain::UtcMillis;

/// `[from, to)`, in relay time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First instant of the window.
    pub from: UtcMillis,
    /// First instant after it.
    pub to: UtcMillis,
}

impl Window {
    /// The window `--from`..`--to`, both RFC 3339 in UTC (`2026-12-03T10:00:00Z`).
    pub fn parse(from: &str, to: &str) -> Result<Self, String> {
        let (from, to) = (time("--from", from)?, time("--to", to)?);
        if from >= to {
            return Err(format!("--from ({from}) must be before --to ({to})"));
        }
        Ok(Self { from, to })
    }

    /// Whether an alert due at `due` is reported.
    pub fn contains(&self, due: UtcMillis) -> bool {
        due >= self.from && due < self.to
    }

    /// Where the replay's clock stops: `to`, or `now` if that is earlier.
    pub fn clock_end(&self, now: UtcMillis) -> UtcMillis {
        self.to.min(now)
    }

    /// A warning when a partition's retained log, which had older records deleted, starts
    /// (its first record arriving at `first_arrival`) after `from` less the `debounce`: an
    /// outage that began before then is unknown to the replay, which may then differ from
    /// what the relay did early in the window.
    pub fn warning(
        &self,
        partition: u16,
        first_arrival: UtcMillis,
        debounce: Duration,
    ) -> Option<String> {
        let needed = UtcMillis(self.from.0.saturating_sub(millis(debounce)));
        (first_arrival > needed).then(|| {
            format!(
                "partition {partition}: its retained events start at {first_arrival}, after \
                 --from less the debounce ({needed}); outages that began earlier are unknown \
                 to the replay (store.event_retention bounds how far back it can go)"
            )
        })
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// An RFC 3339 UTC time.
fn time(flag: &str, text: &str) -> Result<UtcMillis, String> {
    let at = humantime::parse_rfc3339(text).map_err(|err| {
        format!("{flag} {text:?} is not an RFC 3339 UTC time like 2026-12-03T10:00:00Z: {err}")
    })?;
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{flag} {text:?} is before 1970"))?;
    Ok(UtcMillis(millis(since)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_796_292_000_000; // 2026-12-03T10:00:00Z

    #[test]
    fn times_are_rfc3339_utc_and_the_window_is_half_open() {
        let window =
            Window::parse("2026-12-03T10:00:00Z", "2026-12-03T11:00:00.5Z").expect("valid");
        assert_eq!(window.from, UtcMillis(T));
        assert_eq!(window.to, UtcMillis(T + 3_600_500));
        assert!(window.contains(UtcMillis(T)));
        assert!(!window.contains(UtcMillis(T - 1)));
        assert!(!window.contains(window.to));
    }

    #[test]
    fn a_bad_or_empty_window_is_refused_naming_the_flag() {
        let err = Window::parse("2026-12-03 10:00", "2026-12-03T11:00:00Z").expect_err("bad");
        assert!(err.contains("--from"), "{err}");
        let err = Window::parse("2026-12-03T11:00:00Z", "2026-12-03T11:00:00Z").expect_err("empty");
        assert!(err.contains("before --to"), "{err}");
    }

    #[test]
    fn the_clock_stops_at_to_or_now() {
        let window = Window {
            from: UtcMillis(T),
            to: UtcMillis(T + 10),
        };
        assert_eq!(window.clock_end(UtcMillis(T + 5)), UtcMillis(T + 5));
        assert_eq!(window.clock_end(UtcMillis(T + 50)), UtcMillis(T + 10));
    }

    #[test]
    fn a_log_starting_within_a_debounce_of_the_window_warns() {
        let window = Window {
            from: UtcMillis(T),
            to: UtcMillis(T + 3_600_000),
        };
        let debounce = Duration::from_secs(180);
        assert_eq!(window.warning(0, UtcMillis(T - 180_000), debounce), None);
        let warning = window.warning(3, UtcMillis(T - 179_999), debounce);
        assert!(warning.is_some_and(|w| w.starts_with("partition 3:")));
    }
}
