//! Routing costs: [`Router::route`] lookups against a registry of 1,000,000 devices, and
//! loading a 100,000-row registry file with [`Registry::from_reader`].
//!
//! - `route/hit`: registered devices, looked up in a scattered order (the table is far larger
//!   than the CPU caches, as the 20–36 M device fleet's will be);
//! - `route/miss_event_mpan`: unregistered devices routed by the MPAN core their event carried;
//! - `registry_load/from_reader`: parsing and validating a CSV held in memory, per row.
//!
//! About 5% of supplies are IDNO supplies (distributor IDs 24–29), routed through their GSP
//! group's host area. Under `cargo test` (criterion's test mode, no `--bench` argument) the
//! registry holds 10,000 devices and the file 1,000 rows, so setup stays fast in a debug build.
//!
//! Run with `cargo bench --bench routing`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outage_relay::config::RoutingConfig;
use outage_relay::domain::{DeviceId, DistributorId, GspGroup, MpanCore};
use outage_relay::route::{Registry, RegistryEntry, Router, RoutingTable};

/// Lookups per timed batch.
const LOOKUPS: usize = 10_000;

/// SplitMix64: a bijection on `u64`, so distinct inputs give distinct, well-spread ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Registry devices and registry-file rows: full size when benchmarking, small under test.
fn sizes() -> (usize, usize) {
    if std::env::args().any(|arg| arg == "--bench") {
        (1_000_000, 100_000)
    } else {
        (10_000, 1_000)
    }
}

fn device(i: usize) -> DeviceId {
    DeviceId(mix(i as u64))
}

/// Supply `i`: in one of the 14 DNO areas (its own GSP group), or 1 in 20 an IDNO supply.
fn entry(i: usize) -> RegistryEntry {
    let area = 10 + (i % 14) as u8;
    let distributor = if i % 20 == 7 {
        24 + (i % 6) as u64
    } else {
        u64::from(area)
    };
    RegistryEntry {
        mpan: MpanCore::with_check_digit(distributor * 10_000_000_000 + i as u64)
            .expect("12-digit prefix"),
        gsp: GspGroup::of_area(DistributorId(area)).expect("a DNO area"),
    }
}

fn registry(devices: usize) -> Registry {
    let mut registry = Registry::empty();
    for i in 0..devices {
        registry.insert(device(i), entry(i));
    }
    registry
}

fn bench_route(c: &mut Criterion) {
    let (devices, _) = sizes();
    let router = Router::new(
        RoutingTable::from_config(&RoutingConfig::default()),
        registry(devices),
    );
    let hits: Vec<(DeviceId, Option<MpanCore>)> = (0..LOOKUPS)
        .map(|k| {
            let i = (mix(!(k as u64)) % devices as u64) as usize;
            (device(i), Some(entry(i).mpan))
        })
        .collect();
    let misses: Vec<(DeviceId, Option<MpanCore>)> = (devices..devices + LOOKUPS)
        .map(|i| (device(i), Some(entry(i).mpan)))
        .collect();
    for (device, mpan) in &hits {
        router
            .route(*device, *mpan)
            .expect("every registered supply routes");
    }
    // Unregistered IDNO supplies have no GSP group to route by: those park, as in service.
    let registry = router.registry();
    assert!(
        misses
            .iter()
            .all(|(device, _)| registry.get(*device).is_none())
    );

    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (name, lookups) in [("hit", &hits), ("miss_event_mpan", &misses)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for (device, mpan) in lookups {
                    let _ = black_box(router.route(black_box(*device), *mpan));
                }
            });
        });
    }
    group.finish();
}

fn bench_registry_load(c: &mut Criterion) {
    let (_, rows) = sizes();
    let mut csv = Vec::new();
    registry(rows)
        .write_csv(&mut csv)
        .expect("writing to memory");
    let loaded = Registry::from_reader(&csv[..], "bench.csv").expect("a valid registry");
    assert_eq!(loaded.len(), rows);

    let mut group = c.benchmark_group("registry_load");
    group.throughput(Throughput::Elements(rows as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("from_reader", |b| {
        b.iter(|| {
            Registry::from_reader(black_box(&csv[..]), "bench.csv")
                .expect("a valid registry")
                .len()
        });
    });
    group.finish();
}

criterion_group!(benches, bench_route, bench_registry_load);
criterion_main!(benches);
