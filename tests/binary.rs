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

    // Wait for it to accept and report itself healthy.
    let channel = wait_healthy(&url, dir.path()).await;

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
