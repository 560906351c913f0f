//! `--post`: sends each alert's CIM message to the DNO's outage management system (OMS) with
//! an HTTP POST (`Content-Type: application/xml`), over plain HTTP or HTTPS (verified against
//! `--post-ca`, or the system's roots without it).
//!
//! Connection errors, timeouts, 5xx and 429 are retried with capped exponential backoff (at
//! least the `Retry-After` seconds when the OMS gives them); any other answer but 2xx is a
//! refusal no retry can cure.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::*;

/// How long one POST, its answer included, may take before it is retried.
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of a refusal's body is kept for the log.
const MAX_REASON_BYTES: usize = 512;
/// The largest answer body read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A client POSTing CIM messages to one OMS endpoint. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Oms {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    stop: CancellationToken,
}

/// How a POST ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Posted {
    /// The OMS answered 2xx.
    Accepted,
    /// The OMS answered with a status no retry can cure; the status and the start of its body.
    Refused(String),
    /// The run is stopping; the message may or may not have reached the OMS.
    Stopped,
}

/// Why one attempt should be retried, and the earliest retry the OMS asked for.
struct Retry {
    reason: String,
    after: Option<Duration>,
}

impl Oms {
    /// A client for `url` (`http://` or `https://`); retries give up when `stop` is cancelled.
    pub fn new(url: &str, ca: Option<&Path>, stop: CancellationToken) -> anyhow::Result<Self> {
        let url: Uri = url
            .parse()
            .with_context(|| format!("--post: invalid URL {url:?}"))?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => anyhow::bail!("--post: {url} is not an http:// or https:// URL"),
        };
        anyhow::ensure!(
            https || ca.is_none(),
            "--post-ca is set but {url} is not an https:// URL"
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = HttpsConnectorBuilder::new();
        let builder = match ca {
            None if https => builder
                .with_provider_and_native_roots(provider)
                .context("--post: loading the system's CA certificates")?,
            _ => {
                let mut roots = rustls::RootCertStore::empty();
                if let Some(ca) = ca {
                    let pem = std::fs::read(ca)
                        .with_context(|| format!("reading --post-ca {}", ca.display()))?;
                    for cert in CertificateDer::pem_slice_iter(&pem) {
                        let cert = cert.with_context(|| format!("--post-ca {}", ca.display()))?;
                        roots
                            .add(cert)
                            .with_context(|| format!("--post-ca {}", ca.display()))?;
                    }
                    anyhow::ensure!(
                        !roots.is_empty(),
                        "--post-ca {} holds no CERTIFICATE block",
                        ca.display()
                    );
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.with_tls_config(config)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url,
            stop,
        })
    }

    /// POSTs `message`, retrying until the OMS accepts or refuses it or the run stops.
    pub(super) async fn post(&self, alert_id: &str, sequence: u64, message: &str) -> Posted {
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(MIN_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_jitter()
            .without_max_times()
            .build();
        let body = Bytes::copy_from_slice(message.as_bytes());
        loop {
            let attempt = tokio::select! {
                () = self.stop.cancelled() => return Posted::Stopped,
                attempt = tokio::time::timeout(POST_TIMEOUT, self.attempt(body.clone())) => attempt,
            };
            let retry = match attempt {
                Ok(Ok(())) => return Posted::Accepted,
                Ok(Err(Attempt::Refused(reason))) => return Posted::Refused(reason),
                Ok(Err(Attempt::Retry(retry))) => retry,
                Err(_) => Retry {
                    reason: format!("no answer within {POST_TIMEOUT:?}"),
                    after: None,
                },
            };
            let delay = backoff
                .next()
                .unwrap_or(MAX_BACKOFF)
                .max(retry.after.unwrap_or_default());
            tracing::warn!(
                alert_id,
                sequence,
                url = %self.url,
                reason = %retry.reason,
                ?delay,
                "the OMS did not take the alert; retrying"
            );
            tokio::select! {
                () = self.stop.cancelled() => return Posted::Stopped,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One POST, its answer read.
    async fn attempt(&self, body: Bytes) -> Result<(), Attempt> {
        let request = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/xml")
            .body(Full::new(body))
            .map_err(|err| Attempt::Refused(format!("cannot build the request: {err}")))?;
        let response = self.client.request(request).await.map_err(|err| {
            Attempt::Retry(Retry {
                reason: error_chain(&err),
                after: None,
            })
        })?;
        let status = response.status();
        let after = retry_after(response.headers().get(RETRY_AFTER));
        // Read the answer so that the connection can be reused; its start explains a refusal.
        let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        let reason = describe(status, &answer);
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(Attempt::Retry(Retry { reason, after }))
        } else {
            Err(Attempt::Refused(reason))
        }
    }
}

/// How one attempt failed.
enum Attempt {
    Retry(Retry),
    Refused(String),
}

/// `Retry-After` in its delta-seconds form, capped at [`MAX_RETRY_AFTER`]; an HTTP date is
/// ignored.
fn retry_after(value: Option<&hyper::header::HeaderValue>) -> Option<Duration> {
    let seconds: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The status and the start of the answer's body, for the log.
fn describe(status: StatusCode, answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(&answer[..answer.len().min(MAX_REASON_BYTES)]);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}
