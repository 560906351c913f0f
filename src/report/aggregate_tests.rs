use super::*;
use crate::report::period::{DAY_MS, parse_day, start_of};

const SECOND: i64 = 1_000;

fn day() -> Day {
    parse_day("2026-11-02").expect("a date")
}

/// A POA of `subscriber` due `due_s` seconds into the day, with a 60 s window.
fn poa(subscriber: &str, due_s: i64, fate: Fate) -> Record {
    let due_at = UtcMillis(start_of(day()).0 + due_s * SECOND);
    Record {
        subscriber: subscriber.into(),
        kind: AlertKind::Outage,
        due_at,
        deadline: UtcMillis(due_at.0 + 60 * SECOND),
        cause: BreachCause::Relay,
        fate,
    }
}

fn acked(due_s: i64, after_s: i64) -> Fate {
    Fate::Acked(UtcMillis(start_of(day()).0 + (due_s + after_s) * SECOND))
}

fn period() -> Period {
    Period {
        first: day(),
        last: day(),
    }
}

fn end_of_period() -> UtcMillis {
    period().end()
}

#[test]
fn each_alert_is_within_late_never_or_pending_by_its_deadline() {
    let end = end_of_period();
    let now = UtcMillis(end.0 + DAY_MS);
    assert_eq!(
        Outcome::of(&poa("ukpn", 10, acked(10, 60)), end, now),
        Outcome::Within(60_000),
        "an ack at the deadline is in time"
    );
    assert_eq!(
        Outcome::of(&poa("ukpn", 10, acked(10, 61)), end, now),
        Outcome::Late(BreachCause::Relay, 61_000)
    );
    let upstream = Record {
        cause: BreachCause::Upstream,
        ..poa("ukpn", 10, acked(10, 90))
    };
    assert_eq!(
        Outcome::of(&upstream, end, now),
        Outcome::Late(BreachCause::Upstream, 90_000)
    );
    let expired = Fate::Expired(UtcMillis(end.0 - 1));
    assert_eq!(
        Outcome::of(&poa("ukpn", 10, expired), end, now),
        Outcome::Never
    );
    let after_the_period = poa("ukpn", 86_300, acked(86_300, 200));
    assert_eq!(
        Outcome::of(&after_the_period, end, now),
        Outcome::Never,
        "acknowledged only after the period ended"
    );
    assert_eq!(
        Outcome::of(&poa("ukpn", 10, Fate::Pending), end, now),
        Outcome::Never
    );
    let due_now = poa("ukpn", 100, Fate::Pending);
    assert_eq!(
        Outcome::of(&due_now, end, UtcMillis(due_now.due_at.0 + SECOND)),
        Outcome::Pending,
        "its deadline is still ahead"
    );
}

#[test]
fn rows_count_each_subscriber_day_and_kind_apart() {
    let next_day = |mut record: Record| {
        record.due_at.0 += DAY_MS;
        record.deadline.0 += DAY_MS;
        record
    };
    let pra = Record {
        kind: AlertKind::Restoration,
        ..poa("ukpn", 50, acked(50, 2))
    };
    let records = vec![
        poa("ukpn", 10, acked(10, 1)),
        poa("ukpn", 20, acked(20, 3)),
        poa("ukpn", 30, acked(30, 100)),
        poa("ukpn", 40, Fate::Pending),
        pra,
        poa("nged", 10, acked(10, 5)),
        next_day(poa("ukpn", 10, acked(10, 1))),
    ];
    let period = period();
    let report = report(
        &records,
        &["spen".to_owned()],
        period,
        UtcMillis(period.end().0 + 1),
    );
    let keys: Vec<(&str, AlertKind)> = report
        .rows
        .iter()
        .map(|r| (r.subscriber.as_str(), r.kind))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("nged", AlertKind::Outage),
            ("ukpn", AlertKind::Outage),
            ("ukpn", AlertKind::Restoration)
        ],
        "the next day is outside the period"
    );
    let ukpn = &report.rows[1];
    assert_eq!(
        (
            ukpn.alerts,
            ukpn.within_sla,
            ukpn.late_relay,
            ukpn.never_delivered
        ),
        (4, 2, 1, 1)
    );
    assert_eq!(
        ukpn.latency,
        Some(Latency {
            p50: 3_000,
            p99: 100_000,
            max: 100_000
        })
    );
    assert_eq!(ukpn.compliance(), Some(50.0));
    assert_eq!(report.subscribers, ["nged", "spen", "ukpn"]);
    assert_eq!(report.totals(), [6, 4, 1, 0, 1, 0]);
    assert_eq!(report.daily_compliance("ukpn"), vec![(day(), 60.0)]);
    assert_eq!(report.daily_compliance("spen"), vec![]);
    let poas: u64 = report.histogram[0].iter().sum();
    assert_eq!(poas, 4, "one latency per acknowledged POA in the period");
    assert_eq!(report.histogram[0][0], 1, "1 s is in the first bucket");
    assert_eq!(report.histogram[0][9], 1, "100 s is in the 90-120 s bucket");
    assert_eq!(report.histogram[1][1], 1, "the PRA's 2 s");
}
