//! SLA watch: every alert written to a log is checked at its deadline; one not acknowledged
//! by then is reported once (a warning and a counter by kind, subscriber and cause).
//!
//! Deadlines live in a `DelayQueue` timing wheel. The cause is fixed when the alert is
//! emitted: `upstream` when its event reached the relay at or after the deadline, otherwise
//! `relay`. An alert already past its deadline when written fires at once. After a restart,
//! the unacknowledged alerts whose deadline is still ahead are watched again; one whose
//! deadline passed while the relay was down is not reported a second time.

use std::sync::Arc;

use futures::FutureExt;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::deliver::Delivery;
use crate::domain::{AlertKind, BreachCause, UtcMillis, alert::AlertId};
use crate::store::{LogId, StoreError};

/// An alert the SLA watch must check at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// The log holding it.
    pub log: LogId,
    /// Its sequence there.
    pub sequence: u64,
    /// POA or PRA.
    pub kind: AlertKind,
    /// When it must be acknowledged by.
    pub deadline: UtcMillis,
    /// Who is to blame if it is not.
    pub cause: BreachCause,
    /// Its alert ID, for the breach log line.
    pub id: AlertId,
}

/// Hand-off of newly written alerts to the SLA watch.
///
/// A plain buffer plus a `Notify` (not a bounded channel) because the writer is the commit
/// thread, which must not block on the watch; the watch drains it on every wake-up, so it
/// holds only what was written since.
#[derive(Debug, Default)]
pub struct SlaInbox {
    items: Mutex<Vec<Tracked>>,
    notify: Notify,
}

impl SlaInbox {
    /// Resolves when something was pushed since the last wake-up.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Adds alerts to watch.
    pub fn push(&self, items: impl IntoIterator<Item = Tracked>) {
        let mut buffer = self.items.lock();
        let before = buffer.len();
        buffer.extend(items);
        if buffer.len() > before {
            self.notify.notify_one();
        }
    }

    /// Takes everything pushed since the last call.
    pub fn drain(&self) -> Vec<Tracked> {
        std::mem::take(&mut *self.items.lock())
    }
}

/// Queues every unacknowledged alert whose deadline is still ahead (after a restart).
pub fn watch_backlog(delivery: &Delivery, inbox: &SlaInbox) -> Result<usize, StoreError> {
    let now = delivery.clock().now();
    let mut count = 0;
    for log in delivery.log_ids().collect::<Vec<_>>() {
        let status = delivery.status(log);
        let mut next = status.acked + 1;
        while next <= status.head {
            let chunk = delivery.store().read(log, next, 4096)?;
            let Some(last) = chunk.last() else { break };
            next = last.sequence + 1;
            let live = chunk.iter().filter(|e| e.alert.deadline > now);
            let tracked: Vec<Tracked> = live
                .map(|e| Tracked {
                    log,
                    sequence: e.sequence,
                    kind: e.alert.kind,
                    deadline: e.alert.deadline,
                    cause: e.alert.breach_cause(),
                    id: e.alert.id(),
                })
                .collect();
            count += tracked.len();
            inbox.push(tracked);
        }
    }
    Ok(count)
}

/// Deadlines checked per wake-up before new alerts get a turn.
const SWEEP: usize = 4096;

/// Runs the watch until `shutdown`.
pub async fn run(delivery: Arc<Delivery>, inbox: Arc<SlaInbox>, shutdown: CancellationToken) {
    let mut wheel: DelayQueue<Tracked> = DelayQueue::new();
    let clock = delivery.clock();
    loop {
        for tracked in inbox.drain() {
            wheel.insert_at(tracked, clock.instant_at(tracked.deadline));
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = inbox.notify.notified() => {}
            Some(expired) = futures::future::poll_fn(|cx| wheel.poll_expired(cx)), if !wheel.is_empty() => {
                let mut sweep = Sweep::default();
                sweep.check(&delivery, expired.into_inner());
                for _ in 1..SWEEP {
                    let next = futures::future::poll_fn(|cx| wheel.poll_expired(cx)).now_or_never();
                    let Some(Some(expired)) = next else { break };
                    sweep.check(&delivery, expired.into_inner());
                }
                sweep.report(&delivery);
            }
        }
    }
}

/// Breaches found in one sweep, reported as one log line per log (a storm can breach a
/// million alerts in one second; the counters carry every one).
#[derive(Default)]
struct Sweep {
    breaches: Vec<(LogId, Tracked, Tracked, u64)>,
}

impl Sweep {
    fn check(&mut self, delivery: &Delivery, tracked: Tracked) {
        if delivery.status(tracked.log).acked >= tracked.sequence {
            return;
        }
        delivery.breach(tracked.log, tracked.kind, tracked.cause);
        match self
            .breaches
            .iter_mut()
            .find(|(log, ..)| *log == tracked.log)
        {
            Some((_, _, last, count)) => {
                *last = tracked;
                *count += 1;
            }
            None => self.breaches.push((tracked.log, tracked, tracked, 1)),
        }
    }

    fn report(self, delivery: &Delivery) {
        for (log, first, last, count) in self.breaches {
            tracing::warn!(
                subscriber = delivery.log_name(log),
                breaches = count,
                first_alert_id = %first.id,
                first_sequence = first.sequence,
                first_deadline = %first.deadline,
                first_cause = first.cause.as_str(),
                last_alert_id = %last.id,
                "SLA breach: alerts not acknowledged by their deadline"
            );
        }
    }
}

#[cfg(test)]
#[path = "sla_tests.rs"]
mod tests;
