//! A substation trip on the JetStream backend, with the busiest relay instance killed in it:
//! three `outage-relay` binaries share the three-node JetStream cluster `.ci/test` starts,
//! with the product's default lease and snapshot settings. Every one of [`DEVICES`] supply
//! points loses supply within the same 300 ms (a trip), and stays off. Once the losses are in
//! and before their POAs are due, the instance owning the most partitions is SIGKILLed
//! (`kill -9`) and stays down: its partitions' POAs can only come from the survivors, after
//! they take its partitions over and replay the losses.
//!
//! Checked, beyond what [`Shared::check`] and the order and emitter checks of the cluster
//! fault test hold (every alert once, per-point order, one emitter): every POA is
//! received by its DNO's subscriber before its SLA deadline (due + 60 s). That is the
//! obligation itself, not a speed test: how long the take-over took, and the due→received
//! percentiles, are printed for the README and asserted on by nothing.
//!
//! Needs `NATS_URLS`, which `.ci/test` exports. `OUTAGE_RELAY_FAULT_KEEP=1` keeps the relays'
//! logs of a run that passed.

mod common;

use std::time::Duration;

use common::cluster::{self, Delivery, check_order_and_emitters, cluster_status};
use common::storm::{self, Pacing, Plan, Script, Shared};
use outage_relay::domain::UtcMillis;
use tokio::time::Instant;

/// Supply points on the tripped substation.
const DEVICES: u64 = 3_000;
/// The relays' debounce (`--debounce 2s`): what the storm model's outages assume.
const DEBOUNCE_MS: i64 = 2_000;
/// Partitions of the device space (`store.jetstream.partitions`).
const PARTITIONS: usize = 16;
/// Relay instances.
const INSTANCES: usize = 3;
/// The trip: every device's last outage begins 1.5–1.8 s into the run and lasts (its POA comes
/// from its debounce timer, after the kill); its earlier ones are short interruptions hours
/// ago (no alert).
const PLAN: Plan = Plan {
    devices: DEVICES,
    first_device: 0xfb_0000,
    publishers: 3,
    debounce_ms: DEBOUNCE_MS,
    earlier: [0, 0, 100, 0, 0, 0, 0, 0],
    last: [0, 0, 0, 0, 0, 0, 100, 0],
    pending_ms: 1_500..1_800,
    short_ms: 100..1_800,
    bunched_percent: None,
    batch_size: 200..301,
};
/// The publishers send everything within this long of the start.
const SEND_SPAN: Duration = Duration::from_secs(1);
/// When the busiest instance is killed: the losses are in, their POAs not yet due.
const KILL_AT: Duration = Duration::from_millis(2_500);
/// Seed of the script unless `OUTAGE_RELAY_FAULT_SEED` is set.
const DEFAULT_SEED: u64 = 0x5eed_7219_0000_0001;
/// Bounds only to turn a hang into a failure.
const STORM_LIMIT: Duration = Duration::from_secs(120);
const DRAIN_LIMIT: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_loses_its_busiest_instance_and_every_alert_still_meets_its_deadline() {
    let nats_urls = std::env::var("NATS_URLS").expect(
        "NATS_URLS is not set: run .ci/test, which starts the JetStream cluster (or start one \
         with .ci/nats-cluster and export NATS_URLS)",
    );
    let seed = storm::seed_from_env("OUTAGE_RELAY_FAULT_SEED", DEFAULT_SEED);
    println!("trip fault test seed {seed:#x} (replay: OUTAGE_RELAY_FAULT_SEED={seed:x})");
    let dir = tempfile::Builder::new()
        .prefix("trip-fault-")
        .tempdir()
        .expect("a temporary directory");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("TRIP_{}_{}", std::process::id(), nanos % 1_000_000_000);
    let config = cluster::write_config(dir.path(), &prefix, PARTITIONS, "");

    let mut relays = cluster::relays(dir.path(), &config, &nats_urls, INSTANCES, "2s").await;
    let (urls, names) = cluster::start_spread(&mut relays, PARTITIONS).await;

    let t0 = UtcMillis::system_now().0;
    let script = Script::generate(&PLAN, seed, t0);
    println!("script: {}; prefix {prefix}", script.summary());
    let shared = Shared::new(
        urls.clone(),
        cluster::CALL_LIMIT,
        Duration::from_millis(100),
    );
    let subscribers = shared.spawn_subscribers();
    let start = Instant::now();
    let publishers = shared.spawn_publishers(&script, |_| Pacing::Spread(SEND_SPAN));

    tokio::time::sleep_until(start + KILL_AT).await;
    let before = cluster_status(&urls).await;
    let (victim, orphans) = cluster::busiest(before.as_ref(), &names);
    let victim = victim.expect("an instance owning partitions");
    relays[victim].kill9().await;
    let killed_ms = UtcMillis::system_now().0;
    println!(
        "{:.1?}: kill -9 relay {} (owned {} partitions)",
        start.elapsed(),
        names[victim],
        orphans.len()
    );

    for handle in publishers {
        tokio::time::timeout_at(start + STORM_LIMIT, handle)
            .await
            .expect("the trip's events were not all acknowledged within the bound")
            .expect("a publisher panicked");
    }
    shared.wait_drained(&script, DRAIN_LIMIT).await;
    shared.stop_subscribers(subscribers).await;
    let heads = shared.heads().await.unwrap_or_default();
    let (taken, slowest) = cluster::takeover(
        &shared,
        PARTITIONS as u16,
        &orphans,
        &names[victim],
        killed_ms,
    );

    let (mut failures, counts) = shared.check(&script, &heads);
    let (more, by_emitter) = check_order_and_emitters(&shared, &script, &names);
    failures.extend(more);
    failures.extend(shared.take_anomalies());
    let delivery = Delivery::of(&shared);
    failures.extend(delivery.late.iter().cloned());
    println!(
        "trip fault summary (seed {seed:#x}): relay {} killed owning {} of {PARTITIONS} \
         partitions; survivors emitted alerts for {taken} of them, the slowest from {} ms after \
         the kill\n  {}\n  {}\n  by emitter {by_emitter:?}",
        names[victim],
        orphans.len(),
        slowest.map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
        shared.traffic(&script, &counts, &heads),
        delivery.summary(),
    );
    if !failures.is_empty() {
        cluster::fail(seed, &failures, relays, dir);
    }
    if std::env::var_os("OUTAGE_RELAY_FAULT_KEEP").is_some() {
        drop(relays);
        println!("relay logs kept in {}", dir.keep().display());
    }
}
