//! A device event after validation: what the state machine consumes.

use super::{DeviceId, MpanCore, SupplyPoint, UtcMillis};

/// Identity of an event for de-duplication: a 128-bit hash of the device and its `event_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventKey(pub u128);

impl EventKey {
    /// The key of `event_id` as sent by `device`.
    pub fn new(device: DeviceId, event_id: &str) -> Self {
        let mut bytes = Vec::with_capacity(8 + event_id.len());
        bytes.extend_from_slice(&device.0.to_be_bytes());
        bytes.extend_from_slice(event_id.as_bytes());
        Self(xxhash_rust::xxh3::xxh3_128(&bytes))
    }
}

/// What happened to the supply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Supply lost at `lost_at` (device time).
    Lost {
        /// When the supply went off.
        lost_at: UtcMillis,
    },
    /// Supply restored at `restored_at`; `lost_at` when the device reports the outage's start.
    Restored {
        /// When the supply came back.
        restored_at: UtcMillis,
        /// When it went off, if the device says.
        lost_at: Option<UtcMillis>,
    },
}

/// A validated device event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceEvent {
    /// De-duplication key.
    pub key: EventKey,
    /// The supply point the event is about.
    pub point: SupplyPoint,
    /// MPAN core carried by the event, used to route unregistered devices.
    pub mpan: Option<MpanCore>,
    /// What happened.
    pub kind: EventKind,
}
