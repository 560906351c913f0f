//! Scenario presets: each turns its parameters into scripted outages in *scenario time*
//! (real-world milliseconds from the scenario's start, before any `--time-scale`
//! compression). [`super::model`] then compresses them into the wall-clock timeline and
//! works out the alerts the relay must (and must not) send.
//!
//! | preset | what happens | `--outages` (default) | `--duration` (default) |
//! |---|---|---|---|
//! | `steady` | outages start at random (Poisson) at `--rate` events/s; half are short interruptions (5–170 s), half last 3.5–30 min; ones not over by the end stay open | — | run length (10 min) |
//! | `substation-trip` | supplies of one DNO area (IDNO supplies in it included) lose power within the same second; power returns at once after `--duration`, each device reporting it after its own random delay of 0–30 s | supplies (100,000) | trip → restoration (3 min 30 s) |
//! | `storm` | Arwen/Eunice shape: 70 % of supplies in feeder clusters of 50–2,000 tripping together, 30 % alone, losses over the first twelfth of `--duration` (peaking at the middle of it); 15 % of trips auto-reclose within 5–170 s, 5 % stay off, the rest are restored over the whole `--duration` (log-uniform from 3.5 min); 10 % of devices have no last gasp (outage learned from its restoration); restorations reported after 0–30 s | supplies (1,000,000) | restoration span (6 h) |
//! | `flapping` | supplies going off and on 1–4 times around the 3-minute line: 45 % of outages last 150–175 s, 45 % 180–210 s, 10 % exactly 180 s; 10–60 s on between | outages (10,000) | span of first losses (5 min) |
//! | `late-learned` | outages known only from their restoration (which carries `lost_at`): 70 % lasted 3.5 min–2 h, 30 % 10–170 s | outages (10,000) | span of restorations (5 min) |
//! | `duplicates` | modifier: every event is sent `--copies` times (default 2), a quarter of them once more; the first copy at once, later ones 1–30 s later (upstream retries). Alone, it applies to `steady` | — | — |
//!
//! Presets in a mix (`--scenario storm,duplicates`) run at the same time on disjoint sets
//! of supplies; `steady` takes the supplies the others left. Every restoration carries its
//! outage's `lost_at`, as GBCS restoration alerts do.

use std::time::Duration;

use super::fleet::Fleet;
use super::presets::{self, MINUTE, Pool, SECOND};
use super::rng::Rng;

/// The 3-minute debounce line the presets are written against (scenario time).
pub const DEBOUNCE_MS: i64 = 180_000;

/// A named scenario preset.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Background outages at a steady event rate.
    Steady,
    /// One primary substation trips: many supplies lost in the same second.
    SubstationTrip,
    /// A storm: a million outages over minutes, restorations over hours.
    Storm,
    /// Supplies going off and on around the 3-minute line.
    Flapping,
    /// Outages known only from their restoration.
    LateLearned,
    /// Every event sent twice or more.
    Duplicates,
}

impl Preset {
    /// The preset's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::SubstationTrip => "substation-trip",
            Self::Storm => "storm",
            Self::Flapping => "flapping",
            Self::LateLearned => "late-learned",
            Self::Duplicates => "duplicates",
        }
    }
}

/// Parameter overrides; `None` keeps each preset's default.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Outages (or supplies) per preset that has a count.
    pub outages: Option<u64>,
    /// The preset's main duration (see the module table).
    pub duration: Option<Duration>,
    /// `steady`: events per second.
    pub rate: Option<f64>,
    /// `duplicates`: sends of every event, at least 2.
    pub copies: Option<u32>,
}

/// One scripted outage of one supply, in scenario time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageSpec {
    /// Device (fleet index).
    pub device: u32,
    /// When supply was lost (device time).
    pub lost_at: i64,
    /// When it came back, if within the scenario (device time).
    pub restored_at: Option<i64>,
    /// Whether the device reports the loss itself (a "last gasp"); if not, the relay learns
    /// of the outage only from its restoration.
    pub loss_reported: bool,
    /// How long after `restored_at` the device reports the restoration.
    pub report_delay: i64,
    /// Which preset scripted it.
    pub preset: Preset,
}

/// Everything the presets scripted.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every outage, in no particular order.
    pub outages: Vec<OutageSpec>,
    /// Sends of every event (1 without `duplicates`).
    pub copies: u32,
    /// One line per preset saying what it scripted.
    pub descriptions: Vec<String>,
}

/// Scripts the outages of `presets` over `fleet`.
pub fn plan(
    fleet: &Fleet,
    chosen: &[Preset],
    overrides: &Overrides,
    seed: u64,
) -> anyhow::Result<Plan> {
    let mut wanted: Vec<Preset> = chosen.to_vec();
    wanted.sort();
    wanted.dedup();
    let duplicates = wanted.contains(&Preset::Duplicates);
    wanted.retain(|p| *p != Preset::Duplicates);
    if wanted.is_empty() {
        wanted.push(Preset::Steady);
    }
    let fleet_len = u32::try_from(fleet.len())?;
    let mut devices: Vec<u32> = (0..fleet_len).collect();
    Rng::fork(seed, 0x9001).shuffle(&mut devices);
    let mut pool = Pool::new(devices);
    let mut plan = Plan {
        outages: Vec::new(),
        copies: 1,
        descriptions: Vec::new(),
    };
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let duration = |default: i64| overrides.duration.map_or(default, ms).max(1);
    // Steady goes last: it takes whatever the others left.
    wanted.sort_by_key(|p| *p == Preset::Steady);
    for preset in wanted {
        let mut rng = Rng::fork(seed, preset as u64 + 1);
        let count = |default: u64| overrides.outages.unwrap_or(default);
        let (outages, description) = match preset {
            Preset::Steady => {
                let rate = overrides.rate.unwrap_or(100.0);
                presets::steady(pool.remaining(), rate, duration(10 * MINUTE), &mut rng)?
            }
            Preset::SubstationTrip => presets::substation(
                fleet,
                &mut pool,
                count(100_000),
                duration(210 * SECOND),
                &mut rng,
            )?,
            Preset::Storm => {
                let devices = pool.take(count(1_000_000), "storm", |_| true)?;
                presets::storm(&devices, duration(6 * 60 * MINUTE), &mut rng)
            }
            Preset::Flapping => {
                presets::flapping(&mut pool, count(10_000), duration(5 * MINUTE), &mut rng)?
            }
            Preset::LateLearned => {
                let devices = pool.take(count(10_000), "late-learned", |_| true)?;
                presets::late_learned(&devices, duration(5 * MINUTE), &mut rng)
            }
            Preset::Duplicates => continue,
        };
        plan.outages.extend(outages);
        plan.descriptions.push(description);
    }
    if duplicates {
        plan.copies = overrides.copies.unwrap_or(2).max(2);
        plan.descriptions.push(format!(
            "duplicates: every event sent {} times, a quarter of them once more; the first \
             copy at once, later ones 1–30 s later",
            plan.copies
        ));
    }
    Ok(plan)
}
