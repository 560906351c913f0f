//! Operator surface over loopback gRPC: gRPC health, server reflection, and the `Admin`
//! views of open outages and device state.

mod common;

use common::{LONG_AGO_MS, TestRelay, bounded, device, lost, ms, now_ms, valid_mpan};
use futures::StreamExt as _;
use outage_relay::proto::{GetDeviceStateRequest, ListOpenOutagesRequest, OutageState};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_for_the_server_and_ingest() {
    let relay = TestRelay::start().await;
    let mut health = HealthClient::new(relay.channel().await);
    for service in ["", "outage_relay.v1.Ingest", "outage_relay.v1.AlertFeed"] {
        let response = bounded(
            "Health.Check",
            health.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await
        .unwrap_or_else(|status| panic!("Check({service:?}) failed: {status}"))
        .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_relay_services() {
    let relay = TestRelay::start().await;
    let mut reflection = ServerReflectionClient::new(relay.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = bounded(
        "ServerReflectionInfo",
        reflection.server_reflection_info(futures::stream::iter([request])),
    )
    .await
    .expect("reflection answers")
    .into_inner();
    let response = bounded("a reflection response", responses.next())
        .await
        .expect("one response")
        .expect("a healthy stream");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "outage_relay.v1.Ingest",
        "outage_relay.v1.AlertFeed",
        "outage_relay.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_outages_are_listed_with_their_state() {
    let relay = TestRelay::start().await;
    let pending = device(0x8001);
    let alerted = device(0x8002);
    let pending_at = now_ms() - 100;
    let alerted_at = now_ms() - LONG_AGO_MS;
    relay
        .publish_ok(vec![
            lost(&pending, pending_at, Some(&valid_mpan(12, 8001))),
            lost(&alerted, alerted_at, Some(&valid_mpan(12, 8002))),
        ])
        .await;

    let mut admin = relay.admin_client().await;
    let listing = admin
        .list_open_outages(ListOpenOutagesRequest::default())
        .await
        .expect("ListOpenOutages")
        .into_inner();
    assert_eq!(listing.total, 2, "{listing:?}");
    // Oldest outage first.
    let summary: Vec<(&str, i32, i64)> = listing
        .outages
        .iter()
        .map(|o| (o.device_id.as_str(), o.state, ms(o.lost_at.as_ref())))
        .collect();
    assert_eq!(
        summary,
        [
            (alerted.as_str(), OutageState::Alerted as i32, alerted_at),
            (pending.as_str(), OutageState::Pending as i32, pending_at),
        ]
    );
    let limited = admin
        .list_open_outages(ListOpenOutagesRequest { limit: 1 })
        .await
        .expect("ListOpenOutages")
        .into_inner();
    assert_eq!((limited.total, limited.outages.len()), (2, 1));

    let err = admin
        .get_device_state(GetDeviceStateRequest {
            device_id: "not-a-device".into(),
        })
        .await
        .expect_err("a malformed device id");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let idle = relay.device_state(&device(0x8003)).await;
    assert!(idle.outages.is_empty());
    assert_eq!(idle.device_id, device(0x8003));
    relay.stop().await;
}
