//! Registry reloads across the instances: `Admin.ReloadRegistry` on any instance reloads the
//! device registry on every live one, so every partition owner routes with the same registry,
//! and each owner then routes its partitions' parked alerts again.
//!
//! The instance called publishes the request on `{prefix}.control.reload` with a reply inbox;
//! every instance (itself included) loads the registry file the request names, or its own
//! configured one, swaps it in, wakes its partitions (which re-route their parked alerts in
//! their own loop, keeping each point's alerts in order) and replies with the number of
//! devices or the reason it could not. The call succeeds when every live instance confirmed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::admin::load_registry;
use crate::error::RelayError;
use crate::proto;
use crate::route::Router;

/// Header naming the instance that replies.
const INSTANCE: &str = "Outage-Relay-Instance";
/// Header carrying why an instance could not reload.
const ERROR: &str = "Outage-Relay-Error";
/// How long the instance called waits for every live instance to confirm.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// Answers reload requests until `stop`: loads, swaps in, moves `reloaded` (the partitions
/// watch it) and replies.
pub async fn listen(
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    reloaded: watch::Sender<u64>,
    configured: Option<PathBuf>,
    stop: CancellationToken,
) {
    let client = cluster.js.client();
    let mut requests = match client.subscribe(cluster.names.reload_subject()).await {
        Ok(requests) => requests,
        Err(err) => {
            tracing::error!(%err, "cannot listen for registry reloads; ReloadRegistry will not reach this instance");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            () = stop.cancelled() => return,
            request = requests.next() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let Some(reply) = request.reply else {
            continue;
        };
        let mut headers = HeaderMap::new();
        headers.insert(INSTANCE, cluster.instance.as_str());
        let path = proto::ReloadRegistryRequest::decode(request.payload)
            .map(|request| request.path)
            .unwrap_or_default();
        let payload = match load_registry(&path, configured.as_deref()).await {
            Ok(registry) => {
                let devices = router.replace_registry(registry) as u64;
                reloaded.send_modify(|generation| *generation += 1);
                tracing::info!(devices, "registry reloaded; parked alerts are routed again");
                proto::ReloadRegistryResponse {
                    devices,
                    unparked: 0,
                }
                .encode_to_vec()
            }
            Err(err) => {
                tracing::warn!(%err, "registry reload refused");
                headers.insert(ERROR, err.to_string().as_str());
                Vec::new()
            }
        };
        if let Err(err) = client
            .publish_with_headers(reply, headers, Bytes::from(payload))
            .await
        {
            tracing::warn!(%err, "cannot confirm a registry reload");
        }
    }
}

/// Asks every instance in `live` to reload; succeeds once all of them confirmed.
pub async fn reload_everywhere(
    cluster: &Cluster,
    request: &proto::ReloadRegistryRequest,
    live: &[String],
) -> Result<proto::ReloadRegistryResponse, RelayError> {
    let client = cluster.js.client();
    let unavailable = |err: String| RelayError::Unavailable(format!("registry reload: {err}"));
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    client
        .publish_with_reply(
            cluster.names.reload_subject(),
            inbox,
            Bytes::from(request.encode_to_vec()),
        )
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    let mut waiting: Vec<&str> = live.iter().map(String::as_str).collect();
    let mut devices = 0;
    let mut refusals = Vec::new();
    let deadline = tokio::time::Instant::now() + CONFIRM_WITHIN;
    while !waiting.is_empty() {
        let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await else {
            break;
        };
        let header = |name: &str| {
            reply
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        let instance = header(INSTANCE).unwrap_or_default();
        waiting.retain(|live| *live != instance);
        match header(ERROR) {
            Some(error) => refusals.push(format!("{instance}: {error}")),
            None => {
                if let Ok(response) = proto::ReloadRegistryResponse::decode(reply.payload) {
                    devices = devices.max(response.devices);
                }
            }
        }
    }
    if !refusals.is_empty() {
        return Err(RelayError::InvalidArgument(format!(
            "registry not reloaded on {}",
            refusals.join("; ")
        )));
    }
    if !waiting.is_empty() {
        return Err(unavailable(format!(
            "no confirmation within {CONFIRM_WITHIN:?} from {}; call again (reloading twice is harmless)",
            waiting.join(", ")
        )));
    }
    Ok(proto::ReloadRegistryResponse {
        devices,
        unparked: 0,
    })
}
