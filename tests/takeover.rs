//! A take-over replays a partition as its first owner decided it, on the JetStream backend.
//!
//! One relay binary owns every partition. It stores losses and, in a later batch, the
//! restorations that make them short interruptions, then is killed with SIGKILL while their
//! debounce timers are still pending. A second binary takes the partitions over only after
//! those timers' due times have passed by the wall clock, and replays the log: the
//! restorations arrived before the timers were due, so it must decide, as the first owner
//! would have, that nothing is alerted. A control outage that is never restored must still
//! give its POA, which shows the replay happened and alerts flow.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{Running, free_port, spawn, wait_healthy};
use common::{
    bounded, device, eventually, lost, nats_urls, now_ms, restored, unique_prefix, valid_mpan,
};
use outage_relay::domain::DeviceId;
use outage_relay::log::partition_of;
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{
    Alert, AlertKind, DeviceEvent, EventBatch, GetClusterStatusRequest, SubscribeRequest,
};
use tonic::transport::Channel;

/// Short interruptions stored before the kill.
const SHORT: u64 = 40;
/// The relays' debounce.
const DEBOUNCE_MS: i64 = 3_000;
const PARTITIONS: u16 = 4;

/// Starts a relay binary named `name` on the cluster under `prefix`.
async fn relay(dir: &Path, prefix: &str, name: &str) -> (Running, String, Channel) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "shutdown_grace = \"5s\"\n\n[store]\nbackend = \"jetstream\"\n\n[store.jetstream]\n\
             servers = [{}]\npartitions = {PARTITIONS}\nprefix = \"{prefix}\"\n\
             instance = \"{name}\"\nlease_ttl = \"2s\"\nsnapshot_interval = \"1h\"\n",
            nats_urls()
                .iter()
                .map(|url| format!("\"{url}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .expect("write the relay config");
    let listen = format!("127.0.0.1:{}", free_port().await);
    let metrics = format!("127.0.0.1:{}", free_port().await);
    let data = dir.join(format!("{name}-data")).display().to_string();
    let running = spawn(
        &[
            "serve",
            "--config",
            &config.display().to_string(),
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics,
            "--data-dir",
            &data,
            "--debounce",
            "3s",
        ],
        dir,
        "serve",
    );
    let url = format!("http://{listen}");
    let channel = wait_healthy(&url, dir).await;
    (running, url, channel)
}

/// Waits until the relay on `channel` owns every partition.
async fn owns_everything(channel: &Channel) {
    eventually("the relay to own every partition", || async {
        let status = AdminClient::new(channel.clone())
            .get_cluster_status(GetClusterStatusRequest {})
            .await
            .ok()?
            .into_inner();
        (status.owned_here.len() == usize::from(PARTITIONS)).then_some(())
    })
    .await;
}

async fn publish(channel: &Channel, events: Vec<DeviceEvent>) {
    let ack = bounded(
        "PublishBatch",
        IngestClient::new(channel.clone()).publish_batch(EventBatch {
            events,
            batch_id: 1,
        }),
    )
    .await
    .expect("the batch is stored")
    .into_inner();
    assert!(ack.rejected.is_empty(), "{ack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_replays_short_interruptions_as_the_first_owner_decided_them() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let prefix = unique_prefix("takeover");
    let (mut first, _, channel) = relay(dir.path(), &prefix, "first").await;
    owns_everything(&channel).await;

    let t0 = now_ms();
    let short: Vec<(String, String)> = (0..SHORT)
        .map(|n| (device(0x7000 + n), valid_mpan(12, 7000 + n)))
        .collect();
    let control = (device(0x7fff), valid_mpan(12, 7999));
    let mut losses: Vec<DeviceEvent> = short
        .iter()
        .map(|(dev, mpan)| lost(dev, t0, Some(mpan)))
        .collect();
    losses.push(lost(&control.0, t0, Some(&control.1)));
    publish(&channel, losses).await;
    let restorations = short
        .iter()
        .map(|(dev, mpan)| restored(dev, t0 + 1_000, None, Some(mpan)))
        .collect();
    publish(&channel, restorations).await;
    assert!(
        now_ms() < t0 + DEBOUNCE_MS,
        "the losses' timers are still pending at the kill"
    );
    // SIGKILL: no lease released, no checkpoint written.
    first.kill();
    let _ = first.exit().await;

    // The survivor starts after every timer's due time has passed by the wall clock.
    while now_ms() <= t0 + DEBOUNCE_MS + 1_000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second_dir = dir.path().join("second");
    std::fs::create_dir_all(&second_dir).expect("a directory for the second relay");
    let (_second, _, channel) = relay(&second_dir, &prefix, "second").await;
    owns_everything(&channel).await;

    // A marker per partition, alerted at once: each comes after everything its partition's
    // replay emitted.
    let markers: Vec<(String, String)> = (0..)
        .map(|n| (device(0x7100 + n), valid_mpan(12, 7100 + n)))
        .scan(std::collections::BTreeSet::new(), |seen, (dev, mpan)| {
            let id: DeviceId = dev.parse().expect("an EUI-64");
            Some(
                seen.insert(partition_of(id, PARTITIONS))
                    .then_some((dev, mpan)),
            )
        })
        .flatten()
        .take(usize::from(PARTITIONS))
        .collect();
    publish(
        &channel,
        markers
            .iter()
            .map(|(dev, mpan)| lost(dev, t0 - 3_600_000, Some(mpan)))
            .collect(),
    )
    .await;

    let mut feed = AlertFeedClient::new(channel.clone())
        .subscribe(SubscribeRequest {
            subscriber: "ukpn".into(),
            from_sequence: 0,
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut received = Vec::new();
    while !markers
        .iter()
        .all(|(dev, _)| received.iter().any(|a: &Alert| &a.device_id == dev))
    {
        let alert = bounded("the markers' POAs", feed.message())
            .await
            .expect("the stream")
            .expect("an alert");
        received.push(alert);
    }
    let short_alerts: Vec<&Alert> = received
        .iter()
        .filter(|alert| short.iter().any(|(dev, _)| *dev == alert.device_id))
        .collect();
    assert!(
        short_alerts.is_empty(),
        "the survivor alerted {} short interruptions, e.g. {:?}",
        short_alerts.len(),
        short_alerts.first()
    );
    let control_poas = received
        .iter()
        .filter(|alert| alert.device_id == control.0 && alert.kind == AlertKind::PowerOutage as i32)
        .count();
    assert_eq!(
        control_poas, 1,
        "the control outage's POA, once: {received:?}"
    );
    assert_eq!(received.len(), 1 + markers.len(), "{received:?}");
}
