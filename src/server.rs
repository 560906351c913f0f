//! Wires the pipeline stages together and runs them until shutdown.
//!
//! Start: open the store, rebuild the state machines from it (timers re-armed at their
//! original due times), re-watch pending SLA deadlines, then serve. Shutdown, bounded by
//! `shutdown_grace`: health goes `NOT_SERVING`; the gRPC server stops accepting calls and
//! open Subscribe streams end (DNOs resume from their cursor); in-flight ingest batches
//! finish, so every acknowledged event is durable; then shards, timers, push delivery, the SLA
//! watch and maintenance stop, and the commit stage drains its queue and closes the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::Instrument;

use crate::admin::AdminService;
use crate::commit::{Admission, CommitHandle, CommitStage};
use crate::config::{Backend, Config};
use crate::debounce::dedup::EventIdWindow;
use crate::debounce::shard::{Restored, Shard};
use crate::debounce::{Debouncer, Settings, ShardHandle, shard_of};
use crate::deliver::feed::FeedService;
use crate::deliver::{Delivery, push};
use crate::domain::Clock;
use crate::ingest::{IngestService, Sink};
use crate::proto;
use crate::route::{Registry, Router, RoutingTable};
use crate::security::limits::{OversizeLayer, StreamLimiter};
use crate::security::tls::ServerTls;
use crate::security::{Guard, IdentityMap, Principal, Role};
use crate::sla::SlaInbox;
use crate::store::{DurableStore, LogId, MemoryStore, Recovered, Store};
use crate::telemetry::Metrics;

/// Spawns named, instrumented tasks and keeps track of them for shutdown.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
}

impl Tasks {
    /// Spawns `future` as task `name`; a panic is logged with the task's name.
    pub fn spawn<F>(&self, name: &str, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!("task", name = %name);
        let handle = tokio::spawn(future.instrument(span));
        let name = name.to_owned();
        self.tracker.spawn(async move {
            if let Err(err) = handle.await
                && err.is_panic()
            {
                tracing::error!(task = %name, "task panicked");
            }
        });
    }

    /// Waits up to `grace` for every task to end; whether they all did.
    pub(crate) async fn wait(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Opens the configured store.
pub fn open_store(config: &Config, table: &RoutingTable) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config.store.backend {
        Backend::Memory => {
            tracing::warn!("store.backend = \"memory\": nothing survives a restart");
            Arc::new(MemoryStore::new(table.len()))
        }
        Backend::Jetstream => {
            anyhow::bail!("the JetStream backend runs through cluster::run, not a local store")
        }
        Backend::Embedded => {
            let names: Vec<&str> = table.iter().map(|(_, name)| name).collect();
            let store =
                DurableStore::open_with_cache(&config.data_dir, &names, config.store.cache_bytes)?;
            tracing::info!(path = %store.path().display(), "embedded store open");
            Arc::new(store)
        }
    })
}

/// Runs the relay on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    if config.store.backend == Backend::Jetstream {
        return crate::cluster::run::run(config, listener, shutdown).await;
    }
    let server_tls = crate::security::tls::server(&config.tls)?;
    let push_targets = push_targets(&config)?;
    let registry = match &config.registry {
        Some(path) => Registry::load(path)?,
        None => Registry::empty(),
    };
    tracing::info!(devices = registry.len(), "device registry loaded");
    let clock = Clock::system();
    let metrics = Arc::new(Metrics::new());
    let table = Arc::new(RoutingTable::from_config(&config.routing));
    let store = open_store(&config, &table)?;
    let started = std::time::Instant::now();
    let recovered = store.recover()?;
    tracing::info!(
        open_outages = recovered.outages.len(),
        tombstones = recovered.tombstones.len(),
        event_keys = recovered.events.len(),
        elapsed = ?started.elapsed(),
        "state recovered from the store"
    );
    let delivery = Arc::new(Delivery::new(
        Arc::clone(&store),
        Arc::clone(&table),
        clock,
    )?);
    let sla_inbox = Arc::new(SlaInbox::default());
    let rewatched = crate::sla::watch_backlog(&delivery, &sla_inbox)?;
    if rewatched > 0 {
        tracing::info!(
            alerts = rewatched,
            "unacknowledged alerts with deadlines ahead are watched again"
        );
    }
    let admission = Arc::new(Admission::default());
    let router = Arc::new(Router::new(
        RoutingTable::from_config(&config.routing),
        registry,
    ));
    let stage = CommitStage {
        store: Arc::clone(&store),
        router: Arc::clone(&router),
        delivery: Arc::clone(&delivery),
        metrics: Arc::clone(&metrics),
        sla: Arc::clone(&sla_inbox),
        admission: Arc::clone(&admission),
        config: config.store.clone(),
        dedup_window: config.ingest.dedup_window,
        tombstone_ttl: config.ingest.tombstone_ttl,
    };
    let (commit, commit_thread) = stage.spawn(config.store.commit_queue)?;

    let tasks = Tasks::default();
    let stages = CancellationToken::new();
    let shards = start_shards(
        &config, clock, &commit, &metrics, &tasks, &stages, recovered,
    );
    tasks.spawn(
        "sla-watch",
        crate::sla::run(Arc::clone(&delivery), sla_inbox, stages.clone()),
    );
    tasks.spawn(
        "maintenance",
        maintenance(
            commit.clone(),
            Arc::clone(&admission),
            Arc::clone(&metrics),
            config.clone(),
            clock,
            stages.clone(),
        ),
    );
    for (name, target) in push_targets {
        let Some(id) = table.id_of(&name) else {
            continue;
        };
        let task = push::run(
            Arc::clone(&delivery),
            commit.clone(),
            LogId::Subscriber(id),
            target,
            config.delivery.clone(),
            stages.clone(),
        );
        tasks.spawn(&format!("push-{name}"), task);
    }
    let streams = StreamLimiter::new(config.limits.max_streams_per_connection);

    let ingest = IngestService::new(
        Sink::Shards(Arc::clone(&shards)),
        config.ingest.clone(),
        &config.limits,
        Arc::clone(&streams),
        clock,
        Arc::clone(&metrics),
        admission,
    );
    let feed = FeedService::new(
        Arc::clone(&delivery),
        commit.clone(),
        config.delivery.stream_buffer,
        shutdown.clone(),
        tasks.clone(),
        streams,
    );
    let admin = AdminService::new(
        shards,
        delivery,
        commit,
        router,
        config.registry.clone(),
        config.debounce,
        match config.store.backend {
            Backend::Memory => "memory",
            _ => "embedded",
        },
    );
    let edge = Edge {
        tls: server_tls,
        guard: guard(&config),
    };
    let served = serve(&config, listener, shutdown, edge, ingest, feed, admin).await;
    stages.cancel();
    if !tasks.wait(config.shutdown_grace).await {
        tracing::warn!(grace = ?config.shutdown_grace, "pipeline tasks still running after the grace period");
    }
    let joined = tokio::task::spawn_blocking(move || commit_thread.join());
    if tokio::time::timeout(config.shutdown_grace, joined)
        .await
        .is_err()
    {
        tracing::warn!("commit stage still draining after the grace period");
    }
    tracing::info!("outage-relay stopped");
    served
}

/// Push receivers by subscriber name, with their TLS settings loaded.
pub(crate) fn push_targets(config: &Config) -> anyhow::Result<Vec<(String, push::Target)>> {
    Ok(crate::security::tls::push_clients(config)?
        .into_iter()
        .map(|(name, endpoint, tls)| (name, push::Target { endpoint, tls }))
        .collect())
}

/// The identity check for the configured mode.
pub(crate) fn guard(config: &Config) -> Guard {
    if config.tls.mode != Some(crate::config::TlsMode::Mutual) {
        return Guard::Open;
    }
    Guard::Mutual(Arc::new(IdentityMap::new(
        config.tls.identities.iter().map(|entry| Principal {
            identity: entry.identity.clone(),
            role: entry.role,
            subscriber: entry.subscriber.clone(),
        }),
    )))
}

/// What stands in front of the services: TLS (absent in plaintext mode) and the identity
/// check.
pub(crate) struct Edge {
    pub(crate) tls: Option<ServerTls>,
    pub(crate) guard: Guard,
}

/// HTTP/2 streams a connection may open beyond its long-lived `Publish`/`Subscribe` streams
/// (unary calls in flight).
const UNARY_STREAMS_PER_CONNECTION: usize = 256;

/// Serves the gRPC services (with health and reflection) on `listener` until `shutdown`,
/// bounded by `shutdown_grace` once it is cancelled.
pub(crate) async fn serve<F, A>(
    config: &Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    edge: Edge,
    ingest: IngestService,
    feed: F,
    admin: A,
) -> anyhow::Result<()>
where
    F: proto::alert_feed_server::AlertFeed,
    A: proto::admin_server::Admin,
{
    let (health_reporter, health) = tonic_health::server::health_reporter();
    for service in [
        "",
        "outage_relay.v1.Ingest",
        "outage_relay.v1.AlertFeed",
        "outage_relay.v1.Admin",
    ] {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let local = listener.local_addr()?;
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(config.delivery.keepalive))
        .max_concurrent_streams(
            u32::try_from(config.limits.max_streams_per_connection + UNARY_STREAMS_PER_CONNECTION)
                .unwrap_or(u32::MAX),
        );
    match edge.tls {
        Some(tls) => {
            if let Some(expires) = tls.own.expires {
                let left = expires
                    .0
                    .saturating_sub(crate::domain::UtcMillis::system_now().0);
                if left <= 0 {
                    anyhow::bail!("tls.cert expired at {expires}; renew it before starting");
                }
                crate::telemetry::tls_certificate_expires_in(left as f64 / 1000.0);
                if left < CERT_EXPIRY_WARNING_MS {
                    tracing::warn!(%expires, "tls.cert expires within 30 days; renew it");
                }
            }
            tracing::info!(%local, identities = config.tls.identities.len(), debounce = ?config.debounce, poa_sla = ?config.poa_sla, pra_sla = ?config.pra_sla, "outage-relay serving gRPC with mutual TLS");
            builder = builder.tls_config(tls.config)?;
        }
        None => {
            tracing::warn!(%local, debounce = ?config.debounce, poa_sla = ?config.poa_sla, pra_sla = ?config.pra_sla, "outage-relay serving gRPC in PLAINTEXT: no TLS, no identities, every caller may publish, read every feed and use Admin");
        }
    }
    let limit = config.limits.max_message_bytes;
    let guard = edge.guard;
    let stopping = shutdown.clone();
    let serve = builder
        .layer(OversizeLayer { limit })
        .add_service(health)
        .add_service(reflection)
        .add_service(InterceptedService::new(
            proto::ingest_server::IngestServer::new(ingest).max_decoding_message_size(limit),
            guard.require(Role::Publisher),
        ))
        .add_service(InterceptedService::new(
            proto::alert_feed_server::AlertFeedServer::new(feed).max_decoding_message_size(limit),
            guard.require(Role::Subscriber),
        ))
        .add_service(InterceptedService::new(
            proto::admin_server::AdminServer::new(admin).max_decoding_message_size(limit),
            guard.require(Role::Admin),
        ))
        .serve_with_incoming_shutdown(incoming(listener, config), async move {
            stopping.cancelled().await;
            for service in ["", "outage_relay.v1.Ingest"] {
                health_reporter
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        });
    let grace = config.shutdown_grace;
    tokio::select! {
        served = serve => served.map_err(anyhow::Error::from),
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "gRPC calls still open after the grace period; closing them");
            Ok(())
        }
    }
}

/// How early before the relay's certificate expires the log warns.
const CERT_EXPIRY_WARNING_MS: i64 = 30 * 24 * 3600 * 1000;

/// Accepted connections with Nagle off (small acks must not wait behind a stream of alerts)
/// and TCP keepalive on. `Server::tcp_nodelay` applies only to `serve(addr)`, not to a
/// listener handed in, so it is set here.
fn incoming(listener: TcpListener, config: &Config) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(config.delivery.keepalive))
}

/// Periodic expiry and retention, and the free-disk check that pauses ingest.
async fn maintenance(
    commit: CommitHandle,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    config: Config,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(config.store.maintenance_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if config.store.backend == Backend::Embedded {
            let free = fs4::available_space(&config.data_dir).unwrap_or(u64::MAX);
            let low = free < config.store.min_free_disk_bytes;
            admission.set_disk_low(low);
            metrics.ingest_refused.set(if low { 1.0 } else { 0.0 });
            if low {
                tracing::warn!(
                    free,
                    min = config.store.min_free_disk_bytes,
                    "data directory low on space; ingest paused"
                );
            }
        }
        if commit.maintain(clock.now()).await.is_err() {
            return;
        }
    }
}

fn start_shards(
    config: &Config,
    clock: Clock,
    commit: &CommitHandle,
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
    stages: &CancellationToken,
    recovered: Recovered,
) -> Arc<[ShardHandle]> {
    let count = config.shard_count();
    let settings = Settings {
        debounce: config.debounce,
        poa_sla: config.poa_sla,
        pra_sla: config.pra_sla,
        tombstone_ttl: config.ingest.tombstone_ttl,
    };
    let mut restored: Vec<Restored> = (0..count).map(|_| Restored::default()).collect();
    for (point, outage) in recovered.outages {
        restored[shard_of(point.device, count)]
            .outages
            .push((point, outage));
    }
    let mut tombstones = recovered.tombstones;
    tombstones.sort_by_key(|t| t.closed_at);
    for tombstone in tombstones {
        restored[shard_of(tombstone.point.device, count)]
            .tombstones
            .push(tombstone);
    }
    let mut events = recovered.events;
    events.sort_by_key(|e| e.seen_at);
    for event in events {
        restored[shard_of(event.device, count)].events.push(event);
    }
    let handles: Vec<ShardHandle> = restored
        .into_iter()
        .enumerate()
        .map(|(index, state)| {
            let dedup = EventIdWindow::new(
                config.ingest.dedup_window,
                config.ingest.dedup_capacity / count,
            );
            let mut shard = Shard::new(
                Debouncer::new(settings),
                dedup,
                clock,
                commit.clone(),
                Arc::clone(metrics),
            );
            shard.restore(state);
            shard.spawn(
                config.shard_queue,
                &format!("shard-{index}"),
                tasks,
                stages.clone(),
            )
        })
        .collect();
    handles.into()
}
