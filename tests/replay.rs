//! `outage-relay replay` against the real binary: a small storm with duplicate and late
//! events goes through a relay (debounce 2 s) over loopback gRPC, the subscriber receives
//! its alerts, the relay is stopped, and the replay of its data directory gives exactly the
//! alerts it emitted (an empty diff), then, with another `--debounce`, exactly the expected
//! differences.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use common::process::{free_port, run_to_exit, spawn, wait_healthy};
use common::{bounded, device, lost, now_ms, restored, valid_mpan};
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{Alert, BatchAck, DeviceEvent, EventBatch, SubscribeRequest};
use tonic::transport::Channel;

/// Device `n`'s MPAN (distributor 12: routed to `ukpn`).
fn mpan(n: u64) -> String {
    valid_mpan(12, n)
}

fn loss(n: u64, at_ms: i64) -> DeviceEvent {
    lost(&device(n), at_ms, Some(&mpan(n)))
}

fn restoration(n: u64, at_ms: i64, lost_at_ms: Option<i64>) -> DeviceEvent {
    restored(&device(n), at_ms, lost_at_ms, Some(&mpan(n)))
}

async fn publish(channel: &Channel, events: Vec<DeviceEvent>) -> BatchAck {
    bounded(
        "PublishBatch",
        IngestClient::new(channel.clone()).publish_batch(EventBatch {
            events,
            batch_id: 1,
        }),
    )
    .await
    .expect("PublishBatch")
    .into_inner()
}

fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("after 1970"));
    humantime::format_rfc3339_millis(at).to_string()
}

/// The rows of a CSV file, as maps from column to value.
fn rows(path: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).expect("a CSV file");
    let header = reader.headers().expect("a header").clone();
    reader
        .records()
        .map(|row| {
            let row = row.expect("a row");
            header
                .iter()
                .zip(row.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// The ids of a replay output file.
fn ids(path: &Path) -> BTreeSet<String> {
    rows(path)
        .into_iter()
        .map(|row| row["id"].clone())
        .collect()
}

/// `(status, id, fields)` of each diff line.
fn diff(out: &Path) -> BTreeSet<(String, String, String)> {
    rows(&out.join("diff.csv"))
        .into_iter()
        .map(|row| {
            (
                row["status"].clone(),
                row["id"].clone(),
                row["fields"].clone(),
            )
        })
        .collect()
}

/// The alert id of a whole-supply alert of device `n` lost at `lost_at_ms`.
fn id(kind: &str, n: u64, lost_at_ms: i64) -> String {
    format!("{kind}-{}-0-{lost_at_ms}", device(n).replace('-', ""))
}

async fn replay(dir: &Path, args: &[&str], name: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let mut all = vec!["replay", "--out", out.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = run_to_exit(&all, dir, name).await;
    assert!(status.success(), "replay failed: {stdout}{stderr}");
    assert!(stdout.contains("outage-relay replay:"), "{stdout}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_gives_the_alerts_the_relay_emitted_and_a_debounce_changes_exactly_what_it_should()
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let listen = format!("127.0.0.1:{}", free_port().await);
    let metrics_listen = format!("127.0.0.1:{}", free_port().await);
    let url = format!("http://{listen}");
    let data = dir.path().join("data");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\ndebounce = \"2s\"\nlisten = \"{listen}\"\nmetrics_listen = \"{metrics_listen}\"\n",
            data.to_str().expect("utf-8")
        ),
    )
    .expect("write the config");
    let config_arg = config.to_str().expect("utf-8").to_owned();
    let mut relay = spawn(&["serve", "--config", &config_arg], dir.path(), "serve");
    let channel = wait_healthy(&url, dir.path()).await;
    let mut feed = bounded(
        "Subscribe",
        AlertFeedClient::new(channel.clone()).subscribe(SubscribeRequest {
            subscriber: "ukpn".into(),
            from_sequence: 0,
        }),
    )
    .await
    .expect("Subscribe")
    .into_inner();
    let mut received: Vec<Alert> = Vec::new();

    // The storm, one batch:
    // 1 and 5: lost now (their POAs come after the debounce);
    // 2: lost 1 s ago and restored 0.5 s ago: short at 2 s, no alert;
    // 4: a loss reported 5 minutes late: POA at once;
    // 3: only its restoration, carrying the loss 10 minutes ago: POA and PRA, learned late.
    let t0 = now_ms();
    let (lost_4, lost_3, restored_3) = (t0 - 300_000, t0 - 600_000, t0 - 60_000);
    let loss_1 = loss(1, t0);
    let restoration_3 = restoration(3, restored_3, Some(lost_3));
    let ack = publish(
        &channel,
        vec![
            loss_1.clone(),
            loss(5, t0),
            loss(2, t0 - 1_000),
            restoration(2, t0 - 500, None),
            loss(4, lost_4),
            restoration_3.clone(),
        ],
    )
    .await;
    assert_eq!((ack.accepted, ack.duplicates), (6, 0), "{ack:?}");
    while received.len() < 5 {
        let alert = bounded("an alert", feed.message())
            .await
            .expect("a healthy stream")
            .expect("an alert");
        received.push(alert);
    }
    // After the POAs: 1 and 5 restored (5's restoration, 1 s into its outage, arriving
    // after its debounce: the POA stands, a PRA follows), and two events sent again.
    let ack = publish(
        &channel,
        vec![
            loss_1,
            restoration_3,
            restoration(1, now_ms(), None),
            restoration(5, t0 + 1_000, None),
        ],
    )
    .await;
    assert_eq!((ack.accepted, ack.duplicates), (2, 2), "{ack:?}");
    while received.len() < 7 {
        let alert = bounded("an alert", feed.message())
            .await
            .expect("a healthy stream")
            .expect("an alert");
        received.push(alert);
    }
    drop(feed);
    relay.kill();
    relay.exit().await;
    let to = rfc3339(now_ms() + 1);
    let from = rfc3339(t0 - 3_600_000);
    let window = ["--config", &config_arg, "--from", &from, "--to", &to];

    let expected: BTreeSet<String> = [
        id("poa", 1, t0),
        id("pra", 1, t0),
        id("poa", 5, t0),
        id("pra", 5, t0),
        id("poa", 4, lost_4),
        id("poa", 3, lost_3),
        id("pra", 3, lost_3),
    ]
    .into_iter()
    .collect();
    let seen: BTreeSet<String> = received.iter().map(|a| a.alert_id.clone()).collect();
    assert_eq!(seen, expected, "the relay emitted these");

    let same = replay(dir.path(), &window, "same").await;
    assert_eq!(diff(&same), BTreeSet::new(), "no override: no difference");
    assert_eq!(ids(&same.join("replayed.csv")), expected);
    assert_eq!(ids(&same.join("emitted.csv")), expected);
    let learned_late: BTreeSet<String> = rows(&same.join("replayed.csv"))
        .into_iter()
        .filter(|row| row["learned_late"] == "true")
        .map(|row| row["id"].clone())
        .collect();
    assert_eq!(
        learned_late,
        [id("poa", 3, lost_3), id("pra", 3, lost_3)]
            .into_iter()
            .collect()
    );

    // 100 ms: 2's half-second outage now alerts; every POA is due earlier.
    let mut shorter = window.to_vec();
    shorter.extend_from_slice(&["--debounce", "100ms"]);
    let short = replay(dir.path(), &shorter, "short").await;
    let changed = |id: String| ("changed".to_owned(), id, "due_at;deadline".to_owned());
    let only = |status: &str, id: String| (status.to_owned(), id, String::new());
    assert_eq!(
        diff(&short),
        [
            only("only_in_replay", id("poa", 2, t0 - 1_000)),
            only("only_in_replay", id("pra", 2, t0 - 1_000)),
            changed(id("poa", 1, t0)),
            changed(id("poa", 5, t0)),
            changed(id("poa", 4, lost_4)),
            changed(id("poa", 3, lost_3)),
        ]
        .into_iter()
        .collect()
    );

    // An hour: none of these outages lasted that long, and 4's POA would be due after the
    // window; nothing alerts.
    let mut longer = window.to_vec();
    longer.extend_from_slice(&["--debounce", "1h"]);
    let long = replay(dir.path(), &longer, "long").await;
    assert_eq!(
        diff(&long),
        expected
            .iter()
            .map(|id| only("only_emitted", id.clone()))
            .collect()
    );
    assert!(ids(&long.join("replayed.csv")).is_empty());

    let (status, _, bad) = run_to_exit(
        &["replay", "--from", "yesterday", "--to", &to, "--out", "x"],
        dir.path(),
        "bad",
    )
    .await;
    assert_eq!(status.code(), Some(64), "{bad}");
    assert!(bad.contains("--from"), "{bad}");
}
