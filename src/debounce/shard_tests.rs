//! Paused-clock tests of the shard task: the 3-minute debounce runs in microseconds.

use std::time::Duration;

use super::*;
use crate::commit::{Admission, CommitStage};
use crate::config::{RoutingConfig, StoreConfig};
use crate::debounce::machine::{OutageState, Settings};
use crate::deliver::Delivery;
use crate::domain::event::EventKey;
use crate::domain::{DeviceId, MpanCore, Phase};
use crate::route::{Registry, Router, RoutingTable, SubscriberId};
use crate::sla::SlaInbox;
use crate::store::{LogId, MemoryStore, Store};

const START: UtcMillis = UtcMillis(1_764_000_000_000);

struct Fixture {
    handle: ShardHandle,
    store: Arc<dyn Store>,
    ukpn: LogId,
    _shutdown: tokio_util::sync::DropGuard,
}

fn settings() -> Settings {
    Settings {
        debounce: Duration::from_secs(180),
        poa_sla: Duration::from_secs(60),
        pra_sla: Duration::from_secs(60),
        tombstone_ttl: Duration::from_secs(3600),
    }
}

fn fixture(restored: Vec<(SupplyPoint, OpenOutage)>) -> Fixture {
    let clock = Clock::starting_at(START);
    let routing = RoutingConfig::default();
    let table = Arc::new(RoutingTable::from_config(&routing));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(table.len()));
    let delivery =
        Arc::new(Delivery::new(Arc::clone(&store), Arc::clone(&table), clock).expect("delivery"));
    let metrics = Arc::new(Metrics::new());
    let commit = CommitStage {
        store: Arc::clone(&store),
        router: Arc::new(Router::new(
            RoutingTable::from_config(&routing),
            Registry::empty(),
        )),
        delivery,
        metrics: Arc::clone(&metrics),
        sla: Arc::new(SlaInbox::default()),
        admission: Arc::new(Admission::default()),
        config: StoreConfig::default(),
        dedup_window: Duration::from_secs(600),
        tombstone_ttl: Duration::from_secs(3600),
    }
    .spawn_task(16);
    let mut shard = Shard::new(
        Debouncer::new(settings()),
        EventIdWindow::new(Duration::from_secs(600), 1000),
        clock,
        commit,
        metrics,
    );
    shard.restore(Restored {
        outages: restored,
        ..Restored::default()
    });
    let shutdown = CancellationToken::new();
    let handle = shard.spawn(
        8,
        "shard-test",
        &crate::server::Tasks::default(),
        shutdown.clone(),
    );
    let ukpn = LogId::Subscriber(table.id_of("ukpn").unwrap_or(SubscriberId(0)));
    Fixture {
        handle,
        store,
        ukpn,
        _shutdown: shutdown.drop_guard(),
    }
}

fn point() -> SupplyPoint {
    SupplyPoint {
        device: DeviceId(0x00db_1234_5678_90a0),
        phase: Phase::Whole,
    }
}

fn lost(id: &str, at: UtcMillis) -> DeviceEvent {
    DeviceEvent {
        key: EventKey::new(point().device, id),
        point: point(),
        mpan: MpanCore::with_check_digit(123_456_789_012),
        kind: EventKind::Lost { lost_at: at },
    }
}

impl Fixture {
    async fn apply(&self, events: Vec<DeviceEvent>) -> ApplyReport {
        self.handle
            .apply(events, START, Duration::from_secs(1))
            .await
            .expect("applied")
    }

    fn alerts(&self) -> u64 {
        self.store.status(self.ukpn).expect("status").head
    }
}

#[tokio::test(start_paused = true)]
async fn the_poa_fires_at_the_debounce_and_not_before() {
    let f = fixture(Vec::new());
    let report = f.apply(vec![lost("e1", START)]).await;
    assert_eq!(
        report,
        ApplyReport {
            accepted: 1,
            duplicates: 0
        }
    );
    tokio::time::sleep(Duration::from_millis(179_999)).await;
    assert_eq!(f.alerts(), 0, "no POA before 3 minutes");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(f.alerts(), 1, "POA once 3 minutes have passed");
    let entry = f.store.read(f.ukpn, 1, 1).expect("read")[0];
    assert_eq!(entry.alert.due_at, START.plus(Duration::from_secs(180)));
    assert!(entry.alert.emitted_at >= entry.alert.due_at);
}

#[tokio::test(start_paused = true)]
async fn a_restoration_inside_the_debounce_leaves_nothing_to_fire() {
    let f = fixture(Vec::new());
    let restore = DeviceEvent {
        kind: EventKind::Restored {
            restored_at: START.plus(Duration::from_secs(60)),
            lost_at: None,
        },
        key: EventKey::new(point().device, "e2"),
        ..lost("e1", START)
    };
    f.apply(vec![lost("e1", START), restore]).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(f.alerts(), 0);
    assert_eq!(f.handle.outages(None, 10).await.expect("listing").total, 0);
}

#[tokio::test(start_paused = true)]
async fn a_resent_event_is_a_duplicate() {
    let f = fixture(Vec::new());
    f.apply(vec![lost("e1", START)]).await;
    let report = f.apply(vec![lost("e1", START)]).await;
    assert_eq!(
        report,
        ApplyReport {
            accepted: 0,
            duplicates: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn restored_outages_rearm_at_their_original_deadline() {
    let pending = |lost_at: UtcMillis| OpenOutage {
        lost_at,
        received_at: lost_at,
        state: OutageState::Pending,
        mpan: MpanCore::with_check_digit(123_456_789_012),
    };
    let overdue = (point(), pending(UtcMillis(START.0 - 600_000)));
    let other = SupplyPoint {
        device: DeviceId(7),
        phase: Phase::L1,
    };
    let later = (other, pending(UtcMillis(START.0 - 60_000)));
    let f = fixture(vec![overdue, later]);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(f.alerts(), 1, "the timer due during downtime fires at once");
    tokio::time::sleep(Duration::from_millis(119_000)).await;
    assert_eq!(f.alerts(), 1, "the other keeps its original deadline");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(f.alerts(), 2);
}
