//! Per-publisher event rate: a keyed GCRA limiter (governor) counting events, not calls, so
//! one runaway CSP adapter cannot take the relay's capacity from the others.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::RelayError;
use crate::telemetry;

/// Keys kept before idle ones are dropped.
const KEYS_BEFORE_CLEANUP: usize = 10_000;

/// The limiter; `None` inside when the limit is off.
#[derive(Debug)]
pub struct PublisherRate {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    per_second: u32,
}

impl PublisherRate {
    /// `per_second` events sustained with bursts of `burst`; `per_second = 0` is no limit.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            per_second,
        }
    }

    /// Admits `events` from publisher `key`, or says how long to wait.
    pub fn admit(&self, key: &str, events: usize) -> Result<(), RelayError> {
        let (Some(limiter), Some(n)) = (
            &self.limiter,
            NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)),
        ) else {
            return Ok(());
        };
        if limiter.len() > KEYS_BEFORE_CLEANUP {
            limiter.retain_recent();
        }
        let retry_after = match limiter.check_key_n(&key.to_owned(), n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => not_until.wait_time_from(DefaultClock::default().now()),
            Err(_) => Duration::from_secs(1),
        };
        telemetry::call_refused("rate_limited");
        Err(RelayError::Exhausted {
            message: format!(
                "publisher {key:?} is over its limit of {} events per second; retry in {} ms",
                self.per_second,
                retry_after.as_millis().max(1)
            ),
            retry_after: retry_after.max(Duration::from_millis(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_over_its_burst_waits_and_others_do_not() {
        let rate = PublisherRate::new(1_000, 2_000);
        rate.admit("a", 2_000).expect("the burst passes");
        let Err(RelayError::Exhausted { retry_after, .. }) = rate.admit("a", 1_000) else {
            panic!("over the burst must be refused");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        rate.admit("b", 2_000)
            .expect("another publisher has its own budget");
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let rate = PublisherRate::new(0, 0);
        rate.admit("a", 10_000_000).expect("no limit");
    }

    #[test]
    fn a_batch_larger_than_the_burst_is_refused() {
        let rate = PublisherRate::new(10, 10);
        assert!(rate.admit("a", 11).is_err());
    }
}
