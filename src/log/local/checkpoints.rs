//! Checkpoint files of the embedded backend: `checkpoints/p{partition}.ckpt`, replaced
//! atomically.
//!
//! Layout: `ORCP`, version u8 = 1, partition u16, position u64, state length u64, CRC-32C of
//! the state u32, then the state (`owner::checkpoint`). A save writes `p{partition}.tmp`,
//! fdatasyncs it, renames it over the previous file and fsyncs the directory: a crash leaves
//! the old checkpoint or the new one, never a mix. A file that does not read back (wrong
//! magic, length or checksum) is an error, never skipped: the event log behind it may
//! already be gone.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::io_error;
use crate::log::{Checkpoint, Checkpoints, Lease, LogError, Partition};

const MAGIC: &[u8; 4] = b"ORCP";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 2 + 8 + 8 + 4;

/// The checkpoint files in one directory.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    dir: Arc<Path>,
}

impl CheckpointFiles {
    /// Checkpoints in `dir` (created if missing); leftovers of interrupted saves are removed.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        fs::create_dir_all(dir).map_err(|err| io_error(dir, &err))?;
        for entry in fs::read_dir(dir).map_err(|err| io_error(dir, &err))? {
            let path = entry.map_err(|err| io_error(dir, &err))?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                fs::remove_file(&path).map_err(|err| io_error(&path, &err))?;
            }
        }
        Ok(Self { dir: dir.into() })
    }

    fn path(&self, partition: Partition, extension: &str) -> PathBuf {
        self.dir.join(format!("p{partition}.{extension}"))
    }

    fn write(&self, partition: Partition, checkpoint: &Checkpoint) -> Result<(), LogError> {
        let tmp = self.path(partition, "tmp");
        let mut bytes = Vec::with_capacity(HEADER + checkpoint.state.len());
        bytes.extend_from_slice(MAGIC);
        bytes.push(VERSION);
        bytes.extend_from_slice(&partition.to_le_bytes());
        bytes.extend_from_slice(&checkpoint.position.to_le_bytes());
        bytes.extend_from_slice(&(checkpoint.state.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&checkpoint.state).to_le_bytes());
        let mut file = File::create(&tmp).map_err(|err| io_error(&tmp, &err))?;
        file.write_all(&bytes)
            .and_then(|()| file.write_all(&checkpoint.state))
            .and_then(|()| file.sync_data())
            .map_err(|err| io_error(&tmp, &err))?;
        let path = self.path(partition, "ckpt");
        fs::rename(&tmp, &path).map_err(|err| io_error(&path, &err))?;
        File::open(&*self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|err| io_error(&self.dir, &err))
    }

    fn read(&self, partition: Partition) -> Result<Option<Checkpoint>, LogError> {
        let path = self.path(partition, "ckpt");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error(&path, &err)),
        };
        let corrupt = |why: &str| LogError::Corrupt(format!("{}: {why}", path.display()));
        let (header, state) = bytes
            .split_at_checked(HEADER)
            .ok_or_else(|| corrupt("shorter than its header"))?;
        let field = |at: usize, len: usize| header.get(at..at + len).unwrap_or_default();
        let u64_at = |at: usize| {
            field(at, 8)
                .try_into()
                .map(u64::from_le_bytes)
                .unwrap_or(u64::MAX)
        };
        if field(0, 4) != MAGIC || header[4] != VERSION {
            return Err(corrupt("not a checkpoint of this version"));
        }
        if field(5, 2) != partition.to_le_bytes() {
            return Err(corrupt("the checkpoint of another partition"));
        }
        let crc = field(23, 4).try_into().map(u32::from_le_bytes).unwrap_or(0);
        if u64_at(15) != state.len() as u64 || crc32c::crc32c(state) != crc {
            return Err(corrupt("length or checksum does not match"));
        }
        Ok(Some(Checkpoint {
            position: u64_at(7),
            state: state.to_vec(),
        }))
    }
}

#[async_trait]
impl Checkpoints for CheckpointFiles {
    async fn save(
        &self,
        partition: Partition,
        checkpoint: &Checkpoint,
        _lease: &Lease,
    ) -> Result<(), LogError> {
        // One instance owns the data directory (it is locked): its leases never pass to
        // another, so a last checkpoint at shutdown is always its to write.
        let (files, checkpoint) = (self.clone(), checkpoint.clone());
        tokio::task::spawn_blocking(move || files.write(partition, &checkpoint))
            .await
            .map_err(|err| LogError::Unavailable(format!("checkpoint task: {err}")))?
    }

    async fn load(&self, partition: Partition) -> Result<Option<Checkpoint>, LogError> {
        let files = self.clone();
        tokio::task::spawn_blocking(move || files.read(partition))
            .await
            .map_err(|err| LogError::Unavailable(format!("checkpoint task: {err}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_and_replaces_the_previous_one() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let files = CheckpointFiles::open(dir.path()).expect("open");
        assert_eq!(files.read(3), Ok(None));
        for position in [5, 9] {
            let checkpoint = Checkpoint {
                position,
                state: vec![position as u8; 100],
            };
            files.write(3, &checkpoint).expect("write");
            assert_eq!(files.read(3), Ok(Some(checkpoint)));
        }
        assert_eq!(files.read(4), Ok(None));
    }

    #[test]
    fn a_damaged_checkpoint_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let files = CheckpointFiles::open(dir.path()).expect("open");
        files
            .write(
                0,
                &Checkpoint {
                    position: 1,
                    state: vec![7; 64],
                },
            )
            .expect("write");
        let path = dir.path().join("p0.ckpt");
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("damage");
        assert!(matches!(files.read(0), Err(LogError::Corrupt(_))));
        fs::write(&path, &bytes[..10]).expect("cut");
        assert!(matches!(files.read(0), Err(LogError::Corrupt(_))));
    }

    #[test]
    fn an_interrupted_save_leaves_the_previous_checkpoint() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let files = CheckpointFiles::open(dir.path()).expect("open");
        let checkpoint = Checkpoint {
            position: 4,
            state: vec![1, 2, 3],
        };
        files.write(1, &checkpoint).expect("write");
        fs::write(dir.path().join("p1.tmp"), b"half a checkpoint").expect("leftover");
        let files = CheckpointFiles::open(dir.path()).expect("reopen");
        assert_eq!(files.read(1), Ok(Some(checkpoint)));
        assert!(!dir.path().join("p1.tmp").exists());
    }
}
