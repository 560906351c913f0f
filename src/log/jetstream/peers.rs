//! Other instances, over NATS request/reply: questions for the owner of a partition, and
//! registry reloads on every live instance.
//!
//! - **Owner queries.** A supply point's state lives in the memory of the one instance that
//!   owns its partition, so `Admin.GetDeviceState` and `ListOpenOutages` ask it on
//!   `{P}.query.<partition>`. Every instance listens on `{P}.query.*` and answers for the
//!   partitions whose owner serves here (once its replay is over); a partition with no owner
//!   at the moment (being taken over) gets no answer, and the call is `UNAVAILABLE` after
//!   [`ANSWER_TIMEOUT`], to be retried. Payloads (little-endian): a query is tag 1 and a
//!   device u64, or tag 2 and a limit u32; an answer is the total u64, a count u32, then per
//!   outage the device u64, phase u8 and open outage of `log::codec`.
//! - **Registry reloads.** The instance called publishes the request on
//!   `{P}.control.reload` with a reply inbox; every instance (itself included) reloads the
//!   file the request names, or its own configured one, has its owners route their parked
//!   alerts again (in their own loops, keeping each point's alerts in order), and replies with
//!   the device count, or why it could not. The call succeeds when every live instance
//!   confirmed.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::ownership::JsOwnership;
use crate::domain::DeviceId;
use crate::error::RelayError;
use crate::log::codec::{Corrupt, Reader, decode_outage, encode_outage, push_point};
use crate::log::single::ReloadHere;
use crate::log::{OwnerAnswer, OwnerQuery, Partition, Peers};
use crate::owner::Owners;
use crate::proto;

/// How long an Admin call waits for a partition owner's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the instance called waits for every live instance to confirm a reload.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);
/// Header naming the instance that replies.
const INSTANCE: &str = "Outage-Relay-Instance";
/// Header carrying why an instance could not reload.
const ERROR: &str = "Outage-Relay-Error";

fn encode_query(query: OwnerQuery) -> Vec<u8> {
    match query {
        OwnerQuery::Device(device) => {
            let mut out = vec![1];
            out.extend_from_slice(&device.0.to_le_bytes());
            out
        }
        OwnerQuery::Outages { limit } => {
            let mut out = vec![2];
            out.extend_from_slice(&u32::try_from(limit).unwrap_or(u32::MAX).to_le_bytes());
            out
        }
    }
}

fn decode_query(bytes: &[u8]) -> Result<OwnerQuery, Corrupt> {
    let mut r = Reader::new(bytes, "owner query");
    let query = match r.u8()? {
        1 => OwnerQuery::Device(DeviceId(r.u64()?)),
        2 => OwnerQuery::Outages {
            limit: r.u32()? as usize,
        },
        _ => return Err(Corrupt("owner query")),
    };
    r.done()?;
    Ok(query)
}

fn encode_answer(answer: &OwnerAnswer) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + answer.outages.len() * 34);
    out.extend_from_slice(&answer.total.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(answer.outages.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (point, outage) in &answer.outages {
        push_point(&mut out, *point);
        out.extend_from_slice(&encode_outage(outage));
    }
    out
}

fn decode_answer(bytes: &[u8]) -> Result<OwnerAnswer, Corrupt> {
    let mut r = Reader::new(bytes, "owner answer");
    let total = r.u64()?;
    let count = r.u32()? as usize;
    let mut outages = Vec::with_capacity(count.min(bytes.len() / 34));
    for _ in 0..count {
        let point = r.point()?;
        outages.push((point, decode_outage(&r.take::<25>()?)?));
    }
    r.done()?;
    Ok(OwnerAnswer { outages, total })
}

/// The other instances of a cluster.
pub struct JsPeers {
    cluster: Arc<Cluster>,
    ownership: Arc<JsOwnership>,
}

impl std::fmt::Debug for JsPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsPeers").finish_non_exhaustive()
    }
}

impl JsPeers {
    /// The cluster the peers share.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Peers in `cluster`; `ownership` knows which instances are live.
    pub fn new(cluster: Arc<Cluster>, ownership: Arc<JsOwnership>) -> Self {
        Self { cluster, ownership }
    }

    /// Answers other instances until `stop`: owner queries for the partitions served here
    /// (by `owners`), and reload requests (through `reload_here`).
    pub async fn serve(
        self: Arc<Self>,
        owners: Arc<Owners>,
        reload_here: ReloadHere,
        stop: CancellationToken,
    ) {
        let client = self.cluster.js.client();
        let subscriptions = futures::future::try_join(
            client.subscribe(self.cluster.names.query_subjects()),
            client.subscribe(self.cluster.names.reload_subject()),
        )
        .await;
        let (mut queries, mut reloads) = match subscriptions {
            Ok(subscriptions) => subscriptions,
            Err(err) => {
                tracing::error!(%err, "cannot listen to other instances; Admin calls and reloads will not reach this one");
                return;
            }
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(query) = queries.next() => {
                    let (client, owners) = (client.clone(), Arc::clone(&owners));
                    tokio::spawn(answer_query(client, owners, query));
                }
                Some(request) = reloads.next() => {
                    self.reload_here(&client, &reload_here, request).await;
                }
            }
        }
    }

    async fn reload_here(
        &self,
        client: &async_nats::Client,
        reload_here: &ReloadHere,
        request: async_nats::Message,
    ) {
        let Some(reply) = request.reply else {
            return;
        };
        let mut headers = HeaderMap::new();
        headers.insert(INSTANCE, self.cluster.instance.as_str());
        let decoded = proto::ReloadRegistryRequest::decode(request.payload).unwrap_or_default();
        let payload = match reload_here(decoded).await {
            Ok(response) => response.encode_to_vec(),
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

/// Answers one owner query, if the partition's owner serves here.
async fn answer_query(client: async_nats::Client, owners: Arc<Owners>, query: async_nats::Message) {
    let Some(reply) = query.reply else { return };
    let partition = query
        .subject
        .rsplit('.')
        .next()
        .and_then(|p| p.parse::<Partition>().ok());
    let (Some(partition), Ok(question)) = (partition, decode_query(&query.payload)) else {
        return;
    };
    let Some(owner) = owners.get(partition) else {
        return;
    };
    let Ok(answer) = owner.ask(question).await else {
        return;
    };
    if let Err(err) = client
        .publish(reply, Bytes::from(encode_answer(&answer)))
        .await
    {
        tracing::debug!(partition, %err, "cannot answer a query");
    }
}

#[async_trait]
impl Peers for JsPeers {
    async fn ask(
        &self,
        partition: Partition,
        query: OwnerQuery,
    ) -> Result<OwnerAnswer, RelayError> {
        let subject = self.cluster.names.query_subject(partition);
        let client = self.cluster.js.client();
        let request = client.request(subject, Bytes::from(encode_query(query)));
        let reply = match tokio::time::timeout(ANSWER_TIMEOUT, request).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) if err.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(RelayError::Unavailable(format!(
                    "partition {partition} has no owner at the moment (it is being taken over); retry"
                )));
            }
            Ok(Err(err)) => {
                return Err(RelayError::Unavailable(format!(
                    "asking the owner of partition {partition}: {err}"
                )));
            }
            Err(_) => {
                return Err(RelayError::Unavailable(format!(
                    "partition {partition} has no owner at the moment (it is being taken over, or replaying); retry"
                )));
            }
        };
        decode_answer(&reply.payload).map_err(|err| {
            RelayError::Unavailable(format!(
                "the owner of partition {partition} answered something unreadable: {err}"
            ))
        })
    }

    async fn reload(
        &self,
        request: proto::ReloadRegistryRequest,
    ) -> Result<proto::ReloadRegistryResponse, RelayError> {
        let mut live = self.ownership.live();
        if !live.contains(&self.cluster.instance) {
            live.push(self.cluster.instance.clone());
        }
        reload_everywhere(&self.cluster, &request, &live).await
    }
}

/// Asks every instance in `live` to reload; succeeds once all of them confirmed.
async fn reload_everywhere(
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
    let mut unparked = 0;
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
                    unparked += response.unparked;
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
    Ok(proto::ReloadRegistryResponse { devices, unparked })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debounce::{OpenOutage, OutageState};
    use crate::domain::{Phase, SupplyPoint, UtcMillis};

    #[test]
    fn queries_and_answers_read_back_as_written() {
        for query in [
            OwnerQuery::Device(DeviceId(0x00db_1234)),
            OwnerQuery::Outages { limit: 7 },
        ] {
            assert_eq!(decode_query(&encode_query(query)), Ok(query));
        }
        let answer = OwnerAnswer {
            outages: vec![(
                SupplyPoint {
                    device: DeviceId(3),
                    phase: Phase::L1,
                },
                OpenOutage {
                    lost_at: UtcMillis(5),
                    received_at: UtcMillis(6),
                    state: OutageState::Alerted,
                    mpan: None,
                },
            )],
            total: 9,
        };
        assert_eq!(decode_answer(&encode_answer(&answer)), Ok(answer));
        assert!(decode_query(&[3]).is_err());
        assert!(decode_answer(&[1, 2, 3]).is_err());
    }
}
