//! Per-event cost of the ingest front end: decoding a protobuf `EventBatch` of [`BATCH`]
//! events with `prost`, and validating each event with
//! [`outage_relay::ingest::validate::event`] (EUI-64 and MPAN parsing, timestamp checks, the
//! de-duplication key hash).
//!
//! The batch looks like a CSP adapter's: dashed EUI-64s, 13-digit MPAN cores, event ids of
//! about 20 bytes, half losses and half restorations (every other restoration carrying its
//! outage's start). Benchmarks: `decode`, `validate` (already decoded) and
//! `decode_and_validate`. Run with `cargo bench --bench ingest_validate`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outage_relay::config::IngestConfig;
use outage_relay::domain::{DeviceId, MpanCore, UtcMillis};
use outage_relay::ingest::validate;
use outage_relay::proto::device_event::Kind;
use outage_relay::proto::{DeviceEvent, EventBatch, SupplyLost, SupplyRestored};
use prost::Message;

/// Events per batch.
const BATCH: usize = 1_000;
/// Relay time the batch is validated at.
const NOW: UtcMillis = UtcMillis(1_764_000_000_000);

/// SplitMix64, for well-spread device ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn wire_event(i: usize) -> DeviceEvent {
    let device = DeviceId(mix(i as u64));
    let area = 10 + (i % 14) as u64;
    let mpan =
        MpanCore::with_check_digit(area * 10_000_000_000 + i as u64).expect("12-digit prefix");
    let lost_at = UtcMillis(NOW.0 - 2_000 - i as i64);
    let kind = if i.is_multiple_of(2) {
        Kind::Lost(SupplyLost {
            lost_at: Some(lost_at.to_proto()),
        })
    } else {
        Kind::Restored(SupplyRestored {
            restored_at: Some(UtcMillis(NOW.0 - 1_000).to_proto()),
            lost_at: (i % 4 == 1).then(|| lost_at.to_proto()),
        })
    };
    DeviceEvent {
        event_id: format!("csp-n-{:012}-8f36", mix(!(i as u64)) % 1_000_000_000_000),
        device_id: device.to_string(),
        phase: 0,
        mpan_core: Some(mpan.to_string()),
        kind: Some(kind),
        alert_code: if i.is_multiple_of(2) { 0x8F35 } else { 0x8F36 },
    }
}

fn validate_all(batch: &EventBatch, limits: &IngestConfig) -> usize {
    batch
        .events
        .iter()
        .filter(|event| black_box(validate::event(event, limits, NOW)).is_ok())
        .count()
}

fn bench_ingest(c: &mut Criterion) {
    let batch = EventBatch {
        events: (0..BATCH).map(wire_event).collect(),
        batch_id: 42,
    };
    let bytes = batch.encode_to_vec();
    let limits = IngestConfig::default();
    assert_eq!(validate_all(&batch, &limits), BATCH, "every event is valid");

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    group.bench_function("decode", |b| {
        b.iter(|| EventBatch::decode(black_box(&bytes[..])).expect("valid encoding"));
    });

    group.bench_function("validate", |b| {
        b.iter(|| validate_all(black_box(&batch), &limits));
    });

    group.bench_function("decode_and_validate", |b| {
        b.iter(|| {
            let decoded = EventBatch::decode(black_box(&bytes[..])).expect("valid encoding");
            validate_all(&decoded, &limits)
        });
    });

    group.finish();
}

criterion_group!(benches, bench_ingest);
criterion_main!(benches);
