//! The Python DNO client (`deploy/clients/python/outage_relay_client.py`) against the real
//! binary on loopback: every alert once and in order, cumulative acks, a restart resuming after
//! the sequence in its state file (after a clean stop and after SIGKILL), storm summaries, and
//! mutual TLS with the DNO's certificate and refused without it or with another DNO's. And,
//! against a fake relay whose `Ack` waits until the test releases it, reading going on while an
//! ack is under way.
//!
//! The client runs in the venv `.ci/test` makes, found through `OUTAGE_RELAY_PYTHON`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use common::pki::{PemPair, Pki, SERVER_NAME, tls_channel};
use common::process::{Running, free_port, read, spawn, spawn_program, wait_healthy};
use common::{LONG_AGO_MS, bounded, device, eventually, lost, now_ms, restored, ts, valid_mpan};
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::alert_feed_server::{AlertFeed, AlertFeedServer};
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{
    AckRequest, AckResponse, Alert, AlertKind, DeviceEvent, EventBatch, GetDeliveryStatusRequest,
    OutageSummary, SubscribeRequest, SubscriberStatus, SummaryRequest,
};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The client script, in this repository.
const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/clients/python/outage_relay_client.py"
);

/// The venv's Python, with the client's requirements installed (a relative path is taken
/// from the repository root, where tests run).
fn python() -> String {
    let python = std::env::var("OUTAGE_RELAY_PYTHON").expect(
        "OUTAGE_RELAY_PYTHON is not set: run .ci/test, which makes the Python venv with \
         deploy/clients/python/requirements.txt and exports it",
    );
    std::path::absolute(&python)
        .unwrap_or_else(|err| panic!("OUTAGE_RELAY_PYTHON={python}: {err}"))
        .display()
        .to_string()
}

/// Starts the client with `args` in `dir`; its stderr goes to `dir/{name}.err`.
fn client(dir: &Path, name: &str, args: &[&str]) -> Running {
    let mut argv = vec![CLIENT];
    argv.extend_from_slice(args);
    spawn_program(&python(), &argv, &[], dir, name)
}

/// Sends `signal` (`-TERM`, `-KILL`) to `process`.
fn signal(process: &Running, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &process.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill {signal}");
}

/// The complete JSON lines of `dir/name` (none if it does not exist yet).
fn json_lines(dir: &Path, name: &str) -> Vec<Value> {
    read(dir, name)
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect()
}

/// The `sequence` of each alert line.
fn sequences(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|line| line["sequence"].as_u64().expect("a sequence"))
        .collect()
}

/// `acked_sequence` of the client's state file.
fn saved_sequence(dir: &Path) -> u64 {
    let state: Value =
        serde_json::from_str(&read(dir, "state.json")).expect("the state file is JSON");
    assert_eq!(state["subscriber"], "ukpn", "{state}");
    state["acked_sequence"].as_u64().expect("a sequence")
}

/// The relay binary, plaintext on a loopback port, with a one-second debounce.
async fn plaintext_relay(dir: &Path) -> (Running, String, Channel) {
    let listen = format!("127.0.0.1:{}", free_port().await);
    let relay = spawn(
        &[
            "serve",
            "--listen",
            &listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--debounce",
            "1s",
        ],
        dir,
        "serve",
    );
    let url = format!("http://{listen}");
    let channel = wait_healthy(&url, dir).await;
    (relay, url, channel)
}

/// Publishes `events`, all of which must be accepted.
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
    .expect("PublishBatch succeeds")
    .into_inner();
    assert_eq!(ack.accepted, count, "{ack:?}");
}

/// Outages of UKPN supplies (distributor 12) `devices` that began long ago: POAs due at once.
fn old_losses(devices: std::ops::RangeInclusive<u64>) -> Vec<DeviceEvent> {
    devices
        .map(|n| lost(&device(n), now_ms() - LONG_AGO_MS, Some(&valid_mpan(12, n))))
        .collect()
}

/// UKPN's delivery status.
async fn ukpn_status(channel: &Channel) -> SubscriberStatus {
    let request = GetDeliveryStatusRequest {
        subscriber: "ukpn".into(),
    };
    let mut response = bounded(
        "GetDeliveryStatus",
        AdminClient::new(channel.clone()).get_delivery_status(request),
    )
    .await
    .expect("GetDeliveryStatus succeeds")
    .into_inner();
    response.subscribers.remove(0)
}

/// Waits until UKPN's log holds `head` alerts.
async fn wait_head(channel: &Channel, head: u64) {
    eventually(&format!("UKPN's log to reach {head}"), || async {
        (ukpn_status(channel).await.head_sequence >= head).then_some(())
    })
    .await;
}

/// Waits until UKPN has acknowledged up to `sequence`.
async fn wait_acked(channel: &Channel, sequence: u64) {
    eventually(&format!("UKPN's ack of {sequence}"), || async {
        (ukpn_status(channel).await.acked_sequence == sequence).then_some(())
    })
    .await;
}

/// Waits until `dir/name` holds an alert line with sequence `sequence`.
async fn wait_line(dir: &Path, name: &str, sequence: u64) -> Vec<Value> {
    eventually(&format!("sequence {sequence} in {name}"), || async {
        let lines = json_lines(dir, name);
        sequences(&lines).contains(&sequence).then_some(lines)
    })
    .await
}

/// The client's arguments to subscribe as UKPN at `url`, keeping its state in `state.json`
/// and writing alerts to `output`, then `extra`.
fn ukpn_subscribe_args(url: &str, output: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "subscribe",
        "--target",
        url,
        "--subscriber",
        "ukpn",
        "--state",
        "state.json",
        "--output",
        output,
    ];
    args.extend_from_slice(extra);
    args.into_iter().map(str::to_owned).collect()
}

/// POAs and PRAs of three supplies: the client takes two and stops, a restart takes the rest
/// from the sequence after its state file's, and the relay's cursor follows its acks. Then a
/// SIGKILL mid-stream: the next run starts right after the saved sequence, so nothing is lost
/// and only alerts handled but not yet saved come again. And a state file ahead of the
/// relay's cursor (a crash between saving and acknowledging) is where the next run resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_acks_every_alert_in_order_and_resumes_from_its_state_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dir = dir.path();
    let (_relay, url, channel) = plaintext_relay(dir).await;
    let subscribe =
        |output: &'static str, extra: &[&'static str]| ukpn_subscribe_args(&url, output, extra);
    let run = |name: &str, args: &[String]| {
        client(
            dir,
            name,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };

    publish(&channel, old_losses(1..=3)).await;
    wait_head(&channel, 3).await;
    let mut first = run("first", &subscribe("first.jsonl", &["--once-count", "2"]));
    let status = first.exit().await;
    assert!(status.success(), "{}", read(dir, "first.err"));
    assert_eq!(sequences(&json_lines(dir, "first.jsonl")), [1, 2]);
    assert_eq!(saved_sequence(dir), 2);
    assert_eq!(ukpn_status(&channel).await.acked_sequence, 2);

    let restorations = (1..=3)
        .map(|n| restored(&device(n), now_ms(), None, Some(&valid_mpan(12, n))))
        .collect();
    publish(&channel, restorations).await;
    wait_head(&channel, 6).await;
    let mut second = run("second", &subscribe("second.jsonl", &[]));
    wait_line(dir, "second.jsonl", 6).await;
    wait_acked(&channel, 6).await;
    signal(&second, "-TERM");
    let status = second.exit().await;
    assert!(status.success(), "{}", read(dir, "second.err"));
    let second_lines = json_lines(dir, "second.jsonl");
    assert_eq!(sequences(&second_lines), [3, 4, 5, 6]);
    assert_eq!(saved_sequence(dir), 6);

    let alerts: Vec<(String, String)> = json_lines(dir, "first.jsonl")
        .iter()
        .chain(&second_lines)
        .map(|line| {
            let field = |name: &str| line[name].as_str().expect("a string").to_owned();
            (field("device_id"), field("kind"))
        })
        .collect();
    for n in 1..=3 {
        let of_device: Vec<&str> = alerts
            .iter()
            .filter(|(dev, _)| *dev == device(n))
            .map(|(_, kind)| kind.as_str())
            .collect();
        assert_eq!(
            of_device,
            ["POWER_OUTAGE", "POWER_RESTORATION"],
            "{alerts:?}"
        );
    }

    publish(&channel, old_losses(4..=6)).await;
    wait_head(&channel, 9).await;
    let mut third = run("third", &subscribe("third.jsonl", &["--ack-every", "1"]));
    wait_line(dir, "third.jsonl", 7).await;
    signal(&third, "-KILL");
    third.exit().await;
    let saved = saved_sequence(dir);
    let third_sequences = sequences(&json_lines(dir, "third.jsonl"));
    assert!((6..=9).contains(&saved), "saved {saved}");
    assert!(
        third_sequences.starts_with(&[7]) && third_sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "{third_sequences:?}"
    );

    publish(&channel, old_losses(7..=7)).await;
    let mut fourth = run("fourth", &subscribe("fourth.jsonl", &[]));
    let fourth_sequences = sequences(&wait_line(dir, "fourth.jsonl", 10).await);
    let expected: Vec<u64> = (saved + 1..=10).collect();
    assert_eq!(fourth_sequences, expected, "saved {saved}");
    wait_acked(&channel, 10).await;
    signal(&fourth, "-TERM");
    assert!(fourth.exit().await.success(), "{}", read(dir, "fourth.err"));
    assert_eq!(saved_sequence(dir), 10);

    // A crash after saving 11 but before acknowledging it: the relay's cursor is behind the
    // state file, and the client goes by the file.
    publish(&channel, old_losses(8..=9)).await;
    wait_head(&channel, 12).await;
    std::fs::write(
        dir.join("state.json"),
        r#"{"subscriber": "ukpn", "acked_sequence": 11}"#,
    )
    .expect("write the state file");
    let mut fifth = run("fifth", &subscribe("fifth.jsonl", &[]));
    assert_eq!(sequences(&wait_line(dir, "fifth.jsonl", 12).await), [12]);
    wait_acked(&channel, 12).await;
    signal(&fifth, "-TERM");
    assert!(fifth.exit().await.success(), "{}", read(dir, "fifth.err"));
    assert_eq!(saved_sequence(dir), 12);
}

/// Supplies off in UKPN's area show in the summaries the client writes, and a SIGTERM stops
/// it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_watches_storm_summaries() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dir = dir.path();
    let (_relay, url, channel) = plaintext_relay(dir).await;
    publish(&channel, old_losses(1..=2)).await;
    let mut watcher = client(
        dir,
        "watch",
        &[
            "watch-summaries",
            "--target",
            &url,
            "--subscriber",
            "ukpn",
            "--interval",
            "1s",
            "--output",
            "summaries.jsonl",
        ],
    );
    let summaries = eventually("a summary with UKPN's two supplies off", || async {
        let lines = json_lines(dir, "summaries.jsonl");
        let off = |line: &Value| {
            line["areas"].as_array().is_some_and(|areas| {
                areas.iter().any(|area| {
                    area["gsp_group"] == "_C" && area["distributor_id"] == 12 && area["open"] == "2"
                })
            })
        };
        lines.iter().any(off).then_some(lines)
    })
    .await;
    assert!(
        summaries.iter().all(|line| line["subscriber"] == "ukpn"),
        "{summaries:?}"
    );
    signal(&watcher, "-TERM");
    assert!(watcher.exit().await.success(), "{}", read(dir, "watch.err"));
}

/// The PKI of the mutual-TLS test and the relay's identities file.
struct MutualTls {
    server: PemPair,
    publisher: PemPair,
    ukpn: PemPair,
    nged: PemPair,
    ca: String,
    config: String,
}

impl MutualTls {
    fn new(dir: &Path) -> Self {
        let pki = Pki::new(dir, "dsp");
        let config = dir.join("relay.toml");
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

[[tls.identities]]
identity = "spiffe://dno.test/nged"
role = "subscriber"
subscriber = "nged"
"#,
        )
        .expect("write the config");
        Self {
            server: pki.server("relay"),
            publisher: pki.client("publisher", "spiffe://csp.test/adapter-1"),
            ukpn: pki.client("ukpn", "spiffe://dno.test/ukpn"),
            nged: pki.client("nged", "spiffe://dno.test/nged"),
            ca: pki.ca.display().to_string(),
            config: config.display().to_string(),
        }
    }
}

/// Under mutual TLS, UKPN's certificate gets UKPN's alerts and summaries; no certificate is
/// refused as unauthenticated and NGED's certificate as not allowed, each with exit status 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_over_mutual_tls_and_is_refused_without_its_certificate() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dir = dir.path();
    let tls = MutualTls::new(dir);
    let port = free_port().await;
    let listen = format!("127.0.0.1:{port}");
    let path = |p: &Path| p.display().to_string();
    let _relay = spawn(
        &[
            "serve",
            "--config",
            &tls.config,
            "--listen",
            &listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--debounce",
            "1s",
            "--tls-mode",
            "mutual",
            "--tls-cert",
            &path(&tls.server.cert),
            "--tls-key",
            &path(&tls.server.key),
            "--tls-client-ca",
            &tls.ca,
        ],
        dir,
        "serve",
    );
    let addr = listen.parse().expect("a socket address");
    let publisher = eventually("a TLS connection as the publisher", || async {
        tls_channel(addr, Path::new(&tls.ca), Some(&tls.publisher))
            .await
            .ok()
    })
    .await;
    publish(&publisher, old_losses(1..=1)).await;

    let url = format!("https://{listen}");
    let run = |name: &str, command: &str, identity: Option<&PemPair>, extra: &[&str]| {
        let (cert, key) = identity.map_or((String::new(), String::new()), |pair| {
            (path(&pair.cert), path(&pair.key))
        });
        let mut args = vec![
            command,
            "--target",
            &url,
            "--subscriber",
            "ukpn",
            "--tls-ca",
            &tls.ca,
            "--tls-domain",
            SERVER_NAME,
        ];
        if identity.is_some() {
            args.extend(["--tls-cert", cert.as_str(), "--tls-key", key.as_str()]);
        }
        args.extend_from_slice(extra);
        client(dir, name, &args)
    };

    let mut ukpn = run(
        "ukpn",
        "subscribe",
        Some(&tls.ukpn),
        &["--once-count", "1", "--output", "ukpn.jsonl"],
    );
    assert!(ukpn.exit().await.success(), "{}", read(dir, "ukpn.err"));
    let lines = json_lines(dir, "ukpn.jsonl");
    assert_eq!(sequences(&lines), [1]);
    assert_eq!(lines[0]["device_id"], device(1).as_str());
    assert_eq!(lines[0]["kind"], "POWER_OUTAGE");

    let mut summaries = run(
        "summaries",
        "watch-summaries",
        Some(&tls.ukpn),
        &[
            "--interval",
            "1s",
            "--once-count",
            "1",
            "--output",
            "summaries.jsonl",
        ],
    );
    assert!(
        summaries.exit().await.success(),
        "{}",
        read(dir, "summaries.err")
    );
    assert_eq!(json_lines(dir, "summaries.jsonl").len(), 1);

    let mut anonymous = run("anonymous", "subscribe", None, &[]);
    assert_eq!(anonymous.exit().await.code(), Some(1));
    let refusal = read(dir, "anonymous.err");
    assert!(refusal.contains("UNAUTHENTICATED"), "{refusal}");

    let mut nged = run("nged", "subscribe", Some(&tls.nged), &[]);
    assert_eq!(nged.exit().await.code(), Some(1));
    let refusal = read(dir, "nged.err");
    assert!(refusal.contains("PERMISSION_DENIED"), "{refusal}");
}

/// What the fake relay of [`SlowAcks`] has seen.
#[derive(Debug, Default)]
struct SlowAcksSeen {
    /// `from_sequence` of each `Subscribe`.
    subscribes: Vec<u64>,
    /// The sequence of each `Ack`, in the order they arrived.
    acks: Vec<u64>,
    /// `Ack` calls answered.
    answered: usize,
    /// Whether an `Ack` arrived while an earlier one was still unanswered.
    overlapped: bool,
}

/// A fake relay's `AlertFeed` holding UKPN's alerts 1..=5, whose cursor store answers acks
/// only once the test [`release`](SlowAcks::release)s them. Its stream sends the alerts
/// from `from_sequence` but waits for an ack to arrive before alert 2, so alerts 2..=5 leave
/// it while that ack is under way; then it stays open.
#[derive(Clone)]
struct SlowAcks {
    seen: Arc<Mutex<SlowAcksSeen>>,
    ack_arrived: Arc<Notify>,
    released: Arc<watch::Sender<bool>>,
}

impl SlowAcks {
    fn new() -> Self {
        Self {
            seen: Arc::default(),
            ack_arrived: Arc::new(Notify::new()),
            released: Arc::new(watch::Sender::new(false)),
        }
    }

    fn seen(&self) -> MutexGuard<'_, SlowAcksSeen> {
        self.seen.lock().expect("the fake relay's lock")
    }

    /// Answers the acks waiting and every later one at once.
    fn release(&self) {
        self.released.send_replace(true);
    }
}

/// UKPN's alert `sequence`, a POA of supply `sequence`.
fn slow_acks_alert(sequence: u64) -> Alert {
    Alert {
        alert_id: format!("poa-{}-0-{sequence}", device(sequence)),
        sequence,
        kind: AlertKind::PowerOutage as i32,
        device_id: device(sequence),
        mpan_core: valid_mpan(12, sequence),
        distributor_id: 12,
        gsp_group: "_C".to_owned(),
        lost_at: Some(ts(now_ms() - LONG_AGO_MS)),
        subscriber: "ukpn".to_owned(),
        ..Alert::default()
    }
}

#[tonic::async_trait]
impl AlertFeed for SlowAcks {
    type SubscribeStream = ReceiverStream<Result<Alert, Status>>;
    type WatchSummariesStream = ReceiverStream<Result<OutageSummary, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        assert_eq!(request.subscriber, "ukpn");
        self.seen().subscribes.push(request.from_sequence);
        let (tx, rx) = mpsc::channel(8);
        let ack_arrived = Arc::clone(&self.ack_arrived);
        tokio::spawn(async move {
            for sequence in request.from_sequence.max(1)..=5 {
                if sequence == 2 {
                    ack_arrived.notified().await;
                }
                if tx.send(Ok(slow_acks_alert(sequence))).await.is_err() {
                    return;
                }
            }
            tx.closed().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let request = request.into_inner();
        assert_eq!(request.subscriber, "ukpn");
        {
            let mut seen = self.seen();
            seen.overlapped |= seen.acks.len() > seen.answered;
            seen.acks.push(request.sequence);
        }
        self.ack_arrived.notify_one();
        let mut released = self.released.subscribe();
        if released.wait_for(|released| *released).await.is_err() {
            return Err(Status::unavailable("the fake relay is gone"));
        }
        let mut seen = self.seen();
        seen.answered += 1;
        let acked = seen.acks[..seen.answered]
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        Ok(Response::new(AckResponse {
            acked_sequence: acked,
            backlog: 5 - acked,
        }))
    }

    async fn watch_summaries(
        &self,
        _request: Request<SummaryRequest>,
    ) -> Result<Response<Self::WatchSummariesStream>, Status> {
        Err(Status::unimplemented("the fake relay has no summaries"))
    }
}

/// An ack the relay is slow to answer (its cursor store electing a leader) does not hold up
/// reading: alerts 2..=5, sent only once the client's first ack has arrived and while it is
/// held, reach the client's output in the same session, with the state file still at the
/// sequence of that ack and no second ack sent meanwhile. Having its `--once-count`, the
/// client waits for that ack before it stops; once released, the next ack covers all five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_reads_on_while_an_ack_waits() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dir = dir.path();
    let feed = SlowAcks::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let relay = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AlertFeedServer::new(feed.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let args = ukpn_subscribe_args(
        &url,
        "alerts.jsonl",
        &["--ack-every", "1", "--once-count", "5"],
    );
    let mut subscriber = client(
        dir,
        "slow",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let lines = wait_line(dir, "alerts.jsonl", 5).await;
    assert_eq!(sequences(&lines), [1, 2, 3, 4, 5]);
    {
        let seen = feed.seen();
        assert_eq!(seen.acks, [1], "one ack, still under way: {seen:?}");
        assert_eq!(seen.answered, 0, "{seen:?}");
        assert_eq!(seen.subscribes, [0], "one session: {seen:?}");
    }
    assert_eq!(
        saved_sequence(dir),
        1,
        "saved before the ack that covers it"
    );
    assert!(
        subscriber.is_running(),
        "the client stopped before its ack was answered: {}",
        read(dir, "slow.err")
    );

    feed.release();
    let status = subscriber.exit().await;
    assert!(status.success(), "{}", read(dir, "slow.err"));
    {
        let seen = feed.seen();
        assert_eq!(seen.acks, [1, 5], "the next ack is cumulative: {seen:?}");
        assert_eq!(seen.answered, 2, "{seen:?}");
        assert!(!seen.overlapped, "one ack under way at a time: {seen:?}");
        assert_eq!(seen.subscribes, [0], "one session: {seen:?}");
    }
    assert_eq!(saved_sequence(dir), 5);
    assert_eq!(sequences(&json_lines(dir, "alerts.jsonl")), [1, 2, 3, 4, 5]);
    let log = read(dir, "slow.err");
    assert!(log.contains("acknowledged up to 5"), "{log}");
    relay.abort();
}
