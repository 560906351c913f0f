//! Wires the pipeline stages together and runs them until shutdown.
//!
//! Shutdown order, bounded by `shutdown_grace`: health goes `NOT_SERVING`; the gRPC server
//! stops accepting calls and open Subscribe streams end (DNOs resume from their cursor
//! elsewhere); in-flight ingest batches finish, so every acknowledged event is applied; then
//! shards, timers, push delivery and the SLA watch stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tracing::Instrument;

use crate::admin::AdminService;
use crate::config::Config;
use crate::debounce::dedup::EventIdWindow;
use crate::debounce::shard::Shard;
use crate::debounce::{Debouncer, OpenOutage, Settings, ShardHandle, shard_of};
use crate::deliver::feed::FeedService;
use crate::deliver::outbox::{Outbox, SlaInbox};
use crate::deliver::{Delivery, push};
use crate::domain::{Clock, SupplyPoint};
use crate::ingest::IngestService;
use crate::proto;
use crate::route::{Registry, Router, RoutingTable};
use crate::store::{LogId, MemoryStore, Store};
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

    async fn wait(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Runs the relay on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let registry = match &config.registry {
        Some(path) => Registry::load(path)?,
        None => Registry::empty(),
    };
    tracing::info!(devices = registry.len(), "device registry loaded");
    let clock = Clock::system();
    let metrics = Arc::new(Metrics::new());
    let table = Arc::new(RoutingTable::from_config(&config.routing));
    if config.data_dir.is_some() {
        tracing::warn!(
            "data_dir is set, but this build keeps its store in memory: a restart loses state"
        );
    }
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(table.len()));
    let delivery = Arc::new(Delivery::new(
        Arc::clone(&store),
        Arc::clone(&table),
        clock,
    )?);
    let sla_inbox = Arc::new(SlaInbox::default());
    let router = Arc::new(Router::new(
        RoutingTable::from_config(&config.routing),
        registry,
    ));
    let outbox = Arc::new(Outbox::new(
        router,
        Arc::clone(&delivery),
        Arc::clone(&metrics),
        Arc::clone(&sla_inbox),
    ));

    let tasks = Tasks::default();
    let stages = CancellationToken::new();
    let shards = start_shards(&config, clock, &outbox, &store, &metrics, &tasks, &stages)?;
    tasks.spawn(
        "sla-watch",
        crate::sla::run(Arc::clone(&delivery), sla_inbox, stages.clone()),
    );
    for (id, _) in table.iter() {
        if let Some(endpoint) = table.push_endpoint(id) {
            let task = push::run(
                Arc::clone(&delivery),
                LogId::Subscriber(id),
                endpoint.to_owned(),
                config.delivery.clone(),
                stages.clone(),
            );
            tasks.spawn(&format!("push-{}", table.name(id)), task);
        }
    }

    let ingest = IngestService::new(
        Arc::clone(&shards),
        config.ingest.clone(),
        clock,
        Arc::clone(&metrics),
    );
    let feed = FeedService::new(
        Arc::clone(&delivery),
        config.delivery.stream_buffer,
        shutdown.clone(),
        tasks.clone(),
    );
    let admin = AdminService::new(
        shards,
        delivery,
        outbox,
        config.registry.clone(),
        config.debounce,
    );
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
    tracing::info!(%local, debounce = ?config.debounce, poa_sla = ?config.poa_sla, pra_sla = ?config.pra_sla, "outage-relay serving gRPC (plaintext)");
    let stopping = shutdown.clone();
    let reporter = health_reporter.clone();
    let serve = Server::builder()
        .http2_keepalive_interval(Some(config.delivery.keepalive))
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(reflection)
        .add_service(proto::ingest_server::IngestServer::new(ingest))
        .add_service(proto::alert_feed_server::AlertFeedServer::new(feed))
        .add_service(proto::admin_server::AdminServer::new(admin))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            stopping.cancelled().await;
            for service in ["", "outage_relay.v1.Ingest"] {
                reporter
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        });
    let grace = config.shutdown_grace;
    let served = tokio::select! {
        served = serve => served.map_err(anyhow::Error::from),
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "gRPC calls still open after the grace period; closing them");
            Ok(())
        }
    };
    stages.cancel();
    if !tasks.wait(grace).await {
        tracing::warn!(
            ?grace,
            "pipeline tasks still running after the grace period"
        );
    }
    tracing::info!("outage-relay stopped");
    served
}

fn start_shards(
    config: &Config,
    clock: Clock,
    outbox: &Arc<Outbox>,
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
    stages: &CancellationToken,
) -> anyhow::Result<Arc<[ShardHandle]>> {
    let count = config.shard_count();
    let settings = Settings {
        debounce: config.debounce,
        poa_sla: config.poa_sla,
        pra_sla: config.pra_sla,
        tombstone_ttl: config.ingest.tombstone_ttl,
    };
    let mut restored: Vec<Vec<(SupplyPoint, OpenOutage)>> = vec![Vec::new(); count];
    for (point, outage) in store.open_outages()? {
        restored[shard_of(point.device, count)].push((point, outage));
    }
    let handles: Vec<ShardHandle> = restored
        .into_iter()
        .enumerate()
        .map(|(index, outages)| {
            let dedup = EventIdWindow::new(
                config.ingest.dedup_window,
                config.ingest.dedup_capacity / count,
            );
            let mut shard = Shard::new(
                Debouncer::new(settings),
                dedup,
                clock,
                Arc::clone(outbox),
                Arc::clone(store),
                Arc::clone(metrics),
            );
            shard.restore(outages);
            shard.spawn(
                config.shard_queue,
                &format!("shard-{index}"),
                tasks,
                stages.clone(),
            )
        })
        .collect();
    Ok(handles.into())
}
