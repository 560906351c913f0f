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

use super::Cluster;

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
pub async fn run(
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
        if let Err(err) = cluster.instances.put(&cluster.instance, me.clone()).await {
            tracing::warn!(%err, "cannot write the instance heartbeat");
        }
        // Renew every lease at once; a failed renewal (or a finished task) ends the
        // ownership at once.
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
                match leases.update(key(partition), me, revision).await {
                    Ok(revision) => (partition, Some(revision)),
                    Err(err) => {
                        tracing::warn!(partition, %err, "lease renewal failed; partition stopped");
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
        for partition in lost {
            if let Some(lease) = held.remove(&partition) {
                stop_task(lease.stop, lease.task, margin).await;
                let _ = cluster
                    .leases
                    .delete_expect_revision(key(partition), Some(lease.revision))
                    .await;
                metrics.lease_change("lost");
            }
        }
        let Some((live, owners)) = read_state(&cluster).await else {
            continue;
        };
        let owned: BTreeSet<u16> = held.keys().copied().collect();
        let free: BTreeSet<u16> = (0..partitions)
            .filter(|p| !owners.contains_key(p))
            .collect();
        let plan = plan(partitions, live.len(), &owned, &free, offset);
        for partition in plan.release {
            if let Some(lease) = held.remove(&partition) {
                release(&cluster, partition, lease).await;
                metrics.lease_change("released");
            }
        }
        for partition in plan.claim {
            let sent = Instant::now();
            let Ok(revision) = cluster.leases.create(key(partition), me.clone()).await else {
                continue;
            };
            let (window, watch) = watch::channel(sent + ttl - margin);
            let task_stop = stop.child_token();
            let task = start(partition, watch, task_stop.clone());
            tracing::info!(partition, "partition claimed");
            metrics.lease_change("claimed");
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
    for (partition, lease) in std::mem::take(&mut held) {
        release(&cluster, partition, lease).await;
    }
    let _ = cluster.instances.delete(&cluster.instance).await;
    view.inner.lock().owned.clear();
    metrics.partitions_owned.set(0.0);
}

/// Stops a partition task, aborting it if it has not ended within `bound` (a task waiting on
/// JetStream must not hold up the renewal of every other lease).
async fn stop_task(stop: CancellationToken, mut task: JoinHandle<()>, bound: std::time::Duration) {
    stop.cancel();
    if tokio::time::timeout(bound, &mut task).await.is_err() {
        task.abort();
        tracing::warn!("a partition task did not stop in time and was aborted");
    }
}

async fn release(cluster: &Cluster, partition: u16, lease: Held) {
    stop_task(lease.stop, lease.task, cluster.settings.lease_ttl / 3).await;
    if let Err(err) = cluster
        .leases
        .delete_expect_revision(key(partition), Some(lease.revision))
        .await
    {
        tracing::warn!(partition, %err, "cannot delete the lease; it expires by itself");
    }
    tracing::info!(partition, "partition released");
}

/// Live instances and current lease owners (partition → (instance, revision)).
async fn read_state(cluster: &Cluster) -> Option<(Vec<String>, BTreeMap<u16, (String, u64)>)> {
    let mut live = Vec::new();
    let mut keys = cluster.instances.keys().await.ok()?;
    while let Some(key) = keys.next().await {
        live.push(key.ok()?);
    }
    live.sort();
    let mut keys = cluster.leases.keys().await.ok()?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key.ok()?);
    }
    let entries = names.into_iter().filter_map(|name| {
        let partition = name.strip_prefix('p').and_then(|p| p.parse::<u16>().ok())?;
        let leases = cluster.leases.clone();
        Some(async move { (partition, leases.entry(name).await) })
    });
    let mut owners = BTreeMap::new();
    for (partition, entry) in futures::future::join_all(entries).await {
        if let Ok(Some(entry)) = entry
            && entry.operation == async_nats::jetstream::kv::Operation::Put
        {
            owners.insert(
                partition,
                (
                    String::from_utf8_lossy(&entry.value).into_owned(),
                    entry.revision,
                ),
            );
        }
    }
    Some((live, owners))
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
