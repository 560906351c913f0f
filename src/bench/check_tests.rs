use std::sync::atomic::Ordering;

use super::*;
use crate::bench::model::Timing;
use crate::bench::scenario::{OutageSpec, Plan, Preset};
use crate::config::DEFAULT_SUBSCRIBERS;

const MIN: i64 = 60_000;

/// Three outages of devices 0, 1 and 2 at real time: long (POA + PRA), a short flap
/// (nothing) and one still open (POA).
fn setup() -> (Model, Fleet, Routes, Tracker) {
    let spec = |device, lost_at, restored_at| OutageSpec {
        device,
        lost_at,
        restored_at,
        loss_reported: true,
        report_delay: 0,
        preset: Preset::Steady,
    };
    let plan = Plan {
        outages: vec![
            spec(0, 0, Some(5 * MIN)),
            spec(1, 0, Some(MIN)),
            spec(2, 0, None),
        ],
        copies: 1,
        descriptions: Vec::new(),
    };
    let model = Model::build(&plan, Timing::compressed(1.0), 1);
    let subscribers: Vec<SubscriberInfo> = DEFAULT_SUBSCRIBERS
        .iter()
        .map(|(name, ids)| SubscriberInfo {
            name: (*name).to_owned(),
            distributor_ids: ids.to_vec(),
            mode: "subscribe".to_owned(),
            head: 0,
        })
        .collect();
    let tracker = Tracker::new(3);
    // The flap's restoration was acknowledged long before its POA could fall due.
    let flap = &model.outages[1];
    tracker.restore_acked[1].store(flap.restored_at.unwrap_or(0) + 10, Ordering::Relaxed);
    (
        model,
        Fleet::generate(3, 0.0, 1),
        Routes::new(&subscribers),
        tracker,
    )
}

/// A correct receipt of `kind` for outage `n`.
fn receipt(model: &Model, n: u32, kind: AlertKind, sequence: u64) -> Receipt {
    let o = &model.outages[n as usize];
    let due = match kind {
        AlertKind::Outage => o.lost_at + model.timing.debounce_ms,
        AlertKind::Restoration => o.restored_at.unwrap_or(0),
    };
    Receipt {
        outage: n,
        kind,
        learned_late: false,
        sequence,
        received: due + 20,
        due,
        deadline: due + 60_000,
    }
}

/// Everything at the subscriber each device routes to.
fn deliver(fleet: &Fleet, routes: &Routes, items: Vec<(u32, Receipt)>) -> Vec<Received> {
    let mut received = vec![Received::default(); DEFAULT_SUBSCRIBERS.len()];
    for (device, r) in items {
        let sub = routes.of(fleet, device).map_or(0, usize::from);
        received[sub].receipts.push(r);
    }
    received
}

#[test]
fn exactly_the_expected_alerts_pass() {
    let (model, fleet, routes, tracker) = setup();
    let received = deliver(
        &fleet,
        &routes,
        vec![
            (0, receipt(&model, 0, AlertKind::Outage, 1)),
            (0, receipt(&model, 0, AlertKind::Restoration, 2)),
            (2, receipt(&model, 2, AlertKind::Outage, 1)),
        ],
    );
    let (outcome, deliveries) = check(&model, &fleet, &routes, &received, &tracker, Some(0));
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(
        (outcome.expected, outcome.received, deliveries.len()),
        (3, 3, 3)
    );
}

#[test]
fn missing_unexpected_and_misrouted_alerts_fail_the_check() {
    let (model, fleet, routes, tracker) = setup();
    let mut received = deliver(
        &fleet,
        &routes,
        vec![
            (0, receipt(&model, 0, AlertKind::Outage, 1)),
            // The short flap alerted: unexpected.
            (1, receipt(&model, 1, AlertKind::Outage, 1)),
        ],
    );
    // Outage 0's PRA at a subscriber that does not own the device: misrouted.
    let owner = routes.of(&fleet, 0).map_or(0, usize::from);
    let other = (owner + 1) % received.len();
    received[other]
        .receipts
        .push(receipt(&model, 0, AlertKind::Restoration, 7));
    let (outcome, _) = check(&model, &fleet, &routes, &received, &tracker, Some(0));
    assert!(!outcome.passed);
    // The open outage's POA never came.
    assert_eq!(outcome.missing, 1, "{outcome:?}");
    assert_eq!(outcome.unexpected, 1, "{outcome:?}");
    assert_eq!(outcome.misrouted, 1, "{outcome:?}");
}

#[test]
fn redeliveries_are_counted_and_double_emissions_and_bad_fields_fail() {
    let (model, fleet, routes, tracker) = setup();
    let poa = receipt(&model, 0, AlertKind::Outage, 1);
    let mut late_flag = receipt(&model, 0, AlertKind::Restoration, 2);
    late_flag.learned_late = true;
    let received = deliver(
        &fleet,
        &routes,
        vec![
            (0, poa),
            (0, poa),
            (0, late_flag),
            (2, receipt(&model, 2, AlertKind::Outage, 3)),
            (2, receipt(&model, 2, AlertKind::Outage, 4)),
        ],
    );
    let (outcome, _) = check(&model, &fleet, &routes, &received, &tracker, Some(0));
    assert_eq!(outcome.duplicated, 2, "{outcome:?}");
    assert_eq!(outcome.double_emitted, 1, "{outcome:?}");
    assert_eq!(outcome.wrong_fields, 1, "{outcome:?}");
    assert!(!outcome.passed);
}

#[test]
fn a_pra_before_its_poa_and_parked_alerts_fail_the_check() {
    let (model, fleet, routes, tracker) = setup();
    let received = deliver(
        &fleet,
        &routes,
        vec![
            (0, receipt(&model, 0, AlertKind::Restoration, 1)),
            (0, receipt(&model, 0, AlertKind::Outage, 2)),
            (2, receipt(&model, 2, AlertKind::Outage, 3)),
        ],
    );
    let (outcome, _) = check(&model, &fleet, &routes, &received, &tracker, Some(0));
    assert_eq!(outcome.out_of_order, 1, "{outcome:?}");
    let ordered = deliver(
        &fleet,
        &routes,
        vec![
            (0, receipt(&model, 0, AlertKind::Outage, 1)),
            (0, receipt(&model, 0, AlertKind::Restoration, 2)),
            (2, receipt(&model, 2, AlertKind::Outage, 3)),
        ],
    );
    let (parked, _) = check(&model, &fleet, &routes, &ordered, &tracker, Some(4));
    assert!(!parked.passed && parked.out_of_order == 0);
}
