//! "Nothing lost": the real `outage-relay` binary, killed with SIGKILL at random points during
//! a scripted storm at least [`MIN_KILLS`] times and restarted each time on the same
//! `--data-dir` and ports, must end up having delivered exactly the alerts a model of the
//! script predicts.
//!
//! The script (deterministic from a seed, printed; `OUTAGE_RELAY_CRASH_SEED` replays one) is
//! a fleet of [`DEVICES`] devices, each with one to three outages in device-time order, of
//! these kinds (see [`Scenario`]): long outages, outages learned late from their restoration,
//! short interruptions, unmatched restorations, outages still open at the end, outages whose
//! debounce timer runs while the relay is killed, and some events sent twice. Every outcome is
//! independent of when the relay processes an event: past outages are long past their
//! debounce, a short interruption is decided by device times alone (a restoration carrying
//! its `lost_at`, or a loss and its restoration both far enough ahead that the debounce
//! cannot have elapsed before the test has published them), and a loss still pending when
//! published ends in a POA whether its timer fires or its restoration proves the debounce
//! elapsed.
//!
//! Two publishers send the events in batches with unary `PublishBatch`, each batch resent
//! until acknowledged (an acknowledged batch is durable). Six subscribers (the default DNO
//! groups) read `AlertFeed.Subscribe` from their cursor, acknowledge cumulatively and
//! reconnect after every kill. At the end, per subscriber:
//! - every expected alert was received, with the deterministic alert ID and `learned_late`;
//! - no alert arrived that the model does not predict (and nothing was parked);
//! - a PRA was first received after its POA;
//! - a sequence number always carried the same alert and an alert always the same sequence
//!   (re-deliveries after a crash are counted, not refused), and the received sequences are
//!   exactly `1..=head`: no gap, no reuse across restarts.
//!
//! No assertion depends on timing; waits are bounded only so a broken relay fails the test
//! instead of hanging it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outage_relay::domain::{DeviceId, MpanCore, UtcMillis};
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{
    AckRequest, Alert, AlertKind, DeviceEvent, EventBatch, GetDeliveryStatusRequest,
    ListParkedAlertsRequest, SubscribeRequest, SupplyLost, SupplyRestored, device_event,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_outage-relay");

/// Devices in the fleet.
const DEVICES: u64 = 3_000;
/// The relay's debounce (`--debounce 1s`).
const DEBOUNCE_MS: i64 = 1_000;
/// SIGKILLs at least.
const MIN_KILLS: u32 = 20;
/// Seed used unless `OUTAGE_RELAY_CRASH_SEED` is set.
const DEFAULT_SEED: u64 = 0x5eed_c4a5_4000_0001;
/// Publishers, each with its own share of the devices.
const PUBLISHERS: u64 = 2;
/// The default subscribers and the distributor IDs each owns.
const SUBSCRIBERS: [(&str, &[u8]); 6] = [
    ("ukpn", &[10, 12, 19]),
    ("nged", &[11, 14, 21, 22]),
    ("spen", &[13, 18]),
    ("ssen", &[17, 20]),
    ("npg", &[15, 23]),
    ("enwl", &[16]),
];
/// Bound on the storm (publishing under kills) only to turn a hang into a failure.
const STORM_LIMIT: Duration = Duration::from_secs(180);
/// Bound on the final drain, only to turn a hang into a failure.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// Bound on one relay start (process up and serving), only to turn a hang into a failure.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Bound on one gRPC call, only to turn a hang into an error that is retried.
const CALL_LIMIT: Duration = Duration::from_secs(15);
/// How far ahead the pending short interruptions start: far beyond the time the test needs
/// to publish everything, and within the relay's 5-minute future-skew limit.
const FAR_AHEAD_MS: i64 = 240_000;

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
}

/// What one scripted outage is, and what the model expects of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Scenario {
    /// Loss and restoration ≥ 2 s apart, both long past: POA + PRA.
    Long,
    /// Restoration only, carrying a `lost_at` ≥ 2 s earlier, long past: POA + PRA, learned late.
    LearnedLate,
    /// Restoration only, carrying a `lost_at` less than the debounce earlier: nothing.
    ShortLearned,
    /// Restoration only, no `lost_at`, no known outage: nothing.
    Unmatched,
    /// Loss long past, never restored: POA.
    Open,
    /// Loss a few seconds after the test starts, restored 3–8 s later: POA (by its timer, at
    /// once, or proven by the restoration) + PRA.
    PendingLong,
    /// Loss a few seconds after the test starts, never restored: POA (timer or at once).
    PendingOpen,
    /// Loss [`FAR_AHEAD_MS`] after the test starts, restored 200 ms later: nothing.
    PendingShort,
}

impl Scenario {
    /// `(POA, PRA)` expected.
    fn alerts(self) -> (bool, bool) {
        match self {
            Self::Long | Self::LearnedLate | Self::PendingLong => (true, true),
            Self::Open | Self::PendingOpen => (true, false),
            Self::ShortLearned | Self::Unmatched | Self::PendingShort => (false, false),
        }
    }
}

/// An alert as the model identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct AlertKey {
    /// `AlertKind` proto value.
    kind: i32,
    device: String,
    phase: i32,
    lost_at: i64,
}

impl AlertKey {
    /// The relay's deterministic ID: `{poa|pra}-{16 hex of the EUI}-{phase}-{lost_at ms}`.
    fn alert_id(&self) -> String {
        let kind = if self.kind == AlertKind::PowerOutage as i32 {
            "poa"
        } else {
            "pra"
        };
        let hex = self.device.replace('-', "");
        format!("{kind}-{hex}-{}-{}", self.phase, self.lost_at)
    }

    fn partner(&self, kind: AlertKind) -> Self {
        Self {
            kind: kind as i32,
            ..self.clone()
        }
    }
}

/// What the model expects of one alert.
#[derive(Debug, Clone, Copy)]
struct Expected {
    subscriber: usize,
    learned_late: bool,
}

/// One event with its place in its publisher's send order.
struct Queued {
    slot: u64,
    device: u64,
    index: usize,
    event: DeviceEvent,
}

/// The whole scripted storm and its model.
struct Script {
    /// Per publisher, the batches to send in order.
    batches: Vec<Vec<Vec<DeviceEvent>>>,
    expected: HashMap<AlertKey, Expected>,
    /// Per device, a readable account of its script (for failure reports).
    accounts: HashMap<String, String>,
    scenarios: HashMap<Scenario, u64>,
    events: u64,
    duplicates: u64,
    /// Every pending short interruption's restoration must be applied before this relay time.
    short_deadline: i64,
}

fn owner(distributor: u8) -> usize {
    SUBSCRIBERS
        .iter()
        .position(|(_, ids)| ids.contains(&distributor))
        .expect("every DNO area has a default subscriber")
}

fn ts(ms: i64) -> prost_types::Timestamp {
    UtcMillis(ms).to_proto()
}

fn ms(ts: Option<&prost_types::Timestamp>) -> i64 {
    UtcMillis::from_proto(ts.expect("timestamp is set"))
        .expect("timestamp is valid")
        .0
}

/// Builds one device's events.
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
        self.push(
            device_event::Kind::Lost(SupplyLost {
                lost_at: Some(ts(at)),
            }),
            0,
        );
    }

    fn restored(&mut self, at: i64, lost_at: Option<i64>) {
        self.push(
            device_event::Kind::Restored(SupplyRestored {
                restored_at: Some(ts(at)),
                lost_at: lost_at.map(ts),
            }),
            0x8F36,
        );
    }
}

impl Script {
    fn generate(seed: u64, t0: i64) -> Self {
        let mut rng = Rng::new(seed);
        let mut queues: Vec<Vec<Queued>> = (0..PUBLISHERS).map(|_| Vec::new()).collect();
        let mut script = Self {
            batches: Vec::new(),
            expected: HashMap::new(),
            accounts: HashMap::new(),
            scenarios: HashMap::new(),
            events: 0,
            duplicates: 0,
            short_deadline: i64::MAX,
        };
        for n in 0..DEVICES {
            let distributor = 10 + u8::try_from(n % 14).expect("below 14");
            let mpan = MpanCore::with_check_digit(u64::from(distributor) * 10_000_000_000 + n)
                .expect("12 digits")
                .to_string();
            let mut dev = DeviceScript {
                n,
                device: DeviceId(0x00db_c0de_0000_0000 | n).to_string(),
                phase: if rng.percent(15) {
                    i32::try_from(1 + rng.next() % 3).expect("a phase")
                } else {
                    0
                },
                mpan,
                events: Vec::new(),
                account: String::new(),
            };
            let subscriber = owner(distributor);
            let outages = 1 + rng.next() % 3;
            let mut t = t0 - 3 * 3_600_000 + rng.range(0, 1_800_000);
            for i in 0..outages {
                let scenario = Self::pick(&mut rng, i + 1 == outages);
                *script.scenarios.entry(scenario).or_default() += 1;
                t += rng.range(1_000, 600_000);
                let lost_at = match scenario {
                    Scenario::PendingLong | Scenario::PendingOpen => t0 + rng.range(3_000, 20_000),
                    Scenario::PendingShort => t0 + FAR_AHEAD_MS + rng.range(0, 10_000),
                    _ => t,
                };
                let _ = write!(dev.account, "\n  {scenario:?} lost_at {lost_at}");
                match scenario {
                    Scenario::Long => {
                        let restored_at = lost_at + rng.range(2_000, 900_000);
                        dev.lost(lost_at);
                        let carried = rng.percent(50).then_some(lost_at);
                        dev.restored(restored_at, carried);
                        t = restored_at;
                    }
                    Scenario::LearnedLate => {
                        t = lost_at + rng.range(2_000, 900_000);
                        dev.restored(t, Some(lost_at));
                    }
                    Scenario::ShortLearned => {
                        t = lost_at + rng.range(100, 800);
                        dev.restored(t, Some(lost_at));
                    }
                    Scenario::Unmatched => dev.restored(lost_at, None),
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
                let key = AlertKey {
                    kind: AlertKind::PowerOutage as i32,
                    device: dev.device.clone(),
                    phase: dev.phase,
                    lost_at,
                };
                let learned_late = scenario == Scenario::LearnedLate;
                let expected = Expected {
                    subscriber,
                    learned_late,
                };
                if poa {
                    script.expected.insert(key.clone(), expected);
                }
                if pra {
                    script
                        .expected
                        .insert(key.partner(AlertKind::PowerRestoration), expected);
                }
            }
            script.queue(&mut rng, dev, &mut queues[(n % PUBLISHERS) as usize]);
        }
        for mut queue in queues {
            queue.sort_by_key(|q| (q.slot, q.device, q.index));
            let mut batches = Vec::new();
            let mut events = queue.into_iter().map(|q| q.event).peekable();
            while events.peek().is_some() {
                let size = usize::try_from(rng.range(100, 301)).expect("a batch size");
                batches.push(events.by_ref().take(size).collect());
            }
            script.batches.push(batches);
        }
        script
    }

    /// Earlier outages of a device are closed past ones; the last may be anything.
    fn pick(rng: &mut Rng, last: bool) -> Scenario {
        let roll = rng.next() % 100;
        if !last {
            return match roll {
                0..55 => Scenario::Long,
                55..75 => Scenario::LearnedLate,
                75..92 => Scenario::ShortLearned,
                _ => Scenario::Unmatched,
            };
        }
        match roll {
            0..35 => Scenario::Long,
            35..47 => Scenario::LearnedLate,
            47..57 => Scenario::ShortLearned,
            57..60 => Scenario::Unmatched,
            60..72 => Scenario::Open,
            72..84 => Scenario::PendingLong,
            84..92 => Scenario::PendingOpen,
            _ => Scenario::PendingShort,
        }
    }

    /// Gives the device's events increasing random send slots (so devices interleave and each
    /// device's events go out in order) and queues some of them a second time, later.
    fn queue(&mut self, rng: &mut Rng, dev: DeviceScript, queue: &mut Vec<Queued>) {
        let mut slots: Vec<u64> = dev.events.iter().map(|_| rng.next()).collect();
        slots.sort_unstable();
        let mut copies = Vec::new();
        for (index, (event, slot)) in dev.events.into_iter().zip(slots).enumerate() {
            if rng.percent(5) {
                let later = slot + rng.next() % (u64::MAX - slot);
                copies.push(Queued {
                    slot: later,
                    device: dev.n,
                    index,
                    event: event.clone(),
                });
                self.duplicates += 1;
            }
            queue.push(Queued {
                slot,
                device: dev.n,
                index,
                event,
            });
            self.events += 1;
        }
        self.events += copies.len() as u64;
        queue.extend(copies);
        self.accounts.insert(dev.device, dev.account);
    }
}

/// One alert as a subscriber received it.
#[derive(Debug, Clone)]
struct Receipt {
    alert_id: String,
    sequence: u64,
    key: AlertKey,
    learned_late: bool,
    subscriber_field: String,
}

impl Receipt {
    fn of(alert: &Alert) -> Self {
        Self {
            alert_id: alert.alert_id.clone(),
            sequence: alert.sequence,
            key: AlertKey {
                kind: alert.kind,
                device: alert.device_id.clone(),
                phase: alert.phase,
                lost_at: ms(alert.lost_at.as_ref()),
            },
            learned_late: alert.learned_late,
            subscriber_field: alert.subscriber.clone(),
        }
    }
}

/// State shared by the test's tasks.
struct Shared {
    url: String,
    stop: AtomicBool,
    receipts: Vec<Mutex<Vec<Receipt>>>,
    anomalies: Mutex<Vec<String>>,
    batches_acked: AtomicU64,
    batches_retried: AtomicU64,
    duplicates_acked: AtomicU64,
    subscriber_reconnects: AtomicU64,
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

/// A channel to the relay, or an error if it does not answer within a second.
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
    )
}

/// Sends `batches` in order, each until acknowledged, pausing a little between batches so the
/// storm spans the kills.
async fn publisher(shared: Arc<Shared>, batches: Vec<Vec<DeviceEvent>>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut client: Option<IngestClient<Channel>> = None;
    for (id, events) in batches.into_iter().enumerate() {
        let len = events.len() as u64;
        let batch = EventBatch {
            events,
            batch_id: id as u64,
        };
        let mut attempt = 0u32;
        let ack = loop {
            if attempt > 0 {
                shared.batches_retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            attempt += 1;
            let Some(mut ingest) = client.take() else {
                client = channel(&shared.url).await.map(IngestClient::new);
                attempt -= 1;
                if client.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            };
            match tokio::time::timeout(CALL_LIMIT, ingest.publish_batch(batch.clone())).await {
                Ok(Ok(ack)) => {
                    client = Some(ingest);
                    break ack.into_inner();
                }
                Ok(Err(status)) if fatal(status.code()) => {
                    panic!("PublishBatch refused batch {id}: {status}")
                }
                // The relay died (or is not serving yet): reconnect and resend the same batch.
                Ok(Err(_)) | Err(_) => {}
            }
        };
        assert!(
            ack.rejected.is_empty(),
            "batch {id} had events rejected: {:?}",
            ack.rejected
        );
        assert_eq!(ack.accepted + ack.duplicates, len, "batch {id}: {ack:?}");
        assert_eq!(ack.batch_id, id as u64);
        shared.batches_acked.fetch_add(1, Ordering::Relaxed);
        shared
            .duplicates_acked
            .fetch_add(ack.duplicates, Ordering::Relaxed);
        let pause = rng.range(50, 400);
        tokio::time::sleep(Duration::from_millis(pause.unsigned_abs())).await;
    }
}

/// Reads `subscriber`'s feed from its cursor, acknowledging every 50 alerts and when idle,
/// reconnecting whenever the stream breaks, until told to stop.
async fn subscriber(shared: Arc<Shared>, index: usize) {
    let name = SUBSCRIBERS[index].0;
    let mut first = true;
    while !shared.stop.load(Ordering::Relaxed) {
        if !first {
            shared.subscriber_reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        first = false;
        let Some(channel) = channel(&shared.url).await else {
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
                shared.anomaly(format!("Subscribe({name}) refused: {status}"));
                continue;
            }
            Ok(Err(_)) | Err(_) => continue,
        };
        let (mut last, mut unacked) = (0u64, 0u32);
        loop {
            let received = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
            let idle = match received {
                Ok(Ok(Some(alert))) => {
                    let receipt = Receipt::of(&alert);
                    shared.receipts[index]
                        .lock()
                        .expect("receipts lock")
                        .push(receipt);
                    if alert.sequence <= last {
                        shared.anomaly(format!(
                            "{name}: sequence {} after {last} on one stream",
                            alert.sequence
                        ));
                    }
                    last = last.max(alert.sequence);
                    unacked += 1;
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
                        shared.anomaly(format!("Ack({name}, {last}) refused: {status}"));
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

/// The relay process, restarted on the same data directory and ports.
struct Relay {
    child: Option<Child>,
    dir: PathBuf,
    args: Vec<String>,
    url: String,
    generation: u32,
}

impl Relay {
    fn spawn(&mut self) {
        self.generation += 1;
        let log = |ext: &str| {
            std::fs::File::create(self.dir.join(format!("relay-{}.{ext}", self.generation)))
                .expect("create a relay log file")
        };
        let child = Command::new(BIN)
            .args(&self.args)
            .current_dir(&self.dir)
            .env("OUTAGE_RELAY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log("out"))
            .stderr(log("err"))
            .spawn()
            .expect("start the outage-relay binary");
        self.child = Some(child);
    }

    /// Starts it and waits until it reports itself serving; a start that fails (say its port
    /// is briefly unavailable after the kill) is retried.
    async fn start(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        self.spawn();
        loop {
            assert!(
                Instant::now() < deadline,
                "the relay did not start serving: {}",
                self.stderr_tail()
            );
            let child = self.child.as_mut().expect("a relay process");
            if child.try_wait().expect("query the relay process").is_some() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.spawn();
                continue;
            }
            if let Some(channel) = channel(&self.url).await {
                let check = tokio::time::timeout(
                    Duration::from_secs(2),
                    HealthClient::new(channel).check(HealthCheckRequest::default()),
                )
                .await;
                if matches!(check, Ok(Ok(ref r)) if r.get_ref().status == ServingStatus::Serving as i32)
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then reap.
    async fn kill(&mut self) {
        let mut child = self.child.take().expect("a relay process");
        child.kill().expect("SIGKILL the relay");
        let deadline = Instant::now() + START_LIMIT;
        while child.try_wait().expect("query the relay process").is_none() {
            assert!(Instant::now() < deadline, "the killed relay did not exit");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn stderr_tail(&self) -> String {
        let path = self.dir.join(format!("relay-{}.err", self.generation));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("{}:\n{tail}", path.display())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Two distinct loopback ports on which nothing listens (bound together, then released).
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let (a, b) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().expect("its address").port();
    (port(&a), port(&b))
}

/// Heads of every subscriber's log and the number of parked alerts, if the relay answers.
async fn relay_heads(url: &str) -> Option<(HashMap<String, u64>, u64)> {
    let channel = channel(url).await?;
    let mut admin = AdminClient::new(channel);
    let status = tokio::time::timeout(
        CALL_LIMIT,
        admin.get_delivery_status(GetDeliveryStatusRequest::default()),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    let parked = tokio::time::timeout(
        CALL_LIMIT,
        admin.list_parked_alerts(ListParkedAlertsRequest { limit: 10 }),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    let heads = status
        .subscribers
        .into_iter()
        .map(|s| (s.subscriber, s.head_sequence))
        .collect();
    Some((heads, parked.total))
}

/// Whether every subscriber has received all it is expected to and every sequence up to its
/// log's head.
fn drained(shared: &Shared, script: &Script, heads: &HashMap<String, u64>) -> bool {
    (0..SUBSCRIBERS.len()).all(|index| {
        let receipts = shared.receipts(index);
        let keys: std::collections::HashSet<&AlertKey> = receipts.iter().map(|r| &r.key).collect();
        let sequences: BTreeSet<u64> = receipts.iter().map(|r| r.sequence).collect();
        let head = heads.get(SUBSCRIBERS[index].0).copied().unwrap_or(0);
        script
            .expected
            .iter()
            .filter(|(_, e)| e.subscriber == index)
            .all(|(key, _)| keys.contains(key))
            && sequences.len() as u64 == head
    })
}

/// Checks every receipt against the model; returns the failures and the duplicate count.
fn check(
    shared: &Shared,
    script: &Script,
    heads: &HashMap<String, u64>,
) -> (Vec<String>, u64, u64) {
    let mut failures = Vec::new();
    let (mut duplicates, mut distinct) = (0u64, 0u64);
    let account = |key: &AlertKey| {
        script
            .accounts
            .get(&key.device)
            .map_or_else(|| "  (device not in the script)".to_owned(), Clone::clone)
    };
    for (index, (name, _)) in SUBSCRIBERS.iter().enumerate() {
        let receipts = shared.receipts(index);
        let mut by_sequence: HashMap<u64, &str> = HashMap::new();
        let mut by_id: HashMap<&str, u64> = HashMap::new();
        let mut first_at: HashMap<&AlertKey, usize> = HashMap::new();
        for (position, r) in receipts.iter().enumerate() {
            if r.alert_id != r.key.alert_id() {
                failures.push(format!(
                    "{name}: alert_id {} does not match its fields (expected {}): {r:?}",
                    r.alert_id,
                    r.key.alert_id()
                ));
            }
            if r.subscriber_field != *name {
                failures.push(format!("{name}: alert names subscriber {r:?}"));
            }
            match by_sequence.insert(r.sequence, &r.alert_id) {
                Some(other) if other != r.alert_id => failures.push(format!(
                    "{name}: sequence {} carried {other} and then {}",
                    r.sequence, r.alert_id
                )),
                _ => {}
            }
            match by_id.insert(&r.alert_id, r.sequence) {
                Some(other) if other != r.sequence => failures.push(format!(
                    "{name}: {} received with sequence {other} and then {}",
                    r.alert_id, r.sequence
                )),
                Some(_) => duplicates += 1,
                None => {}
            }
            if first_at.contains_key(&r.key) {
                continue;
            }
            first_at.insert(&r.key, position);
            distinct += 1;
            match script.expected.get(&r.key) {
                None => failures.push(format!(
                    "{name}: unexpected alert {r:?}; device script:{}",
                    account(&r.key)
                )),
                Some(e) if e.subscriber != index => failures.push(format!(
                    "{name}: alert {} belongs to {}",
                    r.alert_id, SUBSCRIBERS[e.subscriber].0
                )),
                Some(e) if e.learned_late != r.learned_late => failures.push(format!(
                    "{name}: {} has learned_late {} (expected {})",
                    r.alert_id, r.learned_late, e.learned_late
                )),
                Some(_) => {}
            }
        }
        for (key, _) in script
            .expected
            .iter()
            .filter(|(_, e)| e.subscriber == index)
        {
            if !first_at.contains_key(key) {
                let seen: Vec<&Receipt> = receipts
                    .iter()
                    .filter(|r| r.key.device == key.device)
                    .collect();
                failures.push(format!(
                    "{name}: LOST {}; received for the device: {seen:?}; device script:{}",
                    key.alert_id(),
                    account(key)
                ));
            }
            if key.kind == AlertKind::PowerRestoration as i32 {
                let poa = key.partner(AlertKind::PowerOutage);
                if let (Some(pra_at), Some(poa_at)) = (first_at.get(key), first_at.get(&poa))
                    && pra_at < poa_at
                {
                    failures.push(format!(
                        "{name}: {} first received (#{pra_at}) before its POA (#{poa_at})",
                        key.alert_id()
                    ));
                }
            }
        }
        let head = heads.get(*name).copied().unwrap_or(0);
        let sequences: BTreeSet<u64> = by_sequence.keys().copied().collect();
        let contiguous = sequences.iter().copied().eq(1..=head);
        if !contiguous {
            let missing: Vec<u64> = (1..=head).filter(|s| !sequences.contains(s)).collect();
            failures.push(format!(
                "{name}: received sequences are not exactly 1..={head}: {} distinct, missing \
                 {missing:?}, beyond head {:?}",
                sequences.len(),
                sequences.range(head + 1..).collect::<Vec<_>>()
            ));
        }
    }
    (failures, duplicates, distinct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_relay_loses_no_alert_and_reuses_no_sequence() {
    let seed = std::env::var("OUTAGE_RELAY_CRASH_SEED")
        .ok()
        .map(|s| {
            let s = s.trim_start_matches("0x");
            u64::from_str_radix(s, 16).expect("OUTAGE_RELAY_CRASH_SEED is a hex u64")
        })
        .unwrap_or(DEFAULT_SEED);
    println!("crash test seed {seed:#x} (replay: OUTAGE_RELAY_CRASH_SEED={seed:x})");
    let began = Instant::now();
    let t0 = UtcMillis::system_now().0;
    let script = Script::generate(seed, t0);
    let batches: usize = script.batches.iter().map(Vec::len).sum();
    println!(
        "script: {DEVICES} devices, {} events ({} sent twice) in {batches} batches, {} alerts \
         expected; outages {:?}",
        script.events,
        script.duplicates,
        script.expected.len(),
        {
            let mut s: Vec<_> = script.scenarios.iter().collect();
            s.sort();
            s
        }
    );

    let dir = tempfile::tempdir().expect("a temporary directory");
    let (grpc, metrics) = free_ports();
    let listen = format!("127.0.0.1:{grpc}");
    let data_dir = dir.path().join("data");
    let args: Vec<String> = [
        "serve",
        "--listen",
        &listen,
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--data-dir",
        &data_dir.display().to_string(),
        "--debounce",
        "1s",
        "--shards",
        "2",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let url = format!("http://{listen}");
    let mut relay = Relay {
        child: None,
        dir: dir.path().to_path_buf(),
        args,
        url: url.clone(),
        generation: 0,
    };
    relay.start().await;

    let shared = Arc::new(Shared {
        url,
        stop: AtomicBool::new(false),
        receipts: SUBSCRIBERS.iter().map(|_| Mutex::new(Vec::new())).collect(),
        anomalies: Mutex::new(Vec::new()),
        batches_acked: AtomicU64::new(0),
        batches_retried: AtomicU64::new(0),
        duplicates_acked: AtomicU64::new(0),
        subscriber_reconnects: AtomicU64::new(0),
    });
    let subscribers: Vec<JoinHandle<()>> = (0..SUBSCRIBERS.len())
        .map(|index| tokio::spawn(subscriber(Arc::clone(&shared), index)))
        .collect();
    let mut publishers: Vec<JoinHandle<()>> = script
        .batches
        .iter()
        .enumerate()
        .map(|(p, batches)| {
            tokio::spawn(publisher(
                Arc::clone(&shared),
                batches.clone(),
                seed ^ (p as u64 + 1),
            ))
        })
        .collect();

    // The killer: SIGKILL at random moments until everything is published and MIN_KILLS
    // kills have happened.
    let mut rng = Rng::new(seed ^ 0x6b11);
    let (mut kills, mut kills_while_publishing) = (0u32, 0u32);
    let mut published_at = None;
    let storm_deadline = Instant::now() + STORM_LIMIT;
    loop {
        if published_at.is_none() && publishers.iter().all(JoinHandle::is_finished) {
            for handle in publishers.drain(..) {
                handle.await.expect("a publisher panicked");
            }
            published_at = Some(UtcMillis::system_now().0);
        }
        if published_at.is_some() && kills >= MIN_KILLS {
            break;
        }
        assert!(
            Instant::now() < storm_deadline,
            "storm not over: {kills} kills, {} of {batches} batches acknowledged",
            shared.batches_acked.load(Ordering::Relaxed)
        );
        let pause = rng.range(100, 700).unsigned_abs();
        tokio::time::sleep(Duration::from_millis(pause)).await;
        relay.kill().await;
        kills += 1;
        if published_at.is_none() {
            kills_while_publishing += 1;
        }
        relay.start().await;
    }
    let published_at = published_at.expect("publishing finished");
    assert!(
        published_at < script.short_deadline,
        "publishing ended at {published_at}, too late for the model: short interruptions \
         scripted to start at {} may have been alerted",
        script.short_deadline - DEBOUNCE_MS
    );

    // Leave the relay up; wait until every subscriber has everything.
    let drain_deadline = Instant::now() + DRAIN_LIMIT;
    let (heads, parked) = loop {
        if let Some((heads, parked)) = relay_heads(&shared.url).await
            && drained(&shared, &script, &heads)
        {
            break (heads, parked);
        }
        if Instant::now() >= drain_deadline {
            let (heads, parked) = relay_heads(&shared.url).await.unwrap_or_default();
            break (heads, parked);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    shared.stop.store(true, Ordering::Relaxed);
    for handle in subscribers {
        tokio::time::timeout(CALL_LIMIT * 2, handle)
            .await
            .expect("a subscriber did not stop")
            .expect("a subscriber panicked");
    }

    let (mut failures, duplicates, distinct) = check(&shared, &script, &heads);
    if parked != 0 {
        failures.push(format!("{parked} alerts parked"));
    }
    failures.extend(shared.anomalies.lock().expect("anomalies lock").drain(..));
    let receipts: usize = (0..SUBSCRIBERS.len())
        .map(|i| shared.receipts(i).len())
        .sum();
    println!(
        "crash summary: seed {seed:#x}, {kills} kills ({kills_while_publishing} while publishing), \
         {} events sent in {batches} batches ({} batch retries, {} duplicates acked), alerts \
         expected {} / received {distinct} distinct, {receipts} receipts, {duplicates} \
         re-deliveries, {} subscriber reconnects, heads {:?}, wall {:.1?}",
        script.events,
        shared.batches_retried.load(Ordering::Relaxed),
        shared.duplicates_acked.load(Ordering::Relaxed),
        script.expected.len(),
        shared.subscriber_reconnects.load(Ordering::Relaxed),
        {
            let mut h: Vec<_> = heads.iter().collect();
            h.sort();
            h
        },
        began.elapsed(),
    );
    if !failures.is_empty() {
        let shown = failures.len().min(30);
        panic!(
            "seed {seed:#x}: {} failures (first {shown}):\n{}\nrelay log {}",
            failures.len(),
            failures[..shown].join("\n"),
            relay.stderr_tail()
        );
    }
}
