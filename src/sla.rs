//! SLA watch: every alert written to a log is checked at its deadline; one not acknowledged
//! by then is reported once (a warning and a counter by kind, subscriber and cause).
//!
//! Deadlines live in a `DelayQueue` timing wheel. The cause is fixed when the alert is
//! emitted: `upstream` when its event reached the relay at or after the deadline, otherwise
//! `relay`. An alert already past its deadline when written fires at once.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::deliver::Delivery;
use crate::deliver::outbox::{SlaInbox, Tracked};

/// Runs the watch until `shutdown`.
pub async fn run(delivery: Arc<Delivery>, inbox: Arc<SlaInbox>, shutdown: CancellationToken) {
    let mut wheel: DelayQueue<Tracked> = DelayQueue::new();
    let clock = delivery.clock();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = inbox.wait() => {
                for tracked in inbox.drain() {
                    wheel.insert_at(tracked, clock.instant_at(tracked.deadline));
                }
            }
            Some(expired) = futures::future::poll_fn(|cx| wheel.poll_expired(cx)), if !wheel.is_empty() => {
                check(&delivery, expired.into_inner());
            }
        }
    }
}

fn check(delivery: &Delivery, tracked: Tracked) {
    let acked = match delivery.status(tracked.log) {
        Ok(status) => status.acked,
        Err(err) => {
            tracing::error!(%err, "SLA watch cannot read a log cursor");
            return;
        }
    };
    if acked >= tracked.sequence {
        return;
    }
    delivery.breach(tracked.log, tracked.kind, tracked.cause);
    tracing::warn!(
        subscriber = delivery.log_name(tracked.log),
        alert_id = %tracked.id,
        sequence = tracked.sequence,
        deadline = %tracked.deadline,
        cause = tracked.cause.as_str(),
        "SLA breach: alert not acknowledged by its deadline"
    );
}
