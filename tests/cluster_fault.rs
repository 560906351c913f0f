//! A fault test of the JetStream backend: three `outage-relay` binaries (instances `r1`..`r3`,
//! each on its own port) share the three-node JetStream cluster `.ci/test` starts. A storm of
//! [`DEVICES`] supply points is published to them; mid-storm the instance owning the most
//! partitions is SIGKILLed (`kill -9`), a second later the JetStream node leading the most of
//! the run's streams is SIGKILLed (`.ci/nats-cluster kill-node`), and a few seconds later both
//! come back (the relay with the same `--instance` name, ports and flags). Publishing goes on
//! throughout the faults.
//!
//! The storm (deterministic from a seed, printed; `OUTAGE_RELAY_FAULT_SEED` replays one) gives
//! every device one to three outages in device-time order, spread over the six default DNO
//! groups, of the kinds in [`Scenario`](storm::Scenario): long ones (POA then PRA), short ones (no alert) and
//! some left open (POA only); some devices report all their events at once (in one batch).
//! Every outcome is independent of when an instance processes an event (see [`storm`]).
//!
//! Publishers send batches round-robin over the instances and resend a batch to the next
//! instance on any error (events are de-duplicated by their key, so resending is safe). One
//! subscriber per DNO group subscribes through some instance, acknowledges as it goes, and on
//! any stream error reconnects to the next instance, resuming from its shared cursor.
//!
//! At the end, when every expected alert has arrived, each subscriber's receipts are checked
//! against the model of the script:
//! - every expected alert arrived, by `alert_id`, at the right subscriber, with the right
//!   `learned_late`; no alert arrived that the model does not predict;
//! - an `alert_id` received twice carried the same sequence both times (a re-delivery after a
//!   reconnect: counted, not refused); one sequence never carried two alerts;
//! - the received sequences are exactly `1..=head` of the subscriber's stream;
//! - per supply point, the alerts are in the order of its outages, each POA before its PRA;
//! - every `alert_id` names exactly one instance in `emitted_by`: no alert emitted by two
//!   owners.
//!
//! No assertion depends on timing; waits are bounded only so that a broken relay fails the
//! test instead of hanging it. Every process the test starts is killed when it ends, and a
//! JetStream node it killed is restarted, even when it fails. A failure counts the failures by
//! kind (`LOST`, `UNEXPECTED`, `DUPLICATE`, `ORDER`, `GAP`, `EMITTED_BY`, ...), shows the
//! first of each, and keeps the relays' logs (`OUTAGE_RELAY_FAULT_KEEP=1` keeps them anyway).
//!
//! Needs `NATS_URLS` and `NATS_CLUSTER_DIR`, which `.ci/test` exports.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{BIN, Running, free_port, spawn_program};
use common::storm::{self, Pacing, Plan, Rng, SUBSCRIBERS, Script, Shared};
use outage_relay::domain::{DeviceId, UtcMillis};
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::{GetClusterStatusRequest, GetClusterStatusResponse};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Supply points in the storm.
const DEVICES: u64 = 2_400;
/// The relays' debounce (`--debounce 2s`).
const DEBOUNCE_MS: i64 = 2_000;
/// Partitions of the device space (`store.jetstream.partitions`).
const PARTITIONS: usize = 16;
/// Relay instances.
const INSTANCES: usize = 3;
/// The storm: three publishers, each with its own share of the devices.
const PLAN: Plan = Plan {
    devices: DEVICES,
    first_device: 0xfa_0000,
    publishers: 3,
    debounce_ms: DEBOUNCE_MS,
    // Per cent of each scenario, in the order of `storm::Mix`.
    earlier: [60, 20, 20, 0, 0, 0, 0, 0],
    last: [35, 10, 12, 0, 13, 14, 8, 8],
    pending_ms: 3_000..25_000,
    short_ms: 100..1_800,
    bunched_percent: Some(30),
    batch_size: 50..151,
};
/// Each publisher spreads its batches over this long, so that the storm spans the faults.
const STORM_SPAN: Duration = Duration::from_secs(20);
/// When, after the storm starts, the relay instance is SIGKILLed ...
const RELAY_KILL_AT: Duration = Duration::from_secs(6);
/// ... and the JetStream node (during the relay's takeover) ...
const NODE_KILL_AT: Duration = Duration::from_secs(7);
/// ... and when the node is started again ...
const NODE_RESTART_AT: Duration = Duration::from_secs(11);
/// ... and the relay instance.
const RELAY_RESTART_AT: Duration = Duration::from_secs(13);
/// Seed of the script unless `OUTAGE_RELAY_FAULT_SEED` is set.
const DEFAULT_SEED: u64 = 0x5eed_fa17_0000_0003;
/// Bound on one relay start (up and serving), only to turn a hang into a failure.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Bound on the storm, only to turn a hang into a failure.
const STORM_LIMIT: Duration = Duration::from_secs(120);
/// Bound on the final drain, only to turn a hang into a failure.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// Bound on one gRPC call, only to turn a hang into an error that is retried.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// One relay instance: the binary, restarted with the same name, ports and flags.
struct Relay {
    name: String,
    url: String,
    args: Vec<String>,
    dir: PathBuf,
    generation: u32,
    /// Killed when dropped.
    process: Option<Running>,
}

impl Relay {
    fn spawn(&mut self) {
        self.generation += 1;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env = [("OUTAGE_RELAY_LOG", "info"), ("NO_COLOR", "1")];
        let log = format!("{}-{}", self.name, self.generation);
        self.process = Some(spawn_program(BIN, &args, &env, &self.dir, &log));
    }

    /// Starts it and waits until it reports itself serving; a start that exits (say its port
    /// is briefly unavailable after the kill) is retried.
    async fn start(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        self.spawn();
        loop {
            assert!(
                Instant::now() < deadline,
                "{} did not start serving:\n{}",
                self.name,
                self.log_tail(40)
            );
            let process = self.process.as_mut().expect("a relay process");
            if !process.is_running() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.spawn();
                continue;
            }
            if storm::serving(&self.url).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` its process, then reaps it.
    async fn kill9(&mut self) {
        let mut process = self.process.take().expect("a running relay");
        let status = std::process::Command::new("kill")
            .args(["-9", &process.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {} failed", process.pid());
        process.exit().await;
    }

    /// The last `lines` lines of each generation's log.
    fn log_tail(&self, lines: usize) -> String {
        let mut tail = String::new();
        for generation in 1..=self.generation {
            let path = self.dir.join(format!("{}-{generation}.err", self.name));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let _ = writeln!(tail, "--- {}:", path.display());
            for line in &all[all.len().saturating_sub(lines)..] {
                let _ = writeln!(tail, "{line}");
            }
        }
        tail
    }
}

/// Runs `.ci/nats-cluster` with `args`, failing the test if it fails.
async fn nats_cluster(args: Vec<String>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/nats-cluster");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(script).args(&args).output()
    })
    .await
    .expect("the nats-cluster task")
    .expect("run .ci/nats-cluster");
    assert!(
        output.status.success(),
        ".ci/nats-cluster failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How many of this run's streams and buckets each JetStream node (`n1`..`n3`) leads, read
/// with a NATS client of the test's own; empty if that fails.
async fn stream_leaders(nats_urls: &str, prefix: &str) -> BTreeMap<String, u32> {
    let mut leaders = BTreeMap::new();
    let mut options = async_nats::ConnectOptions::new();
    if let (Ok(user), Ok(password)) = (std::env::var("NATS_USER"), std::env::var("NATS_PASSWORD")) {
        options = options.user_and_password(user, password);
    }
    let servers: Vec<async_nats::ServerAddr> = nats_urls
        .split(',')
        .filter_map(|url| url.parse().ok())
        .collect();
    let Ok(Ok(client)) = tokio::time::timeout(CALL_LIMIT, options.connect(servers)).await else {
        return leaders;
    };
    let js = async_nats::jetstream::new(client);
    let mut names: Vec<String> = ["EVENTS", "PARKED", "SNAPSHOTS"]
        .iter()
        .map(|s| format!("{prefix}_{s}"))
        .collect();
    names.extend(
        SUBSCRIBERS
            .iter()
            .map(|(s, _)| format!("{prefix}_ALERTS_{s}")),
    );
    names.extend(["LEASES", "INSTANCES", "CURSORS"].map(|s| format!("KV_{prefix}_{s}")));
    for name in names {
        if let Ok(Ok(stream)) = tokio::time::timeout(CALL_LIMIT, js.get_stream(&name)).await
            && let Some(leader) = stream
                .cached_info()
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
        {
            *leaders.entry(leader).or_default() += 1;
        }
    }
    leaders
}

/// A JetStream node this test killed; started again when dropped if the test did not.
struct KilledNode {
    cluster_dir: String,
    node: u8,
    down: bool,
}

impl KilledNode {
    async fn kill(&mut self) {
        let args = ["kill-node", &self.cluster_dir, &self.node.to_string()];
        nats_cluster(args.map(str::to_owned).to_vec()).await;
        self.down = true;
    }

    async fn restart(&mut self) {
        let args = ["restart-node", &self.cluster_dir, &self.node.to_string()];
        nats_cluster(args.map(str::to_owned).to_vec()).await;
        self.down = false;
    }
}

impl Drop for KilledNode {
    fn drop(&mut self) {
        if self.down {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/nats-cluster");
            let _ = std::process::Command::new(script)
                .args(["restart-node", &self.cluster_dir, &self.node.to_string()])
                .status();
        }
    }
}

/// `Admin.GetClusterStatus` from the first instance of `urls` that answers.
async fn cluster_status(urls: &[String]) -> Option<GetClusterStatusResponse> {
    for url in urls {
        let Some(channel) = storm::channel(url).await else {
            continue;
        };
        let status = tokio::time::timeout(
            CALL_LIMIT,
            AdminClient::new(channel).get_cluster_status(GetClusterStatusRequest {}),
        )
        .await;
        if let Ok(Ok(status)) = status {
            return Some(status.into_inner());
        }
    }
    None
}

/// Every partition's owner (empty: none), as an instance of `urls` sees it.
fn owners(status: &GetClusterStatusResponse) -> Vec<&str> {
    status.owners.iter().map(|o| o.owner.as_str()).collect()
}

/// Polls `GetClusterStatus` on `urls` until `done` holds or `limit` has passed; how long it
/// took since `since`. For the summary only: nothing asserts on it.
async fn watch_ownership(
    urls: Vec<String>,
    since: Instant,
    limit: Duration,
    mut done: impl FnMut(&GetClusterStatusResponse) -> bool,
) -> Option<Duration> {
    while since.elapsed() < limit {
        if let Some(status) = cluster_status(&urls).await
            && done(&status)
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// What a [`watch_ownership`] task saw; `None` if it has not (it is stopped).
async fn finished(watch: JoinHandle<Option<Duration>>) -> Option<Duration> {
    if !watch.is_finished() {
        watch.abort();
    }
    watch.await.ok().flatten()
}

/// For the summary only: of the partitions `orphans` that `victim` owned when it was killed
/// at `killed_ms`, how many had an alert emitted by a survivor afterwards, and how long after
/// the kill the slowest of them had its first.
fn takeover(
    shared: &Shared,
    orphans: &BTreeSet<usize>,
    victim: &str,
    killed_ms: i64,
) -> (usize, Option<i64>) {
    let mut first: BTreeMap<usize, i64> = BTreeMap::new();
    for index in 0..SUBSCRIBERS.len() {
        for r in shared.receipts(index) {
            let Ok(device) = r.device.parse::<DeviceId>() else {
                continue;
            };
            let partition = usize::from(outage_relay::log::partition_of(device, PARTITIONS as u16));
            if orphans.contains(&partition) && r.emitted_by != victim && r.emitted_at >= killed_ms {
                let at = first.entry(partition).or_insert(r.emitted_at);
                *at = (*at).min(r.emitted_at);
            }
        }
    }
    let slowest = first.values().max().map(|at| at - killed_ms);
    (first.len(), slowest)
}

/// The checks of this test beyond [`Shared::check`]: per supply point, the alerts in the order
/// of its outages (by sequence); every alert emitted by exactly one of `instances`. Returns the
/// failures and how many distinct alerts each instance emitted.
fn check_order_and_emitters(
    shared: &Shared,
    script: &Script,
    instances: &[String],
) -> (Vec<String>, BTreeMap<String, u64>) {
    let mut failures = Vec::new();
    let receipts: Vec<_> = (0..SUBSCRIBERS.len()).map(|i| shared.receipts(i)).collect();
    let mut emitters: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for r in receipts.iter().flatten() {
        emitters
            .entry(&r.alert_id)
            .or_default()
            .insert(&r.emitted_by);
    }
    for (index, (name, _)) in SUBSCRIBERS.iter().enumerate() {
        let by_id: HashMap<&str, u64> = receipts[index]
            .iter()
            .map(|r| (r.alert_id.as_str(), r.sequence))
            .collect();
        // Per supply point, the alerts received, by sequence, in the script's order.
        for (point, wanted) in &script.order {
            if script.expected[&wanted[0]].subscriber != index {
                continue;
            }
            let mut got: Vec<(u64, &str)> = wanted
                .iter()
                .filter_map(|id| by_id.get(id.as_str()).map(|&seq| (seq, id.as_str())))
                .collect();
            got.sort_unstable();
            let wanted: Vec<&str> = wanted
                .iter()
                .map(String::as_str)
                .filter(|id| by_id.contains_key(id))
                .collect();
            if !got.iter().map(|(_, id)| *id).eq(wanted.iter().copied()) {
                let got: Vec<String> = got
                    .iter()
                    .map(|(seq, id)| format!("#{seq} {id} by {:?}", emitters[*id]))
                    .collect();
                failures.push(format!(
                    "ORDER {name}: supply point {point:?}: got {got:?}; expected {wanted:?}; \
                     device script:{}",
                    script.account(&point.0)
                ));
            }
        }
    }
    let mut by_emitter = BTreeMap::new();
    for (id, by) in &emitters {
        if by.len() != 1 || by.iter().any(|name| !instances.iter().any(|i| i == *name)) {
            failures.push(format!(
                "EMITTED_BY {id} emitted by {by:?}: not exactly one instance"
            ));
        }
        for name in by {
            *by_emitter.entry((*name).to_owned()).or_default() += 1;
        }
    }
    (failures, by_emitter)
}

/// The relay config every instance shares: the JetStream backend under a prefix of its own.
fn write_config(dir: &Path, prefix: &str) -> PathBuf {
    let mut text = format!(
        "shutdown_grace = \"5s\"\n\n[store]\nbackend = \"jetstream\"\n\n[store.jetstream]\n\
         partitions = {PARTITIONS}\nprefix = \"{prefix}\"\nlease_ttl = \"2s\"\n\
         snapshot_interval = \"500ms\"\nreplicas = 3\n"
    );
    // `.ci/nats-cluster` with NATS_CLUSTER_USER set writes these into its env file.
    if let (Ok(user), Ok(password)) = (std::env::var("NATS_USER"), std::env::var("NATS_PASSWORD")) {
        let _ = write!(text, "user = {user:?}\npassword = {password:?}\n");
    }
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).expect("write the relay config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_and_jetstream_node_lose_duplicate_and_reorder_no_alert() {
    let nats_urls = std::env::var("NATS_URLS").expect(
        "NATS_URLS is not set: run .ci/test, which starts the JetStream cluster (or start one \
         with .ci/nats-cluster and export NATS_URLS and NATS_CLUSTER_DIR)",
    );
    let cluster_dir = std::env::var("NATS_CLUSTER_DIR").expect(
        "NATS_CLUSTER_DIR is not set: run .ci/test, which starts the JetStream cluster (this \
         test kills and restarts one of its nodes)",
    );
    let seed = storm::seed_from_env("OUTAGE_RELAY_FAULT_SEED", DEFAULT_SEED);
    println!("cluster fault test seed {seed:#x} (replay: OUTAGE_RELAY_FAULT_SEED={seed:x})");
    let began = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("cluster-fault-")
        .tempdir()
        .expect("a temporary directory");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("FAULT_{}_{}", std::process::id(), nanos % 1_000_000_000);
    let config = write_config(dir.path(), &prefix);

    let mut relays = Vec::new();
    for n in 1..=INSTANCES {
        let name = format!("r{n}");
        let listen = format!("127.0.0.1:{}", free_port().await);
        let metrics = format!("127.0.0.1:{}", free_port().await);
        let data = dir
            .path()
            .join(format!("{name}-data"))
            .display()
            .to_string();
        let args = [
            "serve",
            "--backend",
            "jetstream",
            "--jetstream-servers",
            &nats_urls,
            "--instance",
            &name,
            "--config",
            &config.display().to_string(),
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics,
            "--data-dir",
            &data,
            "--debounce",
            "2s",
        ];
        let args = args.iter().map(|s| (*s).to_owned()).collect();
        relays.push(Relay {
            url: format!("http://{listen}"),
            name,
            args,
            dir: dir.path().to_path_buf(),
            generation: 0,
            process: None,
        });
    }
    for relay in &mut relays {
        relay.start().await;
    }
    let urls: Vec<String> = relays.iter().map(|r| r.url.clone()).collect();
    let names: Vec<String> = relays.iter().map(|r| r.name.clone()).collect();
    let all_names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let spread = watch_ownership(urls.clone(), Instant::now(), START_LIMIT, |status| {
        let owners: BTreeSet<&str> = owners(status).into_iter().collect();
        status.owners.len() == PARTITIONS && owners == all_names
    })
    .await;
    assert!(
        spread.is_some(),
        "the partitions were not spread over {names:?}: {:?}",
        cluster_status(&urls).await
    );

    let t0 = UtcMillis::system_now().0;
    let script = Script::generate(&PLAN, seed, t0);
    println!("script: {}; prefix {prefix}", script.summary());

    let shared = Shared::new(urls.clone(), CALL_LIMIT, Duration::from_millis(100));
    let subscribers = shared.spawn_subscribers();
    let storm = Instant::now();
    let publishers = shared.spawn_publishers(&script, |_| Pacing::Spread(STORM_SPAN));

    // The faults, while the publishers go on: the instance that owns the most partitions, and
    // the node that leads the most of this run's streams (the seed decides when unknown).
    let mut rng = Rng::new(seed ^ 0xfa17);
    tokio::time::sleep_until(storm + RELAY_KILL_AT).await;
    let before = cluster_status(&urls).await;
    let owned = |name: &str| {
        before.as_ref().map_or(0, |status| {
            owners(status).iter().filter(|o| **o == name).count()
        })
    };
    let victim = (0..INSTANCES)
        .max_by_key(|&i| owned(&names[i]))
        .filter(|&i| owned(&names[i]) > 0)
        .unwrap_or_else(|| rng.below(INSTANCES));
    let owned_by_victim = owned(&names[victim]);
    relays[victim].kill9().await;
    let killed_ms = UtcMillis::system_now().0;
    println!(
        "{:.1?}: kill -9 relay {} (owned {owned_by_victim} partitions)",
        storm.elapsed(),
        names[victim]
    );
    // The partitions it owned, to see when their alerts come from the survivors.
    let orphans: BTreeSet<usize> = before.as_ref().map_or_else(BTreeSet::new, |status| {
        let owners = owners(status);
        (0..owners.len())
            .filter(|&p| owners[p] == names[victim])
            .collect()
    });
    let leaders = stream_leaders(&nats_urls, &prefix).await;
    let leading = leaders
        .iter()
        .max_by_key(|(name, count)| (**count, std::cmp::Reverse((*name).clone())))
        .and_then(|(name, _)| name.strip_prefix('n')?.parse().ok());
    let mut node = KilledNode {
        cluster_dir,
        node: leading.unwrap_or_else(|| u8::try_from(1 + rng.below(3)).expect("1..3")),
        down: false,
    };
    tokio::time::sleep_until(storm + NODE_KILL_AT).await;
    node.kill().await;
    println!(
        "{:.1?}: kill -9 JetStream node {} (streams led per node: {leaders:?})",
        storm.elapsed(),
        node.node
    );
    tokio::time::sleep_until(storm + NODE_RESTART_AT).await;
    node.restart().await;
    println!(
        "{:.1?}: JetStream node {} healthy again",
        storm.elapsed(),
        node.node
    );
    tokio::time::sleep_until(storm + RELAY_RESTART_AT).await;
    relays[victim].start().await;
    let restarted_at = Instant::now();
    println!(
        "{:.1?}: relay {} serving again",
        storm.elapsed(),
        names[victim]
    );
    let back = names[victim].clone();
    let rejoin = tokio::spawn(watch_ownership(
        vec![urls[victim].clone()],
        restarted_at,
        STORM_LIMIT,
        move |status| owners(status).contains(&back.as_str()),
    ));

    for handle in publishers {
        tokio::time::timeout_at(storm + STORM_LIMIT, handle)
            .await
            .expect("the storm did not end within its bound")
            .expect("a publisher panicked");
    }
    println!("{:.1?}: every batch acknowledged", storm.elapsed());

    // Wait until every subscriber has everything (or the bound passes: then the check says
    // what is missing).
    shared.wait_drained(&script, DRAIN_LIMIT).await;
    let drained_at = UtcMillis::system_now().0;
    shared.stop_subscribers(subscribers).await;
    let heads = shared.heads().await.unwrap_or_default();
    let rejoin = finished(rejoin).await;
    let (taken, slowest) = takeover(&shared, &orphans, &names[victim], killed_ms);
    let takeover = format!(
        "survivors emitted alerts for {taken} of its {} partitions (the slowest: {} ms on)",
        orphans.len(),
        slowest.map_or_else(|| "-".to_owned(), |ms| ms.to_string())
    );

    let (mut failures, counts) = shared.check(&script, &heads);
    let (more, by_emitter) = check_order_and_emitters(&shared, &script, &names);
    failures.extend(more);
    failures.extend(shared.take_anomalies());
    if drained_at >= script.short_deadline {
        failures.push(format!(
            "MODEL the test ran past {}, when the model's pending short interruptions start to be \
             alerted: its expectations no longer hold",
            script.short_deadline
        ));
    }
    println!(
        "cluster fault summary (seed {seed:#x}, wall {:.1?}):\n  \
         faults: relay {} killed (owned {owned_by_victim} of {PARTITIONS} partitions), \
         JetStream node {} killed; {takeover}; restarted relay owning partitions again after \
         {rejoin:.1?}\n  {}\n  by emitter {by_emitter:?}",
        began.elapsed(),
        names[victim],
        node.node,
        shared.traffic(&script, &counts, &heads),
    );
    if failures.is_empty() && std::env::var_os("OUTAGE_RELAY_FAULT_KEEP").is_some() {
        drop(relays);
        println!("relay logs kept in {}", dir.keep().display());
        return;
    }
    if !failures.is_empty() {
        let logs: String = relays.iter().map(|r| r.log_tail(15)).collect();
        drop(relays);
        let kept = dir.keep();
        // Every kind counted, the first five of each shown.
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        let mut shown = Vec::new();
        for failure in &failures {
            let count = kinds
                .entry(failure.split(' ').next().unwrap_or(""))
                .or_default();
            *count += 1;
            if *count <= 5 {
                shown.push(failure.as_str());
            }
        }
        panic!(
            "seed {seed:#x}: {} failures {kinds:?}; the first of each kind:\n{}\n\nrelay logs \
             (all kept in {}):\n{logs}",
            failures.len(),
            shown.join("\n"),
            kept.display()
        );
    }
}
