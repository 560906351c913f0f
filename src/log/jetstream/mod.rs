//! The JetStream backend: several relay instances on several hosts share one NATS JetStream
//! cluster (Raft-replicated streams and key-value buckets). It implements the seam of
//! `crate::log`; every stage above it is the one the embedded backend runs.
//!
//! ```text
//!  publisher ─▶ any instance: ingest ─▶ {P}_EVENTS   subject {P}.events.<partition>
//!                 (EventLog: a message per event, Nats-Msg-Id = event key; acked once stored)
//!                                         │ ordered consumer, one per owned partition
//!                                         ▼
//!   owner of the partition (lease in {P}_LEASES_<stream>): the owner loop of crate::owner
//!                                         │ alerts, Nats-Msg-Id = alert id
//!                                         ▼
//!    {P}_ALERTS_<subscriber> (stream sequence = the DNO's sequence), or {P}_PARKED
//!                                         │
//!    any instance: AlertFeed from any sequence; cursors and SLA marks in {P}_CURSORS;
//!    each ack journalled with its time in {P}_JOURNAL (subject {P}.journal.<subscriber>)
//! ```
//!
//! - [`events`]: the event log. JetStream stamps each message's arrival; marks (empty
//!   messages) appended by an owner carry the log time up to which it fires its timers, so
//!   a new owner's replay fires them at the same places.
//! - [`alerts`]: the alert logs: a stream per subscriber (alert ids as message ids, so a
//!   re-emission after a take-over is stored once), cursors and SLA marks by compare-and-set,
//!   parked alerts on a subject per partition.
//! - [`checkpoints`]: partition checkpoints, in chunks under a checksummed manifest.
//! - [`ownership`]: partitions and subscribers held through leases, balanced among the live
//!   instances.
//! - [`peers`]: questions for other instances' owners and registry reloads, over NATS
//!   request/reply.
//!
//! Names start with `store.jetstream.prefix` (`{P}` above), so several relays can share a
//! cluster. nats-server 2.9 is enough; see `provision` for a client workaround it needs.

pub mod alert_batch;
pub mod alert_stream;
pub mod alert_writer;
pub mod alerts;
pub mod checkpoints;
pub mod events;
pub mod leaders;
pub mod ownership;
pub mod peers;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, Context, kv, stream};

use metrics::counter;
use tokio::sync::watch;

use crate::config::{Config, JetStreamConfig};
use crate::log::Unit;
use crate::telemetry;

/// Stream, subject and bucket names under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    event_streams: u16,
}

impl Names {
    /// Names under `prefix`, with the partitions spread over `event_streams` events streams.
    pub fn new(prefix: &str, event_streams: u16) -> Self {
        Self {
            prefix: prefix.to_owned(),
            event_streams: event_streams.max(1),
        }
    }

    /// How many events streams the partitions are spread over.
    pub fn event_stream_count(&self) -> u16 {
        self.event_streams
    }

    /// Events stream `index` (of [`Self::event_stream_count`]). With one stream it is
    /// `{P}_EVENTS`, as before streams were spread; with several, `{P}_EVENTS_<index>`.
    pub fn events_stream(&self, index: u16) -> String {
        if self.event_streams == 1 {
            format!("{}_EVENTS", self.prefix)
        } else {
            format!("{}_EVENTS_{index}", self.prefix)
        }
    }

    /// The subjects of events stream `index`.
    pub fn event_subjects(&self, index: u16) -> String {
        if self.event_streams == 1 {
            format!("{}.events.*", self.prefix)
        } else {
            format!("{}.events.{index}.*", self.prefix)
        }
    }

    /// The events stream holding partition `partition`.
    pub fn events_stream_of(&self, partition: u16) -> String {
        self.events_stream(partition % self.event_streams)
    }

    /// The subject of partition `partition`'s events.
    pub fn event_subject(&self, partition: u16) -> String {
        if self.event_streams == 1 {
            format!("{}.events.{partition}", self.prefix)
        } else {
            format!(
                "{}.events.{}.{partition}",
                self.prefix,
                partition % self.event_streams
            )
        }
    }

    /// The events stream names of the other layouts (one stream, or another count): any of
    /// them existing means the streams were made with another `event_streams`.
    fn other_events_streams(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.event_streams != 1 {
            names.push(format!("{}_EVENTS", self.prefix));
        }
        names.push(format!("{}_EVENTS_{}", self.prefix, self.event_streams));
        if self.event_streams == 1 {
            names.push(format!("{}_EVENTS_0", self.prefix));
        }
        names
    }

    /// The stream of one subscriber's alerts.
    pub fn alerts_stream(&self, subscriber: &str) -> String {
        format!("{}_ALERTS_{subscriber}", self.prefix)
    }

    /// The subject of one subscriber's alerts.
    pub fn alert_subject(&self, subscriber: &str) -> String {
        format!("{}.alerts.{subscriber}", self.prefix)
    }

    /// The stream of the subscribers' delivery journals.
    pub fn journal_stream(&self) -> String {
        format!("{}_JOURNAL", self.prefix)
    }

    /// The subject of one subscriber's delivery journal.
    pub fn journal_subject(&self, subscriber: &str) -> String {
        format!("{}.journal.{subscriber}", self.prefix)
    }

    /// The stream of alerts that routed nowhere.
    pub fn parked_stream(&self) -> String {
        format!("{}_PARKED", self.prefix)
    }

    /// The subject of partition `partition`'s parked alerts.
    pub fn parked_subject(&self, partition: u16) -> String {
        format!("{}.parked.{partition}", self.prefix)
    }

    /// Every parked alert's subject.
    pub fn parked_subjects(&self) -> String {
        format!("{}.parked.*", self.prefix)
    }

    /// The stream of partition snapshots.
    pub fn snapshots_stream(&self) -> String {
        format!("{}_SNAPSHOTS", self.prefix)
    }

    /// The subject of partition `partition`'s snapshot manifest (its chunks are below it).
    pub fn snapshot_subject(&self, partition: u16) -> String {
        format!("{}.snapshots.{partition}", self.prefix)
    }

    /// The subject on which partition `partition`'s owner answers queries.
    pub fn query_subject(&self, partition: u16) -> String {
        format!("{}.query.{partition}", self.prefix)
    }

    /// Every partition's query subject.
    pub fn query_subjects(&self) -> String {
        format!("{}.query.*", self.prefix)
    }

    /// The subject of registry reload requests to every instance.
    pub fn reload_subject(&self) -> String {
        format!("{}.control.reload", self.prefix)
    }

    /// Bucket of subscriber leases; with one events stream, of the partition leases too.
    pub fn leases_bucket(&self) -> String {
        format!("{}_LEASES", self.prefix)
    }

    /// Bucket of the leases of the partitions in events stream `index`. With one events
    /// stream it is [`Self::leases_bucket`]; with several, `{P}_LEASES_<index>`, one per
    /// events stream, its leader kept on that stream's leader's node (see [`leaders`]): a
    /// node's death then ends the leases of only the partitions whose events it stopped
    /// taking anyway, where one shared bucket ended every lease in the cluster.
    pub fn partition_leases_bucket(&self, index: u16) -> String {
        if self.event_streams == 1 {
            self.leases_bucket()
        } else {
            format!("{}_LEASES_{index}", self.prefix)
        }
    }

    /// Bucket of live instances (heartbeats).
    pub fn instances_bucket(&self) -> String {
        format!("{}_INSTANCES", self.prefix)
    }

    /// Bucket of subscriber cursors.
    pub fn cursors_bucket(&self) -> String {
        format!("{}_CURSORS", self.prefix)
    }
}

/// Header carrying the instance that emitted an alert.
pub const EMITTED_BY: &str = "Outage-Relay-Instance";

/// The longest one pull of the relay's ordered consumers waits (the consumer's
/// `max_expires`): the client's idle heartbeat follows it down to half of it, and a consumer
/// lost with its server (an ordered consumer is one replica, on the stream leader of when it
/// was made) is noticed after two heartbeats missed and made again. With the client's
/// defaults (30 s pulls, 15 s heartbeats) a feed or an owner whose consumer was on a killed
/// node stalled for 30 s and more; with this, about four. Idle, a consumer costs a pull
/// request every two seconds.
pub const CONSUMER_MAX_EXPIRES: Duration = Duration::from_secs(2);

/// How long alert streams remember alert ids to drop re-emissions.
const ALERT_DUPLICATE_WINDOW: Duration = Duration::from_secs(30 * 60);

/// A connection to the cluster with everything provisioned.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The JetStream context.
    pub js: Context,
    /// Names in use.
    pub names: Names,
    /// Settings.
    pub settings: JetStreamConfig,
    /// This instance's name.
    pub instance: String,
    /// Subscriber leases (and, with one events stream, partition leases).
    pub leases: kv::Store,
    /// The partition leases of each events stream, by index (see
    /// [`Names::partition_leases_bucket`]).
    pub partition_leases: Vec<kv::Store>,
    /// Instance heartbeats.
    pub instances: kv::Store,
    /// Subscriber cursors.
    pub cursors: kv::Store,
    /// The alert streams take atomic batches (`allow_atomic`, nats-server 2.12 and later):
    /// writers store several messages at once only then.
    pub atomic_batches: bool,
    /// Losses of the data connection, counted (see [`LossWatch`]).
    data_losses: watch::Receiver<u64>,
    /// Losses of the control connection, counted.
    control_losses: watch::Receiver<u64>,
}

/// This instance's default name: host name and process id.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "relay".to_owned());
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(48)
        .collect();
    format!("{host}-{}", std::process::id())
}

/// Whether a NATS connection was lost since the watch was taken.
///
/// The answer to a request sent before the client lost its server (killed, or cut off) never
/// comes: the client reconnects to another server at once, but the request waits out its 5 s
/// timeout. Whoever waits for an answer takes a watch before sending, and gives the answer up
/// when the connection is lost, as it would a timeout (in doubt: looked for, or asked again).
#[derive(Debug, Clone)]
pub struct LossWatch(watch::Receiver<u64>);

impl LossWatch {
    /// Awaits `future` (a request sent after this watch was taken, and its answer) unless the
    /// connection is lost first: `None` then.
    pub async fn unless_lost<F: std::future::Future>(&mut self, future: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            output = future => Some(output),
            Ok(()) = self.0.changed() => None,
        }
    }
}

/// One NATS connection as a JetStream context, and the count of its losses. The relay opens
/// two: one for events and alerts, one for leases and cursors, so a renewal never waits
/// behind a storm's publishes.
async fn context(
    settings: &JetStreamConfig,
    role: &'static str,
) -> anyhow::Result<(Context, watch::Receiver<u64>)> {
    let (lost, losses) = watch::channel(0u64);
    let mut options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .name(format!("outage-relay {role}"))
        .event_callback(move |event| {
            match event {
                async_nats::Event::Disconnected => {
                    lost.send_modify(|count| *count += 1);
                    counter!(telemetry::JETSTREAM_ERRORS, "operation" => "disconnected")
                        .increment(1);
                    tracing::warn!(
                        connection = role,
                        "NATS connection lost; answers awaited on it are given up"
                    );
                }
                event => tracing::info!(connection = role, %event, "NATS connection"),
            }
            async {}
        });
    if let Some(path) = &settings.credentials {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("reading NATS credentials {}", path.display()))?;
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    let servers = settings
        .servers
        .iter()
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("store.jetstream.servers: {url:?} is not a NATS URL"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = tokio::time::timeout(Duration::from_secs(30), options.connect(servers))
        .await
        .context("no NATS server answered within 30 s")?
        .with_context(|| format!("connecting to {}", settings.servers.join(",")))?;
    // Publishers bound their own acks in flight (a window per batch and per partition); the
    // context's shared limit is set out of their way, because batches that each hold part of
    // a shared limit while waiting for more of it would deadlock.
    let context = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(ACKS_IN_FLIGHT)
        .build(client);
    Ok((context, losses))
}

/// The context-wide ceiling on acks in flight, far above the sum of the relay's own windows.
const ACKS_IN_FLIGHT: usize = 1 << 24;

impl Cluster {
    /// Connects to the servers of `config.store.jetstream` and creates the streams and
    /// buckets that are missing.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let settings = config.store.jetstream.clone();
        let (js, data_losses) = context(&settings, "data").await?;
        let (control, control_losses) = context(&settings, "control").await?;
        let names = Names::new(&settings.prefix, settings.event_stream_count());
        let instance = settings.instance.clone().unwrap_or_else(default_instance);
        let atomic_batches = provision(&js, &names, config).await?;
        let provisioned = buckets(&control, &names, &settings).await?;
        leaders::spread(&js, &names).await;
        if names.event_stream_count() > 1 {
            ownership::refuse_shared_partition_leases(&provisioned.leases, settings.lease_ttl)
                .await?;
        }
        Ok(Self {
            js,
            names,
            settings,
            instance,
            leases: provisioned.leases,
            partition_leases: provisioned.partition_leases,
            instances: provisioned.instances,
            cursors: provisioned.cursors,
            atomic_batches,
            data_losses,
            control_losses,
        })
    }

    /// A watch of the data connection's losses (events, alerts, checkpoints), to take before
    /// sending a request whose answer is awaited.
    pub fn data_loss(&self) -> LossWatch {
        let mut losses = self.data_losses.clone();
        losses.borrow_and_update();
        LossWatch(losses)
    }

    /// A watch of the control connection's losses (leases, heartbeats, cursors).
    pub fn control_loss(&self) -> LossWatch {
        let mut losses = self.control_losses.clone();
        losses.borrow_and_update();
        LossWatch(losses)
    }

    /// The bucket holding `unit`'s lease.
    pub fn lease_bucket(&self, unit: Unit) -> &kv::Store {
        match unit {
            Unit::Partition(partition) => {
                let index = usize::from(partition % self.names.event_stream_count());
                self.partition_leases.get(index).unwrap_or(&self.leases)
            }
            Unit::Subscriber(_) => &self.leases,
        }
    }
}

/// How long an instance keeps provisioning its streams and buckets at start while JetStream
/// answers slowly (Raft groups forming on busy hosts) or elects leaders.
const PROVISION_BOUND: Duration = Duration::from_secs(120);

/// Runs `attempt` until it succeeds, fails with an error `transient` calls permanent, or
/// [`PROVISION_BOUND`] has passed, waiting between attempts with exponential backoff.
/// Creating a stream that exists with the same config succeeds, so repeating is safe even
/// when a timed-out attempt was carried out by the server.
async fn with_retries<T, E, F, Fut>(
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + PROVISION_BOUND;
    let mut backoff = Duration::from_millis(250);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if transient(&err) && tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(%err, "{what}: JetStream is not ready; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(err) => anyhow::bail!("{what}: {err}"),
        }
    }
}

/// Errors creating a stream that waiting can cure: timeouts and a cluster without a leader
/// or enough live peers yet.
fn stream_error_is_transient(err: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::ErrorCode;
    use jetstream::context::CreateStreamErrorKind as Kind;
    match err.kind() {
        Kind::TimedOut | Kind::JetStreamUnavailable => true,
        Kind::JetStream(err) => [
            ErrorCode::CLUSTER_NOT_AVAILABLE,
            ErrorCode::CLUSTER_NOT_LEADER,
            ErrorCode::CLUSTER_NOT_ACTIVE,
            ErrorCode::CLUSTER_INCOMPLETE,
            ErrorCode::CLUSTER_NO_PEERS,
            // Another instance created it between our look and our create, with limits of
            // its own config: looking again finds it, and its limits stand.
            ErrorCode::STREAM_NAME_EXIST,
        ]
        .contains(&err.error_code()),
        _ => false,
    }
}

/// Creates the stream unless it exists, then waits until it has a leader: a stream just
/// created answers nothing (requests time out) until its Raft group elects one. Returns
/// the stream's configuration as the server keeps it (a server ignores settings it does
/// not know). An existing stream is given atomic batches when asked for; nothing else of
/// its configuration changes.
async fn ensure_stream(js: &Context, config: stream::Config) -> anyhow::Result<stream::Config> {
    let what = format!("creating stream {}", config.name);
    let mut stream = with_retries(&what, stream_error_is_transient, || {
        js.get_or_create_stream(config.clone())
    })
    .await?;
    let kept = stream.cached_info().config.clone();
    // Switches a stream made by an earlier version on to what this one asks for.
    if (config.allow_atomic_publish && !kept.allow_atomic_publish)
        || (config.allow_direct && !kept.allow_direct)
    {
        let updated = stream::Config {
            allow_atomic_publish: kept.allow_atomic_publish || config.allow_atomic_publish,
            allow_direct: kept.allow_direct || config.allow_direct,
            ..kept
        };
        with_retries(
            &format!(
                "allowing atomic batches or direct reads on stream {}",
                config.name
            ),
            |err: &jetstream::context::UpdateStreamError| {
                !matches!(
                    err.kind(),
                    jetstream::context::CreateStreamErrorKind::JetStream(_)
                )
            },
            || js.update_stream(updated.clone()),
        )
        .await?;
    }
    let deadline = tokio::time::Instant::now() + PROVISION_BOUND;
    loop {
        let led = match stream.info().await {
            Ok(info) => info
                .cluster
                .as_ref()
                .is_none_or(|c| c.leader.is_some())
                .then(|| info.config.clone()),
            Err(err) => {
                tracing::debug!(%err, stream = %config.name, "stream info while waiting for a leader");
                None
            }
        };
        if let Some(kept) = led {
            return Ok(kept);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "stream {} has no leader after {PROVISION_BOUND:?}",
                config.name
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A key-value bucket, created with the bucket conventions directly: async-nats 0.51's
/// `create_key_value` first reads account limits in a shape nats-server 2.9 does not send.
async fn ensure_bucket(
    js: &Context,
    bucket: String,
    max_age: Duration,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    ensure_stream(
        js,
        stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            // Reads go to the stream leader: a follower serving a direct get may be behind,
            // and a cursor or lease read must see the last write.
            allow_direct: false,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        },
    )
    .await?;
    with_retries(
        &format!("opening bucket {bucket}"),
        |err: &jetstream::context::KeyValueError| {
            err.kind() != jetstream::context::KeyValueErrorKind::InvalidStoreName
        },
        || js.get_key_value(&bucket),
    )
    .await
}

/// Creates what is missing; whether every subscriber's alert stream takes atomic batches.
async fn provision(js: &Context, names: &Names, config: &Config) -> anyhow::Result<bool> {
    let settings = &config.store.jetstream;
    let replicas = settings.replicas;
    refuse_another_layout(js, names).await?;
    for index in 0..names.event_stream_count() {
        ensure_stream(
            js,
            stream::Config {
                name: names.events_stream(index),
                subjects: vec![names.event_subjects(index)],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                max_age: settings.events_max_age,
                duplicate_window: config.ingest.dedup_window,
                ..Default::default()
            },
        )
        .await?;
    }
    let alert_stream = |name: String, subject: String| stream::Config {
        name,
        subjects: vec![subject],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: config.store.retention_max_age,
        max_messages: i64::try_from(config.store.retention_max_alerts).unwrap_or(i64::MAX),
        duplicate_window: ALERT_DUPLICATE_WINDOW,
        allow_atomic_publish: true,
        ..Default::default()
    };
    let mut atomic = true;
    for subscriber in &config.routing.subscribers {
        let kept = ensure_stream(
            js,
            alert_stream(
                names.alerts_stream(&subscriber.name),
                names.alert_subject(&subscriber.name),
            ),
        )
        .await?;
        atomic &= kept.allow_atomic_publish;
    }
    ensure_stream(
        js,
        alert_stream(names.parked_stream(), names.parked_subjects()),
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: names.journal_stream(),
            subjects: vec![format!("{}.journal.*", settings.prefix)],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: config.store.report_retention,
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: names.snapshots_stream(),
            subjects: vec![format!("{}.snapshots.>", settings.prefix)],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_messages_per_subject: 1,
            // Any replica answers a direct get: a take-over reads a checkpoint from a follower
            // while the stream's leader is being elected (see `checkpoints`).
            allow_direct: true,
            ..Default::default()
        },
    )
    .await?;
    Ok(atomic)
}

/// Refuses to start on streams made with another `event_streams`: their partitions' events
/// and checkpoint positions belong to streams this layout would not read.
async fn refuse_another_layout(js: &Context, names: &Names) -> anyhow::Result<()> {
    use jetstream::context::GetStreamErrorKind;
    for name in names.other_events_streams() {
        let found = with_retries(
            &format!("looking for stream {name}"),
            |err: &jetstream::context::GetStreamError| {
                matches!(err.kind(), GetStreamErrorKind::Request)
            },
            || async {
                match js.get_stream(&name).await {
                    Ok(_) => Ok(true),
                    Err(err) => match err.kind() {
                        GetStreamErrorKind::JetStream(inner)
                            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                        {
                            Ok(false)
                        }
                        _ => Err(err),
                    },
                }
            },
        )
        .await?;
        if found {
            anyhow::bail!(
                "stream {name} exists: these streams were made with another \
                 store.jetstream.event_streams (it is fixed for the life of the streams); \
                 set it back, or use another prefix"
            );
        }
    }
    Ok(())
}

/// The key-value buckets, made if missing.
struct Buckets {
    leases: kv::Store,
    partition_leases: Vec<kv::Store>,
    instances: kv::Store,
    cursors: kv::Store,
}

async fn buckets(
    js: &Context,
    names: &Names,
    settings: &JetStreamConfig,
) -> anyhow::Result<Buckets> {
    let replicas = settings.replicas;
    let leases = ensure_bucket(js, names.leases_bucket(), settings.lease_ttl, replicas).await?;
    let mut partition_leases = Vec::new();
    for index in 0..names.event_stream_count() {
        let bucket = names.partition_leases_bucket(index);
        partition_leases.push(if bucket == names.leases_bucket() {
            leases.clone()
        } else {
            ensure_bucket(js, bucket, settings.lease_ttl, replicas).await?
        });
    }
    let instances =
        ensure_bucket(js, names.instances_bucket(), settings.lease_ttl, replicas).await?;
    let cursors = ensure_bucket(js, names.cursors_bucket(), Duration::ZERO, replicas).await?;
    Ok(Buckets {
        leases,
        partition_leases,
        instances,
        cursors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_awaited_is_given_up_when_the_connection_is_lost_after_the_watch_began() {
        let (lost, losses) = watch::channel(0u64);
        let mut watch = LossWatch(losses.clone());
        lost.send_modify(|count| *count += 1);
        let answer = watch.unless_lost(std::future::pending::<()>()).await;
        assert_eq!(answer, None);
    }

    #[tokio::test]
    async fn a_loss_before_the_watch_began_gives_nothing_up() {
        let (lost, mut losses) = watch::channel(0u64);
        lost.send_modify(|count| *count += 1);
        losses.borrow_and_update();
        let mut watch = LossWatch(losses);
        assert_eq!(watch.unless_lost(async { 7 }).await, Some(7));
        let pending = tokio::time::timeout(
            Duration::from_millis(20),
            watch.unless_lost(std::future::pending::<()>()),
        )
        .await;
        assert!(pending.is_err(), "no loss since the watch: still waiting");
    }
}
