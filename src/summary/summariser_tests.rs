use super::*;
use crate::domain::{Phase, SupplyPoint};

const UKPN: SubscriberId = SubscriberId(0);
const SPEN: SubscriberId = SubscriberId(1);
const MINUTE: i64 = 60_000;

/// Devices 0..40 on feeder F1 of substation S1 (London, ukpn), 40..50 on F2, 100.. in
/// Merseyside (spen) on S9/F1, 200.. registered with no feeder.
struct Map;

impl Locate for Map {
    fn locate(&self, device: DeviceId, _mpan: Option<MpanCore>) -> Option<Place<'_>> {
        let n = device.0;
        let (subscriber, distributor, gsp, substation, feeder, registered) = match n {
            0..40 => (UKPN, 12, "_C", "S1", "F1", 40),
            40..50 => (UKPN, 12, "_C", "S1", "F2", 10),
            100..150 => (SPEN, 13, "_D", "S9", "F1", 50),
            200..300 => (UKPN, 10, "_A", "", "", 0),
            _ => return None,
        };
        Some(Place {
            subscriber,
            gsp: gsp.parse().ok(),
            distributor: DistributorId(distributor),
            substation,
            feeder,
            registered,
        })
    }
}

fn settings() -> Settings {
    Settings {
        storm_threshold: 30,
        feeder_min_supplies: 20,
        feeder_min_share: 0.5,
        nested_after: Duration::from_secs(600),
        partitions: 4,
    }
}

fn point(n: u64) -> SupplyPoint {
    SupplyPoint {
        device: DeviceId(n),
        phase: Phase::Whole,
    }
}

fn note(n: u64, at: i64, change: Change) -> Note {
    Note {
        point: point(n),
        mpan: None,
        at: UtcMillis(at),
        change,
    }
}

fn notes(devices: impl IntoIterator<Item = u64>, at: i64, change: Change) -> Input {
    Input::Notes(devices.into_iter().map(|n| note(n, at, change)).collect())
}

fn kinds(summary: &Summary) -> Vec<(InferenceKind, &str, u64)> {
    summary
        .inferences
        .iter()
        .map(|inference| (inference.kind, &*inference.area.feeder, inference.supplies))
        .collect()
}

#[test]
fn a_feeder_worth_of_losses_within_a_minute_is_a_feeder_outage_and_a_storm() {
    let mut summariser = Summariser::new(settings());
    let watch = summariser.watch(UKPN, UtcMillis(0));
    // 19 of F1's 40 in the first second: below 20 and below half.
    summariser.apply(notes(0..19, 1_000, Change::Lost), &Map);
    let first = summariser
        .summarise(watch, UtcMillis(2_000))
        .expect("watching");
    assert!(first.inferences.is_empty(), "{first:?}");
    assert!(!first.storm);
    assert_eq!(first.areas.len(), 1);
    assert_eq!(
        (
            first.areas[0].open,
            first.areas[0].lost,
            first.areas[0].restored
        ),
        (19, 19, 0)
    );
    // The 20th within the minute makes it a feeder outage; F2 (10 registered) loses 5: half.
    summariser.apply(notes(19..32, 30_000, Change::Lost), &Map);
    summariser.apply(notes(40..45, 30_000, Change::Lost), &Map);
    let second = summariser
        .summarise(watch, UtcMillis(31_000))
        .expect("watching");
    assert_eq!(second.window_start, UtcMillis(2_000));
    assert_eq!(second.window_end, UtcMillis(31_000));
    assert!(second.storm, "37 losses in a minute is above 30");
    assert_eq!(
        kinds(&second),
        [
            (InferenceKind::FeederOutage, "F1", 32),
            (InferenceKind::FeederOutage, "F2", 5)
        ]
    );
    assert_eq!(second.inferences[0].since, UtcMillis(1_000));
    assert_eq!(second.areas[0].lost, 13, "only the window's losses");
    // A minute later the rate has fallen; the feeders are still off.
    let third = summariser
        .summarise(watch, UtcMillis(30_000 + MINUTE))
        .expect("watching");
    assert!(!third.storm);
    assert_eq!(kinds(&third).len(), 2);
    assert_eq!(third.areas[0].lost, 0);
}

#[test]
fn losses_spread_over_more_than_a_minute_infer_nothing() {
    let mut summariser = Summariser::new(settings());
    let watch = summariser.watch(UKPN, UtcMillis(0));
    for (i, n) in (0..30).enumerate() {
        summariser.apply(notes([n], i as i64 * 5_000, Change::Lost), &Map);
    }
    let summary = summariser
        .summarise(watch, UtcMillis(150_000))
        .expect("watching");
    assert_eq!(summary.areas[0].open, 30);
    assert!(summary.inferences.is_empty(), "{summary:?}");
}

#[test]
fn most_of_a_feeder_restored_with_some_still_off_past_nested_after_is_nested() {
    let mut summariser = Summariser::new(settings());
    let watch = summariser.watch(UKPN, UtcMillis(0));
    summariser.apply(notes(0..40, 1_000, Change::Lost), &Map);
    summariser.apply(notes(0..36, 100_000, Change::Restored), &Map);
    let cleared = summariser
        .summarise(watch, UtcMillis(101_000))
        .expect("watching");
    assert!(cleared.inferences.is_empty(), "not yet nested: {cleared:?}");
    assert_eq!(
        (
            cleared.areas[0].open,
            cleared.areas[0].lost,
            cleared.areas[0].restored
        ),
        (4, 40, 36)
    );
    let later = summariser
        .summarise(watch, UtcMillis(100_000 + 600_000))
        .expect("watching");
    assert_eq!(kinds(&later), [(InferenceKind::NestedOutage, "F1", 4)]);
    assert_eq!(later.inferences[0].since, UtcMillis(100_000));
    // The last four come back: nothing left to say.
    summariser.apply(notes(36..40, 800_000, Change::Restored), &Map);
    let done = summariser
        .summarise(watch, UtcMillis(801_000))
        .expect("watching");
    assert!(done.inferences.is_empty());
    assert_eq!(done.areas[0].open, 0);
    assert_eq!(done.areas[0].restored, 4);
    let quiet = summariser
        .summarise(watch, UtcMillis(900_000))
        .expect("watching");
    assert!(quiet.areas.is_empty(), "{quiet:?}");
}

#[test]
fn a_watcher_sees_its_own_subscribers_areas_only() {
    let mut summariser = Summariser::new(settings());
    let ukpn = summariser.watch(UKPN, UtcMillis(0));
    let spen = summariser.watch(SPEN, UtcMillis(0));
    summariser.apply(notes(0..3, 1_000, Change::Lost), &Map);
    summariser.apply(notes(100..150, 1_000, Change::Lost), &Map);
    let theirs = summariser
        .summarise(spen, UtcMillis(2_000))
        .expect("watching");
    assert!(theirs.storm, "50 losses in a minute");
    assert_eq!(theirs.areas.len(), 1);
    assert_eq!(theirs.areas[0].area.distributor, DistributorId(13));
    assert_eq!(kinds(&theirs), [(InferenceKind::FeederOutage, "F1", 50)]);
    let ours = summariser
        .summarise(ukpn, UtcMillis(2_000))
        .expect("watching");
    assert!(!ours.storm, "spen's storm is not ukpn's");
    assert_eq!(ours.areas.len(), 1);
    assert_eq!(ours.areas[0].area.distributor, DistributorId(12));
    assert!(ours.inferences.is_empty());
}

#[test]
fn areas_without_a_feeder_are_counted_but_infer_nothing() {
    let mut summariser = Summariser::new(settings());
    let watch = summariser.watch(UKPN, UtcMillis(0));
    summariser.apply(notes(200..260, 1_000, Change::Lost), &Map);
    let summary = summariser
        .summarise(watch, UtcMillis(2_000))
        .expect("watching");
    assert_eq!(summary.areas.len(), 1);
    assert_eq!(&*summary.areas[0].area.feeder, "");
    assert_eq!(summary.areas[0].open, 60);
    assert!(summary.storm);
    assert!(summary.inferences.is_empty());
}

#[test]
fn unknown_restorations_and_learned_late_outages_count_as_restored_only() {
    let mut summariser = Summariser::new(settings());
    let watch = summariser.watch(UKPN, UtcMillis(0));
    summariser.apply(notes([1], 1_000, Change::Lost), &Map);
    summariser.apply(notes([1], 1_100, Change::Restored), &Map);
    // A restoration of an outage never noted open (its note was dropped): restored, and
    // nothing goes below zero.
    summariser.apply(notes([2], 1_200, Change::Restored), &Map);
    summariser.apply(notes([3], 1_300, Change::LearnedLate), &Map);
    summariser.apply(notes([999], 1_400, Change::Lost), &Map);
    assert_eq!(summariser.open_count(), 0);
    summariser.apply(notes([4], 1_500, Change::Lost), &Map);
    let summary = summariser
        .summarise(watch, UtcMillis(2_000))
        .expect("watching");
    assert_eq!(summary.areas.len(), 1);
    let area = &summary.areas[0];
    assert_eq!((area.open, area.lost, area.restored), (1, 2, 3));
    assert_eq!(summariser.open_count(), 1);
}

#[test]
fn open_outages_of_a_partition_are_replaced_by_its_snapshot_and_forgotten_on_release() {
    let mut summariser = Summariser::new(settings());
    let watch = summariser.watch(UKPN, UtcMillis(0));
    let partition = partition_of(DeviceId(5), 4);
    let mine: Vec<u64> = (0..40)
        .filter(|n| partition_of(DeviceId(*n), 4) == partition)
        .collect();
    let open = |devices: &[u64]| Input::Opened {
        partition,
        open: devices
            .iter()
            .map(|n| OpenPoint {
                point: point(*n),
                mpan: None,
                lost_at: UtcMillis(500),
            })
            .collect(),
    };
    summariser.apply(open(&mine), &Map);
    summariser.apply(open(&mine), &Map);
    assert_eq!(summariser.open_count(), mine.len() as u64);
    let summary = summariser
        .summarise(watch, UtcMillis(1_000))
        .expect("watching");
    assert_eq!(summary.areas[0].open, mine.len() as u64);
    assert_eq!(summary.areas[0].lost, 0, "a snapshot is not a loss");
    assert!(!summary.storm);
    summariser.apply(Input::Released { partition }, &Map);
    assert_eq!(summariser.open_count(), 0);
    let summary = summariser
        .summarise(watch, UtcMillis(2_000))
        .expect("watching");
    assert!(summary.areas.is_empty());
}

#[test]
fn an_unwatched_watcher_has_no_summary() {
    let mut summariser = Summariser::new(settings());
    let watch = summariser.watch(UKPN, UtcMillis(0));
    summariser.unwatch(watch);
    assert_eq!(summariser.summarise(watch, UtcMillis(1)), None);
}
