//! A torn tail, what an interrupted append leaves, is cut off at open: every earlier record
//! survives and appends continue with the next LSN.

use crate::common;

use std::fs::OpenOptions;

use common::{append_all, copy_data_dir, fast, payload, read_all, segments};
use sagalog::journal::{Journal, Severity};
use sagalog::wal_format::{RecordKind, frame_bytes};

/// Truncating the last segment at every byte offset inside its last record: open keeps every
/// earlier record, reports the cut, and the next append gets the torn record's LSN and survives.
#[test]
fn truncate_last_segment_at_every_offset_of_its_last_record() {
    let base = tempfile::tempdir().unwrap();
    let input: Vec<_> = (0..6).map(|i| (RecordKind::StepSucceeded, payload(i, 37 + i))).collect();
    append_all(base.path(), fast(1 << 20), &input);
    let seg = segments(base.path()).pop().unwrap();
    let full = std::fs::metadata(&seg).unwrap().len();
    let last_start = full - frame_bytes(input[5].1.len()) as u64;
    for cut in last_start..full {
        let dir = copy_data_dir(base.path());
        let seg = segments(dir.path()).pop().unwrap();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut).unwrap();
        let opened = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(opened.summary.records, 5, "cut at {cut}");
        if cut > last_start {
            let (_, at, bytes) = opened.truncated_tail.clone().expect("the torn tail is reported");
            assert_eq!((at, bytes), (last_start, cut - last_start));
        }
        let lsn = opened.journal.append_blocking(RecordKind::Checkpoint, b"after".to_vec()).unwrap();
        assert_eq!(lsn, 6, "cut at {cut}");
        opened.journal.shutdown_blocking().unwrap();
        let (records, summary) = read_all(dir.path());
        assert!(summary.problem.is_none(), "cut at {cut}: {:?}", summary.problem);
        let mut expected: Vec<_> =
            input[..5].iter().enumerate().map(|(i, (k, p))| (i as u64 + 1, *k, p.clone())).collect();
        expected.push((6, RecordKind::Checkpoint, b"after".to_vec()));
        assert_eq!(records, expected, "cut at {cut}");
    }
}

/// A zero-filled region after the last record (as a file system can leave after a crash) is a
/// torn tail too: cut, and appends continue right after the last record, not after the zeros.
#[test]
fn zero_filled_tail_is_cut_and_appends_follow_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    append_all(dir.path(), fast(1 << 20), &[(RecordKind::SagaSubmitted, payload(1, 100))]);
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new().write(true).open(&seg).unwrap().set_len(len + 8192).unwrap();
    let (_, summary) = read_all(dir.path());
    assert_eq!(summary.problem.as_ref().map(|p| p.severity), Some(Severity::Warning));
    append_all(dir.path(), fast(1 << 20), &[(RecordKind::SagaFinished, payload(2, 10))]);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len + frame_bytes(10) as u64);
    assert_eq!(read_all(dir.path()).0.len(), 2);
}

/// Garbage (not zeros) after the last record, with nothing valid in it, is also a torn tail.
#[test]
fn garbage_tail_without_valid_frames_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    append_all(dir.path(), fast(1 << 20), &[(RecordKind::SagaSubmitted, payload(1, 100))]);
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend((0..500u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    std::fs::write(&seg, &bytes).unwrap();
    let opened = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap();
    assert_eq!(opened.truncated_tail.as_ref().map(|t| t.2), Some(500));
    opened.journal.shutdown_blocking().unwrap();
}

/// A leftover `.wal.tmp` from an interrupted segment creation is removed at open.
#[test]
fn leftover_segment_creation_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    append_all(dir.path(), fast(1 << 20), &[(RecordKind::SagaSubmitted, payload(1, 10))]);
    let tmp = dir.path().join("journal/00000000000000000002.wal.tmp");
    std::fs::write(&tmp, b"half a header").unwrap();
    let opened = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap();
    assert!(!tmp.exists());
    assert_eq!(opened.journal.append_blocking(RecordKind::Checkpoint, vec![]).unwrap(), 2);
    opened.journal.shutdown_blocking().unwrap();
}
