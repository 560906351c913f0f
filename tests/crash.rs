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
//! independent of when the relay processes an event (see [`storm`]).
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

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::process::{BIN, free_port};
use common::storm::{self, Pacing, Plan, Rng, SUBSCRIBERS, Script, Shared};
use outage_relay::domain::UtcMillis;
use outage_relay::proto::ListParkedAlertsRequest;
use outage_relay::proto::admin_client::AdminClient;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Devices in the fleet.
const DEVICES: u64 = 3_000;
/// The relay's debounce (`--debounce 1s`).
const DEBOUNCE_MS: i64 = 1_000;
/// SIGKILLs at least.
const MIN_KILLS: u32 = 20;
/// Seed used unless `OUTAGE_RELAY_CRASH_SEED` is set.
const DEFAULT_SEED: u64 = 0x5eed_c4a5_4000_0001;
/// The storm: two publishers, each with its own share of the devices.
const PLAN: Plan = Plan {
    devices: DEVICES,
    first_device: 0xc0de_0000_0000,
    publishers: 2,
    debounce_ms: DEBOUNCE_MS,
    // Per cent of each scenario, in the order of `storm::Mix`.
    earlier: [55, 20, 17, 8, 0, 0, 0, 0],
    last: [35, 12, 10, 3, 12, 12, 8, 8],
    pending_ms: 3_000..20_000,
    short_ms: 100..800,
    bunched_percent: None,
    batch_size: 100..301,
};
/// Bound on the storm (publishing under kills) only to turn a hang into a failure.
const STORM_LIMIT: Duration = Duration::from_secs(180);
/// Bound on the final drain, only to turn a hang into a failure.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// Bound on one relay start (process up and serving), only to turn a hang into a failure.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Bound on one gRPC call, only to turn a hang into an error that is retried.
const CALL_LIMIT: Duration = Duration::from_secs(15);

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
            if storm::serving(&self.url).await {
                return;
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

/// How many alerts the relay at `url` has parked, if it answers.
async fn parked(url: &str) -> Option<u64> {
    let channel = storm::channel(url).await?;
    let request = ListParkedAlertsRequest { limit: 10 };
    let parked = tokio::time::timeout(
        CALL_LIMIT,
        AdminClient::new(channel).list_parked_alerts(request),
    )
    .await
    .ok()?
    .ok()?;
    Some(parked.into_inner().total)
}

/// A PRA first received before its POA (by position in what its subscriber received).
fn restored_before_lost(shared: &Shared, script: &Script) -> Vec<String> {
    let mut failures = Vec::new();
    for (index, (name, _)) in SUBSCRIBERS.iter().enumerate() {
        let receipts = shared.receipts(index);
        let mut first_at: HashMap<&str, usize> = HashMap::new();
        for (position, r) in receipts.iter().enumerate() {
            first_at.entry(&r.alert_id).or_insert(position);
        }
        for (id, expected) in script
            .expected
            .iter()
            .filter(|(_, e)| e.subscriber == index)
        {
            if let Some(poa) = &expected.poa
                && let (Some(pra_at), Some(poa_at)) =
                    (first_at.get(id.as_str()), first_at.get(poa.as_str()))
                && pra_at < poa_at
            {
                failures.push(format!(
                    "ORDER {name}: {id} first received (#{pra_at}) before its POA (#{poa_at})"
                ));
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_relay_loses_no_alert_and_reuses_no_sequence() {
    let seed = storm::seed_from_env("OUTAGE_RELAY_CRASH_SEED", DEFAULT_SEED);
    println!("crash test seed {seed:#x} (replay: OUTAGE_RELAY_CRASH_SEED={seed:x})");
    let began = Instant::now();
    let t0 = UtcMillis::system_now().0;
    let script = Script::generate(&PLAN, seed, t0);
    let batches = script.batch_count();
    println!("script: {}", script.summary());

    let dir = tempfile::tempdir().expect("a temporary directory");
    let (grpc, metrics) = (free_port().await, free_port().await);
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

    let shared = Shared::new(vec![url], CALL_LIMIT, Duration::from_millis(50));
    let subscribers = shared.spawn_subscribers();
    let mut publishers =
        shared.spawn_publishers(&script, |p| Pacing::Pauses(Rng::new(seed ^ (p as u64 + 1))));

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
    let heads = match shared.wait_drained(&script, DRAIN_LIMIT).await {
        Some(heads) => heads,
        None => shared.heads().await.unwrap_or_default(),
    };
    let parked = parked(&relay.url).await.unwrap_or_default();
    shared.stop_subscribers(subscribers).await;

    let (mut failures, counts) = shared.check(&script, &heads);
    failures.extend(restored_before_lost(&shared, &script));
    if parked != 0 {
        failures.push(format!("PARKED {parked} alerts parked"));
    }
    failures.extend(shared.take_anomalies());
    println!(
        "crash summary: seed {seed:#x}, {kills} kills ({kills_while_publishing} while publishing); \
         {}; wall {:.1?}",
        shared.traffic(&script, &counts, &heads),
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
