//! The `AlertFeed` gRPC service: a resumable server stream per subscriber and cumulative acks,
//! served by any instance from the shared alert log.
//!
//! Each `Subscribe` call gets its own task that reads the subscriber's log from the requested
//! sequence into a bounded channel, waiting for new entries once it has caught up. A client
//! that leaves shows as a closed channel and ends the task; nothing is lost, because the
//! cursor only moves on `Ack`, and an ack is answered once it is durable.
//!
//! `WatchSummaries` streams the subscriber's storm summaries (see `crate::summary`), from the
//! summaries task, every interval the request asks for.
//!
//! A log that is briefly unavailable (a JetStream stream or the cursors bucket electing a
//! new leader after a node died) makes `Subscribe` and `Ack` wait, for up to
//! [`crate::log::RIDE_THROUGH`], rather than fail: the DNO sees a slower answer, not an error.
//!
//! A caller identified by certificate may subscribe to, ack and watch the summaries of only
//! its own feed (`PERMISSION_DENIED` otherwise, checked before the name is even looked up),
//! and a connection may hold only so many open streams.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::Delivery;
use super::convert::alert_to_proto;
use crate::error::RelayError;
use crate::log::{AlertReader, LogError, ride_through, ride_through_read};
use crate::proto::{self, alert_feed_server::AlertFeed};
use crate::route::{RoutingTable, SubscriberId};
use crate::runtime::Tasks;
use crate::security::Caller;
use crate::security::limits::{StreamLimiter, StreamPermit};
use crate::summary::Summaries;
use crate::summary::task::SummaryItem;

const READ_BATCH: usize = 256;

/// The service.
#[derive(Debug, Clone)]
pub struct FeedService {
    delivery: Arc<Delivery>,
    buffer: usize,
    shutdown: CancellationToken,
    tasks: Tasks,
    streams: Arc<StreamLimiter>,
    summaries: Summaries,
}

impl FeedService {
    /// A feed over the shared delivery state; `buffer` alerts are queued per stream, and
    /// `streams` bounds open streams per connection; `summaries` serves `WatchSummaries`.
    pub fn new(
        delivery: Arc<Delivery>,
        buffer: usize,
        shutdown: CancellationToken,
        tasks: Tasks,
        streams: Arc<StreamLimiter>,
        summaries: Summaries,
    ) -> Self {
        Self {
            delivery,
            buffer,
            shutdown,
            tasks,
            streams,
            summaries,
        }
    }

    fn log_of(&self, subscriber: &str) -> Result<SubscriberId, RelayError> {
        self.delivery
            .table()
            .id_of(subscriber)
            .ok_or_else(|| RelayError::NotFound(format!("unknown subscriber {subscriber:?}")))
    }
}

#[tonic::async_trait]
impl AlertFeed for FeedService {
    type SubscribeStream = ReceiverStream<Result<proto::Alert, Status>>;
    type WatchSummariesStream = ReceiverStream<SummaryItem>;

    async fn watch_summaries(
        &self,
        request: Request<proto::SummaryRequest>,
    ) -> Result<Response<Self::WatchSummariesStream>, Status> {
        Caller::of(&request)?.may_read(&request.get_ref().subscriber)?;
        let permit = self.streams.acquire(request.remote_addr())?;
        let request = request.into_inner();
        let subscriber = self.log_of(&request.subscriber)?;
        let interval = match request.interval {
            Some(interval) => Some(Duration::try_from(interval).map_err(|_| {
                RelayError::InvalidArgument("interval must not be negative".into())
            })?),
            None => None,
        };
        let summaries = self.summaries.watch(subscriber, interval, permit).await?;
        tracing::info!(subscriber = %request.subscriber, "summary watcher connected");
        Ok(Response::new(ReceiverStream::new(summaries)))
    }

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Caller::of(&request)?.may_read(&request.get_ref().subscriber)?;
        let permit = self.streams.acquire(request.remote_addr())?;
        let request = request.into_inner();
        let log = self.log_of(&request.subscriber)?;
        refuse_push_subscriber(self.delivery.table(), &request.subscriber)?;
        let alerts = self.delivery.alerts();
        // From the cursor when no sequence is given; a resume from a given sequence needs
        // only the retained range, so it does not wait on the cursors (on JetStream a bucket
        // whose leader may be the node that just died, while this DNO's stream is fine).
        let (acked, first_retained, head) = if request.from_sequence == 0 {
            let status = ride_through_read("subscribe: cursors", || alerts.status(log))
                .await
                .map_err(RelayError::from)?;
            (status.acked, status.first_retained, status.head)
        } else {
            let (first_retained, head) = ride_through_read("subscribe: retained alerts", || {
                alerts.retained_reaching(log, request.from_sequence - 1)
            })
            .await
            .map_err(RelayError::from)?;
            (0, first_retained, head)
        };
        let from = start_sequence(request.from_sequence, acked, first_retained, head)
            .map_err(RelayError::from)?;
        let reader = ride_through_read("subscribe: reader", || alerts.reader(log, from))
            .await
            .map_err(RelayError::from)?;
        let (tx, rx) = mpsc::channel(self.buffer);
        tracing::info!(subscriber = %request.subscriber, from, "subscriber connected");
        let task = stream_log(
            Arc::clone(&self.delivery),
            log,
            reader,
            tx,
            self.shutdown.clone(),
            permit,
        );
        self.tasks.spawn("feed-stream", task);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        Caller::of(&request)?.may_read(&request.get_ref().subscriber)?;
        let request = request.into_inner();
        let log = self.log_of(&request.subscriber)?;
        let alerts = self.delivery.alerts();
        let at = self.delivery.clock().now();
        let status = ride_through("ack", || alerts.ack(log, request.sequence, at))
            .await
            .map_err(|err| match err {
                LogError::BeyondHead { requested, head } => RelayError::InvalidArgument(format!(
                    "cannot ack sequence {requested}: the last alert sent is {head}"
                )),
                other => RelayError::from(other),
            })?;
        self.delivery.acked(log, status);
        Ok(Response::new(proto::AckResponse {
            acked_sequence: status.acked,
            backlog: status.backlog(),
        }))
    }
}

/// The first sequence a `Subscribe` for `requested` reads: 0 means the one after the cursor
/// (`acked`); anything no longer retained, or beyond the next to be written, is refused (the
/// caller answers `OUT_OF_RANGE`, never a silent skip).
pub fn start_sequence(
    requested: u64,
    acked: u64,
    first_retained: u64,
    head: u64,
) -> Result<u64, LogError> {
    match requested {
        0 => Ok((acked + 1).max(first_retained)),
        n if n < first_retained => Err(LogError::Gone {
            requested: n,
            first_retained,
        }),
        n if n > head + 1 => Err(LogError::BeyondHead { requested: n, head }),
        n => Ok(n),
    }
}

async fn stream_log(
    delivery: Arc<Delivery>,
    log: SubscriberId,
    mut reader: Box<dyn AlertReader>,
    tx: mpsc::Sender<Result<proto::Alert, Status>>,
    shutdown: CancellationToken,
    _permit: Option<StreamPermit>,
) {
    let _connected = delivery.connect(log);
    let name = delivery.name(log).to_owned();
    loop {
        let batch = tokio::select! {
            batch = reader.next(READ_BATCH) => batch,
            () = tx.closed() => break,
            () = shutdown.cancelled() => return,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                let _ = tx.send(Err(RelayError::from(err).into())).await;
                return;
            }
        };
        delivery.sent(log, &batch);
        for entry in &batch {
            let sent = tokio::select! {
                sent = tx.send(Ok(alert_to_proto(entry, &name))) => sent.is_ok(),
                () = shutdown.cancelled() => return,
            };
            if !sent {
                tracing::info!(subscriber = %name, "subscriber disconnected");
                return;
            }
        }
    }
    tracing::info!(subscriber = %name, "subscriber disconnected");
}

/// `FAILED_PRECONDITION` for a subscriber configured for push: its alerts go to its
/// `AlertReceiver`, never to a `Subscribe` stream.
pub fn refuse_push_subscriber(table: &RoutingTable, subscriber: &str) -> Result<(), Status> {
    match table.id_of(subscriber) {
        Some(id) if table.push_endpoint(id).is_some() => Err(Status::failed_precondition(format!(
            "subscriber {subscriber:?} is configured for push delivery; its alerts go to its AlertReceiver"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::log::RIDE_THROUGH;

    use super::*;

    fn failing_then(
        failures: usize,
        calls: &AtomicUsize,
        error: LogError,
    ) -> impl Future<Output = Result<u64, LogError>> + '_ {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move { if call < failures { Err(error) } else { Ok(7) } }
    }

    /// An attempt that the first `unanswered` calls never answer (a request sent to a stream
    /// without a leader), then answers 7.
    fn unanswered_then(
        unanswered: usize,
        calls: &AtomicUsize,
    ) -> impl Future<Output = Result<u64, LogError>> + '_ {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if call < unanswered {
                std::future::pending::<()>().await;
            }
            Ok(7)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_election_long_unavailability_is_waited_out() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let unavailable = LogError::Unavailable("no leader".into());
        let answer = ride_through("test", || failing_then(5, &calls, unavailable.clone())).await;
        assert_eq!(answer, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert!(started.elapsed() < RIDE_THROUGH);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_attempt_is_abandoned_and_tried_again_sooner_than_a_request_timeout() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let answer = ride_through("test", || unanswered_then(2, &calls)).await;
        assert_eq!(answer, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Abandoned after 2 s, then 50 ms apart, abandoned after 4 s, 100 ms apart: answered
        // 6.15 s in, where waiting out a 5 s request timeout twice would take 10 s.
        assert_eq!(started.elapsed(), Duration::from_millis(6_150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_log_unavailable_for_longer_fails_with_its_last_error() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let unavailable = LogError::Unavailable("no leader".into());
        let answer = ride_through("test", || {
            failing_then(usize::MAX, &calls, unavailable.clone())
        })
        .await;
        assert_eq!(answer, Err(unavailable));
        assert!(started.elapsed() <= RIDE_THROUGH);
        assert!(calls.load(Ordering::SeqCst) > 5);
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_answered_at_once() {
        let calls = AtomicUsize::new(0);
        let beyond = LogError::BeyondHead {
            requested: 9,
            head: 4,
        };
        let answer = ride_through("test", || failing_then(1, &calls, beyond.clone())).await;
        assert_eq!(answer, Err(beyond));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_sends_another_attempt_every_second_while_earlier_ones_wait() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let answer = ride_through_read("test", || unanswered_then(2, &calls)).await;
        assert_eq!(answer, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // The third attempt, sent 2 s in, answers; `ride_through` takes 6.15 s for the same.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_takes_the_first_answer_and_does_not_abandon_a_slow_attempt() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let answer = ride_through_read("test", || {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                // The first answers after 1.5 s; the second, sent 1 s in, would take 5 s.
                let slow = if call == 0 { 1_500 } else { 5_000 };
                tokio::time::sleep(Duration::from_millis(slow)).await;
                Ok::<usize, LogError>(call)
            }
        })
        .await;
        assert_eq!(answer, Ok(0));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(started.elapsed(), Duration::from_millis(1_500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_unavailable_throughout_fails_with_its_last_error() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let unavailable = LogError::Unavailable("no leader".into());
        let answer = ride_through_read("test", || {
            failing_then(usize::MAX, &calls, unavailable.clone())
        })
        .await;
        assert_eq!(answer, Err(unavailable));
        assert_eq!(started.elapsed(), RIDE_THROUGH);
        assert!(calls.load(Ordering::SeqCst) > 5);
    }
}
