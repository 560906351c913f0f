//! `AlertFeed` over JetStream: any instance serves any subscriber's stream from any sequence,
//! and acks are shared through a bucket, so a DNO that reconnects to another instance goes
//! on where it left off.
//!
//! A subscriber's sequence is its alert stream's sequence (contiguous: re-emissions are
//! dropped before they get one). `Subscribe` reads with an ordered consumer from the
//! requested sequence (0: the one after the cursor); `Ack` moves the cursor forward by
//! compare-and-set, never back. A sequence retention already removed is `OUT_OF_RANGE`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{Cluster, EMITTED_BY};
use crate::deliver::convert::alert_to_proto;
use crate::deliver::feed::{refuse_push_subscriber, start_sequence};
use crate::domain::{AlertKind, Clock, UtcMillis};
use crate::error::RelayError;
use crate::log::LogEntry;
use crate::log::codec::decode_entry;
use crate::proto::{self, alert_feed_server::AlertFeed};
use crate::route::RoutingTable;
use crate::runtime::Tasks;
use crate::security::Caller;
use crate::security::limits::{StreamLimiter, StreamPermit};
use crate::telemetry::SubscriberMetrics;

/// Alerts sent and not yet acknowledged that are remembered per subscriber, for the
/// delivery-latency histogram (older ones are forgotten; only the metric loses them).
const SENT_REMEMBERED: usize = 100_000;

/// Alerts sent to a subscriber and not yet acknowledged: sequence → (kind, due time).
type SentAlerts = BTreeMap<u64, (AlertKind, UtcMillis)>;

/// One subscriber's stream position: first retained and last stored sequence.
#[derive(Debug, Clone, Copy)]
pub struct StreamBounds {
    /// Oldest sequence still stored (1 when nothing was removed).
    pub first: u64,
    /// Last sequence stored (0 when empty).
    pub last: u64,
}

/// Reads a subscriber's stream bounds.
pub async fn bounds(cluster: &Cluster, subscriber: &str) -> Result<StreamBounds, RelayError> {
    let mut stream = cluster
        .js
        .get_stream(cluster.names.alerts_stream(subscriber))
        .await
        .map_err(|err| RelayError::Unavailable(format!("alert stream of {subscriber}: {err}")))?;
    let info = stream
        .info()
        .await
        .map_err(|err| RelayError::Unavailable(format!("alert stream of {subscriber}: {err}")))?;
    Ok(StreamBounds {
        first: info.state.first_sequence.max(1),
        last: info.state.last_sequence,
    })
}

/// A subscriber's acknowledged sequence and the entry's revision (none: nothing acked).
pub async fn cursor(
    cursors: &kv::Store,
    subscriber: &str,
) -> Result<(u64, Option<u64>), RelayError> {
    read_number(cursors, subscriber, &format!("cursor of {subscriber}")).await
}

/// A number kept as decimal text under `key`, and the entry's revision (0 and none when the
/// key was never written or was deleted); `what` names it in errors.
pub async fn read_number(
    store: &kv::Store,
    key: &str,
    what: &str,
) -> Result<(u64, Option<u64>), RelayError> {
    let entry = store
        .entry(key)
        .await
        .map_err(|err| RelayError::Unavailable(format!("{what}: {err}")))?;
    Ok(match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let number = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
            (number, Some(entry.revision))
        }
        _ => (0, None),
    })
}

/// Moves `subscriber`'s cursor to `sequence` unless it is already there or beyond (by
/// compare-and-set, so concurrent acks through several instances never move it back);
/// returns the cursor after the call.
pub async fn advance(
    cursors: &kv::Store,
    subscriber: &str,
    sequence: u64,
) -> Result<u64, RelayError> {
    loop {
        let (acked, revision) = cursor(cursors, subscriber).await?;
        if sequence <= acked {
            return Ok(acked);
        }
        let value = Bytes::from(sequence.to_string());
        let written = match revision {
            Some(revision) => cursors
                .update(subscriber, value, revision)
                .await
                .map(|_| ())
                .map_err(|err| err.kind() == kv::UpdateErrorKind::WrongLastRevision),
            None => cursors
                .create(subscriber, value)
                .await
                .map(|_| ())
                .map_err(|err| err.kind() == kv::CreateErrorKind::AlreadyExists),
        };
        match written {
            Ok(()) => return Ok(sequence),
            // Another instance moved it meanwhile: read again.
            Err(true) => continue,
            Err(false) => {
                return Err(RelayError::Unavailable(format!(
                    "cannot store the cursor of {subscriber}"
                )));
            }
        }
    }
}

/// The service.
#[derive(Clone)]
pub struct ClusterFeed {
    cluster: Arc<Cluster>,
    table: Arc<RoutingTable>,
    clock: Clock,
    buffer: usize,
    shutdown: CancellationToken,
    tasks: Tasks,
    streams: Arc<StreamLimiter>,
    sent: Arc<Mutex<BTreeMap<String, SentAlerts>>>,
    metrics: Arc<BTreeMap<String, SubscriberMetrics>>,
}

impl ClusterFeed {
    /// A feed over the cluster's alert streams.
    pub fn new(
        cluster: Arc<Cluster>,
        table: Arc<RoutingTable>,
        clock: Clock,
        buffer: usize,
        shutdown: CancellationToken,
        tasks: Tasks,
        streams: Arc<StreamLimiter>,
    ) -> Self {
        let metrics = table
            .iter()
            .map(|(_, name)| (name.to_owned(), SubscriberMetrics::new(name)))
            .collect();
        Self {
            cluster,
            table,
            clock,
            buffer,
            shutdown,
            tasks,
            streams,
            sent: Arc::default(),
            metrics: Arc::new(metrics),
        }
    }

    fn known(&self, subscriber: &str) -> Result<(), RelayError> {
        self.table
            .id_of(subscriber)
            .map(|_| ())
            .ok_or_else(|| RelayError::NotFound(format!("unknown subscriber {subscriber:?}")))
    }

    fn record_delivered(&self, subscriber: &str, acked: u64) {
        let now = self.clock.now();
        let delivered = {
            let mut sent = self.sent.lock();
            let Some(log) = sent.get_mut(subscriber) else {
                return;
            };
            let rest = log.split_off(&(acked + 1));
            std::mem::replace(log, rest)
        };
        if let Some(metrics) = self.metrics.get(subscriber) {
            for (kind, due_at) in delivered.into_values() {
                metrics.delivered(kind, now.seconds_since(due_at));
            }
        }
    }
}

#[tonic::async_trait]
impl AlertFeed for ClusterFeed {
    type SubscribeStream = ReceiverStream<Result<proto::Alert, Status>>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Caller::of(&request)?.may_read(&request.get_ref().subscriber)?;
        let permit = self.streams.acquire(request.remote_addr())?;
        let request = request.into_inner();
        let subscriber = request.subscriber;
        self.known(&subscriber)?;
        refuse_push_subscriber(&self.table, &subscriber)?;
        let bounds = bounds(&self.cluster, &subscriber).await?;
        let (acked, _) = cursor(&self.cluster.cursors, &subscriber).await?;
        let from = start_sequence(request.from_sequence, acked, bounds.first, bounds.last)
            .map_err(RelayError::from)?;
        let (tx, rx) = mpsc::channel(self.buffer);
        tracing::info!(%subscriber, from, "subscriber connected");
        let task = stream_alerts(self.clone(), subscriber, from, tx, permit);
        self.tasks.spawn("feed-stream", task);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        Caller::of(&request)?.may_read(&request.get_ref().subscriber)?;
        let request = request.into_inner();
        self.known(&request.subscriber)?;
        let bounds = bounds(&self.cluster, &request.subscriber).await?;
        if request.sequence > bounds.last {
            return Err(RelayError::InvalidArgument(format!(
                "cannot ack sequence {}: the last alert sent is {}",
                request.sequence, bounds.last
            ))
            .into());
        }
        let acked = advance(&self.cluster.cursors, &request.subscriber, request.sequence).await?;
        self.record_delivered(&request.subscriber, acked);
        Ok(Response::new(proto::AckResponse {
            acked_sequence: acked,
            backlog: bounds.last.saturating_sub(acked),
        }))
    }
}

async fn stream_alerts(
    feed: ClusterFeed,
    subscriber: String,
    from: u64,
    tx: mpsc::Sender<Result<proto::Alert, Status>>,
    _permit: Option<StreamPermit>,
) {
    let fail = |err: String| Status::unavailable(format!("alert stream of {subscriber}: {err}"));
    let stream = match feed
        .cluster
        .js
        .get_stream(feed.cluster.names.alerts_stream(&subscriber))
        .await
    {
        Ok(stream) => stream,
        Err(err) => {
            let _ = tx.send(Err(fail(err.to_string()))).await;
            return;
        }
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await;
    let mut messages = match consumer {
        Ok(consumer) => match consumer.messages().await {
            Ok(messages) => messages,
            Err(err) => {
                let _ = tx.send(Err(fail(err.to_string()))).await;
                return;
            }
        },
        Err(err) => {
            let _ = tx.send(Err(fail(err.to_string()))).await;
            return;
        }
    };
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            () = tx.closed() => break,
            () = feed.shutdown.cancelled() => return,
        };
        let alert = match message {
            Some(Ok(message)) => to_proto(&message, &subscriber),
            Some(Err(err)) => Err(fail(err.to_string())),
            None => Err(fail("the consumer ended".into())),
        };
        let failed = alert.is_err();
        if let Ok(alert) = &alert
            && let Some(kind) = AlertKind::from_proto(alert.kind)
        {
            let due_at = alert
                .due_at
                .as_ref()
                .and_then(UtcMillis::from_proto)
                .unwrap_or(UtcMillis(0));
            let mut sent = feed.sent.lock();
            let log = sent.entry(subscriber.clone()).or_default();
            log.insert(alert.sequence, (kind, due_at));
            if log.len() > SENT_REMEMBERED {
                log.pop_first();
            }
        }
        if tx.send(alert).await.is_err() || failed {
            break;
        }
    }
    tracing::info!(%subscriber, "subscriber disconnected");
}

pub(super) fn to_proto(
    message: &async_nats::jetstream::Message,
    subscriber: &str,
) -> Result<proto::Alert, Status> {
    let info = message
        .info()
        .map_err(|err| Status::internal(format!("alert metadata: {err}")))?;
    let (alert, destination) = decode_entry(&message.payload)
        .map_err(|err| Status::internal(format!("alert {}: {err}", info.stream_sequence)))?;
    let entry = LogEntry {
        sequence: info.stream_sequence,
        alert,
        destination,
        emitted_by: message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(EMITTED_BY))
            .map(|value| value.as_str().into()),
    };
    Ok(alert_to_proto(&entry, subscriber))
}
