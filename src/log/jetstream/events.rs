//! The event log on JetStream: one subject per partition, the partitions spread over
//! `store.jetstream.event_streams` events streams (partition `p` in `{P}_EVENTS_<p % n>`, or
//! in `{P}_EVENTS` when there is one), whose leaders [`super::leaders`] spreads over the nodes.
//!
//! Ingest appends (the log sequences: JetStream stamps each message with its arrival). A
//! partition's part of an ingest batch is one message (header `Outage-Relay-Record`, the
//! event-record layout of `log::codec`), split only where it would pass
//! [`EVENTS_PER_MESSAGE`]; the messages of one append are published without waiting for each
//! other's acks (at most [`ACK_WINDOW`] in flight), and the append answers once every one is
//! stored. A message's `Nats-Msg-Id` is an xxh3-128 of its event keys, so JetStream drops a
//! resend of the same part within its de-duplication window and says so in its ack (its
//! events count as duplicates); a resend cut differently is stored again and its events are
//! dropped by the owner's event-id window when applied (they count as accepted). A supply
//! point's events are stored in order: within a message they keep the batch's order, and a
//! message holding a point of a message not yet acknowledged is published only after the
//! earlier ones are, so a publish that fails (a leader just died) followed by one that
//! succeeds cannot swap them.
//!
//! A mark is a message without payload (header `Outage-Relay-Mark`), no message id. Reading
//! is an ordered consumer on the partition's subject: each message is a record whose arrival
//! is its JetStream timestamp. Messages of one event each without the record header (what
//! earlier versions wrote) are still read.

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
use crate::domain::{DeviceEvent, SupplyPoint, UtcMillis};
use crate::log::codec::{decode_event, decode_record, encode_record_of};
use crate::log::{
    Appended, EventLog, EventReader, EventRecord, LogError, Logged, Partition, Sequencing,
};
use crate::telemetry;

/// Header marking a mark.
const MARK: &str = "Outage-Relay-Mark";
/// Header marking a message that holds an event record (several events).
const RECORD: &str = "Outage-Relay-Record";
/// Acks of one append awaited at a time.
pub const ACK_WINDOW: usize = 1024;
/// Events in one message at the most: 8,192 × 50 bytes stays well inside NATS's default
/// 1 MiB payload.
pub const EVENTS_PER_MESSAGE: usize = 8192;

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
    let mut acks: VecDeque<(PublishAckFuture, u64)> = VecDeque::new();
    let mut appended = Appended::default();
    // Points of messages not yet acknowledged; only a record of several messages needs them.
    let several = record.events.len() > EVENTS_PER_MESSAGE;
    let mut unacked: HashSet<SupplyPoint> = HashSet::new();
    for part in record.events.chunks(EVENTS_PER_MESSAGE) {
        if several && part.iter().any(|event| unacked.contains(&event.point)) {
            while let Some(ack) = acks.pop_front() {
                count(&mut appended, ack).await?;
            }
            unacked.clear();
        }
        if acks.len() >= ACK_WINDOW
            && let Some(ack) = acks.pop_front()
        {
            count(&mut appended, ack).await?;
        }
        if several {
            unacked.extend(part.iter().map(|event| event.point));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            message_id(part).as_str(),
        );
        headers.insert(RECORD, "1");
        let payload = encode_record_of(record.arrival, record.received, part);
        let ack = cluster
            .js
            .publish_with_headers(subject.clone(), headers, Bytes::from(payload))
            .await
            .map_err(|err| unavailable("publish", err))?;
        acks.push_back((ack, part.len() as u64));
    }
    for ack in acks {
        count(&mut appended, ack).await?;
    }
    Ok(appended)
}

/// The `Nats-Msg-Id` of a message holding `events`: the same events in the same order give
/// the same id.
fn message_id(events: &[DeviceEvent]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for event in events {
        hasher.update(&event.key.0.to_le_bytes());
    }
    format!("{:032x}", hasher.digest128())
}

async fn count(
    appended: &mut Appended,
    (ack, events): (PublishAckFuture, u64),
) -> Result<(), LogError> {
    let ack = ack.await.map_err(|err| unavailable("ack", err))?;
    appended.position = appended.position.max(ack.sequence);
    if ack.duplicate {
        appended.duplicates += events;
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
        let cluster = Arc::clone(&self.cluster);
        async move {
            let mut loss = cluster.data_loss();
            loss.unless_lost(publish(Arc::clone(&cluster), partition, record))
                .await
                .unwrap_or_else(|| {
                    Err(LogError::Unavailable(
                        "the connection to the NATS server was lost before the events were \
                         acknowledged"
                            .into(),
                    ))
                })
        }
        .boxed()
    }

    async fn reader(
        &self,
        partition: Partition,
        after: u64,
    ) -> Result<Box<dyn EventReader>, LogError> {
        let cluster = &self.cluster;
        let stream = cluster
            .js
            .get_stream(cluster.names.events_stream_of(partition))
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
                max_expires: super::CONSUMER_MAX_EXPIRES,
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
        Ok(Box::new(JsEventReader {
            partition,
            messages,
            lag,
            last: after,
        }))
    }

    async fn truncate(
        &self,
        _partition: Partition,
        _through: u64,
        _keep_since: UtcMillis,
    ) -> Result<(), LogError> {
        // The stream keeps events for events_max_age and drops them by itself.
        Ok(())
    }
}

/// Follows one partition's subject.
struct JsEventReader {
    partition: Partition,
    messages: async_nats::jetstream::consumer::pull::Ordered,
    lag: u64,
    /// The position of the last record read.
    last: u64,
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
        if position <= self.last {
            // Positions only grow along a partition's consumer; a record read after a later
            // one is applied out of order (its alerts stored after the later records'). One
            // cluster fault run stored alerts that way without a cause found: said loudly.
            counter!(telemetry::JETSTREAM_ERRORS, "operation" => "events_out_of_order")
                .increment(1);
            tracing::error!(
                partition = self.partition,
                position,
                after = self.last,
                "an events record delivered after a later one"
            );
        }
        self.last = self.last.max(position);
        let has = |name: &str| {
            message
                .headers
                .as_ref()
                .is_some_and(|headers| headers.get(name).is_some())
        };
        let record = if has(MARK) {
            EventRecord {
                arrival,
                received: arrival,
                events: Vec::new(),
            }
        } else if has(RECORD) {
            EventRecord {
                arrival,
                ..decode_record(&message.payload)?
            }
        } else {
            EventRecord {
                arrival,
                received: arrival,
                events: vec![decode_event(&message.payload)?],
            }
        };
        Ok(Some(Logged { position, record }))
    }

    fn lag(&self) -> u64 {
        self.lag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DeviceId;
    use crate::log::conformance::loss;

    #[test]
    fn a_message_id_names_the_events_and_their_order() {
        let events: Vec<DeviceEvent> = (0..4).map(|n| loss(DeviceId(n), n as i64)).collect();
        let again = events.clone();
        assert_eq!(message_id(&events), message_id(&again), "a resend");
        assert_ne!(
            message_id(&events),
            message_id(&events[..3]),
            "cut differently"
        );
        let mut swapped = events.clone();
        swapped.swap(0, 1);
        assert_ne!(message_id(&events), message_id(&swapped), "another order");
        assert_eq!(message_id(&events).len(), 32);
    }

    #[test]
    fn a_batch_part_fits_a_message() {
        let events: Vec<DeviceEvent> =
            std::iter::repeat_n(loss(DeviceId(1), 0), EVENTS_PER_MESSAGE).collect();
        let payload = encode_record_of(UtcMillis(0), UtcMillis(0), &events);
        assert!(payload.len() < 1024 * 1024, "{} bytes", payload.len());
    }
}
