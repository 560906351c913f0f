//! The owner loop: one task per partition this instance owns, the same for every backend.
//!
//! An owner holds its partition's [`PartitionState`] (state machine, timers, de-duplication
//! window) and routes the alerts it emits. It starts from the partition's last checkpoint and
//! replays the event log after it, deciding exactly what was decided before (see
//! `crate::log`); alerts the replay emits again come back from the alert log as duplicates.
//! Then it serves:
//!
//! - **Owner-sequenced logs** (embedded): ingest hands it batches ([`OwnerHandle::submit`]);
//!   it stamps each with the log time, applies it, appends the record of the events that were
//!   new, and answers the publisher once that record, and the alerts it caused, are durable.
//!   Timers fire by its own clock between batches.
//! - **Log-sequenced logs** (JetStream): it reads the records ingest appended. Timers fire
//!   when a record's arrival passes them, or a mark it appends comes back.
//!
//! Alerts are appended to the alert log in emission order, after the record that caused them,
//! and counted once stored. Every so often (`checkpoint_every`, or after
//! `checkpoint_events` events) the owner saves its state at its position, once the appends
//! issued before are stored, and truncates the event log behind it: an owner-sequenced one
//! waits for them; a log-sequenced one reads on and writes the checkpoint when they are
//! (so one stalled subscriber stream does not stop the partition). An append that fails fences the
//! partition: ingest is refused until a restart rebuilds it from the log.
//!
//! Once serving, an owner sends the summaries its open outages, then a note of every outage
//! opened or closed after each record, without waiting (see `crate::summary`).
//!
//! A registry reload is noticed before the next alerts are routed: the owner first stores
//! everything in flight, then routes its parked alerts again with the new registry, so a
//! point's alerts stay in order.

pub mod checkpoint;
mod run;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot, watch};

pub use state::{ApplyReport, OutcomeCounts, PartitionState, Saved};

use crate::debounce::Settings;
use crate::domain::{Clock, DeviceEvent, UtcMillis};
use crate::error::RelayError;
use crate::ingest::Admission;
use crate::log::{AlertLog, Checkpoints, EventLog, Lease, OwnerAnswer, OwnerQuery, Partition};
use crate::route::Router;
use crate::summary::NoteSender;
use crate::telemetry::Metrics;

/// What an owner is asked to do.
#[derive(Debug)]
enum Command {
    /// Apply events ingest received at `received` (owner-sequenced logs).
    Submit {
        events: Vec<DeviceEvent>,
        received: UtcMillis,
        reply: oneshot::Sender<Result<ApplyReport, RelayError>>,
    },
    /// Answer an Admin question from the partition's state.
    Query {
        query: OwnerQuery,
        reply: oneshot::Sender<OwnerAnswer>,
    },
    /// The registry was replaced: route the parked alerts again now; answers how many found
    /// a subscriber.
    Unpark {
        reply: oneshot::Sender<Result<u64, RelayError>>,
    },
}

/// A running owner's inbox.
#[derive(Debug, Clone)]
pub struct OwnerHandle {
    tx: mpsc::Sender<Command>,
}

fn stopped() -> RelayError {
    RelayError::Unavailable("the partition's owner stopped (shutdown or hand-over); retry".into())
}

impl OwnerHandle {
    /// Applies `events`, waiting at most `wait` for room in the owner's queue; answers once
    /// the events are durable.
    pub async fn submit(
        &self,
        events: Vec<DeviceEvent>,
        received: UtcMillis,
        wait: Duration,
    ) -> Result<ApplyReport, RelayError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Submit {
            events,
            received,
            reply,
        };
        self.tx
            .send_timeout(command, wait)
            .await
            .map_err(|err| match err {
                mpsc::error::SendTimeoutError::Timeout(_) => RelayError::Exhausted {
                    message: format!(
                        "relay is saturated: a partition queue stayed full for {wait:?}"
                    ),
                    retry_after: Duration::from_millis(250),
                },
                mpsc::error::SendTimeoutError::Closed(_) => stopped(),
            })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Asks the owner about its open outages.
    pub async fn ask(&self, query: OwnerQuery) -> Result<OwnerAnswer, RelayError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Query { query, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    /// Has the owner route its parked alerts with the registry in use now.
    pub async fn unpark(&self) -> Result<u64, RelayError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Unpark { reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The owners running on this instance, by partition.
#[derive(Debug)]
pub struct Owners {
    slots: Vec<RwLock<Option<OwnerHandle>>>,
    /// How many serve, and the first recovery that failed.
    serving: watch::Sender<(usize, Option<String>)>,
}

impl Owners {
    /// No owner yet, of `partitions` partitions.
    pub fn new(partitions: u16) -> Self {
        Self {
            slots: (0..partitions).map(|_| RwLock::new(None)).collect(),
            serving: watch::Sender::new((0, None)),
        }
    }

    /// Partitions of the device space.
    pub fn partitions(&self) -> u16 {
        u16::try_from(self.slots.len()).unwrap_or(u16::MAX)
    }

    /// The owner of `partition` on this instance, once it has replayed and serves.
    pub fn get(&self, partition: Partition) -> Option<OwnerHandle> {
        self.slots
            .get(usize::from(partition))
            .and_then(|slot| slot.read().clone())
    }

    /// Every owner serving on this instance.
    pub fn serving(&self) -> Vec<(Partition, OwnerHandle)> {
        (0..self.partitions())
            .filter_map(|partition| self.get(partition).map(|handle| (partition, handle)))
            .collect()
    }

    /// Resolves once at least `count` owners serve here, or with the first recovery that
    /// failed.
    pub async fn wait_serving(&self, count: usize) -> Result<(), String> {
        let mut serving = self.serving.subscribe();
        let state = serving
            .wait_for(|(now, failed)| *now >= count || failed.is_some())
            .await
            .map_err(|_| "the owners stopped".to_owned())?;
        match &state.1 {
            Some(failed) => Err(failed.clone()),
            None => Ok(()),
        }
    }

    /// Records that `partition`'s owner could not recover.
    fn failed(&self, partition: Partition, why: String) {
        self.serving.send_modify(|(_, failed)| {
            failed.get_or_insert_with(|| format!("partition {partition}: {why}"));
        });
    }

    fn set(&self, partition: Partition, handle: Option<OwnerHandle>) {
        if let Some(slot) = self.slots.get(usize::from(partition)) {
            let was = std::mem::replace(&mut *slot.write(), handle.clone()).is_some();
            match (was, handle.is_some()) {
                (false, true) => self.serving.send_modify(|(n, _)| *n += 1),
                (true, false) => self.serving.send_modify(|(n, _)| *n -= 1),
                _ => {}
            }
        }
    }
}

/// How often an owner checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// At least this often while anything changed.
    pub every: Duration,
    /// And after this many events since the last one.
    pub events: u64,
    /// Records that arrived less than this long ago stay in the event log after a
    /// checkpoint covers them (for `outage-relay replay`).
    pub event_retention: Duration,
}

/// Everything the owners of one instance share.
pub struct OwnerContext {
    /// The event log.
    pub events: Arc<dyn EventLog>,
    /// The alert logs.
    pub alerts: Arc<dyn AlertLog>,
    /// The checkpoints.
    pub checkpoints: Arc<dyn Checkpoints>,
    /// Routing of alerts.
    pub router: Arc<Router>,
    /// Debounce and SLA settings.
    pub settings: Settings,
    /// How long event ids are remembered.
    pub dedup_window: Duration,
    /// Most event ids remembered per partition.
    pub dedup_capacity: usize,
    /// Partitions of the device space.
    pub partitions: u16,
    /// The relay clock.
    pub clock: Clock,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Ingest refusal, set when an append fails.
    pub admission: Arc<Admission>,
    /// When to checkpoint.
    pub checkpoint: CheckpointPolicy,
    /// Batches queued per owner before ingest waits.
    pub queue: usize,
    /// Appends an owner keeps in flight before it stops taking work and waits for them.
    pub in_flight: usize,
    /// Where serving owners register.
    pub owners: Arc<Owners>,
    /// Where owners send their loss and restoration notes for storm summaries.
    pub summaries: NoteSender,
}

impl std::fmt::Debug for OwnerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerContext")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// Runs the owner of `partition` until its lease ends: recovery, then serving.
pub async fn own(partition: Partition, lease: Lease, context: Arc<OwnerContext>) {
    run::run(partition, lease, context).await;
}
