//! The durable store ([`DurableStore`], redb with an fsync per commit) against the in-memory
//! [`MemoryStore`] baseline: ingest throughput and recovery time.
//!
//! - `durable_ingest/{redb_fsync,memory}/B`: one [`Store::commit`] per iteration of one
//!   [`Write::State`] carrying what `B` supply-loss events produce: `B` [`SeenEvent`]s and `B`
//!   [`OutageChange::Upsert`]s (pending outages of distinct devices). Throughput is per event.
//!   Each `B` gets one store (a temporary directory for redb) that keeps growing across
//!   iterations with distinct keys, as the relay's does during a storm: event keys arrive in
//!   time order, outages land at scattered device ids. The write is built outside the timed
//!   section. The memory store is replaced (untimed) once it holds [`MEMORY_CAP`] outages, so
//!   its fast iterations do not take gigabytes.
//! - `recover/outages/N`: [`Store::recover`] of an open store holding `N` open outages;
//!   `recover/outages_and_event_keys/N`: the same plus `N` live event keys (a restart within
//!   the de-duplication window after `N` losses, the usual case after a storm);
//!   `reopen_unclean_and_recover/N`: [`DurableStore::open`] plus `recover` of a copy of that
//!   second database taken while it was open, i.e. the file a `kill -9` leaves, so the time
//!   includes redb's repair (a walk of every page). Each store is populated once per `N`, in
//!   commits of [`POPULATE_BATCH`], outside the timed loop. The page cache is warm, as after a
//!   process restart on the same host.
//!
//! Under `cargo test` (criterion's test mode, no `--bench` argument) only `N` = 10,000 runs,
//! so the file finishes in seconds in a debug build.
//!
//! Run with `cargo bench --bench durable_store`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use criterion::{criterion_group, criterion_main};
use outage_relay::debounce::{OpenOutage, OutageChange, OutageState};
use outage_relay::domain::event::EventKey;
use outage_relay::domain::{DeviceId, MpanCore, Phase, SupplyPoint, UtcMillis};
use outage_relay::store::durable::FILE_NAME;
use outage_relay::store::{DurableStore, MemoryStore, SeenEvent, Store, Write};

/// Events per commit in the ingest benchmark.
const BATCH_SIZES: [usize; 3] = [100, 1_000, 10_000];
/// Open outages in the recovery benchmark, when benchmarking.
const FULL_OUTAGES: [usize; 3] = [10_000, 100_000, 1_000_000];
/// Open outages under `cargo test`.
const TEST_OUTAGES: [usize; 1] = [10_000];
/// Outages per commit while populating a store for recovery.
const POPULATE_BATCH: usize = 50_000;
/// Outages the memory baseline holds before it starts again from an empty store.
const MEMORY_CAP: u64 = 2_000_000;
/// The default subscribers, in routing-table order.
const SUBSCRIBERS: [&str; 6] = ["ukpn", "nged", "spen", "ssen", "npg", "enwl"];
/// Relay time of event 0 (November 2025); event `i` is accepted `i` µs later.
const T0: UtcMillis = UtcMillis(1_764_000_000_000);

/// SplitMix64: a bijection on `u64`, so distinct inputs give distinct, well-spread ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn outage_counts() -> &'static [usize] {
    if std::env::args().any(|arg| arg == "--bench") {
        &FULL_OUTAGES
    } else {
        &TEST_OUTAGES
    }
}

/// What loss events `first .. first + count` produce: their keys and their pending outages.
fn losses(first: u64, count: usize, with_events: bool) -> Write {
    let mut events = Vec::with_capacity(if with_events { count } else { 0 });
    let mut outages = Vec::with_capacity(count);
    for i in first..first + count as u64 {
        let device = DeviceId(mix(i));
        let seen_at = UtcMillis(T0.0 + (i / 1_000) as i64);
        if with_events {
            events.push(SeenEvent {
                device,
                key: EventKey(u128::from(mix(!i)) << 64 | u128::from(i)),
                seen_at,
            });
        }
        let area = 10 + i % 14;
        let outage = OpenOutage {
            lost_at: UtcMillis(seen_at.0 - 10_000),
            received_at: seen_at,
            state: OutageState::Pending,
            mpan: MpanCore::with_check_digit(area * 10_000_000_000 + i % 10_000_000_000),
        };
        let point = SupplyPoint {
            device,
            phase: Phase::Whole,
        };
        outages.push(OutageChange::Upsert(point, outage));
    }
    Write::State {
        events,
        outages,
        tombstones: Vec::new(),
    }
}

fn open_durable(dir: &Path) -> DurableStore {
    DurableStore::open(dir, &SUBSCRIBERS).expect("open the durable store")
}

fn bench_ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_ingest");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for batch in BATCH_SIZES {
        group.throughput(Throughput::Elements(batch as u64));

        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_durable(dir.path());
        let mut next = 0_u64;
        group.bench_with_input(
            BenchmarkId::new("redb_fsync", batch),
            &batch,
            |b, &batch| {
                b.iter_batched(
                    || {
                        let write = losses(next, batch, true);
                        next += batch as u64;
                        write
                    },
                    |write| {
                        let outcome = store.commit(std::slice::from_ref(&write));
                        (outcome.expect("commit"), write)
                    },
                    BatchSize::SmallInput,
                );
            },
        );
        drop(store);

        let mut memory = Arc::new(MemoryStore::new(SUBSCRIBERS.len()));
        let mut next = 0_u64;
        group.bench_with_input(BenchmarkId::new("memory", batch), &batch, |b, &batch| {
            b.iter_batched(
                || {
                    if next >= MEMORY_CAP {
                        memory = Arc::new(MemoryStore::new(SUBSCRIBERS.len()));
                        next = 0;
                    }
                    let write = losses(next, batch, true);
                    next += batch as u64;
                    (Arc::clone(&memory), write)
                },
                |(store, write)| {
                    let outcome = store.commit(std::slice::from_ref(&write));
                    (outcome.expect("commit"), write, store)
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// A durable store in `dir` holding `count` open outages (and as many event keys if asked).
fn populated(dir: &Path, count: usize, with_events: bool) -> DurableStore {
    let store = open_durable(dir);
    for first in (0..count).step_by(POPULATE_BATCH) {
        let write = losses(first as u64, POPULATE_BATCH.min(count - first), with_events);
        store.commit(&[write]).expect("populate");
    }
    let recovered = store.recover().expect("recover");
    assert_eq!(recovered.outages.len(), count);
    assert_eq!(recovered.events.len(), if with_events { count } else { 0 });
    store
}

fn bench_recover(c: &mut Criterion) {
    let mut group = c.benchmark_group("recover");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    for &count in outage_counts() {
        group.throughput(Throughput::Elements(count as u64));
        // About 10 samples of one recovery each, at every size.
        let per_run = Duration::from_micros(count as u64);
        group.measurement_time((per_run * 12).max(Duration::from_secs(2)));

        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated(dir.path(), count, false);
        group.bench_with_input(BenchmarkId::new("outages", count), &count, |b, _| {
            b.iter_with_large_drop(|| store.recover().expect("recover"));
        });
        drop(store);
        drop(dir);

        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated(dir.path(), count, true);
        group.bench_with_input(
            BenchmarkId::new("outages_and_event_keys", count),
            &count,
            |b, _| b.iter_with_large_drop(|| store.recover().expect("recover")),
        );

        // A copy of the open database is what a crash leaves: redb repairs it on open.
        let crashed = tempfile::tempdir().expect("tempdir");
        group.bench_with_input(
            BenchmarkId::new("reopen_unclean_and_recover", count),
            &count,
            |b, &count| {
                b.iter_batched(
                    || {
                        let copy = tempfile::tempdir_in(crashed.path()).expect("tempdir");
                        std::fs::copy(dir.path().join(FILE_NAME), copy.path().join(FILE_NAME))
                            .expect("copy the open database");
                        copy
                    },
                    |copy| {
                        let reopened = open_durable(copy.path());
                        let recovered = reopened.recover().expect("recover");
                        assert_eq!(black_box(&recovered).outages.len(), count);
                        (recovered, reopened, copy)
                    },
                    BatchSize::PerIteration,
                );
            },
        );
        drop(store);
    }
    group.finish();
}

criterion_group!(benches, bench_ingest, bench_recover);
criterion_main!(benches);
