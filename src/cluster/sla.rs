//! SLA watch for the JetStream backend: the instance that stored an alert checks it at its
//! deadline against the subscriber's shared cursor, and reports it once if it is not
//! acknowledged by then (a warning and `outage_relay_sla_breaches_total`, by kind,
//! subscriber and cause), adding it to a count shared by the instances (`breaches.<name>` in
//! the cursors bucket) that `GetDeliveryStatus` shows.
//!
//! The owner of the partition hands every alert it stored (or found already stored, re-emitted
//! after a takeover) to its instance's watch, so an alert is watched by the instance that owns
//! its partition now. Alerts whose owner died before their deadline are watched by no one
//! until the new owner re-emits them (which it does when it replays the events behind them).

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::Cluster;
use super::feed::{cursor, read_number};
use crate::domain::Clock;
use crate::domain::alert::AlertId;
use crate::domain::{AlertKind, BreachCause, UtcMillis};
use crate::error::RelayError;
use crate::route::RoutingTable;
use crate::route::SubscriberId;
use crate::telemetry::SubscriberMetrics;

/// An alert the watch must check at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// The subscriber whose log holds it.
    pub log: SubscriberId,
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

/// Hand-off of stored alerts from the partition tasks to the watch: a plain buffer plus a
/// `Notify`, drained on every wake-up.
#[derive(Debug, Default)]
pub struct SlaInbox {
    items: parking_lot::Mutex<Vec<Tracked>>,
    notify: tokio::sync::Notify,
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

/// Deadlines checked per wake-up at most.
const SWEEP: usize = 4096;

/// Runs the watch until `shutdown`.
pub async fn run(
    cluster: Arc<Cluster>,
    table: Arc<RoutingTable>,
    inbox: Arc<SlaInbox>,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let metrics: HashMap<SubscriberId, (String, SubscriberMetrics)> = table
        .iter()
        .map(|(id, name)| (id, (name.to_owned(), SubscriberMetrics::new(name))))
        .collect();
    let mut wheel: DelayQueue<Tracked> = DelayQueue::new();
    loop {
        for tracked in inbox.drain() {
            wheel.insert_at(tracked, clock.instant_at(tracked.deadline));
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = inbox.notified() => {}
            Some(expired) = futures::future::poll_fn(|cx| wheel.poll_expired(cx)), if !wheel.is_empty() => {
                let mut due = vec![expired.into_inner()];
                while due.len() < SWEEP {
                    let next = futures::future::poll_fn(|cx| wheel.poll_expired(cx)).now_or_never();
                    let Some(Some(expired)) = next else { break };
                    due.push(expired.into_inner());
                }
                check(&cluster, &metrics, due).await;
            }
        }
    }
}

async fn check(
    cluster: &Cluster,
    metrics: &HashMap<SubscriberId, (String, SubscriberMetrics)>,
    due: Vec<Tracked>,
) {
    let mut acked: HashMap<SubscriberId, u64> = HashMap::new();
    let mut breaches: HashMap<SubscriberId, (Tracked, u64)> = HashMap::new();
    for tracked in due {
        let Some((name, handles)) = metrics.get(&tracked.log) else {
            continue;
        };
        let cursor_now = match acked.get(&tracked.log) {
            Some(&value) => value,
            None => {
                let Ok((value, _)) = cursor(&cluster.cursors, name).await else {
                    continue;
                };
                acked.insert(tracked.log, value);
                value
            }
        };
        if cursor_now >= tracked.sequence {
            continue;
        }
        handles.breach(tracked.kind, tracked.cause);
        breaches.entry(tracked.log).or_insert((tracked, 0)).1 += 1;
    }
    for (log, (first, count)) in breaches {
        let name = metrics.get(&log).map_or("?", |(name, _)| name.as_str());
        if let Err(err) = add_breaches(&cluster.cursors, name, count).await {
            tracing::warn!(subscriber = name, %err, "cannot add to the shared SLA breach count");
        }
        tracing::warn!(
            subscriber = name,
            breaches = count,
            first_alert_id = %first.id,
            first_sequence = first.sequence,
            first_deadline = %first.deadline,
            first_cause = first.cause.as_str(),
            "SLA breach: alerts not acknowledged by their deadline"
        );
    }
}

fn breaches_key(subscriber: &str) -> String {
    format!("breaches.{subscriber}")
}

/// SLA breaches counted against `subscriber` by every instance, since its streams were
/// created (a key beside the cursors).
pub async fn breaches(cursors: &kv::Store, subscriber: &str) -> Result<u64, RelayError> {
    Ok(read_breaches(cursors, subscriber).await?.0)
}

async fn read_breaches(
    cursors: &kv::Store,
    subscriber: &str,
) -> Result<(u64, Option<u64>), RelayError> {
    read_number(
        cursors,
        &breaches_key(subscriber),
        &format!("SLA breaches of {subscriber}"),
    )
    .await
}

/// Adds `count` to the shared breach count by compare-and-set (instances add concurrently).
async fn add_breaches(cursors: &kv::Store, subscriber: &str, count: u64) -> Result<(), RelayError> {
    const ATTEMPTS: usize = 16;
    let key = breaches_key(subscriber);
    for _ in 0..ATTEMPTS {
        let (now, revision) = read_breaches(cursors, subscriber).await?;
        let value = Bytes::from((now + count).to_string());
        let written = match revision {
            Some(revision) => cursors.update(&key, value, revision).await.is_ok(),
            None => cursors.create(&key, value).await.is_ok(),
        };
        if written {
            return Ok(());
        }
    }
    Err(RelayError::Unavailable(format!(
        "the SLA breach count of {subscriber} kept changing under {ATTEMPTS} attempts"
    )))
}
