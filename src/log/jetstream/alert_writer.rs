//! A subscriber stream's writer: each instance runs one per subscriber it emits alerts for.
//!
//! Appends hand it their alerts for the subscriber, in call order, through a queue. Each
//! turn it takes everything queued (up to [`GROUP_MAX`] alerts: a group commit), cuts it into
//! messages ([`alert_batch::next_cut`]) and stores them in order, up to [`WINDOW`] at once
//! as one atomic batch ([`Writer::pipeline`]; one at a time on a server without atomic
//! batches, such as nats-server 2.9):
//! - a message says which DNO sequences it holds (`first`, `count`) and is published with
//!   `Nats-Expected-Last-Sequence` set to the stream's last message as the writer knows it
//!   (a batch: its first message), so a message stored by another instance meanwhile makes
//!   the publish fail instead of two messages claiming the same sequences; the writer then
//!   reads the tail again and re-cuts;
//! - a publish whose outcome is unknown (a timeout while a leader is elected) is sent again
//!   unchanged: if the first copy was stored, the stream recognises the message id and
//!   acknowledges the first copy, whose placement the writer then reads;
//! - it keeps trying for up to [`STORE_WITHIN`], then fails the jobs of the group, and
//!   refuses every later job of their partitions under the same leases: their owners end on
//!   that failure, and a later alert of one of them stored before the failed one is emitted
//!   again would put a supply point's alerts out of order (seen in the cluster fault test
//!   once owners kept appending while one waited: a PRA stored before its POA). The
//!   partitions' next owners (new leases) replay and emit them again in order;
//! - it stores nothing for a partition whose owner's lease is no longer valid (its fence,
//!   [`crate::log::AlertLog::fence`]): a job queued under an ended lease is refused, and a
//!   lease that ends while its group is stored drops that partition's alerts at the next
//!   window boundary, where nothing is in doubt, while the rest of the group is stored (a
//!   message in doubt holding its alerts fails the group: see [`Writer::store`]). A new
//!   owner reads what was stored after its checkpoint only once the lease ended, so nothing
//!   the earlier owner appended lands after that read.
//!
//! A new owner's guard ([`Request::Guard`]) is queued to each writer before the owner
//! replays: the writer stores a barrier (a message holding no alerts) at the end like any
//! other message, reads the partition's alerts stored after the checkpoint's head up to it,
//! and from then on answers those alerts, emitted again by the replay, with their first
//! sequence instead of storing them again. A publish an earlier owner sent before its lease
//! ended is either before the barrier in the stream's log (and read), or is refused by its
//! `Nats-Expected-Last-Sequence`, which the barrier no longer matches. No fixed wait decides
//! it (a publish held in a leader election could land seconds later, after a read that
//! waited a fixed time, and be stored twice). The owner does not wait for its guards: its
//! alerts queue behind them, so a stream without a leader holds up only that subscriber's
//! alerts of the partition taken over, not its recovery. A guard that cannot be kept (its
//! barrier or its read failed) refuses the partition's later alerts for that stream under
//! the owner's lease: that owner ends and the partition is taken up again.
//!
//! Writers of different subscribers do not wait for each other: a stream without a leader
//! holds up only its own subscriber's alerts, and an owner goes on reading while one of its
//! appends waits (up to `store.jetstream.appends_in_flight`; its checkpoint waits instead).
//! The queue is unbounded in type, but bounded by the owners' appends in flight and by
//! [`STORE_WITHIN`], after which a stalled group's jobs fail and their owners end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use futures::StreamExt;
use metrics::counter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};

use super::EMITTED_BY;
use super::alert_batch::{self, COUNT, FIRST, Placed};
use super::alert_stream::{self, AlertStream, Tail};
use crate::domain::Alert;
use crate::domain::alert::AlertId;
use crate::log::{Destination, Lease, LogError, Partition, Stored, partition_of};
use crate::telemetry;

/// Alerts a writer takes from its queue in one turn.
pub const GROUP_MAX: usize = 65_536;
/// How long a writer keeps trying to store a message.
pub const STORE_WITHIN: Duration = Duration::from_secs(20);
/// First and longest wait before a message is sent again.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// How long the first read after a failure may take (see [`read_within`]).
const READ_WITHIN: Duration = Duration::from_secs(1);

/// How long a read the writer makes after `failures` failures (the stream's bounds, a look
/// for a message in doubt) may take before it is abandoned as failed and made again: the
/// first within [`READ_WITHIN`], each later one twice as long (up to eight times). A read
/// abandoned has no effect, unlike a publish (whose answer the writer always waits for,
/// see [`STORE_WITHIN`]), so a stream whose leader died is found again within about a second
/// of its election instead of a request timeout (5 s) later.
fn read_within(failures: u32) -> Duration {
    READ_WITHIN * 2u32.pow(failures.saturating_sub(1).min(3))
}
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Messages a writer stores at once, as one atomic batch (see [`Writer::pipeline`]).
pub const WINDOW: usize = 8;
/// How often the DNO's head is recorded in the cursors bucket while alerts are stored.
const RECORD_HEAD_EVERY: Duration = Duration::from_secs(1);

/// The leases under which this instance's owners act, by partition: an append's jobs carry
/// the one current when it was made.
pub type Fences = Arc<Mutex<HashMap<Partition, Lease>>>;

/// Of one stream, by partition: the head a replay's guard was asked for, while the guard
/// may still hold alerts to be emitted again. Set when the guard is asked for, removed by the
/// writer once the guard holds none (see [`crate::log::AlertLog::heads`]).
pub type Floors = Arc<Mutex<HashMap<Partition, u64>>>;

/// What an instance asks of a subscriber's writer; requests are served in queue order.
pub enum Request {
    /// Store a job's alerts.
    Store(Job),
    /// Guard a partition's replay (see the module doc): a barrier after everything queued
    /// before it, then the read. Guards asked for in the same turn share one barrier.
    Guard(GuardRequest),
}

/// A new owner's guard of one stream.
pub struct GuardRequest {
    /// The partition taken over.
    pub partition: Partition,
    /// The stream's head in the partition's checkpoint: its alerts stored after it may be
    /// emitted again.
    pub after: u64,
    /// The new owner's lease: a guard that failed refuses its later jobs.
    pub lease: Option<Lease>,
    /// Answered with how many of the partition's alerts the read found, once the guard
    /// holds.
    pub done: oneshot::Sender<Result<usize, LogError>>,
}

/// A replayed partition's alerts found stored after its checkpoint, by id, and since when.
type Guard = (Instant, HashMap<AlertId, u64>);

/// How long a guard answers for a replayed partition. Not only the replay of its records
/// emits alerts again: a timer the earlier owner had fired fires again at the next mark
/// after the replay. A guard's entries go once answered; the guard goes after this long,
/// as JetStream's duplicate window for a message sent again.
const GUARD_FOR: Duration = Duration::from_secs(30 * 60);
/// Bound on waiting for the next message while reading a stream back.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A guard reads a range shorter than this many messages by sequence, without a consumer.
const GUARD_READ_BY_SEQUENCE: u64 = 256;
/// Messages a guard reads back by sequence at once.
const GUARD_READS_AT_ONCE: usize = 16;

/// Alerts of one append for one subscriber, and where to answer.
pub struct Job {
    /// The partition whose owner appended them (an append is one partition's).
    pub partition: Partition,
    /// The lease that owner held when it appended them (`None`: not fenced). A later owner
    /// of the partition, even on this instance, has another lease.
    pub lease: Option<Lease>,
    /// The alerts, in the order appended.
    pub alerts: Vec<(Alert, Destination)>,
    /// Resolved with one [`Stored`] per alert once all are stored.
    pub done: oneshot::Sender<Result<Vec<Stored>, LogError>>,
}

/// Starts the writer of `stream`; its queue closes when every sender is dropped.
pub fn spawn(stream: AlertStream, floors: Floors) -> mpsc::UnboundedSender<Request> {
    let (queue, requests) = mpsc::unbounded_channel();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let writer = Writer {
        stream,
        group: Vec::new(),
        failed: Vec::new(),
        guards: HashMap::new(),
        floors,
        tail: None,
        head_recorded: (Instant::now(), 0),
        started,
        barriers: 0,
        batches: 0,
    };
    tokio::spawn(writer.run(requests));
    queue
}

struct Writer {
    stream: AlertStream,
    /// The leases of the group being stored: a retry stops once one ended.
    group: Vec<(Partition, Lease)>,
    /// Partitions whose alerts this writer failed to store, under the lease they were
    /// appended under: later jobs under that lease are refused (see the module doc).
    failed: Vec<(Partition, Lease)>,
    /// Partitions taken over by this instance: their alerts found already stored.
    guards: HashMap<Partition, Guard>,
    /// Shared with the checkpoints: removed here once a partition's guard holds nothing.
    floors: Floors,
    /// The stream's last message as far as this writer knows; `None`: read it first.
    tail: Option<Tail>,
    /// When the head was last recorded, and what it was.
    head_recorded: (Instant, u64),
    /// When this writer started, in ms since the epoch: with the instance's name and a
    /// count, the unique id of a barrier or a batch.
    started: u64,
    /// Barriers this writer stored.
    barriers: u64,
    /// Atomic batches this writer sent.
    batches: u64,
}

/// Where a message was stored.
struct Landed {
    /// Its alerts' sequences.
    placed: Placed,
    /// Its stream sequence.
    at: u64,
    /// Found stored before this writer's publish of it: by an earlier owner.
    duplicate: bool,
}

impl Landed {
    fn stored(&self) -> impl Iterator<Item = Stored> + '_ {
        (0..self.placed.count).map(|index| Stored {
            sequence: self.placed.first + index,
            duplicate: self.duplicate,
        })
    }
}

/// A group's alerts to be stored, in order, each with its partition and its place in the
/// group; those from `next` on are still to be stored.
struct Queue {
    alerts: Vec<(Alert, Destination)>,
    partitions: Vec<Partition>,
    places: Vec<usize>,
    next: usize,
}

impl Queue {
    /// The alerts of `jobs`, in job order, but for those a replay guard finds already
    /// stored (taken from `guards`): those are answered at once, as duplicates with their
    /// first sequence. Returns the queue and the group's answers so far, by place.
    fn of(jobs: &[Job], guards: &mut HashMap<Partition, Guard>) -> (Self, Vec<Option<Stored>>) {
        let total = jobs.iter().map(|job| job.alerts.len()).sum();
        let mut answers = vec![None; total];
        let mut queue = Self {
            alerts: Vec::with_capacity(total),
            partitions: Vec::with_capacity(total),
            places: Vec::with_capacity(total),
            next: 0,
        };
        let mut place = 0;
        for job in jobs {
            let mut guard = guards.get_mut(&job.partition);
            for (alert, destination) in &job.alerts {
                let stored = guard
                    .as_mut()
                    .and_then(|(_, stored)| stored.remove(&alert.id()));
                match stored {
                    Some(sequence) => {
                        answers[place] = Some(Stored {
                            sequence,
                            duplicate: true,
                        });
                    }
                    None => {
                        queue.alerts.push((*alert, *destination));
                        queue.partitions.push(job.partition);
                        queue.places.push(place);
                    }
                }
                place += 1;
            }
        }
        (queue, answers)
    }

    /// The alerts still to be stored.
    fn rest(&self) -> &[(Alert, Destination)] {
        &self.alerts[self.next..]
    }

    /// The partitions of [`Self::rest`], alert by alert.
    fn rest_partitions(&self) -> &[Partition] {
        &self.partitions[self.next..]
    }

    /// Moves past the next `count` alerts, stored; answers their places in the group.
    fn take(&mut self, count: usize) -> Vec<usize> {
        let end = (self.next + count).min(self.alerts.len());
        let taken = self.places[self.next..end].to_vec();
        self.next = end;
        taken
    }

    /// Drops the alerts of `partition` still to be stored; answers how many.
    fn drop_partition(&mut self, partition: Partition) -> usize {
        let before = self.alerts.len() - self.next;
        let kept: Vec<usize> = (self.next..self.alerts.len())
            .filter(|&index| self.partitions[index] != partition)
            .collect();
        self.alerts = kept.iter().map(|&index| self.alerts[index]).collect();
        self.places = kept.iter().map(|&index| self.places[index]).collect();
        self.partitions = kept.iter().map(|&index| self.partitions[index]).collect();
        self.next = 0;
        before - kept.len()
    }
}

impl Writer {
    /// Serves requests in queue order. A turn takes the jobs queued (a group) and the guards
    /// after them; a job queued after a guard waits for the next turn, so that it is stored
    /// only once the guard holds.
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Request>) {
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match queue.recv().await {
                    Some(request) => request,
                    None => break,
                },
            };
            let mut size = 0;
            let mut jobs = Vec::new();
            let mut guards = Vec::new();
            let mut next = Some(first);
            while let Some(request) = next {
                match request {
                    Request::Store(job) if guards.is_empty() => {
                        size += job.alerts.len();
                        jobs.push(job);
                    }
                    Request::Store(job) => {
                        carried = Some(Request::Store(job));
                        break;
                    }
                    Request::Guard(guard) => guards.push(guard),
                }
                next = if size < GROUP_MAX {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
            if !jobs.is_empty() {
                self.store_jobs(jobs).await;
            }
            if !guards.is_empty() {
                self.guard(guards).await;
            }
            self.record_head();
        }
    }

    /// Keeps new owners' guards (see the module doc): one barrier, then one read of the
    /// partitions' alerts stored after their checkpoints' heads up to it. A guard that could
    /// not be kept refuses its partition's later jobs under the owner's lease.
    async fn guard(&mut self, requests: Vec<GuardRequest>) {
        let asked = Instant::now();
        let mut heads: HashMap<Partition, u64> = HashMap::new();
        for request in &requests {
            let head = heads.entry(request.partition).or_insert(request.after);
            *head = (*head).min(request.after);
        }
        let found = match self.store_barrier().await {
            Ok(through) => {
                let this = &*self;
                crate::log::ride_through_read("replay guard: reading back", || {
                    this.stored_after(&heads, through)
                })
                .await
            }
            Err(err) => Err(err),
        };
        match found {
            Ok(found) => {
                for request in requests {
                    let stored = found.get(&request.partition).cloned().unwrap_or_default();
                    let count = stored.len();
                    tracing::debug!(subscriber = %self.stream.name, partition = request.partition, alerts = count, after = request.after, elapsed = ?asked.elapsed(), "replay guarded: the partition's alerts stored after its checkpoint are not stored again");
                    self.guards
                        .insert(request.partition, (Instant::now(), stored));
                    let _ = request.done.send(Ok(count));
                }
                self.drop_spent_guards();
            }
            Err(err) => {
                tracing::warn!(subscriber = %self.stream.name, %err, "replay guard not kept: the partitions' alerts for this subscriber are left to their next owners");
                for request in requests {
                    self.guards.remove(&request.partition);
                    if let Some(lease) = &request.lease
                        && refusal(&self.failed, request.partition, Some(lease)).is_none()
                    {
                        self.failed.push((request.partition, lease.clone()));
                    }
                    let _ = request.done.send(Err(err.clone()));
                }
            }
        }
    }

    /// The alerts of `heads`' partitions stored after each one's head, in messages up to
    /// stream sequence `through`, by partition.
    async fn stored_after(
        &self,
        heads: &HashMap<Partition, u64>,
        through: u64,
    ) -> Result<HashMap<Partition, HashMap<AlertId, u64>>, LogError> {
        let mut found: HashMap<Partition, HashMap<AlertId, u64>> = HashMap::new();
        let Some(after) = heads.values().min().copied() else {
            return Ok(found);
        };
        let stream = &self.stream;
        let bounds = stream.bounds().await?;
        if bounds.tail.head <= after {
            return Ok(found);
        }
        let start = stream.locate(after + 1, &bounds).await?;
        if start > through {
            return Ok(found);
        }
        let partitions = stream.cluster().settings.partitions;
        let mut take = |at: u64, headers: Option<&HeaderMap>, payload: &[u8]| {
            for entry in alert_batch::decode(headers, payload, at)? {
                let partition = partition_of(entry.alert.point.device, partitions);
                if heads
                    .get(&partition)
                    .is_some_and(|head| entry.sequence > *head)
                {
                    found
                        .entry(partition)
                        .or_default()
                        .insert(entry.alert.id(), entry.sequence);
                }
            }
            Ok::<(), LogError>(())
        };
        if through - start < GUARD_READ_BY_SEQUENCE {
            // A short range (the usual one: the messages stored since the partitions'
            // checkpoints), message by message from the stream's leader, some at once:
            // making a consumer needs the cluster's meta leader, which may be the node that
            // just died, as guards are kept while partitions are taken over after a fault.
            let mut messages = futures::stream::iter(start..=through)
                .map(|at| async move { (at, stream.message(at).await) })
                .buffered(GUARD_READS_AT_ONCE);
            while let Some((at, message)) = messages.next().await {
                // Removed by retention meanwhile: nothing of it to answer.
                if let Some(message) = message? {
                    take(at, Some(&message.headers), &message.payload)?;
                }
            }
            return Ok(found);
        }
        // A long one through one consumer, rather than a request per message.
        let mut messages =
            super::alerts::open_reader(stream.cluster(), stream.stream.clone(), None, start)
                .await?;
        let what = format!("alert stream of {}", stream.name);
        let unavailable =
            |err: &dyn std::fmt::Display| LogError::Unavailable(format!("{what}: {err}"));
        loop {
            let message = tokio::time::timeout(READ_TIMEOUT, messages.next())
                .await
                .map_err(|_| unavailable(&"the stream stopped answering"))?
                .ok_or_else(|| unavailable(&"the consumer ended"))?
                .map_err(|err| unavailable(&err))?;
            let at = message
                .info()
                .map_err(|err| unavailable(&err))?
                .stream_sequence;
            take(at, message.headers.as_ref(), &message.payload)?;
            if at >= through {
                break;
            }
        }
        Ok(found)
    }

    /// Stores a barrier: a message holding no alerts (see the module doc).
    async fn store_barrier(&mut self) -> Result<u64, LogError> {
        self.group.clear();
        self.barriers += 1;
        let id = format!(
            "barrier.{}.{}.{}",
            self.stream.cluster().instance,
            self.started,
            self.barriers
        );
        let landed = self
            .store_message(&[], &[], &id, None)
            .await
            .map_err(NotStored::into_error);
        if let Err(err) = &landed {
            tracing::warn!(subscriber = %self.stream.name, %err, "barrier not stored");
        }
        landed.map(|landed| landed.at)
    }

    /// Drops the guards that hold nothing more, or held long enough ([`GUARD_FOR`]); their
    /// partitions' checkpoints record the stream's head again.
    fn drop_spent_guards(&mut self) {
        let spent: Vec<Partition> = self
            .guards
            .iter()
            .filter(|(_, (since, stored))| stored.is_empty() || since.elapsed() >= GUARD_FOR)
            .map(|(partition, _)| *partition)
            .collect();
        if spent.is_empty() {
            return;
        }
        let mut floors = self
            .floors
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for partition in spent {
            self.guards.remove(&partition);
            floors.remove(&partition);
        }
    }

    /// Stores the alerts of `jobs`, a group, and answers each job.
    async fn store_jobs(&mut self, jobs: Vec<Job>) {
        self.failed.retain(|(_, lease)| lease.valid());
        let mut admitted = Vec::with_capacity(jobs.len());
        for job in jobs {
            match refusal(&self.failed, job.partition, job.lease.as_ref()) {
                None => admitted.push(job),
                Some(err) => {
                    let _ = job.done.send(Err(err));
                }
            }
        }
        let jobs = admitted;
        self.group.clear();
        for job in &jobs {
            if let Some(lease) = &job.lease
                && !self
                    .group
                    .iter()
                    .any(|(partition, _)| *partition == job.partition)
            {
                self.group.push((job.partition, lease.clone()));
            }
        }
        self.drop_spent_guards();
        let (queue, answers) = Queue::of(&jobs, &mut self.guards);
        let total = queue.alerts.len();
        match self.store(queue, answers).await {
            Ok(answers) => {
                let mut answers = answers.into_iter();
                for job in jobs {
                    let part: Option<Vec<Stored>> =
                        answers.by_ref().take(job.alerts.len()).collect();
                    // A job missing an answer was dropped: its partition's lease ended.
                    let _ = job
                        .done
                        .send(part.ok_or_else(|| lease_ended(job.partition)));
                }
            }
            Err(err) => {
                tracing::warn!(subscriber = %self.stream.name, %err, alerts = total, "alerts not stored");
                self.tail = None;
                for job in jobs {
                    if let Some(lease) = &job.lease
                        && refusal(&self.failed, job.partition, Some(lease)).is_none()
                    {
                        self.failed.push((job.partition, lease.clone()));
                    }
                    let _ = job.done.send(Err(err.clone()));
                }
            }
        }
    }

    /// The partition of the group being stored whose lease ended, if one did.
    fn ended(&self) -> Option<Partition> {
        self.ended_in(None)
    }

    /// The partition whose lease ended, of those holding alerts in a message (`holds`, one
    /// partition per alert; `None`: of the whole group).
    fn ended_in(&self, holds: Option<&[Partition]>) -> Option<Partition> {
        self.group
            .iter()
            .filter(|(_, lease)| !lease.valid())
            .map(|(partition, _)| *partition)
            .find(|partition| holds.is_none_or(|holds| holds.contains(partition)))
    }

    /// Whether a lease of a partition holding alerts in a message (`holds`) ended:
    /// [`NotStored::LeaseEnded`] while nothing of the message is in doubt (`scan_from` unset),
    /// so that the caller drops that partition's alerts and cuts the rest again; a failure of
    /// the whole group once a publish of it is (it may still be stored).
    fn lease_ended_in(&self, holds: &[Partition], scan_from: Option<u64>) -> Option<NotStored> {
        let partition = self.ended_in(Some(holds))?;
        Some(match scan_from {
            None => NotStored::LeaseEnded,
            Some(_) => NotStored::Failed(lease_ended(partition)),
        })
    }

    /// Stores the queued alerts in order: windows of up to [`WINDOW`] messages pipelined,
    /// and a message the pipeline did not store cleanly (with those after it in its window)
    /// one by one. Fills in `answers`, by place in the group, where each alert was stored;
    /// left `None`: it was dropped because its partition's lease ended.
    ///
    /// A lease that ends while the group is stored costs only its partition's alerts: they
    /// are dropped at the next window boundary, where nothing is in doubt (every message
    /// before it stored, none after it sent), and the rest of the group is stored. A message
    /// being stored one at a time with nothing of it in doubt (not sent yet, or refused
    /// because the tail moved) is such a boundary too. A message in doubt (sent, outcome
    /// unknown) holding alerts of that partition fails the whole group instead: re-cut
    /// without them it could store the other alerts twice, sent again whole it could land
    /// after the next owner's read.
    async fn store(
        &mut self,
        mut queue: Queue,
        mut answers: Vec<Option<Stored>>,
    ) -> Result<Vec<Option<Stored>>, LogError> {
        while !queue.rest().is_empty() {
            if let Some(partition) = self.ended() {
                self.group.retain(|(held, _)| *held != partition);
                let dropped = queue.drop_partition(partition);
                tracing::info!(subscriber = %self.stream.name, partition, dropped, "lease ended: the partition's alerts are left to its next owner");
                continue;
            }
            let most = if self.stream.cluster().atomic_batches {
                WINDOW
            } else {
                1
            };
            let mut window = Vec::with_capacity(most);
            let mut holds = Vec::with_capacity(most);
            let mut rest = queue.rest();
            let mut partitions = queue.rest_partitions();
            while window.len() < most && !rest.is_empty() {
                let cut = alert_batch::next_cut(rest);
                let (message, after) = rest.split_at(cut);
                let (held, others) = partitions.split_at(cut);
                window.push(message);
                holds.push(held);
                rest = after;
                partitions = others;
            }
            let mut stored = Vec::new();
            let before = self.tail.map(|tail| tail.stream);
            let (done, attempted) = match self.tail {
                Some(tail) => self.pipeline(tail, &window, &mut stored).await,
                None => (0, false),
            };
            let scan_from = if attempted { before } else { None };
            for (message, held) in window[done..].iter().zip(&holds[done..]) {
                let id = alert_batch::message_id(message);
                match self.store_message(message, held, &id, scan_from).await {
                    Ok(landed) => stored.extend(landed.stored()),
                    // Nothing of this message sent, nothing after it: a window boundary. The
                    // loop's next turn drops the partition and cuts what is left again.
                    Err(NotStored::LeaseEnded) => break,
                    Err(NotStored::Failed(err)) => return Err(err),
                }
            }
            for (place, stored) in queue.take(stored.len()).into_iter().zip(stored) {
                answers[place] = Some(stored);
            }
        }
        Ok(answers)
    }

    /// Stores `window`'s messages right after `tail` as one atomic batch (`Nats-Batch-Id`;
    /// the first message carries `Nats-Expected-Last-Sequence`): the stream stores all of
    /// them, contiguously after `tail`, or none, so the placements their headers claim hold.
    /// One message is published alone. Returns how many messages (from the front) were
    /// stored, and whether the batch was sent whole and may have been stored (not when it was
    /// refused for certain, its expected last sequence taken by another instance's message).
    ///
    /// Not chained by `Nats-Expected-Last-Msg-Id`: a clustered nats-server (2.15.1) checks
    /// that header only when it applies the message, and a mismatch there stops the stream
    /// taking any further message ("critical write error").
    async fn pipeline(
        &mut self,
        tail: Tail,
        window: &[&[(Alert, Destination)]],
        stored: &mut Vec<Stored>,
    ) -> (usize, bool) {
        let cluster = self.stream.cluster();
        let mut loss = cluster.data_loss();
        let count = window.len();
        self.batches += 1;
        let batch = format!("{:016x}.{}", self.started, self.batches);
        let mut placements = Vec::with_capacity(count);
        let mut first = tail.head + 1;
        let mut commit = None;
        for (index, message) in window.iter().enumerate() {
            let placed = Placed {
                first,
                count: message.len() as u64,
            };
            first += placed.count;
            placements.push(placed);
            let id = alert_batch::message_id(message);
            let expected = (index == 0).then_some(tail.stream);
            let mut headers = headers(&id, expected, placed, &cluster.instance);
            if count > 1 {
                headers.insert(async_nats::header::NATS_BATCH_ID, batch.as_str());
                headers.insert(
                    async_nats::header::NATS_BATCH_SEQUENCE,
                    (index + 1).to_string().as_str(),
                );
            }
            let subject = self.stream.subject.clone();
            let payload = alert_batch::encode(message);
            if index + 1 < count {
                // Answered once, at the commit; a batch never committed stores nothing.
                if cluster
                    .js
                    .client()
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .is_err()
                {
                    self.tail = None;
                    return (0, false);
                }
                continue;
            }
            if count > 1 {
                headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
            }
            commit = Some(
                cluster
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await,
            );
        }
        let acked = match commit {
            Some(Ok(ack)) => match loss.unless_lost(ack.into_future()).await {
                Some(acked) => acked,
                // Sent whole; its answer lost with the connection.
                None => {
                    self.tail = None;
                    return (0, true);
                }
            },
            _ => {
                self.tail = None;
                return (0, false);
            }
        };
        let last = tail.stream + count as u64;
        match acked {
            // A batch is stored whole or not at all: its last message at `last`, all of it.
            Ok(ack) if !ack.duplicate && ack.sequence == last => {
                for (at, placed) in (tail.stream + 1..).zip(placements) {
                    self.stream.remember(at, placed);
                    let landed = Landed {
                        placed,
                        at,
                        duplicate: false,
                    };
                    stored.extend(landed.stored());
                }
                self.tail = Some(Tail {
                    stream: last,
                    head: first - 1,
                });
                (count, false)
            }
            // Refused for certain: another instance's message took the place the batch's
            // first message expected, and a batch is stored whole or not at all. Nothing of
            // it is in doubt (a lease ending now costs only its partition's alerts).
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                self.tail = None;
                (0, false)
            }
            _ => {
                self.tail = None;
                (0, true)
            }
        }
    }

    /// Stores one message's alerts (none: a barrier) at the end of the stream, as message
    /// `id`; `holds` names each alert's partition: once one of their leases ended, the
    /// message is not sent (again): see [`Writer::lease_ended_in`]. `scan_from`: a publish
    /// of it may have been stored after this stream sequence.
    ///
    /// A publish whose outcome is unknown may still be stored later (a proposal the old
    /// leader made, committed by the new one), after the retry was checked against the
    /// stream's duplicate window: so before publishing again, the writer looks for the
    /// message's id among the messages stored since the tail that publish assumed.
    async fn store_message(
        &mut self,
        alerts: &[(Alert, Destination)],
        holds: &[Partition],
        id: &str,
        mut scan_from: Option<u64>,
    ) -> Result<Landed, NotStored> {
        let attempted = scan_from.is_some();
        let payload = alert_batch::encode(alerts);
        let count = alerts.len() as u64;
        let give_up = Instant::now() + STORE_WITHIN;
        let mut delay = RETRY_FIRST;
        let mut publishes = 0u32;
        let mut failures = 0u32;
        let stalled_since = Instant::now();
        loop {
            // Before every publish, a retry too: a publish refused because a new owner's
            // barrier moved the tail must not be sent again after that owner's read.
            if let Some(ended) = self.lease_ended_in(holds, scan_from) {
                return Err(ended);
            }
            let outcome = match self.tail {
                Some(tail) => {
                    publishes += 1;
                    let outcome = self.publish(tail, id, count, payload.clone()).await;
                    if matches!(outcome, Attempt::Failed(_)) {
                        scan_from =
                            Some(scan_from.map_or(tail.stream, |from| from.min(tail.stream)));
                    }
                    outcome
                }
                None => {
                    let within = read_within(failures);
                    match timeout(within, self.stream.bounds()).await {
                        Ok(Ok(bounds)) => match scan_from {
                            Some(from) => {
                                match timeout(within, self.find(id, from, bounds.tail.stream)).await
                                {
                                    Ok(found) => found,
                                    Err(_) => Attempt::Failed(format!(
                                        "looking for a message in doubt: no answer within \
                                         {within:?}"
                                    )),
                                }
                            }
                            None => {
                                self.tail = Some(bounds.tail);
                                Attempt::Retry
                            }
                        }
                        .and_tail(bounds.tail, &mut self.tail),
                        Ok(Err(err)) => Attempt::Failed(err.to_string()),
                        Err(_) => Attempt::Failed(format!(
                            "the stream's bounds: no answer within {within:?}"
                        )),
                    }
                }
            };
            let error = match outcome {
                Attempt::Stored(placed, at, duplicate) => {
                    if failures > 0 {
                        tracing::info!(subscriber = %self.stream.name, failures, waited = ?stalled_since.elapsed(), "alert stream took alerts again");
                    }
                    return Ok(Landed {
                        placed,
                        at,
                        // A first publish acknowledged as a repeat: stored by an earlier
                        // owner. A later one: our own earlier publish was stored.
                        duplicate: duplicate && publishes == 1 && !attempted,
                    });
                }
                Attempt::Retry if Instant::now() < give_up => continue,
                Attempt::Retry => "the stream's tail kept moving".to_owned(),
                Attempt::Failed(err) => err,
            };
            failures += 1;
            counter!(telemetry::JETSTREAM_ERRORS, "operation" => "publish").increment(1);
            self.tail = None;
            if failures == 2 {
                // A stall: the first retry was not enough. Logged and counted once.
                counter!(telemetry::ALERT_STREAM_STALLS, "subscriber" => self.stream.name.clone())
                    .increment(1);
                tracing::warn!(subscriber = %self.stream.name, %error, "alert stream not taking alerts; retrying");
            } else {
                tracing::debug!(subscriber = %self.stream.name, %error, "alert publish failed; retrying");
            }
            if let Some(ended) = self.lease_ended_in(holds, scan_from) {
                return Err(ended);
            }
            if Instant::now() + delay > give_up {
                return Err(NotStored::Failed(LogError::Unavailable(format!(
                    "alerts for {} not stored within {STORE_WITHIN:?}: {error}",
                    self.stream.name
                ))));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// Looks for the message `id` among those stored after stream sequence `from` up to
    /// `to`: found, it is stored there.
    async fn find(&self, id: &str, from: u64, to: u64) -> Attempt {
        for at in from + 1..=to {
            match self.stream.message(at).await {
                Ok(Some(message)) if alert_stream::message_id(&message) == Some(id) => {
                    return match Placed::of(Some(&message.headers), at) {
                        Ok(placed) => Attempt::Stored(placed, at, false),
                        Err(err) => Attempt::Failed(err.to_string()),
                    };
                }
                Ok(_) => {}
                Err(err) => return Attempt::Failed(err.to_string()),
            }
        }
        Attempt::Retry
    }

    /// One publish after `tail`.
    async fn publish(&mut self, tail: Tail, id: &str, count: u64, payload: Bytes) -> Attempt {
        let first = tail.head + 1;
        let headers = headers(
            id,
            Some(tail.stream),
            Placed { first, count },
            &self.stream.cluster().instance,
        );
        let cluster = self.stream.cluster();
        let mut loss = cluster.data_loss();
        let sent = async {
            cluster
                .js
                .publish_with_headers(self.stream.subject.clone(), headers, payload)
                .await?
                .await
        };
        let Some(acked) = loss.unless_lost(sent).await else {
            return Attempt::Failed("the connection to the NATS server was lost".to_owned());
        };
        match acked {
            Ok(ack) if !ack.duplicate && ack.sequence == tail.stream + 1 => {
                let placed = Placed { first, count };
                self.stream.remember(ack.sequence, placed);
                self.tail = Some(Tail {
                    stream: ack.sequence,
                    head: placed.last(),
                });
                Attempt::Stored(placed, ack.sequence, false)
            }
            Ok(ack) if ack.duplicate => match self.stream.placed(ack.sequence).await {
                Ok(Some(placed)) if placed.count == count => {
                    self.tail = None;
                    Attempt::Stored(placed, ack.sequence, true)
                }
                Ok(_) => Attempt::Failed(format!(
                    "message {} acknowledged as a repeat of one that cannot be read",
                    ack.sequence
                )),
                Err(err) => Attempt::Failed(err.to_string()),
            },
            // Stored somewhere the expected sequence should have forbidden: the server did
            // not check it. Never reached with the servers the tests run; refuse loudly
            // rather than hand out sequences that may not hold.
            Ok(ack) => {
                tracing::error!(subscriber = %self.stream.name, expected = tail.stream + 1, stored = ack.sequence, "alert message stored out of place");
                Attempt::Failed(format!(
                    "message stored at {} where {} was expected",
                    ack.sequence,
                    tail.stream + 1
                ))
            }
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                // Another instance wrote meanwhile: read the tail again and re-cut.
                self.tail = None;
                Attempt::Retry
            }
            Err(err) => Attempt::Failed(err.to_string()),
        }
    }

    /// Records the head for when retention empties the stream, at most every
    /// [`RECORD_HEAD_EVERY`], without holding up the next alerts.
    fn record_head(&mut self) {
        let Some(tail) = self.tail else { return };
        let (at, head) = self.head_recorded;
        if tail.head <= head || at.elapsed() < RECORD_HEAD_EVERY {
            return;
        }
        self.head_recorded = (Instant::now(), tail.head);
        let stream = self.stream.clone();
        tokio::spawn(async move {
            if let Err(err) = stream.record_head(tail.head).await {
                tracing::debug!(subscriber = %stream.name, %err, "head not recorded");
            }
        });
    }
}

/// The headers of message `id`, placed at `placed`, stored only right after stream
/// sequence `after` when given.
fn headers(id: &str, after: Option<u64>, placed: Placed, instance: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    if let Some(sequence) = after {
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
            sequence.to_string().as_str(),
        );
    }
    headers.insert(FIRST, placed.first.to_string().as_str());
    headers.insert(COUNT, placed.count.to_string().as_str());
    headers.insert(EMITTED_BY, instance);
    headers
}

/// Why a job of `partition` appended under `lease` is not to be stored, if it is not:
/// its lease ended, or an earlier job under the same lease failed (`failed`).
fn refusal(
    failed: &[(Partition, Lease)],
    partition: Partition,
    lease: Option<&Lease>,
) -> Option<LogError> {
    let lease = lease?;
    if !lease.valid() {
        return Some(lease_ended(partition));
    }
    failed
        .iter()
        .any(|(earlier, held)| *earlier == partition && held.same(lease))
        .then(|| {
            LogError::Unavailable(format!(
                "an earlier alert of partition {partition} was not stored: its later ones wait \
                 for the partition's next owner"
            ))
        })
}

fn lease_ended(partition: Partition) -> LogError {
    LogError::Unavailable(format!(
        "the lease of partition {partition} ended: its alerts are not stored by this instance"
    ))
}

impl Attempt {
    /// After reading the tail: a retry goes on from `tail`.
    fn and_tail(self, tail: Tail, known: &mut Option<Tail>) -> Self {
        if matches!(self, Self::Retry) {
            *known = Some(tail);
        }
        self
    }
}

/// Why a message was not stored.
enum NotStored {
    /// A lease of a partition holding alerts in it ended while nothing of it was in doubt
    /// (never sent, or refused for certain).
    LeaseEnded,
    /// It could not be stored, or a lease ended while a publish of it was in doubt.
    Failed(LogError),
}

impl NotStored {
    /// As an error of the whole group.
    fn into_error(self) -> LogError {
        match self {
            Self::LeaseEnded => LogError::Unavailable("a lease ended".into()),
            Self::Failed(err) => err,
        }
    }
}

/// What one publish did.
enum Attempt {
    /// Stored (or found stored: `true`) at this placement and stream sequence.
    Stored(Placed, u64, bool),
    /// Try again at once (the tail moved, or was read).
    Retry,
    /// Failed; try again after a pause.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_for(valid_for: Duration) -> (tokio::sync::watch::Sender<Instant>, Lease) {
        let (window, watch) = tokio::sync::watch::channel(Instant::now() + valid_for);
        let lease = Lease::renewable(watch, tokio_util::sync::CancellationToken::new());
        (window, lease)
    }

    #[test]
    fn after_a_failed_job_only_the_same_partition_under_the_same_lease_is_refused() {
        let (_first_window, first) = lease_for(Duration::from_secs(60));
        let (_next_window, next) = lease_for(Duration::from_secs(60));
        let failed = vec![(3, first.clone())];
        assert!(
            refusal(&failed, 3, Some(&first.clone())).is_some(),
            "a later job of the failed owner"
        );
        assert!(
            refusal(&failed, 3, Some(&next)).is_none(),
            "the partition's next owner stores again"
        );
        assert!(
            refusal(&failed, 4, Some(&first)).is_none(),
            "another partition of the same instance"
        );
        assert!(refusal(&failed, 3, None).is_none(), "an unfenced job");
        assert!(refusal(&[], 3, Some(&first)).is_none());
    }

    fn job(partition: Partition, devices: std::ops::Range<u64>) -> Job {
        use crate::domain::DeviceId;
        use crate::log::conformance::{poa, route};
        let alerts = devices
            .map(|device| {
                (
                    poa(DeviceId(device), 0),
                    Destination::Routed(route(crate::route::SubscriberId(0))),
                )
            })
            .collect();
        Job {
            partition,
            lease: None,
            alerts,
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn a_dropped_partition_leaves_the_rest_of_the_group_in_order_with_its_places() {
        let jobs = [job(3, 0..4), job(4, 10..13), job(3, 20..22), job(5, 30..32)];
        let (mut queue, answers) = Queue::of(&jobs, &mut HashMap::new());
        assert!(answers.iter().all(Option::is_none), "nothing guarded");
        assert_eq!(
            queue.take(2),
            vec![0, 1],
            "the first message: two of partition 3's"
        );
        assert_eq!(
            queue.drop_partition(3),
            4,
            "two left of the first job, two of the third"
        );
        let devices: Vec<u64> = queue
            .rest()
            .iter()
            .map(|(alert, _)| alert.point.device.0)
            .collect();
        assert_eq!(devices, vec![10, 11, 12, 30, 31]);
        assert_eq!(queue.rest_partitions(), &[4, 4, 4, 5, 5]);
        assert_eq!(queue.take(4), vec![4, 5, 6, 9]);
        assert_eq!(queue.drop_partition(7), 0, "a partition with nothing left");
        assert_eq!(queue.take(9), vec![10], "no further than the queue");
        assert!(queue.rest().is_empty());
    }

    #[test]
    fn alerts_a_replay_guard_found_stored_are_answered_with_their_first_sequence_once() {
        let jobs = [job(3, 0..3), job(4, 0..2)];
        let first = jobs[0].alerts[1].0;
        let other = jobs[0].alerts[2].0;
        let mut guards = HashMap::from([(
            3,
            (
                Instant::now(),
                HashMap::from([(first.id(), 17), (other.id(), 18)]),
            ),
        )]);
        let (queue, answers) = Queue::of(&jobs[..1], &mut guards);
        let devices: Vec<u64> = queue.rest().iter().map(|(a, _)| a.point.device.0).collect();
        assert_eq!(
            devices,
            vec![0],
            "only the alert not found stored is queued"
        );
        assert_eq!(queue.places, vec![0]);
        assert_eq!(
            answers,
            vec![
                None,
                Some(Stored {
                    sequence: 17,
                    duplicate: true
                }),
                Some(Stored {
                    sequence: 18,
                    duplicate: true
                }),
            ]
        );
        let (queue, answers) = Queue::of(&jobs, &mut guards);
        assert_eq!(
            queue.rest().len(),
            5,
            "a guard's entry answers once; partition 4 has none"
        );
        assert!(answers.iter().all(Option::is_none));
    }

    #[test]
    fn a_job_under_an_ended_lease_is_refused() {
        let (_window, ended) = lease_for(Duration::ZERO);
        let refused = refusal(&[], 5, Some(&ended)).expect("refused");
        assert!(
            refused.to_string().contains("lease of partition 5 ended"),
            "{refused}"
        );
    }
}
