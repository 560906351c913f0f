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
//! Alerts are recorded to `--output FILE` (appended) or to stdout, one per line: a JSON object
//! (`--format json`, the default) or an IEC 61968-9 `EndDeviceEvents` XML document
//! (`--format cim`, see [`cim`]). With `--post URL` (which needs `--format cim`) each alert's
//! CIM message is first POSTed to the DNO's OMS (see [`oms`]), retried until it answers 2xx,
//! and only then recorded; an OMS refusal stops the sink (exit status 1) with that alert
//! unacknowledged. An alert is acknowledged only once it has been accepted by the OMS (with
//! `--post`) and its line has been flushed, and so has every earlier alert.

mod cim;
mod oms;
mod receiver;
mod record;
mod subscriber;

pub use oms::Oms;
pub use receiver::serve_receiver;
pub use record::{ReceivedAlerts, RecordOptions, Recorder};
use subscriber::{Subscription, subscribe};

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
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use super::tls_args::TlsArgs;
use crate::domain::UtcMillis;
use crate::error::error_chain;
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
    /// Append one line per alert to FILE instead of printing to stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// How each alert is written: `json`, one JSON object per line (JSON Lines); `cim`, one
    /// IEC 61968-9 `EndDeviceEvents` XML document per line.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// POST each alert's CIM message to the OMS at URL (`http://` or `https://`) before
    /// recording it; needs `--format cim`. Retries connection errors, 5xx and 429; any other
    /// answer but 2xx stops the sink (exit status 1) without acknowledging that alert.
    #[arg(long, value_name = "URL")]
    pub post: Option<String>,
    /// PEM CA certificate(s) the OMS's certificate must chain to, instead of the system's
    /// roots (`--post` to an `https://` URL).
    #[arg(long, value_name = "FILE", requires = "post")]
    pub post_ca: Option<PathBuf>,
    /// Do not print alerts to stdout (when there is no `--output`).
    #[arg(long)]
    pub quiet: bool,
    /// Stop after receiving N alerts.
    #[arg(long, value_name = "N")]
    pub once_count: Option<u64>,
    /// TLS. Subscribe mode: verify the relay against `--tls-ca` and present `--tls-cert` as
    /// the subscriber's identity. Push mode: serve `AlertReceiver` with `--tls-cert` and
    /// require the relay's client certificate to chain to `--tls-ca`.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// How `dno-sink` writes each alert.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (JSON Lines).
    #[default]
    Json,
    /// One IEC 61968-9 `EndDeviceEvents` XML document per line.
    Cim,
}

/// What a sink run received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkSummary {
    /// Alerts recorded.
    pub received: u64,
    /// Highest sequence recorded (0 when none).
    pub last_sequence: u64,
}

/// Runs `outage-relay dno-sink` until `shutdown`, `--once-count` or an output error.
pub async fn run(args: SinkArgs, shutdown: CancellationToken) -> anyhow::Result<SinkSummary> {
    let oms = match &args.post {
        Some(url) => {
            anyhow::ensure!(
                args.format == Format::Cim,
                "--post sends CIM messages: add --format cim"
            );
            tracing::info!(%url, "dno-sink posting CIM messages to the OMS");
            Some(Oms::new(url, args.post_ca.as_deref(), shutdown.clone())?)
        }
        None => None,
    };
    let recorder = Recorder::open(RecordOptions {
        output: args.output.clone(),
        stdout: !args.quiet,
        once_count: args.once_count,
        keep: None,
        format: args.format,
        oms,
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
                    tls: args.tls.clone(),
                },
                recorder.clone(),
                shutdown,
            )
            .await?;
        }
        (None, None) => {
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            tracing::info!(
                listen = %listener.local_addr()?,
                "dno-sink hosting AlertReceiver for pushed alerts"
            );
            serve_receiver(listener, recorder.clone(), shutdown, args.tls.server()?).await?;
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

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
