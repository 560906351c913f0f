//! The relay's segment log against mrecordlog, fjall and redb (see `src/lib.rs` for how each
//! is driven, and README.md for the results).
//!
//! - `append/{log}/B`: one durable commit of a batch of `B` 50-byte records per iteration;
//!   throughput is per record. Each log lives in its own temporary directory and grows across
//!   iterations; the batch is built outside the timed section. Once a log holds a million
//!   records they are truncated away, untimed (mrecordlog keeps every record in RAM).
//! - `append/fdatasync_floor/B`: the floor under all of them: the same bytes (`B` records
//!   with an 8-byte header each) appended to a plain file with one `write` and one
//!   `fdatasync`.
//! - `read_1m/{log}`: reads back 1,000,000 records in position order from the open log
//!   (warm page cache), populated untimed in batches of 10,000.
//! - `open_1m/{log}`: opens a log holding those 1,000,000 records after a clean close.
//!
//! Run with `cargo bench` in this directory.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use log_compare::{Kind, Log, PAYLOAD_BYTES, payload, populate};

/// Records per durable commit.
const BATCH_SIZES: [u64; 3] = [100, 1_000, 10_000];
/// Records in the read and open benchmarks.
const RECORDS: u64 = 1_000_000;
/// Batch size while populating those.
const POPULATE_BATCH: u64 = 10_000;
/// Records an append benchmark lets a log hold before truncating them, untimed.
const RETAIN: u64 = 1_000_000;

/// The logs read back and reopened: mrecordlog's two variants share one format.
const STORED: [Kind; 4] = [
    Kind::Segment,
    Kind::MrecordlogFdatasync,
    Kind::Fjall,
    Kind::Redb,
];

fn quick<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group
}

/// Appends batches of `batch` records to `log`, timing only the appends.
fn timed_appends(
    log: &mut dyn Log,
    next: &mut u64,
    first: &mut u64,
    batch: u64,
    iters: u64,
) -> Duration {
    let mut records = Vec::with_capacity(batch as usize);
    let mut elapsed = Duration::ZERO;
    for _ in 0..iters {
        records.clear();
        records.extend((*next..*next + batch).map(payload));
        let started = Instant::now();
        log.append(&records);
        elapsed += started.elapsed();
        *next += batch;
        if *next - *first >= RETAIN {
            log.truncate_before(*next);
            *first = *next;
        }
    }
    elapsed
}

/// Bytes a record takes in a log's file: its payload and a length and checksum.
const FRAMED_BYTES: u64 = PAYLOAD_BYTES as u64 + 8;

/// Appends `bytes` to `file` with one write and one fdatasync per iteration.
fn fdatasync_floor(file: &mut File, bytes: &[u8], iters: u64) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        file.write_all(bytes).expect("write");
        file.sync_data().expect("fdatasync");
    }
    started.elapsed()
}

fn appends(c: &mut Criterion) {
    let mut group = quick(c, "append");
    for batch in BATCH_SIZES {
        group.throughput(Throughput::Elements(batch));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = File::create(dir.path().join("floor")).expect("create");
        let bytes = vec![0x5a; (batch * FRAMED_BYTES) as usize];
        group.bench_function(BenchmarkId::new("fdatasync_floor", batch), |b| {
            b.iter_custom(|iters| fdatasync_floor(&mut file, &bytes, iters));
        });
        for kind in Kind::ALL {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut log = kind.open(dir.path());
            let (mut next, mut first) = (0, 0);
            group.bench_function(BenchmarkId::new(kind.name(), batch), |b| {
                b.iter_custom(|iters| {
                    timed_appends(&mut *log, &mut next, &mut first, batch, iters)
                });
            });
        }
    }
    group.finish();
}

fn reads_and_opens(c: &mut Criterion) {
    for kind in STORED {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = kind.open(dir.path());
        populate(&mut *log, RECORDS, POPULATE_BATCH);

        let mut group = quick(c, "read_1m");
        group.throughput(Throughput::Elements(RECORDS));
        group.bench_function(kind.name(), |b| {
            b.iter(|| {
                let (count, bytes) = log.read_all();
                assert_eq!(count, RECORDS);
                black_box(bytes)
            });
        });
        group.finish();

        drop(log);
        let mut group = quick(c, "open_1m");
        group.bench_function(kind.name(), |b| {
            b.iter(|| drop(black_box(kind.open(dir.path()))))
        });
        group.finish();
    }
}

criterion_group!(benches, appends, reads_and_opens);
criterion_main!(benches);
