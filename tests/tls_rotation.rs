//! Revocation and rotation against the real relay binary over real TLS on loopback: a client
//! certificate a CRL revokes is refused at the handshake (gRPC, and `/metrics` under
//! `metrics_tls = "mutual"`), a replaced CRL applies to new connections without a restart, a
//! replaced certificate and key are served to new connections after SIGHUP or once the files
//! change while a Subscribe stream opened before keeps receiving alerts, and a broken
//! replacement keeps the material in use and is counted. In plaintext a SIGHUP (`systemctl
//! reload`) does not end the relay.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::pki::{PemPair, Pki, SERVER_NAME, https_get_metrics, tls_channel};
use common::process::{Running, free_port, read, spawn, wait_healthy};
use common::{LONG_AGO_MS, bounded, device, eventually, lost, now_ms, valid_mpan};
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{EventBatch, SubscribeRequest};
use outage_relay::telemetry;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tonic::Code;

const PUBLISHER: &str = "spiffe://csp.test/adapter-1";
const UKPN: &str = "spiffe://dno.test/ukpn";
const PROMETHEUS: &str = "spiffe://dsp.test/prometheus";

/// A relay's certificates: its own, two publisher certificates, a DNO's and Prometheus's from
/// the CA it trusts, and a third publisher certificate and a second Prometheus one that the
/// first CRL revokes.
struct Certs {
    dir: TempDir,
    pki: Pki,
    server: PemPair,
    publisher: PemPair,
    other_publisher: PemPair,
    revoked: PemPair,
    ukpn: PemPair,
    prometheus: PemPair,
    revoked_prometheus: PemPair,
    crl: PathBuf,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path(), "dsp");
        let revoked = pki.client("revoked", PUBLISHER);
        let revoked_prometheus = pki.client("revoked-prometheus", PROMETHEUS);
        let crl = dir.path().join("dsp.crl");
        replace(
            &crl,
            pki.crl(1, &[&revoked, &revoked_prometheus]).as_bytes(),
        );
        Self {
            server: pki.server("relay"),
            publisher: pki.client("publisher", PUBLISHER),
            other_publisher: pki.client("other-publisher", PUBLISHER),
            ukpn: pki.client("ukpn", UKPN),
            prometheus: pki.client("prometheus", PROMETHEUS),
            revoked,
            revoked_prometheus,
            crl,
            pki,
            dir,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the relay with mutual TLS, the CRL and `tls` settings added to `[tls]`, and
    /// waits until the publisher is served.
    async fn start(&self, tls: &str) -> Relay {
        self.start_with("", tls).await
    }

    /// Like [`Self::start`], with `top` top-level settings.
    async fn start_with(&self, top: &str, tls: &str) -> Relay {
        let (grpc, metrics) = (free_port().await, free_port().await);
        let text = format!(
            "listen = \"127.0.0.1:{grpc}\"\n\
             metrics_listen = \"127.0.0.1:{metrics}\"\n\
             data_dir = \"data\"\n\
             {top}\n\
             [tls]\n\
             mode = \"mutual\"\n\
             cert = {:?}\n\
             key = {:?}\n\
             client_ca = {:?}\n\
             crl = [{:?}]\n\
             {tls}\n\
             [[tls.identities]]\n\
             identity = \"{PUBLISHER}\"\n\
             role = \"publisher\"\n\
             [[tls.identities]]\n\
             identity = \"{UKPN}\"\n\
             role = \"subscriber\"\n\
             subscriber = \"ukpn\"\n\
             [[tls.identities]]\n\
             identity = \"{PROMETHEUS}\"\n\
             role = \"metrics\"\n",
            self.server.cert.display().to_string(),
            self.server.key.display().to_string(),
            self.pki.ca.display().to_string(),
            self.crl.display().to_string(),
        );
        let config = self.dir().join("relay.toml");
        std::fs::write(&config, text).expect("write the config");
        let config = config.display().to_string();
        let relay = Relay {
            process: Mutex::new(spawn(&["serve", "--config", &config], self.dir(), "serve")),
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            metrics,
            dir: self.dir().to_owned(),
            ca: self.pki.ca.clone(),
        };
        // Outages of their own (from 1000), so that the tests' outages each raise a new POA.
        let mut n = 1000;
        eventually("the relay to serve the publisher", || {
            n += 1;
            let (relay, n) = (&relay, n);
            async move {
                relay.assert_running();
                relay.publish_as(&self.publisher, n).await.then_some(())
            }
        })
        .await;
        relay
    }
}

/// Replaces `path`'s contents in one step (write beside it, then rename), as a deployment
/// that rotates files should.
fn replace(path: &Path, contents: &[u8]) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).expect("write the replacement");
    std::fs::rename(&next, path).expect("rename the replacement into place");
}

/// An old outage of a UKPN supply (distributor 12): its POA is due at once.
fn ukpn_outage(n: u64) -> EventBatch {
    EventBatch {
        events: vec![lost(
            &device(n),
            now_ms() - LONG_AGO_MS,
            Some(&valid_mpan(12, n)),
        )],
        batch_id: n,
    }
}

/// The relay binary and its ports.
struct Relay {
    process: Mutex<Running>,
    grpc: SocketAddr,
    metrics: u16,
    dir: PathBuf,
    ca: PathBuf,
}

/// How a call on a new connection ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Served,
    /// The handshake was refused: the connection failed, or (TLS 1.3, where the client
    /// finishes first) its first call found it gone.
    Refused,
    /// Any other answer.
    Other(Code),
}

impl Relay {
    /// Fails the test, with the relay's log, if the relay has exited.
    fn assert_running(&self) {
        let running = self.process.lock().expect("the process lock").is_running();
        assert!(
            running,
            "the relay exited: {}",
            read(&self.dir, "serve.err")
        );
    }

    /// Waits until the relay presents `cert` on new connections to `port`.
    async fn until_presented(&self, port: u16, cert: &CertificateDer<'static>) {
        eventually("the new certificate presented", || async move {
            self.assert_running();
            (presented(port, &self.ca).await == *cert).then_some(())
        })
        .await;
    }

    /// Publishes outage `n` on a new connection presenting `client`.
    async fn publish(&self, client: &PemPair, n: u64) -> Outcome {
        let Ok(channel) = tls_channel(self.grpc, &self.ca, Some(client)).await else {
            return Outcome::Refused;
        };
        match IngestClient::new(channel)
            .publish_batch(ukpn_outage(n))
            .await
        {
            Ok(_) => Outcome::Served,
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ) =>
            {
                Outcome::Refused
            }
            Err(status) => Outcome::Other(status.code()),
        }
    }

    /// Whether outage `n` published on a new connection presenting `client` was served.
    async fn publish_as(&self, client: &PemPair, n: u64) -> bool {
        self.publish(client, n).await == Outcome::Served
    }

    /// The metrics text, over TLS (the relay's certificate, no client certificate).
    async fn scrape(&self) -> String {
        let (status, body) = bounded("a scrape", https_get_metrics(self.metrics, &self.ca, None))
            .await
            .expect("the metrics listener answers over TLS");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `outage_relay_tls_reloads_total` of the gRPC listener with `result`, 0 when absent.
    async fn grpc_reloads(&self, result: &str) -> f64 {
        let series = format!(
            "{}{{listener=\"grpc\",result=\"{result}\"}} ",
            telemetry::TLS_RELOADS
        );
        value(&self.scrape().await, &series).unwrap_or(0.0)
    }
}

/// The value of the line of `body` starting with `series`.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
}

/// The certificate the relay presents on `port` to a client trusting `ca`, offering no client
/// certificate.
async fn presented(port: u16, ca: &Path) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("a CA certificate")).expect("a CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = bounded("a TCP connection", TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    let name = ServerName::try_from(SERVER_NAME).expect("a DNS name");
    let stream = bounded("a TLS handshake", connector.connect(name, tcp))
        .await
        .expect("the handshake succeeds");
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the relay presents a certificate")
        .clone()
        .into_owned()
}

/// The certificate in the PEM file `path`.
fn certificate(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("a PEM certificate")
}

/// Replaces the relay's certificate and key files with `next`'s.
fn rotate(current: &PemPair, next: &PemPair) {
    replace(
        &current.key,
        &std::fs::read(&next.key).expect("read the new key"),
    );
    replace(
        &current.cert,
        &std::fs::read(&next.cert).expect("read the new certificate"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_and_a_replaced_crl_applies_without_restart() {
    let certs = Certs::new();
    let relay = certs.start("reload_interval = \"100ms\"").await;
    // A client that connects and never starts its handshake holds up no other.
    let _silent = TcpStream::connect(relay.grpc).await.expect("connect");

    // The CRL revokes one certificate of the publisher's identity; the others are served.
    assert_eq!(relay.publish(&certs.revoked, 1).await, Outcome::Refused);
    assert!(relay.publish_as(&certs.publisher, 2).await);
    assert!(relay.publish_as(&certs.other_publisher, 3).await);
    let before = relay.grpc_reloads("ok").await;

    // A new CRL also revokes `publisher`: new connections with it are refused, with no
    // restart; the revocations of the old list still hold and other certificates still work.
    replace(
        &certs.crl,
        certs
            .pki
            .crl(2, &[&certs.revoked, &certs.publisher])
            .as_bytes(),
    );
    let mut n = 10;
    eventually("the replaced CRL to refuse the publisher", || {
        n += 1;
        let (relay, publisher, n) = (&relay, &certs.publisher, n);
        async move {
            relay.assert_running();
            (relay.publish(publisher, n).await == Outcome::Refused).then_some(())
        }
    })
    .await;
    assert_eq!(relay.publish(&certs.revoked, 100).await, Outcome::Refused);
    assert!(relay.publish_as(&certs.other_publisher, 101).await);
    assert!(relay.grpc_reloads("ok").await > before);
    relay.assert_running();
}

/// Sends SIGHUP to `pid`.
fn hangup(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_in_plaintext_leaves_the_relay_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (grpc, metrics) = (free_port().await, free_port().await);
    let (listen, metrics_listen) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{metrics}"));
    let mut relay = spawn(
        &[
            "serve",
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics_listen,
        ],
        dir.path(),
        "serve",
    );
    let url = format!("http://{listen}");
    wait_healthy(&url, dir.path()).await;
    hangup(relay.pid());
    eventually("the SIGHUP logged", || async {
        read(dir.path(), "serve.err")
            .contains("no TLS material to reload")
            .then_some(())
    })
    .await;
    assert!(relay.is_running(), "{}", read(dir.path(), "serve.err"));
    wait_healthy(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tls_mutual_refuses_a_revoked_scraper_certificate() {
    let certs = Certs::new();
    let relay = certs
        .start_with("metrics_tls = \"mutual\"", "reload_interval = \"100ms\"")
        .await;
    let (status, body) = https_get_metrics(relay.metrics, &relay.ca, Some(&certs.prometheus))
        .await
        .expect("Prometheus's certificate is served");
    assert_eq!(status, 200, "{body}");
    let revoked =
        https_get_metrics(relay.metrics, &relay.ca, Some(&certs.revoked_prometheus)).await;
    assert!(revoked.is_err(), "{revoked:?}");
    relay.assert_running();
}

/// Opens UKPN's feed on its own connection and waits for outage `n`'s POA on it.
async fn open_feed(
    relay: &Relay,
    certs: &Certs,
    n: u64,
) -> tonic::Streaming<outage_relay::proto::Alert> {
    let channel = bounded(
        "UKPN's connection",
        tls_channel(relay.grpc, &relay.ca, Some(&certs.ukpn)),
    )
    .await
    .expect("UKPN connects");
    let mut stream = AlertFeedClient::new(channel)
        .subscribe(SubscribeRequest {
            subscriber: "ukpn".to_owned(),
            from_sequence: 0,
        })
        .await
        .expect("UKPN subscribes")
        .into_inner();
    assert!(relay.publish_as(&certs.publisher, n).await);
    expect_alert(&mut stream, n).await;
    stream
}

/// Waits for outage `n`'s POA on `stream` (after the POAs of earlier outages).
async fn expect_alert(stream: &mut tonic::Streaming<outage_relay::proto::Alert>, n: u64) {
    bounded("the POA on the open stream", async {
        loop {
            let alert = stream
                .message()
                .await
                .expect("the stream stays up")
                .expect("an alert");
            if alert.device_id == device(n) {
                return;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_to_new_connections_while_an_open_stream_keeps_receiving() {
    let certs = Certs::new();
    // Files are checked hourly: only the signal can make this test's reload.
    let relay = certs.start("reload_interval = \"1h\"").await;
    let old = certificate(&certs.server.cert);
    assert_eq!(presented(relay.grpc.port(), &relay.ca).await, old);
    let mut stream = open_feed(&relay, &certs, 1).await;

    let next = certs.pki.server("relay-next");
    rotate(&certs.server, &next);
    let new = certificate(&next.cert);
    assert_ne!(new, old);
    assert_eq!(
        presented(relay.grpc.port(), &relay.ca).await,
        old,
        "nothing reloads before the signal"
    );

    hangup(relay.process.lock().expect("lock").pid());
    relay.until_presented(relay.grpc.port(), &new).await;
    relay.until_presented(relay.metrics, &new).await;

    // New connections are served, and the stream opened before the reload still delivers.
    assert!(relay.publish_as(&certs.publisher, 2).await);
    expect_alert(&mut stream, 2).await;
    relay.assert_running();
    assert!(relay.grpc_reloads("ok").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_without_a_signal_and_its_expiry_exported() {
    let certs = Certs::new();
    let relay = certs.start("reload_interval = \"100ms\"").await;
    let mut stream = open_feed(&relay, &certs, 1).await;
    let expiry = format!("{} ", telemetry::TLS_CERT_EXPIRY);
    let far = value(&relay.scrape().await, &expiry).expect("the expiry gauge");
    assert!(far > 365.0 * 86_400.0, "{far}");

    // A certificate that expires in the coming weeks (the clock of this test's machine is
    // read, so the date is chosen from it).
    let soon = std::time::SystemTime::now() + std::time::Duration::from_secs(20 * 86_400);
    let (year, month, day) = civil_date(soon);
    let next = certs.pki.server_until("relay-next", year, month, day);
    rotate(&certs.server, &next);
    let new = certificate(&next.cert);
    relay.until_presented(relay.grpc.port(), &new).await;
    let left = eventually("the expiry gauge of the new certificate", || async {
        value(&relay.scrape().await, &expiry).filter(|left| *left < 30.0 * 86_400.0)
    })
    .await;
    assert!(left > 0.0, "{left}");

    assert!(relay.publish_as(&certs.publisher, 2).await);
    expect_alert(&mut stream, 2).await;
}

/// The UTC calendar date of `time`.
fn civil_date(time: std::time::SystemTime) -> (i32, u8, u8) {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let days = i64::try_from(seconds / 86_400).expect("days fit");
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).expect("year"),
        u8::try_from(month).expect("month"),
        u8::try_from(day).expect("day"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replacement_keeps_the_material_in_use_and_is_counted() {
    let certs = Certs::new();
    let relay = certs.start("reload_interval = \"100ms\"").await;
    let old = certificate(&certs.server.cert);
    let original_crl = std::fs::read(&certs.crl).expect("read the CRL");

    // A CRL that is not one: the reload fails, the revocations in use still hold.
    replace(
        &certs.crl,
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    );
    eventually("a failed reload counted", || async {
        (relay.grpc_reloads("failed").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(relay.publish(&certs.revoked, 1).await, Outcome::Refused);
    assert!(relay.publish_as(&certs.publisher, 2).await);

    // A key that does not belong to the certificate: the certificate in use stays.
    let stranger = certs.pki.client("stranger", UKPN);
    replace(
        &certs.server.key,
        &std::fs::read(&stranger.key).expect("read the stranger's key"),
    );
    eventually("a second failed reload counted", || async {
        (relay.grpc_reloads("failed").await >= 2.0).then_some(())
    })
    .await;
    assert_eq!(presented(relay.grpc.port(), &relay.ca).await, old);
    assert!(relay.publish_as(&certs.publisher, 3).await);
    relay.assert_running();
    let log = read(&relay.dir, "serve.err");
    assert!(log.contains("TLS reload failed"), "{log}");

    // Usable files again: reloaded.
    replace(&certs.crl, &original_crl);
    let next = certs.pki.server("relay-next");
    rotate(&certs.server, &next);
    relay
        .until_presented(relay.grpc.port(), &certificate(&next.cert))
        .await;
    assert_eq!(relay.publish(&certs.revoked, 4).await, Outcome::Refused);
}
