//! Questions about open outages, answered by the partition owners: with the JetStream backend
//! a supply point's state lives in the memory of the one instance that owns its partition, so
//! `Admin.GetDeviceState` and `ListOpenOutages` ask the owners over NATS request/reply.
//!
//! Every partition task subscribes to `{prefix}.query.<partition>.<kind>` while it holds its
//! lease; `kind` is `device` (payload: a `GetDeviceStateRequest`, answered with a
//! `GetDeviceStateResponse`) or `outages` (a `ListOpenOutagesRequest`, answered with a
//! `ListOpenOutagesResponse` sorted by loss time). The payloads are the Admin API's own
//! protobuf messages. A partition with no owner at the moment (being taken over) has no
//! responder: the call is `UNAVAILABLE`, to be retried.

use std::str::FromStr;
use std::time::Duration;

use prost::Message as _;

use super::Cluster;
use crate::admin::{device_state, limit_or_default, outage_to_proto};
use crate::debounce::OpenOutage;
use crate::domain::{DeviceId, SupplyPoint};
use crate::error::RelayError;
use crate::proto;
use crate::route::Router;

/// Query kind: one device's state.
pub const DEVICE: &str = "device";
/// Query kind: open outages.
pub const OUTAGES: &str = "outages";

/// How long an Admin call waits for a partition owner's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The owner's answer to a query of `kind`, from its open outages; `None` for a query it
/// cannot read (unknown kind, undecodable payload).
pub fn answer<'a>(
    kind: &str,
    payload: &[u8],
    outages: impl Iterator<Item = (&'a SupplyPoint, &'a OpenOutage)>,
    router: &Router,
    debounce: Duration,
) -> Option<Vec<u8>> {
    match kind {
        DEVICE => {
            let request = proto::GetDeviceStateRequest::decode(payload).ok()?;
            let device = DeviceId::from_str(&request.device_id).ok()?;
            let own: Vec<(SupplyPoint, OpenOutage)> = outages
                .filter(|(point, _)| point.device == device)
                .map(|(point, outage)| (*point, *outage))
                .collect();
            Some(device_state(device, &own, router, debounce).encode_to_vec())
        }
        OUTAGES => {
            let request = proto::ListOpenOutagesRequest::decode(payload).ok()?;
            let mut all: Vec<(&SupplyPoint, &OpenOutage)> = outages.collect();
            let total = all.len() as u64;
            all.sort_by_key(|(point, outage)| (outage.lost_at, **point));
            all.truncate(limit_or_default(request.limit));
            let response = proto::ListOpenOutagesResponse {
                outages: all
                    .into_iter()
                    .map(|(point, outage)| outage_to_proto(point, outage, debounce))
                    .collect(),
                total,
            };
            Some(response.encode_to_vec())
        }
        _ => None,
    }
}

/// Asks the owner of `partition` a query of `kind`.
pub async fn ask<R: prost::Message + Default>(
    cluster: &Cluster,
    partition: u16,
    kind: &str,
    query: &impl prost::Message,
) -> Result<R, RelayError> {
    let subject = cluster.names.query_subject(partition, kind);
    let client = cluster.js.client();
    let request = client.request(subject, query.encode_to_vec().into());
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
                "the owner of partition {partition} did not answer within {ANSWER_TIMEOUT:?}"
            )));
        }
    };
    R::decode(reply.payload).map_err(|err| {
        RelayError::Unavailable(format!(
            "the owner of partition {partition} answered something unreadable: {err}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutingConfig;
    use crate::debounce::OutageState;
    use crate::domain::{Phase, UtcMillis};
    use crate::route::{Registry, RoutingTable};
    use std::collections::BTreeMap;

    fn router() -> Router {
        Router::new(
            RoutingTable::from_config(&RoutingConfig::default()),
            Registry::empty(),
        )
    }

    fn outage(lost_at: i64) -> OpenOutage {
        OpenOutage {
            lost_at: UtcMillis(lost_at),
            received_at: UtcMillis(lost_at),
            state: OutageState::Pending,
            mpan: None,
        }
    }

    fn outages() -> BTreeMap<SupplyPoint, OpenOutage> {
        [(1u64, 300), (2, 100), (3, 200)]
            .into_iter()
            .map(|(device, lost_at)| {
                let point = SupplyPoint {
                    device: DeviceId(device),
                    phase: Phase::Whole,
                };
                (point, outage(lost_at))
            })
            .collect()
    }

    #[test]
    fn open_outages_are_listed_oldest_first_up_to_the_limit_with_the_total() {
        let outages = outages();
        let query = proto::ListOpenOutagesRequest { limit: 2 }.encode_to_vec();
        let answer =
            answer(OUTAGES, &query, outages.iter(), &router(), Duration::ZERO).expect("an answer");
        let response = proto::ListOpenOutagesResponse::decode(answer.as_slice()).expect("decodes");
        assert_eq!(response.total, 3);
        let devices: Vec<String> = response
            .outages
            .iter()
            .map(|o| o.device_id.clone())
            .collect();
        assert_eq!(devices, [DeviceId(2).to_string(), DeviceId(3).to_string()]);
    }

    #[test]
    fn a_device_query_answers_only_that_device() {
        let outages = outages();
        let query = proto::GetDeviceStateRequest {
            device_id: DeviceId(3).to_string(),
        }
        .encode_to_vec();
        let answer =
            answer(DEVICE, &query, outages.iter(), &router(), Duration::ZERO).expect("an answer");
        let response = proto::GetDeviceStateResponse::decode(answer.as_slice()).expect("decodes");
        assert_eq!(response.device_id, DeviceId(3).to_string());
        assert_eq!(response.outages.len(), 1);
    }

    #[test]
    fn unreadable_queries_get_no_answer() {
        let outages = outages();
        assert!(answer("other", &[], outages.iter(), &router(), Duration::ZERO).is_none());
        assert!(
            answer(
                DEVICE,
                &[0xff, 0xff],
                outages.iter(),
                &router(),
                Duration::ZERO
            )
            .is_none()
        );
    }
}
