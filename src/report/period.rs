//! UTC days for the report: `YYYY-MM-DD` read and written, and the period `--from`..=`--to`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::domain::UtcMillis;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// A UTC day: days since 1970-01-01.
pub type Day = i64;

/// The UTC day `at` falls on.
pub fn day_of(at: UtcMillis) -> Day {
    at.0.div_euclid(DAY_MS)
}

/// The start of `day`.
pub fn start_of(day: Day) -> UtcMillis {
    UtcMillis(day.saturating_mul(DAY_MS))
}

/// Reads `YYYY-MM-DD`.
pub fn parse_day(text: &str) -> Result<Day, String> {
    let shaped = text.len() == 10
        && text.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            _ => c.is_ascii_digit(),
        });
    let invalid = || format!("{text:?} is not a date YYYY-MM-DD");
    if !shaped {
        return Err(invalid());
    }
    let at = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).map_err(|_| invalid())?;
    let millis = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?
        .as_millis();
    Ok(day_of(UtcMillis(
        i64::try_from(millis).map_err(|_| invalid())?,
    )))
}

/// `YYYY-MM-DD` of `day`.
pub fn format_day(day: Day) -> String {
    let secs = u64::try_from(day.max(0)).unwrap_or(0) * 86_400;
    let text = humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
    text.get(..10).unwrap_or_default().to_owned()
}

/// The days a report covers, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// The first day.
    pub first: Day,
    /// The last day (included).
    pub last: Day,
}

impl Period {
    /// From `--from` and `--to` (either may be absent): the last 30 days up to and including
    /// `today` by default; a `--from` alone runs to today, a `--to` alone starts 29 days
    /// before it.
    pub fn of(from: Option<&str>, to: Option<&str>, today: Day) -> Result<Self, String> {
        let last = to.map(parse_day).transpose()?.unwrap_or(today);
        let first = from.map(parse_day).transpose()?.unwrap_or(last - 29);
        if first > last {
            return Err(format!(
                "--from {} is after --to {}",
                format_day(first),
                format_day(last)
            ));
        }
        Ok(Self { first, last })
    }

    /// The start of the first day.
    pub fn start(&self) -> UtcMillis {
        start_of(self.first)
    }

    /// The end of the last day (excluded).
    pub fn end(&self) -> UtcMillis {
        start_of(self.last + 1)
    }

    /// Every day, in order.
    pub fn days(&self) -> impl Iterator<Item = Day> {
        self.first..=self.last
    }
}

/// Today (UTC), by the system clock.
pub fn today() -> Day {
    day_of(UtcMillis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_read_and_write_as_yyyy_mm_dd() {
        let day = parse_day("2026-11-03").expect("a date");
        assert_eq!(format_day(day), "2026-11-03");
        assert_eq!(start_of(day), UtcMillis(1_793_664_000_000));
        assert_eq!(day_of(UtcMillis(1_793_664_000_000 + DAY_MS - 1)), day);
        for bad in [
            "2026-13-01",
            "2026-11-3",
            "03/11/2026",
            "2026-11-03T00:00:00Z",
            "",
        ] {
            assert!(parse_day(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_period_defaults_to_the_last_30_days_and_includes_to() {
        let today = parse_day("2026-11-30").expect("a date");
        let period = Period::of(None, None, today).expect("a period");
        assert_eq!(format_day(period.first), "2026-11-01");
        assert_eq!(period.days().count(), 30);
        let period = Period::of(Some("2026-11-02"), Some("2026-11-02"), today).expect("a day");
        assert_eq!(period.end().0 - period.start().0, DAY_MS);
        assert!(Period::of(Some("2026-11-03"), Some("2026-11-02"), today).is_err());
    }
}
