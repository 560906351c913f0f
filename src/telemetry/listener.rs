//! The `/metrics` listener: HTTP/1.1 serving the Prometheus recorder's text, over TLS with the
//! relay's certificate, or in plaintext where the configuration allows it (see
//! [`Config::metrics_tls`]). With `metrics_tls = "mutual"` the handshake requires a client
//! certificate that chains to `tls.client_ca` and is not revoked by `tls.crl`, and only an
//! identity (`tls.identities`) with role `metrics` or `admin` gets the metrics; any other
//! answers 403. The TLS material is reloaded like the gRPC listener's
//! ([`crate::security::reload`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::config::{Config, MetricsTls};
use crate::security::IdentityMap;
use crate::security::reload::{Hangups, LiveTls};

/// The Prometheus text exposition format.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long a connection may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often histograms are drained into their buckets between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The bound `/metrics` listener and how it serves.
pub struct MetricsListener {
    listener: TcpListener,
    tls: Option<Arc<LiveTls>>,
    /// Who may scrape, when a client certificate is required.
    scrapers: Option<Arc<IdentityMap>>,
    handshake_timeout: Duration,
    /// SIGHUPs, listened for from the bind on, with TLS.
    hangups: Option<Hangups>,
    reload_interval: Duration,
}

impl std::fmt::Debug for MetricsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsListener")
            .field("listener", &self.listener)
            .field("tls", &self.tls)
            .field("scrapers", &self.scrapers)
            .finish()
    }
}

impl MetricsListener {
    /// Loads the TLS files `config` needs for `/metrics` and binds `metrics_listen`, logging
    /// how it serves: a plaintext listener on an address other than loopback (allowed only by
    /// an explicit `metrics_tls = "plaintext"`) is a warning.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let tls = LiveTls::metrics(config)?;
        let hangups = tls.as_ref().map(|_| Hangups::listen());
        let listener = TcpListener::bind(config.metrics_listen).await?;
        let local = listener.local_addr()?;
        let mode = config.metrics_tls();
        match mode {
            MetricsTls::Plaintext if !local.ip().is_loopback() => tracing::warn!(
                metrics = %local,
                "Prometheus metrics at http://{local}/metrics in PLAINTEXT on a non-loopback address (metrics_tls = \"plaintext\"): anyone who reaches it reads every subscriber's backlog, connection state, breaches and latency"
            ),
            MetricsTls::Plaintext => tracing::info!(
                metrics = %local,
                "Prometheus metrics at http://{local}/metrics (plaintext, loopback)"
            ),
            MetricsTls::Server | MetricsTls::Mutual => tracing::info!(
                metrics = %local,
                metrics_tls = mode.as_str(),
                client_certificate_required = mode == MetricsTls::Mutual,
                "Prometheus metrics at https://{local}/metrics"
            ),
        }
        let scrapers =
            (mode == MetricsTls::Mutual).then(|| Arc::new(IdentityMap::from_config(&config.tls)));
        Ok(Self {
            listener,
            tls,
            scrapers,
            handshake_timeout: config.tls.handshake_timeout,
            hangups,
            reload_interval: config.tls.reload_interval,
        })
    }

    /// Serves `handle`'s metrics on every connection, keeps its histograms drained and its TLS
    /// material reloaded, until the task is dropped.
    pub async fn serve(mut self, handle: PrometheusHandle) {
        // Dropped with this task, stopping the watch.
        let _watching = match (&self.tls, self.hangups.take()) {
            (Some(live), Some(hangups)) => {
                let stop = tokio_util::sync::CancellationToken::new();
                let watch = Arc::clone(live).watch(self.reload_interval, hangups, stop.clone());
                tokio::spawn(watch);
                Some(stop.drop_guard())
            }
            _ => None,
        };
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                interval.tick().await;
                upkeep.run_upkeep();
            }
        });
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "metrics listener cannot accept");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let handle = handle.clone();
            let tls = self.tls.as_ref().map(|live| live.acceptor());
            let scrapers = self.scrapers.clone();
            let handshake_timeout = self.handshake_timeout;
            tokio::spawn(async move {
                let Some(tls) = tls else {
                    return serve_connection(stream, handle, Ok(()), peer).await;
                };
                match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let access = match &scrapers {
                            Some(scrapers) => {
                                may_scrape(scrapers, stream.get_ref().1.peer_certificates())
                            }
                            None => Ok(()),
                        };
                        serve_connection(stream, handle, access, peer).await;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, %err, "metrics TLS handshake refused");
                    }
                    Err(_) => tracing::debug!(%peer, "metrics TLS handshake timed out"),
                }
            });
        }
    }
}

/// Whether the client certificate of a connection (verified by the handshake) belongs to an
/// identity that may read `/metrics`; if not, why.
fn may_scrape(
    scrapers: &IdentityMap,
    certificates: Option<&[CertificateDer<'_>]>,
) -> Result<(), String> {
    let leaf = certificates
        .and_then(|certificates| certificates.first())
        .ok_or_else(|| "a client certificate is required".to_owned())?;
    let principal = scrapers
        .resolve_certificate(leaf.as_ref())
        .map_err(|err| err.to_string())?;
    if principal.role.may_scrape() {
        Ok(())
    } else {
        Err(format!(
            "identity {:?} is a {}; /metrics needs a metrics or admin identity",
            principal.identity, principal.role
        ))
    }
}

/// Serves one connection; `access` is whether its client may read the metrics (else why not).
async fn serve_connection<S>(
    stream: S,
    handle: PrometheusHandle,
    access: Result<(), String>,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(reason) = &access {
        tracing::debug!(%peer, %reason, "metrics refused");
    }
    let service = service_fn(move |request: Request<Incoming>| {
        let response = match &access {
            Ok(()) => respond(&handle, &request),
            Err(reason) => forbidden(reason),
        };
        async move { Ok::<_, Infallible>(response) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = served {
        tracing::debug!(%peer, %err, "metrics connection ended with an error");
    }
}

/// 403, saying why.
fn forbidden(reason: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{reason}\n"))));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
}

/// `GET /metrics` (or `HEAD`): the metrics; any other path 404, any other method 405.
fn respond(handle: &PrometheusHandle, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let status = if request.uri().path() != "/metrics" {
        StatusCode::NOT_FOUND
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        let mut response = Response::new(Full::new(Bytes::from(handle.render())));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
        return response;
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
