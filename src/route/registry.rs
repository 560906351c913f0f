//! The device registry: device EUI-64 → MPAN core and GSP group.
//!
//! ## File format
//!
//! CSV, UTF-8. The first line is exactly `device_id,mpan_core,gsp_group`; each following line
//! is one device, e.g. `00-db-12-34-56-78-90-a0,1234567890126,_C`. Whitespace around fields
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
//! recomputed on read, and the GSP group in 4 bits) and hashbrown's 1 control byte. Tables
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

use crate::domain::mpan::BadMpan;
use crate::domain::{DeviceId, DistributorId, GspGroup, MpanCore};

/// The line a registry file starts with.
pub const HEADER: &str = "device_id,mpan_core,gsp_group";
/// A failed load keeps this many row errors; it counts all of them.
pub const MAX_REPORTED_ROWS: usize = 100;

/// Bytes in a typical row, to size the table from the file length before loading.
const TYPICAL_ROW_BYTES: u64 = 41;
/// Upper bound on that guess, so an odd file cannot make the load reserve absurd memory.
const MAX_RESERVED_DEVICES: u64 = 1 << 26;
/// The lowest DNO area; packed GSP groups are stored as their host area's offset from it.
const FIRST_AREA: u8 = 10;

/// Where a registered device's supply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegistryEntry {
    /// The supply's MPAN core.
    pub mpan: MpanCore,
    /// The supply's GSP group.
    pub gsp: GspGroup,
}

impl RegistryEntry {
    fn pack(self) -> u64 {
        let area = self.gsp.host_distributor().0.saturating_sub(FIRST_AREA);
        ((self.mpan.value() / 10) << 4) | u64::from(area & 0xF)
    }

    fn unpack(packed: u64) -> Option<Self> {
        let mpan = MpanCore::with_check_digit(packed >> 4)?;
        let area = u8::try_from(packed & 0xF).ok()?;
        let gsp = GspGroup::of_area(DistributorId(FIRST_AREA + area))?;
        Some(Self { mpan, gsp })
    }
}

/// Device → supply lookup; immutable once loaded (a reload builds a new one).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Registry {
    /// Values are [`RegistryEntry::pack`]ed.
    devices: HashMap<DeviceId, u64>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("devices", &self.devices.len())
            .finish()
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
        0 => format!("blank or missing; a registry starts with the header {HEADER:?}"),
        1 => format!("not the header {HEADER:?} (1 field)"),
        n => format!("not the header {HEADER:?} ({n} fields)"),
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
            .insert(device, entry.pack())
            .and_then(RegistryEntry::unpack)
    }

    /// Every device and its entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (DeviceId, RegistryEntry)> + '_ {
        self.devices
            .iter()
            .filter_map(|(device, packed)| Some((*device, RegistryEntry::unpack(*packed)?)))
    }

    /// Writes the registry in its file format, header first, sorted by device id, so that
    /// [`Registry::from_reader`] reads back the same registry.
    pub fn write_csv(&self, writer: impl Write) -> io::Result<()> {
        let mut rows: Vec<(DeviceId, RegistryEntry)> = self.iter().collect();
        rows.sort_unstable_by_key(|(device, _)| *device);
        let mut out = BufWriter::new(writer);
        writeln!(out, "{HEADER}")?;
        for (device, entry) in rows {
            writeln!(out, "{device},{},{}", entry.mpan, entry.gsp)?;
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
    errors: Vec<RowError>,
    total_errors: usize,
}

impl Loader {
    fn new(expected_rows: usize) -> Self {
        Self {
            devices: HashMap::with_capacity(expected_rows),
            entries: Vec::with_capacity(expected_rows),
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
        if header != Some(1) || !is_header(&record) {
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
            match parse_row(&record) {
                Ok((device, entry)) => self.accept(line, device, entry),
                Err(reason) => self.reject(line, reason),
            }
        }
        // The last line counted is the empty one after the newline this loader appended.
        for blank in next_line..csv.position().line().saturating_sub(1) {
            self.reject(blank, "blank line".to_owned());
        }
        self.finish(source_name)
    }

    fn accept(&mut self, line: u64, device: DeviceId, entry: RegistryEntry) {
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
                slot.insert((u64::from(ordinal) << 32) | u64::from(line32));
                self.entries.push(entry.pack());
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
            ..
        } = self;
        for value in devices.values_mut() {
            // Every ordinal indexes the entry pushed with it.
            *value = entries[(*value >> 32) as usize];
        }
        Ok(Registry { devices })
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

fn is_header(record: &ByteRecord) -> bool {
    let mut fields = record.iter().map(<[u8]>::trim_ascii);
    let first = fields
        .next()
        .map(|f| f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f));
    first == Some(b"device_id")
        && fields.next() == Some(b"mpan_core")
        && fields.next() == Some(b"gsp_group")
        && fields.next().is_none()
}

fn parse_row(record: &ByteRecord) -> Result<(DeviceId, RegistryEntry), String> {
    let (Some(device), Some(mpan), Some(gsp), None) =
        (record.get(0), record.get(1), record.get(2), record.get(3))
    else {
        if record.len() == 1 && record.as_slice().trim_ascii().is_empty() {
            return Err("blank line".to_owned());
        }
        return Err(format!(
            "expected 3 fields ({HEADER}), found {}",
            record.len()
        ));
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
    Ok((device, RegistryEntry { mpan, gsp }))
}

fn field<'a>(name: &str, bytes: &'a [u8]) -> Result<&'a str, String> {
    std::str::from_utf8(bytes.trim_ascii()).map_err(|_| format!("{name} is not valid UTF-8"))
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
