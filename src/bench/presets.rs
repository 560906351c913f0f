//! The preset generators behind [`super::scenario`]: each scripts its outages in scenario
//! time from its parameters and a seeded generator, on supplies taken from a shared pool (so
//! presets in a mix never share a supply). The module doc of [`super::scenario`] describes
//! their shapes.

use super::fleet::{AREA_WEIGHTS, Fleet, SUBSTATION_FEEDERS};
use super::rng::Rng;
use super::scenario::{DEBOUNCE_MS, OutageSpec, Preset};

/// A second of scenario time, ms.
pub const SECOND: i64 = 1_000;
/// A minute of scenario time, ms.
pub const MINUTE: i64 = 60 * SECOND;

/// Supplies not yet given to a preset, in a seeded random order.
pub struct Pool {
    devices: Vec<u32>,
    next: usize,
}

impl Pool {
    /// A pool of `devices`, in the order given.
    pub fn new(devices: Vec<u32>) -> Self {
        Self { devices, next: 0 }
    }

    /// The devices not taken yet.
    pub fn remaining(&self) -> &[u32] {
        &self.devices[self.next..]
    }

    /// Takes `n` devices satisfying `keep`, or fails naming `what`.
    pub fn take(
        &mut self,
        n: u64,
        what: &str,
        keep: impl Fn(u32) -> bool,
    ) -> anyhow::Result<Vec<u32>> {
        let n = usize::try_from(n)?;
        let start = self.next;
        for i in self.next..self.devices.len() {
            if self.next - start == n {
                break;
            }
            if keep(self.devices[i]) {
                self.devices.swap(i, self.next);
                self.next += 1;
            }
        }
        if self.next - start < n {
            anyhow::bail!(
                "{what} needs {n} supplies but only {} are left in the fleet: raise --devices",
                self.next - start
            );
        }
        Ok(self.devices[start..self.next].to_vec())
    }

    /// Takes the `n` devices satisfying `keep` with the smallest `key` (ties in pool order),
    /// or fails naming `what`.
    pub fn take_lowest<K: Ord>(
        &mut self,
        n: u64,
        what: &str,
        keep: impl Fn(u32) -> bool,
        key: impl Fn(u32) -> K,
    ) -> anyhow::Result<Vec<u32>> {
        let n = usize::try_from(n)?;
        let mut candidates: Vec<usize> = (self.next..self.devices.len())
            .filter(|i| keep(self.devices[*i]))
            .collect();
        if candidates.len() < n {
            anyhow::bail!(
                "{what} needs {n} supplies but only {} are left in the fleet: raise --devices",
                candidates.len()
            );
        }
        candidates.sort_by_key(|i| (key(self.devices[*i]), *i));
        candidates.truncate(n);
        // Swapping the chosen to the front, lowest position first, never moves one not yet
        // swapped: each goes to `next`, which is at or before every remaining candidate.
        candidates.sort_unstable();
        let start = self.next;
        for i in candidates {
            self.devices.swap(i, self.next);
            self.next += 1;
        }
        Ok(self.devices[start..self.next].to_vec())
    }
}

fn spec(device: u32, lost_at: i64, restored_at: Option<i64>, preset: Preset) -> OutageSpec {
    OutageSpec {
        device,
        lost_at,
        restored_at,
        loss_reported: true,
        report_delay: 0,
        preset,
    }
}

/// `steady`: Poisson outage starts at `rate` events/s over `duration`, on `devices`.
pub fn steady(
    devices: &[u32],
    rate: f64,
    duration: i64,
    rng: &mut Rng,
) -> anyhow::Result<(Vec<OutageSpec>, String)> {
    if !(rate > 0.0 && rate.is_finite()) {
        anyhow::bail!("--rate must be a positive number of events per second");
    }
    if devices.is_empty() {
        anyhow::bail!("steady has no supplies left in the fleet: raise --devices");
    }
    // About two events (loss, restoration) per outage.
    let mean_gap = 2_000.0 / rate;
    let mut free_at = vec![i64::MIN; devices.len()];
    let (mut outages, mut skipped, mut cursor) = (Vec::new(), 0u64, 0usize);
    let mut t = rng.exponential(mean_gap);
    while (t as i64) < duration {
        let lost_at = t as i64;
        t += rng.exponential(mean_gap);
        // The next supply that is on (and has been for a second), among the next few.
        let Some(slot) = (0..8)
            .map(|k| (cursor + k) % devices.len())
            .find(|slot| free_at[*slot].saturating_add(SECOND) <= lost_at)
        else {
            skipped += 1;
            continue;
        };
        cursor = (slot + 1) % devices.len();
        let length = if rng.chance(0.5) {
            rng.range(5 * SECOND, 170 * SECOND)
        } else {
            rng.log_uniform(210_000.0, 1_800_000.0) as i64
        };
        let restored_at = (lost_at + length < duration).then_some(lost_at + length);
        free_at[slot] = restored_at.unwrap_or(i64::MAX);
        outages.push(spec(devices[slot], lost_at, restored_at, Preset::Steady));
    }
    let mut description = format!(
        "steady: {} outages at about {rate} events/s over {}; half short interruptions \
         (5–170 s), half 3.5–30 min",
        outages.len(),
        human(duration)
    );
    if skipped > 0 {
        description.push_str(&format!(
            "; {skipped} skipped for want of a supply that was on"
        ));
    }
    Ok((outages, description))
}

/// `substation-trip`: `n` supplies of one area lost in one second, restored after
/// `restore_after`: whole substations and feeders of the area, in the fleet's feeder order,
/// as a trip takes out everything downstream.
pub fn substation(
    fleet: &Fleet,
    pool: &mut Pool,
    n: u64,
    restore_after: i64,
    rng: &mut Rng,
) -> anyhow::Result<(Vec<OutageSpec>, String)> {
    // One DNO area (its IDNO supplies included), drawn by weight among those big enough.
    let host = |device: u32| fleet.supply(device).map(|s| s.gsp.host_distributor().0);
    let mut free = [0u64; 100];
    for device in pool.remaining() {
        if let Some(area) = host(*device) {
            free[usize::from(area)] += 1;
        }
    }
    let weights: Vec<u64> = AREA_WEIGHTS
        .iter()
        .map(|(area, w)| if free[usize::from(*area)] >= n { *w } else { 0 })
        .collect();
    let area = (weights.iter().any(|w| *w > 0)).then(|| AREA_WEIGHTS[rng.weighted(&weights)].0);
    let place_of = |device: u32| {
        fleet
            .supply(device)
            .map(|s| (s.gsp.host_distributor().0, s.feeder))
    };
    let devices = match area {
        Some(area) => {
            pool.take_lowest(n, "substation-trip", |d| host(d) == Some(area), place_of)?
        }
        None => pool.take_lowest(n, "substation-trip", |_| true, place_of)?,
    };
    let mut feeders: Vec<(u8, u32)> = devices.iter().filter_map(|d| place_of(*d)).collect();
    feeders.sort_unstable();
    feeders.dedup();
    let substations = {
        let mut stations: Vec<(u8, u32)> = feeders
            .iter()
            .map(|(area, feeder)| (*area, feeder / SUBSTATION_FEEDERS))
            .collect();
        stations.dedup();
        stations.len()
    };
    let outages = devices
        .iter()
        .map(|device| OutageSpec {
            report_delay: rng.range(0, 30 * SECOND),
            ..spec(
                *device,
                rng.range(0, SECOND),
                Some(restore_after),
                Preset::SubstationTrip,
            )
        })
        .collect();
    let place = area.map_or_else(|| "across the fleet".to_owned(), |a| format!("in area {a}"));
    Ok((
        outages,
        format!(
            "substation-trip: {n} supplies {place} ({substations} substations, {} feeders) lost \
             within one second; restored after {}, reported after a random device delay of \
             0–30 s",
            feeders.len(),
            human(restore_after)
        ),
    ))
}

/// `storm`: feeder clusters and lone supplies lost over the first twelfth of
/// `restore_span`, restored over all of it.
pub fn storm(devices: &[u32], restore_span: i64, rng: &mut Rng) -> (Vec<OutageSpec>, String) {
    let loss_span = (restore_span / 12).max(1);
    let clustered = devices.len() * 7 / 10;
    let (mut outages, mut at, mut clusters) = (Vec::with_capacity(devices.len()), 0usize, 0u64);
    while at < devices.len() {
        let size = if at < clustered {
            (rng.log_uniform(50.0, 2_000.0) as usize).max(1)
        } else {
            1
        };
        let members = &devices[at..(at + size).min(devices.len())];
        at += members.len();
        clusters += u64::from(size > 1);
        // Triangular over the loss span: the storm front builds, peaks and passes.
        let trip = ((rng.unit() + rng.unit()) / 2.0 * loss_span as f64) as i64;
        let roll = rng.unit();
        let restore = if roll < 0.15 {
            Some(trip + rng.range(5 * SECOND, 170 * SECOND))
        } else if roll < 0.20 {
            None
        } else {
            let t = trip + rng.log_uniform(210_000.0, restore_span as f64) as i64;
            (t < restore_span).then_some(t)
        };
        for device in members {
            let lost_at = trip + rng.range(0, SECOND);
            let restored_at = restore.map(|r| r.max(lost_at + 1));
            outages.push(OutageSpec {
                // An outage that stays open must be reported to be seen at all.
                loss_reported: restored_at.is_none() || !rng.chance(0.10),
                report_delay: rng.range(0, 30 * SECOND),
                ..spec(*device, lost_at, restored_at, Preset::Storm)
            });
        }
    }
    let description = format!(
        "storm: {} supplies ({clusters} feeder clusters, the rest alone) lost over {}, \
         restored over {}; 15 % auto-reclose within 3 min, 5 % stay off, 10 % without last gasp",
        devices.len(),
        human(loss_span),
        human(restore_span)
    );
    (outages, description)
}

/// `flapping`: `n` outages around the debounce line, 1–4 per supply.
pub fn flapping(
    pool: &mut Pool,
    n: u64,
    span: i64,
    rng: &mut Rng,
) -> anyhow::Result<(Vec<OutageSpec>, String)> {
    let mut outages = Vec::new();
    let mut supplies = 0u64;
    while (outages.len() as u64) < n {
        let device = pool.take(1, "flapping", |_| true)?[0];
        supplies += 1;
        let mut t = rng.range(0, span);
        for _ in 0..(1 + rng.below(4)) {
            if outages.len() as u64 == n {
                break;
            }
            let roll = rng.unit();
            let length = if roll < 0.10 {
                DEBOUNCE_MS
            } else if roll < 0.55 {
                rng.range(DEBOUNCE_MS - 30 * SECOND, DEBOUNCE_MS - 5 * SECOND)
            } else {
                rng.range(DEBOUNCE_MS, DEBOUNCE_MS + 30 * SECOND)
            };
            outages.push(spec(device, t, Some(t + length), Preset::Flapping));
            t += length + rng.range(10 * SECOND, 60 * SECOND);
        }
    }
    Ok((
        outages,
        format!(
            "flapping: {n} outages on {supplies} supplies around the 3-minute line (150–175 s, \
             180–210 s, exactly 180 s), starting over {}",
            human(span)
        ),
    ))
}

/// `late-learned`: outages reported only by their restoration, over `span`.
pub fn late_learned(devices: &[u32], span: i64, rng: &mut Rng) -> (Vec<OutageSpec>, String) {
    let outages = devices
        .iter()
        .map(|device| {
            let restored_at = rng.range(0, span);
            let length = if rng.chance(0.7) {
                rng.log_uniform(210_000.0, 7_200_000.0) as i64
            } else {
                rng.range(10 * SECOND, 170 * SECOND)
            };
            OutageSpec {
                loss_reported: false,
                report_delay: rng.range(0, 5 * SECOND),
                ..spec(
                    *device,
                    restored_at - length,
                    Some(restored_at),
                    Preset::LateLearned,
                )
            }
        })
        .collect();
    (
        outages,
        format!(
            "late-learned: {} outages known only from their restoration (70 % 3.5 min–2 h, \
             30 % 10–170 s), restorations over {}",
            devices.len(),
            human(span)
        ),
    )
}

/// A scenario duration for people: `3m 30s`.
pub fn human(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}
