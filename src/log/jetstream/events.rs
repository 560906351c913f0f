//! The event log on JetStream: one subject per partition of the `{P}_EVENTS` stream.
//!
//! Ingest appends (the log sequences: JetStream stamps each message with its arrival). Each
//! event is its own message whose `Nats-Msg-Id` is the event key (device and `event_id`), so
//! JetStream drops a resend within the de-duplication window and says so in its ack; an
//! append answers once every event is stored. A supply point's events are stored in order: a
//! second event of a point is published only once the earlier ones are acknowledged, so a
//! publish that fails (a leader just died) followed by one that succeeds cannot swap them.
//!
//! A mark is a message without payload (header `Outage-Relay-Mark`), no message id. Reading
//! is an ordered consumer on the partition's subject: each message is a record of its one
//! event (or a mark) whose arrival is its JetStream timestamp.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::PublishAckFuture;
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use metrics::counter;

use super::Cluster;
use crate::domain::UtcMillis;
use crate::log::codec::{decode_event, encode_event};
use crate::log::{
    Appended, EventLog, EventReader, EventRecord, LogError, Logged, Partition, Sequencing,
};
use crate::telemetry;

/// Header marking a mark.
const MARK: &str = "Outage-Relay-Mark";
/// Acks of one append awaited at a time.
pub const ACK_WINDOW: usize = 1024;

fn unavailable(what: &str, err: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!(
        "JetStream did not store the batch ({what}: {err}); resend it, duplicates are dropped"
    ))
}

/// The events stream.
#[derive(Debug, Clone)]
pub struct JsEvents {
    cluster: Arc<Cluster>,
}

impl JsEvents {
    /// The event log of `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

/// Publishes `record`'s events (or the mark) and waits for every ack.
async fn publish(
    cluster: Arc<Cluster>,
    partition: Partition,
    record: EventRecord,
) -> Result<Appended, LogError> {
    let subject = cluster.names.event_subject(partition);
    if record.events.is_empty() {
        let mut headers = HeaderMap::new();
        headers.insert(MARK, "1");
        let ack = cluster
            .js
            .publish_with_headers(subject, headers, Bytes::new())
            .await
            .map_err(|err| unavailable("mark", err))?
            .await
            .map_err(|err| unavailable("mark ack", err))?;
        return Ok(Appended {
            position: ack.sequence,
            duplicates: 0,
        });
    }
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::new();
    let mut appended = Appended::default();
    let mut unacked = HashSet::new();
    for event in &record.events {
        if !unacked.insert(event.point) {
            while let Some(ack) = acks.pop_front() {
                count(&mut appended, ack).await?;
            }
            unacked.clear();
            unacked.insert(event.point);
        }
        if acks.len() >= ACK_WINDOW
            && let Some(ack) = acks.pop_front()
        {
            count(&mut appended, ack).await?;
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{:032x}", event.key.0).as_str(),
        );
        let ack = cluster
            .js
            .publish_with_headers(subject.clone(), headers, Bytes::from(encode_event(event)))
            .await
            .map_err(|err| unavailable("publish", err))?;
        acks.push_back(ack);
    }
    for ack in acks {
        count(&mut appended, ack).await?;
    }
    Ok(appended)
}

async fn count(appended: &mut Appended, ack: PublishAckFuture) -> Result<(), LogError> {
    let ack = ack.await.map_err(|err| unavailable("ack", err))?;
    appended.position = appended.position.max(ack.sequence);
    if ack.duplicate {
        appended.duplicates += 1;
    }
    Ok(())
}

#[async_trait]
impl EventLog for JsEvents {
    fn sequencing(&self) -> Sequencing {
        Sequencing::Log
    }

    fn append(
        &self,
        partition: Partition,
        record: EventRecord,
    ) -> BoxFuture<'static, Result<Appended, LogError>> {
        publish(Arc::clone(&self.cluster), partition, record).boxed()
    }

    async fn reader(
        &self,
        partition: Partition,
        after: u64,
    ) -> Result<Box<dyn EventReader>, LogError> {
        let cluster = &self.cluster;
        let stream = cluster
            .js
            .get_stream(cluster.names.events_stream())
            .await
            .map_err(|err| LogError::Unavailable(format!("opening the events stream: {err}")))?;
        let first_retained = stream.cached_info().state.first_sequence;
        if after > 0 && first_retained > after + 1 {
            // Events after the checkpoint passed events_max_age before anyone applied them:
            // the partition's state may miss some. Never silent.
            counter!(telemetry::JETSTREAM_ERRORS, "operation" => "replay_gap").increment(1);
            tracing::error!(
                partition,
                checkpoint_covers = after,
                first_retained,
                "events after the partition's checkpoint have expired from the events stream; \
                 its open outages may be incomplete (raise store.jetstream.events_max_age)"
            );
        }
        let deliver_policy = if after == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            }
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: cluster.names.event_subject(partition),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|err| {
                LogError::Unavailable(format!("partition {partition}'s consumer: {err}"))
            })?;
        let lag = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(|err| {
            LogError::Unavailable(format!("reading partition {partition}: {err}"))
        })?;
        Ok(Box::new(JsEventReader { messages, lag }))
    }

    async fn truncate(&self, _partition: Partition, _through: u64) -> Result<(), LogError> {
        // The stream keeps events for events_max_age and drops them by itself.
        Ok(())
    }
}

/// Follows one partition's subject.
struct JsEventReader {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    lag: u64,
}

#[async_trait]
impl EventReader for JsEventReader {
    async fn next(&mut self) -> Result<Option<Logged>, LogError> {
        let message = self
            .messages
            .next()
            .await
            .ok_or_else(|| LogError::Unavailable("the partition's consumer ended".into()))?
            .map_err(|err| LogError::Unavailable(format!("reading an event: {err}")))?;
        let info = message
            .info()
            .map_err(|err| LogError::Unavailable(format!("event metadata: {err}")))?;
        self.lag = info.pending;
        let arrival = UtcMillis(
            i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
        );
        let position = info.stream_sequence;
        let is_mark = message
            .headers
            .as_ref()
            .is_some_and(|headers| headers.get(MARK).is_some());
        let events = if is_mark {
            Vec::new()
        } else {
            vec![decode_event(&message.payload)?]
        };
        Ok(Some(Logged {
            position,
            record: EventRecord {
                arrival,
                received: arrival,
                events,
            },
        }))
    }

    fn lag(&self) -> u64 {
        self.lag
    }
}
