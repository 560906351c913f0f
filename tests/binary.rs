//! The compiled `outage-relay` binary: `serve` relays an alert published by the `publish`
//! subcommand, exposes Prometheus metrics, and exits cleanly on SIGTERM; configurations that
//! cannot run are refused with a useful message and exit code.

mod common;

use std::process::Command;

use common::process::{free_port, read, run_to_exit, scrape, spawn, wait_healthy};
use common::{bounded, device, valid_mpan};
use outage_relay::proto::AlertKind;
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::{AckRequest, SubscribeRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_relays_a_published_loss_exposes_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let grpc_port = free_port().await;
    let metrics_port = free_port().await;
    let listen = format!("127.0.0.1:{grpc_port}");
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let url = format!("http://{listen}");
    let mut relay = spawn(
        &[
            "serve",
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics_listen,
            "--debounce",
            "1s",
        ],
        dir.path(),
        "serve",
    );

    // Wait for it to accept and report itself healthy; plaintext is said loudly.
    let channel = wait_healthy(&url, dir.path()).await;
    let log = read(dir.path(), "serve.err");
    assert!(log.contains("PLAINTEXT"), "{log}");

    let mut feed = AlertFeedClient::new(channel);
    let mut stream = bounded(
        "Subscribe",
        feed.subscribe(SubscribeRequest {
            subscriber: "ukpn".into(),
            from_sequence: 0,
        }),
    )
    .await
    .expect("Subscribe")
    .into_inner();

    let dev = device(0x9001);
    let mpan = valid_mpan(12, 9001);
    let (published, publish_out, publish_err) = run_to_exit(
        &[
            "publish",
            "--target",
            &url,
            "--device",
            &dev,
            "--mpan-core",
            &mpan,
            "--lost",
            "--at=-200ms",
        ],
        dir.path(),
        "publish",
    )
    .await;
    assert!(
        published.success(),
        "publish failed: {publish_out}{publish_err}"
    );
    assert!(publish_out.contains("accepted 1"), "{publish_out}");

    let poa = bounded("the POA", stream.message())
        .await
        .expect("a healthy stream")
        .expect("an alert");
    assert_eq!(poa.kind, AlertKind::PowerOutage as i32, "{poa:?}");
    assert_eq!(
        (poa.device_id.as_str(), poa.mpan_core.as_str()),
        (dev.as_str(), mpan.as_str())
    );
    assert_eq!(poa.subscriber, "ukpn");
    let acked = bounded(
        "Ack",
        feed.ack(AckRequest {
            subscriber: "ukpn".into(),
            sequence: poa.sequence,
        }),
    )
    .await
    .expect("Ack")
    .into_inner();
    assert_eq!((acked.acked_sequence, acked.backlog), (1, 0));

    let metrics = scrape(metrics_port).await;
    assert!(
        metrics
            .lines()
            .any(|line| line == r#"outage_relay_alerts_total{kind="poa"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|line| {
            line.starts_with("outage_relay_alert_delivery_seconds_bucket{")
                && line.contains(r#"kind="poa""#)
                && line.contains(r#"subscriber="ukpn""#)
        }),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(
            |line| line.starts_with("outage_relay_alert_delivery_seconds_count{")
                && line.contains(r#"kind="poa""#)
                && line.contains(r#"subscriber="ukpn""#)
                && line.ends_with(" 1")
        ),
        "{metrics}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &relay.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    // The open Subscribe stream ends cleanly, then the process exits successfully.
    let end = bounded("the stream to end", stream.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    let status = relay.exit().await;
    assert!(
        status.success(),
        "exit {status}: {}",
        read(dir.path(), "serve.err")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_zero_debounce_with_exit_code_64() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (status, _, stderr) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--debounce",
            "0s",
        ],
        dir.path(),
        "serve",
    )
    .await;
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("debounce"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_registry_with_a_bad_row_and_names_its_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let good = valid_mpan(12, 1);
    let bad = common::bad_check_digit(&valid_mpan(12, 2));
    let registry = common::write_registry(
        dir.path(),
        "registry.csv",
        &[(&device(1), &good, "_C"), (&device(2), &bad, "_C")],
    );
    let registry = registry.display().to_string();
    let (status, _, stderr) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--registry",
            &registry,
        ],
        dir.path(),
        "serve",
    )
    .await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("check digit"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_implicit_plaintext_beyond_loopback() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (status, _, stderr) = run_to_exit(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
        "serve",
    )
    .await;
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

/// The tools over mutual TLS against the real binary: `health` without a client certificate,
/// `publish` as the publisher, `dno-sink` as UKPN, and `publish` as UKPN refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_work_over_mutual_tls_and_roles_hold() {
    use common::pki::{Pki, SERVER_NAME};

    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = Pki::new(dir.path(), "dsp");
    let server = pki.server("relay");
    let publisher = pki.client("publisher", "spiffe://csp.test/adapter-1");
    let ukpn = pki.client("ukpn", "spiffe://dno.test/ukpn");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        r#"
[[tls.identities]]
identity = "spiffe://csp.test/adapter-1"
role = "publisher"

[[tls.identities]]
identity = "spiffe://dno.test/ukpn"
role = "subscriber"
subscriber = "ukpn"
"#,
    )
    .expect("write the config");
    let port = free_port().await;
    let listen = format!("127.0.0.1:{port}");
    let url = format!("https://{listen}");
    let path = |p: &std::path::Path| p.display().to_string();
    let (config, ca) = (path(&config), path(&pki.ca));
    let (server_cert, server_key) = (path(&server.cert), path(&server.key));
    let mut relay = spawn(
        &[
            "serve",
            "--config",
            &config,
            "--listen",
            &listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--debounce",
            "1s",
            "--tls-mode",
            "mutual",
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--tls-client-ca",
            &ca,
        ],
        dir.path(),
        "serve",
    );
    let tls = ["--tls-ca", ca.as_str(), "--tls-domain", SERVER_NAME];
    common::eventually("health over TLS", || async {
        let mut args = vec!["health", "--target", &url];
        args.extend(tls);
        let (status, _, _) = run_to_exit(&args, dir.path(), "health").await;
        status.success().then_some(())
    })
    .await;
    assert!(
        read(dir.path(), "serve.err").contains("mutual TLS"),
        "{}",
        read(dir.path(), "serve.err")
    );

    let identity = |pair: &common::pki::PemPair| [path(&pair.cert), path(&pair.key)];
    let [pub_cert, pub_key] = identity(&publisher);
    let [ukpn_cert, ukpn_key] = identity(&ukpn);
    let dev = device(0x7001);
    let mpan = valid_mpan(12, 7001);
    let publish = |cert: &str, key: &str| {
        let mut args = vec![
            "publish",
            "--target",
            url.as_str(),
            "--device",
            dev.as_str(),
            "--mpan-core",
            mpan.as_str(),
            "--lost",
            "--at=-5m",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ];
        args.extend(tls);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let denied = publish(&ukpn_cert, &ukpn_key);
    let (status, out, err) = run_to_exit(&as_strs(&denied), dir.path(), "publish-as-dno").await;
    assert!(!status.success(), "{out}");
    assert!(
        err.contains("PermissionDenied") || err.contains("permission"),
        "{err}"
    );
    let allowed = publish(&pub_cert, &pub_key);
    let (status, out, err) = run_to_exit(&as_strs(&allowed), dir.path(), "publish").await;
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("accepted 1"), "{out}");

    let received = dir.path().join("ukpn.jsonl");
    let received_path = path(&received);
    let mut sink_args = vec![
        "dno-sink",
        "--subscribe",
        &url,
        "--subscriber",
        "ukpn",
        "--once-count",
        "1",
        "--output",
        &received_path,
        "--tls-cert",
        &ukpn_cert,
        "--tls-key",
        &ukpn_key,
    ];
    sink_args.extend(tls);
    let (status, _, err) = run_to_exit(&sink_args, dir.path(), "sink").await;
    assert!(status.success(), "{err}");
    let lines = std::fs::read_to_string(&received).expect("the sink wrote its alert");
    assert!(lines.contains(&dev), "{lines}");

    let killed = Command::new("kill")
        .args(["-TERM", &relay.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    assert!(relay.exit().await.success());
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
