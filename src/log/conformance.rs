//! The conformance suite: what every implementation of the seam must do, as functions a test
//! calls with a fresh instance of the implementation (`log::memory` and `log::local` in their
//! unit tests, the JetStream backend in `tests/cluster.rs`). Each check panics, naming what
//! failed, when the implementation breaks an invariant of the module doc of `crate::log`.
//!
//! The instance must have the default routing table (six subscribers, `ukpn` first) and at
//! least two partitions, and be empty.

use std::sync::Arc;
use std::time::Duration;

use super::{
    AlertHeads, AlertLog, Checkpoint, Checkpoints, EventLog, EventRecord, Fate, Lease, LogError,
    Retention, Sequencing, partition_of,
};
use crate::domain::event::EventKey;
use crate::domain::{
    Alert, AlertKind, DeviceEvent, DeviceId, DistributorId, EventKind, MpanCore, Phase,
    SupplyPoint, UtcMillis,
};
use crate::route::{ParkReason, Route, SubscriberId};

/// An implementation under test.
pub struct Subject {
    /// Its event log.
    pub events: Arc<dyn EventLog>,
    /// Its alert logs.
    pub alerts: Arc<dyn AlertLog>,
    /// Its checkpoints.
    pub checkpoints: Arc<dyn Checkpoints>,
    /// Its partition count.
    pub partitions: u16,
    /// Whether [`AlertLog::maintain`] does retention (JetStream leaves it to its streams'
    /// own limits).
    pub retention: bool,
}

/// How long a check waits for something that must happen, only to turn a hang into a failure.
const WAIT: Duration = Duration::from_secs(30);

const T0: i64 = 1_764_000_000_000;

/// `ukpn`, the first default subscriber.
pub const UKPN: SubscriberId = SubscriberId(0);
/// `nged`, the second.
pub const NGED: SubscriberId = SubscriberId(1);

/// A device of `partition`, the `n`-th found.
pub fn device_in(partition: u16, partitions: u16, n: u64) -> DeviceId {
    (0u64..)
        .map(|i| DeviceId(0x00db_0000_0000_0000 + i))
        .filter(|device| partition_of(*device, partitions) == partition)
        .nth(usize::try_from(n).unwrap_or(0))
        .unwrap_or(DeviceId(0))
}

/// A loss event of `device` at `T0 + at` ms.
pub fn loss(device: DeviceId, at: i64) -> DeviceEvent {
    DeviceEvent {
        key: EventKey(u128::from(device.0) << 64 | at.unsigned_abs() as u128),
        point: SupplyPoint {
            device,
            phase: Phase::Whole,
        },
        mpan: None,
        kind: EventKind::Lost {
            lost_at: UtcMillis(T0 + at),
        },
    }
}

/// A record arriving at `T0 + at` ms.
pub fn record(at: i64, events: Vec<DeviceEvent>) -> EventRecord {
    EventRecord {
        arrival: UtcMillis(T0 + at),
        received: UtcMillis(T0 + at),
        events,
    }
}

/// A POA of `device` whose outage began at `T0 + lost` ms.
pub fn poa(device: DeviceId, lost: i64) -> Alert {
    let lost_at = UtcMillis(T0 + lost);
    Alert {
        kind: AlertKind::Outage,
        point: SupplyPoint {
            device,
            phase: Phase::Whole,
        },
        lost_at,
        restored_at: None,
        due_at: lost_at.plus(Duration::from_secs(180)),
        deadline: lost_at.plus(Duration::from_secs(240)),
        emitted_at: lost_at.plus(Duration::from_secs(180)),
        received_at: lost_at,
        learned_late: false,
        event_mpan: None,
    }
}

/// The route to `subscriber`.
pub fn route(subscriber: SubscriberId) -> Route {
    let mpan = MpanCore::with_check_digit(120_000_000_000).unwrap_or_else(|| unreachable!());
    Route {
        subscriber,
        mpan,
        distributor: DistributorId(12),
        gsp: None,
    }
}

/// Runs every check, in order, on a fresh `subject`.
pub async fn run_all(subject: &Subject) {
    event_records_are_stored_in_order_and_read_back(subject).await;
    a_truncated_log_keeps_the_records_after_the_checkpoint(subject).await;
    a_truncated_log_keeps_the_records_newer_than_the_event_retention(subject).await;
    sequences_are_contiguous_per_subscriber_and_read_back(subject).await;
    acks_are_cumulative_never_move_back_and_never_pass_the_head(subject).await;
    acked_alerts_stay_for_the_report_with_their_ack_time(subject).await;
    a_reader_waits_for_the_next_entry(subject).await;
    alerts_a_replay_emits_again_keep_their_first_sequence(subject).await;
    parked_alerts_are_listed_and_move_exactly_once(subject).await;
    the_sla_mark_moves_forward_and_adds_breaches(subject).await;
    if subject.retention {
        retention_removes_the_oldest_unacknowledged_and_readers_skip_them(subject).await;
    }
    checkpoints_replace_each_other(subject).await;
}

/// The next `count` events of `reader`, with the position and arrival of the record each
/// came in (a log-sequenced backend may store a record's events as records of their own).
async fn read_events(
    reader: &mut Box<dyn super::EventReader>,
    count: usize,
) -> Vec<(u64, UtcMillis, DeviceEvent)> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let logged = tokio::time::timeout(WAIT, reader.next())
            .await
            .expect("records in time")
            .expect("read")
            .expect("a record");
        let (position, arrival) = (logged.position, logged.record.arrival);
        events.extend(
            logged
                .record
                .events
                .into_iter()
                .map(|event| (position, arrival, event)),
        );
    }
    events
}

/// Appends to two partitions; each reads back its own events, in order, at increasing
/// positions and never decreasing arrivals. An owner-sequenced log keeps records as they were
/// appended, and its reader ends at the head.
pub async fn event_records_are_stored_in_order_and_read_back(subject: &Subject) {
    let events = &subject.events;
    let partitions = subject.partitions;
    let (a, b) = (device_in(0, partitions, 0), device_in(1, partitions, 0));
    let first = record(0, vec![loss(a, 0)]);
    let second = record(5, vec![loss(a, 5), loss(device_in(0, partitions, 1), 5)]);
    let other = record(6, vec![loss(b, 6)]);
    let p1 = events
        .append(0, first.clone())
        .await
        .expect("append")
        .position;
    let q1 = events
        .append(1, other.clone())
        .await
        .expect("append")
        .position;
    let p2 = events
        .append(0, second.clone())
        .await
        .expect("append")
        .position;
    assert!(p2 > p1, "positions increase: {p1} then {p2}");
    let mut reader = events.reader(0, 0).await.expect("a reader");
    let read = read_events(&mut reader, 3).await;
    let got: Vec<DeviceEvent> = read.iter().map(|(_, _, event)| *event).collect();
    let expected: Vec<DeviceEvent> = first.events.iter().chain(&second.events).copied().collect();
    assert_eq!(got, expected, "events read back in order");
    assert!(
        read.windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
    );
    assert_eq!((read[0].0, read[2].0), (p1, p2));
    if events.sequencing() == Sequencing::Owner {
        assert_eq!(read[0].1, first.arrival);
        assert_eq!(read[1].0, p2, "a record keeps its events together");
        assert!(
            reader.next().await.expect("read").is_none(),
            "an owner-sequenced reader ends at the head"
        );
    }
    let mut after = events.reader(0, p1).await.expect("a reader");
    let read = read_events(&mut after, 1).await;
    assert_eq!(
        read[0].2, second.events[0],
        "reading after p1 starts with what followed it"
    );
    let mut other_reader = events.reader(1, 0).await.expect("a reader");
    let read = read_events(&mut other_reader, 1).await;
    assert_eq!((read[0].0, read[0].2), (q1, other.events[0]));
}

/// Truncating through a checkpoint's position keeps every record after it.
pub async fn a_truncated_log_keeps_the_records_after_the_checkpoint(subject: &Subject) {
    let events = &subject.events;
    let device = device_in(1, subject.partitions, 3);
    let mut positions = Vec::new();
    for at in 100..110 {
        let position = events
            .append(1, record(at, vec![loss(device, at)]))
            .await
            .expect("append")
            .position;
        positions.push(position);
    }
    events
        .truncate(1, positions[6], UtcMillis(i64::MAX))
        .await
        .expect("truncate");
    let mut reader = events.reader(1, positions[6]).await.expect("a reader");
    for expected in &positions[7..] {
        let read = reader.next().await.expect("read").expect("a record");
        assert_eq!(
            read.position, *expected,
            "records after the checkpoint stay"
        );
    }
}

/// Records a checkpoint covers but that arrived at or after the retention cut stay after a
/// truncation, in order (what `outage-relay replay` reads).
pub async fn a_truncated_log_keeps_the_records_newer_than_the_event_retention(subject: &Subject) {
    let events = &subject.events;
    let device = device_in(1, subject.partitions, 4);
    let positions = append_many(events, device, RETAINED_FROM).await;
    let keep_since = UtcMillis(T0 + RETAINED_FROM + 80);
    let through = positions[positions.len() - 1];
    events
        .truncate(1, through, keep_since)
        .await
        .expect("truncate");
    // A write after it: a backend that deletes behind a later commit has done so by now.
    let last = append_many(events, device, RETAINED_FROM + 200).await;
    let mut reader = events.reader(1, positions[80] - 1).await.expect("a reader");
    for expected in positions[80..].iter().chain(&last) {
        let read = reader.next().await.expect("read").expect("a record");
        assert_eq!(
            read.position, *expected,
            "records that arrived after the retention cut stay"
        );
    }
}

/// Where [`a_truncated_log_keeps_the_records_newer_than_the_event_retention`] starts its
/// arrivals (after every other check's on partition 1).
pub const RETAINED_FROM: i64 = 10_000;

/// 120 records of one loss each of `device` to partition 1, arriving 1 ms apart from
/// `T0 + from`: their positions.
pub async fn append_many(events: &Arc<dyn EventLog>, device: DeviceId, from: i64) -> Vec<u64> {
    let mut positions = Vec::with_capacity(120);
    for at in from..from + 120 {
        let position = events
            .append(1, record(at, vec![loss(device, at)]))
            .await
            .expect("append")
            .position;
        positions.push(position);
    }
    positions
}

/// Alerts for two subscribers, interleaved: each log numbers its own from its head, and reads
/// them back in order.
pub async fn sequences_are_contiguous_per_subscriber_and_read_back(subject: &Subject) {
    let alerts = &subject.alerts;
    let before = (
        alerts.status(UKPN).await.expect("status").head,
        alerts.status(NGED).await.expect("status").head,
    );
    let batch: Vec<(Alert, Route)> = (0..5)
        .map(|n| {
            let subscriber = if n % 2 == 0 { UKPN } else { NGED };
            (
                poa(DeviceId(0x00db_0000_0000_1000 + n), 0),
                route(subscriber),
            )
        })
        .collect();
    let stored = alerts.append(batch.clone()).await.expect("append");
    let sequences: Vec<u64> = stored.iter().map(|s| s.sequence).collect();
    assert_eq!(
        sequences,
        [
            before.0 + 1,
            before.1 + 1,
            before.0 + 2,
            before.1 + 2,
            before.0 + 3
        ],
        "one sequence per subscriber, from its head"
    );
    assert!(stored.iter().all(|s| !s.duplicate));
    assert_eq!(
        alerts.status(UKPN).await.expect("status").head,
        before.0 + 3
    );
    let mut reader = alerts.reader(UKPN, before.0 + 1).await.expect("a reader");
    let mut read = Vec::new();
    while read.len() < 3 {
        let entries = tokio::time::timeout(WAIT, reader.next(10))
            .await
            .expect("entries in time")
            .expect("read");
        read.extend(entries);
    }
    let got: Vec<(u64, Alert)> = read.iter().map(|e| (e.sequence, e.alert)).collect();
    let expected: Vec<(u64, Alert)> = [0, 2, 4]
        .iter()
        .zip(1..)
        .map(|(index, n)| (before.0 + n, batch[*index].0))
        .collect();
    assert_eq!(got, expected, "entries read back in order");
}

/// Acks: cumulative, never back, never past the head.
pub async fn acks_are_cumulative_never_move_back_and_never_pass_the_head(subject: &Subject) {
    let alerts = &subject.alerts;
    let stored = alerts
        .append(
            (0..3)
                .map(|n| (poa(DeviceId(0x00db_0000_0000_2000 + n), 0), route(NGED)))
                .collect(),
        )
        .await
        .expect("append");
    let head = stored.last().expect("stored").sequence;
    let status = alerts
        .ack(NGED, head - 1, UtcMillis(T0))
        .await
        .expect("ack");
    assert_eq!((status.acked, status.head), (head - 1, head));
    let status = alerts
        .ack(NGED, head - 2, UtcMillis(T0))
        .await
        .expect("an older ack");
    assert_eq!(
        status.acked,
        head - 1,
        "an older ack does not move the cursor back"
    );
    assert_eq!(
        alerts.ack(NGED, head + 1, UtcMillis(T0)).await,
        Err(LogError::BeyondHead {
            requested: head + 1,
            head
        })
    );
    let status = alerts.status(NGED).await.expect("status");
    assert_eq!(status.acked, head - 1);
    assert!(status.first_retained <= status.acked + 1);
}

/// Acknowledged alerts are no longer read, but the report still finds them, each with the
/// time of the first ack that covered it; one not acknowledged is pending.
pub async fn acked_alerts_stay_for_the_report_with_their_ack_time(subject: &Subject) {
    let alerts = &subject.alerts;
    let log = SubscriberId(2);
    let stored = alerts
        .append(
            (0..3)
                .map(|n| (poa(DeviceId(0x00db_0000_0000_2800 + n), 0), route(log)))
                .collect(),
        )
        .await
        .expect("append");
    let first = stored[0].sequence;
    alerts
        .ack(log, first, UtcMillis(T0 + 200_000))
        .await
        .expect("ack");
    alerts
        .ack(log, first + 1, UtcMillis(T0 + 300_000))
        .await
        .expect("ack");
    alerts
        .ack(log, first + 1, UtcMillis(T0 + 400_000))
        .await
        .expect("a repeated ack");
    let due = poa(DeviceId(0), 0).due_at;
    let found = alerts
        .deliveries(log, due, due.plus(Duration::from_millis(1)))
        .await
        .expect("deliveries");
    let fates: Vec<(u64, Fate)> = found.iter().map(|d| (d.sequence, d.fate)).collect();
    assert_eq!(
        fates,
        vec![
            (first, Fate::Acked(UtcMillis(T0 + 200_000))),
            (first + 1, Fate::Acked(UtcMillis(T0 + 300_000))),
            (first + 2, Fate::Pending),
        ]
    );
    assert_eq!(found[0].alert, poa(DeviceId(0x00db_0000_0000_2800), 0));
    let later = alerts
        .deliveries(log, due.plus(Duration::from_millis(1)), UtcMillis(i64::MAX))
        .await
        .expect("deliveries");
    assert!(later.is_empty(), "only alerts due in the period: {later:?}");
}

/// A reader that has caught up waits, and wakes for the next entry.
pub async fn a_reader_waits_for_the_next_entry(subject: &Subject) {
    let alerts = Arc::clone(&subject.alerts);
    let head = alerts.status(UKPN).await.expect("status").head;
    let mut reader = alerts.reader(UKPN, head + 1).await.expect("a reader");
    let waiting = tokio::spawn(async move { reader.next(10).await });
    tokio::task::yield_now().await;
    let alert = poa(DeviceId(0x00db_0000_0000_3000), 0);
    alerts
        .append(vec![(alert, route(UKPN))])
        .await
        .expect("append");
    let entries = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the reader woke")
        .expect("the reader task")
        .expect("read");
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].sequence, entries[0].alert), (head + 1, alert));
}

/// After `guard_replay`, an alert of the partition stored after the heads comes back as a
/// duplicate with its first sequence; alerts stored before the heads, and new ones, are
/// stored normally.
pub async fn alerts_a_replay_emits_again_keep_their_first_sequence(subject: &Subject) {
    let alerts = &subject.alerts;
    let partitions = subject.partitions;
    let heads: AlertHeads = alerts.heads(0);
    let ours = poa(device_in(0, partitions, 7), 0);
    let first = alerts
        .append(vec![(ours, route(UKPN))])
        .await
        .expect("append")[0];
    alerts
        .guard_replay(0, partitions, &heads)
        .await
        .expect("guard");
    let again = alerts
        .append(vec![
            (ours, route(UKPN)),
            (poa(device_in(0, partitions, 8), 0), route(UKPN)),
        ])
        .await
        .expect("append again");
    assert_eq!(
        again[0].sequence, first.sequence,
        "the same alert, the same sequence"
    );
    assert!(again[0].duplicate, "and reported as a duplicate");
    assert!(!again[1].duplicate, "a new alert is stored");
    assert_eq!(again[1].sequence, first.sequence + 1, "right after, no gap");
    alerts.replayed(0);
}

/// Parked alerts are listed; a move stores each in its subscriber's log once, even when
/// asked twice.
pub async fn parked_alerts_are_listed_and_move_exactly_once(subject: &Subject) {
    let alerts = &subject.alerts;
    let partitions = subject.partitions;
    let (a, b) = (
        poa(device_in(0, partitions, 20), 0),
        poa(device_in(0, partitions, 21), 0),
    );
    alerts
        .park(
            0,
            vec![
                (a, ParkReason::UnknownDevice),
                (b, ParkReason::NoSubscriber(DistributorId(40))),
            ],
        )
        .await
        .expect("park");
    let parked = alerts.parked(0).await.expect("parked");
    assert_eq!(
        parked.iter().map(|p| p.entry.alert).collect::<Vec<_>>(),
        [a, b]
    );
    let (listed, total) = alerts.list_parked(10).await.expect("list");
    assert_eq!(total, 2);
    assert_eq!(listed.len(), 2);
    let head = alerts.status(UKPN).await.expect("status").head;
    let moves = vec![(parked[0].key, a, route(UKPN))];
    let moved = alerts.move_parked(0, moves.clone()).await.expect("move");
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].sequence, head + 1);
    alerts.move_parked(0, moves).await.expect("move again");
    assert_eq!(
        alerts.status(UKPN).await.expect("status").head,
        head + 1,
        "moved once"
    );
    let left = alerts.parked(0).await.expect("parked");
    assert_eq!(left.iter().map(|p| p.entry.alert).collect::<Vec<_>>(), [b]);
    assert_eq!(alerts.list_parked(10).await.expect("list").1, 1);
}

/// The SLA mark only moves forward, and breaches add up.
pub async fn the_sla_mark_moves_forward_and_adds_breaches(subject: &Subject) {
    let alerts = &subject.alerts;
    let log = SubscriberId(2);
    let start = alerts.sla_mark(log).await.expect("mark");
    let mark = alerts
        .record_sla(log, start.seen + 5, UtcMillis(T0 + 10), 2)
        .await
        .expect("record");
    assert_eq!(
        (mark.seen, mark.checked_through, mark.breaches),
        (start.seen + 5, UtcMillis(T0 + 10), start.breaches + 2)
    );
    let mark = alerts
        .record_sla(log, start.seen + 1, UtcMillis(T0), 1)
        .await
        .expect("record");
    assert_eq!(
        (mark.seen, mark.checked_through, mark.breaches),
        (start.seen + 5, UtcMillis(T0 + 10), start.breaches + 3),
        "never back; breaches add up"
    );
    assert_eq!(alerts.sla_mark(log).await.expect("mark"), mark);
}

/// Retention by count removes the oldest unacknowledged alerts, reports how many, and a
/// reader from before them goes on from the first retained; reading below it is refused.
pub async fn retention_removes_the_oldest_unacknowledged_and_readers_skip_them(subject: &Subject) {
    let alerts = &subject.alerts;
    let log = SubscriberId(3);
    let before = alerts.status(log).await.expect("status");
    alerts
        .append(
            (0..5)
                .map(|n| (poa(DeviceId(0x00db_0000_0000_4000 + n), 0), route(log)))
                .collect(),
        )
        .await
        .expect("append");
    let head = before.head + 5;
    let expired = alerts
        .maintain(
            UtcMillis(T0),
            Retention {
                max_alerts: 2,
                max_age: Duration::from_secs(3600 * 24 * 365),
                report: Duration::from_secs(3600 * 24 * 35),
            },
        )
        .await
        .expect("maintain");
    let ours: Vec<_> = expired.iter().filter(|e| e.log == log).collect();
    assert_eq!(ours.len(), 1, "{expired:?}");
    assert_eq!(ours[0].removed, 3 + before.backlog());
    assert_eq!(ours[0].status.acked, head - 2);
    let status = alerts.status(log).await.expect("status");
    assert_eq!((status.head, status.acked), (head, head - 2));
    let mut reader = alerts.reader(log, before.head + 1).await.expect("a reader");
    let entries = tokio::time::timeout(WAIT, reader.next(10))
        .await
        .expect("entries in time")
        .expect("read");
    assert_eq!(
        entries[0].sequence,
        head - 1,
        "the reader skips what retention removed"
    );
    assert!(status.first_retained > before.head + 1);
    let found = alerts
        .deliveries(log, UtcMillis(0), UtcMillis(i64::MAX))
        .await
        .expect("deliveries");
    let expired = found
        .iter()
        .filter(|d| d.fate == Fate::Expired(UtcMillis(T0)))
        .count();
    assert_eq!(
        expired, 3,
        "the report sees what retention removed: {found:?}"
    );
}

/// A checkpoint replaces the partition's previous one; partitions keep their own.
pub async fn checkpoints_replace_each_other(subject: &Subject) {
    let checkpoints = &subject.checkpoints;
    let lease = Lease::until(tokio_util::sync::CancellationToken::new());
    assert_eq!(checkpoints.load(1).await.expect("load"), None);
    for position in [3, 8] {
        let checkpoint = Checkpoint {
            position,
            state: vec![u8::try_from(position).unwrap_or(0); 2000],
        };
        checkpoints
            .save(1, &checkpoint, &lease)
            .await
            .expect("save");
        assert_eq!(checkpoints.load(1).await.expect("load"), Some(checkpoint));
    }
    assert_eq!(checkpoints.load(0).await.expect("load"), None);
}
