//! Push mode with the JetStream backend: one instance at a time calls a push subscriber's
//! `AlertReceiver`, from the shared cursor, and moves that cursor on the receiver's acks.
//!
//! Every instance runs one task per push subscriber. The task that creates the subscriber's
//! lease (`push.<subscriber>` in the leases bucket, which expires `lease_ttl` after its last
//! renewal) pushes; the others retry the claim every `lease_ttl / 4`, so when the pusher dies
//! another instance takes over within about `lease_ttl` and resends everything unacknowledged
//! (the receiver may see an alert twice, always with the same `alert_id` and sequence). A
//! pusher whose renewal fails stops its session at once. Acks move the cursor by
//! compare-and-set, never back, so even two overlapping sessions cannot lose an ack.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::feed::{advance, bounds, cursor, to_proto};
use crate::config::DeliveryConfig;
use crate::deliver::push::{ReceiverSession, SessionError, Target, keep_pushing, open_session};
use crate::domain::{AlertKind, Clock, UtcMillis};
use crate::error::RelayError;
use crate::telemetry::SubscriberMetrics;

/// What this instance knows of its push sessions, for `GetDeliveryStatus`.
#[derive(Debug, Default)]
pub struct PushSessions {
    inner: Mutex<BTreeMap<String, SessionState>>,
}

/// One push subscriber's session, as seen from this instance.
#[derive(Debug, Default, Clone)]
pub struct SessionState {
    /// Whether this instance holds the subscriber's push lease.
    pub pushing_here: bool,
    /// Whether its session to the receiver is open.
    pub connected: bool,
    /// Why the last session ended (empty while one works).
    pub last_error: String,
}

impl PushSessions {
    /// The state of `subscriber`'s session on this instance.
    pub fn state(&self, subscriber: &str) -> SessionState {
        self.inner
            .lock()
            .get(subscriber)
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, subscriber: &str, change: impl FnOnce(&mut SessionState)) {
        change(self.inner.lock().entry(subscriber.to_owned()).or_default());
    }
}

/// One push subscriber's pusher on this instance.
pub struct Pusher {
    cluster: Arc<Cluster>,
    subscriber: String,
    target: Target,
    config: DeliveryConfig,
    clock: Clock,
    sessions: Arc<PushSessions>,
    metrics: SubscriberMetrics,
}

impl Pusher {
    /// A pusher of `subscriber`'s alerts to `target`, reporting in `sessions`.
    pub fn new(
        cluster: Arc<Cluster>,
        subscriber: String,
        target: Target,
        config: DeliveryConfig,
        clock: Clock,
        sessions: Arc<PushSessions>,
    ) -> Self {
        Self {
            metrics: SubscriberMetrics::new(&subscriber),
            cluster,
            subscriber,
            target,
            config,
            clock,
            sessions,
        }
    }

    /// Runs until `shutdown`: claims the subscriber's push lease when it is free and pushes
    /// while holding it; gives the lease back on shutdown so another instance takes over at
    /// once.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let cluster = &self.cluster;
        let subscriber = &self.subscriber;
        let ttl = cluster.settings.lease_ttl;
        let margin = ttl / 3;
        let key = format!("push.{subscriber}");
        let me = Bytes::from(cluster.instance.clone());
        let mut tick = tokio::time::interval(ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(Ok(mut revision)) =
                timeout(margin, cluster.leases.create(&key, me.clone())).await
            else {
                continue;
            };
            tracing::info!(%subscriber, "push lease claimed; this instance pushes");
            self.sessions
                .update(subscriber, |state| state.pushing_here = true);
            let stop = shutdown.child_token();
            let pushing = tokio::spawn({
                let pusher = Arc::clone(&self);
                let stop = stop.clone();
                async move { pusher.push(&stop).await }
            });
            // Renew while the session runs; a failed renewal ends it.
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match timeout(margin, cluster.leases.update(&key, me.clone(), revision)).await {
                    Ok(Ok(renewed)) => revision = renewed,
                    _ => {
                        tracing::warn!(%subscriber, "push lease lost; stopping the push session");
                        break;
                    }
                }
            }
            stop.cancel();
            let _ = pushing.await;
            self.sessions.update(subscriber, |state| {
                state.pushing_here = false;
                state.connected = false;
            });
            if shutdown.is_cancelled() {
                let _ = timeout(
                    margin,
                    cluster.leases.delete_expect_revision(&key, Some(revision)),
                )
                .await;
                return;
            }
        }
    }

    /// Pushes with retries and backoff until `stop`.
    async fn push(&self, stop: &CancellationToken) {
        keep_pushing(
            &self.subscriber,
            &self.target.endpoint,
            &self.config,
            stop,
            |err| {
                self.sessions
                    .update(&self.subscriber, |state| state.last_error = err);
            },
            move || async move {
                let mut connected = false;
                let ended = self.session(stop, &mut connected).await;
                self.sessions
                    .update(&self.subscriber, |state| state.connected = false);
                self.metrics.connected.set(0.0);
                (connected, ended)
            },
        )
        .await;
    }

    /// One session: sends from the shared cursor, at most `push_window` ahead of the acks.
    async fn session(
        &self,
        stop: &CancellationToken,
        connected: &mut bool,
    ) -> Result<(), SessionError> {
        let (cluster, subscriber, config) =
            (&*self.cluster, self.subscriber.as_str(), &self.config);
        let (clock, sessions, metrics) = (self.clock, &self.sessions, &self.metrics);
        let target = &self.target;
        let ReceiverSession {
            alerts: tx,
            mut acks,
        } = open_session(target, config).await?;
        *connected = true;
        metrics.connected.set(1.0);
        sessions.update(subscriber, |state| {
            state.connected = true;
            state.last_error.clear();
        });
        let (mut acked, _) = cursor(&cluster.cursors, subscriber).await?;
        let stored = bounds(cluster, subscriber).await?;
        // Alerts retention already removed cannot be sent; the first retained one comes next.
        let mut sent = acked.max(stored.first - 1);
        let unavailable = |what: &str, err: String| {
            SessionError::Cluster(RelayError::Unavailable(format!(
                "alert stream of {subscriber}: {what}: {err}"
            )))
        };
        let stream = cluster
            .js
            .get_stream(cluster.names.alerts_stream(subscriber))
            .await
            .map_err(|err| unavailable("opening", err.to_string()))?;
        let mut messages = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: sent + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|err| unavailable("reading", err.to_string()))?
            .messages()
            .await
            .map_err(|err| unavailable("reading", err.to_string()))?;
        let mut in_flight: BTreeMap<u64, (AlertKind, UtcMillis)> = BTreeMap::new();
        let window = config.push_window as u64;
        loop {
            let room = window.saturating_sub(sent.saturating_sub(acked));
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                ack = acks.message() => {
                    let ack = ack?.ok_or(SessionError::Closed)?;
                    if ack.sequence > sent {
                        return Err(SessionError::AckBeyondSent { acked: ack.sequence, sent });
                    }
                    if ack.sequence > acked {
                        acked = advance(&cluster.cursors, subscriber, ack.sequence).await?;
                        let rest = in_flight.split_off(&(acked + 1));
                        let now = clock.now();
                        for (kind, due_at) in std::mem::replace(&mut in_flight, rest).into_values() {
                            metrics.delivered(kind, now.seconds_since(due_at));
                        }
                    }
                }
                message = messages.next(), if room > 0 => {
                    let message = message
                        .ok_or_else(|| unavailable("reading", "the consumer ended".into()))?
                        .map_err(|err| unavailable("reading", err.to_string()))?;
                    let alert = to_proto(&message, subscriber)
                        .map_err(|status| unavailable("decoding", status.message().to_owned()))?;
                    sent = alert.sequence;
                    if let Some(kind) = AlertKind::from_proto(alert.kind) {
                        let due_at = alert
                            .due_at
                            .as_ref()
                            .and_then(UtcMillis::from_proto)
                            .unwrap_or(UtcMillis(0));
                        in_flight.insert(alert.sequence, (kind, due_at));
                    }
                    // Capacity equals the window, so this send never waits on the receiver.
                    tx.send(alert).await.map_err(|_| SessionError::Closed)?;
                }
            }
        }
    }
}
