//! Recording received alerts (JSON Lines or CIM messages, POSTed to the OMS first with
//! `--post`), and the in-memory view tests use.

use super::cim::cim_message;
use super::oms::Posted;
use super::*;

/// A cloneable handle on every alert a [`Recorder`] recorded, for tests.
#[derive(Debug, Clone, Default)]
pub struct ReceivedAlerts {
    alerts: Arc<Mutex<Vec<Alert>>>,
    notify: Arc<Notify>,
}

impl ReceivedAlerts {
    /// An empty handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every alert received so far, in order of receipt.
    pub fn snapshot(&self) -> Vec<Alert> {
        self.alerts.lock().clone()
    }

    /// Waits until at least `n` alerts have been received and returns them all. Has no
    /// timeout of its own: wrap it in `tokio::time::timeout`.
    pub async fn wait_for(&self, n: usize) -> Vec<Alert> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let alerts = self.alerts.lock();
                if alerts.len() >= n {
                    return alerts.clone();
                }
            }
            notified.await;
        }
    }

    fn push(&self, alert: Alert) {
        self.alerts.lock().push(alert);
        self.notify.notify_waiters();
    }
}

/// How a [`Recorder`] records alerts.
#[derive(Debug, Clone, Default)]
pub struct RecordOptions {
    /// Append lines to this file.
    pub output: Option<PathBuf>,
    /// Print lines to stdout; ignored when `output` is set.
    pub stdout: bool,
    /// Stop accepting alerts after this many.
    pub once_count: Option<u64>,
    /// Also keep every recorded alert in this handle.
    pub keep: Option<ReceivedAlerts>,
    /// What each line holds.
    pub format: Format,
    /// POST each alert's message to this OMS before recording it.
    pub oms: Option<Oms>,
}

/// Records received alerts (lines, counts, optional in-memory copy), POSTing each to the OMS
/// first when there is one. Cheap to clone; all clones share one output.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<RecorderState>,
    keep: Option<ReceivedAlerts>,
    once_count: Option<u64>,
    format: Format,
    oms: Option<Oms>,
    /// Cancelled once no more alerts will be accepted: `once_count` reached, output failed, or
    /// the OMS refused an alert.
    done: CancellationToken,
}

struct RecorderState {
    writer: Option<Box<dyn Write + Send>>,
    summary: SinkSummary,
    failure: Option<String>,
    /// Why the OMS refused an alert. Unlike `failure`, the alerts recorded before it can
    /// still be flushed and acknowledged.
    refusal: Option<String>,
}

impl Recorder {
    /// Opens the output (creating or appending to the file) and returns a recorder.
    pub fn open(options: RecordOptions) -> anyhow::Result<Self> {
        let writer: Option<Box<dyn Write + Send>> = match &options.output {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                Some(Box::new(BufWriter::new(file)))
            }
            None if options.stdout => Some(Box::new(BufWriter::new(io::stdout()))),
            None => None,
        };
        let done = CancellationToken::new();
        if options.once_count == Some(0) {
            done.cancel();
        }
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(RecorderState {
                    writer,
                    summary: SinkSummary::default(),
                    failure: None,
                    refusal: None,
                }),
                keep: options.keep,
                once_count: options.once_count,
                format: options.format,
                oms: options.oms,
                done,
            }),
        })
    }

    /// What has been recorded so far.
    pub fn summary(&self) -> SinkSummary {
        self.shared.state.lock().summary
    }

    /// Records one alert (buffered; see [`Self::flush`]), after the OMS accepted it when
    /// there is one. False when the alert was not recorded: the recorder no longer accepts
    /// alerts (`once_count` was reached, the output failed, the OMS refused an alert) or the
    /// run stopped while the OMS was being retried.
    pub(super) async fn record(&self, alert: &Alert) -> bool {
        if self.shared.done.is_cancelled() {
            return false;
        }
        let line = match self.shared.format {
            Format::Json => json_line(alert, UtcMillis::system_now()).map_err(io::Error::from),
            Format::Cim => cim_message(alert),
        };
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                self.fail(&mut self.shared.state.lock(), &error);
                return false;
            }
        };
        if let Some(oms) = &self.shared.oms {
            match oms.post(&alert.alert_id, alert.sequence, &line).await {
                Posted::Accepted => {}
                Posted::Stopped => return false,
                Posted::Refused(reason) => {
                    self.refuse(alert, reason);
                    return false;
                }
            }
        }
        let mut state = self.shared.state.lock();
        // An alert the OMS accepted is recorded even if the recorder became done meanwhile,
        // so that it is acknowledged and not sent to the OMS again.
        if state.failure.is_some() || (self.shared.oms.is_none() && self.shared.done.is_cancelled())
        {
            return false;
        }
        if let Some(writer) = state.writer.as_mut() {
            let written = writer
                .write_all(line.as_bytes())
                .and_then(|()| writer.write_all(b"\n"));
            if let Err(error) = written {
                self.fail(&mut state, &error);
                return false;
            }
        }
        state.summary.received += 1;
        state.summary.last_sequence = state.summary.last_sequence.max(alert.sequence);
        if let Some(keep) = &self.shared.keep {
            keep.push(alert.clone());
        }
        if self
            .shared
            .once_count
            .is_some_and(|limit| state.summary.received >= limit)
        {
            self.shared.done.cancel();
        }
        true
    }

    /// The OMS refused `alert`: no more alerts are accepted, and the run ends in error.
    fn refuse(&self, alert: &Alert, reason: String) {
        tracing::error!(
            alert_id = %alert.alert_id,
            sequence = alert.sequence,
            %reason,
            "the OMS refused the alert; the sink stops without acknowledging it"
        );
        self.shared.state.lock().refusal = Some(format!(
            "the OMS refused alert {} (sequence {}): {reason}",
            alert.alert_id, alert.sequence
        ));
        self.shared.done.cancel();
    }

    /// Flushes recorded lines to the output. False when the output failed.
    pub(super) fn flush(&self) -> bool {
        let mut state = self.shared.state.lock();
        if state.failure.is_some() {
            return false;
        }
        let flushed = state
            .writer
            .as_mut()
            .map_or(Ok(()), |writer| writer.flush());
        match flushed {
            Ok(()) => true,
            Err(error) => {
                self.fail(&mut state, &error);
                false
            }
        }
    }

    fn fail(&self, state: &mut RecorderState, error: &io::Error) {
        tracing::error!(%error, "cannot write alerts; the sink stops");
        state.failure = Some(error.to_string());
        state.writer = None;
        self.shared.done.cancel();
    }

    /// True when alerts are POSTed to an OMS before they are recorded.
    pub(super) fn posts(&self) -> bool {
        self.shared.oms.is_some()
    }

    /// True once the output failed or the OMS refused an alert.
    pub(super) fn failed(&self) -> bool {
        let state = self.shared.state.lock();
        state.failure.is_some() || state.refusal.is_some()
    }

    /// Resolves once the recorder accepts no more alerts.
    pub(super) async fn done(&self) {
        self.shared.done.cancelled().await;
    }

    /// True once the recorder accepts no more alerts.
    pub(super) fn is_done(&self) -> bool {
        self.shared.done.is_cancelled()
    }

    /// Flushes and returns the summary, or the output error if writing failed.
    pub(super) fn finish(&self) -> anyhow::Result<SinkSummary> {
        self.flush();
        let state = self.shared.state.lock();
        match (&state.failure, &state.refusal) {
            (Some(failure), _) => Err(anyhow::anyhow!("writing alerts failed: {failure}")),
            (None, Some(refusal)) => Err(anyhow::anyhow!("{refusal}")),
            (None, None) => Ok(state.summary),
        }
    }
}

/// One recorded alert, as written on its JSON line.
#[derive(serde::Serialize)]
struct AlertLine<'a> {
    alert_id: &'a str,
    sequence: u64,
    kind: &'static str,
    device_id: &'a str,
    phase: i32,
    mpan_core: &'a str,
    distributor_id: u32,
    gsp_group: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restored_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    due_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    emitted_at: Option<String>,
    learned_late: bool,
    outage_duration_ms: u64,
    subscriber: &'a str,
    received_at: String,
}

/// The alert's JSON line (without the newline); unset timestamps are omitted.
pub(super) fn json_line(alert: &Alert, received_at: UtcMillis) -> serde_json::Result<String> {
    let rfc3339 = |ts: Option<&prost_types::Timestamp>| {
        ts.and_then(UtcMillis::from_proto).map(|at| at.to_string())
    };
    serde_json::to_string(&AlertLine {
        alert_id: &alert.alert_id,
        sequence: alert.sequence,
        kind: AlertKind::try_from(alert.kind)
            .map_or("ALERT_KIND_UNSPECIFIED", |kind| kind.as_str_name()),
        device_id: &alert.device_id,
        phase: alert.phase,
        mpan_core: &alert.mpan_core,
        distributor_id: alert.distributor_id,
        gsp_group: &alert.gsp_group,
        lost_at: rfc3339(alert.lost_at.as_ref()),
        restored_at: rfc3339(alert.restored_at.as_ref()),
        due_at: rfc3339(alert.due_at.as_ref()),
        deadline: rfc3339(alert.deadline.as_ref()),
        emitted_at: rfc3339(alert.emitted_at.as_ref()),
        learned_late: alert.learned_late,
        outage_duration_ms: alert.outage_duration_ms,
        subscriber: &alert.subscriber,
        received_at: received_at.to_string(),
    })
}
