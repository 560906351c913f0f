//! SLA watch: one task per subscriber (on the instance that owns the subscriber) follows its
//! alert log and checks every alert at its deadline; one not acknowledged by then is
//! reported once: a warning, `outage_relay_sla_breaches_total` by kind, subscriber and cause,
//! and the subscriber's breach count kept with its log (`GetDeliveryStatus`).
//!
//! The cause is fixed by the alert: `upstream` when its event reached the relay at or after
//! the deadline, otherwise `relay`. The watch's progress ([`SlaMark`]: the entries seen, and
//! the time up to which their deadlines were checked) is kept with the log, so after a
//! restart (or a hand-over) it goes on where it was: an unacknowledged alert whose deadline
//! passed while no watch ran is reported once, at once (cause `relay` when its event had
//! arrived in time), and one already checked is not reported again.
//!
//! Deadlines wait in a [`DueQueue`] of `(sequence, kind and cause)` packed in a `u64`; an
//! alert already acknowledged when the watch reads it is not queued at all.

use std::sync::Arc;
use std::time::Duration;

use crate::deliver::Delivery;
use crate::domain::{AlertKind, BreachCause, UtcMillis};
use crate::log::{AlertReader, Lease, LogEntry, LogError, SlaMark};
use crate::route::SubscriberId;
use crate::timers::DueQueue;

/// Entries read from the log at a time.
const READ_BATCH: usize = 4096;
/// How often the watch's progress is stored when nothing was breached.
const MARK_EVERY: Duration = Duration::from_secs(1);
/// Wait before trying again after the log failed.
const RETRY: Duration = Duration::from_secs(1);

/// An alert waiting for its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    at: UtcMillis,
    sequence: u64,
    /// Bit 0: PRA; bit 1: upstream cause.
    class: u8,
}

impl Deadline {
    fn of(entry: &LogEntry) -> Self {
        let alert = &entry.alert;
        let class = u8::from(alert.kind == AlertKind::Restoration)
            | (u8::from(alert.breach_cause() == BreachCause::Upstream) << 1);
        Self {
            at: alert.deadline,
            sequence: entry.sequence,
            class,
        }
    }

    /// Queues it as one `u64` (`sequence << 2 | class`, in sequence order): 8 bytes per
    /// unacknowledged alert, a million of them in a storm.
    fn queued(self, deadlines: &mut DueQueue<u64>) {
        deadlines.insert(self.at, self.sequence << 2 | u64::from(self.class));
    }

    /// The deadline [`Deadline::queued`] stored.
    fn unqueued(at: UtcMillis, packed: u64) -> Self {
        Self {
            at,
            sequence: packed >> 2,
            class: (packed & 3) as u8,
        }
    }

    fn kind(self) -> AlertKind {
        if self.class & 1 == 0 {
            AlertKind::Outage
        } else {
            AlertKind::Restoration
        }
    }

    fn cause(self) -> BreachCause {
        if self.class & 2 == 0 {
            BreachCause::Relay
        } else {
            BreachCause::Upstream
        }
    }
}

/// Watches `log` while `lease` lasts; errors of the log are retried.
pub async fn watch(delivery: Arc<Delivery>, log: SubscriberId, lease: Lease) {
    loop {
        let ended = tokio::select! {
            () = lease.ended() => return,
            ended = Watch::start(&delivery, log) => ended,
        };
        let result = match ended {
            Ok(mut watch) => tokio::select! {
                () = lease.ended() => watch.store_mark(&delivery).await,
                result = watch.run(&delivery) => result,
            },
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::warn!(subscriber = delivery.name(log), %err, "SLA watch interrupted; resuming");
        }
        tokio::select! {
            () = lease.ended() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// One run of a subscriber's watch.
struct Watch {
    log: SubscriberId,
    reader: Box<dyn AlertReader>,
    deadlines: DueQueue<u64>,
    /// Where the previous watch had got (entries it checked are not checked again).
    resumed: SlaMark,
    seen: u64,
    /// The cursor as last read, for the backlog gauge.
    acked: u64,
    checked_through: UtcMillis,
    breaches: u64,
    stored: SlaMark,
}

impl Watch {
    async fn start(delivery: &Delivery, log: SubscriberId) -> Result<Self, LogError> {
        let alerts = delivery.alerts();
        let resumed = alerts.sla_mark(log).await?;
        let status = alerts.status(log).await?;
        let from = (status.acked + 1).max(status.first_retained);
        Ok(Self {
            log,
            reader: alerts.reader(log, from).await?,
            deadlines: DueQueue::new(),
            resumed,
            seen: resumed.seen.max(from - 1),
            acked: status.acked,
            checked_through: resumed.checked_through,
            breaches: 0,
            stored: resumed,
        })
    }

    async fn run(&mut self, delivery: &Delivery) -> Result<(), LogError> {
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let wake = tokio::time::sleep_until(far);
        tokio::pin!(wake);
        let mut tick = tokio::time::interval(MARK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let clock = delivery.clock();
        loop {
            let next = self.deadlines.next_due();
            wake.as_mut()
                .reset(next.map_or(far, |at| clock.instant_at(at)));
            tokio::select! {
                entries = self.reader.next(READ_BATCH) => self.track(delivery, entries?).await?,
                () = &mut wake, if next.is_some() => {
                    if self.check(delivery).await? > 0 {
                        self.store_mark(delivery).await?;
                    }
                }
                _ = tick.tick() => self.store_mark(delivery).await?,
            }
        }
    }

    /// New entries: each waits for its deadline, unless it is acknowledged already or a
    /// previous watch checked it.
    async fn track(&mut self, delivery: &Delivery, entries: Vec<LogEntry>) -> Result<(), LogError> {
        if entries
            .last()
            .is_some_and(|last| last.sequence > self.acked)
        {
            self.acked = delivery.alerts().status(self.log).await?.acked;
        }
        for entry in &entries {
            self.seen = self.seen.max(entry.sequence);
            let deadline = Deadline::of(entry);
            let checked =
                entry.sequence <= self.resumed.seen && deadline.at <= self.resumed.checked_through;
            if !checked && entry.sequence > self.acked {
                deadline.queued(&mut self.deadlines);
            }
        }
        delivery.backlog(self.log, self.seen.saturating_sub(self.acked));
        Ok(())
    }

    /// Checks every deadline that has come; returns how many were breached.
    async fn check(&mut self, delivery: &Delivery) -> Result<u64, LogError> {
        let now = delivery.clock().now();
        let acked = delivery.alerts().status(self.log).await?.acked;
        self.acked = acked;
        let mut report = Report::default();
        while let Some((at, packed)) = self.deadlines.pop_due(now) {
            let deadline = Deadline::unqueued(at, packed);
            if deadline.sequence > acked {
                report.add(deadline);
            }
        }
        self.checked_through = self.checked_through.max(now);
        let count = report.count;
        report.publish(delivery, self.log);
        self.breaches += count;
        Ok(count)
    }

    /// Stores the watch's progress with the log, if it moved.
    async fn store_mark(&mut self, delivery: &Delivery) -> Result<(), LogError> {
        // Deadlines still waiting are not checked: the mark must not claim them.
        let through = match self.deadlines.next_due() {
            Some(first) => self.checked_through.min(UtcMillis(first.0 - 1)),
            None => self.checked_through,
        };
        if self.seen == self.stored.seen
            && through <= self.stored.checked_through
            && self.breaches == 0
        {
            return Ok(());
        }
        self.stored = delivery
            .alerts()
            .record_sla(self.log, self.seen, through, self.breaches)
            .await?;
        self.breaches = 0;
        Ok(())
    }
}

/// Breaches found in one sweep, reported as one log line per kind and cause (a storm can
/// breach a million alerts in one second; the counters carry every one).
#[derive(Default)]
struct Report {
    count: u64,
    /// By kind and cause: (first deadline in the sweep, count).
    groups: Vec<(Deadline, u64)>,
}

impl Report {
    fn add(&mut self, deadline: Deadline) {
        self.count += 1;
        match self
            .groups
            .iter_mut()
            .find(|(first, _)| first.class == deadline.class)
        {
            Some((_, count)) => *count += 1,
            None => self.groups.push((deadline, 1)),
        }
    }

    fn publish(self, delivery: &Delivery, log: SubscriberId) {
        for (first, count) in self.groups {
            delivery.breaches(log, first.kind(), first.cause(), count);
            tracing::warn!(
                subscriber = delivery.name(log),
                breaches = count,
                kind = first.kind().as_str(),
                cause = first.cause().as_str(),
                first_sequence = first.sequence,
                first_deadline = %first.at,
                "SLA breach: alerts not acknowledged by their deadline"
            );
        }
    }
}

#[cfg(test)]
#[path = "sla_tests.rs"]
mod tests;
