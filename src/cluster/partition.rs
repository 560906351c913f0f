//! One owned partition: its debounce state machine and timers, fed by an ordered consumer on
//! the partition's event subject, emitting alerts into the subscribers' streams.
//!
//! Start: read the partition's last snapshot (open outages, tombstones, the sequence of the
//! last event it covers), re-arm pending timers at their original due times, and replay the
//! events after that sequence, then follow new ones. Each event's arrival is its JetStream
//! timestamp, and before an event of a supply point is applied, that point's own timer fires
//! if it was due by then: a replay reaches the decisions the live run reached. Re-emitted
//! alerts carry the same ids and are dropped by the alert streams.
//!
//! Alerts are published in emission order, pipelined, and every one is acknowledged by
//! JetStream before a snapshot that covers its cause is written. Nothing is published once
//! the lease window has passed: the task ends and the lease driver lets the partition go.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use futures::StreamExt;
use metrics::{Gauge, counter, gauge};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::leases::{LeaseWindow, window_open};
use super::sla::{SlaInbox, Tracked};
use super::snapshot::{self, Restored};
use super::{Cluster, EMITTED_BY};
use crate::debounce::{Arrival, Debouncer, Effects, OutageState, Settings};
use crate::domain::{Alert, Clock, DeviceEvent, SupplyPoint, UtcMillis};
use crate::log::Destination;
use crate::log::codec::{Snapshot, decode_entry, decode_event, encode_entry};
use crate::route::Router;
use crate::telemetry::{self, Metrics};

/// Alert publishes in flight before the task waits for their acks.
const PUBLISH_WINDOW: usize = 1024;
/// First and longest wait before an alert that failed to store is sent again.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything a partition task needs.
#[derive(Clone)]
pub struct PartitionContext {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Routing of alerts to subscribers.
    pub router: Arc<Router>,
    /// Debounce settings.
    pub settings: Settings,
    /// The relay clock.
    pub clock: Clock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Stored alerts to check at their deadlines.
    pub sla: Arc<SlaInbox>,
    /// Moves on each registry reload on this instance: parked alerts are routed again.
    pub reloads: watch::Receiver<u64>,
}

/// A running partition.
struct Partition {
    id: u16,
    context: PartitionContext,
    machine: Debouncer,
    timers: DelayQueue<(SupplyPoint, UtcMillis)>,
    effects: Effects,
    applied: u64,
    in_flight: VecDeque<(Alert, Destination, PublishAckFuture)>,
    /// Supply points with an alert in `in_flight` (emptied with it by `drain`).
    points_in_flight: HashSet<SupplyPoint>,
    window: LeaseWindow,
    lag: Gauge,
}

/// Runs partition `id` until `stop` or the lease window closes; errors are logged and end
/// the task (the lease driver then releases the partition, and it is claimed again).
pub async fn run(id: u16, context: PartitionContext, window: LeaseWindow, stop: CancellationToken) {
    let lag = gauge!(telemetry::PARTITION_LAG, "partition" => id.to_string());
    let mut partition = Partition {
        id,
        machine: Debouncer::new(context.settings),
        context,
        timers: DelayQueue::new(),
        effects: Effects::default(),
        applied: 0,
        in_flight: VecDeque::new(),
        points_in_flight: HashSet::new(),
        window,
        lag,
    };
    match partition.serve(&stop).await {
        Ok(()) => {}
        Err(err) => {
            counter!(telemetry::JETSTREAM_ERRORS, "operation" => "partition").increment(1);
            tracing::warn!(
                partition = id,
                err = format!("{err:#}"),
                "partition task ended"
            );
        }
    }
    partition.lag.set(0.0);
}

impl Partition {
    async fn serve(&mut self, stop: &CancellationToken) -> anyhow::Result<()> {
        self.restore().await?;
        let cluster = Arc::clone(&self.context.cluster);
        let stream = cluster
            .js
            .get_stream(cluster.names.events_stream())
            .await
            .context("opening the events stream")?;
        let first_retained = stream.cached_info().state.first_sequence;
        if self.applied > 0 && first_retained > self.applied + 1 {
            // Events after the snapshot passed events_max_age before anyone applied them:
            // the partition's state may miss some. Never silent.
            counter!(telemetry::JETSTREAM_ERRORS, "operation" => "replay_gap").increment(1);
            tracing::error!(
                partition = self.id,
                snapshot_covers = self.applied,
                first_retained,
                "events after the partition's snapshot have expired from the events stream; \
                 its open outages may be incomplete (raise store.jetstream.events_max_age)"
            );
        }
        let deliver_policy = if self.applied == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: self.applied + 1,
            }
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: cluster.names.event_subject(self.id),
                deliver_policy,
                ..Default::default()
            })
            .await
            .context("creating the partition's consumer")?;
        // Queries are answered once the replay has caught up, so no answer shows a state
        // the partition has not reached; until then callers find no responder.
        let mut replaying = consumer.cached_info().num_pending > 0;
        let mut messages = consumer
            .messages()
            .await
            .context("reading the partition's events")?;
        let client = cluster.js.client();
        let mut queries = None;
        let mut reloads = self.context.reloads.clone();
        reloads.mark_unchanged();
        // Parked by a previous owner under a registry since replaced.
        self.unpark().await?;
        let mut snapshots = tokio::time::interval(cluster.settings.snapshot_interval);
        snapshots.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut written = self.applied;
        loop {
            if !replaying && queries.is_none() {
                queries = Some(
                    client
                        .subscribe(cluster.names.query_subjects(self.id))
                        .await
                        .context("subscribing to the partition's queries")?,
                );
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(expired) = futures::future::poll_fn(|cx| self.timers.poll_expired(cx)) => {
                    let (point, due_at) = expired.into_inner();
                    let now = self.context.clock.now();
                    self.machine.on_timer(point, due_at, now, &mut self.effects);
                    self.flush().await?;
                }
                message = messages.next() => {
                    let message = message
                        .context("the partition's consumer ended")?
                        .map_err(|err| anyhow::anyhow!("reading an event: {err}"))?;
                    let info = message
                        .info()
                        .map_err(|err| anyhow::anyhow!("event metadata: {err}"))?;
                    let sequence = info.stream_sequence;
                    let received = UtcMillis(
                        i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                            .unwrap_or(i64::MAX),
                    );
                    self.lag.set(info.pending as f64);
                    replaying &= info.pending > 0;
                    let event = decode_event(&message.payload)
                        .map_err(|err| anyhow::anyhow!("event {sequence}: {err}"))?;
                    self.apply(&event, received);
                    self.applied = sequence;
                    self.flush().await?;
                }
                Some(query) = next_query(&mut queries) => self.answer(&client, query).await,
                Ok(()) = reloads.changed() => self.unpark().await?,
                _ = snapshots.tick() => {
                    if self.applied != written {
                        self.snapshot().await?;
                        written = self.applied;
                    }
                }
            }
        }
        if window_open(&self.window) {
            self.drain().await?;
            if self.applied != written {
                self.snapshot().await?;
            }
        }
        Ok(())
    }

    /// Routes this partition's parked alerts again with the registry in use now: each one
    /// that now has a subscriber is stored in its stream (its id as the message id, so doing
    /// this twice stores it once), then deleted from the parked stream. Runs in the
    /// partition's own loop, after every alert in flight is stored, so a point's alerts stay
    /// in order.
    async fn unpark(&mut self) -> anyhow::Result<()> {
        self.drain().await?;
        let cluster = Arc::clone(&self.context.cluster);
        let parked = cluster
            .js
            .get_stream(cluster.names.parked_stream())
            .await
            .context("opening the parked stream")?;
        let consumer = parked
            .create_consumer(OrderedConfig {
                filter_subject: cluster.names.parked_subject(self.id),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .context("reading the parked alerts")?;
        let mut left = consumer.cached_info().num_pending;
        if left == 0 {
            return Ok(());
        }
        let mut messages = consumer
            .messages()
            .await
            .context("reading the parked alerts")?;
        let mut unparked = 0;
        while left > 0 {
            let message = messages
                .next()
                .await
                .context("the parked consumer ended")?
                .map_err(|err| anyhow::anyhow!("reading a parked alert: {err}"))?;
            let info = message
                .info()
                .map_err(|err| anyhow::anyhow!("parked alert metadata: {err}"))?;
            left = info.pending;
            let sequence = info.stream_sequence;
            let (alert, _) = decode_entry(&message.payload)
                .map_err(|err| anyhow::anyhow!("parked alert {sequence}: {err}"))?;
            let Ok(route) = self
                .context
                .router
                .route(alert.point.device, alert.event_mpan)
            else {
                continue;
            };
            anyhow::ensure!(
                window_open(&self.window),
                "partition {}: the lease window has passed; stopping",
                self.id
            );
            let destination = Destination::Routed(route);
            let ack = match self.send(&alert, &destination).await {
                Ok(ack) => ack.await.ok(),
                Err(_) => None,
            };
            let ack = match ack {
                Some(ack) => ack,
                None => self.store_again(&alert, &destination).await?,
            };
            self.record(&alert, &destination, &ack);
            parked
                .delete_message(sequence)
                .await
                .map_err(|err| anyhow::anyhow!("deleting parked alert {sequence}: {err}"))?;
            unparked += 1;
        }
        if unparked > 0 {
            tracing::info!(
                partition = self.id,
                unparked,
                "parked alerts routed after a registry reload"
            );
        }
        Ok(())
    }

    /// Answers an Admin query from this partition's open outages (see [`super::query`]),
    /// while this instance may still act as the owner.
    async fn answer(&self, client: &async_nats::Client, query: async_nats::Message) {
        let Some(reply) = query.reply else {
            return;
        };
        if !window_open(&self.window) {
            return;
        }
        let kind = query.subject.rsplit('.').next().unwrap_or_default();
        let Some(answer) = super::query::answer(
            kind,
            &query.payload,
            self.machine.outages(),
            &self.context.router,
            self.context.settings.debounce,
        ) else {
            tracing::debug!(partition = self.id, kind, "unreadable query ignored");
            return;
        };
        if let Err(err) = client.publish(reply, answer.into()).await {
            tracing::debug!(partition = self.id, %err, "cannot answer a query");
        }
    }

    /// Reads the last snapshot back and re-arms its pending timers.
    async fn restore(&mut self) -> anyhow::Result<()> {
        let snapshot = match snapshot::read(&self.context.cluster, self.id)
            .await
            .with_context(|| format!("reading partition {}'s snapshot", self.id))?
        {
            Restored::Snapshot(snapshot) => snapshot,
            Restored::Unusable(why) => {
                // Correct but slow: every retained event of the partition is replayed.
                counter!(telemetry::JETSTREAM_ERRORS, "operation" => "snapshot_read").increment(1);
                tracing::warn!(partition = self.id, %why, "snapshot unusable; replaying the partition from its first retained event");
                Snapshot::default()
            }
        };
        self.applied = snapshot.applied;
        for (point, outage) in snapshot.outages {
            if let Some(due_at) = self.machine.restore(point, outage) {
                self.arm(point, due_at);
            }
        }
        for tombstone in snapshot.tombstones {
            self.machine.restore_tombstone(tombstone);
        }
        tracing::info!(
            partition = self.id,
            applied = self.applied,
            open = self.machine.open_count(),
            "partition restored; replaying events after the snapshot"
        );
        Ok(())
    }

    fn arm(&mut self, point: SupplyPoint, due_at: UtcMillis) {
        self.timers
            .insert_at((point, due_at), self.context.clock.instant_at(due_at));
    }

    /// Applies one event; the point's own timer fires first if it was due by the event's
    /// arrival (so a replay, which reads events faster than time passed, decides the same).
    fn apply(&mut self, event: &DeviceEvent, received: UtcMillis) {
        let now = self.context.clock.now();
        if let Some(outage) = self.machine.outage(&event.point)
            && outage.state == OutageState::Pending
        {
            let due_at = outage.lost_at.plus(self.context.settings.debounce);
            if due_at <= received {
                self.machine
                    .on_timer(event.point, due_at, now, &mut self.effects);
            }
        }
        let outcome = self
            .machine
            .on_event(event, Arrival { received, now }, &mut self.effects);
        self.context.metrics.event(
            matches!(event.kind, crate::domain::EventKind::Restored { .. }),
            outcome,
        );
    }

    /// Arms new timers and publishes new alerts.
    async fn flush(&mut self) -> anyhow::Result<()> {
        let timers: Vec<_> = self.effects.timers.drain(..).collect();
        for (point, due_at) in timers {
            self.arm(point, due_at);
        }
        let alerts: Vec<Alert> = self.effects.alerts.drain(..).collect();
        self.effects.clear();
        for alert in alerts {
            self.publish(alert).await?;
        }
        self.context
            .metrics
            .pending_timers
            .set(self.machine.pending_count() as f64);
        Ok(())
    }

    async fn publish(&mut self, alert: Alert) -> anyhow::Result<()> {
        // A supply point's alerts are stored in emission order: one is published only once the
        // point's earlier alerts are stored. Otherwise a publish that fails (the stream leader
        // just died) followed by one that succeeds (a new leader) stores a PRA before its POA,
        // and the next owner's replay appends the POA after it.
        if self.points_in_flight.contains(&alert.point) {
            self.drain().await?;
        }
        anyhow::ensure!(
            window_open(&self.window),
            "partition {}: the lease window has passed; stopping",
            self.id
        );
        let destination = match self
            .context
            .router
            .route(alert.point.device, alert.event_mpan)
        {
            Ok(route) => Destination::Routed(route),
            Err(reason) => Destination::Parked(reason),
        };
        match self.send(&alert, &destination).await {
            Ok(ack) => {
                self.points_in_flight.insert(alert.point);
                self.in_flight.push_back((alert, destination, ack));
            }
            Err(err) => {
                tracing::debug!(partition = self.id, %err, "alert publish failed; retrying");
                let ack = self.store_again(&alert, &destination).await?;
                self.record(&alert, &destination, &ack);
            }
        }
        if self.in_flight.len() >= PUBLISH_WINDOW {
            self.drain().await?;
        }
        Ok(())
    }

    /// Sends one alert; its id is the message id, so sending it again is harmless.
    async fn send(
        &self,
        alert: &Alert,
        destination: &Destination,
    ) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
        let cluster = &self.context.cluster;
        let subject = match destination {
            Destination::Routed(route) => cluster
                .names
                .alert_subject(self.context.router.table().name(route.subscriber)),
            Destination::Parked(_) => cluster.names.parked_subject(self.id),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            alert.id().to_string().as_str(),
        );
        headers.insert(EMITTED_BY, cluster.instance.as_str());
        cluster
            .js
            .publish_with_headers(
                subject,
                headers,
                Bytes::from(encode_entry(alert, destination)),
            )
            .await
    }

    /// Stores an alert whose publish or ack failed (a stream electing a new leader answers
    /// "no stream" or times out for a few seconds): sends it again, with backoff, until it is
    /// stored or the lease window closes. Order holds: no later alert of the same point is in
    /// flight (see `publish`), and alerts already stored come back as duplicates.
    async fn store_again(
        &self,
        alert: &Alert,
        destination: &Destination,
    ) -> anyhow::Result<PublishAck> {
        let mut delay = RETRY_FIRST;
        loop {
            counter!(telemetry::JETSTREAM_ERRORS, "operation" => "publish").increment(1);
            anyhow::ensure!(
                window_open(&self.window),
                "partition {}: alert {} not stored before the lease window passed",
                self.id,
                alert.id()
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
            if let Ok(ack) = self.send(alert, destination).await
                && let Ok(ack) = ack.await
            {
                return Ok(ack);
            }
        }
    }

    /// Waits for every alert in flight to be stored, sending again any that failed.
    async fn drain(&mut self) -> anyhow::Result<()> {
        while let Some((alert, destination, ack)) = self.in_flight.pop_front() {
            let ack = match ack.await {
                Ok(ack) => ack,
                Err(err) => {
                    tracing::debug!(partition = self.id, %err, "alert not acknowledged; retrying");
                    self.store_again(&alert, &destination).await?
                }
            };
            self.record(&alert, &destination, &ack);
        }
        self.points_in_flight.clear();
        Ok(())
    }

    /// Hands a stored alert to the SLA watch and counts it.
    fn record(&self, alert: &Alert, destination: &Destination, ack: &PublishAck) {
        if let Destination::Routed(route) = destination {
            self.context.sla.push([Tracked {
                log: route.subscriber,
                sequence: ack.sequence,
                kind: alert.kind,
                deadline: alert.deadline,
                cause: alert.breach_cause(),
                id: alert.id(),
            }]);
        }
        if ack.duplicate {
            counter!(telemetry::ALERTS_DEDUPLICATED, "kind" => alert.kind.as_str()).increment(1);
        } else {
            let now = self.context.clock.now();
            let could_emit_at = alert.due_at.max(alert.received_at);
            self.context
                .metrics
                .alert_emitted(alert.kind, now.seconds_since(could_emit_at));
        }
    }

    /// Writes the partition's state as of `applied`, once every alert it caused is stored.
    async fn snapshot(&mut self) -> anyhow::Result<()> {
        self.drain().await?;
        anyhow::ensure!(
            window_open(&self.window),
            "partition {}: the lease window has passed; not writing a snapshot",
            self.id
        );
        self.machine.expire_tombstones(self.context.clock.now());
        let snapshot = Snapshot {
            applied: self.applied,
            outages: self
                .machine
                .outages()
                .map(|(point, outage)| (*point, *outage))
                .collect(),
            tombstones: self.machine.tombstones().collect(),
        };
        let window = self.window.clone();
        let stored = snapshot::write(&self.context.cluster, self.id, &snapshot, || {
            window_open(&window)
        })
        .await;
        if let Err(err) = stored {
            // Not fatal: the next owner replays from the previous snapshot instead.
            counter!(telemetry::JETSTREAM_ERRORS, "operation" => "snapshot").increment(1);
            tracing::warn!(
                partition = self.id,
                err = format!("{err:#}"),
                "snapshot not stored"
            );
        }
        Ok(())
    }
}

/// The next query, or never while the partition does not answer yet.
async fn next_query(queries: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match queries {
        Some(queries) => queries.next().await,
        None => std::future::pending().await,
    }
}
