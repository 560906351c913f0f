//! Shared harness for the integration tests: starts the real relay in-process on a loopback
//! port (`server::run` on a `127.0.0.1:0` listener) and talks to it only through its gRPC
//! services, with event builders, a subscriber helper, registry files and bounded waits.
//! [`process`] runs real programs instead: the compiled binary, Prometheus.
//!
//! Every wait is bounded by [`WAIT`] only so that a broken relay fails a test instead of
//! hanging it; no test asserts how quickly anything happens.
#![allow(dead_code)] // Each test crate uses a different part of the harness.

pub mod cluster;
pub mod pki;
pub mod process;
pub mod storm;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outage_relay::config::{Config, PushConfig};
use outage_relay::domain::{DeviceId, MpanCore, UtcMillis};
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{
    AckRequest, AckResponse, Alert, BatchAck, DeviceEvent, EventBatch, GetDeliveryStatusRequest,
    GetDeviceStateRequest, GetDeviceStateResponse, SubscribeRequest, SubscriberStatus, SupplyLost,
    SupplyRestored, device_event,
};
use outage_relay::tools::sink::{ReceivedAlerts, RecordOptions, Recorder, serve_receiver};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, ServerTlsConfig};

/// Debounce of the in-process relays: short, so a test waits a couple of seconds at most.
pub const DEBOUNCE: Duration = Duration::from_secs(2);
/// Debounce shards of the in-process relays.
pub const SHARDS: usize = 2;
/// Upper bound on any single wait, only to turn a hang into a failure.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long ago an "old" outage began: far beyond the debounce, so its POA is due at once.
pub const LONG_AGO_MS: i64 = 10 * 60 * 1000;

/// Milliseconds since the epoch, now, by the system clock (the relay uses the same one).
pub fn now_ms() -> i64 {
    UtcMillis::system_now().0
}

/// A device EUI-64 in its canonical dashed form, distinct for each `n`.
pub fn device(n: u64) -> String {
    DeviceId(0x00db_0000_0000_0000 | n).to_string()
}

/// The 16 hex digits a device EUI shows in alert IDs.
pub fn device_hex(device: &str) -> String {
    device.replace(['-', ':'], "")
}

/// The partition (of [`SHARDS`]) that owns `device`.
pub fn shard_of(device: &str) -> u16 {
    let id: DeviceId = device.parse().expect("test device ids are EUI-64s");
    outage_relay::log::partition_of(id, SHARDS as u16)
}

/// A valid 13-digit MPAN core of `distributor`, distinct for each `n` (below 10^10).
pub fn valid_mpan(distributor: u8, n: u64) -> String {
    MpanCore::with_check_digit(u64::from(distributor) * 10_000_000_000 + n)
        .expect("distributor and n fit in 12 digits")
        .to_string()
}

/// The same MPAN core with its check digit changed, so it fails validation.
pub fn bad_check_digit(mpan: &str) -> String {
    let (first, last) = mpan.split_at(12);
    let digit = last.parse::<u8>().expect("13 digits");
    format!("{first}{}", (digit + 1) % 10)
}

/// A protobuf timestamp `ms` milliseconds after the epoch.
pub fn ts(ms: i64) -> prost_types::Timestamp {
    UtcMillis(ms).to_proto()
}

/// Milliseconds of a protobuf timestamp that must be set.
pub fn ms(ts: Option<&prost_types::Timestamp>) -> i64 {
    UtcMillis::from_proto(ts.expect("timestamp is set"))
        .expect("timestamp is valid")
        .0
}

fn unique_event_id(kind: &str, device: &str, at_ms: i64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{kind}-{device}-{at_ms}-{n}")
}

/// A loss event (whole supply) at device time `at_ms`, with a unique event id.
pub fn lost(device: &str, at_ms: i64, mpan: Option<&str>) -> DeviceEvent {
    DeviceEvent {
        event_id: unique_event_id("lost", device, at_ms),
        device_id: device.to_owned(),
        phase: 0,
        mpan_core: mpan.map(str::to_owned),
        kind: Some(device_event::Kind::Lost(SupplyLost {
            lost_at: Some(ts(at_ms)),
        })),
        alert_code: 0,
    }
}

/// A restoration event (whole supply) at device time `at_ms`, carrying the outage start when
/// the device reports it, with a unique event id.
pub fn restored(
    device: &str,
    at_ms: i64,
    lost_at_ms: Option<i64>,
    mpan: Option<&str>,
) -> DeviceEvent {
    DeviceEvent {
        event_id: unique_event_id("restored", device, at_ms),
        device_id: device.to_owned(),
        phase: 0,
        mpan_core: mpan.map(str::to_owned),
        kind: Some(device_event::Kind::Restored(SupplyRestored {
            restored_at: Some(ts(at_ms)),
            lost_at: lost_at_ms.map(ts),
        })),
        alert_code: 0x8F35,
    }
}

/// Writes a registry CSV (`device_id,mpan_core,gsp_group`) of `rows` into `dir`.
pub fn write_registry(dir: &Path, name: &str, rows: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::from("device_id,mpan_core,gsp_group\n");
    for (device, mpan, gsp) in rows {
        text.push_str(&format!("{device},{mpan},{gsp}\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the registry file");
    path
}

/// Connects to `url`, retrying until the server accepts (bounded by [`WAIT`]).
pub async fn connect(url: &str) -> Channel {
    let endpoint = Endpoint::from_shared(url.to_owned()).expect("a valid URL");
    let deadline = Instant::now() + WAIT;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "{url} did not accept a connection: {err}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Awaits `future`, failing the test with `what` if it has not finished within [`WAIT`].
pub async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `check` until it returns `Some`, failing the test with `what` after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    bounded(what, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A relay running in this process, on a loopback port, with its own temporary directory.
/// Dropping it cancels the relay's shutdown token.
pub struct TestRelay {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Cancelling it shuts the relay down.
    pub shutdown: CancellationToken,
    /// Scratch directory (registry files), removed on drop.
    pub dir: TempDir,
    /// The configuration the relay runs with.
    pub config: Config,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestRelay {
    /// A relay with the default routing (the six DNO groups), no registry, [`DEBOUNCE`] and
    /// [`SHARDS`].
    pub async fn start() -> Self {
        Self::start_with(|_, _| {}).await
    }

    /// Like [`Self::start`], after `configure` has adjusted the config; it gets the
    /// temporary directory, e.g. to write a registry file there first.
    pub async fn start_with(configure: impl FnOnce(&mut Config, &Path)) -> Self {
        init_test_log();
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut config = Config {
            debounce: DEBOUNCE,
            shards: SHARDS,
            shutdown_grace: Duration::from_secs(5),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        configure(&mut config, dir.path());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("listener address");
        config.listen = addr;
        let shutdown = CancellationToken::new();
        let server = spawn_relay(config.clone(), listener, shutdown.clone());
        Self {
            addr,
            url: format!("http://{addr}"),
            shutdown,
            dir,
            config,
            server: Some(server),
        }
    }

    /// Stops the relay gracefully and starts it again on the same data directory and
    /// config (on a new port).
    pub async fn restart(self) -> Self {
        self.restart_after(|| async {}).await
    }

    /// Like [`Self::restart`], running `while_down` between the stop and the start.
    pub async fn restart_after<F, Fut>(mut self, while_down: F) -> Self
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        self.shutdown.cancel();
        let server = self.server.take().expect("the relay is running");
        bounded("the relay to stop", server)
            .await
            .expect("the relay task did not panic")
            .expect("server::run returned Ok");
        bounded("the downtime", while_down()).await;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("listener address");
        let mut config = self.config.clone();
        config.listen = addr;
        let shutdown = CancellationToken::new();
        let server = spawn_relay(config.clone(), listener, shutdown.clone());
        self.addr = addr;
        self.url = format!("http://{addr}");
        self.shutdown = shutdown;
        self.config = config;
        self.server = Some(server);
        self
    }

    /// Shuts the relay down and checks that `server::run` returned `Ok`.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let server = self.server.take().expect("the relay is running");
        bounded("the relay to stop", server)
            .await
            .expect("the relay task did not panic")
            .expect("server::run returned Ok");
    }

    /// A channel to the relay.
    pub async fn channel(&self) -> Channel {
        connect(&self.url).await
    }

    /// An `Ingest` client.
    pub async fn ingest_client(&self) -> IngestClient<Channel> {
        IngestClient::new(self.channel().await)
    }

    /// An `AlertFeed` client.
    pub async fn feed_client(&self) -> AlertFeedClient<Channel> {
        AlertFeedClient::new(self.channel().await)
    }

    /// An `Admin` client.
    pub async fn admin_client(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    /// Publishes `events` as one batch with `PublishBatch` and returns its ack.
    pub async fn publish(&self, events: Vec<DeviceEvent>) -> BatchAck {
        let mut client = self.ingest_client().await;
        bounded(
            "PublishBatch",
            client.publish_batch(EventBatch {
                events,
                batch_id: 1,
            }),
        )
        .await
        .expect("PublishBatch succeeds")
        .into_inner()
    }

    /// Publishes `events`, asserting that every one of them was accepted as new.
    pub async fn publish_ok(&self, events: Vec<DeviceEvent>) -> BatchAck {
        let count = events.len() as u64;
        let ack = self.publish(events).await;
        assert!(ack.rejected.is_empty(), "rejected: {:?}", ack.rejected);
        assert_eq!(ack.accepted, count, "{ack:?}");
        ack
    }

    /// Opens `Subscribe` for `subscriber` from `from_sequence` (0 = oldest unacknowledged).
    pub async fn try_subscribe(
        &self,
        subscriber: &str,
        from_sequence: u64,
    ) -> Result<Subscription, tonic::Status> {
        let mut client = self.feed_client().await;
        let request = SubscribeRequest {
            subscriber: subscriber.to_owned(),
            from_sequence,
        };
        let stream = bounded("Subscribe", client.subscribe(request))
            .await?
            .into_inner();
        Ok(Subscription {
            subscriber: subscriber.to_owned(),
            stream,
        })
    }

    /// Opens `Subscribe`, which must succeed.
    pub async fn subscribe(&self, subscriber: &str, from_sequence: u64) -> Subscription {
        self.try_subscribe(subscriber, from_sequence)
            .await
            .unwrap_or_else(|status| panic!("Subscribe({subscriber}) failed: {status}"))
    }

    /// Calls `AlertFeed.Ack`.
    pub async fn try_ack(
        &self,
        subscriber: &str,
        sequence: u64,
    ) -> Result<AckResponse, tonic::Status> {
        let mut client = self.feed_client().await;
        let request = AckRequest {
            subscriber: subscriber.to_owned(),
            sequence,
        };
        Ok(bounded("Ack", client.ack(request)).await?.into_inner())
    }

    /// Acknowledges up to `sequence`, which must succeed.
    pub async fn ack(&self, subscriber: &str, sequence: u64) -> AckResponse {
        self.try_ack(subscriber, sequence)
            .await
            .unwrap_or_else(|status| panic!("Ack({subscriber}, {sequence}) failed: {status}"))
    }

    /// `Admin.GetDeliveryStatus` of one subscriber.
    pub async fn delivery_status(&self, subscriber: &str) -> SubscriberStatus {
        let mut client = self.admin_client().await;
        let request = GetDeliveryStatusRequest {
            subscriber: subscriber.to_owned(),
        };
        let mut response = bounded("GetDeliveryStatus", client.get_delivery_status(request))
            .await
            .expect("GetDeliveryStatus succeeds")
            .into_inner();
        assert_eq!(response.subscribers.len(), 1, "{response:?}");
        response.subscribers.remove(0)
    }

    /// `Admin.GetDeliveryStatus` of every subscriber: `(name, head_sequence)` in table order.
    pub async fn heads(&self) -> Vec<(String, u64)> {
        let mut client = self.admin_client().await;
        let request = GetDeliveryStatusRequest::default();
        bounded("GetDeliveryStatus", client.get_delivery_status(request))
            .await
            .expect("GetDeliveryStatus succeeds")
            .into_inner()
            .subscribers
            .into_iter()
            .map(|status| (status.subscriber, status.head_sequence))
            .collect()
    }

    /// `Admin.GetDeviceState`.
    pub async fn device_state(&self, device: &str) -> GetDeviceStateResponse {
        let mut client = self.admin_client().await;
        let request = GetDeviceStateRequest {
            device_id: device.to_owned(),
        };
        bounded("GetDeviceState", client.get_device_state(request))
            .await
            .expect("GetDeviceState succeeds")
            .into_inner()
    }

    /// Writes a registry CSV into the relay's temporary directory.
    pub fn write_registry(&self, name: &str, rows: &[(&str, &str, &str)]) -> PathBuf {
        write_registry(self.dir.path(), name, rows)
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An open `Subscribe` stream.
pub struct Subscription {
    /// Whose alerts these are.
    pub subscriber: String,
    stream: tonic::Streaming<Alert>,
}

impl Subscription {
    /// The next alert; fails the test if the stream ends or errs first.
    pub async fn next(&mut self) -> Alert {
        let what = format!("an alert for {}", self.subscriber);
        match bounded(&what, self.stream.message()).await {
            Ok(Some(alert)) => alert,
            Ok(None) => panic!("the {} stream ended", self.subscriber),
            Err(status) => panic!("the {} stream failed: {status}", self.subscriber),
        }
    }

    /// The next `n` alerts, in stream order.
    pub async fn take(&mut self, n: usize) -> Vec<Alert> {
        let mut alerts = Vec::with_capacity(n);
        for _ in 0..n {
            alerts.push(self.next().await);
        }
        alerts
    }

    /// Waits for the stream to end and returns how it ended (`Ok(None)`: cleanly).
    pub async fn end(&mut self) -> Result<Option<Alert>, tonic::Status> {
        bounded("the stream to end", self.stream.message()).await
    }
}

/// Sequence numbers of `alerts`.
pub fn sequences(alerts: &[Alert]) -> Vec<u64> {
    alerts.iter().map(|alert| alert.sequence).collect()
}

/// Runs `server::run` as a task; an error it ends with is printed at once (a test waiting
/// for something the relay will never do then shows why).
fn spawn_relay(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let addr = config.listen;
    tokio::spawn(async move {
        let ended = outage_relay::server::run(config, listener, shutdown).await;
        if let Err(err) = &ended {
            eprintln!("the relay on {addr} ended with an error: {err:#}");
        }
        ended
    })
}

/// Sets subscriber `ukpn` to push mode with `push`, retrying quickly (50 ms to 200 ms).
pub fn push_ukpn(config: &mut Config, push: PushConfig) {
    let ukpn = config
        .routing
        .subscribers
        .iter_mut()
        .find(|sub| sub.name == "ukpn")
        .expect("ukpn is a default subscriber");
    ukpn.push = Some(push);
    config.delivery.push_backoff_initial = Duration::from_millis(50);
    config.delivery.push_backoff_max = Duration::from_millis(200);
}

/// A plaintext push target on loopback `port`.
pub fn loopback_push(port: u16) -> PushConfig {
    PushConfig {
        endpoint: format!("http://127.0.0.1:{port}"),
        ca: None,
        domain: None,
    }
}

/// A DNO's `AlertReceiver` (the one `dno-sink` serves) on `listener`, keeping every alert.
pub struct TestReceiver {
    /// What it has received.
    pub received: ReceivedAlerts,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestReceiver {
    /// Serves on `listener`, over TLS when `tls` is given.
    pub fn start(listener: TcpListener, tls: Option<ServerTlsConfig>) -> Self {
        let received = ReceivedAlerts::new();
        let recorder = Recorder::open(RecordOptions {
            keep: Some(received.clone()),
            ..RecordOptions::default()
        })
        .expect("an in-memory recorder");
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_receiver(listener, recorder, stop.clone(), tls));
        Self {
            received,
            stop,
            task,
        }
    }

    /// Stops it and checks that it stopped cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        bounded("the receiver to stop", self.task)
            .await
            .expect("the receiver task did not panic")
            .expect("the receiver stopped cleanly");
    }
}

/// The Prometheus listener of this test process, where the in-process relays' metrics are
/// read: the relay's recorder, installed on first use. The recorder is process-wide, so
/// counts are shared by every test of the binary; its exporter runs on a thread of its own,
/// outliving each test's runtime.
pub fn metrics_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let (report, installed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the exporter");
            runtime.block_on(async move {
                let config = Config {
                    metrics_listen: SocketAddr::from(([127, 0, 0, 1], port)),
                    ..Config::default()
                };
                let outcome = outage_relay::telemetry::install_prometheus(&config)
                    .await
                    .map_err(|err| err.to_string());
                let _ = report.send(outcome);
                std::future::pending::<()>().await;
            });
        });
        let installed = installed
            .recv()
            .expect("the exporter thread reports")
            .expect("the recorder installs");
        assert!(installed, "another recorder was installed first");
        port
    })
}

/// `outage_relay_calls_refused_total{reason}` in this process so far (see [`metrics_port`]).
pub async fn calls_refused(reason: &str) -> u64 {
    let metrics = process::scrape(metrics_port()).await;
    let series = format!(
        "{}{{reason=\"{reason}\"}} ",
        outage_relay::telemetry::CALLS_REFUSED
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |count| count.parse().expect("a count"))
}

/// Writes the relay's log to stderr when `OUTAGE_RELAY_TEST_LOG` holds a filter (for example
/// `outage_relay=debug`); silent otherwise. Once per test binary.
pub fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("OUTAGE_RELAY_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// The JetStream cluster `.ci/test` starts (`NATS_URLS`, comma-separated).
pub fn nats_urls() -> Vec<String> {
    std::env::var("NATS_URLS")
        .expect("NATS_URLS is not set: run .ci/test, which starts the three-node JetStream cluster")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// The directory of the JetStream cluster `.ci/test` starts (`NATS_CLUSTER_DIR`), for a test
/// that kills and restarts its nodes.
pub fn nats_cluster_dir() -> String {
    std::env::var("NATS_CLUSTER_DIR").expect(
        "NATS_CLUSTER_DIR is not set: run .ci/test, which starts the JetStream cluster (this \
         test kills and restarts some of its nodes)",
    )
}

/// A relay configuration on the JetStream cluster `.ci/test` starts, under `prefix`, with
/// `partitions` partitions.
pub fn jetstream_config(prefix: &str, partitions: u16) -> Config {
    let mut config = Config::default();
    config.store.backend = outage_relay::config::Backend::Jetstream;
    config.store.jetstream.servers = nats_urls();
    config.store.jetstream.prefix = prefix.to_owned();
    config.store.jetstream.partitions = partitions;
    config
}

/// A stream-name prefix no other test run uses, so runs sharing a cluster stay apart.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "T{}_{}_{}_{test}",
        std::process::id(),
        nanos % 1_000_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
