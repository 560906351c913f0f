//! Per-event cost of the debounce state machine ([`Debouncer`]), the core of every shard.
//!
//! Three workloads, each a batch of [`BATCH`] events applied to a fresh machine (built outside
//! the timed section), with one [`Effects`] reused and cleared per batch as the shard does:
//!
//! - `lost_opens_outage`: supply losses from distinct devices, each opening a pending outage
//!   and arming a timer (a storm: the open-outage table grows from empty to [`BATCH`]);
//! - `short_interruption`: a blip, `BATCH / 2` devices lose supply and come back 30 s later,
//!   so half the events open outages and half close them without an alert (leaving tombstones);
//! - `timer_fires_poa`: debounce timers firing for [`BATCH`] pending outages, each emitting a
//!   POA.
//!
//! Throughput is reported per event (or per timer). Run with
//! `cargo bench --bench state_machine`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use outage_relay::config::{
    DEFAULT_DEBOUNCE, DEFAULT_POA_SLA, DEFAULT_PRA_SLA, DEFAULT_TOMBSTONE_TTL,
};
use outage_relay::debounce::{Arrival, Debouncer, Effects, Outcome, Settings};
use outage_relay::domain::event::EventKey;
use outage_relay::domain::{
    DeviceEvent, DeviceId, EventKind, MpanCore, Phase, SupplyPoint, UtcMillis,
};

/// Events (or timers) per timed batch.
const BATCH: usize = 10_000;
/// Relay time at the start of every batch (November 2025).
const T0: UtcMillis = UtcMillis(1_764_000_000_000);

/// SplitMix64: a bijection on `u64`, so distinct inputs give distinct, well-spread device ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn settings() -> Settings {
    Settings {
        debounce: DEFAULT_DEBOUNCE,
        poa_sla: DEFAULT_POA_SLA,
        pra_sla: DEFAULT_PRA_SLA,
        tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
    }
}

fn point(i: usize) -> SupplyPoint {
    SupplyPoint {
        device: DeviceId(mix(i as u64)),
        phase: Phase::Whole,
    }
}

fn event(i: usize, serial: u64, kind: EventKind) -> DeviceEvent {
    let area = 10 + (i % 14) as u64;
    DeviceEvent {
        key: EventKey(u128::from(mix(serial))),
        point: point(i),
        mpan: MpanCore::with_check_digit(area * 10_000_000_000 + i as u64),
        kind,
    }
}

/// Losses of `count` distinct devices at `T0 - 1 s`, received and applied at `T0`.
fn losses(count: usize) -> Vec<(DeviceEvent, Arrival)> {
    let at = Arrival {
        received: T0,
        now: T0,
    };
    (0..count)
        .map(|i| {
            let kind = EventKind::Lost {
                lost_at: UtcMillis(T0.0 - 1_000),
            };
            (event(i, i as u64, kind), at)
        })
        .collect()
}

/// The losses of [`losses`] for `count` devices, then each device's restoration 30 s later.
fn blip(count: usize) -> Vec<(DeviceEvent, Arrival)> {
    let back = T0.plus(Duration::from_secs(30));
    let at = Arrival {
        received: back,
        now: back,
    };
    let restorations = (0..count).map(|i| {
        let kind = EventKind::Restored {
            restored_at: UtcMillis(back.0 - 500),
            lost_at: None,
        };
        (event(i, (count + i) as u64, kind), at)
    });
    losses(count).into_iter().chain(restorations).collect()
}

/// A machine after `events`, with the effects they produced.
fn machine_after(events: &[(DeviceEvent, Arrival)]) -> (Debouncer, Effects) {
    let mut machine = Debouncer::new(settings());
    let mut effects = Effects::default();
    for (event, at) in events {
        machine.on_event(event, *at, &mut effects);
    }
    (machine, effects)
}

/// Checks once, untimed, that each workload does what its name says.
fn check_workloads(open: &[(DeviceEvent, Arrival)], blip: &[(DeviceEvent, Arrival)]) {
    let mut machine = Debouncer::new(settings());
    let mut effects = Effects::default();
    for (event, at) in open {
        assert_eq!(machine.on_event(event, *at, &mut effects), Outcome::Opened);
    }
    let mut machine = Debouncer::new(settings());
    let (losses, restorations) = blip.split_at(blip.len() / 2);
    for (event, at) in losses {
        assert_eq!(machine.on_event(event, *at, &mut effects), Outcome::Opened);
    }
    for (event, at) in restorations {
        assert_eq!(
            machine.on_event(event, *at, &mut effects),
            Outcome::ShortInterruption
        );
    }
    assert_eq!(machine.open_count(), 0);
}

fn bench_state_machine(c: &mut Criterion) {
    let open = losses(BATCH);
    let blip = blip(BATCH / 2);
    check_workloads(&open, &blip);
    let (_, armed) = machine_after(&open);
    let timers = armed.timers;
    assert_eq!(timers.len(), BATCH);
    let mut effects = Effects::default();
    let (mut machine, _) = machine_after(&open);
    for &(point, due_at) in &timers {
        assert!(machine.on_timer(point, due_at, due_at, &mut effects));
    }
    assert_eq!(effects.alerts.len(), BATCH);

    let mut group = c.benchmark_group("state_machine");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(50);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    group.bench_function("lost_opens_outage", |b| {
        b.iter_batched_ref(
            || Debouncer::new(settings()),
            |machine| {
                effects.clear();
                for (event, at) in &open {
                    black_box(machine.on_event(event, *at, &mut effects));
                }
            },
            BatchSize::PerIteration,
        );
    });

    group.bench_function("short_interruption", |b| {
        b.iter_batched_ref(
            || Debouncer::new(settings()),
            |machine| {
                effects.clear();
                for (event, at) in &blip {
                    black_box(machine.on_event(event, *at, &mut effects));
                }
            },
            BatchSize::PerIteration,
        );
    });

    group.bench_function("timer_fires_poa", |b| {
        b.iter_batched_ref(
            || machine_after(&open).0,
            |machine| {
                effects.clear();
                for &(point, due_at) in &timers {
                    let now = due_at.plus(Duration::from_millis(5));
                    black_box(machine.on_timer(point, due_at, now, &mut effects));
                }
            },
            BatchSize::PerIteration,
        );
    });

    group.finish();
}

criterion_group!(benches, bench_state_machine);
criterion_main!(benches);
