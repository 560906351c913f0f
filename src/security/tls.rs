//! TLS material: reads the PEM files named in `[tls]` and push settings into tonic's server
//! and client TLS configurations, and into the `/metrics` listener's (all rustls with the ring
//! provider), refusing unreadable or malformed files at start with the file's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{MetricsTls, PushConfig, TlsConfig, TlsMode};
use crate::domain::UtcMillis;
use crate::error::error_chain;

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A required setting is missing.
    #[error("tls: {0} must be set")]
    Missing(&'static str),
    /// The file cannot be read.
    #[error("tls: cannot read {what} {path}: {source}")]
    Read {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no usable PEM of the expected kind.
    #[error("tls: {what} {path}: {reason}")]
    Malformed {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A PEM file's bytes, checked to hold what `what` needs.
#[derive(Debug, Clone)]
struct Pem {
    bytes: Vec<u8>,
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn malformed(what: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Malformed {
        what,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Certificates of a PEM file (at least one).
fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<(Pem, Vec<CertificateDer<'static>>), TlsError> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| malformed(what, path, format!("not PEM certificates: {err}")))?;
    if certs.is_empty() {
        return Err(malformed(what, path, "holds no CERTIFICATE block"));
    }
    for (index, cert) in certs.iter().enumerate() {
        X509Certificate::from_der(cert.as_ref()).map_err(|err| {
            malformed(
                what,
                path,
                format!("certificate {} cannot be parsed: {err}", index + 1),
            )
        })?;
    }
    Ok((Pem { bytes }, certs))
}

fn private_key(path: &Path, what: &'static str) -> Result<Pem, TlsError> {
    let bytes = read(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|err| malformed(what, path, format!("no usable private key: {err}")))?;
    Ok(Pem { bytes })
}

/// When a certificate stops being valid, as milliseconds since the epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<UtcMillis> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(UtcMillis(
        parsed.validity().not_after.timestamp().saturating_mul(1000),
    ))
}

/// The relay's own certificate and key, as loaded.
#[derive(Debug, Clone)]
pub struct OwnIdentity {
    identity: Identity,
    /// When the leaf certificate expires.
    pub expires: Option<UtcMillis>,
}

fn own_identity(tls: &TlsConfig) -> Result<Option<OwnIdentity>, TlsError> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let (cert_pem, chain) = certificates(cert, "tls.cert")?;
    let key_pem = private_key(key, "tls.key")?;
    Ok(Some(OwnIdentity {
        identity: Identity::from_pem(cert_pem.bytes, key_pem.bytes),
        expires: chain.first().and_then(not_after),
    }))
}

/// The server side of mutual TLS: `None` in plaintext mode.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// For `Server::tls_config`.
    pub config: ServerTlsConfig,
    /// The relay's certificate.
    pub own: OwnIdentity,
}

/// Loads the server TLS configuration: the relay's certificate and key, and the CA that client
/// certificates must chain to. A client may connect without a certificate (health checks); its
/// calls to the services are then refused `UNAUTHENTICATED`.
pub fn server(tls: &TlsConfig) -> Result<Option<ServerTls>, TlsError> {
    if tls.mode != Some(TlsMode::Mutual) {
        return Ok(None);
    }
    let own = own_identity(tls)?.ok_or(TlsError::Missing("tls.cert and tls.key"))?;
    let ca_path = tls
        .client_ca
        .as_ref()
        .ok_or(TlsError::Missing("tls.client_ca"))?;
    let (ca, _) = certificates(ca_path, "tls.client_ca")?;
    let config = ServerTlsConfig::new()
        .identity(own.identity.clone())
        .client_ca_root(Certificate::from_pem(ca.bytes))
        .client_auth_optional(true)
        .timeout(tls.handshake_timeout);
    // Building the acceptor once here parses the key and pairs it with the certificate, so a
    // bad key fails now, with the file named, rather than inside the server.
    if let Err(err) = tonic::transport::Server::builder().tls_config(config.clone()) {
        let key = tls.key.as_deref().unwrap_or(Path::new("?"));
        return Err(malformed(
            "tls.key",
            key,
            format!("unusable with tls.cert: {}", error_chain(&err)),
        ));
    }
    Ok(Some(ServerTls { config, own }))
}

/// The rustls configuration of the `/metrics` listener: `None` for `metrics_tls` plaintext.
/// It presents the relay's certificate (`tls.cert`, `tls.key`) and offers HTTP/1.1; with
/// `metrics_tls = "mutual"` the handshake also requires a client certificate chaining to
/// `tls.client_ca` (chain and validity period, verified by rustls).
pub fn metrics_server(
    config: &crate::config::Config,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    let mode = config.metrics_tls();
    if mode == MetricsTls::Plaintext {
        return Ok(None);
    }
    let tls = &config.tls;
    let cert_path = tls.cert.as_ref().ok_or(TlsError::Missing("tls.cert"))?;
    let key_path = tls.key.as_ref().ok_or(TlsError::Missing("tls.key"))?;
    let (_, chain) = certificates(cert_path, "tls.cert")?;
    let key_pem = private_key(key_path, "tls.key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem.bytes)
        .map_err(|err| malformed("tls.key", key_path, format!("no usable private key: {err}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| malformed("tls.cert", cert_path, err.to_string()))?;
    let builder = if mode == MetricsTls::Mutual {
        let ca_path = tls
            .client_ca
            .as_ref()
            .ok_or(TlsError::Missing("tls.client_ca"))?;
        let (_, cas) = certificates(ca_path, "tls.client_ca")?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|err| malformed("tls.client_ca", ca_path, err.to_string()))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| malformed("tls.client_ca", ca_path, err.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|err| {
        malformed(
            "tls.key",
            key_path,
            format!("unusable with tls.cert: {err}"),
        )
    })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}

/// The client TLS configuration for a push receiver at an `https://` endpoint: the receiver's
/// certificate must chain to `push.ca` and name the endpoint's host (or `push.domain`); the
/// relay presents its own certificate when `tls.cert` and `tls.key` are set. `None` for
/// `http://`.
pub fn push_client(
    tls: &TlsConfig,
    push: &PushConfig,
) -> Result<Option<ClientTlsConfig>, TlsError> {
    if !push.endpoint.starts_with("https://") {
        return Ok(None);
    }
    let ca_path = push
        .ca
        .as_ref()
        .ok_or(TlsError::Missing("push.ca for an https:// endpoint"))?;
    let (ca, _) = certificates(ca_path, "push.ca")?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.bytes));
    if let Some(own) = own_identity(tls)? {
        config = config.identity(own.identity);
    }
    if let Some(domain) = &push.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(Some(config))
}

/// Loads every TLS file `config` names (the server's, the `/metrics` listener's, and each push
/// receiver's CA) as `serve` would at start, so `check-config` refuses the same files.
pub fn check_files(config: &crate::config::Config) -> Result<(), TlsError> {
    server(&config.tls)?;
    metrics_server(config)?;
    push_clients(config)?;
    Ok(())
}

/// Each push subscriber's name, endpoint and client TLS configuration.
pub fn push_clients(
    config: &crate::config::Config,
) -> Result<Vec<(String, String, Option<ClientTlsConfig>)>, TlsError> {
    let mut clients = Vec::new();
    for subscriber in &config.routing.subscribers {
        if let Some(push) = &subscriber.push {
            let tls = push_client(&config.tls, push)?;
            clients.push((subscriber.name.clone(), push.endpoint.clone(), tls));
        }
    }
    Ok(clients)
}

/// A client TLS configuration for the command-line tools: trust `ca`, present `cert`/`key`
/// when given, verify the server as `domain` when given (else the target's host).
pub fn client(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    domain: Option<&str>,
) -> Result<ClientTlsConfig, TlsError> {
    let (ca, _) = certificates(ca, "--tls-ca")?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.bytes));
    if let Some((cert, key)) = identity {
        let (cert, _) = certificates(cert, "--tls-cert")?;
        let key = private_key(key, "--tls-key")?;
        config = config.identity(Identity::from_pem(cert.bytes, key.bytes));
    }
    if let Some(domain) = domain {
        config = config.domain_name(domain.to_owned());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mutual(dir: &Path) -> TlsConfig {
        TlsConfig {
            mode: Some(TlsMode::Mutual),
            cert: Some(dir.join("relay.pem")),
            key: Some(dir.join("relay-key.pem")),
            client_ca: Some(dir.join("ca.pem")),
            ..TlsConfig::default()
        }
    }

    fn write_valid(dir: &Path) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["relay.test".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(dir.join("relay.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("relay-key.pem"), key.serialize_pem()).expect("write");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write");
    }

    #[test]
    fn valid_files_load_and_report_their_expiry() {
        let dir = tempfile::tempdir().expect("dir");
        write_valid(dir.path());
        let tls = server(&mutual(dir.path())).expect("loads").expect("mutual");
        assert!(tls.own.expires.is_some());
    }

    #[test]
    fn a_missing_or_malformed_file_is_named_with_the_reason() {
        let dir = tempfile::tempdir().expect("dir");
        write_valid(dir.path());
        std::fs::remove_file(dir.path().join("ca.pem")).expect("remove");
        let err = server(&mutual(dir.path()))
            .expect_err("missing CA")
            .to_string();
        assert!(
            err.contains("tls.client_ca") && err.contains("ca.pem"),
            "{err}"
        );

        std::fs::write(dir.path().join("ca.pem"), "not a certificate").expect("write");
        let err = server(&mutual(dir.path())).expect_err("no PEM").to_string();
        assert!(err.contains("no CERTIFICATE block"), "{err}");

        std::fs::write(
            dir.path().join("relay-key.pem"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        write_valid_ca(dir.path());
        let err = server(&mutual(dir.path()))
            .expect_err("bad key")
            .to_string();
        assert!(err.contains("tls.key"), "{err}");
    }

    fn write_valid_ca(dir: &Path) {
        let cert = std::fs::read(dir.join("relay.pem")).expect("read");
        std::fs::write(dir.join("ca.pem"), cert).expect("write");
    }

    #[test]
    fn plaintext_needs_no_files() {
        assert!(
            server(&TlsConfig::default())
                .expect("nothing to load")
                .is_none()
        );
    }
}
