//! What the benchmark knows about the machine and about a process, read from `/proc` (Linux;
//! elsewhere the fields are empty and resources "not measured").

use std::path::Path;

/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, fixed at 100 per second by the Linux
/// ABI on every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// The machine a run happened on.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Machine {
    /// Host name.
    pub hostname: String,
    /// CPU model name.
    pub cpu: String,
    /// CPUs available to this process.
    pub cpus: usize,
    /// Physical memory, bytes.
    pub memory_bytes: u64,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg`'s 1, 5 and 15-minute load averages when the run started: other work
    /// on the machine shows here.
    pub load_average: String,
    /// `release` or `debug` build of this binary (and so of the relay it starts).
    pub build: String,
    /// outage-relay version.
    pub version: String,
}

impl Machine {
    /// Reads what it can.
    pub fn detect() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        let memory_bytes = read("/proc/meminfo")
            .lines()
            .find_map(|line| kib_field(line, "MemTotal:"))
            .unwrap_or(0);
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_bytes,
            kernel: read("/proc/sys/kernel/osrelease"),
            load_average: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// CPU and memory of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProcStats {
    /// User + system CPU time so far, seconds.
    pub cpu_seconds: f64,
    /// Resident set now, bytes.
    pub rss_bytes: u64,
    /// Peak resident set so far (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
}

impl ProcStats {
    /// Stats of process `pid` (`None` if it is gone or this is not Linux).
    pub fn of(pid: u32) -> Option<Self> {
        Self::read(&Path::new("/proc").join(pid.to_string()))
    }

    /// Stats of this process.
    pub fn own() -> Option<Self> {
        Self::read(Path::new("/proc/self"))
    }

    fn read(dir: &Path) -> Option<Self> {
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        // Fields after the command name (which may contain spaces) start at field 3, so
        // utime and stime (fields 14 and 15) are at 11 and 12 of the rest.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
        let cpu_ticks = ticks(11)? + ticks(12)?;
        let field = |name: &str| status.lines().find_map(|line| kib_field(line, name));
        Some(Self {
            cpu_seconds: cpu_ticks as f64 / TICKS_PER_SECOND,
            rss_bytes: field("VmRSS:").unwrap_or(0),
            peak_rss_bytes: field("VmHWM:").unwrap_or(0),
        })
    }
}

/// `Name:   1234 kB` → bytes.
fn kib_field(line: &str, name: &str) -> Option<u64> {
    let value = line.strip_prefix(name)?.trim();
    let kib = value.strip_suffix("kB").unwrap_or(value).trim();
    kib.parse::<u64>().ok().map(|k| k * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        assert_eq!(
            kib_field("VmHWM:\t  2048 kB", "VmHWM:"),
            Some(2 * 1024 * 1024)
        );
        assert_eq!(kib_field("VmRSS: x kB", "VmRSS:"), None);
        assert_eq!(kib_field("Other: 1 kB", "VmRSS:"), None);
    }

    #[test]
    fn reads_its_own_process_on_linux() {
        if cfg!(target_os = "linux") {
            let stats = ProcStats::own().expect("/proc/self is readable");
            assert!(stats.rss_bytes > 0 && stats.peak_rss_bytes >= stats.rss_bytes);
        }
    }
}
