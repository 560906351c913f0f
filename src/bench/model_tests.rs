use std::collections::HashMap;

use super::*;
use crate::bench::fleet::Fleet;
use crate::bench::scenario::{Overrides, plan};

fn model(presets: &[Preset], overrides: Overrides, scale: f64, seed: u64) -> Model {
    let fleet = Fleet::generate(20_000, 0.02, seed);
    let plan = plan(&fleet, presets, &overrides, seed).expect("a plan");
    Model::build(&plan, Timing::compressed(scale), seed)
}

fn outages(n: u64) -> Overrides {
    Overrides {
        outages: Some(n),
        ..Overrides::default()
    }
}

#[test]
fn time_scale_compresses_debounce_and_windows_together() {
    let t = Timing::compressed(60.0);
    assert_eq!(
        (t.debounce_ms, t.poa_window_ms, t.pra_window_ms),
        (3_000, 1_000, 1_000)
    );
    assert_eq!(t.wall(60_000), LEAD_IN_MS + 1_000);
    let real = Timing::compressed(1.0);
    assert_eq!(real.debounce_ms, 180_000);
    assert_eq!(real.wall(180_000) - real.wall(0), 180_000);
}

#[test]
fn flapping_around_the_line_alerts_exactly_the_outages_that_reach_the_debounce() {
    for scale in [1.0, 60.0, 7.0] {
        let m = model(&[Preset::Flapping], outages(3_000), scale, 5);
        let debounce = m.timing.debounce_ms;
        let (mut short, mut long, mut exact) = (0, 0, 0);
        for o in &m.outages {
            let restored = o.restored_at.expect("flaps are restored");
            let length = restored - o.lost_at;
            // Acknowledged promptly: the relay applied it as it came.
            let poa = m.poa(o, Some(restored + 5));
            if length >= debounce {
                assert_eq!(poa, Expect::Required, "{o:?} at ×{scale}");
                assert_eq!(m.pra(o, poa), Expect::Required);
                long += 1;
                exact += u32::from(length == debounce);
            } else {
                assert_eq!(poa, Expect::Forbidden, "{o:?} at ×{scale}");
                assert_eq!(m.pra(o, poa), Expect::Forbidden);
                // Acknowledged too late to be sure the timer had not fired: either is right.
                assert_eq!(m.poa(o, Some(o.lost_at + debounce)), Expect::Either);
                short += 1;
            }
        }
        assert!(
            short > 1_000 && long > 1_000,
            "{short} short, {long} long at ×{scale}"
        );
        if scale == 60.0 {
            assert!(exact > 100, "outages of exactly the debounce: {exact}");
        }
    }
}

#[test]
fn flapping_near_misses_stay_clear_of_the_line() {
    let m = model(&[Preset::Flapping], outages(2_000), 60.0, 6);
    for o in &m.outages {
        let length = o.restored_at.expect("restored") - o.lost_at;
        assert!(
            length >= m.timing.debounce_ms || length <= m.timing.debounce_ms - 80,
            "{o:?}"
        );
    }
}

#[test]
fn late_learned_outages_are_alerted_only_when_long_and_never_send_a_loss() {
    let m = model(&[Preset::LateLearned], outages(1_000), 60.0, 7);
    assert!(m.events.iter().all(|e| e.kind == EventKind::Restored));
    let mut long = 0;
    for o in &m.outages {
        assert!(!o.loss_reported);
        let restored = o.restored_at.expect("restored");
        let expected = if restored - o.lost_at >= m.timing.debounce_ms {
            long += 1;
            Expect::Required
        } else {
            Expect::Forbidden
        };
        // However late the restoration is acknowledged.
        assert_eq!(m.poa(o, Some(restored + 100_000)), expected);
    }
    assert!((600..800).contains(&long), "{long} long of 1000");
}

#[test]
fn a_substation_trip_loses_one_area_in_one_second_and_restores_every_supply() {
    let fleet = Fleet::generate(20_000, 0.02, 8);
    let plan = plan(&fleet, &[Preset::SubstationTrip], &outages(1_000), 8).expect("plan");
    let m = Model::build(&plan, Timing::compressed(1.0), 8);
    assert_eq!(m.outages.len(), 1_000);
    assert_eq!(m.events.len(), 2_000);
    let areas: std::collections::HashSet<u8> = m
        .outages
        .iter()
        .filter_map(|o| fleet.supply(o.device).map(|s| s.gsp.host_distributor().0))
        .collect();
    assert_eq!(areas.len(), 1, "one area: {areas:?}");
    let first = m.outages.iter().map(|o| o.lost_at).min().expect("outages");
    let last = m.outages.iter().map(|o| o.lost_at).max().expect("outages");
    assert!(last - first < 1_000);
    assert_eq!(m.surely_required(), (1_000, 1_000));
    assert_eq!(m.max_open(), 1_000);
}

#[test]
fn a_substation_trip_takes_whole_feeders_of_its_area_first() {
    let fleet = Fleet::generate(20_000, 0.02, 8);
    let plan = plan(&fleet, &[Preset::SubstationTrip], &outages(1_200), 8).expect("plan");
    let mut per_feeder: HashMap<u32, u32> = HashMap::new();
    for outage in &plan.outages {
        let supply = fleet.supply(outage.device).expect("a fleet device");
        *per_feeder.entry(supply.feeder).or_default() += 1;
    }
    // 500 supplies a feeder: the first two feeders whole, 200 of the third.
    let mut counts: Vec<(u32, u32)> = per_feeder.into_iter().collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![(0, 500), (1, 500), (2, 200)]);
    assert!(
        plan.descriptions[0].contains("(1 substations, 3 feeders)"),
        "{}",
        plan.descriptions[0]
    );
}

#[test]
fn events_are_in_send_order_and_every_restoration_follows_its_loss() {
    let m = model(&[Preset::Storm, Preset::Steady], outages(3_000), 60.0, 9);
    assert!(m.events.windows(2).all(|w| w[0].send_at <= w[1].send_at));
    let mut lost_sent = HashMap::new();
    for e in m.events.iter().filter(|e| e.first) {
        match e.kind {
            EventKind::Lost => {
                lost_sent.insert(e.outage, e.send_at);
            }
            EventKind::Restored => {
                let o = &m.outages[e.outage as usize];
                assert!(o.restored_at.expect("restored") > o.lost_at);
                if o.loss_reported {
                    assert!(lost_sent.get(&e.outage).is_some_and(|l| *l < e.send_at));
                }
            }
        }
    }
    // Each outage is found back by its device and start.
    for (n, o) in (0u32..).zip(&m.outages) {
        assert_eq!(m.find(o.device, o.lost_at), Some(n));
    }
    assert_eq!(m.find(u32::MAX, 0), None);
}

#[test]
fn duplicates_send_every_event_at_least_twice() {
    let overrides = Overrides {
        rate: Some(50.0),
        duration: Some(std::time::Duration::from_secs(120)),
        copies: Some(2),
        ..Overrides::default()
    };
    let m = model(&[Preset::Duplicates], overrides, 60.0, 10);
    let mut sends: HashMap<(u32, bool), u32> = HashMap::new();
    for e in &m.events {
        *sends
            .entry((e.outage, e.kind == EventKind::Lost))
            .or_default() += 1;
    }
    assert!(!sends.is_empty());
    assert!(sends.values().all(|n| (2..=3).contains(n)), "{sends:?}");
    assert!(sends.values().any(|n| *n == 3));
}

#[test]
fn the_same_seed_scripts_the_same_run() {
    let a = model(&[Preset::Storm, Preset::Flapping], outages(2_000), 60.0, 11);
    let b = model(&[Preset::Storm, Preset::Flapping], outages(2_000), 60.0, 11);
    let c = model(&[Preset::Storm, Preset::Flapping], outages(2_000), 60.0, 12);
    assert_eq!(a.outages, b.outages);
    assert_eq!(a.events, b.events);
    assert_ne!(a.outages, c.outages);
}

#[test]
fn a_storm_has_its_shape() {
    let m = model(&[Preset::Storm], outages(10_000), 1.0, 13);
    let debounce = m.timing.debounce_ms;
    let n = m.outages.len() as f64;
    let open = m.outages.iter().filter(|o| o.restored_at.is_none()).count() as f64;
    let short = m
        .outages
        .iter()
        .filter(|o| o.restored_at.is_some_and(|r| r - o.lost_at < debounce))
        .count() as f64;
    let unreported = m.outages.iter().filter(|o| !o.loss_reported).count() as f64;
    assert!(open / n > 0.02, "open {open}");
    assert!((0.05..0.30).contains(&(short / n)), "short {short}");
    assert!(
        (0.04..0.15).contains(&(unreported / n)),
        "no last gasp {unreported}"
    );
    assert!(
        m.outages
            .iter()
            .all(|o| o.loss_reported || o.restored_at.is_some())
    );
    // Losses within the first twelfth of the 6 h restoration span.
    let loss_span = m.outages.iter().map(|o| o.lost_at).max().unwrap_or(0);
    assert!(loss_span <= LEAD_IN_MS + 30 * 60_000 + 1_000, "{loss_span}");
}

#[test]
fn a_fleet_too_small_for_the_mix_is_refused_with_a_hint() {
    let fleet = Fleet::generate(1_000, 0.0, 1);
    let err = plan(&fleet, &[Preset::Storm], &outages(5_000), 1).expect_err("too small");
    assert!(err.to_string().contains("--devices"), "{err}");
}
