//! The two per-partition tables that grow with a storm, against the standard containers they
//! replace: time per operation, and heap bytes per entry (printed once, untimed).
//!
//! - `open_outages`: [`OpenOutages`] (dense 40-byte rows, 4-byte index) against a foldhash
//!   `HashMap<SupplyPoint, OpenOutage>`: inserting [`ENTRIES`] outages into an empty table,
//!   looking each up, and removing each.
//! - `event_ids`: [`EventIdWindow`] (keys once in a queue, 4-byte sequence index) against a
//!   `HashSet<u128>` beside a queue of `(time, key)`: inserting [`ENTRIES`] new keys.
//!
//! [`ENTRIES`] is half a million: one partition of two with 1,000,000 open outages. Run with
//! `cargo bench --bench packed_tables`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use outage_relay::debounce::dedup::EventIdWindow;
use outage_relay::debounce::open_table::OpenOutages;
use outage_relay::debounce::{OpenOutage, OutageState};
use outage_relay::domain::event::EventKey;
use outage_relay::domain::{DeviceId, MpanCore, Phase, SupplyPoint, UtcMillis};

/// Entries per table.
const ENTRIES: usize = 500_000;
const T0: UtcMillis = UtcMillis(1_764_000_000_000);

/// SplitMix64: distinct inputs give distinct, well-spread values.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn entries() -> Vec<(SupplyPoint, OpenOutage)> {
    (0..ENTRIES as u64)
        .map(|i| {
            let point = SupplyPoint {
                device: DeviceId(mix(i)),
                phase: Phase::Whole,
            };
            let outage = OpenOutage {
                lost_at: T0,
                received_at: T0,
                state: OutageState::Pending,
                mpan: MpanCore::with_check_digit(1_200_000_000_000 + i),
            };
            (point, outage)
        })
        .collect()
}

/// Heap bytes of a hashbrown-backed `HashMap` or `HashSet` of `capacity` usable slots whose
/// entries take `entry` bytes: one control byte per bucket, buckets a power of two at most
/// 7/8 full.
fn hashed_bytes(capacity: usize, entry: usize) -> usize {
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (entry + 1)
}

/// The event-id window as it was: every key in a set and again in a queue.
struct SetAndQueue {
    seen: HashSet<u128>,
    order: VecDeque<(UtcMillis, u128)>,
}

impl SetAndQueue {
    fn insert(&mut self, key: u128, now: UtcMillis) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((now, key));
        true
    }
}

fn report_bytes(outages: &[(SupplyPoint, OpenOutage)], keys: &[u128]) {
    let mut packed = OpenOutages::new();
    let mut map = HashMap::new();
    for &(point, outage) in outages {
        packed.insert(point, outage);
        map.insert(point, outage);
    }
    let map_bytes = hashed_bytes(map.capacity(), size_of::<(SupplyPoint, OpenOutage)>());
    let mut window = EventIdWindow::new(Duration::from_secs(3600), usize::MAX);
    let mut old = SetAndQueue {
        seen: HashSet::new(),
        order: VecDeque::new(),
    };
    for &key in keys {
        window.insert(EventKey(key), T0);
        old.insert(key, T0);
    }
    // The old queue held 24-byte entries too (a key split in two words).
    let old_bytes =
        hashed_bytes(old.seen.capacity(), size_of::<u128>()) + old.order.capacity() * 24;
    let per = |bytes: usize| bytes as f64 / ENTRIES as f64;
    eprintln!(
        "bytes per entry at {ENTRIES}: open outages {:.0} packed vs {:.0} HashMap; \
         event ids {:.0} indexed queue vs {:.0} set and queue",
        per(packed.allocated_bytes()),
        per(map_bytes),
        per(window.allocated_bytes()),
        per(old_bytes),
    );
}

fn bench_tables(c: &mut Criterion) {
    let outages = entries();
    let keys: Vec<u128> = (0..ENTRIES as u64)
        .map(|i| u128::from(mix(i)) << 64 | u128::from(mix(!i)))
        .collect();
    report_bytes(&outages, &keys);

    let mut group = c.benchmark_group("open_outages");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("insert/packed", |b| {
        b.iter_batched_ref(
            OpenOutages::new,
            |table| {
                for &(point, outage) in &outages {
                    black_box(table.insert(point, outage));
                }
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("insert/hash_map", |b| {
        b.iter_batched_ref(
            HashMap::new,
            |table| {
                for &(point, outage) in &outages {
                    black_box(table.insert(point, outage));
                }
            },
            BatchSize::PerIteration,
        );
    });
    let mut packed = OpenOutages::new();
    let mut map = HashMap::new();
    for &(point, outage) in &outages {
        packed.insert(point, outage);
        map.insert(point, outage);
    }
    group.bench_function("get/packed", |b| {
        b.iter(|| {
            for (point, _) in &outages {
                black_box(packed.get(point));
            }
        });
    });
    group.bench_function("get/hash_map", |b| {
        b.iter(|| {
            for (point, _) in &outages {
                black_box(map.get(point));
            }
        });
    });
    group.bench_function("remove/packed", |b| {
        b.iter_batched_ref(
            || {
                let mut table = OpenOutages::new();
                for &(point, outage) in &outages {
                    table.insert(point, outage);
                }
                table
            },
            |table| {
                for (point, _) in &outages {
                    black_box(table.remove(point));
                }
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("remove/hash_map", |b| {
        b.iter_batched_ref(
            || map.clone(),
            |table| {
                for (point, _) in &outages {
                    black_box(table.remove(point));
                }
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();

    let mut group = c.benchmark_group("event_ids");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("insert/indexed_queue", |b| {
        b.iter_batched_ref(
            || EventIdWindow::new(Duration::from_secs(3600), usize::MAX),
            |window| {
                for &key in &keys {
                    black_box(window.insert(EventKey(key), T0));
                }
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("insert/set_and_queue", |b| {
        b.iter_batched_ref(
            || SetAndQueue {
                seen: HashSet::new(),
                order: VecDeque::new(),
            },
            |window| {
                for &key in &keys {
                    black_box(window.insert(key, T0));
                }
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_tables);
criterion_main!(benches);
