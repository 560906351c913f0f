//! Hostile and runaway clients over loopback gRPC: a publisher over its event rate, too many
//! streams on one connection and an oversized message each get `RESOURCE_EXHAUSTED` with a
//! reason (and a retry hint where waiting helps), while other callers go on.

mod common;

use common::{TestRelay, bounded, device, lost, now_ms};
use outage_relay::proto::EventBatch;
use outage_relay::proto::SubscribeRequest;
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use tonic::Code;
use tonic_types::StatusExt;

fn batch(first: u64, count: u64) -> EventBatch {
    EventBatch {
        events: (first..first + count)
            .map(|n| lost(&device(n), now_ms() - 1000, None))
            .collect(),
        batch_id: first,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_over_its_rate_waits_with_a_hint() {
    let relay = TestRelay::start_with(|config, _| {
        config.ingest.max_batch_events = 100;
        config.limits.publisher_events_per_second = 1;
        config.limits.publisher_burst_events = 100;
    })
    .await;
    let mut client = relay.ingest_client().await;
    let ack = client
        .publish_batch(batch(1, 100))
        .await
        .expect("the burst passes")
        .into_inner();
    assert_eq!(ack.accepted, 100);
    let refused = client
        .publish_batch(batch(101, 10))
        .await
        .expect_err("over the rate");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("events per second"), "{refused}");
    let retry = refused
        .get_details_retry_info()
        .expect("a RetryInfo detail");
    assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()), "{retry:?}");
    assert!(refused.metadata().get("retry-after-ms").is_some());
    // Nothing of the refused batch was applied.
    let state = relay.device_state(&device(101)).await;
    assert!(state.outages.is_empty(), "{state:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_hold_only_so_many_streams() {
    let relay = TestRelay::start_with(|config, _| {
        config.limits.max_streams_per_connection = 1;
    })
    .await;
    let request = |name: &str| SubscribeRequest {
        subscriber: name.to_owned(),
        from_sequence: 0,
    };
    let channel = relay.channel().await;
    let mut feed = AlertFeedClient::new(channel.clone());
    let first = feed.subscribe(request("ukpn")).await.expect("first stream");
    let second = feed
        .subscribe(request("nged"))
        .await
        .expect_err("second stream on the same connection");
    assert_eq!(second.code(), Code::ResourceExhausted, "{second}");
    assert!(second.message().contains("open streams"), "{second}");
    // A Publish stream counts too.
    let publish = IngestClient::new(channel.clone())
        .publish(futures::stream::iter([batch(1, 1)]))
        .await;
    let publish_code = match publish {
        Ok(response) => response
            .into_inner()
            .message()
            .await
            .map_or_else(|status| status.code(), |_| Code::Ok),
        Err(status) => status.code(),
    };
    assert_eq!(publish_code, Code::ResourceExhausted);
    // Another connection has its own allowance.
    AlertFeedClient::new(relay.channel().await)
        .subscribe(request("nged"))
        .await
        .expect("a stream on another connection");
    // Closing the first stream frees its place.
    drop(first);
    common::eventually("the stream's place to be freed", || {
        let mut feed = feed.clone();
        async move { feed.subscribe(request("ukpn")).await.ok() }
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_resource_exhausted_on_both_calls() {
    let relay = TestRelay::start_with(|config, _| {
        config.limits.max_message_bytes = 4096;
    })
    .await;
    let mut client = relay.ingest_client().await;
    let unary = client
        .publish_batch(batch(1, 200))
        .await
        .expect_err("too large");
    assert_eq!(unary.code(), Code::ResourceExhausted, "{unary}");
    assert!(unary.message().contains("4096 bytes"), "{unary}");

    let mut acks = bounded(
        "Publish",
        client.publish(futures::stream::iter([batch(1, 200)])),
    )
    .await
    .expect("the stream opens")
    .into_inner();
    let streamed = bounded("the refusal", acks.message())
        .await
        .expect_err("too large");
    assert_eq!(streamed.code(), Code::ResourceExhausted, "{streamed}");

    // A batch within the limit is served on the same connection.
    let ack = client
        .publish_batch(batch(1, 5))
        .await
        .expect("a small batch passes")
        .into_inner();
    assert_eq!(ack.accepted, 5);
    relay.stop().await;
}
