//! Writes a sample `compliance.csv` and `compliance.html` (the README's picture) from a
//! deterministic synthetic week: the six DNO groups, a few hundred POAs and PRAs a day each,
//! most acknowledged in seconds, some late (the relay's fault or upstream's), a few never,
//! and a storm on the fourth day that slows one DNO's acknowledgements.
//!
//! `cargo run --example compliance_sample -- OUT_DIR`

use std::path::PathBuf;

use outage_relay::bench::rng::Rng;
use outage_relay::domain::{AlertKind, BreachCause, UtcMillis};
use outage_relay::log::Fate;
use outage_relay::report::aggregate::{Record, report};
use outage_relay::report::period::{Period, parse_day, start_of};

const DNOS: [&str; 6] = ["ukpn", "nged", "spen", "ssen", "npg", "enwl"];
const SLA_MS: i64 = 60_000;

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let first = parse_day("2026-11-23").map_err(anyhow::Error::msg)?;
    let period = Period {
        first,
        last: first + 6,
    };
    let mut rng = Rng::new(0x0c0f_fee5);
    let mut records = Vec::new();
    for day in period.days() {
        let storm = day == first + 3;
        for (index, dno) in DNOS.iter().enumerate() {
            let alerts = 200 + rng.below(300) + if storm { 1_500 } else { 0 };
            let slow = storm && index == 1;
            for _ in 0..alerts {
                records.push(record(&mut rng, dno, start_of(day).0, slow));
            }
        }
    }
    let made_at = UtcMillis(start_of(period.last + 1).0 + 3_600_000);
    let report = report(&records, &[], period, made_at);
    outage_relay::report::write(&report, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// One alert of `dno` due during the day starting at `day_ms`.
fn record(rng: &mut Rng, dno: &str, day_ms: i64, slow: bool) -> Record {
    let kind = if rng.chance(0.5) {
        AlertKind::Outage
    } else {
        AlertKind::Restoration
    };
    let due_at = UtcMillis(day_ms + rng.range(0, 86_400_000));
    let deadline = UtcMillis(due_at.0 + SLA_MS);
    let upstream = rng.chance(0.004);
    let latency_ms = if upstream {
        SLA_MS + rng.range(5_000, 600_000)
    } else if slow {
        rng.log_uniform(300.0, 150_000.0) as i64
    } else if rng.chance(0.01) {
        SLA_MS + rng.range(1_000, 90_000)
    } else {
        rng.log_uniform(80.0, 20_000.0) as i64
    };
    let fate = if rng.chance(0.002) {
        Fate::Expired(UtcMillis(due_at.0 + 7 * 86_400_000))
    } else {
        Fate::Acked(UtcMillis(due_at.0 + latency_ms))
    };
    Record {
        subscriber: dno.to_owned(),
        kind,
        due_at,
        deadline,
        cause: if upstream {
            BreachCause::Upstream
        } else {
            BreachCause::Relay
        },
        fate,
    }
}
