//! The SLA benchmark, end to end against the real binary, so it cannot rot: a tiny
//! compressed substation trip (and a tiny mix of the other presets) must run, pass its own
//! model check, and write `result.json` and an HTML report with plots; with
//! `--watch-summaries` the trip's feeder outages must show in the storm summaries it watched.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_outage-relay");

/// Runs `outage-relay bench ARGS --out DIR --quiet`; returns the exit code, the parsed
/// `result.json` and the output.
fn bench(dir: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = dir.to_str().expect("a UTF-8 temporary path");
    let output = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--out", out, "--quiet", "--allow-sla-breach"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run outage-relay bench");
    let text = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read_to_string(dir.join("result.json"))
        .unwrap_or_else(|err| panic!("no result.json ({err}); {text}"));
    let result = serde_json::from_str(&json).expect("result.json is JSON");
    (output.status.code(), result, text)
}

fn number(result: &serde_json::Value, pointer: &str) -> u64 {
    result
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("result.json has no number at {pointer}"))
}

#[test]
fn a_tiny_substation_trip_passes_its_model_check_and_writes_its_report() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (code, result, output) = bench(
        dir.path(),
        &[
            "--scenario",
            "substation-trip",
            "--devices",
            "2000",
            "--outages",
            "500",
            "--time-scale",
            "60",
        ],
    );
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(number(&result, "/check/missing"), 0, "{output}");
    assert_eq!(number(&result, "/check/unexpected"), 0, "{output}");
    assert_eq!(result.pointer("/check/passed"), Some(&true.into()));
    // 500 POAs and 500 PRAs, every one measured.
    assert_eq!(number(&result, "/check/expected"), 1_000);
    assert_eq!(number(&result, "/alerts/kinds/0/latency/count"), 500);
    assert_eq!(number(&result, "/alerts/kinds/1/latency/count"), 500);
    assert_eq!(number(&result, "/ingest/accepted"), 1_000);
    assert!(result.pointer("/resources/relay_peak_rss_bytes").is_some());
    assert_eq!(
        result.pointer("/summaries"),
        Some(&serde_json::Value::Null),
        "summaries are watched only when asked"
    );
    let html = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
    assert!(html.contains("<svg"), "the report has plots");
    assert!(
        html.contains("Compressed ×60"),
        "the report states the time scale"
    );
    assert!(output.contains("model check: passed"), "{output}");
    assert!(
        !dir.path().join("relay-data").exists(),
        "the relay's data is removed"
    );
}

#[test]
fn a_tiny_mix_of_the_other_presets_passes_its_model_check() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (code, result, output) = bench(
        dir.path(),
        &[
            "--scenario",
            "steady,flapping,late-learned,storm,duplicates",
            "--devices",
            "3000",
            "--outages",
            "300",
            "--duration",
            "4m",
            "--rate",
            "20",
            "--time-scale",
            "60",
            "--seed",
            "0x5eed",
        ],
    );
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(number(&result, "/check/missing"), 0, "{output}");
    assert_eq!(number(&result, "/check/unexpected"), 0, "{output}");
    assert!(number(&result, "/ingest/duplicates") > 0, "{output}");
    assert!(number(&result, "/check/expected") > 300, "{output}");
}

#[test]
fn a_substation_trip_with_summaries_watched_sees_its_feeders_outages_and_still_passes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (code, result, output) = bench(
        dir.path(),
        &[
            "--scenario",
            "substation-trip",
            "--devices",
            "20000",
            "--outages",
            "2000",
            "--time-scale",
            "60",
            "--watch-summaries",
            "1s",
        ],
    );
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        result.pointer("/check/passed"),
        Some(&true.into()),
        "{output}"
    );
    assert_eq!(number(&result, "/summaries/interval_ms"), 1_000);
    assert!(number(&result, "/summaries/streams") > 0, "{output}");
    assert!(number(&result, "/summaries/received") > 0, "{output}");
    // 2,000 supplies of one area, 500 to a feeder, lost in one second: each of its four
    // feeders is a feeder outage, and 2,000 losses in a minute a storm.
    assert!(
        number(&result, "/summaries/feeder_outages") >= 4,
        "{output}"
    );
    assert!(number(&result, "/summaries/storm") > 0, "{output}");
    assert!(number(&result, "/summaries/max_areas") >= 4, "{output}");
    assert!(output.contains("storm summaries watched:"), "{output}");
    let html = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
    assert!(
        html.contains("FEEDER_OUTAGE"),
        "the report shows the summaries"
    );
}
