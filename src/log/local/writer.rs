//! The embedded backend's writer: one thread owns every segment log of the data directory
//! and commits in groups.
//!
//! It takes every request queued while the previous group was being written, applies them in
//! order (positions and sequences are assigned here), writes each log touched once, syncs
//! them all (side by side), and only then publishes the new heads to readers and answers the
//! callers. One fdatasync per log thus serves every batch, alert and ack that queued in the
//! meantime, and the group grows by itself under load. Because one thread serves every log in
//! arrival order, an alert appended after the record that caused it is never durable before
//! it.
//!
//! A failed write or sync poisons the writer: the group and every later request fail (the
//! owners then fence ingest), and only a restart, which recovers the logs, lifts it.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{mpsc, oneshot, watch};

use std::sync::Arc;

use super::journal::JournalMarks;
use super::meta::{Cursor, ParkedRecord, encode_cursor, encode_parked};
use super::recent::Recent;
use super::segment::{SegmentLog, SegmentReader};
use super::segment_error;
use super::sync_pool::SyncPool;
use crate::domain::alert::AlertId;
use crate::domain::{Alert, UtcMillis};
use crate::log::codec::{decode_entry, decode_record, encode_entry, encode_record, encode_settled};
use crate::log::{
    AlertHeads, Appended, Destination, EventRecord, Expired, LogEntry, LogError, LogStatus, Parked,
    Partition, Retention, Settled, SlaMark, Stored, partition_of,
};
use crate::route::{ParkReason, Route, SubscriberId};

/// Requests one group may hold at most.
const MAX_GROUP: usize = 1024;
/// A cursor log is compacted once it holds this many records.
const CURSOR_RECORDS: u64 = 1024;
/// Entries read per pass when looking for alerts older than the retention age.
const RETENTION_SCAN: usize = 4096;

/// What the writer is asked to do.
pub(super) enum Request {
    /// Append an event record to a partition's log.
    Events {
        partition: Partition,
        record: EventRecord,
        reply: oneshot::Sender<Result<Appended, LogError>>,
    },
    /// Append routed alerts to their subscribers' logs.
    Alerts {
        alerts: Vec<(Alert, Route)>,
        reply: oneshot::Sender<Result<Vec<Stored>, LogError>>,
    },
    /// Park alerts of a partition.
    Park {
        partition: Partition,
        alerts: Vec<(Alert, ParkReason)>,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Move a subscriber's cursor.
    Ack {
        log: SubscriberId,
        upto: u64,
        at: UtcMillis,
        reply: oneshot::Sender<Result<LogStatus, LogError>>,
    },
    /// Record an SLA watch's progress.
    Sla {
        log: SubscriberId,
        seen: u64,
        checked_through: UtcMillis,
        new_breaches: u64,
        reply: oneshot::Sender<Result<SlaMark, LogError>>,
    },
    /// A checkpoint covers a partition's records up to `through`.
    Truncate {
        partition: Partition,
        through: u64,
        keep_since: UtcMillis,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Retention.
    Maintain {
        now: UtcMillis,
        retention: Retention,
        reply: oneshot::Sender<Result<Vec<Expired>, LogError>>,
    },
    /// Alerts of a partition stored after `heads` are re-emitted by its replay.
    Guard {
        partition: Partition,
        partitions: u16,
        heads: AlertHeads,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// A partition's replay is over.
    Replayed { partition: Partition },
    /// A partition's parked alerts.
    ListParked {
        partition: Option<Partition>,
        reply: oneshot::Sender<Vec<Parked>>,
    },
    /// Stop once the requests before this one are committed.
    Close,
    /// Move parked alerts that now have a route.
    MoveParked {
        partition: Partition,
        moves: Vec<(u64, Alert, Route)>,
        reply: oneshot::Sender<Result<Vec<Stored>, LogError>>,
    },
}

/// A partition's event log in the writer.
pub(super) struct EventPartition {
    pub(super) log: SegmentLog,
}

/// A subscriber's alert log and cursor in the writer.
pub(super) struct SubscriberLog {
    pub(super) name: String,
    /// Entries; a record's position is its sequence.
    pub(super) entries: SegmentLog,
    pub(super) entries_reader: SegmentReader,
    /// Cursor records; the last one is the cursor.
    pub(super) cursors: SegmentLog,
    pub(super) cursor: Cursor,
    /// When the cursor moved ([`super::journal`]).
    pub(super) journal: SegmentLog,
    pub(super) marks: JournalMarks,
    /// Entries before this sequence are no longer wanted by the report.
    pub(super) unreported: u64,
    /// Published to readers after each sync.
    pub(super) status: watch::Sender<Published>,
    /// The newest entries, for readers at the head.
    pub(super) recent: Arc<Recent>,
    /// Entries appended in the group being written, for `recent` once synced.
    pub(super) fresh: Vec<LogEntry>,
}

/// What readers see of a subscriber log: durable state only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Published {
    /// Cursors and head.
    pub(super) status: LogStatus,
    /// The SLA watch's progress.
    pub(super) sla: SlaMark,
}

impl Published {
    /// What `cursor` with entries up to `head` shows.
    pub(super) fn of(cursor: &Cursor, head: u64) -> Self {
        Self {
            status: cursor.status(head),
            sla: cursor.sla,
        }
    }
}

impl SubscriberLog {
    fn head(&self) -> u64 {
        self.entries.next() - 1
    }

    fn published_head(&self) -> u64 {
        self.status.borrow().status.head
    }
}

/// A partition's parked alerts in the writer.
pub(super) struct ParkedLog {
    pub(super) log: SegmentLog,
    /// Parked alerts by key (their record's position).
    pub(super) entries: BTreeMap<u64, LogEntry>,
    /// A move that began and did not end: the subscriber logs' heads when it began.
    pub(super) moving: Option<AlertHeads>,
}

/// Which logs a group touched.
#[derive(Default)]
struct Touched {
    events: Vec<Partition>,
    entries: Vec<usize>,
    cursors: Vec<usize>,
    journals: Vec<usize>,
    parked: Vec<usize>,
}

impl Touched {
    fn add(list: &mut Vec<usize>, index: usize) {
        if !list.contains(&index) {
            list.push(index);
        }
    }
}

/// An answer held until the group is durable.
type Reply = Box<dyn FnOnce(Result<(), LogError>) + Send>;

/// Work done after the group is durable.
enum After {
    /// Delete a partition's event segments up to a position, keeping the records that
    /// arrived at or after a time.
    Events(Partition, u64, UtcMillis),
    /// Delete a subscriber's entry segments no reader or report needs.
    Entries(usize),
    /// Delete a subscriber's journal segments before a position.
    Journal(usize, u64),
}

/// Where an event log may be cut when a checkpoint covers it through `through` and the
/// records that arrived at or after `keep_since` stay: after the newest segment whose records
/// all lie at or before `through` and whose last record (arrivals never decrease) arrived
/// before `keep_since`. A segment whose last record cannot be read is kept.
fn expired_before(reader: &SegmentReader, through: u64, keep_since: UtcMillis) -> u64 {
    let mut before = reader.first();
    for end in reader.segment_ends() {
        if end - 1 > through {
            break;
        }
        let arrival = reader
            .read(end - 1, 1, usize::MAX)
            .ok()
            .and_then(|frames| frames.into_iter().next())
            .and_then(|(_, payload)| decode_record(&payload).ok())
            .map(|record| record.arrival);
        match arrival {
            Some(arrival) if arrival < keep_since => before = end,
            _ => break,
        }
    }
    before
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) events: Vec<EventPartition>,
    pub(super) subscribers: Vec<SubscriberLog>,
    pub(super) parked: Vec<ParkedLog>,
    /// Alerts a replay may emit again, by partition.
    pub(super) guards: HashMap<Partition, HashMap<AlertId, Stored>>,
    pub(super) failed: Option<LogError>,
    /// Duration of each group commit.
    pub(super) commit_seconds: metrics::Histogram,
    /// Threads that sync a group's logs side by side.
    pub(super) syncs: SyncPool,
}

fn answer<T: Send + 'static>(reply: oneshot::Sender<Result<T, LogError>>, value: T) -> Reply {
    Box::new(move |result| {
        let _ = reply.send(result.map(|()| value));
    })
}

impl Writer {
    /// Serves requests until told to close, or every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut closing = false;
        while !closing && let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            if let Some(close) = group.iter().position(|r| matches!(r, Request::Close)) {
                closing = true;
                for late in group.drain(close..).skip(1) {
                    fail(late, stopped());
                }
            }
            self.process(&mut group);
        }
        rx.close();
        while let Ok(late) = rx.try_recv() {
            fail(late, stopped());
        }
        tracing::info!("embedded log writer stopped");
    }

    fn process(&mut self, group: &mut Vec<Request>) {
        let mut touched = Touched::default();
        let mut replies: Vec<Reply> = Vec::with_capacity(group.len());
        let mut after = Vec::new();
        for request in group.drain(..) {
            if let Request::MoveParked {
                partition,
                moves,
                reply,
            } = request
            {
                // Its steps each need a sync of their own: finish the group first.
                self.commit(
                    std::mem::take(&mut touched),
                    std::mem::take(&mut replies),
                    std::mem::take(&mut after),
                );
                let moved = self.move_parked(partition, moves);
                let _ = reply.send(moved);
                continue;
            }
            if let Some(err) = &self.failed {
                fail(request, err.clone());
                continue;
            }
            self.apply(request, &mut touched, &mut replies, &mut after);
        }
        self.commit(touched, replies, after);
    }

    /// Writes and syncs what the group touched, publishes it, answers, then runs what had to
    /// wait for durability.
    fn commit(&mut self, touched: Touched, replies: Vec<Reply>, after: Vec<After>) {
        let started = std::time::Instant::now();
        let result = match &self.failed {
            Some(err) => Err(err.clone()),
            None => self.sync(&touched),
        };
        let wrote = !(touched.events.is_empty()
            && touched.entries.is_empty()
            && touched.cursors.is_empty()
            && touched.journals.is_empty()
            && touched.parked.is_empty());
        if wrote {
            self.commit_seconds.record(started.elapsed().as_secs_f64());
        }
        if let Err(err) = &result {
            if self.failed.is_none() {
                tracing::error!(%err, "embedded log write failed; every later write fails until restart");
            }
            self.failed.get_or_insert_with(|| err.clone());
        } else {
            for &index in &touched.entries {
                if let Some(log) = self.subscribers.get_mut(index) {
                    log.recent.push(std::mem::take(&mut log.fresh));
                }
                self.publish(index);
            }
            for &index in &touched.cursors {
                self.publish(index);
            }
        }
        for reply in replies {
            reply(result.clone());
        }
        if result.is_ok() {
            for work in after {
                if let Err(err) = self.after(work) {
                    tracing::warn!(%err, "deleting log segments failed");
                }
            }
        }
    }

    fn publish(&self, index: usize) {
        if let Some(log) = self.subscribers.get(index) {
            log.status
                .send_replace(Published::of(&log.cursor, log.head()));
        }
    }

    fn after(&mut self, work: After) -> Result<(), LogError> {
        match work {
            After::Events(partition, through, keep_since) => {
                if let Some(events) = self.events.get_mut(usize::from(partition)) {
                    let before = expired_before(&events.log.reader(), through, keep_since);
                    events.log.truncate_before(before).map_err(segment_error)?;
                }
            }
            After::Entries(index) => {
                if let Some(log) = self.subscribers.get_mut(index) {
                    // Settled entries stay for the report until the journal forgets them.
                    log.entries
                        .truncate_before(log.cursor.first_retained.min(log.unreported))
                        .map_err(segment_error)?;
                }
            }
            After::Journal(index, before) => {
                if let Some(log) = self.subscribers.get_mut(index) {
                    log.journal.truncate_before(before).map_err(segment_error)?;
                }
            }
        }
        Ok(())
    }

    /// Writes every log touched, then syncs them side by side.
    fn sync(&mut self, touched: &Touched) -> Result<(), LogError> {
        let mut logs: Vec<&mut SegmentLog> = Vec::new();
        for (index, events) in self.events.iter_mut().enumerate() {
            if touched.events.iter().any(|p| usize::from(*p) == index) {
                logs.push(&mut events.log);
            }
        }
        for (index, log) in self.subscribers.iter_mut().enumerate() {
            if touched.entries.contains(&index) {
                logs.push(&mut log.entries);
            }
            if touched.cursors.contains(&index) {
                logs.push(&mut log.cursors);
            }
            if touched.journals.contains(&index) {
                logs.push(&mut log.journal);
            }
        }
        for (index, parked) in self.parked.iter_mut().enumerate() {
            if touched.parked.contains(&index) {
                logs.push(&mut parked.log);
            }
        }
        for log in &mut logs {
            log.write().map_err(segment_error)?;
        }
        match logs.as_mut_slice() {
            [] => Ok(()),
            [only] => only.sync().map_err(segment_error),
            many => {
                let jobs = many
                    .iter()
                    .map(|log| log.sync_job())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(segment_error)?;
                let results = self.syncs.run_all(jobs);
                let mut outcome = Ok(());
                for (log, result) in many.iter_mut().zip(results) {
                    if let Err(err) = log.finish_sync(result)
                        && outcome.is_ok()
                    {
                        outcome = Err(segment_error(err));
                    }
                }
                outcome
            }
        }
    }

    fn apply(
        &mut self,
        request: Request,
        touched: &mut Touched,
        replies: &mut Vec<Reply>,
        after: &mut Vec<After>,
    ) {
        match request {
            Request::Events {
                partition,
                record,
                reply,
            } => match self.append_record(partition, &record) {
                Ok(position) => {
                    if !touched.events.contains(&partition) {
                        touched.events.push(partition);
                    }
                    let appended = Appended {
                        position,
                        duplicates: 0,
                    };
                    replies.push(answer(reply, appended));
                }
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
            Request::Alerts { alerts, reply } => match self.append_alerts(alerts, touched) {
                Ok(stored) => replies.push(answer(reply, stored)),
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
            Request::Park {
                partition,
                alerts,
                reply,
            } => match self.park(partition, alerts, touched) {
                Ok(()) => replies.push(answer(reply, ())),
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
            Request::Ack {
                log,
                upto,
                at,
                reply,
            } => match self.ack(log, (upto, at), touched, after) {
                Ok(status) => replies.push(answer(reply, status)),
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
            Request::Sla {
                log,
                seen,
                checked_through,
                new_breaches,
                reply,
            } => match self.record_sla(log, seen, checked_through, new_breaches, touched) {
                Ok(mark) => replies.push(answer(reply, mark)),
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
            Request::Truncate {
                partition,
                through,
                keep_since,
                reply,
            } => {
                after.push(After::Events(partition, through, keep_since));
                replies.push(answer(reply, ()));
            }
            Request::Maintain {
                now,
                retention,
                reply,
            } => match self.retain(now, retention, touched, after) {
                Ok(expired) => replies.push(answer(reply, expired)),
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
            Request::Guard {
                partition,
                partitions,
                heads,
                reply,
            } => {
                let guard = self.guard(partition, partitions, &heads);
                let result = guard.map(|guard| {
                    self.guards.insert(partition, guard);
                });
                let _ = reply.send(result);
            }
            Request::Replayed { partition } => {
                self.guards.remove(&partition);
            }
            Request::ListParked { partition, reply } => {
                let _ = reply.send(self.list_parked(partition));
            }
            Request::MoveParked { reply, .. } => {
                let _ = reply.send(Err(LogError::Unavailable("move out of order".into())));
            }
            Request::Close => {}
        }
    }

    fn append_record(
        &mut self,
        partition: Partition,
        record: &EventRecord,
    ) -> Result<u64, LogError> {
        let events = self
            .events
            .get_mut(usize::from(partition))
            .ok_or_else(|| LogError::Unavailable(format!("no partition {partition}")))?;
        events
            .log
            .push(&encode_record(record))
            .map_err(segment_error)
    }

    fn append_alerts(
        &mut self,
        alerts: Vec<(Alert, Route)>,
        touched: &mut Touched,
    ) -> Result<Vec<Stored>, LogError> {
        let mut stored = Vec::with_capacity(alerts.len());
        for (alert, route) in alerts {
            if let Some(first) = self.guarded(&alert) {
                stored.push(first);
                continue;
            }
            let index = usize::from(route.subscriber.0);
            let log = self
                .subscribers
                .get_mut(index)
                .ok_or_else(|| LogError::Unavailable(format!("no subscriber log {index}")))?;
            let destination = Destination::Routed(route);
            let sequence = log
                .entries
                .push(&encode_entry(&alert, &destination))
                .map_err(segment_error)?;
            log.fresh.push(LogEntry {
                sequence,
                alert,
                destination,
                emitted_by: None,
            });
            Touched::add(&mut touched.entries, index);
            stored.push(Stored {
                sequence,
                duplicate: false,
            });
        }
        Ok(stored)
    }

    fn guarded(&self, alert: &Alert) -> Option<Stored> {
        if self.guards.is_empty() {
            return None;
        }
        let id = alert.id();
        self.guards
            .values()
            .find_map(|guard| guard.get(&id).copied())
    }

    fn park(
        &mut self,
        partition: Partition,
        alerts: Vec<(Alert, ParkReason)>,
        touched: &mut Touched,
    ) -> Result<(), LogError> {
        let index = usize::from(partition);
        let parked = self
            .parked
            .get_mut(index)
            .ok_or_else(|| LogError::Unavailable(format!("no partition {partition}")))?;
        for (alert, reason) in alerts {
            let destination = Destination::Parked(reason);
            let key = parked
                .log
                .push(&encode_parked(&ParkedRecord::Parked(alert, destination)))
                .map_err(segment_error)?;
            parked.entries.insert(
                key,
                LogEntry {
                    sequence: key,
                    alert,
                    destination,
                    emitted_by: None,
                },
            );
        }
        Touched::add(&mut touched.parked, index);
        Ok(())
    }

    fn subscriber(&mut self, log: SubscriberId) -> Result<&mut SubscriberLog, LogError> {
        self.subscribers
            .get_mut(usize::from(log.0))
            .ok_or_else(|| LogError::Unavailable(format!("no subscriber log {}", log.0)))
    }

    fn ack(
        &mut self,
        log: SubscriberId,
        (upto, at): (u64, UtcMillis),
        touched: &mut Touched,
        after: &mut Vec<After>,
    ) -> Result<LogStatus, LogError> {
        let index = usize::from(log.0);
        let subscriber = self.subscriber(log)?;
        let head = subscriber.published_head();
        if upto > head {
            return Err(LogError::BeyondHead {
                requested: upto,
                head,
            });
        }
        if upto > subscriber.cursor.acked {
            write_journal(
                subscriber,
                Settled {
                    from: subscriber.cursor.acked + 1,
                    upto,
                    at,
                    expired: false,
                },
            )?;
            Touched::add(&mut touched.journals, index);
            // Acknowledged alerts are delivered: no longer readable, as with retention.
            subscriber.cursor.acked = upto;
            subscriber.cursor.first_retained = subscriber.cursor.first_retained.max(upto + 1);
            write_cursor(subscriber)?;
            Touched::add(&mut touched.cursors, index);
            after.push(After::Entries(index));
        }
        Ok(subscriber.cursor.status(head))
    }

    fn record_sla(
        &mut self,
        log: SubscriberId,
        seen: u64,
        checked_through: UtcMillis,
        new_breaches: u64,
        touched: &mut Touched,
    ) -> Result<SlaMark, LogError> {
        let index = usize::from(log.0);
        let subscriber = self.subscriber(log)?;
        let sla = &mut subscriber.cursor.sla;
        sla.seen = sla.seen.max(seen);
        sla.checked_through = sla.checked_through.max(checked_through);
        sla.breaches += new_breaches;
        let mark = *sla;
        write_cursor(subscriber)?;
        Touched::add(&mut touched.cursors, index);
        Ok(mark)
    }

    /// Retention: per log, unacknowledged alerts beyond `max_alerts`, or emitted before
    /// `now - max_age`, are dropped (the cursor moves past them).
    fn retain(
        &mut self,
        now: UtcMillis,
        retention: Retention,
        touched: &mut Touched,
        after: &mut Vec<After>,
    ) -> Result<Vec<Expired>, LogError> {
        let cutoff = Retention::before(now, retention.max_age);
        let report_cutoff = Retention::before(now, retention.report);
        let mut expired = Vec::new();
        for (index, log) in self.subscribers.iter_mut().enumerate() {
            if let Some(forget) = log.marks.forget_before(report_cutoff) {
                log.unreported = log.unreported.max(forget.entries_before);
                after.push(After::Journal(index, forget.journal_before));
                after.push(After::Entries(index));
            }
            let head = log.published_head();
            let old_first = log.cursor.first_retained.max(log.cursor.acked + 1);
            let mut first = old_first;
            if head + 1 - first > retention.max_alerts {
                first = head + 1 - retention.max_alerts;
            }
            first = first.max(first_young_enough(
                &log.entries_reader,
                first,
                head,
                cutoff,
            )?);
            if first <= old_first {
                continue;
            }
            let removed = first - old_first;
            write_journal(
                log,
                Settled {
                    from: old_first,
                    upto: first - 1,
                    at: now,
                    expired: true,
                },
            )?;
            Touched::add(&mut touched.journals, index);
            log.cursor.first_retained = first;
            log.cursor.acked = log.cursor.acked.max(first - 1);
            write_cursor(log)?;
            Touched::add(&mut touched.cursors, index);
            after.push(After::Entries(index));
            expired.push(Expired {
                log: SubscriberId(u16::try_from(index).unwrap_or(u16::MAX)),
                removed,
                status: log.cursor.status(head),
            });
        }
        Ok(expired)
    }

    /// The alerts of `partition` stored after `heads`, by id.
    fn guard(
        &self,
        partition: Partition,
        partitions: u16,
        heads: &AlertHeads,
    ) -> Result<HashMap<AlertId, Stored>, LogError> {
        let mut guard = HashMap::new();
        for log in &self.subscribers {
            let after = heads
                .0
                .iter()
                .find(|(name, _)| *name == log.name)
                .map_or(0, |(_, head)| *head);
            let mut next = (after + 1).max(log.entries_reader.first());
            let end = log.published_head();
            while next <= end {
                let frames = log
                    .entries_reader
                    .read(next, 4096, 4 << 20)
                    .map_err(segment_error)?;
                let Some((last, _)) = frames.last() else {
                    break;
                };
                next = last + 1;
                for (sequence, payload) in frames {
                    let (alert, _) = decode_entry(&payload)?;
                    if partition_of(alert.point.device, partitions) == partition {
                        guard.insert(
                            alert.id(),
                            Stored {
                                sequence,
                                duplicate: true,
                            },
                        );
                    }
                }
            }
        }
        Ok(guard)
    }

    fn list_parked(&self, partition: Option<Partition>) -> Vec<Parked> {
        self.parked
            .iter()
            .enumerate()
            .filter(|(index, _)| partition.is_none_or(|p| usize::from(p) == *index))
            .flat_map(|(_, parked)| {
                parked.entries.iter().map(|(key, entry)| Parked {
                    key: *key,
                    entry: entry.clone(),
                })
            })
            .collect()
    }

    /// Moves parked alerts, exactly once across crashes: (1) a `moving` record with the
    /// subscriber logs' heads, synced; (2) the alerts appended, synced (an alert those logs
    /// already hold after the heads of an unfinished earlier move comes back as a duplicate);
    /// (3) the keys removed and `moved`, synced.
    fn move_parked(
        &mut self,
        partition: Partition,
        moves: Vec<(u64, Alert, Route)>,
    ) -> Result<Vec<Stored>, LogError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let index = usize::from(partition);
        let partitions = u16::try_from(self.parked.len()).unwrap_or(u16::MAX);
        let earlier = self
            .parked
            .get(index)
            .ok_or_else(|| LogError::Unavailable(format!("no partition {partition}")))?
            .moving
            .clone();
        let heads = match earlier {
            Some(heads) => heads,
            None => {
                let heads = AlertHeads(
                    self.subscribers
                        .iter()
                        .map(|log| (log.name.clone(), log.published_head()))
                        .collect(),
                );
                self.parked_record(index, &ParkedRecord::Moving(heads.clone()))?;
                heads
            }
        };
        let already = self.guard(partition, partitions, &heads)?;
        let moves: Vec<(u64, Alert, Route)> = moves
            .into_iter()
            .filter(|(key, _, _)| {
                self.parked
                    .get(index)
                    .is_some_and(|parked| parked.entries.contains_key(key))
            })
            .collect();
        let keys: Vec<u64> = moves.iter().map(|(key, _, _)| *key).collect();
        let mut stored = Vec::with_capacity(moves.len());
        let mut touched = Touched::default();
        for (_, alert, route) in moves {
            match already.get(&alert.id()) {
                Some(first) => stored.push(*first),
                None => stored.extend(self.append_alerts(vec![(alert, route)], &mut touched)?),
            }
        }
        self.sync(&touched).inspect_err(|err| {
            self.failed.get_or_insert_with(|| err.clone());
        })?;
        for &index in &touched.entries {
            if let Some(log) = self.subscribers.get_mut(index) {
                log.recent.push(std::mem::take(&mut log.fresh));
            }
            self.publish(index);
        }
        self.parked_record(index, &ParkedRecord::Unparked(keys.clone()))?;
        self.parked_record(index, &ParkedRecord::Moved)?;
        if let Some(parked) = self.parked.get_mut(index) {
            for key in &keys {
                parked.entries.remove(key);
            }
            parked.moving = None;
        }
        Ok(stored)
    }

    /// Appends one record to a partition's parked log and syncs it.
    fn parked_record(&mut self, index: usize, record: &ParkedRecord) -> Result<(), LogError> {
        let Some(parked) = self.parked.get_mut(index) else {
            return Err(LogError::Unavailable(format!("no partition {index}")));
        };
        let written = parked
            .log
            .push(&encode_parked(record))
            .and_then(|_| parked.log.write())
            .and_then(|()| parked.log.sync())
            .map_err(segment_error);
        if let ParkedRecord::Moving(heads) = record {
            parked.moving = Some(heads.clone());
        }
        written.inspect_err(|err| {
            self.failed.get_or_insert_with(|| err.clone());
        })
    }
}

/// Appends the current cursor to a subscriber's cursor log, compacting it when long.
fn write_cursor(log: &mut SubscriberLog) -> Result<(), LogError> {
    log.cursors
        .push(&encode_cursor(&log.cursor))
        .map_err(segment_error)?;
    if log.cursors.next() - log.cursors.first() > CURSOR_RECORDS {
        log.cursors
            .truncate_before(log.cursors.next() - 1)
            .map_err(segment_error)?;
    }
    Ok(())
}

/// Appends a journal record to a subscriber's journal, noting it in the marks.
fn write_journal(log: &mut SubscriberLog, settled: Settled) -> Result<(), LogError> {
    let position = log
        .journal
        .push(&encode_settled(&settled))
        .map_err(segment_error)?;
    log.marks.note(position, settled);
    Ok(())
}

/// The first sequence from `from` whose alert was emitted at or after `cutoff` (at most one
/// scan batch further, so a pass stays short; the next pass goes on).
fn first_young_enough(
    reader: &SegmentReader,
    from: u64,
    head: u64,
    cutoff: UtcMillis,
) -> Result<u64, LogError> {
    if from > head {
        return Ok(from);
    }
    let frames = match reader.read(from, RETENTION_SCAN, 4 << 20) {
        Ok(frames) => frames,
        Err(super::segment::SegmentError::Gone { first, .. }) => return Ok(first.max(from)),
        Err(err) => return Err(segment_error(err)),
    };
    for (sequence, payload) in &frames {
        let (alert, _) = decode_entry(payload)?;
        if alert.emitted_at >= cutoff {
            return Ok(*sequence);
        }
    }
    Ok(frames.last().map_or(from, |(last, _)| last + 1))
}

/// Answers a request with `err` (the writer failed earlier).
fn fail(request: Request, err: LogError) {
    match request {
        Request::Events { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Request::Alerts { reply, .. } | Request::MoveParked { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Request::Park { reply, .. }
        | Request::Truncate { reply, .. }
        | Request::Guard { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Request::Ack { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Request::Sla { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Request::Maintain { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Request::ListParked { reply, .. } => {
            let _ = reply.send(Vec::new());
        }
        Request::Replayed { .. } | Request::Close => {}
    }
}

fn stopped() -> LogError {
    LogError::Unavailable("the embedded log writer has stopped".into())
}
