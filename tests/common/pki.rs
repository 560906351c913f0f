//! Certificates made at test time (rcgen): a CA, the relay's server certificate, client
//! certificates with chosen names, an expired one and one from a CA nobody trusts, written as
//! PEM files, and revocation lists revoking chosen ones, plus TLS channels to a relay and HTTPS requests to its metrics listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The name the relay's test certificate carries; clients verify it.
pub const SERVER_NAME: &str = "relay.test";

/// A PEM certificate and key on disk.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

impl PemPair {
    /// The pair as a tonic identity.
    pub fn identity(&self) -> Identity {
        Identity::from_pem(
            std::fs::read(&self.cert).expect("read cert"),
            std::fs::read(&self.key).expect("read key"),
        )
    }
}

/// A test certificate authority writing into `dir`.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Pki {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).expect("write CA");
        Self {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    fn issue(&self, stem: &str, params: CertificateParams) -> PemPair {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let pair = PemPair {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }

    /// The relay's certificate: [`SERVER_NAME`], usable as server and as push client.
    pub fn server(&self, stem: &str) -> PemPair {
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()]).expect("SAN");
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(stem, params)
    }

    /// A server certificate for the address `127.0.0.1` (an IP SAN), for a test HTTPS server
    /// that clients reach by address.
    pub fn loopback_server(&self, stem: &str) -> PemPair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no DNS SANs");
        params.subject_alt_names = vec![SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]))];
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(stem, params)
    }

    /// Like [`Self::server`], valid until `year`-`month`-`day`.
    pub fn server_until(&self, stem: &str, year: i32, month: u8, day: u8) -> PemPair {
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()]).expect("SAN");
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_after = date_time_ymd(year, month, day);
        self.issue(stem, params)
    }

    /// A client certificate whose URI SAN is `uri` (e.g. `spiffe://dno.test/ukpn`).
    pub fn client(&self, stem: &str, uri: &str) -> PemPair {
        self.issue(stem, client_params(uri))
    }

    /// A PEM certificate revocation list of this CA revoking `revoked`, numbered `number`.
    pub fn crl(&self, number: u64, revoked: &[&PemPair]) -> String {
        let revoked_certs = revoked
            .iter()
            .map(|pair| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial(&pair.cert)),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("sign the CRL")
            .pem()
            .expect("CRL PEM")
    }

    /// A client certificate for `uri` that expired in 2020.
    pub fn expired_client(&self, stem: &str, uri: &str) -> PemPair {
        let mut params = client_params(uri);
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
        self.issue(stem, params)
    }
}

/// The serial number of the (first) certificate in the PEM file `path`.
pub fn serial(path: &Path) -> Vec<u8> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let der = CertificateDer::from_pem_file(path).expect("a PEM certificate");
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("an X.509 certificate");
    cert.raw_serial().to_vec()
}

fn client_params(uri: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no DNS SANs");
    params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("ASCII URI"))];
    params.distinguished_name.push(DnType::CommonName, "client");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// A TLS channel to `addr` trusting `ca`, presenting `client` when given. Connection
/// errors (a refused handshake) are returned, not retried.
pub async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&PemPair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("read CA")))
        .domain_name(SERVER_NAME);
    if let Some(pair) = client {
        tls = tls.identity(pair.identity());
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("URL")
        .tls_config(tls)?
        .connect()
        .await
}

/// `GET /metrics` over HTTPS/1.0 on `127.0.0.1:port`, verifying the server as [`SERVER_NAME`]
/// against `ca` and presenting `client` when given: the status code and the body, or the
/// error that ended the connection (a refused handshake, or the alert refusing a client
/// certificate, which TLS 1.3 sends after the client's side of the handshake).
pub async fn https_get_metrics(
    port: u16,
    ca: &Path,
    client: Option<&PemPair>,
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("a usable CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let config = match client {
        Some(pair) => {
            let chain = CertificateDer::pem_file_iter(&pair.cert)
                .expect("read cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("certificates");
            let key = PrivateKeyDer::from_pem_file(&pair.key).expect("read key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("a client identity")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(SERVER_NAME).expect("a DNS name");
    let stream = connector.connect(name, tcp).await?;
    super::process::http_get_over(stream, &format!("{SERVER_NAME}:{port}"), "/metrics").await
}
