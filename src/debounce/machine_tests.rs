//! Tests of the outage state machine: every transition of DOMAIN.md, duplicates, out-of-order
//! and late events, phases, and property tests against a simple model.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::domain::event::EventKey;
use crate::domain::{DeviceId, Phase};

const MIN: i64 = 60_000;
const T0: i64 = 1_764_000_000_000;

fn settings() -> Settings {
    Settings {
        debounce: Duration::from_secs(180),
        poa_sla: Duration::from_secs(60),
        pra_sla: Duration::from_secs(60),
        tombstone_ttl: Duration::from_secs(3600),
    }
}

fn point(phase: Phase) -> SupplyPoint {
    SupplyPoint {
        device: DeviceId(0x00db_1234_5678_90a0),
        phase,
    }
}

fn lost(phase: Phase, at: i64) -> DeviceEvent {
    DeviceEvent {
        key: EventKey(at as u128),
        point: point(phase),
        mpan: None,
        kind: EventKind::Lost {
            lost_at: UtcMillis(at),
        },
    }
}

fn restored(phase: Phase, at: i64, lost_at: Option<i64>) -> DeviceEvent {
    DeviceEvent {
        key: EventKey(at as u128 + 1),
        point: point(phase),
        mpan: None,
        kind: EventKind::Restored {
            restored_at: UtcMillis(at),
            lost_at: lost_at.map(UtcMillis),
        },
    }
}

struct Harness {
    machine: Debouncer,
    effects: Effects,
}

impl Harness {
    fn new() -> Self {
        Self {
            machine: Debouncer::new(settings()),
            effects: Effects::default(),
        }
    }

    fn event(&mut self, event: DeviceEvent, now: i64) -> Outcome {
        let at = Arrival {
            received: UtcMillis(now),
            now: UtcMillis(now),
        };
        self.machine.on_event(&event, at, &mut self.effects)
    }

    fn fire(&mut self, now: i64) -> usize {
        let timers: Vec<_> = self.effects.timers.drain(..).collect();
        let mut fired = 0;
        for (p, due) in timers {
            if due.0 <= now {
                fired +=
                    usize::from(
                        self.machine
                            .on_timer(p, due, UtcMillis(now), &mut self.effects),
                    );
            } else {
                self.effects.timers.push((p, due));
            }
        }
        fired
    }

    fn kinds(&self) -> Vec<AlertKind> {
        self.effects.alerts.iter().map(|a| a.kind).collect()
    }
}

#[test]
fn a_loss_opens_a_pending_outage_with_a_timer_at_t0_plus_debounce() {
    let mut h = Harness::new();
    assert_eq!(h.event(lost(Phase::Whole, T0), T0 + 500), Outcome::Opened);
    assert_eq!(
        h.effects.timers,
        vec![(point(Phase::Whole), UtcMillis(T0 + 3 * MIN))]
    );
    assert!(h.effects.alerts.is_empty());
    assert_eq!(h.machine.pending_count(), 1);
}

#[test]
fn the_timer_emits_a_poa_with_due_time_and_deadline() {
    let mut h = Harness::new();
    h.event(lost(Phase::Whole, T0), T0 + 500);
    assert_eq!(h.fire(T0 + 3 * MIN - 1), 0, "not before the debounce");
    assert_eq!(h.fire(T0 + 3 * MIN + 2), 1);
    let poa = h.effects.alerts[0];
    assert_eq!(poa.kind, AlertKind::Outage);
    assert_eq!(poa.due_at, UtcMillis(T0 + 3 * MIN));
    assert_eq!(poa.deadline, UtcMillis(T0 + 4 * MIN));
    assert_eq!(poa.emitted_at, UtcMillis(T0 + 3 * MIN + 2));
    assert_eq!(poa.received_at, UtcMillis(T0 + 500));
    assert!(!poa.learned_late);
    assert_eq!(
        h.machine.outage(&point(Phase::Whole)).map(|o| o.state),
        Some(OutageState::Alerted)
    );
    assert_eq!(h.machine.pending_count(), 0);
}

#[test]
fn a_restoration_within_the_debounce_is_a_short_interruption_with_no_alert() {
    let mut h = Harness::new();
    h.event(lost(Phase::Whole, T0), T0);
    assert_eq!(
        h.event(restored(Phase::Whole, T0 + 2 * MIN, None), T0 + 2 * MIN),
        Outcome::ShortInterruption
    );
    assert_eq!(h.fire(T0 + 10 * MIN), 0, "the stale timer must not fire");
    assert!(h.effects.alerts.is_empty());
    assert_eq!(h.machine.open_count(), 0);
    assert_eq!(h.machine.pending_count(), 0);
}

#[test]
fn a_restoration_after_the_poa_emits_a_pra_with_the_outage_duration() {
    let mut h = Harness::new();
    h.event(lost(Phase::Whole, T0), T0);
    h.fire(T0 + 3 * MIN);
    assert_eq!(
        h.event(
            restored(Phase::Whole, T0 + 10 * MIN, None),
            T0 + 10 * MIN + 40
        ),
        Outcome::Restored
    );
    assert_eq!(h.kinds(), vec![AlertKind::Outage, AlertKind::Restoration]);
    let pra = h.effects.alerts[1];
    assert_eq!(pra.due_at, UtcMillis(T0 + 10 * MIN));
    assert_eq!(pra.deadline, UtcMillis(T0 + 11 * MIN));
    assert_eq!(pra.outage_duration(), Some(Duration::from_secs(600)));
    assert_eq!(pra.lost_at, UtcMillis(T0));
    assert_eq!(h.machine.open_count(), 0);
}

#[test]
fn a_loss_arriving_after_its_timer_would_have_fired_arms_a_timer_already_due() {
    let mut h = Harness::new();
    assert_eq!(
        h.event(lost(Phase::Whole, T0), T0 + 5 * MIN),
        Outcome::AlertedAtOnce
    );
    assert!(
        h.effects.alerts.is_empty(),
        "the owner fires it after the record"
    );
    assert_eq!(h.fire(T0 + 5 * MIN), 1);
    assert_eq!(h.kinds(), vec![AlertKind::Outage]);
    let poa = h.effects.alerts[0];
    assert_eq!(poa.breach_cause(), crate::domain::BreachCause::Upstream);
    assert!(!poa.learned_late);
}

#[test]
fn a_learned_late_outage_emits_poa_then_pra() {
    let mut h = Harness::new();
    let outcome = h.event(
        restored(Phase::Whole, T0 + 20 * MIN, Some(T0)),
        T0 + 20 * MIN,
    );
    assert_eq!(outcome, Outcome::LearnedLate);
    assert_eq!(h.kinds(), vec![AlertKind::Outage, AlertKind::Restoration]);
    assert!(h.effects.alerts.iter().all(|a| a.learned_late));
    assert_eq!(h.effects.alerts[0].due_at, UtcMillis(T0 + 3 * MIN));
    assert_eq!(h.machine.open_count(), 0);
}

#[test]
fn a_learned_late_restoration_shorter_than_the_debounce_is_a_short_interruption() {
    let mut h = Harness::new();
    let outcome = h.event(
        restored(Phase::Whole, T0 + 3 * MIN - 1, Some(T0)),
        T0 + 4 * MIN,
    );
    assert_eq!(outcome, Outcome::ShortInterruption);
    assert!(h.effects.alerts.is_empty());
}

#[test]
fn an_outage_of_exactly_the_debounce_is_alerted() {
    let mut h = Harness::new();
    let outcome = h.event(restored(Phase::Whole, T0 + 3 * MIN, Some(T0)), T0 + 4 * MIN);
    assert_eq!(outcome, Outcome::LearnedLate);
}

#[test]
fn a_restoration_proving_the_debounce_elapsed_before_the_timer_emits_poa_then_pra() {
    let mut h = Harness::new();
    h.event(lost(Phase::Whole, T0), T0);
    let outcome = h.event(restored(Phase::Whole, T0 + 4 * MIN, None), T0 + 2 * MIN);
    assert_eq!(outcome, Outcome::Restored);
    assert_eq!(h.kinds(), vec![AlertKind::Outage, AlertKind::Restoration]);
    assert_eq!(h.fire(T0 + 10 * MIN), 0);
}

#[test]
fn duplicates_and_second_losses_change_nothing() {
    let mut h = Harness::new();
    h.event(lost(Phase::Whole, T0), T0);
    assert_eq!(
        h.event(lost(Phase::Whole, T0), T0 + 1),
        Outcome::AlreadyOpen
    );
    assert_eq!(
        h.event(lost(Phase::Whole, T0 + 30_000), T0 + 30_000),
        Outcome::AlreadyOpen
    );
    assert_eq!(h.effects.timers.len(), 1);
    h.fire(T0 + 3 * MIN);
    assert_eq!(
        h.event(lost(Phase::Whole, T0), T0 + 4 * MIN),
        Outcome::AlreadyOpen
    );
    assert_eq!(h.kinds(), vec![AlertKind::Outage]);
}

#[test]
fn a_restoration_with_no_known_outage_and_no_start_is_unmatched() {
    let mut h = Harness::new();
    assert_eq!(
        h.event(restored(Phase::Whole, T0, None), T0),
        Outcome::Unmatched
    );
    assert!(h.effects.alerts.is_empty());
    assert_eq!(h.machine.open_count(), 0);
}

#[test]
fn a_resent_restoration_after_the_pra_is_stale_and_emits_nothing() {
    let mut h = Harness::new();
    h.event(
        restored(Phase::Whole, T0 + 20 * MIN, Some(T0)),
        T0 + 20 * MIN,
    );
    h.effects.clear();
    let again = h.event(
        restored(Phase::Whole, T0 + 20 * MIN, Some(T0)),
        T0 + 21 * MIN,
    );
    assert_eq!(again, Outcome::Stale);
    assert!(h.effects.alerts.is_empty());
}

#[test]
fn a_loss_arriving_after_its_own_restoration_is_stale() {
    let mut h = Harness::new();
    assert_eq!(
        h.event(restored(Phase::Whole, T0 + MIN, None), T0 + MIN),
        Outcome::Unmatched
    );
    assert_eq!(
        h.event(lost(Phase::Whole, T0), T0 + MIN + 5),
        Outcome::Stale
    );
    assert_eq!(h.machine.open_count(), 0);
    assert!(h.effects.timers.is_empty());
}

#[test]
fn a_restoration_older_than_the_open_outage_is_stale() {
    let mut h = Harness::new();
    h.event(lost(Phase::Whole, T0), T0);
    assert_eq!(
        h.event(restored(Phase::Whole, T0 - MIN, None), T0 + 1),
        Outcome::Stale
    );
    assert_eq!(h.machine.open_count(), 1);
}

#[test]
fn a_new_outage_after_a_restoration_opens_normally() {
    let mut h = Harness::new();
    h.event(lost(Phase::Whole, T0), T0);
    h.event(restored(Phase::Whole, T0 + MIN, None), T0 + MIN);
    assert_eq!(
        h.event(lost(Phase::Whole, T0 + 2 * MIN), T0 + 2 * MIN),
        Outcome::Opened
    );
    assert_eq!(h.fire(T0 + 3 * MIN), 0, "the first outage's timer is stale");
    assert_eq!(h.fire(T0 + 5 * MIN), 1);
    assert_eq!(h.effects.alerts[0].lost_at, UtcMillis(T0 + 2 * MIN));
}

#[test]
fn phases_are_independent_supply_points() {
    let mut h = Harness::new();
    h.event(lost(Phase::L1, T0), T0);
    h.event(lost(Phase::L2, T0), T0);
    h.event(restored(Phase::L1, T0 + MIN, None), T0 + MIN);
    assert_eq!(h.fire(T0 + 3 * MIN), 1);
    let alerted: Vec<_> = h.effects.alerts.iter().map(|a| a.point.phase).collect();
    assert_eq!(alerted, vec![Phase::L2]);
    assert!(h.machine.outage(&point(Phase::Whole)).is_none());
}

#[test]
fn tombstones_expire_after_their_ttl() {
    let mut h = Harness::new();
    h.event(restored(Phase::Whole, T0 + MIN, None), T0 + MIN);
    h.machine.expire_tombstones(UtcMillis(T0 + MIN + 3_600_000));
    assert_eq!(
        h.event(lost(Phase::Whole, T0), T0 + 2 * 3_600_000),
        Outcome::AlertedAtOnce
    );
}

/// One outage of the model: `[start, end)` in minutes-ish units, per phase.
#[derive(Debug, Clone)]
struct ModelOutage {
    phase: Phase,
    lost_at: i64,
    restored_at: i64,
    reports_loss: bool,
}

fn outages() -> impl Strategy<Value = Vec<ModelOutage>> {
    let phase = prop_oneof![Just(Phase::Whole), Just(Phase::L1), Just(Phase::L2)];
    prop::collection::vec((phase, 1i64..600, 1i64..600, any::<bool>()), 1..12).prop_map(|specs| {
        let mut next_start = [T0; 3];
        specs
            .into_iter()
            .map(|(phase, gap_s, len_s, reports_loss)| {
                let slot = (phase.to_proto() as usize).min(2);
                let lost_at = next_start[slot] + gap_s * 1000;
                let restored_at = lost_at + len_s * 1000;
                next_start[slot] = restored_at;
                ModelOutage {
                    phase,
                    lost_at,
                    restored_at,
                    reports_loss,
                }
            })
            .collect()
    })
}

/// Events of the outages in device-time order, each delivered the moment it happens.
fn timeline(outages: &[ModelOutage]) -> Vec<(i64, DeviceEvent)> {
    let mut events = Vec::new();
    for o in outages {
        if o.reports_loss {
            events.push((o.lost_at, lost(o.phase, o.lost_at)));
        }
        let carried = (!o.reports_loss).then_some(o.lost_at);
        events.push((o.restored_at, restored(o.phase, o.restored_at, carried)));
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

fn run_in_real_time(events: &[(i64, DeviceEvent)], h: &mut Harness) {
    for (at, event) in events {
        h.fire(*at - 1);
        h.event(*event, *at);
    }
    h.fire(i64::MAX / 4);
}

fn alert_keys(alerts: &[Alert]) -> Vec<(Phase, AlertKind, i64)> {
    let mut keys: Vec<_> = alerts
        .iter()
        .map(|a| (a.point.phase, a.kind, a.lost_at.0))
        .collect();
    keys.sort();
    keys
}

proptest! {
    /// In-order, on-time delivery produces exactly the model's alerts.
    #[test]
    fn on_time_events_produce_exactly_the_modelled_alerts(outages in outages()) {
        let mut h = Harness::new();
        run_in_real_time(&timeline(&outages), &mut h);
        let mut expected = Vec::new();
        for o in &outages {
            if o.restored_at - o.lost_at >= 3 * MIN {
                expected.push((o.phase, AlertKind::Outage, o.lost_at));
                expected.push((o.phase, AlertKind::Restoration, o.lost_at));
            }
        }
        expected.sort();
        prop_assert_eq!(alert_keys(&h.effects.alerts), expected);
        prop_assert_eq!(h.machine.open_count(), 0);
        prop_assert_eq!(h.machine.pending_count(), 0);
    }

    /// Sending every event twice changes nothing.
    #[test]
    fn duplicated_events_change_nothing(outages in outages()) {
        let once = timeline(&outages);
        let twice: Vec<_> = once.iter().flat_map(|e| [*e, *e]).collect();
        let mut a = Harness::new();
        let mut b = Harness::new();
        run_in_real_time(&once, &mut a);
        run_in_real_time(&twice, &mut b);
        prop_assert_eq!(alert_keys(&a.effects.alerts), alert_keys(&b.effects.alerts));
    }

    /// Whatever the order and delay, per supply point a PRA never precedes its POA, no alert
    /// is emitted twice, and every PRA has a POA for the same outage.
    #[test]
    fn shuffled_late_events_keep_poa_before_pra(
        outages in outages(),
        order in prop::collection::vec(any::<u32>(), 24),
        delay_s in 0i64..900,
    ) {
        let events = timeline(&outages);
        let mut shuffled: Vec<_> = events.iter().enumerate()
            .map(|(i, e)| (order[i % order.len()], *e)).collect();
        shuffled.sort_by_key(|(k, _)| *k);
        let last = events.last().map_or(T0, |(at, _)| *at) + delay_s * 1000;
        let mut h = Harness::new();
        for (i, (_, (_, event))) in shuffled.iter().enumerate() {
            h.fire(last + i as i64);
            h.event(*event, last + i as i64);
        }
        h.fire(i64::MAX / 4);
        let mut seen = std::collections::HashSet::new();
        for (i, alert) in h.effects.alerts.iter().enumerate() {
            prop_assert!(seen.insert((alert.point, alert.kind, alert.lost_at)), "emitted twice: {:?}", alert);
            if alert.kind == AlertKind::Restoration {
                let has_poa = h.effects.alerts[..i].iter().any(|a| {
                    a.kind == AlertKind::Outage && a.point == alert.point && a.lost_at == alert.lost_at
                });
                prop_assert!(has_poa, "PRA without an earlier POA: {:?}", alert);
            }
        }
        prop_assert_eq!(h.machine.pending_count(),
            h.machine.outages().filter(|(_, o)| o.state == OutageState::Pending).count());
    }
}

#[test]
fn outcome_all_lists_the_variants_in_declaration_order() {
    for (index, outcome) in Outcome::ALL.iter().enumerate() {
        assert_eq!(*outcome as usize, index, "{outcome:?}");
    }
}
