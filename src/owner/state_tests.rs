//! Tests of the partition's decision rule: timers fire by log time, a record's own already-due
//! timers fire after the whole record, and the same records give the same alerts however the
//! live owner's clock advanced between them.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::domain::{AlertKind, DeviceId, Phase};

const SECOND: i64 = 1_000;
const T0: i64 = 1_764_000_000_000;

fn settings() -> Settings {
    Settings {
        debounce: Duration::from_secs(180),
        poa_sla: Duration::from_secs(60),
        pra_sla: Duration::from_secs(60),
        tombstone_ttl: Duration::from_secs(3600),
    }
}

fn state() -> PartitionState {
    PartitionState::new(
        settings(),
        EventIdWindow::new(Duration::from_secs(600), 1_000_000),
    )
}

fn point(device: u64) -> SupplyPoint {
    SupplyPoint {
        device: DeviceId(device),
        phase: Phase::Whole,
    }
}

fn lost(device: u64, at: i64) -> DeviceEvent {
    DeviceEvent {
        key: EventKey(u128::from(device) << 64 | at as u128),
        point: point(device),
        mpan: None,
        kind: EventKind::Lost {
            lost_at: UtcMillis(at),
        },
    }
}

fn restored(device: u64, at: i64) -> DeviceEvent {
    DeviceEvent {
        key: EventKey(u128::from(device) << 64 | (at as u128 + 1)),
        point: point(device),
        mpan: None,
        kind: EventKind::Restored {
            restored_at: UtcMillis(at),
            lost_at: None,
        },
    }
}

fn record(arrival: i64, events: Vec<DeviceEvent>) -> EventRecord {
    EventRecord {
        arrival: UtcMillis(arrival),
        received: UtcMillis(arrival),
        events,
    }
}

fn apply(state: &mut PartitionState, record: &EventRecord) -> ApplyReport {
    let mut counts = [[0; Outcome::ALL.len()]; 2];
    state.apply(record, None, &mut counts)
}

fn ids(alerts: &[Alert]) -> Vec<String> {
    alerts.iter().map(|a| a.id().to_string()).collect()
}

#[test]
fn a_late_loss_and_the_restoration_showing_it_short_in_one_record_give_nothing() {
    let mut state = state();
    // Lost at T0, restored 100 s later: a short interruption. Both reach the relay in one
    // batch, 10 minutes later, when the loss's debounce has long elapsed.
    let batch = record(
        T0 + 600 * SECOND,
        vec![lost(1, T0), restored(1, T0 + 100 * SECOND)],
    );
    apply(&mut state, &batch);
    state.advance(UtcMillis(T0 + 3600 * SECOND));
    assert!(state.take_alerts().is_empty());
    assert_eq!(state.open_count(), 0);
    assert_eq!(state.pending_count(), 0);
}

#[test]
fn noting_keeps_what_opened_and_closed_outages_and_nothing_else() {
    use crate::summary::{Change, Note};
    let mut state = state();
    apply(&mut state, &record(T0, vec![lost(1, T0)]));
    assert!(state.take_notes().is_empty(), "noting is off by default");
    state.set_noting(true);
    let loss = lost(2, T0);
    let batch = vec![
        loss,
        loss,
        lost(1, T0 + SECOND),
        restored(2, T0 + 10 * SECOND),
    ];
    apply(&mut state, &record(T0 + 20 * SECOND, batch));
    // The timer firing (a POA) is not a note.
    state.advance(UtcMillis(T0 + 600 * SECOND));
    let note = |device, change| Note {
        point: point(device),
        mpan: None,
        at: UtcMillis(T0 + 20 * SECOND),
        change,
    };
    assert_eq!(
        state.take_notes(),
        [note(2, Change::Lost), note(2, Change::Restored)],
        "the duplicate and the second loss of an open outage note nothing"
    );
    assert!(state.take_notes().is_empty());
    state.set_noting(false);
    apply(
        &mut state,
        &record(T0 + 700 * SECOND, vec![restored(1, T0 + 650 * SECOND)]),
    );
    assert!(state.take_notes().is_empty());
}

#[test]
fn a_late_loss_alone_alerts_right_after_its_record() {
    let mut state = state();
    let mut counts = [[0; Outcome::ALL.len()]; 2];
    state.apply(
        &record(T0 + 600 * SECOND, vec![lost(1, T0)]),
        None,
        &mut counts,
    );
    assert_eq!(counts[0][Outcome::AlertedAtOnce as usize], 1);
    let alerts = state.take_alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertKind::Outage);
    assert_eq!(alerts[0].emitted_at, UtcMillis(T0 + 600 * SECOND));
}

#[test]
fn a_timer_fires_before_a_record_only_if_the_record_arrived_at_or_after_its_due_time() {
    let due = T0 + 180 * SECOND;
    // The restoration arrived a millisecond before the due time: it wins.
    let mut early = state();
    apply(&mut early, &record(T0, vec![lost(1, T0)]));
    apply(
        &mut early,
        &record(due - 1, vec![restored(1, T0 + 170 * SECOND)]),
    );
    assert!(early.take_alerts().is_empty());
    // It arrived at the due time: the timer fired first (POA), then the PRA.
    let mut late = state();
    apply(&mut late, &record(T0, vec![lost(1, T0)]));
    apply(
        &mut late,
        &record(due, vec![restored(1, T0 + 170 * SECOND)]),
    );
    let kinds: Vec<AlertKind> = late.take_alerts().iter().map(|a| a.kind).collect();
    assert_eq!(kinds, [AlertKind::Outage, AlertKind::Restoration]);
}

#[test]
fn advancing_log_time_fires_due_timers_and_never_goes_back() {
    let mut state = state();
    apply(
        &mut state,
        &record(T0, vec![lost(1, T0), lost(2, T0 + SECOND)]),
    );
    assert_eq!(state.next_due(), Some(UtcMillis(T0 + 180 * SECOND)));
    state.advance(UtcMillis(T0 + 180 * SECOND));
    assert_eq!(state.take_alerts().len(), 1);
    state.advance(UtcMillis(T0));
    assert_eq!(state.log_time(), UtcMillis(T0 + 180 * SECOND));
    assert_eq!(state.next_due(), Some(UtcMillis(T0 + 181 * SECOND)));
}

#[test]
fn repeated_event_ids_are_duplicates_and_are_not_logged_again() {
    let mut state = state();
    let mut counts = [[0; Outcome::ALL.len()]; 2];
    let mut accepted = Vec::new();
    let report = state.apply(
        &record(T0, vec![lost(1, T0), lost(1, T0), lost(2, T0)]),
        Some(&mut accepted),
        &mut counts,
    );
    assert_eq!(
        report,
        ApplyReport {
            accepted: 2,
            duplicates: 1
        }
    );
    assert_eq!(accepted, vec![lost(1, T0), lost(2, T0)]);
    let again = apply(&mut state, &record(T0 + SECOND, vec![lost(2, T0)]));
    assert_eq!(
        again,
        ApplyReport {
            accepted: 0,
            duplicates: 1
        }
    );
}

#[test]
fn a_restored_state_decides_like_the_state_it_was_saved_from() {
    let mut live = state();
    apply(&mut live, &record(T0, vec![lost(1, T0), lost(2, T0)]));
    apply(
        &mut live,
        &record(T0 + 10 * SECOND, vec![restored(2, T0 + 9 * SECOND)]),
    );
    let saved = Saved {
        log_time: live.log_time(),
        outages: live.open_outages().collect(),
        tombstones: live.tombstones().collect(),
        seen: live.seen().collect(),
    };
    let mut restored_state = PartitionState::restore(
        settings(),
        EventIdWindow::new(Duration::from_secs(600), 1_000_000),
        saved,
    );
    let next = record(
        T0 + 400 * SECOND,
        vec![restored(1, T0 + 300 * SECOND), lost(2, T0)],
    );
    let live_report = apply(&mut live, &next);
    let restored_report = apply(&mut restored_state, &next);
    assert_eq!(live_report, restored_report);
    assert_eq!(ids(&live.take_alerts()), ids(&restored_state.take_alerts()));
}

/// One scripted step: an event for a device, `delay` seconds after the previous step.
#[derive(Debug, Clone)]
struct Step {
    device: u64,
    lose: bool,
    /// The device's clock relative to arrival: negative when the event arrives late.
    offset: i64,
    delay: i64,
    /// Starts a new record (batch) here.
    new_record: bool,
    /// A live owner's timer wake before this step, this fraction of the gap in.
    wake: Option<u8>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u64..6,
            any::<bool>(),
            -400i64..10,
            0i64..120,
            any::<bool>(),
            prop::option::of(0u8..=100),
        )
            .prop_map(|(device, lose, offset, delay, new_record, wake)| Step {
                device,
                lose,
                offset,
                delay,
                new_record,
                wake,
            }),
        1..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The invariant replays rest on: a live owner whose clock fired timers between records
    /// (never past the next record's arrival) emits exactly the alerts, with the same ids and
    /// in the same order, of a replay that applied the same records back to back.
    #[test]
    fn the_same_records_give_the_same_alerts_live_and_replayed(steps in steps()) {
        let mut records: Vec<(Option<i64>, EventRecord)> = Vec::new();
        let mut now = T0;
        for (index, step) in steps.iter().enumerate() {
            let wake = step.wake.map(|fraction| now + step.delay * SECOND * i64::from(fraction) / 100);
            now += step.delay * SECOND;
            let at = now + step.offset * SECOND;
            let event = if step.lose {
                lost(step.device, at)
            } else {
                restored(step.device, at)
            };
            let event = DeviceEvent { key: EventKey(index as u128), ..event };
            match records.last_mut() {
                Some((_, record)) if !step.new_record && record.arrival.0 == now => {
                    record.events.push(event);
                }
                _ => records.push((wake, record(now, vec![event]))),
            }
        }
        let end = UtcMillis(now + 3600 * SECOND);
        let mut live = state();
        let mut live_alerts = Vec::new();
        for (wake, record) in &records {
            if let Some(wake) = wake {
                live.advance(UtcMillis(*wake));
            }
            apply(&mut live, record);
            live_alerts.extend(live.take_alerts());
        }
        live.advance(end);
        live_alerts.extend(live.take_alerts());
        let mut replay = state();
        let mut replay_alerts = Vec::new();
        for (_, record) in &records {
            apply(&mut replay, record);
            replay_alerts.extend(replay.take_alerts());
        }
        replay.advance(end);
        replay_alerts.extend(replay.take_alerts());
        prop_assert_eq!(ids(&live_alerts), ids(&replay_alerts));
    }
}
