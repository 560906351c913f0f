//! Telemetry: every metric name in one place, handles created once (never looked up per
//! event), and the Prometheus recorder served on its own listener ([`listener`]).
//!
//! Latencies are histograms in seconds; no counter duplicates a histogram's count.

pub mod listener;

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Unit, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Config;
use crate::debounce::Outcome;
use crate::domain::{AlertKind, BreachCause};

/// Events applied, by `kind` (lost, restored) and `outcome` (see `debounce::Outcome`).
pub const EVENTS: &str = "outage_relay_events_total";
/// Events refused by validation, by `reason`.
pub const EVENTS_REJECTED: &str = "outage_relay_events_rejected_total";
/// Alerts emitted by the state machine, by `kind` (poa, pra).
pub const ALERTS: &str = "outage_relay_alerts_total";
/// Alerts that routed nowhere and were parked, by `reason`.
pub const ALERTS_PARKED: &str = "outage_relay_alerts_parked_total";
/// Alerts not delivered by their deadline, by `kind`, `subscriber` and `cause`.
pub const SLA_BREACHES: &str = "outage_relay_sla_breaches_total";
/// Relay time from an alert becoming emittable (due, or its event arriving, whichever is
/// later) to its emission, by `kind`.
pub const EMIT_LAG: &str = "outage_relay_alert_emit_lag_seconds";
/// Time from an alert's due time to its acknowledgement by the subscriber, by `kind` and
/// `subscriber`: the SLA quantity.
pub const DELIVERY_LATENCY: &str = "outage_relay_alert_delivery_seconds";
/// Time from receiving an ingest batch to acknowledging it.
pub const INGEST_BATCH_LATENCY: &str = "outage_relay_ingest_batch_seconds";
/// Debounce timers running (outages pending).
pub const PENDING_TIMERS: &str = "outage_relay_pending_timers";
/// Open outages, pending or alerted.
pub const OPEN_OUTAGES: &str = "outage_relay_open_outages";
/// Alerts not yet acknowledged, by `subscriber`.
pub const BACKLOG: &str = "outage_relay_subscriber_backlog";
/// Open Subscribe streams (or push connections), by `subscriber`.
pub const CONNECTED: &str = "outage_relay_subscriber_connected";
/// Alerts currently parked.
pub const PARKED_NOW: &str = "outage_relay_parked_alerts";

/// Unacknowledged alerts removed by retention, by `subscriber`.
pub const ALERTS_EXPIRED: &str = "outage_relay_alerts_expired_total";
/// Duration of one group commit of the embedded log: writing and fdatasyncing every log a
/// group of appends and acks touched.
pub const STORE_COMMIT_LATENCY: &str = "outage_relay_store_commit_seconds";
/// Failed commits; after one, ingest is refused until restart.
pub const STORE_ERRORS: &str = "outage_relay_store_errors_total";
/// 1 while ingest is refused (disk below `min_free_disk`, or the store failed).
pub const INGEST_REFUSED: &str = "outage_relay_ingest_refused";
/// Calls refused before reaching a service, by `reason` (see [`REFUSE_REASONS`]).
pub const CALLS_REFUSED: &str = "outage_relay_calls_refused_total";
/// Seconds until the relay's own TLS certificate expires (absent in plaintext mode); kept
/// current while the relay runs and after each reload.
pub const TLS_CERT_EXPIRY: &str = "outage_relay_tls_certificate_expiry_seconds";
/// Seconds until the first `tls.client_ca` certificate expires (absent when client
/// certificates are not verified).
pub const TLS_CLIENT_CA_EXPIRY: &str = "outage_relay_tls_client_ca_expiry_seconds";
/// Seconds until the earliest `nextUpdate` of the `tls.crl` lists, negative once it has passed
/// (absent without CRLs).
pub const TLS_CRL_NEXT_UPDATE: &str = "outage_relay_tls_crl_next_update_seconds";
/// TLS material reloads, by `listener` (grpc, metrics) and `result` (ok, failed).
pub const TLS_RELOADS: &str = "outage_relay_tls_reloads_total";
/// 1 while the TLS files' latest change could not be loaded (the previous material is in
/// use), by `listener`.
pub const TLS_RELOAD_FAILING: &str = "outage_relay_tls_reload_failing";

/// Partitions this instance owns (JetStream backend).
pub const PARTITIONS_OWNED: &str = "outage_relay_partitions_owned";
/// Events of an owned partition not yet applied, by `partition` (JetStream backend): a
/// stalled or slow consumer shows here.
pub const PARTITION_LAG: &str = "outage_relay_partition_lag_events";
/// Lease changes, by `change` (claimed, released, lost) (JetStream backend).
pub const LEASE_CHANGES: &str = "outage_relay_lease_changes_total";
/// Alerts JetStream dropped as already stored (a new owner re-emitting), by `kind`.
pub const ALERTS_DEDUPLICATED: &str = "outage_relay_alerts_deduplicated_total";
/// Failed JetStream operations, by `operation` (publish, snapshot, consume).
pub const JETSTREAM_ERRORS: &str = "outage_relay_jetstream_errors_total";
/// Stalls of a subscriber's alert stream: a publish failed and its first retry too (the
/// stream has no leader, or the cluster is unreachable), by `subscriber` (JetStream backend).
pub const ALERT_STREAM_STALLS: &str = "outage_relay_alert_stream_stalls_total";
/// Partition owners that ended on an error, and checkpoints not saved, by `what`
/// (`partition`, `checkpoint`).
pub const OWNER_ERRORS: &str = "outage_relay_owner_errors_total";
/// Records cut from the end of a log at start (a torn write), by `log`.
pub const LOG_TORN_TAILS: &str = "outage_relay_log_torn_tails_total";
/// Storm summaries sent to watchers.
pub const SUMMARIES_SENT: &str = "outage_relay_summaries_sent_total";
/// Owners' notes for summaries dropped because the summaries task's queue was full.
pub const SUMMARY_NOTES_DROPPED: &str = "outage_relay_summary_notes_dropped_total";

/// Why a call was refused at the edge, the `reason` label of [`CALLS_REFUSED`].
pub const REFUSE_REASONS: [&str; 6] = [
    "unauthenticated",
    "permission_denied",
    "rate_limited",
    "too_many_streams",
    "too_large",
    "malformed",
];

/// Subscriber label used for parked alerts.
pub const PARKED_SUBSCRIBER: &str = "(parked)";

/// Validation failure classes, the `reason` label of [`EVENTS_REJECTED`].
pub const REJECT_REASONS: [&str; 6] = [
    "event_id",
    "device_id",
    "phase",
    "mpan_core",
    "kind",
    "timestamp",
];

/// Park reasons, the `reason` label of [`ALERTS_PARKED`].
pub const PARK_REASONS: [&str; 3] = ["unknown_device", "no_subscriber", "idno_without_gsp"];

const LATENCY_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0,
    60.0, 90.0, 120.0, 300.0,
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder and serves `/metrics` on
/// `config.metrics_listen`, over TLS or in plaintext as [`Config::metrics_tls`] says.
///
/// The recorder is global, so only the first call in a process installs it and binds the
/// listener; later calls (several relays in one test process) return `Ok(false)`.
pub async fn install_prometheus(config: &Config) -> anyhow::Result<bool> {
    if PROMETHEUS.get().is_some() {
        return Ok(false);
    }
    let listener = listener::MetricsListener::bind(config).await?;
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        return Ok(false);
    }
    let _ = PROMETHEUS.set(handle.clone());
    tokio::spawn(listener.serve(handle));
    describe();
    Ok(true)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(EVENTS, "Device events applied, by kind and outcome");
    describe_counter!(
        EVENTS_REJECTED,
        "Device events refused by validation, by reason"
    );
    describe_counter!(ALERTS, "Alerts emitted, by kind");
    describe_counter!(
        SUMMARIES_SENT,
        "Storm summaries sent to WatchSummaries streams"
    );
    describe_counter!(
        SUMMARY_NOTES_DROPPED,
        "Loss and restoration notes dropped on their way to the summaries (queue full)"
    );
    describe_counter!(
        ALERTS_PARKED,
        "Alerts that routed to no subscriber, by reason"
    );
    describe_counter!(
        SLA_BREACHES,
        "Alerts not acknowledged by their deadline, by kind, subscriber and cause"
    );
    describe_histogram!(
        EMIT_LAG,
        Unit::Seconds,
        "Emission delay once an alert could be emitted"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Alert due time to subscriber acknowledgement"
    );
    describe_histogram!(
        INGEST_BATCH_LATENCY,
        Unit::Seconds,
        "Ingest batch receipt to acknowledgement"
    );
    describe_gauge!(PENDING_TIMERS, "Debounce timers running");
    describe_gauge!(OPEN_OUTAGES, "Open outages, pending or alerted");
    describe_gauge!(BACKLOG, "Unacknowledged alerts per subscriber");
    describe_gauge!(CONNECTED, "Open streams or push connections per subscriber");
    describe_gauge!(PARKED_NOW, "Alerts currently parked");
    describe_counter!(
        ALERTS_EXPIRED,
        "Unacknowledged alerts removed by retention, by subscriber"
    );
    describe_histogram!(
        STORE_COMMIT_LATENCY,
        Unit::Seconds,
        "Durable commit duration"
    );
    describe_counter!(STORE_ERRORS, "Failed store commits");
    describe_gauge!(
        INGEST_REFUSED,
        "1 while ingest is refused for lack of disk or a failed store"
    );
    describe_counter!(
        CALLS_REFUSED,
        "Calls refused at the edge (identity, role, rate, streams, size, malformed), by reason"
    );
    describe_gauge!(
        PARTITIONS_OWNED,
        "Partitions this instance owns (JetStream)"
    );
    describe_gauge!(
        PARTITION_LAG,
        "Events of an owned partition not yet applied (JetStream)"
    );
    describe_counter!(LEASE_CHANGES, "Partition leases claimed, released or lost");
    describe_counter!(
        ALERTS_DEDUPLICATED,
        "Alerts JetStream already had (re-emitted by a new owner)"
    );
    describe_counter!(
        JETSTREAM_ERRORS,
        "Failed JetStream operations, by operation"
    );
    describe_counter!(
        ALERT_STREAM_STALLS,
        "Stalls of a subscriber's alert stream (a publish and its first retry failed), by subscriber"
    );
    describe_counter!(
        OWNER_ERRORS,
        "Partition owners ended on an error, and checkpoints not saved, by what"
    );
    describe_counter!(
        LOG_TORN_TAILS,
        "Torn writes cut from the end of a log at start, by log"
    );
    describe_gauge!(
        TLS_CERT_EXPIRY,
        Unit::Seconds,
        "Seconds until the relay's TLS certificate expires"
    );
    describe_gauge!(
        TLS_CLIENT_CA_EXPIRY,
        Unit::Seconds,
        "Seconds until the first client CA certificate expires"
    );
    describe_gauge!(
        TLS_CRL_NEXT_UPDATE,
        Unit::Seconds,
        "Seconds until the earliest CRL nextUpdate, negative once passed"
    );
    describe_counter!(
        TLS_RELOADS,
        "TLS material reloads, by listener and result (ok, failed)"
    );
    describe_gauge!(
        TLS_RELOAD_FAILING,
        "1 while the TLS files' latest change could not be loaded, by listener"
    );
}

/// Counts one call refused at the edge; `reason` is one of [`REFUSE_REASONS`]. Refusals are
/// rare, so the handle is looked up here rather than kept.
pub fn call_refused(reason: &'static str) {
    counter!(CALLS_REFUSED, "reason" => reason).increment(1);
}

/// The gauge of a partition's records not yet read by its owner.
pub fn partition_lag(partition: u16) -> Gauge {
    gauge!(PARTITION_LAG, "partition" => partition.to_string())
}

/// Publishes how long the TLS material in use has left, as of `now`.
pub fn tls_expiry(expiry: &crate::security::tls::Expiry, now: crate::domain::UtcMillis) {
    for (name, at) in [
        (TLS_CERT_EXPIRY, expiry.cert),
        (TLS_CLIENT_CA_EXPIRY, expiry.client_ca),
        (TLS_CRL_NEXT_UPDATE, expiry.crl_next_update),
    ] {
        if let Some(at) = at {
            gauge!(name).set(at.seconds_since(now));
        }
    }
}

/// Publishes that `listener`'s TLS material loaded at start (no reload failing).
pub fn tls_loaded(listener: &'static str) {
    gauge!(TLS_RELOAD_FAILING, "listener" => listener).set(0.0);
}

/// Counts one reload of `listener`'s TLS material. Reloads are rare, so the handle is looked
/// up here.
pub fn tls_reloaded(listener: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    counter!(TLS_RELOADS, "listener" => listener, "result" => result).increment(1);
    gauge!(TLS_RELOAD_FAILING, "listener" => listener).set(if ok { 0.0 } else { 1.0 });
}

fn kind_index(kind: AlertKind) -> usize {
    match kind {
        AlertKind::Outage => 0,
        AlertKind::Restoration => 1,
    }
}

/// Handles for one subscriber (or the parked pseudo-subscriber).
#[derive(Debug)]
pub struct SubscriberMetrics {
    /// Unacknowledged alerts.
    pub backlog: Gauge,
    /// Open streams or push connections.
    pub connected: Gauge,
    /// Unacknowledged alerts removed by retention.
    pub expired: Counter,
    delivery: [Histogram; 2],
    breaches: [[Counter; 2]; 2],
}

impl SubscriberMetrics {
    /// Registers the handles for `subscriber`.
    pub fn new(subscriber: &str) -> Self {
        let name = subscriber.to_owned();
        let breach = |kind: AlertKind, cause: BreachCause| counter!(SLA_BREACHES, "kind" => kind.as_str(), "subscriber" => name.clone(), "cause" => cause.as_str());
        Self {
            backlog: gauge!(BACKLOG, "subscriber" => name.clone()),
            connected: gauge!(CONNECTED, "subscriber" => name.clone()),
            expired: counter!(ALERTS_EXPIRED, "subscriber" => name.clone()),
            delivery: [AlertKind::Outage, AlertKind::Restoration]
                .map(|k| histogram!(DELIVERY_LATENCY, "kind" => k.as_str(), "subscriber" => name.clone())),
            breaches: [AlertKind::Outage, AlertKind::Restoration]
                .map(|k| [BreachCause::Upstream, BreachCause::Relay].map(|c| breach(k, c))),
        }
    }

    /// Records an acknowledged alert's due → delivered latency.
    pub fn delivered(&self, kind: AlertKind, seconds: f64) {
        self.delivery[kind_index(kind)].record(seconds.max(0.0));
    }

    /// Counts one SLA breach.
    pub fn breach(&self, kind: AlertKind, cause: BreachCause) {
        let cause_index = usize::from(cause == BreachCause::Relay);
        self.breaches[kind_index(kind)][cause_index].increment(1);
    }
}

/// Relay-wide handles.
#[derive(Debug)]
pub struct Metrics {
    events: [[Counter; Outcome::ALL.len()]; 2],
    rejected: [Counter; REJECT_REASONS.len()],
    alerts: [Counter; 2],
    emit_lag: [Histogram; 2],
    parked: [Counter; PARK_REASONS.len()],
    /// Parked alerts now.
    pub parked_now: Gauge,
    /// Debounce timers running.
    pub pending_timers: Gauge,
    /// Open outages.
    pub open_outages: Gauge,
    /// Ingest batch latency.
    pub ingest_batch: Histogram,
    /// Failed commits.
    pub store_errors: Counter,
    /// 1 while ingest is refused.
    pub ingest_refused: Gauge,
    /// Partitions owned (JetStream backend).
    pub partitions_owned: Gauge,
    deduplicated: [Counter; 2],
    partition_failed: Counter,
    checkpoint_failed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every relay-wide handle.
    pub fn new() -> Self {
        let kinds = ["lost", "restored"];
        Self {
            events: kinds.map(|kind| {
                Outcome::ALL.map(|o| counter!(EVENTS, "kind" => kind, "outcome" => o.as_str()))
            }),
            rejected: REJECT_REASONS.map(|reason| counter!(EVENTS_REJECTED, "reason" => reason)),
            alerts: [AlertKind::Outage, AlertKind::Restoration]
                .map(|k| counter!(ALERTS, "kind" => k.as_str())),
            emit_lag: [AlertKind::Outage, AlertKind::Restoration]
                .map(|k| histogram!(EMIT_LAG, "kind" => k.as_str())),
            parked: PARK_REASONS.map(|reason| counter!(ALERTS_PARKED, "reason" => reason)),
            parked_now: gauge!(PARKED_NOW),
            pending_timers: gauge!(PENDING_TIMERS),
            open_outages: gauge!(OPEN_OUTAGES),
            ingest_batch: histogram!(INGEST_BATCH_LATENCY),
            store_errors: counter!(STORE_ERRORS),
            ingest_refused: gauge!(INGEST_REFUSED),
            partitions_owned: gauge!(PARTITIONS_OWNED),
            deduplicated: [AlertKind::Outage, AlertKind::Restoration]
                .map(|k| counter!(ALERTS_DEDUPLICATED, "kind" => k.as_str())),
            partition_failed: counter!(OWNER_ERRORS, "what" => "partition"),
            checkpoint_failed: counter!(OWNER_ERRORS, "what" => "checkpoint"),
        }
    }

    /// Counts the events one record applied, by kind and outcome.
    pub fn events(&self, counts: &crate::owner::OutcomeCounts) {
        for (handles, counts) in self.events.iter().zip(counts) {
            for (handle, count) in handles.iter().zip(counts) {
                if *count > 0 {
                    handle.increment(*count);
                }
            }
        }
    }

    /// Counts an alert the log already held (re-emitted by a replay).
    pub fn alert_deduplicated(&self, kind: AlertKind) {
        self.deduplicated[kind_index(kind)].increment(1);
    }

    /// Counts a partition owner that ended on an error.
    pub fn partition_failed(&self) {
        self.partition_failed.increment(1);
    }

    /// Counts a checkpoint that was not saved.
    pub fn checkpoint_failed(&self) {
        self.checkpoint_failed.increment(1);
    }

    /// Moves the pending-timer and open-outage gauges from one partition's `before` counts
    /// to its `after` counts.
    pub fn adjust_outages(&self, before: (usize, usize), after: (usize, usize)) {
        let adjust = |gauge: &Gauge, before: usize, after: usize| {
            if after >= before {
                gauge.increment((after - before) as f64);
            } else {
                gauge.decrement((before - after) as f64);
            }
        };
        adjust(&self.pending_timers, before.0, after.0);
        adjust(&self.open_outages, before.1, after.1);
    }

    /// Counts one applied event.
    pub fn event(&self, restored: bool, outcome: Outcome) {
        // `Outcome::ALL` lists the variants in declaration order, so the discriminant is the
        // handle's index: no search on the per-event path.
        self.events[usize::from(restored)][outcome as usize].increment(1);
    }

    /// Counts one rejected event; `reason` is one of [`REJECT_REASONS`].
    pub fn rejected(&self, reason: &str) {
        if let Some(index) = REJECT_REASONS.iter().position(|r| *r == reason) {
            self.rejected[index].increment(1);
        }
    }

    /// Counts one emitted alert and its emission lag.
    pub fn alert_emitted(&self, kind: AlertKind, lag_seconds: f64) {
        self.alerts[kind_index(kind)].increment(1);
        self.emit_lag[kind_index(kind)].record(lag_seconds.max(0.0));
    }

    /// Counts one parked alert; `reason` is one of [`PARK_REASONS`].
    pub fn parked(&self, reason: &str) {
        if let Some(index) = PARK_REASONS.iter().position(|r| *r == reason) {
            self.parked[index].increment(1);
        }
        self.parked_now.increment(1.0);
    }

    /// Counts a lease change: `claimed`, `released` or `lost`.
    pub fn lease_change(&self, change: &'static str) {
        counter!(LEASE_CHANGES, "change" => change).increment(1);
    }

    /// Alerts emitted only (re-routing of parked alerts is not a new emission).
    pub fn unparked(&self, count: usize) {
        self.parked_now.decrement(count as f64);
    }
}
