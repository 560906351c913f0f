//! The alerts of a replay against those the relay emitted, by alert id: pure.
//!
//! Alert ids are deterministic (`{poa|pra}-{device}-{phase}-{lost_at}`), so an alert
//! decided the same way has the same id in both. A pair with the same id is *changed* when
//! any compared field differs ([`COMPARED`]); an id on one side only is `only_in_replay` or
//! `only_emitted`. The emission time is written but not compared: the live owner fires a
//! timer when its runtime wakes (or when it restarts), the replay's clock at the due time.

use std::collections::BTreeMap;

use crate::domain::{Alert, MpanCore, UtcMillis};

/// An alert and where it went (a subscriber's name, or `parked:<reason>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The alert.
    pub alert: Alert,
    /// The subscriber it was routed to, or `parked:<reason>`.
    pub subscriber: String,
    /// The supply's MPAN core, when the route (or the event) gave one.
    pub mpan: Option<MpanCore>,
}

/// The columns of an alert line, in order.
pub const COLUMNS: [&str; 13] = [
    "id",
    "kind",
    "device",
    "phase",
    "subscriber",
    "mpan",
    "lost_at",
    "restored_at",
    "due_at",
    "deadline",
    "emitted_at",
    "received_at",
    "learned_late",
];

/// The fields a diff compares (the id covers kind, supply point and loss time).
pub const COMPARED: [&str; 7] = [
    "subscriber",
    "mpan",
    "restored_at",
    "due_at",
    "deadline",
    "received_at",
    "learned_late",
];

impl Row {
    /// The alert's id.
    pub fn id(&self) -> String {
        self.alert.id().to_string()
    }

    /// The value of `column` (one of [`COLUMNS`]) as the CSV files write it.
    pub fn value(&self, column: &str) -> String {
        let alert = &self.alert;
        let time = |at: UtcMillis| at.to_string();
        match column {
            "id" => self.id(),
            "kind" => alert.kind.as_str().to_owned(),
            "device" => alert.point.device.to_string(),
            "phase" => alert.point.phase.to_proto().to_string(),
            "subscriber" => self.subscriber.clone(),
            "mpan" => self.mpan.map(|mpan| mpan.to_string()).unwrap_or_default(),
            "lost_at" => time(alert.lost_at),
            "restored_at" => alert.restored_at.map(time).unwrap_or_default(),
            "due_at" => time(alert.due_at),
            "deadline" => time(alert.deadline),
            "emitted_at" => time(alert.emitted_at),
            "received_at" => time(alert.received_at),
            "learned_late" => alert.learned_late.to_string(),
            _ => String::new(),
        }
    }

    /// Every column's value, in [`COLUMNS`] order.
    pub fn values(&self) -> Vec<String> {
        COLUMNS.iter().map(|column| self.value(column)).collect()
    }
}

/// How one alert id differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The replay emits it; the relay did not.
    OnlyInReplay,
    /// The relay emitted it; the replay does not.
    OnlyEmitted,
    /// Both, with different values in some compared fields.
    Changed,
}

impl Status {
    /// As `diff.csv` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnlyInReplay => "only_in_replay",
            Self::OnlyEmitted => "only_emitted",
            Self::Changed => "changed",
        }
    }
}

/// One line of the diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Which kind of difference.
    pub status: Status,
    /// The alert as the replay emits it, if it does.
    pub replayed: Option<Row>,
    /// The alert as the relay emitted it, if it did.
    pub emitted: Option<Row>,
    /// The compared fields that differ (empty unless [`Status::Changed`]).
    pub fields: Vec<&'static str>,
}

impl Difference {
    /// The alert's id.
    pub fn id(&self) -> String {
        self.replayed
            .as_ref()
            .or(self.emitted.as_ref())
            .map(Row::id)
            .unwrap_or_default()
    }
}

/// The differences between `replayed` and `emitted`, ordered by alert id. An id a side holds
/// more than once (never, unless a log was damaged) pairs in order; the extras count as on
/// that side only.
pub fn compare(replayed: &[Row], emitted: &[Row]) -> Vec<Difference> {
    let mut by_id: BTreeMap<String, (Vec<&Row>, Vec<&Row>)> = BTreeMap::new();
    for row in replayed {
        by_id.entry(row.id()).or_default().0.push(row);
    }
    for row in emitted {
        by_id.entry(row.id()).or_default().1.push(row);
    }
    let mut differences = Vec::new();
    for (ours, theirs) in by_id.into_values() {
        let pairs = ours.len().max(theirs.len());
        for index in 0..pairs {
            let (replayed, emitted) = (ours.get(index).copied(), theirs.get(index).copied());
            let (status, fields) = match (replayed, emitted) {
                (Some(replayed), Some(emitted)) => {
                    let fields: Vec<&'static str> = COMPARED
                        .into_iter()
                        .filter(|field| replayed.value(field) != emitted.value(field))
                        .collect();
                    if fields.is_empty() {
                        continue;
                    }
                    (Status::Changed, fields)
                }
                (Some(_), None) => (Status::OnlyInReplay, Vec::new()),
                (None, _) => (Status::OnlyEmitted, Vec::new()),
            };
            differences.push(Difference {
                status,
                replayed: replayed.cloned(),
                emitted: emitted.cloned(),
                fields,
            });
        }
    }
    differences
}

/// How many differences of each [`Status`]: (only in replay, only emitted, changed).
pub fn counts(differences: &[Difference]) -> (usize, usize, usize) {
    let count = |status| differences.iter().filter(|d| d.status == status).count();
    (
        count(Status::OnlyInReplay),
        count(Status::OnlyEmitted),
        count(Status::Changed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AlertKind, DeviceId, Phase, SupplyPoint};

    fn row(device: u64, kind: AlertKind, due: i64) -> Row {
        Row {
            alert: Alert {
                kind,
                point: SupplyPoint {
                    device: DeviceId(device),
                    phase: Phase::Whole,
                },
                lost_at: UtcMillis(1_000),
                restored_at: None,
                due_at: UtcMillis(due),
                deadline: UtcMillis(due + 60_000),
                emitted_at: UtcMillis(due),
                received_at: UtcMillis(1_000),
                learned_late: false,
                event_mpan: None,
            },
            subscriber: "ukpn".into(),
            mpan: None,
        }
    }

    #[test]
    fn the_same_alerts_emitted_at_other_times_give_no_difference() {
        let replayed = [
            row(1, AlertKind::Outage, 5_000),
            row(2, AlertKind::Outage, 5_000),
        ];
        let mut emitted = replayed.clone();
        emitted.reverse();
        emitted[0].alert.emitted_at = UtcMillis(5_042);
        assert!(compare(&replayed, &emitted).is_empty());
    }

    #[test]
    fn each_id_is_only_in_replay_only_emitted_or_changed_with_its_fields() {
        let replayed = [
            row(1, AlertKind::Outage, 5_000),
            row(3, AlertKind::Outage, 5_000),
        ];
        let mut moved = row(1, AlertKind::Outage, 9_000);
        moved.subscriber = "nged".into();
        let emitted = [moved, row(2, AlertKind::Restoration, 5_000)];
        let differences = compare(&replayed, &emitted);
        let seen: Vec<(u64, Status, Vec<&str>)> = differences
            .iter()
            .map(|d| {
                let row = d.replayed.as_ref().or(d.emitted.as_ref()).expect("a side");
                (row.alert.point.device.0, d.status, d.fields.clone())
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1, Status::Changed, vec!["subscriber", "due_at", "deadline"]),
                (3, Status::OnlyInReplay, vec![]),
                (2, Status::OnlyEmitted, vec![]),
            ],
            "ordered by id: poa-..01, poa-..03, pra-..02"
        );
        assert_eq!(counts(&differences), (1, 1, 1));
    }

    #[test]
    fn an_id_held_twice_pairs_once_and_the_extra_is_one_sided() {
        let one = row(1, AlertKind::Outage, 5_000);
        let differences = compare(std::slice::from_ref(&one), &[one.clone(), one.clone()]);
        assert_eq!(differences.len(), 1);
        assert_eq!(differences[0].status, Status::OnlyEmitted);
    }
}
