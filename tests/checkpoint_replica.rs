//! A take-over reads a partition's checkpoint from a replica when the checkpoints stream has
//! no leader: against the three-node cluster `.ci/test` starts, a checkpoint is stored, then
//! the node leading `{prefix}_SNAPSHOTS` and one other node are SIGKILLed, so that the
//! stream has no leader at all (one replica of three is no quorum), and the checkpoint is
//! loaded as a recovery loads it. Only the last replica can answer, through a direct get.
//! Both nodes are started again before the test ends, even when it fails.
//!
//! Alone in its test binary: the other JetStream tests share the cluster and would fail
//! while two of its nodes are down. Needs `NATS_URLS` and `NATS_CLUSTER_DIR` (`.ci/test`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{KilledNode, stream_leaders};
use common::{bounded, jetstream_config, nats_cluster_dir, nats_urls, unique_prefix};
use outage_relay::log::jetstream::Cluster;
use outage_relay::log::jetstream::checkpoints::JsCheckpoints;
use outage_relay::log::{Checkpoint, Checkpoints, Lease, ride_through_read};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_read_from_a_replica_while_its_stream_has_no_leader() {
    let cluster_dir = nats_cluster_dir();
    let prefix = unique_prefix("replica");
    let config = jetstream_config(&prefix, 4);
    let cluster = Arc::new(
        bounded("connect to JetStream", Cluster::connect(&config))
            .await
            .expect("a cluster"),
    );
    let checkpoints = JsCheckpoints::new(Arc::clone(&cluster));
    let (_window, watch) = watch::channel(Instant::now() + Duration::from_secs(3600));
    let lease = Lease::renewable(watch, CancellationToken::new());
    // Three chunks (the default chunk is 512 KiB), each of its own bytes.
    let state: Vec<u8> = (0..1_300_000u32).map(|i| (i ^ (i >> 11)) as u8).collect();
    let stored = Checkpoint {
        position: 4242,
        state,
    };
    bounded("store a checkpoint", checkpoints.save(2, &stored, &lease))
        .await
        .expect("a checkpoint stored");

    let leaders = stream_leaders(&nats_urls().join(","), &prefix).await;
    let leader: u8 = leaders
        .get("SNAPSHOTS")
        .and_then(|name| name.strip_prefix('n')?.parse().ok())
        .expect("the checkpoints stream has a leader");
    let other = if leader == 1 { 2 } else { 1 };
    let mut nodes = [leader, other].map(|node| KilledNode {
        cluster_dir: cluster_dir.clone(),
        node,
        down: false,
    });
    for node in &mut nodes {
        node.kill().await;
    }

    // As a recovery loads it: riding out what does not answer, for a bounded time.
    let loaded = ride_through_read("test: checkpoint", || checkpoints.load(2)).await;

    for node in &mut nodes {
        node.restart().await;
    }
    let loaded = loaded.expect("the checkpoint, read from the replica left");
    assert_eq!(loaded, Some(stored));
}
