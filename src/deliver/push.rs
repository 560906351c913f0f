//! Push mode: the relay calls a DNO-hosted `AlertReceiver.Deliver` and advances the
//! subscriber's cursor only on the receiver's acknowledgements.
//!
//! One task per push subscriber keeps a session open: it sends alerts from the oldest
//! unacknowledged one, at most `push_window` ahead of the acks, and treats every
//! `DeliveryAck` as cumulative. When the receiver is down or the stream breaks, it retries
//! with exponential backoff (with jitter, capped) and resends everything unacknowledged, so a
//! receiver may see an alert twice, always with the same `alert_id` and sequence.
//!
//! An `https://` receiver must present a certificate that chains to its configured CA and
//! names its host; the relay presents its own certificate as the client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use super::Delivery;
use super::convert::alert_to_proto;
use crate::config::DeliveryConfig;
use crate::error::error_chain;
use crate::log::{Lease, LogError};
use crate::proto::alert_receiver_client::AlertReceiverClient;
use crate::route::SubscriberId;
use crate::security::tls::PushTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_BATCH: usize = 256;

/// Why a push session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The receiver could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The receiver answered the call with an error status.
    #[error("receiver refused the stream: {0}")]
    Rpc(#[from] tonic::Status),
    /// The receiver ended the stream.
    #[error("receiver closed the stream")]
    Closed,
    /// The receiver acknowledged an alert it was never sent.
    #[error("receiver acknowledged sequence {acked}, beyond the last sent {sent}")]
    AckBeyondSent {
        /// What it acknowledged.
        acked: u64,
        /// The last sequence sent.
        sent: u64,
    },
    /// The alert log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl From<tonic::transport::Error> for SessionError {
    fn from(err: tonic::transport::Error) -> Self {
        Self::Connect(error_chain(&err))
    }
}

/// Where a push subscriber's receiver is, and how to verify it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://` or `https://` URL.
    pub endpoint: String,
    /// For `https://`: the CA, the name to verify and the relay's client certificate, read
    /// again for each connection.
    pub tls: Option<PushTls>,
}

/// Pushes `log` to `target` while `lease` lasts (with a single instance: until shutdown).
pub async fn run(
    delivery: Arc<Delivery>,
    log: SubscriberId,
    target: Target,
    config: DeliveryConfig,
    lease: Lease,
) {
    let stop = lease.token().clone();
    let name = delivery.name(log).to_owned();
    let (delivery, target, config_ref, stop_ref) = (&delivery, &target, &config, &stop);
    keep_pushing(
        &name,
        &target.endpoint,
        &config,
        &stop,
        |err| delivery.set_last_error(log, err),
        move || async move {
            let mut connected = false;
            let ended = session(delivery, log, target, config_ref, stop_ref, &mut connected).await;
            (connected, ended)
        },
    )
    .await;
}

/// Runs `session` until it returns `Ok` (its stop) or `shutdown`: after each failure it
/// logs and `report`s the error and waits with exponential backoff (with jitter, capped),
/// starting over after a session that had connected. `session` says whether it connected.
pub async fn keep_pushing<F, Fut>(
    name: &str,
    endpoint: &str,
    config: &DeliveryConfig,
    shutdown: &CancellationToken,
    mut report: impl FnMut(String),
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = (bool, Result<(), SessionError>)>,
{
    let backoff_builder = ExponentialBuilder::new()
        .with_min_delay(config.push_backoff_initial)
        .with_max_delay(config.push_backoff_max)
        .with_jitter()
        .without_max_times();
    let mut backoff = backoff_builder.build();
    tracing::info!(subscriber = %name, %endpoint, "push delivery started");
    while !shutdown.is_cancelled() {
        let (connected, result) = session().await;
        if connected {
            backoff = backoff_builder.build();
        }
        match result {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(subscriber = %name, %endpoint, %err, "push session ended; retrying");
                report(err.to_string());
            }
        }
        let delay = backoff.next().unwrap_or(config.push_backoff_max);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break,
        }
    }
    tracing::info!(subscriber = %name, "push delivery stopped");
}

/// An open `AlertReceiver.Deliver` call: alerts sent into `alerts` (room for the push
/// window, so a send never waits on the receiver), cumulative acks read from `acks`.
pub struct ReceiverSession {
    /// Alerts to send.
    pub alerts: mpsc::Sender<crate::proto::Alert>,
    /// The receiver's acknowledgements.
    pub acks: tonic::Streaming<crate::proto::DeliveryAck>,
}

/// Connects to `target` and opens its `Deliver` stream.
pub async fn open_session(
    target: &Target,
    config: &DeliveryConfig,
) -> Result<ReceiverSession, SessionError> {
    let mut endpoint = Endpoint::from_shared(target.endpoint.clone())?;
    if let Some(tls) = &target.tls {
        endpoint = endpoint.tls_config(tls.current())?;
    }
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(config.keepalive)
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let (alerts, rx) = mpsc::channel(config.push_window);
    let acks = AlertReceiverClient::new(channel)
        .deliver(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(ReceiverSession { alerts, acks })
}

async fn session(
    delivery: &Arc<Delivery>,
    log: SubscriberId,
    target: &Target,
    config: &DeliveryConfig,
    stop: &CancellationToken,
    connected: &mut bool,
) -> Result<(), SessionError> {
    let ReceiverSession {
        alerts: tx,
        mut acks,
    } = open_session(target, config).await?;
    *connected = true;
    let _guard = delivery.connect(log);
    delivery.set_last_error(log, String::new());
    let name = delivery.name(log).to_owned();
    let alerts = delivery.alerts();
    let status = alerts.status(log).await?;
    let mut acked = status.acked;
    // Alerts retention already removed cannot be sent; the first retained one comes next.
    let mut sent = acked.max(status.first_retained.saturating_sub(1));
    let mut reader = alerts.reader(log, sent + 1).await?;
    let window = config.push_window as u64;
    loop {
        let room = window.saturating_sub(sent - acked);
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            ack = acks.message() => {
                let ack = ack?.ok_or(SessionError::Closed)?;
                if ack.sequence > sent {
                    return Err(SessionError::AckBeyondSent { acked: ack.sequence, sent });
                }
                if ack.sequence > acked {
                    let status = alerts.ack(log, ack.sequence, delivery.clock().now()).await?;
                    acked = status.acked;
                    delivery.acked(log, status);
                }
            }
            entries = reader.next(usize::try_from(room).unwrap_or(READ_BATCH).min(READ_BATCH)), if room > 0 => {
                let entries = entries?;
                delivery.sent(log, &entries);
                for entry in &entries {
                    sent = entry.sequence;
                    // Capacity equals the window, so this send never waits on the receiver.
                    tx.send(alert_to_proto(entry, &name)).await.map_err(|_| SessionError::Closed)?;
                }
            }
        }
    }
}
