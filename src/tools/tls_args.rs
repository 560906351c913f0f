//! The TLS flags the command-line tools share: `--tls-ca`, `--tls-cert`, `--tls-key`,
//! `--tls-domain`. Connecting to a relay, they verify it against the CA and present the
//! certificate as the caller's identity; `dno-sink` hosting a push receiver presents the
//! certificate as its server identity and requires the relay's client certificate to chain to
//! the CA.

use std::path::PathBuf;

use anyhow::Context;
use tonic::transport::{Certificate, Endpoint, Identity, ServerTlsConfig};

use crate::security::tls;

/// TLS flags; none given means plaintext.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM CA certificate(s) the peer's certificate must chain to; turns TLS on (the target URL
    /// must then be `https://`).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate this tool presents (its identity).
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name the relay's certificate must carry, when it is not the target URL's host.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_domain: Option<String>,
}

impl TlsArgs {
    /// An endpoint for `url`, with TLS when `--tls-ca` is given.
    pub fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("invalid URL {url:?}"))?;
        let Some(ca) = &self.tls_ca else {
            return Ok(endpoint);
        };
        anyhow::ensure!(
            url.starts_with("https://"),
            "--tls-ca is set but {url:?} is not an https:// URL"
        );
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        let config = tls::client(ca, identity, self.tls_domain.as_deref())?;
        Ok(endpoint.tls_config(config)?)
    }

    /// For a server the tool hosts: its certificate and key, and client certificates
    /// required to chain to `--tls-ca`. `None` without `--tls-cert`.
    pub fn server(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca)
        else {
            return Ok(None);
        };
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(Some(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(read(cert)?, read(key)?))
                .client_ca_root(Certificate::from_pem(read(ca)?)),
        ))
    }
}
