//! Alerts: Power Outage Alerts (POA) and Power Restoration Alerts (PRA), with their SLA times.

use std::fmt;

use super::{MpanCore, SupplyPoint, UtcMillis};

/// POA or PRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// Power Outage Alert.
    Outage,
    /// Power Restoration Alert.
    Restoration,
}

impl AlertKind {
    /// Short lowercase name, used in alert IDs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outage => "poa",
            Self::Restoration => "pra",
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> i32 {
        match self {
            Self::Outage => 1,
            Self::Restoration => 2,
        }
    }

    /// Maps the proto enum value.
    pub fn from_proto(value: i32) -> Option<Self> {
        match value {
            1 => Some(Self::Outage),
            2 => Some(Self::Restoration),
            _ => None,
        }
    }
}

/// Who made an alert miss its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreachCause {
    /// The event reached the relay at or after the deadline: it could not have been made.
    Upstream,
    /// The event arrived in time and the relay (or the subscriber's acks) was too slow.
    Relay,
}

impl BreachCause {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Relay => "relay",
        }
    }
}

/// An alert as the state machine emits it, before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    /// POA or PRA.
    pub kind: AlertKind,
    /// The supply point it is about.
    pub point: SupplyPoint,
    /// Outage start (device time).
    pub lost_at: UtcMillis,
    /// Outage end (device time), on PRAs.
    pub restored_at: Option<UtcMillis>,
    /// When the alert became due: `lost_at + debounce` (POA) or `restored_at` (PRA).
    pub due_at: UtcMillis,
    /// `due_at` + the kind's SLA window.
    pub deadline: UtcMillis,
    /// Relay time the alert was emitted.
    pub emitted_at: UtcMillis,
    /// Relay time the event that made it due arrived.
    pub received_at: UtcMillis,
    /// The outage was known only from its restoration.
    pub learned_late: bool,
    /// MPAN core carried by the device's event, if any (routing fallback).
    pub event_mpan: Option<MpanCore>,
}

impl Alert {
    /// The deterministic alert ID: `{poa|pra}-{device}-{phase}-{lost_at ms}`.
    pub fn id(&self) -> AlertId {
        AlertId {
            kind: self.kind,
            point: self.point,
            lost_at: self.lost_at,
        }
    }

    /// Who is to blame if this alert is not delivered by its deadline.
    pub fn breach_cause(&self) -> BreachCause {
        if self.received_at >= self.deadline {
            BreachCause::Upstream
        } else {
            BreachCause::Relay
        }
    }

    /// Outage duration, on PRAs.
    pub fn outage_duration(&self) -> Option<std::time::Duration> {
        self.restored_at
            .map(|restored| restored.since(self.lost_at))
    }
}

/// The deterministic identity of an alert; formats as its string ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AlertId {
    kind: AlertKind,
    point: SupplyPoint,
    lost_at: UtcMillis,
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.point.device.hex();
        f.write_str(self.kind.as_str())?;
        f.write_str("-")?;
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)?;
        write!(f, "-{}-{}", self.point.phase.to_proto(), self.lost_at.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeviceId, Phase};

    fn poa(received_at: i64) -> Alert {
        Alert {
            kind: AlertKind::Outage,
            point: SupplyPoint {
                device: DeviceId(0x00db_1234_5678_90a0),
                phase: Phase::L2,
            },
            lost_at: UtcMillis(1_000),
            restored_at: None,
            due_at: UtcMillis(181_000),
            deadline: UtcMillis(241_000),
            emitted_at: UtcMillis(181_001),
            received_at: UtcMillis(received_at),
            learned_late: false,
            event_mpan: None,
        }
    }

    #[test]
    fn alert_id_is_deterministic_and_distinguishes_kind() {
        let a = poa(1_000);
        assert_eq!(a.id().to_string(), "poa-00db1234567890a0-2-1000");
        let pra = Alert {
            kind: AlertKind::Restoration,
            ..a
        };
        assert_ne!(a.id(), pra.id());
        assert_eq!(a.id(), poa(5_000).id());
    }

    #[test]
    fn breach_cause_is_upstream_only_when_the_event_came_at_or_after_the_deadline() {
        assert_eq!(poa(240_999).breach_cause(), BreachCause::Relay);
        assert_eq!(poa(241_000).breach_cause(), BreachCause::Upstream);
    }
}
