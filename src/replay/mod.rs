//! `outage-relay replay`: re-runs the accepted events of an embedded relay's data directory
//! through the owner's own decisions on a simulated clock, and compares the alerts that
//! result with those the relay stored.
//!
//! Each partition's retained event records (kept for `store.event_retention`) are applied to
//! a fresh [`PartitionState`] built with the relay's settings (or the overrides: "what if the
//! debounce had been 2 minutes"), as the owner applies them ([`simulate`]); each alert is
//! routed by the same [`Router`]. The alerts due in the window ([`window`]) are written to
//! `replayed.csv`, those the relay's subscriber logs and parked alerts hold to `emitted.csv`,
//! and their differences by alert id to `diff.csv` ([`diff`]). Reading and writing are here,
//! the rest is pure.

pub mod diff;
pub mod simulate;
pub mod window;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use self::diff::{COLUMNS, Difference, Row};
use self::window::Window;
use crate::config::{Backend, Config};
use crate::debounce::Settings;
use crate::debounce::dedup::EventIdWindow;
use crate::domain::UtcMillis;
use crate::log::Destination;
use crate::log::local::archive::Archive;
use crate::owner::PartitionState;
use crate::route::{Registry, Router, RoutingTable};

/// Exit code for bad flags or configuration (EX_USAGE), as the other subcommands use.
const EXIT_USAGE: u8 = 64;

/// Flags of `outage-relay replay`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The relay's TOML config file: its debounce, SLA windows, de-duplication, routing and
    /// registry are the replay's [default: the defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory of an embedded relay, read offline: the relay must be stopped (its
    /// lock is taken), or point this at a copy [default: the config's data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Start of the window: alerts due at or after it, RFC 3339 UTC (2026-12-03T10:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// End of the window: alerts due before it; the replay's clock stops here (or now).
    #[arg(long, value_name = "TIME")]
    pub to: String,
    /// Replay with this debounce instead of the config's, e.g. 2m.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub debounce: Option<Duration>,
    /// Route with this device registry instead of the config's.
    #[arg(long, value_name = "FILE")]
    pub registry: Option<PathBuf>,
    /// Directory to write replayed.csv, emitted.csv and diff.csv into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// What a replay found.
#[derive(Debug)]
pub struct Outcome {
    /// The alerts the replay emits that are due in the window, ordered by due time and id.
    pub replayed: Vec<Row>,
    /// The alerts the relay stored that are due in the window, in the same order.
    pub emitted: Vec<Row>,
    /// Their differences.
    pub differences: Vec<Difference>,
    /// Records replayed, of every partition.
    pub records: u64,
    /// Partitions whose retained log starts too late for the window.
    pub warnings: Vec<String>,
}

/// Runs `outage-relay replay`: exit 0 with the files written, 64 for bad flags.
pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let usage = |message: String| {
        eprintln!("outage-relay replay: {message}");
        Ok(ExitCode::from(EXIT_USAGE))
    };
    let window = match Window::parse(&args.from, &args.to) {
        Ok(window) => window,
        Err(err) => return usage(err),
    };
    let mut config = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(config) => config,
            Err(err) => return usage(err.to_string()),
        },
        None => Config::default(),
    };
    let overridden = args
        .debounce
        .is_some_and(|debounce| debounce != config.debounce);
    if let Some(debounce) = args.debounce {
        config.debounce = debounce;
    }
    if let Err(err) = config.validate() {
        return usage(err.to_string());
    }
    if config.store.backend != Backend::Embedded && args.data_dir.is_none() {
        return usage(
            "replay reads an embedded relay's data directory; it is not offered for the \
             JetStream backend (give --data-dir for an embedded one)"
                .into(),
        );
    }
    let registry = match args.registry.as_ref().or(config.registry.as_ref()) {
        Some(path) => Registry::load(path)?,
        None => Registry::empty(),
    };
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.clone());
    let debounce = config.debounce;
    let now = UtcMillis::system_now();
    let outcome = tokio::task::spawn_blocking(move || {
        replay_dir(&dir, &config, registry, window, now).with_context(|| {
            format!(
                "reading {} (stop the relay first, or read a copy)",
                dir.display()
            )
        })
    })
    .await??;
    for warning in &outcome.warnings {
        eprintln!("outage-relay replay: warning: {warning}");
    }
    write(&outcome, &args.out)?;
    let (only_replayed, only_emitted, changed) = diff::counts(&outcome.differences);
    println!(
        "outage-relay replay: {} to {}, debounce {}{}: {} records replayed, {} alerts replayed, \
         {} emitted; diff: {only_replayed} only in replay, {only_emitted} only emitted, \
         {changed} changed; wrote {}",
        window.from,
        window.to,
        humantime::format_duration(debounce),
        if overridden { " (overridden)" } else { "" },
        outcome.records,
        outcome.replayed.len(),
        outcome.emitted.len(),
        args.out.display(),
    );
    Ok(ExitCode::SUCCESS)
}

/// Replays the data directory `dir` with `config` and `registry`, for `window`, its clock
/// stopping at the window's end or `now`.
pub fn replay_dir(
    dir: &Path,
    config: &Config,
    registry: Registry,
    window: Window,
    now: UtcMillis,
) -> anyhow::Result<Outcome> {
    let archive = Archive::open(dir)?;
    let table = RoutingTable::from_config(&config.routing);
    let router = Router::new(RoutingTable::from_config(&config.routing), registry);
    let registry = router.registry();
    let settings = Settings {
        debounce: config.debounce,
        poa_sla: config.poa_sla,
        pra_sla: config.pra_sla,
        tombstone_ttl: config.ingest.tombstone_ttl,
    };
    let partitions = archive.partitions();
    let mut replayed = Vec::new();
    let mut records = 0;
    let mut warnings = Vec::new();
    for partition in 0..partitions {
        let (logged, start) = archive.records(partition)?;
        if start.truncated
            && let Some(warning) = logged
                .first()
                .and_then(|first| window.warning(partition, first.record.arrival, config.debounce))
        {
            warnings.push(warning);
        }
        records += logged.len() as u64;
        // As the owner builds its state: the same settings, and the de-duplication window's
        // capacity shared among the partitions.
        let dedup = EventIdWindow::new(
            config.ingest.dedup_window,
            config.ingest.dedup_capacity / usize::from(partitions.max(1)),
        );
        let mut state = PartitionState::new(settings, dedup);
        let alerts = simulate::replay(
            &mut state,
            logged.iter().map(|logged| &logged.record),
            window.clock_end(now),
        );
        for alert in alerts.into_iter().filter(|a| window.contains(a.due_at)) {
            let row = match router.route_in(&registry, alert.point.device, alert.event_mpan) {
                Ok(route) => Row {
                    alert,
                    subscriber: table.name(route.subscriber).to_owned(),
                    mpan: Some(route.mpan),
                },
                Err(reason) => parked(alert, reason),
            };
            replayed.push(row);
        }
    }
    let mut emitted: Vec<Row> = archive
        .alerts(|alert| window.contains(alert.due_at))?
        .into_iter()
        .map(|stored| match stored.destination {
            Destination::Routed(route) => Row {
                alert: stored.alert,
                subscriber: stored.subscriber,
                mpan: Some(route.mpan),
            },
            Destination::Parked(reason) => parked(stored.alert, reason),
        })
        .collect();
    emitted.extend(
        archive
            .parked()?
            .into_iter()
            .filter(|entry| window.contains(entry.alert.due_at))
            .map(|entry| match entry.destination {
                Destination::Parked(reason) => parked(entry.alert, reason),
                Destination::Routed(route) => Row {
                    alert: entry.alert,
                    subscriber: table.name(route.subscriber).to_owned(),
                    mpan: Some(route.mpan),
                },
            }),
    );
    for rows in [&mut replayed, &mut emitted] {
        rows.sort_by_cached_key(|row| (row.alert.due_at, row.id()));
    }
    let differences = diff::compare(&replayed, &emitted);
    Ok(Outcome {
        replayed,
        emitted,
        differences,
        records,
        warnings,
    })
}

/// A row for an alert that routes nowhere.
fn parked(alert: crate::domain::Alert, reason: crate::route::ParkReason) -> Row {
    Row {
        alert,
        subscriber: format!("parked:{}", reason.as_label()),
        mpan: alert.event_mpan,
    }
}

/// Writes `replayed.csv`, `emitted.csv` and `diff.csv` into `out`.
pub fn write(outcome: &Outcome, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, rows) in [
        ("replayed.csv", &outcome.replayed),
        ("emitted.csv", &outcome.emitted),
    ] {
        let path = out.join(name);
        let mut writer =
            csv::Writer::from_path(&path).with_context(|| format!("writing {}", path.display()))?;
        writer.write_record(COLUMNS)?;
        for row in rows {
            writer.write_record(row.values())?;
        }
        writer.flush()?;
    }
    let path = out.join("diff.csv");
    let mut writer =
        csv::Writer::from_path(&path).with_context(|| format!("writing {}", path.display()))?;
    writer.write_record(["status", "id", "kind", "fields", "replayed", "emitted"])?;
    for difference in &outcome.differences {
        let row = difference.replayed.as_ref().or(difference.emitted.as_ref());
        let side = |row: Option<&Row>| describe(row, &difference.fields);
        writer.write_record([
            difference.status.as_str().to_owned(),
            difference.id(),
            row.map(|row| row.value("kind")).unwrap_or_default(),
            difference.fields.join(";"),
            side(difference.replayed.as_ref()),
            side(difference.emitted.as_ref()),
        ])?;
    }
    writer.flush()?;
    Ok(())
}

/// One side of a diff line: the `fields` that differ as `field=value;...`, or, for an alert
/// on one side only, its subscriber and due time.
fn describe(row: Option<&Row>, fields: &[&str]) -> String {
    let Some(row) = row else {
        return String::new();
    };
    let shown: &[&str] = if fields.is_empty() {
        &["subscriber", "due_at"]
    } else {
        fields
    };
    shown
        .iter()
        .map(|field| format!("{field}={}", row.value(field)))
        .collect::<Vec<_>>()
        .join(";")
}
