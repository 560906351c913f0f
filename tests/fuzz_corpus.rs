//! Replays the committed fuzz corpus (`tests/fuzz/corpus/<target>/`) through the code paths of
//! the fuzz targets in `tests/fuzz/fuzz_targets`, on stable, so the seeds and every crasher
//! kept there stay tested. Files named `valid-*` must also be accepted, and `invalid-*` refused
//! (for a batch: decoded, and every event refused); others need only not panic.

use std::path::Path;

use outage_relay::config::{Config, IngestConfig};
use outage_relay::domain::UtcMillis;
use outage_relay::ingest::validate::{self, Rejection};
use outage_relay::proto::EventBatch;
use outage_relay::route::Registry;
use prost::Message as _;

/// The fuzz targets' fixed relay clock.
const NOW: UtcMillis = UtcMillis(1_764_000_000_000);

/// Every file of one target's corpus, by name, in name order; the corpus must not be empty.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path).expect("corpus file");
            (name, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// The `event_batch` target: decode, then validate each event with the default limits.
fn event_batch(data: &[u8]) -> Option<Vec<Result<(), Rejection>>> {
    let batch = EventBatch::decode(data).ok()?;
    let limits = IngestConfig::default();
    Some(
        batch
            .events
            .iter()
            .map(|event| validate::event(event, &limits, NOW).map(|_| ()))
            .collect(),
    )
}

/// The `config` target: UTF-8 text parsed as TOML, then validated.
fn config(data: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|err| err.to_string())?;
    let config = Config::from_toml(text).map_err(|err| err.to_string())?;
    config.validate().map_err(|err| err.to_string())
}

#[test]
fn the_event_batch_corpus_replays() {
    for (name, bytes) in corpus("event_batch") {
        let outcomes = event_batch(&bytes);
        if name.starts_with("valid-") {
            let outcomes = outcomes.unwrap_or_else(|| panic!("{name} does not decode"));
            assert!(!outcomes.is_empty(), "{name} has no events");
            for (index, outcome) in outcomes.iter().enumerate() {
                assert!(outcome.is_ok(), "{name}, event {index}: {outcome:?}");
            }
        } else if name.starts_with("invalid-") {
            let outcomes = outcomes.unwrap_or_else(|| panic!("{name} does not decode"));
            assert!(!outcomes.is_empty(), "{name} has no events");
            for (index, outcome) in outcomes.iter().enumerate() {
                assert!(outcome.is_err(), "{name}, event {index} was accepted");
            }
        }
    }
}

#[test]
fn the_registry_corpus_replays() {
    for (name, bytes) in corpus("registry") {
        let loaded = Registry::from_reader(bytes.as_slice(), &name);
        if name.starts_with("valid-") {
            assert!(loaded.is_ok(), "{name}: {loaded:?}");
        } else if name.starts_with("invalid-") {
            assert!(loaded.is_err(), "{name} was loaded");
        }
    }
}

#[test]
fn the_config_corpus_replays() {
    for (name, bytes) in corpus("config") {
        let outcome = config(&bytes);
        if name.starts_with("valid-") {
            assert!(outcome.is_ok(), "{name}: {outcome:?}");
        } else if name.starts_with("invalid-") {
            assert!(outcome.is_err(), "{name} was accepted");
        }
    }
}
