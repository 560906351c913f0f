//! Service configuration: one serde tree, read from TOML, overridden by `serve` flags and
//! `OUTAGE_RELAY_*` environment variables. Every field has a named default, so the service
//! runs with no configuration at all, and `validate` refuses contradictions before start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::DistributorId;
use crate::security::Role;

/// Data directory of the embedded store, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "outage-relay-data";
/// gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Prometheus listen address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Outages shorter than this produce no alert (SEC: 3 minutes).
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(180);
/// A POA must be delivered within this after it is due (SEC: 60 s).
pub const DEFAULT_POA_SLA: Duration = Duration::from_secs(60);
/// A PRA must be delivered within this after restoration (SEC: 60 s).
pub const DEFAULT_PRA_SLA: Duration = Duration::from_secs(60);
/// Batches queued per shard before ingest waits.
pub const DEFAULT_SHARD_QUEUE: usize = 256;
/// Largest batch accepted.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 10_000;
/// How long ingest waits for a full shard queue before answering `RESOURCE_EXHAUSTED`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Device timestamps further ahead of the relay clock are refused.
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(300);
/// Device timestamps older than this are refused.
pub const DEFAULT_MAX_EVENT_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest `event_id` accepted, in bytes.
pub const DEFAULT_MAX_EVENT_ID_LEN: usize = 128;
/// How long an event id is remembered for de-duplication.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(600);
/// Most event ids remembered, across all shards.
pub const DEFAULT_DEDUP_CAPACITY: usize = 2_000_000;
/// How long a closed outage's restoration time is kept to refuse stale, late events.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Alerts buffered per open Subscribe stream.
pub const DEFAULT_STREAM_BUFFER: usize = 1024;
/// First push retry delay.
pub const DEFAULT_PUSH_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest push retry delay.
pub const DEFAULT_PUSH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Alerts sent to a push receiver before waiting for its acks.
pub const DEFAULT_PUSH_WINDOW: usize = 1024;
/// HTTP/2 keepalive interval on every connection (load balancers drop idle ones).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);
/// Ingest pauses while the data directory has less free space than this.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 256 * 1024 * 1024;
/// Memory for the newest alerts of the embedded alert logs, kept decoded for readers.
pub const DEFAULT_STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Appends (records, alert batches) each partition owner keeps in flight to the log.
pub const DEFAULT_COMMIT_QUEUE: usize = 64;
/// How often a partition's owner checkpoints its state, when it changed.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// An owner also checkpoints after this many events since its last checkpoint.
pub const DEFAULT_CHECKPOINT_EVENTS: u64 = 1_000_000;
/// Size of one segment file of the embedded logs.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How often event keys and tombstones are expired and retention applied.
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);
/// Most unacknowledged alerts kept per subscriber; older ones are removed and counted.
pub const DEFAULT_RETENTION_MAX_ALERTS: u64 = 20_000_000;
/// Unacknowledged alerts older than this are removed and counted.
pub const DEFAULT_RETENTION_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Settled alerts and their ack times are kept 35 days: a month's report, and some slack.
pub const DEFAULT_REPORT_RETENTION: Duration = Duration::from_secs(35 * 24 * 3600);
/// Accepted events are kept a week for `outage-relay replay`.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Bound on graceful shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Longest gRPC message accepted, bytes (a full batch of 10,000 events is about 1 MB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Open `Publish` and `Subscribe` streams per connection.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 16;
/// Events per second one publisher may send, sustained; 0 turns the limit off.
pub const DEFAULT_PUBLISHER_EVENTS_PER_SECOND: u32 = 250_000;
/// Events one publisher may send at once above its sustained rate.
pub const DEFAULT_PUBLISHER_BURST_EVENTS: u32 = 500_000;
/// Bound on a TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the TLS files are checked for a change (`tls.reload_interval`).
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Default `summaries.storm_threshold`: losses per minute, per subscriber.
pub const DEFAULT_STORM_THRESHOLD: u64 = 1000;
/// Default `summaries.feeder_min_supplies`.
pub const DEFAULT_FEEDER_MIN_SUPPLIES: u64 = 20;
/// Default `summaries.feeder_min_share`.
pub const DEFAULT_FEEDER_MIN_SHARE: f64 = 0.5;
/// Default `summaries.nested_after`.
pub const DEFAULT_NESTED_AFTER: Duration = Duration::from_secs(600);
/// Default `summaries.default_interval`.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// Default `summaries.min_interval`.
pub const DEFAULT_SUMMARY_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default `summaries.queue`.
pub const DEFAULT_SUMMARY_QUEUE: usize = 4096;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address (Ingest, AlertFeed, Admin, health, reflection).
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: SocketAddr,
    /// How `/metrics` is served; unset: see [`Config::metrics_tls`].
    pub metrics_tls: Option<MetricsTls>,
    /// Data directory for the embedded store.
    pub data_dir: PathBuf,
    /// Device registry CSV (`device_id,mpan_core,gsp_group[,substation_id,feeder_id]`).
    pub registry: Option<PathBuf>,
    /// The directory `Admin.ReloadRegistry` may load a file it names from; unset: the
    /// directory of `registry`.
    pub registry_dir: Option<PathBuf>,
    /// Debounce: outages shorter than this produce no alert.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// POA delivery window after it is due.
    #[serde(with = "humantime_serde")]
    pub poa_sla: Duration,
    /// PRA delivery window after restoration.
    #[serde(with = "humantime_serde")]
    pub pra_sla: Duration,
    /// Number of debounce shards; 0 = one per CPU.
    pub shards: usize,
    /// Batches queued per shard.
    pub shard_queue: usize,
    /// Bound on graceful shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Ingest limits and validation.
    pub ingest: IngestConfig,
    /// Subscribers and the distributor IDs they own.
    pub routing: RoutingConfig,
    /// Delivery tuning.
    pub delivery: DeliveryConfig,
    /// Durable store, expiry and retention.
    pub store: StoreConfig,
    /// TLS and the identities allowed to call.
    pub tls: TlsConfig,
    /// Limits on hostile or runaway clients.
    pub limits: LimitsConfig,
    /// Storm summaries (`AlertFeed.WatchSummaries`).
    pub summaries: SummariesConfig,
}

/// Storm summaries: thresholds of the inferences and the summaries' own queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SummariesConfig {
    /// A subscriber is in a storm while its losses over the last minute are above this.
    pub storm_threshold: u64,
    /// Losses on one feeder within a minute that infer a feeder outage...
    pub feeder_min_supplies: u64,
    /// ...or this share (0 < share <= 1) of the feeder's registered supplies.
    pub feeder_min_share: f64,
    /// After most of a feeder outage is restored, supplies still off this long infer a
    /// nested outage.
    #[serde(with = "humantime_serde")]
    pub nested_after: Duration,
    /// Interval of a `SummaryRequest` that names none.
    #[serde(with = "humantime_serde")]
    pub default_interval: Duration,
    /// Shortest interval a `SummaryRequest` may ask for.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Note batches queued from the owners to the summaries before notes are dropped.
    pub queue: usize,
}

impl Default for SummariesConfig {
    fn default() -> Self {
        Self {
            storm_threshold: DEFAULT_STORM_THRESHOLD,
            feeder_min_supplies: DEFAULT_FEEDER_MIN_SUPPLIES,
            feeder_min_share: DEFAULT_FEEDER_MIN_SHARE,
            nested_after: DEFAULT_NESTED_AFTER,
            default_interval: DEFAULT_SUMMARY_INTERVAL,
            min_interval: DEFAULT_SUMMARY_MIN_INTERVAL,
            queue: DEFAULT_SUMMARY_QUEUE,
        }
    }
}

/// Transport security of the gRPC listener.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// No TLS, no identities: every caller may do everything. Set explicitly to allow it on
    /// an address other than loopback.
    Plaintext,
    /// TLS with client certificates mapped to roles by `tls.identities`.
    Mutual,
}

/// Transport security of the Prometheus `/metrics` listener, which carries every
/// subscriber's backlog, connection state, breaches and latency.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricsTls {
    /// Plain HTTP. Set explicitly to allow it on an address other than loopback.
    Plaintext,
    /// HTTPS with the relay's certificate (`tls.cert`, `tls.key`); no client certificate.
    Server,
    /// HTTPS that also requires a client certificate chaining to `tls.client_ca`, whose
    /// identity (`tls.identities`) has role `metrics` or `admin`.
    Mutual,
}

impl MetricsTls {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Server => "server",
            Self::Mutual => "mutual",
        }
    }
}

/// TLS settings and the certificate identities allowed to call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Unset: plaintext, allowed only when `listen` is a loopback address.
    pub mode: Option<TlsMode>,
    /// PEM certificate chain the relay presents (to clients, and to push receivers).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA certificates client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) of the CAs in `client_ca`: a client
    /// certificate they revoke is refused at the handshake.
    pub crl: Vec<PathBuf>,
    /// How often `cert`, `key`, `client_ca` and `crl` are checked for a change and reloaded
    /// (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Bound on a TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Certificate identities and what they may do.
    pub identities: Vec<IdentityConfig>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            mode: None,
            cert: None,
            key: None,
            client_ca: None,
            crl: Vec::new(),
            reload_interval: DEFAULT_TLS_RELOAD_INTERVAL,
            handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            identities: Vec::new(),
        }
    }
}

/// One certificate identity: a subject alternative name (DNS, URI or email) or subject common
/// name, its role, and for subscribers the feed it may read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The name the certificate carries.
    pub identity: String,
    /// What it may do.
    pub role: Role,
    /// For `role = "subscriber"`: the subscriber whose feed it reads.
    #[serde(default)]
    pub subscriber: Option<String>,
}

/// Limits on hostile or runaway clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest gRPC message accepted, bytes.
    pub max_message_bytes: usize,
    /// Open `Publish` and `Subscribe` streams per connection.
    pub max_streams_per_connection: usize,
    /// Events per second one publisher (identity; address in plaintext mode) may send; 0 = off.
    pub publisher_events_per_second: u32,
    /// Events a publisher may send at once above its rate; at least `ingest.max_batch_events`.
    pub publisher_burst_events: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            publisher_events_per_second: DEFAULT_PUBLISHER_EVENTS_PER_SECOND,
            publisher_burst_events: DEFAULT_PUBLISHER_BURST_EVENTS,
        }
    }
}

/// Storage backend.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded append-only log in `data_dir`.
    Embedded,
    /// In memory: nothing survives a restart. For tests and benchmarks only.
    Memory,
    /// A NATS JetStream cluster shared by several relay instances (`[store.jetstream]`).
    Jetstream,
}

/// Default partitions of the device space in JetStream mode.
pub const DEFAULT_JETSTREAM_PARTITIONS: u16 = 64;
/// Default events streams the partitions are spread over (one leader per node of a
/// three-node cluster).
pub const DEFAULT_EVENT_STREAMS: u16 = 3;
/// Default replicas of every JetStream stream and bucket.
pub const DEFAULT_JETSTREAM_REPLICAS: usize = 3;
/// How long a partition lease lives without renewal.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
/// How often an owner writes a partition snapshot (when it changed).
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(5);
/// How long JetStream keeps events (replay after a takeover starts at the last snapshot).
pub const DEFAULT_EVENTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default appends a JetStream partition owner keeps in flight.
pub const DEFAULT_APPENDS_IN_FLIGHT: usize = 1024;
/// How often an instance looks whether the events streams' leaders are still spread.
pub const DEFAULT_REBALANCE_INTERVAL: Duration = Duration::from_secs(60);
/// Default largest message of a partition snapshot.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 512 * 1024;

/// The JetStream backend: where the cluster is and how the relay uses it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Server URLs, e.g. `["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]`.
    pub servers: Vec<String>,
    /// NATS credentials file (JWT + NKey), if the cluster requires one.
    pub credentials: Option<PathBuf>,
    /// User name, for clusters with user/password authentication.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// Replicas of every stream and bucket (1, 3 or 5).
    pub replicas: usize,
    /// Partitions of the device space; each is owned by one instance at a time. Fixed for the
    /// life of the streams.
    pub partitions: u16,
    /// Events streams the partitions are spread over (partition `p` is in stream
    /// `p % event_streams`), so that their leaders, which take every ingest write, spread
    /// over the nodes; at most one per partition. Fixed for the life of the streams.
    pub event_streams: u16,
    /// This instance's name; unique among the instances sharing the cluster. Default: host
    /// name and process id.
    pub instance: Option<String>,
    /// Prefix of every stream and bucket name, so several relays can share a cluster.
    pub prefix: String,
    /// A partition lease expires this long after its last renewal.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often an owner snapshots a partition's state.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// How long events stay in the events stream.
    #[serde(with = "humantime_serde")]
    pub events_max_age: Duration,
    /// Largest message of a partition snapshot; snapshots are stored in chunks of this size
    /// (keep it below the servers' `max_payload`, 1 MiB by default).
    pub snapshot_chunk_bytes: usize,
    /// Alert appends each partition owner keeps in flight before it stops reading events
    /// (`store.commit_queue` for the embedded store): enough that a subscriber stream that
    /// stalls for a while does not hold up the partition's other subscribers' alerts.
    pub appends_in_flight: usize,
    /// How often an instance looks whether the events streams' leaders are still spread
    /// over the nodes (a node that died and came back leads none), and moves one if not,
    /// and moves each partition leases bucket's leader to its events stream's; `0s`: only
    /// at start.
    #[serde(with = "humantime_serde")]
    pub rebalance_interval: Duration,
}

impl JetStreamConfig {
    /// The events streams in use: `event_streams`, but no more than there are partitions.
    pub fn event_stream_count(&self) -> u16 {
        self.event_streams.clamp(1, self.partitions.max(1))
    }
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            credentials: None,
            user: None,
            password: None,
            replicas: DEFAULT_JETSTREAM_REPLICAS,
            partitions: DEFAULT_JETSTREAM_PARTITIONS,
            event_streams: DEFAULT_EVENT_STREAMS,
            instance: None,
            prefix: "OUTAGE_RELAY".to_owned(),
            lease_ttl: DEFAULT_LEASE_TTL,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            events_max_age: DEFAULT_EVENTS_MAX_AGE,
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
            appends_in_flight: DEFAULT_APPENDS_IN_FLIGHT,
            rebalance_interval: DEFAULT_REBALANCE_INTERVAL,
        }
    }
}

/// Durable store, expiry and retention.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Where state and alert logs are kept.
    pub backend: Backend,
    /// Ingest answers `RESOURCE_EXHAUSTED` while the data directory has less free space.
    pub min_free_disk_bytes: u64,
    /// Memory for the newest alerts of the embedded alert logs, kept decoded for readers at
    /// the head (feeds, SLA watches), split among the subscribers; older entries are read
    /// from the files.
    pub cache_bytes: usize,
    /// Appends (records, alert batches) each partition owner keeps in flight to the log
    /// before it stops taking batches and waits for them.
    pub commit_queue: usize,
    /// How often a partition's owner checkpoints its state (when it changed); the event log
    /// behind a checkpoint is deleted once older than `event_retention`. Shorter: faster
    /// restarts, more writes.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// An owner also checkpoints after this many events since its last checkpoint (bounds
    /// the log a restart replays).
    pub checkpoint_events: u64,
    /// Size of one segment file of the embedded logs, bytes.
    pub segment_bytes: u64,
    /// Expiry and retention period.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
    /// Most unacknowledged alerts kept per subscriber.
    pub retention_max_alerts: u64,
    /// Unacknowledged alerts older than this (by emission) are removed.
    #[serde(with = "humantime_serde")]
    pub retention_max_age: Duration,
    /// Acknowledged (or removed) alerts and the time of each ack are kept this long after it
    /// for `outage-relay report`.
    #[serde(with = "humantime_serde")]
    pub report_retention: Duration,
    /// Accepted events are kept this long after they arrived (even once a checkpoint covers
    /// them) for `outage-relay replay` (embedded backend; JetStream keeps its events stream
    /// for `jetstream.events_max_age`).
    #[serde(with = "humantime_serde")]
    pub event_retention: Duration,
    /// The JetStream cluster, for `backend = "jetstream"`.
    pub jetstream: JetStreamConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            cache_bytes: DEFAULT_STORE_CACHE_BYTES,
            commit_queue: DEFAULT_COMMIT_QUEUE,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            checkpoint_events: DEFAULT_CHECKPOINT_EVENTS,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            maintenance_interval: DEFAULT_MAINTENANCE_INTERVAL,
            retention_max_alerts: DEFAULT_RETENTION_MAX_ALERTS,
            retention_max_age: DEFAULT_RETENTION_MAX_AGE,
            report_retention: DEFAULT_REPORT_RETENTION,
            event_retention: DEFAULT_EVENT_RETENTION,
            jetstream: JetStreamConfig::default(),
        }
    }
}

/// Ingest limits, validation and de-duplication.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest batch accepted.
    pub max_batch_events: usize,
    /// Wait for a full shard queue before `RESOURCE_EXHAUSTED`.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Device timestamps further ahead than this are refused.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Device timestamps older than this are refused.
    #[serde(with = "humantime_serde")]
    pub max_event_age: Duration,
    /// Longest `event_id`, bytes.
    pub max_event_id_len: usize,
    /// How long event ids are remembered.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Most event ids remembered.
    pub dedup_capacity: usize,
    /// How long a closed outage is remembered to refuse stale events about it.
    #[serde(with = "humantime_serde")]
    pub tombstone_ttl: Duration,
}

/// Routing: which subscriber owns which distributor IDs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Subscribers; defaults to the six DNO groups.
    pub subscribers: Vec<SubscriberConfig>,
    /// Subscriber for IDNO supplies (distributor ID 24+); when unset they go to the owner of
    /// their GSP group's host area.
    pub idno_subscriber: Option<String>,
}

/// One DNO (or IDNO) subscriber.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Name the subscriber uses in `SubscribeRequest.subscriber`.
    pub name: String,
    /// Distributor IDs whose alerts it receives.
    #[serde(default)]
    pub distributor_ids: Vec<DistributorId>,
    /// Set for push mode: the relay calls this subscriber's `AlertReceiver`.
    #[serde(default)]
    pub push: Option<PushConfig>,
}

/// Push-mode target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Receiver URL, e.g. `http://127.0.0.1:50061`, or `https://` for TLS.
    pub endpoint: String,
    /// For `https://`: PEM CA certificates the receiver's certificate must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// For `https://`: the name the receiver's certificate must carry, when it is not the
    /// endpoint's host.
    #[serde(default)]
    pub domain: Option<String>,
}

/// Delivery tuning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Alerts buffered per open Subscribe stream.
    pub stream_buffer: usize,
    /// First push retry delay.
    #[serde(with = "humantime_serde")]
    pub push_backoff_initial: Duration,
    /// Longest push retry delay.
    #[serde(with = "humantime_serde")]
    pub push_backoff_max: Duration,
    /// Alerts in flight to a push receiver before waiting for acks.
    pub push_window: usize,
    /// HTTP/2 keepalive interval.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
}

fn parse_addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: parse_addr(DEFAULT_LISTEN),
            metrics_listen: parse_addr(DEFAULT_METRICS_LISTEN),
            metrics_tls: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            registry: None,
            registry_dir: None,
            debounce: DEFAULT_DEBOUNCE,
            poa_sla: DEFAULT_POA_SLA,
            pra_sla: DEFAULT_PRA_SLA,
            shards: 0,
            shard_queue: DEFAULT_SHARD_QUEUE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            ingest: IngestConfig::default(),
            routing: RoutingConfig::default(),
            delivery: DeliveryConfig::default(),
            store: StoreConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            summaries: SummariesConfig::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
            max_event_age: DEFAULT_MAX_EVENT_AGE,
            max_event_id_len: DEFAULT_MAX_EVENT_ID_LEN,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            dedup_capacity: DEFAULT_DEDUP_CAPACITY,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
        }
    }
}

/// The six DNO groups and the distributor IDs they own.
pub const DEFAULT_SUBSCRIBERS: [(&str, &[u8]); 6] = [
    ("ukpn", &[10, 12, 19]),
    ("nged", &[11, 14, 21, 22]),
    ("spen", &[13, 18]),
    ("ssen", &[17, 20]),
    ("npg", &[15, 23]),
    ("enwl", &[16]),
];

impl Default for RoutingConfig {
    fn default() -> Self {
        let subscribers = DEFAULT_SUBSCRIBERS
            .iter()
            .map(|(name, ids)| SubscriberConfig {
                name: (*name).to_owned(),
                distributor_ids: ids.iter().copied().map(DistributorId).collect(),
                push: None,
            })
            .collect();
        Self {
            subscribers,
            idno_subscriber: None,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            stream_buffer: DEFAULT_STREAM_BUFFER,
            push_backoff_initial: DEFAULT_PUSH_BACKOFF_INITIAL,
            push_backoff_max: DEFAULT_PUSH_BACKOFF_MAX,
            push_window: DEFAULT_PUSH_WINDOW,
            keepalive: DEFAULT_KEEPALIVE,
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this tree (the message names line and column).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The values contradict each other or are out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; fields it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: err.to_string(),
        })
    }

    /// Number of partitions (owners) after resolving `0` to the CPU count. The embedded log
    /// keeps the number it was created with.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            self.shards
        }
    }

    /// How `/metrics` is served: `metrics_tls` when set; otherwise HTTPS with the relay's
    /// certificate when `tls.mode = "mutual"`, else plaintext (which [`Self::validate`] allows
    /// only on a loopback `metrics_listen`).
    pub fn metrics_tls(&self) -> MetricsTls {
        match (self.metrics_tls, self.tls.mode) {
            (Some(chosen), _) => chosen,
            (None, Some(TlsMode::Mutual)) => MetricsTls::Server,
            (None, _) => MetricsTls::Plaintext,
        }
    }

    /// Refuses values that cannot run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.debounce.is_zero() {
            return invalid("debounce must be greater than zero".into());
        }
        if self.poa_sla.is_zero() || self.pra_sla.is_zero() {
            return invalid("poa_sla and pra_sla must be greater than zero".into());
        }
        if self.shards > 1024 {
            return invalid(format!("shards = {} is more than 1024", self.shards));
        }
        if self.shard_queue == 0
            || self.delivery.stream_buffer == 0
            || self.delivery.push_window == 0
        {
            return invalid(
                "shard_queue, delivery.stream_buffer and delivery.push_window must be at least 1"
                    .into(),
            );
        }
        if self.ingest.max_batch_events == 0 || self.ingest.max_event_id_len == 0 {
            return invalid(
                "ingest.max_batch_events and ingest.max_event_id_len must be at least 1".into(),
            );
        }
        if self.store.commit_queue == 0
            || self.store.retention_max_alerts == 0
            || self.store.maintenance_interval.is_zero()
            || self.store.checkpoint_interval.is_zero()
            || self.store.checkpoint_events == 0
        {
            return invalid("store.commit_queue, store.retention_max_alerts, store.maintenance_interval, store.checkpoint_interval and store.checkpoint_events must be above zero".into());
        }
        if self.store.segment_bytes < 4096 {
            return invalid(format!(
                "store.segment_bytes = {} is below 4096",
                self.store.segment_bytes
            ));
        }
        if self.delivery.push_backoff_initial > self.delivery.push_backoff_max {
            return invalid(
                "delivery.push_backoff_initial is longer than delivery.push_backoff_max".into(),
            );
        }
        self.validate_routing()?;
        self.validate_summaries()?;
        self.validate_limits()?;
        self.validate_jetstream()?;
        self.validate_tls()?;
        self.validate_metrics_tls()
    }

    fn validate_summaries(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let summaries = &self.summaries;
        if summaries.feeder_min_supplies == 0 || summaries.queue == 0 {
            return invalid(
                "summaries.feeder_min_supplies and summaries.queue must be at least 1".into(),
            );
        }
        if !(summaries.feeder_min_share > 0.0 && summaries.feeder_min_share <= 1.0) {
            return invalid(format!(
                "summaries.feeder_min_share = {} is not a share above 0 and at most 1",
                summaries.feeder_min_share
            ));
        }
        if summaries.nested_after.is_zero() || summaries.min_interval.is_zero() {
            return invalid(
                "summaries.nested_after and summaries.min_interval must be greater than zero"
                    .into(),
            );
        }
        if summaries.default_interval < summaries.min_interval {
            return invalid(
                "summaries.default_interval is shorter than summaries.min_interval".into(),
            );
        }
        Ok(())
    }

    fn validate_metrics_tls(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let tls = &self.tls;
        match self.metrics_tls() {
            MetricsTls::Plaintext
                if self.metrics_tls.is_none() && !self.metrics_listen.ip().is_loopback() =>
            {
                invalid(format!(
                    "metrics_listen = {} is not a loopback address: configure [tls] mode = \"mutual\" (or metrics_tls = \"server\" or \"mutual\" with tls.cert and tls.key) to serve /metrics over TLS, or set metrics_tls = \"plaintext\" to serve every subscriber's metrics unauthenticated deliberately",
                    self.metrics_listen
                ))
            }
            MetricsTls::Plaintext => Ok(()),
            MetricsTls::Server if tls.cert.is_none() || tls.key.is_none() => {
                invalid("metrics_tls = \"server\" needs tls.cert and tls.key".into())
            }
            MetricsTls::Mutual
                if tls.mode != Some(TlsMode::Mutual)
                    || !tls.identities.iter().any(|entry| entry.role.may_scrape()) =>
            {
                invalid("metrics_tls = \"mutual\" needs tls.mode = \"mutual\" and a tls.identities entry with role \"metrics\" (or \"admin\") for Prometheus's certificate".into())
            }
            MetricsTls::Server | MetricsTls::Mutual => Ok(()),
        }
    }

    fn validate_jetstream(&self) -> Result<(), ConfigError> {
        if self.store.backend != Backend::Jetstream {
            return Ok(());
        }
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let js = &self.store.jetstream;
        if js.servers.is_empty() {
            return invalid("store.jetstream.servers is empty".into());
        }
        if !matches!(js.replicas, 1 | 3 | 5) {
            return invalid(format!(
                "store.jetstream.replicas = {} must be 1, 3 or 5",
                js.replicas
            ));
        }
        if js.partitions == 0 || js.partitions > 4096 {
            return invalid("store.jetstream.partitions must be 1-4096".into());
        }
        if js.event_streams == 0 {
            return invalid("store.jetstream.event_streams must be at least 1".into());
        }
        let name_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&js.prefix) || js.instance.as_deref().is_some_and(|i| !name_ok(i)) {
            return invalid(
                "store.jetstream.prefix and instance must be 1-64 characters of [A-Za-z0-9_-]"
                    .into(),
            );
        }
        if js.lease_ttl < Duration::from_secs(1) || js.snapshot_interval.is_zero() {
            return invalid(
                "store.jetstream.lease_ttl must be at least 1s and snapshot_interval above zero"
                    .into(),
            );
        }
        if js.appends_in_flight == 0 {
            return invalid("store.jetstream.appends_in_flight must be above zero".into());
        }
        if js.snapshot_chunk_bytes < 1024 {
            return invalid("store.jetstream.snapshot_chunk_bytes must be at least 1024".into());
        }
        if js.user.is_some() != js.password.is_some() {
            return invalid("store.jetstream.user and password go together".into());
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.max_message_bytes < 1024 || limits.max_streams_per_connection == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must be at least 1024 and limits.max_streams_per_connection at least 1".into(),
            ));
        }
        if limits.publisher_events_per_second > 0
            && (limits.publisher_burst_events as usize) < self.ingest.max_batch_events
        {
            return Err(ConfigError::Invalid(format!(
                "limits.publisher_burst_events = {} is below ingest.max_batch_events = {}: a full batch could never pass",
                limits.publisher_burst_events, self.ingest.max_batch_events
            )));
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let tls = &self.tls;
        match tls.mode {
            None if !self.listen.ip().is_loopback() => {
                return invalid(format!(
                    "listen = {} is not a loopback address: configure [tls] mode = \"mutual\" (cert, key, client_ca, identities), or set mode = \"plaintext\" to serve unauthenticated plaintext deliberately",
                    self.listen
                ));
            }
            Some(TlsMode::Mutual) => {
                if tls.cert.is_none() || tls.key.is_none() || tls.client_ca.is_none() {
                    return invalid(
                        "tls.mode = \"mutual\" needs tls.cert, tls.key and tls.client_ca".into(),
                    );
                }
                if tls.identities.is_empty() {
                    return invalid(
                        "tls.mode = \"mutual\" with no tls.identities would refuse every call"
                            .into(),
                    );
                }
            }
            _ if !tls.identities.is_empty() => {
                return invalid(
                    "tls.identities are set but tls.mode is not \"mutual\": they would be ignored"
                        .into(),
                );
            }
            _ => {}
        }
        if tls.handshake_timeout.is_zero() {
            return invalid("tls.handshake_timeout must be greater than zero".into());
        }
        if tls.reload_interval.is_zero() {
            return invalid("tls.reload_interval must be greater than zero".into());
        }
        if !tls.crl.is_empty() && tls.client_ca.is_none() {
            return invalid("tls.crl needs tls.client_ca: it revokes client certificates".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for entry in &tls.identities {
            if entry.identity.trim().is_empty() || entry.identity.len() > 1024 {
                return invalid("tls.identities: identity must be 1-1024 characters".into());
            }
            if !seen.insert(entry.identity.as_str()) {
                return invalid(format!(
                    "tls.identities: {:?} is configured twice",
                    entry.identity
                ));
            }
            match (entry.role, &entry.subscriber) {
                (Role::Subscriber, None) => {
                    return invalid(format!(
                        "tls.identities: {:?} has role subscriber but no subscriber name",
                        entry.identity
                    ));
                }
                (Role::Subscriber, Some(name))
                    if !self.routing.subscribers.iter().any(|s| &s.name == name) =>
                {
                    return invalid(format!(
                        "tls.identities: {:?} reads subscriber {name:?}, which is not configured",
                        entry.identity
                    ));
                }
                (Role::Publisher | Role::Admin | Role::Metrics, Some(_)) => {
                    return invalid(format!(
                        "tls.identities: {:?} has role {} and a subscriber name; only subscribers read a feed",
                        entry.identity, entry.role
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn validate_routing(&self) -> Result<(), ConfigError> {
        let mut owner_of: BTreeMap<DistributorId, &str> = BTreeMap::new();
        let mut names = std::collections::BTreeSet::new();
        for sub in &self.routing.subscribers {
            let name_ok = !sub.name.is_empty()
                && sub.name.len() <= 64
                && sub
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(ConfigError::Invalid(format!(
                    "subscriber name {:?} must be 1-64 characters of [A-Za-z0-9_-]",
                    sub.name
                )));
            }
            if !names.insert(sub.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "subscriber {:?} is configured twice",
                    sub.name
                )));
            }
            for id in &sub.distributor_ids {
                if !(10..=99).contains(&id.0) {
                    return Err(ConfigError::Invalid(format!(
                        "subscriber {:?}: distributor id {} is not between 10 and 99",
                        sub.name, id.0
                    )));
                }
                if let Some(other) = owner_of.insert(*id, &sub.name) {
                    return Err(ConfigError::Invalid(format!(
                        "distributor id {} is routed to both {other:?} and {:?}",
                        id.0, sub.name
                    )));
                }
            }
            if let Some(push) = &sub.push {
                let https = push.endpoint.starts_with("https://");
                if !(https || push.endpoint.starts_with("http://")) {
                    return Err(ConfigError::Invalid(format!(
                        "subscriber {:?}: push endpoint {:?} must start with http:// or https://",
                        sub.name, push.endpoint
                    )));
                }
                if https != push.ca.is_some() {
                    return Err(ConfigError::Invalid(format!(
                        "subscriber {:?}: push.ca is required for an https:// endpoint and only for one",
                        sub.name
                    )));
                }
            }
        }
        if let Some(idno) = &self.routing.idno_subscriber
            && !names.contains(idno.as_str())
        {
            return Err(ConfigError::Invalid(format!(
                "routing.idno_subscriber {idno:?} is not a configured subscriber"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_sec_numbers() {
        let config = Config::default();
        config.validate().expect("defaults run");
        assert_eq!(config.debounce, Duration::from_secs(180));
        assert_eq!(config.poa_sla, Duration::from_secs(60));
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.routing.subscribers.len(), 6);
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let config = Config::from_toml(
            r#"
            debounce = "2s"
            [ingest]
            max_batch_events = 50
            [routing]
            idno_subscriber = "ukpn"
            "#,
        )
        .expect("parses");
        assert_eq!(config.debounce, Duration::from_secs(2));
        assert_eq!(config.ingest.max_batch_events, 50);
        assert_eq!(config.ingest.max_event_id_len, DEFAULT_MAX_EVENT_ID_LEN);
        config.validate().expect("valid");
    }

    #[test]
    fn summaries_read_from_toml_and_refuse_values_that_cannot_work() {
        let config = Config::from_toml(
            r#"
            [summaries]
            storm_threshold = 50
            feeder_min_share = 0.25
            nested_after = "5m"
            "#,
        )
        .expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.summaries.storm_threshold, 50);
        assert_eq!(config.summaries.nested_after, Duration::from_secs(300));
        assert_eq!(config.summaries.queue, DEFAULT_SUMMARY_QUEUE);
        let refused = |change: fn(&mut SummariesConfig)| {
            let mut config = Config::default();
            change(&mut config.summaries);
            config.validate().expect_err("refused").to_string()
        };
        assert!(refused(|s| s.feeder_min_share = 0.0).contains("feeder_min_share"));
        assert!(refused(|s| s.feeder_min_share = 1.5).contains("feeder_min_share"));
        assert!(refused(|s| s.feeder_min_supplies = 0).contains("feeder_min_supplies"));
        assert!(refused(|s| s.queue = 0).contains("summaries.queue"));
        assert!(refused(|s| s.nested_after = Duration::ZERO).contains("nested_after"));
        assert!(
            refused(|s| s.default_interval = Duration::from_millis(10))
                .contains("default_interval")
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let err = Config::from_toml("debounce = \"3m\"\ndebunce = \"3m\"\n").expect_err("typo");
        let message = err.to_string();
        assert!(message.contains("debunce"), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn a_distributor_routed_twice_is_refused() {
        let config = Config::from_toml(
            r#"
            [[routing.subscribers]]
            name = "a"
            distributor_ids = [10]
            [[routing.subscribers]]
            name = "b"
            distributor_ids = [10]
            "#,
        )
        .expect("parses");
        let err = config.validate().expect_err("conflict");
        assert!(err.to_string().contains("distributor id 10"), "{err}");
    }

    #[test]
    fn plaintext_beyond_loopback_must_be_chosen_explicitly() {
        let mut config = Config {
            listen: parse_addr("0.0.0.0:50051"),
            ..Config::default()
        };
        let err = config
            .validate()
            .expect_err("implicit plaintext on all interfaces");
        assert!(err.to_string().contains("mode = \"mutual\""), "{err}");
        config.tls.mode = Some(TlsMode::Plaintext);
        config.validate().expect("explicit plaintext is allowed");
    }

    #[test]
    fn plaintext_metrics_beyond_loopback_must_be_chosen_explicitly() {
        let mut config = Config {
            metrics_listen: parse_addr("0.0.0.0:9464"),
            ..Config::default()
        };
        let err = config
            .validate()
            .expect_err("implicit plaintext metrics on all interfaces");
        assert!(
            err.to_string().contains("metrics_listen = 0.0.0.0:9464"),
            "{err}"
        );
        config.metrics_tls = Some(MetricsTls::Plaintext);
        config.validate().expect("explicit plaintext is allowed");
    }

    #[test]
    fn metrics_follow_mutual_tls_and_tls_metrics_need_their_files_and_a_scraper() {
        let mut config = mutual();
        config.metrics_listen = parse_addr("0.0.0.0:9464");
        assert_eq!(config.metrics_tls(), MetricsTls::Server);
        config.validate().expect("TLS metrics on all interfaces");
        config.metrics_tls = Some(MetricsTls::Mutual);
        let err = config.validate().expect_err("no identity may scrape");
        assert!(err.to_string().contains("role \"metrics\""), "{err}");
        config.tls.identities.push(IdentityConfig {
            identity: "spiffe://dsp.example/prometheus".into(),
            role: Role::Metrics,
            subscriber: None,
        });
        config.validate().expect("a scraper identity");
        config.tls.mode = Some(TlsMode::Plaintext);
        config.tls.identities.clear();
        let err = config.validate().expect_err("no mutual TLS");
        assert!(err.to_string().contains("tls.mode = \"mutual\""), "{err}");
        config.metrics_tls = Some(MetricsTls::Server);
        config
            .validate()
            .expect("server TLS needs only cert and key");
        config.tls.key = None;
        let err = config.validate().expect_err("no key");
        assert!(err.to_string().contains("tls.cert and tls.key"), "{err}");
    }

    fn mutual() -> Config {
        Config::from_toml(
            r#"
            [tls]
            mode = "mutual"
            cert = "relay.pem"
            key = "relay-key.pem"
            client_ca = "ca.pem"
            [[tls.identities]]
            identity = "spiffe://dno.example/ukpn"
            role = "subscriber"
            subscriber = "ukpn"
            [[tls.identities]]
            identity = "adapter.csp.example"
            role = "publisher"
            "#,
        )
        .expect("parses")
    }

    #[test]
    fn mutual_tls_needs_its_files_and_sound_identities() {
        mutual().validate().expect("valid");
        let expect_refused = |config: Config, needle: &str| {
            let err = config.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        };
        let mut no_ca = mutual();
        no_ca.tls.client_ca = None;
        expect_refused(no_ca, "tls.client_ca");
        let mut nobody = mutual();
        nobody.tls.identities.clear();
        expect_refused(nobody, "refuse every call");
        let mut unknown_feed = mutual();
        unknown_feed.tls.identities[0].subscriber = Some("nobody".into());
        expect_refused(unknown_feed, "not configured");
        let mut no_feed = mutual();
        no_feed.tls.identities[0].subscriber = None;
        expect_refused(no_feed, "no subscriber name");
        let mut publisher_with_feed = mutual();
        publisher_with_feed.tls.identities[1].subscriber = Some("ukpn".into());
        expect_refused(publisher_with_feed, "only subscribers read a feed");
        let mut twice = mutual();
        let first = twice.tls.identities[0].clone();
        twice.tls.identities.push(first);
        expect_refused(twice, "configured twice");
        let mut ignored = mutual();
        ignored.tls.mode = Some(TlsMode::Plaintext);
        expect_refused(ignored, "would be ignored");
    }

    #[test]
    fn an_unknown_role_is_refused_with_its_line() {
        let err = Config::from_toml("[[tls.identities]]\nidentity = \"x\"\nrole = \"superuser\"\n")
            .expect_err("unknown role");
        let message = err.to_string();
        assert!(message.contains("superuser"), "{message}");
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        let mut config = Config::default();
        config.limits.publisher_burst_events = 10;
        let err = config.validate().expect_err("burst below a batch");
        assert!(err.to_string().contains("publisher_burst_events"), "{err}");
        config.limits.publisher_events_per_second = 0;
        config.validate().expect("no rate limit, no burst needed");
        config.limits.max_streams_per_connection = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn an_https_push_endpoint_needs_its_ca() {
        let mut config = Config::default();
        config.routing.subscribers[0].push = Some(PushConfig {
            endpoint: "https://receiver.ukpn.example:443".into(),
            ca: None,
            domain: None,
        });
        let err = config.validate().expect_err("no CA");
        assert!(err.to_string().contains("push.ca"), "{err}");
    }

    #[test]
    fn an_unknown_idno_subscriber_is_refused() {
        let mut config = Config::default();
        config.routing.idno_subscriber = Some("nobody".into());
        assert!(config.validate().is_err());
    }
}
