//! Runs one relay instance on the JetStream backend: connects and provisions, serves the gRPC
//! services (ingest appends to the events stream; feeds and admin read the shared streams),
//! and holds partitions through the lease driver until shutdown, when it stops its partitions
//! and gives their leases back so the survivors take over at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::admin::ClusterAdmin;
use super::events::EventLog;
use super::feed::{ClusterFeed, bounds, cursor};
use super::leases::{self, OwnershipView, StartPartition};
use super::partition::{self, PartitionContext};
use super::push::{PushSessions, Pusher};
use super::sla::SlaInbox;
use crate::config::Config;
use crate::debounce::Settings;
use crate::domain::Clock;
use crate::ingest::Admission;
use crate::ingest::{IngestService, Sink};
use crate::route::{Registry, Router, RoutingTable};
use crate::runtime::Tasks;
use crate::security::limits::StreamLimiter;
use crate::server::{Edge, guard, serve};
use crate::telemetry::{self, Metrics};

/// How often subscriber backlogs are read for the metrics.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the instance on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server_tls = crate::security::tls::server(&config.tls)?;
    let registry = match &config.registry {
        Some(path) => Registry::load(path)?,
        None => Registry::empty(),
    };
    tracing::info!(devices = registry.len(), "device registry loaded");
    let cluster = Arc::new(Cluster::connect(&config).await?);
    tracing::info!(
        instance = %cluster.instance,
        partitions = cluster.settings.partitions,
        replicas = cluster.settings.replicas,
        "connected to JetStream"
    );
    let clock = Clock::system();
    let metrics = Arc::new(Metrics::new());
    let table = Arc::new(RoutingTable::from_config(&config.routing));
    let router = Arc::new(Router::new(
        RoutingTable::from_config(&config.routing),
        registry,
    ));
    let tasks = Tasks::default();
    let stages = CancellationToken::new();
    let sla_inbox = Arc::new(SlaInbox::default());
    tasks.spawn(
        "sla-watch",
        super::sla::run(
            Arc::clone(&cluster),
            Arc::clone(&table),
            Arc::clone(&sla_inbox),
            clock,
            stages.clone(),
        ),
    );

    let (reloaded, reloads) = watch::channel(0u64);
    tasks.spawn(
        "registry-reloads",
        super::registry::listen(
            Arc::clone(&cluster),
            Arc::clone(&router),
            reloaded,
            config.registry.clone(),
            stages.clone(),
        ),
    );
    let context = PartitionContext {
        cluster: Arc::clone(&cluster),
        router: Arc::clone(&router),
        settings: Settings {
            debounce: config.debounce,
            poa_sla: config.poa_sla,
            pra_sla: config.pra_sla,
            tombstone_ttl: config.ingest.tombstone_ttl,
        },
        clock,
        metrics: Arc::clone(&metrics),
        sla: Arc::clone(&sla_inbox),
        reloads,
    };
    let start: StartPartition = Arc::new(move |id, window, stop| {
        tokio::spawn(partition::run(id, context.clone(), window, stop))
    });
    let view = Arc::new(OwnershipView::default());
    let leases_stop = CancellationToken::new();
    let lease_driver = tokio::spawn(leases::run(
        Arc::clone(&cluster),
        start,
        Arc::clone(&view),
        Arc::clone(&metrics),
        leases_stop.clone(),
    ));
    let push_sessions = Arc::new(PushSessions::default());
    for (name, target) in crate::server::push_targets(&config)? {
        tasks.spawn(
            &format!("push-{name}"),
            Arc::new(Pusher::new(
                Arc::clone(&cluster),
                name,
                target,
                config.delivery.clone(),
                clock,
                Arc::clone(&push_sessions),
            ))
            .run(stages.clone()),
        );
    }
    tasks.spawn(
        "backlog-watch",
        watch_backlog(Arc::clone(&cluster), Arc::clone(&table), stages.clone()),
    );

    let streams = StreamLimiter::new(config.limits.max_streams_per_connection);
    let ingest = IngestService::new(
        Sink::Cluster(Arc::new(EventLog::new(
            cluster.js.clone(),
            cluster.names.clone(),
            cluster.settings.partitions,
        ))),
        config.ingest.clone(),
        &config.limits,
        Arc::clone(&streams),
        clock,
        Arc::clone(&metrics),
        Arc::new(Admission::default()),
    );
    let feed = ClusterFeed::new(
        Arc::clone(&cluster),
        Arc::clone(&table),
        clock,
        config.delivery.stream_buffer,
        shutdown.clone(),
        tasks.clone(),
        streams,
    );
    let admin = ClusterAdmin::new(
        Arc::clone(&cluster),
        Arc::clone(&router),
        view,
        push_sessions,
    );
    let edge = Edge {
        tls: server_tls,
        guard: guard(&config),
    };
    let served = serve(&config, listener, shutdown, edge, ingest, feed, admin).await;
    leases_stop.cancel();
    if tokio::time::timeout(config.shutdown_grace, lead_out(lease_driver))
        .await
        .is_err()
    {
        tracing::warn!("partitions still stopping after the grace period; their leases expire");
    }
    stages.cancel();
    if !tasks.wait(config.shutdown_grace).await {
        tracing::warn!(grace = ?config.shutdown_grace, "tasks still running after the grace period");
    }
    tracing::info!("outage-relay stopped");
    served
}

async fn lead_out(driver: tokio::task::JoinHandle<()>) {
    if let Err(err) = driver.await
        && err.is_panic()
    {
        tracing::error!("the lease driver panicked");
    }
}

/// Publishes every subscriber's backlog (stream head minus cursor) as a gauge.
async fn watch_backlog(cluster: Arc<Cluster>, table: Arc<RoutingTable>, stop: CancellationToken) {
    let gauges: Vec<(String, metrics::Gauge)> = table
        .iter()
        .map(|(_, name)| {
            (
                name.to_owned(),
                metrics::gauge!(telemetry::BACKLOG, "subscriber" => name.to_owned()),
            )
        })
        .collect();
    let mut tick = tokio::time::interval(BACKLOG_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (name, gauge) in &gauges {
            if let (Ok(bounds), Ok((acked, _))) = (
                bounds(&cluster, name).await,
                cursor(&cluster.cursors, name).await,
            ) {
                gauge.set(bounds.last.saturating_sub(acked) as f64);
            }
        }
    }
}
