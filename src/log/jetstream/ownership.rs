//! Ownership on JetStream: leases in key-value buckets, renewed by compare-and-set.
//! Partitions are balanced among the live instances; each subscriber (its SLA watch, and its
//! push session in push mode) is held by whichever instance claims its lease first.
//! A partition's lease is in its events stream's bucket (see
//! [`Names::partition_leases_bucket`](super::Names::partition_leases_bucket)), a
//! subscriber's in `{P}_LEASES`.
//!
//! Every `lease_ttl / 4` the driver renews each lease it holds (an update that names the
//! revision it last wrote: it fails if anyone else wrote since), on a timer of its own; and,
//! on another, writes this instance's heartbeat, reads the buckets, claims every free
//! subscriber lease, and plans partitions with [`plan`]: claim free partitions up to its
//! fair share (`ceil(partitions / live instances)`), release the ones above it. A claim is a
//! `create`, which succeeds only when the key does not exist (never written, deleted, or
//! expired `lease_ttl` after its last renewal).
//!
//! Fencing: an owner may act on a partition until `sent + lease_ttl - margin`, where `sent`
//! is when it sent its last successful renewal. The server expires the key `lease_ttl` after
//! it *stored* that renewal, which is later, so the owner's window always closes first, by
//! at least the margin. A unit's task checks the window ([`Lease::valid`]) before every write
//! others could see, and stops when it has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use anyhow::Context;
use async_nats::jetstream::kv;
use async_trait::async_trait;
use metrics::counter;
use tokio::time::timeout;
use tracing::Instrument;

use super::{Cluster, LossWatch};
use crate::log::{ClusterView, Lease, Ownership, StartUnit, Unit};
use crate::route::RoutingTable;
use crate::telemetry::{self, Metrics};

/// What to change this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free partitions to try to claim, in order.
    pub claim: Vec<u16>,
    /// Owned partitions to give up.
    pub release: Vec<u16>,
}

/// Balances: an instance should own `ceil(partitions / live)`; it claims free partitions
/// (starting its search at `start`, so instances spread out) while below that and releases
/// its highest partitions while above.
pub fn plan(
    partitions: u16,
    live: usize,
    owned: &BTreeSet<u16>,
    free: &BTreeSet<u16>,
    start: u16,
) -> Plan {
    let target = usize::from(partitions).div_ceil(live.max(1));
    if owned.len() > target {
        return Plan {
            claim: Vec::new(),
            release: owned
                .iter()
                .rev()
                .take(owned.len() - target)
                .copied()
                .collect(),
        };
    }
    let want = target - owned.len();
    let claim = (0..partitions)
        .map(|i| (start.wrapping_add(i)) % partitions.max(1))
        .filter(|p| free.contains(p))
        .take(want)
        .collect();
    Plan {
        claim,
        release: Vec::new(),
    }
}

/// A unit held here: its lease's revision, the window its task acts within, and the task.
struct Held {
    revision: u64,
    window: watch::Sender<Instant>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Debug, Default, Clone)]
struct ViewState {
    owned: BTreeSet<u16>,
    owners: BTreeMap<u16, (String, u64)>,
    live: Vec<String>,
}

/// The lease key of a unit.
fn key(unit: Unit, table: &RoutingTable) -> String {
    match unit {
        Unit::Partition(partition) => format!("p{partition}"),
        Unit::Subscriber(log) => format!("s.{}", table.name(log)),
    }
}

fn start_offset(instance: &str, partitions: u16) -> u16 {
    let hash = xxhash_rust::xxh3::xxh3_64(instance.as_bytes());
    u16::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// Partitions and subscribers held through leases in the cluster's leases bucket.
pub struct JsOwnership {
    cluster: Arc<Cluster>,
    table: Arc<RoutingTable>,
    metrics: Arc<Metrics>,
    view: Mutex<ViewState>,
}

impl std::fmt::Debug for JsOwnership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsOwnership")
            .field("instance", &self.cluster.instance)
            .finish_non_exhaustive()
    }
}

impl JsOwnership {
    /// Ownership through `cluster`'s leases; subscribers are named by `table`.
    pub fn new(cluster: Arc<Cluster>, table: Arc<RoutingTable>, metrics: Arc<Metrics>) -> Self {
        Self {
            cluster,
            table,
            metrics,
            view: Mutex::new(ViewState::default()),
        }
    }

    /// Instances whose heartbeat is current, as last read.
    pub fn live(&self) -> Vec<String> {
        self.view.lock().live.clone()
    }
}

#[async_trait]
impl Ownership for JsOwnership {
    async fn run(&self, units: Vec<Unit>, start: StartUnit, stop: CancellationToken) {
        let span = tracing::info_span!("leases", instance = %self.cluster.instance);
        self.drive(units, start, stop).instrument(span).await;
    }

    fn view(&self) -> ClusterView {
        let view = self.view.lock().clone();
        let partitions = self.cluster.settings.partitions;
        ClusterView {
            backend: "jetstream".into(),
            instance: self.cluster.instance.clone(),
            partitions,
            live: view.live,
            owned_here: view.owned.into_iter().collect(),
            owners: (0..partitions)
                .map(|partition| {
                    let (owner, revision) =
                        view.owners.get(&partition).cloned().unwrap_or_default();
                    (partition, owner, revision)
                })
                .collect(),
        }
    }
}

/// The units held here, shared by the renewal loop and the planning loop.
type HeldUnits = Mutex<BTreeMap<Unit, Held>>;

impl JsOwnership {
    /// The lease driver, until `stop`; then it stops every unit's task and deletes its lease,
    /// so survivors take over at once rather than after `lease_ttl`.
    ///
    /// Two loops share the held leases. Renewals run on a timer of their own, each bounded
    /// by the margin, so that nothing else can hold them up past their windows: a bucket
    /// without a leader slows its own reads and renewals, never another bucket's renewals.
    /// The planning loop writes the heartbeat and reads the buckets (each bounded by half the
    /// ttl), then releases and claims (each bounded by the margin, side by side): a slow
    /// JetStream delays a round, never stalls the driver, so its heartbeat stays a true sign
    /// that it is alive.
    async fn drive(&self, units: Vec<Unit>, start: StartUnit, stop: CancellationToken) {
        let cluster = &self.cluster;
        let margin = cluster.settings.lease_ttl / 3;
        let me = Bytes::from(cluster.instance.clone());
        let held: HeldUnits = Mutex::new(BTreeMap::new());
        tokio::join!(
            self.keep_renewed(&me, &held, &stop),
            self.keep_planned(&me, &units, &start, &held, &stop),
        );
        let all = std::mem::take(&mut *held.lock());
        futures::future::join_all(
            all.into_iter()
                .map(|(unit, lease)| self.release(unit, lease)),
        )
        .await;
        let _ = timeout(margin, cluster.instances.delete(&cluster.instance)).await;
        self.view.lock().owned.clear();
        self.metrics.partitions_owned.set(0.0);
    }

    /// Renews the held leases every `ttl / 4` until `stop`; the tasks of leases lost are
    /// stopped beside it, and waited for at the end.
    async fn keep_renewed(&self, me: &Bytes, held: &HeldUnits, stop: &CancellationToken) {
        let mut ending = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(self.cluster.settings.lease_ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            while ending.try_join_next().is_some() {}
            for (unit, lease) in self.renew(me, held).await {
                self.metrics.lease_change("lost");
                let bucket = self.cluster.lease_bucket(unit).clone();
                let key = key(unit, &self.table);
                let margin = self.cluster.settings.lease_ttl / 3;
                ending.spawn(async move {
                    // Lost: whatever keeps the key, it expires by itself.
                    let _ = end_holding(&bucket, key, lease, margin).await;
                });
            }
        }
        while ending.join_next().await.is_some() {}
    }

    /// Every `ttl / 4` until `stop`: writes the heartbeat and reads the buckets, then
    /// releases and claims partitions as [`plan`] says, and claims every free subscriber.
    async fn keep_planned(
        &self,
        me: &Bytes,
        units: &[Unit],
        start: &StartUnit,
        held: &HeldUnits,
        stop: &CancellationToken,
    ) {
        let cluster = &self.cluster;
        let ttl = cluster.settings.lease_ttl;
        let margin = ttl / 3;
        let partitions = cluster.settings.partitions;
        let offset = start_offset(&cluster.instance, partitions);
        let subscribers: Vec<Unit> = units
            .iter()
            .copied()
            .filter(|unit| matches!(unit, Unit::Subscriber(_)))
            .collect();
        let mut tick = tokio::time::interval(ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let heartbeat = async {
                match timeout(margin, cluster.instances.put(&cluster.instance, me.clone())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => tracing::warn!(%err, "cannot write the instance heartbeat"),
                    Err(_) => {
                        tracing::warn!("the instance heartbeat took longer than the lease margin")
                    }
                }
            };
            let (reading, ()) = tokio::join!(read_state(cluster, ttl / 2), heartbeat);
            let previous = self.view.lock().clone();
            let Some(mut live) = reading
                .live
                .or_else(|| (!previous.live.is_empty()).then(|| previous.live.clone()))
            else {
                continue;
            };
            let (mut owners, unknown) = reading.owners.merged_over(previous.owners, partitions);
            // This instance is alive whether or not its heartbeat was stored yet.
            if !live.contains(&cluster.instance) {
                live.push(cluster.instance.clone());
                live.sort();
            }
            let owned = held_partitions(&held.lock());
            let free: BTreeSet<u16> = (0..partitions)
                .filter(|p| !owners.contains_key(p) && !unknown.contains(p))
                .collect();
            let plan = plan(partitions, live.len(), &owned, &free, offset);
            let releasing: Vec<(Unit, Held)> = {
                let mut held = held.lock();
                plan.release
                    .iter()
                    .filter_map(|p| {
                        let unit = Unit::Partition(*p);
                        held.remove(&unit).map(|lease| (unit, lease))
                    })
                    .collect()
            };
            for (unit, _) in &releasing {
                if let Unit::Partition(p) = unit {
                    owners.remove(p);
                }
            }
            let released = releasing.len();
            futures::future::join_all(
                releasing
                    .into_iter()
                    .map(|(unit, lease)| self.release(unit, lease)),
            )
            .await;
            for _ in 0..released {
                self.metrics.lease_change("released");
            }
            let holding: BTreeSet<Unit> = held.lock().keys().copied().collect();
            // Subscribers only when their bucket answered, so that a round does not wait for
            // claims to a bucket without a leader.
            let free_subscriber = |unit: &Unit| {
                !holding.contains(unit)
                    && reading
                        .subscribers
                        .as_ref()
                        .is_some_and(|taken| !taken.contains(&key(*unit, &self.table)))
            };
            let claims: Vec<Unit> = plan
                .claim
                .into_iter()
                .map(Unit::Partition)
                .chain(subscribers.iter().copied().filter(free_subscriber))
                .collect();
            // Side by side, each bounded by the margin, and each unit started as soon as its
            // claim is stored, so that a round stays short.
            let mut attempts: futures::stream::FuturesUnordered<_> = claims
                .into_iter()
                .map(|unit| {
                    let create = cluster
                        .lease_bucket(unit)
                        .create(key(unit, &self.table), me.clone());
                    async move {
                        let sent = Instant::now();
                        (unit, sent, timeout(margin, create).await)
                    }
                })
                .collect();
            while let Some((unit, sent, created)) = attempts.next().await {
                let Ok(Ok(revision)) = created else {
                    continue;
                };
                let (window, watch) = watch::channel(sent + ttl - margin);
                let task_stop = stop.child_token();
                let task = start(unit, Lease::renewable(watch, task_stop.clone()));
                tracing::info!(?unit, "lease claimed");
                self.metrics.lease_change("claimed");
                if let Unit::Partition(p) = unit {
                    owners.insert(p, (cluster.instance.clone(), revision));
                }
                held.lock().insert(
                    unit,
                    Held {
                        revision,
                        window,
                        stop: task_stop,
                        task,
                    },
                );
            }
            let owned = held_partitions(&held.lock());
            let mut view = self.view.lock();
            view.owned = owned;
            view.owners = owners;
            view.live = live;
            self.metrics.partitions_owned.set(view.owned.len() as f64);
        }
    }
}

/// The partitions among `held`.
fn held_partitions(held: &BTreeMap<Unit, Held>) -> BTreeSet<u16> {
    held.keys()
        .filter_map(|unit| match unit {
            Unit::Partition(p) => Some(*p),
            Unit::Subscriber(_) => None,
        })
        .collect()
}

impl JsOwnership {
    /// Renews every held lease at once, each bounded by the margin, and returns the leases
    /// lost, taken out of `held`: a failed renewal, a window that passed before its renewal
    /// came back, or a finished task ends that ownership. A renewal moves the lease's window
    /// forward.
    async fn renew(&self, me: &Bytes, held: &HeldUnits) -> Vec<(Unit, Held)> {
        let cluster = &self.cluster;
        let ttl = cluster.settings.lease_ttl;
        let margin = ttl / 3;
        let sent = Instant::now();
        let due: Vec<(Unit, u64, bool)> = held
            .lock()
            .iter()
            .map(|(&unit, lease)| (unit, lease.revision, lease.task.is_finished()))
            .collect();
        let renewals = due.into_iter().map(|(unit, revision, finished)| {
            let leases = cluster.lease_bucket(unit).clone();
            let me = me.clone();
            let key = key(unit, &self.table);
            async move {
                if finished {
                    return (unit, revision, None);
                }
                let loss = cluster.control_loss();
                let renewal = renew_within(&leases, loss, (&key, &me, revision), sent + margin);
                match timeout(margin, renewal).await {
                    Ok(Ok(renewed)) => (unit, revision, Some(renewed)),
                    Ok(Err(err)) => {
                        tracing::warn!(?unit, %err, "lease renewal failed; its task stopped");
                        (unit, revision, None)
                    }
                    Err(_) => {
                        tracing::warn!(
                            ?unit,
                            "lease renewal took longer than the margin; its task stopped"
                        );
                        (unit, revision, None)
                    }
                }
            }
        });
        let outcomes = futures::future::join_all(renewals).await;
        let mut held = held.lock();
        let mut lost = Vec::new();
        for (unit, revision, renewed) in outcomes {
            // Released (and perhaps claimed again) while the renewal was under way: not this
            // holding any more.
            if held
                .get(&unit)
                .is_none_or(|lease| lease.revision != revision)
            {
                continue;
            }
            if let (Some(renewed), Some(lease)) = (renewed, held.get_mut(&unit)) {
                lease.revision = renewed;
                if extend(&lease.window, sent + ttl - margin) {
                    continue;
                }
                counter!(telemetry::JETSTREAM_ERRORS, "operation" => "lease_lapsed").increment(1);
                tracing::warn!(
                    ?unit,
                    "lease window passed before its renewal came back; its task stopped"
                );
            }
            if let Some(lease) = held.remove(&unit) {
                lost.push((unit, lease));
            }
        }
        lost
    }

    async fn release(&self, unit: Unit, lease: Held) {
        let margin = self.cluster.settings.lease_ttl / 3;
        let bucket = self.cluster.lease_bucket(unit);
        match end_holding(bucket, key(unit, &self.table), lease, margin).await {
            Ok(()) => tracing::info!(?unit, "lease released"),
            Err(why) => tracing::warn!(?unit, %why, "lease not deleted; it expires by itself"),
        }
    }
}

/// Ends a holding: stops its task (aborted after `margin`), closes its window, then deletes
/// its lease from `bucket` (within `margin`), so that another instance may claim it at once.
/// `Err`: why the lease was not deleted (it then expires by itself).
async fn end_holding(
    bucket: &kv::Store,
    key: String,
    lease: Held,
    margin: std::time::Duration,
) -> Result<(), String> {
    stop_task(lease.stop, lease.task, margin).await;
    close_window(&lease.window);
    match timeout(
        margin,
        bucket.delete_expect_revision(key, Some(lease.revision)),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {margin:?}")),
    }
}

/// Renews a lease (compare-and-set on `revision`), trying again every
/// [`RENEWAL_RETRY`] while the bucket has no leader or does not answer, until `until`: a
/// bucket's leader moved on purpose (see [`super::leaders`]) is elected again in well under
/// the margin, and that must not end every lease in the bucket. A renewal whose answer was
/// lost with the connection is sent again at once. A renewal refused for its revision
/// (someone else wrote the key, or an earlier attempt that seemed lost was stored) is final.
async fn renew_within(
    leases: &kv::Store,
    mut loss: LossWatch,
    (key, me, revision): (&str, &Bytes, u64),
    until: Instant,
) -> Result<u64, kv::UpdateError> {
    loop {
        // Lost with the connection: sent again at once, on the connection made anew.
        let Some(renewed) = loss
            .unless_lost(leases.update(key, me.clone(), revision))
            .await
        else {
            continue;
        };
        match renewed {
            Ok(revision) => return Ok(revision),
            Err(err)
                if matches!(
                    err.kind(),
                    kv::UpdateErrorKind::WrongLastRevision | kv::UpdateErrorKind::InvalidKey
                ) || Instant::now() + RENEWAL_RETRY >= until =>
            {
                return Err(err);
            }
            Err(_) => tokio::time::sleep(RENEWAL_RETRY).await,
        }
    }
}

/// How soon a renewal the bucket did not take is sent again.
const RENEWAL_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Moves the lease's window on to `until`, only while it is still open: a window that has
/// passed stays closed, even when the renewal that would have kept it open succeeds late.
/// Whatever saw the lease invalid meanwhile acted on it (a subscriber stream's writer drops
/// the partition's queued alerts), and reopening the window would let the same owner store
/// its later alerts before the dropped ones are emitted again: a supply point's PRA before
/// its POA (the cluster fault test's ORDER, under two busy loops). Returns whether it moved.
fn extend(window: &watch::Sender<Instant>, until: Instant) -> bool {
    window.send_if_modified(|current| {
        if Instant::now() < *current {
            *current = until;
            true
        } else {
            false
        }
    })
}

/// Ends the lease's window now, before the lease itself goes: what its holder left queued
/// (alerts waiting in a subscriber stream's writer, when the task was aborted or stopped
/// before they were stored) is then refused rather than stored after the next owner, which
/// may claim the lease at once, has read what was stored. Without it the window stayed open
/// until its last renewal ran out, and a released partition's queued alerts could land
/// after its next owner emitted them again (duplicates in the cluster fault test under load).
fn close_window(window: &watch::Sender<Instant>) {
    let _ = window.send(Instant::now());
}

/// Stops a unit's task, aborting it if it has not ended within `bound` (a task waiting on
/// JetStream must not hold up the renewal of every other lease).
async fn stop_task(stop: CancellationToken, mut task: JoinHandle<()>, bound: std::time::Duration) {
    stop.cancel();
    if timeout(bound, &mut task).await.is_err() {
        task.abort();
        tracing::warn!("a task did not stop in time and was aborted");
    }
}

/// What one round read of the buckets; `None` where a bucket did not answer.
struct Reading {
    /// Instances whose heartbeat is current.
    live: Option<Vec<String>>,
    /// The keys of the subscriber leases held (by any instance).
    subscribers: Option<BTreeSet<String>>,
    /// The partition lease owners of each partition leases bucket, by events stream index.
    owners: BucketOwners,
}

/// Partition → (owner, revision), read bucket by bucket: `None` for a bucket that did not
/// answer (its leader died and no new one is elected yet).
#[derive(Debug, Default)]
struct BucketOwners(Vec<Option<BTreeMap<u16, (String, u64)>>>);

impl BucketOwners {
    /// The owners as read, over `previous` where a bucket did not answer, and the partitions
    /// of those buckets: they are neither free to claim nor known to be held, so the round
    /// leaves them alone (a lease bucket without a leader stops nothing but its own
    /// partitions).
    fn merged_over(
        self,
        mut previous: BTreeMap<u16, (String, u64)>,
        partitions: u16,
    ) -> (BTreeMap<u16, (String, u64)>, BTreeSet<u16>) {
        let buckets = u16::try_from(self.0.len()).unwrap_or(u16::MAX).max(1);
        let unread = |partition: &u16| {
            self.0
                .get(usize::from(partition % buckets))
                .is_none_or(Option::is_none)
        };
        previous.retain(|partition, _| unread(partition));
        let unknown = (0..partitions).filter(unread).collect();
        for owners in self.0.into_iter().flatten() {
            previous.extend(owners);
        }
        (previous, unknown)
    }
}

/// Reads the instances, the subscriber leases and every partition leases bucket side by
/// side, each within
/// `within`; a bucket that fails or does not answer is counted, logged and left `None`.
async fn read_state(cluster: &Cluster, within: std::time::Duration) -> Reading {
    async fn read(store: &kv::Store, within: std::time::Duration) -> Option<Vec<kv::Entry>> {
        let failure = match timeout(within, current_entries(store)).await {
            Ok(Ok(entries)) => return Some(entries),
            Ok(Err(err)) => format!("{err:#}"),
            Err(_) => format!("no answer within {within:?}"),
        };
        counter!(telemetry::JETSTREAM_ERRORS, "operation" => "lease_read").increment(1);
        tracing::warn!(bucket = %store.name, err = %failure, "cannot read a bucket; its units are left as they are this round");
        None
    }
    // With one events stream the subscriber leases share the partitions' bucket: read once.
    let shared = cluster
        .partition_leases
        .iter()
        .position(|store| store.name == cluster.leases.name);
    let instances = read(&cluster.instances, within);
    let own_bucket = async {
        match shared {
            Some(_) => None,
            None => read(&cluster.leases, within).await,
        }
    };
    let buckets = futures::future::join_all(
        cluster
            .partition_leases
            .iter()
            .map(|store| read(store, within)),
    );
    let (instances, own_bucket, buckets) = tokio::join!(instances, own_bucket, buckets);
    let subscriber_entries = match shared {
        Some(index) => buckets.get(index).and_then(Option::as_ref),
        None => own_bucket.as_ref(),
    };
    let subscribers = subscriber_entries.map(|entries| {
        entries
            .iter()
            .map(|entry| entry.key.clone())
            .filter(|key| key.starts_with("s."))
            .collect()
    });
    let live = instances.map(|entries| {
        let mut live: Vec<String> = entries.into_iter().map(|entry| entry.key).collect();
        live.sort();
        live
    });
    let owners = buckets
        .into_iter()
        .map(|entries| {
            entries.map(|entries| {
                entries
                    .into_iter()
                    .filter_map(|entry| {
                        let partition = entry.key.strip_prefix('p')?.parse::<u16>().ok()?;
                        let owner = String::from_utf8_lossy(&entry.value).into_owned();
                        Some((partition, (owner, entry.revision)))
                    })
                    .collect()
            })
        })
        .collect();
    Reading {
        live,
        subscribers,
        owners: BucketOwners(owners),
    }
}

/// Refuses to start while `{P}_LEASES` holds partition leases: instances of an earlier
/// version, which kept every partition's lease there, are still running (or stopped less
/// than a lease ago), and would own partitions beside this one's leases in
/// `{P}_LEASES_<index>`. Waits up to two lease ttls for leases of stopped instances to
/// expire.
pub async fn refuse_shared_partition_leases(
    leases: &kv::Store,
    ttl: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + ttl * 2;
    loop {
        let held: Vec<String> = current_entries(leases)
            .await?
            .into_iter()
            .filter(|entry| entry.key.starts_with('p'))
            .map(|entry| format!("{}={}", entry.key, String::from_utf8_lossy(&entry.value)))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "bucket {} holds partition leases ({}): instances of an earlier version keep \
                 partition leases there and are still running; stop them all, then start \
                 this version",
                leases.name,
                held.join(", ")
            );
        }
        tokio::time::sleep(ttl / 4).await;
    }
}

/// The keys of a bucket whose latest entry is a value (not a delete marker).
///
/// The subjects come from one stream-info request rather than from `Store::keys`: that
/// lists through a consumer which, in a bucket with a max age, can wait for an idle
/// heartbeat (seconds) when an entry expires between the consumer's creation and its
/// delivery — longer than a lease lasts.
async fn current_entries(store: &kv::Store) -> anyhow::Result<Vec<kv::Entry>> {
    let prefix = format!("$KV.{}.", store.name);
    let mut subjects = store
        .stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .with_context(|| format!("listing the keys of bucket {}", store.name))?;
    let mut keys = Vec::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _) = subject.with_context(|| format!("listing bucket {}", store.name))?;
        if let Some(key) = subject.strip_prefix(&prefix) {
            keys.push(key.to_owned());
        }
    }
    let entries = futures::future::join_all(keys.into_iter().map(|key| store.entry(key))).await;
    let mut current = Vec::new();
    for entry in entries {
        if let Some(entry) = entry.with_context(|| format!("reading bucket {}", store.name))?
            && entry.operation == kv::Operation::Put
        {
            current.push(entry);
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn set(items: &[u16]) -> BTreeSet<u16> {
        items.iter().copied().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_moves_an_open_window_on() {
        let (window, watch) = watch::channel(Instant::now() + Duration::from_secs(1));
        let lease = Lease::renewable(watch, CancellationToken::new());
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(extend(&window, Instant::now() + Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(lease.valid());
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_that_passed_is_not_reopened_by_a_late_renewal() {
        let (window, watch) = watch::channel(Instant::now() + Duration::from_secs(1));
        let lease = Lease::renewable(watch, CancellationToken::new());
        tokio::time::advance(Duration::from_millis(1_100)).await;
        // A writer looked meanwhile and dropped the partition's queued alerts.
        assert!(!lease.valid());
        assert!(!extend(&window, Instant::now() + Duration::from_secs(1)));
        assert!(!lease.valid());
    }

    #[test]
    fn a_bucket_that_did_not_answer_leaves_its_partitions_neither_free_nor_forgotten() {
        let owner = |name: &str, revision| (name.to_owned(), revision);
        // Six partitions in three buckets (partition % 3); bucket 1 did not answer.
        let read = BucketOwners(vec![
            Some(BTreeMap::from([(0, owner("a", 7))])),
            None,
            Some(BTreeMap::new()),
        ]);
        let previous = BTreeMap::from([
            (1, owner("b", 3)),
            (2, owner("c", 4)),
            (3, owner("a", 5)),
            (4, owner("b", 6)),
        ]);
        let (owners, unknown) = read.merged_over(previous, 6);
        // Bucket 0 as read now (3 is gone), bucket 1 as read before, bucket 2 empty now.
        assert_eq!(
            owners,
            BTreeMap::from([(0, owner("a", 7)), (1, owner("b", 3)), (4, owner("b", 6))])
        );
        assert_eq!(unknown, set(&[1, 4]));
    }

    #[test]
    fn a_lone_instance_claims_everything_free() {
        let plan = plan(4, 1, &set(&[]), &set(&[0, 1, 2, 3]), 2);
        assert_eq!(plan.claim, [2, 3, 0, 1]);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn a_second_instance_makes_the_first_release_half() {
        let first = plan(4, 2, &set(&[0, 1, 2, 3]), &set(&[]), 0);
        assert_eq!(first.release, [3, 2]);
        let second = plan(4, 2, &set(&[]), &set(&[2, 3]), 1);
        assert_eq!(second.claim, [2, 3]);
    }

    #[test]
    fn fair_share_rounds_up_so_every_partition_has_room() {
        let plan = plan(5, 2, &set(&[0, 1]), &set(&[4]), 0);
        assert_eq!(plan.claim, [4]);
    }

    #[test]
    fn nothing_free_nothing_claimed() {
        assert_eq!(plan(4, 2, &set(&[0]), &set(&[]), 0), Plan::default());
    }
}
