//! The events log: ingest appends each validated event to its partition's subject and answers
//! the publisher only once JetStream has stored every event of the batch (publish acks). The
//! event key (device and `event_id`) is the message id, so JetStream itself drops a resent
//! event within the de-duplication window and says so in the ack.

use std::collections::{HashSet, VecDeque};

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;

use super::Names;
use crate::domain::{DeviceEvent, DeviceId};
use crate::error::RelayError;
use crate::log::codec::encode_event;
use crate::log::partition_of as hash_partition;
use crate::owner::ApplyReport;

/// The partition of an event: its device's.
pub fn partition_of(event: &DeviceEvent, partitions: u16) -> u16 {
    device_partition(event.point.device, partitions)
}

/// The partition of a device.
pub fn device_partition(device: DeviceId, partitions: u16) -> u16 {
    hash_partition(device, partitions)
}

/// Appends events to the JetStream events stream.
#[derive(Debug, Clone)]
pub struct EventLog {
    js: Context,
    names: Names,
    partitions: u16,
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> RelayError {
    RelayError::Unavailable(format!(
        "JetStream did not store the batch ({what}: {err}); resend it, duplicates are dropped"
    ))
}

impl EventLog {
    /// A log over the cluster's events stream.
    pub fn new(js: Context, names: Names, partitions: u16) -> Self {
        Self {
            js,
            names,
            partitions,
        }
    }

    /// Stores `events`; `Ok` once every one is stored, counting those JetStream already had.
    /// At most [`ACK_WINDOW`] of the batch's acks are awaited at a time.
    pub async fn append(&self, events: &[DeviceEvent]) -> Result<ApplyReport, RelayError> {
        let mut acks = VecDeque::with_capacity(events.len().min(ACK_WINDOW));
        let mut report = ApplyReport::default();
        let mut unacked = HashSet::new();
        for event in events {
            // A supply point's events are stored in batch order: a second event of a point is
            // published only once the earlier ones are stored. Otherwise a publish that fails
            // (the stream leader just died) followed by one that succeeds (a new leader) stores
            // them out of order, and the resent batch appends the failed one after its successor.
            if !unacked.insert(event.point) {
                while let Some(ack) = acks.pop_front() {
                    count(&mut report, ack).await?;
                }
                unacked.clear();
                unacked.insert(event.point);
            }
            if acks.len() >= ACK_WINDOW
                && let Some(ack) = acks.pop_front()
            {
                count(&mut report, ack).await?;
            }
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{:032x}", event.key.0).as_str(),
            );
            let subject = self
                .names
                .event_subject(partition_of(event, self.partitions));
            let ack = self
                .js
                .publish_with_headers(subject, headers, Bytes::from(encode_event(event)))
                .await
                .map_err(|err| unavailable("publish", err))?;
            acks.push_back(ack);
        }
        for ack in acks {
            count(&mut report, ack).await?;
        }
        Ok(report)
    }
}

/// Acks of one batch awaited at a time.
pub const ACK_WINDOW: usize = 1024;

async fn count(report: &mut ApplyReport, ack: PublishAckFuture) -> Result<(), RelayError> {
    let ack = ack.await.map_err(|err| unavailable("ack", err))?;
    if ack.duplicate {
        report.duplicates += 1;
    } else {
        report.accepted += 1;
    }
    Ok(())
}
