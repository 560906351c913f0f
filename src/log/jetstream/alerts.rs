//! The alert logs on JetStream: a stream per subscriber (`{P}_ALERTS_<name>`), cursors and
//! SLA marks in the `{P}_CURSORS` bucket, and parked alerts on a subject per partition of
//! `{P}_PARKED`.
//!
//! - A subscriber's alerts are grouped into messages that say which of the DNO's sequences
//!   they hold ([`alert_batch`]); each instance has one writer per subscriber stream
//!   ([`alert_writer`]) that group-commits what its partitions append, and the
//!   `Nats-Expected-Last-Sequence` check keeps the sequences of several instances' writers
//!   contiguous (1..=head, no gap, no reuse). Streams written one alert per message before
//!   grouping are read as they are.
//! - Alerts are stored in the order appended: an append hands each subscriber's alerts to
//!   that subscriber's writer when it is called (an owner calls them in order), and a writer
//!   stores in queue order. A point's alerts all go to one subscriber, so per-point order
//!   holds, while a stream that stalls holds up only its own subscriber's alerts.
//! - Alerts a replay emits again: a checkpoint records each stream's head as this instance
//!   knew it ([`AlertLog::heads`]); before replaying, [`AlertLog::guard_replay`] queues a
//!   guard to each stream's writer, ahead of the replay's alerts and without waiting for it:
//!   the writer stores a barrier, reads what was stored after the head up to it, and
//!   answers the partition's alerts found there with their first sequence, as duplicates,
//!   without storing them again. A message sent again whole (a publish whose ack was
//!   lost) is dropped by the stream's duplicate window.
//! - Acks move the cursor by compare-and-set, never back, so instances acking for the same
//!   subscriber cannot lose an ack. Acknowledged alerts stay readable while the stream keeps
//!   them (`store.retention_max_age`, the stream's max age; its messages are bounded by
//!   `store.retention_max_alerts` too, each holding up to
//!   [`alert_batch::ALERTS_PER_MESSAGE`] alerts).
//! - Retention ([`AlertLog::maintain`], every `store.maintenance_interval` on every
//!   instance): unacknowledged alerts beyond `store.retention_max_alerts`, or already
//!   removed by the stream's limits, are settled as expired: the cursor moves past them by
//!   compare-and-set (one instance counts them), a journal record says so, and the messages
//!   wholly below them are purged.
//! - SLA marks (`sla.<name>`: entries seen, checked through, breaches) move by compare-and-set.
//! - Parked alerts are one message each; their stream sequence is their key.
//! - Each ack that moves a cursor is journalled first (`{P}_JOURNAL`, a journal record of
//!   `log::codec` on the subscriber's subject, kept `store.report_retention`), then the
//!   cursor moves: an ack that fails after its record was stored is sent again by the
//!   subscriber, and the report orders and merges the records of several instances
//!   ([`Settled::normalise`]). The alerts the report reads are the subscriber's stream, so
//!   it reaches back as far as the stream keeps them (`store.retention_max_age`); alerts the
//!   stream's limits removed unacknowledged are not journalled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::kv;
use async_nats::jetstream::publish::PublishAck;
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use metrics::counter;

use tokio::sync::{mpsc, oneshot};

use super::alert_stream::{AlertStream, Bounds};
use super::alert_writer::{self, GuardRequest, Job, Request};
use super::{Cluster, EMITTED_BY, alert_batch};
use crate::domain::{Alert, UtcMillis};
use crate::log::codec::{decode_entry, decode_settled, encode_entry, encode_settled};
use crate::log::{
    AlertHeads, AlertLog, AlertReader, Delivered, Destination, Expired, Lease, LogEntry, LogError,
    LogStatus, Parked, Partition, Retention, Settled, SlaMark, Stored, partition_of,
};
use crate::route::{ParkReason, Route, RoutingTable, SubscriberId};
use crate::telemetry;

/// Parked-alert publishes in flight before a park waits for their acks.
const PUBLISH_WINDOW: usize = 1024;
/// How long an append keeps sending an alert JetStream did not store.
pub const STORE_WITHIN: Duration = alert_writer::STORE_WITHIN;
/// First and longest wait before an alert is sent again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Bound on waiting for the next message while listing a stream.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

fn unavailable(what: impl std::fmt::Display, err: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("{what}: {err}"))
}

/// The subscribers' streams, the cursors and the parked alerts.
#[derive(Debug, Clone)]
pub struct JsAlerts {
    cluster: Arc<Cluster>,
    table: Arc<RoutingTable>,
    /// Each subscriber's stream, by subscriber index.
    streams: Arc<[AlertStream]>,
    /// Each subscriber's writer on this instance, started with its first alert.
    writers: Arc<[OnceLock<mpsc::UnboundedSender<Request>>]>,
    /// One per partition: its parks run one at a time, in call order.
    order: Arc<[Arc<tokio::sync::Mutex<()>>]>,
    /// Each owned partition's lease: writers drop a partition's alerts once it is not valid.
    fences: alert_writer::Fences,
    /// Per stream, by subscriber index: the heads of replays whose guards still hold alerts
    /// to be emitted again ([`AlertLog::heads`] records no higher).
    floors: Arc<[alert_writer::Floors]>,
}

impl JsAlerts {
    /// The alert logs of `table`'s subscribers in `cluster`. Called inside a runtime, it
    /// starts reading each stream's tail, so that the first checkpoints know the heads.
    pub fn new(cluster: Arc<Cluster>, table: Arc<RoutingTable>) -> Self {
        let order = (0..cluster.settings.partitions.max(1))
            .map(|_| Arc::new(tokio::sync::Mutex::new(())))
            .collect();
        let streams: Arc<[AlertStream]> = table
            .iter()
            .map(|(_, name)| AlertStream::new(Arc::clone(&cluster), name))
            .collect();
        let writers = streams.iter().map(|_| OnceLock::new()).collect();
        let floors = streams.iter().map(|_| Arc::default()).collect();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for stream in streams.iter().cloned() {
                runtime.spawn(async move {
                    if let Err(err) = stream.bounds().await {
                        tracing::debug!(subscriber = %stream.name, %err, "alert stream tail not read yet");
                    }
                });
            }
        }
        Self {
            cluster,
            table,
            streams,
            writers,
            order,
            fences: Arc::default(),
            floors,
        }
    }

    /// The lock ordering the parks of `alert`'s partition.
    fn order_of(&self, alert: &Alert) -> Arc<tokio::sync::Mutex<()>> {
        let partition = partition_of(alert.point.device, self.cluster.settings.partitions);
        Arc::clone(&self.order[usize::from(partition) % self.order.len()])
    }

    fn name(&self, log: SubscriberId) -> &str {
        self.table.name(log)
    }

    fn stream(&self, log: SubscriberId) -> &AlertStream {
        &self.streams[usize::from(log.0)]
    }

    /// Stores `settled` in `log`'s journal.
    async fn journal(&self, log: SubscriberId, settled: Settled) -> Result<(), LogError> {
        let what = format!("journal of {}", self.name(log));
        self.cluster
            .js
            .publish(
                self.cluster.names.journal_subject(self.name(log)),
                Bytes::from(encode_settled(&settled)),
            )
            .await
            .map_err(|err| unavailable(&what, err))?
            .await
            .map_err(|err| unavailable(&what, err))?;
        Ok(())
    }

    /// The lease `partition`'s owner here acts under, if it was fenced.
    fn lease_of(&self, partition: Partition) -> Option<Lease> {
        self.fences
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&partition)
            .cloned()
    }

    fn writer(&self, log: SubscriberId) -> &mpsc::UnboundedSender<Request> {
        self.writers[usize::from(log.0)].get_or_init(|| {
            alert_writer::spawn(
                self.stream(log).clone(),
                Arc::clone(&self.floors[usize::from(log.0)]),
            )
        })
    }

    /// The stream's bounds once its head reaches `sequence`, or as they stand after
    /// [`HEAD_SETTLE`]. Just after a node's death a stream's info can report a head behind a
    /// message its consumer already delivered (seen in the cluster fault test: `Ack(270)`
    /// refused with the head at 269); a subscriber that acknowledges or resumes from what
    /// it received is not refused for that.
    async fn bounds_reaching(&self, log: SubscriberId, sequence: u64) -> Result<Bounds, LogError> {
        let deadline = tokio::time::Instant::now() + HEAD_SETTLE;
        let mut pause = Duration::from_millis(50);
        loop {
            let bounds = self.stream(log).bounds().await?;
            if bounds.tail.head >= sequence || tokio::time::Instant::now() + pause > deadline {
                return Ok(bounds);
            }
            tracing::debug!(
                subscriber = self.name(log),
                sequence,
                head = bounds.tail.head,
                "stream head behind a delivered sequence; asking again"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Retention of one subscriber's stream: unacknowledged alerts beyond `max_alerts`, or
    /// already removed by the stream's own limits (its max age, its messages), are settled
    /// as expired: the cursor moves past them by compare-and-set (so of several instances
    /// only one counts them), they are journalled, and the messages wholly below them are
    /// purged. `None` when nothing expired, or another instance moved the cursor first (the
    /// next pass looks again).
    async fn retain(
        &self,
        log: SubscriberId,
        now: UtcMillis,
        max_alerts: u64,
    ) -> Result<Option<Expired>, LogError> {
        let stream = self.stream(log);
        let bounds = stream.bounds().await?;
        let key = cursor_key(self.name(log));
        let (text, revision) = read_text(&self.cluster.cursors, &key).await?;
        let acked: u64 = text.parse().unwrap_or(0);
        let head = bounds.tail.head;
        let unacked_from = acked + 1;
        let first = unacked_from
            .max(bounds.first_retained)
            .max((head + 1).saturating_sub(max_alerts));
        if first <= unacked_from {
            return Ok(None);
        }
        let upto = first - 1;
        if !compare_and_set(&self.cluster.cursors, &key, upto.to_string(), revision).await? {
            return Ok(None);
        }
        let settled = Settled {
            from: unacked_from,
            upto,
            at: now,
            expired: true,
        };
        // After the cursor moved: a journal record lost to a crash leaves the report calling
        // these alerts never delivered, which is what they were; journalled first, a record
        // could call alerts that a concurrent ack covered expired.
        if let Err(err) = self.journal(log, settled).await {
            tracing::warn!(subscriber = self.name(log), %err, "expired alerts not journalled");
        }
        let keep = stream.locate(first, &bounds).await?;
        if keep > bounds.first_stream
            && let Err(err) = stream.purge_before(keep).await
        {
            tracing::warn!(subscriber = %stream.name, %err, "settled alert messages not purged");
        }
        Ok(Some(Expired {
            log,
            removed: first - unacked_from,
            status: LogStatus {
                head,
                acked: upto,
                first_retained: first,
            },
        }))
    }
}

/// How long an ack or a resume beyond a stream's reported head waits for the head to catch
/// up before it is refused.
const HEAD_SETTLE: Duration = Duration::from_secs(3);

/// A number kept as decimal text under `key`, and the entry's revision (0 and none when the
/// key was never written or was deleted).
async fn read_text(store: &kv::Store, key: &str) -> Result<(String, Option<u64>), LogError> {
    let entry = store
        .entry(key)
        .await
        .map_err(|err| unavailable(format!("bucket entry {key}"), err))?;
    Ok(match entry {
        Some(entry) if entry.operation == kv::Operation::Put => (
            String::from_utf8_lossy(&entry.value).into_owned(),
            Some(entry.revision),
        ),
        _ => (String::new(), None),
    })
}

/// Writes `value` under `key` if its revision is still `revision`; `Ok(false)` when another
/// instance wrote it meanwhile.
async fn compare_and_set(
    store: &kv::Store,
    key: &str,
    value: String,
    revision: Option<u64>,
) -> Result<bool, LogError> {
    let value = Bytes::from(value);
    let written = match revision {
        Some(revision) => store
            .update(key, value, revision)
            .await
            .map(|_| ())
            .map_err(|err| err.kind() == kv::UpdateErrorKind::WrongLastRevision),
        None => store
            .create(key, value)
            .await
            .map(|_| ())
            .map_err(|err| err.kind() == kv::CreateErrorKind::AlreadyExists),
    };
    match written {
        Ok(()) => Ok(true),
        Err(true) => Ok(false),
        Err(false) => Err(LogError::Unavailable(format!("cannot store {key}"))),
    }
}

fn cursor_key(name: &str) -> String {
    name.to_owned()
}

fn sla_key(name: &str) -> String {
    format!("sla.{name}")
}

fn parse_mark(text: &str) -> SlaMark {
    let mut fields = text.split(',').map(|f| f.parse::<i64>().unwrap_or(0));
    let (seen, through, breaches) = (
        fields.next().unwrap_or(0),
        fields.next().unwrap_or(i64::MIN),
        fields.next().unwrap_or(0),
    );
    SlaMark {
        seen: u64::try_from(seen).unwrap_or(0),
        checked_through: UtcMillis(through),
        breaches: u64::try_from(breaches).unwrap_or(0),
    }
}

/// Publishes one alert; its id is the message id, so sending it again is harmless.
async fn send(
    cluster: &Cluster,
    subject: String,
    alert: &Alert,
    destination: &Destination,
) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
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

/// Stores one alert whose publish or ack failed: sends it again, with backoff, for up to
/// [`STORE_WITHIN`].
async fn store_again(
    cluster: &Cluster,
    subject: &str,
    alert: &Alert,
    destination: &Destination,
) -> Result<PublishAck, LogError> {
    let give_up = tokio::time::Instant::now() + STORE_WITHIN;
    let mut delay = RETRY_FIRST;
    loop {
        counter!(telemetry::JETSTREAM_ERRORS, "operation" => "publish").increment(1);
        if tokio::time::Instant::now() + delay > give_up {
            return Err(LogError::Unavailable(format!(
                "alert {} not stored within {STORE_WITHIN:?}",
                alert.id()
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
        if let Ok(ack) = send(cluster, subject.to_owned(), alert, destination).await
            && let Ok(ack) = ack.await
        {
            return Ok(ack);
        }
    }
}

/// Stores parked alerts in order per point, pipelined; one message and ack per alert.
async fn store_all(
    cluster: Arc<Cluster>,
    alerts: Vec<(String, Alert, Destination)>,
) -> Result<Vec<PublishAck>, LogError> {
    let mut acks = Vec::with_capacity(alerts.len());
    let mut in_flight: VecDeque<(usize, PublishAckFuture)> = VecDeque::new();
    let mut points = HashSet::new();
    for (index, (subject, alert, destination)) in alerts.iter().enumerate() {
        if !points.insert(alert.point) || in_flight.len() >= PUBLISH_WINDOW {
            drain(&cluster, &alerts, &mut in_flight, &mut acks).await?;
            points.clear();
            points.insert(alert.point);
        }
        match send(&cluster, subject.clone(), alert, destination).await {
            Ok(ack) => in_flight.push_back((index, ack)),
            Err(err) => {
                tracing::debug!(%err, "alert publish failed; retrying");
                drain(&cluster, &alerts, &mut in_flight, &mut acks).await?;
                acks.push(store_again(&cluster, subject, alert, destination).await?);
            }
        }
    }
    drain(&cluster, &alerts, &mut in_flight, &mut acks).await?;
    Ok(acks)
}

async fn drain(
    cluster: &Cluster,
    alerts: &[(String, Alert, Destination)],
    in_flight: &mut VecDeque<(usize, PublishAckFuture)>,
    acks: &mut Vec<PublishAck>,
) -> Result<(), LogError> {
    while let Some((index, ack)) = in_flight.pop_front() {
        let ack = match ack.await {
            Ok(ack) => ack,
            Err(err) => {
                tracing::debug!(%err, "alert not acknowledged; retrying");
                let (subject, alert, destination) = &alerts[index];
                store_again(cluster, subject, alert, destination).await?
            }
        };
        acks.push(ack);
    }
    Ok(())
}

/// Reads a stream from a sequence with an ordered consumer.
pub(super) async fn open_reader(
    cluster: &Cluster,
    stream: String,
    filter: Option<String>,
    from: u64,
) -> Result<async_nats::jetstream::consumer::pull::Ordered, LogError> {
    let what = format!("stream {stream}");
    let stream = cluster
        .js
        .get_stream(&stream)
        .await
        .map_err(|err| unavailable(&what, err))?;
    stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.unwrap_or_default(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            max_expires: super::CONSUMER_MAX_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|err| unavailable(&what, err))?
        .messages()
        .await
        .map_err(|err| unavailable(&what, err))
}

/// An entry from a stream message.
fn entry_of(message: &async_nats::jetstream::Message) -> Result<LogEntry, LogError> {
    let info = message
        .info()
        .map_err(|err| LogError::Unavailable(format!("alert metadata: {err}")))?;
    let (alert, destination) = decode_entry(&message.payload)?;
    Ok(LogEntry {
        sequence: info.stream_sequence,
        alert,
        destination,
        emitted_by: message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(EMITTED_BY))
            .map(|value| value.as_str().into()),
    })
}

/// Every message of `subject` in the parked stream, oldest first.
async fn read_parked(cluster: &Cluster, subject: String) -> Result<Vec<Parked>, LogError> {
    read_all(cluster, cluster.names.parked_stream(), subject, |message| {
        let entry = entry_of(message)?;
        Ok(vec![Parked {
            key: entry.sequence,
            entry,
        }])
    })
    .await
}

/// Every message of `subject` in `stream` stored when the read began, oldest first, each
/// decoded by `decode` into what it holds.
async fn read_all<T>(
    cluster: &Cluster,
    stream: String,
    subject: String,
    decode: impl Fn(&async_nats::jetstream::Message) -> Result<Vec<T>, LogError>,
) -> Result<Vec<T>, LogError> {
    let what = format!("stream {stream}");
    let what = what.as_str();
    let mut stream = cluster
        .js
        .get_stream(&stream)
        .await
        .map_err(|err| unavailable(what, err))?;
    let info = stream.info().await.map_err(|err| unavailable(what, err))?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::All,
            max_expires: super::CONSUMER_MAX_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|err| unavailable(what, err))?;
    let mut left = consumer.cached_info().num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|err| unavailable(what, err))?;
    let mut read = Vec::new();
    while left > 0 {
        let message = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|_| unavailable(what, "the stream stopped answering"))?
            .ok_or_else(|| unavailable(what, "the consumer ended"))?
            .map_err(|err| unavailable(what, err))?;
        left = message
            .info()
            .map_err(|err| unavailable(what, err))?
            .pending;
        read.extend(decode(&message)?);
    }
    Ok(read)
}

/// One subscriber's alerts of an append, and where each goes in the append's answer.
type Part = (Vec<(Alert, Destination)>, Vec<usize>);

/// Follows a subscriber's stream from a sequence.
struct JsAlertReader {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    stream: AlertStream,
    /// Entries before this sequence (in the first message read) are skipped.
    from: u64,
    /// Entries of messages read and not yet returned.
    ready: VecDeque<LogEntry>,
}

impl JsAlertReader {
    /// Decodes `message` into [`Self::ready`].
    fn take(&mut self, message: &async_nats::jetstream::Message) -> Result<(), LogError> {
        let info = message
            .info()
            .map_err(|err| LogError::Unavailable(format!("alert metadata: {err}")))?;
        let at = info.stream_sequence;
        let entries = alert_batch::decode(message.headers.as_ref(), &message.payload, at)?;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            self.stream.remember(
                at,
                alert_batch::Placed {
                    first: first.sequence,
                    count: last.sequence - first.sequence + 1,
                },
            );
        }
        let from = self.from;
        self.ready
            .extend(entries.into_iter().filter(|entry| entry.sequence >= from));
        Ok(())
    }
}

#[async_trait]
impl AlertReader for JsAlertReader {
    async fn next(&mut self, max: usize) -> Result<Vec<LogEntry>, LogError> {
        while self.ready.is_empty() {
            let message = self
                .messages
                .next()
                .await
                .ok_or_else(|| LogError::Unavailable("the alert consumer ended".into()))?
                .map_err(|err| LogError::Unavailable(format!("reading alerts: {err}")))?;
            self.take(&message)?;
        }
        while self.ready.len() < max {
            match self.messages.next().now_or_never() {
                Some(Some(Ok(message))) => self.take(&message)?,
                Some(Some(Err(err))) => {
                    return Err(LogError::Unavailable(format!("reading alerts: {err}")));
                }
                _ => break,
            }
        }
        let take = max.min(self.ready.len()).max(1);
        Ok(self.ready.drain(..take).collect())
    }
}

#[async_trait]
impl AlertLog for JsAlerts {
    fn append(
        &self,
        alerts: Vec<(Alert, Route)>,
    ) -> BoxFuture<'static, Result<Vec<Stored>, LogError>> {
        let total = alerts.len();
        let partitions = self.cluster.settings.partitions;
        let partition = alerts
            .first()
            .map_or(0, |(alert, _)| partition_of(alert.point.device, partitions));
        let mut answers: Vec<Option<Stored>> = vec![None; total];
        let mut parts: HashMap<SubscriberId, Part> = HashMap::new();
        for (index, (alert, route)) in alerts.into_iter().enumerate() {
            let part = parts.entry(route.subscriber).or_default();
            part.0.push((alert, Destination::Routed(route)));
            part.1.push(index);
        }
        let lease = self.lease_of(partition);
        // Queued now, in call order: the writers store in that order.
        let mut waiting = Vec::with_capacity(parts.len());
        for (log, (alerts, places)) in parts {
            let (done, stored) = oneshot::channel();
            let queued = self.writer(log).send(Request::Store(Job {
                partition,
                lease: lease.clone(),
                alerts,
                done,
            }));
            waiting.push((stored, places, queued.is_ok()));
        }
        async move {
            for (stored, places, queued) in waiting {
                let stored = match stored.await {
                    Ok(result) if queued => result?,
                    _ => return Err(LogError::Unavailable("the alert writer stopped".into())),
                };
                for (place, stored) in places.into_iter().zip(stored) {
                    answers[place] = Some(stored);
                }
            }
            answers
                .into_iter()
                .map(|answer| {
                    answer.ok_or_else(|| LogError::Unavailable("an alert was not answered".into()))
                })
                .collect()
        }
        .boxed()
    }

    fn park(
        &self,
        partition: Partition,
        alerts: Vec<(Alert, ParkReason)>,
    ) -> BoxFuture<'static, Result<(), LogError>> {
        let cluster = Arc::clone(&self.cluster);
        let order = alerts.first().map(|(alert, _)| self.order_of(alert));
        let subject = cluster.names.parked_subject(partition);
        let alerts = alerts
            .into_iter()
            .map(|(alert, reason)| (subject.clone(), alert, Destination::Parked(reason)))
            .collect();
        async move {
            let _turn = match &order {
                Some(order) => Some(order.lock().await),
                None => None,
            };
            store_all(cluster, alerts).await.map(|_| ())
        }
        .boxed()
    }

    async fn reader(&self, log: SubscriberId, from: u64) -> Result<Box<dyn AlertReader>, LogError> {
        let stream = self.stream(log).clone();
        let bounds = stream.bounds().await?;
        let start = stream.locate(from, &bounds).await?;
        let messages = open_reader(&self.cluster, stream.stream.clone(), None, start).await?;
        Ok(Box::new(JsAlertReader {
            messages,
            stream,
            from,
            ready: VecDeque::new(),
        }))
    }

    async fn status(&self, log: SubscriberId) -> Result<LogStatus, LogError> {
        self.status_reaching(log, 0).await
    }

    async fn status_reaching(
        &self,
        log: SubscriberId,
        sequence: u64,
    ) -> Result<LogStatus, LogError> {
        let bounds = self.bounds_reaching(log, sequence).await?;
        let (acked, _) = read_text(&self.cluster.cursors, &cursor_key(self.name(log))).await?;
        Ok(LogStatus {
            head: bounds.tail.head,
            acked: acked.parse().unwrap_or(0),
            first_retained: bounds.first_retained,
        })
    }

    async fn retained_reaching(
        &self,
        log: SubscriberId,
        sequence: u64,
    ) -> Result<(u64, u64), LogError> {
        let bounds = self.bounds_reaching(log, sequence).await?;
        Ok((bounds.first_retained, bounds.tail.head))
    }

    async fn ack(
        &self,
        log: SubscriberId,
        upto: u64,
        at: UtcMillis,
    ) -> Result<LogStatus, LogError> {
        let bounds = self.bounds_reaching(log, upto).await?;
        let (first, head) = (bounds.first_retained, bounds.tail.head);
        if upto > head {
            return Err(LogError::BeyondHead {
                requested: upto,
                head,
            });
        }
        let key = cursor_key(self.name(log));
        let mut journalled = false;
        loop {
            let (text, revision) = read_text(&self.cluster.cursors, &key).await?;
            let acked: u64 = text.parse().unwrap_or(0);
            if upto > acked && !journalled {
                self.journal(
                    log,
                    Settled {
                        from: acked + 1,
                        upto,
                        at,
                        expired: false,
                    },
                )
                .await?;
                journalled = true;
                continue;
            }
            if upto <= acked
                || compare_and_set(&self.cluster.cursors, &key, upto.to_string(), revision).await?
            {
                return Ok(LogStatus {
                    head,
                    acked: acked.max(upto),
                    first_retained: first,
                });
            }
        }
    }

    async fn deliveries(
        &self,
        log: SubscriberId,
        from: UtcMillis,
        to: UtcMillis,
    ) -> Result<Vec<Delivered>, LogError> {
        let name = self.name(log);
        let names = &self.cluster.names;
        let journal = read_all(
            &self.cluster,
            names.journal_stream(),
            names.journal_subject(name),
            |message| Ok(vec![decode_settled(&message.payload)?]),
        )
        .await?;
        let entries = read_all(
            &self.cluster,
            names.alerts_stream(name),
            names.alert_subject(name),
            |message| {
                let at = message
                    .info()
                    .map_err(|err| unavailable("alert metadata", err))?
                    .stream_sequence;
                Ok(
                    alert_batch::decode(message.headers.as_ref(), &message.payload, at)?
                        .into_iter()
                        .map(|entry| (entry.sequence, entry.alert))
                        .collect(),
                )
            },
        )
        .await?;
        Ok(Settled::deliveries(
            &Settled::normalise(journal),
            entries,
            from,
            to,
        ))
    }

    async fn sla_mark(&self, log: SubscriberId) -> Result<SlaMark, LogError> {
        let (text, _) = read_text(&self.cluster.cursors, &sla_key(self.name(log))).await?;
        Ok(parse_mark(&text))
    }

    async fn record_sla(
        &self,
        log: SubscriberId,
        seen: u64,
        checked_through: UtcMillis,
        new_breaches: u64,
    ) -> Result<SlaMark, LogError> {
        let key = sla_key(self.name(log));
        loop {
            let (text, revision) = read_text(&self.cluster.cursors, &key).await?;
            let mut mark = parse_mark(&text);
            mark.seen = mark.seen.max(seen);
            mark.checked_through = mark.checked_through.max(checked_through);
            mark.breaches += new_breaches;
            let value = format!("{},{},{}", mark.seen, mark.checked_through.0, mark.breaches);
            if compare_and_set(&self.cluster.cursors, &key, value, revision).await? {
                return Ok(mark);
            }
        }
    }

    async fn parked(&self, partition: Partition) -> Result<Vec<Parked>, LogError> {
        read_parked(&self.cluster, self.cluster.names.parked_subject(partition)).await
    }

    async fn move_parked(
        &self,
        partition: Partition,
        moves: Vec<(u64, Alert, Route)>,
    ) -> Result<Vec<Stored>, LogError> {
        let _ = partition;
        let keys: Vec<u64> = moves.iter().map(|(key, _, _)| *key).collect();
        let stored = self
            .append(
                moves
                    .into_iter()
                    .map(|(_, alert, route)| (alert, route))
                    .collect(),
            )
            .await?;
        let what = "parked alerts";
        let stream = self
            .cluster
            .js
            .get_stream(self.cluster.names.parked_stream())
            .await
            .map_err(|err| unavailable(what, err))?;
        for key in keys {
            // Already gone (an earlier move that stopped half way): nothing to do.
            let _ = stream.delete_message(key).await;
        }
        Ok(stored)
    }

    async fn list_parked(&self, limit: usize) -> Result<(Vec<LogEntry>, u64), LogError> {
        let parked = read_parked(&self.cluster, self.cluster.names.parked_subjects()).await?;
        Ok(Parked::oldest(parked, limit))
    }

    async fn maintain(
        &self,
        now: UtcMillis,
        retention: Retention,
    ) -> Result<Vec<Expired>, LogError> {
        let mut expired = Vec::new();
        for index in 0..self.streams.len() {
            let log = SubscriberId(u16::try_from(index).unwrap_or(u16::MAX));
            match self.retain(log, now, retention.max_alerts).await {
                Ok(Some(removed)) => expired.push(removed),
                Ok(None) => {}
                // One stream electing a leader does not hold up the others' retention.
                Err(err) => {
                    tracing::warn!(subscriber = self.name(log), %err, "retention pass failed");
                }
            }
        }
        Ok(expired)
    }

    fn heads(&self, partition: Partition) -> AlertHeads {
        AlertHeads(
            self.streams
                .iter()
                .zip(self.floors.iter())
                .map(|(stream, floors)| {
                    let floor = floors
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .get(&partition)
                        .copied();
                    let head = stream.known_head();
                    (
                        stream.name.clone(),
                        floor.map_or(head, |floor| floor.min(head)),
                    )
                })
                .collect(),
        )
    }

    async fn guard_replay(
        &self,
        partition: Partition,
        _partitions: u16,
        heads: &AlertHeads,
    ) -> Result<(), LogError> {
        // Queued to every writer ahead of the replay's alerts, not awaited: each writer
        // stores a barrier, reads what was stored after the head up to it, and answers the
        // partition's alerts found there as duplicates (see `alert_writer`). A stream
        // without a leader holds up only that subscriber's alerts of the partition.
        let lease = self.lease_of(partition);
        let mut guarded = Vec::with_capacity(self.streams.len());
        for (log, name) in self.table.iter() {
            // A stream the checkpoint does not name is read whole, as far as retained.
            let after = heads
                .0
                .iter()
                .find(|(head_of, _)| head_of == name)
                .map_or(0, |(_, head)| *head);
            let (done, answer) = oneshot::channel();
            self.writer(log)
                .send(Request::Guard(GuardRequest {
                    partition,
                    after,
                    lease: lease.clone(),
                    done,
                }))
                .map_err(|_| LogError::Unavailable("the alert writer stopped".into()))?;
            self.floors[usize::from(log.0)]
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .insert(partition, after);
            guarded.push(answer);
        }
        let asked = tokio::time::Instant::now();
        let heads = heads.0.clone();
        tokio::spawn(async move {
            let mut alerts = 0;
            for answer in guarded {
                match answer.await {
                    Ok(Ok(found)) => alerts += found,
                    // Said by the writer; the partition's owner ends on its next alert there.
                    Ok(Err(_)) | Err(_) => return,
                }
            }
            tracing::info!(
                partition,
                alerts,
                ?heads,
                elapsed = ?asked.elapsed(),
                "replay guarded in every alert stream: alerts stored after the checkpoint's heads are not stored again"
            );
        });
        Ok(())
    }

    fn replayed(&self, _partition: Partition) {
        // The guard stays: timers the earlier owner fired fire again after the replay.
    }

    fn fence(&self, partition: Partition, lease: &Lease) {
        self.fences
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(partition, lease.clone());
    }
}
