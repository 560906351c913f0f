use proptest::prelude::*;

use super::*;
use crate::config::{DEFAULT_SUBSCRIBERS, RoutingConfig, SubscriberConfig};

/// A valid MPAN core of `distributor`, varied by `n`.
fn mpan(distributor: u8, n: u64) -> MpanCore {
    MpanCore::with_check_digit(u64::from(distributor) * 10_000_000_000 + n).expect("12 digits")
}

fn area_gsp(distributor: u8) -> GspGroup {
    GspGroup::of_area(DistributorId(distributor)).expect("DNO area")
}

fn router(config: &RoutingConfig, registry: Registry) -> Router {
    Router::new(RoutingTable::from_config(config), registry)
}

fn subscriber_name(router: &Router, route: Result<Route, ParkReason>) -> Result<&str, ParkReason> {
    route.map(|route| router.table().name(route.subscriber))
}

#[test]
fn every_dno_area_routes_to_its_default_group() {
    let mut registry = Registry::empty();
    for (distributor, _, _) in crate::domain::mpan::DNO_AREAS {
        let entry = RegistryEntry {
            mpan: mpan(distributor, 1),
            gsp: area_gsp(distributor),
        };
        registry.insert(DeviceId(u64::from(distributor)), entry);
    }
    let router = router(&RoutingConfig::default(), registry);
    let mut routed = 0;
    for (group, ids) in DEFAULT_SUBSCRIBERS {
        for &distributor in ids {
            let route = router
                .route(DeviceId(u64::from(distributor)), None)
                .expect("routes");
            assert_eq!(router.table().name(route.subscriber), group);
            assert_eq!(route.distributor, DistributorId(distributor));
            assert_eq!(route.mpan, mpan(distributor, 1));
            assert_eq!(route.gsp, Some(area_gsp(distributor)));
            routed += 1;
        }
    }
    assert_eq!(routed, 14);
}

#[test]
fn idno_goes_to_the_configured_idno_subscriber() {
    let config = RoutingConfig {
        idno_subscriber: Some("npg".into()),
        ..RoutingConfig::default()
    };
    let mut registry = Registry::empty();
    let entry = RegistryEntry {
        mpan: mpan(27, 3),
        gsp: area_gsp(17),
    };
    registry.insert(DeviceId(1), entry);
    let router = router(&config, registry);
    assert_eq!(
        subscriber_name(&router, router.route(DeviceId(1), None)),
        Ok("npg")
    );
    // Also without a GSP group, for an unregistered device.
    assert_eq!(
        subscriber_name(&router, router.route(DeviceId(2), Some(mpan(30, 1)))),
        Ok("npg")
    );
}

#[test]
fn idno_goes_to_the_owner_of_its_host_area() {
    let mut registry = Registry::empty();
    let entry = RegistryEntry {
        mpan: mpan(27, 3),
        gsp: area_gsp(17),
    };
    registry.insert(DeviceId(1), entry);
    let router = router(&RoutingConfig::default(), registry);
    let route = router.route(DeviceId(1), None).expect("routes");
    assert_eq!(router.table().name(route.subscriber), "ssen");
    assert_eq!(route.distributor, DistributorId(27));
    assert_eq!(route.gsp, Some(area_gsp(17)));
}

#[test]
fn idno_without_a_gsp_group_parks() {
    let router = router(&RoutingConfig::default(), Registry::empty());
    let parked = router.route(DeviceId(1), Some(mpan(27, 3)));
    assert_eq!(parked, Err(ParkReason::IdnoWithoutGsp(DistributorId(27))));
    let reason = parked.expect_err("parks");
    assert_eq!(reason.as_label(), "idno_without_gsp");
    assert!(
        reason.to_string().contains("IDNO distributor id 27"),
        "{reason}"
    );
}

#[test]
fn an_unregistered_device_routes_by_its_event_mpan() {
    let router = router(&RoutingConfig::default(), Registry::empty());
    let route = router
        .route(DeviceId(1), Some(mpan(23, 9)))
        .expect("routes");
    assert_eq!(router.table().name(route.subscriber), "npg");
    assert_eq!(route.gsp, Some(area_gsp(23)));
}

#[test]
fn the_registry_wins_over_the_event_mpan() {
    let mut registry = Registry::empty();
    let entry = RegistryEntry {
        mpan: mpan(16, 1),
        gsp: area_gsp(16),
    };
    registry.insert(DeviceId(1), entry);
    let router = router(&RoutingConfig::default(), registry);
    let route = router.route(DeviceId(1), Some(mpan(12, 1)));
    assert_eq!(subscriber_name(&router, route), Ok("enwl"));
}

#[test]
fn unknown_devices_and_unowned_distributors_park() {
    let router = router(&RoutingConfig::default(), Registry::empty());
    let unknown = router.route(DeviceId(1), None);
    assert_eq!(unknown, Err(ParkReason::UnknownDevice));
    let reason = unknown.expect_err("parks");
    assert_eq!(reason.as_label(), "unknown_device");
    assert_eq!(
        reason.to_string(),
        "device is not in the registry and its event carried no mpan_core"
    );
    let unowned = router.route(DeviceId(1), Some(mpan(5, 1)));
    assert_eq!(unowned, Err(ParkReason::NoSubscriber(DistributorId(5))));
    let reason = unowned.expect_err("parks");
    assert_eq!(reason.as_label(), "no_subscriber");
    assert_eq!(reason.to_string(), "no subscriber owns distributor id 5");
}

#[test]
fn a_subscriber_listing_an_idno_id_wins() {
    let mut config = RoutingConfig {
        idno_subscriber: Some("ukpn".into()),
        ..RoutingConfig::default()
    };
    config.subscribers.push(SubscriberConfig {
        name: "idno-27".into(),
        distributor_ids: vec![DistributorId(27)],
        push: None,
    });
    let mut registry = Registry::empty();
    let entry = RegistryEntry {
        mpan: mpan(27, 3),
        gsp: area_gsp(17),
    };
    registry.insert(DeviceId(1), entry);
    let router = router(&config, registry);
    assert_eq!(
        subscriber_name(&router, router.route(DeviceId(1), None)),
        Ok("idno-27")
    );
    // Without a GSP group too.
    assert_eq!(
        subscriber_name(&router, router.route(DeviceId(2), Some(mpan(27, 4)))),
        Ok("idno-27")
    );
    // Other IDNOs still go to the idno_subscriber.
    assert_eq!(
        subscriber_name(&router, router.route(DeviceId(2), Some(mpan(28, 4)))),
        Ok("ukpn")
    );
}

#[test]
fn replace_registry_changes_routing_for_new_lookups() {
    let router = router(&RoutingConfig::default(), Registry::empty());
    assert_eq!(
        router.route(DeviceId(7), None),
        Err(ParkReason::UnknownDevice)
    );
    let before = router.registry();

    let mut registry = Registry::empty();
    let entry = RegistryEntry {
        mpan: mpan(13, 1),
        gsp: area_gsp(13),
    };
    registry.insert(DeviceId(7), entry);
    assert_eq!(router.replace_registry(registry), 1);

    assert_eq!(
        subscriber_name(&router, router.route(DeviceId(7), None)),
        Ok("spen")
    );
    assert_eq!(router.registry().len(), 1);
    // A reader holding the old registry keeps a consistent view of it.
    assert!(before.is_empty());
}

/// The owner of a distributor under the default routing, worked out from the config consts.
fn default_owner(distributor: u8, gsp: GspGroup) -> &'static str {
    let area = if distributor >= 24 {
        gsp.host_distributor().0
    } else {
        distributor
    };
    DEFAULT_SUBSCRIBERS
        .iter()
        .find(|(_, ids)| ids.contains(&area))
        .map(|(name, _)| *name)
        .expect("every area has a default owner")
}

fn entry_strategy() -> impl Strategy<Value = RegistryEntry> {
    (10u8..=99, 0u64..10_000_000_000, 0usize..14).prop_map(|(distributor, rest, gsp_index)| {
        let host = if distributor >= 24 {
            crate::domain::mpan::DNO_AREAS[gsp_index].0
        } else {
            distributor
        };
        RegistryEntry {
            mpan: mpan(distributor, rest),
            gsp: area_gsp(host),
        }
    })
}

proptest! {
    #[test]
    fn written_registries_load_back_and_route_to_their_owner(
        devices in prop::collection::btree_map(any::<u64>(), entry_strategy(), 0..200)
    ) {
        let mut registry = Registry::empty();
        for (device, entry) in &devices {
            registry.insert(DeviceId(*device), *entry);
        }
        let mut csv = Vec::new();
        registry.write_csv(&mut csv).expect("written");
        let loaded = Registry::from_reader(csv.as_slice(), "generated.csv").expect("loads");
        prop_assert_eq!(&loaded, &registry);

        let router = router(&RoutingConfig::default(), loaded);
        for (device, entry) in &devices {
            let route = router.route(DeviceId(*device), None).expect("routes");
            let distributor = entry.mpan.distributor();
            prop_assert_eq!(route.distributor, distributor);
            prop_assert_eq!(route.mpan, entry.mpan);
            prop_assert_eq!(route.gsp, Some(entry.gsp));
            prop_assert_eq!(
                router.table().name(route.subscriber),
                default_owner(distributor.0, entry.gsp)
            );
        }
    }
}
