//! Tests of `outage-relay publish`.
use super::*;
use crate::proto::ingest_server::{Ingest, IngestServer};
use crate::proto::{EventError, Phase};
use clap::Parser;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

const NOW: UtcMillis = UtcMillis(1_796_032_800_000); // 2026-11-30T10:00:00Z

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    publish: PublishArgs,
}

fn args(argv: &[&str]) -> Result<PublishArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("publish").chain(argv.iter().copied()))
        .map(|cli| cli.publish)
}

#[test]
fn parses_rfc3339_relative_and_now() {
    assert_eq!(parse_time_at("2026-11-30T10:00:00Z", NOW), Ok(NOW));
    assert_eq!(
        parse_time_at("2026-11-30T10:00:00.250Z", NOW),
        Ok(UtcMillis(NOW.0 + 250))
    );
    assert_eq!(parse_time_at("-5m", NOW), Ok(UtcMillis(NOW.0 - 300_000)));
    assert_eq!(
        parse_time_at(" -1h 30s ", NOW),
        Ok(UtcMillis(NOW.0 - 3_630_000))
    );
    assert_eq!(parse_time_at("now", NOW), Ok(NOW));
}

#[test]
fn rejects_garbage_times() {
    for bad in [
        "",
        "yesterday",
        "-",
        "-5 parsecs",
        "5m",
        "2026-13-01T00:00:00Z",
        "2026-11-30",
        "1969-12-31T23:59:59Z",
    ] {
        assert!(
            parse_time_at(bad, NOW).is_err(),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn flags_need_exactly_one_kind_or_a_file() -> anyhow::Result<()> {
    let lost = args(&[
        "--device",
        "00-db-12-34-56-78-90-a0",
        "--lost",
        "--at",
        "-5m",
    ])?;
    assert!(lost.lost && lost.at.is_some());
    assert_eq!(lost.target, "http://127.0.0.1:50051");
    let restored = args(&[
        "--device",
        "00-db-12-34-56-78-90-a0",
        "--restored",
        "--phase",
        "2",
        "--at=2026-11-30T10:00:00Z",
        "--lost-at",
        "2026-11-30T09:00:00Z",
    ])?;
    assert_eq!(restored.at, Some(NOW));
    assert_eq!(restored.lost_at, Some(UtcMillis(NOW.0 - 3_600_000)));
    let file = args(&["--from-file", "events.csv", "--batch-size", "10"])?;
    assert_eq!(file.batch_size, 10);
    for bad in [
        &["--device", "d", "--lost", "--restored"][..],
        &["--device", "d"],
        &["--lost"],
        &["--device", "d", "--lost", "--lost-at", "-5m"],
        &["--device", "d", "--lost", "--phase", "4"],
        &["--device", "d", "--lost", "--at", "soon"],
        &["--from-file", "f.csv", "--lost"],
        &["--from-file", "f.csv", "--device", "d"],
        &["--from-file", "f.csv", "--batch-size", "0"],
    ] {
        assert!(args(bad).is_err(), "{bad:?} should be refused");
    }
    Ok(())
}

#[test]
fn default_event_id_is_deterministic_and_canonical() {
    let spec = |device: &str| EventSpec {
        device: device.to_owned(),
        phase: 1,
        kind: Kind::Restored,
        at: NOW,
        lost_at: Some(UtcMillis(NOW.0 - 600_000)),
        mpan_core: None,
        event_id: None,
    };
    let event = spec("00:DB:12:34:56:78:90:A0").into_proto();
    assert_eq!(
        event.event_id,
        format!(
            "restored-00-db-12-34-56-78-90-a0-1-{}-{}",
            NOW.0,
            NOW.0 - 600_000
        )
    );
    assert_eq!(
        event.event_id,
        spec("00-db-12-34-56-78-90-a0").into_proto().event_id
    );
    assert_eq!(event.device_id, "00:DB:12:34:56:78:90:A0");
    assert_eq!(event.alert_code, 0x8F38);
    let Some(device_event::Kind::Restored(restored)) = event.kind else {
        panic!("expected a restoration, got {:?}", event.kind);
    };
    assert_eq!(restored.restored_at, Some(NOW.to_proto()));
    assert_eq!(
        restored.lost_at,
        Some(UtcMillis(NOW.0 - 600_000).to_proto())
    );
}

#[test]
fn csv_rows_become_events() -> anyhow::Result<()> {
    let csv = "device_id,phase,kind,at,lost_at,mpan_core,event_id\n\
               00-db-12-34-56-78-90-a0,,lost,2026-11-30T10:00:00Z,,,\n\
               # a comment\n\
               \n\
               00-db-12-34-56-78-90-a1, 3 ,Restored,-5m,2026-11-30T09:00:00Z,1200012345671,ev-7\n";
    let rows = parse_csv(csv, NOW)?;
    assert_eq!(rows.len(), 2);
    let (line, lost) = &rows[0];
    assert_eq!(*line, 2);
    assert_eq!(lost.device_id, "00-db-12-34-56-78-90-a0");
    assert_eq!(lost.phase, Phase::Unspecified as i32);
    assert_eq!(lost.mpan_core, None);
    assert_eq!(
        lost.kind,
        Some(device_event::Kind::Lost(SupplyLost {
            lost_at: Some(NOW.to_proto())
        }))
    );
    let (line, restored) = &rows[1];
    assert_eq!(*line, 5);
    assert_eq!(restored.phase, 3);
    assert_eq!(restored.event_id, "ev-7");
    assert_eq!(restored.mpan_core.as_deref(), Some("1200012345671"));
    assert_eq!(
        restored.kind,
        Some(device_event::Kind::Restored(SupplyRestored {
            restored_at: Some(UtcMillis(NOW.0 - 300_000).to_proto()),
            lost_at: Some(UtcMillis(NOW.0 - 3_600_000).to_proto()),
        }))
    );
    // Column order is free and optional columns may be missing.
    let rows = parse_csv("kind,device_id\nlost,d1\n", NOW)?;
    assert_eq!(
        rows[0].1.kind,
        Some(device_event::Kind::Lost(SupplyLost {
            lost_at: Some(NOW.to_proto())
        }))
    );
    Ok(())
}

#[test]
fn csv_errors_name_every_bad_line() {
    let csv = "device_id,phase,kind,at,lost_at,mpan_core,event_id\n\
               d1,,lost,-5m,,,\n\
               d2,7,lost,-5m,,,\n\
               d3,,gone,-5m,,,\n\
               ,,lost,-5m,,,\n\
               d5,,lost,whenever,,,\n\
               d6,,lost,-5m,-10m,,\n\
               d7,,restored\n\
               d8,,restored,-1m,-9m,,\n";
    let error = match parse_csv(csv, NOW) {
        Ok(rows) => panic!("expected errors, parsed {} rows", rows.len()),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.starts_with("6 bad row(s):"), "{error}");
    for expected in [
        "line 3: phase \"7\" is not 0, 1, 2 or 3",
        "line 4: kind \"gone\" is not \"lost\" or \"restored\"",
        "line 5: device_id is empty",
        "line 6: at: \"whenever\"",
        "line 7: lost_at is only for kind \"restored\"",
        "line 8: 3 field(s), the header has 7",
    ] {
        assert!(error.contains(expected), "missing {expected:?} in {error}");
    }
    assert!(
        !error.contains("line 2:") && !error.contains("line 9:"),
        "{error}"
    );
}

#[test]
fn csv_header_must_be_known_and_complete() {
    for header in ["device_id,kind,colour\n", "device_id,phase,at\n"] {
        assert!(parse_csv(header, NOW).is_err(), "{header:?}");
    }
}

/// An `Ingest` that rejects device "bad" and counts repeated event IDs as duplicates.
#[derive(Clone, Default)]
struct FakeIngest {
    seen: Arc<Mutex<HashSet<String>>>,
    batch_sizes: Arc<Mutex<Vec<usize>>>,
}

impl FakeIngest {
    fn apply(&self, batch: &EventBatch) -> BatchAck {
        self.batch_sizes.lock().push(batch.events.len());
        let mut ack = BatchAck {
            batch_id: batch.batch_id,
            ..BatchAck::default()
        };
        let mut seen = self.seen.lock();
        for (index, event) in batch.events.iter().enumerate() {
            if event.device_id == "bad" {
                ack.rejected.push(EventError {
                    index: index as u32,
                    reason: "device_id \"bad\" is not an EUI-64".to_owned(),
                });
            } else if seen.insert(event.event_id.clone()) {
                ack.accepted += 1;
            } else {
                ack.duplicates += 1;
            }
        }
        ack
    }
}

#[tonic::async_trait]
impl Ingest for FakeIngest {
    type PublishStream = ReceiverStream<Result<BatchAck, Status>>;

    async fn publish(
        &self,
        request: Request<Streaming<EventBatch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let mut batches = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let ingest = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = batches.message().await {
                if tx.send(Ok(ingest.apply(&batch))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn publish_batch(
        &self,
        request: Request<EventBatch>,
    ) -> Result<Response<BatchAck>, Status> {
        Ok(Response::new(self.apply(request.get_ref())))
    }
}

async fn fake_relay() -> anyhow::Result<(FakeIngest, String, CancellationToken)> {
    let ingest = FakeIngest::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IngestServer::new(ingest.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    Ok((ingest, target, stop))
}

#[tokio::test]
async fn single_event_is_accepted_then_duplicate_then_rejected() -> anyhow::Result<()> {
    let (_ingest, target, stop) = fake_relay().await?;
    let argv = |device: &'static str| {
        args(&[
            "--target",
            &target,
            "--device",
            device,
            "--lost",
            "--at",
            "2026-11-30T10:00:00Z",
        ])
    };
    let first = run(argv("00-db-12-34-56-78-90-a0")?).await?;
    assert_eq!((first.accepted, first.duplicates), (1, 0));
    let again = run(argv("00-db-12-34-56-78-90-a0")?).await?;
    assert_eq!((again.accepted, again.duplicates), (0, 1));
    let rejected = run(argv("bad")?).await;
    assert!(rejected.is_err());
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn file_is_streamed_in_batches() -> anyhow::Result<()> {
    let (ingest, target, stop) = fake_relay().await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.csv");
    let mut csv = String::from("device_id,phase,kind,at,lost_at,mpan_core,event_id\n");
    for i in 0..5 {
        csv.push_str(&format!("00-db-12-34-56-78-90-a{i},,lost,-5m,,,ev-{i}\n"));
    }
    csv.push_str("00-db-12-34-56-78-90-a0,,lost,-5m,,,ev-0\n");
    std::fs::write(&path, csv)?;
    let file = path.display().to_string();
    let argv = [
        "--target",
        &target,
        "--from-file",
        &file,
        "--batch-size",
        "2",
    ];
    let summary = run(args(&argv)?).await?;
    assert_eq!(
        summary,
        PublishSummary {
            accepted: 5,
            duplicates: 1,
            rejected: 0
        }
    );
    assert_eq!(*ingest.batch_sizes.lock(), [2, 2, 2]);

    std::fs::write(&path, "device_id,kind,event_id\nbad,lost,x\nok,lost,y\n")?;
    let error = run(args(&argv)?).await.err().map(|error| error.to_string());
    assert_eq!(error.as_deref(), Some("the relay rejected 1 event(s)"));
    stop.cancel();
    Ok(())
}
