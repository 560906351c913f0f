//! An embedded data directory read offline, for `outage-relay replay`: each partition's
//! retained event records, and the alerts the relay stored (each subscriber's entries, and
//! the alerts still parked).
//!
//! No running relay may hold the directory: its `LOCK` is taken for as long as the
//! [`Archive`] lives. Nothing is written, except that opening a log cuts a torn tail off it
//! as the relay itself would on start (see [`super::segment`]).

use std::path::Path;

use super::segment::SegmentOptions;
use super::{META_SEGMENT_BYTES, open_parked, open_segments, read_all_from};
use crate::log::codec::{decode_entry, decode_record};
use crate::log::{Destination, LogEntry, LogError, Logged, Partition};

/// A data directory opened for reading, locked.
#[derive(Debug)]
pub struct Archive {
    dir: std::path::PathBuf,
    partitions: u16,
    _lock: std::fs::File,
}

/// An alert a subscriber's log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAlert {
    /// The subscriber (its log's name).
    pub subscriber: String,
    /// Its sequence in that log.
    pub sequence: u64,
    /// The alert.
    pub alert: crate::domain::Alert,
    /// Its route as stored.
    pub destination: Destination,
}

/// Where a partition's retained event log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStart {
    /// The first position still stored.
    pub first: u64,
    /// Whether records before it were deleted (it is not the log's first position).
    pub truncated: bool,
}

impl Archive {
    /// Opens `dir`, taking its lock; refuses a directory that is not an outage-relay data
    /// directory.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        if !dir.join("FORMAT").exists() {
            return Err(LogError::Unavailable(format!(
                "{} is not an outage-relay data directory (no FORMAT file)",
                dir.display()
            )));
        }
        let lock = super::lock(dir)?;
        let path = dir.join("FORMAT");
        let text = std::fs::read_to_string(&path).map_err(|err| super::io_error(&path, &err))?;
        let partitions = super::stored_partitions(&text).ok_or_else(|| {
            LogError::Corrupt(format!(
                "{} is not a FORMAT file this version reads",
                path.display()
            ))
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            partitions,
            _lock: lock,
        })
    }

    /// Partitions of the device space the directory was created with.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// Every record `partition`'s event log still holds, in order, and where it starts.
    pub fn records(&self, partition: Partition) -> Result<(Vec<Logged>, LogStart), LogError> {
        let dir = self.dir.join("events").join(partition.to_string());
        let (log, _) = open_segments(
            &dir,
            SegmentOptions {
                segment_bytes: u64::MAX,
            },
        )?;
        let reader = log.reader();
        let start = LogStart {
            first: reader.first(),
            truncated: reader.first() > 1,
        };
        let mut records = Vec::new();
        for (position, payload) in read_all_from(&reader)? {
            records.push(Logged {
                position,
                record: decode_record(&payload)?,
            });
        }
        Ok((records, start))
    }

    /// The alerts the subscribers' logs still hold that `wanted` picks, by subscriber name,
    /// then sequence.
    pub fn alerts(
        &self,
        wanted: impl Fn(&crate::domain::Alert) -> bool,
    ) -> Result<Vec<StoredAlert>, LogError> {
        let alerts = self.dir.join("alerts");
        let mut names = Vec::new();
        match std::fs::read_dir(&alerts) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|err| super::io_error(&alerts, &err))?;
                    if entry.path().is_dir() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(super::io_error(&alerts, &err)),
        }
        names.sort();
        let mut found = Vec::new();
        for name in names {
            let (entries, _) = open_segments(
                &alerts.join(&name).join("entries"),
                SegmentOptions {
                    segment_bytes: u64::MAX,
                },
            )?;
            for (sequence, payload) in read_all_from(&entries.reader())? {
                let (alert, destination) = decode_entry(&payload)?;
                if !wanted(&alert) {
                    continue;
                }
                found.push(StoredAlert {
                    subscriber: name.clone(),
                    sequence,
                    alert,
                    destination,
                });
            }
        }
        Ok(found)
    }

    /// The alerts still parked, of every partition, oldest first per partition.
    pub fn parked(&self) -> Result<Vec<LogEntry>, LogError> {
        let mut parked = Vec::new();
        for partition in 0..self.partitions {
            let log = open_parked(
                &self.dir.join("parked").join(partition.to_string()),
                SegmentOptions {
                    segment_bytes: META_SEGMENT_BYTES,
                },
            )?;
            parked.extend(log.entries.into_values());
        }
        Ok(parked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutingConfig;
    use crate::log::conformance::{device_in, loss, poa, record, route};
    use crate::log::local::{Local, Options};
    use crate::route::RoutingTable;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_directory_reads_back_its_records_and_alerts_and_a_held_one_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let table = RoutingTable::from_config(&RoutingConfig::default());
        let options = Options {
            segment_bytes: 4096,
            cache_bytes: 1 << 20,
        };
        let local = Local::open(dir.path(), &table, 2, &options).expect("open");
        let device = device_in(1, 2, 0);
        let written = record(5, vec![loss(device, 0)]);
        local
            .events()
            .append(1, written.clone())
            .await
            .expect("append");
        let alert = poa(device, 0);
        local
            .alerts()
            .append(vec![(alert, route(crate::log::conformance::UKPN))])
            .await
            .expect("append");
        assert!(Archive::open(dir.path()).is_err(), "the relay holds it");
        local.close();

        let archive = Archive::open(dir.path()).expect("a closed directory opens");
        assert_eq!(archive.partitions(), 2);
        let (records, start) = archive.records(1).expect("records");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].record, written);
        assert!(!start.truncated);
        assert!(archive.alerts(|_| false).expect("alerts").is_empty());
        let alerts = archive.alerts(|_| true).expect("alerts");
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].subscriber.as_str(), alerts[0].alert),
            ("ukpn", alert)
        );
        assert!(archive.parked().expect("parked").is_empty());
    }
}
