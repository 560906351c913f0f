//! Storm summaries over loopback gRPC (`AlertFeed.WatchSummaries`): a feeder's worth of
//! losses infers a feeder outage in a storm, each DNO's watcher sees its own areas only, a
//! mostly restored feeder with supplies still off infers a nested outage, and a three-column
//! registry still loads (and a reload to five columns brings the feeders in).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestRelay, bounded, device, lost, now_ms, restored, valid_mpan};
use outage_relay::config::Config;
use outage_relay::proto::{InferenceKind, OutageSummary, ReloadRegistryRequest, SummaryRequest};
use tonic::Streaming;

/// One registry row: device, MPAN, GSP group, substation, feeder.
type Row = (String, String, &'static str, &'static str, &'static str);

/// `count` devices of `distributor` (GSP group `gsp`) on `substation`/`feeder`, numbered
/// from `first`.
fn feeder_rows(
    first: u64,
    count: u64,
    distributor: u8,
    gsp: &'static str,
    (substation, feeder): (&'static str, &'static str),
) -> Vec<Row> {
    (first..first + count)
        .map(|n| {
            (
                device(n),
                valid_mpan(distributor, n),
                gsp,
                substation,
                feeder,
            )
        })
        .collect()
}

fn write_feeder_registry(dir: &Path, name: &str, rows: &[Row]) -> PathBuf {
    let mut text = String::from("device_id,mpan_core,gsp_group,substation_id,feeder_id\n");
    for (device, mpan, gsp, substation, feeder) in rows {
        text.push_str(&format!("{device},{mpan},{gsp},{substation},{feeder}\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the registry file");
    path
}

/// Summaries every few hundred milliseconds, a feeder outage from 10 losses, a storm above
/// 15 losses a minute, a nested outage after one second.
fn summaries_config(config: &mut Config) {
    config.summaries.min_interval = Duration::from_millis(50);
    config.summaries.storm_threshold = 15;
    config.summaries.feeder_min_supplies = 10;
    config.summaries.feeder_min_share = 1.0;
    config.summaries.nested_after = Duration::from_secs(1);
}

async fn watch(relay: &TestRelay, subscriber: &str) -> Streaming<OutageSummary> {
    relay
        .feed_client()
        .await
        .watch_summaries(SummaryRequest {
            subscriber: subscriber.to_owned(),
            interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
        })
        .await
        .expect("WatchSummaries is accepted")
        .into_inner()
}

/// Reads summaries until `wanted` holds for one, checking `every` on each; fails after the
/// harness's bound.
async fn until(
    stream: &mut Streaming<OutageSummary>,
    what: &str,
    every: impl Fn(&OutageSummary),
    wanted: impl Fn(&OutageSummary) -> bool,
) -> OutageSummary {
    bounded(what, async {
        loop {
            let summary = stream
                .message()
                .await
                .expect("the summary stream stays up")
                .expect("the summary stream does not end");
            every(&summary);
            if wanted(&summary) {
                return summary;
            }
        }
    })
    .await
}

fn has(summary: &OutageSummary, kind: InferenceKind, feeder: &str) -> bool {
    summary
        .inferences
        .iter()
        .any(|inference| inference.kind == kind as i32 && inference.feeder_id == feeder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feeders_worth_of_losses_gives_a_feeder_outage_in_a_storm_to_its_dno_only() {
    let mut rows = feeder_rows(0x1000, 20, 12, "_C", ("SS-LON-1", "F1"));
    rows.extend(feeder_rows(0x2000, 20, 13, "_D", ("SS-MER-9", "F4")));
    let relay = TestRelay::start_with(|config, dir| {
        summaries_config(config);
        config.registry = Some(write_feeder_registry(dir, "registry.csv", &rows));
    })
    .await;
    let mut ukpn = watch(&relay, "ukpn").await;
    let mut spen = watch(&relay, "spen").await;

    let at = now_ms();
    let ukpn_losses = rows[..12]
        .iter()
        .map(|(device, ..)| lost(device, at, None))
        .collect();
    let spen_losses = rows[20..40]
        .iter()
        .map(|(device, ..)| lost(device, at, None))
        .collect();
    relay.publish_ok(ukpn_losses).await;
    relay.publish_ok(spen_losses).await;

    let only_london = |summary: &OutageSummary| {
        assert_eq!(summary.subscriber, "ukpn");
        for area in &summary.areas {
            assert_eq!(
                (area.distributor_id, area.gsp_group.as_str()),
                (12, "_C"),
                "{summary:?}"
            );
        }
        for inference in &summary.inferences {
            assert_eq!(inference.distributor_id, 12, "{summary:?}");
        }
    };
    let london = until(&mut ukpn, "ukpn's feeder outage", only_london, |s| {
        has(s, InferenceKind::FeederOutage, "F1")
    })
    .await;
    assert!(!london.storm, "12 losses a minute is below 15: {london:?}");
    let area = &london.areas[0];
    assert_eq!(
        (
            area.substation_id.as_str(),
            area.feeder_id.as_str(),
            area.open
        ),
        ("SS-LON-1", "F1", 12)
    );
    let inference = &london.inferences[0];
    assert!(inference.inferred, "an inference is marked inferred");
    assert_eq!(inference.supplies, 12);
    assert!(!inference.reason.is_empty());

    let only_merseyside = |summary: &OutageSummary| {
        assert_eq!(summary.subscriber, "spen");
        for area in &summary.areas {
            assert_eq!(area.distributor_id, 13, "{summary:?}");
        }
    };
    let merseyside = until(&mut spen, "spen's storm", only_merseyside, |s| {
        s.storm && has(s, InferenceKind::FeederOutage, "F4")
    })
    .await;
    assert_eq!(merseyside.areas.len(), 1, "{merseyside:?}");
    assert_eq!(merseyside.areas[0].open, 20);

    // The POAs still go out, one per supply: summaries are beside them, not instead.
    let mut feed = relay.subscribe("spen", 0).await;
    assert_eq!(feed.take(20).await.len(), 20);
    // ukpn's watcher kept seeing London only while spen's storm went on.
    until(&mut ukpn, "another ukpn summary", only_london, |_| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_of_a_feeder_restored_with_a_few_still_off_gives_a_nested_outage() {
    let rows = feeder_rows(0x3000, 20, 12, "_C", ("SS-LON-2", "F7"));
    let relay = TestRelay::start_with(|config, dir| {
        summaries_config(config);
        config.registry = Some(write_feeder_registry(dir, "registry.csv", &rows));
    })
    .await;
    let mut ukpn = watch(&relay, "ukpn").await;
    let at = now_ms();
    relay
        .publish_ok(rows.iter().map(|(d, ..)| lost(d, at, None)).collect())
        .await;
    until(
        &mut ukpn,
        "the feeder outage",
        |_| {},
        |s| has(s, InferenceKind::FeederOutage, "F7"),
    )
    .await;
    let back = now_ms();
    relay
        .publish_ok(
            rows[..17]
                .iter()
                .map(|(d, ..)| restored(d, back, None, None))
                .collect(),
        )
        .await;
    let nested = until(
        &mut ukpn,
        "the nested outage",
        |_| {},
        |s| has(s, InferenceKind::NestedOutage, "F7"),
    )
    .await;
    assert!(
        !has(&nested, InferenceKind::FeederOutage, "F7"),
        "the feeder outage is over: {nested:?}"
    );
    let inference = &nested.inferences[0];
    assert_eq!(inference.supplies, 3);
    assert!(inference.inferred);
    assert_eq!(nested.areas[0].open, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_column_registry_still_loads_and_a_reload_brings_feeders_in() {
    let old = device(0x4000);
    let old_mpan = valid_mpan(12, 0x4000);
    let relay = TestRelay::start_with(|config, dir| {
        summaries_config(config);
        config.registry = Some(common::write_registry(
            dir,
            "registry.csv",
            &[(&old, &old_mpan, "_C")],
        ));
    })
    .await;
    let state = relay.device_state(&old).await;
    assert_eq!(
        state.gsp_group, "_C",
        "the three-column registry loaded: {state:?}"
    );
    let mut ukpn = watch(&relay, "ukpn").await;
    relay.publish_ok(vec![lost(&old, now_ms(), None)]).await;
    let plain = until(
        &mut ukpn,
        "the loss counted",
        |_| {},
        |s| !s.areas.is_empty(),
    )
    .await;
    let area = &plain.areas[0];
    assert_eq!(
        (
            area.gsp_group.as_str(),
            area.distributor_id,
            area.feeder_id.as_str(),
            area.open
        ),
        ("_C", 12, "", 1)
    );

    let rows = feeder_rows(0x5000, 3, 12, "_C", ("SS-LON-3", "F2"));
    let path = write_feeder_registry(relay.dir.path(), "feeders.csv", &rows);
    let reloaded = relay
        .admin_client()
        .await
        .reload_registry(ReloadRegistryRequest {
            path: path.display().to_string(),
        })
        .await
        .expect("the five-column registry reloads")
        .into_inner();
    assert_eq!(reloaded.devices, 3);
    relay
        .publish_ok(vec![lost(&rows[0].0, now_ms(), None)])
        .await;
    until(
        &mut ukpn,
        "the feeder's area",
        |_| {},
        |s| {
            s.areas
                .iter()
                .any(|a| a.substation_id == "SS-LON-3" && a.feeder_id == "F2" && a.open == 1)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_below_the_minimum_or_an_unknown_subscriber_is_refused() {
    let relay = TestRelay::start().await;
    let mut feed = relay.feed_client().await;
    let short = feed
        .watch_summaries(SummaryRequest {
            subscriber: "ukpn".into(),
            interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 10_000_000,
            }),
        })
        .await
        .expect_err("10 ms is below the default minimum of 1 s");
    assert_eq!(short.code(), tonic::Code::InvalidArgument, "{short:?}");
    let unknown = feed
        .watch_summaries(SummaryRequest {
            subscriber: "nobody".into(),
            interval: None,
        })
        .await
        .expect_err("unknown subscriber");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
}
