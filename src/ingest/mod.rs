//! Ingest stage: the `Ingest` gRPC service CSP adapters publish to.
//!
//! A batch is validated event by event ([`validate`]); bad events are reported by index
//! while their batch-mates go on. Good events are split by shard (every phase of a device
//! goes to the same shard, keeping its events in order) and the batch is acknowledged once
//! every shard has applied and stored its part. A shard queue that stays full past
//! `ingest.queue_timeout` answers `RESOURCE_EXHAUSTED` with a retry hint: that is the
//! relay's backpressure. While the data directory is low on space ingest answers
//! `RESOURCE_EXHAUSTED`, and after a store failure `UNAVAILABLE`, before touching any state.
//! The streaming call pipelines a few batches and answers in order.
//!
//! Before any of that, a batch is counted against its publisher's event rate ([`rate`]) and a
//! `Publish` stream against its connection's stream limit; both refusals are
//! `RESOURCE_EXHAUSTED` with a retry hint.

pub mod rate;
pub mod validate;

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::events::EventLog;
use crate::commit::Admission;
use crate::config::{IngestConfig, LimitsConfig};
use crate::debounce::{ApplyReport, ShardHandle, shard_of};
use crate::domain::Clock;
use crate::error::RelayError;
use crate::proto::{self, ingest_server::Ingest};
use crate::security::Caller;
use crate::security::limits::{StreamLimiter, map_stream_error};
use crate::telemetry::Metrics;
use rate::PublisherRate;

/// Batches of one `Publish` stream processed concurrently (acks still go out in order).
const STREAM_PIPELINE: usize = 4;

/// Where accepted events go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// This process's debounce shards (embedded and in-memory stores).
    Shards(Arc<[ShardHandle]>),
    /// The JetStream events stream, read by each partition's owner.
    Log(Arc<EventLog>),
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
    max_message_bytes: usize,
}

impl IngestService {
    /// An ingest feeding `shards`, refusing batches while `admission` says so, and callers
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
            max_message_bytes: edge.max_message_bytes,
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
        let total = match &self.sink {
            Sink::Shards(shards) => {
                let mut per_shard = vec![Vec::new(); shards.len()];
                for event in valid {
                    per_shard[shard_of(event.point.device, shards.len())].push(event);
                }
                let applies = per_shard
                    .into_iter()
                    .zip(shards.iter())
                    .filter(|(events, _)| !events.is_empty())
                    .map(|(events, shard)| {
                        shard.apply(events, received_at, self.limits.queue_timeout)
                    });
                let reports = futures::future::try_join_all(applies).await?;
                reports
                    .iter()
                    .fold(ApplyReport::default(), |sum, r| ApplyReport {
                        accepted: sum.accepted + r.accepted,
                        duplicates: sum.duplicates + r.duplicates,
                    })
            }
            Sink::Log(log) => log.append(&valid).await?,
        };
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
        // The JetStream log stores a batch's events while the next batch's are stored too; a
        // failure in the first would then put a point's earlier event after its later one. So
        // there a stream's batches go one at a time (each still pipelines its own events).
        let pipeline = match self.sink {
            Sink::Shards(_) => STREAM_PIPELINE,
            Sink::Log(_) => 1,
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
                        Err(status) => Err(map_stream_error(status, service.max_message_bytes)),
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
