//! The embedded backend: the conformance suite, and what only a data directory can show
//! (everything is still there after a reopen, a torn tail is cut, old and foreign
//! directories are refused).

use std::io::Write;

use super::*;
use crate::config::RoutingConfig;
use crate::domain::DeviceId;
use crate::log::conformance::{self, NGED, Subject, UKPN, device_in, loss, poa, record, route};

fn table() -> RoutingTable {
    RoutingTable::from_config(&RoutingConfig::default())
}

fn options() -> Options {
    Options {
        segment_bytes: 4096,
        cache_bytes: 1 << 20,
    }
}

fn open(dir: &Path) -> Local {
    Local::open(dir, &table(), 2, &options()).expect("open the data directory")
}

fn subject(local: &Local) -> Subject {
    Subject {
        events: local.events(),
        alerts: local.alerts(),
        checkpoints: local.checkpoints(),
        partitions: local.partitions(),
        retention: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_log_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let local = open(dir.path());
    conformance::run_all(&subject(&local)).await;
    local.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_deletes_the_segments_older_than_the_event_retention_only() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let local = open(dir.path());
    let events = local.events();
    let device = device_in(1, 2, 0);
    let positions = conformance::append_many(&events, device, 0).await;
    let arrival_of = |at: i64| record(at, Vec::new()).arrival;
    let first = || local.events.readers[1].first();
    let through = positions[positions.len() - 1];

    events
        .truncate(1, through, arrival_of(0))
        .await
        .expect("truncate");
    conformance::append_many(&events, device, 200).await;
    assert_eq!(
        first(),
        positions[0],
        "every record is within the retention"
    );

    events
        .truncate(1, through, arrival_of(80))
        .await
        .expect("truncate");
    conformance::append_many(&events, device, 400).await;
    let kept = first();
    assert!(
        kept > positions[0] && kept <= positions[80],
        "whole segments older than the retention went, none holding a newer record: \
         the log starts at {kept}, record 80 is at {}",
        positions[80]
    );
    local.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_alerts_cursors_and_parked_alerts_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let device = device_in(1, 2, 0);
    let (position, parked_alert) = {
        let local = open(dir.path());
        let events = local.events();
        let alerts = local.alerts();
        let position = events
            .append(1, record(0, vec![loss(device, 0)]))
            .await
            .expect("append")
            .position;
        alerts
            .append(
                (0..4)
                    .map(|n| (poa(DeviceId(n + 1), 0), route(UKPN)))
                    .collect(),
            )
            .await
            .expect("append alerts");
        alerts.ack(UKPN, 3, UtcMillis(0)).await.expect("ack");
        alerts
            .record_sla(NGED, 0, UtcMillis(77), 4)
            .await
            .expect("sla");
        let parked_alert = poa(device, 5);
        alerts
            .park(1, vec![(parked_alert, ParkReason::UnknownDevice)])
            .await
            .expect("park");
        drop((events, alerts));
        local.close();
        (position, parked_alert)
    };
    let local = open(dir.path());
    let mut reader = local.events().reader(1, 0).await.expect("reader");
    let read = reader.next().await.expect("read").expect("the record");
    assert_eq!(read.position, position);
    assert_eq!(read.record, record(0, vec![loss(device, 0)]));
    let alerts = local.alerts();
    let status = alerts.status(UKPN).await.expect("status");
    assert_eq!((status.head, status.acked), (4, 3));
    let mark = alerts.sla_mark(NGED).await.expect("mark");
    assert_eq!((mark.checked_through, mark.breaches), (UtcMillis(77), 4));
    let parked = alerts.parked(1).await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].entry.alert, parked_alert);
    let stored = alerts
        .append(vec![(poa(DeviceId(9), 0), route(UKPN))])
        .await
        .expect("append");
    assert_eq!(stored[0].sequence, 5, "sequences go on after a reopen");
    local.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_record_at_the_end_of_an_event_log_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let device = device_in(0, 2, 0);
    {
        let local = open(dir.path());
        local
            .events()
            .append(0, record(0, vec![loss(device, 0)]))
            .await
            .expect("append");
        local.close();
    }
    // A crash in the middle of the next write: half a frame at the end of the segment.
    let segments = dir.path().join("events").join("0");
    let last = std::fs::read_dir(&segments)
        .expect("segments")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .max()
        .expect("a segment");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .expect("open the segment");
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6])
        .expect("a torn frame");
    drop(file);
    let local = open(dir.path());
    let events = local.events();
    let next = events
        .append(0, record(9, vec![loss(device, 9)]))
        .await
        .expect("append after the cut")
        .position;
    let mut reader = events.reader(0, 0).await.expect("reader");
    assert_eq!(
        reader.next().await.expect("read").map(|r| r.position),
        Some(1)
    );
    assert_eq!(
        reader.next().await.expect("read").map(|r| r.position),
        Some(next)
    );
    assert_eq!(next, 2, "the torn record took no position");
    local.close();
}

#[test]
fn a_directory_of_the_earlier_redb_store_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join(REDB_FILE), b"redb").expect("an old store");
    let err = Local::open(dir.path(), &table(), 2, &options()).expect_err("refused");
    assert!(err.to_string().contains("earlier outage-relay"), "{err}");
}

#[test]
fn a_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let first = open(dir.path());
    let err = Local::open(dir.path(), &table(), 2, &options()).expect_err("refused");
    assert!(err.to_string().contains("in use"), "{err}");
    first.close();
}

#[test]
fn a_directory_keeps_the_partition_count_it_was_created_with() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    open(dir.path()).close();
    let again = Local::open(dir.path(), &table(), 8, &options()).expect("reopen");
    assert_eq!(again.partitions(), 2);
    again.close();
}
