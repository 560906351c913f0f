//! Model check of the embedded log against the in-memory one, with crash points.
//!
//! Random event appends (two partitions), alert appends (two subscribers, some alerts sent
//! twice), acknowledgements, clean reopens and crashes run against both. A crash makes one
//! more append that the model never sees (it stands for a write a `kill -9` interrupted) and
//! cuts the file that append wrote at a random offset
//! inside what it added (the log is closed first, which only releases its files: everything
//! acknowledged was already synced, so the directory is what a `kill -9` in the middle of
//! that last write leaves). After every reopen and at the end, each partition's records and
//! each subscriber's unacknowledged alerts, head and cursor must equal the model's: nothing
//! acknowledged is lost or changed, the torn append leaves no trace, and positions and
//! sequences go on where the model's do.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::config::RoutingConfig;
use crate::domain::DeviceId;
use crate::log::conformance::{NGED, UKPN, device_in, loss, poa, record, route};
use crate::log::memory::{MemoryAlerts, MemoryEvents};
use crate::log::{AlertLog, EventLog, Logged};

const PARTITIONS: u16 = 2;

#[derive(Debug, Clone)]
enum Op {
    /// A record of `count` losses to `partition`.
    Events {
        partition: u16,
        count: u8,
        seed: u32,
    },
    /// `count` POAs to one subscriber, after the newest alert sent so far, again (a
    /// duplicate, answered with its first sequence).
    Alerts { ukpn: bool, count: u8, seed: u32 },
    /// Acknowledges a share (`of_256`) of the subscriber's unacknowledged alerts.
    Ack { ukpn: bool, of_256: u8 },
    /// Close and open again.
    Reopen,
    /// One more append, unacknowledged, torn at `cut` (a share of what it wrote).
    Crash { torn: Torn, cut: u16 },
}

#[derive(Debug, Clone, Copy)]
enum Torn {
    Events { partition: u16 },
    Alert { ukpn: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PARTITIONS, 1u8..20, any::<u32>())
            .prop_map(|(partition, count, seed)| Op::Events { partition, count, seed }),
        4 => (any::<bool>(), 1u8..12, any::<u32>())
            .prop_map(|(ukpn, count, seed)| Op::Alerts { ukpn, count, seed }),
        2 => (any::<bool>(), any::<u8>()).prop_map(|(ukpn, of_256)| Op::Ack { ukpn, of_256 }),
        1 => Just(Op::Reopen),
        2 => (
            prop_oneof![
                (0..PARTITIONS).prop_map(|partition| Torn::Events { partition }),
                any::<bool>().prop_map(|ukpn| Torn::Alert { ukpn }),
            ],
            any::<u16>(),
        )
            .prop_map(|(torn, cut)| Op::Crash { torn, cut }),
    ]
}

fn table() -> RoutingTable {
    RoutingTable::from_config(&RoutingConfig::default())
}

fn open(dir: &Path) -> Local {
    let options = Options {
        segment_bytes: 4096,
        cache_bytes: 1 << 16,
    };
    Local::open(dir, &table(), PARTITIONS, &options).expect("open the data directory")
}

fn subscriber(ukpn: bool) -> SubscriberId {
    if ukpn { UKPN } else { NGED }
}

fn subscriber_name(ukpn: bool) -> &'static str {
    if ukpn { "ukpn" } else { "nged" }
}

/// The newest file of a segment directory, and its length (none yet: `None`).
fn newest(dir: &Path) -> Option<(PathBuf, u64)> {
    let path = fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .max()?;
    let len = fs::metadata(&path).ok()?.len();
    Some((path, len))
}

fn losses(partition: u16, count: u8, seed: u32) -> EventRecord {
    let events = (0..u64::from(count))
        .map(|n| {
            let device = device_in(partition, PARTITIONS, u64::from(seed % 256) * 20 + n);
            loss(device, i64::from(seed))
        })
        .collect();
    record(i64::from(seed), events)
}

/// The POAs an `Alerts` op appends: distinct devices, so distinct ids.
fn poas(count: u8, seed: u32) -> Vec<Alert> {
    (0..u64::from(count))
        .map(|n| poa(DeviceId(u64::from(seed) << 8 | n), i64::from(seed)))
        .collect()
}

/// Everything both logs must agree on.
async fn contents(
    events: &dyn EventLog,
    alerts: &dyn AlertLog,
) -> (Vec<Vec<Logged>>, Vec<(LogStatus, Vec<LogEntry>)>) {
    let mut records = Vec::new();
    for partition in 0..PARTITIONS {
        let mut reader = events.reader(partition, 0).await.expect("event reader");
        let mut logged = Vec::new();
        while let Some(next) = reader.next().await.expect("read a record") {
            logged.push(next);
        }
        records.push(logged);
    }
    let mut logs = Vec::new();
    for log in [UKPN, NGED] {
        let status = alerts.status(log).await.expect("status");
        let status = LogStatus {
            first_retained: 0,
            ..status
        };
        let mut entries = Vec::new();
        if status.head > status.acked {
            let mut reader = alerts
                .reader(log, status.acked + 1)
                .await
                .expect("alert reader");
            while (entries.len() as u64) < status.head - status.acked {
                let read = reader.next(64).await.expect("read alerts");
                entries.extend(read.into_iter().map(|entry| LogEntry {
                    emitted_by: None,
                    ..entry
                }));
            }
        }
        logs.push((status, entries));
    }
    (records, logs)
}

async fn check(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let model_events = MemoryEvents::new(PARTITIONS);
    let model_alerts = MemoryAlerts::new(&table());
    let mut local = open(dir.path());
    let mut newest_sent: Option<(Alert, Route)> = None;
    for op in ops {
        match op {
            Op::Events {
                partition,
                count,
                seed,
            } => {
                let record = losses(partition, count, seed);
                let expected = model_events.append(partition, record.clone()).await;
                let got = local.events().append(partition, record).await;
                assert_eq!(got, expected, "event append to partition {partition}");
            }
            Op::Alerts { ukpn, count, seed } => {
                let mut batch: Vec<(Alert, Route)> = newest_sent.into_iter().collect();
                batch.extend(
                    poas(count, seed)
                        .into_iter()
                        .map(|alert| (alert, route(subscriber(ukpn)))),
                );
                newest_sent = batch.last().copied();
                let expected = model_alerts.append(batch.clone()).await;
                let got = local.alerts().append(batch).await;
                assert_eq!(got, expected, "alert append");
            }
            Op::Ack { ukpn, of_256 } => {
                let log = subscriber(ukpn);
                let status = model_alerts.status(log).await.expect("status");
                let upto = status.acked + (status.head - status.acked) * u64::from(of_256) / 256;
                let expected = model_alerts
                    .ack(log, upto, UtcMillis(0))
                    .await
                    .map(|s| (s.head, s.acked));
                let got = local
                    .alerts()
                    .ack(log, upto, UtcMillis(0))
                    .await
                    .map(|s| (s.head, s.acked));
                assert_eq!(got, expected, "ack of {upto}");
            }
            Op::Reopen => {
                local.close();
                local = open(dir.path());
                assert_eq!(
                    contents(local.events().as_ref(), local.alerts().as_ref()).await,
                    contents(&model_events, &model_alerts).await,
                    "after a reopen"
                );
            }
            Op::Crash { torn, cut } => {
                let files = match torn {
                    Torn::Events { partition } => {
                        dir.path().join("events").join(partition.to_string())
                    }
                    Torn::Alert { ukpn } => dir
                        .path()
                        .join("alerts")
                        .join(subscriber_name(ukpn))
                        .join("entries"),
                };
                let before = newest(&files);
                match torn {
                    Torn::Events { partition } => {
                        let record = losses(partition, 3, u32::from(cut));
                        local
                            .events()
                            .append(partition, record)
                            .await
                            .expect("the append the crash tears");
                    }
                    Torn::Alert { ukpn } => {
                        let alert = poa(DeviceId(u64::from(cut) << 32 | 0xdead), 1);
                        local
                            .alerts()
                            .append(vec![(alert, route(subscriber(ukpn)))])
                            .await
                            .expect("the append the crash tears");
                    }
                }
                // The writer stops (its files unlocked) with the append stored; the cut
                // below turns the stored append into the torn write a kill -9 leaves.
                local.close();
                let (path, after) = newest(&files).expect("the file the append wrote");
                let start = match before {
                    Some((old, len)) if old == path => len,
                    _ => 0,
                };
                let length = start + (after - start) * u64::from(cut) / (u64::from(u16::MAX) + 1);
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|file| file.set_len(length))
                    .expect("cut the file");
                local = open(dir.path());
                assert_eq!(
                    contents(local.events().as_ref(), local.alerts().as_ref()).await,
                    contents(&model_events, &model_alerts).await,
                    "after a crash tore {torn:?} at byte {length} of {after} (from {start})"
                );
            }
        }
    }
    assert_eq!(
        contents(local.events().as_ref(), local.alerts().as_ref()).await,
        contents(&model_events, &model_alerts).await,
        "at the end"
    );
    local.close();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_embedded_log_keeps_what_the_model_keeps_through_crashes(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(check(ops));
    }
}
