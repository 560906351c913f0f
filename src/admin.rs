//! The `Admin` gRPC service: what operators ask of a running relay, the same for every
//! backend. Device state and open outages come from the partitions' owners (on this instance,
//! or through [`Peers`] on another); delivery status, parked alerts and breach counts from
//! the alert log; ownership from [`Ownership`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::debounce::{OpenOutage, OutageState};
use crate::deliver::Delivery;
use crate::deliver::convert::alert_to_proto;
use crate::domain::{DeviceId, SupplyPoint, UtcMillis};
use crate::error::RelayError;
use crate::log::{
    AlertLog, Destination, LogEntry, LogError, LogStatus, OwnerAnswer, OwnerQuery, Ownership,
    Partition, Peers, partition_of,
};
use crate::owner::Owners;
use crate::proto::{self, admin_server::Admin};
use crate::report::wire;
use crate::route::{Registry, Router, SubscriberId};

const DEFAULT_LIST_LIMIT: usize = 1000;

/// The service.
#[derive(Clone)]
pub struct AdminService {
    owners: Arc<Owners>,
    peers: Arc<dyn Peers>,
    ownership: Arc<dyn Ownership>,
    delivery: Arc<Delivery>,
    router: Arc<Router>,
    debounce: std::time::Duration,
    registry: RegistrySource,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService").finish_non_exhaustive()
    }
}

impl AdminService {
    /// An admin service over this instance's owners, its peers and the delivery side,
    /// reloading registries from where `registry` allows.
    pub fn new(
        owners: Arc<Owners>,
        peers: Arc<dyn Peers>,
        ownership: Arc<dyn Ownership>,
        delivery: Arc<Delivery>,
        router: Arc<Router>,
        debounce: std::time::Duration,
        registry: RegistrySource,
    ) -> Self {
        Self {
            owners,
            peers,
            ownership,
            delivery,
            router,
            debounce,
            registry,
        }
    }

    /// Asks `partition`'s owner, here or on another instance.
    async fn ask(
        &self,
        partition: Partition,
        query: OwnerQuery,
    ) -> Result<OwnerAnswer, RelayError> {
        match self.owners.get(partition) {
            Some(owner) => owner.ask(query).await,
            None => self.peers.ask(partition, query).await,
        }
    }

    /// The subscriber named `wanted`, or every one when it is empty.
    fn logs(&self, wanted: &str) -> Result<Vec<SubscriberId>, RelayError> {
        let table = self.delivery.table();
        if wanted.is_empty() {
            return Ok(table.iter().map(|(id, _)| id).collect());
        }
        let log = table
            .id_of(wanted)
            .ok_or_else(|| RelayError::NotFound(format!("unknown subscriber {wanted:?}")))?;
        Ok(vec![log])
    }

    async fn subscriber_status(
        &self,
        log: SubscriberId,
    ) -> Result<proto::SubscriberStatus, RelayError> {
        let table = self.delivery.table();
        let alerts = self.delivery.alerts();
        let status = alerts.status(log).await?;
        let oldest = oldest_unacked(alerts.as_ref(), log, status)
            .await?
            .map(|entry| entry.alert.due_at.to_proto());
        Ok(proto::SubscriberStatus {
            subscriber: table.name(log).to_owned(),
            distributor_ids: table
                .distributor_ids(log)
                .iter()
                .map(|d| u32::from(d.0))
                .collect(),
            mode: if table.push_endpoint(log).is_some() {
                "push"
            } else {
                "subscribe"
            }
            .into(),
            head_sequence: status.head,
            acked_sequence: status.acked,
            backlog: status.backlog(),
            connected: self.delivery.connected(log),
            oldest_unacked_due_at: oldest,
            last_error: self.delivery.last_error(log),
            sla_breaches: alerts.sla_mark(log).await?.breaches,
        })
    }
}

/// How often [`oldest_unacked`] looks again whether the backlog it is reading has cleared.
const BACKLOG_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The oldest unacknowledged entry of `log`, whose cursors were `status`; `None` when there is
/// no backlog. The backlog may clear while the entry is read (a subscriber acknowledges it,
/// or retention removes it), and a reader waits for the next entry: the read is raced
/// against a fresh look at the cursors, so an answer never waits on the next alert.
async fn oldest_unacked(
    alerts: &dyn AlertLog,
    log: SubscriberId,
    mut status: LogStatus,
) -> Result<Option<LogEntry>, LogError> {
    if status.backlog() == 0 {
        return Ok(None);
    }
    let mut reader = alerts
        .reader(log, (status.acked + 1).max(status.first_retained))
        .await?;
    loop {
        tokio::select! {
            entries = reader.next(1) => return Ok(entries?.into_iter().next()),
            () = tokio::time::sleep(BACKLOG_RECHECK) => {
                status = alerts.status(log).await?;
                if status.backlog() == 0 {
                    return Ok(None);
                }
            }
        }
    }
}

/// A list request's `limit`, with 0 meaning the default.
pub(crate) fn limit_or_default(limit: u32) -> usize {
    if limit == 0 {
        DEFAULT_LIST_LIMIT
    } else {
        limit as usize
    }
}

/// What `GetDeviceState` answers for `device`, given its open outages: the outages, the
/// registry's MPAN and GSP group, and the subscriber its alerts route to.
pub(crate) fn device_state(
    device: DeviceId,
    outages: &[(SupplyPoint, OpenOutage)],
    router: &Router,
    debounce: std::time::Duration,
) -> proto::GetDeviceStateResponse {
    let mut response = proto::GetDeviceStateResponse {
        device_id: device.to_string(),
        outages: outages
            .iter()
            .map(|(p, o)| outage_to_proto(p, o, debounce))
            .collect(),
        ..Default::default()
    };
    if let Some(entry) = router.registry().get(device) {
        response.mpan_core = entry.mpan.to_string();
        response.gsp_group = entry.gsp.to_string();
    }
    let event_mpan = outages.iter().find_map(|(_, outage)| outage.mpan);
    if let Ok(route) = router.route(device, event_mpan) {
        response.subscriber = router.table().name(route.subscriber).to_owned();
    }
    response
}

/// A parked log entry as `ListParkedAlerts` shows it, with why it was parked.
pub(crate) fn parked_to_proto(entry: &LogEntry) -> proto::ParkedAlert {
    proto::ParkedAlert {
        alert: Some(alert_to_proto(entry, "")),
        reason: match entry.destination {
            Destination::Parked(reason) => reason.to_string(),
            Destination::Routed(_) => String::new(),
        },
    }
}

/// An open outage as the Admin calls show it.
pub(crate) fn outage_to_proto(
    point: &SupplyPoint,
    outage: &OpenOutage,
    debounce: std::time::Duration,
) -> proto::OpenOutage {
    proto::OpenOutage {
        device_id: point.device.to_string(),
        phase: point.phase.to_proto(),
        state: match outage.state {
            OutageState::Pending => proto::OutageState::Pending,
            OutageState::Alerted => proto::OutageState::Alerted,
        } as i32,
        lost_at: Some(outage.lost_at.to_proto()),
        poa_due_at: Some(outage.lost_at.plus(debounce).to_proto()),
    }
}

/// Where `ReloadRegistry` may load a registry from: the configured file (`registry`) when the
/// request names none, else the file it names, which must resolve (symlinks and `..`
/// followed) to a file in the registry directory (`registry_dir`, else the directory of
/// `registry`) or to the configured file. A relative name is taken in the registry directory.
/// Anything else is `PERMISSION_DENIED`, the same whether the file exists or not.
#[derive(Debug, Clone, Default)]
pub struct RegistrySource {
    configured: Option<PathBuf>,
    dir: Option<PathBuf>,
}

impl RegistrySource {
    /// The registry file and directory of `config`.
    pub fn from_config(config: &Config) -> Self {
        let dir = config.registry_dir.clone().or_else(|| {
            config.registry.as_deref().map(|file| match file.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                _ => PathBuf::from("."),
            })
        });
        Self {
            configured: config.registry.clone(),
            dir,
        }
    }

    /// The file a reload naming `requested` loads (see the type's doc). Blocking: it reads
    /// the file system.
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, RelayError> {
        if requested.is_empty() {
            return self.configured.clone().ok_or_else(|| {
                RelayError::InvalidArgument(
                    "no registry file is configured; name one in `path`".into(),
                )
            });
        }
        let Some(dir) = &self.dir else {
            return Err(refused(
                requested,
                "no registry directory is configured (`registry_dir`, or `registry`)".into(),
            ));
        };
        let root = std::fs::canonicalize(dir).map_err(|err| {
            refused(
                requested,
                format!(
                    "the registry directory {} cannot be resolved: {err}",
                    dir.display()
                ),
            )
        })?;
        let outside = || {
            refused(
                requested,
                format!(
                    "it is not a file in the registry directory {}",
                    dir.display()
                ),
            )
        };
        let candidate = root.join(requested);
        match std::fs::canonicalize(&candidate) {
            Ok(resolved) if resolved.starts_with(&root) || self.is_configured(&resolved) => {
                Ok(resolved)
            }
            Ok(_) => Err(outside()),
            Err(err) => {
                // A missing file is named as such only inside the directory, so that a reload
                // cannot tell which files exist elsewhere.
                let in_dir = candidate
                    .parent()
                    .and_then(|parent| std::fs::canonicalize(parent).ok())
                    .is_some_and(|parent| parent.starts_with(&root));
                if in_dir {
                    Err(RelayError::InvalidArgument(format!(
                        "cannot read registry {requested:?}: {err}"
                    )))
                } else {
                    Err(outside())
                }
            }
        }
    }

    /// Whether `resolved` is the configured registry file.
    fn is_configured(&self, resolved: &Path) -> bool {
        self.configured
            .as_deref()
            .and_then(|file| std::fs::canonicalize(file).ok())
            .is_some_and(|file| file == resolved)
    }

    /// Refuses, off the async runtime, a reload of `requested` that [`Self::resolve`]
    /// refuses.
    pub async fn check(&self, requested: &str) -> Result<(), RelayError> {
        let (source, requested) = (self.clone(), requested.to_owned());
        tokio::task::spawn_blocking(move || source.resolve(&requested).map(drop))
            .await
            .map_err(|err| RelayError::Unavailable(format!("registry path task failed: {err}")))?
    }
}

/// A reload of `requested` refused, logged as such.
fn refused(requested: &str, why: String) -> RelayError {
    tracing::warn!(path = ?requested, %why, "registry reload refused");
    RelayError::PermissionDenied(format!("ReloadRegistry may not load {requested:?}: {why}"))
}

/// Loads the registry a `ReloadRegistry` names (`requested`), or the configured one when it
/// names none, from where `source` allows, off the async runtime.
pub async fn load_registry(
    requested: &str,
    source: &RegistrySource,
) -> Result<Registry, RelayError> {
    let (source, requested) = (source.clone(), requested.to_owned());
    tokio::task::spawn_blocking(move || {
        let path = source.resolve(&requested)?;
        Registry::load(&path).map_err(|err| RelayError::InvalidArgument(err.to_string()))
    })
    .await
    .map_err(|err| RelayError::Unavailable(format!("registry load task failed: {err}")))?
}

/// The stream `ListDeliveries` answers with.
pub type DeliveriesStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<proto::ListDeliveriesResponse, Status>> + Send>,
>;

/// The time `ts` names, or `default` when unset; an invalid one is `INVALID_ARGUMENT`.
fn time_or(
    ts: Option<&prost_types::Timestamp>,
    default: UtcMillis,
    what: &str,
) -> Result<UtcMillis, RelayError> {
    ts.map_or(Ok(default), |ts| {
        UtcMillis::from_proto(ts)
            .ok_or_else(|| RelayError::InvalidArgument(format!("`{what}` is not a valid time")))
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    type ListDeliveriesStream = DeliveriesStream;

    async fn list_deliveries(
        &self,
        request: Request<proto::ListDeliveriesRequest>,
    ) -> Result<Response<Self::ListDeliveriesStream>, Status> {
        use futures::StreamExt;
        let request = request.into_inner();
        let from = time_or(request.from.as_ref(), UtcMillis(i64::MIN), "from")?;
        let to = time_or(request.to.as_ref(), UtcMillis(i64::MAX), "to")?;
        if from > to {
            return Err(
                RelayError::InvalidArgument(format!("`from` {from} is after `to` {to}")).into(),
            );
        }
        let logs = self.logs(&request.subscriber)?;
        let table = Arc::clone(self.delivery.table());
        let alerts = Arc::clone(self.delivery.alerts());
        let stream = futures::stream::iter(logs)
            .then(move |log| {
                let (alerts, name) = (Arc::clone(&alerts), table.name(log).to_owned());
                async move {
                    let answers: Vec<Result<proto::ListDeliveriesResponse, Status>> =
                        match alerts.deliveries(log, from, to).await {
                            Ok(found) => found
                                .chunks(wire::PER_MESSAGE)
                                .map(|chunk| {
                                    Ok(proto::ListDeliveriesResponse {
                                        deliveries: chunk
                                            .iter()
                                            .map(|d| wire::to_proto(&name, d))
                                            .collect(),
                                    })
                                })
                                .collect(),
                            Err(err) => vec![Err(RelayError::from(err).into())],
                        };
                    futures::stream::iter(answers)
                }
            })
            .flatten();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_device_state(
        &self,
        request: Request<proto::GetDeviceStateRequest>,
    ) -> Result<Response<proto::GetDeviceStateResponse>, Status> {
        let device = DeviceId::from_str(&request.into_inner().device_id)
            .map_err(|err| RelayError::InvalidArgument(err.to_string()))?;
        let partition = partition_of(device, self.owners.partitions());
        let answer = self.ask(partition, OwnerQuery::Device(device)).await?;
        Ok(Response::new(device_state(
            device,
            &answer.outages,
            &self.router,
            self.debounce,
        )))
    }

    async fn list_open_outages(
        &self,
        request: Request<proto::ListOpenOutagesRequest>,
    ) -> Result<Response<proto::ListOpenOutagesResponse>, Status> {
        let limit = limit_or_default(request.into_inner().limit);
        let answers = futures::future::try_join_all(
            (0..self.owners.partitions())
                .map(|partition| self.ask(partition, OwnerQuery::Outages { limit })),
        )
        .await?;
        let total = answers.iter().map(|answer| answer.total).sum();
        let mut outages: Vec<(SupplyPoint, OpenOutage)> = answers
            .into_iter()
            .flat_map(|answer| answer.outages)
            .collect();
        outages.sort_by_key(|(point, outage)| (outage.lost_at, *point));
        outages.truncate(limit);
        Ok(Response::new(proto::ListOpenOutagesResponse {
            outages: outages
                .iter()
                .map(|(p, o)| outage_to_proto(p, o, self.debounce))
                .collect(),
            total,
        }))
    }

    async fn list_parked_alerts(
        &self,
        request: Request<proto::ListParkedAlertsRequest>,
    ) -> Result<Response<proto::ListParkedAlertsResponse>, Status> {
        let limit = limit_or_default(request.into_inner().limit);
        let (entries, total) = self
            .delivery
            .alerts()
            .list_parked(limit)
            .await
            .map_err(RelayError::from)?;
        Ok(Response::new(proto::ListParkedAlertsResponse {
            alerts: entries.iter().map(parked_to_proto).collect(),
            total,
        }))
    }

    async fn reload_registry(
        &self,
        request: Request<proto::ReloadRegistryRequest>,
    ) -> Result<Response<proto::ReloadRegistryResponse>, Status> {
        let request = request.into_inner();
        // Refused here before any instance is asked; each instance checks again against its
        // own configuration when it loads.
        self.registry.check(&request.path).await?;
        Ok(Response::new(self.peers.reload(request).await?))
    }

    async fn get_delivery_status(
        &self,
        request: Request<proto::GetDeliveryStatusRequest>,
    ) -> Result<Response<proto::GetDeliveryStatusResponse>, Status> {
        let logs = self.logs(&request.into_inner().subscriber)?;
        let mut subscribers = Vec::with_capacity(logs.len());
        for log in logs {
            subscribers.push(self.subscriber_status(log).await?);
        }
        Ok(Response::new(proto::GetDeliveryStatusResponse {
            subscribers,
        }))
    }

    async fn get_cluster_status(
        &self,
        _request: Request<proto::GetClusterStatusRequest>,
    ) -> Result<Response<proto::GetClusterStatusResponse>, Status> {
        let view = self.ownership.view();
        Ok(Response::new(proto::GetClusterStatusResponse {
            backend: view.backend,
            instance: view.instance,
            partitions: u32::from(view.partitions),
            live_instances: view.live,
            owned_here: view.owned_here.into_iter().map(u32::from).collect(),
            owners: view
                .owners
                .into_iter()
                .map(|(partition, owner, lease_revision)| proto::PartitionOwner {
                    partition: u32::from(partition),
                    owner,
                    lease_revision,
                })
                .collect(),
        }))
    }
}

/// Reloads the registry on this instance: loads the file a request names (or the configured
/// one) from where `source` allows, swaps it in, and has every owner here route its parked
/// alerts again; answers with the device count and how many parked alerts found a subscriber.
pub fn reload_here(
    owners: Arc<Owners>,
    router: Arc<Router>,
    source: RegistrySource,
) -> crate::log::single::ReloadHere {
    Arc::new(move |request: proto::ReloadRegistryRequest| {
        let (owners, router, source) = (Arc::clone(&owners), Arc::clone(&router), source.clone());
        Box::pin(async move {
            let registry = load_registry(&request.path, &source).await?;
            let devices = router.replace_registry(registry) as u64;
            let moved = futures::future::try_join_all(
                owners
                    .serving()
                    .into_iter()
                    .map(|(_, owner)| async move { owner.unpark().await }),
            )
            .await?;
            let unparked = moved.into_iter().sum();
            tracing::info!(devices, unparked, "registry reloaded");
            Ok(proto::ReloadRegistryResponse { devices, unparked })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutingConfig;
    use crate::domain::{Alert, AlertKind, DeviceId, Phase, UtcMillis};
    use crate::log::conformance::route;
    use crate::log::memory::MemoryAlerts;
    use crate::route::RoutingTable;

    const LOG: SubscriberId = SubscriberId(0);
    const AT: UtcMillis = UtcMillis(1_764_000_000_000);

    fn alert(device: u64) -> Alert {
        Alert {
            kind: AlertKind::Outage,
            point: SupplyPoint {
                device: DeviceId(device),
                phase: Phase::Whole,
            },
            lost_at: AT,
            restored_at: None,
            due_at: AT.plus(std::time::Duration::from_secs(device)),
            deadline: AT.plus(std::time::Duration::from_secs(60)),
            emitted_at: AT,
            received_at: AT,
            learned_late: false,
            event_mpan: None,
        }
    }

    async fn log_with_two_alerts() -> MemoryAlerts {
        let table = RoutingTable::from_config(&RoutingConfig::default());
        let alerts = MemoryAlerts::new(&table);
        alerts
            .append(vec![(alert(1), route(LOG)), (alert(2), route(LOG))])
            .await
            .expect("append");
        alerts
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_unacknowledged_alert_is_the_one_after_the_cursor() {
        let alerts = log_with_two_alerts().await;
        alerts.ack(LOG, 1, UtcMillis(0)).await.expect("ack");
        let status = alerts.status(LOG).await.expect("status");
        let oldest = oldest_unacked(&alerts, LOG, status)
            .await
            .expect("read")
            .expect("a backlog of one");
        assert_eq!(
            (oldest.sequence, oldest.alert.point.device),
            (2, DeviceId(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_acknowledged_while_it_is_read_answers_none_instead_of_waiting() {
        let alerts = log_with_two_alerts().await;
        let before = alerts.status(LOG).await.expect("status");
        assert_eq!(before.backlog(), 2);
        alerts.ack(LOG, 2, UtcMillis(0)).await.expect("ack");
        let oldest = oldest_unacked(&alerts, LOG, before).await.expect("read");
        assert!(oldest.is_none(), "{oldest:?}");
    }

    fn source(registry: Option<&Path>, dir: Option<&Path>) -> RegistrySource {
        RegistrySource::from_config(&Config {
            registry: registry.map(Path::to_owned),
            registry_dir: dir.map(Path::to_owned),
            ..Config::default()
        })
    }

    #[test]
    fn the_registry_directory_is_registry_dir_else_the_registry_files_own() {
        let (etc, srv) = (Path::new("/etc/relay"), Path::new("/srv/registries"));
        let file = etc.join("registry.csv");
        assert_eq!(source(Some(&file), None).dir.as_deref(), Some(etc));
        assert_eq!(source(Some(&file), Some(srv)).dir.as_deref(), Some(srv));
        assert_eq!(source(None, Some(srv)).dir.as_deref(), Some(srv));
        let bare = source(Some(Path::new("registry.csv")), None);
        assert_eq!(bare.dir.as_deref(), Some(Path::new(".")));
        assert_eq!(source(None, None).dir, None);
    }

    #[test]
    fn without_a_registry_directory_only_the_configured_file_reloads() {
        let none = source(None, None);
        assert!(matches!(
            none.resolve(""),
            Err(RelayError::InvalidArgument(_))
        ));
        assert!(matches!(
            none.resolve("registry.csv"),
            Err(RelayError::PermissionDenied(_))
        ));
        let file = Path::new("/etc/relay/registry.csv");
        assert_eq!(
            source(Some(file), None).resolve("").ok().as_deref(),
            Some(file)
        );
    }

    #[test]
    fn the_configured_file_may_be_named_even_when_it_links_elsewhere() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (registries, elsewhere) = (dir.path().join("registries"), dir.path().join("data"));
        for made in [&registries, &elsewhere] {
            std::fs::create_dir(made).expect("make a directory");
        }
        std::fs::write(
            elsewhere.join("registry.csv"),
            "device_id,mpan_core,gsp_group\n",
        )
        .expect("write");
        let configured = registries.join("registry.csv");
        std::os::unix::fs::symlink(elsewhere.join("registry.csv"), &configured).expect("link");
        let source = source(Some(&configured), None);
        let real = std::fs::canonicalize(elsewhere.join("registry.csv")).expect("resolves");
        assert_eq!(source.resolve("registry.csv").ok(), Some(real.clone()));
        let named = real.display().to_string();
        assert_eq!(source.resolve(&named).ok(), Some(real));
    }
}
