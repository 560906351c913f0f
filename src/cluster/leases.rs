//! Partition ownership: leases in a key-value bucket, renewed by compare-and-set, balanced
//! among the live instances.
//!
//! Every `lease_ttl / 4` the driver writes this instance's heartbeat, renews each lease it
//! holds (an update that names the revision it last wrote: it fails if anyone else wrote
//! since), and plans with [`plan`]: claim free partitions up to its fair share
//! (`ceil(partitions / live instances)`), release the ones above it. A claim is a `create`,
//! which succeeds only when the key does not exist (never written, deleted, or expired
//! `lease_ttl` after its last renewal).
//!
//! Fencing: an owner may act on a partition until `sent + lease_ttl - margin`, where `sent`
//! is when it sent its last successful renewal. The server expires the key `lease_ttl` after
//! it *stored* that renewal, which is later, so the owner's window always closes first, by
//! at least the margin. A partition task checks the window before every publish and stops
//! when it has passed.

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
use metrics::counter;
use tokio::time::timeout;
use tracing::Instrument;

use super::Cluster;
use crate::telemetry;

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

/// Until when an owner may act: moved forward by each renewal.
pub type LeaseWindow = watch::Receiver<Instant>;

/// Starts a partition task: `(partition, window, stop) -> task`.
pub type StartPartition =
    Arc<dyn Fn(u16, LeaseWindow, CancellationToken) -> JoinHandle<()> + Send + Sync>;

struct Held {
    revision: u64,
    window: watch::Sender<Instant>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What the lease driver knows, for Admin and metrics.
#[derive(Debug, Default)]
pub struct OwnershipView {
    inner: Mutex<ViewState>,
}

#[derive(Debug, Default, Clone)]
struct ViewState {
    owned: BTreeSet<u16>,
    owners: BTreeMap<u16, (String, u64)>,
    live: Vec<String>,
}

impl OwnershipView {
    /// Partitions this instance owns.
    pub fn owned(&self) -> BTreeSet<u16> {
        self.inner.lock().owned.clone()
    }

    /// Every partition's owner and lease revision, as last read.
    pub fn owners(&self) -> BTreeMap<u16, (String, u64)> {
        self.inner.lock().owners.clone()
    }

    /// Live instances, as last read.
    pub fn live(&self) -> Vec<String> {
        self.inner.lock().live.clone()
    }
}

fn key(partition: u16) -> String {
    format!("p{partition}")
}

fn start_offset(instance: &str, partitions: u16) -> u16 {
    let hash = xxhash_rust::xxh3::xxh3_64(instance.as_bytes());
    u16::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// Runs the lease driver until `stop`; then stops every partition task and deletes its
/// leases, so survivors take over at once rather than after `lease_ttl`.
///
/// Every step of a round is bounded (renewals and the heartbeat by the margin, the read of
/// the buckets by half the ttl, releases by the margin and run side by side): a slow
/// JetStream delays a round, never stalls the driver, so its heartbeat stays a true sign
/// that it is alive.
pub async fn run(
    cluster: Arc<Cluster>,
    start: StartPartition,
    view: Arc<OwnershipView>,
    metrics: Arc<crate::telemetry::Metrics>,
    stop: CancellationToken,
) {
    let span = tracing::info_span!("leases", instance = %cluster.instance);
    drive(cluster, start, view, metrics, stop)
        .instrument(span)
        .await;
}

async fn drive(
    cluster: Arc<Cluster>,
    start: StartPartition,
    view: Arc<OwnershipView>,
    metrics: Arc<crate::telemetry::Metrics>,
    stop: CancellationToken,
) {
    let ttl = cluster.settings.lease_ttl;
    let margin = ttl / 3;
    let partitions = cluster.settings.partitions;
    let offset = start_offset(&cluster.instance, partitions);
    let me = Bytes::from(cluster.instance.clone());
    let mut held: BTreeMap<u16, Held> = BTreeMap::new();
    let mut tick = tokio::time::interval(ttl / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match timeout(margin, cluster.instances.put(&cluster.instance, me.clone())).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(%err, "cannot write the instance heartbeat"),
            Err(_) => tracing::warn!("the instance heartbeat took longer than the lease margin"),
        }
        renew(&cluster, &me, &mut held, &metrics).await;
        let (mut live, mut owners) = match timeout(ttl / 2, read_state(&cluster)).await {
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
        let owned: BTreeSet<u16> = held.keys().copied().collect();
        let free: BTreeSet<u16> = (0..partitions)
            .filter(|p| !owners.contains_key(p))
            .collect();
        let plan = plan(partitions, live.len(), &owned, &free, offset);
        let releasing: Vec<(u16, Held)> = plan
            .release
            .iter()
            .filter_map(|p| held.remove(p).map(|lease| (*p, lease)))
            .collect();
        for (partition, _) in &releasing {
            owners.remove(partition);
        }
        let released = releasing.len();
        futures::future::join_all(
            releasing
                .into_iter()
                .map(|(partition, lease)| release(&cluster, partition, lease)),
        )
        .await;
        for _ in 0..released {
            metrics.lease_change("released");
        }
        for partition in plan.claim {
            let sent = Instant::now();
            let Ok(Ok(revision)) =
                timeout(margin, cluster.leases.create(key(partition), me.clone())).await
            else {
                continue;
            };
            let (window, watch) = watch::channel(sent + ttl - margin);
            let task_stop = stop.child_token();
            let task = start(partition, watch, task_stop.clone());
            tracing::info!(partition, "partition claimed");
            metrics.lease_change("claimed");
            owners.insert(partition, (cluster.instance.clone(), revision));
            held.insert(
                partition,
                Held {
                    revision,
                    window,
                    stop: task_stop,
                    task,
                },
            );
        }
        let mut state = view.inner.lock();
        state.owned = held.keys().copied().collect();
        state.owners = owners;
        state.live = live;
        metrics.partitions_owned.set(held.len() as f64);
    }
    futures::future::join_all(
        std::mem::take(&mut held)
            .into_iter()
            .map(|(partition, lease)| release(&cluster, partition, lease)),
    )
    .await;
    let _ = timeout(margin, cluster.instances.delete(&cluster.instance)).await;
    view.inner.lock().owned.clear();
    metrics.partitions_owned.set(0.0);
}

/// Renews every held lease at once, each bounded by the margin; a failed renewal (or a
/// finished task) ends that ownership at once. A renewal moves the lease's window forward.
async fn renew(
    cluster: &Cluster,
    me: &Bytes,
    held: &mut BTreeMap<u16, Held>,
    metrics: &crate::telemetry::Metrics,
) {
    let ttl = cluster.settings.lease_ttl;
    let margin = ttl / 3;
    let sent = Instant::now();
    let renewals = held.iter().map(|(&partition, lease)| {
        let leases = cluster.leases.clone();
        let me = me.clone();
        let finished = lease.task.is_finished();
        let revision = lease.revision;
        async move {
            if finished {
                return (partition, None);
            }
            match timeout(margin, leases.update(key(partition), me, revision)).await {
                Ok(Ok(revision)) => (partition, Some(revision)),
                Ok(Err(err)) => {
                    tracing::warn!(partition, %err, "lease renewal failed; partition stopped");
                    (partition, None)
                }
                Err(_) => {
                    tracing::warn!(
                        partition,
                        "lease renewal took longer than the margin; partition stopped"
                    );
                    (partition, None)
                }
            }
        }
    });
    let mut lost = Vec::new();
    for (partition, renewed) in futures::future::join_all(renewals).await {
        match (renewed, held.get_mut(&partition)) {
            (Some(revision), Some(lease)) => {
                lease.revision = revision;
                let _ = lease.window.send(sent + ttl - margin);
            }
            _ => lost.push(partition),
        }
    }
    let ending = lost
        .into_iter()
        .filter_map(|partition| held.remove(&partition).map(|lease| (partition, lease)));
    let ended = futures::future::join_all(ending.map(|(partition, lease)| async move {
        stop_task(lease.stop, lease.task, margin).await;
        let _ = timeout(
            margin,
            cluster
                .leases
                .delete_expect_revision(key(partition), Some(lease.revision)),
        )
        .await;
    }))
    .await;
    for _ in ended {
        metrics.lease_change("lost");
    }
}

/// Stops a partition task, aborting it if it has not ended within `bound` (a task waiting on
/// JetStream must not hold up the renewal of every other lease).
async fn stop_task(stop: CancellationToken, mut task: JoinHandle<()>, bound: std::time::Duration) {
    stop.cancel();
    if timeout(bound, &mut task).await.is_err() {
        task.abort();
        tracing::warn!("a partition task did not stop in time and was aborted");
    }
}

async fn release(cluster: &Cluster, partition: u16, lease: Held) {
    let margin = cluster.settings.lease_ttl / 3;
    stop_task(lease.stop, lease.task, margin).await;
    match timeout(
        margin,
        cluster
            .leases
            .delete_expect_revision(key(partition), Some(lease.revision)),
    )
    .await
    {
        Ok(Ok(())) => tracing::info!(partition, "partition released"),
        Ok(Err(err)) => {
            tracing::warn!(partition, %err, "cannot delete the lease; it expires by itself");
        }
        Err(_) => tracing::warn!(
            partition,
            "deleting the lease timed out; it expires by itself"
        ),
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

/// Whether an owner may still act: its window has not passed.
pub fn window_open(window: &LeaseWindow) -> bool {
    Instant::now() < *window.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[u16]) -> BTreeSet<u16> {
        items.iter().copied().collect()
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
