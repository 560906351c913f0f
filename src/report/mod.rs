//! `outage-relay report`: the SLA compliance report, per subscriber (DNO), UTC day and kind.
//!
//! It reads each alert due in the period and what became of it (the delivery journal the
//! alert logs keep: see `crate::log::Settled`), from an embedded relay's data directory
//! (`--data-dir`, offline) or from a running relay of any backend (`--target`, through
//! `Admin.ListDeliveries`), and writes `compliance.csv` ([`table`]) and a self-contained
//! `compliance.html` ([`html`]) into `--out`. The figures and their definitions are in
//! [`aggregate`]; reading and writing are here, the rest is pure.

pub mod aggregate;
pub mod html;
pub mod period;
pub mod table;
pub mod wire;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;

use self::aggregate::{Record, Report};
use self::period::Period;
use crate::domain::UtcMillis;
use crate::proto;
use crate::proto::admin_client::AdminClient;
use crate::tools::tls_args::TlsArgs;

/// Exit code for bad flags (EX_USAGE), as `serve` uses for a bad configuration.
const EXIT_USAGE: u8 = 64;

/// Flags of `outage-relay report`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Data directory of an embedded relay, read offline: the relay must be stopped (its
    /// lock is taken), or point this at a copy.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "target",
        required_unless_present = "target"
    )]
    pub data_dir: Option<PathBuf>,
    /// gRPC endpoint of a running relay (any backend), asked through `Admin.ListDeliveries`
    /// (an `admin` identity under mutual TLS; `https://` with `--tls-ca`).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// TLS to the relay, for `--target`.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// First UTC day, YYYY-MM-DD [default: 29 days before --to].
    #[arg(long, value_name = "DATE")]
    pub from: Option<String>,
    /// Last UTC day, YYYY-MM-DD, included [default: today].
    #[arg(long, value_name = "DATE")]
    pub to: Option<String>,
    /// Directory to write compliance.csv and compliance.html into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
}

/// Runs `outage-relay report`: exit 0 with the files written, 64 for bad flags.
pub async fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let period = match Period::of(args.from.as_deref(), args.to.as_deref(), period::today()) {
        Ok(period) => period,
        Err(err) => {
            eprintln!("outage-relay report: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let (records, subscribers) = match (&args.data_dir, &args.target) {
        (Some(dir), _) => read_data_dir(dir.clone(), period).await?,
        (None, Some(target)) => ask_relay(target, &args.tls, period).await?,
        (None, None) => {
            eprintln!("outage-relay report: give --data-dir or --target");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let report = aggregate::report(&records, &subscribers, period, UtcMillis::system_now());
    write(&report, &args.out)?;
    let [alerts, within, late_relay, late_upstream, never, pending] = report.totals();
    println!(
        "outage-relay report: {} to {}, {} subscribers, {alerts} alerts: {within} within SLA, \
         {late_relay} late (relay), {late_upstream} late (upstream), {never} never delivered, \
         {pending} pending; wrote {} and {}",
        period::format_day(period.first),
        period::format_day(period.last),
        report.subscribers.len(),
        args.out.join("compliance.csv").display(),
        args.out.join("compliance.html").display(),
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `compliance.csv` and `compliance.html` into `out`.
pub fn write(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let csv = table::render(report).context("writing the CSV")?;
    for (name, text) in [
        ("compliance.csv", csv),
        ("compliance.html", html::render(report)),
    ] {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The records of `period` in the data directory `dir`, and every subscriber it holds.
async fn read_data_dir(dir: PathBuf, period: Period) -> anyhow::Result<(Vec<Record>, Vec<String>)> {
    let found = tokio::task::spawn_blocking(move || {
        crate::log::local::journal::read_data_dir(&dir, period.start(), period.end()).with_context(
            || {
                format!(
                    "reading {} (stop the relay first, read a copy, or ask it with --target)",
                    dir.display()
                )
            },
        )
    })
    .await??;
    let subscribers = found.iter().map(|(name, _)| name.clone()).collect();
    let records = found
        .iter()
        .flat_map(|(name, deliveries)| deliveries.iter().map(|d| wire::record(name, d)))
        .collect();
    Ok((records, subscribers))
}

/// The records of `period` a running relay at `target` holds, and its subscribers.
async fn ask_relay(
    target: &str,
    tls: &TlsArgs,
    period: Period,
) -> anyhow::Result<(Vec<Record>, Vec<String>)> {
    let channel = tls
        .endpoint(target)?
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let mut admin = AdminClient::new(channel);
    let subscribers = admin
        .get_delivery_status(proto::GetDeliveryStatusRequest::default())
        .await
        .context("Admin.GetDeliveryStatus")?
        .into_inner()
        .subscribers
        .into_iter()
        .map(|status| status.subscriber)
        .collect();
    let mut stream = admin
        .list_deliveries(proto::ListDeliveriesRequest {
            from: Some(period.start().to_proto()),
            to: Some(period.end().to_proto()),
            subscriber: String::new(),
        })
        .await
        .context("Admin.ListDeliveries")?
        .into_inner();
    let mut records = Vec::new();
    while let Some(message) = stream.next().await {
        let message = message.context("Admin.ListDeliveries")?;
        for delivery in &message.deliveries {
            records.push(wire::from_proto(delivery).map_err(anyhow::Error::msg)?);
        }
    }
    Ok((records, subscribers))
}
