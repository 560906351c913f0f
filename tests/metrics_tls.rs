//! The `/metrics` listener, which carries every DNO's backlog, connection state, breaches and
//! latency, against the real relay binary over real TLS on loopback: served over TLS with the
//! relay's certificate when `[tls]` is mutual, with `metrics_tls = "mutual"` only to trusted
//! client certificates of a `metrics` (or `admin`) identity, and never in plaintext beyond
//! loopback unless chosen, and said.

mod common;

use std::path::Path;
use std::time::Duration;

use common::WAIT;
use common::pki::{PemPair, Pki, https_get_metrics};
use common::process::{Running, free_port, read, run_to_exit, scrape, spawn, wait_healthy};
use outage_relay::telemetry;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PROMETHEUS: &str = "spiffe://dsp.test/prometheus";
const ADMIN: &str = "spiffe://dsp.test/ops";
const UKPN: &str = "spiffe://dno.test/ukpn";

/// The series that must not leak: one subscriber's backlog.
fn ukpn_backlog() -> String {
    format!("{}{{subscriber=\"ukpn\"}}", telemetry::BACKLOG)
}

/// A relay's certificates; client certificates from the CA it trusts for Prometheus (role
/// `metrics`), an operator (`admin`) and a DNO (`subscriber`); an expired one, and one from a
/// CA it does not trust.
struct Certs {
    dir: TempDir,
    pki: Pki,
    server: PemPair,
    prometheus: PemPair,
    admin: PemPair,
    ukpn: PemPair,
    expired: PemPair,
    rogue: PemPair,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path(), "dsp");
        let rogue = Pki::new(dir.path(), "rogue");
        Self {
            server: pki.server("relay"),
            prometheus: pki.client("prometheus", PROMETHEUS),
            admin: pki.client("admin", ADMIN),
            ukpn: pki.client("ukpn", UKPN),
            expired: pki.expired_client("expired", PROMETHEUS),
            rogue: rogue.client("rogue", PROMETHEUS),
            pki,
            dir,
        }
    }

    /// A config file for a relay with mutual TLS on loopback ports, and `extra` top-level
    /// settings; returns its path.
    fn config(&self, grpc_port: u16, metrics_port: u16, extra: &str) -> String {
        let text = format!(
            "listen = \"127.0.0.1:{grpc_port}\"\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             data_dir = \"data\"\n\
             {extra}\n\
             [tls]\n\
             mode = \"mutual\"\n\
             cert = {:?}\n\
             key = {:?}\n\
             client_ca = {:?}\n\
             [[tls.identities]]\n\
             identity = \"{PROMETHEUS}\"\n\
             role = \"metrics\"\n\
             [[tls.identities]]\n\
             identity = \"{ADMIN}\"\n\
             role = \"admin\"\n\
             [[tls.identities]]\n\
             identity = \"{UKPN}\"\n\
             role = \"subscriber\"\n\
             subscriber = \"ukpn\"\n",
            self.server.cert.display().to_string(),
            self.server.key.display().to_string(),
            self.pki.ca.display().to_string(),
        );
        let path = self.dir.path().join("relay.toml");
        std::fs::write(&path, text).expect("write the config");
        path.display().to_string()
    }
}

/// Scrapes `/metrics` over TLS until the relay's subscriber series are there, failing with the
/// relay's log if it exits or never serves them within [`WAIT`].
async fn scrape_over_tls(
    relay: &mut Running,
    dir: &Path,
    port: u16,
    ca: &Path,
    client: Option<&PemPair>,
) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            relay.is_running(),
            "the relay exited: {}",
            read(dir, "serve.err")
        );
        if let Ok((200, body)) = https_get_metrics(port, ca, client).await
            && body.contains(&ukpn_backlog())
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics over TLS on port {port}: {}",
            read(dir, "serve.err")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a plain-HTTP `GET /metrics` gets back: the bytes up to the close, or the error.
async fn plaintext_answer(port: u16) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_tls_when_tls_is_mutual_and_never_in_plaintext() {
    let certs = Certs::new();
    let (grpc_port, metrics_port) = (free_port().await, free_port().await);
    let config = certs.config(grpc_port, metrics_port, "");
    let dir = certs.dir.path();
    let mut relay = spawn(&["serve", "--config", &config], dir, "serve");

    // Prometheus with only the CA (no client certificate) reads the metrics over TLS.
    let body = scrape_over_tls(&mut relay, dir, metrics_port, &certs.pki.ca, None).await;
    assert!(body.contains(telemetry::CONNECTED), "{body}");

    // A plain-HTTP request gets no HTTP answer, let alone the metrics.
    let answer = plaintext_answer(metrics_port).await;
    if let Ok(bytes) = &answer {
        assert!(
            !bytes.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(bytes)
        );
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(telemetry::BACKLOG), "{text}");
    }

    // A client that does not trust the relay's CA does not get through either.
    let rogue_ca = dir.join("rogue-ca.pem");
    let untrusted = https_get_metrics(metrics_port, &rogue_ca, None).await;
    assert!(untrusted.is_err(), "{untrusted:?}");

    let log = read(dir, "serve.err");
    assert!(
        log.contains(&format!("https://127.0.0.1:{metrics_port}/metrics")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tls_mutual_admits_only_a_metrics_or_admin_identity_from_the_client_ca() {
    let certs = Certs::new();
    let (grpc_port, metrics_port) = (free_port().await, free_port().await);
    let config = certs.config(grpc_port, metrics_port, "metrics_tls = \"mutual\"");
    let dir = certs.dir.path();
    let mut relay = spawn(&["serve", "--config", &config], dir, "serve");

    let ca = &certs.pki.ca;
    let body = scrape_over_tls(&mut relay, dir, metrics_port, ca, Some(&certs.prometheus)).await;
    assert!(body.contains(telemetry::CONNECTED), "{body}");

    for (what, client) in [
        ("no client certificate", None),
        ("an expired client certificate", Some(&certs.expired)),
        (
            "a client certificate from an untrusted CA",
            Some(&certs.rogue),
        ),
    ] {
        let answer = https_get_metrics(metrics_port, ca, client).await;
        assert!(answer.is_err(), "{what}: {answer:?}");
    }
    let answer = plaintext_answer(metrics_port).await;
    if let Ok(bytes) = &answer {
        assert!(
            !bytes.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }

    // A DNO's valid certificate completes the handshake, but its identity may not read every
    // DNO's series: 403, and nothing of them.
    let (status, body) = https_get_metrics(metrics_port, ca, Some(&certs.ukpn))
        .await
        .expect("a DNO's certificate completes the handshake");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("subscriber"), "{body}");
    assert!(!body.contains(telemetry::BACKLOG), "{body}");

    // An operator may read them, and Prometheus still does: the refusals were about the
    // certificates.
    for client in [&certs.admin, &certs.prometheus] {
        let again = https_get_metrics(metrics_port, ca, Some(client)).await;
        assert!(
            matches!(&again, Ok((200, body)) if body.contains(&ukpn_backlog())),
            "{again:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_metrics_listener_beyond_loopback_is_refused_unless_chosen_and_said() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (grpc_port, metrics_port) = (free_port().await, free_port().await);
    let listen = format!("127.0.0.1:{grpc_port}");
    let everywhere = format!("0.0.0.0:{metrics_port}");
    let args = [
        "serve",
        "--listen",
        &listen,
        "--metrics-listen",
        &everywhere,
    ];

    let (status, _, err) = run_to_exit(&args, dir.path(), "refused").await;
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("metrics_listen = {everywhere}")),
        "{err}"
    );
    assert!(err.contains("metrics_tls = \"plaintext\""), "{err}");
    let (status, _, err) = run_to_exit(
        &["check-config", "--metrics-listen", &everywhere],
        dir.path(),
        "check",
    )
    .await;
    assert_eq!(status.code(), Some(64), "{err}");

    let mut chosen = args.to_vec();
    chosen.extend(["--metrics-tls", "plaintext"]);
    let _relay = spawn(&chosen, dir.path(), "serve");
    wait_healthy(&format!("http://{listen}"), dir.path()).await;
    let body = scrape(metrics_port).await;
    assert!(body.contains(telemetry::BACKLOG), "{body}");
    let log = read(dir.path(), "serve.err");
    assert!(log.contains("PLAINTEXT on a non-loopback address"), "{log}");
}
