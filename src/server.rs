//! Wires the pipeline stages together and runs them until shutdown, the same for every
//! backend: the backend's parts (`crate::log`) below, the owners, delivery, SLA watches,
//! Admin and ingest above.
//!
//! Start: open the backend, start an owner for every partition this instance owns (each
//! rebuilds its state from its checkpoint and the log after it, timers at their original due
//! times) and an SLA watch (and push session) for every subscriber it owns, then serve once
//! every owner has recovered. Shutdown, bounded by `shutdown_grace` at each step: health goes
//! `NOT_SERVING`; the gRPC server stops accepting calls and open Subscribe streams end (DNOs
//! resume from their cursor); in-flight batches finish, so every acknowledged event is
//! durable; then owners store what is in flight and a last checkpoint, watches and push
//! sessions stop, and the backend closes.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::admin::{AdminService, RegistrySource, reload_here};
use crate::config::{Backend, Config};
use crate::debounce::Settings;
use crate::deliver::feed::FeedService;
use crate::deliver::{Delivery, push};
use crate::domain::Clock;
use crate::ingest::{Admission, IngestService, Sink};
use crate::log::jetstream::Cluster;
use crate::log::jetstream::alerts::JsAlerts;
use crate::log::jetstream::checkpoints::JsCheckpoints;
use crate::log::jetstream::events::JsEvents;
use crate::log::jetstream::ownership::JsOwnership;
use crate::log::jetstream::peers::JsPeers;
use crate::log::local::{Local, Options as LocalOptions};
use crate::log::memory::{MemoryAlerts, MemoryCheckpoints, MemoryEvents};
use crate::log::single::{AllHere, NoPeers};
use crate::log::{
    AlertLog, Checkpoints, EventLog, Ownership, Peers, Retention, Sequencing, StartUnit, Unit,
};
use crate::owner::{CheckpointPolicy, OwnerContext, Owners};
use crate::proto;
use crate::route::{Registry, Router, RoutingTable, SubscriberId};
use crate::runtime::Tasks;
use crate::security::limits::{DecodeRefusalLayer, StreamLimiter};
use crate::security::reload::{Hangups, LiveTls, tls_incoming};
use crate::security::{Guard, IdentityMap, Role};
use crate::summary;
use crate::telemetry::Metrics;

/// The backend's parts: the seam's implementations for the configured backend.
struct Parts {
    partitions: u16,
    events: Arc<dyn EventLog>,
    alerts: Arc<dyn AlertLog>,
    checkpoints: Arc<dyn Checkpoints>,
    ownership: Arc<dyn Ownership>,
    /// Other instances, when there can be any.
    cluster: Option<Arc<JsPeers>>,
    /// How often owners checkpoint.
    checkpoint_every: std::time::Duration,
    /// Closes the backend once nothing uses it any more.
    close: Box<dyn FnOnce() + Send>,
}

/// Opens the configured backend.
async fn open_backend(
    config: &Config,
    table: &Arc<RoutingTable>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Parts> {
    let partitions = u16::try_from(config.shard_count()).unwrap_or(u16::MAX);
    Ok(match config.store.backend {
        Backend::Memory => {
            tracing::warn!("store.backend = \"memory\": nothing survives a restart");
            Parts {
                partitions,
                events: Arc::new(MemoryEvents::new(partitions)),
                alerts: Arc::new(MemoryAlerts::new(table)),
                checkpoints: Arc::new(MemoryCheckpoints::default()),
                ownership: Arc::new(AllHere::new("memory", partitions)),
                cluster: None,
                checkpoint_every: config.store.checkpoint_interval,
                close: Box::new(|| {}),
            }
        }
        Backend::Embedded => {
            let local = Local::open(
                &config.data_dir,
                table,
                partitions,
                &LocalOptions::from_config(config),
            )?;
            tracing::info!(
                dir = %config.data_dir.display(),
                partitions = local.partitions(),
                "embedded log open"
            );
            Parts {
                partitions: local.partitions(),
                events: local.events(),
                alerts: local.alerts(),
                checkpoints: local.checkpoints(),
                ownership: Arc::new(AllHere::new("embedded", local.partitions())),
                cluster: None,
                checkpoint_every: config.store.checkpoint_interval,
                close: Box::new(move || local.close()),
            }
        }
        Backend::Jetstream => {
            let cluster = Arc::new(Cluster::connect(config).await?);
            tracing::info!(
                instance = %cluster.instance,
                partitions = cluster.settings.partitions,
                replicas = cluster.settings.replicas,
                "connected to JetStream"
            );
            let ownership = Arc::new(JsOwnership::new(
                Arc::clone(&cluster),
                Arc::clone(table),
                Arc::clone(metrics),
            ));
            Parts {
                partitions: cluster.settings.partitions,
                events: Arc::new(JsEvents::new(Arc::clone(&cluster))),
                alerts: Arc::new(JsAlerts::new(Arc::clone(&cluster), Arc::clone(table))),
                checkpoints: Arc::new(JsCheckpoints::new(Arc::clone(&cluster))),
                cluster: Some(Arc::new(JsPeers::new(
                    Arc::clone(&cluster),
                    Arc::clone(&ownership),
                ))),
                ownership,
                checkpoint_every: cluster.settings.snapshot_interval,
                close: Box::new(|| {}),
            }
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
    let server_tls = LiveTls::grpc(&config.tls)?;
    let push_targets = push_targets(&config)?;
    let registry = match &config.registry {
        Some(path) => Registry::load(path)?,
        None => Registry::empty(),
    };
    tracing::info!(devices = registry.len(), "device registry loaded");
    let clock = Clock::system();
    let metrics = Arc::new(Metrics::new());
    let table = Arc::new(RoutingTable::from_config(&config.routing));
    let router = Arc::new(Router::new(
        RoutingTable::from_config(&config.routing),
        registry,
    ));
    let started = std::time::Instant::now();
    let parts = open_backend(&config, &table, &metrics).await?;
    let owners = Arc::new(Owners::new(parts.partitions));
    let admission = Arc::new(Admission::default());
    let delivery = Arc::new(Delivery::new(
        Arc::clone(&parts.alerts),
        Arc::clone(&table),
        clock,
    ));
    let tasks = Tasks::default();
    let (notes, summaries, summarising) = summary::start(
        &summary::TaskSettings {
            summariser: summary::Settings {
                storm_threshold: config.summaries.storm_threshold,
                feeder_min_supplies: config.summaries.feeder_min_supplies,
                feeder_min_share: config.summaries.feeder_min_share,
                nested_after: config.summaries.nested_after,
                partitions: parts.partitions,
            },
            queue: config.summaries.queue,
            default_interval: config.summaries.default_interval,
            min_interval: config.summaries.min_interval,
        },
        Arc::clone(&router),
        clock,
        shutdown.clone(),
    );
    tasks.spawn("summaries", summarising);
    let context = Arc::new(OwnerContext {
        events: Arc::clone(&parts.events),
        alerts: Arc::clone(&parts.alerts),
        checkpoints: Arc::clone(&parts.checkpoints),
        router: Arc::clone(&router),
        settings: Settings {
            debounce: config.debounce,
            poa_sla: config.poa_sla,
            pra_sla: config.pra_sla,
            tombstone_ttl: config.ingest.tombstone_ttl,
        },
        dedup_window: config.ingest.dedup_window,
        dedup_capacity: config.ingest.dedup_capacity / usize::from(parts.partitions.max(1)),
        partitions: parts.partitions,
        clock,
        metrics: Arc::clone(&metrics),
        admission: Arc::clone(&admission),
        checkpoint: CheckpointPolicy {
            every: parts.checkpoint_every,
            events: config.store.checkpoint_events,
            // Only an embedded directory is replayed; the memory backend keeps nothing extra.
            event_retention: match config.store.backend {
                Backend::Embedded => config.store.event_retention,
                Backend::Memory | Backend::Jetstream => std::time::Duration::ZERO,
            },
        },
        queue: config.shard_queue,
        in_flight: match config.store.backend {
            Backend::Jetstream => config.store.jetstream.appends_in_flight,
            Backend::Embedded | Backend::Memory => config.store.commit_queue,
        },
        owners: Arc::clone(&owners),
        summaries: notes,
    });
    let stages = CancellationToken::new();
    let hangups = Hangups::listen();
    match &server_tls {
        Some(live) => {
            let watch = Arc::clone(live).watch(config.tls.reload_interval, hangups, stages.clone());
            tasks.spawn("tls-reload", watch);
        }
        None => tasks.spawn("sighup", hangups.ignore(stages.clone())),
    }
    let registry_source = RegistrySource::from_config(&config);
    let reload = reload_here(
        Arc::clone(&owners),
        Arc::clone(&router),
        registry_source.clone(),
    );
    let peers: Arc<dyn Peers> = match &parts.cluster {
        Some(cluster) => {
            let serving = Arc::clone(cluster).serve(Arc::clone(&owners), reload, stages.clone());
            tasks.spawn("peers", serving);
            let shared = Arc::clone(cluster.cluster());
            let stop = stages.clone();
            tasks.spawn("leaders", async move {
                crate::log::jetstream::leaders::keep_spread(
                    shared.js.clone(),
                    shared.names.clone(),
                    &shared.instance,
                    shared.settings.rebalance_interval,
                    stop,
                )
                .await;
            });
            Arc::clone(cluster) as Arc<dyn Peers>
        }
        None => Arc::new(NoPeers::new(reload)),
    };
    let units = (0..parts.partitions)
        .map(Unit::Partition)
        .chain(table.iter().map(|(id, _)| Unit::Subscriber(id)))
        .collect();
    let start = start_units(
        context,
        Arc::clone(&delivery),
        push_targets,
        config.delivery.clone(),
    );
    {
        let (ownership, stages) = (Arc::clone(&parts.ownership), stages.clone());
        tasks.spawn("ownership", async move {
            ownership.run(units, start, stages).await;
        });
    }
    if parts.events.sequencing() == Sequencing::Owner {
        // Owners sequence ingest here: serve once every one of them has recovered.
        if let Err(failed) = owners.wait_serving(usize::from(parts.partitions)).await {
            stages.cancel();
            tasks.wait(config.shutdown_grace).await;
            (parts.close)();
            anyhow::bail!("cannot recover the partitions' state: {failed}");
        }
        tracing::info!(elapsed = ?started.elapsed(), partitions = parts.partitions, "state recovered; serving");
    }
    tasks.spawn(
        "maintenance",
        maintenance(
            Arc::clone(&delivery),
            Arc::clone(&admission),
            Arc::clone(&metrics),
            config.clone(),
            clock,
            stages.clone(),
        ),
    );
    let streams = StreamLimiter::new(config.limits.max_streams_per_connection);
    let ingest = IngestService::new(
        Sink {
            events: parts.events,
            owners: Arc::clone(&owners),
        },
        config.ingest.clone(),
        &config.limits,
        Arc::clone(&streams),
        clock,
        Arc::clone(&metrics),
        admission,
    );
    let feed = FeedService::new(
        Arc::clone(&delivery),
        config.delivery.stream_buffer,
        shutdown.clone(),
        tasks.clone(),
        streams,
        summaries,
    );
    let admin = AdminService::new(
        owners,
        peers,
        Arc::clone(&parts.ownership),
        delivery,
        router,
        config.debounce,
        registry_source,
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
    let closed = tokio::task::spawn_blocking(parts.close);
    if tokio::time::timeout(config.shutdown_grace, closed)
        .await
        .is_err()
    {
        tracing::warn!("the backend was still closing after the grace period");
    }
    tracing::info!("outage-relay stopped");
    served
}

/// Starts what a unit this instance owns needs: a partition's owner; a subscriber's SLA
/// watch and, in push mode, its push session.
fn start_units(
    context: Arc<OwnerContext>,
    delivery: Arc<Delivery>,
    push_targets: Vec<(String, push::Target)>,
    config: crate::config::DeliveryConfig,
) -> StartUnit {
    Arc::new(move |unit, lease| match unit {
        Unit::Partition(partition) => {
            tokio::spawn(crate::owner::own(partition, lease, Arc::clone(&context)))
        }
        Unit::Subscriber(log) => {
            let target = push_target(&delivery, &push_targets, log);
            let (delivery, config) = (Arc::clone(&delivery), config.clone());
            tokio::spawn(async move {
                let watch = crate::sla::watch(Arc::clone(&delivery), log, lease.clone());
                match target {
                    Some(target) => {
                        tokio::join!(watch, push::run(delivery, log, target, config, lease));
                    }
                    None => watch.await,
                }
            })
        }
    })
}

fn push_target(
    delivery: &Delivery,
    targets: &[(String, push::Target)],
    log: SubscriberId,
) -> Option<push::Target> {
    let name = delivery.name(log);
    targets
        .iter()
        .find(|(target, _)| target == name)
        .map(|(_, target)| target.clone())
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
    Guard::Mutual(Arc::new(IdentityMap::from_config(&config.tls)))
}

/// What stands in front of the services: TLS (absent in plaintext mode) and the identity
/// check.
pub(crate) struct Edge {
    pub(crate) tls: Option<Arc<LiveTls>>,
    pub(crate) guard: Guard,
}

/// HTTP/2 streams a connection may open beyond its long-lived `Publish`/`Subscribe` streams
/// (unary calls in flight).
const UNARY_STREAMS_PER_CONNECTION: usize = 256;

/// Serves the gRPC services (with health, and reflection v1 and v1alpha) on `listener` until
/// `shutdown`, bounded by `shutdown_grace` once it is cancelled.
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
    let limit = config.limits.max_message_bytes;
    // Reflection v1, and v1alpha for the clients that ask only for it (grpcio's, older
    // grpcurl and grpcui).
    let reflection = reflection_builder()
        .build_v1()?
        .max_decoding_message_size(limit);
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()?
        .max_decoding_message_size(limit);
    let local = listener.local_addr()?;
    let builder = Server::builder()
        .http2_keepalive_interval(Some(config.delivery.keepalive))
        .max_concurrent_streams(
            u32::try_from(config.limits.max_streams_per_connection + UNARY_STREAMS_PER_CONNECTION)
                .unwrap_or(u32::MAX),
        );
    match &edge.tls {
        Some(tls) => {
            if let Some(expires) = tls.expiry().cert {
                let left = expires
                    .0
                    .saturating_sub(crate::domain::UtcMillis::system_now().0);
                if left <= 0 {
                    anyhow::bail!("tls.cert expired at {expires}; renew it before starting");
                }
                if left < CERT_EXPIRY_WARNING_MS {
                    tracing::warn!(%expires, "tls.cert expires within 30 days; renew it");
                }
            }
            tracing::info!(%local, identities = config.tls.identities.len(), crls = config.tls.crl.len(), debounce = ?config.debounce, poa_sla = ?config.poa_sla, pra_sla = ?config.pra_sla, "outage-relay serving gRPC with mutual TLS");
        }
        None => {
            tracing::warn!(%local, debounce = ?config.debounce, poa_sla = ?config.poa_sla, pra_sla = ?config.pra_sla, "outage-relay serving gRPC in PLAINTEXT: no TLS, no identities, every caller may publish, read every feed and use Admin");
        }
    }
    let guard = edge.guard;
    let stopping = shutdown.clone();
    let router = builder
        .layer(DecodeRefusalLayer { limit })
        .add_service(health.max_decoding_message_size(limit))
        .add_service(reflection)
        .add_service(reflection_v1alpha)
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
        ));
    let stopped = async move {
        stopping.cancelled().await;
        for service in ["", "outage_relay.v1.Ingest"] {
            health_reporter
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
    };
    let tcp = incoming(listener, config);
    let serve: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match edge.tls {
            Some(tls) => {
                let tls = tls_incoming(tcp, tls, config.tls.handshake_timeout, shutdown.clone());
                Box::pin(router.serve_with_incoming_shutdown(tls, stopped))
            }
            None => Box::pin(router.serve_with_incoming_shutdown(tcp, stopped)),
        };
    let grace = config.shutdown_grace;
    tokio::select! {
        served = serve => served.map_err(anyhow::Error::from),
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "gRPC calls still open after the grace period; closing them");
            Ok(())
        }
    }
}

/// Server reflection over the relay's protos and health's.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
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

/// Periodic retention, and the free-disk check that pauses ingest.
async fn maintenance(
    delivery: Arc<Delivery>,
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
            if low {
                tracing::warn!(
                    free,
                    min = config.store.min_free_disk_bytes,
                    "data directory low on space; ingest paused"
                );
            }
        }
        metrics
            .ingest_refused
            .set(if admission.refused() { 1.0 } else { 0.0 });
        let retained = delivery
            .alerts()
            .maintain(clock.now(), Retention::from_config(&config))
            .await;
        match retained {
            Ok(expired) => {
                for expired in expired {
                    delivery.expired(expired.log, expired.removed, expired.status);
                    tracing::warn!(
                        subscriber = delivery.name(expired.log),
                        removed = expired.removed,
                        first_retained = expired.status.first_retained,
                        "retention removed unacknowledged alerts"
                    );
                }
            }
            Err(err) => tracing::warn!(%err, "retention pass failed"),
        }
    }
}
