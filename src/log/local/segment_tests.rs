//! Tests of the segment log: round trips, positions across reopen and truncation, rolling,
//! the sparse index, recovery from torn tails and corruption, visibility and refusals.

use std::fs;

use super::frame::HEADER_BYTES;
use super::*;

/// Four 40-byte frames per segment: the fourth takes a segment past 150 bytes.
const SMALL: SegmentOptions = SegmentOptions { segment_bytes: 150 };

fn open(dir: &Path, start: u64, options: SegmentOptions) -> (SegmentLog, Recovery) {
    SegmentLog::open(dir, start, options).expect("open")
}

/// Record `i`'s payload: 32 bytes that name it, so a misplaced record shows.
fn record(i: u64) -> Vec<u8> {
    format!("record {i:>25}").into_bytes()
}

/// Pushes records `range` (by content), writes and syncs them.
fn append(log: &mut SegmentLog, range: std::ops::Range<u64>) {
    for i in range {
        log.push(&record(i)).expect("push");
    }
    log.write().expect("write");
    log.sync().expect("sync");
}

fn read_all(log: &SegmentLog, from: u64) -> Vec<(u64, Vec<u8>)> {
    log.reader()
        .read(from, usize::MAX, usize::MAX)
        .expect("read")
}

fn expected(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
    range.map(|i| (i, record(i))).collect()
}

/// The name the module doc gives the segment starting at `base`.
fn file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

fn last_segment(dir: &Path) -> PathBuf {
    dir.join(segment_files(dir).pop().expect("a segment"))
}

#[test]
fn records_read_back_as_pushed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovery) = open(dir.path(), 0, SegmentOptions::default());
    assert_eq!(
        recovery,
        Recovery {
            first: 0,
            next: 0,
            cut: None
        }
    );
    assert_eq!(log.push(b"a").expect("push"), 0);
    assert_eq!(log.push(&[7; 1000]).expect("push"), 1);
    assert_eq!(log.push(b"c").expect("push"), 2);
    log.write().expect("write");
    log.sync().expect("sync");
    let read = read_all(&log, 0);
    assert_eq!(
        read,
        vec![(0, b"a".to_vec()), (1, vec![7; 1000]), (2, b"c".to_vec())]
    );
    assert_eq!(log.disk_bytes(), 3 * HEADER_BYTES + 1002);
}

#[test]
fn positions_continue_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SegmentOptions::default());
    append(&mut log, 0..5);
    drop(log);
    let (mut log, recovery) = open(dir.path(), 0, SegmentOptions::default());
    assert_eq!(
        recovery,
        Recovery {
            first: 0,
            next: 5,
            cut: None
        }
    );
    assert_eq!(
        log.reader().next(),
        5,
        "what open found is readable at once"
    );
    append(&mut log, 5..8);
    assert_eq!(read_all(&log, 0), expected(0..8));
}

#[test]
fn full_segments_roll_and_reads_cross_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SMALL);
    append(&mut log, 0..10);
    assert_eq!(
        segment_files(dir.path()),
        [0, 4, 8].map(file_name),
        "a segment takes frames until it reaches 150 bytes"
    );
    assert_eq!(read_all(&log, 0), expected(0..10));
    assert_eq!(
        read_all(&log, 3),
        expected(3..10),
        "from a segment's last record"
    );
    let reader = log.reader();
    assert_eq!(reader.read(2, 4, usize::MAX).expect("read"), expected(2..6));
    append(&mut log, 10..11);
    drop(log);
    let (log, recovery) = open(dir.path(), 0, SMALL);
    assert_eq!((recovery.first, recovery.next), (0, 11));
    assert_eq!(read_all(&log, 0), expected(0..11));
}

#[test]
fn the_sparse_index_finds_every_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    // About 300 records a segment: several index entries in each.
    let options = SegmentOptions {
        segment_bytes: 12_000,
    };
    let (mut log, _) = open(dir.path(), 0, options);
    append(&mut log, 0..700);
    append(&mut log, 700..1000);
    assert!(segment_files(dir.path()).len() >= 3);
    let check = |log: &SegmentLog| {
        let reader = log.reader();
        for from in 0..1000 {
            let read = reader.read(from, 2, usize::MAX).expect("read");
            assert_eq!(read, expected(from..(from + 2).min(1000)), "from {from}");
        }
    };
    check(&log);
    drop(log);
    let (log, _) = open(dir.path(), 0, options);
    check(&log);
}

#[test]
fn reads_stop_at_max_bytes_but_return_at_least_one_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SegmentOptions::default());
    append(&mut log, 0..10);
    let reader = log.reader();
    assert_eq!(reader.read(2, 100, 100).expect("read"), expected(2..5));
    assert_eq!(reader.read(2, 100, 0).expect("read"), expected(2..3));
    assert_eq!(reader.read(10, 100, 100).expect("read"), vec![]);
}

#[test]
fn truncation_deletes_whole_segments_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SMALL);
    append(&mut log, 0..10);
    let reader = log.reader();
    let bytes = log.disk_bytes();
    assert_eq!(
        log.truncate_before(6).expect("truncate"),
        4,
        "0..4 goes, 4..8 holds 6 and 7"
    );
    assert_eq!((log.first(), reader.first()), (4, 4));
    assert_eq!(segment_files(dir.path()), [4, 8].map(file_name));
    assert!(log.disk_bytes() < bytes);
    assert!(matches!(
        reader.read(3, 10, usize::MAX),
        Err(SegmentError::Gone {
            requested: 3,
            first: 4
        })
    ));
    assert_eq!(read_all(&log, 4), expected(4..10));
    assert_eq!(
        log.truncate_before(u64::MAX).expect("truncate"),
        8,
        "the last segment stays"
    );
    assert_eq!(read_all(&log, 8), expected(8..10));
}

#[test]
fn truncation_keeps_the_segment_holding_the_last_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SMALL);
    append(&mut log, 0..8);
    drop(log);
    // A crash right after a roll leaves the new segment empty.
    fs::write(dir.path().join(file_name(8)), b"").expect("empty segment");
    let (mut log, recovery) = open(dir.path(), 0, SMALL);
    assert_eq!((recovery.next, recovery.cut), (8, None));
    assert_eq!(log.truncate_before(u64::MAX).expect("truncate"), 4);
    assert_eq!(read_all(&log, 4), expected(4..8));
    append(&mut log, 8..9);
    assert_eq!(log.truncate_before(u64::MAX).expect("truncate"), 8);
}

#[test]
fn truncation_spares_segments_not_yet_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SMALL);
    append(&mut log, 0..4);
    for i in 4..10 {
        log.push(&record(i)).expect("push");
    }
    log.write().expect("write");
    assert_eq!(log.truncate_before(u64::MAX).expect("truncate"), 0);
    log.sync().expect("sync");
    assert_eq!(read_all(&log, 0), expected(0..10));
    assert_eq!(log.truncate_before(u64::MAX).expect("truncate"), 8);
}

#[test]
fn a_log_can_start_at_any_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovery) = open(dir.path(), 1000, SMALL);
    assert_eq!((recovery.first, recovery.next), (1000, 1000));
    assert_eq!(segment_files(dir.path()), ["00000000000000001000.seg"]);
    assert_eq!(log.push(&record(1000)).expect("push"), 1000);
    log.write().expect("write");
    log.sync().expect("sync");
    append(&mut log, 1001..1010);
    assert!(matches!(
        log.reader().read(999, 1, usize::MAX),
        Err(SegmentError::Gone {
            requested: 999,
            first: 1000
        })
    ));
    assert_eq!(read_all(&log, 1000), expected(1000..1010));
    drop(log);
    let (_, recovery) = open(dir.path(), 0, SMALL);
    assert_eq!(
        (recovery.first, recovery.next),
        (1000, 1010),
        "start only applies to a new log"
    );
}

#[test]
fn positions_survive_truncation_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SMALL);
    append(&mut log, 0..10);
    log.truncate_before(10).expect("truncate");
    drop(log);
    let (mut log, recovery) = open(dir.path(), 0, SMALL);
    assert_eq!((recovery.first, recovery.next), (8, 10));
    append(&mut log, 10..12);
    assert_eq!(read_all(&log, 8), expected(8..12));
}

#[test]
fn a_bad_byte_in_a_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SMALL);
    append(&mut log, 0..10);
    drop(log);
    let middle = dir.path().join(file_name(4));
    let mut bytes = fs::read(&middle).expect("read");
    let second_payload = (2 * HEADER_BYTES) as usize + record(4).len();
    bytes[second_payload + 3] ^= 1;
    fs::write(&middle, bytes).expect("write");
    match SegmentLog::open(dir.path(), 0, SMALL) {
        Err(SegmentError::Corrupt {
            segment,
            offset,
            why,
        }) => {
            assert_eq!(segment, middle);
            assert_eq!(offset, HEADER_BYTES + record(4).len() as u64);
            assert_eq!(why, "checksum mismatch");
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SMALL);
    append(&mut log, 0..10);
    drop(log);
    fs::remove_file(dir.path().join(file_name(4))).expect("remove");
    assert!(matches!(
        SegmentLog::open(dir.path(), 0, SMALL),
        Err(SegmentError::Corrupt { offset: 0, .. })
    ));
}

/// Writes records 0..5 into one segment, damages the end of the file with `damage`, reopens
/// and checks that the log ends at the last whole record, `kept`, and carries on from there.
fn check_torn_tail(damage: impl FnOnce(&mut Vec<u8>), kept: u64, why: &'static str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SegmentOptions::default());
    append(&mut log, 0..5);
    drop(log);
    let path = last_segment(dir.path());
    let mut bytes = fs::read(&path).expect("read");
    damage(&mut bytes);
    let damaged_len = bytes.len() as u64;
    fs::write(&path, bytes).expect("write");
    let (mut log, recovery) = open(dir.path(), 0, SegmentOptions::default());
    let good_len = kept * (HEADER_BYTES + record(0).len() as u64);
    let cut = TornTail {
        segment: path.clone(),
        offset: good_len,
        dropped_bytes: damaged_len - good_len,
        why,
    };
    assert_eq!(
        recovery,
        Recovery {
            first: 0,
            next: kept,
            cut: Some(cut)
        }
    );
    assert_eq!(
        fs::metadata(&path).expect("metadata").len(),
        good_len,
        "the file is cut"
    );
    assert_eq!(read_all(&log, 0), expected(0..kept));
    append(&mut log, kept..kept + 2);
    drop(log);
    let (log, recovery) = open(dir.path(), 0, SegmentOptions::default());
    assert_eq!(recovery.cut, None);
    assert_eq!(read_all(&log, 0), expected(0..kept + 2));
}

#[test]
fn a_tail_cut_mid_payload_is_dropped() {
    check_torn_tail(|b| b.truncate(b.len() - 5), 4, "truncated payload");
}

#[test]
fn a_tail_cut_mid_header_is_dropped() {
    let frame = (HEADER_BYTES as usize) + record(0).len();
    check_torn_tail(|b| b.truncate(4 * frame + 3), 4, "truncated frame header");
}

#[test]
fn a_last_frame_with_a_bad_checksum_is_dropped() {
    check_torn_tail(
        |b| *b.last_mut().expect("bytes") ^= 1,
        4,
        "checksum mismatch",
    );
}

#[test]
fn garbage_after_the_last_frame_is_dropped() {
    check_torn_tail(
        |b| b.extend_from_slice(&[0x2a; 40]),
        5,
        "length over the record limit",
    );
}

#[test]
fn zeroed_space_after_the_last_frame_is_dropped() {
    check_torn_tail(|b| b.extend_from_slice(&[0; 4096]), 5, "zero length");
}

#[test]
fn unsynced_records_are_not_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SMALL);
    append(&mut log, 0..2);
    let reader = log.reader();
    for i in 2..10 {
        log.push(&record(i)).expect("push");
    }
    assert_eq!((log.next(), reader.next()), (10, 2));
    assert_eq!(reader.read(2, 10, usize::MAX).expect("read"), vec![]);
    log.write().expect("write");
    assert_eq!(
        reader.read(2, 10, usize::MAX).expect("read"),
        vec![],
        "written is not synced"
    );
    assert_eq!(read_all(&log, 0), expected(0..2));
    log.sync().expect("sync");
    assert_eq!(
        reader.read(2, 10, usize::MAX).expect("read"),
        expected(2..10)
    );
}

#[test]
fn empty_and_oversized_records_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), 0, SMALL);
    assert!(matches!(log.push(b""), Err(SegmentError::Empty)));
    let huge = vec![0; MAX_RECORD_BYTES + 1];
    assert!(matches!(
        log.push(&huge),
        Err(SegmentError::TooLarge { len }) if len == MAX_RECORD_BYTES + 1
    ));
    assert_eq!(
        log.push(b"x").expect("push"),
        0,
        "refusals take no position"
    );
}

#[test]
fn a_second_writer_is_locked_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), 0, SMALL);
    assert!(matches!(
        SegmentLog::open(dir.path(), 0, SMALL),
        Err(SegmentError::Locked { .. })
    ));
    drop(log);
    open(dir.path(), 0, SMALL);
}

#[test]
fn other_files_in_the_directory_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("notes.txt"), b"x").expect("write");
    fs::write(dir.path().join("17.seg"), b"x").expect("write");
    let (mut log, recovery) = open(dir.path(), 3, SMALL);
    assert_eq!((recovery.first, recovery.next), (3, 3));
    append(&mut log, 3..4);
    assert_eq!(read_all(&log, 3), expected(3..4));
}
