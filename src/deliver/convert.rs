//! Conversion of stored alerts to their wire form.

use crate::log::{Destination, LogEntry};
use crate::proto;

/// The `Alert` message a subscriber receives for `entry`.
pub fn alert_to_proto(entry: &LogEntry, subscriber: &str) -> proto::Alert {
    let alert = &entry.alert;
    let (mpan, distributor, gsp) = match entry.destination {
        Destination::Routed(route) => (
            Some(route.mpan),
            u32::from(route.distributor.0),
            route.gsp.map(|g| g.to_string()).unwrap_or_default(),
        ),
        Destination::Parked(_) => (
            alert.event_mpan,
            alert.event_mpan.map_or(0, |m| u32::from(m.distributor().0)),
            String::new(),
        ),
    };
    proto::Alert {
        alert_id: alert.id().to_string(),
        sequence: entry.sequence,
        kind: alert.kind.to_proto(),
        device_id: alert.point.device.to_string(),
        phase: alert.point.phase.to_proto(),
        mpan_core: mpan.map(|m| m.to_string()).unwrap_or_default(),
        distributor_id: distributor,
        gsp_group: gsp,
        lost_at: Some(alert.lost_at.to_proto()),
        restored_at: alert.restored_at.map(|t| t.to_proto()),
        due_at: Some(alert.due_at.to_proto()),
        deadline: Some(alert.deadline.to_proto()),
        emitted_at: Some(alert.emitted_at.to_proto()),
        learned_late: alert.learned_late,
        outage_duration_ms: alert
            .outage_duration()
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        subscriber: subscriber.to_owned(),
        emitted_by: entry.emitted_by.as_deref().unwrap_or_default().to_owned(),
    }
}
