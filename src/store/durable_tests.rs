//! Tests of the redb store: conformance, restart, log identity by name, and a model check
//! against the in-memory store.

use proptest::prelude::*;

use super::*;
use crate::route::SubscriberId;
use crate::store::MemoryStore;
use crate::store::conformance::{alert, append, run_all};

fn open(dir: &Path, names: &[&str]) -> DurableStore {
    DurableStore::open(dir, names).expect("open")
}

#[test]
fn durable_store_conforms() {
    let dirs = std::cell::RefCell::new(Vec::new());
    run_all(&mut || {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), &["a", "b"]);
        dirs.borrow_mut().push(dir);
        Box::new(store)
    });
}

#[test]
fn everything_committed_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = LogId::Subscriber(SubscriberId(0));
    {
        let store = open(dir.path(), &["a"]);
        store
            .commit(&[append(sub, &[1, 2, 3]), Write::Ack { log: sub, upto: 1 }])
            .expect("commit");
    }
    let store = open(dir.path(), &["a"]);
    let status = store.status(sub).expect("status");
    assert_eq!((status.head, status.acked), (3, 1));
    let read = store.read(sub, 2, 10).expect("read");
    assert_eq!(
        read.iter().map(|e| e.alert).collect::<Vec<_>>(),
        vec![alert(2).0, alert(3).0]
    );
    assert_eq!(
        store.commit(&[append(sub, &[4])]).expect("append"),
        vec![Outcome::Appended { first: 4, last: 4 }]
    );
}

#[test]
fn logs_follow_subscriber_names_across_config_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), &["ukpn", "npg"]);
        store
            .commit(&[append(LogId::Subscriber(SubscriberId(1)), &[7])])
            .expect("commit");
    }
    let store = open(dir.path(), &["enwl", "npg", "ukpn"]);
    assert_eq!(
        store
            .status(LogId::Subscriber(SubscriberId(1)))
            .expect("npg")
            .head,
        1
    );
    assert_eq!(
        store
            .status(LogId::Subscriber(SubscriberId(0)))
            .expect("enwl")
            .head,
        0
    );
    assert_eq!(
        store
            .status(LogId::Subscriber(SubscriberId(2)))
            .expect("ukpn")
            .head,
        0
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = open(dir.path(), &["a"]);
    let second = DurableStore::open(dir.path(), &["a"]);
    assert!(
        matches!(second, Err(StoreError::Unavailable(_))),
        "{second:?}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8, Vec<i64>),
    Ack(u8, u64),
    Truncate(u8, u64),
    Read(u8, u64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, prop::collection::vec(0i64..1000, 1..5)).prop_map(|(l, ns)| Op::Append(l, ns)),
        (0u8..3, 0u64..12).prop_map(|(l, n)| Op::Ack(l, n)),
        (0u8..3, 0u64..12).prop_map(|(l, n)| Op::Truncate(l, n)),
        (0u8..3, 0u64..14, 0usize..6).prop_map(|(l, n, m)| Op::Read(l, n, m)),
    ]
}

fn log(index: u8) -> LogId {
    if index == 2 {
        LogId::Parked
    } else {
        LogId::Subscriber(SubscriberId(u16::from(index)))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The durable store answers every operation exactly as the in-memory model does.
    #[test]
    fn durable_store_matches_the_memory_model(ops in prop::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let durable = open(dir.path(), &["a", "b"]);
        let model = MemoryStore::new(2);
        for op in ops {
            match op {
                Op::Append(l, ns) => {
                    let write = [append(log(l), &ns)];
                    prop_assert_eq!(durable.commit(&write), model.commit(&write));
                }
                Op::Ack(l, n) => {
                    let write = [Write::Ack { log: log(l), upto: n }];
                    prop_assert_eq!(durable.commit(&write), model.commit(&write));
                }
                Op::Truncate(l, n) => {
                    let write = [Write::Truncate { log: log(l), first_retained: n }];
                    prop_assert_eq!(durable.commit(&write), model.commit(&write));
                }
                Op::Read(l, n, m) => {
                    prop_assert_eq!(durable.read(log(l), n, m), model.read(log(l), n, m));
                }
            }
            for l in 0..3 {
                prop_assert_eq!(durable.status(log(l)), model.status(log(l)));
            }
        }
    }
}
