//! The outage state machine of DOMAIN.md, one instance per shard, pure and synchronous.
//!
//! Per supply point: `Idle` (absent from the map) → `Pending(t0)` on a loss, with a timer at
//! `t0 + debounce`; `Pending` → `Idle` on a restoration before the timer (a short
//! interruption, no alert); `Pending` → `Alerted` when the timer fires (POA); `Alerted` →
//! `Idle` on restoration (PRA). A restoration that carries its own `t0` for an outage the
//! machine never saw emits POA (learned late) then PRA when the outage reached the debounce.
//!
//! Events arrive late, out of order and duplicated. Closed outages leave a *tombstone* (the
//! restoration time) for `tombstone_ttl`, so a loss or restoration that predates the last
//! restoration is recognised as stale instead of reopening an outage that already ended.
//! Timers are never cancelled: a timer that fires for a point no longer pending at that due
//! time is ignored, which keeps the timer queue to inserts and expiries.
//!
//! "Now" is always the partition's log time (see `crate::log`), never a clock read here, so
//! the same events give the same decisions live and in a replay. A loss whose debounce had
//! already elapsed when it arrived does not alert by itself: it arms a timer that is already
//! due, and the owner fires it once the rest of the record is applied, so that a restoration
//! in the same record showing a short interruption closes it first.

use std::collections::VecDeque;

use foldhash::HashMap;
use foldhash::HashMapExt as _;
use std::time::Duration;

use super::open_table::OpenOutages;
use crate::domain::{Alert, AlertKind, DeviceEvent, EventKind, MpanCore, SupplyPoint, UtcMillis};

/// When an event reached the relay, and the log time at which it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Relay time the ingest call received the event (decides breach causes).
    pub received: UtcMillis,
    /// The record's log time: decides what is due, and stamps what is emitted.
    pub now: UtcMillis,
}

/// The numbers the machine works to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Outages shorter than this produce no alert.
    pub debounce: Duration,
    /// POA deadline after its due time.
    pub poa_sla: Duration,
    /// PRA deadline after restoration.
    pub pra_sla: Duration,
    /// How long a closed outage's restoration time is remembered.
    pub tombstone_ttl: Duration,
}

/// Whether an open outage has been alerted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageState {
    /// Debounce timer running.
    Pending,
    /// POA emitted.
    Alerted,
}

/// An outage that has not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOutage {
    /// Device-reported start.
    pub lost_at: UtcMillis,
    /// When the relay received the loss event.
    pub received_at: UtcMillis,
    /// Pending or alerted.
    pub state: OutageState,
    /// MPAN core carried by the loss event.
    pub mpan: Option<MpanCore>,
}

/// What one event did, for counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A loss opened an outage; its timer is armed.
    Opened,
    /// A loss whose debounce had already elapsed when it arrived: its timer fires (and the
    /// POA goes out) right after the record, unless the record also ends the outage short.
    AlertedAtOnce,
    /// A loss for a supply point already in outage: nothing changes.
    AlreadyOpen,
    /// A restoration within the debounce: no alert.
    ShortInterruption,
    /// A restoration after a POA (or one due): PRA emitted.
    Restored,
    /// A restoration carrying an outage the relay never saw: POA then PRA emitted.
    LearnedLate,
    /// A restoration with no known outage and no start time: nothing changes.
    Unmatched,
    /// About an outage that already ended (older than its last restoration): ignored.
    Stale,
    /// Same device and event id seen before: nothing changes.
    Duplicate,
}

impl Outcome {
    /// Every outcome, for pre-registering metric handles.
    pub const ALL: [Self; 9] = [
        Self::Opened,
        Self::AlertedAtOnce,
        Self::AlreadyOpen,
        Self::ShortInterruption,
        Self::Restored,
        Self::LearnedLate,
        Self::Unmatched,
        Self::Stale,
        Self::Duplicate,
    ];

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::AlertedAtOnce => "alerted_at_once",
            Self::AlreadyOpen => "already_open",
            Self::ShortInterruption => "short_interruption",
            Self::Restored => "restored",
            Self::LearnedLate => "learned_late",
            Self::Unmatched => "unmatched",
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
        }
    }
}

/// A closed outage's restoration time, kept to refuse stale events about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// The supply point.
    pub point: SupplyPoint,
    /// When it was restored (device time).
    pub restored_at: UtcMillis,
    /// When the relay closed it (relay time; expiry counts from here).
    pub closed_at: UtcMillis,
}

/// Everything the machine asks its driver to do; drained by the driver after each record.
#[derive(Debug, Default)]
pub struct Effects {
    /// Timers to arm: `(point, due_at)`.
    pub timers: Vec<(SupplyPoint, UtcMillis)>,
    /// Alerts to route and deliver, in emission order.
    pub alerts: Vec<Alert>,
}

impl Effects {
    /// Empties every list, keeping capacity.
    pub fn clear(&mut self) {
        self.timers.clear();
        self.alerts.clear();
    }
}

/// The state machine for every supply point of one shard.
#[derive(Debug)]
pub struct Debouncer {
    settings: Settings,
    open: OpenOutages,
    tombstones: HashMap<SupplyPoint, UtcMillis>,
    tombstone_expiry: VecDeque<(UtcMillis, SupplyPoint, UtcMillis)>,
    pending: usize,
}

impl Debouncer {
    /// An empty machine.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            open: OpenOutages::new(),
            tombstones: HashMap::new(),
            tombstone_expiry: VecDeque::new(),
            pending: 0,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Applies one event the relay received at `at.received` and processes at `at.now`.
    pub fn on_event(&mut self, event: &DeviceEvent, at: Arrival, effects: &mut Effects) -> Outcome {
        match event.kind {
            EventKind::Lost { lost_at } => {
                self.on_lost(event.point, lost_at, event.mpan, at, effects)
            }
            EventKind::Restored {
                restored_at,
                lost_at,
            } => self.on_restored(event.point, restored_at, lost_at, event.mpan, at, effects),
        }
    }

    /// Re-opens an outage read back from the store at start; returns the due time of the
    /// timer to arm if it is still pending (an overdue one fires as soon as it is armed).
    pub fn restore(&mut self, point: SupplyPoint, outage: OpenOutage) -> Option<UtcMillis> {
        if self.open.insert(point, outage).is_some() {
            return None;
        }
        (outage.state == OutageState::Pending).then(|| {
            self.pending += 1;
            outage.lost_at.plus(self.settings.debounce)
        })
    }

    /// A debounce timer armed for `due_at` fired at `now`. Returns whether it emitted a POA.
    pub fn on_timer(
        &mut self,
        point: SupplyPoint,
        due_at: UtcMillis,
        now: UtcMillis,
        effects: &mut Effects,
    ) -> bool {
        let debounce = self.settings.debounce;
        let fired = self.open.update(&point, |outage| {
            let due =
                outage.state == OutageState::Pending && outage.lost_at.plus(debounce) == due_at;
            if due {
                outage.state = OutageState::Alerted;
            }
            due.then_some(*outage)
        });
        let Some(Some(outage)) = fired else {
            return false;
        };
        self.pending -= 1;
        effects.alerts.push(self.poa(point, &outage, now, false));
        true
    }

    /// Forgets tombstones older than `tombstone_ttl`.
    pub fn expire_tombstones(&mut self, now: UtcMillis) {
        while let Some(&(closed_at, point, restored_at)) = self.tombstone_expiry.front() {
            if closed_at.plus(self.settings.tombstone_ttl) > now {
                break;
            }
            self.tombstone_expiry.pop_front();
            if self.tombstones.get(&point) == Some(&restored_at) {
                self.tombstones.remove(&point);
            }
        }
    }

    /// The open outage of `point`, if any.
    pub fn outage(&self, point: &SupplyPoint) -> Option<OpenOutage> {
        self.open.get(point)
    }

    /// Every tombstone still remembered, oldest first.
    pub fn tombstones(&self) -> impl Iterator<Item = Tombstone> + '_ {
        self.tombstone_expiry
            .iter()
            .filter(|(_, point, restored_at)| self.tombstones.get(point) == Some(restored_at))
            .map(|&(closed_at, point, restored_at)| Tombstone {
                point,
                restored_at,
                closed_at,
            })
    }

    /// Every open outage, in no particular order.
    pub fn outages(&self) -> impl ExactSizeIterator<Item = (SupplyPoint, OpenOutage)> + '_ {
        self.open.iter()
    }

    /// Makes room for `outages` more open outages at once (a restore knows how many).
    pub fn reserve(&mut self, outages: usize) {
        self.open.reserve(outages);
    }

    /// Outages whose timer is running.
    pub fn pending_count(&self) -> usize {
        self.pending
    }

    /// Open outages, pending or alerted.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn on_lost(
        &mut self,
        point: SupplyPoint,
        lost_at: UtcMillis,
        mpan: Option<MpanCore>,
        at: Arrival,
        effects: &mut Effects,
    ) -> Outcome {
        let now = at.now;
        if self.open.contains(&point) {
            return Outcome::AlreadyOpen;
        }
        if self
            .tombstones
            .get(&point)
            .is_some_and(|restored| lost_at <= *restored)
        {
            return Outcome::Stale;
        }
        let due_at = lost_at.plus(self.settings.debounce);
        let outage = OpenOutage {
            lost_at,
            received_at: at.received,
            state: OutageState::Pending,
            mpan,
        };
        self.pending += 1;
        effects.timers.push((point, due_at));
        self.open.insert(point, outage);
        if due_at <= now {
            Outcome::AlertedAtOnce
        } else {
            Outcome::Opened
        }
    }

    fn on_restored(
        &mut self,
        point: SupplyPoint,
        restored_at: UtcMillis,
        reported_lost_at: Option<UtcMillis>,
        mpan: Option<MpanCore>,
        at: Arrival,
        effects: &mut Effects,
    ) -> Outcome {
        let now = at.now;
        if self
            .tombstones
            .get(&point)
            .is_some_and(|last| restored_at <= *last)
        {
            return Outcome::Stale;
        }
        let Some(outage) = self.open.get(&point) else {
            return self.on_restored_idle(point, restored_at, reported_lost_at, mpan, at, effects);
        };
        if restored_at < outage.lost_at {
            return Outcome::Stale;
        }
        self.open.remove(&point);
        self.bury(point, restored_at, now);
        let reached_debounce = restored_at.since(outage.lost_at) >= self.settings.debounce;
        match outage.state {
            OutageState::Alerted => {}
            OutageState::Pending => {
                self.pending -= 1;
                if !reached_debounce {
                    return Outcome::ShortInterruption;
                }
                // The restoration proves the debounce elapsed before the timer fired
                // (device clock ahead of ours): the POA must still precede the PRA.
                effects.alerts.push(self.poa(point, &outage, now, false));
            }
        }
        effects
            .alerts
            .push(self.pra(point, &outage, restored_at, at, false));
        Outcome::Restored
    }

    fn on_restored_idle(
        &mut self,
        point: SupplyPoint,
        restored_at: UtcMillis,
        reported_lost_at: Option<UtcMillis>,
        mpan: Option<MpanCore>,
        at: Arrival,
        effects: &mut Effects,
    ) -> Outcome {
        self.bury(point, restored_at, at.now);
        let Some(lost_at) = reported_lost_at else {
            return Outcome::Unmatched;
        };
        if restored_at.since(lost_at) < self.settings.debounce {
            return Outcome::ShortInterruption;
        }
        let outage = OpenOutage {
            lost_at,
            received_at: at.received,
            state: OutageState::Alerted,
            mpan,
        };
        effects.alerts.push(self.poa(point, &outage, at.now, true));
        effects
            .alerts
            .push(self.pra(point, &outage, restored_at, at, true));
        Outcome::LearnedLate
    }

    fn bury(&mut self, point: SupplyPoint, restored_at: UtcMillis, now: UtcMillis) {
        self.restore_tombstone(Tombstone {
            point,
            restored_at,
            closed_at: now,
        });
    }

    /// Re-establishes a tombstone read back from the store; call in `closed_at` order.
    pub fn restore_tombstone(&mut self, tombstone: Tombstone) {
        let newest = self
            .tombstones
            .entry(tombstone.point)
            .or_insert(tombstone.restored_at);
        *newest = (*newest).max(tombstone.restored_at);
        self.tombstone_expiry.push_back((
            tombstone.closed_at,
            tombstone.point,
            tombstone.restored_at,
        ));
    }

    fn poa(
        &self,
        point: SupplyPoint,
        outage: &OpenOutage,
        now: UtcMillis,
        learned_late: bool,
    ) -> Alert {
        let due_at = outage.lost_at.plus(self.settings.debounce);
        Alert {
            kind: AlertKind::Outage,
            point,
            lost_at: outage.lost_at,
            restored_at: None,
            due_at,
            deadline: due_at.plus(self.settings.poa_sla),
            emitted_at: now,
            received_at: outage.received_at,
            learned_late,
            event_mpan: outage.mpan,
        }
    }

    fn pra(
        &self,
        point: SupplyPoint,
        outage: &OpenOutage,
        restored_at: UtcMillis,
        at: Arrival,
        learned_late: bool,
    ) -> Alert {
        Alert {
            kind: AlertKind::Restoration,
            point,
            lost_at: outage.lost_at,
            restored_at: Some(restored_at),
            due_at: restored_at,
            deadline: restored_at.plus(self.settings.pra_sla),
            emitted_at: at.now,
            received_at: at.received,
            learned_late,
            event_mpan: outage.mpan,
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
