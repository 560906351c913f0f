//! `outage-relay publish`: sends device events to the relay the way a CSP adapter does.
//!
//! One event from flags goes through the unary `Ingest.PublishBatch`; a CSV file
//! (`--from-file`) goes in batches over the bidirectional `Ingest.Publish` stream, one
//! `BatchAck` per batch. Either way the acks are printed, and any rejected event makes the
//! run fail.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::tls_args::TlsArgs;
use crate::domain::{DeviceId, UtcMillis};
use crate::error::error_chain;
use crate::proto::ingest_client::IngestClient;
use crate::proto::{BatchAck, DeviceEvent, EventBatch, SupplyLost, SupplyRestored, device_event};

/// Batches queued for the `Publish` stream ahead of the transport.
const BATCHES_QUEUED: usize = 4;
/// Bad CSV rows listed in the error before the rest are only counted.
const BAD_ROWS_SHOWN: usize = 20;

/// Flags of `outage-relay publish`.
#[derive(clap::Args, Debug, Clone)]
#[command(group(
    clap::ArgGroup::new("event_kind")
        .required(true)
        .args(["lost", "restored", "from_file"])
))]
pub struct PublishArgs {
    /// The relay's gRPC endpoint (`https://` with `--tls-ca`).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// TLS to the relay; the certificate identifies a publisher.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Device EUI-64, e.g. `00-db-12-34-56-78-90-a0`.
    #[arg(long, value_name = "EUI", required_unless_present = "from_file")]
    pub device: Option<String>,
    /// Phase: 0 for the whole supply, 1 to 3 for one phase of a polyphase supply.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=3))]
    pub phase: i32,
    /// 13-digit MPAN core, used by the relay to route an unregistered device.
    #[arg(long, value_name = "DIGITS")]
    pub mpan_core: Option<String>,
    /// Event ID; by default derived from device, phase, kind and times, so a rerun with the
    /// same times is a duplicate.
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
    /// Supply lost at `--at`.
    #[arg(long)]
    pub lost: bool,
    /// Supply restored at `--at`.
    #[arg(long)]
    pub restored: bool,
    /// When it happened: RFC 3339 (`2026-11-24T14:00:00Z`), a time ago (`-5m`), or `now`
    /// (the default).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, value_parser = parse_time)]
    pub at: Option<UtcMillis>,
    /// With `--restored`: when the outage began, as the device reports it (lets the relay
    /// alert an outage it learns of late).
    #[arg(
        long,
        value_name = "TIME",
        allow_hyphen_values = true,
        value_parser = parse_time,
        conflicts_with = "lost"
    )]
    pub lost_at: Option<UtcMillis>,
    /// Publish every event of a CSV file with header
    /// `device_id,phase,kind,at,lost_at,mpan_core,event_id` (kind `lost` or `restored`;
    /// phase, at, lost_at, mpan_core and event_id may be empty).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["device", "phase", "mpan_core", "event_id", "at", "lost_at"]
    )]
    pub from_file: Option<PathBuf>,
    /// Events per batch with `--from-file`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub batch_size: u32,
}

/// Totals of the acks a publish run received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishSummary {
    /// Events accepted for the first time.
    pub accepted: u64,
    /// Events the relay had already seen.
    pub duplicates: u64,
    /// Events the relay rejected.
    pub rejected: u64,
}

impl PublishSummary {
    fn add(&mut self, ack: &BatchAck) {
        self.accepted += ack.accepted;
        self.duplicates += ack.duplicates;
        self.rejected += ack.rejected.len() as u64;
    }
}

impl std::fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted {}, duplicates {}, rejected {}",
            self.accepted, self.duplicates, self.rejected
        )
    }
}

/// Runs `outage-relay publish`: sends the event(s), prints the acks, and fails if the relay
/// rejected any event.
pub async fn run(args: PublishArgs) -> anyhow::Result<PublishSummary> {
    let summary = match &args.from_file {
        Some(path) => publish_file(&args.target, &args.tls, path, args.batch_size as usize).await?,
        None => publish_one(&args).await?,
    };
    if summary.rejected > 0 {
        anyhow::bail!("the relay rejected {} event(s)", summary.rejected);
    }
    Ok(summary)
}

/// Which way the supply went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lost,
    Restored,
}

/// One event to publish, before it becomes a proto `DeviceEvent`.
struct EventSpec {
    device: String,
    phase: i32,
    kind: Kind,
    at: UtcMillis,
    lost_at: Option<UtcMillis>,
    mpan_core: Option<String>,
    event_id: Option<String>,
}

impl EventSpec {
    fn into_proto(mut self) -> DeviceEvent {
        let event_id = match self.event_id.take() {
            Some(event_id) => event_id,
            None => self.default_event_id(),
        };
        let (kind, alert_code) = match self.kind {
            Kind::Lost => (
                device_event::Kind::Lost(SupplyLost {
                    lost_at: Some(self.at.to_proto()),
                }),
                0,
            ),
            Kind::Restored => {
                let long = self
                    .lost_at
                    .is_some_and(|lost_at| self.at.0.saturating_sub(lost_at.0) >= 180_000);
                (
                    device_event::Kind::Restored(SupplyRestored {
                        restored_at: Some(self.at.to_proto()),
                        lost_at: self.lost_at.map(UtcMillis::to_proto),
                    }),
                    restoration_code(self.phase, long),
                )
            }
        };
        DeviceEvent {
            event_id,
            device_id: self.device,
            phase: self.phase,
            mpan_core: self.mpan_core,
            kind: Some(kind),
            alert_code,
        }
    }

    /// `{lost|restored}-{device}-{phase}-{at ms}[-{lost_at ms}]`, device in canonical form.
    fn default_event_id(&self) -> String {
        let device = self
            .device
            .parse::<DeviceId>()
            .map_or_else(|_| self.device.clone(), |id| id.to_string());
        let kind = match self.kind {
            Kind::Lost => "lost",
            Kind::Restored => "restored",
        };
        let mut id = format!("{kind}-{device}-{}-{}", self.phase, self.at.0);
        if let Some(lost_at) = self.lost_at {
            id.push_str(&format!("-{}", lost_at.0));
        }
        id
    }
}

/// The GBCS restoration alert code a device would send: `0x8F35`/`0x8F36` for the whole
/// supply (the latter for outages of 3 minutes or more), then a pair per phase.
fn restoration_code(phase: i32, long: bool) -> u32 {
    let base = match phase {
        1 => 0x8F37,
        2 => 0x8F39,
        3 => 0x8F3B,
        _ => 0x8F35,
    };
    base + u32::from(long)
}

/// Parses `--at`-style times against the system clock.
fn parse_time(text: &str) -> Result<UtcMillis, String> {
    parse_time_at(text, UtcMillis::system_now())
}

/// Parses RFC 3339 (`2026-11-24T14:00:00Z`, UTC only), a time ago (`-5m`, `-1h 30m`), or
/// `now`, relative to `now`.
fn parse_time_at(text: &str, now: UtcMillis) -> Result<UtcMillis, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix('-') {
        let ago = humantime::parse_duration(ago.trim())
            .map_err(|error| format!("{text:?} is not a time ago like -5m: {error}"))?;
        let millis = i64::try_from(ago.as_millis())
            .map_err(|_| format!("{text:?} is too far in the past"))?;
        return Ok(UtcMillis(now.0.saturating_sub(millis)));
    }
    let at = humantime::parse_rfc3339_weak(text).map_err(|error| {
        format!("{text:?} is neither RFC 3339 (2026-11-24T14:00:00Z) nor a time ago (-5m): {error}")
    })?;
    let since_epoch = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    i64::try_from(since_epoch.as_millis())
        .map(UtcMillis)
        .map_err(|_| format!("{text:?} is out of range"))
}

async fn connect(
    target: &str,
    tls: &TlsArgs,
) -> anyhow::Result<IngestClient<tonic::transport::Channel>> {
    let channel = tls
        .endpoint(target)?
        .connect()
        .await
        .map_err(|err| anyhow::anyhow!("connecting to {target}: {}", error_chain(&err)))?;
    Ok(IngestClient::new(channel))
}

/// Publishes the single event described by the flags with `PublishBatch`.
async fn publish_one(args: &PublishArgs) -> anyhow::Result<PublishSummary> {
    let device = args
        .device
        .clone()
        .context("--device is required without --from-file")?;
    let spec = EventSpec {
        device,
        phase: args.phase,
        kind: if args.restored {
            Kind::Restored
        } else {
            Kind::Lost
        },
        at: args.at.unwrap_or_else(UtcMillis::system_now),
        lost_at: args.lost_at,
        mpan_core: args.mpan_core.clone(),
        event_id: args.event_id.clone(),
    };
    let event = spec.into_proto();
    let event_id = event.event_id.clone();
    let mut client = connect(&args.target, &args.tls).await?;
    let ack = client
        .publish_batch(EventBatch {
            events: vec![event],
            batch_id: 1,
        })
        .await
        .context("PublishBatch")?
        .into_inner();
    let mut summary = PublishSummary::default();
    summary.add(&ack);
    println!("event {event_id}: {summary}");
    for error in &ack.rejected {
        println!("  rejected: {}", error.reason);
    }
    Ok(summary)
}

/// Publishes every event of a CSV file in batches over the `Publish` stream.
async fn publish_file(
    target: &str,
    tls: &TlsArgs,
    path: &Path,
    batch_size: usize,
) -> anyhow::Result<PublishSummary> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows = parse_csv(&text, UtcMillis::system_now())
        .with_context(|| format!("reading {}", path.display()))?;
    let total_events = rows.len();
    if total_events == 0 {
        println!("{}: no events", path.display());
        return Ok(PublishSummary::default());
    }
    let mut lines_by_batch: Vec<Vec<u64>> = Vec::new();
    let mut batches = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let (lines, events): (Vec<u64>, Vec<DeviceEvent>) = rows.by_ref().take(batch_size).unzip();
        lines_by_batch.push(lines);
        batches.push(EventBatch {
            events,
            batch_id: batches.len() as u64 + 1,
        });
    }
    let total_batches = batches.len();

    let mut client = connect(target, tls).await?;
    let (tx, rx) = mpsc::channel(BATCHES_QUEUED);
    let sender = tokio::spawn(async move {
        for batch in batches {
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    let mut acks = client
        .publish(ReceiverStream::new(rx))
        .await
        .context("Publish")?
        .into_inner();
    let mut summary = PublishSummary::default();
    let mut acked = 0;
    while let Some(ack) = acks.message().await.context("Publish ack stream")? {
        acked += 1;
        let expected = acked as u64;
        if ack.batch_id != expected {
            sender.abort();
            anyhow::bail!("got the ack of batch {}, expected {expected}", ack.batch_id);
        }
        summary.add(&ack);
        let lines = lines_by_batch.get(acked - 1).map_or(&[][..], Vec::as_slice);
        for error in &ack.rejected {
            let line = lines.get(error.index as usize).copied().unwrap_or(0);
            println!("line {line}: rejected: {}", error.reason);
        }
    }
    sender.abort();
    println!(
        "{}: {total_events} events in {acked} of {total_batches} batches acknowledged: {summary}",
        path.display()
    );
    if acked < total_batches {
        anyhow::bail!("the relay acknowledged only {acked} of {total_batches} batches");
    }
    Ok(summary)
}

/// Reads publish CSV text: `(line number, event)` in file order, skipping blank lines and
/// `#` comments. Fails listing every bad row.
fn parse_csv(text: &str, now: UtcMillis) -> anyhow::Result<Vec<(u64, DeviceEvent)>> {
    // The csv crate's line numbers drift on skipped lines, so drop those first and map back.
    let mut kept = String::with_capacity(text.len());
    let mut original_lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
        original_lines.push(index as u64 + 1);
    }
    let line_of = |position: Option<&csv::Position>| {
        position
            .and_then(|position| usize::try_from(position.line()).ok())
            .and_then(|line| original_lines.get(line.checked_sub(1)?))
            .copied()
            .unwrap_or(0)
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(kept.as_bytes());
    let columns = Columns::from_header(reader.headers().context("reading the header")?)?;
    let mut events = Vec::new();
    let mut bad_rows = Vec::new();
    for record in reader.records() {
        let parsed = record
            .map_err(|error| {
                let reason = match error.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("{len} field(s), the header has {expected_len}"),
                    _ => error.to_string(),
                };
                (line_of(error.position()), reason)
            })
            .and_then(|record| {
                let line = line_of(record.position());
                columns
                    .event(&record, now)
                    .map(|spec| (line, spec.into_proto()))
                    .map_err(|reason| (line, reason))
            });
        match parsed {
            Ok(row) => events.push(row),
            Err((line, reason)) => bad_rows.push(format!("line {line}: {reason}")),
        }
    }
    if bad_rows.is_empty() {
        return Ok(events);
    }
    let mut message = format!("{} bad row(s):", bad_rows.len());
    for row in bad_rows.iter().take(BAD_ROWS_SHOWN) {
        message.push_str("\n  ");
        message.push_str(row);
    }
    if bad_rows.len() > BAD_ROWS_SHOWN {
        message.push_str(&format!(
            "\n  … and {} more",
            bad_rows.len() - BAD_ROWS_SHOWN
        ));
    }
    Err(anyhow::anyhow!(message))
}

/// Positions of the CSV columns.
struct Columns {
    device_id: usize,
    kind: usize,
    phase: Option<usize>,
    at: Option<usize>,
    lost_at: Option<usize>,
    mpan_core: Option<usize>,
    event_id: Option<usize>,
}

impl Columns {
    fn from_header(header: &csv::StringRecord) -> anyhow::Result<Self> {
        const KNOWN: [&str; 7] = [
            "device_id",
            "phase",
            "kind",
            "at",
            "lost_at",
            "mpan_core",
            "event_id",
        ];
        if let Some(unknown) = header.iter().find(|name| !KNOWN.contains(name)) {
            anyhow::bail!("unknown column {unknown:?} (columns: {})", KNOWN.join(","));
        }
        let find = |name: &str| header.iter().position(|column| column == name);
        let required =
            |name: &str| find(name).with_context(|| format!("the header has no {name:?} column"));
        Ok(Self {
            device_id: required("device_id")?,
            kind: required("kind")?,
            phase: find("phase"),
            at: find("at"),
            lost_at: find("lost_at"),
            mpan_core: find("mpan_core"),
            event_id: find("event_id"),
        })
    }

    fn event(&self, record: &csv::StringRecord, now: UtcMillis) -> Result<EventSpec, String> {
        let field = |column: Option<usize>| {
            column
                .and_then(|index| record.get(index))
                .filter(|value| !value.is_empty())
        };
        let device = field(Some(self.device_id)).ok_or("device_id is empty")?;
        let phase = match field(self.phase) {
            None => 0,
            Some(text) => text
                .parse::<i32>()
                .ok()
                .filter(|phase| (0..=3).contains(phase))
                .ok_or_else(|| format!("phase {text:?} is not 0, 1, 2 or 3"))?,
        };
        let kind = match field(Some(self.kind)) {
            Some(text) if text.eq_ignore_ascii_case("lost") => Kind::Lost,
            Some(text) if text.eq_ignore_ascii_case("restored") => Kind::Restored,
            other => {
                return Err(format!(
                    "kind {:?} is not \"lost\" or \"restored\"",
                    other.unwrap_or("")
                ));
            }
        };
        let at = field(self.at)
            .map(|text| parse_time_at(text, now).map_err(|error| format!("at: {error}")))
            .transpose()?
            .unwrap_or(now);
        let lost_at = field(self.lost_at)
            .map(|text| parse_time_at(text, now).map_err(|error| format!("lost_at: {error}")))
            .transpose()?;
        if kind == Kind::Lost && lost_at.is_some() {
            return Err("lost_at is only for kind \"restored\" (use at for a loss)".to_owned());
        }
        Ok(EventSpec {
            device: device.to_owned(),
            phase,
            kind,
            at,
            lost_at,
            mpan_core: field(self.mpan_core).map(str::to_owned),
            event_id: field(self.event_id).map(str::to_owned),
        })
    }
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
