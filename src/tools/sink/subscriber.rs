//! Subscribe mode: `AlertFeed.Subscribe` with cumulative acks and reconnection.

use super::*;

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

/// Cumulative acknowledgement state of one subscription session.
struct Acker {
    client: AlertFeedClient<Channel>,
    subscriber: String,
    /// Highest recorded sequence not yet acknowledged.
    pending: Option<u64>,
    since_ack: u64,
}

impl Acker {
    /// Flushes the output, then acknowledges everything recorded.
    async fn ack(&mut self, recorder: &Recorder) -> anyhow::Result<()> {
        let Some(sequence) = self.pending else {
            return Ok(());
        };
        if !recorder.flush() {
            return Ok(());
        }
        let reply = self
            .client
            .ack(AckRequest {
                subscriber: self.subscriber.clone(),
                sequence,
            })
            .await
            .with_context(|| format!("Ack({sequence})"))?
            .into_inner();
        tracing::debug!(
            sequence,
            acked_sequence = reply.acked_sequence,
            backlog = reply.backlog,
            "acknowledged"
        );
        self.pending = None;
        self.since_ack = 0;
        Ok(())
    }

    /// Best-effort acknowledgement when a session ends.
    async fn ack_last(&mut self, recorder: &Recorder) {
        match tokio::time::timeout(FINAL_ACK_TIMEOUT, self.ack(recorder)).await {
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
                        acker.ack(recorder).await?;
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
            () = idle, if acker.pending.is_some() => acker.ack(recorder).await?,
        }
    }
}
