//! Durability through restarts of the in-process relay on the same data directory: timers
//! due during downtime fire at once on start, unacknowledged backlogs and sequence numbers
//! survive, retention removes (and counts) what exceeds its limit, and a data directory
//! short of space pauses ingest with `RESOURCE_EXHAUSTED`. Kill -9 crashes of the real
//! binary are in `crash.rs`.

mod common;

use std::time::Duration;

use common::{DEBOUNCE, TestRelay, device, eventually, lost, ms, now_ms, valid_mpan};
use outage_relay::proto::OutageState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_due_during_downtime_fires_at_once_on_start() {
    let relay = TestRelay::start().await;
    let dev = device(1);
    let mpan = valid_mpan(12, 1);
    let lost_at = now_ms();
    relay
        .publish_ok(vec![lost(&dev, lost_at, Some(&mpan))])
        .await;
    let state = relay.device_state(&dev).await;
    assert_eq!(state.outages[0].state, OutageState::Pending as i32);

    // Down across the due time: the relay is stopped before the POA is due...
    let mut relay = relay
        .restart_after(|| async {
            let due = lost_at + DEBOUNCE.as_millis() as i64;
            while now_ms() <= due {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    // ...and after the restart the POA comes at once, for the original outage.
    let restarted_at = now_ms();
    let mut feed = relay.subscribe("ukpn", 0).await;
    let poa = feed.next().await;
    assert_eq!(ms(poa.lost_at.as_ref()), lost_at);
    assert_eq!(
        ms(poa.due_at.as_ref()),
        lost_at + DEBOUNCE.as_millis() as i64
    );
    assert!(
        ms(poa.emitted_at.as_ref()) >= restarted_at,
        "emitted after the restart"
    );
    assert_eq!(poa.sequence, 1);
    let state = relay.device_state(&dev).await;
    assert_eq!(state.outages[0].state, OutageState::Alerted as i32);
    relay = relay.restart().await;
    assert_eq!(
        relay.delivery_status("ukpn").await.head_sequence,
        1,
        "not emitted twice"
    );
    relay.stop().await;
}

/// An alert whose SLA deadline passes while the relay is down is reported once after the
/// restart (its event arrived in time: the relay's fault), and not again after another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passed_while_the_relay_was_down_is_reported_once() {
    let poa_sla = Duration::from_secs(5);
    let relay = TestRelay::start_with(|config, _| config.poa_sla = poa_sla).await;
    let lost_at = now_ms();
    relay
        .publish_ok(vec![lost(&device(5), lost_at, Some(&valid_mpan(12, 5)))])
        .await;
    eventually("the POA to be stored", || async {
        (relay.delivery_status("ukpn").await.head_sequence == 1).then_some(())
    })
    .await;
    let deadline = lost_at + (DEBOUNCE + poa_sla).as_millis() as i64;
    let relay = relay
        .restart_after(|| async {
            assert!(now_ms() < deadline, "stopped before the deadline");
            while now_ms() <= deadline + 200 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    eventually("the missed deadline to be reported", || async {
        (relay.delivery_status("ukpn").await.sla_breaches == 1).then_some(())
    })
    .await;
    let relay = relay.restart().await;
    // A new alert already past its deadline: reported by the restarted watch, which reads the
    // log from the first unacknowledged alert, so a second report of the first one would come
    // with it.
    relay
        .publish_ok(vec![lost(
            &device(6),
            now_ms() - 3_600_000,
            Some(&valid_mpan(12, 6)),
        )])
        .await;
    let breaches = eventually("the new alert's breach", || async {
        let breaches = relay.delivery_status("ukpn").await.sla_breaches;
        (breaches >= 2).then_some(breaches)
    })
    .await;
    assert_eq!(
        breaches, 2,
        "the first was reported once, not at every restart"
    );
    assert_eq!(relay.delivery_status("ukpn").await.backlog, 2);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_backlog_survives_a_restart_with_its_ids_and_sequences() {
    let relay = TestRelay::start().await;
    let long_ago = now_ms() - common::LONG_AGO_MS;
    let events: Vec<_> = (0..5)
        .map(|n| lost(&device(10 + n), long_ago, Some(&valid_mpan(12, n))))
        .collect();
    relay.publish_ok(events).await;
    let mut feed = relay.subscribe("ukpn", 0).await;
    let before = feed.take(5).await;
    relay.ack("ukpn", 2).await;
    drop(feed);

    let relay = relay.restart().await;
    let status = relay.delivery_status("ukpn").await;
    assert_eq!(
        (status.head_sequence, status.acked_sequence, status.backlog),
        (5, 2, 3)
    );
    let mut feed = relay.subscribe("ukpn", 0).await;
    let after = feed.take(3).await;
    let ids = |alerts: &[outage_relay::proto::Alert]| {
        alerts
            .iter()
            .map(|a| (a.sequence, a.alert_id.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&after),
        ids(&before[2..]),
        "same alerts, same sequences"
    );

    // New alerts continue the numbering: sequences are never reused.
    relay
        .publish_ok(vec![lost(&device(99), long_ago, Some(&valid_mpan(12, 99)))])
        .await;
    assert_eq!(feed.next().await.sequence, 6);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_and_closed_outages_are_remembered_across_a_restart() {
    let relay = TestRelay::start().await;
    let dev = device(7);
    let mpan = valid_mpan(16, 7);
    let long_ago = now_ms() - common::LONG_AGO_MS;
    let loss = lost(&dev, long_ago, Some(&mpan));
    let restore = common::restored(&dev, long_ago + 60_000, None, Some(&mpan));
    relay.publish_ok(vec![loss.clone(), restore.clone()]).await;
    let relay = relay.restart().await;
    let again = relay.publish(vec![loss.clone(), restore]).await;
    assert_eq!((again.accepted, again.duplicates), (0, 2), "{again:?}");
    // The same outage re-sent under a new event id is stale: it ended before the restart.
    let mut resent = loss;
    resent.event_id = "resent-after-restart".into();
    assert_eq!(relay.publish(vec![resent]).await.accepted, 1);
    let status = relay.delivery_status("enwl").await;
    assert_eq!(
        status.head_sequence, 2,
        "POA and PRA once, nothing reopened"
    );
    assert!(relay.device_state(&dev).await.outages.is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_and_counts_the_oldest_unacknowledged_alerts() {
    let relay = TestRelay::start_with(|config, _| {
        config.store.retention_max_alerts = 2;
        config.store.maintenance_interval = Duration::from_millis(50);
    })
    .await;
    let long_ago = now_ms() - common::LONG_AGO_MS;
    let events: Vec<_> = (0..5)
        .map(|n| lost(&device(20 + n), long_ago, Some(&valid_mpan(12, n))))
        .collect();
    relay.publish_ok(events).await;
    let status = eventually("retention to trim the ukpn log", || async {
        let status = relay.delivery_status("ukpn").await;
        (status.acked_sequence == 3).then_some(status)
    })
    .await;
    assert_eq!((status.head_sequence, status.backlog), (5, 2));
    let gone = relay
        .try_subscribe("ukpn", 1)
        .await
        .err()
        .expect("sequence 1 is gone");
    assert_eq!(gone.code(), tonic::Code::OutOfRange, "{gone}");
    let mut feed = relay.subscribe("ukpn", 0).await;
    assert_eq!(common::sequences(&feed.take(2).await), vec![4, 5]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_short_of_space_pauses_ingest_with_resource_exhausted() {
    let relay = TestRelay::start_with(|config, _| {
        config.store.min_free_disk_bytes = u64::MAX;
        config.store.maintenance_interval = Duration::from_millis(50);
    })
    .await;
    // Until the first free-space check runs, batches are still taken.
    let attempt = std::sync::atomic::AtomicU64::new(30);
    let (refused_device, status) = eventually("ingest to be refused", || async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut client = relay.ingest_client().await;
        let batch = outage_relay::proto::EventBatch {
            events: vec![lost(&device(n), now_ms(), Some(&valid_mpan(12, n)))],
            batch_id: n,
        };
        client
            .publish_batch(batch)
            .await
            .err()
            .map(|status| (device(n), status))
    })
    .await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("min_free_disk"), "{status}");
    assert!(status.metadata().get("retry-after-ms").is_some());
    let state = relay.device_state(&refused_device).await;
    assert!(state.outages.is_empty(), "nothing applied: {state:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_removes_alerts_nobody_collected_in_time() {
    let relay = TestRelay::start_with(|config, _| {
        config.store.retention_max_age = Duration::from_millis(300);
        config.store.maintenance_interval = Duration::from_millis(50);
    })
    .await;
    let long_ago = now_ms() - common::LONG_AGO_MS;
    let events: Vec<_> = (0..3)
        .map(|n| lost(&device(40 + n), long_ago, Some(&valid_mpan(16, n))))
        .collect();
    relay.publish_ok(events).await;
    let status = eventually("retention to expire the enwl backlog", || async {
        let status = relay.delivery_status("enwl").await;
        (status.acked_sequence == 3).then_some(status)
    })
    .await;
    assert_eq!((status.head_sequence, status.backlog), (3, 0));
    relay.stop().await;
}
