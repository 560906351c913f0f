//! # The partitioned log: the seam between the pipeline and its backends
//!
//! Everything above this module is the same code whatever the backend: ingest validation,
//! the owner loop (state machine, timers, de-duplication, routing), delivery, the SLA watch,
//! Admin and the wiring. What truly differs between backends sits below it, behind five
//! traits:
//!
//! | trait | what it is | embedded ([`local`]) | in memory ([`memory`]) | JetStream |
//! |---|---|---|---|---|
//! | [`EventLog`] | each partition's records of device events, in order | segment files, group commit | vectors | one subject per partition |
//! | [`AlertLog`] | per-subscriber alert logs with sequences and cursors, and parked alerts | segment files and cursor files | vectors | one stream per subscriber, cursors in a bucket |
//! | [`Checkpoints`] | a partition's state at a log position | one file per partition | a map | chunked snapshots |
//! | [`Ownership`] | which partitions (and subscribers) this instance acts for | all of them, for ever | all of them | leases |
//! | [`Peers`] | questions for owners on other instances | none | none | NATS request/reply |
//!
//! ## Records
//! A partition's event log is a sequence of [`EventRecord`]s numbered by *position* (from 1,
//! increasing, not necessarily contiguous). A record carries the events one ingest batch
//! brought for the partition, its *arrival* (the log's time: when the record was logged) and
//! when ingest received the batch. A record without events is a *mark*: it only says that log
//! time has reached its arrival. Arrivals never decrease along a partition's log.
//!
//! Who stamps arrivals ([`Sequencing`]): with the embedded log the partition's owner does (it
//! applies a batch, then appends the record it made of it); with JetStream the server does
//! (ingest appends, owners read).
//!
//! ## Decisions follow log time
//! The owner decides by log time only, so that the same records always give the same alerts
//! with the same ids, whether processed live, after a restart or after a take-over:
//! - before a record is applied, every timer due at or before its arrival fires;
//! - a record's own timers that were already due by its arrival fire after the whole record
//!   (a loss past its debounce and the restoration that shows it short, in one batch, give
//!   nothing);
//! - between records, timers fire only up to a time no earlier record can still follow: the
//!   owner's own clock when it stamps (embedded), a mark's arrival otherwise (JetStream).
//!
//! ## Invariants every implementation keeps ([`conformance`] checks them)
//! - An append resolves only once what it appended is durable (as the implementation
//!   defines it: fdatasync'd, or acknowledged by a replica quorum). A publisher's ack means
//!   durable.
//! - Appends to one partition's event log, and to one subscriber's alert log, are stored in
//!   call order.
//! - Per subscriber, sequences run 1..=head with no gap and are never reused, not even after
//!   a restart or after retention removed entries. Reading below what is retained is
//!   [`LogError::Gone`], never a silent skip.
//! - Acks are cumulative, never move back, and may not pass the head.
//! - An alert stored again after a replay ([`AlertLog::guard_replay`]) keeps its first
//!   sequence and is reported as a duplicate.
//! - An absent subscriber's backlog costs disk (or the cluster's storage), not memory.
//! - Each ack and each retention removal is kept with its time, and the alerts it covered
//!   stay readable for [`AlertLog::deliveries`] (the compliance report) for the report
//!   retention after it, even though readers no longer see them.

pub mod codec;
pub mod conformance;
pub mod jetstream;
pub mod local;
pub mod memory;
pub mod single;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::debounce::OpenOutage;
use crate::domain::{Alert, DeviceEvent, DeviceId, SupplyPoint, UtcMillis};
use crate::route::{ParkReason, Route, SubscriberId};

/// Index of a partition of the device space.
pub type Partition = u16;

/// The partition every supply point of `device` belongs to, out of `partitions`.
pub fn partition_of(device: DeviceId, partitions: u16) -> Partition {
    // Fibonacci hashing spreads sequential EUIs evenly.
    let mixed = device.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    u16::try_from(mixed % u64::from(partitions.max(1))).unwrap_or(0)
}

/// One record of a partition's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Log time: when the record was logged. Never decreases along a partition's log.
    pub arrival: UtcMillis,
    /// When ingest received the batch (decides whether a late alert was the relay's fault).
    pub received: UtcMillis,
    /// The events, in the order they were sent; empty for a mark.
    pub events: Vec<DeviceEvent>,
}

/// A record read back, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Where it is in its partition's log.
    pub position: u64,
    /// The record.
    pub record: EventRecord,
}

/// Where an append put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// The position of the record (of its last event, where a backend stores them apart).
    pub position: u64,
    /// Events the log itself recognised as repeats and did not store again (a log-sequenced
    /// backend with its own de-duplication; 0 where the owner de-duplicates).
    pub duplicates: u64,
}

/// Who stamps arrivals and appends a partition's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequencing {
    /// The partition's owner: ingest hands it batches; it applies each and appends the record.
    Owner,
    /// The log: ingest appends; the log stamps arrivals; the owner reads.
    Log,
}

/// Why a log operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The requested sequence is no longer retained.
    #[error("sequence {requested} is no longer retained; the oldest available is {first_retained}")]
    Gone {
        /// What was asked for.
        requested: u64,
        /// The oldest readable sequence.
        first_retained: u64,
    },
    /// An ack or read past the last written sequence.
    #[error("sequence {requested} is beyond the last written sequence {head}")]
    BeyondHead {
        /// What was asked for.
        requested: u64,
        /// The head.
        head: u64,
    },
    /// The log cannot take more (disk full).
    #[error("log is full: {0}")]
    Full(String),
    /// The log failed or cannot be reached; worth trying again.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// Stored data cannot be read back.
    #[error("log data is corrupt: {0}")]
    Corrupt(String),
}

/// A partition's durable event log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Who stamps arrivals and appends records.
    fn sequencing(&self) -> Sequencing;

    /// Appends `record` to `partition`; the future resolves once it is durable, with its
    /// position. Appends to one partition are stored in call order. A record without events
    /// is a mark.
    fn append(
        &self,
        partition: Partition,
        record: EventRecord,
    ) -> BoxFuture<'static, Result<Appended, LogError>>;

    /// A reader of `partition` from the first record after position `after` (0: the start).
    async fn reader(
        &self,
        partition: Partition,
        after: u64,
    ) -> Result<Box<dyn EventReader>, LogError>;

    /// Records at or before `through` are no longer needed by the owner: a checkpoint
    /// covers them. Those that arrived at or after `keep_since` are kept all the same (the
    /// event retention, for `outage-relay replay`); the rest may go. A backend may keep more
    /// (whole segments, or its own age limit), never less.
    async fn truncate(
        &self,
        partition: Partition,
        through: u64,
        keep_since: UtcMillis,
    ) -> Result<(), LogError>;
}

/// Reads one partition's records in order.
#[async_trait]
pub trait EventReader: Send {
    /// The next record. `None` once every record stored when the reader was opened has been
    /// read and the log is [`Sequencing::Owner`]: the replay is over and the owner sequences
    /// from here on. A [`Sequencing::Log`] reader waits for more instead.
    async fn next(&mut self) -> Result<Option<Logged>, LogError>;

    /// Records stored and not yet read, as far as the reader knows (0: caught up).
    fn lag(&self) -> u64;
}

/// Where an alert went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To a subscriber, with the routing facts the DNO sees.
    Routed(Route),
    /// Nowhere yet, and why.
    Parked(ParkReason),
}

/// One stored alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in its log, from 1.
    pub sequence: u64,
    /// The alert.
    pub alert: Alert,
    /// Its route, or why it is parked.
    pub destination: Destination,
    /// The relay instance that stored it, where the backend records one.
    pub emitted_by: Option<Arc<str>>,
}

/// Cursor positions of one subscriber's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStatus {
    /// Last sequence written (0 when empty).
    pub head: u64,
    /// Last sequence acknowledged (0 when none).
    pub acked: u64,
    /// First sequence still readable.
    pub first_retained: u64,
}

impl LogStatus {
    /// Entries written and not acknowledged.
    pub fn backlog(&self) -> u64 {
        self.head.saturating_sub(self.acked)
    }
}

/// What an append did with one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Its sequence in its subscriber's log.
    pub sequence: u64,
    /// It was already stored (re-emitted by a replay): nothing new was written.
    pub duplicate: bool,
}

/// How far a subscriber's SLA watch has got, kept with its log so a restart neither misses
/// nor repeats a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlaMark {
    /// Every entry up to this sequence has been seen by the watch.
    pub seen: u64,
    /// Among those, every deadline up to this time has been checked.
    pub checked_through: UtcMillis,
    /// Breaches counted against the subscriber so far.
    pub breaches: u64,
}

/// Each subscriber log's head, by subscriber name, as a checkpoint records them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertHeads(pub Vec<(String, u64)>);

/// A parked alert, and the key that removes it once it is routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Identifies it among its partition's parked alerts.
    pub key: u64,
    /// The alert and why it was parked.
    pub entry: LogEntry,
}

impl Parked {
    /// The first `limit` entries of `parked` (oldest first already), and how many there are:
    /// what `list_parked` answers.
    pub fn oldest(parked: Vec<Parked>, limit: usize) -> (Vec<LogEntry>, u64) {
        let total = parked.len() as u64;
        let entries = parked
            .into_iter()
            .take(limit)
            .map(|parked| parked.entry)
            .collect();
        (entries, total)
    }
}

/// The limits [`AlertLog::maintain`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Unacknowledged alerts kept per log at most.
    pub max_alerts: u64,
    /// Unacknowledged alerts emitted longer ago than this are removed.
    pub max_age: std::time::Duration,
    /// Settled alerts (acknowledged or removed) are kept this long for the report.
    pub report: std::time::Duration,
}

impl Retention {
    /// The limits in `config.store`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_alerts: config.store.retention_max_alerts,
            max_age: config.store.retention_max_age,
            report: config.store.report_retention,
        }
    }

    /// `now` less `age` (saturating).
    pub fn before(now: UtcMillis, age: std::time::Duration) -> UtcMillis {
        UtcMillis(
            now.0
                .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

/// Unacknowledged alerts retention removed from one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The subscriber.
    pub log: SubscriberId,
    /// How many unacknowledged alerts were removed.
    pub removed: u64,
    /// The log's cursors afterwards.
    pub status: LogStatus,
}

/// What became of a stored alert, as the compliance report reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Acknowledged: the time of the first ack that covered it (acks are cumulative).
    Acked(UtcMillis),
    /// Removed by retention before anyone acknowledged it, at this time.
    Expired(UtcMillis),
    /// Neither yet.
    Pending,
}

/// A stored alert and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Its sequence in its subscriber's log.
    pub sequence: u64,
    /// The alert.
    pub alert: Alert,
    /// Acknowledged, expired or pending.
    pub fate: Fate,
}

/// One record of the delivery journal: sequences `from..=upto` were settled at `at`, by an
/// ack (the first that covered them; acks are cumulative) or by retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The first sequence it settled (the cursor before it, plus one).
    pub from: u64,
    /// The cursor after it.
    pub upto: u64,
    /// When.
    pub at: UtcMillis,
    /// Retention removed them (rather than an ack).
    pub expired: bool,
}

impl Settled {
    /// What became of `sequence` by `journal` (ordered by `upto`, as written); `None` when
    /// the journal no longer knows (it was settled before the oldest record kept).
    pub fn fate_of(journal: &[Settled], sequence: u64) -> Option<Fate> {
        let index = journal.partition_point(|settled| settled.upto < sequence);
        match journal.get(index) {
            Some(settled) if settled.from > sequence => None,
            Some(settled) if settled.expired => Some(Fate::Expired(settled.at)),
            Some(settled) => Some(Fate::Acked(settled.at)),
            None => Some(Fate::Pending),
        }
    }

    /// `records` as [`Self::fate_of`] reads them, when several writers may have journalled
    /// acks out of order or twice (instances acking for one subscriber): ordered by `upto`,
    /// each starting after the one before, and a record's time no later than any record
    /// after it (an ack covers everything before it).
    pub fn normalise(mut records: Vec<Settled>) -> Vec<Settled> {
        records.sort_by_key(|settled| (settled.upto, settled.at));
        records.dedup_by_key(|settled| settled.upto);
        let mut earliest = UtcMillis(i64::MAX);
        for settled in records.iter_mut().rev() {
            earliest = earliest.min(settled.at);
            settled.at = earliest;
        }
        for index in 1..records.len() {
            records[index].from = records[index - 1].upto + 1;
        }
        records
    }

    /// The alerts of `entries` due in `[from, to)` whose fate `journal` knows, each with it.
    pub fn deliveries(
        journal: &[Settled],
        entries: impl IntoIterator<Item = (u64, Alert)>,
        from: UtcMillis,
        to: UtcMillis,
    ) -> Vec<Delivered> {
        entries
            .into_iter()
            .filter(|(_, alert)| alert.due_at >= from && alert.due_at < to)
            .filter_map(|(sequence, alert)| {
                Some(Delivered {
                    sequence,
                    alert,
                    fate: Self::fate_of(journal, sequence)?,
                })
            })
            .collect()
    }
}

/// Reads one subscriber's log in order.
#[async_trait]
pub trait AlertReader: Send {
    /// Up to `max` entries from the reader's position on, waiting until at least one is
    /// stored. Entries removed meanwhile (acknowledged through another stream, or by
    /// retention) are skipped: the reader goes on from the first one retained.
    async fn next(&mut self, max: usize) -> Result<Vec<LogEntry>, LogError>;
}

/// The subscribers' alert logs and the parked alerts.
#[async_trait]
pub trait AlertLog: Send + Sync + 'static {
    /// Stores routed alerts, each in its subscriber's log, in the order given; resolves once
    /// they are durable, with one [`Stored`] per alert. An alert appended after records
    /// (or alerts) whose appends were issued earlier is durable no earlier than they are.
    fn append(
        &self,
        alerts: Vec<(Alert, Route)>,
    ) -> BoxFuture<'static, Result<Vec<Stored>, LogError>>;

    /// Stores alerts of `partition` that route nowhere, in order; resolves once durable.
    fn park(
        &self,
        partition: Partition,
        alerts: Vec<(Alert, ParkReason)>,
    ) -> BoxFuture<'static, Result<(), LogError>>;

    /// A reader of subscriber `log` from sequence `from`.
    async fn reader(&self, log: SubscriberId, from: u64) -> Result<Box<dyn AlertReader>, LogError>;

    /// Cursor positions of subscriber `log`.
    async fn status(&self, log: SubscriberId) -> Result<LogStatus, LogError>;

    /// [`Self::status`] for a caller that knows `sequence` was stored (it received it): a
    /// backend whose reported head can lag a delivered message waits, for a bounded time,
    /// until the head reaches it.
    async fn status_reaching(
        &self,
        log: SubscriberId,
        _sequence: u64,
    ) -> Result<LogStatus, LogError> {
        self.status(log).await
    }

    /// The retained range of `log`, `(first_retained, head)`, for a caller resuming after
    /// `sequence` it received (waiting, as [`Self::status_reaching`], for a lagging head),
    /// without the cursor: a backend that keeps cursors apart from the alerts (JetStream: a
    /// bucket with a leader of its own) serves a resumed `Subscribe` while they cannot be read.
    async fn retained_reaching(
        &self,
        log: SubscriberId,
        sequence: u64,
    ) -> Result<(u64, u64), LogError> {
        let status = self.status_reaching(log, sequence).await?;
        Ok((status.first_retained, status.head))
    }

    /// Moves `log`'s cursor to `upto` (cumulative; never back) at relay time `at`; resolves
    /// once durable, with the cursors afterwards. Beyond the head: [`LogError::BeyondHead`].
    /// A move is journalled with `at` for the compliance report.
    async fn ack(&self, log: SubscriberId, upto: u64, at: UtcMillis)
    -> Result<LogStatus, LogError>;

    /// The alerts of `log` due in `[from, to)` that are still kept for the report, in
    /// sequence order, each with what became of it.
    async fn deliveries(
        &self,
        log: SubscriberId,
        from: UtcMillis,
        to: UtcMillis,
    ) -> Result<Vec<Delivered>, LogError>;

    /// `log`'s SLA watch progress.
    async fn sla_mark(&self, log: SubscriberId) -> Result<SlaMark, LogError>;

    /// Records the watch's progress: `seen` and `checked_through` move forward only, and
    /// `new_breaches` is added to the count.
    async fn record_sla(
        &self,
        log: SubscriberId,
        seen: u64,
        checked_through: UtcMillis,
        new_breaches: u64,
    ) -> Result<SlaMark, LogError>;

    /// Every parked alert of `partition`, oldest first.
    async fn parked(&self, partition: Partition) -> Result<Vec<Parked>, LogError>;

    /// Moves parked alerts of `partition` that now have a route (by [`Parked::key`]) into
    /// their subscribers' logs and out of the parked ones, exactly once even across a crash:
    /// calling it again for the same moves stores nothing twice.
    async fn move_parked(
        &self,
        partition: Partition,
        moves: Vec<(u64, Alert, Route)>,
    ) -> Result<Vec<Stored>, LogError>;

    /// The oldest `limit` parked alerts of every partition, and how many are parked.
    async fn list_parked(&self, limit: usize) -> Result<(Vec<LogEntry>, u64), LogError>;

    /// Retention and housekeeping, run periodically: unacknowledged alerts beyond
    /// `max_alerts` per log or emitted before `now - max_age` are removed (and journalled at
    /// `now`); alerts settled before `now - report_retention`, and their journal, may go.
    async fn maintain(
        &self,
        now: UtcMillis,
        retention: Retention,
    ) -> Result<Vec<Expired>, LogError>;

    /// Each log's durable head now, as a checkpoint of `partition` records them: a later
    /// owner reads the partition's alerts stored after them ([`AlertLog::guard_replay`]).
    /// No higher than the heads of the partition's own replay while alerts found stored
    /// after those are still to be emitted again (a checkpoint taken mid-replay must not
    /// skip them).
    fn heads(&self, partition: Partition) -> AlertHeads;

    /// Before `partition` replays from a checkpoint taken at `heads`: the alerts of its
    /// supply points stored after those heads may be emitted again by the replay, and must
    /// come back as duplicates with their first sequence.
    async fn guard_replay(
        &self,
        partition: Partition,
        partitions: u16,
        heads: &AlertHeads,
    ) -> Result<(), LogError>;

    /// `partition`'s replay is over: its guard may be dropped.
    fn replayed(&self, partition: Partition);

    /// `partition`'s owner acts under `lease` from now on. A backend that stores appends
    /// later than they are made (queued behind other work, or retried) drops the
    /// partition's appends once the lease is no longer valid, so that nothing an earlier
    /// owner appended lands after a new owner read what was stored.
    fn fence(&self, _partition: Partition, _lease: &Lease) {}
}

/// How long `Subscribe`, `Ack` and a partition's recovery keep trying a log that answers
/// [`LogError::Unavailable`] or does not answer: longer than a JetStream leader election after
/// a node's death (a follower waits 4–9 s for its lost leader before it campaigns: nats-server's
/// `minElectionTimeout`..`maxElectionTimeout`), with room for a second round.
pub const RIDE_THROUGH: Duration = Duration::from_secs(15);

/// How long the first attempt of [`ride_through`] may go unanswered before it is abandoned
/// and tried again; each later one may take twice as long as the one before. A request to a
/// stream without a leader is not answered at all (it waits out the client's 5 s request
/// timeout), so this decides how soon after an election a request reaches the new leader.
pub const FIRST_ATTEMPT_WITHIN: Duration = Duration::from_secs(2);

/// Runs `attempt` until it succeeds, fails otherwise than [`LogError::Unavailable`], or
/// [`RIDE_THROUGH`] has passed (then its last error), with backoff from 50 ms to 1 s. An
/// attempt unanswered within its bound ([`FIRST_ATTEMPT_WITHIN`], doubling) is abandoned and
/// counts as unavailable. `attempt` must be safe to repeat, and to abandon half done (reads,
/// and cumulative acks, are).
pub async fn ride_through<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, LogError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LogError>>,
{
    let deadline = tokio::time::Instant::now() + RIDE_THROUGH;
    let mut pause = Duration::from_millis(50);
    let mut within = FIRST_ATTEMPT_WITHIN;
    loop {
        let bound = within.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let outcome = match tokio::time::timeout(bound, attempt()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(LogError::Unavailable(format!(
                "{what}: no answer within {bound:?}"
            ))),
        };
        match outcome {
            Err(LogError::Unavailable(reason))
                if tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::debug!(what, %reason, "log unavailable; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                within *= 2;
            }
            done => return done,
        }
    }
}

/// How often [`ride_through_read`] sends another attempt while earlier ones go unanswered.
pub const READ_AGAIN_EVERY: Duration = Duration::from_secs(1);

/// Attempts of [`ride_through_read`] waiting at once, at most.
const READS_IN_FLIGHT: usize = 4;

/// [`ride_through`] for a read: while earlier attempts go unanswered, another is sent every
/// [`READ_AGAIN_EVERY`] (up to `READS_IN_FLIGHT`, 4, waiting at once, each left to its own
/// request timeout), and the first answer wins. A request sent while a stream or the
/// JetStream meta group has no leader is never answered; abandoning it after a bound that
/// doubles (as `ride_through` does, safe for any attempt) can leave the read waiting seconds
/// after the election, where this sends one within a second of it (a take-over's events
/// reader waited 4 s past the meta leader's election). `attempt` must be safe to run
/// several times at once, and to drop unfinished: reads are; one may make a consumer that
/// is then left to expire.
pub async fn ride_through_read<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, LogError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LogError>>,
{
    use futures::StreamExt as _;
    let deadline = tokio::time::Instant::now() + RIDE_THROUGH;
    let mut pause = Duration::from_millis(50);
    let mut attempts = futures::stream::FuturesUnordered::new();
    attempts.push(attempt());
    let mut next = tokio::time::Instant::now() + READ_AGAIN_EVERY;
    let mut last = format!("{what}: no answer within {RIDE_THROUGH:?}");
    loop {
        tokio::select! {
            Some(outcome) = attempts.next() => match outcome {
                Err(LogError::Unavailable(reason)) => {
                    tracing::debug!(what, %reason, "log unavailable; trying again");
                    last = reason;
                    if attempts.is_empty() {
                        next = next.min(tokio::time::Instant::now() + pause);
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
                done => return done,
            },
            () = tokio::time::sleep_until(next), if next < deadline => {
                if attempts.len() < READS_IN_FLIGHT {
                    attempts.push(attempt());
                }
                next = tokio::time::Instant::now() + READ_AGAIN_EVERY;
            }
            () = tokio::time::sleep_until(deadline) => return Err(LogError::Unavailable(last)),
        }
    }
}

/// A partition's state at a position of its event log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Every record up to and including this position is reflected in `state`.
    pub position: u64,
    /// The owner's encoded state (see `owner::checkpoint`).
    pub state: Vec<u8>,
}

/// Where partitions' checkpoints are kept.
#[async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    /// Stores `checkpoint` as `partition`'s latest, replacing the previous one atomically,
    /// unless `lease` has ended meanwhile.
    async fn save(
        &self,
        partition: Partition,
        checkpoint: &Checkpoint,
        lease: &Lease,
    ) -> Result<(), LogError>;

    /// `partition`'s latest checkpoint; `None` when it has none (or none usable: the owner
    /// then replays the whole retained log).
    async fn load(&self, partition: Partition) -> Result<Option<Checkpoint>, LogError>;
}

/// The right to act for a unit of work, for as long as it lasts.
///
/// An owner checks [`Lease::valid`] before every write that others could see, and stops when
/// [`Lease::ended`] resolves. An embedded lease never ends before shutdown.
#[derive(Debug, Clone)]
pub struct Lease {
    window: watch::Receiver<Instant>,
    stop: CancellationToken,
}

impl Lease {
    /// A lease that lasts until `stop`.
    pub fn until(stop: CancellationToken) -> Self {
        let far = Instant::now() + std::time::Duration::from_secs(100 * 365 * 24 * 3600);
        let (tx, window) = watch::channel(far);
        // The sender is dropped: the window never moves again, and never closes early.
        drop(tx);
        Self { window, stop }
    }

    /// A lease valid until the instant `window` holds (moved forward by renewals), ended
    /// by `stop`.
    pub fn renewable(window: watch::Receiver<Instant>, stop: CancellationToken) -> Self {
        Self { window, stop }
    }

    /// Whether the holder may still act on the unit: its lease has not run out. (A holder
    /// told to stop may still finish what it holds while its lease is valid, e.g. store a
    /// last checkpoint.)
    pub fn valid(&self) -> bool {
        Instant::now() < *self.window.borrow()
    }

    /// Resolves when the holder must stop.
    pub async fn ended(&self) {
        self.stop.cancelled().await;
    }

    /// The token cancelled when the holder must stop.
    pub fn token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Whether `other` is this same lease (a clone of it), not another holding of the unit.
    pub fn same(&self, other: &Lease) -> bool {
        self.window.same_channel(&other.window)
    }
}

/// A unit of work an instance can own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    /// A partition: its owner loop.
    Partition(Partition),
    /// A subscriber: its SLA watch, and its push session in push mode.
    Subscriber(SubscriberId),
}

/// Starts the task for a unit this instance now owns.
pub type StartUnit = Arc<dyn Fn(Unit, Lease) -> JoinHandle<()> + Send + Sync>;

/// Ownership as `Admin.GetClusterStatus` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// `embedded`, `memory` or `jetstream`.
    pub backend: String,
    /// This instance's name.
    pub instance: String,
    /// Partitions of the device space.
    pub partitions: u16,
    /// Instances known to be alive.
    pub live: Vec<String>,
    /// Partitions this instance owns.
    pub owned_here: Vec<Partition>,
    /// Every partition's owner and lease revision, where known.
    pub owners: Vec<(Partition, String, u64)>,
}

/// Which units this instance acts for.
#[async_trait]
pub trait Ownership: Send + Sync + 'static {
    /// Runs until `stop`: starts a task (through `start`) for each of `units` this instance
    /// comes to own, ends its lease when ownership is lost, and gives everything up on stop.
    async fn run(&self, units: Vec<Unit>, start: StartUnit, stop: CancellationToken);

    /// What this instance knows of ownership now.
    fn view(&self) -> ClusterView;
}

/// A question for the owner of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerQuery {
    /// The open outages of one device.
    Device(DeviceId),
    /// Open outages, oldest first, at most `limit`.
    Outages {
        /// At most this many.
        limit: usize,
    },
}

/// An owner's answer: open outages and how many match in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerAnswer {
    /// The outages, oldest first.
    pub outages: Vec<(SupplyPoint, OpenOutage)>,
    /// How many match in all.
    pub total: u64,
}

/// Other instances: their partition owners, and registry reloads on all of them.
#[async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Asks the owner of `partition` on another instance.
    async fn ask(
        &self,
        partition: Partition,
        query: OwnerQuery,
    ) -> Result<OwnerAnswer, crate::error::RelayError>;

    /// Reloads the device registry on every instance, this one included.
    async fn reload(
        &self,
        request: crate::proto::ReloadRegistryRequest,
    ) -> Result<crate::proto::ReloadRegistryResponse, crate::error::RelayError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(from: u64, upto: u64, at: i64) -> Settled {
        Settled {
            from,
            upto,
            at: UtcMillis(at),
            expired: false,
        }
    }

    #[test]
    fn a_sequence_takes_the_fate_of_the_first_record_that_covers_it() {
        let journal = [
            settled(3, 4, 10),
            Settled {
                expired: true,
                ..settled(5, 7, 20)
            },
        ];
        let fates: Vec<Option<Fate>> = (2..=8)
            .map(|sequence| Settled::fate_of(&journal, sequence))
            .collect();
        assert_eq!(
            fates,
            [
                None,
                Some(Fate::Acked(UtcMillis(10))),
                Some(Fate::Acked(UtcMillis(10))),
                Some(Fate::Expired(UtcMillis(20))),
                Some(Fate::Expired(UtcMillis(20))),
                Some(Fate::Expired(UtcMillis(20))),
                Some(Fate::Pending),
            ]
        );
    }

    #[test]
    fn records_of_several_writers_are_put_in_order() {
        let normalised = Settled::normalise(vec![
            settled(1, 5, 30),
            settled(1, 3, 40),
            settled(4, 5, 35),
            settled(6, 9, 50),
        ]);
        assert_eq!(
            normalised,
            [settled(1, 3, 30), settled(4, 5, 30), settled(6, 9, 50)],
            "an ack through 5 at 30 acknowledged 1..=3 by then too"
        );
    }
}
