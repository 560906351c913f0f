//! The outbox: routes each emitted alert to its subscriber's log, or parks it, and tells the
//! SLA watch about it. Alerts of one supply point come from one shard in order, and the
//! outbox appends them in that order, so a PRA never overtakes its POA in any log.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use super::Delivery;
use crate::domain::{Alert, AlertKind, BreachCause, UtcMillis, alert::AlertId};
use crate::route::{Registry, Router};
use crate::store::{Destination, LogEntry, LogId, StoreError};
use crate::telemetry::Metrics;

/// An alert the SLA watch must check at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// The log holding it.
    pub log: LogId,
    /// Its sequence there.
    pub sequence: u64,
    /// POA or PRA.
    pub kind: AlertKind,
    /// When it must be acknowledged by.
    pub deadline: UtcMillis,
    /// Who is to blame if it is not.
    pub cause: BreachCause,
    /// Its alert ID, for the breach log line.
    pub id: AlertId,
}

/// Hand-off of newly written alerts to the SLA watch.
///
/// A plain buffer plus a `Notify` (not a bounded channel) because the writer is a
/// synchronous call on the shard's path; the watch drains it on every wake-up, so it holds
/// only what was written since.
#[derive(Debug, Default)]
pub struct SlaInbox {
    items: Mutex<Vec<Tracked>>,
    notify: Notify,
}

impl SlaInbox {
    fn push(&self, items: impl IntoIterator<Item = Tracked>) {
        self.items.lock().extend(items);
        self.notify.notify_one();
    }

    /// Takes everything written since the last call.
    pub fn drain(&self) -> Vec<Tracked> {
        std::mem::take(&mut *self.items.lock())
    }

    /// Resolves when something was written.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// Routes and appends alerts.
#[derive(Debug)]
pub struct Outbox {
    router: Arc<Router>,
    delivery: Arc<Delivery>,
    metrics: Arc<Metrics>,
    sla: Arc<SlaInbox>,
    // Dispatch holds it shared; a registry reload holds it exclusively while it re-routes
    // parked alerts, so no alert routed under the new registry can overtake a parked one.
    reload: RwLock<()>,
}

impl Outbox {
    /// An outbox over the shared delivery state.
    pub fn new(
        router: Arc<Router>,
        delivery: Arc<Delivery>,
        metrics: Arc<Metrics>,
        sla: Arc<SlaInbox>,
    ) -> Self {
        Self {
            router,
            delivery,
            metrics,
            sla,
            reload: RwLock::new(()),
        }
    }

    /// The router.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Routes and appends freshly emitted alerts, in order.
    pub fn dispatch(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let now = self.delivery.clock().now();
        for alert in alerts {
            let could_emit_at = alert.due_at.max(alert.received_at);
            self.metrics
                .alert_emitted(alert.kind, now.seconds_since(could_emit_at));
        }
        let _shared = self.reload.read();
        self.route_and_append(alerts.iter().copied(), |_| true)
    }

    /// Swaps in a new registry and re-routes every parked alert under it. Returns how many
    /// parked alerts found a subscriber.
    pub fn reload_registry(&self, registry: Registry) -> Result<u64, StoreError> {
        let _exclusive = self.reload.write();
        self.router.replace_registry(registry);
        let head = self.delivery.status(LogId::Parked)?.head;
        let parked: Vec<LogEntry> = self.delivery.take(LogId::Parked, head)?;
        self.metrics.parked_now.decrement(parked.len() as f64);
        let still_parked_before = self.delivery.status(LogId::Parked)?.head;
        let now = self.delivery.clock().now();
        // A parked alert whose deadline already passed was reported as a breach against
        // the parked log; tracking it again would count it twice.
        self.route_and_append(parked.iter().map(|e| e.alert), |alert| alert.deadline > now)?;
        let reparked = self.delivery.status(LogId::Parked)?.head - still_parked_before;
        Ok(parked.len() as u64 - reparked)
    }

    fn route_and_append(
        &self,
        alerts: impl Iterator<Item = Alert>,
        track: impl Fn(&Alert) -> bool,
    ) -> Result<(), StoreError> {
        let logs = self.delivery.table().len() + 1;
        let mut per_log: Vec<Vec<(Alert, Destination)>> = vec![Vec::new(); logs];
        for alert in alerts {
            match self.router.route(alert.point.device, alert.event_mpan) {
                Ok(route) => per_log[usize::from(route.subscriber.0)]
                    .push((alert, Destination::Routed(route))),
                Err(reason) => {
                    self.metrics.parked(reason.as_label());
                    tracing::debug!(alert_id = %alert.id(), %reason, "alert parked");
                    per_log[logs - 1].push((alert, Destination::Parked(reason)));
                }
            }
        }
        for (log, entries) in self.delivery.log_ids().zip(per_log) {
            if entries.is_empty() {
                continue;
            }
            let head = self.delivery.store().append(log, &entries)?;
            let first = head + 1 - entries.len() as u64;
            self.sla.push(
                entries
                    .iter()
                    .zip(first..)
                    .filter(|((alert, _), _)| track(alert))
                    .map(|((alert, _), sequence)| Tracked {
                        log,
                        sequence,
                        kind: alert.kind,
                        deadline: alert.deadline,
                        cause: alert.breach_cause(),
                        id: alert.id(),
                    }),
            );
            self.delivery.appended(log, head, entries.len());
        }
        Ok(())
    }
}
