//! Validation of wire events into domain events, with reasons a person can act on.

use std::str::FromStr;

use crate::config::IngestConfig;
use crate::domain::event::EventKey;
use crate::domain::{DeviceEvent, DeviceId, EventKind, MpanCore, Phase, SupplyPoint, UtcMillis};
use crate::proto::{self, device_event::Kind};

/// Why an event was refused: the field at fault (a metric label) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of `telemetry::REJECT_REASONS`.
    pub field: &'static str,
    /// What is wrong, for the publisher.
    pub message: String,
}

fn reject(field: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        field,
        message: message.into(),
    }
}

/// Validates one event received at `now`.
pub fn event(
    event: &proto::DeviceEvent,
    limits: &IngestConfig,
    now: UtcMillis,
) -> Result<DeviceEvent, Rejection> {
    let id = &event.event_id;
    if id.is_empty() {
        return Err(reject("event_id", "event_id is empty"));
    }
    if id.len() > limits.max_event_id_len {
        return Err(reject(
            "event_id",
            format!(
                "event_id is {} bytes, more than the limit of {}",
                id.len(),
                limits.max_event_id_len
            ),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(reject("event_id", "event_id contains control characters"));
    }
    let device =
        DeviceId::from_str(&event.device_id).map_err(|err| reject("device_id", err.to_string()))?;
    let phase = Phase::from_proto(event.phase).ok_or_else(|| {
        reject(
            "phase",
            format!("phase {} is not 0 (whole supply), 1, 2 or 3", event.phase),
        )
    })?;
    let mpan = match event.mpan_core.as_deref() {
        None | Some("") => None,
        Some(text) => {
            Some(MpanCore::from_str(text).map_err(|err| reject("mpan_core", err.to_string()))?)
        }
    };
    let kind = match &event.kind {
        None => {
            return Err(reject(
                "kind",
                "event has neither `lost` nor `restored` set",
            ));
        }
        Some(Kind::Lost(lost)) => EventKind::Lost {
            lost_at: timestamp("lost.lost_at", lost.lost_at.as_ref(), limits, now)?,
        },
        Some(Kind::Restored(restored)) => {
            let restored_at = timestamp(
                "restored.restored_at",
                restored.restored_at.as_ref(),
                limits,
                now,
            )?;
            let lost_at = match &restored.lost_at {
                None => None,
                Some(ts) => Some(timestamp("restored.lost_at", Some(ts), limits, now)?),
            };
            if lost_at.is_some_and(|lost| lost > restored_at) {
                return Err(reject(
                    "timestamp",
                    "restored.lost_at is later than restored.restored_at",
                ));
            }
            EventKind::Restored {
                restored_at,
                lost_at,
            }
        }
    };
    Ok(DeviceEvent {
        key: EventKey::new(device, id),
        point: SupplyPoint { device, phase },
        mpan,
        kind,
    })
}

fn timestamp(
    name: &str,
    value: Option<&prost_types::Timestamp>,
    limits: &IngestConfig,
    now: UtcMillis,
) -> Result<UtcMillis, Rejection> {
    let value = value.ok_or_else(|| reject("timestamp", format!("{name} is missing")))?;
    let at = UtcMillis::from_proto(value)
        .ok_or_else(|| reject("timestamp", format!("{name} is not a valid timestamp")))?;
    if at > now.plus(limits.max_future_skew) {
        return Err(reject(
            "timestamp",
            format!(
                "{name} {at} is more than {} ahead of the relay clock ({now}); check the device clock",
                humantime::format_duration(limits.max_future_skew)
            ),
        ));
    }
    if now.since(at) > limits.max_event_age {
        return Err(reject(
            "timestamp",
            format!(
                "{name} {at} is older than the limit of {}",
                humantime::format_duration(limits.max_event_age)
            ),
        ));
    }
    Ok(at)
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "validate_props.rs"]
mod props;
