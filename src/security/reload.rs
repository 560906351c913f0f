//! TLS material that changes while the relay runs: the DCC's PKI rotates the relay's
//! certificate and revokes client certificates, so `tls.cert`, `tls.key`, `tls.client_ca` and
//! `tls.crl` are reloaded without a restart.
//!
//! A [`LiveTls`] holds a listener's current rustls server configuration; every new connection
//! takes the one current when it is accepted, so new handshakes use new material while
//! established connections (and their streams) keep the session they have. [`LiveTls::watch`]
//! checks the files' contents every `tls.reload_interval` and reloads when they changed, and
//! reloads on SIGHUP whether or not they did. A reload that fails (a missing, malformed or
//! mismatched file, a half-written replacement) keeps the material in use, logs an error,
//! counts `outage_relay_tls_reloads_total{result="failed"}` and sets
//! `outage_relay_tls_reload_failing` until a reload succeeds; it is tried again when the files
//! change again (or on the next SIGHUP). Each check also refreshes the expiry gauges.
//!
//! Each configuration has its own session-resumption state, so a session resumed after a
//! reload was verified against the new CA and CRLs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::config::TlsConfig;
use crate::domain::UtcMillis;
use crate::security::tls::{Expiry, Loaded, TlsError};
use crate::telemetry;

/// Builds a listener's configuration from the files.
type Load = Box<dyn Fn() -> Result<Option<Loaded>, TlsError> + Send + Sync>;

/// A listener's TLS configuration, replaced when its files change.
pub struct LiveTls {
    /// `grpc` or `metrics`: the `listener` label of the reload counter.
    listener: &'static str,
    files: Vec<PathBuf>,
    load: Load,
    current: ArcSwap<Loaded>,
    /// The files' fingerprint at the last load attempt, successful or not.
    seen: Mutex<u64>,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls")
            .field("listener", &self.listener)
            .field("files", &self.files)
            .field("expiry", &self.current.load().expiry)
            .finish_non_exhaustive()
    }
}

impl LiveTls {
    /// Loads the gRPC listener's configuration (`None` in plaintext mode); a file that cannot
    /// be used fails here, at start.
    pub fn grpc(tls: &TlsConfig) -> Result<Option<Arc<Self>>, TlsError> {
        let settings = tls.clone();
        Self::new("grpc", tls, Box::new(move || super::tls::server(&settings)))
    }

    /// Loads the `/metrics` listener's configuration (`None` for `metrics_tls` plaintext).
    pub fn metrics(config: &crate::config::Config) -> Result<Option<Arc<Self>>, TlsError> {
        let settings = config.clone();
        Self::new(
            "metrics",
            &config.tls,
            Box::new(move || super::tls::metrics_server(&settings)),
        )
    }

    fn new(
        listener: &'static str,
        tls: &TlsConfig,
        load: Load,
    ) -> Result<Option<Arc<Self>>, TlsError> {
        let files: Vec<PathBuf> = [&tls.cert, &tls.key, &tls.client_ca]
            .into_iter()
            .flatten()
            .chain(&tls.crl)
            .cloned()
            .collect();
        let seen = fingerprint(&files);
        let Some(loaded) = load()? else {
            return Ok(None);
        };
        let live = Self {
            listener,
            files,
            load,
            current: ArcSwap::from_pointee(loaded),
            seen: Mutex::new(seen),
        };
        Ok(Some(Arc::new(live)))
    }

    /// An acceptor with the current configuration, for one new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.load().config))
    }

    /// When the material in use expires.
    pub fn expiry(&self) -> Expiry {
        self.current.load().expiry
    }

    /// Reloads when the files changed since the last attempt, or always when `forced`.
    fn reload(&self, forced: bool) {
        let now = fingerprint(&self.files);
        {
            let mut seen = self.seen.lock();
            if !forced && *seen == now {
                return;
            }
            *seen = now;
        }
        let listener = self.listener;
        match (self.load)() {
            Ok(Some(loaded)) => {
                let expiry = loaded.expiry;
                self.current.store(Arc::new(loaded));
                telemetry::tls_reloaded(listener, true);
                tracing::info!(
                    listener,
                    cert_expires = ?expiry.cert.map(|at| at.to_string()),
                    crl_next_update = ?expiry.crl_next_update.map(|at| at.to_string()),
                    "TLS material reloaded; new connections use it"
                );
            }
            // The settings that made this listener use TLS do not change.
            Ok(None) => {}
            Err(err) => {
                telemetry::tls_reloaded(listener, false);
                tracing::error!(listener, %err, "TLS reload failed; the material in use stays");
            }
        }
    }

    /// Sets the expiry gauges from the material in use, as seconds from now.
    fn publish_expiry(&self) {
        telemetry::tls_expiry(&self.expiry(), UtcMillis::system_now());
    }

    /// Publishes the expiry gauges, then reloads when the files change (checked every
    /// `interval`) and on every SIGHUP received on `hangups`, until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        mut hangups: Hangups,
        stop: CancellationToken,
    ) {
        // Published here rather than at load: the metrics listener loads its material before
        // the Prometheus recorder is installed.
        telemetry::tls_loaded(self.listener);
        self.publish_expiry();
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => false,
                () = hangups.recv() => true,
            };
            if forced {
                tracing::info!(listener = self.listener, "SIGHUP: reloading TLS material");
            }
            let live = Arc::clone(&self);
            // File reads and key parsing block; keep them off the runtime's workers.
            if let Err(err) = tokio::task::spawn_blocking(move || live.reload(forced)).await {
                tracing::error!(%err, "TLS reload task failed");
            }
            self.publish_expiry();
        }
    }
}

/// A hash of the files' contents (a file that cannot be read hashes as its error), so a
/// change of any byte is seen whatever happened to its modification time.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for file in files {
        hasher.update(file.as_os_str().as_encoded_bytes());
        match std::fs::read(file) {
            Ok(bytes) => {
                hasher.update(&(bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
            Err(err) => hasher.update(err.kind().to_string().as_bytes()),
        }
    }
    hasher.digest()
}

/// SIGHUPs received, registered when made so that a SIGHUP arriving once the relay serves
/// reloads rather than ends the process.
#[derive(Debug)]
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts listening for SIGHUP (logging and never firing when that is impossible).
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|err| tracing::error!(%err, "cannot listen for SIGHUP"))
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Logs each SIGHUP as having nothing to reload (plaintext), until `stop`: a reload
    /// (`systemctl reload`) must not end the process.
    pub async fn ignore(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.recv() => tracing::info!("SIGHUP: no TLS material to reload (plaintext)"),
            }
        }
    }

    /// The next SIGHUP.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Connections completed handshakes waiting for the gRPC server.
const HANDSHAKEN_QUEUE: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// TLS connections for `tonic::transport::Server::serve_with_incoming`: every connection
/// `tcp` accepts is handshaken in its own task (so a slow client holds up no other), bounded
/// by `handshake_timeout`, with the configuration current when it was accepted; those that
/// complete are yielded, those that fail are logged and dropped. Accepting stops at `stop`.
pub fn tls_incoming(
    mut tcp: TcpIncoming,
    live: Arc<LiveTls>,
    handshake_timeout: Duration,
    stop: CancellationToken,
) -> impl tokio_stream::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (handshaken, incoming) = tokio::sync::mpsc::channel(HANDSHAKEN_QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                () = handshaken.closed() => return,
                accepted = tcp.next() => accepted,
            };
            let stream = match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(err)) => {
                    tracing::warn!(%err, "gRPC listener cannot accept");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                None => return,
            };
            let peer = stream.peer_addr().ok();
            let acceptor = live.acceptor();
            let handshaken = handshaken.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = handshaken.send(stream).await;
                    }
                    Ok(Err(err)) => tracing::debug!(?peer, %err, "TLS handshake refused"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(incoming).map(Ok)
}
