//! The device registry: device EUI-64 → MPAN core and GSP group.
//!
//! ## File format
//!
//! CSV, UTF-8. The first line is exactly `device_id,mpan_core,gsp_group`, or
//! `device_id,mpan_core,gsp_group,substation_id,feeder_id`; each following line is one device
//! with as many fields as the header, e.g. `00-db-12-34-56-78-90-a0,1234567890126,_C` or
//! `00-db-12-34-56-78-90-a0,1234567890126,_C,SS-0412,F3`. A feeder is the pair
//! `(substation_id, feeder_id)`; both empty means the device's feeder is unknown, one empty
//! alone is an error, and each is at most 64 bytes without control characters. Whitespace around fields
//! is ignored, `\r\n` line ends are accepted, and so is a missing final newline. Each row must
//! have a valid EUI-64, an MPAN core whose check digit holds, one of the 14 GSP groups, and,
//! for a DNO-area MPAN (distributor 10–23), that area's own GSP group; no device may appear
//! twice, and blank lines are errors. A bad row is never skipped: the whole load fails and
//! names every bad row by its file line (the header is line 1), so a half-right registry
//! never replaces a good one.
//!
//! An error names the line and what is wrong with it, never what the line holds: a field
//! that fails its check is not quoted (the values a message names, such as a device listed
//! twice, passed their checks), and a file whose first line is not the header is refused
//! without a word of it, so a load of some other file does not show its content.
//!
//! ## Memory
//!
//! The fleet is 20–36 M devices. Each device costs one `HashMap` bucket of 17 bytes: an 8-byte
//! key, an 8-byte packed entry (the MPAN's first 12 digits in 40 bits, the check digit being
//! recomputed on read, the GSP group in 4 bits, and the device's feeder as a 20-bit index into
//! the registry's interned feeder names, [`Feeders`]) and hashbrown's 1 control byte, with or
//! without feeders; a registry may name at most [`MAX_FEEDERS`] feeders. Tables
//! are 7/8 full at most and double in size, so a device costs 19–39 bytes: about 1.1 GiB for
//! 36 M devices. Loading adds 8 bytes per row while it runs (see `Loader`), and a reload
//! holds the old registry until the new one is swapped in.

use foldhash::HashMap;
use foldhash::HashMapExt as _;
use std::collections::hash_map::Entry;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use csv::ByteRecord;

use super::feeders::{self, Feeder, FeederId, Feeders, MAX_FEEDERS};
use crate::domain::mpan::BadMpan;
use crate::domain::{DeviceId, DistributorId, GspGroup, MpanCore};

/// The line a registry file starts with.
pub const HEADER: &str = "device_id,mpan_core,gsp_group";
/// The header of a registry that also names each device's feeder.
pub const HEADER_WITH_FEEDERS: &str = "device_id,mpan_core,gsp_group,substation_id,feeder_id";
/// A failed load keeps this many row errors; it counts all of them.
pub const MAX_REPORTED_ROWS: usize = 100;

/// Bytes in a typical row, to size the table from the file length before loading.
const TYPICAL_ROW_BYTES: u64 = 41;
/// Upper bound on that guess, so an odd file cannot make the load reserve absurd memory.
const MAX_RESERVED_DEVICES: u64 = 1 << 26;
/// The lowest DNO area; packed GSP groups are stored as their host area's offset from it.
const FIRST_AREA: u8 = 10;
/// The packed MPAN digits, above the 4 bits of the GSP group.
const MPAN_MASK: u64 = (1 << 40) - 1;
/// Where the feeder index starts in a packed entry.
const FEEDER_SHIFT: u32 = 44;

/// Where a registered device's supply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegistryEntry {
    /// The supply's MPAN core.
    pub mpan: MpanCore,
    /// The supply's GSP group.
    pub gsp: GspGroup,
}

impl RegistryEntry {
    fn pack(self, feeder: Option<FeederId>) -> u64 {
        let area = self.gsp.host_distributor().0.saturating_sub(FIRST_AREA);
        let feeder = u64::from(feeder.map_or(0, |id| id.0));
        (feeder << FEEDER_SHIFT) | ((self.mpan.value() / 10) << 4) | u64::from(area & 0xF)
    }

    fn unpack(packed: u64) -> Option<Self> {
        let mpan = MpanCore::with_check_digit((packed >> 4) & MPAN_MASK)?;
        let area = u8::try_from(packed & 0xF).ok()?;
        let gsp = GspGroup::of_area(DistributorId(FIRST_AREA + area))?;
        Some(Self { mpan, gsp })
    }
}

/// The feeder index of a packed entry, if it has one.
fn feeder_bits(packed: u64) -> Option<FeederId> {
    let index = u32::try_from(packed >> FEEDER_SHIFT).ok()?;
    (index != 0).then_some(FeederId(index))
}

/// Device → supply lookup; immutable once loaded (a reload builds a new one).
#[derive(Clone, Default)]
pub struct Registry {
    /// Values are [`RegistryEntry::pack`]ed.
    devices: HashMap<DeviceId, u64>,
    /// The feeders the values' feeder indexes name.
    feeders: Feeders,
}

impl PartialEq for Registry {
    /// The same devices, each with the same entry and feeder names (interning order aside).
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.devices.keys().all(|device| {
                other.devices.contains_key(device)
                    && self.get(*device) == other.get(*device)
                    && self
                        .feeder_of(*device)
                        .and_then(|id| self.feeder(id))
                        .map(names)
                        == other
                            .feeder_of(*device)
                            .and_then(|id| other.feeder(id))
                            .map(names)
            })
    }
}

impl Eq for Registry {}

fn names(feeder: Feeder<'_>) -> (&str, &str) {
    (feeder.substation, feeder.feeder)
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Registry");
        debug.field("devices", &self.devices.len());
        if !self.feeders.is_empty() {
            debug.field("feeders", &self.feeders.len());
        }
        debug.finish()
    }
}

/// One bad registry row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// File line, 1-based (the header is line 1).
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Why a registry could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The source could not be opened or read.
    #[error("cannot read registry {source_name}: {source}")]
    Io {
        /// File path or other name of the source.
        source_name: String,
        /// Why.
        source: io::Error,
    },
    /// The first line is not [`HEADER`].
    #[error("registry {source_name} line 1: {}", header_reason(*.fields))]
    Header {
        /// File path or other name of the source.
        source_name: String,
        /// Fields on the first line; 0 when it is blank or the source is empty.
        fields: usize,
    },
    /// Rows failed validation; nothing was loaded.
    #[error("{}", rows_message(.source_name, .errors, *.total))]
    Rows {
        /// File path or other name of the source.
        source_name: String,
        /// The first [`MAX_REPORTED_ROWS`] bad rows, in file order.
        errors: Vec<RowError>,
        /// How many rows were bad in all.
        total: usize,
    },
}

fn header_reason(fields: usize) -> String {
    match fields {
        0 => format!(
            "blank or missing; a registry starts with the header {HEADER:?} or {HEADER_WITH_FEEDERS:?}"
        ),
        1 => format!("not the header {HEADER:?} or {HEADER_WITH_FEEDERS:?} (1 field)"),
        n => format!("not the header {HEADER:?} or {HEADER_WITH_FEEDERS:?} ({n} fields)"),
    }
}

fn rows_message(source_name: &str, errors: &[RowError], total: usize) -> String {
    let plural = if total == 1 { "" } else { "s" };
    let mut message = format!("registry {source_name}: {total} bad row{plural}, nothing loaded");
    for error in errors {
        message.push_str(&format!("\n{source_name} {error}"));
    }
    if total > errors.len() {
        message.push_str(&format!("\n… and {} more", total - errors.len()));
    }
    message
}

impl Registry {
    /// A registry with no devices: every alert routes by its event's MPAN or parks.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads a registry file (see the module doc for its format).
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let source_name = path.display().to_string();
        let io_error = |source| RegistryError::Io {
            source_name: source_name.clone(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let length = file.metadata().map_err(io_error)?.len();
        let expected_rows = (length / TYPICAL_ROW_BYTES).min(MAX_RESERVED_DEVICES);
        Loader::new(usize::try_from(expected_rows).unwrap_or(0)).run(file, &source_name)
    }

    /// Reads a registry from any reader; `source_name` names it in errors.
    pub fn from_reader(reader: impl Read, source_name: &str) -> Result<Self, RegistryError> {
        Loader::new(0).run(reader, source_name)
    }

    /// The device's entry, if it is registered.
    pub fn get(&self, device: DeviceId) -> Option<RegistryEntry> {
        self.devices
            .get(&device)
            .copied()
            .and_then(RegistryEntry::unpack)
    }

    /// The feeder the device is on, when the registry names one.
    pub fn feeder_of(&self, device: DeviceId) -> Option<FeederId> {
        self.devices.get(&device).copied().and_then(feeder_bits)
    }

    /// The names of feeder `id` of this registry, and its registered supplies.
    pub fn feeder(&self, id: FeederId) -> Option<Feeder<'_>> {
        self.feeders.get(id)
    }

    /// Number of registered devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True when no device is registered.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Registers (or re-registers) a device, returning its previous entry. For fleet
    /// generators and tests: unlike [`Registry::load`] it does not check that a DNO-area
    /// MPAN's GSP group is the area's own.
    pub fn insert(&mut self, device: DeviceId, entry: RegistryEntry) -> Option<RegistryEntry> {
        self.devices
            .insert(device, entry.pack(None))
            .and_then(RegistryEntry::unpack)
    }

    /// Registers a new device on feeder `feeder` of substation `substation`, like
    /// [`Registry::insert`]; `false` (and nothing changed) when the device is already
    /// registered or [`MAX_FEEDERS`] feeders are named.
    pub fn insert_on_feeder(
        &mut self,
        device: DeviceId,
        entry: RegistryEntry,
        substation: &str,
        feeder: &str,
    ) -> bool {
        if self.devices.contains_key(&device) {
            return false;
        }
        let Some(id) = self.feeders.add_supply(substation, feeder) else {
            return false;
        };
        self.devices.insert(device, entry.pack(Some(id)));
        true
    }

    /// Every device and its entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (DeviceId, RegistryEntry)> + '_ {
        self.devices
            .iter()
            .filter_map(|(device, packed)| Some((*device, RegistryEntry::unpack(*packed)?)))
    }

    /// Writes the registry in its file format, header first, sorted by device id, so that
    /// [`Registry::from_reader`] reads back the same registry.
    /// The five-column format is written when any feeder is named.
    pub fn write_csv(&self, writer: impl Write) -> io::Result<()> {
        let mut rows: Vec<(DeviceId, RegistryEntry)> = self.iter().collect();
        rows.sort_unstable_by_key(|(device, _)| *device);
        let mut out = BufWriter::new(writer);
        let with_feeders = !self.feeders.is_empty();
        writeln!(
            out,
            "{}",
            if with_feeders {
                HEADER_WITH_FEEDERS
            } else {
                HEADER
            }
        )?;
        for (device, entry) in rows {
            write!(out, "{device},{},{}", entry.mpan, entry.gsp)?;
            if with_feeders {
                let (substation, feeder) = self
                    .feeder_of(device)
                    .and_then(|id| self.feeder(id))
                    .map_or(("", ""), names);
                write!(out, ",{substation},{feeder}")?;
            }
            writeln!(out)?;
        }
        out.flush()
    }
}

/// One load in progress. To name the first line of a device listed twice without a second
/// pass over the input, each map value holds `row ordinal << 32 | line` while loading, and
/// the packed entries wait in `entries` (8 bytes a row) until the values are rewritten.
struct Loader {
    devices: HashMap<DeviceId, u64>,
    entries: Vec<u64>,
    feeders: Feeders,
    /// Fields per row: 3, or 5 with feeders.
    columns: usize,
    errors: Vec<RowError>,
    total_errors: usize,
}

impl Loader {
    fn new(expected_rows: usize) -> Self {
        Self {
            devices: HashMap::with_capacity(expected_rows),
            entries: Vec::with_capacity(expected_rows),
            feeders: Feeders::default(),
            columns: 3,
            errors: Vec::new(),
            total_errors: 0,
        }
    }

    fn run(mut self, reader: impl Read, source_name: &str) -> Result<Registry, RegistryError> {
        let io_error = |error: csv::Error| RegistryError::Io {
            source_name: source_name.to_owned(),
            source: match error.into_kind() {
                csv::ErrorKind::Io(source) => source,
                other => io::Error::other(format!("{other:?}")),
            },
        };
        // Appending a newline makes every record end with one, so a record's first line is
        // always the reader's line after it, less one, less the newlines inside it.
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .buffer_capacity(64 * 1024)
            .from_reader(reader.chain(&b"\n"[..]));
        let mut record = ByteRecord::new();
        let header = read_record(&mut csv, &mut record).map_err(io_error)?;
        let columns = header_columns(&record).filter(|_| header == Some(1));
        if let Some(columns) = columns {
            self.columns = columns;
        } else {
            let blank = header != Some(1)
                || (record.len() == 1 && record.as_slice().trim_ascii().is_empty());
            return Err(RegistryError::Header {
                source_name: source_name.to_owned(),
                fields: if blank { 0 } else { record.len() },
            });
        }
        let mut next_line = csv.position().line();
        while let Some(line) = read_record(&mut csv, &mut record).map_err(io_error)? {
            for blank in next_line..line {
                self.reject(blank, "blank line".to_owned());
            }
            next_line = csv.position().line();
            match parse_row(&record, self.columns) {
                Ok((device, entry, feeder)) => self.accept(line, device, entry, feeder),
                Err(reason) => self.reject(line, reason),
            }
        }
        // The last line counted is the empty one after the newline this loader appended.
        for blank in next_line..csv.position().line().saturating_sub(1) {
            self.reject(blank, "blank line".to_owned());
        }
        self.finish(source_name)
    }

    fn accept(
        &mut self,
        line: u64,
        device: DeviceId,
        entry: RegistryEntry,
        feeder: Option<(&str, &str)>,
    ) {
        match self.devices.entry(device) {
            Entry::Occupied(first) => {
                let first_line = first.get() & u64::from(u32::MAX);
                self.reject(
                    line,
                    format!("device {device} is listed twice (lines {first_line} and {line})"),
                );
            }
            Entry::Vacant(slot) => {
                let (Ok(ordinal), Ok(line32)) =
                    (u32::try_from(self.entries.len()), u32::try_from(line))
                else {
                    self.reject(line, "registry has more than 2^32 lines".to_owned());
                    return;
                };
                let feeder = match feeder {
                    Some((substation, feeder)) => {
                        match self.feeders.add_supply(substation, feeder) {
                            Some(id) => Some(id),
                            None => {
                                self.reject(
                                    line,
                                    format!("registry names more than {MAX_FEEDERS} feeders"),
                                );
                                return;
                            }
                        }
                    }
                    None => None,
                };
                slot.insert((u64::from(ordinal) << 32) | u64::from(line32));
                self.entries.push(entry.pack(feeder));
            }
        }
    }

    fn reject(&mut self, line: u64, reason: String) {
        self.total_errors += 1;
        if self.errors.len() < MAX_REPORTED_ROWS {
            self.errors.push(RowError { line, reason });
        }
    }

    fn finish(self, source_name: &str) -> Result<Registry, RegistryError> {
        if self.total_errors > 0 {
            return Err(RegistryError::Rows {
                source_name: source_name.to_owned(),
                errors: self.errors,
                total: self.total_errors,
            });
        }
        let Self {
            mut devices,
            entries,
            mut feeders,
            ..
        } = self;
        for value in devices.values_mut() {
            // Every ordinal indexes the entry pushed with it.
            *value = entries[(*value >> 32) as usize];
        }
        feeders.finish();
        Ok(Registry { devices, feeders })
    }
}

/// Reads the next record and returns the line it starts on, or `None` at the end.
fn read_record(
    csv: &mut csv::Reader<impl Read>,
    record: &mut ByteRecord,
) -> Result<Option<u64>, csv::Error> {
    let before = csv.position().line();
    if !csv.read_byte_record(record)? {
        return Ok(None);
    }
    let inner_newlines = record.as_slice().iter().filter(|b| **b == b'\n').count() as u64;
    let after = csv.position().line();
    // `max` only matters for an unterminated quote, which swallows the final newline.
    Ok(Some(after.saturating_sub(1 + inner_newlines).max(before)))
}

/// The number of fields the header announces (3, or 5 with feeders), if it is a header.
fn header_columns(record: &ByteRecord) -> Option<usize> {
    let mut fields = record.iter().map(<[u8]>::trim_ascii);
    let first = fields
        .next()
        .map(|f| f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f));
    let base = first == Some(b"device_id")
        && fields.next() == Some(b"mpan_core")
        && fields.next() == Some(b"gsp_group");
    match (base, fields.next(), fields.next(), fields.next()) {
        (true, None, _, _) => Some(3),
        (true, Some(b"substation_id"), Some(b"feeder_id"), None) => Some(5),
        _ => None,
    }
}

/// A parsed row: the device, its entry, and its feeder's `(substation, feeder)` names when
/// given.
type Row<'a> = (DeviceId, RegistryEntry, Option<(&'a str, &'a str)>);

/// A row of `columns` fields.
fn parse_row(record: &ByteRecord, columns: usize) -> Result<Row<'_>, String> {
    let (Some(device), Some(mpan), Some(gsp)) = (record.get(0), record.get(1), record.get(2))
    else {
        return Err(field_count(record, columns));
    };
    if record.len() != columns {
        return Err(field_count(record, columns));
    }
    let feeder = match (record.get(3), record.get(4)) {
        (Some(substation), Some(feeder)) => {
            let substation = field("substation_id", substation)?;
            let feeder = field("feeder_id", feeder)?;
            feeders::check_name("substation_id", substation)?;
            feeders::check_name("feeder_id", feeder)?;
            match (substation.is_empty(), feeder.is_empty()) {
                (true, true) => None,
                (false, false) => Some((substation, feeder)),
                _ => {
                    return Err(
                        "substation_id and feeder_id must be both given or both empty".to_owned(),
                    );
                }
            }
        }
        _ => None,
    };
    // The reasons below name the field, not what it holds.
    let device = field("device_id", device)?
        .parse::<DeviceId>()
        .map_err(|_| {
            "device_id is not an EUI-64 (expected 8 hex byte pairs like 00-db-12-34-56-78-90-a0)"
                .to_owned()
        })?;
    let mpan = field("mpan_core", mpan)?
        .parse::<MpanCore>()
        .map_err(|err| match err {
            BadMpan::Format(_) => "mpan_core is not 13 digits".to_owned(),
            BadMpan::CheckDigit { expected, .. } => {
                format!("mpan_core fails its check digit (expected {expected})")
            }
        })?;
    let gsp = field("gsp_group", gsp)?.parse::<GspGroup>().map_err(|_| {
        "gsp_group is not one of _A,_B,_C,_D,_E,_F,_G,_H,_J,_K,_L,_M,_N,_P".to_owned()
    })?;
    let distributor = mpan.distributor();
    if let Some(own) = GspGroup::of_area(distributor)
        && own != gsp
    {
        return Err(format!(
            "mpan_core {mpan} is in DNO area {} whose GSP group is {own}, but gsp_group is {gsp}",
            distributor.0
        ));
    }
    Ok((device, RegistryEntry { mpan, gsp }, feeder))
}

fn field_count(record: &ByteRecord, columns: usize) -> String {
    if record.len() == 1 && record.as_slice().trim_ascii().is_empty() {
        return "blank line".to_owned();
    }
    let header = if columns == 5 {
        HEADER_WITH_FEEDERS
    } else {
        HEADER
    };
    format!(
        "expected {columns} fields ({header}), found {}",
        record.len()
    )
}

fn field<'a>(name: &str, bytes: &'a [u8]) -> Result<&'a str, String> {
    std::str::from_utf8(bytes.trim_ascii()).map_err(|_| format!("{name} is not valid UTF-8"))
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
