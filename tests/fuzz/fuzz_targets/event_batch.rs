//! Fuzz target: bytes a publisher could send as an `EventBatch`, decoded and every event
//! validated with the default limits at a fixed relay time. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outage_relay::config::IngestConfig;
use outage_relay::domain::UtcMillis;
use outage_relay::proto::EventBatch;
use prost::Message as _;

/// The relay clock for every run (2025-11-24T16:00:00Z), so runs are reproducible.
const NOW: UtcMillis = UtcMillis(1_764_000_000_000);

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = EventBatch::decode(data) {
        let limits = IngestConfig::default();
        for event in &batch.events {
            let _ = outage_relay::ingest::validate::event(event, &limits, NOW);
        }
    }
});
