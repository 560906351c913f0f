//! The in-memory backend: the reference for the semantics of `crate::log` (the conformance
//! suite runs against it first) and a store for tests and benchmarks. Nothing survives a
//! restart; appends are "durable" at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{
    AlertHeads, AlertLog, AlertReader, Appended, Checkpoint, Checkpoints, Delivered, Destination,
    EventLog, EventReader, EventRecord, Expired, Lease, LogEntry, LogError, LogStatus, Logged,
    Parked, Partition, Retention, Sequencing, Settled, SlaMark, Stored, partition_of,
};
use crate::domain::alert::AlertId;
use crate::domain::{Alert, UtcMillis};
use crate::route::{ParkReason, Route, RoutingTable, SubscriberId};

/// Event logs in vectors, sequenced by their owners.
#[derive(Debug)]
pub struct MemoryEvents {
    partitions: Mutex<Vec<Vec<Logged>>>,
}

impl MemoryEvents {
    /// Empty logs of `partitions` partitions.
    pub fn new(partitions: u16) -> Self {
        Self {
            partitions: Mutex::new((0..partitions).map(|_| Vec::new()).collect()),
        }
    }
}

#[async_trait]
impl EventLog for MemoryEvents {
    fn sequencing(&self) -> Sequencing {
        Sequencing::Owner
    }

    fn append(
        &self,
        partition: Partition,
        record: EventRecord,
    ) -> BoxFuture<'static, Result<Appended, LogError>> {
        let mut partitions = self.partitions.lock();
        let result = match partitions.get_mut(usize::from(partition)) {
            Some(log) => {
                let position = log.last().map_or(1, |last| last.position + 1);
                log.push(Logged { position, record });
                Ok(Appended {
                    position,
                    duplicates: 0,
                })
            }
            None => Err(no_partition(partition)),
        };
        futures::future::ready(result).boxed()
    }

    async fn reader(
        &self,
        partition: Partition,
        after: u64,
    ) -> Result<Box<dyn EventReader>, LogError> {
        let partitions = self.partitions.lock();
        let log = partitions
            .get(usize::from(partition))
            .ok_or_else(|| no_partition(partition))?;
        let records: Vec<Logged> = log
            .iter()
            .filter(|logged| logged.position > after)
            .cloned()
            .collect();
        Ok(Box::new(VecReader {
            records: records.into_iter(),
        }))
    }

    async fn truncate(
        &self,
        partition: Partition,
        through: u64,
        keep_since: UtcMillis,
    ) -> Result<(), LogError> {
        let mut partitions = self.partitions.lock();
        let log = partitions
            .get_mut(usize::from(partition))
            .ok_or_else(|| no_partition(partition))?;
        // The last record stays, so positions continue after it.
        let keep_from = log
            .iter()
            .position(|logged| logged.position > through || logged.record.arrival >= keep_since)
            .unwrap_or(log.len().saturating_sub(1));
        log.drain(..keep_from);
        Ok(())
    }
}

fn no_partition(partition: Partition) -> LogError {
    LogError::Unavailable(format!("no partition {partition}"))
}

/// Replays what a log held when the reader was opened.
struct VecReader {
    records: std::vec::IntoIter<Logged>,
}

#[async_trait]
impl EventReader for VecReader {
    async fn next(&mut self) -> Result<Option<Logged>, LogError> {
        Ok(self.records.next())
    }

    fn lag(&self) -> u64 {
        self.records.len() as u64
    }
}

/// One subscriber's log.
#[derive(Debug)]
struct SubscriberLog {
    name: String,
    /// Entries from `status.first_retained` on.
    entries: Vec<LogEntry>,
    status: LogStatus,
    sla: SlaMark,
    head: watch::Sender<u64>,
    /// Entries below `status.first_retained` still kept for the report.
    settled: VecDeque<(u64, Alert)>,
    /// When each move of the cursor happened, oldest first.
    journal: VecDeque<Settled>,
}

impl SubscriberLog {
    fn entry(&self, sequence: u64) -> Option<&LogEntry> {
        let index = sequence.checked_sub(self.status.first_retained)?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// Drops entries below `first`, moving the cursor with them; how many were unacked.
    fn drop_below(&mut self, first: u64) -> u64 {
        if first <= self.status.first_retained {
            return 0;
        }
        let count = usize::try_from(first - self.status.first_retained).unwrap_or(usize::MAX);
        let settled = self.entries.drain(..count.min(self.entries.len()));
        self.settled
            .extend(settled.map(|entry| (entry.sequence, entry.alert)));
        let unacked =
            first.saturating_sub(self.status.acked.max(self.status.first_retained - 1) + 1);
        self.status.first_retained = first;
        self.status.acked = self.status.acked.max(first - 1);
        unacked
    }

    /// Forgets what was settled before `cutoff`.
    fn forget_before(&mut self, cutoff: UtcMillis) {
        let mut floor = 0;
        while let Some(oldest) = self.journal.front()
            && oldest.at < cutoff
        {
            floor = oldest.upto;
            self.journal.pop_front();
        }
        while self
            .settled
            .front()
            .is_some_and(|(sequence, _)| *sequence <= floor)
        {
            self.settled.pop_front();
        }
    }
}

#[derive(Debug, Default)]
struct Alerts {
    logs: Vec<SubscriberLog>,
    /// Parked alerts by partition, by key.
    parked: BTreeMap<Partition, BTreeMap<u64, LogEntry>>,
    next_parked_key: u64,
    /// Alerts a replay may emit again, by partition: id → (log, sequence).
    guards: HashMap<Partition, HashMap<AlertId, (SubscriberId, u64)>>,
}

impl Alerts {
    fn log(&self, log: SubscriberId) -> Result<&SubscriberLog, LogError> {
        self.logs
            .get(usize::from(log.0))
            .ok_or_else(|| no_subscriber(log))
    }

    fn log_mut(&mut self, log: SubscriberId) -> Result<&mut SubscriberLog, LogError> {
        self.logs
            .get_mut(usize::from(log.0))
            .ok_or_else(|| no_subscriber(log))
    }

    fn guarded(&self, alert: &Alert) -> Option<(SubscriberId, u64)> {
        let id = alert.id();
        self.guards
            .values()
            .find_map(|guard| guard.get(&id).copied())
    }

    fn append(&mut self, alert: Alert, route: Route) -> Result<Stored, LogError> {
        if let Some((_, sequence)) = self.guarded(&alert) {
            return Ok(Stored {
                sequence,
                duplicate: true,
            });
        }
        let log = self.log_mut(route.subscriber)?;
        let sequence = log.status.head + 1;
        log.entries.push(LogEntry {
            sequence,
            alert,
            destination: Destination::Routed(route),
            emitted_by: None,
        });
        log.status.head = sequence;
        log.head.send_replace(sequence);
        Ok(Stored {
            sequence,
            duplicate: false,
        })
    }
}

fn no_subscriber(log: SubscriberId) -> LogError {
    LogError::Unavailable(format!("no subscriber log {}", log.0))
}

/// Subscriber logs, cursors and parked alerts in memory.
#[derive(Debug)]
pub struct MemoryAlerts {
    inner: Arc<Mutex<Alerts>>,
}

impl MemoryAlerts {
    /// Empty logs for the subscribers of `table`.
    pub fn new(table: &RoutingTable) -> Self {
        let logs = table
            .iter()
            .map(|(_, name)| SubscriberLog {
                name: name.to_owned(),
                entries: Vec::new(),
                status: LogStatus {
                    first_retained: 1,
                    ..LogStatus::default()
                },
                sla: SlaMark::default(),
                head: watch::Sender::new(0),
                settled: VecDeque::new(),
                journal: VecDeque::new(),
            })
            .collect();
        Self {
            inner: Arc::new(Mutex::new(Alerts {
                logs,
                ..Alerts::default()
            })),
        }
    }
}

/// Reads a subscriber's log, waiting on its head.
struct MemoryAlertReader {
    inner: Arc<Mutex<Alerts>>,
    log: SubscriberId,
    next: u64,
    head: watch::Receiver<u64>,
}

#[async_trait]
impl AlertReader for MemoryAlertReader {
    async fn next(&mut self, max: usize) -> Result<Vec<LogEntry>, LogError> {
        loop {
            {
                let alerts = self.inner.lock();
                let log = alerts.log(self.log)?;
                self.next = self.next.max(log.status.first_retained);
                let entries: Vec<LogEntry> = (self.next..=log.status.head)
                    .take(max.max(1))
                    .filter_map(|sequence| log.entry(sequence).cloned())
                    .collect();
                if let Some(last) = entries.last() {
                    self.next = last.sequence + 1;
                    return Ok(entries);
                }
            }
            let next = self.next;
            self.head
                .wait_for(|head| *head >= next)
                .await
                .map_err(|_| LogError::Unavailable("the alert log closed".into()))?;
        }
    }
}

#[async_trait]
impl AlertLog for MemoryAlerts {
    fn append(
        &self,
        alerts: Vec<(Alert, Route)>,
    ) -> BoxFuture<'static, Result<Vec<Stored>, LogError>> {
        let mut inner = self.inner.lock();
        let result = alerts
            .into_iter()
            .map(|(alert, route)| inner.append(alert, route))
            .collect();
        futures::future::ready(result).boxed()
    }

    fn park(
        &self,
        partition: Partition,
        alerts: Vec<(Alert, ParkReason)>,
    ) -> BoxFuture<'static, Result<(), LogError>> {
        let mut inner = self.inner.lock();
        for (alert, reason) in alerts {
            inner.next_parked_key += 1;
            let key = inner.next_parked_key;
            inner.parked.entry(partition).or_default().insert(
                key,
                LogEntry {
                    sequence: key,
                    alert,
                    destination: Destination::Parked(reason),
                    emitted_by: None,
                },
            );
        }
        futures::future::ready(Ok(())).boxed()
    }

    async fn reader(&self, log: SubscriberId, from: u64) -> Result<Box<dyn AlertReader>, LogError> {
        let head = self.inner.lock().log(log)?.head.subscribe();
        Ok(Box::new(MemoryAlertReader {
            inner: Arc::clone(&self.inner),
            log,
            next: from,
            head,
        }))
    }

    async fn status(&self, log: SubscriberId) -> Result<LogStatus, LogError> {
        Ok(self.inner.lock().log(log)?.status)
    }

    async fn ack(
        &self,
        log: SubscriberId,
        upto: u64,
        at: UtcMillis,
    ) -> Result<LogStatus, LogError> {
        let mut inner = self.inner.lock();
        let log = inner.log_mut(log)?;
        if upto > log.status.head {
            return Err(LogError::BeyondHead {
                requested: upto,
                head: log.status.head,
            });
        }
        if upto > log.status.acked {
            log.journal.push_back(Settled {
                from: log.status.acked + 1,
                upto,
                at,
                expired: false,
            });
        }
        log.status.acked = log.status.acked.max(upto);
        let first = log.status.acked + 1;
        log.drop_below(first);
        Ok(log.status)
    }

    async fn deliveries(
        &self,
        log: SubscriberId,
        from: UtcMillis,
        to: UtcMillis,
    ) -> Result<Vec<Delivered>, LogError> {
        let inner = self.inner.lock();
        let log = inner.log(log)?;
        let journal: Vec<Settled> = log.journal.iter().copied().collect();
        let entries = log.settled.iter().copied().chain(
            log.entries
                .iter()
                .map(|entry| (entry.sequence, entry.alert)),
        );
        Ok(Settled::deliveries(&journal, entries, from, to))
    }

    async fn sla_mark(&self, log: SubscriberId) -> Result<SlaMark, LogError> {
        Ok(self.inner.lock().log(log)?.sla)
    }

    async fn record_sla(
        &self,
        log: SubscriberId,
        seen: u64,
        checked_through: UtcMillis,
        new_breaches: u64,
    ) -> Result<SlaMark, LogError> {
        let mut inner = self.inner.lock();
        let sla = &mut inner.log_mut(log)?.sla;
        sla.seen = sla.seen.max(seen);
        sla.checked_through = sla.checked_through.max(checked_through);
        sla.breaches += new_breaches;
        Ok(*sla)
    }

    async fn parked(&self, partition: Partition) -> Result<Vec<Parked>, LogError> {
        let inner = self.inner.lock();
        Ok(inner
            .parked
            .get(&partition)
            .map(|parked| {
                parked
                    .iter()
                    .map(|(key, entry)| Parked {
                        key: *key,
                        entry: entry.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn move_parked(
        &self,
        partition: Partition,
        moves: Vec<(u64, Alert, Route)>,
    ) -> Result<Vec<Stored>, LogError> {
        let mut inner = self.inner.lock();
        let mut stored = Vec::with_capacity(moves.len());
        for (key, alert, route) in moves {
            let parked = inner.parked.entry(partition).or_default();
            if parked.remove(&key).is_none() {
                continue;
            }
            stored.push(inner.append(alert, route)?);
        }
        Ok(stored)
    }

    async fn list_parked(&self, limit: usize) -> Result<(Vec<LogEntry>, u64), LogError> {
        let inner = self.inner.lock();
        let mut all: Vec<&LogEntry> = inner.parked.values().flat_map(BTreeMap::values).collect();
        all.sort_by_key(|entry| entry.sequence);
        let total = all.len() as u64;
        Ok((all.into_iter().take(limit).cloned().collect(), total))
    }

    async fn maintain(
        &self,
        now: UtcMillis,
        retention: Retention,
    ) -> Result<Vec<Expired>, LogError> {
        let cutoff = Retention::before(now, retention.max_age);
        let mut inner = self.inner.lock();
        let mut expired = Vec::new();
        for (index, log) in inner.logs.iter_mut().enumerate() {
            log.forget_before(Retention::before(now, retention.report));
            let mut first = log.status.first_retained;
            if log.status.head + 1 - first > retention.max_alerts {
                first = log.status.head + 1 - retention.max_alerts;
            }
            while log
                .entry(first)
                .is_some_and(|e| e.alert.emitted_at < cutoff)
            {
                first += 1;
            }
            let acked = log.status.acked;
            let removed = log.drop_below(first);
            if removed > 0 {
                log.journal.push_back(Settled {
                    from: acked + 1,
                    upto: first - 1,
                    at: now,
                    expired: true,
                });
                expired.push(Expired {
                    log: SubscriberId(u16::try_from(index).unwrap_or(u16::MAX)),
                    removed,
                    status: log.status,
                });
            }
        }
        Ok(expired)
    }

    fn heads(&self, _partition: Partition) -> AlertHeads {
        let inner = self.inner.lock();
        AlertHeads(
            inner
                .logs
                .iter()
                .map(|log| (log.name.clone(), log.status.head))
                .collect(),
        )
    }

    async fn guard_replay(
        &self,
        partition: Partition,
        partitions: u16,
        heads: &AlertHeads,
    ) -> Result<(), LogError> {
        let mut inner = self.inner.lock();
        let mut guard = HashMap::new();
        for (index, log) in inner.logs.iter().enumerate() {
            let after = heads
                .0
                .iter()
                .find(|(name, _)| *name == log.name)
                .map_or(0, |(_, head)| *head);
            let id = SubscriberId(u16::try_from(index).unwrap_or(u16::MAX));
            for entry in log.entries.iter().filter(|e| e.sequence > after) {
                if partition_of(entry.alert.point.device, partitions) == partition {
                    guard.insert(entry.alert.id(), (id, entry.sequence));
                }
            }
        }
        inner.guards.insert(partition, guard);
        Ok(())
    }

    fn replayed(&self, partition: Partition) {
        self.inner.lock().guards.remove(&partition);
    }
}

/// Checkpoints in a map.
#[derive(Debug, Default)]
pub struct MemoryCheckpoints {
    saved: Mutex<HashMap<Partition, Checkpoint>>,
}

#[async_trait]
impl Checkpoints for MemoryCheckpoints {
    async fn save(
        &self,
        partition: Partition,
        checkpoint: &Checkpoint,
        lease: &Lease,
    ) -> Result<(), LogError> {
        if !lease.valid() {
            return Err(LogError::Unavailable(format!(
                "partition {partition}: the lease ended before its checkpoint was saved"
            )));
        }
        self.saved.lock().insert(partition, checkpoint.clone());
        Ok(())
    }

    async fn load(&self, partition: Partition) -> Result<Option<Checkpoint>, LogError> {
        Ok(self.saved.lock().get(&partition).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutingConfig;
    use crate::log::conformance::{self, Subject};

    #[tokio::test]
    async fn the_memory_backend_passes_the_conformance_suite() {
        let table = RoutingTable::from_config(&RoutingConfig::default());
        conformance::run_all(&Subject {
            events: Arc::new(MemoryEvents::new(2)),
            alerts: Arc::new(MemoryAlerts::new(&table)),
            checkpoints: Arc::new(MemoryCheckpoints::default()),
            partitions: 2,
            retention: true,
        })
        .await;
    }
}
