//! The pure core of storm summaries: per-area counts, per-subscriber loss rates, per-watcher
//! windows and the inferences, all by the times it is given (no clock, no I/O).
//!
//! - An **area** is GSP group × distributor × substation × feeder. It counts its open supply
//!   points (per partition, so that a partition's can be forgotten: no per-supply state, so
//!   summaries cost memory per area, not per outage), its losses of the last minute and its current *episode*: from its first loss
//!   while nothing was open to the moment nothing is open again.
//! - **FEEDER_OUTAGE**: within an episode, the area's losses of the last minute reached
//!   `feeder_min_supplies`, or `feeder_min_share` of the feeder's registered supplies. It is
//!   reported while supplies stay off, until most of the episode's peak is restored.
//! - **NESTED_OUTAGE**: after a feeder outage, more than half of the episode's peak was
//!   restored at `m`, and at `m + nested_after` supplies are still off: a smaller fault
//!   inside the one just cleared. Reported while they stay off.
//! - **storm**: the subscriber's losses over the last minute are above `storm_threshold`.
//!
//! Areas without a feeder (a three-column registry, an unregistered device) are counted but
//! give no inference.

use std::collections::hash_map::Entry;
use std::time::Duration;

use foldhash::HashMap;
use hashbrown::Equivalent;

use super::window::MinuteCounter;
use super::{Change, Input, Note, OpenPoint};
use crate::domain::{DeviceId, DistributorId, GspGroup, MpanCore, UtcMillis};
use crate::log::{Partition, partition_of};
use crate::route::SubscriberId;

/// The numbers summaries work to (`[summaries]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// A subscriber is in a storm above this many losses per minute.
    pub storm_threshold: u64,
    /// Losses within a minute on one feeder that show a feeder outage...
    pub feeder_min_supplies: u64,
    /// ...or this share of the feeder's registered supplies (0 < share <= 1).
    pub feeder_min_share: f64,
    /// How long supplies must stay off after most of a feeder was restored.
    pub nested_after: Duration,
    /// Partitions of the device space (to forget a released partition's points).
    pub partitions: u16,
}

/// Where a supply is, as routing and the registry place it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place<'a> {
    /// The subscriber its alerts go to.
    pub subscriber: SubscriberId,
    /// Its GSP group, when known.
    pub gsp: Option<GspGroup>,
    /// Its distributor.
    pub distributor: DistributorId,
    /// Its substation (empty when the registry names no feeder for it).
    pub substation: &'a str,
    /// Its feeder (empty likewise).
    pub feeder: &'a str,
    /// Registered supplies on that feeder (0 when none is named).
    pub registered: u32,
}

/// Places supplies: implemented over the router and registry by the summaries task, and by
/// plain maps in tests.
pub trait Locate {
    /// Where `device`'s supply is, or `None` when it routes to no subscriber.
    fn locate(&self, device: DeviceId, mpan: Option<MpanCore>) -> Option<Place<'_>>;
}

/// An area's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AreaKey {
    /// GSP group, when known.
    pub gsp: Option<GspGroup>,
    /// Distributor.
    pub distributor: DistributorId,
    /// Substation, or empty.
    pub substation: Box<str>,
    /// Feeder, or empty.
    pub feeder: Box<str>,
}

/// An [`AreaKey`] borrowed from a [`Place`]: hashes as the key does (same fields, same
/// order, `&str` hashing as `Box<str>`), so an area is found without allocating.
#[derive(Hash)]
struct AreaRef<'a> {
    gsp: Option<GspGroup>,
    distributor: DistributorId,
    substation: &'a str,
    feeder: &'a str,
}

impl Equivalent<AreaKey> for AreaRef<'_> {
    fn equivalent(&self, key: &AreaKey) -> bool {
        self.gsp == key.gsp
            && self.distributor == key.distributor
            && *self.substation == *key.substation
            && *self.feeder == *key.feeder
    }
}

/// One area's counts in a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaCount {
    /// The area.
    pub area: AreaKey,
    /// Supplies off now.
    pub open: u64,
    /// Losses in the window.
    pub lost: u64,
    /// Restorations in the window.
    pub restored: u64,
}

/// What an [`Inference`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferenceKind {
    /// A feeder's worth of supplies lost within a minute.
    FeederOutage,
    /// Most of a feeder outage restored, some supplies still off after `nested_after`.
    NestedOutage,
}

/// An inference about an area: never an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inference {
    /// What is inferred.
    pub kind: InferenceKind,
    /// Where.
    pub area: AreaKey,
    /// Supplies off now in the area.
    pub supplies: u64,
    /// Feeder outage: its first loss; nested outage: when most had been restored.
    pub since: UtcMillis,
    /// Why, in words.
    pub reason: String,
}

/// One watcher's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The subscriber whose areas these are.
    pub subscriber: SubscriberId,
    /// Since the watcher's previous summary (or since it started watching).
    pub window_start: UtcMillis,
    /// Now.
    pub window_end: UtcMillis,
    /// Losses over the last minute above the threshold.
    pub storm: bool,
    /// Areas with anything to say, in key order.
    pub areas: Vec<AreaCount>,
    /// Inferences, in area order.
    pub inferences: Vec<Inference>,
}

/// A watcher, as [`Summariser::watch`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatchId(pub u64);

/// From an area's first loss while nothing was open until nothing is.
#[derive(Debug, Clone, Copy)]
struct Episode {
    started: UtcMillis,
    peak: u64,
    /// Losses of the last minute when a feeder outage was inferred.
    burst: Option<u64>,
    /// When more than half of `peak` had been restored (reset if it falls back).
    mostly_restored: Option<UtcMillis>,
}

#[derive(Debug)]
struct Area {
    key: AreaKey,
    subscriber: SubscriberId,
    registered: u32,
    open: u64,
    losses: MinuteCounter,
    episode: Option<Episode>,
}

#[derive(Debug)]
struct Watcher {
    id: WatchId,
    subscriber: SubscriberId,
    window_start: UtcMillis,
    /// Area index → (lost, restored) in the window.
    counts: HashMap<u32, (u64, u64)>,
}

/// Per-area counts, loss rates, watchers and inferences.
#[derive(Debug)]
pub struct Summariser {
    settings: Settings,
    areas: Vec<Area>,
    index: hashbrown::HashMap<AreaKey, u32, foldhash::fast::RandomState>,
    by_subscriber: HashMap<SubscriberId, Vec<u32>>,
    /// Open supply points by area and partition. The owners' notes are exact (an outage is
    /// noted opened once and closed once), so counts suffice.
    open: HashMap<(u32, Partition), u64>,
    losses: HashMap<SubscriberId, MinuteCounter>,
    watchers: Vec<Watcher>,
    next_watch: u64,
}

impl Summariser {
    /// Nothing known yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            areas: Vec::new(),
            index: hashbrown::HashMap::default(),
            by_subscriber: HashMap::default(),
            open: HashMap::default(),
            losses: HashMap::default(),
            watchers: Vec::new(),
            next_watch: 1,
        }
    }

    /// Applies what an owner sent, all at once (the task applies large inputs in parts,
    /// with [`Summariser::notes`], [`Summariser::release`] and [`Summariser::add_open`]).
    pub fn apply(&mut self, input: Input, places: &impl Locate) {
        match input {
            Input::Notes(notes) => self.notes(&notes, places),
            Input::Opened { partition, open } => {
                self.release(partition);
                self.add_open(&open, places);
            }
            Input::Released { partition } => self.release(partition),
        }
    }

    /// Applies notes, in order.
    pub fn notes(&mut self, notes: &[Note], places: &impl Locate) {
        for note in notes {
            self.note(*note, places);
        }
    }

    /// Supply points known to be off.
    pub fn open_count(&self) -> u64 {
        self.open.values().sum()
    }

    /// Starts a watcher of `subscriber`'s areas; its first window starts at `now`.
    pub fn watch(&mut self, subscriber: SubscriberId, now: UtcMillis) -> WatchId {
        let id = WatchId(self.next_watch);
        self.next_watch += 1;
        self.watchers.push(Watcher {
            id,
            subscriber,
            window_start: now,
            counts: HashMap::default(),
        });
        id
    }

    /// Forgets a watcher.
    pub fn unwatch(&mut self, id: WatchId) {
        self.watchers.retain(|watcher| watcher.id != id);
    }

    /// The watcher's summary of the window ending at `now`, which starts its next window.
    pub fn summarise(&mut self, id: WatchId, now: UtcMillis) -> Option<Summary> {
        let watcher = self.watchers.iter_mut().find(|watcher| watcher.id == id)?;
        let counts = std::mem::take(&mut watcher.counts);
        let window_start = std::mem::replace(&mut watcher.window_start, now);
        let subscriber = watcher.subscriber;
        let mut areas = Vec::new();
        let mut inferences = Vec::new();
        for index in self.by_subscriber.get(&subscriber).into_iter().flatten() {
            let Some(area) = self.areas.get(*index as usize) else {
                continue;
            };
            let (lost, restored) = counts.get(index).copied().unwrap_or_default();
            if area.open > 0 || lost > 0 || restored > 0 {
                areas.push(AreaCount {
                    area: area.key.clone(),
                    open: area.open,
                    lost,
                    restored,
                });
            }
            inferences.extend(self.infer(area, now));
        }
        areas.sort_unstable_by(|a, b| a.area.cmp(&b.area));
        inferences.sort_unstable_by(|a, b| a.area.cmp(&b.area));
        let rate = self
            .losses
            .get(&subscriber)
            .map_or(0, |losses| losses.last_minute(now));
        Some(Summary {
            subscriber,
            window_start,
            window_end: now,
            storm: rate > self.settings.storm_threshold,
            areas,
            inferences,
        })
    }

    fn infer(&self, area: &Area, now: UtcMillis) -> Option<Inference> {
        let episode = area.episode?;
        let burst = episode.burst?;
        if area.open == 0 {
            return None;
        }
        let settings = &self.settings;
        match episode.mostly_restored {
            None => Some(Inference {
                kind: InferenceKind::FeederOutage,
                area: area.key.clone(),
                supplies: area.open,
                since: episode.started,
                reason: format!(
                    "{burst} supplies of feeder {} lost within a minute, of {} registered \
                     (thresholds: {} supplies or {:.0}% of the feeder)",
                    area.key.feeder,
                    area.registered,
                    settings.feeder_min_supplies,
                    settings.feeder_min_share * 100.0
                ),
            }),
            Some(since) if now >= since.plus(settings.nested_after) => Some(Inference {
                kind: InferenceKind::NestedOutage,
                area: area.key.clone(),
                supplies: area.open,
                since,
                reason: format!(
                    "{} of the {} supplies of feeder {} lost in this outage were restored, \
                     {} still off {} after",
                    episode.peak - area.open,
                    episode.peak,
                    area.key.feeder,
                    area.open,
                    humantime::format_duration(settings.nested_after)
                ),
            }),
            Some(_) => None,
        }
    }

    fn note(&mut self, note: Note, places: &impl Locate) {
        let Some(area) = self.area_of(note.point.device, note.mpan, places) else {
            return;
        };
        let partition = partition_of(note.point.device, self.settings.partitions);
        match note.change {
            Change::Lost => {
                *self.open.entry((area, partition)).or_default() += 1;
                self.supply_off(area, note.at, true);
                self.count(area, true);
            }
            Change::Restored => {
                // Not counted open here (a note dropped on a full queue, or a registry reload
                // that moved the supply): counted as restored, no count goes below zero.
                if let Entry::Occupied(mut open) = self.open.entry((area, partition)) {
                    *open.get_mut() -= 1;
                    if *open.get() == 0 {
                        open.remove();
                    }
                    self.supply_on(area, note.at);
                }
                self.count(area, false);
            }
            Change::LearnedLate => self.count(area, false),
        }
    }

    /// Adds outages an owner reports open (after [`Summariser::release`] of their partition):
    /// open, but not losses of now.
    pub fn add_open(&mut self, open: &[OpenPoint], places: &impl Locate) {
        for point in open {
            if let Some(area) = self.area_of(point.point.device, point.mpan, places) {
                let partition = partition_of(point.point.device, self.settings.partitions);
                *self.open.entry((area, partition)).or_default() += 1;
                self.supply_off(area, point.lost_at, false);
            }
        }
    }

    /// Forgets the open outages of `partition` (its owner stopped here, or is about to say
    /// again what is open in it).
    pub fn release(&mut self, partition: Partition) {
        let mut gone = Vec::new();
        self.open.retain(|(area, of), count| {
            let keep = *of != partition;
            if !keep {
                gone.push((*area, *count));
            }
            keep
        });
        for (area, count) in gone {
            if let Some(area) = self.areas.get_mut(area as usize) {
                area.open = area.open.saturating_sub(count);
                if area.open == 0 {
                    area.episode = None;
                }
            }
        }
    }

    /// One more supply off in `area` at `at`; a live loss (not one a snapshot reports)
    /// counts towards the loss rates and the feeder-outage test.
    fn supply_off(&mut self, index: u32, at: UtcMillis, live: bool) {
        let settings = self.settings;
        let Some(area) = self.areas.get_mut(index as usize) else {
            return;
        };
        if area.open == 0 {
            area.episode = None;
        }
        let episode = area.episode.get_or_insert(Episode {
            started: at,
            peak: 0,
            burst: None,
            mostly_restored: None,
        });
        episode.started = episode.started.min(at);
        area.open += 1;
        episode.peak = episode.peak.max(area.open);
        if live {
            area.losses.add(at);
            let recent = area.losses.last_minute(at);
            let share = f64::from(area.registered) * settings.feeder_min_share;
            let feeder_sized = recent >= settings.feeder_min_supplies
                || (area.registered > 0 && recent as f64 >= share);
            if episode.burst.is_none() && !area.key.feeder.is_empty() && feeder_sized {
                episode.burst = Some(recent);
            }
            self.losses.entry(area.subscriber).or_default().add(at);
        }
        mostly_restored(area, at);
    }

    fn supply_on(&mut self, index: u32, at: UtcMillis) {
        if let Some(area) = self.areas.get_mut(index as usize) {
            area.open = area.open.saturating_sub(1);
            if area.open == 0 {
                area.episode = None;
            } else {
                mostly_restored(area, at);
            }
        }
    }

    /// Adds a loss or restoration in `area` to its subscriber's watchers' windows.
    fn count(&mut self, index: u32, lost: bool) {
        let Some(subscriber) = self.areas.get(index as usize).map(|area| area.subscriber) else {
            return;
        };
        for watcher in &mut self.watchers {
            if watcher.subscriber == subscriber {
                let counts = watcher.counts.entry(index).or_default();
                if lost {
                    counts.0 += 1;
                } else {
                    counts.1 += 1;
                }
            }
        }
    }

    /// The area a supply is in, added if new; `None` when it routes to no subscriber.
    fn area_of(
        &mut self,
        device: DeviceId,
        mpan: Option<MpanCore>,
        places: &impl Locate,
    ) -> Option<u32> {
        let place = places.locate(device, mpan)?;
        let borrowed = AreaRef {
            gsp: place.gsp,
            distributor: place.distributor,
            substation: place.substation,
            feeder: place.feeder,
        };
        if let Some(index) = self.index.get(&borrowed) {
            if let Some(area) = self.areas.get_mut(*index as usize) {
                // A reloaded registry may count the feeder's supplies anew.
                area.registered = place.registered;
            }
            return Some(*index);
        }
        let index = u32::try_from(self.areas.len()).ok()?;
        let key = AreaKey {
            gsp: place.gsp,
            distributor: place.distributor,
            substation: place.substation.into(),
            feeder: place.feeder.into(),
        };
        self.index.insert(key.clone(), index);
        match self.by_subscriber.entry(place.subscriber) {
            Entry::Occupied(mut areas) => areas.get_mut().push(index),
            Entry::Vacant(slot) => {
                slot.insert(vec![index]);
            }
        }
        self.areas.push(Area {
            key,
            subscriber: place.subscriber,
            registered: place.registered,
            open: 0,
            losses: MinuteCounter::default(),
            episode: None,
        });
        Some(index)
    }
}

/// Notes when more than half of the episode's peak is restored (and forgets it if losses
/// bring the area back above half).
fn mostly_restored(area: &mut Area, at: UtcMillis) {
    let open = area.open;
    if let Some(episode) = &mut area.episode {
        if open * 2 < episode.peak {
            episode.mostly_restored.get_or_insert(at);
        } else {
            episode.mostly_restored = None;
        }
    }
}

#[cfg(test)]
#[path = "summariser_tests.rs"]
mod tests;
