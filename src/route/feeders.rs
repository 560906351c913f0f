//! The feeders a registry names: each distinct `(substation_id, feeder_id)` pair once, so a
//! registered device carries only a small index (see `Registry`'s memory notes).
//!
//! Substation names are interned once each, and each feeder keeps the index of its
//! substation, its own name and how many registered supplies (devices) it feeds. Indexes are
//! only meaningful within the registry that made them: a reload builds new ones.

use foldhash::HashMap;

/// The most feeders one registry may name: indexes are packed into 20 bits, 0 meaning none.
pub const MAX_FEEDERS: usize = (1 << 20) - 1;
/// The longest `substation_id` or `feeder_id` accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// A feeder of the registry, by index (1-based; the packed 0 means "no feeder").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeederId(pub u32);

/// What the registry knows of one feeder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feeder<'a> {
    /// The substation it leaves from.
    pub substation: &'a str,
    /// Its name within that substation.
    pub feeder: &'a str,
    /// Registered devices it feeds.
    pub supplies: u32,
}

/// The interned substation and feeder names of one registry.
#[derive(Debug, Clone, Default)]
pub struct Feeders {
    substations: Vec<Box<str>>,
    /// `(substation index, feeder name, registered supplies)`; `FeederId(n)` is entry `n - 1`.
    feeders: Vec<(u32, Box<str>, u32)>,
    /// While loading: feeder indexes by name, one map per substation.
    by_name: Vec<HashMap<Box<str>, u32>>,
    substation_index: HashMap<Box<str>, u32>,
}

impl Feeders {
    /// The feeder `(substation, feeder)`, added if new, with one more supply counted; `None`
    /// once [`MAX_FEEDERS`] are named.
    pub fn add_supply(&mut self, substation: &str, feeder: &str) -> Option<FeederId> {
        if self.substation_index.is_empty() && !self.substations.is_empty() {
            self.reindex();
        }
        let station = match self.substation_index.get(substation) {
            Some(index) => *index,
            None => {
                let index = u32::try_from(self.substations.len()).ok()?;
                self.substations.push(substation.into());
                self.substation_index.insert(substation.into(), index);
                self.by_name.push(HashMap::default());
                index
            }
        };
        let names = self.by_name.get_mut(station as usize)?;
        let index = match names.get(feeder) {
            Some(index) => *index,
            None => {
                if self.feeders.len() >= MAX_FEEDERS {
                    return None;
                }
                let index = u32::try_from(self.feeders.len()).ok()?;
                self.feeders.push((station, feeder.into(), 0));
                names.insert(feeder.into(), index);
                index
            }
        };
        let entry = self.feeders.get_mut(index as usize)?;
        entry.2 = entry.2.saturating_add(1);
        Some(FeederId(index + 1))
    }

    /// Rebuilds the name maps [`Feeders::finish`] dropped, to add to a loaded registry.
    fn reindex(&mut self) {
        self.by_name = vec![HashMap::default(); self.substations.len()];
        for (index, (station, feeder, _)) in (0u32..).zip(&self.feeders) {
            if let Some(names) = self.by_name.get_mut(*station as usize) {
                names.insert(feeder.clone(), index);
            }
        }
        self.substation_index = (0u32..)
            .zip(&self.substations)
            .map(|(index, name)| (name.clone(), index))
            .collect();
    }

    /// Drops the name maps only a load needs (rebuilt if a feeder is added later).
    pub fn finish(&mut self) {
        self.by_name = Vec::new();
        self.substation_index = HashMap::default();
    }

    /// The feeder `id` names, if any.
    pub fn get(&self, id: FeederId) -> Option<Feeder<'_>> {
        let (station, feeder, supplies) = self.feeders.get((id.0 as usize).checked_sub(1)?)?;
        Some(Feeder {
            substation: self.substations.get(*station as usize)?,
            feeder,
            supplies: *supplies,
        })
    }

    /// Number of feeders named.
    pub fn len(&self) -> usize {
        self.feeders.len()
    }

    /// True when no feeder is named (a three-column registry).
    pub fn is_empty(&self) -> bool {
        self.feeders.is_empty()
    }
}

/// Checks a `substation_id` or `feeder_id` field (named `name` in the reason), never quoting
/// it.
pub fn check_name(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_NAME_BYTES {
        return Err(format!("{name} is longer than {MAX_NAME_BYTES} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name} holds a control character"));
    }
    Ok(())
}
