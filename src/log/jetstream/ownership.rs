//! Ownership on JetStream: leases in a key-value bucket, renewed by compare-and-set.
//! Partitions are balanced among the live instances; each subscriber (its SLA watch, and its
//! push session in push mode) is held by whichever instance claims its lease first.
//!
//! Every `lease_ttl / 4` the driver writes this instance's heartbeat, renews each lease it
//! holds (an update that names the revision it last wrote: it fails if anyone else wrote
//! since), claims every free subscriber lease, and plans partitions with [`plan`]: claim
//! free partitions up to its fair share
//! (`ceil(partitions / live instances)`), release the ones above it. A claim is a `create`,
//! which succeeds only when the key does not exist (never written, deleted, or expired
//! `lease_ttl` after its last renewal).
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

use super::Cluster;
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

impl JsOwnership {
    /// The lease driver, until `stop`; then it stops every unit's task and deletes its lease,
    /// so survivors take over at once rather than after `lease_ttl`.
    ///
    /// Every step of a round is bounded (renewals and the heartbeat by the margin, the read of
    /// the buckets by half the ttl, releases by the margin and run side by side): a slow
    /// JetStream delays a round, never stalls the driver, so its heartbeat stays a true sign
    /// that it is alive.
    async fn drive(&self, units: Vec<Unit>, start: StartUnit, stop: CancellationToken) {
        let cluster = &self.cluster;
        let ttl = cluster.settings.lease_ttl;
        let margin = ttl / 3;
        let partitions = cluster.settings.partitions;
        let offset = start_offset(&cluster.instance, partitions);
        let me = Bytes::from(cluster.instance.clone());
        let subscribers: Vec<Unit> = units
            .iter()
            .copied()
            .filter(|unit| matches!(unit, Unit::Subscriber(_)))
            .collect();
        let mut held: BTreeMap<Unit, Held> = BTreeMap::new();
        let mut tick = tokio::time::interval(ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Side by side: a slow heartbeat must not delay the renewals past their windows.
            let heartbeat = async {
                match timeout(margin, cluster.instances.put(&cluster.instance, me.clone())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => tracing::warn!(%err, "cannot write the instance heartbeat"),
                    Err(_) => {
                        tracing::warn!("the instance heartbeat took longer than the lease margin")
                    }
                }
            };
            tokio::join!(heartbeat, self.renew(&me, &mut held));
            let (mut live, mut owners) = match timeout(ttl / 2, read_state(cluster)).await {
                Ok(Ok(state)) => state,
                Ok(Err(err)) => {
                    counter!(telemetry::JETSTREAM_ERRORS, "operation" => "lease_read").increment(1);
                    tracing::warn!(err = %format!("{err:#}"), "cannot read the leases; no change this round");
                    continue;
                }
                Err(_) => {
                    counter!(telemetry::JETSTREAM_ERRORS, "operation" => "lease_read").increment(1);
                    tracing::warn!(
                        "reading the leases took longer than half the lease ttl; no change this round"
                    );
                    continue;
                }
            };
            // This instance is alive whether or not its heartbeat was stored yet.
            if !live.contains(&cluster.instance) {
                live.push(cluster.instance.clone());
                live.sort();
            }
            let owned: BTreeSet<u16> = held
                .keys()
                .filter_map(|unit| match unit {
                    Unit::Partition(p) => Some(*p),
                    Unit::Subscriber(_) => None,
                })
                .collect();
            let free: BTreeSet<u16> = (0..partitions)
                .filter(|p| !owners.contains_key(p))
                .collect();
            let plan = plan(partitions, live.len(), &owned, &free, offset);
            let releasing: Vec<(Unit, Held)> = plan
                .release
                .iter()
                .filter_map(|p| {
                    let unit = Unit::Partition(*p);
                    held.remove(&unit).map(|lease| (unit, lease))
                })
                .collect();
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
            let claims: Vec<Unit> = plan
                .claim
                .into_iter()
                .map(Unit::Partition)
                .chain(
                    subscribers
                        .iter()
                        .copied()
                        .filter(|unit| !held.contains_key(unit)),
                )
                .collect();
            // Side by side, each bounded by the margin, so that a round stays short.
            let attempts = futures::future::join_all(claims.into_iter().map(|unit| {
                let create = cluster.leases.create(key(unit, &self.table), me.clone());
                async move {
                    let sent = Instant::now();
                    (unit, sent, timeout(margin, create).await)
                }
            }))
            .await;
            for (unit, sent, created) in attempts {
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
                held.insert(
                    unit,
                    Held {
                        revision,
                        window,
                        stop: task_stop,
                        task,
                    },
                );
            }
            let mut view = self.view.lock();
            view.owned = held
                .keys()
                .filter_map(|unit| match unit {
                    Unit::Partition(p) => Some(*p),
                    Unit::Subscriber(_) => None,
                })
                .collect();
            view.owners = owners;
            view.live = live;
            self.metrics.partitions_owned.set(view.owned.len() as f64);
        }
        futures::future::join_all(
            std::mem::take(&mut held)
                .into_iter()
                .map(|(unit, lease)| self.release(unit, lease)),
        )
        .await;
        let _ = timeout(margin, cluster.instances.delete(&cluster.instance)).await;
        self.view.lock().owned.clear();
        self.metrics.partitions_owned.set(0.0);
    }
}

impl JsOwnership {
    /// Renews every held lease at once, each bounded by the margin; a failed renewal (or a
    /// finished task) ends that ownership at once. A renewal moves the lease's window forward.
    async fn renew(&self, me: &Bytes, held: &mut BTreeMap<Unit, Held>) {
        let cluster = &self.cluster;
        let ttl = cluster.settings.lease_ttl;
        let margin = ttl / 3;
        let sent = Instant::now();
        let renewals = held.iter().map(|(&unit, lease)| {
            let leases = cluster.leases.clone();
            let me = me.clone();
            let finished = lease.task.is_finished();
            let revision = lease.revision;
            let key = key(unit, &self.table);
            async move {
                if finished {
                    return (unit, None);
                }
                match timeout(margin, leases.update(key, me, revision)).await {
                    Ok(Ok(revision)) => (unit, Some(revision)),
                    Ok(Err(err)) => {
                        tracing::warn!(?unit, %err, "lease renewal failed; its task stopped");
                        (unit, None)
                    }
                    Err(_) => {
                        tracing::warn!(
                            ?unit,
                            "lease renewal took longer than the margin; its task stopped"
                        );
                        (unit, None)
                    }
                }
            }
        });
        let mut lost = Vec::new();
        for (unit, renewed) in futures::future::join_all(renewals).await {
            match (renewed, held.get_mut(&unit)) {
                (Some(revision), Some(lease)) => {
                    lease.revision = revision;
                    if !extend(&lease.window, sent + ttl - margin) {
                        counter!(telemetry::JETSTREAM_ERRORS, "operation" => "lease_lapsed")
                            .increment(1);
                        tracing::warn!(
                            ?unit,
                            "lease window passed before its renewal came back; its task stopped"
                        );
                        lost.push(unit);
                    }
                }
                _ => lost.push(unit),
            }
        }
        let ending = lost
            .into_iter()
            .filter_map(|unit| held.remove(&unit).map(|lease| (unit, lease)));
        let ended = futures::future::join_all(ending.map(|(unit, lease)| async move {
            stop_task(lease.stop, lease.task, margin).await;
            close_window(&lease.window);
            let _ = timeout(
                margin,
                cluster
                    .leases
                    .delete_expect_revision(key(unit, &self.table), Some(lease.revision)),
            )
            .await;
        }))
        .await;
        for _ in ended {
            self.metrics.lease_change("lost");
        }
    }

    async fn release(&self, unit: Unit, lease: Held) {
        let cluster = &self.cluster;
        let margin = cluster.settings.lease_ttl / 3;
        stop_task(lease.stop, lease.task, margin).await;
        close_window(&lease.window);
        match timeout(
            margin,
            cluster
                .leases
                .delete_expect_revision(key(unit, &self.table), Some(lease.revision)),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(?unit, "lease released"),
            Ok(Err(err)) => {
                tracing::warn!(?unit, %err, "cannot delete the lease; it expires by itself");
            }
            Err(_) => tracing::warn!(?unit, "deleting the lease timed out; it expires by itself"),
        }
    }
}

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

/// Live instances and current lease owners (partition → (instance, revision)).
async fn read_state(
    cluster: &Cluster,
) -> anyhow::Result<(Vec<String>, BTreeMap<u16, (String, u64)>)> {
    let (instances, leases) = futures::future::try_join(
        current_entries(&cluster.instances),
        current_entries(&cluster.leases),
    )
    .await?;
    let mut live: Vec<String> = instances.into_iter().map(|entry| entry.key).collect();
    live.sort();
    let owners = leases
        .into_iter()
        .filter_map(|entry| {
            let partition = entry.key.strip_prefix('p')?.parse::<u16>().ok()?;
            let owner = String::from_utf8_lossy(&entry.value).into_owned();
            Some((partition, (owner, entry.revision)))
        })
        .collect();
    Ok((live, owners))
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
