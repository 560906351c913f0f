//! The model check: every alert the subscribers received against the scenario model.
//!
//! Per scripted outage and alert kind, with the expectation of [`super::model`]:
//! - a **required** alert not received is *missing*; a **forbidden** one received is
//!   *unexpected*, and so is any alert that matches no scripted outage; for a
//!   timing-dependent outage a PRA must come with a POA and not without one;
//! - an alert received again is *duplicated* (a re-delivery: tolerated, counted); one received
//!   again with another sequence number was emitted twice (*double-emitted*, a failure);
//! - a received alert must be at its supply's subscriber (else *misrouted*), carry the
//!   expected `learned_late`, `due_at` (`lost_at + debounce`, or `restored_at`) and
//!   `deadline` (`due_at` + window) (else *wrong fields*), and a PRA must not arrive before its
//!   POA (*out of order*);
//! - no event may be rejected and no alert parked.

use super::fleet::Fleet;
use super::model::{Expect, Model, Outage};
use super::publisher::Tracker;
use super::relay::SubscriberInfo;
use super::subscriber::{NO_OUTAGE, Receipt, Received};
use crate::domain::AlertKind;

/// Failures described in the report, at most.
const EXAMPLES_KEPT: usize = 30;

/// Which subscriber owns each distributor ID, as the relay is configured.
#[derive(Debug, Clone)]
pub struct Routes {
    owner: [Option<u8>; 100],
}

impl Routes {
    /// From the relay's subscriber list (in its order: the first listing an ID owns it).
    pub fn new(subscribers: &[SubscriberInfo]) -> Self {
        let mut owner = [None; 100];
        for (index, sub) in (0u8..).zip(subscribers) {
            for id in &sub.distributor_ids {
                if let Some(slot @ None) = owner.get_mut(usize::from(*id)) {
                    *slot = Some(index);
                }
            }
        }
        Self { owner }
    }

    /// The subscriber index expected to receive the alerts of device `device`.
    pub fn of(&self, fleet: &Fleet, device: u32) -> Option<u8> {
        let supply = fleet.supply(device)?;
        let distributor = usize::from(supply.distributor().0);
        let host = usize::from(supply.gsp.host_distributor().0);
        self.owner
            .get(distributor)
            .copied()
            .flatten()
            .or_else(|| self.owner.get(host).copied().flatten())
    }
}

/// One expected alert as delivered (first receipt), for the measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// POA or PRA.
    pub kind: AlertKind,
    /// Subscriber index.
    pub subscriber: u8,
    /// Received (ms from the run's start).
    pub received: i64,
    /// The alert's `due_at`.
    pub due: i64,
    /// The alert's `deadline`.
    pub deadline: i64,
    /// First send of the event that made it due, if it was sent.
    pub trigger_sent: Option<i64>,
}

/// The outcome of the model check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Check {
    /// Alerts the model required (timing-dependent ones that were alerted included).
    pub expected: u64,
    /// Distinct alerts received.
    pub received: u64,
    /// Required and never received.
    pub missing: u64,
    /// Received though forbidden or not scripted.
    pub unexpected: u64,
    /// Extra receipts of an alert already received (re-deliveries).
    pub duplicated: u64,
    /// Alerts received again under another sequence number.
    pub double_emitted: u64,
    /// Received by the wrong subscriber.
    pub misrouted: u64,
    /// With a wrong `learned_late`, `due_at` or `deadline`.
    pub wrong_fields: u64,
    /// PRAs received before their POA.
    pub out_of_order: u64,
    /// Short outages whose outcome depended on timing (either accepted)...
    pub timing_dependent: u64,
    /// ...and how many of them were alerted.
    pub timing_dependent_alerted: u64,
    /// Events the relay rejected.
    pub rejected_events: u64,
    /// Alerts parked at the end (`None`: could not ask).
    pub parked: Option<u64>,
    /// Failures, described (the first few).
    pub examples: Vec<String>,
    /// Whether the relay did exactly what the model says.
    pub passed: bool,
}

/// The check, and the expected alerts as delivered.
pub fn check(
    model: &Model,
    fleet: &Fleet,
    routes: &Routes,
    received: &[Received],
    tracker: &Tracker,
    parked: Option<u64>,
) -> (Check, Vec<Delivery>) {
    let mut check = Check {
        rejected_events: tracker.rejected.load(std::sync::atomic::Ordering::Relaxed),
        parked,
        ..Check::default()
    };
    let fail = |check: &mut Check, what: String| {
        if check.examples.len() < EXAMPLES_KEPT {
            check.examples.push(what);
        }
    };
    // Per outage and kind: the first receipt, packed as (subscriber << 40 | index) + 1.
    let mut first = vec![[0u64; 2]; model.outages.len()];
    for (sub, got) in (0u64..).zip(received) {
        for unknown in &got.unknown {
            fail(&mut check, format!("unexpected (not scripted): {unknown}"));
        }
        for (index, receipt) in (0u64..).zip(&got.receipts) {
            if receipt.outage == NO_OUTAGE {
                check.unexpected += 1;
                continue;
            }
            let slot = &mut first[receipt.outage as usize][kind_index(receipt.kind)];
            if *slot == 0 {
                *slot = ((sub << 40) | index) + 1;
                check.received += 1;
                continue;
            }
            check.duplicated += 1;
            let earlier = unpack(received, *slot);
            if earlier.is_some_and(|(s, r)| s != sub as usize || r.sequence != receipt.sequence) {
                check.double_emitted += 1;
                fail(&mut check, format!("emitted twice: {receipt:?}"));
            }
        }
    }
    let mut deliveries = Vec::with_capacity(usize::try_from(check.received).unwrap_or(0));
    for (n, outage) in (0u32..).zip(&model.outages) {
        let acked = Tracker::get(&tracker.restore_acked, n);
        let mut poa = model.poa(outage, acked);
        let got = |kind| unpack(received, first[n as usize][kind_index(kind)]);
        let (poa_got, pra_got) = (got(AlertKind::Outage), got(AlertKind::Restoration));
        if poa == Expect::Either {
            check.timing_dependent += 1;
            check.timing_dependent_alerted += u64::from(poa_got.is_some());
            poa = if poa_got.is_some() {
                Expect::Required
            } else {
                Expect::Forbidden
            };
        }
        let pra = model.pra(outage, poa);
        for (kind, expect, got) in [
            (AlertKind::Outage, poa, poa_got),
            (AlertKind::Restoration, pra, pra_got),
        ] {
            let what = || format!("{} of outage {n} {outage:?}", kind.as_str());
            match (expect, got) {
                (Expect::Required, None) => {
                    check.missing += 1;
                    fail(&mut check, format!("missing: {}", what()));
                }
                (Expect::Forbidden, Some(_)) => {
                    check.unexpected += 1;
                    fail(&mut check, format!("unexpected: {}", what()));
                }
                (Expect::Required, Some((sub, receipt))) => {
                    check.expected += 1;
                    let problems = problems(model, fleet, routes, outage, sub, receipt);
                    if problems.misrouted {
                        check.misrouted += 1;
                        fail(&mut check, format!("misrouted to #{sub}: {}", what()));
                    }
                    if problems.wrong_fields {
                        check.wrong_fields += 1;
                        fail(&mut check, format!("wrong fields {receipt:?}: {}", what()));
                    }
                    deliveries.push(Delivery {
                        kind,
                        subscriber: u8::try_from(sub).unwrap_or(u8::MAX),
                        received: receipt.received,
                        due: receipt.due,
                        deadline: receipt.deadline,
                        trigger_sent: trigger_sent(tracker, n, outage, kind),
                    });
                }
                _ => check.expected += u64::from(expect == Expect::Required),
            }
        }
        if let (Some((a, poa)), Some((b, pra))) = (poa_got, pra_got)
            && a == b
            && pra.sequence < poa.sequence
        {
            check.out_of_order += 1;
            fail(&mut check, format!("PRA before its POA: outage {n}"));
        }
    }
    check.passed = check.missing == 0
        && check.unexpected == 0
        && check.double_emitted == 0
        && check.misrouted == 0
        && check.wrong_fields == 0
        && check.out_of_order == 0
        && check.rejected_events == 0
        && check.parked.unwrap_or(0) == 0;
    (check, deliveries)
}

fn kind_index(kind: AlertKind) -> usize {
    match kind {
        AlertKind::Outage => 0,
        AlertKind::Restoration => 1,
    }
}

fn unpack(received: &[Received], packed: u64) -> Option<(usize, &Receipt)> {
    let value = packed.checked_sub(1)?;
    let sub = usize::try_from(value >> 40).ok()?;
    let index = usize::try_from(value & ((1 << 40) - 1)).ok()?;
    Some((sub, received.get(sub)?.receipts.get(index)?))
}

struct Problems {
    misrouted: bool,
    wrong_fields: bool,
}

fn problems(
    model: &Model,
    fleet: &Fleet,
    routes: &Routes,
    outage: &Outage,
    sub: usize,
    receipt: &Receipt,
) -> Problems {
    let timing = &model.timing;
    let (due, window) = match receipt.kind {
        AlertKind::Outage => (outage.lost_at + timing.debounce_ms, timing.poa_window_ms),
        AlertKind::Restoration => (outage.restored_at.unwrap_or(i64::MIN), timing.pra_window_ms),
    };
    Problems {
        misrouted: routes.of(fleet, outage.device).map(usize::from) != Some(sub),
        wrong_fields: receipt.learned_late == outage.loss_reported
            || receipt.due != due
            || receipt.deadline != due + window,
    }
}

/// When the event that made the alert due was first sent: the loss for a POA (the
/// restoration when the loss was never reported), the restoration for a PRA.
fn trigger_sent(tracker: &Tracker, n: u32, outage: &Outage, kind: AlertKind) -> Option<i64> {
    if kind == AlertKind::Outage && outage.loss_reported {
        Tracker::get(&tracker.loss_sent, n)
    } else {
        Tracker::get(&tracker.restore_sent, n)
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
