//! Subscribe mode: `AlertFeed.Subscribe` with cumulative acks and reconnection.

use super::*;
use crate::proto::AckResponse;

/// Subscribe-mode settings.
pub(super) struct Subscription {
    pub(super) target: String,
    pub(super) subscriber: String,
    pub(super) from_sequence: u64,
    pub(super) ack_every: u64,
    pub(super) tls: TlsArgs,
}

/// Resolves when the run should stop: `shutdown`, or the recorder is done.
async fn stopping(shutdown: &CancellationToken, recorder: &Recorder) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = recorder.done() => {}
    }
}

/// Refusals that no retry can cure: wrong or unknown identity, another DNO's feed, an unknown
/// or push-mode subscriber, a bad request.
fn is_permanent(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<Status>().is_some_and(|status| {
            matches!(
                status.code(),
                tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
            )
        })
    })
}

/// Subscribes, reconnecting with exponential backoff, until stopped; gives up on a refusal no
/// retry can cure.
pub(super) async fn subscribe(
    subscription: Subscription,
    recorder: Recorder,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let backoff_policy = ExponentialBuilder::new()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times();
    let mut backoff = backoff_policy.build();
    let mut from_sequence = subscription.from_sequence;
    loop {
        let mut received = 0;
        let ended = session(
            &subscription,
            from_sequence,
            &recorder,
            &shutdown,
            &mut received,
        )
        .await;
        match ended {
            Ok(SessionEnd::Stopped) => return Ok(()),
            Ok(SessionEnd::Closed) => tracing::warn!(received, "the relay ended the subscription"),
            Err(error) if is_permanent(&error) => return Err(error),
            Err(error) => tracing::warn!(
                received,
                error = format!("{error:#}"),
                "subscription failed"
            ),
        }
        if received > 0 {
            backoff = backoff_policy.build();
        }
        from_sequence = 0;
        let delay = backoff.next().unwrap_or(MAX_BACKOFF);
        tracing::info!(
            ?delay,
            target = %subscription.target,
            "reconnecting, resuming from the oldest unacknowledged alert"
        );
        tokio::select! {
            () = stopping(&shutdown, &recorder) => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Why a subscription session ended without error.
enum SessionEnd {
    /// Shutdown or the recorder is done: do not reconnect.
    Stopped,
    /// The relay ended the stream.
    Closed,
}

/// An `Ack` call under way, answered with the reply or the failure, named by its sequence.
type AckCall = futures::future::BoxFuture<'static, anyhow::Result<(u64, AckResponse)>>;

/// Cumulative acknowledgement state of one subscription session. At most one `Ack` is under
/// way at a time, and reading goes on meanwhile: an ack that waits (the relay's cursor store
/// electing a leader) does not hold up the alerts still arriving.
struct Acker {
    client: AlertFeedClient<Channel>,
    subscriber: String,
    /// Highest recorded sequence not yet sent in an ack.
    pending: Option<u64>,
    since_ack: u64,
    /// The ack under way, if one is.
    in_flight: Option<AckCall>,
}

impl Acker {
    /// Flushes the output, then sends an ack for everything recorded, unless one is under
    /// way (the next goes once it is answered: acks are cumulative).
    fn send(&mut self, recorder: &Recorder) {
        let Some(sequence) = self.pending else {
            return;
        };
        // Flushed even while an ack is under way: what was recorded reaches the output.
        if !recorder.flush() || self.in_flight.is_some() {
            return;
        }
        let mut client = self.client.clone();
        let request = AckRequest {
            subscriber: self.subscriber.clone(),
            sequence,
        };
        self.in_flight = Some(Box::pin(async move {
            let reply = client
                .ack(request)
                .await
                .with_context(|| format!("Ack({sequence})"))?
                .into_inner();
            Ok((sequence, reply))
        }));
        self.pending = None;
        self.since_ack = 0;
    }

    /// Waits for the ack under way; never resolves while there is none.
    async fn answered(&mut self) -> anyhow::Result<(u64, AckResponse)> {
        match self.in_flight.as_mut() {
            Some(call) => {
                let answer = call.await;
                self.in_flight = None;
                answer
            }
            None => std::future::pending().await,
        }
    }

    /// Logs an answered ack, and sends the next if alerts were recorded meanwhile.
    fn on_answer(&mut self, sequence: u64, reply: &AckResponse, recorder: &Recorder) {
        tracing::debug!(
            sequence,
            acked_sequence = reply.acked_sequence,
            backlog = reply.backlog,
            "acknowledged"
        );
        self.send(recorder);
    }

    /// Best-effort acknowledgement of everything recorded when a session ends.
    async fn ack_last(&mut self, recorder: &Recorder) {
        let last = async {
            if self.in_flight.is_some() {
                self.answered().await?;
            }
            self.send(recorder);
            if self.in_flight.is_some() {
                self.answered().await?;
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(FINAL_ACK_TIMEOUT, last).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = format!("{error:#}"), "last ack failed"),
            Err(_) => tracing::warn!("last ack timed out"),
        }
    }
}

/// One connection: subscribe, record and acknowledge until the stream ends or the run stops.
async fn session(
    subscription: &Subscription,
    from_sequence: u64,
    recorder: &Recorder,
    shutdown: &CancellationToken,
    received: &mut u64,
) -> anyhow::Result<SessionEnd> {
    let target = &subscription.target;
    let endpoint = subscription.tls.endpoint(target)?;
    let mut client = tokio::select! {
        () = stopping(shutdown, recorder) => return Ok(SessionEnd::Stopped),
        channel = endpoint.connect() => {
            AlertFeedClient::new(channel.map_err(|err| {
                anyhow::anyhow!("connecting to {target}: {}", error_chain(&err))
            })?)
        }
    };
    let request = SubscribeRequest {
        subscriber: subscription.subscriber.clone(),
        from_sequence,
    };
    let mut stream = tokio::select! {
        () = stopping(shutdown, recorder) => return Ok(SessionEnd::Stopped),
        stream = client.subscribe(request) => stream.context("Subscribe")?.into_inner(),
    };
    tracing::info!(%target, from_sequence, "subscribed");
    let mut acker = Acker {
        client,
        subscriber: subscription.subscriber.clone(),
        pending: None,
        since_ack: 0,
        in_flight: None,
    };
    loop {
        let idle = tokio::time::sleep(IDLE_ACK_AFTER);
        tokio::select! {
            biased;
            () = stopping(shutdown, recorder) => {
                acker.ack_last(recorder).await;
                return Ok(SessionEnd::Stopped);
            }
            message = stream.message() => match message {
                Ok(Some(alert)) => {
                    if !recorder.record(&alert).await {
                        acker.ack_last(recorder).await;
                        return Ok(SessionEnd::Stopped);
                    }
                    *received += 1;
                    acker.pending = Some(acker.pending.unwrap_or(0).max(alert.sequence));
                    acker.since_ack += 1;
                    if acker.since_ack >= subscription.ack_every {
                        acker.send(recorder);
                    }
                }
                Ok(None) => {
                    acker.ack_last(recorder).await;
                    return Ok(SessionEnd::Closed);
                }
                Err(status) => {
                    acker.ack_last(recorder).await;
                    return Err(status).context("alert stream");
                }
            },
            answer = acker.answered(), if acker.in_flight.is_some() => {
                let (sequence, reply) = answer?;
                acker.on_answer(sequence, &reply, recorder);
            }
            () = idle, if acker.pending.is_some() => acker.send(recorder),
        }
    }
}
