//! `Admin.ListDeliveries` messages: an alert and its fate, both ways.

use crate::domain::{AlertKind, BreachCause, UtcMillis};
use crate::log::{Delivered, Fate};
use crate::proto;

use super::aggregate::Record;

/// Deliveries sent per `ListDeliveriesResponse`.
pub const PER_MESSAGE: usize = 1000;

/// The message for `delivered`, an alert of `subscriber`.
pub fn to_proto(subscriber: &str, delivered: &Delivered) -> proto::Delivery {
    let alert = &delivered.alert;
    let (acked_at, expired_at) = match delivered.fate {
        Fate::Acked(at) => (Some(at.to_proto()), None),
        Fate::Expired(at) => (None, Some(at.to_proto())),
        Fate::Pending => (None, None),
    };
    proto::Delivery {
        subscriber: subscriber.to_owned(),
        sequence: delivered.sequence,
        kind: alert.kind.to_proto(),
        alert_id: alert.id().to_string(),
        due_at: Some(alert.due_at.to_proto()),
        deadline: Some(alert.deadline.to_proto()),
        received_at: Some(alert.received_at.to_proto()),
        breach_cause: alert.breach_cause().as_str().to_owned(),
        acked_at,
        expired_at,
    }
}

/// The report's record of `delivery`; an error names what is missing or invalid.
pub fn from_proto(delivery: &proto::Delivery) -> Result<Record, String> {
    let time = |ts: &Option<prost_types::Timestamp>, what: &str| {
        ts.as_ref()
            .map(|ts| {
                UtcMillis::from_proto(ts).ok_or_else(|| format!("invalid {what} in {delivery:?}"))
            })
            .transpose()
    };
    let required = |ts: &Option<prost_types::Timestamp>, what: &str| {
        time(ts, what)?.ok_or_else(|| format!("no {what} in {delivery:?}"))
    };
    let kind = AlertKind::from_proto(delivery.kind)
        .ok_or_else(|| format!("unknown kind {} in {delivery:?}", delivery.kind))?;
    let cause = match delivery.breach_cause.as_str() {
        "upstream" => BreachCause::Upstream,
        "relay" => BreachCause::Relay,
        other => return Err(format!("unknown breach cause {other:?}")),
    };
    let fate = match (
        time(&delivery.acked_at, "acked_at")?,
        time(&delivery.expired_at, "expired_at")?,
    ) {
        (Some(at), _) => Fate::Acked(at),
        (None, Some(at)) => Fate::Expired(at),
        (None, None) => Fate::Pending,
    };
    Ok(Record {
        subscriber: delivery.subscriber.clone(),
        kind,
        due_at: required(&delivery.due_at, "due_at")?,
        deadline: required(&delivery.deadline, "deadline")?,
        cause,
        fate,
    })
}

/// The report's record of `delivered`, an alert of `subscriber` read from a data directory.
pub fn record(subscriber: &str, delivered: &Delivered) -> Record {
    Record {
        subscriber: subscriber.to_owned(),
        kind: delivered.alert.kind,
        due_at: delivered.alert.due_at,
        deadline: delivered.alert.deadline,
        cause: delivered.alert.breach_cause(),
        fate: delivered.fate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::conformance::poa;

    #[test]
    fn a_delivery_crosses_the_wire_unchanged() {
        let alert = poa(crate::domain::DeviceId(0x00db_0000_0000_0001), 0);
        for fate in [
            Fate::Acked(UtcMillis(alert.deadline.0 + 5)),
            Fate::Expired(UtcMillis(9)),
            Fate::Pending,
        ] {
            let delivered = Delivered {
                sequence: 4,
                alert,
                fate,
            };
            let message = to_proto("ukpn", &delivered);
            assert_eq!(message.alert_id, alert.id().to_string());
            assert_eq!(from_proto(&message), Ok(record("ukpn", &delivered)));
        }
        let broken = proto::Delivery {
            breach_cause: "weather".into(),
            ..to_proto(
                "ukpn",
                &Delivered {
                    sequence: 1,
                    alert,
                    fate: Fate::Pending,
                },
            )
        };
        assert!(from_proto(&broken).is_err());
    }
}
