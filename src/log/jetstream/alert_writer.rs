//! A subscriber stream's writer: each instance runs one per subscriber it emits alerts for.
//!
//! Appends hand it their alerts for the subscriber, in call order, through a queue. Each
//! turn it takes everything queued (up to [`GROUP_MAX`] alerts: a group commit), cuts it into
//! messages ([`alert_batch::next_cut`]) and stores them one after the other:
//! - a message says which DNO sequences it holds (`first`, `count`) and is published with
//!   `Nats-Expected-Last-Sequence` set to the stream's last message as the writer knows it,
//!   so a message stored by another instance meanwhile makes the publish fail instead of two
//!   messages claiming the same sequences; the writer then reads the tail again and re-cuts;
//! - a publish whose outcome is unknown (a timeout while a leader is elected) is sent again
//!   unchanged: if the first copy was stored, the stream recognises the message id and
//!   acknowledges the first copy, whose placement the writer then reads;
//! - it keeps trying for up to [`STORE_WITHIN`], then fails the jobs of the group.
//!
//! Writers of different subscribers do not wait for each other: a stream without a leader
//! holds up only its own subscriber's alerts. The queue is unbounded in type, but bounded in
//! practice by the owners, which keep at most `store.commit_queue` appends in flight each.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use metrics::counter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::EMITTED_BY;
use super::alert_batch::{self, COUNT, FIRST, Placed};
use super::alert_stream::{AlertStream, Tail};
use crate::domain::Alert;
use crate::log::{Destination, LogError, Stored};
use crate::telemetry;

/// Alerts a writer takes from its queue in one turn.
pub const GROUP_MAX: usize = 65_536;
/// How long a writer keeps trying to store a message.
pub const STORE_WITHIN: Duration = Duration::from_secs(20);
/// First and longest wait before a message is sent again.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How often the DNO's head is recorded in the cursors bucket while alerts are stored.
const RECORD_HEAD_EVERY: Duration = Duration::from_secs(1);

/// Alerts of one append for one subscriber, and where to answer.
pub struct Job {
    /// The alerts, in the order appended.
    pub alerts: Vec<(Alert, Destination)>,
    /// Resolved with one [`Stored`] per alert once all are stored.
    pub done: oneshot::Sender<Result<Vec<Stored>, LogError>>,
}

/// Starts the writer of `stream`; its queue closes when every sender is dropped.
pub fn spawn(stream: AlertStream) -> mpsc::UnboundedSender<Job> {
    let (queue, jobs) = mpsc::unbounded_channel();
    let writer = Writer {
        stream,
        tail: None,
        head_recorded: (Instant::now(), 0),
    };
    tokio::spawn(writer.run(jobs));
    queue
}

struct Writer {
    stream: AlertStream,
    /// The stream's last message as far as this writer knows; `None`: read it first.
    tail: Option<Tail>,
    /// When the head was last recorded, and what it was.
    head_recorded: (Instant, u64),
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Job>) {
        while let Some(job) = queue.recv().await {
            let mut size = job.alerts.len();
            let mut jobs = vec![job];
            while size < GROUP_MAX {
                match queue.try_recv() {
                    Ok(job) => {
                        size += job.alerts.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let alerts: Vec<(Alert, Destination)> = jobs
                .iter()
                .flat_map(|job| job.alerts.iter().copied())
                .collect();
            match self.store(&alerts).await {
                Ok(stored) => {
                    let mut stored = stored.into_iter();
                    for job in jobs {
                        let part = stored.by_ref().take(job.alerts.len()).collect();
                        let _ = job.done.send(Ok(part));
                    }
                }
                Err(err) => {
                    tracing::warn!(subscriber = %self.stream.name, %err, alerts = alerts.len(), "alerts not stored");
                    self.tail = None;
                    for job in jobs {
                        let _ = job.done.send(Err(err.clone()));
                    }
                }
            }
            self.record_head();
        }
    }

    /// Stores `alerts` in order, one message after the other.
    async fn store(&mut self, alerts: &[(Alert, Destination)]) -> Result<Vec<Stored>, LogError> {
        let mut stored = Vec::with_capacity(alerts.len());
        let mut rest = alerts;
        while !rest.is_empty() {
            let (message, after) = rest.split_at(alert_batch::next_cut(rest));
            stored.extend(self.store_message(message).await?);
            rest = after;
        }
        Ok(stored)
    }

    /// Stores one message's alerts at the end of the stream.
    async fn store_message(
        &mut self,
        alerts: &[(Alert, Destination)],
    ) -> Result<Vec<Stored>, LogError> {
        let id = alert_batch::message_id(alerts);
        let payload = alert_batch::encode(alerts);
        let count = alerts.len() as u64;
        let give_up = Instant::now() + STORE_WITHIN;
        let mut delay = RETRY_FIRST;
        let mut publishes = 0u32;
        let mut failures = 0u32;
        let stalled_since = Instant::now();
        loop {
            let outcome = match self.tail {
                Some(tail) => {
                    publishes += 1;
                    self.publish(tail, &id, count, payload.clone()).await
                }
                None => self
                    .stream
                    .bounds()
                    .await
                    .map(|bounds| {
                        self.tail = Some(bounds.tail);
                        Attempt::Retry
                    })
                    .unwrap_or_else(|err| Attempt::Failed(err.to_string())),
            };
            let error = match outcome {
                Attempt::Stored(placed, duplicate) => {
                    if failures > 0 {
                        tracing::info!(subscriber = %self.stream.name, failures, waited = ?stalled_since.elapsed(), "alert stream took alerts again");
                    }
                    return Ok((0..placed.count)
                        .map(|index| Stored {
                            sequence: placed.first + index,
                            // A first publish acknowledged as a repeat: stored by an earlier
                            // owner. A later one: our own earlier publish was stored.
                            duplicate: duplicate && publishes == 1,
                        })
                        .collect());
                }
                Attempt::Retry if Instant::now() < give_up => continue,
                Attempt::Retry => "the stream's tail kept moving".to_owned(),
                Attempt::Failed(err) => err,
            };
            failures += 1;
            counter!(telemetry::JETSTREAM_ERRORS, "operation" => "publish").increment(1);
            self.tail = None;
            if failures == 2 {
                // A stall: the first retry was not enough. Logged and counted once.
                counter!(telemetry::ALERT_STREAM_STALLS, "subscriber" => self.stream.name.clone())
                    .increment(1);
                tracing::warn!(subscriber = %self.stream.name, %error, "alert stream not taking alerts; retrying");
            } else {
                tracing::debug!(subscriber = %self.stream.name, %error, "alert publish failed; retrying");
            }
            if Instant::now() + delay > give_up {
                return Err(LogError::Unavailable(format!(
                    "alerts for {} not stored within {STORE_WITHIN:?}: {error}",
                    self.stream.name
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// One publish after `tail`.
    async fn publish(&mut self, tail: Tail, id: &str, count: u64, payload: Bytes) -> Attempt {
        let first = tail.head + 1;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
            tail.stream.to_string().as_str(),
        );
        headers.insert(FIRST, first.to_string().as_str());
        headers.insert(COUNT, count.to_string().as_str());
        headers.insert(EMITTED_BY, self.stream.cluster().instance.as_str());
        let acked = match self
            .stream
            .cluster()
            .js
            .publish_with_headers(self.stream.subject.clone(), headers, payload)
            .await
        {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        match acked {
            Ok(ack) if !ack.duplicate && ack.sequence == tail.stream + 1 => {
                let placed = Placed { first, count };
                self.stream.remember(ack.sequence, placed);
                self.tail = Some(Tail {
                    stream: ack.sequence,
                    head: placed.last(),
                });
                Attempt::Stored(placed, false)
            }
            Ok(ack) if ack.duplicate => match self.stream.placed(ack.sequence).await {
                Ok(Some(placed)) if placed.count == count => {
                    self.tail = None;
                    Attempt::Stored(placed, true)
                }
                Ok(_) => Attempt::Failed(format!(
                    "message {} acknowledged as a repeat of one that cannot be read",
                    ack.sequence
                )),
                Err(err) => Attempt::Failed(err.to_string()),
            },
            // Stored somewhere the expected sequence should have forbidden: the server did
            // not check it. Never reached with the servers the tests run; refuse loudly
            // rather than hand out sequences that may not hold.
            Ok(ack) => {
                tracing::error!(subscriber = %self.stream.name, expected = tail.stream + 1, stored = ack.sequence, "alert message stored out of place");
                Attempt::Failed(format!(
                    "message stored at {} where {} was expected",
                    ack.sequence,
                    tail.stream + 1
                ))
            }
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                // Another instance wrote meanwhile: read the tail again and re-cut.
                self.tail = None;
                Attempt::Retry
            }
            Err(err) => Attempt::Failed(err.to_string()),
        }
    }

    /// Records the head for when retention empties the stream, at most every
    /// [`RECORD_HEAD_EVERY`], without holding up the next alerts.
    fn record_head(&mut self) {
        let Some(tail) = self.tail else { return };
        let (at, head) = self.head_recorded;
        if tail.head <= head || at.elapsed() < RECORD_HEAD_EVERY {
            return;
        }
        self.head_recorded = (Instant::now(), tail.head);
        let stream = self.stream.clone();
        tokio::spawn(async move {
            if let Err(err) = stream.record_head(tail.head).await {
                tracing::debug!(subscriber = %stream.name, %err, "head not recorded");
            }
        });
    }
}

/// What one publish did.
enum Attempt {
    /// Stored (or found stored: `true`) at this placement.
    Stored(Placed, bool),
    /// Try again at once (the tail moved, or was read).
    Retry,
    /// Failed; try again after a pause.
    Failed(String),
}
