//! Storm summaries watched during a run (`--watch-summaries INTERVAL`): beside each DNO
//! subscriber's alert feed, a task keeps an `AlertFeed.WatchSummaries` stream open for the
//! whole run and counts what arrives, so the benchmark measures the POAs' latency with
//! summaries being built and sent, and the report shows they really were.

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::domain::UtcMillis;
use crate::proto::alert_feed_client::AlertFeedClient;
use crate::proto::{InferenceKind, OutageSummary, SummaryRequest};

/// Wait before reopening a broken summary stream.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Largest summary accepted: a storm over many feeders lists many areas.
const MAX_SUMMARY_BYTES: usize = 64 * 1024 * 1024;

/// An inference as the relay names it: its kind, area and start. The same inference is
/// repeated in every summary while it holds; this key counts it once.
type InferenceKey = (i32, String, u32, String, String, i64);

/// What one subscriber's summary stream delivered.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Summaries received.
    pub received: u64,
    /// Of those, summaries with `storm` set.
    pub storm: u64,
    /// Most areas in one summary.
    pub max_areas: u64,
    /// Distinct inferences seen (by kind, area and `since`).
    inferences: HashSet<InferenceKey>,
    /// Streams reopened after a failure.
    pub reconnects: u64,
}

impl Watch {
    /// Counts one summary.
    pub fn note(&mut self, summary: &OutageSummary) {
        self.received += 1;
        self.storm += u64::from(summary.storm);
        self.max_areas = self.max_areas.max(summary.areas.len() as u64);
        for inference in &summary.inferences {
            let since = inference
                .since
                .as_ref()
                .and_then(UtcMillis::from_proto)
                .map_or(0, |at| at.0);
            self.inferences.insert((
                inference.kind,
                inference.gsp_group.clone(),
                inference.distributor_id,
                inference.substation_id.clone(),
                inference.feeder_id.clone(),
                since,
            ));
        }
    }

    /// Distinct inferences of `kind` seen.
    pub fn inferences(&self, kind: InferenceKind) -> u64 {
        self.inferences
            .iter()
            .filter(|key| key.0 == kind as i32)
            .count() as u64
    }
}

/// Watches `subscriber`'s summaries every `interval` until `stop`, reopening the stream if it
/// breaks; fails if the relay refuses the request itself.
pub async fn watch(
    url: String,
    subscriber: String,
    interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<Watch> {
    let mut watch = Watch::default();
    while !stop.is_cancelled() {
        match session(&url, &subscriber, interval, &mut watch, &stop).await {
            Ok(()) => {}
            Err(status)
                if matches!(
                    status.code(),
                    Code::NotFound | Code::InvalidArgument | Code::PermissionDenied
                ) =>
            {
                anyhow::bail!("cannot watch the summaries of {subscriber}: {status}");
            }
            Err(status) => tracing::warn!(%status, subscriber, "summary stream broke; resuming"),
        }
        if stop.is_cancelled() {
            break;
        }
        watch.reconnects += 1;
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
    Ok(watch)
}

async fn session(
    url: &str,
    subscriber: &str,
    interval: Duration,
    watch: &mut Watch,
    stop: &CancellationToken,
) -> Result<(), tonic::Status> {
    let client = AlertFeedClient::connect(url.to_owned())
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let interval = prost_types::Duration::try_from(interval)
        .map_err(|error| tonic::Status::invalid_argument(error.to_string()))?;
    let request = SummaryRequest {
        subscriber: subscriber.to_owned(),
        interval: Some(interval),
    };
    let mut stream = client
        .max_decoding_message_size(MAX_SUMMARY_BYTES)
        .watch_summaries(request)
        .await?
        .into_inner();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            () = &mut stopped => return Ok(()),
            message = stream.message() => match message? {
                Some(summary) => watch.note(&summary),
                None => return Err(tonic::Status::unavailable("the relay ended the stream")),
            },
        }
    }
}

/// Every subscriber's summaries together, for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Seen {
    /// The interval asked for, ms.
    pub interval_ms: u64,
    /// Summary streams watched (one per subscriber).
    pub streams: usize,
    /// Summaries received.
    pub received: u64,
    /// Summaries with `storm` set.
    pub storm: u64,
    /// Most areas in one summary.
    pub max_areas: u64,
    /// Distinct `FEEDER_OUTAGE` inferences.
    pub feeder_outages: u64,
    /// Distinct `NESTED_OUTAGE` inferences.
    pub nested_outages: u64,
    /// Streams reopened after a failure.
    pub reconnects: u64,
}

impl Seen {
    /// Adds up `watches` of streams asked for every `interval`.
    pub fn total(interval: Duration, watches: &[Watch]) -> Self {
        Self {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            streams: watches.len(),
            received: watches.iter().map(|w| w.received).sum(),
            storm: watches.iter().map(|w| w.storm).sum(),
            max_areas: watches.iter().map(|w| w.max_areas).max().unwrap_or(0),
            feeder_outages: watches
                .iter()
                .map(|w| w.inferences(InferenceKind::FeederOutage))
                .sum(),
            nested_outages: watches
                .iter()
                .map(|w| w.inferences(InferenceKind::NestedOutage))
                .sum(),
            reconnects: watches.iter().map(|w| w.reconnects).sum(),
        }
    }

    /// One line: `212 summaries every 1s on 16 streams, 40 with storm, 14 FEEDER_OUTAGE ...`.
    pub fn line(&self) -> String {
        format!(
            "{} received every {} on {} streams; storm in {}; {} FEEDER_OUTAGE and {} \
             NESTED_OUTAGE inferences; at most {} areas in one; {} reconnects",
            self.received,
            humantime::format_duration(Duration::from_millis(self.interval_ms)),
            self.streams,
            self.storm,
            self.feeder_outages,
            self.nested_outages,
            self.max_areas,
            self.reconnects
        )
    }
}
