//! One subscriber's alert stream as the alert log sees it: where its messages sit in the
//! DNO's sequence ([`Placed`]), its bounds, and finding the message that holds a sequence.
//!
//! Placements are read from message headers and kept in a small cache (the writer adds each
//! message it stores, readers each message they read), so the status an ack asks for costs
//! one stream-info request, not a message fetch.
//!
//! The DNO's head survives retention removing every message: the writer records it in the
//! cursors bucket (`head.<name>`) as it goes, and an empty stream's head is the larger of
//! that and the stream's last sequence.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;

use super::Cluster;
use super::alert_batch::Placed;
use crate::log::LogError;

/// Placements kept per stream; the oldest are dropped past this.
const KNOWN_MAX: usize = 4096;
/// Reads of a stream's ends at most, while retention removes them as they are read.
const BOUNDS_LOOKS: usize = 5;

fn unavailable(what: impl std::fmt::Display, err: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("{what}: {err}"))
}

/// The last message of a stream and the DNO's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tail {
    /// The stream sequence of the last message (0: none ever).
    pub stream: u64,
    /// The sequence of the DNO's last alert (0: none ever).
    pub head: u64,
}

/// A stream's bounds in the DNO's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The first sequence still readable (`head + 1` when nothing is).
    pub first_retained: u64,
    /// The stream's first message's stream sequence.
    pub first_stream: u64,
    /// The tail.
    pub tail: Tail,
}

/// One subscriber's alert stream.
#[derive(Debug, Clone)]
pub struct AlertStream {
    cluster: Arc<Cluster>,
    /// The subscriber's name.
    pub name: String,
    /// Its stream.
    pub stream: String,
    /// The subject its alerts are published on.
    pub subject: String,
    known: Arc<Mutex<BTreeMap<u64, Placed>>>,
}

impl AlertStream {
    /// The stream of subscriber `name` in `cluster`.
    pub fn new(cluster: Arc<Cluster>, name: &str) -> Self {
        Self {
            stream: cluster.names.alerts_stream(name),
            subject: cluster.names.alert_subject(name),
            name: name.to_owned(),
            cluster,
            known: Arc::default(),
        }
    }

    /// The cluster it lives in.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// A handle on the stream (no request is made).
    async fn handle(&self) -> Result<Stream<()>, LogError> {
        self.cluster
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|err| unavailable(format!("alert stream of {}", self.name), err))
    }

    /// Removes every message before stream sequence `sequence`.
    pub async fn purge_before(&self, sequence: u64) -> Result<(), LogError> {
        self.handle()
            .await?
            .purge()
            .sequence(sequence)
            .await
            .map(|_| ())
            .map_err(|err| unavailable(format!("alert stream of {}", self.name), err))
    }

    /// Notes where the message at `stream_sequence` sits.
    pub fn remember(&self, stream_sequence: u64, placed: Placed) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        known.insert(stream_sequence, placed);
        while known.len() > KNOWN_MAX {
            known.pop_first();
        }
    }

    fn recalled(&self, stream_sequence: u64) -> Option<Placed> {
        let known = self
            .known
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        known.get(&stream_sequence).copied()
    }

    /// The highest DNO sequence this instance knows was stored (0: none known).
    pub fn known_head(&self) -> u64 {
        let known = self
            .known
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        known.values().map(Placed::last).max().unwrap_or(0)
    }

    /// The message at `stream_sequence`; `None` when there is none (removed, or never).
    pub async fn message(&self, stream_sequence: u64) -> Result<Option<StreamMessage>, LogError> {
        match self.handle().await?.get_raw_message(stream_sequence).await {
            Ok(message) => {
                if let Ok(placed) = Placed::of(Some(&message.headers), stream_sequence) {
                    self.remember(stream_sequence, placed);
                }
                Ok(Some(message))
            }
            Err(err) if matches!(err.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(unavailable(format!("alert stream of {}", self.name), err)),
        }
    }

    /// Where the message at `stream_sequence` sits; `None` when there is no such message.
    pub async fn placed(&self, stream_sequence: u64) -> Result<Option<Placed>, LogError> {
        if let Some(placed) = self.recalled(stream_sequence) {
            return Ok(Some(placed));
        }
        match self.message(stream_sequence).await? {
            Some(message) => Ok(Some(Placed::of(Some(&message.headers), stream_sequence)?)),
            None => Ok(None),
        }
    }

    /// The stream's bounds now.
    pub async fn bounds(&self) -> Result<Bounds, LogError> {
        let what = format!("alert stream of {}", self.name);
        let mut looks = 0;
        let state = loop {
            let info = self
                .handle()
                .await?
                .get_info()
                .await
                .map_err(|err| unavailable(&what, err))?;
            let state = info.state;
            if state.messages == 0 {
                break state;
            }
            let last = self.placed(state.last_sequence).await?;
            let first = self.placed(state.first_sequence).await?;
            if let (Some(last), Some(first)) = (last, first) {
                return Ok(Bounds {
                    first_retained: first.first,
                    first_stream: state.first_sequence,
                    tail: Tail {
                        stream: state.last_sequence,
                        head: last.last(),
                    },
                });
            }
            // Retention removed an end while we looked (its max age, or another instance's
            // purge): look again, never guess; a stream that kept some messages is not empty.
            looks += 1;
            if looks == BOUNDS_LOOKS {
                return Err(unavailable(&what, "its first messages kept being removed"));
            }
        };
        // Nothing retained: the head is the one recorded, at least the stream's last
        // sequence.
        let head = self.recorded_head().await?.max(state.last_sequence);
        Ok(Bounds {
            first_retained: head + 1,
            first_stream: state.last_sequence + 1,
            tail: Tail {
                stream: state.last_sequence,
                head,
            },
        })
    }

    fn head_key(&self) -> String {
        format!("head.{}", self.name)
    }

    async fn recorded_head(&self) -> Result<u64, LogError> {
        let key = self.head_key();
        let entry = self
            .cluster
            .cursors
            .get(&key)
            .await
            .map_err(|err| unavailable(format!("bucket entry {key}"), err))?;
        Ok(entry
            .and_then(|value| std::str::from_utf8(&value).ok()?.parse().ok())
            .unwrap_or(0))
    }

    /// Records `head` as the DNO's head, for when retention has removed every message.
    pub async fn record_head(&self, head: u64) -> Result<(), LogError> {
        let key = self.head_key();
        self.cluster
            .cursors
            .put(&key, Bytes::from(head.to_string()))
            .await
            .map(|_| ())
            .map_err(|err| unavailable(format!("bucket entry {key}"), err))
    }

    /// The stream sequence of the message holding DNO sequence `sequence`, or of the first
    /// message after it when it is not retained; within `bounds`. Messages between the
    /// bounds are never removed out of order (retention removes from the front), so a
    /// binary search over stream sequences finds it.
    pub async fn locate(&self, sequence: u64, bounds: &Bounds) -> Result<u64, LogError> {
        let (mut low, mut high) = (bounds.first_stream, bounds.tail.stream);
        if low > high || sequence <= bounds.first_retained {
            return Ok(low);
        }
        // Invariant: the answer is in low..=high; the message at `low` starts at or before
        // `sequence`.
        while low < high {
            let middle = low + (high - low).div_ceil(2);
            match self.placed(middle).await? {
                Some(placed) if placed.first <= sequence => low = middle,
                Some(_) => high = middle - 1,
                // Removed meanwhile: everything at or below it is gone too.
                None => low = middle + 1,
            }
        }
        Ok(low)
    }
}

fn is_not_found(err: &async_nats::jetstream::stream::LastRawMessageError) -> bool {
    matches!(
        err.kind(),
        LastRawMessageErrorKind::JetStream(ref js)
            if js.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND
    )
}

/// A stored message's `Nats-Msg-Id`, for a writer checking what a failed publish stored.
pub fn message_id(message: &StreamMessage) -> Option<&str> {
    message
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|value| value.as_str())
}
