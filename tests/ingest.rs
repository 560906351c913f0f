//! Ingest over loopback gRPC: per-event validation with reasons, duplicate counting,
//! the bidirectional `Publish` stream's in-order acks, and the batch size limit.

mod common;

use common::{TestRelay, bad_check_digit, bounded, device, lost, now_ms, restored, valid_mpan};
use outage_relay::proto::{BatchAck, DeviceEvent, EventBatch, SupplyLost, device_event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn rejected_indexes(ack: &BatchAck) -> Vec<u32> {
    ack.rejected.iter().map(|error| error.index).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_rejected_by_index_and_their_batch_mates_accepted() {
    let relay = TestRelay::start().await;
    let at = now_ms() - 100;
    let good_mpan = valid_mpan(12, 5001);
    let missing_timestamp = DeviceEvent {
        kind: Some(device_event::Kind::Lost(SupplyLost { lost_at: None })),
        ..lost(&device(0x5004), at, None)
    };
    let mut bad_eui = lost(&device(0x5002), at, None);
    bad_eui.device_id = "00-db-zz-00-00-00-50-02".into();
    let batch = vec![
        lost(&device(0x5001), at, Some(&good_mpan)),
        bad_eui,
        lost(&device(0x5003), at, Some(&bad_check_digit(&good_mpan))),
        missing_timestamp,
        restored(&device(0x5005), at + 50, None, None),
        lost(&device(0x5006), at, None),
    ];

    let ack = relay.publish(batch.clone()).await;
    assert_eq!((ack.accepted, ack.duplicates), (3, 0), "{ack:?}");
    assert_eq!(rejected_indexes(&ack), [1, 2, 3], "{ack:?}");
    let reasons: Vec<&str> = ack.rejected.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons[0].contains("device_id") && reasons[0].contains("EUI-64"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("mpan_core") && reasons[1].contains("check digit"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("lost_at") && reasons[2].contains("missing"),
        "{reasons:?}"
    );
    assert_eq!(relay.device_state(&device(0x5001)).await.outages.len(), 1);
    assert!(
        relay.device_state(&device(0x5003)).await.outages.is_empty(),
        "a rejected event changes nothing"
    );

    // The same batch again: the good events are duplicates, the bad ones still rejected.
    let again = relay.publish(batch.clone()).await;
    assert_eq!((again.accepted, again.duplicates), (0, 3), "{again:?}");
    assert_eq!(rejected_indexes(&again), [1, 2, 3]);

    // Event ids are per device: the same id from another device is a new event.
    let mut other_device = batch[0].clone();
    other_device.device_id = device(0x5007);
    let ack = relay.publish(vec![other_device]).await;
    assert_eq!((ack.accepted, ack.duplicates), (1, 0), "{ack:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_stream_acks_each_batch_in_order() {
    let relay = TestRelay::start().await;
    let at = now_ms() - 100;
    let big: Vec<DeviceEvent> = (0..500)
        .map(|n| lost(&device(0x6000 + n), at, None))
        .collect();
    let mut with_bad = vec![lost(&device(0x6601), at, None)];
    with_bad.push(DeviceEvent {
        device_id: "nonsense".into(),
        ..lost(&device(0x6602), at, None)
    });
    let batches = [
        EventBatch {
            events: big,
            batch_id: 11,
        },
        EventBatch {
            events: vec![lost(&device(0x6701), at, None)],
            batch_id: 12,
        },
        EventBatch {
            events: with_bad,
            batch_id: 13,
        },
    ];

    let mut client = relay.ingest_client().await;
    let (tx, rx) = mpsc::channel(8);
    for batch in batches {
        tx.send(batch).await.expect("queue a batch");
    }
    let mut acks = bounded("Publish", client.publish(ReceiverStream::new(rx)))
        .await
        .expect("Publish opens")
        .into_inner();
    let mut got = Vec::new();
    for _ in 0..3 {
        let ack = bounded("a BatchAck", acks.message())
            .await
            .expect("the ack stream is healthy")
            .expect("an ack per batch");
        got.push(ack);
    }
    let summary: Vec<(u64, u64, Vec<u32>)> = got
        .iter()
        .map(|ack| (ack.batch_id, ack.accepted, rejected_indexes(ack)))
        .collect();
    assert_eq!(
        summary,
        [(11, 500, vec![]), (12, 1, vec![]), (13, 1, vec![1])]
    );

    // Closing the request side ends the ack stream cleanly.
    drop(tx);
    let end = bounded("the ack stream to end", acks.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_limit_is_resource_exhausted() {
    let relay = TestRelay::start_with(|config, _| config.ingest.max_batch_events = 10).await;
    let at = now_ms() - 100;
    let events = |count: u64| -> Vec<DeviceEvent> {
        (0..count)
            .map(|n| lost(&device(0x7000 + n), at, None))
            .collect()
    };
    let mut client = relay.ingest_client().await;
    let err = client
        .publish_batch(EventBatch {
            events: events(11),
            batch_id: 1,
        })
        .await
        .expect_err("11 events is over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("10"), "{err}");
    assert!(
        relay.device_state(&device(0x7000)).await.outages.is_empty(),
        "a refused batch changes nothing"
    );

    let ack = relay.publish(events(10)).await;
    assert_eq!(ack.accepted, 10, "{ack:?}");
    relay.stop().await;
}
