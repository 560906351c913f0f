//! `retained-memory`: the resident memory a log costs while it holds 1,000,000 records of 50
//! bytes. For each log, a fresh child process measures its VmRSS (from `/proc/self/status`)
//! before and after: writing the records (batches of 10,000, one durable commit each),
//! reopening them, and reading them all back once. Prints a markdown table.
//!
//! Run with `cargo run --release --bin retained-memory` in this directory.

use std::env;
use std::path::Path;
use std::process::Command;

use log_compare::{Kind, populate};

/// Records held.
const RECORDS: u64 = 1_000_000;
/// Records per commit while writing them.
const BATCH: u64 = 10_000;
/// The logs measured (mrecordlog's two variants hold the same memory).
const MEASURED: [Kind; 4] = [
    Kind::Segment,
    Kind::MrecordlogFdatasync,
    Kind::Fjall,
    Kind::Redb,
];

fn main() {
    let args: Vec<String> = env::args().collect();
    match &args[1..] {
        [step, kind, dir] => {
            let kind = Kind::from_name(kind).expect("a log name");
            println!("{}", measure(step, kind, Path::new(dir)));
        }
        _ => report(),
    }
}

/// Runs each step of each log in a child process and prints the table.
fn report() {
    println!("| log | RSS growth: write 1M | reopen 1M | reopen + read all |");
    println!("|---|---|---|---|");
    for kind in MEASURED {
        let dir = tempfile::tempdir().expect("tempdir");
        let cells: Vec<String> = ["write", "open", "read"]
            .into_iter()
            .map(|step| format_kib(child(step, kind, dir.path())))
            .collect();
        println!("| {} | {} |", kind.name(), cells.join(" | "));
    }
}

fn child(step: &str, kind: Kind, dir: &Path) -> i64 {
    let output = Command::new(env::current_exe().expect("current exe"))
        .args([step, kind.name()])
        .arg(dir)
        .output()
        .expect("child");
    assert!(
        output.status.success(),
        "{step} {}: {:?}",
        kind.name(),
        output
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("KiB")
}

/// RSS growth in KiB over one step, the log still open when measured.
fn measure(step: &str, kind: Kind, dir: &Path) -> i64 {
    let before = vm_rss_kib();
    let mut log = kind.open(dir);
    match step {
        "write" => populate(&mut *log, RECORDS, BATCH),
        "open" => {}
        "read" => assert_eq!(log.read_all().0, RECORDS),
        _ => panic!("unknown step {step}"),
    }
    let after = vm_rss_kib();
    drop(log);
    after - before
}

fn vm_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in kB")
}

fn format_kib(kib: i64) -> String {
    if kib.abs() >= 10 * 1024 {
        format!("{:.0} MiB", kib as f64 / 1024.0)
    } else {
        format!("{kib} KiB")
    }
}
