//! Paused-clock tests of the SLA watch: a breach is counted once, at the deadline; an alert
//! acknowledged in time is not one; and a deadline that passed while no watch ran is reported
//! once after a restart, never twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::RoutingConfig;
use crate::domain::{Alert, Clock, DeviceId, Phase, SupplyPoint};
use crate::log::AlertLog;
use crate::log::conformance::route;
use crate::log::memory::MemoryAlerts;
use crate::route::RoutingTable;

const START: UtcMillis = UtcMillis(1_764_000_000_000);
const LOG: SubscriberId = SubscriberId(0);

fn alert(n: u64, deadline_s: u64) -> Alert {
    Alert {
        kind: AlertKind::Outage,
        point: SupplyPoint {
            device: DeviceId(n),
            phase: Phase::Whole,
        },
        lost_at: START,
        restored_at: None,
        due_at: START,
        deadline: START.plus(Duration::from_secs(deadline_s)),
        emitted_at: START,
        received_at: START,
        learned_late: false,
        event_mpan: None,
    }
}

struct Fixture {
    alerts: Arc<dyn AlertLog>,
    delivery: Arc<Delivery>,
    watch: Option<CancellationToken>,
}

fn fixture() -> Fixture {
    let table = Arc::new(RoutingTable::from_config(&RoutingConfig::default()));
    let alerts: Arc<dyn AlertLog> = Arc::new(MemoryAlerts::new(&table));
    let delivery = Arc::new(Delivery::new(
        Arc::clone(&alerts),
        table,
        Clock::starting_at(START),
    ));
    Fixture {
        alerts,
        delivery,
        watch: None,
    }
}

impl Fixture {
    fn start_watch(&mut self) {
        let stop = CancellationToken::new();
        tokio::spawn(watch(
            Arc::clone(&self.delivery),
            LOG,
            Lease::until(stop.clone()),
        ));
        self.watch = Some(stop);
    }

    async fn stop_watch(&mut self) {
        if let Some(stop) = self.watch.take() {
            stop.cancel();
        }
        settle().await;
    }

    async fn write(&self, alerts: &[Alert]) {
        self.alerts
            .append(alerts.iter().map(|a| (*a, route(LOG))).collect())
            .await
            .expect("append");
    }

    async fn breaches(&self) -> u64 {
        self.alerts.sla_mark(LOG).await.expect("mark").breaches
    }
}

/// Lets spawned tasks run without moving the paused clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn pass(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn an_unacknowledged_alert_breaches_once_at_its_deadline() {
    let mut f = fixture();
    f.start_watch();
    f.write(&[alert(1, 60)]).await;
    pass(59).await;
    assert_eq!(f.breaches().await, 0, "not before the deadline");
    pass(2).await;
    assert_eq!(f.breaches().await, 1);
    pass(120).await;
    assert_eq!(f.breaches().await, 1, "reported once");
}

#[tokio::test(start_paused = true)]
async fn an_alert_acknowledged_in_time_is_no_breach() {
    let mut f = fixture();
    f.start_watch();
    f.write(&[alert(1, 60), alert(2, 60)]).await;
    pass(30).await;
    f.alerts.ack(LOG, 2, UtcMillis(0)).await.expect("ack");
    pass(60).await;
    assert_eq!(f.breaches().await, 0);
}

#[tokio::test(start_paused = true)]
async fn an_alert_written_after_its_deadline_breaches_at_once() {
    let mut f = fixture();
    f.start_watch();
    pass(100).await;
    f.write(&[alert(1, 60)]).await;
    pass(1).await;
    assert_eq!(f.breaches().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passed_while_no_watch_ran_is_reported_once_after_restart() {
    let mut f = fixture();
    f.start_watch();
    f.write(&[alert(1, 60), alert(2, 600)]).await;
    pass(2).await;
    f.stop_watch().await;
    // The relay is down while the first deadline passes.
    pass(120).await;
    assert_eq!(f.breaches().await, 0);
    f.start_watch();
    pass(1).await;
    assert_eq!(f.breaches().await, 1, "reported at once on restart");
    f.stop_watch().await;
    f.start_watch();
    pass(1).await;
    assert_eq!(
        f.breaches().await,
        1,
        "and not a second time after another restart"
    );
    pass(600).await;
    assert_eq!(f.breaches().await, 2, "the other alert is still watched");
}
