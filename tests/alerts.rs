//! End-to-end alert semantics over loopback gRPC: a POA only after the debounce, no alert
//! for a short interruption, a PRA after its POA, and POA + PRA for an outage learned late.

mod common;

use common::{
    DEBOUNCE, LONG_AGO_MS, TestRelay, device, device_hex, lost, ms, now_ms, restored, shard_of,
    valid_mpan,
};
use outage_relay::proto::{AlertKind, OutageState};

const POA_SLA_MS: i64 = 60_000;
const PRA_SLA_MS: i64 = 60_000;

fn debounce_ms() -> i64 {
    i64::try_from(DEBOUNCE.as_millis()).expect("small")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poa_is_emitted_at_lost_at_plus_debounce_and_not_before() {
    let relay = TestRelay::start().await;
    let dev = device(0x0101);
    let mpan = valid_mpan(12, 101);
    let mut feed = relay.subscribe("ukpn", 0).await;

    let lost_at = now_ms() - 100;
    relay
        .publish_ok(vec![lost(&dev, lost_at, Some(&mpan))])
        .await;

    // Acknowledged means applied: the outage is open and still waiting for its debounce.
    let state = relay.device_state(&dev).await;
    assert_eq!(state.outages.len(), 1, "{state:?}");
    let outage = &state.outages[0];
    assert_eq!(outage.state, OutageState::Pending as i32, "{state:?}");
    assert_eq!(ms(outage.lost_at.as_ref()), lost_at);
    assert_eq!(ms(outage.poa_due_at.as_ref()), lost_at + debounce_ms());
    assert_eq!(relay.delivery_status("ukpn").await.head_sequence, 0);

    let poa = feed.next().await;
    let due_at = lost_at + debounce_ms();
    assert_eq!(poa.kind, AlertKind::PowerOutage as i32, "{poa:?}");
    assert_eq!(
        poa.alert_id,
        format!("poa-{}-0-{lost_at}", device_hex(&dev))
    );
    assert_eq!(poa.sequence, 1);
    assert_eq!(poa.device_id, dev);
    assert_eq!(poa.phase, 0);
    assert_eq!(poa.subscriber, "ukpn");
    assert_eq!(poa.mpan_core, mpan);
    assert_eq!(poa.distributor_id, 12);
    assert_eq!(poa.gsp_group, "_C");
    assert_eq!(ms(poa.lost_at.as_ref()), lost_at);
    assert_eq!(ms(poa.due_at.as_ref()), due_at);
    assert_eq!(ms(poa.deadline.as_ref()), due_at + POA_SLA_MS);
    let emitted_at = ms(poa.emitted_at.as_ref());
    assert!(
        emitted_at >= due_at,
        "POA emitted at {emitted_at}, before it was due at {due_at}"
    );
    assert!(poa.restored_at.is_none());
    assert!(!poa.learned_late);
    assert_eq!(poa.outage_duration_ms, 0);

    let state = relay.device_state(&dev).await;
    assert_eq!(state.outages.len(), 1, "{state:?}");
    assert_eq!(state.outages[0].state, OutageState::Alerted as i32);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_interruption_produces_no_alert() {
    let relay = TestRelay::start().await;
    let short = device(0x0201);
    // A second device on the same shard: its debounce timer sits in the same timing wheel and
    // is due just after the short one's, so its POA is emitted after that timer has fired.
    let marker = (0x0202..)
        .map(device)
        .find(|candidate| shard_of(candidate) == shard_of(&short))
        .expect("some device shares the shard");
    let mpan_short = valid_mpan(12, 201);
    let mpan_marker = valid_mpan(12, 202);

    let t0 = now_ms() - 100;
    let ack = relay
        .publish_ok(vec![
            lost(&short, t0, Some(&mpan_short)),
            restored(&short, t0 + 500, Some(t0), Some(&mpan_short)),
            lost(&marker, t0 + 20, Some(&mpan_marker)),
        ])
        .await;
    assert_eq!(ack.duplicates, 0);
    assert!(relay.device_state(&short).await.outages.is_empty());
    assert_eq!(relay.device_state(&marker).await.outages.len(), 1);

    let mut feed = relay.subscribe("ukpn", 0).await;
    let first = feed.next().await;
    assert_eq!(first.device_id, marker, "first alert: {first:?}");
    assert_eq!(first.kind, AlertKind::PowerOutage as i32);
    assert_eq!(first.sequence, 1);
    assert_eq!(
        relay
            .heads()
            .await
            .iter()
            .map(|(_, head)| head)
            .sum::<u64>(),
        1,
        "only the marker's POA was written anywhere"
    );
    relay.stop().await;
}

/// A loss reported long after it happened, in the same batch as the restoration that shows it
/// lasted less than the debounce: the loss's timer was already due when it arrived, but the
/// restoration in its batch closes it first, so nothing is alerted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_loss_and_its_short_restoration_in_one_batch_give_no_alert() {
    let relay = TestRelay::start().await;
    let short = device(0x0251);
    let marker = (0x0252..)
        .map(device)
        .find(|candidate| shard_of(candidate) == shard_of(&short))
        .expect("some device shares the partition");
    let mpan = valid_mpan(12, 251);
    let t0 = now_ms() - LONG_AGO_MS;
    relay
        .publish_ok(vec![
            lost(&short, t0, Some(&mpan)),
            restored(&short, t0 + 500, None, Some(&mpan)),
        ])
        .await;
    // A later batch on the same partition: its POA is alerted at once, after the batch above.
    relay
        .publish_ok(vec![lost(&marker, t0, Some(&valid_mpan(12, 252)))])
        .await;
    let mut feed = relay.subscribe("ukpn", 0).await;
    let first = feed.next().await;
    assert_eq!(first.device_id, marker, "first alert: {first:?}");
    assert_eq!(
        relay
            .heads()
            .await
            .iter()
            .map(|(_, head)| head)
            .sum::<u64>(),
        1,
        "only the marker's POA was written anywhere"
    );
    assert!(relay.device_state(&short).await.outages.is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pra_follows_its_poa_with_the_outage_duration() {
    let relay = TestRelay::start().await;
    let dev = device(0x0301);
    let mpan = valid_mpan(16, 301);
    let mut feed = relay.subscribe("enwl", 0).await;

    let lost_at = now_ms() - 100;
    relay
        .publish_ok(vec![lost(&dev, lost_at, Some(&mpan))])
        .await;
    let poa = feed.next().await;
    assert_eq!(poa.kind, AlertKind::PowerOutage as i32, "{poa:?}");

    let restored_at = now_ms();
    relay
        .publish_ok(vec![restored(&dev, restored_at, None, Some(&mpan))])
        .await;
    let pra = feed.next().await;
    assert_eq!(pra.kind, AlertKind::PowerRestoration as i32, "{pra:?}");
    assert!(pra.sequence > poa.sequence);
    assert_eq!(
        pra.alert_id,
        format!("pra-{}-0-{lost_at}", device_hex(&dev))
    );
    assert_eq!(pra.device_id, dev);
    assert_eq!(pra.subscriber, "enwl");
    assert_eq!(pra.distributor_id, 16);
    assert_eq!(pra.gsp_group, "_G");
    assert_eq!(ms(pra.lost_at.as_ref()), lost_at);
    assert_eq!(ms(pra.restored_at.as_ref()), restored_at);
    assert_eq!(ms(pra.due_at.as_ref()), restored_at);
    assert_eq!(ms(pra.deadline.as_ref()), restored_at + PRA_SLA_MS);
    assert_eq!(
        pra.outage_duration_ms,
        u64::try_from(restored_at - lost_at).expect("restored after lost")
    );
    assert!(!pra.learned_late);
    assert!(relay.device_state(&dev).await.outages.is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restoration_of_an_unseen_long_outage_emits_poa_then_pra() {
    let relay = TestRelay::start().await;
    let dev = device(0x0401);
    let mpan = valid_mpan(23, 401);
    let restored_at = now_ms() - 50;
    let lost_at = restored_at - LONG_AGO_MS;
    relay
        .publish_ok(vec![restored(
            &dev,
            restored_at,
            Some(lost_at),
            Some(&mpan),
        )])
        .await;

    let mut feed = relay.subscribe("npg", 0).await;
    let alerts = feed.take(2).await;
    let (poa, pra) = (&alerts[0], &alerts[1]);
    assert_eq!(poa.kind, AlertKind::PowerOutage as i32, "{alerts:?}");
    assert_eq!(pra.kind, AlertKind::PowerRestoration as i32, "{alerts:?}");
    assert_eq!((poa.sequence, pra.sequence), (1, 2));
    assert!(poa.learned_late && pra.learned_late, "{alerts:?}");
    for alert in &alerts {
        assert_eq!(alert.device_id, dev);
        assert_eq!(alert.subscriber, "npg");
        assert_eq!(alert.distributor_id, 23);
        assert_eq!(alert.gsp_group, "_M");
        assert_eq!(ms(alert.lost_at.as_ref()), lost_at);
    }
    assert_eq!(ms(poa.due_at.as_ref()), lost_at + debounce_ms());
    assert_eq!(ms(pra.restored_at.as_ref()), restored_at);
    assert_eq!(
        pra.outage_duration_ms,
        u64::try_from(LONG_AGO_MS).expect("positive")
    );
    assert_eq!(
        poa.alert_id,
        format!("poa-{}-0-{lost_at}", device_hex(&dev))
    );
    assert_eq!(
        pra.alert_id,
        format!("pra-{}-0-{lost_at}", device_hex(&dev))
    );
    assert!(
        relay.device_state(&dev).await.outages.is_empty(),
        "the outage is closed"
    );
    relay.stop().await;
}
