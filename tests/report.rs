//! `outage-relay report` against the real binary: alerts are delivered and acknowledged (in
//! time, late, never) over loopback gRPC, the relay is killed with SIGKILL and restarted, and
//! the report, asked of the running relay (`--target`) and read from its data directory once
//! it is down (`--data-dir`), counts exactly what the subscribers received and acknowledged,
//! each breach with its cause.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::process::{free_port, run_to_exit, spawn, wait_healthy};
use common::{
    LONG_AGO_MS, TestRelay, bounded, device, eventually, lost, ms, nats_urls, now_ms,
    unique_prefix, valid_mpan,
};
use outage_relay::config::Backend;
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{
    AckRequest, Alert, DeviceEvent, EventBatch, GetClusterStatusRequest, SubscribeRequest,
};
use tonic::transport::Channel;

/// The relay's debounce (`--debounce 1s`).
const DEBOUNCE_MS: i64 = 1_000;
/// The POA window (`--poa-sla 60s`): the alerts acknowledged at once are well within it.
const POA_SLA_MS: i64 = 60_000;
/// How far ahead the deadline of an alert meant to be late is, when it is published.
const SHORT_MS: i64 = 2_000;

/// The CSV figures summed over the days, by (subscriber, kind).
type Figures = BTreeMap<(String, String), [u64; 6]>;

fn figures(csv: &str) -> Figures {
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().expect("a header").clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
    };
    let counts = [
        "alerts",
        "within_sla",
        "late_relay",
        "late_upstream",
        "never_delivered",
        "pending",
    ]
    .map(column);
    let mut figures = Figures::new();
    for row in reader.records() {
        let row = row.expect("a CSV row");
        let key = (
            row[column("subscriber")].to_owned(),
            row[column("kind")].to_owned(),
        );
        let sums = figures.entry(key).or_default();
        for (sum, index) in sums.iter_mut().zip(counts) {
            *sum += row[index].parse::<u64>().expect("a count");
        }
    }
    figures
}

/// A loss of device `n` (routed to `ukpn` by distributor 12, `nged` by 11) at `at_ms`.
fn loss(n: u64, distributor: u8, at_ms: i64) -> DeviceEvent {
    lost(&device(n), at_ms, Some(&valid_mpan(distributor, n)))
}

async fn publish(channel: &Channel, events: Vec<DeviceEvent>) {
    let count = events.len() as u64;
    let ack = bounded(
        "PublishBatch",
        IngestClient::new(channel.clone()).publish_batch(EventBatch {
            events,
            batch_id: 1,
        }),
    )
    .await
    .expect("PublishBatch")
    .into_inner();
    assert_eq!(ack.accepted, count, "{ack:?}");
}

async fn ack(channel: &Channel, subscriber: &str, sequence: u64) {
    bounded(
        "Ack",
        AlertFeedClient::new(channel.clone()).ack(AckRequest {
            subscriber: subscriber.into(),
            sequence,
        }),
    )
    .await
    .expect("Ack");
}

/// The next `n` alerts of `subscriber`'s feed from its cursor.
async fn receive(channel: &Channel, subscriber: &str, n: usize) -> Vec<Alert> {
    let mut stream = bounded(
        "Subscribe",
        AlertFeedClient::new(channel.clone()).subscribe(SubscribeRequest {
            subscriber: subscriber.into(),
            from_sequence: 0,
        }),
    )
    .await
    .expect("Subscribe")
    .into_inner();
    let mut alerts = Vec::with_capacity(n);
    while alerts.len() < n {
        let alert = bounded("an alert", stream.message())
            .await
            .expect("a healthy stream")
            .expect("an alert");
        alerts.push(alert);
    }
    alerts
}

/// Waits until the wall clock is past `deadline_ms`.
async fn wait_past(deadline_ms: i64) {
    while now_ms() <= deadline_ms {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn report(dir: &Path, source: &[&str], name: &str) -> String {
    let out = dir.join(name);
    let out_arg = out.to_str().expect("utf-8");
    let mut args = vec!["report", "--out", out_arg];
    args.extend_from_slice(source);
    let (status, stdout, stderr) = run_to_exit(&args, dir, name).await;
    assert!(status.success(), "report failed: {stdout}{stderr}");
    let html = std::fs::read_to_string(out.join("compliance.html")).expect("compliance.html");
    assert!(html.contains("<svg"), "the page has its plots");
    std::fs::read_to_string(out.join("compliance.csv")).expect("compliance.csv")
}

/// Delivers alerts to `ukpn` and `nged` and acknowledges them as [`expected`] counts them.
async fn play(channel: &Channel) {
    // ukpn: one alert due at once with its deadline SHORT_MS ahead (sequence 1), acknowledged
    // after it: late, the relay's fault (its event came in time); two more acknowledged at
    // once (2, 3): within SLA.
    let now = now_ms();
    let late_lost_at = now - DEBOUNCE_MS - POA_SLA_MS + SHORT_MS;
    publish(channel, vec![loss(1, 12, late_lost_at)]).await;
    let first = receive(channel, "ukpn", 1).await;
    wait_past(ms(first[0].deadline.as_ref())).await;
    ack(channel, "ukpn", first[0].sequence).await;
    publish(channel, vec![loss(2, 12, now_ms()), loss(3, 12, now_ms())]).await;
    let prompt = receive(channel, "ukpn", 2).await;
    ack(channel, "ukpn", prompt[1].sequence).await;
    for alert in &prompt {
        assert!(
            now_ms() <= ms(alert.deadline.as_ref()),
            "acknowledged within the window"
        );
    }
    // ukpn: one more never acknowledged, its deadline passed before the report.
    publish(
        channel,
        vec![loss(4, 12, now_ms() - DEBOUNCE_MS - POA_SLA_MS + SHORT_MS)],
    )
    .await;
    let never = receive(channel, "ukpn", 1).await;
    assert_eq!(never[0].sequence, 4);
    // nged: one whose event came long after its deadline, acknowledged: late, upstream.
    publish(channel, vec![loss(5, 11, now_ms() - LONG_AGO_MS)]).await;
    let upstream = receive(channel, "nged", 1).await;
    ack(channel, "nged", upstream[0].sequence).await;
    wait_past(ms(never[0].deadline.as_ref())).await;
}

/// What [`play`] leaves: (alerts, within SLA, late relay, late upstream, never, pending).
fn expected() -> Figures {
    [
        (("nged".into(), "poa".into()), [1, 0, 0, 1, 0, 0]),
        (("ukpn".into(), "poa".into()), [4, 2, 1, 0, 1, 0]),
    ]
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_what_subscribers_received_and_acknowledged_across_a_kill() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let listen = format!("127.0.0.1:{}", free_port().await);
    let metrics_listen = format!("127.0.0.1:{}", free_port().await);
    let url = format!("http://{listen}");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8").to_owned();
    let serve = [
        "serve",
        "--listen",
        &listen,
        "--metrics-listen",
        &metrics_listen,
        "--data-dir",
        &data_arg,
        "--debounce",
        "1s",
        "--poa-sla",
        "60s",
    ];
    let mut relay = spawn(&serve, dir.path(), "serve");
    let channel = wait_healthy(&url, dir.path()).await;

    play(&channel).await;

    // Killed after the acks: they were durable when answered, so the report still has them.
    relay.kill();
    relay.exit().await;
    let mut relay = spawn(&serve, dir.path(), "serve");
    wait_healthy(&url, dir.path()).await;

    let asked = report(dir.path(), &["--target", &url], "asked").await;
    assert_eq!(
        figures(&asked),
        expected(),
        "received 4 and 1, acknowledged 3 and 1:\n{asked}"
    );

    let (status, _, refused) =
        run_to_exit(&["report", "--data-dir", &data_arg], dir.path(), "refused").await;
    assert!(!status.success(), "a running relay's directory is refused");
    assert!(refused.contains("--target"), "{refused}");

    relay.kill();
    relay.exit().await;
    let read = report(dir.path(), &["--data-dir", &data_arg], "read").await;
    assert_eq!(
        read, asked,
        "the data directory gives the same report as the relay"
    );

    let (status, _, bad) = run_to_exit(
        &["report", "--data-dir", &data_arg, "--from", "2026-13-01"],
        dir.path(),
        "bad",
    )
    .await;
    assert_eq!(status.code(), Some(64), "{bad}");
    assert!(bad.contains("YYYY-MM-DD"), "{bad}");
}

/// The JetStream backend (the cluster `.ci/test` starts): the report asked of a running
/// relay counts the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_a_jetstream_relay_counts_what_subscribers_received_and_acknowledged() {
    let relay = TestRelay::start_with(|config, _| {
        config.store.backend = Backend::Jetstream;
        config.store.jetstream.servers = nats_urls();
        config.store.jetstream.prefix = unique_prefix("report");
        config.store.jetstream.partitions = 2;
        config.debounce = Duration::from_millis(DEBOUNCE_MS as u64);
        config.poa_sla = Duration::from_millis(POA_SLA_MS as u64);
    })
    .await;
    // Its owners first take their leases: until then an event waits to reach the relay.
    eventually("every partition owned", || async {
        let status = bounded(
            "GetClusterStatus",
            relay
                .admin_client()
                .await
                .get_cluster_status(GetClusterStatusRequest {}),
        )
        .await
        .expect("GetClusterStatus")
        .into_inner();
        (status.owned_here.len() == 2).then_some(())
    })
    .await;
    play(&relay.channel().await).await;
    let asked = report(relay.dir.path(), &["--target", &relay.url], "asked").await;
    assert_eq!(figures(&asked), expected(), "{asked}");
    relay.stop().await;
}
