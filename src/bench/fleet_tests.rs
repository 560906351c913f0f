use std::collections::{BTreeMap, HashSet};

use super::*;

#[test]
fn every_mpan_is_valid_unique_and_in_its_gsp_group() {
    let fleet = Fleet::generate(20_000, 0.02, 1);
    let mut seen = HashSet::new();
    for supply in fleet.supplies() {
        let text = supply.mpan.to_string();
        assert_eq!(text.parse::<MpanCore>(), Ok(supply.mpan), "{text}");
        assert!(seen.insert(supply.mpan), "{text} twice");
        let distributor = supply.distributor();
        if distributor.is_dno_area() {
            assert_eq!(GspGroup::of_area(distributor), Some(supply.gsp));
        } else {
            assert!(IDNO_IDS.contains(&distributor.0), "{text}");
        }
    }
}

#[test]
fn the_registry_csv_passes_the_relays_own_validation() {
    let fleet = Fleet::generate(5_000, 0.05, 2);
    let mut csv = Vec::new();
    fleet.registry().write_csv(&mut csv).expect("write");
    let registry = Registry::from_reader(csv.as_slice(), "fleet").expect("valid registry");
    assert_eq!(registry.len(), 5_000);
    let device = fleet.device_id(4_321);
    let entry = registry.get(device).expect("registered");
    assert_eq!(Some(entry.mpan), fleet.supply(4_321).map(|s| s.mpan));
}

#[test]
fn device_ids_map_back_to_their_index() {
    let fleet = Fleet::generate(100, 0.0, 3);
    assert_eq!(fleet.index_of(fleet.device_id(0)), Some(0));
    assert_eq!(fleet.index_of(fleet.device_id(99)), Some(99));
    assert_eq!(
        fleet.index_of(fleet.device_id(100)),
        None,
        "beyond the fleet"
    );
    assert_eq!(fleet.index_of(DeviceId(0x00db_1234_5678_90a0)), None);
}

#[test]
fn areas_follow_the_weight_table_and_idnos_their_share() {
    let n = 200_000u32;
    let fleet = Fleet::generate(n, 0.02, 4);
    let mut per_area: BTreeMap<u8, u64> = BTreeMap::new();
    let mut idno = 0u64;
    for supply in fleet.supplies() {
        if !supply.distributor().is_dno_area() {
            idno += 1;
        }
        // Count by host area (the GSP group), which follows the weights for both kinds.
        *per_area.entry(supply.gsp.host_distributor().0).or_default() += 1;
    }
    let total_weight: u64 = AREA_WEIGHTS.iter().map(|(_, w)| w).sum();
    for (area, weight) in AREA_WEIGHTS {
        let expected = weight as f64 / total_weight as f64;
        let got = per_area.get(&area).copied().unwrap_or(0) as f64 / f64::from(n);
        assert!(
            (got - expected).abs() < 0.005,
            "area {area}: {got:.4} of supplies, expected {expected:.4}"
        );
    }
    let idno_share = idno as f64 / f64::from(n);
    assert!((idno_share - 0.02).abs() < 0.002, "IDNO share {idno_share}");
    let largest = per_area.iter().max_by_key(|(_, c)| **c).map(|(a, _)| *a);
    assert_eq!(largest, Some(10), "Eastern is the largest area");
}

#[test]
fn the_same_seed_gives_the_same_fleet_and_another_seed_another() {
    let a = Fleet::generate(1_000, 0.02, 42);
    let b = Fleet::generate(1_000, 0.02, 42);
    let c = Fleet::generate(1_000, 0.02, 43);
    assert_eq!(a.supplies(), b.supplies());
    assert_ne!(a.supplies(), c.supplies());
}

#[test]
fn each_areas_supplies_fill_its_feeders_in_device_order_and_the_registry_names_them() {
    let fleet = Fleet::generate(30_000, 0.02, 5);
    let mut next_in_area: BTreeMap<u8, u32> = BTreeMap::new();
    for supply in fleet.supplies() {
        let ordinal = next_in_area
            .entry(supply.gsp.host_distributor().0)
            .or_default();
        assert_eq!(supply.feeder, *ordinal / FEEDER_SUPPLIES);
        *ordinal += 1;
    }
    let mut csv = Vec::new();
    fleet.registry().write_csv(&mut csv).expect("write");
    let text = String::from_utf8(csv).expect("UTF-8");
    assert!(text.starts_with("device_id,mpan_core,gsp_group,substation_id,feeder_id\n"));
    let registry = Registry::from_reader(text.as_bytes(), "fleet").expect("valid registry");
    let index = 12_345;
    let supply = fleet.supply(index).expect("in the fleet");
    let feeder = registry
        .feeder_of(fleet.device_id(index))
        .and_then(|id| registry.feeder(id))
        .expect("on a feeder");
    assert_eq!(
        (feeder.substation, feeder.feeder),
        (supply.substation_id().as_str(), supply.feeder_id().as_str())
    );
    assert!(
        feeder
            .substation
            .starts_with(&format!("SS{}-", supply.gsp.host_distributor().0))
    );
}
