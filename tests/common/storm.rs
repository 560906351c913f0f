//! The storm of the fault tests (`tests/crash.rs`, `tests/cluster_fault.rs`): a script of
//! supply-point outages, deterministic from a seed, with the alerts a model of it expects;
//! publishers and subscribers that ride out killed relays; and the check of what the
//! subscribers received against the model. What differs between the tests is a [`Plan`],
//! a [`Pacing`] and the [`Shared`] settings; killing and restarting is left to each test.
//!
//! Every outcome of a script is independent of when a relay processes an event: past outages
//! are long past their debounce, a short interruption is decided by device times alone (a
//! restoration carrying its `lost_at`, or a loss and its restoration both [`FAR_AHEAD_MS`]
//! ahead, where the debounce cannot have elapsed before the test has published them), and a
//! loss still pending when published ends in a POA whether its timer fires or its restoration
//! proves the debounce elapsed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outage_relay::domain::UtcMillis;
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{
    AckRequest, Alert, AlertKind, DeviceEvent, EventBatch, GetDeliveryStatusRequest,
    SubscribeRequest, SupplyLost, SupplyRestored, device_event,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{device, ms, ts, valid_mpan};

/// The default subscribers and the distributor IDs each owns.
pub const SUBSCRIBERS: [(&str, &[u8]); 6] = [
    ("ukpn", &[10, 12, 19]),
    ("nged", &[11, 14, 21, 22]),
    ("spen", &[13, 18]),
    ("ssen", &[17, 20]),
    ("npg", &[15, 23]),
    ("enwl", &[16]),
];

/// How far ahead the pending short interruptions start: far beyond the time a test needs to
/// publish everything, and within the relay's 5-minute future-skew limit.
pub const FAR_AHEAD_MS: i64 = 240_000;

/// Bound on the subscribers stopping once told to, only to turn a hang into a failure.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// xorshift64*: small, deterministic, good enough to script a storm.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams (never 0).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = u64::try_from(hi - lo).expect("a non-empty range");
        lo + i64::try_from(self.next() % span).expect("the span fits in i64")
    }

    /// True `p` times in 100.
    pub fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("below n")
    }
}

/// The seed in the environment variable `var` (hex, `0x` optional), else `default`.
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().map_or(default, |s| {
        u64::from_str_radix(s.trim_start_matches("0x"), 16)
            .unwrap_or_else(|err| panic!("{var} is a hex u64: {err}"))
    })
}

/// What one scripted outage is, and what the model expects of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// Loss and restoration ≥ 2 s apart, both long past: POA + PRA.
    Long,
    /// Restoration only, carrying a `lost_at` ≥ 2 s earlier, long past: POA + PRA, learned late.
    LearnedLate,
    /// Restoration only, carrying a `lost_at` less than the debounce earlier: nothing.
    Short,
    /// Restoration only, no `lost_at`, no known outage: nothing.
    Unmatched,
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
    /// Every scenario, in the order of a [`Mix`].
    const ALL: [Self; 8] = [
        Self::Long,
        Self::LearnedLate,
        Self::Short,
        Self::Unmatched,
        Self::Open,
        Self::PendingLong,
        Self::PendingOpen,
        Self::PendingShort,
    ];

    /// `(POA, PRA)` expected.
    fn alerts(self) -> (bool, bool) {
        match self {
            Self::Long | Self::LearnedLate | Self::PendingLong => (true, true),
            Self::Open | Self::PendingOpen => (true, false),
            Self::Short | Self::Unmatched | Self::PendingShort => (false, false),
        }
    }

    /// A scenario picked by a roll in `0..100` from the shares of `mix`.
    fn pick(rng: &mut Rng, mix: Mix) -> Self {
        let roll = rng.next() % 100;
        let mut below = 0;
        for (scenario, share) in Self::ALL.into_iter().zip(mix) {
            below += share;
            if roll < below {
                return scenario;
            }
        }
        panic!("the shares of a mix add up to 100: {mix:?}")
    }
}

/// How often each scenario is picked: per cent of outages, in the order of [`Scenario`]'s
/// variants (`Long`, `LearnedLate`, `Short`, `Unmatched`, `Open`, `PendingLong`,
/// `PendingOpen`, `PendingShort`); the shares add up to 100.
pub type Mix = [u64; 8];

/// What a test's storm is made of.
pub struct Plan {
    /// Devices in the fleet.
    pub devices: u64,
    /// Device `n` is [`device`]`(first_device + n)`.
    pub first_device: u64,
    /// Publishers; device `n` is published by publisher `n % publishers`.
    pub publishers: usize,
    /// The relays' debounce, ms.
    pub debounce_ms: i64,
    /// The scenarios of a device's earlier outages: closed past ones.
    pub earlier: Mix,
    /// The scenario of a device's last outage: any.
    pub last: Mix,
    /// When pending outages begin, ms after the storm's start.
    pub pending_ms: Range<i64>,
    /// How long a short interruption lasts, ms.
    pub short_ms: Range<i64>,
    /// How many devices in 100 send all their events close together (in one batch or adjacent
    /// ones, as a meter reporting a loss and its restoration at once); `None`: no roll for it.
    pub bunched_percent: Option<u64>,
    /// Events per batch.
    pub batch_size: Range<i64>,
}

/// The subscriber that owns `distributor`.
fn owner(distributor: u8) -> usize {
    SUBSCRIBERS
        .iter()
        .position(|(_, ids)| ids.contains(&distributor))
        .expect("every DNO area has a default subscriber")
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
pub struct Expected {
    /// Index in [`SUBSCRIBERS`] of the subscriber it goes to.
    pub subscriber: usize,
    /// Its `learned_late`.
    pub learned_late: bool,
    /// `(device, phase)`: the supply point.
    pub point: (String, i32),
    /// For a PRA, the ID of its POA.
    pub poa: Option<String>,
}

/// The scripted storm and its model.
pub struct Script {
    /// Per publisher, its batches in sending order.
    batches: Vec<Vec<Vec<DeviceEvent>>>,
    /// Every alert that should exist, by `alert_id`.
    pub expected: HashMap<String, Expected>,
    /// Per supply point, its expected alert IDs in order.
    pub order: HashMap<(String, i32), Vec<String>>,
    /// Per device, a readable account of its script (for failure reports).
    accounts: HashMap<String, String>,
    /// How many outages of each scenario.
    scenarios: BTreeMap<Scenario, u64>,
    /// Events queued, counting those queued twice.
    events: u64,
    /// Events queued a second time (a publisher resend).
    resent: u64,
    /// Every pending short interruption must be decided before this relay time.
    pub short_deadline: i64,
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

impl Script {
    /// The storm of `plan` from `seed`, for a start at relay time `t0`.
    pub fn generate(plan: &Plan, seed: u64, t0: i64) -> Self {
        let mut rng = Rng::new(seed);
        // Per publisher: (send slot, device, index in the device, event).
        let mut queues: Vec<Vec<(u64, u64, usize, DeviceEvent)>> =
            (0..plan.publishers).map(|_| Vec::new()).collect();
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
        for n in 0..plan.devices {
            let distributor = 10 + u8::try_from(n % 14).expect("below 14");
            let mut dev = DeviceScript {
                n,
                device: device(plan.first_device + n),
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
                let last = i + 1 == outages;
                let scenario =
                    Scenario::pick(&mut rng, if last { plan.last } else { plan.earlier });
                *script.scenarios.entry(scenario).or_default() += 1;
                t += rng.range(1_000, 600_000);
                let lost_at = match scenario {
                    Scenario::PendingLong | Scenario::PendingOpen => {
                        t0 + rng.range(plan.pending_ms.start, plan.pending_ms.end)
                    }
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
                        t = lost_at + rng.range(plan.short_ms.start, plan.short_ms.end);
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
                        let decided = lost_at + plan.debounce_ms;
                        script.short_deadline = script.short_deadline.min(decided);
                    }
                }
                let (poa, pra) = scenario.alerts();
                let poa_id = alert_id(AlertKind::PowerOutage, &dev.device, dev.phase, lost_at);
                let pra_id = alert_id(AlertKind::PowerRestoration, &dev.device, dev.phase, lost_at);
                let alerts = [(poa, poa_id.clone(), None), (pra, pra_id, Some(poa_id))];
                for (_, id, poa) in alerts.into_iter().filter(|(wanted, ..)| *wanted) {
                    script
                        .order
                        .entry(point.clone())
                        .or_default()
                        .push(id.clone());
                    let expected = Expected {
                        subscriber,
                        learned_late: scenario == Scenario::LearnedLate,
                        point: point.clone(),
                        poa,
                    };
                    script.expected.insert(id, expected);
                }
            }
            // Increasing random send slots, so devices interleave and each device's events go
            // out in order: spread over the storm, or for some devices close together; a few
            // events are queued a second time, later (a publisher resend).
            let queue = &mut queues[usize::try_from(n).expect("a device number") % plan.publishers];
            let mut slots: Vec<u64> = if plan.bunched_percent.is_some_and(|p| rng.percent(p)) {
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
                let size = rng.range(plan.batch_size.start, plan.batch_size.end);
                let size = usize::try_from(size).expect("a batch size");
                batches.push(events.by_ref().take(size).collect());
            }
            script.batches.push(batches);
        }
        script
    }

    /// Batches over all publishers.
    pub fn batch_count(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }

    /// One line on what the script holds.
    pub fn summary(&self) -> String {
        format!(
            "{} devices, {} events ({} sent twice) in {} batches, {} alerts expected; outages {:?}",
            self.accounts.len(),
            self.events,
            self.resent,
            self.batch_count(),
            self.expected.len(),
            self.scenarios
        )
    }

    /// A readable account of `device`'s script.
    pub fn account(&self, device: &str) -> String {
        self.accounts
            .get(device)
            .map_or_else(|| "  (device not in the script)".to_owned(), Clone::clone)
    }
}

/// One alert as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Its `alert_id`.
    pub alert_id: String,
    /// Its sequence in the subscriber's log.
    pub sequence: u64,
    kind: i32,
    /// Its `device_id`.
    pub device: String,
    phase: i32,
    lost_at: i64,
    learned_late: bool,
    subscriber: String,
    /// The instance that emitted it.
    pub emitted_by: String,
    /// Relay time of the emission, ms.
    pub emitted_at: i64,
    /// When it was due, ms (a POA: loss + debounce; a PRA: its restoration).
    pub due_at: i64,
    /// Its SLA deadline, ms.
    pub deadline: i64,
    /// When the subscriber received it (the test's clock, which is the relays' clock), ms.
    pub received_at: i64,
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
            due_at: ms(alert.due_at.as_ref()),
            deadline: ms(alert.deadline.as_ref()),
            received_at: UtcMillis::system_now().0,
        }
    }

    /// Whether it is a POA.
    pub fn is_poa(&self) -> bool {
        self.kind == AlertKind::PowerOutage as i32
    }

    /// The ID its fields call for.
    fn id_of_fields(&self) -> String {
        let kind = AlertKind::try_from(self.kind).unwrap_or(AlertKind::Unspecified);
        alert_id(kind, &self.device, self.phase, self.lost_at)
    }
}

/// A channel to `url`, or `None` if it does not answer within a second or two.
pub async fn channel(url: &str) -> Option<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(1));
    match tokio::time::timeout(Duration::from_secs(2), endpoint.connect()).await {
        Ok(Ok(channel)) => Some(channel),
        _ => None,
    }
}

/// Whether the relay at `url` answers SERVING on `grpc.health.v1`.
pub async fn serving(url: &str) -> bool {
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

/// What the check counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// Alerts received, re-deliveries included.
    pub receipts: u64,
    /// Distinct alerts received.
    pub distinct: u64,
    /// Alerts received again with the same sequence.
    pub redeliveries: u64,
}

/// State shared by a test's publishers and subscribers: where the relays are, what the
/// subscribers received and what went wrong on the way.
pub struct Shared {
    /// `http://127.0.0.1:PORT` of every relay instance.
    urls: Vec<String>,
    /// Bound on one gRPC call, only to turn a hang into an error that is retried.
    call_limit: Duration,
    /// How long a subscriber waits before it reconnects.
    reconnect_pause: Duration,
    stop: AtomicBool,
    receipts: Vec<Mutex<Vec<Receipt>>>,
    anomalies: Mutex<Vec<String>>,
    /// Batches acknowledged.
    pub batches_acked: AtomicU64,
    /// Sends of a batch that failed and were retried.
    batch_retries: AtomicU64,
    /// Events acknowledged as duplicates.
    duplicates_acked: AtomicU64,
    /// Subscriber reconnects.
    reconnects: AtomicU64,
    /// Per device, when each of its batches was acknowledged (the test's clock, ms).
    accepted: Mutex<HashMap<String, Vec<i64>>>,
}

impl Shared {
    /// State for relays at `urls`, with calls bounded by `call_limit` and subscribers pausing
    /// `reconnect_pause` before they reconnect.
    pub fn new(urls: Vec<String>, call_limit: Duration, reconnect_pause: Duration) -> Arc<Self> {
        Arc::new(Self {
            urls,
            call_limit,
            reconnect_pause,
            stop: AtomicBool::new(false),
            receipts: SUBSCRIBERS.iter().map(|_| Mutex::new(Vec::new())).collect(),
            anomalies: Mutex::new(Vec::new()),
            batches_acked: AtomicU64::new(0),
            batch_retries: AtomicU64::new(0),
            duplicates_acked: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            accepted: Mutex::new(HashMap::new()),
        })
    }

    fn anomaly(&self, what: String) {
        self.anomalies.lock().expect("anomalies lock").push(what);
    }

    /// What the subscribers saw go wrong, taken out.
    pub fn take_anomalies(&self) -> Vec<String> {
        std::mem::take(&mut *self.anomalies.lock().expect("anomalies lock"))
    }

    /// When `receipt`'s alert could first have been emitted, as far as the test can tell: its
    /// due time, or, if later, when the last batch with an event of its device acknowledged
    /// before the receipt was acknowledged (an upper bound when the device sent later events).
    pub fn could_emit(&self, receipt: &Receipt) -> i64 {
        let accepted = self.accepted.lock().expect("accepted lock");
        let acks = accepted.get(&receipt.device).map_or(&[][..], Vec::as_slice);
        // An alert can reach its subscriber before its batch's ack reaches the publisher:
        // then the device's first ack stands in.
        let event = acks
            .iter()
            .copied()
            .filter(|&at| at <= receipt.received_at)
            .max()
            .or_else(|| acks.iter().copied().min())
            .unwrap_or(i64::MIN);
        receipt.due_at.max(event)
    }

    /// What subscriber `index` has received so far, in order.
    pub fn receipts(&self, subscriber: usize) -> Vec<Receipt> {
        self.receipts[subscriber]
            .lock()
            .expect("receipts lock")
            .clone()
    }

    /// Heads of every subscriber's log, from the first instance that answers.
    pub async fn heads(&self) -> Option<HashMap<String, u64>> {
        for url in &self.urls {
            let Some(channel) = channel(url).await else {
                continue;
            };
            let status = tokio::time::timeout(
                self.call_limit,
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

    /// Whether every subscriber has received all it is expected to and every sequence up to
    /// its log's head.
    fn drained(&self, script: &Script, heads: &HashMap<String, u64>) -> bool {
        (0..SUBSCRIBERS.len()).all(|index| {
            let receipts = self.receipts(index);
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

    /// Waits until every subscriber has everything (see [`Self::drained`]) and returns the
    /// heads it then had; `None` if `limit` passes first (the check then says what is
    /// missing).
    pub async fn wait_drained(
        &self,
        script: &Script,
        limit: Duration,
    ) -> Option<HashMap<String, u64>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(heads) = self.heads().await
                && self.drained(script, &heads)
            {
                return Some(heads);
            }
            if Instant::now() >= deadline {
                println!("not drained within {limit:?}");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts one [`subscriber`] per entry of [`SUBSCRIBERS`].
    pub fn spawn_subscribers(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        (0..SUBSCRIBERS.len())
            .map(|index| tokio::spawn(subscriber(Arc::clone(self), index)))
            .collect()
    }

    /// Tells the subscribers to stop once idle and waits until they have.
    pub async fn stop_subscribers(&self, subscribers: Vec<JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in subscribers {
            tokio::time::timeout(STOP_LIMIT, handle)
                .await
                .expect("a subscriber did not stop")
                .expect("a subscriber panicked");
        }
    }

    /// Starts one [`publisher`] per publisher of `script`, paced by `pacing(index)`.
    pub fn spawn_publishers(
        self: &Arc<Self>,
        script: &Script,
        pacing: impl Fn(usize) -> Pacing,
    ) -> Vec<JoinHandle<()>> {
        script
            .batches
            .iter()
            .enumerate()
            .map(|(index, batches)| {
                let publisher = publisher(Arc::clone(self), index, batches.clone(), pacing(index));
                tokio::spawn(publisher)
            })
            .collect()
    }

    /// For a test's summary: what was published and what the subscribers received, as
    /// `counts` counted it, and the `heads` of their logs.
    pub fn traffic(
        &self,
        script: &Script,
        counts: &Counts,
        heads: &HashMap<String, u64>,
    ) -> String {
        format!(
            "publishing: {} events in {} batches, {} batch retries, {} events acked as \
             duplicates; alerts: {} expected, {} received distinct in {} receipts ({} \
             re-deliveries), {} subscriber reconnects; heads {:?}",
            script.events,
            script.batch_count(),
            self.batch_retries.load(Ordering::Relaxed),
            self.duplicates_acked.load(Ordering::Relaxed),
            script.expected.len(),
            counts.distinct,
            counts.receipts,
            counts.redeliveries,
            self.reconnects.load(Ordering::Relaxed),
            heads.iter().collect::<BTreeMap<_, _>>(),
        )
    }

    /// Checks every receipt against the model of `script` and the `heads` of the logs;
    /// returns the failures, each starting with its kind (`LOST`, `UNEXPECTED`, `DUPLICATE`,
    /// `GAP`, ...), and the counts.
    pub fn check(&self, script: &Script, heads: &HashMap<String, u64>) -> (Vec<String>, Counts) {
        let mut failures = Vec::new();
        let mut counts = Counts::default();
        for (index, (name, _)) in SUBSCRIBERS.iter().enumerate() {
            let receipts = self.receipts(index);
            counts.receipts += receipts.len() as u64;
            let mut by_sequence: HashMap<u64, &str> = HashMap::new();
            let mut by_id: HashMap<&str, u64> = HashMap::new();
            for r in &receipts {
                if r.alert_id != r.id_of_fields() {
                    failures.push(format!(
                        "BAD_ID {name}: alert_id does not match its fields (expected {}): {r:?}",
                        r.id_of_fields()
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
                                script.account(&r.device)
                            )),
                            Some(e) if e.subscriber != index => failures.push(format!(
                                "MISROUTED {name}: alert {} belongs to {}",
                                r.alert_id, SUBSCRIBERS[e.subscriber].0
                            )),
                            Some(e) if e.learned_late != r.learned_late => {
                                failures.push(format!(
                                    "LEARNED_LATE {name}: {} has learned_late {} (expected {})",
                                    r.alert_id, r.learned_late, e.learned_late
                                ));
                            }
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
                    let seen: Vec<&Receipt> =
                        receipts.iter().filter(|r| &r.device == device).collect();
                    failures.push(format!(
                        "LOST {name}: {id}; received for the device: {seen:?}; device script:{}",
                        script.account(device)
                    ));
                }
            }
            let head = heads.get(*name).copied().unwrap_or(0);
            let sequences: BTreeSet<u64> = by_sequence.keys().copied().collect();
            if !sequences.iter().copied().eq(1..=head) {
                let missing: Vec<u64> = (1..=head).filter(|s| !sequences.contains(s)).collect();
                failures.push(format!(
                    "GAP {name}: received sequences are not exactly 1..={head}: {} distinct, \
                     missing {missing:?}, beyond the head {:?}",
                    sequences.len(),
                    sequences.range(head + 1..).collect::<Vec<_>>()
                ));
            }
        }
        (failures, counts)
    }
}

/// How a publisher spaces its batches.
pub enum Pacing {
    /// A pause of 50–400 ms, drawn from this generator, after every batch.
    Pauses(Rng),
    /// The batches spread evenly over this long from the publisher's start.
    Spread(Duration),
}

impl Pacing {
    /// Waits, if need be, before batch `id` of `count` of a publisher that began at `start`.
    async fn before(&self, start: Instant, id: usize, count: usize) {
        if let Self::Spread(span) = self {
            tokio::time::sleep_until(start + span.mul_f64(id as f64 / count as f64)).await;
        }
    }

    /// Waits, if need be, after a batch.
    async fn after(&mut self) {
        if let Self::Pauses(rng) = self {
            let pause = rng.range(50, 400).unsigned_abs();
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// Publisher `index`: sends `batches` in order, paced by `pacing`, batch `id` first to
/// instance `(index + id) % instances`; a batch that fails is resent to the next instance
/// (with a single instance: to it again) until one acknowledges it. Events are de-duplicated
/// by their key, so resending is safe; an acknowledged batch is durable.
async fn publisher(
    shared: Arc<Shared>,
    index: usize,
    batches: Vec<Vec<DeviceEvent>>,
    mut pacing: Pacing,
) {
    let start = Instant::now();
    let count = batches.len();
    let instances = shared.urls.len();
    // A client per instance, kept while it works.
    let mut clients: Vec<Option<IngestClient<Channel>>> = vec![None; instances];
    for (id, events) in batches.into_iter().enumerate() {
        pacing.before(start, id, count).await;
        let len = events.len() as u64;
        let devices: Vec<String> = events.iter().map(|e| e.device_id.clone()).collect();
        let batch = EventBatch {
            events,
            batch_id: id as u64,
        };
        let mut target = (index + id) % instances;
        let ack = loop {
            let client = match clients[target].take() {
                Some(client) => Some(client),
                None => channel(&shared.urls[target]).await.map(IngestClient::new),
            };
            let sent = match client {
                Some(mut ingest) => {
                    let sent = tokio::time::timeout(
                        shared.call_limit,
                        ingest.publish_batch(batch.clone()),
                    )
                    .await
                    .ok();
                    if matches!(sent, Some(Ok(_))) {
                        clients[target] = Some(ingest);
                    }
                    sent
                }
                None => None,
            };
            match sent {
                Some(Ok(ack)) => break ack.into_inner(),
                Some(Err(status)) if fatal(status.code()) => {
                    panic!("PublishBatch refused batch {id} of publisher {index}: {status}")
                }
                // Down, not serving yet, or its store unavailable: the next instance.
                Some(Err(_)) | None => {
                    shared.batch_retries.fetch_add(1, Ordering::Relaxed);
                    target = (target + 1) % instances;
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
        assert_eq!(ack.batch_id, id as u64);
        shared.batches_acked.fetch_add(1, Ordering::Relaxed);
        let now = UtcMillis::system_now().0;
        {
            let mut accepted = shared.accepted.lock().expect("accepted lock");
            for device in devices {
                accepted.entry(device).or_default().push(now);
            }
        }
        shared
            .duplicates_acked
            .fetch_add(ack.duplicates, Ordering::Relaxed);
        pacing.after().await;
    }
}

/// Reads subscriber `index`'s feed from its cursor through one instance, acknowledging every
/// 50 alerts and when idle; whenever the stream breaks, goes on through the next instance
/// (with a single instance: through it again). Until told to stop. Subscribers of even index
/// resume from the shared cursor, those of odd index from the sequence after the last they
/// received (the two ways a DNO resumes).
async fn subscriber(shared: Arc<Shared>, index: usize) {
    let name = SUBSCRIBERS[index].0;
    let mut target = index % shared.urls.len();
    let mut first = true;
    let resumes_from_received = index % 2 == 1;
    let mut received_up_to = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        if !first {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            target = (target + 1) % shared.urls.len();
            tokio::time::sleep(shared.reconnect_pause).await;
        }
        first = false;
        let Some(channel) = channel(&shared.urls[target]).await else {
            continue;
        };
        let mut feed = AlertFeedClient::new(channel);
        let from_sequence = if resumes_from_received && received_up_to > 0 {
            received_up_to + 1
        } else {
            0
        };
        let request = SubscribeRequest {
            subscriber: name.to_owned(),
            from_sequence,
        };
        let subscribed = tokio::time::timeout(shared.call_limit, feed.subscribe(request)).await;
        let mut stream = match subscribed {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if fatal(status.code()) => {
                shared.anomaly(format!("FEED Subscribe({name}) refused: {status}"));
                continue;
            }
            Ok(Err(_)) | Err(_) => continue,
        };
        let (mut last, mut unacked) = (0u64, 0u32);
        // One ack under way at a time, reading going on meanwhile (as `dno-sink` does).
        let mut acking: Option<tokio::task::JoinHandle<Result<(), tonic::Status>>> = None;
        loop {
            if let Some(call) = acking.take_if(|call| call.is_finished()) {
                match call.await {
                    Ok(Ok(())) => {}
                    Ok(Err(status)) if fatal(status.code()) => {
                        shared.anomaly(format!("FEED Ack({name}) refused: {status}"));
                        break;
                    }
                    Ok(Err(_)) | Err(_) => break,
                }
            }
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
                    received_up_to = received_up_to.max(alert.sequence);
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
            if unacked > 0 && (unacked >= 50 || idle) && acking.is_none() {
                let ack = AckRequest {
                    subscriber: name.to_owned(),
                    sequence: last,
                };
                let mut client = feed.clone();
                let limit = shared.call_limit;
                acking = Some(tokio::spawn(async move {
                    match tokio::time::timeout(limit, client.ack(ack)).await {
                        Ok(answer) => answer.map(|_| ()),
                        Err(_) => Err(tonic::Status::deadline_exceeded("Ack took too long")),
                    }
                }));
                unacked = 0;
            }
            if idle && shared.stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }
}
