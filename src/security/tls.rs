//! TLS material: reads the PEM files named in `[tls]` (and the CRLs, PEM or DER) and push
//! settings into rustls server configurations for the gRPC and `/metrics` listeners and
//! tonic's client TLS configuration for push (all rustls with the ring provider), refusing
//! unreadable or malformed files with the file's name. [`crate::security::reload`] calls
//! these again when the files change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};

use crate::config::{MetricsTls, PushConfig, TlsConfig, TlsMode};
use crate::domain::UtcMillis;

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

/// The relay's own certificate and key, as loaded, for tonic's client (push).
#[derive(Debug, Clone)]
struct OwnIdentity {
    identity: Identity,
}

fn own_identity(tls: &TlsConfig) -> Result<Option<OwnIdentity>, TlsError> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let (cert_pem, _) = certificates(cert, "tls.cert")?;
    let key_pem = private_key(key, "tls.key")?;
    Ok(Some(OwnIdentity {
        identity: Identity::from_pem(cert_pem.bytes, key_pem.bytes),
    }))
}

/// When the loaded TLS material stops being usable, each as milliseconds since the epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiry {
    /// The relay's certificate (the leaf of `tls.cert`).
    pub cert: Option<UtcMillis>,
    /// The first of the `tls.client_ca` certificates to expire (when client certificates are
    /// verified).
    pub client_ca: Option<UtcMillis>,
    /// The earliest `nextUpdate` of the `tls.crl` lists (when there are any).
    pub crl_next_update: Option<UtcMillis>,
}

/// A rustls server configuration built from the files, and when its material expires.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// For a `tokio_rustls::TlsAcceptor`.
    pub config: Arc<rustls::ServerConfig>,
    /// When its material expires.
    pub expiry: Expiry,
}

/// Certificate revocation lists of a file: PEM `X509 CRL` blocks, or one DER list.
fn crl_file(
    path: &Path,
) -> Result<
    (
        Vec<CertificateRevocationListDer<'static>>,
        Option<UtcMillis>,
    ),
    TlsError,
> {
    const WHAT: &str = "tls.crl";
    let bytes = read(path, WHAT)?;
    let crls = if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| malformed(WHAT, path, format!("not PEM CRLs: {err}")))?
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    if crls.is_empty() {
        return Err(malformed(WHAT, path, "holds no X509 CRL block"));
    }
    let mut next_update: Option<UtcMillis> = None;
    for (index, crl) in crls.iter().enumerate() {
        let (_, parsed) = CertificateRevocationList::from_der(crl.as_ref()).map_err(|err| {
            malformed(
                WHAT,
                path,
                format!("CRL {} cannot be parsed: {err}", index + 1),
            )
        })?;
        if let Some(next) = parsed.next_update() {
            let next = UtcMillis(next.timestamp().saturating_mul(1000));
            next_update = Some(next_update.map_or(next, |earliest| earliest.min(next)));
        }
    }
    Ok((crls, next_update))
}

/// The verifier of client certificates: chain to `tls.client_ca`, validity period, and when
/// `tls.crl` names lists, not revoked by them (every certificate of the chain below the CA,
/// whose issuer's list must be among them). `optional`: a client may present no certificate.
fn client_verifier(
    tls: &TlsConfig,
    provider: Arc<rustls::crypto::CryptoProvider>,
    optional: bool,
    expiry: &mut Expiry,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let ca_path = tls
        .client_ca
        .as_ref()
        .ok_or(TlsError::Missing("tls.client_ca"))?;
    let (_, cas) = certificates(ca_path, "tls.client_ca")?;
    expiry.client_ca = cas.iter().filter_map(not_after).min();
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|err| malformed("tls.client_ca", ca_path, err.to_string()))?;
    }
    let mut crls = Vec::new();
    for path in &tls.crl {
        let (lists, next_update) = crl_file(path)?;
        crls.extend(lists);
        expiry.crl_next_update = match (expiry.crl_next_update, next_update) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls);
    if optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|err| {
        let (what, path) = match (&err, tls.crl.first()) {
            (rustls::server::VerifierBuilderError::InvalidCrl(_), Some(path)) => {
                ("tls.crl", path.as_path())
            }
            _ => ("tls.client_ca", ca_path.as_path()),
        };
        malformed(what, path, err.to_string())
    })
}

/// A server configuration presenting `tls.cert` with `tls.key` and offering `alpn`.
/// `client_auth`: `None` asks for no client certificate; `Some(optional)` verifies one with
/// [`client_verifier`], and requires it unless `optional`.
fn server_config(
    tls: &TlsConfig,
    client_auth: Option<bool>,
    alpn: &[u8],
) -> Result<Loaded, TlsError> {
    let cert_path = tls.cert.as_ref().ok_or(TlsError::Missing("tls.cert"))?;
    let key_path = tls.key.as_ref().ok_or(TlsError::Missing("tls.key"))?;
    let (_, chain) = certificates(cert_path, "tls.cert")?;
    let key_pem = private_key(key_path, "tls.key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem.bytes)
        .map_err(|err| malformed("tls.key", key_path, format!("no usable private key: {err}")))?;
    let mut expiry = Expiry {
        cert: chain.first().and_then(not_after),
        ..Expiry::default()
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| malformed("tls.cert", cert_path, err.to_string()))?;
    let builder = match client_auth {
        Some(optional) => builder.with_client_cert_verifier(client_verifier(
            tls,
            provider,
            optional,
            &mut expiry,
        )?),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|err| {
        malformed(
            "tls.key",
            key_path,
            format!("unusable with tls.cert: {err}"),
        )
    })?;
    server.alpn_protocols = vec![alpn.to_vec()];
    Ok(Loaded {
        config: Arc::new(server),
        expiry,
    })
}

/// Loads the gRPC listener's TLS configuration (`None` in plaintext mode): the relay's
/// certificate and key, offering HTTP/2, and client certificates verified against
/// `tls.client_ca` and `tls.crl`. A client may connect without a certificate (health checks);
/// its calls to the services are then refused `UNAUTHENTICATED`.
pub fn server(tls: &TlsConfig) -> Result<Option<Loaded>, TlsError> {
    if tls.mode != Some(TlsMode::Mutual) {
        return Ok(None);
    }
    if tls.cert.is_none() || tls.key.is_none() {
        return Err(TlsError::Missing("tls.cert and tls.key"));
    }
    server_config(tls, Some(true), b"h2").map(Some)
}

/// The rustls configuration of the `/metrics` listener: `None` for `metrics_tls` plaintext.
/// It presents the relay's certificate (`tls.cert`, `tls.key`) and offers HTTP/1.1; with
/// `metrics_tls = "mutual"` the handshake also requires a client certificate chaining to
/// `tls.client_ca` and not revoked by `tls.crl` (chain, validity period and revocation,
/// verified by rustls).
pub fn metrics_server(config: &crate::config::Config) -> Result<Option<Loaded>, TlsError> {
    let client_auth = match config.metrics_tls() {
        MetricsTls::Plaintext => return Ok(None),
        MetricsTls::Server => None,
        MetricsTls::Mutual => Some(false),
    };
    server_config(&config.tls, client_auth, b"http/1.1").map(Some)
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

/// A push receiver's client TLS configuration, read from the files again for every new
/// connection to the receiver, so a rotated `tls.cert`/`tls.key` or `push.ca` is used from the
/// next connection on; while the files cannot be used, the last configuration that could is.
#[derive(Debug, Clone)]
pub struct PushTls {
    tls: TlsConfig,
    push: PushConfig,
    last: Arc<parking_lot::Mutex<ClientTlsConfig>>,
}

impl PushTls {
    /// The configuration for a new connection.
    pub fn current(&self) -> ClientTlsConfig {
        match push_client(&self.tls, &self.push) {
            Ok(Some(config)) => {
                self.last.lock().clone_from(&config);
                config
            }
            Ok(None) => self.last.lock().clone(),
            Err(err) => {
                tracing::error!(endpoint = %self.push.endpoint, %err, "push TLS files unusable; connecting with the last usable ones");
                self.last.lock().clone()
            }
        }
    }
}

/// Each push subscriber's name, endpoint and client TLS configuration (`None` for
/// `http://`), loaded once now so that unusable files fail at start.
pub fn push_clients(
    config: &crate::config::Config,
) -> Result<Vec<(String, String, Option<PushTls>)>, TlsError> {
    let mut clients = Vec::new();
    for subscriber in &config.routing.subscribers {
        if let Some(push) = &subscriber.push {
            let tls = push_client(&config.tls, push)?.map(|loaded| PushTls {
                tls: config.tls.clone(),
                push: push.clone(),
                last: Arc::new(parking_lot::Mutex::new(loaded)),
            });
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
        assert!(tls.expiry.cert.is_some() && tls.expiry.client_ca.is_some());
        assert_eq!(tls.config.alpn_protocols, vec![b"h2".to_vec()]);
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

    /// A CA (written as `ca.pem`) with the relay's certificate, and its empty CRL.
    fn write_ca_and_crl(dir: &Path) -> rcgen::CertificateRevocationList {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["relay.test".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        std::fs::write(dir.join("relay.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("relay-key.pem"), key.serialize_pem()).expect("write");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2030, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("CRL")
    }

    #[test]
    fn crls_load_as_pem_or_der_and_report_their_next_update() {
        let dir = tempfile::tempdir().expect("dir");
        let crl = write_ca_and_crl(dir.path());
        let next_update = Some(UtcMillis(1_893_456_000_000));
        let mut tls = mutual(dir.path());
        tls.crl = vec![dir.path().join("ca.crl")];
        std::fs::write(dir.path().join("ca.crl"), crl.pem().expect("PEM")).expect("write");
        let loaded = server(&tls).expect("PEM CRL").expect("mutual");
        assert_eq!(loaded.expiry.crl_next_update, next_update);
        std::fs::write(dir.path().join("ca.crl"), crl.der()).expect("write");
        let loaded = server(&tls).expect("DER CRL").expect("mutual");
        assert_eq!(loaded.expiry.crl_next_update, next_update);

        std::fs::write(dir.path().join("ca.crl"), b"not a CRL").expect("write");
        let err = server(&tls).expect_err("garbage").to_string();
        assert!(err.contains("tls.crl") && err.contains("ca.crl"), "{err}");
        std::fs::remove_file(dir.path().join("ca.crl")).expect("remove");
        let err = server(&tls).expect_err("missing").to_string();
        assert!(err.contains("cannot read tls.crl"), "{err}");
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
