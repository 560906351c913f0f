//! The `Admin` gRPC service: what operators ask of a running relay.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::commit::CommitHandle;
use crate::debounce::{OpenOutage, OutageState, ShardHandle, shard::OutageListing, shard_of};
use crate::deliver::Delivery;
use crate::deliver::convert::alert_to_proto;
use crate::domain::{DeviceId, SupplyPoint};
use crate::error::RelayError;
use crate::proto::{self, admin_server::Admin};
use crate::route::{Registry, Router};
use crate::store::{Destination, LogEntry, LogId};

const DEFAULT_LIST_LIMIT: usize = 1000;

/// The service.
#[derive(Debug, Clone)]
pub struct AdminService {
    shards: Arc<[ShardHandle]>,
    delivery: Arc<Delivery>,
    commit: CommitHandle,
    router: Arc<Router>,
    registry_path: Option<PathBuf>,
    debounce: std::time::Duration,
    backend: &'static str,
}

impl AdminService {
    /// An admin service over the running stages.
    pub fn new(
        shards: Arc<[ShardHandle]>,
        delivery: Arc<Delivery>,
        commit: CommitHandle,
        router: Arc<Router>,
        registry_path: Option<PathBuf>,
        debounce: std::time::Duration,
        backend: &'static str,
    ) -> Self {
        Self {
            shards,
            delivery,
            commit,
            router,
            registry_path,
            debounce,
            backend,
        }
    }

    fn subscriber_status(&self, log: LogId) -> Result<proto::SubscriberStatus, RelayError> {
        let LogId::Subscriber(id) = log else {
            return Err(RelayError::NotFound(
                "the parked log is not a subscriber".into(),
            ));
        };
        let table = self.delivery.table();
        let status = self.delivery.status(log);
        let oldest = self.delivery.read_unacked(log, 1)?;
        Ok(proto::SubscriberStatus {
            subscriber: table.name(id).to_owned(),
            distributor_ids: table
                .distributor_ids(id)
                .iter()
                .map(|d| u32::from(d.0))
                .collect(),
            mode: if table.push_endpoint(id).is_some() {
                "push"
            } else {
                "subscribe"
            }
            .into(),
            head_sequence: status.head,
            acked_sequence: status.acked,
            backlog: status.backlog(),
            connected: self.delivery.connected(log),
            oldest_unacked_due_at: oldest.first().map(|e| e.alert.due_at.to_proto()),
            last_error: self.delivery.last_error(log),
            sla_breaches: self.delivery.breaches(log),
        })
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

/// Loads the registry a `ReloadRegistry` names (`requested`), or the configured one when it
/// names none, off the async runtime.
pub async fn load_registry(
    requested: &str,
    configured: Option<&std::path::Path>,
) -> Result<Registry, RelayError> {
    let path = if requested.is_empty() {
        configured.map(PathBuf::from).ok_or_else(|| {
            RelayError::InvalidArgument("no registry file is configured; name one in `path`".into())
        })?
    } else {
        PathBuf::from(requested)
    };
    let loaded = tokio::task::spawn_blocking(move || Registry::load(&path))
        .await
        .map_err(|err| RelayError::Unavailable(format!("registry load task failed: {err}")))?;
    loaded.map_err(|err| RelayError::InvalidArgument(err.to_string()))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_device_state(
        &self,
        request: Request<proto::GetDeviceStateRequest>,
    ) -> Result<Response<proto::GetDeviceStateResponse>, Status> {
        let device = DeviceId::from_str(&request.into_inner().device_id)
            .map_err(|err| RelayError::InvalidArgument(err.to_string()))?;
        let shard = &self.shards[shard_of(device, self.shards.len())];
        let listing = shard.outages(Some(device), usize::MAX).await?;
        Ok(Response::new(device_state(
            device,
            &listing.outages,
            &self.router,
            self.debounce,
        )))
    }

    async fn list_open_outages(
        &self,
        request: Request<proto::ListOpenOutagesRequest>,
    ) -> Result<Response<proto::ListOpenOutagesResponse>, Status> {
        let limit = limit_or_default(request.into_inner().limit);
        let listings =
            futures::future::try_join_all(self.shards.iter().map(|s| s.outages(None, limit)))
                .await?;
        let debounce = self.debounce;
        let total: usize = listings.iter().map(|l| l.total).sum();
        let mut outages: Vec<_> = listings
            .into_iter()
            .flat_map(|l: OutageListing| l.outages)
            .collect();
        outages.sort_by_key(|(point, outage)| (outage.lost_at, *point));
        outages.truncate(limit);
        Ok(Response::new(proto::ListOpenOutagesResponse {
            outages: outages
                .iter()
                .map(|(p, o)| outage_to_proto(p, o, debounce))
                .collect(),
            total: total as u64,
        }))
    }

    async fn list_parked_alerts(
        &self,
        request: Request<proto::ListParkedAlertsRequest>,
    ) -> Result<Response<proto::ListParkedAlertsResponse>, Status> {
        let limit = limit_or_default(request.into_inner().limit);
        let status = self.delivery.status(LogId::Parked);
        let entries = self
            .delivery
            .read_unacked(LogId::Parked, limit)
            .map_err(RelayError::from)?;
        let alerts = entries.iter().map(parked_to_proto).collect();
        Ok(Response::new(proto::ListParkedAlertsResponse {
            alerts,
            total: status.backlog(),
        }))
    }

    async fn reload_registry(
        &self,
        request: Request<proto::ReloadRegistryRequest>,
    ) -> Result<Response<proto::ReloadRegistryResponse>, Status> {
        let registry =
            load_registry(&request.into_inner().path, self.registry_path.as_deref()).await?;
        let devices = registry.len() as u64;
        let unparked = self
            .commit
            .reload(registry)
            .await
            .map_err(RelayError::from)?;
        tracing::info!(devices, unparked, "registry reloaded");
        Ok(Response::new(proto::ReloadRegistryResponse {
            devices,
            unparked,
        }))
    }

    async fn get_delivery_status(
        &self,
        request: Request<proto::GetDeliveryStatusRequest>,
    ) -> Result<Response<proto::GetDeliveryStatusResponse>, Status> {
        let wanted = request.into_inner().subscriber;
        let table = self.delivery.table();
        let logs: Vec<LogId> = if wanted.is_empty() {
            table.iter().map(|(id, _)| LogId::Subscriber(id)).collect()
        } else {
            let id = table
                .id_of(&wanted)
                .ok_or_else(|| RelayError::NotFound(format!("unknown subscriber {wanted:?}")))?;
            vec![LogId::Subscriber(id)]
        };
        let subscribers = logs
            .into_iter()
            .map(|log| self.subscriber_status(log))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(proto::GetDeliveryStatusResponse {
            subscribers,
        }))
    }

    async fn get_cluster_status(
        &self,
        _request: Request<proto::GetClusterStatusRequest>,
    ) -> Result<Response<proto::GetClusterStatusResponse>, Status> {
        Ok(Response::new(proto::GetClusterStatusResponse {
            backend: self.backend.to_owned(),
            instance: String::new(),
            partitions: 0,
            live_instances: Vec::new(),
            owned_here: Vec::new(),
            owners: Vec::new(),
        }))
    }
}
