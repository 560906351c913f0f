//! Store conformance tests, run against every implementation, and a model check of the
//! durable store against the in-memory one.

use super::*;
use crate::debounce::OutageState;
use crate::domain::{AlertKind, Phase};
use crate::route::ParkReason;

pub fn alert(n: i64) -> (Alert, Destination) {
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

pub fn append(log: LogId, ns: &[i64]) -> Write {
    Write::Append {
        log,
        entries: ns.iter().map(|n| alert(*n)).collect(),
    }
}

const SUB: LogId = LogId::Subscriber(crate::route::SubscriberId(0));

pub fn sequences_start_at_one_and_are_contiguous(store: &dyn Store) {
    let outcomes = store
        .commit(&[append(SUB, &[1, 2]), append(SUB, &[3])])
        .expect("commit");
    assert_eq!(
        outcomes,
        vec![
            Outcome::Appended { first: 1, last: 2 },
            Outcome::Appended { first: 3, last: 3 }
        ]
    );
    let read = store.read(SUB, 1, 10).expect("read");
    assert_eq!(
        read.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(read[2].alert, alert(3).0);
    assert_eq!(store.read(SUB, 2, 1).expect("read").len(), 1);
}

pub fn acks_are_cumulative_idempotent_and_bounded(store: &dyn Store) {
    store.commit(&[append(SUB, &[1, 2, 3])]).expect("append");
    let acked = store
        .commit(&[Write::Ack { log: SUB, upto: 2 }])
        .expect("ack");
    let Outcome::Acked { entries, status } = &acked[0] else {
        panic!("{acked:?}")
    };
    assert_eq!(entries.len(), 2);
    assert_eq!((status.head, status.acked, status.backlog()), (3, 2, 1));
    let again = store
        .commit(&[Write::Ack { log: SUB, upto: 1 }])
        .expect("ack");
    assert!(matches!(&again[0], Outcome::Acked { entries, .. } if entries.is_empty()));
    assert!(matches!(
        store.commit(&[Write::Ack { log: SUB, upto: 4 }]),
        Err(StoreError::BeyondHead { head: 3, .. })
    ));
    assert_eq!(store.status(SUB).expect("status").acked, 2);
}

pub fn reading_below_the_cursor_is_gone(store: &dyn Store) {
    store
        .commit(&[append(SUB, &[1, 2]), Write::Ack { log: SUB, upto: 1 }])
        .expect("commit");
    assert_eq!(
        store.read(SUB, 1, 10),
        Err(StoreError::Gone {
            requested: 1,
            first_retained: 2
        })
    );
    assert_eq!(store.read(SUB, 3, 10).map(|v| v.len()), Ok(0));
    assert!(matches!(
        store.read(SUB, 4, 10),
        Err(StoreError::BeyondHead { .. })
    ));
}

pub fn truncation_drops_unacked_entries_and_never_reuses_sequences(store: &dyn Store) {
    store
        .commit(&[append(SUB, &[1, 2, 3, 4]), Write::Ack { log: SUB, upto: 1 }])
        .expect("commit");
    let out = store
        .commit(&[Write::Truncate {
            log: SUB,
            first_retained: 4,
        }])
        .expect("truncate");
    assert_eq!(out, vec![Outcome::Truncated { unacked_removed: 2 }]);
    let status = store.status(SUB).expect("status");
    assert_eq!(
        (status.acked, status.first_retained, status.head),
        (3, 4, 4)
    );
    assert_eq!(store.read(SUB, 4, 10).expect("read").len(), 1);
    assert_eq!(
        store.commit(&[append(SUB, &[5])]).expect("append"),
        vec![Outcome::Appended { first: 5, last: 5 }]
    );
}

pub fn logs_are_independent(store: &dyn Store) {
    store
        .commit(&[append(SUB, &[1]), append(LogId::Parked, &[2, 3])])
        .expect("commit");
    assert_eq!(store.status(SUB).expect("status").head, 1);
    assert_eq!(store.status(LogId::Parked).expect("status").head, 2);
    let other = LogId::Subscriber(crate::route::SubscriberId(1));
    assert_eq!(store.status(other).expect("status").head, 0);
}

pub fn state_is_recovered_and_expires(store: &dyn Store) {
    let point = SupplyPoint {
        device: DeviceId(7),
        phase: Phase::L1,
    };
    let other = SupplyPoint {
        device: DeviceId(8),
        phase: Phase::Whole,
    };
    let outage = OpenOutage {
        lost_at: UtcMillis(1),
        received_at: UtcMillis(2),
        state: OutageState::Pending,
        mpan: None,
    };
    let seen = |n: i64| SeenEvent {
        device: DeviceId(7),
        key: EventKey(n as u128),
        seen_at: UtcMillis(n),
    };
    let tomb = |n: i64| Tombstone {
        point: other,
        restored_at: UtcMillis(n),
        closed_at: UtcMillis(n),
    };
    store
        .commit(&[Write::State {
            events: vec![seen(10), seen(20)],
            outages: vec![
                OutageChange::Upsert(point, outage),
                OutageChange::Upsert(other, outage),
            ],
            tombstones: vec![tomb(10), tomb(20)],
        }])
        .expect("commit");
    store
        .commit(&[
            Write::State {
                events: vec![],
                outages: vec![OutageChange::Closed(other)],
                tombstones: vec![],
            },
            Write::Expire {
                events_before: UtcMillis(15),
                tombstones_before: UtcMillis(15),
            },
        ])
        .expect("commit");
    let recovered = store.recover().expect("recover");
    assert_eq!(recovered.outages, vec![(point, outage)]);
    assert_eq!(recovered.events, vec![seen(20)]);
    assert_eq!(recovered.tombstones, vec![tomb(20)]);
}

/// One conformance check.
type Check = fn(&dyn Store);

/// Every conformance check, each on a fresh store from `make`.
pub fn run_all(make: &mut dyn FnMut() -> Box<dyn Store>) {
    let checks: [(&str, Check); 6] = [
        ("sequences", sequences_start_at_one_and_are_contiguous),
        ("acks", acks_are_cumulative_idempotent_and_bounded),
        ("gone", reading_below_the_cursor_is_gone),
        (
            "truncate",
            truncation_drops_unacked_entries_and_never_reuses_sequences,
        ),
        ("independent", logs_are_independent),
        ("recover", state_is_recovered_and_expires),
    ];
    for (name, check) in checks {
        let store = make();
        eprintln!("conformance: {name}");
        check(store.as_ref());
    }
}
