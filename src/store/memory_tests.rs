//! The in-memory store against the interface's conformance checks.

use super::*;

#[test]
fn memory_store_conforms() {
    super::super::conformance::run_all(&mut || Box::new(MemoryStore::new(2)));
}

#[test]
fn an_unknown_log_is_an_error_not_a_panic() {
    let store = MemoryStore::new(1);
    let missing = LogId::Subscriber(crate::route::SubscriberId(5));
    assert!(store.status(missing).is_err());
    assert!(
        store
            .commit(&[Write::Ack {
                log: missing,
                upto: 0
            }])
            .is_err()
    );
}
