//! `outage-relay bench`: the SLA benchmark.
//!
//! One run:
//! 1. generates a fleet ([`fleet`]: valid MPAN cores over the 14 DNO areas by customer
//!    weight, plus IDNO supplies) and writes its registry CSV;
//! 2. scripts the scenario ([`scenario`] presets, mixable) and compresses it onto the wall
//!    clock with `--time-scale`, working out which alerts the relay must and must not send
//!    ([`model`]);
//! 3. starts the relay (this binary, `serve`, on free ports, a fresh data directory, the
//!    registry, and the debounce and SLA windows scaled together) or uses `--target`;
//! 4. connects as every DNO subscriber ([`subscriber`]) and as the CSP publishers
//!    ([`publisher`]), which send each event when its time comes, with its scripted device
//!    time; [`monitor`] samples the relay and draws the progress bar ([`runner`] drives it);
//! 5. checks every received alert against the model ([`check`]), measures latency, SLA
//!    compliance by cause and series over time ([`measure`]), and writes `result.json`, a
//!    summary table ([`report`]) and `report.html` with inline SVG plots ([`html`],
//!    [`plots`], [`svg`]).
//!
//! With `--watch-summaries INTERVAL` every subscriber also watches its storm summaries for
//! the whole run ([`summaries`]), and the report counts what they carried.
//!
//! Exit status: 0 when the model check passed and the SLA held; 1 when the model check
//! failed (or the run could not be done); 2 when the model check passed but the relay
//! breached the SLA (0 with `--allow-sla-breach`).

pub mod check;
pub mod fleet;
pub mod html;
pub mod measure;
pub mod model;
pub mod monitor;
pub mod plots;
pub mod presets;
pub mod publisher;
pub mod relay;
pub mod report;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod subscriber;
pub mod summaries;
pub mod svg;
pub mod system;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use self::check::Routes;
use self::fleet::Fleet;
use self::model::{Model, Timing};
use self::publisher::Tracker;
use self::relay::Relay;
use self::report::{BenchResult, Ingest, RelayInfo, Resources, ScenarioInfo, Verdict};
use self::scenario::{Overrides, Preset};
use self::subscriber::Counters;
use self::system::{Machine, ProcStats};
use crate::domain::UtcMillis;

/// Flags of `outage-relay bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenario presets, comma-separated or repeated: steady, substation-trip, storm,
    /// flapping, late-learned, duplicates (a modifier). Mixed presets run at once on disjoint
    /// supplies.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "substation-trip"
    )]
    pub scenario: Vec<Preset>,
    /// Devices (supplies) in the generated fleet.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub devices: u32,
    /// Outages per preset that has a count [defaults: substation-trip 100,000 supplies, storm
    /// 1,000,000 supplies, flapping 10,000, late-learned 10,000].
    #[arg(long)]
    pub outages: Option<u64>,
    /// Each preset's main duration, in scenario time [defaults: steady 10m (run length),
    /// substation-trip 3m 30s (trip → restoration), storm 6h (restoration span), flapping 5m,
    /// late-learned 5m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// steady: events per second [default: 100].
    #[arg(long)]
    pub rate: Option<f64>,
    /// duplicates: sends of every event [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=10))]
    pub copies: Option<u32>,
    /// Share of IDNO supplies in the fleet, 0 to 1.
    #[arg(long, default_value_t = 0.02)]
    pub idno_share: f64,
    /// Seed of every random choice: the same seed replays the same fleet and timeline.
    #[arg(long, default_value = "1", value_parser = parse_seed)]
    pub seed: u64,
    /// Divide scenario time, debounce and SLA windows by this: 1 is real time (3 min
    /// debounce, 60 s windows), 60 gives a 3 s debounce and 1 s windows.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Benchmark the relay running at URL (same machine) instead of starting one. Its
    /// registry is replaced with the fleet's (written to --out, which must be in its
    /// --registry-dir); start it with the scaled --debounce, --poa-sla and --pra-sla. CPU and
    /// memory are then not measured.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Directory for result.json, report.html and relay.log (created if missing).
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    pub out: PathBuf,
    /// Publishers, one Publish stream each (the two CSPs' adapters, two streams each). Fewer
    /// streams or smaller batches lower the ingest rate the relay can reach.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub publishers: u16,
    /// Events per batch at most (the relay accepts up to 10,000); a batch holds whatever is
    /// due when it is sent, so quiet periods send small batches.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub batch_size: u16,
    /// No progress bar and no status lines (the summary is still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Exit 0 even when the relay breached the SLA (the report still says FAIL).
    #[arg(long)]
    pub allow_sla_breach: bool,
    /// Storage of the relay the benchmark starts: `embedded`, or `jetstream` (with
    /// `--jetstream-servers`; streams get a fresh prefix each run).
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "jetstream"])]
    pub backend: String,
    /// JetStream servers for `--backend jetstream`, comma-separated.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub jetstream_servers: Vec<String>,
    /// `store.jetstream.event_streams` of the relay the benchmark starts [default: the
    /// relay's own, 3], to compare layouts.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub jetstream_event_streams: Option<u16>,
    /// Every subscriber also watches its storm summaries (`AlertFeed.WatchSummaries`) every
    /// INTERVAL (wall clock, e.g. `1s`) for the whole run; the report counts them. Off by
    /// default.
    #[arg(long, value_name = "INTERVAL", value_parser = humantime::parse_duration)]
    pub watch_summaries: Option<Duration>,
}

/// A configuration file for a relay on the JetStream backend, with a prefix of its own.
fn jetstream_config(args: &BenchArgs) -> anyhow::Result<Option<PathBuf>> {
    if args.backend != "jetstream" {
        return Ok(None);
    }
    anyhow::ensure!(
        !args.jetstream_servers.is_empty(),
        "--backend jetstream needs --jetstream-servers"
    );
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let servers: Vec<String> = args
        .jetstream_servers
        .iter()
        .map(|url| format!("{url:?}"))
        .collect();
    let mut text = format!(
        "[store]\nbackend = \"jetstream\"\n\n[store.jetstream]\nservers = [{}]\nprefix = \"BENCH{stamp}\"\ninstance = \"bench\"\n",
        servers.join(", ")
    );
    if let Some(streams) = args.jetstream_event_streams {
        text.push_str(&format!("event_streams = {streams}\n"));
    }
    let path = args.out.join("relay.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path))
}

fn parse_seed(text: &str) -> Result<u64, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|error| format!("{text:?} is not a seed (decimal or 0x hex): {error}"))
}

/// Runs the benchmark; see the module doc for the exit status.
pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    if !(args.time_scale >= 1.0 && args.time_scale <= 100_000.0) {
        anyhow::bail!("--time-scale must be between 1 and 100000");
    }
    if !(0.0..=1.0).contains(&args.idno_share) {
        anyhow::bail!("--idno-share must be between 0 and 1");
    }
    if args
        .watch_summaries
        .is_some_and(|interval| interval.is_zero())
    {
        anyhow::bail!("--watch-summaries must be longer than zero");
    }
    let began = std::time::Instant::now();
    let started_at = UtcMillis::system_now().to_string();
    let machine = Machine::detect();
    let say = |text: String| {
        if !args.quiet {
            println!("{text}");
        }
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let fleet = Arc::new(Fleet::generate(args.devices, args.idno_share, args.seed));
    let registry = args.out.join("registry.csv");
    fleet
        .write_registry(&registry)
        .with_context(|| format!("writing {}", registry.display()))?;
    let overrides = Overrides {
        outages: args.outages,
        duration: args.duration,
        rate: args.rate,
        copies: args.copies,
    };
    let plan = scenario::plan(&fleet, &args.scenario, &overrides, args.seed)?;
    let timing = Timing::compressed(args.time_scale);
    let model = Arc::new(Model::build(&plan, timing, args.seed));
    say(format!(
        "fleet: {} devices; {} outages, {} event sends\n  {}\n{}",
        report::thousands(fleet.len() as u64),
        report::thousands(model.outages.len() as u64),
        report::thousands(model.events.len() as u64),
        plan.descriptions.join("\n  "),
        report::time_statement(&timing)
    ));
    let mut relay = match &args.target {
        Some(url) => Relay::target(url, &registry).await?,
        None => {
            let exe = std::env::current_exe().context("finding this executable")?;
            let data = args.out.join("relay-data");
            let _ = std::fs::remove_dir_all(&data);
            let log = args.out.join("relay.log");
            let config = jetstream_config(&args)?;
            Relay::spawn(&exe, &registry, &data, &log, &timing, config.as_deref()).await?
        }
    };
    let _ = std::fs::remove_file(&registry);
    let idle = relay.pid().and_then(ProcStats::of);
    say(format!("relay: {} serving", relay.url));
    let subscribers = relay.probe().subscribers().await?;
    if let Some(push) = subscribers.iter().find(|s| s.mode != "subscribe") {
        anyhow::bail!(
            "subscriber {} is in push mode; the benchmark subscribes as every DNO",
            push.name
        );
    }
    let tracker = Arc::new(Tracker::new(model.outages.len()));
    let counters = Arc::new(Counters::new(model.outages.len()));
    let settings = runner::Settings {
        publishers: usize::from(args.publishers),
        batch_size: usize::from(args.batch_size),
        progress: !args.quiet && std::io::stdout().is_terminal(),
        run_id: format!("b{:x}", UtcMillis::system_now().0),
        watch_summaries: args.watch_summaries,
    };
    let outcome = runner::drive(
        &mut relay,
        Arc::clone(&model),
        Arc::clone(&fleet),
        &subscribers,
        &settings,
        Arc::clone(&tracker),
        counters,
        &shutdown,
    )
    .await;
    relay.stop();
    let outcome = outcome?;

    let names: Vec<String> = subscribers.iter().map(|s| s.name.clone()).collect();
    let routes = Routes::new(&subscribers);
    let (check, deliveries) = check::check(
        &model,
        &fleet,
        &routes,
        &outcome.received,
        &tracker,
        outcome.parked,
    );
    let alerts = measure::measure(&deliveries, &names, outcome.end_ms);
    let result = BenchResult {
        verdict: verdict(&check, &alerts),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_at,
        wall_seconds: began.elapsed().as_secs_f64(),
        machine,
        relay: RelayInfo {
            mode: if args.target.is_some() {
                "target".to_owned()
            } else {
                format!("child ({})", args.backend)
            },
            url: relay.url.clone(),
            command: relay.command.clone(),
            breaches_counted: outcome.samples.last().and_then(|s| s.relay_breaches),
        },
        scenario: ScenarioInfo {
            presets: args.scenario.iter().map(|p| p.name().to_owned()).collect(),
            descriptions: plan.descriptions.clone(),
            seed: args.seed,
            devices: fleet.len() as u64,
            idno_share: args.idno_share,
            outages: model.outages.len() as u64,
            events: model.events.len() as u64,
            timing,
            time_statement: report::time_statement(&timing),
        },
        ingest: ingest(&tracker, &outcome.samples, &settings),
        resources: resources(&model, fleet.len(), idle, outcome.relay_final),
        check,
        alerts,
        summaries: args
            .watch_summaries
            .map(|interval| summaries::Seen::total(interval, &outcome.summaries)),
        samples: outcome.samples,
    };
    report::write_json(&result, &args.out)?;
    html::write(&result, &args.out)?;
    println!("{}", report::summary(&result));
    println!(
        "wrote {} and {}",
        args.out.join("result.json").display(),
        args.out.join("report.html").display()
    );
    let code = if !result.verdict.model_check_passed {
        1
    } else if !result.verdict.sla_held && !args.allow_sla_breach {
        2
    } else {
        0
    };
    Ok(ExitCode::from(code))
}

fn verdict(check: &check::Check, alerts: &measure::Measured) -> Verdict {
    let relay_breaches: u64 = alerts
        .kinds
        .iter()
        .map(|k| k.compliance.breached_relay)
        .sum();
    let upstream: u64 = alerts
        .kinds
        .iter()
        .map(|k| k.compliance.breached_upstream)
        .sum();
    let sla_held = relay_breaches == 0 && check.missing == 0;
    let p99 = alerts
        .kinds
        .iter()
        .map(|k| format!("{} p99 {} ms", k.kind.to_uppercase(), k.relay_share.p99))
        .collect::<Vec<_>>()
        .join(", ");
    Verdict {
        passed: sla_held && check.passed,
        model_check_passed: check.passed,
        sla_held,
        summary: format!(
            "{p99} (relay share); {relay_breaches} breaches by the relay, {upstream} upstream; \
             model check {} ({} missing, {} unexpected)",
            if check.passed { "passed" } else { "FAILED" },
            check.missing,
            check.unexpected
        ),
    }
}

fn ingest(tracker: &Tracker, samples: &[monitor::Sample], settings: &runner::Settings) -> Ingest {
    use std::sync::atomic::Ordering::Relaxed;
    let first = tracker.first_sent_ms.load(Relaxed);
    let last = tracker.last_acked_ms.load(Relaxed);
    let seconds = if last > first {
        (last - first) as f64 / 1000.0
    } else {
        0.0
    };
    let acked = tracker.acked.load(Relaxed);
    let peak = samples
        .windows(2)
        .map(|w| {
            w[1].events_acked.saturating_sub(w[0].events_acked) as f64 / (w[1].t - w[0].t).max(1e-3)
        })
        .fold(0.0, f64::max);
    Ingest {
        publishers: settings.publishers,
        batch_size: settings.batch_size,
        sent: tracker.sent.load(Relaxed),
        acked,
        accepted: tracker.accepted.load(Relaxed),
        duplicates: tracker.duplicates.load(Relaxed),
        rejected: tracker.rejected.load(Relaxed),
        rejections: tracker.rejections.lock().clone(),
        stream_retries: tracker.retries.load(Relaxed),
        publish_seconds: seconds,
        events_per_second: if seconds > 0.0 {
            acked as f64 / seconds
        } else {
            0.0
        },
        peak_events_per_second: peak,
        max_publish_lag_ms: tracker.max_lag_ms.load(Relaxed),
    }
}

fn resources(
    model: &Model,
    devices: usize,
    idle: Option<ProcStats>,
    end: Option<ProcStats>,
) -> Resources {
    let own = ProcStats::own();
    let max_open = model.max_open();
    let mut resources = Resources {
        max_open_outages: max_open,
        bench_cpu_seconds: own.map(|s| s.cpu_seconds),
        bench_peak_rss_bytes: own.map(|s| s.peak_rss_bytes),
        ..Resources::default()
    };
    let (Some(idle), Some(end)) = (idle, end) else {
        resources.note = "relay CPU and memory not measured: the relay is not a child of the \
                          benchmark (--target) or /proc is not available"
            .to_owned();
        return resources;
    };
    resources.measured = true;
    resources.note = "From /proc of the child relay. RSS includes the embedded alert logs' \
                      cache of recent alerts (store.cache_bytes, 16 MiB by default) and \
                      allocator slack; idle RSS is taken once the registry is loaded, before \
                      any event; bytes per open outage = (peak − idle RSS) / most outages \
                      open at once, an upper bound (it also counts alerts in flight, event-id \
                      dedup and buffers). The benchmark shares the machine's CPUs with the \
                      relay."
        .to_owned();
    resources.relay_cpu_seconds = Some(end.cpu_seconds - idle.cpu_seconds);
    resources.relay_peak_rss_bytes = Some(end.peak_rss_bytes);
    resources.relay_idle_rss_bytes = Some(idle.rss_bytes);
    resources.bytes_per_device = Some(idle.rss_bytes as f64 / devices.max(1) as f64);
    resources.bytes_per_open_outage = (max_open > 0)
        .then(|| end.peak_rss_bytes.saturating_sub(idle.rss_bytes) as f64 / max_open as f64);
    resources
}
