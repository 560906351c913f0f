//! A JetStream node's death ends only the leases it must: partition leases are kept in a
//! bucket per events stream (`{prefix}_LEASES_<index>`), so when the node leading one of
//! those buckets is SIGKILLed, the partitions of that bucket lose their leases (and are
//! taken up again once a new leader is elected), while the partitions of the other buckets
//! keep theirs throughout. With one shared leases bucket, that node's death ended every
//! lease in the cluster.
//!
//! The leases are held by the library's JetStream ownership, connected to the two nodes
//! that stay up (a connection to the killed node would lose the answers in flight, which is
//! another fault). The node is started again before the test ends, even when it fails.
//!
//! Alone in its test binary: the other JetStream tests share the cluster and would see the
//! node's death. Needs `NATS_URLS` and `NATS_CLUSTER_DIR` (`.ci/test`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{KilledNode, stream_leaders};
use common::{bounded, eventually, jetstream_config, nats_cluster_dir, nats_urls, unique_prefix};
use outage_relay::log::jetstream::Cluster;
use outage_relay::log::jetstream::ownership::JsOwnership;
use outage_relay::log::{Ownership, StartUnit, Unit};
use outage_relay::route::RoutingTable;
use outage_relay::telemetry::Metrics;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Partitions: two in each of the three events streams' buckets.
const PARTITIONS: u16 = 6;
/// Events streams, and so partition leases buckets.
const EVENT_STREAMS: u16 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_death_ends_only_the_leases_of_the_partitions_whose_bucket_it_led() {
    let cluster_dir = nats_cluster_dir();
    let prefix = unique_prefix("leases");
    let mut config = jetstream_config(&prefix, PARTITIONS);
    config.store.jetstream.event_streams = EVENT_STREAMS;
    config.store.jetstream.lease_ttl = Duration::from_secs(2);
    // Provisions the streams and buckets, and places the buckets' leaders.
    bounded("connect to JetStream", Cluster::connect(&config))
        .await
        .expect("a cluster");

    let leaders = stream_leaders(&nats_urls().join(","), &prefix).await;
    let bucket_leader = |index: u16| leaders.get(&format!("KV_LEASES_{index}")).cloned();
    let killed = bucket_leader(0).expect("the leases bucket of events stream 0 has a leader");
    let led: Vec<u16> = (0..EVENT_STREAMS)
        .filter(|index| bucket_leader(*index).as_deref() == Some(killed.as_str()))
        .collect();
    let node: u8 = killed
        .strip_prefix('n')
        .and_then(|n| n.parse().ok())
        .expect("nodes are named n<number>");
    config.store.jetstream.servers = client_urls_but(&cluster_dir, node);
    let cluster = Arc::new(
        bounded(
            "connect to the nodes that stay up",
            Cluster::connect(&config),
        )
        .await
        .expect("a cluster"),
    );

    let starts: Arc<Mutex<BTreeMap<u16, u32>>> = Arc::default();
    let start: StartUnit = {
        let starts = Arc::clone(&starts);
        Arc::new(move |unit, lease| {
            if let Unit::Partition(partition) = unit {
                *starts.lock().entry(partition).or_default() += 1;
            }
            tokio::spawn(async move { lease.ended().await })
        })
    };
    let ownership = Arc::new(JsOwnership::new(
        Arc::clone(&cluster),
        Arc::new(RoutingTable::from_config(&config.routing)),
        Arc::new(Metrics::new()),
    ));
    let stop = CancellationToken::new();
    let driving = tokio::spawn({
        let ownership = Arc::clone(&ownership);
        let stop = stop.clone();
        let units = (0..PARTITIONS).map(Unit::Partition).collect();
        async move { ownership.run(units, start, stop).await }
    });
    eventually("every partition owned", || async {
        (ownership.view().owned_here.len() == usize::from(PARTITIONS)).then_some(())
    })
    .await;

    let mut node = KilledNode {
        cluster_dir,
        node,
        down: false,
    };
    node.kill().await;
    // The partitions of the buckets it led lose their leases, and are claimed again once
    // those buckets have a new leader: then every other bucket's partitions have been
    // through the whole election.
    let in_led = |partition: &u16| led.contains(&(partition % EVENT_STREAMS));
    let after = eventually(
        "the partitions of the buckets it led to be claimed again",
        || async {
            let starts = starts.lock().clone();
            let again = (0..PARTITIONS)
                .filter(in_led)
                .all(|partition| starts.get(&partition) == Some(&2));
            let owned = ownership.view().owned_here.len() == usize::from(PARTITIONS);
            (again && owned).then_some(starts)
        },
    )
    .await;
    node.restart().await;
    stop.cancel();
    bounded("the lease driver to stop", driving)
        .await
        .expect("the lease driver");

    let kept: BTreeMap<u16, u32> = (0..PARTITIONS)
        .filter(|partition| !in_led(partition))
        .map(|partition| (partition, after.get(&partition).copied().unwrap_or(0)))
        .collect();
    assert!(
        kept.values().all(|starts| *starts == 1),
        "node {killed} led the leases buckets of events streams {led:?}; the partitions of the \
         other buckets were started (claimed) this often: {kept:?}"
    );
}

/// The client URLs of every node of the cluster in `cluster_dir` but `node`.
fn client_urls_but(cluster_dir: &str, node: u8) -> Vec<String> {
    let ports = std::fs::read_to_string(std::path::Path::new(cluster_dir).join("ports"))
        .expect("the cluster's ports file");
    ports
        .lines()
        .filter_map(|line| {
            let (name, port) = line.strip_prefix("CLIENT_")?.split_once('=')?;
            (name.parse::<u8>().ok()? != node).then(|| format!("nats://127.0.0.1:{port}"))
        })
        .collect()
}
