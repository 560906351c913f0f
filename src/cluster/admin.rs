//! `Admin` with the JetStream backend: delivery status from the shared streams and cursors,
//! partition ownership, and registry reloads (per instance). Device state and parked alerts
//! live in the owners' partitions and are not served yet.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Cluster;
use super::feed::{bounds, cursor};
use super::leases::OwnershipView;
use super::push::PushSessions;
use crate::admin::load_registry;
use crate::error::RelayError;
use crate::proto::{self, admin_server::Admin};
use crate::route::Router;

/// The service.
#[derive(Clone)]
pub struct ClusterAdmin {
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    view: Arc<OwnershipView>,
    push: Arc<PushSessions>,
    registry_path: Option<PathBuf>,
}

impl ClusterAdmin {
    /// Admin over the cluster and this instance's view of ownership.
    pub fn new(
        cluster: Arc<Cluster>,
        router: Arc<Router>,
        view: Arc<OwnershipView>,
        push: Arc<PushSessions>,
        registry_path: Option<PathBuf>,
    ) -> Self {
        Self {
            cluster,
            router,
            view,
            push,
            registry_path,
        }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not available with store.backend = \"jetstream\" yet"
    ))
}

#[tonic::async_trait]
impl Admin for ClusterAdmin {
    async fn get_device_state(
        &self,
        _request: Request<proto::GetDeviceStateRequest>,
    ) -> Result<Response<proto::GetDeviceStateResponse>, Status> {
        Err(not_yet("GetDeviceState"))
    }

    async fn list_open_outages(
        &self,
        _request: Request<proto::ListOpenOutagesRequest>,
    ) -> Result<Response<proto::ListOpenOutagesResponse>, Status> {
        Err(not_yet("ListOpenOutages"))
    }

    async fn list_parked_alerts(
        &self,
        _request: Request<proto::ListParkedAlertsRequest>,
    ) -> Result<Response<proto::ListParkedAlertsResponse>, Status> {
        Err(not_yet("ListParkedAlerts"))
    }

    async fn reload_registry(
        &self,
        request: Request<proto::ReloadRegistryRequest>,
    ) -> Result<Response<proto::ReloadRegistryResponse>, Status> {
        let registry =
            load_registry(&request.into_inner().path, self.registry_path.as_deref()).await?;
        let devices = self.router.replace_registry(registry) as u64;
        tracing::info!(devices, "registry reloaded on this instance");
        Ok(Response::new(proto::ReloadRegistryResponse {
            devices,
            unparked: 0,
        }))
    }

    async fn get_delivery_status(
        &self,
        request: Request<proto::GetDeliveryStatusRequest>,
    ) -> Result<Response<proto::GetDeliveryStatusResponse>, Status> {
        let wanted = request.into_inner().subscriber;
        let table = self.router.table();
        if !wanted.is_empty() && table.id_of(&wanted).is_none() {
            return Err(RelayError::NotFound(format!("unknown subscriber {wanted:?}")).into());
        }
        let mut subscribers = Vec::new();
        for (id, name) in table.iter() {
            if !wanted.is_empty() && wanted != name {
                continue;
            }
            let bounds = bounds(&self.cluster, name).await?;
            let (acked, _) = cursor(&self.cluster.cursors, name).await?;
            let push = table.push_endpoint(id).is_some();
            let session = self.push.state(name);
            subscribers.push(proto::SubscriberStatus {
                subscriber: name.to_owned(),
                distributor_ids: table
                    .distributor_ids(id)
                    .iter()
                    .map(|d| u32::from(d.0))
                    .collect(),
                mode: if push { "push" } else { "subscribe" }.into(),
                head_sequence: bounds.last,
                acked_sequence: acked,
                backlog: bounds.last.saturating_sub(acked),
                connected: u32::from(session.connected),
                last_error: session.last_error,
                ..Default::default()
            });
        }
        Ok(Response::new(proto::GetDeliveryStatusResponse {
            subscribers,
        }))
    }

    async fn get_cluster_status(
        &self,
        _request: Request<proto::GetClusterStatusRequest>,
    ) -> Result<Response<proto::GetClusterStatusResponse>, Status> {
        let owners = self.view.owners();
        Ok(Response::new(proto::GetClusterStatusResponse {
            backend: "jetstream".into(),
            instance: self.cluster.instance.clone(),
            partitions: u32::from(self.cluster.settings.partitions),
            live_instances: self.view.live(),
            owned_here: self.view.owned().into_iter().map(u32::from).collect(),
            owners: (0..self.cluster.settings.partitions)
                .map(|partition| {
                    let (owner, revision) = owners.get(&partition).cloned().unwrap_or_default();
                    proto::PartitionOwner {
                        partition: u32::from(partition),
                        owner,
                        lease_revision: revision,
                    }
                })
                .collect(),
        }))
    }
}
