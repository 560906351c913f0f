//! The summaries task on a paused clock (notes in, a summary per interval out, a stream that
//! fills skips its turn without losing the window, the task ends on shutdown with a watcher
//! gone), and the owners' sender, which drops and counts rather than wait.

use super::*;
use crate::config::RoutingConfig;
use crate::domain::{DistributorId, GspGroup, Phase, SupplyPoint};
use crate::route::{RegistryEntry, RoutingTable};
use crate::summary::{Change, Note};

const T0: i64 = 1_764_000_000_000;

fn settings() -> TaskSettings {
    TaskSettings {
        summariser: Settings {
            storm_threshold: 5,
            feeder_min_supplies: 3,
            feeder_min_share: 1.0,
            nested_after: Duration::from_secs(60),
            partitions: 2,
        },
        queue: 8,
        default_interval: Duration::from_secs(10),
        min_interval: Duration::from_secs(1),
    }
}

/// Devices 1..=4 on London feeder S1/F1.
fn router() -> Arc<Router> {
    let mut registry = Registry::empty();
    for n in 1..=4 {
        let mpan = MpanCore::with_check_digit(120_000_000_000 + n).expect("12 digits");
        let gsp = GspGroup::of_area(DistributorId(12)).expect("London");
        let entry = RegistryEntry { mpan, gsp };
        assert!(registry.insert_on_feeder(DeviceId(n), entry, "S1", "F1"));
    }
    let table = RoutingTable::from_config(&RoutingConfig::default());
    Arc::new(Router::new(table, registry))
}

fn lost(n: u64, at: UtcMillis) -> Note {
    Note {
        point: SupplyPoint {
            device: DeviceId(n),
            phase: Phase::Whole,
        },
        mpan: None,
        at,
        change: Change::Lost,
    }
}

#[tokio::test(start_paused = true)]
async fn notes_become_a_summary_each_interval_for_the_subscribers_watcher() {
    let clock = Clock::starting_at(UtcMillis(T0));
    let router = router();
    let ukpn = router.table().id_of("ukpn").expect("default subscriber");
    let shutdown = CancellationToken::new();
    let (notes, summaries, task) = start(&settings(), router, clock, shutdown.clone());
    let running = tokio::spawn(task);

    let err = summaries
        .watch(ukpn, Some(Duration::from_millis(100)), None)
        .await
        .expect_err("below the minimum");
    assert!(matches!(err, RelayError::InvalidArgument(_)), "{err:?}");
    let mut stream = summaries.watch(ukpn, None, None).await.expect("watching");
    notes.send(Input::Notes(
        (1..=4).map(|n| lost(n, clock.now())).collect(),
    ));

    let summary = stream
        .recv()
        .await
        .expect("a summary")
        .expect("not an error");
    assert_eq!(summary.subscriber, "ukpn");
    assert_eq!(
        summary
            .window_end
            .map(|end| end.seconds - summary.window_start.map_or(0, |s| s.seconds)),
        Some(10),
        "the default interval"
    );
    assert!(!summary.storm, "4 losses a minute is not above 5");
    assert_eq!(summary.areas.len(), 1);
    let area = &summary.areas[0];
    assert_eq!(
        (area.feeder_id.as_str(), area.open, area.lost_in_window),
        ("F1", 4, 4)
    );
    assert_eq!(summary.inferences.len(), 1);
    assert_eq!(
        summary.inferences[0].kind,
        proto::InferenceKind::FeederOutage as i32
    );
    assert!(summary.inferences[0].inferred);

    // Nobody reads for a while: the stream fills, later turns are skipped, and the window
    // goes on until there is room.
    tokio::time::sleep(Duration::from_secs(100)).await;
    let mut windows = Vec::new();
    while let Ok(Ok(summary)) = stream.try_recv() {
        windows.push((
            summary.window_start.map(|s| s.seconds),
            summary.window_end.map(|e| e.seconds),
        ));
    }
    assert_eq!(windows.len(), STREAM_BUFFER, "{windows:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let caught_up = stream
        .recv()
        .await
        .expect("a summary")
        .expect("not an error");
    let (start, end) = (
        caught_up.window_start.map(|s| s.seconds),
        caught_up.window_end.map(|e| e.seconds),
    );
    assert_eq!(
        start,
        windows.last().and_then(|(_, end)| *end),
        "windows follow on"
    );
    assert!(
        end.zip(start).is_some_and(|(end, start)| end - start > 10),
        "{start:?}..{end:?}"
    );

    drop(stream);
    tokio::time::sleep(Duration::from_secs(20)).await;
    shutdown.cancel();
    running.await.expect("the task ends on shutdown");
}

#[test]
fn a_full_queue_drops_the_notes_and_counts_them_without_waiting() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let dropped = Arc::new(AtomicU64::new(0));
    let (tx, mut queued) = mpsc::channel(1);
    let notes = NoteSender {
        tx: Some(tx),
        dropped: Counter::from_arc(Arc::clone(&dropped)),
    };
    let batch = |n| Input::Notes((1..=n).map(|d| lost(d, UtcMillis(T0))).collect());
    notes.send(batch(2));
    notes.send(batch(3));
    notes.opened(0, Vec::new());
    assert_eq!(
        dropped.load(Ordering::Relaxed),
        3,
        "the second batch's three notes"
    );
    assert_eq!(queued.try_recv().ok(), Some(batch(2)));
    drop(queued);
    notes.send(batch(4));
    assert_eq!(
        dropped.load(Ordering::Relaxed),
        3,
        "stopped summaries are not drops"
    );
    NoteSender::disabled().send(batch(1));
}
