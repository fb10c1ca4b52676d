//! The `sagalog wal` command line as operators and scripts use it: exit codes, report contents,
//! JSON lines from `dump`, and `repair`.

use crate::common;

use std::process::{Command, Output};

use common::{append_all, fast, payload, sagalog_bin, segments};
use sagalog::journal::Journal;
use sagalog::wal_format::{RecordKind, SEGMENT_HEADER_BYTES, frame_bytes};

fn wal(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(sagalog_bin()).arg("wal").args(args).arg("--data-dir").arg(dir).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A MessagePack map {"saga": id, "step": n}, as the engine writes them.
fn msgpack(saga: &str, step: u8) -> Vec<u8> {
    let mut v = vec![0x82, 0xa4];
    v.extend(b"saga");
    v.push(0xa0 | saga.len() as u8);
    v.extend(saga.as_bytes());
    v.push(0xa4);
    v.extend(b"step");
    v.push(step);
    v
}

/// verify on a healthy log: exit 0, and the report states segments, records and LSN range.
#[test]
fn verify_reports_a_healthy_log() {
    let dir = tempfile::tempdir().unwrap();
    let input: Vec<_> = (0..40).map(|i| (RecordKind::StepStarted, payload(i, 300))).collect();
    append_all(dir.path(), fast(4096), &input);
    let out = wal(&["verify"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&format!("segments:  {}", segments(dir.path()).len())), "{t}");
    assert!(t.contains("records:   40 (lsn 1..=40)") && t.contains("status:    ok"), "{t}");

    let out = wal(&["verify", "--json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["status"].as_str(), v["records"].as_u64(), v["last_lsn"].as_u64()), (Some("ok"), Some(40), Some(40)));
}

/// A torn tail is a warning (exit 0: opening repairs it); repair then truncates it.
#[test]
fn torn_tail_is_a_warning_and_repair_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    append_all(
        dir.path(),
        fast(1 << 20),
        &[(RecordKind::SagaSubmitted, payload(0, 64)), (RecordKind::StepStarted, payload(1, 64))],
    );
    let seg = segments(dir.path())[0].clone();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 10).unwrap();
    let out = wal(&["verify"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let torn_at = SEGMENT_HEADER_BYTES + frame_bytes(64);
    assert!(text(&out).contains("torn tail") && text(&out).contains(&format!("offset {torn_at}")), "{}", text(&out));
    let out = wal(&["repair"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains(&format!("at offset {torn_at}")), "{}", text(&out));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), torn_at as u64);
    assert!(text(&wal(&["verify"], dir.path())).contains("status:    ok\n"));
}

/// An unsynced tail (the hole of `v2-hole-last-batch.wal`: a lost first page of the last
/// batch, later frames intact) is a warning like a torn tail; plain `repair` cuts it at the
/// hole, valid never-synced frames included, without a backup or the corruption flag.
#[test]
fn unsynced_tail_is_a_warning_and_plain_repair_cuts_it_at_the_hole() {
    let dir = from_vectors(&["v2-hole-last-batch.wal"]);
    let out = wal(&["verify"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("unsynced tail") && text(&out).contains("offset 336"), "{}", text(&out));
    let out = wal(&["repair"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seg = segments(dir.path())[0].clone();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), 336);
    assert!(!dir.path().join("wal-backup").exists(), "a tail is cut without a backup");
    assert!(text(&wal(&["verify"], dir.path())).contains("records:   5 (lsn 1..=5)"));
}

/// Corruption: verify exits 1 naming segment and offset; repair without the flag exits 1 and
/// changes nothing; with --truncate-corrupt it backs up, cuts, and verify is clean again.
#[test]
fn corruption_exit_codes_and_deliberate_repair() {
    let dir = tempfile::tempdir().unwrap();
    append_all(
        dir.path(),
        common::synced(1 << 20),
        &(0..5).map(|i| (RecordKind::StepStarted, payload(i, 64))).collect::<Vec<_>>(),
    );
    let seg = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = SEGMENT_HEADER_BYTES + frame_bytes(64);
    bytes[at + 30] ^= 4;
    std::fs::write(&seg, &bytes).unwrap();

    let out = wal(&["verify"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains(&format!("segment 1 offset {at}")), "{}", text(&out));
    let out = wal(&["repair"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--truncate-corrupt"), "the message says how to proceed: {}", text(&out));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    let out = wal(&["repair", "--truncate-corrupt"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("backed up:"));
    assert_eq!(std::fs::read_dir(dir.path().join("wal-backup")).unwrap().count(), 1);
    assert_eq!(wal(&["verify"], dir.path()).status.code(), Some(0));
}

/// dump prints one JSON object per record with lsn, kind and the MessagePack payload decoded.
#[test]
fn dump_prints_json_lines_with_decoded_payloads() {
    let dir = tempfile::tempdir().unwrap();
    append_all(
        dir.path(),
        fast(1 << 20),
        &[
            (RecordKind::SagaSubmitted, msgpack("demo-1", 0)),
            (RecordKind::StepStarted, msgpack("demo-1", 1)),
            (RecordKind::StepSucceeded, vec![0xc1]),
        ],
    );
    let out = wal(&["dump"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<serde_json::Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["lsn"], 1);
    assert_eq!(lines[0]["kind"], "SagaSubmitted");
    assert_eq!(lines[1]["payload"], serde_json::json!({"saga": "demo-1", "step": 1}));
    assert!(
        lines[2]["payload_error"].as_str().unwrap().contains("not MessagePack"),
        "an undecodable payload is shown, not fatal"
    );
    assert_eq!(lines[2]["payload_hex"], "c1");
    let from = wal(&["dump", "--from", "3"], dir.path());
    assert_eq!(from.stdout.iter().filter(|b| **b == b'\n').count(), 1);
}

/// Usage and I/O errors exit 2 with a message: a missing directory, and a directory held by a
/// running writer (which must not be read under it).
#[test]
fn usage_and_lock_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = wal(&["verify"], &dir.path().join("nope"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no journal folder"), "{}", text(&out));

    let opened = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap();
    let out = wal(&["verify"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("in use by another sagalog process"), "{}", text(&out));
    opened.journal.shutdown_blocking().unwrap();

    let out = Command::new(sagalog_bin()).args(["wal", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a missing --data-dir is a usage error");
}

/// Builds a data directory whose journal holds the given golden vectors as segments 1, 2, …
fn from_vectors(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wal-format/vectors");
    for (i, name) in names.iter().enumerate() {
        std::fs::copy(vectors.join(name), journal.join(sagalog::wal_format::segment_file_name(i as u64 + 1))).unwrap();
    }
    dir
}

/// `sagalog wal verify` and `dump` on the golden vectors give the results the vectors' README
/// records: valid (exit 0), torn, zero and unsynced tails (warnings, exit 0), a mid-log bit
/// flip, damage to synced data and a segment of another epoch (corruption, exit 1, at the
/// documented offsets).
#[test]
fn verify_and_dump_on_the_golden_vectors() {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["v1-valid.wal"], 0, "records:   5 (lsn 1..=5)"),
        (&["v1-torn-tail.wal"], 0, "torn tail"),
        (&["v1-zero-tail.wal"], 0, "segment 1 offset 336: zero-filled"),
        (&["v1-bitflip-mid.wal"], 1, "segment 1 offset 160: record checksum mismatch"),
        (
            &["v1-valid.wal", "v1-other-epoch.wal"],
            1,
            "segment 2 offset 32: segment belongs to log epoch 0x0bade90c00000002",
        ),
        (&["v2-valid.wal"], 0, "records:   5 (lsn 1..=5)"),
        (&["v2-torn-tail.wal"], 0, "torn tail"),
        (&["v2-hole-last-batch.wal"], 0, "unsynced tail"),
        (&["v2-bitflip-last.wal"], 0, "segment 1 offset 280: record checksum mismatch"),
        (
            &["v2-damage-synced.wal"],
            1,
            "offset 160: record checksum mismatch (stored 0x994e9647, computed 0xa2d13503); valid records follow at offset 280, written when records up to lsn 4 were synced",
        ),
    ];
    for (names, code, needle) in cases {
        let dir = from_vectors(names);
        let out = wal(&["verify"], dir.path());
        assert_eq!(out.status.code(), Some(*code), "{names:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{names:?}: expected {needle:?} in\n{}", text(&out));
    }
    let out = wal(&["dump"], from_vectors(&["v1-valid.wal"]).path());
    let first: serde_json::Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["kind"], "SagaSubmitted");
    assert_eq!(first["payload"], serde_json::json!({"saga": "demo-1", "steps": 2}));
}
