//! Delivery over loopback gRPC: push mode to a DNO-hosted receiver that comes up late, and
//! subscribe mode with resume from the acknowledgement cursor and its error codes.

mod common;

use common::{
    LONG_AGO_MS, TestReceiver, TestRelay, bounded, device, eventually, loopback_push, lost, now_ms,
    push_ukpn, restored, sequences, valid_mpan,
};
use outage_relay::proto::AlertKind;
use tokio::net::TcpListener;
use tonic::Code;

/// A loopback port on which nothing listens (bound, then released).
async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    listener.local_addr().expect("address").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mode_delivers_in_order_once_the_receiver_comes_up() {
    let port = free_port().await;
    let relay = TestRelay::start_with(|config, _| {
        push_ukpn(config, loopback_push(port));
    })
    .await;

    let late = device(0x3001);
    let overdue = device(0x3002);
    let restored_at = now_ms() - 50;
    let lost_at = restored_at - LONG_AGO_MS;
    relay
        .publish_ok(vec![
            restored(
                &late,
                restored_at,
                Some(lost_at),
                Some(&valid_mpan(12, 3001)),
            ),
            lost(&overdue, lost_at, Some(&valid_mpan(10, 3002))),
        ])
        .await;

    let status = relay.delivery_status("ukpn").await;
    assert_eq!(status.mode, "push");
    assert_eq!((status.head_sequence, status.acked_sequence), (3, 0));
    assert_eq!(status.backlog, 3);
    assert_eq!(status.connected, 0);
    assert!(status.oldest_unacked_due_at.is_some());
    let error = eventually("a push error to be reported", || async {
        let status = relay.delivery_status("ukpn").await;
        (!status.last_error.is_empty()).then_some(status.last_error)
    })
    .await;
    assert!(error.contains("connect"), "last_error: {error}");
    assert_eq!(relay.delivery_status("ukpn").await.backlog, 3);

    let refused = relay
        .try_subscribe("ukpn", 0)
        .await
        .err()
        .expect("a push subscriber cannot Subscribe");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");

    // The DNO's receiver comes up on the configured port.
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the receiver port");
    let receiver = TestReceiver::start(listener, None);
    let received = &receiver.received;

    let alerts = bounded("3 pushed alerts", received.wait_for(3)).await;
    assert_eq!(sequences(&alerts), [1, 2, 3], "{alerts:?}");
    let late_kinds: Vec<i32> = alerts
        .iter()
        .filter(|alert| alert.device_id == late)
        .map(|alert| alert.kind)
        .collect();
    assert_eq!(
        late_kinds,
        [
            AlertKind::PowerOutage as i32,
            AlertKind::PowerRestoration as i32
        ]
    );
    assert!(alerts.iter().any(|alert| alert.device_id == overdue));
    assert!(alerts.iter().all(|alert| alert.subscriber == "ukpn"));

    let status = eventually("the receiver's acks to clear the backlog", || async {
        let status = relay.delivery_status("ukpn").await;
        (status.backlog == 0).then_some(status)
    })
    .await;
    assert_eq!((status.head_sequence, status.acked_sequence), (3, 3));
    assert!(status.oldest_unacked_due_at.is_none());

    // Live alerts follow on the open session.
    let another = device(0x3003);
    relay
        .publish_ok(vec![lost(
            &another,
            now_ms() - LONG_AGO_MS,
            Some(&valid_mpan(19, 3003)),
        )])
        .await;
    let alerts = bounded("a 4th pushed alert", received.wait_for(4)).await;
    assert_eq!(alerts.len(), 4, "no alert is pushed twice once acked");
    assert_eq!(
        (alerts[3].sequence, alerts[3].device_id.as_str()),
        (4, another.as_str())
    );
    let status = eventually("the 4th alert to be acked", || async {
        let status = relay.delivery_status("ukpn").await;
        (status.acked_sequence == 4).then_some(status)
    })
    .await;
    assert_eq!(status.backlog, 0);
    assert_eq!(status.last_error, "", "a working session clears the error");

    relay.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_from_its_oldest_unacknowledged_alert() {
    let relay = TestRelay::start().await;
    let at = now_ms() - LONG_AGO_MS;
    let overdue = |n: u64| lost(&device(0x4000 + n), at, Some(&valid_mpan(12, 4000 + n)));
    for n in 1..=3 {
        relay.publish_ok(vec![overdue(n)]).await;
    }

    let mut first = relay.subscribe("ukpn", 0).await;
    let before = first.take(3).await;
    assert_eq!(sequences(&before), [1, 2, 3]);
    assert_eq!(relay.delivery_status("ukpn").await.connected, 1);
    let acked = relay.ack("ukpn", 1).await;
    assert_eq!((acked.acked_sequence, acked.backlog), (1, 2));
    drop(first);
    eventually("the disconnect to be noticed", || async {
        (relay.delivery_status("ukpn").await.connected == 0).then_some(())
    })
    .await;

    for n in 4..=5 {
        relay.publish_ok(vec![overdue(n)]).await;
    }
    let resumed = relay.subscribe("ukpn", 0).await.take(4).await;
    assert_eq!(sequences(&resumed), [2, 3, 4, 5]);
    assert_eq!(resumed[0], before[1], "a re-sent alert is the same alert");
    assert_eq!(resumed[1], before[2]);
    assert_eq!(resumed[2].device_id, device(0x4004));
    assert_eq!(resumed[3].device_id, device(0x4005));

    let from_three = relay.subscribe("ukpn", 3).await.take(3).await;
    assert_eq!(sequences(&from_three), [3, 4, 5]);

    let gone = relay
        .try_subscribe("ukpn", 1)
        .await
        .err()
        .expect("below the cursor");
    assert_eq!(gone.code(), Code::OutOfRange, "{gone}");
    let beyond = relay
        .try_subscribe("ukpn", 7)
        .await
        .err()
        .expect("past the head");
    assert_eq!(beyond.code(), Code::OutOfRange, "{beyond}");

    // Subscribing at head + 1 waits for the next alert.
    let mut waiting = relay.subscribe("ukpn", 6).await;
    relay.publish_ok(vec![overdue(6)]).await;
    let next = waiting.next().await;
    assert_eq!(
        (next.sequence, next.device_id.as_str()),
        (6, device(0x4006).as_str())
    );

    let too_far = relay
        .try_ack("ukpn", 99)
        .await
        .expect_err("beyond the head");
    assert_eq!(too_far.code(), Code::InvalidArgument, "{too_far}");
    let again = relay.ack("ukpn", 1).await;
    assert_eq!(
        (again.acked_sequence, again.backlog),
        (1, 5),
        "acks are cumulative and idempotent"
    );
    let all = relay.ack("ukpn", 6).await;
    assert_eq!((all.acked_sequence, all.backlog), (6, 0));
    let status = relay.delivery_status("ukpn").await;
    assert_eq!((status.head_sequence, status.acked_sequence), (6, 6));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_subscriber_is_not_found() {
    let relay = TestRelay::start().await;
    let err = relay
        .try_subscribe("nobody", 0)
        .await
        .err()
        .expect("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = relay.try_ack("nobody", 1).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let mut admin = relay.admin_client().await;
    let err = admin
        .get_delivery_status(outage_relay::proto::GetDeliveryStatusRequest {
            subscriber: "nobody".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    relay.stop().await;
}
