//! The embedded backend (`log::local`): durable append throughput with group commit, and the
//! cost of a restart.
//!
//! - `event_append/W×B`: `W` concurrent appenders (ingest batches reaching different
//!   partition owners at once) each appending records of `B` loss events to one of two
//!   partitions, every append waiting until it is fdatasync'd. Throughput is per event. With
//!   `W` > 1 the writer's group commit shares one fdatasync per log among the appends that
//!   queued meanwhile.
//! - `alert_append/B`: `B` routed alerts per append (an owner's flush), alternating between
//!   two subscribers.
//! - `reopen_and_replay/N`: opening a data directory whose partition 0 holds `N` events (in
//!   records of 1,000) and reading every record back: what a restart without a recent
//!   checkpoint costs (recovery checks every frame's checksum).
//!
//! Under `cargo test` (criterion's test mode) only the smallest sizes run.
//!
//! Run with `cargo bench --bench embedded_log`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use criterion::{criterion_group, criterion_main};
use outage_relay::config::RoutingConfig;
use outage_relay::domain::DeviceId;
use outage_relay::log::conformance::{loss, poa, record, route};
use outage_relay::log::local::{Local, Options};
use outage_relay::route::{RoutingTable, SubscriberId};

/// Events per record.
const BATCH_SIZES: [usize; 2] = [1_000, 10_000];
/// Concurrent appenders.
const WRITERS: [usize; 2] = [1, 8];
/// Events in the replay benchmark, when benchmarking.
const FULL_REPLAY: [u64; 2] = [100_000, 1_000_000];

fn benchmarking() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("a runtime: {err}"))
}

fn open(dir: &std::path::Path) -> Local {
    let table = RoutingTable::from_config(&RoutingConfig::default());
    let options = Options {
        segment_bytes: 64 << 20,
        cache_bytes: 16 << 20,
    };
    Local::open(dir, &table, 2, &options).unwrap_or_else(|err| panic!("open: {err}"))
}

fn losses(count: usize, offset: u64) -> Vec<outage_relay::domain::DeviceEvent> {
    (0..count as u64)
        .map(|i| loss(DeviceId(offset + i), i64::try_from(i).unwrap_or(0)))
        .collect()
}

fn event_append(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("event_append");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let sizes: &[usize] = if benchmarking() {
        &BATCH_SIZES
    } else {
        &BATCH_SIZES[..1]
    };
    for &writers in &WRITERS {
        for &size in sizes {
            let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("a directory: {err}"));
            let local = open(dir.path());
            let events = local.events();
            let batch = losses(size, 0);
            group.throughput(Throughput::Elements((writers * size) as u64));
            group.bench_function(BenchmarkId::new(format!("{writers}x"), size), |b| {
                b.to_async(&rt).iter(|| {
                    let appends = (0..writers).map(|w| {
                        let partition = u16::try_from(w % 2).unwrap_or(0);
                        events.append(partition, record(0, batch.clone()))
                    });
                    async move {
                        for appended in futures::future::join_all(appends).await {
                            black_box(appended.unwrap_or_else(|err| panic!("append: {err}")));
                        }
                    }
                });
            });
            drop(events);
            local.close();
        }
    }
    group.finish();
}

fn alert_append(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("alert_append");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let sizes: &[usize] = if benchmarking() {
        &BATCH_SIZES
    } else {
        &BATCH_SIZES[..1]
    };
    for &size in sizes {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("a directory: {err}"));
        let local = open(dir.path());
        let alerts = local.alerts();
        let batch: Vec<_> = (0..size as u64)
            .map(|i| {
                (
                    poa(DeviceId(i), 0),
                    route(SubscriberId(u16::from(i % 2 == 1))),
                )
            })
            .collect();
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.to_async(&rt).iter(|| {
                let append = alerts.append(batch.clone());
                async move { black_box(append.await.unwrap_or_else(|err| panic!("append: {err}"))) }
            });
        });
        drop(alerts);
        local.close();
    }
    group.finish();
}

fn reopen_and_replay(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("reopen_and_replay");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    let sizes: &[u64] = if benchmarking() {
        &FULL_REPLAY
    } else {
        &[10_000]
    };
    for &events in sizes {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("a directory: {err}"));
        {
            let local = open(dir.path());
            let log = local.events();
            rt.block_on(async {
                for start in (0..events).step_by(1_000) {
                    log.append(0, record(0, losses(1_000, start)))
                        .await
                        .unwrap_or_else(|err| panic!("populate: {err}"));
                }
            });
            drop(log);
            local.close();
        }
        group.throughput(Throughput::Elements(events));
        group.bench_function(BenchmarkId::from_parameter(events), |b| {
            b.iter(|| {
                let local = open(dir.path());
                let log = local.events();
                let read = rt.block_on(async {
                    let mut reader = log
                        .reader(0, 0)
                        .await
                        .unwrap_or_else(|err| panic!("reader: {err}"));
                    let mut read = 0;
                    while let Some(logged) = reader
                        .next()
                        .await
                        .unwrap_or_else(|err| panic!("read: {err}"))
                    {
                        read += logged.record.events.len();
                    }
                    read
                });
                drop(log);
                local.close();
                black_box(read)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, event_append, alert_append, reopen_and_replay);
criterion_main!(benches);
