//! The debounce timers at fleet scale, with 1,000,000 timers: the relay's
//! `outage_relay::timers::DueQueue` (a B-tree of per-millisecond buckets, keyed by log time)
//! against `tokio_util::time::DelayQueue` (tokio's hierarchical timing wheel, which the relay
//! used before timers moved to log time) and a `std::collections::BinaryHeap` baseline.
//!
//! The workload is the relay's: every timer has the same 3-minute duration and timers arrive
//! in time order, so they are inserted in deadline order (180 s + i µs, about 1,000 per 1 ms
//! wheel slot), never cancelled (the state machine ignores stale timers), and expire in bulk.
//! Each timer carries the owner's payload, `(SupplyPoint, UtcMillis)`. `DueQueue` is keyed by
//! the millisecond, so it sees the same deadlines rounded down to theirs.
//!
//! - `insert`: a fresh queue (pre-sized) takes all the timers;
//! - `expire`: a full queue, the clock moved past every deadline (untimed), is drained.
//!
//! Tokio's clock is paused (`start_paused`) and moved with `tokio::time::advance`, so expiry
//! does not wait for real time; elapsed time is measured with `std::time::Instant`. Under
//! `cargo test` (criterion's test mode, no `--bench` argument) the queues hold 10,000 timers
//! instead, so the setup stays fast in a debug build.
//!
//! Run with `cargo bench --bench timing_wheel`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use outage_relay::domain::{DeviceId, Phase, SupplyPoint, UtcMillis};
use outage_relay::timers::DueQueue;
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tokio_util::time::DelayQueue;

/// Timers when benchmarking.
const FULL_TIMERS: usize = 1_000_000;
/// Timers under `cargo test`.
const TEST_TIMERS: usize = 10_000;
/// The debounce every timer is armed for.
const DEBOUNCE: Duration = Duration::from_secs(180);

type Payload = (SupplyPoint, UtcMillis);

/// A heap entry ordered by deadline, then insertion order (the payload never decides).
type HeapEntry = Reverse<(Instant, u64, Payload)>;

fn timer_count() -> usize {
    if std::env::args().any(|arg| arg == "--bench") {
        FULL_TIMERS
    } else {
        TEST_TIMERS
    }
}

fn payload(i: usize) -> Payload {
    let point = SupplyPoint {
        device: DeviceId(0x00db_0000_0000_0000 | i as u64),
        phase: Phase::Whole,
    };
    (point, UtcMillis(1_764_000_180_000 + i as i64 / 1_000))
}

/// Deadline of timer `i` of a batch armed at `base`.
fn deadline(base: Instant, i: usize) -> Instant {
    base + DEBOUNCE + Duration::from_micros(i as u64)
}

fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("current-thread runtime")
}

fn filled_wheel(count: usize) -> DelayQueue<Payload> {
    let base = Instant::now();
    let mut wheel = DelayQueue::with_capacity(count);
    for i in 0..count {
        wheel.insert_at(payload(i), deadline(base, i));
    }
    wheel
}

fn filled_heap(count: usize) -> BinaryHeap<HeapEntry> {
    let base = Instant::now();
    let mut heap = BinaryHeap::with_capacity(count);
    for i in 0..count {
        heap.push(Reverse((deadline(base, i), i as u64, payload(i))));
    }
    heap
}

/// Log time (ms) at which the batch is armed.
const ARMED_AT_MS: i64 = 1_764_000_000_000;

/// Due millisecond of timer `i` of a batch armed at [`ARMED_AT_MS`].
fn due_ms(i: usize) -> UtcMillis {
    UtcMillis(ARMED_AT_MS + DEBOUNCE.as_millis() as i64 + i as i64 / 1_000)
}

fn filled_due_queue(count: usize) -> DueQueue<Payload> {
    let mut queue = DueQueue::new();
    for i in 0..count {
        queue.insert(due_ms(i), payload(i));
    }
    queue
}

/// Pops every timer due by `to`; returns how many there were.
fn drain_due_queue(queue: &mut DueQueue<Payload>, to: UtcMillis) -> usize {
    let mut expired = 0;
    while let Some(item) = queue.pop_due(to) {
        black_box(item);
        expired += 1;
    }
    expired
}

/// Drains every expired timer; returns how many there were. Like a task polling it, it goes
/// back to the runtime whenever the queue is pending: the queue re-arms one tokio `Sleep` per
/// 1 ms slot, and each has to pass through the time driver before its slot is read.
async fn drain_wheel(wheel: &mut DelayQueue<Payload>) -> usize {
    let mut expired = 0;
    while let Some(item) = futures::future::poll_fn(|cx| wheel.poll_expired(cx)).await {
        black_box(item.into_inner());
        expired += 1;
    }
    expired
}

/// Pops every timer due by `now`; returns how many there were.
fn drain_heap(heap: &mut BinaryHeap<HeapEntry>, now: Instant) -> usize {
    let mut expired = 0;
    while heap.peek().is_some_and(|Reverse((due, _, _))| *due <= now) {
        if let Some(Reverse((_, _, item))) = heap.pop() {
            black_box(item);
            expired += 1;
        }
    }
    expired
}

/// Moves the paused clock past every deadline of a batch armed now.
async fn pass_all_deadlines(count: usize) {
    tokio::time::advance(DEBOUNCE + Duration::from_micros(count as u64) + Duration::from_secs(1))
        .await;
}

fn bench_timing_wheel(c: &mut Criterion) {
    let count = timer_count();
    let runtime = paused_runtime();

    let mut group = c.benchmark_group("timing_wheel");
    group.throughput(Throughput::Elements(count as u64));
    // One iteration is 40-150 ms: a few iterations per sample, ten samples.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    group.bench_function("due_queue/insert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = std::time::Instant::now();
                let queue = filled_due_queue(count);
                total += started.elapsed();
                assert_eq!(queue.len(), count);
                drop(black_box(queue));
            }
            total
        });
    });

    group.bench_function("due_queue/expire", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut queue = filled_due_queue(count);
                let started = std::time::Instant::now();
                let expired = drain_due_queue(&mut queue, due_ms(count));
                total += started.elapsed();
                assert_eq!(expired, count);
            }
            total
        });
    });

    group.bench_function("delay_queue/insert", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = std::time::Instant::now();
                    let wheel = filled_wheel(count);
                    total += started.elapsed();
                    assert_eq!(wheel.len(), count);
                    drop(black_box(wheel));
                }
                total
            })
        });
    });

    group.bench_function("delay_queue/expire", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut wheel = filled_wheel(count);
                    pass_all_deadlines(count).await;
                    let started = std::time::Instant::now();
                    let expired = drain_wheel(&mut wheel).await;
                    total += started.elapsed();
                    assert_eq!(expired, count);
                }
                total
            })
        });
    });

    group.bench_function("binary_heap/insert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = std::time::Instant::now();
                let heap = filled_heap(count);
                total += started.elapsed();
                assert_eq!(heap.len(), count);
                drop(black_box(heap));
            }
            total
        });
    });

    group.bench_function("binary_heap/expire", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut heap = filled_heap(count);
                    pass_all_deadlines(count).await;
                    let started = std::time::Instant::now();
                    let expired = drain_heap(&mut heap, Instant::now());
                    total += started.elapsed();
                    assert_eq!(expired, count);
                }
                total
            })
        });
    });

    group.finish();
}

criterion_group!(benches, bench_timing_wheel);
criterion_main!(benches);
