//! The JetStream backend over loopback gRPC, with two relay instances in this process sharing
//! the three-node cluster `.ci/test` starts: partitions split between live instances; an event
//! published to one instance alerts a subscriber of the other; acks are shared; a stopped
//! instance's partitions, with their open outages, move to the survivor.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    LONG_AGO_MS, TestReceiver, TestRelay, bounded, device, eventually, loopback_push, lost,
    nats_urls, now_ms, push_ukpn, restored, sequences, unique_prefix, valid_mpan,
};
use outage_relay::config::{Backend, Config};
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::{
    AlertKind, GetClusterStatusRequest, GetClusterStatusResponse, GetDeviceStateRequest,
    ListOpenOutagesRequest, ListParkedAlertsRequest, ListParkedAlertsResponse, OutageState,
    ReloadRegistryRequest,
};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

const PARTITIONS: u16 = 8;

async fn instance(prefix: &str, name: &str) -> TestRelay {
    instance_with(prefix, name, |_| {}).await
}

/// Like [`instance`], with `extra` adjusting the config afterwards.
async fn instance_with(prefix: &str, name: &str, extra: impl FnOnce(&mut Config)) -> TestRelay {
    let prefix = prefix.to_owned();
    let name = name.to_owned();
    TestRelay::start_with(move |config: &mut Config, _| {
        config.store.backend = Backend::Jetstream;
        let js = &mut config.store.jetstream;
        js.servers = nats_urls();
        js.prefix = prefix;
        js.instance = Some(name);
        js.partitions = PARTITIONS;
        js.lease_ttl = Duration::from_secs(2);
        js.snapshot_interval = Duration::from_millis(200);
        extra(config);
    })
    .await
}

/// The JetStream configuration of this test cluster under `prefix`, `extra` adjusting it.
fn library_config(prefix: &str, extra: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    config.store.backend = Backend::Jetstream;
    config.store.jetstream.servers = nats_urls();
    config.store.jetstream.prefix = prefix.to_owned();
    config.store.jetstream.partitions = PARTITIONS;
    extra(&mut config);
    config
}

/// A connection to the cluster as the library makes it, with `config`'s streams provisioned.
async fn library_cluster(config: &Config) -> std::sync::Arc<outage_relay::log::jetstream::Cluster> {
    std::sync::Arc::new(
        bounded(
            "connect to JetStream",
            outage_relay::log::jetstream::Cluster::connect(config),
        )
        .await
        .expect("a cluster"),
    )
}

async fn cluster_status(relay: &TestRelay) -> GetClusterStatusResponse {
    bounded(
        "GetClusterStatus",
        relay
            .admin_client()
            .await
            .get_cluster_status(GetClusterStatusRequest {}),
    )
    .await
    .expect("GetClusterStatus succeeds")
    .into_inner()
}

/// Bound on instances starting and settling ownership: each provisions its streams (Raft
/// groups on three nodes) while the other tests of this file do the same on two cores.
const SETTLE: Duration = Duration::from_secs(90);

/// Waits until `relay` says every partition is owned, by exactly the instances `owners`;
/// calls failing while the instance is still connecting to JetStream count as "not yet".
async fn wait_owned_by(relay: &TestRelay, owners: &[&str]) -> GetClusterStatusResponse {
    let wanted: BTreeSet<String> = owners.iter().map(|s| (*s).to_owned()).collect();
    let last_seen = std::sync::Mutex::new(None);
    let settled = async {
        loop {
            let status = relay
                .admin_client()
                .await
                .get_cluster_status(GetClusterStatusRequest {})
                .await
                .map(tonic::Response::into_inner);
            *last_seen.lock().expect("not poisoned") = Some(status.clone());
            if let Ok(status) = status {
                let seen: BTreeSet<String> =
                    status.owners.iter().map(|o| o.owner.clone()).collect();
                if seen == wanted && status.owners.len() == usize::from(PARTITIONS) {
                    return status;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(SETTLE, settled)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "partitions never owned by exactly {owners:?}; last seen: {:?}",
                last_seen.lock().expect("not poisoned")
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_and_share_feeds_and_acks() {
    let prefix = unique_prefix("split");
    let a = instance(&prefix, "a").await;
    let b = instance(&prefix, "b").await;
    let status = wait_owned_by(&a, &["a", "b"]).await;
    assert_eq!(status.backend, "jetstream");
    assert_eq!(status.partitions, u32::from(PARTITIONS));
    // a's view can still show b holding partitions b is handing over; once the hand-over
    // is done, the two own every partition between them.
    let split = tokio::time::timeout(SETTLE, async {
        loop {
            let (a_status, b_status) = (cluster_status(&a).await, cluster_status(&b).await);
            if a_status.owned_here.len() + b_status.owned_here.len() == usize::from(PARTITIONS) {
                return (a_status, b_status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (a_status, b_status) = split.expect("a and b own every partition between them");
    assert_eq!(b_status.instance, "b");
    let mut owned: Vec<u32> = a_status
        .owned_here
        .iter()
        .chain(&b_status.owned_here)
        .copied()
        .collect();
    owned.sort_unstable();
    assert_eq!(
        owned,
        (0..u32::from(PARTITIONS)).collect::<Vec<_>>(),
        "{a_status:?} {b_status:?}"
    );

    // Published to a, alerted through b, whoever owns the device's partition.
    let devices: Vec<String> = (1..=6).map(device).collect();
    let events = devices
        .iter()
        .enumerate()
        .map(|(n, d)| lost(d, now_ms() - LONG_AGO_MS, Some(&valid_mpan(12, n as u64))))
        .collect();
    a.publish_ok(events).await;
    let mut feed = b.subscribe("ukpn", 0).await;
    let alerts = feed.take(devices.len()).await;
    let seen: BTreeSet<&str> = alerts.iter().map(|a| a.device_id.as_str()).collect();
    assert_eq!(seen, devices.iter().map(String::as_str).collect());
    assert!(
        alerts
            .iter()
            .all(|a| a.kind == AlertKind::PowerOutage as i32)
    );
    let sequences: Vec<u64> = alerts.iter().map(|a| a.sequence).collect();
    assert_eq!(sequences, (1..=6).collect::<Vec<u64>>());
    assert!(
        alerts
            .iter()
            .all(|a| a.emitted_by == "a" || a.emitted_by == "b")
    );

    // Acked through b, the cursor is the same seen from a.
    let acked = b.ack("ukpn", 4).await;
    assert_eq!((acked.acked_sequence, acked.backlog), (4, 2));
    let from_a = a.delivery_status("ukpn").await;
    assert_eq!((from_a.acked_sequence, from_a.head_sequence), (4, 6));
    assert_eq!(
        common::ms(from_a.oldest_unacked_due_at.as_ref()),
        common::ms(alerts[4].due_at.as_ref()),
        "the oldest unacknowledged alert is sequence 5"
    );
    // Every alert was overdue when stored (losses ten minutes old), and 5 and 6 stay
    // unacknowledged: whichever instances watched them, the shared count has them.
    let breaches = eventually("the breaches of 5 and 6 to be counted", || async {
        let breaches = b.delivery_status("ukpn").await.sla_breaches;
        (breaches >= 2).then_some(breaches)
    })
    .await;
    assert!(breaches <= 6, "{breaches} breaches for 6 alerts");
    // A subscriber reconnecting to a resumes after its cursor.
    let mut again = a.subscribe("ukpn", 0).await;
    assert_eq!(again.next().await.sequence, 5);

    // Resending an event is a duplicate (JetStream drops it by its event key).
    let again_lost = lost(&devices[0], now_ms() - LONG_AGO_MS, None);
    let ack = a.publish(vec![again_lost.clone()]).await;
    assert_eq!((ack.accepted, ack.duplicates), (1, 0));
    let ack = a.publish(vec![again_lost]).await;
    assert_eq!((ack.accepted, ack.duplicates), (0, 1));

    // A sequence beyond the head is refused, not silently skipped.
    let beyond = b
        .try_subscribe("ukpn", 100)
        .await
        .err()
        .expect("beyond the head");
    assert_eq!(beyond.code(), Code::OutOfRange);
    a.stop().await;
    b.stop().await;
}

/// Waits until `admin` lists `total` parked alerts; returns the list.
async fn parked_alerts(admin: &AdminClient<Channel>, total: u64) -> ListParkedAlertsResponse {
    eventually("the parked alerts to reach their count", || {
        let mut admin = admin.clone();
        async move {
            let parked = admin
                .list_parked_alerts(ListParkedAlertsRequest { limit: 10 })
                .await
                .ok()?
                .into_inner();
            (parked.total == total).then_some(parked)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_hands_its_partitions_and_open_outages_over() {
    let prefix = unique_prefix("handover");
    // Each instance loads a registry from its own registry directory: here, the same one.
    let registries = tempfile::tempdir().expect("a registry directory");
    let shared = |config: &mut Config| config.registry_dir = Some(registries.path().to_owned());
    let a = instance_with(&prefix, "a", shared).await;
    let b = instance_with(&prefix, "b", shared).await;
    wait_owned_by(&a, &["a", "b"]).await;
    let devices: Vec<String> = (1..=8).map(|n| device(100 + n)).collect();
    let lost_at = now_ms() - LONG_AGO_MS;
    a.publish_ok(
        devices
            .iter()
            .enumerate()
            .map(|(n, d)| lost(d, lost_at, Some(&valid_mpan(12, 100 + n as u64))))
            .collect(),
    )
    .await;
    let mut feed = b.subscribe("ukpn", 0).await;
    let poas = feed.take(devices.len()).await;
    b.ack("ukpn", poas.len() as u64).await;

    // An alert no subscriber owns (no MPAN, no registry entry) is parked, listed by any
    // instance.
    let mut admin = a.admin_client().await;
    let nowhere = device(190);
    b.publish_ok(vec![lost(&nowhere, lost_at, None)]).await;
    let parked = parked_alerts(&admin, 1).await;
    let alert = parked.alerts[0].alert.clone().expect("the parked alert");
    assert_eq!(alert.device_id, nowhere);
    assert!(!parked.alerts[0].reason.is_empty());
    // A registry naming its supply, reloaded through a: every live instance reloads, and the
    // owner of its partition routes the parked alert to its DNO.
    let mpan = valid_mpan(12, 190);
    let registry = common::write_registry(
        registries.path(),
        "registry.csv",
        &[(&nowhere, &mpan, "_C")],
    );
    let reloaded = admin
        .reload_registry(ReloadRegistryRequest {
            path: registry.display().to_string(),
        })
        .await
        .expect("ReloadRegistry on every instance")
        .into_inner();
    assert_eq!(reloaded.devices, 1);
    let unparked = feed.next().await;
    assert_eq!(
        (unparked.device_id.as_str(), unparked.alert_id.as_str()),
        (nowhere.as_str(), alert.alert_id.as_str()),
        "the same alert, unparked"
    );
    assert_eq!(
        (unparked.sequence, unparked.mpan_core.as_str()),
        (9, mpan.as_str())
    );
    b.ack("ukpn", unparked.sequence).await;
    parked_alerts(&admin, 0).await;
    let missing = admin
        .reload_registry(ReloadRegistryRequest {
            path: "/nonexistent/registry.csv".into(),
        })
        .await
        .expect_err("a registry outside the registry directory");
    assert_eq!(missing.code(), Code::PermissionDenied, "{missing}");
    let unreadable = admin
        .reload_registry(ReloadRegistryRequest {
            path: "missing.csv".into(),
        })
        .await
        .expect_err("a registry no instance can read");
    assert_eq!(unreadable.code(), Code::InvalidArgument, "{unreadable}");

    a.stop().await;
    wait_owned_by(&b, &["b"]).await;
    // The owner answers for the outages it took over (asked once its replay caught up).
    let mut admin = b.admin_client().await;
    let state = eventually("GetDeviceState from the new owner", || {
        let mut admin = admin.clone();
        let device_id = devices[0].clone();
        async move {
            admin
                .get_device_state(GetDeviceStateRequest { device_id })
                .await
                .ok()
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    assert_eq!(
        (state.subscriber.as_str(), state.outages.len()),
        ("ukpn", 1)
    );
    assert_eq!(state.outages[0].state, OutageState::Alerted as i32);
    assert_eq!(common::ms(state.outages[0].lost_at.as_ref()), lost_at);
    // Every partition's owner answers once its replay has caught up.
    let open = eventually("ListOpenOutages from every owner", || {
        let mut admin = admin.clone();
        async move {
            admin
                .list_open_outages(ListOpenOutagesRequest { limit: 3 })
                .await
                .ok()
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    assert_eq!(
        (open.total, open.outages.len()),
        (devices.len() as u64 + 1, 3),
        "the handed-over outages and the unparked one"
    );
    let malformed = admin
        .get_device_state(GetDeviceStateRequest {
            device_id: "not-a-device".into(),
        })
        .await
        .expect_err("a malformed device id");
    assert_eq!(malformed.code(), Code::InvalidArgument);

    // b now holds every partition, with the outages a had opened: restorations close them.
    let restored_at = now_ms() - 1000;
    b.publish_ok(
        devices
            .iter()
            .map(|d| restored(d, restored_at, None, None))
            .collect(),
    )
    .await;
    let pras = feed.take(devices.len()).await;
    for pra in &pras {
        assert_eq!(pra.kind, AlertKind::PowerRestoration as i32, "{pra:?}");
        assert_eq!(common::ms(pra.lost_at.as_ref()), lost_at, "{pra:?}");
        assert_eq!(pra.emitted_by, "b");
    }
    let seen: BTreeSet<&str> = pras.iter().map(|a| a.device_id.as_str()).collect();
    assert_eq!(seen, devices.iter().map(String::as_str).collect());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_of_large_batches_are_all_stored() {
    use outage_relay::proto::EventBatch;
    // Four Publish streams pipelining their batches at once: each event stored and counted
    // once, every stream answered.
    let prefix = unique_prefix("storm");
    let a = instance(&prefix, "a").await;
    let lost_at = now_ms() - 1000;
    let streams = (0..4u64).map(|stream| {
        let url = a.url.clone();
        async move {
            let channel = common::connect(&url).await;
            let batches: Vec<EventBatch> = (0..2u64)
                .map(|batch| EventBatch {
                    events: (0..250u64)
                        .map(|n| {
                            lost(
                                &device(stream * 100_000 + batch * 10_000 + n),
                                lost_at,
                                None,
                            )
                        })
                        .collect(),
                    batch_id: batch + 1,
                })
                .collect();
            let mut acks = outage_relay::proto::ingest_client::IngestClient::new(channel)
                .publish(futures::stream::iter(batches))
                .await
                .expect("Publish opens")
                .into_inner();
            let mut accepted = 0;
            while let Some(ack) = acks.message().await.expect("acks") {
                accepted += ack.accepted;
            }
            accepted
        }
    });
    let accepted: u64 = bounded("2,000 events stored", futures::future::join_all(streams))
        .await
        .into_iter()
        .sum();
    assert_eq!(accepted, 2_000);
    a.stop().await;
}

/// Which of `relays` has an open push session to ukpn's receiver (exactly one must).
async fn pusher<'a>(relays: &[&'a TestRelay]) -> &'a TestRelay {
    eventually("exactly one instance to push to ukpn", || async {
        let mut pushing = Vec::new();
        for relay in relays {
            if relay.delivery_status("ukpn").await.connected > 0 {
                pushing.push(*relay);
            }
        }
        (pushing.len() == 1).then(|| pushing[0])
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_pushes_a_push_subscriber_and_another_takes_over_when_it_stops() {
    let prefix = unique_prefix("push");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver port");
    let port = listener.local_addr().expect("receiver address").port();
    let receiver = TestReceiver::start(listener, None);
    let received = &receiver.received;
    let a = instance_with(&prefix, "a", |config| {
        push_ukpn(config, loopback_push(port))
    })
    .await;
    let b = instance_with(&prefix, "b", |config| {
        push_ukpn(config, loopback_push(port))
    })
    .await;
    wait_owned_by(&a, &["a", "b"]).await;

    let lost_at = now_ms() - LONG_AGO_MS;
    let first: Vec<String> = (1..=3).map(|n| device(200 + n)).collect();
    a.publish_ok(
        first
            .iter()
            .enumerate()
            .map(|(n, d)| lost(d, lost_at, Some(&valid_mpan(12, 200 + n as u64))))
            .collect(),
    )
    .await;
    let alerts = bounded("3 pushed alerts", received.wait_for(3)).await;
    assert_eq!(sequences(&alerts), [1, 2, 3], "{alerts:?}");
    assert!(alerts.iter().all(|alert| alert.subscriber == "ukpn"));
    let status = eventually("the receiver's acks to reach the shared cursor", || async {
        let status = b.delivery_status("ukpn").await;
        (status.acked_sequence == 3).then_some(status)
    })
    .await;
    assert_eq!((status.mode.as_str(), status.backlog), ("push", 0));
    let refused = a
        .try_subscribe("ukpn", 0)
        .await
        .err()
        .expect("a push subscriber cannot Subscribe");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");

    // The pushing instance stops; the other claims the push lease and goes on from the
    // shared cursor.
    let pushing = pusher(&[&a, &b])
        .await
        .config
        .store
        .jetstream
        .instance
        .clone();
    let (stopping, survivor) = if pushing.as_deref() == Some("a") {
        (a, b)
    } else {
        (b, a)
    };
    stopping.stop().await;
    let more: Vec<String> = (4..=5).map(|n| device(200 + n)).collect();
    survivor
        .publish_ok(
            more.iter()
                .enumerate()
                .map(|(n, d)| lost(d, lost_at, Some(&valid_mpan(12, 204 + n as u64))))
                .collect(),
        )
        .await;
    let alerts = bounded("5 pushed alerts", received.wait_for(5)).await;
    assert_eq!(
        sequences(&alerts),
        [1, 2, 3, 4, 5],
        "acked alerts are not pushed again"
    );
    let pushed: BTreeSet<&str> = alerts.iter().map(|a| a.device_id.as_str()).collect();
    let published: BTreeSet<&str> = first.iter().chain(&more).map(String::as_str).collect();
    assert_eq!(pushed, published);
    let status = eventually("the survivor's session to be acked to the head", || async {
        let status = survivor.delivery_status("ukpn").await;
        (status.acked_sequence == 5).then_some(status)
    })
    .await;
    assert_eq!((status.connected, status.last_error.as_str()), (1, ""));
    survivor.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_many_chunks_restores_the_partition_on_its_own() {
    const OUTAGES: u64 = 300;
    let prefix = unique_prefix("chunks");
    // One partition, snapshots in chunks of 1 KiB: 300 open outages take a dozen.
    let small_chunks = |config: &mut Config| {
        config.store.jetstream.partitions = 1;
        config.store.jetstream.snapshot_chunk_bytes = 1024;
    };
    let a = instance_with(&prefix, "a", small_chunks).await;
    let lost_at = now_ms() - LONG_AGO_MS;
    a.publish_ok(
        (0..OUTAGES)
            .map(|n| lost(&device(300 + n), lost_at, Some(&valid_mpan(12, 300 + n))))
            .collect(),
    )
    .await;
    eventually("a to have applied every event", || async {
        let open = a
            .admin_client()
            .await
            .list_open_outages(ListOpenOutagesRequest { limit: 1 })
            .await
            .ok()?
            .into_inner();
        (open.total == OUTAGES).then_some(())
    })
    .await;
    a.stop().await;

    // With every event gone, only the snapshot can tell b what a knew.
    let servers: Vec<async_nats::ServerAddr> = nats_urls()
        .iter()
        .map(|url| url.parse().expect("a NATS URL"))
        .collect();
    let client = async_nats::connect(servers).await.expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let snapshots = js
        .get_stream(format!("{prefix}_SNAPSHOTS"))
        .await
        .expect("the snapshots stream");
    let mut chunks = snapshots
        .info_with_subjects(format!("{prefix}.snapshots.0.>"))
        .await
        .expect("the snapshot's subjects");
    let mut stored = 0;
    while let Some(subject) = futures::StreamExt::next(&mut chunks).await {
        subject.expect("a chunk subject");
        stored += 1;
    }
    assert!(stored > 1, "the snapshot is in {stored} chunk(s)");
    js.get_stream(format!("{prefix}_EVENTS"))
        .await
        .expect("the events stream")
        .purge()
        .await
        .expect("purge the events");

    let b = instance_with(&prefix, "b", small_chunks).await;
    let open = eventually("b to answer with a's outages", || async {
        let open = b
            .admin_client()
            .await
            .list_open_outages(ListOpenOutagesRequest { limit: 1 })
            .await
            .ok()?
            .into_inner();
        (open.total > 0).then_some(open)
    })
    .await;
    assert_eq!(open.total, OUTAGES);
    b.stop().await;
}

/// The JetStream implementation of the seam passes the conformance suite every backend runs
/// (retention is left to the streams' own limits there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetstream_backend_passes_the_conformance_suite() {
    use outage_relay::log::conformance::{self, Subject};
    use outage_relay::log::jetstream::alerts::JsAlerts;
    use outage_relay::log::jetstream::checkpoints::JsCheckpoints;
    use outage_relay::log::jetstream::events::JsEvents;
    use outage_relay::route::RoutingTable;
    use std::sync::Arc;

    let config = library_config(&unique_prefix("conformance"), |_| {});
    let cluster = library_cluster(&config).await;
    let table = Arc::new(RoutingTable::from_config(&config.routing));
    conformance::run_all(&Subject {
        events: Arc::new(JsEvents::new(Arc::clone(&cluster))),
        alerts: Arc::new(JsAlerts::new(Arc::clone(&cluster), table)),
        checkpoints: Arc::new(JsCheckpoints::new(cluster)),
        partitions: PARTITIONS,
        retention: false,
    })
    .await;
}

/// Partitions are spread over `event_streams` events streams, whose leaders are moved onto
/// different nodes; streams made with another count are refused rather than misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_spread_over_events_streams_led_by_different_nodes() {
    use outage_relay::domain::UtcMillis;
    use outage_relay::log::jetstream::Cluster;
    use outage_relay::log::jetstream::events::JsEvents;
    use outage_relay::log::{EventLog, EventRecord};
    use std::sync::Arc;

    let prefix = unique_prefix("streams");
    let mut config = library_config(&prefix, |config| config.store.jetstream.event_streams = 3);
    let cluster = library_cluster(&config).await;
    let events = JsEvents::new(Arc::clone(&cluster));
    let mark = EventRecord {
        arrival: UtcMillis(0),
        received: UtcMillis(0),
        events: Vec::new(),
    };
    // Partition 4 is in stream 4 % 3 = 1; partition 6 in stream 0.
    for partition in [4, 6, 6] {
        events
            .append(partition, mark.clone())
            .await
            .expect("a mark stored");
    }
    let mut leaders = BTreeSet::new();
    for (index, stored) in [(0, 2), (1, 1), (2, 0)] {
        let mut stream = cluster
            .js
            .get_stream(format!("{prefix}_EVENTS_{index}"))
            .await
            .expect("the events stream");
        let info = stream.info().await.expect("its info");
        assert_eq!(
            info.state.messages, stored,
            "messages in {prefix}_EVENTS_{index}"
        );
        leaders.insert(
            info.cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .expect("a leader"),
        );
    }
    let version = cluster.js.client().server_info().version;
    let preferred_placement = version
        .split('.')
        .take(2)
        .map(|part| part.parse::<u32>().unwrap_or(0))
        .collect::<Vec<_>>()
        >= vec![2, 11];
    if preferred_placement {
        assert_eq!(
            leaders.len(),
            3,
            "leaders of the events streams: {leaders:?}"
        );
        assert_eq!(
            lease_bucket_leaders(&cluster, &prefix).await,
            events_leaders(&cluster, &prefix).await,
            "each partition leases bucket is led from its events stream's leader's node"
        );
        leaders_are_spread_again_after_two_end_up_on_one_node(&cluster, &prefix).await;
    }

    config.store.jetstream.event_streams = 1;
    let refused = bounded("connect with another layout", Cluster::connect(&config))
        .await
        .expect_err("streams made with three events streams are refused with one");
    assert!(
        format!("{refused:#}").contains("event_streams"),
        "the refusal names the setting: {refused:#}"
    );
}

/// Where each of the three events streams' leader is.
async fn events_leaders(
    cluster: &outage_relay::log::jetstream::Cluster,
    prefix: &str,
) -> Vec<Option<String>> {
    leaders_of(
        cluster,
        (0..3).map(|index| format!("{prefix}_EVENTS_{index}")),
    )
    .await
}

/// Where each of the three partition leases buckets' leader is.
async fn lease_bucket_leaders(
    cluster: &outage_relay::log::jetstream::Cluster,
    prefix: &str,
) -> Vec<Option<String>> {
    leaders_of(
        cluster,
        (0..3).map(|index| format!("KV_{prefix}_LEASES_{index}")),
    )
    .await
}

/// Where each of `streams`' leader is.
async fn leaders_of(
    cluster: &outage_relay::log::jetstream::Cluster,
    streams: impl Iterator<Item = String>,
) -> Vec<Option<String>> {
    let mut leaders = Vec::new();
    for name in streams {
        let leader = match cluster.js.get_stream(name).await {
            Ok(mut stream) => stream
                .info()
                .await
                .ok()
                .and_then(|info| info.cluster.as_ref().and_then(|c| c.leader.clone())),
            Err(_) => None,
        };
        leaders.push(leader);
    }
    leaders
}

/// Two events streams' leaders put on one node (as after a node died and came back): the
/// instance's periodic look moves one off it again, and its partition leases bucket's leader
/// with it.
async fn leaders_are_spread_again_after_two_end_up_on_one_node(
    cluster: &outage_relay::log::jetstream::Cluster,
    prefix: &str,
) {
    use outage_relay::log::jetstream::leaders;
    use tokio_util::sync::CancellationToken;

    let before = events_leaders(cluster, prefix).await;
    let onto = before[1].clone().expect("stream 1 has a leader");
    let request = serde_json::json!({ "placement": { "preferred": onto } });
    let answer: serde_json::Value = cluster
        .js
        .request(
            format!("STREAM.LEADER.STEPDOWN.{prefix}_EVENTS_0"),
            &request,
        )
        .await
        .expect("a step-down answer");
    assert!(answer.get("error").is_none(), "{answer}");
    eventually("two events streams led by one node", || async {
        let now = events_leaders(cluster, prefix).await;
        (now[0].as_deref() == Some(onto.as_str())).then_some(())
    })
    .await;

    let stop = CancellationToken::new();
    let spreading = tokio::spawn(leaders::keep_spread(
        cluster.js.clone(),
        cluster.names.clone(),
        "test",
        Duration::from_millis(200),
        stop.clone(),
    ));
    let spread = eventually(
        "the leaders spread again, with their lease buckets'",
        || async {
            let now = events_leaders(cluster, prefix).await;
            let distinct: BTreeSet<_> = now.iter().flatten().collect();
            let with_leases = lease_bucket_leaders(cluster, prefix).await == now;
            (now.iter().all(Option::is_some) && distinct.len() == 3 && with_leases).then_some(now)
        },
    )
    .await;
    stop.cancel();
    spreading.await.expect("the rebalancing task");
    assert!(spread.contains(&Some(onto)), "{spread:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_max_alerts_unacknowledged_and_moves_the_shared_cursor_past_the_rest() {
    let prefix = unique_prefix("retention");
    let a = instance_with(&prefix, "a", |config| {
        config.store.retention_max_alerts = 2;
        config.store.maintenance_interval = Duration::from_millis(50);
    })
    .await;
    let b = instance(&prefix, "b").await;
    wait_owned_by(&a, &["a", "b"]).await;
    let long_ago = now_ms() - LONG_AGO_MS;
    for n in 0..5 {
        // One batch each, so the alerts are likely stored in messages of their own.
        a.publish_ok(vec![lost(
            &device(70 + n),
            long_ago,
            Some(&valid_mpan(12, n)),
        )])
        .await;
    }
    // Instance b keeps the default limit, but the cursor is shared: it sees what a expired.
    let status = eventually("retention to trim the ukpn stream", || async {
        let status = b.delivery_status("ukpn").await;
        (status.head_sequence == 5 && status.acked_sequence == 3).then_some(status)
    })
    .await;
    assert_eq!(status.backlog, 2, "{status:?}");
    let gone = b
        .try_subscribe("ukpn", 1)
        .await
        .err()
        .expect("sequence 1 is settled");
    assert_eq!(gone.code(), Code::OutOfRange, "{gone}");
    let mut feed = b.subscribe("ukpn", 0).await;
    assert_eq!(sequences(&feed.take(2).await), vec![4, 5]);
    a.stop().await;
    b.stop().await;
}

/// A new owner stores a barrier in each alert stream before reading what earlier owners
/// stored after its checkpoint: a publish an earlier owner sent before its lease ended, but
/// that reaches the stream only after that read (held up in a leader election), is refused
/// instead of landing beside the new owner's copy of the same alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_owners_publish_reaching_the_stream_after_the_guard_read_is_refused() {
    use async_nats::jetstream::context::PublishErrorKind;
    use outage_relay::log::conformance::{UKPN, device_in, poa, route};
    use outage_relay::log::jetstream::EMITTED_BY;
    use outage_relay::log::jetstream::alert_batch::{self, COUNT, FIRST};
    use outage_relay::log::jetstream::alert_stream::AlertStream;
    use outage_relay::log::jetstream::alerts::JsAlerts;
    use outage_relay::log::{AlertLog, Destination};
    use outage_relay::route::RoutingTable;
    use std::sync::Arc;

    let config = library_config(&unique_prefix("barrier"), |_| {});
    let cluster = library_cluster(&config).await;
    let table = Arc::new(RoutingTable::from_config(&config.routing));
    let alerts = JsAlerts::new(Arc::clone(&cluster), table);
    let heads = alerts.heads(0);
    let stored_early = poa(device_in(0, PARTITIONS, 1), 0);
    let first = alerts
        .append(vec![(stored_early, route(UKPN))])
        .await
        .expect("append")[0];

    // The earlier owner's next message, cut and addressed as its writer does: right after
    // the stream's last message as it knew it.
    let stream = AlertStream::new(Arc::clone(&cluster), "ukpn");
    let tail = stream.bounds().await.expect("bounds").tail;
    let held_up = poa(device_in(0, PARTITIONS, 2), 0);
    let message = vec![(held_up, Destination::Routed(route(UKPN)))];
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        alert_batch::message_id(&message).as_str(),
    );
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
        tail.stream.to_string().as_str(),
    );
    headers.insert(FIRST, (tail.head + 1).to_string().as_str());
    headers.insert(COUNT, "1");
    headers.insert(EMITTED_BY, "earlier-owner");

    alerts
        .guard_replay(0, PARTITIONS, &heads)
        .await
        .expect("guard");
    // The guard is not awaited by the owner; an alert of another partition appended after
    // it is stored only once the barrier is.
    let other = alerts
        .append(vec![(poa(device_in(1, PARTITIONS, 3), 0), route(UKPN))])
        .await
        .expect("append after the guard")[0];
    assert_eq!(other.sequence, first.sequence + 1);
    let late = cluster
        .js
        .publish_with_headers(
            cluster.names.alert_subject("ukpn"),
            headers,
            alert_batch::encode(&message),
        )
        .await
        .expect("sent")
        .await;
    let refused = late.expect_err("the late publish is refused");
    assert_eq!(
        refused.kind(),
        PublishErrorKind::WrongLastSequence,
        "{refused}"
    );

    // The new owner emits both again: the one stored before the read keeps its sequence,
    // the refused one is stored once, after the other partition's (the barrier takes no
    // sequence).
    let again = alerts
        .append(vec![(stored_early, route(UKPN)), (held_up, route(UKPN))])
        .await
        .expect("append again");
    assert_eq!(
        (again[0].sequence, again[0].duplicate),
        (first.sequence, true)
    );
    assert_eq!(
        (again[1].sequence, again[1].duplicate),
        (first.sequence + 2, false)
    );
    let bounds = stream.bounds().await.expect("bounds");
    assert_eq!(bounds.tail.head, first.sequence + 2, "{bounds:?}");
    assert_eq!(
        bounds.tail.stream,
        tail.stream + 3,
        "one barrier message, the other partition's alert, then the stored alert: {bounds:?}"
    );
}

/// A DNO resuming from a sequence it received is served from its stream alone: with the
/// cursors bucket unreadable (as while its leader's node is dead and a new one is elected),
/// `Subscribe` from a given sequence still streams, while one from the cursor cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_subscribe_does_not_wait_for_the_cursors() {
    let prefix = unique_prefix("resume");
    let relay = instance(&prefix, "a").await;
    wait_owned_by(&relay, &["a"]).await;
    let lost_at = now_ms() - LONG_AGO_MS;
    relay
        .publish_ok(
            (0..3)
                .map(|n| lost(&device(400 + n), lost_at, Some(&valid_mpan(12, 400 + n))))
                .collect(),
        )
        .await;
    let mut feed = relay.subscribe("ukpn", 0).await;
    assert_eq!(sequences(&feed.take(3).await), vec![1, 2, 3]);
    drop(feed);

    let config = library_config(&prefix, |_| {});
    let cluster = library_cluster(&config).await;
    cluster
        .js
        .delete_key_value(cluster.names.cursors_bucket())
        .await
        .expect("the cursors bucket deleted");
    let mut resumed = relay.subscribe("ukpn", 2).await;
    assert_eq!(sequences(&resumed.take(2).await), vec![2, 3]);
    let Err(from_cursor) = relay.try_subscribe("ukpn", 0).await else {
        panic!("a Subscribe from the cursor served without the cursors bucket");
    };
    assert_eq!(from_cursor.code(), Code::Unavailable, "{from_cursor}");
}

/// A checkpoint taken while a new owner's replay has yet to emit again an alert an earlier
/// owner stored records no head past it, so an owner starting from that checkpoint finds
/// the alert stored and does not store it twice; other partitions' checkpoints, and this
/// one's once the alert came back, record the head as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_taken_mid_replay_records_no_head_past_alerts_still_to_come_again() {
    use outage_relay::log::AlertLog;
    use outage_relay::log::conformance::{UKPN, device_in, poa, route};
    use outage_relay::log::jetstream::alerts::JsAlerts;
    use outage_relay::route::RoutingTable;
    use std::sync::Arc;

    let config = library_config(&unique_prefix("floors"), |_| {});
    let cluster = library_cluster(&config).await;
    let table = Arc::new(RoutingTable::from_config(&config.routing));
    let alerts = JsAlerts::new(Arc::clone(&cluster), table);
    let ukpn_head = |heads: outage_relay::log::AlertHeads| {
        heads
            .0
            .into_iter()
            .find(|(name, _)| name == "ukpn")
            .map(|(_, head)| head)
            .expect("ukpn named")
    };
    let other = |n| (poa(device_in(1, PARTITIONS, n), 0), route(UKPN));
    let checkpointed = alerts.heads(0);
    let before = ukpn_head(checkpointed.clone());
    let earlier = poa(device_in(0, PARTITIONS, 1), 0);
    let first = alerts
        .append(vec![(earlier, route(UKPN))])
        .await
        .expect("stored by the earlier owner")[0];
    alerts.append(vec![other(1)]).await.expect("stored");

    // Partition 0 taken over from that checkpoint; the guard holds once the barrier is stored.
    alerts
        .guard_replay(0, PARTITIONS, &checkpointed)
        .await
        .expect("guard");
    let after_guard = alerts.append(vec![other(2)]).await.expect("stored")[0];
    assert_eq!(
        ukpn_head(alerts.heads(0)),
        before,
        "mid-replay, partition 0's checkpoint keeps the head it replays from"
    );
    assert_eq!(
        ukpn_head(alerts.heads(1)),
        after_guard.sequence,
        "another partition's checkpoint records the head"
    );

    let again = alerts
        .append(vec![(earlier, route(UKPN))])
        .await
        .expect("emitted again")[0];
    assert_eq!((again.sequence, again.duplicate), (first.sequence, true));
    let next = alerts.append(vec![other(3)]).await.expect("stored")[0];
    assert_eq!(
        ukpn_head(alerts.heads(0)),
        next.sequence,
        "the guard spent, partition 0's checkpoint records the head again"
    );
}

/// Two instances' writers storing large groups in one subscriber stream side by side: each
/// stores several messages at once (an atomic batch on servers that take them), the other's
/// messages land in between, and still every alert is stored once, its sequences 1..head
/// with no gap or reuse, each instance's alerts in the order appended, and the stream keeps
/// taking alerts (a conflict mid-batch stores none of the batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_storing_large_groups_in_one_stream_keep_its_sequences_contiguous() {
    use outage_relay::domain::DeviceId;
    use outage_relay::log::conformance::{UKPN, poa, route};
    use outage_relay::log::jetstream::alerts::JsAlerts;
    use outage_relay::log::{AlertLog, LogEntry};
    use outage_relay::route::RoutingTable;
    use std::collections::HashMap;
    use std::sync::Arc;

    const ROUNDS: u64 = 10;
    const PER_APPEND: u64 = 9_000;
    let prefix = unique_prefix("batches");
    let mut logs = Vec::new();
    for name in ["a", "b"] {
        let config = library_config(&prefix, |config| {
            config.store.jetstream.instance = Some(name.to_owned());
        });
        let cluster = library_cluster(&config).await;
        let table = Arc::new(RoutingTable::from_config(&config.routing));
        logs.push(Arc::new(JsAlerts::new(cluster, table)));
    }
    // First, one deterministic interleaving: b's barrier lands between two of a's groups,
    // so a's next batch of messages is refused at its first message and stored again.
    let small = vec![(poa(DeviceId(0x00bc_0000_0000_0001), 0), route(UKPN))];
    logs[0].append(small).await.expect("stored");
    let heads = logs[1].heads(PARTITIONS - 1);
    logs[1]
        .guard_replay(PARTITIONS - 1, PARTITIONS, &heads)
        .await
        .expect("b's guard");
    // Stored once b's barrier is: the guard is queued, not awaited.
    let after_barrier = vec![(poa(DeviceId(0x00bc_0000_0000_0002), 0), route(UKPN))];
    logs[1].append(after_barrier).await.expect("stored");
    let large: Vec<_> = (0..PER_APPEND)
        .map(|n| (poa(DeviceId(0x00bc_0001_0000_0000 | n), 0), route(UKPN)))
        .collect();
    let stored = bounded("a's group after b's barrier", logs[0].append(large))
        .await
        .expect("stored");
    let sequences: Vec<u64> = stored.iter().map(|stored| stored.sequence).collect();
    assert_eq!(sequences, (3..=PER_APPEND + 2).collect::<Vec<_>>());
    let before = PER_APPEND + 2;

    let writers = logs.iter().enumerate().map(|(instance, log)| {
        let log = Arc::clone(log);
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                let base = ((instance as u64) << 32) | (round * PER_APPEND);
                let alerts = (0..PER_APPEND)
                    .map(|n| {
                        (
                            poa(DeviceId(0x00bb_0000_0000_0000 | (base + n)), 0),
                            route(UKPN),
                        )
                    })
                    .collect();
                log.append(alerts).await.expect("stored");
            }
        })
    });
    for writer in writers {
        bounded("both instances' appends", writer)
            .await
            .expect("a writer task");
    }
    let total = 2 * ROUNDS * PER_APPEND;
    let status = logs[0].status(UKPN).await.expect("status");
    assert_eq!(status.head, before + total, "{status:?}");
    let mut reader = logs[1].reader(UKPN, before + 1).await.expect("a reader");
    let mut read: Vec<LogEntry> = Vec::new();
    while (read.len() as u64) < total {
        read.extend(
            bounded("reading the stream back", reader.next(10_000))
                .await
                .expect("read"),
        );
    }
    let sequences: Vec<u64> = read.iter().map(|entry| entry.sequence).collect();
    assert_eq!(
        sequences,
        (before + 1..=before + total).collect::<Vec<_>>(),
        "contiguous to the head, no gap"
    );
    let mut last_of: HashMap<u64, u64> = HashMap::new();
    for entry in &read {
        let key = entry.alert.point.device.0 & 0xffff_ffff_ffff;
        let (instance, n) = (key >> 32, key & 0xffff_ffff);
        if let Some(previous) = last_of.insert(instance, n) {
            assert!(n > previous, "instance {instance}: {n} after {previous}");
        }
    }
    assert_eq!(
        last_of,
        HashMap::from([(0, ROUNDS * PER_APPEND - 1), (1, ROUNDS * PER_APPEND - 1)])
    );
}
