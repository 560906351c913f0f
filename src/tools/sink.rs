//! `outage-relay dno-sink`: the reference DNO receiver.
//!
//! Two modes:
//! - **push** (default): hosts the `AlertReceiver` service that the relay calls; every received
//!   alert is recorded, then acknowledged with a cumulative `DeliveryAck`.
//! - **subscribe** (`--subscribe URL --subscriber NAME`): calls the relay's `AlertFeed.Subscribe`,
//!   records alerts and acknowledges them with `AlertFeed.Ack` every `--ack-every` alerts or
//!   when the stream has been idle for 50 ms; reconnects with exponential backoff, resuming from
//!   the oldest unacknowledged alert.
//!
//! Alerts are recorded as JSON Lines, to `--output FILE` (appended) or to stdout. An alert is
//! acknowledged only once its line has been flushed.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures::{FutureExt as _, StreamExt as _};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::domain::UtcMillis;
use crate::proto::alert_feed_client::AlertFeedClient;
use crate::proto::alert_receiver_server::{AlertReceiver, AlertReceiverServer};
use crate::proto::{AckRequest, Alert, AlertKind, DeliveryAck, SubscribeRequest};

/// Subscribe mode acknowledges pending alerts once the stream has been quiet this long.
const IDLE_ACK_AFTER: Duration = Duration::from_millis(50);
/// Push mode flushes and acknowledges at least every this many alerts of a burst.
const MAX_PUSH_BATCH: usize = 512;
/// Bound on queued `DeliveryAck`s per push stream.
const ACK_QUEUE: usize = 1024;
/// How long a last acknowledgement may take when a subscription ends.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// First and largest reconnection delays in subscribe mode.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Flags of `outage-relay dno-sink`.
#[derive(clap::Args, Debug, Clone)]
pub struct SinkArgs {
    /// Push mode: address to host the `AlertReceiver` service on.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:50061",
        conflicts_with = "subscribe"
    )]
    pub listen: SocketAddr,
    /// Subscribe mode: the relay's gRPC endpoint, e.g. `http://127.0.0.1:50051`.
    #[arg(long, value_name = "URL", requires = "subscriber")]
    pub subscribe: Option<String>,
    /// Subscribe mode: the subscriber name whose alerts to receive.
    #[arg(long, value_name = "NAME", requires = "subscribe")]
    pub subscriber: Option<String>,
    /// Subscribe mode: first sequence wanted on the first connection (0 = oldest
    /// unacknowledged). Reconnections always resume from the oldest unacknowledged.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "subscribe")]
    pub from_sequence: u64,
    /// Subscribe mode: acknowledge at least every N alerts (and whenever the stream is idle
    /// for 50 ms).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub ack_every: u64,
    /// Append one JSON object per alert to FILE (JSON Lines) instead of printing to stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Do not print alerts to stdout (when there is no `--output`).
    #[arg(long)]
    pub quiet: bool,
    /// Stop after receiving N alerts.
    #[arg(long, value_name = "N")]
    pub once_count: Option<u64>,
}

/// What a sink run received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkSummary {
    /// Alerts recorded.
    pub received: u64,
    /// Highest sequence recorded (0 when none).
    pub last_sequence: u64,
}

/// A cloneable handle on every alert a [`Recorder`] recorded, for tests.
#[derive(Debug, Clone, Default)]
pub struct ReceivedAlerts {
    alerts: Arc<Mutex<Vec<Alert>>>,
    notify: Arc<Notify>,
}

impl ReceivedAlerts {
    /// An empty handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every alert received so far, in order of receipt.
    pub fn snapshot(&self) -> Vec<Alert> {
        self.alerts.lock().clone()
    }

    /// Waits until at least `n` alerts have been received and returns them all. Has no
    /// timeout of its own: wrap it in `tokio::time::timeout`.
    pub async fn wait_for(&self, n: usize) -> Vec<Alert> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let alerts = self.alerts.lock();
                if alerts.len() >= n {
                    return alerts.clone();
                }
            }
            notified.await;
        }
    }

    fn push(&self, alert: Alert) {
        self.alerts.lock().push(alert);
        self.notify.notify_waiters();
    }
}

/// How a [`Recorder`] records alerts.
#[derive(Debug, Clone, Default)]
pub struct RecordOptions {
    /// Append JSON lines to this file.
    pub output: Option<PathBuf>,
    /// Print JSON lines to stdout; ignored when `output` is set.
    pub stdout: bool,
    /// Stop accepting alerts after this many.
    pub once_count: Option<u64>,
    /// Also keep every recorded alert in this handle.
    pub keep: Option<ReceivedAlerts>,
}

/// Records received alerts (JSON Lines, counts, optional in-memory copy). Cheap to clone; all
/// clones share one output.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<RecorderState>,
    keep: Option<ReceivedAlerts>,
    once_count: Option<u64>,
    /// Cancelled once no more alerts will be accepted: `once_count` reached, or output failed.
    done: CancellationToken,
}

struct RecorderState {
    writer: Option<Box<dyn Write + Send>>,
    summary: SinkSummary,
    failure: Option<String>,
}

impl Recorder {
    /// Opens the output (creating or appending to the file) and returns a recorder.
    pub fn open(options: RecordOptions) -> anyhow::Result<Self> {
        let writer: Option<Box<dyn Write + Send>> = match &options.output {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                Some(Box::new(BufWriter::new(file)))
            }
            None if options.stdout => Some(Box::new(BufWriter::new(io::stdout()))),
            None => None,
        };
        let done = CancellationToken::new();
        if options.once_count == Some(0) {
            done.cancel();
        }
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(RecorderState {
                    writer,
                    summary: SinkSummary::default(),
                    failure: None,
                }),
                keep: options.keep,
                once_count: options.once_count,
                done,
            }),
        })
    }

    /// What has been recorded so far.
    pub fn summary(&self) -> SinkSummary {
        self.shared.state.lock().summary
    }

    /// Records one alert (buffered; see [`Self::flush`]). False when the recorder no longer
    /// accepts alerts: `once_count` was reached or the output failed.
    fn record(&self, alert: &Alert) -> bool {
        let mut state = self.shared.state.lock();
        if self.shared.done.is_cancelled() {
            return false;
        }
        if let Some(writer) = state.writer.as_mut() {
            let written = json_line(alert, UtcMillis::system_now())
                .map_err(io::Error::from)
                .and_then(|line| {
                    writer.write_all(line.as_bytes())?;
                    writer.write_all(b"\n")
                });
            if let Err(error) = written {
                self.fail(&mut state, &error);
                return false;
            }
        }
        state.summary.received += 1;
        state.summary.last_sequence = state.summary.last_sequence.max(alert.sequence);
        if let Some(keep) = &self.shared.keep {
            keep.push(alert.clone());
        }
        if self
            .shared
            .once_count
            .is_some_and(|limit| state.summary.received >= limit)
        {
            self.shared.done.cancel();
        }
        true
    }

    /// Flushes recorded lines to the output. False when the output failed.
    fn flush(&self) -> bool {
        let mut state = self.shared.state.lock();
        if state.failure.is_some() {
            return false;
        }
        let flushed = state
            .writer
            .as_mut()
            .map_or(Ok(()), |writer| writer.flush());
        match flushed {
            Ok(()) => true,
            Err(error) => {
                self.fail(&mut state, &error);
                false
            }
        }
    }

    fn fail(&self, state: &mut RecorderState, error: &io::Error) {
        tracing::error!(%error, "cannot write alerts; the sink stops");
        state.failure = Some(error.to_string());
        state.writer = None;
        self.shared.done.cancel();
    }

    fn failed(&self) -> bool {
        self.shared.state.lock().failure.is_some()
    }

    /// Resolves once the recorder accepts no more alerts.
    async fn done(&self) {
        self.shared.done.cancelled().await;
    }

    /// Flushes and returns the summary, or the output error if writing failed.
    fn finish(&self) -> anyhow::Result<SinkSummary> {
        self.flush();
        let state = self.shared.state.lock();
        match &state.failure {
            Some(failure) => Err(anyhow::anyhow!("writing alerts failed: {failure}")),
            None => Ok(state.summary),
        }
    }
}

/// One recorded alert, as written on its JSON line.
#[derive(serde::Serialize)]
struct AlertLine<'a> {
    alert_id: &'a str,
    sequence: u64,
    kind: &'static str,
    device_id: &'a str,
    phase: i32,
    mpan_core: &'a str,
    distributor_id: u32,
    gsp_group: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restored_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    due_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    emitted_at: Option<String>,
    learned_late: bool,
    outage_duration_ms: u64,
    subscriber: &'a str,
    received_at: String,
}

/// The alert's JSON line (without the newline); unset timestamps are omitted.
fn json_line(alert: &Alert, received_at: UtcMillis) -> serde_json::Result<String> {
    let rfc3339 = |ts: Option<&prost_types::Timestamp>| {
        ts.and_then(UtcMillis::from_proto).map(|at| at.to_string())
    };
    serde_json::to_string(&AlertLine {
        alert_id: &alert.alert_id,
        sequence: alert.sequence,
        kind: AlertKind::try_from(alert.kind)
            .map_or("ALERT_KIND_UNSPECIFIED", |kind| kind.as_str_name()),
        device_id: &alert.device_id,
        phase: alert.phase,
        mpan_core: &alert.mpan_core,
        distributor_id: alert.distributor_id,
        gsp_group: &alert.gsp_group,
        lost_at: rfc3339(alert.lost_at.as_ref()),
        restored_at: rfc3339(alert.restored_at.as_ref()),
        due_at: rfc3339(alert.due_at.as_ref()),
        deadline: rfc3339(alert.deadline.as_ref()),
        emitted_at: rfc3339(alert.emitted_at.as_ref()),
        learned_late: alert.learned_late,
        outage_duration_ms: alert.outage_duration_ms,
        subscriber: &alert.subscriber,
        received_at: received_at.to_string(),
    })
}

/// Runs `outage-relay dno-sink` until `shutdown`, `--once-count` or an output error.
pub async fn run(args: SinkArgs, shutdown: CancellationToken) -> anyhow::Result<SinkSummary> {
    let recorder = Recorder::open(RecordOptions {
        output: args.output.clone(),
        stdout: !args.quiet,
        once_count: args.once_count,
        keep: None,
    })?;
    match (args.subscribe, args.subscriber) {
        (Some(target), Some(subscriber)) => {
            tracing::info!(
                %target,
                %subscriber,
                from_sequence = args.from_sequence,
                "dno-sink subscribing to the relay's alert feed"
            );
            subscribe(
                Subscription {
                    target,
                    subscriber,
                    from_sequence: args.from_sequence,
                    ack_every: args.ack_every,
                },
                recorder.clone(),
                shutdown,
            )
            .await;
        }
        (None, None) => {
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            tracing::info!(
                listen = %listener.local_addr()?,
                "dno-sink hosting AlertReceiver for pushed alerts"
            );
            serve_receiver(listener, recorder.clone(), shutdown).await?;
        }
        _ => anyhow::bail!("--subscribe and --subscriber go together"),
    }
    let summary = recorder.finish()?;
    tracing::info!(
        received = summary.received,
        last_sequence = summary.last_sequence,
        "dno-sink stopped"
    );
    Ok(summary)
}

/// Hosts `AlertReceiver` on `listener`, recording into `recorder`, until `shutdown` is
/// cancelled or the recorder accepts no more alerts; open streams are then closed.
pub async fn serve_receiver(
    listener: TcpListener,
    recorder: Recorder,
    shutdown: CancellationToken,
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
    tonic::transport::Server::builder()
        .add_service(AlertReceiverServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
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
        let end = take_burst(first, &mut alerts, &recorder, &mut recorded);
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

/// Records `first` and every further alert that is ready without waiting.
fn take_burst(
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
                if !recorder.record(&alert) {
                    return BurstEnd::Stopped;
                }
                recorded.push(alert.sequence);
            }
        }
        if recorder.shared.done.is_cancelled() {
            return BurstEnd::Stopped;
        }
        if recorded.len() >= MAX_PUSH_BATCH {
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

/// Subscribe-mode settings.
struct Subscription {
    target: String,
    subscriber: String,
    from_sequence: u64,
    ack_every: u64,
}

/// Resolves when the run should stop: `shutdown`, or the recorder is done.
async fn stopping(shutdown: &CancellationToken, recorder: &Recorder) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = recorder.done() => {}
    }
}

/// Subscribes, reconnecting with exponential backoff, until stopped.
async fn subscribe(subscription: Subscription, recorder: Recorder, shutdown: CancellationToken) {
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
            Ok(SessionEnd::Stopped) => return,
            Ok(SessionEnd::Closed) => tracing::warn!(received, "the relay ended the subscription"),
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
            () = stopping(&shutdown, &recorder) => return,
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
    let mut client = tokio::select! {
        () = stopping(shutdown, recorder) => return Ok(SessionEnd::Stopped),
        client = AlertFeedClient::connect(target.clone()) => {
            client.with_context(|| format!("connecting to {target}"))?
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
                    if !recorder.record(&alert) {
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

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
