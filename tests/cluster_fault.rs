//! A fault test of the JetStream backend: three `outage-relay` binaries (instances `r1`..`r3`,
//! each on its own port) share the three-node JetStream cluster `.ci/test` starts. A storm of
//! [`DEVICES`] supply points is published to them; mid-storm the instance owning the most
//! partitions is SIGKILLed (`kill -9`), a second later the JetStream node leading the most of
//! the run's streams is SIGKILLed (`.ci/nats-cluster kill-node`), and a few seconds later both
//! come back (the relay with the same `--instance` name, ports and flags). Publishing goes on
//! throughout the faults.
//!
//! The storm (deterministic from a seed, printed; `OUTAGE_RELAY_FAULT_SEED` replays one) gives
//! every device one to three outages in device-time order, spread over the six default DNO
//! groups, of the kinds in [`Scenario`](storm::Scenario): long ones (POA then PRA), short ones (no alert) and
//! some left open (POA only); some devices report all their events at once (in one batch).
//! Every outcome is independent of when an instance processes an event (see [`storm`]).
//!
//! Publishers send batches round-robin over the instances and resend a batch to the next
//! instance on any error (events are de-duplicated by their key, so resending is safe). One
//! subscriber per DNO group subscribes through some instance, acknowledges as it goes, and on
//! any stream error reconnects to the next instance, resuming from its shared cursor (half
//! the subscribers) or from the sequence after the last it received (the other half).
//!
//! At the end, when every expected alert has arrived, each subscriber's receipts are checked
//! against the model of the script:
//! - every expected alert arrived, by `alert_id`, at the right subscriber, with the right
//!   `learned_late`; no alert arrived that the model does not predict;
//! - an `alert_id` received twice carried the same sequence both times (a re-delivery after a
//!   reconnect: counted, not refused); one sequence never carried two alerts;
//! - the received sequences are exactly `1..=head` of the subscriber's stream;
//! - per supply point, the alerts are in the order of its outages, each POA before its PRA;
//! - every `alert_id` names exactly one instance in `emitted_by`: no alert emitted by two
//!   owners.
//!
//! No assertion depends on timing; waits are bounded only so that a broken relay fails the
//! test instead of hanging it. Every process the test starts is killed when it ends, and a
//! JetStream node it killed is restarted, even when it fails. A failure counts the failures by
//! kind (`LOST`, `UNEXPECTED`, `DUPLICATE`, `ORDER`, `GAP`, `EMITTED_BY`, ...), shows the
//! first of each, and keeps the relays' logs (`OUTAGE_RELAY_FAULT_KEEP=1` keeps them anyway).
//!
//! Needs `NATS_URLS` and `NATS_CLUSTER_DIR`, which `.ci/test` exports.

mod common;

use std::time::Duration;

use common::cluster::{
    self, CALL_LIMIT, KilledNode, check_order_and_emitters, cluster_status, finished, owners,
    stream_leaders, watch_ownership,
};
use common::storm::{self, Pacing, Plan, Rng, Script, Shared};
use outage_relay::domain::UtcMillis;
use tokio::time::Instant;

/// Supply points in the storm.
const DEVICES: u64 = 2_400;
/// The relays' debounce (`--debounce 2s`).
const DEBOUNCE_MS: i64 = 2_000;
/// Partitions of the device space (`store.jetstream.partitions`).
const PARTITIONS: usize = 16;
/// Events streams the partitions are spread over (`store.jetstream.event_streams`, default).
const EVENT_STREAMS: u16 = 3;
/// Relay instances.
const INSTANCES: usize = 3;
/// The storm: three publishers, each with its own share of the devices.
const PLAN: Plan = Plan {
    devices: DEVICES,
    first_device: 0xfa_0000,
    publishers: 3,
    debounce_ms: DEBOUNCE_MS,
    // Per cent of each scenario, in the order of `storm::Mix`.
    earlier: [60, 20, 20, 0, 0, 0, 0, 0],
    last: [35, 10, 12, 0, 13, 14, 8, 8],
    pending_ms: 3_000..25_000,
    short_ms: 100..1_800,
    bunched_percent: Some(30),
    batch_size: 50..151,
};
/// Each publisher spreads its batches over this long, so that the storm spans the faults.
const STORM_SPAN: Duration = Duration::from_secs(20);
/// When, after the storm starts, the relay instance is SIGKILLed ...
const RELAY_KILL_AT: Duration = Duration::from_secs(6);
/// ... and the JetStream node (during the relay's takeover) ...
const NODE_KILL_AT: Duration = Duration::from_secs(7);
/// ... and when the node is started again ...
const NODE_RESTART_AT: Duration = Duration::from_secs(11);
/// ... and the relay instance.
const RELAY_RESTART_AT: Duration = Duration::from_secs(13);
/// Seed of the script unless `OUTAGE_RELAY_FAULT_SEED` is set.
const DEFAULT_SEED: u64 = 0x5eed_fa17_0000_0003;
/// Bound on the storm, only to turn a hang into a failure.
const STORM_LIMIT: Duration = Duration::from_secs(120);
/// Bound on the final drain, only to turn a hang into a failure.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_and_jetstream_node_lose_duplicate_and_reorder_no_alert() {
    let nats_urls = std::env::var("NATS_URLS").expect(
        "NATS_URLS is not set: run .ci/test, which starts the JetStream cluster (or start one \
         with .ci/nats-cluster and export NATS_URLS and NATS_CLUSTER_DIR)",
    );
    let cluster_dir = std::env::var("NATS_CLUSTER_DIR").expect(
        "NATS_CLUSTER_DIR is not set: run .ci/test, which starts the JetStream cluster (this \
         test kills and restarts one of its nodes)",
    );
    let seed = storm::seed_from_env("OUTAGE_RELAY_FAULT_SEED", DEFAULT_SEED);
    println!("cluster fault test seed {seed:#x} (replay: OUTAGE_RELAY_FAULT_SEED={seed:x})");
    let began = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("cluster-fault-")
        .tempdir()
        .expect("a temporary directory");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("FAULT_{}_{}", std::process::id(), nanos % 1_000_000_000);
    let config = cluster::write_config(
        dir.path(),
        &prefix,
        PARTITIONS,
        "lease_ttl = \"2s\"\nsnapshot_interval = \"500ms\"\n",
    );

    let mut relays = cluster::relays(dir.path(), &config, &nats_urls, INSTANCES, "2s").await;
    let (urls, names) = cluster::start_spread(&mut relays, PARTITIONS).await;

    let t0 = UtcMillis::system_now().0;
    let script = Script::generate(&PLAN, seed, t0);
    println!("script: {}; prefix {prefix}", script.summary());

    let shared = Shared::new(urls.clone(), CALL_LIMIT, Duration::from_millis(100));
    let subscribers = shared.spawn_subscribers();
    let storm = Instant::now();
    let publishers = shared.spawn_publishers(&script, |_| Pacing::Spread(STORM_SPAN));

    // The faults, while the publishers go on: the instance that owns the most partitions, and
    // the node that leads the most of this run's streams (the seed decides when unknown).
    let mut rng = Rng::new(seed ^ 0xfa17);
    tokio::time::sleep_until(storm + RELAY_KILL_AT).await;
    let before = cluster_status(&urls).await;
    let (busiest, orphans) = cluster::busiest(before.as_ref(), &names);
    let victim = busiest.unwrap_or_else(|| rng.below(INSTANCES));
    let owned_by_victim = orphans.len();
    relays[victim].kill9().await;
    let killed_ms = UtcMillis::system_now().0;
    println!(
        "{:.1?}: kill -9 relay {} (owned {owned_by_victim} partitions)",
        storm.elapsed(),
        names[victim]
    );
    let leaders = stream_leaders(&nats_urls, &prefix).await;
    let led = cluster::led_per_node(&leaders);
    let leading = led
        .iter()
        .max_by_key(|(name, count)| (**count, std::cmp::Reverse((*name).clone())))
        .and_then(|(name, _)| name.strip_prefix('n')?.parse().ok());
    let mut node = KilledNode {
        cluster_dir,
        node: leading.unwrap_or_else(|| u8::try_from(1 + rng.below(3)).expect("1..3")),
        down: false,
    };
    let meta = cluster::meta_leader(&node.cluster_dir).await;
    tokio::time::sleep_until(storm + NODE_KILL_AT).await;
    node.kill().await;
    let node_killed_ms = UtcMillis::system_now().0;
    let killed_node = format!("n{}", node.node);
    let killed_led: Vec<&str> = leaders
        .iter()
        .filter(|(_, leader)| **leader == killed_node)
        .map(|(stream, _)| stream.as_str())
        .collect();
    println!(
        "{:.1?}: kill -9 JetStream node {} (streams led per node: {led:?}; it led {}; the meta \
         leader was {})",
        storm.elapsed(),
        node.node,
        killed_led.join(" "),
        meta.as_deref().unwrap_or("unknown")
    );
    tokio::time::sleep_until(storm + NODE_RESTART_AT).await;
    node.restart().await;
    println!(
        "{:.1?}: JetStream node {} healthy again",
        storm.elapsed(),
        node.node
    );
    tokio::time::sleep_until(storm + RELAY_RESTART_AT).await;
    relays[victim].start().await;
    let restarted_at = Instant::now();
    println!(
        "{:.1?}: relay {} serving again",
        storm.elapsed(),
        names[victim]
    );
    let back = names[victim].clone();
    let rejoin = tokio::spawn(watch_ownership(
        vec![urls[victim].clone()],
        restarted_at,
        STORM_LIMIT,
        move |status| owners(status).contains(&back.as_str()),
    ));

    for handle in publishers {
        tokio::time::timeout_at(storm + STORM_LIMIT, handle)
            .await
            .expect("the storm did not end within its bound")
            .expect("a publisher panicked");
    }
    println!("{:.1?}: every batch acknowledged", storm.elapsed());

    // Wait until every subscriber has everything (or the bound passes: then the check says
    // what is missing).
    shared.wait_drained(&script, DRAIN_LIMIT).await;
    let drained_at = UtcMillis::system_now().0;
    shared.stop_subscribers(subscribers).await;
    let heads = shared.heads().await.unwrap_or_default();
    let rejoin = finished(rejoin).await;
    let (taken, slowest) = cluster::takeover(
        &shared,
        PARTITIONS as u16,
        &orphans,
        &names[victim],
        killed_ms,
    );
    let takeover = format!(
        "survivors emitted alerts for {taken} of its {} partitions (the slowest: {} ms on)",
        orphans.len(),
        slowest.map_or_else(|| "-".to_owned(), |ms| ms.to_string())
    );

    let delivery = cluster::Delivery::of(&shared);
    let (mut failures, counts) = shared.check(&script, &heads);
    let (more, by_emitter) = check_order_and_emitters(&shared, &script, &names);
    failures.extend(more);
    failures.extend(shared.take_anomalies());
    if drained_at >= script.short_deadline {
        failures.push(format!(
            "MODEL the test ran past {}, when the model's pending short interruptions start to be \
             alerted: its expectations no longer hold",
            script.short_deadline
        ));
    }
    println!(
        "cluster fault summary (seed {seed:#x}, wall {:.1?}):\n  \
         faults: relay {} killed (owned {owned_by_victim} of {PARTITIONS} partitions), \
         JetStream node {} killed; {takeover}; restarted relay owning partitions again after \
         {rejoin:.1?}\n  {}\n  {}\n  {}\n  by emitter {by_emitter:?}",
        began.elapsed(),
        names[victim],
        node.node,
        shared.traffic(&script, &counts, &heads),
        delivery.summary(),
        delivery.by_leader(
            &shared,
            &leaders,
            &killed_node,
            node_killed_ms,
            (PARTITIONS as u16, EVENT_STREAMS)
        ),
    );
    if failures.is_empty() && std::env::var_os("OUTAGE_RELAY_FAULT_KEEP").is_some() {
        drop(relays);
        println!("relay logs kept in {}", dir.keep().display());
        return;
    }
    if !failures.is_empty() {
        cluster::fail(seed, &failures, relays, dir);
    }
}
