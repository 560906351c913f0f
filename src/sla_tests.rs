//! Paused-clock tests of the SLA watch: a breach is counted once, at the deadline, and an
//! alert acknowledged in time is not one.

use std::time::Duration;

use super::*;
use crate::config::RoutingConfig;
use crate::domain::{Alert, Clock, DeviceId, Phase, SupplyPoint};
use crate::route::{ParkReason, RoutingTable};
use crate::store::{Destination, MemoryStore, Outcome, Store, Write};

const START: UtcMillis = UtcMillis(1_764_000_000_000);

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
    store: Arc<dyn Store>,
    delivery: Arc<Delivery>,
    inbox: Arc<SlaInbox>,
    _shutdown: tokio_util::sync::DropGuard,
}

fn fixture() -> Fixture {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(6));
    let table = Arc::new(RoutingTable::from_config(&RoutingConfig::default()));
    let clock = Clock::starting_at(START);
    let delivery = Arc::new(Delivery::new(Arc::clone(&store), table, clock).expect("delivery"));
    let inbox = Arc::new(SlaInbox::default());
    let shutdown = CancellationToken::new();
    tokio::spawn(run(
        Arc::clone(&delivery),
        Arc::clone(&inbox),
        shutdown.clone(),
    ));
    Fixture {
        store,
        delivery,
        inbox,
        _shutdown: shutdown.drop_guard(),
    }
}

impl Fixture {
    /// Writes alerts to the parked log as the commit stage would, and watches them.
    fn write(&self, alerts: &[Alert]) {
        let entries = alerts
            .iter()
            .map(|a| (*a, Destination::Parked(ParkReason::UnknownDevice)))
            .collect();
        let outcome = self
            .store
            .commit(&[Write::Append {
                log: LogId::Parked,
                entries,
            }])
            .expect("append");
        let Outcome::Appended { first, last } = outcome[0] else {
            panic!("{outcome:?}")
        };
        self.delivery
            .appended(LogId::Parked, last, alerts.len() as u64);
        self.inbox
            .push(alerts.iter().zip(first..).map(|(a, sequence)| Tracked {
                log: LogId::Parked,
                sequence,
                kind: a.kind,
                deadline: a.deadline,
                cause: a.breach_cause(),
                id: a.id(),
            }));
    }

    fn ack(&self, upto: u64) {
        let outcome = self
            .store
            .commit(&[Write::Ack {
                log: LogId::Parked,
                upto,
            }])
            .expect("ack");
        let Outcome::Acked { entries, status } = &outcome[0] else {
            panic!("{outcome:?}")
        };
        self.delivery.acked(LogId::Parked, *status, entries);
    }
}

#[tokio::test(start_paused = true)]
async fn an_unacknowledged_alert_breaches_once_at_its_deadline() {
    let f = fixture();
    f.write(&[alert(1, 60)]);
    tokio::time::sleep(Duration::from_millis(59_999)).await;
    assert_eq!(
        f.delivery.breaches(LogId::Parked),
        0,
        "not before the deadline"
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(f.delivery.breaches(LogId::Parked), 1);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(f.delivery.breaches(LogId::Parked), 1, "reported once");
}

#[tokio::test(start_paused = true)]
async fn an_alert_acknowledged_in_time_is_no_breach() {
    let f = fixture();
    f.write(&[alert(1, 60), alert(2, 60), alert(3, 120)]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    f.ack(2);
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(f.delivery.breaches(LogId::Parked), 1, "only the third");
}

#[tokio::test(start_paused = true)]
async fn an_alert_written_after_its_deadline_breaches_at_once() {
    let f = fixture();
    tokio::time::sleep(Duration::from_secs(120)).await;
    f.write(&[alert(1, 60)]);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(f.delivery.breaches(LogId::Parked), 1);
}
