//! Corruption is reported and refused, never silently truncated: damage followed by valid
//! data, or anywhere in a sealed segment, stops the journal from opening and names the segment
//! and offset; `verify` reports the same place; `repair --truncate-corrupt` cuts there only
//! after backing the damage up.

use crate::common;

use std::process::Command;

use common::{append_all, copy_data_dir, fast, payload, read_all, sagalog_bin, segments, synced};
use sagalog::journal::{self, Error, Journal, RepairMode, Severity};
use sagalog::wal_format::{ErrorKind, RecordKind, SEGMENT_HEADER_BYTES, frame_bytes};

fn five_records() -> Vec<(RecordKind, Vec<u8>)> {
    (0..5).map(|i| (RecordKind::StepStarted, payload(i, 40))).collect()
}

/// Flipping any single bit of a record in the middle of the last segment (each record synced
/// before the next was written, so the next one's sync watermark proves it): open refuses and
/// names that record's offset; the library verify and `sagalog wal verify` (exit 1) agree.
#[test]
fn every_bit_flip_in_a_middle_record_is_refused_with_its_offset() {
    let base = tempfile::tempdir().unwrap();
    append_all(base.path(), synced(1 << 20), &five_records());
    let frame = frame_bytes(40);
    let record_at = SEGMENT_HEADER_BYTES + 2 * frame; // the third of five records
    let seg_name = segments(base.path())[0].file_name().unwrap().to_owned();
    for bit in 0..frame * 8 {
        let dir = copy_data_dir(base.path());
        let seg = dir.path().join("journal").join(&seg_name);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[record_at + bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&seg, &bytes).unwrap();

        let err = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap_err();
        let Error::Corrupt { source, .. } = &err else { panic!("bit {bit}: expected corruption, got {err}") };
        assert_eq!((source.segment, source.offset), (1, record_at as u64), "bit {bit}: {err}");
        assert!(err.to_string().contains(&format!("offset {record_at}")), "the message names the offset: {err}");

        let summary = journal::verify(&dir.path().join("journal")).unwrap();
        let problem = summary.problem.expect("verify reports the flip");
        assert_eq!((problem.severity, problem.error.offset), (Severity::Corrupt, record_at as u64), "bit {bit}");
        assert_eq!(summary.records, 2, "records before the damage are still verified");

        if bit % 16 == 0 {
            let out =
                Command::new(sagalog_bin()).args(["wal", "verify", "--data-dir"]).arg(dir.path()).output().unwrap();
            assert_eq!(out.status.code(), Some(1), "bit {bit}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("CORRUPT") && text.contains(&format!("offset {record_at}")), "bit {bit}: {text}");
        }
    }
}

/// The limit of the format (wal-format/README.md, Crash analysis): damage to records that no
/// later frame's sync watermark covers reads exactly like a power loss in a never-synced batch.
/// Under `sync = never` nothing is synced before shutdown, so a flip in the middle of what was
/// written since the last open is cut as an unsynced tail, never refused; the records before
/// it stay, and one reopen (which syncs) later, damage there is refused again.
#[test]
fn damage_no_watermark_covers_is_cut_like_a_power_loss() {
    let base = tempfile::tempdir().unwrap();
    append_all(base.path(), fast(1 << 20), &five_records());
    let record_at = SEGMENT_HEADER_BYTES + 2 * frame_bytes(40);
    let dir = copy_data_dir(base.path());
    let seg = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[record_at + 30] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let opened = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap();
    assert_eq!(opened.summary.records, 2);
    assert_eq!(opened.truncated_tail.as_ref().map(|t| t.1), Some(record_at as u64));
    opened.journal.shutdown_blocking().unwrap();

    // Reopened, the log was synced at open; records appended now carry that watermark.
    append_all(base.path(), fast(1 << 20), &five_records()[..1]);
    let dir = copy_data_dir(base.path());
    let seg = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[record_at + 30] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let err = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap_err();
    let Error::Corrupt { source, .. } = &err else { panic!("expected corruption, got {err}") };
    assert_eq!((source.offset, source.synced_lsn_at_valid), (record_at as u64, Some(5)), "{err}");
}

/// Damage to the last record of a *sealed* segment is corruption, not a torn tail: that segment
/// was synced before the next one was created.
#[test]
fn damage_at_the_end_of_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let input: Vec<_> = (0..60).map(|i| (RecordKind::StepStarted, payload(i, 300))).collect();
    append_all(dir.path(), fast(4096), &input);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let len = std::fs::metadata(&segs[0]).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&segs[0]).unwrap().set_len(len - 5).unwrap();
    let err = Journal::open_dir(dir.path(), fast(4096)).unwrap_err();
    assert!(matches!(&err, Error::Corrupt { source, .. } if source.segment == 1), "{err}");
}

/// A missing segment in the middle is corruption naming the missing id.
#[test]
fn missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let input: Vec<_> = (0..60).map(|i| (RecordKind::StepStarted, payload(i, 300))).collect();
    append_all(dir.path(), fast(4096), &input);
    std::fs::remove_file(&segments(dir.path())[1]).unwrap();
    let err = Journal::open_dir(dir.path(), fast(4096)).unwrap_err();
    let Error::Corrupt { source, .. } = &err else { panic!("{err}") };
    assert_eq!(source.kind, ErrorKind::SegmentMissing { expected: 2 });
}

/// A segment from another log (another epoch) is refused at the epoch field.
#[test]
fn segment_from_another_log_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let input: Vec<_> = (0..60).map(|i| (RecordKind::StepStarted, payload(i, 300))).collect();
    append_all(a.path(), fast(4096), &input);
    append_all(b.path(), fast(4096), &input);
    let victim = segments(a.path())[1].clone();
    std::fs::copy(&segments(b.path())[1], &victim).unwrap();
    let err = Journal::open_dir(a.path(), fast(4096)).unwrap_err();
    let Error::Corrupt { source, .. } = &err else { panic!("{err}") };
    assert!(matches!(source.kind, ErrorKind::EpochMismatch { .. }) && source.offset == 32, "{err}");
}

/// `repair` without the flag changes nothing on a corrupt log; with `--truncate-corrupt` it
/// backs up the damaged segment byte for byte, moves later segments aside, cuts at the damage,
/// and the log opens with every record before the damage.
#[test]
fn repair_cuts_at_corruption_only_when_asked_and_after_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let input: Vec<_> = (0..60).map(|i| (RecordKind::StepStarted, payload(i, 300))).collect();
    append_all(dir.path(), fast(4096), &input);
    let segs = segments(dir.path());
    let mut damaged = std::fs::read(&segs[1]).unwrap();
    let at = SEGMENT_HEADER_BYTES + frame_bytes(300) + 50; // inside the second record of segment 2
    damaged[at] ^= 0xff;
    std::fs::write(&segs[1], &damaged).unwrap();
    let (good_prefix, _) = read_all(dir.path());

    assert!(matches!(journal::repair(dir.path(), RepairMode::TornTail), Err(Error::Corrupt { .. })));
    assert_eq!(std::fs::read(&segs[1]).unwrap(), damaged, "refused repair changes nothing");

    let report = journal::repair(dir.path(), RepairMode::TruncateCorrupt).unwrap();
    let backup = report.backups.iter().find(|p| p.to_string_lossy().contains("00000000000000000002.wal")).unwrap();
    assert_eq!(std::fs::read(backup).unwrap(), damaged, "the backup is the damaged segment as it was");
    assert_eq!(report.backups.len(), segs.len() - 1, "the damaged segment and every later one are kept aside");
    let (records, summary) = read_all(dir.path());
    assert!(summary.problem.is_none(), "{:?}", summary.problem);
    assert_eq!(records, good_prefix);
    let opened = Journal::open_dir(dir.path(), fast(4096)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(opened.journal.append_blocking(RecordKind::Checkpoint, vec![]).unwrap(), records.len() as u64 + 1);
    opened.journal.shutdown_blocking().unwrap();
}

/// `repair` on a torn tail truncates it without a flag and without a backup.
#[test]
fn repair_truncates_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    append_all(dir.path(), fast(1 << 20), &five_records());
    let seg = segments(dir.path())[0].clone();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
    let report = journal::repair(dir.path(), RepairMode::TornTail).unwrap();
    assert!(report.backups.is_empty());
    assert_eq!(report.truncated.map(|t| t.1), Some(len - frame_bytes(40) as u64));
    let copy = copy_data_dir(dir.path());
    assert_eq!(read_all(copy.path()).0.len(), 4);
}
