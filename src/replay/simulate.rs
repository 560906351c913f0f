//! One partition's records re-run through the owner's own decisions ([`PartitionState`]) on a
//! simulated clock: pure and synchronous.
//!
//! The clock is log time, as the owner's is (see `crate::log`): each record is applied at
//! its arrival, by [`PartitionState::apply`], which fires every timer due by then before the
//! record and the record's own already-due timers after it, as in the live run. Between
//! records the simulated clock stops at each timer's due time, so an alert a timer emits
//! carries the time it would have fired had the relay's clock been exact; the live owner
//! fires it when its runtime wakes, a little later. Decisions do not depend on that
//! difference: they follow log time only.

use crate::domain::{Alert, UtcMillis};
use crate::log::EventRecord;
use crate::owner::{OutcomeCounts, PartitionState};

/// Applies `records` (a partition's, in log order) to `state`, then runs the simulated clock
/// on to `end`; the alerts emitted, in emission order.
pub fn replay<'a>(
    state: &mut PartitionState,
    records: impl IntoIterator<Item = &'a EventRecord>,
    end: UtcMillis,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let mut counts: OutcomeCounts = Default::default();
    for record in records {
        run_clock(state, record.arrival, &mut alerts);
        state.apply(record, None, &mut counts);
        alerts.extend(state.take_alerts());
    }
    run_clock(state, end, &mut alerts);
    alerts
}

/// Fires the timers due by `to`, each at its own due time.
fn run_clock(state: &mut PartitionState, to: UtcMillis, alerts: &mut Vec<Alert>) {
    while let Some(due) = state.next_due().filter(|due| *due <= to) {
        state.advance(due);
        alerts.extend(state.take_alerts());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::debounce::Settings;
    use crate::debounce::dedup::EventIdWindow;
    use crate::domain::event::EventKey;
    use crate::domain::{AlertKind, DeviceEvent, DeviceId, EventKind, Phase, SupplyPoint};

    const DEBOUNCE_MS: i64 = 180_000;
    const T0: i64 = 1_764_000_000_000;

    fn state() -> PartitionState {
        PartitionState::new(
            Settings {
                debounce: Duration::from_millis(DEBOUNCE_MS as u64),
                poa_sla: Duration::from_secs(60),
                pra_sla: Duration::from_secs(60),
                tombstone_ttl: Duration::from_secs(3600),
            },
            EventIdWindow::new(Duration::from_secs(600), 1024),
        )
    }

    fn point(n: u64) -> SupplyPoint {
        SupplyPoint {
            device: DeviceId(0x00db_0000_0000_0000 + n),
            phase: Phase::Whole,
        }
    }

    fn lost(n: u64, at: i64) -> DeviceEvent {
        DeviceEvent {
            key: EventKey(u128::from(n) << 64 | at as u128),
            point: point(n),
            mpan: None,
            kind: EventKind::Lost {
                lost_at: UtcMillis(T0 + at),
            },
        }
    }

    fn restored(n: u64, at: i64) -> DeviceEvent {
        DeviceEvent {
            key: EventKey(u128::from(n) << 64 | 1u128 << 63 | at as u128),
            point: point(n),
            mpan: None,
            kind: EventKind::Restored {
                restored_at: UtcMillis(T0 + at),
                lost_at: None,
            },
        }
    }

    fn record(arrival: i64, events: Vec<DeviceEvent>) -> EventRecord {
        EventRecord {
            arrival: UtcMillis(T0 + arrival),
            received: UtcMillis(T0 + arrival),
            events,
        }
    }

    #[test]
    fn a_timer_fires_at_its_due_time_and_before_a_later_record() {
        let records = [
            record(0, vec![lost(1, 0)]),
            record(DEBOUNCE_MS + 5_000, vec![restored(1, DEBOUNCE_MS + 4_000)]),
        ];
        let alerts = replay(&mut state(), &records, UtcMillis(T0 + 10 * DEBOUNCE_MS));
        let fired: Vec<(AlertKind, i64)> = alerts
            .iter()
            .map(|alert| (alert.kind, alert.emitted_at.0 - T0))
            .collect();
        assert_eq!(
            fired,
            [
                (AlertKind::Outage, DEBOUNCE_MS),
                (AlertKind::Restoration, DEBOUNCE_MS + 5_000)
            ]
        );
    }

    #[test]
    fn the_clock_stops_at_the_end_and_a_short_outage_gives_nothing() {
        let records = [
            record(0, vec![lost(1, 0), lost(2, 0)]),
            record(1_000, vec![restored(2, 900)]),
        ];
        let before_due = replay(&mut state(), &records, UtcMillis(T0 + DEBOUNCE_MS - 1));
        assert!(before_due.is_empty(), "{before_due:?}");
        let at_due = replay(&mut state(), &records, UtcMillis(T0 + DEBOUNCE_MS));
        assert_eq!(at_due.len(), 1, "{at_due:?}");
        assert_eq!(at_due[0].point, point(1));
    }

    #[test]
    fn a_repeated_event_decides_nothing_twice() {
        let records = [
            record(0, vec![lost(1, 0)]),
            record(10, vec![lost(1, 0)]),
            record(DEBOUNCE_MS + 10, vec![restored(1, DEBOUNCE_MS + 5)]),
            record(DEBOUNCE_MS + 20, vec![restored(1, DEBOUNCE_MS + 5)]),
        ];
        let alerts = replay(&mut state(), &records, UtcMillis(T0 + 10 * DEBOUNCE_MS));
        assert_eq!(alerts.len(), 2, "one POA, one PRA: {alerts:?}");
    }
}
