//! Tests of `outage-relay dno-sink`.
use super::record::json_line;
use super::*;
use crate::proto::alert_feed_server::{AlertFeed, AlertFeedServer};
use crate::proto::alert_receiver_client::AlertReceiverClient;
use crate::proto::{AckResponse, Phase};
use clap::Parser;
use tokio_stream::wrappers::TcpListenerStream;

pub(super) const T0: i64 = 1_796_032_800_000; // 2026-11-30T10:00:00Z

pub(super) fn alert(sequence: u64) -> Alert {
    Alert {
        alert_id: format!("poa-00db1234567890a0-0-{sequence}"),
        sequence,
        kind: AlertKind::PowerOutage as i32,
        device_id: "00-db-12-34-56-78-90-a0".to_owned(),
        phase: Phase::Unspecified as i32,
        mpan_core: "1200012345671".to_owned(),
        distributor_id: 12,
        gsp_group: "_C".to_owned(),
        lost_at: Some(UtcMillis(T0).to_proto()),
        restored_at: None,
        due_at: Some(UtcMillis(T0 + 180_000).to_proto()),
        deadline: Some(UtcMillis(T0 + 240_000).to_proto()),
        emitted_at: Some(UtcMillis(T0 + 180_005).to_proto()),
        learned_late: false,
        outage_duration_ms: 0,
        subscriber: "ukpn".to_owned(),
        emitted_by: String::new(),
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sink: SinkArgs,
}

#[test]
fn json_line_has_every_field_and_rfc3339_timestamps() -> anyhow::Result<()> {
    let line = json_line(&alert(7), UtcMillis(T0 + 180_123))?;
    let value: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(value["alert_id"], "poa-00db1234567890a0-0-7");
    assert_eq!(value["sequence"], 7);
    assert_eq!(value["kind"], "POWER_OUTAGE");
    assert_eq!(value["phase"], 0);
    assert_eq!(value["distributor_id"], 12);
    assert_eq!(value["lost_at"], "2026-11-30T10:00:00.000Z");
    assert_eq!(value["due_at"], "2026-11-30T10:03:00.000Z");
    assert_eq!(value["deadline"], "2026-11-30T10:04:00.000Z");
    assert_eq!(value["emitted_at"], "2026-11-30T10:03:00.005Z");
    assert_eq!(value["received_at"], "2026-11-30T10:03:00.123Z");
    assert_eq!(value["learned_late"], false);
    assert_eq!(value["subscriber"], "ukpn");
    assert!(
        value.get("restored_at").is_none(),
        "unset timestamps are omitted"
    );
    assert!(!line.contains('\n'));
    Ok(())
}

#[test]
fn json_line_escapes_strings_and_names_the_kind() -> anyhow::Result<()> {
    let mut pra = alert(8);
    pra.kind = AlertKind::PowerRestoration as i32;
    pra.restored_at = Some(UtcMillis(T0 + 600_000).to_proto());
    pra.outage_duration_ms = 600_000;
    pra.learned_late = true;
    pra.subscriber = "quote\" back\\slash\nnewline\ttab \u{1} é".to_owned();
    let line = json_line(&pra, UtcMillis(T0))?;
    assert!(line.contains(r#""subscriber":"quote\" back\\slash\nnewline\ttab \u0001 é""#));
    assert!(!line.contains('\n'));
    let value: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(value["kind"], "POWER_RESTORATION");
    assert_eq!(value["restored_at"], "2026-11-30T10:10:00.000Z");
    assert_eq!(value["outage_duration_ms"], 600_000);
    assert_eq!(value["learned_late"], true);
    assert_eq!(value["subscriber"], pra.subscriber.as_str());
    let mut odd = alert(9);
    odd.kind = 42;
    let value: serde_json::Value = serde_json::from_str(&json_line(&odd, UtcMillis(T0))?)?;
    assert_eq!(value["kind"], "ALERT_KIND_UNSPECIFIED");
    Ok(())
}

#[test]
fn flags_select_push_or_subscribe_mode() -> anyhow::Result<()> {
    let push = Cli::try_parse_from(["sink"])?.sink;
    assert_eq!(push.listen, "127.0.0.1:50061".parse::<SocketAddr>()?);
    assert_eq!((push.subscribe, push.ack_every), (None, 100));
    let sub = Cli::try_parse_from([
        "sink",
        "--subscribe",
        "http://127.0.0.1:50051",
        "--subscriber",
        "ukpn",
        "--from-sequence",
        "5",
        "--once-count",
        "3",
    ])?
    .sink;
    assert_eq!(sub.subscriber.as_deref(), Some("ukpn"));
    assert_eq!((sub.from_sequence, sub.once_count), (5, Some(3)));
    for bad in [
        &["sink", "--subscribe", "http://x:1"][..],
        &["sink", "--subscriber", "ukpn"],
        &[
            "sink",
            "--listen",
            "127.0.0.1:1",
            "--subscribe",
            "http://x:1",
            "--subscriber",
            "a",
        ],
        &["sink", "--from-sequence", "3"],
        &["sink", "--ack-every", "0"],
    ] {
        assert!(
            Cli::try_parse_from(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
    Ok(())
}

#[tokio::test]
async fn push_mode_records_and_acks_each_alert() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("alerts.jsonl");
    let received = ReceivedAlerts::new();
    let recorder = Recorder::open(RecordOptions {
        output: Some(output.clone()),
        stdout: false,
        once_count: None,
        keep: Some(received.clone()),
        ..RecordOptions::default()
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_receiver(
        listener,
        recorder.clone(),
        shutdown.clone(),
        None,
    ));

    let mut client = AlertReceiverClient::connect(format!("http://{addr}")).await?;
    let outbound = tokio_stream::iter([alert(1), alert(2), alert(3)]);
    let mut acks = client.deliver(outbound).await?.into_inner();
    let mut sequences = Vec::new();
    while let Some(ack) = tokio::time::timeout(Duration::from_secs(5), acks.message()).await?? {
        sequences.push(ack.sequence);
    }
    assert_eq!(sequences, [1, 2, 3]);

    let got = tokio::time::timeout(Duration::from_secs(5), received.wait_for(3)).await?;
    assert_eq!(got, [alert(1), alert(2), alert(3)]);
    assert_eq!(received.snapshot().len(), 3);
    let text = std::fs::read_to_string(&output)?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let file_sequences: Vec<_> = lines.iter().map(|line| line["sequence"].clone()).collect();
    assert_eq!(file_sequences, [1, 2, 3]);
    assert_eq!(
        recorder.summary(),
        SinkSummary {
            received: 3,
            last_sequence: 3
        }
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await???;
    Ok(())
}

#[tokio::test]
async fn push_mode_stops_after_once_count() -> anyhow::Result<()> {
    let received = ReceivedAlerts::new();
    let recorder = Recorder::open(RecordOptions {
        once_count: Some(2),
        keep: Some(received.clone()),
        ..RecordOptions::default()
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve_receiver(
        listener,
        recorder.clone(),
        CancellationToken::new(),
        None,
    ));
    let mut client = AlertReceiverClient::connect(format!("http://{addr}")).await?;
    // The relay side keeps its stream open; the sink must end it by itself.
    let (tx, rx) = mpsc::channel(8);
    for sequence in 1..=3 {
        tx.send(alert(sequence)).await?;
    }
    let mut acks = client.deliver(ReceiverStream::new(rx)).await?.into_inner();
    let mut sequences = Vec::new();
    while let Ok(Some(ack)) = tokio::time::timeout(Duration::from_secs(5), acks.message()).await? {
        sequences.push(ack.sequence);
    }
    assert_eq!(sequences, [1, 2]);
    tokio::time::timeout(Duration::from_secs(5), server).await???;
    assert_eq!(received.snapshot(), [alert(1), alert(2)]);
    drop(tx);
    Ok(())
}

/// An `AlertFeed` holding alerts 1..=5 whose first Subscribe stream fails after two alerts;
/// or, `steady`, one stream that sends two alerts, waits for an ack to arrive, then sends
/// the other three, with acks answered only once `release`d while `held`.
#[derive(Clone, Default)]
struct FakeFeed {
    acked: Arc<Mutex<u64>>,
    ack_calls: Arc<Mutex<u32>>,
    subscribes: Arc<Mutex<Vec<u64>>>,
    steady: bool,
    held: Arc<Mutex<bool>>,
    ack_arrived: Arc<Notify>,
    release: Arc<Notify>,
}

#[tonic::async_trait]
impl AlertFeed for FakeFeed {
    type SubscribeStream = ReceiverStream<Result<Alert, Status>>;
    type WatchSummariesStream = ReceiverStream<Result<crate::proto::OutageSummary, Status>>;

    async fn watch_summaries(
        &self,
        _request: Request<crate::proto::SummaryRequest>,
    ) -> Result<Response<Self::WatchSummariesStream>, Status> {
        Err(Status::unimplemented("the fake feed has no summaries"))
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        assert_eq!(request.subscriber, "ukpn");
        let first_call = {
            let mut subscribes = self.subscribes.lock();
            subscribes.push(request.from_sequence);
            subscribes.len() == 1
        };
        let start = match request.from_sequence {
            0 => *self.acked.lock() + 1,
            from => from,
        };
        let (tx, rx) = mpsc::channel(16);
        if self.steady {
            let ack_arrived = Arc::clone(&self.ack_arrived);
            tokio::spawn(async move {
                for sequence in start..=5 {
                    if sequence == 3 {
                        ack_arrived.notified().await;
                    }
                    if tx.send(Ok(alert(sequence))).await.is_err() {
                        return;
                    }
                }
                tx.closed().await;
            });
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        tokio::spawn(async move {
            let end = if first_call { start + 1 } else { 5 };
            for sequence in start..=end {
                if tx.send(Ok(alert(sequence))).await.is_err() {
                    return;
                }
            }
            if first_call {
                let _ = tx.send(Err(Status::unavailable("relay restarting"))).await;
            } else {
                tx.closed().await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        *self.ack_calls.lock() += 1;
        self.ack_arrived.notify_one();
        let held = *self.held.lock();
        if held {
            self.release.notified().await;
        }
        let mut acked = self.acked.lock();
        *acked = (*acked).max(request.into_inner().sequence);
        Ok(Response::new(AckResponse {
            acked_sequence: *acked,
            backlog: 5 - *acked,
        }))
    }
}

/// Waits until the fake relay has seen an ack up to `sequence`, then stops the sink and
/// returns its summary.
async fn stop_once_acked(
    feed: &FakeFeed,
    sequence: u64,
    shutdown: &CancellationToken,
    sink: tokio::task::JoinHandle<anyhow::Result<SinkSummary>>,
) -> anyhow::Result<SinkSummary> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while *feed.acked.lock() < sequence {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), sink).await??
}

/// The fake relay serving `feed` on loopback, and a sink subscribed to it as `ukpn`
/// writing `output`: the relay's stop and task, the sink's shutdown and task.
async fn serve_and_subscribe(
    feed: &FakeFeed,
    output: &std::path::Path,
) -> anyhow::Result<(
    CancellationToken,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<SinkSummary>>,
)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AlertFeedServer::new(feed.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                relay_stop.clone().cancelled_owned(),
            ),
    );
    let args = Cli::try_parse_from([
        "sink",
        "--subscribe",
        &format!("http://{addr}"),
        "--subscriber",
        "ukpn",
        "--output",
        &output.display().to_string(),
    ])?
    .sink;
    let shutdown = CancellationToken::new();
    let sink = tokio::spawn(run(args, shutdown.clone()));
    Ok((relay_stop, relay, shutdown, sink))
}

#[tokio::test]
async fn subscribe_mode_acks_when_idle_and_resumes_after_a_failure() -> anyhow::Result<()> {
    let feed = FakeFeed::default();
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("alerts.jsonl");
    let (relay_stop, relay, shutdown, sink) = serve_and_subscribe(&feed, &output).await?;

    let summary = stop_once_acked(&feed, 5, &shutdown, sink).await?;
    assert_eq!(
        summary,
        SinkSummary {
            received: 5,
            last_sequence: 5
        }
    );
    assert_eq!(*feed.subscribes.lock(), [0, 0]);
    assert!(
        *feed.ack_calls.lock() < 5,
        "acks are cumulative, not per alert"
    );
    let text = std::fs::read_to_string(&output)?;
    let sequences: Vec<u64> = text
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .map(|value| value["sequence"].as_u64().unwrap_or(0))
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
    relay_stop.cancel();
    relay.await??;
    Ok(())
}

/// An ack the relay is slow to answer (its cursor store electing a leader) does not hold up
/// the alerts still arriving: they are recorded meanwhile, and acknowledged once it answers.
#[tokio::test]
async fn subscribe_mode_records_on_while_an_ack_waits() -> anyhow::Result<()> {
    let feed = FakeFeed {
        steady: true,
        held: Arc::new(Mutex::new(true)),
        ..FakeFeed::default()
    };
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("alerts.jsonl");
    let (relay_stop, relay, shutdown, sink) = serve_and_subscribe(&feed, &output).await?;

    tokio::time::timeout(Duration::from_secs(10), async {
        while std::fs::read_to_string(&output).map_or(0, |text| text.lines().count()) < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("alerts 3..=5 were not recorded while the first ack waited"))?;
    assert_eq!(*feed.acked.lock(), 0, "the first ack is still held");
    *feed.held.lock() = false;
    feed.release.notify_one();
    let summary = stop_once_acked(&feed, 5, &shutdown, sink).await?;
    assert_eq!(summary.received, 5);
    assert_eq!(*feed.subscribes.lock(), [0], "one session throughout");
    relay_stop.cancel();
    relay.await??;
    Ok(())
}

#[tokio::test]
async fn format_and_post_flags() -> anyhow::Result<()> {
    let default = Cli::try_parse_from(["sink"])?.sink;
    assert_eq!((default.format, default.post), (Format::Json, None));
    let cim = Cli::try_parse_from([
        "sink",
        "--format",
        "cim",
        "--post",
        "https://oms.example/events",
        "--post-ca",
        "ca.pem",
    ])?
    .sink;
    assert_eq!(cim.format, Format::Cim);
    assert_eq!(cim.post.as_deref(), Some("https://oms.example/events"));
    assert_eq!(cim.post_ca, Some(PathBuf::from("ca.pem")));
    for bad in [
        &["sink", "--format", "xml"][..],
        &["sink", "--format", "cim", "--post-ca", "ca.pem"],
    ] {
        assert!(
            Cli::try_parse_from(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
    let json_post = Cli::try_parse_from(["sink", "--post", "http://127.0.0.1:1/"])?.sink;
    let refused = run(json_post, CancellationToken::new()).await;
    let error = refused.err().map(|err| format!("{err:#}"));
    assert!(
        error
            .as_deref()
            .is_some_and(|err| err.contains("--format cim")),
        "{error:?}"
    );
    let mut ftp = Cli::try_parse_from(["sink", "--format", "cim"])?.sink;
    ftp.post = Some("ftp://oms.example/".to_owned());
    let error = run(ftp, CancellationToken::new()).await.err();
    assert!(
        error.is_some_and(|err| err.to_string().contains("not an http:// or https:// URL")),
        "an ftp:// OMS is refused"
    );
    Ok(())
}

#[test]
fn post_ca_must_hold_certificates_and_go_with_https() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n")?;
    let stop = CancellationToken::new();
    let error = Oms::new("https://oms.example/", Some(&empty), stop.clone())
        .err()
        .map(|err| format!("{err:#}"));
    assert!(
        error
            .as_deref()
            .is_some_and(|err| err.contains("holds no CERTIFICATE block")),
        "{error:?}"
    );
    let error = Oms::new("http://oms.example/", Some(&empty), stop.clone())
        .err()
        .map(|err| format!("{err:#}"));
    assert!(
        error
            .as_deref()
            .is_some_and(|err| err.contains("not an https:// URL")),
        "{error:?}"
    );
    assert!(Oms::new("http://127.0.0.1:8080/events", None, stop).is_ok());
    Ok(())
}
