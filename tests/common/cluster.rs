//! Harness for the tests that run several relay binaries on the JetStream backend against
//! the three-node cluster `.ci/test` starts: relay processes killed and restarted, JetStream
//! nodes killed, ownership watched, and the checks that hold through any fault (per-point
//! order, one emitter per alert).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outage_relay::domain::DeviceId;
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::{GetClusterStatusRequest, GetClusterStatusResponse};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::process::{BIN, Running, free_port, spawn_program};
use super::storm::{self, SUBSCRIBERS, Script, Shared};

/// Bound on one relay start (up and serving), only to turn a hang into a failure.
pub const START_LIMIT: Duration = Duration::from_secs(60);
/// Bound on one gRPC call, only to turn a hang into an error that is retried.
pub const CALL_LIMIT: Duration = Duration::from_secs(10);

/// `instances` relays `r1`.. on the JetStream backend at `nats_urls`, sharing `config`, each
/// with its own ports and data directory under `dir`, debounce `debounce`; not started yet.
pub async fn relays(
    dir: &Path,
    config: &Path,
    nats_urls: &str,
    instances: usize,
    debounce: &str,
) -> Vec<Relay> {
    let mut relays = Vec::new();
    for n in 1..=instances {
        let name = format!("r{n}");
        let listen = format!("127.0.0.1:{}", free_port().await);
        let metrics = format!("127.0.0.1:{}", free_port().await);
        let data = dir.join(format!("{name}-data")).display().to_string();
        let args = [
            "serve",
            "--backend",
            "jetstream",
            "--jetstream-servers",
            nats_urls,
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
            debounce,
        ];
        let args = args.iter().map(|s| (*s).to_owned()).collect();
        relays.push(Relay {
            url: format!("http://{listen}"),
            name,
            args,
            dir: dir.to_path_buf(),
            generation: 0,
            process: None,
        });
    }
    relays
}

/// One relay instance: the binary, restarted with the same name, ports and flags.
pub struct Relay {
    pub name: String,
    pub url: String,
    pub args: Vec<String>,
    pub dir: PathBuf,
    pub generation: u32,
    /// Killed when dropped.
    pub process: Option<Running>,
}

impl Relay {
    pub fn spawn(&mut self) {
        self.generation += 1;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env = [("OUTAGE_RELAY_LOG", "info"), ("NO_COLOR", "1")];
        let log = format!("{}-{}", self.name, self.generation);
        self.process = Some(spawn_program(BIN, &args, &env, &self.dir, &log));
    }

    /// Starts it and waits until it reports itself serving; a start that exits (say its port
    /// is briefly unavailable after the kill) is retried.
    pub async fn start(&mut self) {
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
    pub async fn kill9(&mut self) {
        let mut process = self.process.take().expect("a running relay");
        let status = std::process::Command::new("kill")
            .args(["-9", &process.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {} failed", process.pid());
        process.exit().await;
    }

    /// The last `lines` lines of each generation's log.
    pub fn log_tail(&self, lines: usize) -> String {
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
pub async fn nats_cluster(args: Vec<String>) {
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

/// The leader of each of this run's streams and buckets (stream name without the prefix,
/// e.g. `EVENTS_1`, `ALERTS_ukpn`, `KV_LEASES`), by node name; streams without a leader (or
/// not answering within [`CALL_LIMIT`]) are left out.
pub async fn stream_leaders(nats_urls: &str, prefix: &str) -> BTreeMap<String, String> {
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
    let names: Vec<String> = {
        use futures::StreamExt as _;
        let listing = js.stream_names().collect::<Vec<_>>();
        match tokio::time::timeout(CALL_LIMIT, listing).await {
            Ok(names) => names.into_iter().filter_map(Result::ok).collect(),
            Err(_) => return leaders,
        }
    };
    let bucket_prefix = format!("KV_{prefix}_");
    let stream_prefix = format!("{prefix}_");
    for name in names {
        let short = if let Some(bucket) = name.strip_prefix(&bucket_prefix) {
            format!("KV_{bucket}")
        } else if let Some(stream) = name.strip_prefix(&stream_prefix) {
            stream.to_owned()
        } else {
            continue;
        };
        if let Ok(Ok(stream)) = tokio::time::timeout(CALL_LIMIT, js.get_stream(&name)).await
            && let Some(leader) = stream
                .cached_info()
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
        {
            leaders.insert(short, leader);
        }
    }
    leaders
}

/// How many of the streams in `leaders` (from [`stream_leaders`]) each node leads.
pub fn led_per_node(leaders: &BTreeMap<String, String>) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for node in leaders.values() {
        *counts.entry(node.clone()).or_default() += 1;
    }
    counts
}

/// The JetStream meta leader as the nodes' monitoring endpoints (`/jsz`, ports in
/// `{cluster_dir}/ports`) report it, for the fault tests' output; `None` when none answers.
pub async fn meta_leader(cluster_dir: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ports = std::fs::read_to_string(Path::new(cluster_dir).join("ports")).ok()?;
    for port in ports.lines().filter_map(|line| {
        line.strip_prefix("HTTP_")?
            .split_once('=')?
            .1
            .parse::<u16>()
            .ok()
    }) {
        let ask = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            stream
                .write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .ok()?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.ok()?;
            let answer = String::from_utf8_lossy(&answer);
            let body = answer.split_once("\r\n\r\n")?.1;
            let jsz: serde_json::Value = serde_json::from_str(body).ok()?;
            jsz["meta_cluster"]["leader"].as_str().map(str::to_owned)
        };
        if let Ok(Some(leader)) = tokio::time::timeout(CALL_LIMIT, ask).await {
            return Some(leader);
        }
    }
    None
}

/// A JetStream node this test killed; started again when dropped if the test did not.
pub struct KilledNode {
    pub cluster_dir: String,
    pub node: u8,
    pub down: bool,
}

impl KilledNode {
    pub async fn kill(&mut self) {
        let args = ["kill-node", &self.cluster_dir, &self.node.to_string()];
        nats_cluster(args.map(str::to_owned).to_vec()).await;
        self.down = true;
    }

    pub async fn restart(&mut self) {
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
pub async fn cluster_status(urls: &[String]) -> Option<GetClusterStatusResponse> {
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
pub fn owners(status: &GetClusterStatusResponse) -> Vec<&str> {
    status.owners.iter().map(|o| o.owner.as_str()).collect()
}

/// Polls `GetClusterStatus` on `urls` until `done` holds or `limit` has passed; how long it
/// took since `since`. For the summary only: nothing asserts on it.
pub async fn watch_ownership(
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
pub async fn finished(watch: JoinHandle<Option<Duration>>) -> Option<Duration> {
    if !watch.is_finished() {
        watch.abort();
    }
    watch.await.ok().flatten()
}

/// For the summary only: of the partitions `orphans` that `victim` owned when it was killed
/// at `killed_ms`, how many had an alert emitted by a survivor and received after the kill,
/// and how long after the kill the slowest of them had its first received (ms). (An alert's
/// `emitted_at` is log time, when its timer was due, not when the survivor emitted it.)
pub fn takeover(
    shared: &Shared,
    partitions: u16,
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
            let partition = usize::from(outage_relay::log::partition_of(device, partitions));
            if orphans.contains(&partition) && r.emitted_by != victim && r.received_at >= killed_ms
            {
                let at = first.entry(partition).or_insert(r.received_at);
                *at = (*at).min(r.received_at);
            }
        }
    }
    let slowest = first.values().max().map(|at| at - killed_ms);
    (first.len(), slowest)
}

/// The checks of this test beyond [`Shared::check`]: per supply point, the alerts in the order
/// of its outages (by sequence); every alert emitted by exactly one of `instances`. Returns the
/// failures and how many distinct alerts each instance emitted.
pub fn check_order_and_emitters(
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
/// `tuning`: more `[store.jetstream]` lines (lease and snapshot settings), or none for the
/// defaults.
pub fn write_config(dir: &Path, prefix: &str, partitions: usize, tuning: &str) -> PathBuf {
    let mut text = format!(
        "shutdown_grace = \"5s\"\n\n[store]\nbackend = \"jetstream\"\n\n[store.jetstream]\n\
         partitions = {partitions}\nprefix = \"{prefix}\"\nreplicas = 3\n{tuning}"
    );
    // `.ci/nats-cluster` with NATS_CLUSTER_USER set writes these into its env file.
    if let (Ok(user), Ok(password)) = (std::env::var("NATS_USER"), std::env::var("NATS_PASSWORD")) {
        let _ = write!(text, "user = {user:?}\npassword = {password:?}\n");
    }
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).expect("write the relay config");
    path
}

/// How the alerts of a run were delivered, from each alert's first receipt.
#[derive(Debug, Default)]
pub struct Delivery {
    /// POAs: ms from when each could first be emitted ([`Shared::could_emit`]) to its first
    /// receipt, sorted.
    pub poa_ms: Vec<i64>,
    /// PRAs: the same.
    pub pra_ms: Vec<i64>,
    /// Alerts first received after their SLA deadline, described.
    pub late: Vec<String>,
    /// POAs: ms from when each could be emitted to its emission by a relay, sorted.
    pub poa_emit_ms: Vec<i64>,
    /// POAs: ms from emission to first receipt (storing and delivery), sorted.
    pub poa_deliver_ms: Vec<i64>,
    /// The slowest alert: its latency and where its time went, described.
    pub slowest: Option<(i64, String)>,
    /// POAs of each subscriber: ms from when each could be emitted to its first receipt,
    /// sorted.
    pub poa_by_subscriber: BTreeMap<&'static str, Vec<i64>>,
    /// The slowest POA of each subscriber: its latency and its receipt.
    pub slowest_poa_by_subscriber: BTreeMap<&'static str, (i64, storm::Receipt)>,
    /// Every POA: its latency (as in `poa_ms`), its subscriber and its device.
    pub poas: Vec<(i64, &'static str, DeviceId)>,
}

impl Delivery {
    /// Reads the receipts of every subscriber.
    pub fn of(shared: &Shared) -> Self {
        let mut delivery = Self::default();
        for (index, (subscriber, _)) in SUBSCRIBERS.iter().enumerate() {
            let mut first: HashMap<String, storm::Receipt> = HashMap::new();
            for receipt in shared.receipts(index) {
                first
                    .entry(receipt.alert_id.clone())
                    .and_modify(|kept| {
                        if receipt.received_at < kept.received_at {
                            *kept = receipt.clone();
                        }
                    })
                    .or_insert(receipt);
            }
            for receipt in first.into_values() {
                let could_emit = shared.could_emit(&receipt);
                let latency = receipt.received_at - could_emit;
                if delivery
                    .slowest
                    .as_ref()
                    .is_none_or(|(slowest, _)| latency > *slowest)
                {
                    delivery.slowest = Some((
                        latency,
                        format!(
                            "{} ms: {} #{} to {} by {}, emitted {} ms after it could be, \
                             received {} ms after that",
                            latency,
                            receipt.alert_id,
                            receipt.sequence,
                            subscriber,
                            receipt.emitted_by,
                            receipt.emitted_at - could_emit,
                            receipt.received_at - receipt.emitted_at
                        ),
                    ));
                }
                if receipt.is_poa() {
                    delivery.poa_ms.push(latency);
                    delivery
                        .poa_by_subscriber
                        .entry(*subscriber)
                        .or_default()
                        .push(latency);
                    if let Ok(device) = receipt.device.parse::<DeviceId>() {
                        delivery.poas.push((latency, *subscriber, device));
                    }
                    let slowest = delivery
                        .slowest_poa_by_subscriber
                        .entry(*subscriber)
                        .or_insert_with(|| (latency, receipt.clone()));
                    if latency > slowest.0 {
                        *slowest = (latency, receipt.clone());
                    }
                    delivery.poa_emit_ms.push(receipt.emitted_at - could_emit);
                    delivery
                        .poa_deliver_ms
                        .push(receipt.received_at - receipt.emitted_at);
                } else {
                    delivery.pra_ms.push(latency);
                }
                if receipt.received_at > receipt.deadline {
                    delivery.late.push(format!(
                        "LATE {}: received {} ms after its deadline (due {}, emitted {} by {})",
                        receipt.alert_id,
                        receipt.received_at - receipt.deadline,
                        receipt.due_at,
                        receipt.emitted_at,
                        receipt.emitted_by
                    ));
                }
            }
        }
        delivery.poa_ms.sort_unstable();
        delivery.pra_ms.sort_unstable();
        delivery.poa_emit_ms.sort_unstable();
        delivery.poa_deliver_ms.sort_unstable();
        for latencies in delivery.poa_by_subscriber.values_mut() {
            latencies.sort_unstable();
        }
        delivery
    }

    /// `POA p99 per subscriber: ukpn* 8120 ms, nged 410 ms, …`, a `*` marking each subscriber
    /// whose alert stream `killed` led (from [`stream_leaders`] before the kill), and the p99
    /// of the POAs of the subscribers it did not lead, and of those whose partition's events
    /// stream (`partition % event_streams`) it did not lead either; then each subscriber's slowest POA,
    /// with when it could be emitted, was emitted and was received, in ms after `killed_at`
    /// (when the node was killed).
    pub fn by_leader(
        &self,
        shared: &Shared,
        leaders: &BTreeMap<String, String>,
        killed: &str,
        killed_at: i64,
        (partitions, event_streams): (u16, u16),
    ) -> String {
        let mut elsewhere = Vec::new();
        let mut parts = Vec::new();
        let mut slowest = Vec::new();
        for (subscriber, latencies) in &self.poa_by_subscriber {
            let led = leaders
                .get(&format!("ALERTS_{subscriber}"))
                .is_some_and(|node| node == killed);
            if !led {
                elsewhere.extend_from_slice(latencies);
            }
            let mark = if led { "*" } else { "" };
            parts.push(format!(
                "{subscriber}{mark} {} ms",
                percentile(latencies, 0.99)
            ));
            if let Some((latency, receipt)) = self.slowest_poa_by_subscriber.get(subscriber) {
                slowest.push(format!(
                    "{subscriber}{mark} {latency} ms (#{} by {}: could be emitted {:+}, emitted \
                     {:+}, received {:+})",
                    receipt.sequence,
                    receipt.emitted_by,
                    shared.could_emit(receipt) - killed_at,
                    receipt.emitted_at - killed_at,
                    receipt.received_at - killed_at
                ));
            }
        }
        elsewhere.sort_unstable();
        // What a node's death cannot spare: a DNO whose alert stream it led, and a partition
        // whose events stream it led (no events stored, and no marks, so no timers fired,
        // until a new leader is elected), or whose partition leases bucket it led (kept on
        // the events stream's leader's node, unless a failure moved one of them).
        let led = |stream: &str| leaders.get(stream).is_some_and(|node| node == killed);
        let buckets_apart: Vec<String> = (0..event_streams)
            .filter(|index| led(&format!("KV_LEASES_{index}")) != led(&format!("EVENTS_{index}")))
            .map(|index| format!("KV_LEASES_{index}"))
            .collect();
        let mut untouched: Vec<i64> = self
            .poas
            .iter()
            .filter(|(_, subscriber, device)| {
                let partition = outage_relay::log::partition_of(*device, partitions);
                let index = partition % event_streams;
                !led(&format!("ALERTS_{subscriber}"))
                    && !led(&format!("EVENTS_{index}"))
                    && !led(&format!("KV_LEASES_{index}"))
            })
            .map(|(latency, _, _)| *latency)
            .collect();
        untouched.sort_unstable();
        format!(
            "POA p99 per subscriber (* its alert stream led by the killed node {killed}): {}; \
             subscribers it did not lead: p99 {} ms over {} POAs; neither its subscriber's \
             stream nor its partition's events stream or leases bucket led by it{}: p99 {} ms \
             over {} POAs\n  slowest POA per subscriber (ms after the node's kill): {}",
            parts.join(", "),
            percentile(&elsewhere, 0.99),
            elsewhere.len(),
            if buckets_apart.is_empty() {
                String::new()
            } else {
                format!(" (leases buckets led apart from their events stream: {buckets_apart:?})")
            },
            percentile(&untouched, 0.99),
            untouched.len(),
            slowest.join("; ")
        )
    }

    /// `POA due→received p50/p99/max …; PRA …`, for the run's summary.
    pub fn summary(&self) -> String {
        let line = |sorted: &[i64]| {
            if sorted.is_empty() {
                return "none".to_owned();
            }
            let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
            format!(
                "{} alerts, due→received (from when each could be emitted) p50 {} ms, p99 {} ms, \
                 max {} ms",
                sorted.len(),
                at(0.5),
                at(0.99),
                sorted[sorted.len() - 1]
            )
        };
        let p99 = |sorted: &[i64]| percentile(sorted, 0.99);
        format!(
            "POA {}; PRA {}\n  POA p99 split: could be emitted→emitted {} ms, \
             emitted→received {} ms; slowest alert {}",
            line(&self.poa_ms),
            line(&self.pra_ms),
            p99(&self.poa_emit_ms),
            p99(&self.poa_deliver_ms),
            self.slowest
                .as_ref()
                .map_or_else(|| "-".to_owned(), |(_, what)| what.clone())
        )
    }
}

/// The `p` quantile of `sorted` (nearest rank), 0 when empty.
fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(0)
}

/// Fails the test with `failures` counted by kind (the first word), the first five of each
/// shown, and the relays' last log lines; the relays are stopped and `dir` is kept.
pub fn fail(seed: u64, failures: &[String], relays: Vec<Relay>, dir: tempfile::TempDir) -> ! {
    let logs: String = relays.iter().map(|r| r.log_tail(15)).collect();
    drop(relays);
    let kept = dir.keep();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut shown = Vec::new();
    for failure in failures {
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

/// Starts `relays` and waits until the `partitions` are spread over all of them; their URLs
/// and names.
pub async fn start_spread(relays: &mut [Relay], partitions: usize) -> (Vec<String>, Vec<String>) {
    for relay in relays.iter_mut() {
        relay.start().await;
    }
    let urls: Vec<String> = relays.iter().map(|r| r.url.clone()).collect();
    let names: Vec<String> = relays.iter().map(|r| r.name.clone()).collect();
    let all_names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let spread = watch_ownership(urls.clone(), Instant::now(), START_LIMIT, |status| {
        let owners: BTreeSet<&str> = owners(status).into_iter().collect();
        status.owners.len() == partitions && owners == all_names
    })
    .await;
    assert!(
        spread.is_some(),
        "the partitions were not spread over {names:?}: {:?}",
        cluster_status(&urls).await
    );
    (urls, names)
}

/// Of `names`, the index of the instance owning the most partitions in `status` (`None`
/// when none owns any), and the partitions it owns.
pub fn busiest(
    status: Option<&GetClusterStatusResponse>,
    names: &[String],
) -> (Option<usize>, BTreeSet<usize>) {
    let Some(status) = status else {
        return (None, BTreeSet::new());
    };
    let owners = owners(status);
    let owned = |name: &str| owners.iter().filter(|o| **o == name).count();
    let victim = (0..names.len())
        .max_by_key(|&i| owned(&names[i]))
        .filter(|&i| owned(&names[i]) > 0);
    let orphans = victim.map_or_else(BTreeSet::new, |victim| {
        (0..owners.len())
            .filter(|&p| owners[p] == names[victim])
            .collect()
    });
    (victim, orphans)
}
