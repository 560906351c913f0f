//! `Admin` with the JetStream backend: delivery status from the shared streams and cursors,
//! parked alerts from the parked stream, device state and open outages asked of the
//! partition owners ([`super::query`]), partition ownership, and registry reloads on every
//! live instance ([`super::registry`]).

use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Cluster;
use super::events::device_partition;
use super::feed::{StreamBounds, bounds, cursor};
use super::leases::OwnershipView;
use super::push::PushSessions;
use super::query;
use super::registry;
use super::sla;
use crate::admin::{limit_or_default, parked_to_proto};
use crate::domain::DeviceId;
use crate::error::RelayError;
use crate::log::LogEntry;
use crate::log::codec::decode_entry;
use crate::proto::{self, admin_server::Admin};
use crate::route::Router;

/// The service.
#[derive(Clone)]
pub struct ClusterAdmin {
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    view: Arc<OwnershipView>,
    push: Arc<PushSessions>,
}

impl ClusterAdmin {
    /// Admin over the cluster and this instance's view of ownership.
    pub fn new(
        cluster: Arc<Cluster>,
        router: Arc<Router>,
        view: Arc<OwnershipView>,
        push: Arc<PushSessions>,
    ) -> Self {
        Self {
            cluster,
            router,
            view,
            push,
        }
    }
}

/// `due_at` of a subscriber's oldest unacknowledged alert still retained, if any.
async fn oldest_unacked_due_at(
    cluster: &Cluster,
    subscriber: &str,
    acked: u64,
    bounds: StreamBounds,
) -> Result<Option<prost_types::Timestamp>, RelayError> {
    let oldest = (acked + 1).max(bounds.first);
    if oldest > bounds.last {
        return Ok(None);
    }
    let unavailable =
        |err: String| RelayError::Unavailable(format!("alert stream of {subscriber}: {err}"));
    let stream = cluster
        .js
        .get_stream(cluster.names.alerts_stream(subscriber))
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    let message = stream
        .get_raw_message(oldest)
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    let (alert, _) = decode_entry(&message.payload).map_err(|err| unavailable(err.to_string()))?;
    Ok(Some(alert.due_at.to_proto()))
}

/// The oldest `limit` parked alerts (alerts that routed to no subscriber) and how many the
/// parked stream holds.
async fn parked(
    cluster: &Cluster,
    limit: usize,
) -> Result<(Vec<proto::ParkedAlert>, u64), RelayError> {
    let unavailable = |err: String| RelayError::Unavailable(format!("parked alerts: {err}"));
    let mut stream = cluster
        .js
        .get_stream(cluster.names.parked_stream())
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    let info = stream
        .info()
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    let (first, last, total) = (
        info.state.first_sequence,
        info.state.last_sequence,
        info.state.messages,
    );
    let mut alerts = Vec::new();
    if total == 0 || limit == 0 {
        return Ok((alerts, total));
    }
    let mut messages = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            ..Default::default()
        })
        .await
        .map_err(|err| unavailable(err.to_string()))?
        .messages()
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    while alerts.len() < limit {
        let message = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|_| unavailable("the stream stopped answering".into()))?
            .ok_or_else(|| unavailable("the consumer ended".into()))?
            .map_err(|err| unavailable(err.to_string()))?;
        let sequence = message
            .info()
            .map_err(|err| unavailable(err.to_string()))?
            .stream_sequence;
        let (alert, destination) =
            decode_entry(&message.payload).map_err(|err| unavailable(err.to_string()))?;
        alerts.push(parked_to_proto(&LogEntry {
            sequence,
            alert,
            destination,
            emitted_by: None,
        }));
        if sequence >= last {
            break;
        }
    }
    Ok((alerts, total))
}

/// Bound on waiting for the next parked alert while listing.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[tonic::async_trait]
impl Admin for ClusterAdmin {
    async fn get_device_state(
        &self,
        request: Request<proto::GetDeviceStateRequest>,
    ) -> Result<Response<proto::GetDeviceStateResponse>, Status> {
        let request = request.into_inner();
        let device = DeviceId::from_str(&request.device_id)
            .map_err(|err| RelayError::InvalidArgument(err.to_string()))?;
        let partition = device_partition(device, self.cluster.settings.partitions);
        let state = query::ask(&self.cluster, partition, query::DEVICE, &request).await?;
        Ok(Response::new(state))
    }

    async fn list_open_outages(
        &self,
        request: Request<proto::ListOpenOutagesRequest>,
    ) -> Result<Response<proto::ListOpenOutagesResponse>, Status> {
        let request = request.into_inner();
        let limit = limit_or_default(request.limit);
        let answers =
            futures::future::join_all((0..self.cluster.settings.partitions).map(|partition| {
                query::ask::<proto::ListOpenOutagesResponse>(
                    &self.cluster,
                    partition,
                    query::OUTAGES,
                    &request,
                )
            }))
            .await;
        let mut total = 0;
        let mut outages = Vec::new();
        for answer in answers {
            let answer = answer?;
            total += answer.total;
            outages.extend(answer.outages);
        }
        outages.sort_by(|a, b| {
            let key = |o: &proto::OpenOutage| {
                let lost = o.lost_at.unwrap_or_default();
                (lost.seconds, lost.nanos)
            };
            key(a)
                .cmp(&key(b))
                .then_with(|| a.device_id.cmp(&b.device_id))
                .then_with(|| a.phase.cmp(&b.phase))
        });
        outages.truncate(limit);
        Ok(Response::new(proto::ListOpenOutagesResponse {
            outages,
            total,
        }))
    }

    async fn list_parked_alerts(
        &self,
        request: Request<proto::ListParkedAlertsRequest>,
    ) -> Result<Response<proto::ListParkedAlertsResponse>, Status> {
        let limit = limit_or_default(request.into_inner().limit);
        let (alerts, total) = parked(&self.cluster, limit).await?;
        Ok(Response::new(proto::ListParkedAlertsResponse {
            alerts,
            total,
        }))
    }

    async fn reload_registry(
        &self,
        request: Request<proto::ReloadRegistryRequest>,
    ) -> Result<Response<proto::ReloadRegistryResponse>, Status> {
        let mut live = self.view.live();
        if !live.contains(&self.cluster.instance) {
            live.push(self.cluster.instance.clone());
        }
        let response = registry::reload_everywhere(&self.cluster, request.get_ref(), &live).await?;
        Ok(Response::new(response))
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
                oldest_unacked_due_at: oldest_unacked_due_at(&self.cluster, name, acked, bounds)
                    .await?,
                sla_breaches: sla::breaches(&self.cluster.cursors, name).await?,
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
