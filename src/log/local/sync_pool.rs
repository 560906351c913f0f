//! Threads that run the writer's fdatasyncs side by side.
//!
//! fdatasync blocks its thread for the disk's flush, so a group touching several logs syncs
//! them on several threads at once. The threads are started once and block on their job
//! queues between groups (a thread spawned per sync cost more than the sync when groups are
//! small; a work-stealing pool's idle threads spin and yield between groups, which showed as
//! the largest share of a storm's profile).

use std::sync::mpsc;
use std::thread;

use super::segment::{SegmentError, SyncJob};

/// A job, where it came in the group, and where its result goes.
type Work = (
    SyncJob,
    usize,
    mpsc::Sender<(usize, Result<(), SegmentError>)>,
);

/// The sync threads; see the module doc. Dropping it ends them once their queues are empty.
pub(super) struct SyncPool {
    queues: Vec<mpsc::Sender<Work>>,
}

impl SyncPool {
    /// Starts `threads` sync threads.
    pub(super) fn start(threads: usize) -> std::io::Result<Self> {
        let queues = (0..threads)
            .map(|index| {
                let (tx, rx) = mpsc::channel::<Work>();
                thread::Builder::new()
                    .name(format!("log-sync-{index}"))
                    .spawn(move || {
                        for (job, slot, done) in rx {
                            let _ = done.send((slot, job.run()));
                        }
                    })
                    .map(|_| tx)
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self { queues })
    }

    /// Runs every job, the first on the calling thread and the others on the pool, and
    /// returns their results in the jobs' order once all are done. A job whose thread is gone
    /// runs on the caller.
    pub(super) fn run_all(&self, jobs: Vec<SyncJob>) -> Vec<Result<(), SegmentError>> {
        let count = jobs.len();
        let mut results: Vec<Option<Result<(), SegmentError>>> = (0..count).map(|_| None).collect();
        let (done, finished) = mpsc::channel();
        let mut jobs = jobs.into_iter().enumerate();
        let first = jobs.next();
        let mut sent = 0;
        for (slot, job) in jobs {
            let Some(queue) = self.queues.get((slot - 1) % self.queues.len().max(1)) else {
                results[slot] = Some(job.run());
                continue;
            };
            match queue.send((job, slot, done.clone())) {
                Ok(()) => sent += 1,
                Err(mpsc::SendError((job, slot, _))) => results[slot] = Some(job.run()),
            }
        }
        drop(done);
        if let Some((slot, job)) = first {
            results[slot] = Some(job.run());
        }
        for (slot, result) in finished.iter().take(sent) {
            results[slot] = Some(result);
        }
        results
            .into_iter()
            .map(|result| result.unwrap_or(Err(SegmentError::Poisoned)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::local::segment::{SegmentLog, SegmentOptions};

    fn written_logs(dir: &std::path::Path, count: usize) -> Vec<SegmentLog> {
        (0..count)
            .map(|index| {
                let (mut log, _) = SegmentLog::open(
                    &dir.join(index.to_string()),
                    1,
                    SegmentOptions {
                        segment_bytes: 4096,
                    },
                )
                .expect("open");
                log.push(format!("record of log {index}").as_bytes())
                    .expect("push");
                log.write().expect("write");
                log
            })
            .collect()
    }

    fn synced_and_published(pool: &SyncPool, mut logs: Vec<SegmentLog>) {
        let readers: Vec<_> = logs.iter().map(SegmentLog::reader).collect();
        assert!(
            readers
                .iter()
                .all(|reader| reader.read(1, 10, usize::MAX).expect("read").is_empty()),
            "nothing is shown before the sync"
        );
        let jobs = logs
            .iter()
            .map(|log| log.sync_job().expect("a job"))
            .collect();
        let results = pool.run_all(jobs);
        assert_eq!(results.len(), logs.len());
        for (log, result) in logs.iter_mut().zip(results) {
            log.finish_sync(result).expect("synced");
        }
        for (index, reader) in readers.iter().enumerate() {
            let read = reader.read(1, 10, usize::MAX).expect("read");
            assert_eq!(
                read,
                vec![(1, format!("record of log {index}").into_bytes())],
                "log {index}"
            );
        }
    }

    #[test]
    fn every_log_of_a_group_is_synced_and_shown_to_readers() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pool = SyncPool::start(3).expect("sync threads");
        synced_and_published(&pool, written_logs(dir.path(), 7));
    }

    #[test]
    fn without_threads_the_caller_syncs_every_log() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pool = SyncPool::start(0).expect("no threads");
        synced_and_published(&pool, written_logs(dir.path(), 3));
    }
}
