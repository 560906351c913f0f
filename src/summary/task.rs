//! The summaries task: the I/O around the pure [`Summariser`]. It takes the owners' notes
//! from a bounded channel, places supplies with the router and the registry in use, and sends
//! each watcher its summary when its interval comes round.
//!
//! Owners hold a [`NoteSender`] and never wait: a full channel drops the notes (counted). A
//! watcher whose stream is still full when its interval comes round gets no summary then; its
//! window goes on, so the next summary covers both intervals. Watchers are served by the
//! instance they called: with JetStream, an instance summarises the partitions it owns.

use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::summariser::{InferenceKind, Locate, Place, Settings, Summariser, Summary, WatchId};
use super::{Input, OpenPoint};
use crate::domain::{Clock, DeviceId, MpanCore, UtcMillis};
use crate::error::RelayError;
use crate::proto;
use crate::route::{Registry, Router, SubscriberId};
use crate::security::limits::StreamPermit;
use crate::telemetry;

/// Summaries queued per watcher stream.
const STREAM_BUFFER: usize = 4;
/// Notes (or open outages) applied before the task yields, so that a storm's input never
/// holds a runtime worker the owners need for long.
const CHUNK: usize = 1024;

/// What a watcher's stream carries.
pub type SummaryItem = Result<proto::OutageSummary, Status>;

/// The owners' side: sends notes without ever waiting.
#[derive(Debug, Clone)]
pub struct NoteSender {
    tx: Option<mpsc::Sender<Input>>,
    dropped: Counter,
}

impl NoteSender {
    /// A sender that sends nothing (tests, tools).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            dropped: Counter::noop(),
        }
    }

    /// Queues `input` if there is room; otherwise drops it and counts its notes.
    pub fn send(&self, input: Input) {
        let Some(tx) = &self.tx else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(input)) = tx.try_send(input) {
            let notes = match &input {
                Input::Notes(notes) => notes.len(),
                Input::Opened { open, .. } => open.len(),
                Input::Released { .. } => 1,
            };
            self.dropped.increment(notes as u64);
        }
    }

    /// Queues the outages open in `partition` as its owner starts serving it.
    pub fn opened(&self, partition: crate::log::Partition, open: Vec<OpenPoint>) {
        self.send(Input::Opened { partition, open });
    }
}

/// A new watcher, from `AlertFeed.WatchSummaries`.
struct Watch {
    subscriber: SubscriberId,
    interval: Duration,
    permit: Option<StreamPermit>,
    reply: oneshot::Sender<mpsc::Receiver<SummaryItem>>,
}

/// The service's side: starts watchers.
#[derive(Debug, Clone)]
pub struct Summaries {
    watches: mpsc::Sender<Watch>,
    default_interval: Duration,
    min_interval: Duration,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("subscriber", &self.subscriber)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Summaries {
    /// A stream of `subscriber`'s summaries every `interval` (`None` or zero: the default);
    /// `permit` is held while the stream is open.
    pub async fn watch(
        &self,
        subscriber: SubscriberId,
        interval: Option<Duration>,
        permit: Option<StreamPermit>,
    ) -> Result<mpsc::Receiver<SummaryItem>, RelayError> {
        let interval = interval
            .filter(|interval| !interval.is_zero())
            .unwrap_or(self.default_interval);
        if interval < self.min_interval {
            return Err(RelayError::InvalidArgument(format!(
                "interval {} is shorter than summaries.min_interval ({})",
                humantime::format_duration(interval),
                humantime::format_duration(self.min_interval)
            )));
        }
        let stopped = || RelayError::Unavailable("summaries are stopping".into());
        let (reply, answer) = oneshot::channel();
        self.watches
            .send(Watch {
                subscriber,
                interval,
                permit,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

/// How the summaries task is set up.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// The summariser's numbers.
    pub summariser: Settings,
    /// Input batches queued from the owners before notes are dropped.
    pub queue: usize,
    /// Interval of a request that names none.
    pub default_interval: Duration,
    /// Shortest interval a request may ask for.
    pub min_interval: Duration,
}

/// The task's handles and its future (to spawn).
pub fn start(
    settings: &TaskSettings,
    router: Arc<Router>,
    clock: Clock,
    shutdown: CancellationToken,
) -> (
    NoteSender,
    Summaries,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, inputs) = mpsc::channel(settings.queue.max(1));
    let (watches, watch_rx) = mpsc::channel(16);
    let notes = NoteSender {
        tx: Some(tx),
        dropped: metrics::counter!(telemetry::SUMMARY_NOTES_DROPPED),
    };
    let summaries = Summaries {
        watches,
        default_interval: settings.default_interval,
        min_interval: settings.min_interval,
    };
    let task = Task {
        summariser: Summariser::new(settings.summariser),
        router,
        clock,
        live: Vec::new(),
        sent: metrics::counter!(telemetry::SUMMARIES_SENT),
    };
    (notes, summaries, task.run(inputs, watch_rx, shutdown))
}

/// A watcher being served.
struct Live {
    id: WatchId,
    interval: Duration,
    next: Instant,
    tx: mpsc::Sender<SummaryItem>,
    _permit: Option<StreamPermit>,
}

struct Task {
    summariser: Summariser,
    router: Arc<Router>,
    clock: Clock,
    live: Vec<Live>,
    sent: Counter,
}

impl Task {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut watches: mpsc::Receiver<Watch>,
        shutdown: CancellationToken,
    ) {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        loop {
            let next = self.live.iter().map(|live| live.next).min().unwrap_or(far);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next), if next != far => self.send_due(),
                Some(watch) = watches.recv() => self.start_watch(watch),
                Some(input) = inputs.recv() => self.take(input).await,
            }
        }
    }

    /// Applies one input a [`CHUNK`] at a time, yielding between chunks.
    async fn take(&mut self, input: Input) {
        let (notes, open) = match input {
            Input::Notes(notes) => (notes, Vec::new()),
            Input::Opened { partition, open } => {
                self.summariser.release(partition);
                (Vec::new(), open)
            }
            Input::Released { partition } => {
                self.summariser.release(partition);
                return;
            }
        };
        for chunk in notes.chunks(CHUNK) {
            let registry = self.router.registry();
            let places = Routed {
                router: &self.router,
                registry: &registry,
            };
            self.summariser.notes(chunk, &places);
            tokio::task::yield_now().await;
        }
        for chunk in open.chunks(CHUNK) {
            let registry = self.router.registry();
            let places = Routed {
                router: &self.router,
                registry: &registry,
            };
            self.summariser.add_open(chunk, &places);
            tokio::task::yield_now().await;
        }
    }

    fn start_watch(&mut self, watch: Watch) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        if watch.reply.send(rx).is_err() {
            return;
        }
        let id = self.summariser.watch(watch.subscriber, self.clock.now());
        self.live.push(Live {
            id,
            interval: watch.interval,
            next: Instant::now() + watch.interval,
            tx,
            _permit: watch.permit,
        });
    }

    fn send_due(&mut self) {
        let now = Instant::now();
        let at = self.clock.now();
        let mut gone = Vec::new();
        for live in &mut self.live {
            if live.next > now {
                continue;
            }
            // A task that fell behind starts the watcher's rhythm again from now, rather than
            // sending the turns it missed back to back.
            let following = live.next + live.interval;
            live.next = if following <= now {
                now + live.interval
            } else {
                following
            };
            if live.tx.is_closed() {
                gone.push(live.id);
                continue;
            }
            if live.tx.capacity() == 0 {
                continue;
            }
            if let Some(summary) = self.summariser.summarise(live.id, at) {
                let name = self.router.table().name(summary.subscriber).to_owned();
                if live.tx.try_send(Ok(to_proto(name, summary))).is_ok() {
                    self.sent.increment(1);
                }
            }
        }
        for id in gone {
            self.summariser.unwatch(id);
            self.live.retain(|live| live.id != id);
        }
    }
}

/// Places supplies with the router and one registry.
struct Routed<'a> {
    router: &'a Router,
    registry: &'a Registry,
}

impl Locate for Routed<'_> {
    fn locate(&self, device: DeviceId, mpan: Option<MpanCore>) -> Option<Place<'_>> {
        let route = self.router.route_in(self.registry, device, mpan).ok()?;
        let feeder = self
            .registry
            .feeder_of(device)
            .and_then(|id| self.registry.feeder(id));
        Some(Place {
            subscriber: route.subscriber,
            gsp: route.gsp,
            distributor: route.distributor,
            substation: feeder.map_or("", |feeder| feeder.substation),
            feeder: feeder.map_or("", |feeder| feeder.feeder),
            registered: feeder.map_or(0, |feeder| feeder.supplies),
        })
    }
}

fn gsp_text(gsp: Option<crate::domain::GspGroup>) -> String {
    gsp.map(|gsp| gsp.to_string()).unwrap_or_default()
}

fn timestamp(at: UtcMillis) -> Option<prost_types::Timestamp> {
    Some(at.to_proto())
}

/// The message a watcher receives.
pub fn to_proto(subscriber: String, summary: Summary) -> proto::OutageSummary {
    proto::OutageSummary {
        subscriber,
        window_start: timestamp(summary.window_start),
        window_end: timestamp(summary.window_end),
        storm: summary.storm,
        areas: summary
            .areas
            .into_iter()
            .map(|count| proto::AreaSummary {
                gsp_group: gsp_text(count.area.gsp),
                distributor_id: u32::from(count.area.distributor.0),
                substation_id: count.area.substation.into(),
                feeder_id: count.area.feeder.into(),
                open: count.open,
                lost_in_window: count.lost,
                restored_in_window: count.restored,
            })
            .collect(),
        inferences: summary
            .inferences
            .into_iter()
            .map(|inference| proto::Inference {
                kind: match inference.kind {
                    InferenceKind::FeederOutage => proto::InferenceKind::FeederOutage,
                    InferenceKind::NestedOutage => proto::InferenceKind::NestedOutage,
                } as i32,
                gsp_group: gsp_text(inference.area.gsp),
                distributor_id: u32::from(inference.area.distributor.0),
                substation_id: inference.area.substation.into(),
                feeder_id: inference.area.feeder.into(),
                supplies: inference.supplies,
                since: timestamp(inference.since),
                inferred: true,
                reason: inference.reason,
            })
            .collect(),
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
