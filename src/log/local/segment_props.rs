//! Crash-point model check: random pushes, writes, syncs, truncations, reads and reopens
//! against a trivial in-memory model, with simulated crashes (kill -9 or power cut) at random
//! moments. A crash drops the writer and damages the newest segment file beyond what was
//! synced: it cuts the file at a random length no shorter than its synced length, may append
//! garbage, and may remove the file outright when it was created after the last sync. After
//! reopening, every synced record must be there unchanged, positions must run on from `first`,
//! anything more must be a prefix of what was pushed after the last sync, and new pushes must
//! continue at `next`.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};

use proptest::prelude::*;

use super::files::segment_bases;
use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// Push `count` payloads of `len` bytes made from `seed`.
    Push {
        count: u64,
        len: usize,
        seed: u64,
    },
    Write,
    Sync,
    /// Truncate before a position picked by `at` between `first` and `next + 1`.
    Truncate {
        at: u16,
    },
    /// Read up to `max` records from a position picked by `at` around the synced range.
    Read {
        at: u16,
        max: u8,
    },
    /// Drop the writer and reopen, files untouched.
    Reopen,
    Crash(Crash),
}

/// How a crash damages the newest segment file.
#[derive(Debug, Clone)]
struct Crash {
    /// Picks the length to cut the file to, at or above its synced length.
    cut: u64,
    /// Bytes appended after the cut.
    garbage: Vec<u8>,
    /// Remove the file instead, when it was created after the last sync.
    remove_new: bool,
}

/// What the log should hold.
#[derive(Debug, Default)]
struct Model {
    first: u64,
    /// Payloads of positions `first ..`, pushed so far.
    records: VecDeque<Vec<u8>>,
    /// `next` as of the last sync and the last write.
    synced: u64,
    written: u64,
}

impl Model {
    fn next(&self) -> u64 {
        self.first + self.records.len() as u64
    }

    fn payload(&self, position: u64) -> &[u8] {
        &self.records[(position - self.first) as usize]
    }
}

/// The log under test, its model, and what the newest file held at the last sync.
struct Harness {
    dir: tempfile::TempDir,
    options: SegmentOptions,
    log: Option<SegmentLog>,
    model: Model,
    /// The newest segment file at the last sync or open, and its length then.
    synced_file: (PathBuf, u64),
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

fn newest_segment(dir: &Path) -> PathBuf {
    let newest = segment_bases(dir).expect("bases").pop().expect("a segment");
    segment_path(dir, newest)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").len()
}

impl Harness {
    fn new(start: u64, options: SegmentOptions) -> Result<Self, TestCaseError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut harness = Self {
            dir,
            options,
            log: None,
            model: Model {
                first: start,
                synced: start,
                written: start,
                ..Model::default()
            },
            synced_file: (PathBuf::new(), 0),
        };
        harness.reopen()?;
        Ok(harness)
    }

    fn log(&mut self) -> &mut SegmentLog {
        self.log.as_mut().expect("open")
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Push { count, len, seed } => {
                for i in 0..count {
                    let payload = payload(len, seed.wrapping_add(i));
                    let position = self.log().push(&payload).expect("push");
                    prop_assert_eq!(position, self.model.next());
                    self.model.records.push_back(payload);
                }
            }
            Op::Write => {
                self.log().write().expect("write");
                self.model.written = self.model.next();
            }
            Op::Sync => {
                self.log().sync().expect("sync");
                self.model.synced = self.model.written;
                self.note_synced_file();
                prop_assert_eq!(self.log().reader().next(), self.model.synced);
            }
            Op::Truncate { at } => self.truncate(at)?,
            Op::Read { at, max } => self.read(at, max)?,
            Op::Reopen => self.reopen()?,
            Op::Crash(crash) => {
                self.log = None;
                self.damage(crash);
                self.reopen()?;
            }
        }
        Ok(())
    }

    fn note_synced_file(&mut self) {
        let newest = newest_segment(self.dir.path());
        let len = file_len(&newest);
        self.synced_file = (newest, len);
    }

    fn truncate(&mut self, at: u16) -> Result<(), TestCaseError> {
        let old_first = self.model.first;
        let before = old_first + u64::from(at) % (self.model.next() - old_first + 2);
        let first = self.log().truncate_before(before).expect("truncate");
        prop_assert_eq!(first, self.log().first());
        prop_assert_eq!(first, self.log().reader().first());
        if first != old_first {
            prop_assert!(first > old_first && first <= before);
            prop_assert!(first < self.model.next() && first <= self.model.synced);
            prop_assert!(segment_path(self.dir.path(), first).exists());
        }
        for _ in old_first..first {
            self.model.records.pop_front();
        }
        self.model.first = first;
        Ok(())
    }

    fn read(&mut self, at: u16, max: u8) -> Result<(), TestCaseError> {
        let low = self.model.first.saturating_sub(1);
        let from = low + u64::from(at) % (self.model.synced + 2 - low);
        let max = usize::from(max).max(1);
        let read = self.log().reader().read(from, max, usize::MAX);
        if from < self.model.first {
            let gone = matches!(read, Err(SegmentError::Gone { requested, first })
                if requested == from && first == self.model.first);
            prop_assert!(
                gone,
                "read from {} below first: {:?}",
                from,
                read.map(|r| r.len())
            );
            return Ok(());
        }
        let read = read.expect("read");
        let end = (from + max as u64).min(self.model.synced.max(from));
        prop_assert_eq!(read.len() as u64, end - from);
        for (i, (position, payload)) in read.iter().enumerate() {
            prop_assert_eq!(*position, from + i as u64);
            prop_assert_eq!(payload.as_slice(), self.model.payload(*position));
        }
        Ok(())
    }

    /// Damages the newest segment beyond its synced length, as a crash may leave it.
    fn damage(&mut self, crash: Crash) {
        let newest = newest_segment(self.dir.path());
        let synced_len = if newest == self.synced_file.0 {
            self.synced_file.1
        } else if crash.remove_new {
            fs::remove_file(&newest).expect("remove");
            return;
        } else {
            0
        };
        let len = file_len(&newest);
        let cut = synced_len + crash.cut % (len - synced_len + 1);
        let file = OpenOptions::new().write(true).open(&newest).expect("open");
        file.set_len(cut).expect("cut");
        file.write_all_at(&crash.garbage, cut).expect("garbage");
    }

    /// Reopens the log and checks it against the model, which then takes what survived.
    fn reopen(&mut self) -> Result<(), TestCaseError> {
        self.log = None;
        let (log, recovery) =
            SegmentLog::open(self.dir.path(), self.model.first, self.options).expect("reopen");
        let model = &mut self.model;
        prop_assert_eq!(recovery.first, model.first);
        prop_assert!(model.synced <= recovery.next && recovery.next <= model.written);
        prop_assert_eq!(log.next(), recovery.next);
        let read = log
            .reader()
            .read(model.first, usize::MAX, usize::MAX)
            .expect("read");
        prop_assert_eq!(read.len() as u64, recovery.next - model.first);
        for (i, (position, payload)) in read.iter().enumerate() {
            prop_assert_eq!(*position, model.first + i as u64);
            prop_assert_eq!(payload.as_slice(), model.payload(*position));
        }
        model
            .records
            .truncate((recovery.next - model.first) as usize);
        model.synced = recovery.next;
        model.written = recovery.next;
        self.log = Some(log);
        self.note_synced_file();
        Ok(())
    }
}

fn an_op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![3 => 1..=40usize, 1 => 1..=2000usize];
    // Runs of pushes fill segments past the sparse index's step of 64 records.
    let count = prop_oneof![3 => 1..=3u64, 1 => 1..=80u64];
    let garbage = prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 1..64)];
    let crash =
        (any::<u64>(), garbage, any::<bool>()).prop_map(|(cut, garbage, remove_new)| Crash {
            cut,
            garbage,
            remove_new,
        });
    prop_oneof![
        12 => (count, len, any::<u64>()).prop_map(|(count, len, seed)| Op::Push { count, len, seed }),
        3 => Just(Op::Write),
        3 => Just(Op::Sync),
        1 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        2 => (any::<u16>(), any::<u8>()).prop_map(|(at, max)| Op::Read { at, max }),
        1 => Just(Op::Reopen),
        1 => crash.prop_map(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn survives_crashes_at_any_point(
        start in prop_oneof![Just(0u64), 0..1_000_000u64],
        segment_bytes in prop_oneof![1 => 1..=400u64, 7 => 400..=40_000u64],
        ops in prop::collection::vec(an_op(), 1..200),
    ) {
        let mut harness = Harness::new(start, SegmentOptions { segment_bytes })?;
        for op in ops {
            harness.apply(op)?;
        }
        harness.apply(Op::Crash(Crash { cut: 0, garbage: Vec::new(), remove_new: false }))?;
    }
}
