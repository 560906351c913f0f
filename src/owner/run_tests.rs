//! The owner loop of a log-sequenced partition against logs that fail on cue: when its lease
//! ends while alerts are still being stored, the owner saves a last checkpoint only if they
//! were stored (a checkpoint past alerts that failed would make the next owner skip them);
//! a checkpoint store briefly unavailable delays the recovery instead of failing it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::RoutingConfig;
use crate::debounce::Settings;
use crate::domain::Clock;
use crate::ingest::Admission;
use crate::log::conformance::{device_in, loss, record};
use crate::log::memory::{MemoryAlerts, MemoryCheckpoints};
use crate::log::{
    AlertLog, AlertReader, Checkpoints, Delivered, EventLog, Expired, LogEntry, LogStatus, Parked,
    Retention, SlaMark,
};
use crate::owner::{CheckpointPolicy, OwnerContext, Owners};
use crate::route::{Registry, Router, RoutingTable, SubscriberId};
use crate::telemetry::Metrics;

const PARTITION: Partition = 0;
const PARTITIONS: u16 = 1;

/// A log-sequenced event log in memory: whoever appends sequences, readers wait for more.
#[derive(Default)]
struct SharedEvents {
    records: Arc<Mutex<Vec<Logged>>>,
    head: Arc<watch::Sender<u64>>,
}

#[async_trait]
impl EventLog for SharedEvents {
    fn sequencing(&self) -> Sequencing {
        Sequencing::Log
    }

    fn append(
        &self,
        _partition: Partition,
        record: EventRecord,
    ) -> BoxFuture<'static, Result<Appended, LogError>> {
        let mut records = self.records.lock();
        let position = records.len() as u64 + 1;
        records.push(Logged { position, record });
        self.head.send_replace(position);
        futures::future::ready(Ok(Appended {
            position,
            duplicates: 0,
        }))
        .boxed()
    }

    async fn reader(
        &self,
        _partition: Partition,
        after: u64,
    ) -> Result<Box<dyn EventReader>, LogError> {
        Ok(Box::new(SharedReader {
            records: Arc::clone(&self.records),
            head: self.head.subscribe(),
            after,
        }))
    }

    async fn truncate(
        &self,
        _partition: Partition,
        _through: u64,
        _keep_since: UtcMillis,
    ) -> Result<(), LogError> {
        Ok(())
    }
}

struct SharedReader {
    records: Arc<Mutex<Vec<Logged>>>,
    head: watch::Receiver<u64>,
    after: u64,
}

#[async_trait]
impl EventReader for SharedReader {
    async fn next(&mut self) -> Result<Option<Logged>, LogError> {
        loop {
            let found = self
                .records
                .lock()
                .iter()
                .find(|logged| logged.position > self.after)
                .cloned();
            if let Some(logged) = found {
                self.after = logged.position;
                return Ok(Some(logged));
            }
            self.head
                .changed()
                .await
                .map_err(|_| LogError::Unavailable("closed".into()))?;
        }
    }

    fn lag(&self) -> u64 {
        self.head.borrow().saturating_sub(self.after)
    }
}

/// Holds every alert append until released, then stores it or fails it.
#[derive(Default)]
struct Gate {
    arrived: Notify,
    release: Notify,
    fail: std::sync::atomic::AtomicBool,
}

/// Memory alert logs whose appends and parks wait at a [`Gate`].
struct GatedAlerts {
    inner: Arc<MemoryAlerts>,
    gate: Arc<Gate>,
}

impl GatedAlerts {
    fn through_gate<T: Send + 'static>(
        &self,
        store: BoxFuture<'static, Result<T, LogError>>,
    ) -> BoxFuture<'static, Result<T, LogError>> {
        let gate = Arc::clone(&self.gate);
        async move {
            gate.arrived.notify_one();
            gate.release.notified().await;
            if gate.fail.load(std::sync::atomic::Ordering::SeqCst) {
                Err(LogError::Unavailable(
                    "the alert stream's leader died".into(),
                ))
            } else {
                store.await
            }
        }
        .boxed()
    }
}

#[async_trait]
impl AlertLog for GatedAlerts {
    fn append(
        &self,
        alerts: Vec<(Alert, Route)>,
    ) -> BoxFuture<'static, Result<Vec<Stored>, LogError>> {
        let stored = self.inner.append(alerts);
        self.through_gate(stored)
    }

    fn park(
        &self,
        partition: Partition,
        alerts: Vec<(Alert, ParkReason)>,
    ) -> BoxFuture<'static, Result<(), LogError>> {
        let inner = Arc::clone(&self.inner);
        self.through_gate(async move { inner.park(partition, alerts).await }.boxed())
    }

    async fn reader(&self, log: SubscriberId, from: u64) -> Result<Box<dyn AlertReader>, LogError> {
        self.inner.reader(log, from).await
    }

    async fn status(&self, log: SubscriberId) -> Result<LogStatus, LogError> {
        self.inner.status(log).await
    }

    async fn ack(
        &self,
        log: SubscriberId,
        upto: u64,
        at: UtcMillis,
    ) -> Result<LogStatus, LogError> {
        self.inner.ack(log, upto, at).await
    }

    async fn deliveries(
        &self,
        log: SubscriberId,
        from: UtcMillis,
        to: UtcMillis,
    ) -> Result<Vec<Delivered>, LogError> {
        self.inner.deliveries(log, from, to).await
    }

    async fn sla_mark(&self, log: SubscriberId) -> Result<SlaMark, LogError> {
        self.inner.sla_mark(log).await
    }

    async fn record_sla(
        &self,
        log: SubscriberId,
        seen: u64,
        checked_through: UtcMillis,
        new_breaches: u64,
    ) -> Result<SlaMark, LogError> {
        self.inner
            .record_sla(log, seen, checked_through, new_breaches)
            .await
    }

    async fn parked(&self, partition: Partition) -> Result<Vec<Parked>, LogError> {
        self.inner.parked(partition).await
    }

    async fn move_parked(
        &self,
        partition: Partition,
        moves: Vec<(u64, Alert, Route)>,
    ) -> Result<Vec<Stored>, LogError> {
        self.inner.move_parked(partition, moves).await
    }

    async fn list_parked(&self, limit: usize) -> Result<(Vec<LogEntry>, u64), LogError> {
        self.inner.list_parked(limit).await
    }

    async fn maintain(
        &self,
        now: UtcMillis,
        retention: Retention,
    ) -> Result<Vec<Expired>, LogError> {
        self.inner.maintain(now, retention).await
    }

    fn heads(&self, partition: Partition) -> AlertHeads {
        self.inner.heads(partition)
    }

    async fn guard_replay(
        &self,
        partition: Partition,
        partitions: u16,
        heads: &AlertHeads,
    ) -> Result<(), LogError> {
        self.inner.guard_replay(partition, partitions, heads).await
    }

    fn replayed(&self, partition: Partition) {
        self.inner.replayed(partition);
    }
}

/// Checkpoints in memory whose first `unavailable` loads fail as during an election.
struct ElectingCheckpoints {
    inner: Arc<MemoryCheckpoints>,
    unavailable: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Checkpoints for ElectingCheckpoints {
    async fn save(
        &self,
        partition: Partition,
        checkpoint: &Checkpoint,
        lease: &Lease,
    ) -> Result<(), LogError> {
        self.inner.save(partition, checkpoint, lease).await
    }

    async fn load(&self, partition: Partition) -> Result<Option<Checkpoint>, LogError> {
        let left = self.unavailable.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.unavailable
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(LogError::Unavailable("no leader".into()));
        }
        self.inner.load(partition).await
    }
}

struct Fixture {
    events: Arc<SharedEvents>,
    gate: Arc<Gate>,
    checkpoints: Arc<MemoryCheckpoints>,
    stop: CancellationToken,
    owner: JoinHandle<()>,
}

/// An owner of the only partition, on a lease whose window stays open after it ends (so a
/// last checkpoint is allowed), that checkpoints only when it stops.
fn start_owner() -> Fixture {
    start_owner_with(CheckpointPolicy {
        every: Duration::from_secs(24 * 3600),
        events: u64::MAX,
        event_retention: Duration::ZERO,
    })
}

/// [`start_owner`], checkpointing by `checkpoint`.
fn start_owner_with(checkpoint: CheckpointPolicy) -> Fixture {
    start_owner_on(checkpoint, 0)
}

/// [`start_owner_with`], its checkpoint store failing the first `unavailable` loads.
fn start_owner_on(checkpoint: CheckpointPolicy, unavailable: usize) -> Fixture {
    let table = RoutingTable::from_config(&RoutingConfig::default());
    let events = Arc::new(SharedEvents::default());
    let gate = Arc::new(Gate::default());
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    let context = Arc::new(OwnerContext {
        events: Arc::clone(&events) as Arc<dyn EventLog>,
        alerts: Arc::new(GatedAlerts {
            inner: Arc::new(MemoryAlerts::new(&table)),
            gate: Arc::clone(&gate),
        }),
        checkpoints: Arc::new(ElectingCheckpoints {
            inner: Arc::clone(&checkpoints),
            unavailable: unavailable.into(),
        }),
        router: Arc::new(Router::new(table, Registry::empty())),
        settings: Settings {
            debounce: Duration::from_secs(180),
            poa_sla: Duration::from_secs(60),
            pra_sla: Duration::from_secs(60),
            tombstone_ttl: Duration::from_secs(3600),
        },
        dedup_window: Duration::from_secs(3600),
        dedup_capacity: 1024,
        partitions: PARTITIONS,
        clock: Clock::starting_at(UtcMillis(1_764_000_000_000)),
        metrics: Arc::new(Metrics::new()),
        admission: Arc::new(Admission::default()),
        checkpoint,
        queue: 16,
        in_flight: 16,
        owners: Arc::new(Owners::new(PARTITIONS)),
        summaries: crate::summary::NoteSender::disabled(),
    });
    let stop = CancellationToken::new();
    let (_renew, window) = watch::channel(Instant::now() + Duration::from_secs(24 * 3600));
    let owner = tokio::spawn(run(
        PARTITION,
        Lease::renewable(window, stop.clone()),
        context,
    ));
    Fixture {
        events,
        gate,
        checkpoints,
        stop,
        owner,
    }
}

impl Fixture {
    /// Logs a loss, lets its debounce elapse so the owner emits the POA, and ends the lease
    /// while that POA waits at the gate; then lets the store `fail` or succeed, and waits for
    /// the owner to stop.
    async fn end_lease_while_a_poa_is_stored(self, fail: bool) -> Option<Checkpoint> {
        let device = device_in(PARTITION, PARTITIONS, 0);
        let _ = self
            .events
            .append(PARTITION, record(0, vec![loss(device, 0)]))
            .await;
        // The paused clock runs on to the debounce; the owner's mark brings the POA out.
        self.gate.arrived.notified().await;
        self.gate
            .fail
            .store(fail, std::sync::atomic::Ordering::SeqCst);
        self.stop.cancel();
        self.gate.release.notify_one();
        tokio::time::timeout(Duration::from_secs(60), self.owner)
            .await
            .expect("the owner stops")
            .expect("the owner task did not panic");
        self.checkpoints.load(PARTITION).await.expect("load")
    }
}

#[tokio::test(start_paused = true)]
async fn an_owner_whose_alerts_were_stored_checkpoints_when_its_lease_ends() {
    let checkpoint = start_owner().end_lease_while_a_poa_is_stored(false).await;
    let position = checkpoint.map(|c| c.position);
    assert!(
        position.is_some_and(|p| p >= 2),
        "a checkpoint past the loss and the mark that fired its timer: {position:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_owner_whose_alerts_failed_leaves_no_checkpoint_past_them() {
    let checkpoint = start_owner().end_lease_while_a_poa_is_stored(true).await;
    assert!(
        checkpoint.is_none(),
        "the next owner must replay the loss and emit the POA: {:?}",
        checkpoint.map(|c| c.position)
    );
}

/// A checkpoint taken while an alert is being stored does not stop the owner: it goes on
/// reading records (and emitting their alerts), and the checkpoint is written only once the
/// alert before it is stored.
#[tokio::test(start_paused = true)]
async fn an_owner_reads_on_while_an_alert_is_stored_and_checkpoints_behind_it() {
    let fixture = start_owner_with(CheckpointPolicy {
        every: Duration::from_secs(24 * 3600),
        events: 1,
        event_retention: Duration::ZERO,
    });
    let first = device_in(PARTITION, PARTITIONS, 0);
    let second = device_in(PARTITION, PARTITIONS, 1);
    let _ = fixture
        .events
        .append(PARTITION, record(0, vec![loss(first, 0)]))
        .await;
    // The first POA, due after the 3-minute debounce, waits at the gate.
    fixture.gate.arrived.notified().await;
    let later = fixture
        .events
        .append(PARTITION, record(200_000, vec![loss(second, 200_000)]))
        .await
        .expect("a record logged")
        .position;
    // Its record makes a checkpoint due; the second POA still comes out meanwhile.
    tokio::time::timeout(Duration::from_secs(3600), fixture.gate.arrived.notified())
        .await
        .expect("the owner read on and emitted the second POA while the first was stored");
    let held = fixture.checkpoints.load(PARTITION).await.expect("load");
    assert!(
        held.as_ref().is_none_or(|c| c.position < later),
        "no checkpoint past an alert not yet stored: {:?}",
        held.map(|c| c.position)
    );
    fixture.gate.release.notify_one();
    fixture.gate.release.notify_one();
    let saved = tokio::time::timeout(Duration::from_secs(3600), async {
        loop {
            if let Some(saved) = fixture.checkpoints.load(PARTITION).await.expect("load")
                && saved.position >= later
            {
                return saved.position;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the checkpoint is written once the alert before it is stored");
    assert!(saved >= later);
    fixture.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), fixture.owner).await;
}

#[tokio::test(start_paused = true)]
async fn a_recovery_waits_out_a_checkpoint_store_without_a_leader() {
    let fixture = start_owner_on(
        CheckpointPolicy {
            every: Duration::from_secs(24 * 3600),
            events: u64::MAX,
            event_retention: Duration::ZERO,
        },
        3,
    );
    let device = device_in(PARTITION, PARTITIONS, 0);
    let _ = fixture
        .events
        .append(PARTITION, record(0, vec![loss(device, 0)]))
        .await;
    tokio::time::timeout(Duration::from_secs(3600), fixture.gate.arrived.notified())
        .await
        .expect("the partition recovered once its checkpoint could be read, and emitted the POA");
    fixture.stop.cancel();
    fixture.gate.release.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(60), fixture.owner).await;
}
