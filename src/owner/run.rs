//! The owner task: recovery from the last checkpoint and the log after it, then the serving
//! loop. See the module doc of `crate::owner` for what it does and why.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::checkpoint;
use super::state::{ApplyReport, OutcomeCounts, PartitionState, Saved};
use super::{Command, OwnerContext, OwnerHandle};
use crate::debounce::dedup::EventIdWindow;
use crate::domain::{Alert, AlertKind, DeviceEvent, UtcMillis};
use crate::error::RelayError;
use crate::log::{
    AlertHeads, Appended, Checkpoint, EventReader, EventRecord, Lease, LogError, Logged,
    OwnerAnswer, OwnerQuery, Partition, Retention, Sequencing, Stored, ride_through_read,
};
use crate::route::{ParkReason, Registry, Route};
use crate::summary::{Input, OpenPoint};

/// Timers fired, and their alerts appended, at a time: the writer commits one chunk while the
/// owner fires the next.
const FIRE_CHUNK: usize = 4096;
/// Appends an owner keeps in flight while it fires a backlog of due timers: enough for the
/// writer to group several chunks, few enough that the alerts waiting for it stay small.
const FIRE_AHEAD: usize = 4;
/// Log-sequenced partitions ask for a mark (to fire due timers) at most this often.
const MARK_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on storing what is in flight when an owner stops.
const STOP_DRAIN: Duration = Duration::from_secs(10);

/// A completed append, handled in order.
enum Done {
    /// An ingest batch's record (`None`: nothing new to log).
    Record {
        result: Result<Option<u64>, LogError>,
        reply: oneshot::Sender<Result<ApplyReport, RelayError>>,
        report: ApplyReport,
    },
    /// Routed alerts: their kinds and when each could first have been emitted.
    Alerts {
        result: Result<Vec<Stored>, LogError>,
        alerts: Vec<(AlertKind, UtcMillis)>,
    },
    /// Parked alerts.
    Parked(Result<(), LogError>),
    /// A mark (log-sequenced partitions).
    Mark(Result<Appended, LogError>),
}

type Pending = FuturesOrdered<BoxFuture<'static, Done>>;

/// A checkpoint being saved: its position once done.
type Saving = JoinHandle<Result<u64, LogError>>;

struct Owner {
    partition: Partition,
    ctx: Arc<OwnerContext>,
    lease: Lease,
    state: PartitionState,
    sequencing: Sequencing,
    /// The last record reflected in `state` and durable.
    position: u64,
    /// The registry alerts are routed with (see [`Owner::move_parked`]).
    registry: Arc<Registry>,
    counts: OutcomeCounts,
    events_since_checkpoint: u64,
    last_checkpoint: Instant,
    changed_since_checkpoint: bool,
    /// Why appends failed, if they did: the partition refuses work until a restart.
    fenced: Option<LogError>,
    /// When the last mark was asked for, and whether it is still on its way.
    marked: (Instant, bool),
    replaying: bool,
    reported: (usize, usize),
    /// Records not yet read (log-sequenced partitions).
    lag: metrics::Gauge,
    /// Appends finished so far: with those in flight, how many were issued.
    appends_done: u64,
    /// A log-sequenced partition's checkpoint taken while appends were in flight, to be saved
    /// once the first `.1` appends have finished (see [`Owner::checkpoint`]).
    deferred: Option<(Checkpoint, u64)>,
}

/// Runs the owner of `partition` until its lease ends.
pub(super) async fn run(partition: Partition, lease: Lease, ctx: Arc<OwnerContext>) {
    let started = std::time::Instant::now();
    let (mut owner, reader) = match Owner::recover(partition, lease, Arc::clone(&ctx)).await {
        Ok(recovered) => recovered,
        Err(err) => {
            tracing::error!(partition, %err, "partition recovery failed; the partition is not served");
            ctx.metrics.partition_failed();
            ctx.owners.failed(partition, err.to_string());
            return;
        }
    };
    tracing::info!(
        partition,
        position = owner.position,
        open = owner.state.open_count(),
        elapsed = ?started.elapsed(),
        "partition recovered"
    );
    let (tx, rx) = mpsc::channel(ctx.queue.max(1));
    ctx.owners.set(partition, Some(OwnerHandle { tx }));
    if let Err(err) = owner.serve(rx, reader).await {
        ctx.metrics.partition_failed();
        tracing::warn!(partition, %err, "partition owner ended");
    }
    ctx.owners.set(partition, None);
    ctx.summaries.send(Input::Released { partition });
    owner.report_gauges(true);
    owner.lag.set(0.0);
}

impl Owner {
    /// Loads the checkpoint and replays the log after it. An owner-sequenced log is replayed
    /// to its end here (and due timers fired by the clock); a log-sequenced one is returned
    /// to be read on in the serving loop.
    async fn recover(
        partition: Partition,
        lease: Lease,
        ctx: Arc<OwnerContext>,
    ) -> Result<(Self, Option<Box<dyn EventReader>>), LogError> {
        // Both wait out an election (the node leading the checkpoints or the events stream
        // just died) rather than fail the recovery and hand the partition back a round later.
        let loaded = ride_through_read("recovery: checkpoint", || ctx.checkpoints.load(partition));
        let (saved, heads, position) = match loaded.await? {
            Some(found) => {
                let (saved, heads) = checkpoint::decode(&found.state)?;
                (saved, heads, found.position)
            }
            None => (Saved::default(), AlertHeads::default(), 0),
        };
        ctx.alerts.fence(partition, &lease);
        ctx.alerts
            .guard_replay(partition, ctx.partitions, &heads)
            .await?;
        let dedup = EventIdWindow::new(ctx.dedup_window, ctx.dedup_capacity);
        let state = PartitionState::restore(ctx.settings, dedup, saved);
        let mut reader = ride_through_read("recovery: events reader", || {
            ctx.events.reader(partition, position)
        })
        .await?;
        let sequencing = ctx.events.sequencing();
        let mut owner = Self {
            partition,
            registry: ctx.router.registry(),
            ctx,
            lease,
            state,
            sequencing,
            position,
            counts: [[0; crate::debounce::Outcome::ALL.len()]; 2],
            events_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            changed_since_checkpoint: false,
            fenced: None,
            marked: (Instant::now(), false),
            replaying: true,
            reported: (0, 0),
            lag: crate::telemetry::partition_lag(partition),
            appends_done: 0,
            deferred: None,
        };
        if sequencing == Sequencing::Log {
            return Ok((owner, Some(reader)));
        }
        let mut pending = Pending::new();
        while let Some(logged) = reader.next().await? {
            owner.apply_logged(&logged, &mut pending);
            if pending.len() >= owner.ctx.in_flight {
                owner.drain(&mut pending).await?;
            }
        }
        // The log is exhausted: timers the clock has passed fire now.
        let now = owner.ctx.clock.now();
        owner.state.advance(now);
        owner.flush(&mut pending);
        owner.drain(&mut pending).await?;
        owner.finish_replay();
        Ok((owner, None))
    }

    async fn serve(
        &mut self,
        mut rx: mpsc::Receiver<Command>,
        mut reader: Option<Box<dyn EventReader>>,
    ) -> Result<(), LogError> {
        let mut pending = Pending::new();
        let mut saving: Option<Saving> = None;
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let sleep = tokio::time::sleep_until(far);
        tokio::pin!(sleep);
        let mut armed = far;
        let mut tick = tokio::time::interval(self.ctx.checkpoint.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lease = self.lease.clone();
        let ended = lease.ended();
        tokio::pin!(ended);
        loop {
            if self.sequencing == Sequencing::Log && !self.lease.valid() {
                return Err(LogError::Unavailable(format!(
                    "partition {}: the lease window has passed; stopping",
                    self.partition
                )));
            }
            if !Arc::ptr_eq(&self.registry, &self.ctx.router.registry()) {
                self.move_parked(&mut pending).await?;
            }
            self.report_gauges(false);
            let wake = self.wake_at().unwrap_or(far);
            if wake != armed {
                sleep.as_mut().reset(wake);
                armed = wake;
            }
            let room = pending.len() < self.ctx.in_flight;
            tokio::select! {
                biased;
                () = &mut ended => break,
                Some(done) = pending.next(), if !pending.is_empty() => {
                    self.finish(done)?;
                    self.save_deferred(&mut saving);
                }
                saved = wait_saving(&mut saving), if saving.is_some() => {
                    saving = None;
                    self.saved(Some(saved));
                    self.save_deferred(&mut saving);
                }
                () = &mut sleep, if wake != far && room => self.on_timers(&mut pending),
                command = rx.recv(), if room => match command {
                    Some(command) => self.on_command(command, &mut pending).await?,
                    None => break,
                },
                logged = next_logged(&mut reader), if room => {
                    if let Some(logged) = logged? {
                        self.apply_logged(&logged, &mut pending);
                        self.ctx.metrics.events(&std::mem::take(&mut self.counts));
                    }
                    if self.replaying && reader.as_ref().is_some_and(|r| r.lag() == 0) {
                        self.drain(&mut pending).await?;
                        self.finish_replay();
                    }
                    if let Some(reader) = &reader {
                        self.lag.set(reader.lag() as f64);
                    }
                }
                _ = tick.tick() => {
                    if self.changed_since_checkpoint
                        && self.last_checkpoint.elapsed() >= self.ctx.checkpoint.every
                    {
                        self.checkpoint(&mut pending, &mut saving).await?;
                    }
                }
            }
            if self.events_since_checkpoint >= self.ctx.checkpoint.events {
                self.checkpoint(&mut pending, &mut saving).await?;
            }
        }
        self.ctx.owners.set(self.partition, None);
        rx.close();
        // A last checkpoint only if everything the state emitted is stored: an append that
        // failed (or did not finish) leaves alerts the next owner must emit again from the
        // log, which a checkpoint taken past them would skip.
        let drained = matches!(
            tokio::time::timeout(STOP_DRAIN, self.drain(&mut pending)).await,
            Ok(Ok(()))
        );
        if drained && self.fenced.is_none() && self.lease.valid() {
            if let Some(saving) = saving.take() {
                let _ = saving.await;
            }
            if self.changed_since_checkpoint {
                // The state now supersedes a checkpoint still waiting for its appends.
                self.deferred = None;
                self.checkpoint(&mut pending, &mut saving).await?;
            } else {
                // Everything is stored: one waiting for its appends may be written now.
                self.save_deferred(&mut saving);
            }
            if let Some(saving) = saving.take() {
                self.saved(Some(saving.await));
            }
        }
        Ok(())
    }

    /// When the serving loop must wake for timers: at the earliest due time (owner-sequenced),
    /// or when a mark may be asked for (log-sequenced: at most one in flight, and not more
    /// often than [`MARK_INTERVAL`]).
    fn wake_at(&self) -> Option<Instant> {
        let due = self.ctx.clock.instant_at(self.state.next_due()?);
        match self.sequencing {
            Sequencing::Owner => Some(due),
            Sequencing::Log if self.marked.1 => None,
            Sequencing::Log => Some(due.max(self.marked.0 + MARK_INTERVAL)),
        }
    }

    fn on_timers(&mut self, pending: &mut Pending) {
        match self.sequencing {
            Sequencing::Owner => {
                // What is due by now, a chunk at a time, up to FIRE_AHEAD chunks in flight;
                // the rest (a storm's million) on the next turns of the loop, as appends
                // complete, so the alerts waiting for the log stay bounded.
                let now = self.ctx.clock.now();
                let chunks = self
                    .ctx
                    .in_flight
                    .min(FIRE_AHEAD)
                    .saturating_sub(pending.len())
                    .max(1);
                for _ in 0..chunks {
                    let more = self.state.advance_at_most(now, FIRE_CHUNK);
                    self.flush(pending);
                    if !more {
                        break;
                    }
                }
                self.changed_since_checkpoint = true;
            }
            Sequencing::Log => {
                if !self.lease.valid() {
                    return;
                }
                self.marked = (Instant::now(), true);
                let now = self.ctx.clock.now();
                let mark = self.ctx.events.append(
                    self.partition,
                    EventRecord {
                        arrival: now,
                        received: now,
                        events: Vec::new(),
                    },
                );
                pending.push_back(async move { Done::Mark(mark.await) }.boxed());
            }
        }
    }

    async fn on_command(
        &mut self,
        command: Command,
        pending: &mut Pending,
    ) -> Result<(), LogError> {
        match command {
            Command::Submit {
                events,
                received,
                reply,
            } => self.submit(events, received, reply, pending),
            Command::Query { query, reply } => {
                let (outages, total) = match query {
                    OwnerQuery::Device(device) => self.state.outages(Some(device), usize::MAX),
                    OwnerQuery::Outages { limit } => self.state.outages(None, limit),
                };
                let _ = reply.send(OwnerAnswer { outages, total });
            }
            Command::Unpark { reply } => {
                let moved = self.move_parked(pending).await;
                let _ = reply.send(moved.map_err(RelayError::from));
            }
        }
        Ok(())
    }

    /// An ingest batch (owner-sequenced): stamped with the log time, applied, and its new
    /// events logged; the publisher is answered once that record, and the alerts the batch
    /// emitted, are durable.
    fn submit(
        &mut self,
        events: Vec<DeviceEvent>,
        received: UtcMillis,
        reply: oneshot::Sender<Result<ApplyReport, RelayError>>,
        pending: &mut Pending,
    ) {
        if let Some(err) = &self.fenced {
            let _ = reply.send(Err(RelayError::from(fence_error(err))));
            return;
        }
        let arrival = self.ctx.clock.now().max(self.state.log_time());
        self.fire_due(arrival, pending);
        let record = EventRecord {
            arrival,
            received,
            events,
        };
        let mut accepted = Vec::with_capacity(record.events.len());
        let report = self
            .state
            .apply(&record, Some(&mut accepted), &mut self.counts);
        self.send_notes();
        self.ctx.metrics.events(&std::mem::take(&mut self.counts));
        self.changed_since_checkpoint = true;
        let result = if accepted.is_empty() {
            // Nothing to log, but the answer still waits for the records before it: the
            // first copy of a duplicate may be among them.
            futures::future::ready(Ok(None)).boxed()
        } else {
            self.events_since_checkpoint += accepted.len() as u64;
            let append = self.ctx.events.append(
                self.partition,
                EventRecord {
                    arrival,
                    received,
                    events: accepted,
                },
            );
            async move { append.await.map(|appended| Some(appended.position)) }.boxed()
        };
        // The alerts the batch caused are appended first in the queue, so the publisher's
        // answer also waits for them: once it is answered, they are stored and visible.
        self.flush(pending);
        pending.push_back(
            async move {
                Done::Record {
                    result: result.await,
                    reply,
                    report,
                }
            }
            .boxed(),
        );
    }

    /// Fires the timers due by `to` a chunk at a time, so that the record applied next does
    /// not carry them all in one append.
    fn fire_due(&mut self, to: UtcMillis, pending: &mut Pending) {
        while self.state.next_due().is_some_and(|due| due <= to) {
            self.state.advance_at_most(to, FIRE_CHUNK);
            self.flush(pending);
        }
    }

    /// A record read from the log (replay, or log-sequenced serving).
    fn apply_logged(&mut self, logged: &Logged, pending: &mut Pending) {
        self.fire_due(logged.record.arrival, pending);
        self.state.apply(&logged.record, None, &mut self.counts);
        self.send_notes();
        self.position = logged.position;
        self.events_since_checkpoint += logged.record.events.len() as u64;
        self.changed_since_checkpoint = true;
        if self.sequencing == Sequencing::Log && logged.record.events.is_empty() {
            self.marked.1 = false;
        }
        self.flush(pending);
    }

    fn finish_replay(&mut self) {
        if self.replaying {
            self.replaying = false;
            self.counts = [[0; crate::debounce::Outcome::ALL.len()]; 2];
            self.ctx.alerts.replayed(self.partition);
            let open = self
                .state
                .open_outages()
                .map(|(point, outage)| OpenPoint {
                    point,
                    mpan: outage.mpan,
                    lost_at: outage.lost_at,
                })
                .collect();
            self.ctx.summaries.opened(self.partition, open);
            self.state.set_noting(true);
        }
    }

    /// Sends the summaries what the last record opened and closed (nothing while replaying:
    /// the open outages are sent once, when the replay ends).
    fn send_notes(&mut self) {
        let notes = self.state.take_notes();
        if !notes.is_empty() {
            self.ctx.summaries.send(Input::Notes(notes));
        }
    }

    /// Routes the alerts emitted since the last flush and appends them, in order.
    fn flush(&mut self, pending: &mut Pending) {
        let emitted = self.state.take_alerts();
        if emitted.is_empty() {
            return;
        }
        let mut routed = Vec::with_capacity(emitted.len());
        let mut parked: Vec<(Alert, ParkReason)> = Vec::new();
        for alert in emitted {
            match self
                .ctx
                .router
                .route_in(&self.registry, alert.point.device, alert.event_mpan)
            {
                Ok(route) => routed.push((alert, route)),
                Err(reason) => {
                    self.ctx.metrics.parked(reason.as_label());
                    tracing::debug!(alert_id = %alert.id(), %reason, "alert parked");
                    parked.push((alert, reason));
                }
            }
        }
        if !parked.is_empty() {
            let park = self.ctx.alerts.park(self.partition, parked);
            pending.push_back(async move { Done::Parked(park.await) }.boxed());
        }
        if !routed.is_empty() {
            let alerts = routed
                .iter()
                .map(|(alert, _)| (alert.kind, alert.due_at.max(alert.received_at)))
                .collect();
            let append = self.ctx.alerts.append(routed);
            pending.push_back(
                async move {
                    Done::Alerts {
                        result: append.await,
                        alerts,
                    }
                }
                .boxed(),
            );
        }
    }

    /// Handles one completed append. An append that failed fences an owner-sequenced
    /// partition (ingest refused until a restart); a log-sequenced owner ends instead, and
    /// another instance (or this one, later) takes the partition over from the log.
    fn finish(&mut self, done: Done) -> Result<(), LogError> {
        self.appends_done += 1;
        match done {
            Done::Record {
                result,
                reply,
                report,
            } => match result {
                Ok(position) => {
                    if let Some(position) = position {
                        self.position = position;
                    }
                    let _ = reply.send(Ok(report));
                }
                Err(err) => {
                    let _ = reply.send(Err(RelayError::from(fence_error(&err))));
                    self.failed(err)?;
                }
            },
            Done::Alerts { result, alerts } => match result {
                Ok(stored) => self.count_stored(&alerts, &stored),
                Err(err) => self.failed(err)?,
            },
            Done::Parked(result) => result.or_else(|err| self.failed(err))?,
            Done::Mark(result) => {
                if let Err(err) = result {
                    self.marked.1 = false;
                    tracing::debug!(partition = self.partition, %err, "mark not stored");
                }
            }
        }
        Ok(())
    }

    fn failed(&mut self, err: LogError) -> Result<(), LogError> {
        self.ctx.metrics.store_errors.increment(1);
        match self.sequencing {
            Sequencing::Owner => {
                if self.fenced.is_none() {
                    tracing::error!(partition = self.partition, %err, "append failed; ingest refused until restart");
                    self.ctx.admission.fail(err.clone());
                    self.fenced = Some(err);
                }
                Ok(())
            }
            Sequencing::Log => Err(err),
        }
    }

    fn count_stored(&self, alerts: &[(AlertKind, UtcMillis)], stored: &[Stored]) {
        let now = self.ctx.clock.now();
        for ((kind, could_emit_at), stored) in alerts.iter().zip(stored) {
            if stored.duplicate {
                self.ctx.metrics.alert_deduplicated(*kind);
            } else {
                self.ctx
                    .metrics
                    .alert_emitted(*kind, now.seconds_since(*could_emit_at));
            }
        }
    }

    /// Waits for every append in flight.
    async fn drain(&mut self, pending: &mut Pending) -> Result<(), LogError> {
        while let Some(done) = pending.next().await {
            self.finish(done)?;
        }
        Ok(())
    }

    /// Routes the parked alerts again with the registry in use now, once everything in
    /// flight is stored (so a point's earlier alerts are not overtaken); the alerts that now
    /// have a subscriber move to its log. Alerts are routed with the new registry from here.
    async fn move_parked(&mut self, pending: &mut Pending) -> Result<u64, LogError> {
        self.drain(pending).await?;
        self.registry = self.ctx.router.registry();
        let parked = self.ctx.alerts.parked(self.partition).await?;
        let moves: Vec<(u64, Alert, Route)> = parked
            .into_iter()
            .filter_map(|parked| {
                let alert = parked.entry.alert;
                self.ctx
                    .router
                    .route_in(&self.registry, alert.point.device, alert.event_mpan)
                    .ok()
                    .map(|route| (parked.key, alert, route))
            })
            .collect();
        if moves.is_empty() {
            return Ok(0);
        }
        let moved = moves.len() as u64;
        self.ctx.alerts.move_parked(self.partition, moves).await?;
        self.ctx
            .metrics
            .unparked(usize::try_from(moved).unwrap_or(usize::MAX));
        tracing::info!(
            partition = self.partition,
            moved,
            "parked alerts routed after a registry reload"
        );
        Ok(moved)
    }

    /// Takes a checkpoint of the state at the current position: the encoding happens here
    /// (the state must not move meanwhile), the write in a task, and only once every append
    /// issued before it is stored (a checkpoint past alerts not stored would make a restart
    /// skip them).
    ///
    /// An owner-sequenced partition waits for its appends here (its position is that of its
    /// last durable record, so the state must not run ahead of it). A log-sequenced one does
    /// not wait: every record it applied is already in the log, so it defers the write until
    /// the appends issued before it finish, and goes on reading meanwhile. A subscriber
    /// stream that stalls then holds up only this save and that subscriber's alerts, not
    /// the partition's other alerts (up to `in_flight` appends).
    async fn checkpoint(
        &mut self,
        pending: &mut Pending,
        saving: &mut Option<Saving>,
    ) -> Result<(), LogError> {
        if saving.is_some()
            || self.deferred.is_some()
            || self.fenced.is_some()
            || !self.lease.valid()
        {
            return Ok(());
        }
        if self.sequencing == Sequencing::Owner {
            self.drain(pending).await?;
        }
        let state = checkpoint::encode_state(&self.state, &self.ctx.alerts.heads(self.partition));
        let checkpoint = Checkpoint {
            position: self.position,
            state,
        };
        let issued_before = self.appends_done + pending.len() as u64;
        self.deferred = Some((checkpoint, issued_before));
        self.save_deferred(saving);
        self.events_since_checkpoint = 0;
        self.changed_since_checkpoint = false;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Starts writing the deferred checkpoint once the appends issued before it have
    /// finished (and no other write is running).
    fn save_deferred(&mut self, saving: &mut Option<Saving>) {
        if saving.is_some()
            || self
                .deferred
                .as_ref()
                .is_none_or(|(_, issued_before)| self.appends_done < *issued_before)
        {
            return;
        }
        let Some((checkpoint, _)) = self.deferred.take() else {
            return;
        };
        let (partition, lease, ctx) = (self.partition, self.lease.clone(), Arc::clone(&self.ctx));
        let keep_since = Retention::before(ctx.clock.now(), ctx.checkpoint.event_retention);
        *saving = Some(tokio::spawn(async move {
            ctx.checkpoints.save(partition, &checkpoint, &lease).await?;
            ctx.events
                .truncate(partition, checkpoint.position, keep_since)
                .await?;
            Ok(checkpoint.position)
        }));
    }

    fn saved(&mut self, done: Option<Result<Result<u64, LogError>, tokio::task::JoinError>>) {
        match done {
            Some(Ok(Ok(position))) => {
                tracing::debug!(partition = self.partition, position, "checkpoint saved");
            }
            Some(Ok(Err(err))) => {
                // Not fatal: the next checkpoint tries again, and a restart replays more.
                self.changed_since_checkpoint = true;
                self.ctx.metrics.checkpoint_failed();
                tracing::warn!(partition = self.partition, %err, "checkpoint not saved");
            }
            Some(Err(_)) | None => {
                self.changed_since_checkpoint = true;
                self.ctx.metrics.checkpoint_failed();
                tracing::warn!(partition = self.partition, "checkpoint task failed");
            }
        }
    }

    fn report_gauges(&mut self, gone: bool) {
        let now = if gone {
            (0, 0)
        } else {
            (self.state.pending_count(), self.state.open_count())
        };
        self.ctx.metrics.adjust_outages(self.reported, now);
        self.reported = now;
    }
}

/// The checkpoint being saved; never resolves when none is.
async fn wait_saving(
    saving: &mut Option<Saving>,
) -> Result<Result<u64, LogError>, tokio::task::JoinError> {
    match saving {
        Some(saving) => saving.await,
        None => std::future::pending().await,
    }
}

/// The next record of a log-sequenced partition; never resolves without a reader.
async fn next_logged(
    reader: &mut Option<Box<dyn EventReader>>,
) -> Result<Option<Logged>, LogError> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

/// What a publisher is told when its partition is fenced.
fn fence_error(err: &LogError) -> LogError {
    match err {
        LogError::Full(message) => LogError::Full(format!(
            "{message}; ingest is refused until the relay restarts"
        )),
        other => LogError::Unavailable(format!(
            "{other}; ingest is refused until the relay restarts"
        )),
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
