//! One partition's decisions, pure and synchronous: the outage state machine, its debounce
//! timers in due-time order, event-id de-duplication, and the rule that makes every decision
//! follow log time (see `crate::log`):
//!
//! 1. before a record is applied, every timer due at or before its arrival fires;
//! 2. its events are applied in order (a repeated event id changes nothing);
//! 3. timers it armed that were already due by its arrival fire last, so a loss reported
//!    after its debounce and the restoration showing it short, in one record, give nothing.
//!
//! Between records, [`PartitionState::advance`] fires timers up to a log time the caller
//! knows no earlier record can still follow. The timers are a [`DueQueue`] keyed by due
//! time: they fire by log time, not by a runtime's clock, and always in `(due time, supply
//! point)` order, so a replay decides what the live run decided.
//!
//! While noting is on ([`PartitionState::set_noting`]), each event that opens or closes an
//! outage also leaves a [`Note`] for storm summaries ([`PartitionState::take_notes`]).

use crate::debounce::dedup::EventIdWindow;
use crate::debounce::{Arrival, Debouncer, Effects, OpenOutage, Outcome, Settings, Tombstone};
use crate::domain::event::EventKey;
use crate::domain::{Alert, DeviceEvent, DeviceId, EventKind, SupplyPoint, UtcMillis};
use crate::log::EventRecord;
use crate::summary::{Change, Note};
use crate::timers::DueQueue;

/// What applying a record did, for the publisher's ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyReport {
    /// Events seen for the first time.
    pub accepted: u64,
    /// Events already seen.
    pub duplicates: u64,
}

impl ApplyReport {
    /// Both reports together.
    pub fn plus(self, other: Self) -> Self {
        Self {
            accepted: self.accepted + other.accepted,
            duplicates: self.duplicates + other.duplicates,
        }
    }
}

/// Events applied by kind (lost, restored) and [`Outcome`], for the counters.
pub type OutcomeCounts = [[u64; Outcome::ALL.len()]; 2];

/// A partition's state as a checkpoint keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    /// The log time reached.
    pub log_time: UtcMillis,
    /// Open outages (pending ones re-arm their timers at their original due times).
    pub outages: Vec<(SupplyPoint, OpenOutage)>,
    /// Tombstones, oldest first.
    pub tombstones: Vec<Tombstone>,
    /// Event keys in the de-duplication window, oldest first.
    pub seen: Vec<(UtcMillis, EventKey)>,
}

/// The decisions of one partition.
#[derive(Debug)]
pub struct PartitionState {
    machine: Debouncer,
    timers: DueQueue<SupplyPoint>,
    dedup: EventIdWindow,
    log_time: UtcMillis,
    effects: Effects,
    /// Notes for summaries since the last take; `None` while noting is off.
    notes: Option<Vec<Note>>,
}

impl PartitionState {
    /// An empty partition.
    pub fn new(settings: Settings, dedup: EventIdWindow) -> Self {
        Self {
            machine: Debouncer::new(settings),
            timers: DueQueue::new(),
            dedup,
            log_time: UtcMillis(i64::MIN),
            effects: Effects::default(),
            notes: None,
        }
    }

    /// A partition rebuilt from a checkpoint: timers come back at their original due times.
    pub fn restore(settings: Settings, dedup: EventIdWindow, saved: Saved) -> Self {
        let mut state = Self::new(settings, dedup);
        state.log_time = saved.log_time;
        state.machine.reserve(saved.outages.len());
        state.dedup.reserve(saved.seen.len());
        for (point, outage) in saved.outages {
            if let Some(due_at) = state.machine.restore(point, outage) {
                state.timers.insert(due_at, point);
            }
        }
        for tombstone in saved.tombstones {
            state.machine.restore_tombstone(tombstone);
        }
        for (seen_at, key) in saved.seen {
            state.dedup.restore(key, seen_at);
        }
        state
    }

    /// Every open outage, in no particular order (a checkpoint keeps them).
    pub fn open_outages(&self) -> impl ExactSizeIterator<Item = (SupplyPoint, OpenOutage)> + '_ {
        self.machine.outages()
    }

    /// Every tombstone still remembered, oldest first (a checkpoint keeps them).
    pub fn tombstones(&self) -> impl Iterator<Item = Tombstone> + '_ {
        self.machine.tombstones()
    }

    /// Event keys in the de-duplication window, oldest first (a checkpoint keeps them).
    pub fn seen(&self) -> impl ExactSizeIterator<Item = (UtcMillis, EventKey)> + '_ {
        self.dedup.entries()
    }

    /// The log time reached: the latest record arrival or [`PartitionState::advance`].
    pub fn log_time(&self) -> UtcMillis {
        self.log_time
    }

    /// Applies `record` by the rule of the module doc. The events that were new are pushed to
    /// `accepted` when given (the owner logs only those); outcomes are added to `counts`.
    pub fn apply(
        &mut self,
        record: &EventRecord,
        mut accepted: Option<&mut Vec<DeviceEvent>>,
        counts: &mut OutcomeCounts,
    ) -> ApplyReport {
        let now = record.arrival.max(self.log_time);
        self.advance(now);
        self.machine.expire_tombstones(now);
        let at = Arrival {
            received: record.received,
            now,
        };
        let mut report = ApplyReport::default();
        for event in &record.events {
            let restored = usize::from(matches!(event.kind, EventKind::Restored { .. }));
            let outcome = if self.dedup.insert(event.key, now) {
                report.accepted += 1;
                if let Some(accepted) = accepted.as_deref_mut() {
                    accepted.push(*event);
                }
                let outcome = self.machine.on_event(event, at, &mut self.effects);
                if let (Some(notes), Some(change)) = (&mut self.notes, Change::of(outcome)) {
                    notes.push(Note {
                        point: event.point,
                        mpan: event.mpan,
                        at: now,
                        change,
                    });
                }
                outcome
            } else {
                report.duplicates += 1;
                Outcome::Duplicate
            };
            counts[restored][outcome as usize] += 1;
        }
        self.arm();
        self.advance(now);
        report
    }

    /// Fires every timer due at or before `to`; log time moves to `to` (never back).
    pub fn advance(&mut self, to: UtcMillis) {
        self.advance_at_most(to, usize::MAX);
    }

    /// Like [`PartitionState::advance`], firing at most `max` timers (in the same order, so
    /// firing in several steps decides what firing at once does); whether timers due by
    /// `to` are left.
    pub fn advance_at_most(&mut self, to: UtcMillis, max: usize) -> bool {
        self.log_time = self.log_time.max(to);
        for _ in 0..max {
            let Some((due_at, point)) = self.timers.pop_due(self.log_time) else {
                return false;
            };
            let fired_at = self.log_time;
            self.machine
                .on_timer(point, due_at, fired_at, &mut self.effects);
        }
        self.timers
            .next_due()
            .is_some_and(|due| due <= self.log_time)
    }

    /// Due time of the earliest timer still armed.
    pub fn next_due(&self) -> Option<UtcMillis> {
        self.timers.next_due()
    }

    /// Turns noting for summaries on or off (off: nothing is kept).
    pub fn set_noting(&mut self, on: bool) {
        self.notes = on.then(Vec::new);
    }

    /// The notes of the events applied since the last call, in order.
    pub fn take_notes(&mut self) -> Vec<Note> {
        self.notes.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Alerts emitted since the last call, in emission order.
    pub fn take_alerts(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.effects.alerts)
    }

    /// Open outages of `device` (all devices when `None`), oldest first: at most `limit`, and
    /// how many match in all.
    pub fn outages(
        &self,
        device: Option<DeviceId>,
        limit: usize,
    ) -> (Vec<(SupplyPoint, OpenOutage)>, u64) {
        let mut matching: Vec<(SupplyPoint, OpenOutage)> = self
            .machine
            .outages()
            .filter(|(point, _)| device.is_none_or(|d| point.device == d))
            .collect();
        let total = matching.len() as u64;
        if matching.len() > limit {
            matching.select_nth_unstable_by_key(limit, |(point, outage)| (outage.lost_at, *point));
            matching.truncate(limit);
        }
        matching.sort_unstable_by_key(|(point, outage)| (outage.lost_at, *point));
        (matching, total)
    }

    /// Outages whose timer is running.
    pub fn pending_count(&self) -> usize {
        self.machine.pending_count()
    }

    /// Open outages, pending or alerted.
    pub fn open_count(&self) -> usize {
        self.machine.open_count()
    }

    /// Timers the machine asked for, into the queue.
    fn arm(&mut self) {
        for (point, due_at) in self.effects.timers.drain(..) {
            self.timers.insert(due_at, point);
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
