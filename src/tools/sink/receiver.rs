//! Push mode: the `AlertReceiver` service the relay calls, over TLS with the relay's client
//! certificate required when the sink is given `--tls-cert`.

use super::*;

/// Hosts `AlertReceiver` on `listener`, recording into `recorder`, until `shutdown` is
/// cancelled or the recorder accepts no more alerts; open streams are then closed.
pub async fn serve_receiver(
    listener: TcpListener,
    recorder: Recorder,
    shutdown: CancellationToken,
    tls: Option<ServerTlsConfig>,
) -> anyhow::Result<()> {
    let stop = shutdown.child_token();
    let signal = {
        let stop = stop.clone();
        let recorder = recorder.clone();
        async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = recorder.done() => stop.cancel(),
            }
        }
    };
    let service = ReceiverService { recorder, stop };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(AlertReceiverServer::new(service))
        .serve_with_incoming_shutdown(
            // Nagle off: each DeliveryAck must leave at once, not wait for more data.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )
        .await
        .context("AlertReceiver server failed")
}

/// The push-mode `AlertReceiver` implementation.
struct ReceiverService {
    recorder: Recorder,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl AlertReceiver for ReceiverService {
    type DeliverStream = ReceiverStream<Result<DeliveryAck, Status>>;

    async fn deliver(
        &self,
        request: Request<Streaming<Alert>>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        tracing::info!(peer = ?request.remote_addr(), "relay opened a Deliver stream");
        let (acks, rx) = mpsc::channel(ACK_QUEUE);
        tokio::spawn(pump(
            request.into_inner(),
            self.recorder.clone(),
            acks,
            self.stop.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// How a burst of pushed alerts ended.
enum BurstEnd {
    /// Nothing more is ready now; wait for the next alert.
    More,
    /// The relay closed its side of the stream.
    Closed,
    /// The stream failed.
    Failed(Status),
    /// The recorder accepts no more alerts.
    Stopped,
}

/// Reads one Deliver stream: records each burst of ready alerts, flushes, then acks each.
async fn pump(
    mut alerts: Streaming<Alert>,
    recorder: Recorder,
    acks: mpsc::Sender<Result<DeliveryAck, Status>>,
    stop: CancellationToken,
) {
    let mut recorded = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            next = alerts.next() => next,
        };
        let end = take_burst(first, &mut alerts, &recorder, &mut recorded).await;
        if !recorder.flush() {
            recorded.clear();
        }
        for sequence in recorded.drain(..) {
            if !send_ack(&acks, Ok(DeliveryAck { sequence }), &stop).await {
                return;
            }
        }
        match end {
            BurstEnd::More => {}
            BurstEnd::Closed => {
                tracing::info!("relay closed its Deliver stream");
                return;
            }
            BurstEnd::Failed(status) => {
                tracing::warn!(%status, "Deliver stream failed");
                return;
            }
            BurstEnd::Stopped => {
                if recorder.failed() {
                    let status = Status::internal("the sink cannot record alerts");
                    send_ack(&acks, Err(status), &stop).await;
                }
                return;
            }
        }
    }
}

/// Records `first` and every further alert that is ready without waiting (for the relay;
/// recording itself waits for the OMS with `--post`).
async fn take_burst(
    first: Option<Result<Alert, Status>>,
    alerts: &mut Streaming<Alert>,
    recorder: &Recorder,
    recorded: &mut Vec<u64>,
) -> BurstEnd {
    let mut next = first;
    loop {
        match next {
            None => return BurstEnd::Closed,
            Some(Err(status)) => return BurstEnd::Failed(status),
            Some(Ok(alert)) => {
                if !recorder.record(&alert).await {
                    return BurstEnd::Stopped;
                }
                recorded.push(alert.sequence);
            }
        }
        if recorder.is_done() {
            return BurstEnd::Stopped;
        }
        // With an OMS, each alert took a round trip to it: acknowledge it at once.
        if recorded.len() >= MAX_PUSH_BATCH || recorder.posts() {
            return BurstEnd::More;
        }
        match alerts.next().now_or_never() {
            Some(item) => next = item,
            None => return BurstEnd::More,
        }
    }
}

/// Queues one response message; waits for room only while not stopping. False when the
/// stream is gone or the sink is stopping.
async fn send_ack(
    acks: &mpsc::Sender<Result<DeliveryAck, Status>>,
    message: Result<DeliveryAck, Status>,
    stop: &CancellationToken,
) -> bool {
    match acks.try_send(message) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(message)) => tokio::select! {
            sent = acks.send(message) => sent.is_ok(),
            () = stop.cancelled() => false,
        },
    }
}
