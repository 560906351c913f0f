//! Ingest stage: the `Ingest` gRPC service CSP adapters publish to.
//!
//! A batch is validated event by event ([`validate`]); bad events are reported by index
//! while their batch-mates go on. Good events are split by partition (every phase of a device
//! is in the same partition, keeping its events in order) and the batch is acknowledged once
//! every part is durable: handed to its partition's owner, which applies and logs it, where
//! owners sequence the log (embedded), or appended to the log otherwise. An owner queue that
//! stays full past `ingest.queue_timeout` answers `RESOURCE_EXHAUSTED` with a retry hint:
//! that is the relay's backpressure. While the data directory is low on space ingest answers
//! `RESOURCE_EXHAUSTED`, and after a failed append `UNAVAILABLE`, before touching any state.
//! The streaming call pipelines a few batches and answers in order.
//!
//! Before any of that, a batch is counted against its publisher's event rate ([`rate`]) and a
//! `Publish` stream against its connection's stream limit; both refusals are
//! `RESOURCE_EXHAUSTED` with a retry hint.

mod admission;
pub mod rate;
pub mod validate;

pub use admission::Admission;

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{IngestConfig, LimitsConfig};
use crate::domain::{Clock, DeviceEvent, UtcMillis};
use crate::error::RelayError;
use crate::log::{EventLog, EventRecord, Partition, Sequencing, partition_of};
use crate::owner::{ApplyReport, Owners};
use crate::proto::{self, ingest_server::Ingest};
use crate::security::Caller;
use crate::security::limits::StreamLimiter;
use crate::telemetry::Metrics;
use rate::PublisherRate;

/// Batches of one `Publish` stream processed concurrently (acks still go out in order).
const STREAM_PIPELINE: usize = 4;

/// Where accepted events go: the partitioned event log, through this instance's owners
/// where they sequence it.
#[derive(Clone)]
pub struct Sink {
    /// The event log.
    pub events: Arc<dyn EventLog>,
    /// This instance's owners.
    pub owners: Arc<Owners>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

/// The service.
#[derive(Debug, Clone)]
pub struct IngestService {
    sink: Sink,
    limits: IngestConfig,
    clock: Clock,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    rate: Arc<PublisherRate>,
    streams: Arc<StreamLimiter>,
}

impl IngestService {
    /// An ingest feeding `sink`, refusing batches while `admission` says so, and callers
    /// over the `edge` limits; `streams` is shared with the other streaming services.
    pub fn new(
        sink: Sink,
        limits: IngestConfig,
        edge: &LimitsConfig,
        streams: Arc<StreamLimiter>,
        clock: Clock,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            sink,
            limits,
            clock,
            metrics,
            admission,
            rate: Arc::new(PublisherRate::new(
                edge.publisher_events_per_second,
                edge.publisher_burst_events,
            )),
            streams,
        }
    }

    /// Validates, applies and acknowledges one batch from `publisher` (the rate-limit key).
    pub async fn handle_batch(
        &self,
        batch: proto::EventBatch,
        publisher: &str,
    ) -> Result<proto::BatchAck, RelayError> {
        let started = Instant::now();
        if batch.events.len() > self.limits.max_batch_events {
            return Err(RelayError::Exhausted {
                message: format!(
                    "batch of {} events is larger than the limit of {}; split it",
                    batch.events.len(),
                    self.limits.max_batch_events
                ),
                retry_after: std::time::Duration::ZERO,
            });
        }
        self.rate.admit(publisher, batch.events.len())?;
        self.admission.check()?;
        let received_at = self.clock.now();
        let mut valid = Vec::with_capacity(batch.events.len());
        let mut rejected = Vec::new();
        for (index, event) in batch.events.iter().enumerate() {
            match validate::event(event, &self.limits, received_at) {
                Ok(event) => valid.push(event),
                Err(rejection) => {
                    self.metrics.rejected(rejection.field);
                    rejected.push(proto::EventError {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        reason: rejection.message,
                    });
                }
            }
        }
        let total = self.to_partitions(valid, received_at).await?;
        self.metrics
            .ingest_batch
            .record(started.elapsed().as_secs_f64());
        Ok(proto::BatchAck {
            accepted: total.accepted,
            duplicates: total.duplicates,
            rejected,
            batch_id: batch.batch_id,
        })
    }
}

impl IngestService {
    /// Hands each partition its part of a batch: to its owner where owners sequence the log,
    /// else straight to the log. Answers once every part is durable.
    async fn to_partitions(
        &self,
        valid: Vec<DeviceEvent>,
        received_at: UtcMillis,
    ) -> Result<ApplyReport, RelayError> {
        let Sink { events, owners } = &self.sink;
        let partitions = owners.partitions();
        let mut parts: Vec<Vec<DeviceEvent>> = vec![Vec::new(); usize::from(partitions)];
        for event in valid {
            parts[usize::from(partition_of(event.point.device, partitions))].push(event);
        }
        let parts = (0..partitions)
            .zip(parts)
            .filter(|(_, part)| !part.is_empty());
        let wait = self.limits.queue_timeout;
        let reports =
            match events.sequencing() {
                Sequencing::Owner => {
                    futures::future::try_join_all(parts.map(|(partition, part)| {
                        submit(owners, partition, part, received_at, wait)
                    }))
                    .await?
                }
                Sequencing::Log => {
                    futures::future::try_join_all(parts.map(|(partition, part)| {
                        let count = part.len() as u64;
                        let append = events.append(
                            partition,
                            EventRecord {
                                arrival: received_at,
                                received: received_at,
                                events: part,
                            },
                        );
                        async move {
                            let appended = append.await.map_err(RelayError::from)?;
                            Ok::<_, RelayError>(ApplyReport {
                                accepted: count - appended.duplicates.min(count),
                                duplicates: appended.duplicates,
                            })
                        }
                    }))
                    .await?
                }
            };
        Ok(reports
            .into_iter()
            .fold(ApplyReport::default(), ApplyReport::plus))
    }
}

/// Hands `events` to `partition`'s owner on this instance.
async fn submit(
    owners: &Owners,
    partition: Partition,
    events: Vec<DeviceEvent>,
    received_at: UtcMillis,
    wait: std::time::Duration,
) -> Result<ApplyReport, RelayError> {
    let owner = owners.get(partition).ok_or_else(|| {
        RelayError::Unavailable(format!(
            "partition {partition} is not served at the moment (starting or stopping); retry"
        ))
    })?;
    owner.submit(events, received_at, wait).await
}

type AckStream = Pin<Box<dyn Stream<Item = Result<proto::BatchAck, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type PublishStream = AckStream;

    async fn publish(
        &self,
        request: Request<Streaming<proto::EventBatch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let publisher: Arc<str> = Caller::of(&request)?
            .limit_key(request.remote_addr())
            .into();
        let permit = self.streams.acquire(request.remote_addr())?;
        // A log that stores a batch's events while the next batch's are stored too could,
        // if the first failed, put a point's earlier event after its later one. So where the
        // log sequences (JetStream) a stream's batches go one at a time (each still pipelines
        // its own events); owners take batches in order anyway.
        let pipeline = match self.sink.events.sequencing() {
            Sequencing::Owner => STREAM_PIPELINE,
            Sequencing::Log => 1,
        };
        let service = self.clone();
        let acks = request
            .into_inner()
            .map(move |batch| {
                let service = service.clone();
                let publisher = Arc::clone(&publisher);
                async move {
                    match batch {
                        Ok(batch) => service
                            .handle_batch(batch, &publisher)
                            .await
                            .map_err(Status::from),
                        // A request the decoder refused; the edge rewrites its status.
                        Err(status) => Err(status),
                    }
                }
            })
            .buffered(pipeline)
            // A failed batch ends the stream: the publisher resends from its first unacked.
            .scan(false, |failed, ack| {
                let item = (!*failed).then_some(ack);
                if let Some(Err(_)) = &item {
                    *failed = true;
                }
                futures::future::ready(item)
            })
            // The stream's place on its connection is freed when the stream ends.
            .inspect(move |_| {
                let _ = &permit;
            });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn publish_batch(
        &self,
        request: Request<proto::EventBatch>,
    ) -> Result<Response<proto::BatchAck>, Status> {
        let publisher = Caller::of(&request)?.limit_key(request.remote_addr());
        Ok(Response::new(
            self.handle_batch(request.into_inner(), &publisher).await?,
        ))
    }
}
