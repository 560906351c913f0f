//! Tests of the in-memory store against the interface semantics.

use super::*;
use crate::debounce::OutageState;
use crate::domain::{AlertKind, DeviceId, Phase, UtcMillis};
use crate::route::ParkReason;

fn alert(n: i64) -> (Alert, Destination) {
    let alert = Alert {
        kind: AlertKind::Outage,
        point: SupplyPoint {
            device: DeviceId(n as u64),
            phase: Phase::Whole,
        },
        lost_at: UtcMillis(n),
        restored_at: None,
        due_at: UtcMillis(n),
        deadline: UtcMillis(n),
        emitted_at: UtcMillis(n),
        received_at: UtcMillis(n),
        learned_late: false,
        event_mpan: None,
    };
    (alert, Destination::Parked(ParkReason::UnknownDevice))
}

#[test]
fn sequences_start_at_one_and_are_contiguous() {
    let store = MemoryStore::new(1);
    assert_eq!(store.append(LogId::Parked, &[alert(1), alert(2)]), Ok(2));
    assert_eq!(store.append(LogId::Parked, &[alert(3)]), Ok(3));
    let read = store.read(LogId::Parked, 1, 10).expect("read");
    let sequences: Vec<_> = read.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, vec![1, 2, 3]);
    assert_eq!(read[2].alert.lost_at, UtcMillis(3));
}

#[test]
fn acks_are_cumulative_idempotent_and_bounded_by_the_head() {
    let store = MemoryStore::new(1);
    store
        .append(LogId::Parked, &[alert(1), alert(2), alert(3)])
        .expect("append");
    assert_eq!(store.ack(LogId::Parked, 2).map(|v| v.len()), Ok(2));
    assert_eq!(store.ack(LogId::Parked, 1).map(|v| v.len()), Ok(0));
    assert!(matches!(
        store.ack(LogId::Parked, 4),
        Err(StoreError::BeyondHead { head: 3, .. })
    ));
    let status = store.status(LogId::Parked).expect("status");
    assert_eq!((status.head, status.acked, status.backlog()), (3, 2, 1));
}

#[test]
fn reading_acknowledged_sequences_is_gone_not_silent() {
    let store = MemoryStore::new(1);
    store
        .append(LogId::Parked, &[alert(1), alert(2)])
        .expect("append");
    store.ack(LogId::Parked, 1).expect("ack");
    assert_eq!(
        store.read(LogId::Parked, 1, 10),
        Err(StoreError::Gone {
            requested: 1,
            first_retained: 2
        })
    );
    assert_eq!(store.read(LogId::Parked, 2, 10).map(|v| v.len()), Ok(1));
    assert_eq!(store.read(LogId::Parked, 3, 10).map(|v| v.len()), Ok(0));
    assert!(matches!(
        store.read(LogId::Parked, 4, 10),
        Err(StoreError::BeyondHead { .. })
    ));
}

#[test]
fn sequences_are_never_reused_after_acks() {
    let store = MemoryStore::new(1);
    store
        .append(LogId::Parked, &[alert(1), alert(2)])
        .expect("append");
    store.ack(LogId::Parked, 2).expect("ack");
    assert_eq!(store.append(LogId::Parked, &[alert(3)]), Ok(3));
}

#[test]
fn logs_are_independent() {
    let store = MemoryStore::new(2);
    let a = LogId::Subscriber(crate::route::SubscriberId(0));
    let b = LogId::Subscriber(crate::route::SubscriberId(1));
    store.append(a, &[alert(1)]).expect("append");
    assert_eq!(store.status(b).map(|s| s.head), Ok(0));
    assert!(
        store
            .status(LogId::Subscriber(crate::route::SubscriberId(2)))
            .is_ok(),
        "index 2 is parked"
    );
    assert!(
        store
            .status(LogId::Subscriber(crate::route::SubscriberId(3)))
            .is_err()
    );
}

#[test]
fn open_outages_follow_recorded_changes() {
    let store = MemoryStore::new(0);
    let point = SupplyPoint {
        device: DeviceId(7),
        phase: Phase::L1,
    };
    let outage = OpenOutage {
        lost_at: UtcMillis(1),
        received_at: UtcMillis(2),
        state: OutageState::Pending,
        mpan: None,
    };
    store
        .record_outages(&[OutageChange::Upsert(point, outage)])
        .expect("record");
    assert_eq!(store.open_outages(), Ok(vec![(point, outage)]));
    store
        .record_outages(&[OutageChange::Closed(point)])
        .expect("record");
    assert_eq!(store.open_outages(), Ok(vec![]));
}
