//! Fleet generation: `N` smart-metered supplies with valid MPAN cores, spread over the 14 DNO
//! areas in proportion to their customer numbers, plus a share of IDNO supplies.
//!
//! ## Proportions
//!
//! Areas are drawn with the fixed weights of [`AREA_WEIGHTS`]: each licence area's customer
//! count in thousands, rounded to the nearest 100k (the DNOs' published figures, early
//! 2020s). Eastern (10) is the largest at about 12 % of supplies, Southern (20) next; North
//! Scotland (17) the smallest at under 3 %. A further `idno_share` of supplies (default 2 %)
//! belong to IDNOs: distributor IDs from [`IDNO_IDS`], each sitting in a host DNO area drawn
//! with the same weights, whose GSP group the supply carries (that is how the relay routes
//! them).
//!
//! ## Feeders
//!
//! Every supply sits on a feeder of a substation of its host area, so the registry has the
//! `substation_id,feeder_id` columns storm summaries group by: an area's supplies, in device
//! order, fill [`FEEDER_SUPPLIES`] to a feeder and [`SUBSTATION_FEEDERS`] feeders to a
//! substation (`SS10-0003` feeder `F7`). IDNO supplies share their host area's feeders, as
//! they share its network.
//!
//! ## Identities
//!
//! Device `i` is the EUI-64 [`DEVICE_PREFIX`]` | i` (`00-db-be-00-xx-xx-xx-xx`), so a
//! device ID maps back to its index without a table. MPAN cores are the distributor ID
//! followed by a 10-digit number that is a seeded bijection of the index (unique within the
//! fleet), and the check digit. Everything is a function of `(devices, idno_share, seed)`.

use std::io;
use std::path::Path;

use super::rng::Rng;
use crate::domain::{DeviceId, DistributorId, GspGroup, MpanCore};
use crate::route::{Registry, RegistryEntry};

/// Customers per DNO licence area, thousands (rounded to 100k): the area weights.
pub const AREA_WEIGHTS: [(u8, u64); 14] = [
    (10, 3_700), // Eastern England (UKPN)
    (11, 2_700), // East Midlands (NGED)
    (12, 2_400), // London (UKPN)
    (13, 1_500), // Merseyside & North Wales (SPEN)
    (14, 2_500), // West Midlands (NGED)
    (15, 1_600), // North East England (NPg)
    (16, 2_400), // North West England (ENWL)
    (17, 800),   // North Scotland (SSEN)
    (18, 2_000), // South Scotland (SPEN)
    (19, 2_300), // South East England (UKPN)
    (20, 3_000), // Southern England (SSEN)
    (21, 1_100), // South Wales (NGED)
    (22, 1_600), // South West England (NGED)
    (23, 2_300), // Yorkshire (NPg)
];

/// Distributor IDs given to IDNO supplies.
pub const IDNO_IDS: [u8; 6] = [24, 25, 26, 27, 29, 30];

/// Supplies on one feeder (the last feeder of an area may have fewer).
pub const FEEDER_SUPPLIES: u32 = 500;
/// Feeders leaving one substation.
pub const SUBSTATION_FEEDERS: u32 = 10;

/// High bits of every generated device's EUI-64; the low 32 bits are its index.
pub const DEVICE_PREFIX: u64 = 0x00db_be00_0000_0000;

/// Odd and not a multiple of 5, so multiplying by it permutes the residues mod 10^10.
const MPAN_SCRAMBLE: u64 = 2_654_435_769;
const TEN_DIGITS: u64 = 10_000_000_000;

/// One supply point of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supply {
    /// Its MPAN core.
    pub mpan: MpanCore,
    /// Its GSP group (the host area's, for an IDNO supply).
    pub gsp: GspGroup,
    /// Its feeder: the ordinal within its host area, counted from 0.
    pub feeder: u32,
}

impl Supply {
    /// The distributor ID: the MPAN's first two digits.
    pub fn distributor(self) -> DistributorId {
        self.mpan.distributor()
    }

    /// Its substation: the ordinal within its host area, counted from 0.
    pub fn substation(self) -> u32 {
        self.feeder / SUBSTATION_FEEDERS
    }

    /// The registry's `substation_id` of its substation, e.g. `SS10-0003`.
    pub fn substation_id(self) -> String {
        format!(
            "SS{}-{:04}",
            self.gsp.host_distributor().0,
            self.substation()
        )
    }

    /// The registry's `feeder_id` of its feeder within the substation, `F1` to `F10`.
    pub fn feeder_id(self) -> String {
        format!("F{}", self.feeder % SUBSTATION_FEEDERS + 1)
    }
}

/// The generated fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    supplies: Vec<Supply>,
}

impl Fleet {
    /// Generates `devices` supplies, `idno_share` (0–1) of them IDNO supplies.
    pub fn generate(devices: u32, idno_share: f64, seed: u64) -> Self {
        let mut rng = Rng::fork(seed, 0xf1ee7);
        let weights: Vec<u64> = AREA_WEIGHTS.iter().map(|(_, w)| *w).collect();
        let offset = rng.below(TEN_DIGITS);
        let mut placed = [0u32; 100];
        let supplies = (0..devices)
            .map(|index| {
                let (area, _) = AREA_WEIGHTS[rng.weighted(&weights)];
                let idno = rng.chance(idno_share);
                let distributor = if idno {
                    let pick = usize::try_from(rng.below(IDNO_IDS.len() as u64)).unwrap_or(0);
                    IDNO_IDS[pick]
                } else {
                    area
                };
                let number = (u64::from(index) * MPAN_SCRAMBLE + offset) % TEN_DIGITS;
                let first_twelve = u64::from(distributor) * TEN_DIGITS + number;
                let ordinal = &mut placed[usize::from(area)];
                let feeder = *ordinal / FEEDER_SUPPLIES;
                *ordinal += 1;
                Supply {
                    mpan: valid_mpan(first_twelve),
                    gsp: host_gsp(area),
                    feeder,
                }
            })
            .collect();
        Self { supplies }
    }

    /// Number of supplies (= devices).
    pub fn len(&self) -> usize {
        self.supplies.len()
    }

    /// True for an empty fleet.
    pub fn is_empty(&self) -> bool {
        self.supplies.is_empty()
    }

    /// Device `index`'s EUI-64.
    pub fn device_id(&self, index: u32) -> DeviceId {
        DeviceId(DEVICE_PREFIX | u64::from(index))
    }

    /// The index of a device of this fleet, if `device` is one.
    pub fn index_of(&self, device: DeviceId) -> Option<u32> {
        if device.0 & !u64::from(u32::MAX) != DEVICE_PREFIX {
            return None;
        }
        let index = u32::try_from(device.0 & u64::from(u32::MAX)).ok()?;
        ((index as usize) < self.supplies.len()).then_some(index)
    }

    /// Device `index`'s supply.
    pub fn supply(&self, index: u32) -> Option<Supply> {
        self.supplies.get(index as usize).copied()
    }

    /// Every supply, by device index.
    pub fn supplies(&self) -> &[Supply] {
        &self.supplies
    }

    /// The fleet as a device registry, every device on its feeder.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::empty();
        for (index, supply) in (0u32..).zip(&self.supplies) {
            let entry = RegistryEntry {
                mpan: supply.mpan,
                gsp: supply.gsp,
            };
            let on_feeder = registry.insert_on_feeder(
                self.device_id(index),
                entry,
                &supply.substation_id(),
                &supply.feeder_id(),
            );
            debug_assert!(on_feeder, "device ids are unique and feeders few");
        }
        registry
    }

    /// Writes the registry CSV the relay loads with `--registry`.
    pub fn write_registry(&self, path: &Path) -> io::Result<()> {
        let file = std::fs::File::create(path)?;
        self.registry().write_csv(file)
    }
}

/// The MPAN core with these first 12 digits.
fn valid_mpan(first_twelve: u64) -> MpanCore {
    // Distributor IDs here are at most 30, so the value is below 31 * 10^10 < 10^12.
    MpanCore::with_check_digit(first_twelve).expect("12 digits at most")
}

/// The GSP group of DNO area `area` (every entry of [`AREA_WEIGHTS`] is one).
fn host_gsp(area: u8) -> GspGroup {
    GspGroup::of_area(DistributorId(area)).expect("AREA_WEIGHTS lists DNO areas only")
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
