//! Tests of the commit stage: store failures fence ingest with the right status, acks are
//! validated against the head, and a registry reload re-routes parked alerts in order.

use tonic::Code;

use super::*;
use crate::config::RoutingConfig;
use crate::domain::{AlertKind, Clock, DeviceId, MpanCore, Phase, SupplyPoint};
use crate::route::{RegistryEntry, RoutingTable};
use crate::store::{LogStatus, MemoryStore, Recovered};

/// A store whose commits fail with a chosen error.
struct FailingStore {
    inner: MemoryStore,
    error: StoreError,
}

impl Store for FailingStore {
    fn commit(&self, _writes: &[Write]) -> Result<Vec<Outcome>, StoreError> {
        Err(self.error.clone())
    }
    fn read(&self, log: LogId, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.inner.read(log, from, max)
    }
    fn status(&self, log: LogId) -> Result<LogStatus, StoreError> {
        self.inner.status(log)
    }
    fn recover(&self) -> Result<Recovered, StoreError> {
        self.inner.recover()
    }
}

struct Fixture {
    commit: CommitHandle,
    delivery: Arc<Delivery>,
    admission: Arc<Admission>,
    router: Arc<Router>,
}

fn fixture(store: Arc<dyn Store>) -> Fixture {
    let routing = RoutingConfig::default();
    let table = Arc::new(RoutingTable::from_config(&routing));
    let clock = Clock::starting_at(UtcMillis(1_764_000_000_000));
    let delivery = Arc::new(Delivery::new(Arc::clone(&store), table, clock).expect("delivery"));
    let admission = Arc::new(Admission::default());
    let router = Arc::new(Router::new(
        RoutingTable::from_config(&routing),
        Registry::empty(),
    ));
    let commit = CommitStage {
        store,
        router: Arc::clone(&router),
        delivery: Arc::clone(&delivery),
        metrics: Arc::new(Metrics::new()),
        sla: Arc::new(SlaInbox::default()),
        admission: Arc::clone(&admission),
        config: crate::config::StoreConfig::default(),
        dedup_window: Duration::from_secs(600),
        tombstone_ttl: Duration::from_secs(3600),
    }
    .spawn_task(16);
    Fixture {
        commit,
        delivery,
        admission,
        router,
    }
}

fn alert(kind: AlertKind, device: u64) -> Alert {
    Alert {
        kind,
        point: SupplyPoint {
            device: DeviceId(device),
            phase: Phase::Whole,
        },
        lost_at: UtcMillis(1_764_000_000_000),
        restored_at: (kind == AlertKind::Restoration).then_some(UtcMillis(1_764_000_600_000)),
        due_at: UtcMillis(1_764_000_180_000),
        deadline: UtcMillis(1_764_000_240_000),
        emitted_at: UtcMillis(1_764_000_180_000),
        received_at: UtcMillis(1_764_000_000_000),
        learned_late: false,
        event_mpan: None,
    }
}

async fn submit(f: &Fixture, alerts: Vec<Alert>) -> Result<ApplyReport, StoreError> {
    let (reply, answer) = oneshot::channel();
    let batch = Batch {
        alerts,
        ..Batch::default()
    };
    let report = ApplyReport {
        accepted: 1,
        duplicates: 0,
    };
    f.commit
        .batch(batch, report, Some(reply))
        .await
        .expect("queued");
    answer.await.expect("answered")
}

#[tokio::test]
async fn a_failed_commit_fences_ingest_as_unavailable() {
    let f = fixture(Arc::new(FailingStore {
        inner: MemoryStore::new(6),
        error: StoreError::Unavailable("disk I/O error".into()),
    }));
    assert!(f.admission.check().is_ok());
    assert!(
        submit(&f, vec![alert(AlertKind::Outage, 1)]).await.is_err(),
        "the publisher is not acknowledged"
    );
    let refused = f.admission.check().expect_err("fenced");
    assert_eq!(tonic::Status::from(refused).code(), Code::Unavailable);
}

#[tokio::test]
async fn a_full_disk_fences_ingest_as_resource_exhausted() {
    let f = fixture(Arc::new(FailingStore {
        inner: MemoryStore::new(6),
        error: StoreError::Full("No space left on device".into()),
    }));
    let err = submit(&f, vec![alert(AlertKind::Outage, 1)])
        .await
        .expect_err("not stored");
    assert_eq!(
        tonic::Status::from(RelayError::from(err)).code(),
        Code::ResourceExhausted
    );
    let refused = f.admission.check().expect_err("fenced");
    assert_eq!(tonic::Status::from(refused).code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn a_low_disk_refuses_ingest_until_it_recovers() {
    let f = fixture(Arc::new(MemoryStore::new(6)));
    f.admission.set_disk_low(true);
    let refused = f.admission.check().expect_err("paused");
    assert_eq!(tonic::Status::from(refused).code(), Code::ResourceExhausted);
    f.admission.set_disk_low(false);
    assert!(f.admission.check().is_ok());
}

#[tokio::test]
async fn an_ack_beyond_the_head_is_refused_and_others_proceed() {
    let f = fixture(Arc::new(MemoryStore::new(6)));
    let log = LogId::Parked;
    submit(&f, vec![alert(AlertKind::Outage, 1)])
        .await
        .expect("stored");
    assert_eq!(f.delivery.status(log).head, 1);
    let beyond = f.commit.ack(log, 2).await.expect_err("beyond head");
    assert!(matches!(
        beyond,
        StoreError::BeyondHead {
            requested: 2,
            head: 1
        }
    ));
    let ok = f.commit.ack(log, 1).await.expect("ack");
    assert_eq!((ok.acked, ok.backlog), (1, 0));
}

#[tokio::test]
async fn a_reload_routes_parked_alerts_in_their_original_order() {
    let f = fixture(Arc::new(MemoryStore::new(6)));
    let device = 0x00db_0000_0000_0001;
    let poa = alert(AlertKind::Outage, device);
    let pra = alert(AlertKind::Restoration, device);
    submit(&f, vec![poa, pra]).await.expect("stored");
    assert_eq!(
        f.delivery.status(LogId::Parked).backlog(),
        2,
        "both parked: unknown device"
    );
    let mut registry = Registry::empty();
    let mpan = MpanCore::with_check_digit(123_456_789_012).expect("mpan");
    let gsp = "_C".parse().expect("gsp");
    registry.insert(DeviceId(device), RegistryEntry { mpan, gsp });
    assert_eq!(f.commit.reload(registry).await.expect("reloaded"), 2);
    assert_eq!(f.delivery.status(LogId::Parked).backlog(), 0);
    let ukpn = LogId::Subscriber(f.router.table().id_of("ukpn").expect("ukpn"));
    let entries = f.delivery.store().read(ukpn, 1, 10).expect("read");
    let kinds: Vec<_> = entries.iter().map(|e| (e.sequence, e.alert.kind)).collect();
    assert_eq!(
        kinds,
        vec![(1, AlertKind::Outage), (2, AlertKind::Restoration)]
    );
}
