//! Routing over loopback gRPC: each alert reaches the subscriber that owns its distributor
//! ID (by the event's MPAN or the device registry, IDNOs by their GSP group's host area) and
//! no other; an alert that routes nowhere is parked and released by a registry reload.

mod common;

use common::{
    LONG_AGO_MS, TestRelay, bad_check_digit, device, lost, now_ms, sequences, valid_mpan,
};
use outage_relay::proto::{AlertKind, ListParkedAlertsRequest, ReloadRegistryRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alert_goes_to_the_owner_of_its_distributor_and_no_other() {
    let london = device(0x1001);
    let north_west = device(0x1002);
    let yorkshire = device(0x1003);
    let registered = device(0x1004);
    let idno = device(0x1005);
    let registered_mpan = valid_mpan(11, 1004);
    let idno_mpan = valid_mpan(25, 1005);
    let relay = TestRelay::start_with(|config, dir| {
        config.registry = Some(common::write_registry(
            dir,
            "registry.csv",
            &[
                (&registered, &registered_mpan, "_B"),
                (&idno, &idno_mpan, "_G"),
            ],
        ));
    })
    .await;

    let at = now_ms() - LONG_AGO_MS;
    relay
        .publish_ok(vec![
            lost(&london, at, Some(&valid_mpan(12, 1001))),
            lost(&north_west, at, Some(&valid_mpan(16, 1002))),
            lost(&yorkshire, at, Some(&valid_mpan(23, 1003))),
            // The registry wins over the MPAN an event carries.
            lost(&registered, at, Some(&valid_mpan(12, 9999))),
            lost(&idno, at, None),
        ])
        .await;

    // Overdue POAs are emitted and written while the batch is applied, before its ack.
    let heads = relay.heads().await;
    let expected = [
        ("ukpn", 1),
        ("nged", 1),
        ("spen", 0),
        ("ssen", 0),
        ("npg", 1),
        ("enwl", 2),
    ];
    let expected: Vec<(String, u64)> = expected
        .iter()
        .map(|(name, head)| ((*name).to_owned(), *head))
        .collect();
    assert_eq!(heads, expected);

    let ukpn = relay.subscribe("ukpn", 0).await.take(1).await;
    assert_eq!(ukpn[0].device_id, london);
    assert_eq!(
        (ukpn[0].distributor_id, ukpn[0].gsp_group.as_str()),
        (12, "_C")
    );
    assert_eq!(ukpn[0].subscriber, "ukpn");

    let npg = relay.subscribe("npg", 0).await.take(1).await;
    assert_eq!(npg[0].device_id, yorkshire);
    assert_eq!(
        (npg[0].distributor_id, npg[0].gsp_group.as_str()),
        (23, "_M")
    );

    let nged = relay.subscribe("nged", 0).await.take(1).await;
    assert_eq!(nged[0].device_id, registered);
    assert_eq!(nged[0].mpan_core, registered_mpan);
    assert_eq!(
        (nged[0].distributor_id, nged[0].gsp_group.as_str()),
        (11, "_B")
    );
    assert_eq!(nged[0].subscriber, "nged");

    let mut enwl = relay.subscribe("enwl", 0).await.take(2).await;
    assert_eq!(sequences(&enwl), [1, 2]);
    enwl.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    assert_eq!(enwl[0].device_id, north_west);
    assert_eq!(
        (enwl[0].distributor_id, enwl[0].gsp_group.as_str()),
        (16, "_G")
    );
    assert_eq!(enwl[1].device_id, idno);
    assert_eq!(enwl[1].mpan_core, idno_mpan);
    assert_eq!(
        (enwl[1].distributor_id, enwl[1].gsp_group.as_str()),
        (25, "_G"),
        "an IDNO supply goes to the owner of its GSP group's host area"
    );

    let state = relay.device_state(&registered).await;
    assert_eq!(
        (
            state.mpan_core.as_str(),
            state.gsp_group.as_str(),
            state.subscriber.as_str()
        ),
        (registered_mpan.as_str(), "_B", "nged")
    );
    assert_eq!(relay.device_state(&idno).await.subscriber, "enwl");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_alert_is_parked_until_a_registry_reload_routes_it() {
    // No registry file; reloads may load files from the relay's directory.
    let relay = TestRelay::start_with(|config, dir| {
        config.registry_dir = Some(dir.to_owned());
    })
    .await;
    let stray = device(0x2001);
    let mpan = valid_mpan(19, 2001);
    let lost_at = now_ms() - LONG_AGO_MS;
    relay.publish_ok(vec![lost(&stray, lost_at, None)]).await;

    let mut admin = relay.admin_client().await;
    let parked = admin
        .list_parked_alerts(ListParkedAlertsRequest::default())
        .await
        .expect("ListParkedAlerts")
        .into_inner();
    assert_eq!(parked.total, 1, "{parked:?}");
    let entry = &parked.alerts[0];
    let alert = entry.alert.as_ref().expect("the parked alert");
    assert_eq!(alert.device_id, stray);
    assert_eq!(alert.kind, AlertKind::PowerOutage as i32);
    assert!(
        entry.reason.contains("not in the registry") && entry.reason.contains("mpan_core"),
        "reason: {:?}",
        entry.reason
    );
    assert!(
        relay.heads().await.iter().all(|(_, head)| *head == 0),
        "a parked alert reaches no subscriber"
    );
    assert_eq!(relay.device_state(&stray).await.subscriber, "");

    // Without a configured registry file, a reload must name one.
    let err = admin
        .reload_registry(ReloadRegistryRequest::default())
        .await
        .expect_err("no registry configured");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // A registry with a bad row is refused as a whole and changes nothing.
    let bad = relay.write_registry("bad.csv", &[(&stray, &bad_check_digit(&mpan), "_J")]);
    let err = admin
        .reload_registry(ReloadRegistryRequest {
            path: bad.display().to_string(),
        })
        .await
        .expect_err("bad registry");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("line 2"), "{err}");
    let still = admin
        .list_parked_alerts(ListParkedAlertsRequest::default())
        .await
        .expect("ListParkedAlerts")
        .into_inner();
    assert_eq!(still.total, 1);

    let good = relay.write_registry("good.csv", &[(&stray, &mpan, "_J")]);
    let reloaded = admin
        .reload_registry(ReloadRegistryRequest {
            path: good.display().to_string(),
        })
        .await
        .expect("ReloadRegistry")
        .into_inner();
    assert_eq!((reloaded.devices, reloaded.unparked), (1, 1));
    let after = admin
        .list_parked_alerts(ListParkedAlertsRequest::default())
        .await
        .expect("ListParkedAlerts")
        .into_inner();
    assert_eq!(after.total, 0, "{after:?}");
    assert!(after.alerts.is_empty());

    let delivered = relay.subscribe("ukpn", 0).await.next().await;
    assert_eq!(delivered.device_id, stray);
    assert_eq!(delivered.sequence, 1);
    assert_eq!(
        delivered.alert_id, alert.alert_id,
        "the same alert, unparked"
    );
    assert_eq!(delivered.subscriber, "ukpn");
    assert_eq!(delivered.mpan_core, mpan);
    assert_eq!(
        (delivered.distributor_id, delivered.gsp_group.as_str()),
        (19, "_J")
    );
    assert_eq!(relay.device_state(&stray).await.subscriber, "ukpn");
    relay.stop().await;
}
