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
//! groups, of the kinds in [`Scenario`]: long ones (POA then PRA), short ones (no alert) and
//! some left open (POA only); some devices report all their events at once (in one batch). As
//! in `tests/crash.rs`, every outcome is independent of when an
//! instance processes an event: past outages are long past their debounce, a short one is
//! decided by device times alone, and a loss still pending when published ends in a POA
//! whether its timer fires or its restoration proves the debounce elapsed.
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{BIN, Running, free_port, spawn_program};
use common::{device, ms, ts, valid_mpan};
use outage_relay::domain::{DeviceId, UtcMillis};
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{
    AckRequest, Alert, AlertKind, DeviceEvent, EventBatch, GetClusterStatusRequest,
    GetClusterStatusResponse, GetDeliveryStatusRequest, SubscribeRequest, SupplyLost,
    SupplyRestored, device_event,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Supply points in the storm.
const DEVICES: u64 = 2_400;
/// The relays' debounce (`--debounce 2s`).
const DEBOUNCE_MS: i64 = 2_000;
/// Partitions of the device space (`store.jetstream.partitions`).
const PARTITIONS: usize = 16;
/// Relay instances.
const INSTANCES: usize = 3;
/// Publishers, each with its own share of the devices.
const PUBLISHERS: usize = 3;
/// The default subscribers and the distributor IDs each owns.
const SUBSCRIBERS: [(&str, &[u8]); 6] = [
    ("ukpn", &[10, 12, 19]),
    ("nged", &[11, 14, 21, 22]),
    ("spen", &[13, 18]),
    ("ssen", &[17, 20]),
    ("npg", &[15, 23]),
    ("enwl", &[16]),
];
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
/// How far ahead the pending short interruptions start: far beyond the time the test needs,
/// and within the relay's 5-minute future-skew limit.
const FAR_AHEAD_MS: i64 = 240_000;
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

/// xorshift64*: small, deterministic, good enough to script a storm.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams (never 0).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = u64::try_from(hi - lo).expect("a non-empty range");
        lo + i64::try_from(self.next() % span).expect("the span fits in i64")
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("below n")
    }
}

/// What one scripted outage is, and what the model expects of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Scenario {
    /// Loss and restoration ≥ 2 s apart, both long past: POA + PRA.
    Long,
    /// Restoration only, carrying a `lost_at` ≥ 2 s earlier, long past: POA + PRA, learned late.
    LearnedLate,
    /// Restoration only, carrying a `lost_at` less than the debounce earlier: nothing.
    Short,
    /// Loss long past, never restored: POA.
    Open,
    /// Loss a few seconds into the storm (device time), restored 3–8 s later: POA (by its
    /// timer, at once, or proven by the restoration) + PRA.
    PendingLong,
    /// Loss a few seconds into the storm, never restored: POA (timer or at once).
    PendingOpen,
    /// Loss [`FAR_AHEAD_MS`] after the storm starts, restored 200 ms later: nothing.
    PendingShort,
}

impl Scenario {
    /// `(POA, PRA)` expected.
    fn alerts(self) -> (bool, bool) {
        match self {
            Self::Long | Self::LearnedLate | Self::PendingLong => (true, true),
            Self::Open | Self::PendingOpen => (true, false),
            Self::Short | Self::PendingShort => (false, false),
        }
    }

    /// Earlier outages of a device are closed past ones; the last may be anything.
    fn pick(rng: &mut Rng, last: bool) -> Self {
        let roll = rng.next() % 100;
        if !last {
            return match roll {
                0..60 => Self::Long,
                60..80 => Self::LearnedLate,
                _ => Self::Short,
            };
        }
        match roll {
            0..35 => Self::Long,
            35..45 => Self::LearnedLate,
            45..57 => Self::Short,
            57..70 => Self::Open,
            70..84 => Self::PendingLong,
            84..92 => Self::PendingOpen,
            _ => Self::PendingShort,
        }
    }
}

/// The relay's deterministic alert ID: `{poa|pra}-{16 hex of the EUI}-{phase}-{lost_at ms}`.
fn alert_id(kind: AlertKind, device: &str, phase: i32, lost_at: i64) -> String {
    let kind = if kind == AlertKind::PowerOutage {
        "poa"
    } else {
        "pra"
    };
    format!("{kind}-{}-{phase}-{lost_at}", device.replace('-', ""))
}

/// What the model expects of one alert.
#[derive(Debug, Clone)]
struct Expected {
    subscriber: usize,
    learned_late: bool,
    /// `(device, phase)`: the supply point.
    point: (String, i32),
}

/// The scripted storm and its model.
struct Script {
    /// Per publisher, its batches in sending order.
    batches: Vec<Vec<Vec<DeviceEvent>>>,
    /// Every alert that should exist, by `alert_id`.
    expected: HashMap<String, Expected>,
    /// Per supply point, its expected alert IDs in order.
    order: HashMap<(String, i32), Vec<String>>,
    /// Per device, a readable account of its script (for failure reports).
    accounts: HashMap<String, String>,
    scenarios: BTreeMap<Scenario, u64>,
    events: u64,
    resent: u64,
    /// Every pending short interruption must be decided before this relay time.
    short_deadline: i64,
}

/// One device's events, as they are built.
struct DeviceScript {
    n: u64,
    device: String,
    phase: i32,
    mpan: String,
    events: Vec<DeviceEvent>,
    account: String,
}

impl DeviceScript {
    fn push(&mut self, kind: device_event::Kind, alert_code: u32) {
        let event_id = format!("ev-{}-{}", self.n, self.events.len());
        let _ = write!(self.account, "\n    {event_id}: {kind:?}");
        self.events.push(DeviceEvent {
            event_id,
            device_id: self.device.clone(),
            phase: self.phase,
            mpan_core: Some(self.mpan.clone()),
            kind: Some(kind),
            alert_code,
        });
    }

    fn lost(&mut self, at: i64) {
        let lost = SupplyLost {
            lost_at: Some(ts(at)),
        };
        self.push(device_event::Kind::Lost(lost), 0);
    }

    fn restored(&mut self, at: i64, lost_at: Option<i64>) {
        let restored = SupplyRestored {
            restored_at: Some(ts(at)),
            lost_at: lost_at.map(ts),
        };
        self.push(device_event::Kind::Restored(restored), 0x8F36);
    }
}

/// The subscriber that owns `distributor`.
fn owner(distributor: u8) -> usize {
    SUBSCRIBERS
        .iter()
        .position(|(_, ids)| ids.contains(&distributor))
        .expect("every DNO area has a default subscriber")
}

impl Script {
    /// The storm for a start at relay time `t0`.
    fn generate(seed: u64, t0: i64) -> Self {
        let mut rng = Rng::new(seed);
        // Per publisher: (send slot, device, index in the device, event).
        let mut queues: Vec<Vec<(u64, u64, usize, DeviceEvent)>> =
            (0..PUBLISHERS).map(|_| Vec::new()).collect();
        let mut script = Self {
            batches: Vec::new(),
            expected: HashMap::new(),
            order: HashMap::new(),
            accounts: HashMap::new(),
            scenarios: BTreeMap::new(),
            events: 0,
            resent: 0,
            short_deadline: i64::MAX,
        };
        for n in 0..DEVICES {
            let distributor = 10 + u8::try_from(n % 14).expect("below 14");
            let mut dev = DeviceScript {
                n,
                device: device(0xfa_0000 + n),
                phase: if rng.percent(15) {
                    i32::try_from(1 + rng.next() % 3).expect("a phase")
                } else {
                    0
                },
                mpan: valid_mpan(distributor, n),
                events: Vec::new(),
                account: String::new(),
            };
            let point = (dev.device.clone(), dev.phase);
            let subscriber = owner(distributor);
            let outages = 1 + rng.next() % 3;
            let mut t = t0 - 3 * 3_600_000 + rng.range(0, 1_800_000);
            for i in 0..outages {
                let scenario = Scenario::pick(&mut rng, i + 1 == outages);
                *script.scenarios.entry(scenario).or_default() += 1;
                t += rng.range(1_000, 600_000);
                let lost_at = match scenario {
                    Scenario::PendingLong | Scenario::PendingOpen => t0 + rng.range(3_000, 25_000),
                    Scenario::PendingShort => t0 + FAR_AHEAD_MS + rng.range(0, 10_000),
                    _ => t,
                };
                let _ = write!(dev.account, "\n  {scenario:?} lost_at {lost_at}");
                match scenario {
                    Scenario::Long => {
                        t = lost_at + rng.range(2_000, 900_000);
                        dev.lost(lost_at);
                        dev.restored(t, rng.percent(50).then_some(lost_at));
                    }
                    Scenario::LearnedLate => {
                        t = lost_at + rng.range(2_000, 900_000);
                        dev.restored(t, Some(lost_at));
                    }
                    Scenario::Short => {
                        t = lost_at + rng.range(100, 1_800);
                        dev.restored(t, Some(lost_at));
                    }
                    Scenario::Open | Scenario::PendingOpen => dev.lost(lost_at),
                    Scenario::PendingLong => {
                        dev.lost(lost_at);
                        let carried = rng.percent(50).then_some(lost_at);
                        dev.restored(lost_at + rng.range(3_000, 8_000), carried);
                    }
                    Scenario::PendingShort => {
                        dev.lost(lost_at);
                        dev.restored(lost_at + 200, None);
                        script.short_deadline = script.short_deadline.min(lost_at + DEBOUNCE_MS);
                    }
                }
                let (poa, pra) = scenario.alerts();
                let kinds = [
                    (poa, AlertKind::PowerOutage),
                    (pra, AlertKind::PowerRestoration),
                ];
                for (_, kind) in kinds.into_iter().filter(|(wanted, _)| *wanted) {
                    let id = alert_id(kind, &dev.device, dev.phase, lost_at);
                    script
                        .order
                        .entry(point.clone())
                        .or_default()
                        .push(id.clone());
                    let expected = Expected {
                        subscriber,
                        learned_late: scenario == Scenario::LearnedLate,
                        point: point.clone(),
                    };
                    script.expected.insert(id, expected);
                }
            }
            // Increasing random send slots, so devices interleave and each device's events go
            // out in order: spread over the storm, or for some devices close together (in one
            // batch or adjacent ones, as a meter reporting a loss and its restoration at once);
            // out in order; a few events are queued a second time, later (a publisher resend).
            let queue = &mut queues[usize::try_from(n).expect("a device number") % PUBLISHERS];
            let mut slots: Vec<u64> = if rng.percent(30) {
                let base = rng.next() >> 1;
                (0..dev.events.len() as u64)
                    .map(|i| base + (i << 32))
                    .collect()
            } else {
                dev.events.iter().map(|_| rng.next()).collect()
            };
            slots.sort_unstable();
            for (index, (event, slot)) in dev.events.into_iter().zip(slots).enumerate() {
                if rng.percent(5) {
                    let later = slot + rng.next() % (u64::MAX - slot);
                    queue.push((later, n, index, event.clone()));
                    script.resent += 1;
                }
                queue.push((slot, n, index, event));
            }
            script.accounts.insert(dev.device, dev.account);
        }
        for mut queue in queues {
            queue.sort_by_key(|(slot, device, index, _)| (*slot, *device, *index));
            script.events += queue.len() as u64;
            let mut events = queue.into_iter().map(|(.., event)| event).peekable();
            let mut batches = Vec::new();
            while events.peek().is_some() {
                let size = usize::try_from(rng.range(50, 151)).expect("a batch size");
                batches.push(events.by_ref().take(size).collect());
            }
            script.batches.push(batches);
        }
        script
    }
}

/// One alert as a subscriber received it.
#[derive(Debug, Clone)]
struct Receipt {
    alert_id: String,
    sequence: u64,
    kind: i32,
    device: String,
    phase: i32,
    lost_at: i64,
    learned_late: bool,
    subscriber: String,
    emitted_by: String,
    /// Relay time of the emission, ms.
    emitted_at: i64,
}

impl Receipt {
    fn of(alert: &Alert) -> Self {
        Self {
            alert_id: alert.alert_id.clone(),
            sequence: alert.sequence,
            kind: alert.kind,
            device: alert.device_id.clone(),
            phase: alert.phase,
            lost_at: ms(alert.lost_at.as_ref()),
            learned_late: alert.learned_late,
            subscriber: alert.subscriber.clone(),
            emitted_by: alert.emitted_by.clone(),
            emitted_at: ms(alert.emitted_at.as_ref()),
        }
    }

    /// The ID its fields call for.
    fn id_of_fields(&self) -> String {
        let kind = AlertKind::try_from(self.kind).unwrap_or(AlertKind::Unspecified);
        alert_id(kind, &self.device, self.phase, self.lost_at)
    }
}

/// State shared by the test's tasks.
struct Shared {
    /// `http://127.0.0.1:PORT` of every instance.
    urls: Vec<String>,
    stop: AtomicBool,
    receipts: Vec<Mutex<Vec<Receipt>>>,
    anomalies: Mutex<Vec<String>>,
    batches_acked: AtomicU64,
    batch_retries: AtomicU64,
    duplicates_acked: AtomicU64,
    reconnects: AtomicU64,
}

impl Shared {
    fn anomaly(&self, what: String) {
        self.anomalies.lock().expect("anomalies lock").push(what);
    }

    fn receipts(&self, subscriber: usize) -> Vec<Receipt> {
        self.receipts[subscriber]
            .lock()
            .expect("receipts lock")
            .clone()
    }
}

/// A channel to `url`, or `None` if it does not answer within a second or two.
async fn channel(url: &str) -> Option<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(1));
    match tokio::time::timeout(Duration::from_secs(2), endpoint.connect()).await {
        Ok(Ok(channel)) => Some(channel),
        _ => None,
    }
}

/// Status codes that only a broken test or relay produce: retrying would hang.
fn fatal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::PermissionDenied
    )
}

/// Sends `batches` in order, spread over [`STORM_SPAN`], round-robin over the instances; a
/// batch that fails is resent to the next instance until one acknowledges it.
async fn publisher(shared: Arc<Shared>, index: usize, batches: Vec<Vec<DeviceEvent>>) {
    let start = Instant::now();
    let count = batches.len();
    for (id, events) in batches.into_iter().enumerate() {
        tokio::time::sleep_until(start + STORM_SPAN.mul_f64(id as f64 / count as f64)).await;
        let len = events.len() as u64;
        let batch = EventBatch {
            events,
            batch_id: id as u64,
        };
        let mut target = (index + id) % INSTANCES;
        let ack = loop {
            let sent = match channel(&shared.urls[target]).await {
                Some(channel) => {
                    let mut ingest = IngestClient::new(channel);
                    tokio::time::timeout(CALL_LIMIT, ingest.publish_batch(batch.clone()))
                        .await
                        .ok()
                }
                None => None,
            };
            match sent {
                Some(Ok(ack)) => break ack.into_inner(),
                Some(Err(status)) if fatal(status.code()) => {
                    panic!("PublishBatch refused batch {id} of publisher {index}: {status}")
                }
                // Down, not serving yet, or JetStream unavailable: the next instance.
                Some(Err(_)) | None => {
                    shared.batch_retries.fetch_add(1, Ordering::Relaxed);
                    target = (target + 1) % INSTANCES;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert!(
            ack.rejected.is_empty(),
            "batch {id} of publisher {index} had events rejected: {:?}",
            ack.rejected
        );
        assert_eq!(ack.accepted + ack.duplicates, len, "batch {id}: {ack:?}");
        shared.batches_acked.fetch_add(1, Ordering::Relaxed);
        shared
            .duplicates_acked
            .fetch_add(ack.duplicates, Ordering::Relaxed);
    }
}

/// Reads subscriber `index`'s feed from its cursor through one instance, acknowledging every
/// 50 alerts and when idle; on any error, goes on through the next instance. Until told to
/// stop.
async fn subscriber(shared: Arc<Shared>, index: usize) {
    let name = SUBSCRIBERS[index].0;
    let mut target = index % INSTANCES;
    let mut first = true;
    while !shared.stop.load(Ordering::Relaxed) {
        if !first {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            target = (target + 1) % INSTANCES;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first = false;
        let Some(channel) = channel(&shared.urls[target]).await else {
            continue;
        };
        let mut feed = AlertFeedClient::new(channel);
        let request = SubscribeRequest {
            subscriber: name.to_owned(),
            from_sequence: 0,
        };
        let mut stream = match tokio::time::timeout(CALL_LIMIT, feed.subscribe(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if fatal(status.code()) => {
                shared.anomaly(format!("FEED Subscribe({name}) refused: {status}"));
                continue;
            }
            Ok(Err(_)) | Err(_) => continue,
        };
        let (mut last, mut unacked) = (0u64, 0u32);
        loop {
            let received = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
            let idle = match received {
                Ok(Ok(Some(alert))) => {
                    if alert.sequence <= last {
                        shared.anomaly(format!(
                            "FEED {name}: sequence {} after {last} on one stream",
                            alert.sequence
                        ));
                    }
                    last = last.max(alert.sequence);
                    unacked += 1;
                    shared.receipts[index]
                        .lock()
                        .expect("receipts lock")
                        .push(Receipt::of(&alert));
                    false
                }
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => true,
            };
            if unacked > 0 && (unacked >= 50 || idle) {
                let ack = AckRequest {
                    subscriber: name.to_owned(),
                    sequence: last,
                };
                match tokio::time::timeout(CALL_LIMIT, feed.ack(ack)).await {
                    Ok(Ok(_)) => unacked = 0,
                    Ok(Err(status)) if fatal(status.code()) => {
                        shared.anomaly(format!("FEED Ack({name}, {last}) refused: {status}"));
                        break;
                    }
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            if idle && shared.stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }
}

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
            if serving(&self.url).await {
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

/// Whether the relay at `url` answers SERVING on `grpc.health.v1`.
async fn serving(url: &str) -> bool {
    let Some(channel) = channel(url).await else {
        return false;
    };
    let check = tokio::time::timeout(
        Duration::from_secs(2),
        HealthClient::new(channel).check(HealthCheckRequest::default()),
    )
    .await;
    matches!(check, Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32)
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
        let Some(channel) = channel(url).await else {
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
            let partition = outage_relay::debounce::shard_of(device, PARTITIONS);
            if orphans.contains(&partition) && r.emitted_by != victim && r.emitted_at >= killed_ms {
                let at = first.entry(partition).or_insert(r.emitted_at);
                *at = (*at).min(r.emitted_at);
            }
        }
    }
    let slowest = first.values().max().map(|at| at - killed_ms);
    (first.len(), slowest)
}

/// Heads of every subscriber's stream, from the first instance that answers.
async fn heads(urls: &[String]) -> Option<HashMap<String, u64>> {
    for url in urls {
        let Some(channel) = channel(url).await else {
            continue;
        };
        let status = tokio::time::timeout(
            CALL_LIMIT,
            AdminClient::new(channel).get_delivery_status(GetDeliveryStatusRequest::default()),
        )
        .await;
        if let Ok(Ok(status)) = status {
            let heads = status.into_inner().subscribers.into_iter();
            return Some(heads.map(|s| (s.subscriber, s.head_sequence)).collect());
        }
    }
    None
}

/// Whether every subscriber has received all it is expected to and every sequence up to its
/// stream's head.
fn drained(shared: &Shared, script: &Script, heads: &HashMap<String, u64>) -> bool {
    (0..SUBSCRIBERS.len()).all(|index| {
        let receipts = shared.receipts(index);
        let ids: HashSet<&str> = receipts.iter().map(|r| r.alert_id.as_str()).collect();
        let sequences: BTreeSet<u64> = receipts.iter().map(|r| r.sequence).collect();
        let head = heads.get(SUBSCRIBERS[index].0).copied().unwrap_or(0);
        script
            .expected
            .iter()
            .filter(|(_, e)| e.subscriber == index)
            .all(|(id, _)| ids.contains(id.as_str()))
            && sequences.len() as u64 == head
    })
}

/// What the check counted.
#[derive(Debug, Default)]
struct Counts {
    receipts: u64,
    distinct: u64,
    redeliveries: u64,
    by_emitter: BTreeMap<String, u64>,
}

/// Checks every receipt against the model; returns the failures and the counts.
fn check(
    shared: &Shared,
    script: &Script,
    heads: &HashMap<String, u64>,
    instances: &[String],
) -> (Vec<String>, Counts) {
    let mut failures = Vec::new();
    let mut counts = Counts::default();
    let account = |device: &str| {
        script
            .accounts
            .get(device)
            .map_or_else(|| "  (device not in the script)".to_owned(), Clone::clone)
    };
    let mut emitters: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (index, (name, _)) in SUBSCRIBERS.iter().enumerate() {
        let receipts = shared.receipts(index);
        counts.receipts += receipts.len() as u64;
        let mut by_sequence: HashMap<u64, &str> = HashMap::new();
        let mut by_id: HashMap<&str, u64> = HashMap::new();
        for r in &receipts {
            emitters
                .entry(r.alert_id.clone())
                .or_default()
                .insert(r.emitted_by.clone());
            if r.alert_id != r.id_of_fields() {
                failures.push(format!(
                    "BAD_ID {name}: alert_id does not match its fields: {r:?}"
                ));
            }
            if r.subscriber != *name {
                failures.push(format!(
                    "MISROUTED {name}: alert names another subscriber: {r:?}"
                ));
            }
            match by_sequence.insert(r.sequence, &r.alert_id) {
                Some(other) if other != r.alert_id => failures.push(format!(
                    "SEQUENCE_REUSED {name}: sequence {} carried {other} and then {}",
                    r.sequence, r.alert_id
                )),
                _ => {}
            }
            match by_id.insert(&r.alert_id, r.sequence) {
                Some(other) if other != r.sequence => failures.push(format!(
                    "DUPLICATE {name}: {} stored twice, at sequence {other} and {}",
                    r.alert_id, r.sequence
                )),
                Some(_) => counts.redeliveries += 1,
                None => {
                    counts.distinct += 1;
                    match script.expected.get(&r.alert_id) {
                        None => failures.push(format!(
                            "UNEXPECTED {name}: {r:?}; device script:{}",
                            account(&r.device)
                        )),
                        Some(e) if e.subscriber != index => failures.push(format!(
                            "MISROUTED {name}: alert {} belongs to {}",
                            r.alert_id, SUBSCRIBERS[e.subscriber].0
                        )),
                        Some(e) if e.learned_late != r.learned_late => failures.push(format!(
                            "LEARNED_LATE {name}: {} has learned_late {} (expected {})",
                            r.alert_id, r.learned_late, e.learned_late
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
        for (id, expected) in script
            .expected
            .iter()
            .filter(|(_, e)| e.subscriber == index)
        {
            if !by_id.contains_key(id.as_str()) {
                let device = &expected.point.0;
                let seen: Vec<&Receipt> = receipts.iter().filter(|r| &r.device == device).collect();
                failures.push(format!(
                    "LOST {name}: {id}; received for the device: {seen:?}; device script:{}",
                    account(device)
                ));
            }
        }
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
                    account(&point.0)
                ));
            }
        }
        let head = heads.get(*name).copied().unwrap_or(0);
        let sequences: BTreeSet<u64> = by_sequence.keys().copied().collect();
        if !sequences.iter().copied().eq(1..=head) {
            let missing: Vec<u64> = (1..=head).filter(|s| !sequences.contains(s)).collect();
            failures.push(format!(
                "GAP {name}: received sequences are not exactly 1..={head}: {} distinct, missing \
                 {missing:?}, beyond the head {:?}",
                sequences.len(),
                sequences.range(head + 1..).collect::<Vec<_>>()
            ));
        }
    }
    for (id, by) in &emitters {
        if by.len() != 1 || by.iter().any(|name| !instances.contains(name)) {
            failures.push(format!(
                "EMITTED_BY {id} emitted by {by:?}: not exactly one instance"
            ));
        }
        for name in by {
            *counts.by_emitter.entry(name.clone()).or_default() += 1;
        }
    }
    (failures, counts)
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
    let seed = std::env::var("OUTAGE_RELAY_FAULT_SEED")
        .ok()
        .map(|s| {
            let s = s.trim_start_matches("0x");
            u64::from_str_radix(s, 16).expect("OUTAGE_RELAY_FAULT_SEED is a hex u64")
        })
        .unwrap_or(DEFAULT_SEED);
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
    let script = Script::generate(seed, t0);
    let batches: usize = script.batches.iter().map(Vec::len).sum();
    println!(
        "script: {DEVICES} devices, {} events ({} queued twice) in {batches} batches, {} alerts \
         expected; outages {:?}; prefix {prefix}",
        script.events,
        script.resent,
        script.expected.len(),
        script.scenarios
    );

    let shared = Arc::new(Shared {
        urls: urls.clone(),
        stop: AtomicBool::new(false),
        receipts: SUBSCRIBERS.iter().map(|_| Mutex::new(Vec::new())).collect(),
        anomalies: Mutex::new(Vec::new()),
        batches_acked: AtomicU64::new(0),
        batch_retries: AtomicU64::new(0),
        duplicates_acked: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
    });
    let subscribers: Vec<JoinHandle<()>> = (0..SUBSCRIBERS.len())
        .map(|index| tokio::spawn(subscriber(Arc::clone(&shared), index)))
        .collect();
    let storm = Instant::now();
    let publishers: Vec<JoinHandle<()>> = script
        .batches
        .iter()
        .enumerate()
        .map(|(index, batches)| {
            tokio::spawn(publisher(Arc::clone(&shared), index, batches.clone()))
        })
        .collect();

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
    let drain_deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        if let Some(heads) = heads(&urls).await
            && drained(&shared, &script, &heads)
        {
            break;
        }
        if Instant::now() >= drain_deadline {
            println!("not drained within {DRAIN_LIMIT:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained_at = UtcMillis::system_now().0;
    shared.stop.store(true, Ordering::Relaxed);
    for handle in subscribers {
        tokio::time::timeout(CALL_LIMIT * 3, handle)
            .await
            .expect("a subscriber did not stop")
            .expect("a subscriber panicked");
    }
    let heads = heads(&urls).await.unwrap_or_default();
    let rejoin = finished(rejoin).await;
    let (taken, slowest) = takeover(&shared, &orphans, &names[victim], killed_ms);
    let takeover = format!(
        "survivors emitted alerts for {taken} of its {} partitions (the slowest: {} ms on)",
        orphans.len(),
        slowest.map_or_else(|| "-".to_owned(), |ms| ms.to_string())
    );

    let (mut failures, counts) = check(&shared, &script, &heads, &names);
    failures.extend(shared.anomalies.lock().expect("anomalies lock").drain(..));
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
         {rejoin:.1?}\n  \
         publishing: {} events in {batches} batches, {} batch retries, {} events acked as \
         duplicates\n  \
         alerts: {} expected, {} received distinct in {} receipts ({} re-deliveries), {} \
         subscriber reconnects; by emitter {:?}; heads {:?}",
        began.elapsed(),
        names[victim],
        node.node,
        script.events,
        shared.batch_retries.load(Ordering::Relaxed),
        shared.duplicates_acked.load(Ordering::Relaxed),
        script.expected.len(),
        counts.distinct,
        counts.receipts,
        counts.redeliveries,
        shared.reconnects.load(Ordering::Relaxed),
        counts.by_emitter,
        heads.iter().collect::<BTreeMap<_, _>>(),
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
