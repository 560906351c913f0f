//! The scenario model: scripted outages compressed onto the wall clock, the events to send
//! and when, and the alerts the relay must send, must not send, or may send.
//!
//! ## Time
//!
//! With `--time-scale S`, scenario time is divided by `S`: debounce and both SLA windows
//! (3 min, 60 s) become `180 s / S` and `60 s / S` (rounded to the millisecond), and an event
//! `t` into the scenario is sent `t / S` after the scenario starts, carrying that moment as
//! its device time, so device timestamps are real wall-clock times. All times here are
//! milliseconds from the run's start (`T0`); the scenario starts [`LEAD_IN_MS`] after it.
//!
//! ## Expected alerts
//!
//! Decided on the compressed device times with the relay's own rule, per outage of length
//! `d = restored_at - lost_at` (open outages have none):
//! - open, or `d ≥ debounce`: a POA is **required** (by its timer, at once for a loss that
//!   arrives after its due time, or proven by the restoration), and a PRA if restored;
//! - `d < debounce`, learned only from the restoration: **forbidden** (the restoration
//!   itself says it was short);
//! - `d < debounce` with a reported loss: forbidden if the restoration was acknowledged by
//!   the relay at least [`MARGIN_MS`] before `lost_at + debounce` (it was applied before the
//!   timer could fire); otherwise the outcome depends on timing (a late restoration loses the
//!   race with the timer, and a POA then a PRA are correct) and **either** is accepted, as
//!   long as a PRA comes with a POA and not without one. Such outages are counted.
//!
//! Every alert must go to the subscriber owning the supply's distributor ID (IDNOs: the
//! owner of the host area of the supply's GSP group, unless a subscriber lists the ID).

use super::rng::Rng;
use super::scenario::{DEBOUNCE_MS, OutageSpec, Plan, Preset};

/// Wall time between the run's start and the scenario's start (subscribers connect).
pub const LEAD_IN_MS: i64 = 1_000;
/// How long before a POA's due time a short outage's restoration must have been
/// acknowledged for the POA to be forbidden rather than timing-dependent.
pub const MARGIN_MS: i64 = 50;

/// The SEC windows, before compression.
const SLA_WINDOW_MS: i64 = 60_000;

/// Debounce and SLA windows on the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Timing {
    /// Scenario time ÷ this = wall time.
    pub scale: f64,
    /// The relay's `--debounce`, ms.
    pub debounce_ms: i64,
    /// The relay's `--poa-sla`, ms.
    pub poa_window_ms: i64,
    /// The relay's `--pra-sla`, ms.
    pub pra_window_ms: i64,
}

impl Timing {
    /// 3 min and 60 s divided by `scale` (≥ 1 ms each).
    pub fn compressed(scale: f64) -> Self {
        let scaled = |ms: i64| ((ms as f64 / scale).round() as i64).max(1);
        Self {
            scale,
            debounce_ms: scaled(DEBOUNCE_MS),
            poa_window_ms: scaled(SLA_WINDOW_MS),
            pra_window_ms: scaled(SLA_WINDOW_MS),
        }
    }

    /// Wall offset from the run's start of scenario time `ms`.
    pub fn wall(&self, ms: i64) -> i64 {
        LEAD_IN_MS + (ms as f64 / self.scale).round() as i64
    }

    /// A scenario duration on the wall clock.
    pub fn span(&self, ms: i64) -> i64 {
        (ms as f64 / self.scale).round() as i64
    }
}

/// One outage on the wall clock (ms from `T0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// Device (fleet index).
    pub device: u32,
    /// Device time supply was lost.
    pub lost_at: i64,
    /// Device time supply came back, if it did.
    pub restored_at: Option<i64>,
    /// Whether the loss is reported (else learned from the restoration).
    pub loss_reported: bool,
    /// The preset that scripted it.
    pub preset: Preset,
}

/// Loss or restoration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Supply lost at the outage's `lost_at`.
    Lost,
    /// Supply restored at its `restored_at`, carrying `lost_at`.
    Restored,
}

/// One send of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// When to send it (ms from `T0`).
    pub send_at: i64,
    /// The outage it belongs to.
    pub outage: u32,
    /// Loss or restoration.
    pub kind: EventKind,
    /// False for the repeated sends of `duplicates`.
    pub first: bool,
}

/// What the relay is expected to do about one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Must be delivered.
    Required,
    /// Must not be delivered.
    Forbidden,
    /// Depends on timing (see the module doc); either is correct.
    Either,
}

/// The compressed scenario.
#[derive(Debug, Clone)]
pub struct Model {
    /// Debounce and windows.
    pub timing: Timing,
    /// Every outage.
    pub outages: Vec<Outage>,
    /// Every send, ordered by `send_at`.
    pub events: Vec<Event>,
    /// `(lost_at, outage)` of every outage, by device then `lost_at`, to find an alert's
    /// outage: a device's are `index[starts[device]..starts[device + 1]]` (two memory reads
    /// per alert received, where a binary search over a million made twenty).
    index: Vec<(i64, u32)>,
    starts: Vec<u32>,
}

impl Model {
    /// Compresses `plan` with `timing`; `seed` places the repeated sends of `duplicates`.
    pub fn build(plan: &Plan, timing: Timing, seed: u64) -> Self {
        let mut rng = Rng::fork(seed, 0xd0b1e);
        let mut outages = Vec::with_capacity(plan.outages.len());
        let mut events = Vec::with_capacity(plan.outages.len() * 2);
        for (n, spec) in (0u32..).zip(&plan.outages) {
            let outage = compress(spec, &timing);
            let mut send = |at: i64, kind| {
                let copies = if plan.copies > 1 {
                    plan.copies + u32::from(rng.chance(0.25))
                } else {
                    1
                };
                for copy in 0..copies {
                    let delay = match copy {
                        0 | 1 => 0,
                        _ => timing.span(rng.range(1_000, 30_000)),
                    };
                    events.push(Event {
                        send_at: at + delay,
                        outage: n,
                        kind,
                        first: copy == 0,
                    });
                }
            };
            if outage.loss_reported {
                send(outage.lost_at, EventKind::Lost);
            }
            if let Some(restored_at) = outage.restored_at {
                let delay = timing.span(spec.report_delay);
                send(restored_at + delay, EventKind::Restored);
            }
            outages.push(outage);
        }
        events.sort_by_key(|e| (e.send_at, e.outage, e.kind == EventKind::Restored, !e.first));
        let mut sorted: Vec<(u32, i64, u32)> = (0u32..)
            .zip(&outages)
            .map(|(n, o)| (o.device, o.lost_at, n))
            .collect();
        sorted.sort_unstable();
        let devices = sorted
            .last()
            .map_or(0, |(device, _, _)| *device as usize + 1);
        let mut starts = vec![0u32; devices + 1];
        for (device, _, _) in &sorted {
            starts[*device as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let index = sorted
            .into_iter()
            .map(|(_, lost_at, n)| (lost_at, n))
            .collect();
        Self {
            timing,
            outages,
            events,
            index,
            starts,
        }
    }

    /// The outage of `device` that started at `lost_at`, if the scenario has one.
    pub fn find(&self, device: u32, lost_at: i64) -> Option<u32> {
        let device = device as usize;
        let (start, end) = (*self.starts.get(device)?, *self.starts.get(device + 1)?);
        self.index
            .get(start as usize..end as usize)?
            .iter()
            .find(|(at, _)| *at == lost_at)
            .map(|(_, n)| *n)
    }

    /// The POA expectation of `outage`, given when its restoration was acknowledged.
    pub fn poa(&self, outage: &Outage, restore_acked: Option<i64>) -> Expect {
        let Some(restored_at) = outage.restored_at else {
            return Expect::Required;
        };
        let due = outage.lost_at + self.timing.debounce_ms;
        if restored_at >= due {
            Expect::Required
        } else if !outage.loss_reported
            || restore_acked.is_some_and(|acked| acked < due - MARGIN_MS)
        {
            Expect::Forbidden
        } else {
            Expect::Either
        }
    }

    /// The PRA expectation of `outage`, given its POA's.
    pub fn pra(&self, outage: &Outage, poa: Expect) -> Expect {
        if outage.restored_at.is_none() {
            Expect::Forbidden
        } else {
            poa
        }
    }

    /// Alerts that are required whatever the timing: `(POAs, PRAs)`.
    pub fn surely_required(&self) -> (u64, u64) {
        self.outages.iter().fold((0, 0), |(poa, pra), o| {
            let due = o.lost_at + self.timing.debounce_ms;
            let long = o.restored_at.is_none_or(|r| r >= due);
            (
                poa + u64::from(long),
                pra + u64::from(long && o.restored_at.is_some()),
            )
        })
    }

    /// The last moment anything is sent or falls due (ms from `T0`).
    pub fn last_moment(&self) -> i64 {
        let due = self
            .outages
            .iter()
            .map(|o| (o.lost_at + self.timing.debounce_ms).max(o.restored_at.unwrap_or(i64::MIN)));
        let sent = self.events.last().map(|e| e.send_at);
        due.chain(sent).max().unwrap_or(LEAD_IN_MS)
    }

    /// The most outages open at once as the relay sees them (loss sent, restoration not).
    pub fn max_open(&self) -> u64 {
        let (mut open, mut max) = (0i64, 0i64);
        for event in self.events.iter().filter(|e| e.first) {
            let outage = &self.outages[event.outage as usize];
            match event.kind {
                EventKind::Lost => open += 1,
                EventKind::Restored if outage.loss_reported => open -= 1,
                EventKind::Restored => {}
            }
            max = max.max(open);
        }
        u64::try_from(max).unwrap_or(0)
    }
}

fn compress(spec: &OutageSpec, timing: &Timing) -> Outage {
    let lost_at = timing.wall(spec.lost_at);
    Outage {
        device: spec.device,
        lost_at,
        // Never at or before the loss once rounded.
        restored_at: spec.restored_at.map(|r| timing.wall(r).max(lost_at + 1)),
        loss_reported: spec.loss_reported,
        preset: spec.preset,
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
