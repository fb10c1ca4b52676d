//! `sagalog audit`: silent on a healthy data directory, and each inconsistency planted by hand
//! in a participant (a deleted marker, an extra marker, a marker of no saga, an effect
//! without a marker, what an interrupted file write left) is reported with its saga, step and
//! participant, exit 1.

use crate::ops_support;

use std::path::Path;

use ops_support::*;
use serde_json::Value as Json;

/// A data directory whose sagas all finished through a real `sagalog replay`: s0..s5
/// completed, s6 and s7 compensated (their step 0 failed for good: nothing applied).
fn healthy() -> tempfile::TempDir {
    let dir = data_dir();
    init_participants(dir.path());
    let mut records = Vec::new();
    for n in 0..8 {
        let rows = if n >= 6 { -1 } else { n };
        records.push(submitted(&two_steps(&format!("s{n}"), rows), 10));
    }
    append(dir.path(), &records);
    let out = sagalog(&["replay"], dir.path());
    assert!(out.status.success(), "replay: {} {}", stdout(&out), stderr(&out));
    dir
}

fn audit(dir: &Path) -> (Option<i32>, Json) {
    let out = sagalog(&["audit", "--json"], dir);
    let report =
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&out), stderr(&out)));
    (out.status.code(), report)
}

fn findings(report: &Json) -> Vec<(String, String, Option<u64>, String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["saga"].as_str().unwrap().to_owned(),
                f["step"].as_u64(),
                f["direction"].as_str().unwrap_or("-").to_owned(),
                f["participant"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn ledger(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("p/ledger.sqlite")).unwrap()
}

fn fresh_copy(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    copy_tree(dir, copy.path());
    copy
}

/// Issue 10 A4: markers another sagalog instance wrote into a shared participant database
/// (their scope names another instance id, here for an id this data directory also knows)
/// are counted apart, not reported as orphans or as this saga's markers.
#[test]
fn markers_of_another_instance_are_counted_not_reported() {
    let dir = healthy();
    let other = "fedcba9876543210.0000000000000001";
    for (saga, step) in [("s0", 0), ("s0", 1), ("never-here", 0)] {
        ledger(dir.path())
            .execute(
                "INSERT INTO sagalog_markers (saga_id, step, direction, applied_at_ms) VALUES (?1, ?2, 'forward', 1)",
                rusqlite::params![format!("{saga} {other}"), step],
            )
            .unwrap();
    }
    let (code, report) = audit(dir.path());
    assert_eq!(code, Some(0), "{report:#}");
    assert!(findings(&report).is_empty(), "{report:#}");
    assert_eq!(report["other_instance_markers"], 3, "{report:#}");
}

/// A healthy run: every marker where the journal says, nothing else; exit 0; and the audit
/// itself changes no byte.
#[test]
fn healthy_run_reports_nothing() {
    let dir = healthy();
    let before = fingerprint(dir.path());
    let (code, report) = audit(dir.path());
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["sagas_checked"], 8);
    assert_eq!(report["markers"]["ledger"], 6, "{report:#}");
    assert_eq!(report["markers"]["files"], 6, "{report:#}");
    assert!(findings(&report).is_empty(), "{report:#}");
    assert_eq!(report["effects_checked"], 16, "a file and a ledger check per saga: {report:#}");
    let mut after = fingerprint(dir.path());
    after.retain(|p, _| !p.to_string_lossy().ends_with("-shm"));
    let mut before = before;
    before.retain(|p, _| !p.to_string_lossy().ends_with("-shm"));
    assert_eq!(after, before, "audit changed the data directory");
}

/// A deleted forward marker of a completed saga is reported as missing, on its participant.
#[test]
fn deleted_marker_is_reported() {
    let healthy = healthy();
    let dir = fresh_copy(healthy.path());
    let deleted = ledger(dir.path())
        .execute("DELETE FROM sagalog_markers WHERE saga_id = 's2' AND step = 0 AND direction = 'forward'", [])
        .unwrap();
    assert_eq!(deleted, 1);
    std::fs::remove_file(dir.path().join("p/files/.sagalog-markers/s3/1.forward")).unwrap();
    let (code, report) = audit(dir.path());
    assert_eq!(code, Some(1));
    assert_eq!(
        findings(&report),
        vec![
            ("missing_marker".into(), "s2".into(), Some(0), "forward".into(), "ledger".into()),
            ("missing_marker".into(), "s3".into(), Some(1), "forward".into(), "files".into()),
        ]
    );
}

/// Extra markers: one for a step the journal says never applied (its effect would never be
/// compensated), a compensation marker on a completed saga, and one of a saga nobody knows.
#[test]
fn extra_markers_are_reported() {
    let healthy = healthy();
    let dir = fresh_copy(healthy.path());
    let conn = ledger(dir.path());
    for (saga, step, direction) in [("s6", 0, "forward"), ("s1", 0, "compensate"), ("ghost", 0, "forward")] {
        conn.execute(
            "INSERT INTO sagalog_markers (saga_id, step, direction, applied_at_ms) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![saga, step, direction, 4_102_444_800_000i64],
        )
        .unwrap();
    }
    drop(conn);
    let (code, report) = audit(dir.path());
    assert_eq!(code, Some(1));
    assert_eq!(
        findings(&report),
        vec![
            ("unexpected_marker".into(), "s1".into(), Some(0), "compensate".into(), "ledger".into()),
            ("unexpected_marker".into(), "s6".into(), Some(0), "forward".into(), "ledger".into()),
            ("orphan".into(), "ghost".into(), Some(0), "forward".into(), "ledger".into()),
        ]
    );
}

/// An effect without a marker in a SQL participant (a ledger row inserted by hand for a
/// saga whose step never applied) and a completed saga's row deleted by hand, found through
/// the action's declared `check` statement.
#[test]
fn sql_effect_without_marker_is_reported() {
    let healthy = healthy();
    let dir = fresh_copy(healthy.path());
    let conn = ledger(dir.path());
    conn.execute("INSERT INTO executions (run_id, rows) VALUES ('s6', 6)", []).unwrap();
    assert_eq!(conn.execute("DELETE FROM executions WHERE run_id = 's1'", []).unwrap(), 1);
    drop(conn);
    let (code, report) = audit(dir.path());
    assert_eq!(code, Some(1));
    assert_eq!(
        findings(&report),
        vec![
            ("effect_missing".into(), "s1".into(), Some(0), "forward".into(), "ledger".into()),
            ("effect_without_marker".into(), "s6".into(), Some(0), "forward".into(), "ledger".into()),
        ]
    );
}

/// An effect without a marker: the artefact of a saga that compensated before writing it
/// appears in the file participant; and a completed saga's artefact that vanished.
#[test]
fn effect_without_marker_is_reported() {
    let healthy = healthy();
    let dir = fresh_copy(healthy.path());
    let runs = dir.path().join("p/files/runs");
    std::fs::write(runs.join("s7.json"), b"{\"planted\":true}").unwrap();
    std::fs::remove_file(runs.join("s4.json")).unwrap();
    let (code, report) = audit(dir.path());
    assert_eq!(code, Some(1));
    assert_eq!(
        findings(&report),
        vec![
            ("effect_missing".into(), "s4".into(), Some(1), "forward".into(), "files".into()),
            ("effect_without_marker".into(), "s7".into(), Some(1), "forward".into(), "files".into()),
        ]
    );
    let out = sagalog(&["audit"], dir.path());
    let table = stdout(&out);
    assert!(table.contains("2 INCONSISTENCIES"), "{table}");
    assert!(table.contains("effect_without_marker") && table.contains("s7"), "{table}");
}

/// What an interrupted file write leaves is reported, each by its path: a stale temporary
/// file, and an intent not yet turned into a marker (here of a saga nobody knows, so its step
/// also shows as an orphan marker: the intent commits the step). The audit removes nothing.
#[test]
fn interrupted_file_writes_are_reported() {
    use sagalog::participant::fs::{CrashPoint, Fs};
    use sagalog::participant::{Direction, Operation, Participant, StepKey};

    let healthy = healthy();
    let dir = fresh_copy(healthy.path());
    let root = dir.path().join("p/files");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let fs = Fs::open("files", root.clone()).unwrap();
        fs.crash_next_apply(CrashPoint::BeforeEffect);
        let key = StepKey { saga_id: "ghost".into(), step: 0, direction: Direction::Forward, scope: None };
        let op = Operation::FilePut { path: "runs/ghost.json".into(), contents: b"{}".to_vec() };
        assert!(fs.apply(&key, 1, &op).await.is_err(), "the injected crash");
    });
    let stale = root.join("runs/s1.json.sagalog-tmp-0123456789abcdef");
    std::fs::write(&stale, b"partial").unwrap();
    let before = fingerprint(dir.path());
    let (code, report) = audit(dir.path());
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(
        findings(&report),
        vec![
            ("orphan".into(), "ghost".into(), Some(0), "forward".into(), "files".into()),
            ("temp_file".into(), "".into(), None, "-".into(), "files".into()),
            ("unfinished_intent".into(), "ghost".into(), Some(0), "forward".into(), "files".into()),
        ],
        "{report:#}"
    );
    let details: Vec<&str> =
        report["findings"].as_array().unwrap().iter().map(|f| f["detail"].as_str().unwrap()).collect();
    assert!(details[1].contains(&stale.display().to_string()), "{details:?}");
    assert!(details[2].contains("0.forward.intent") && details[2].contains("runs/ghost.json"), "{details:?}");
    let mut after = fingerprint(dir.path());
    after.retain(|p, _| !p.to_string_lossy().ends_with("-shm"));
    let mut before = before;
    before.retain(|p, _| !p.to_string_lossy().ends_with("-shm"));
    assert_eq!(after, before, "audit changed the data directory");
}

/// Trust item A9: an audit that checked nothing (no finished saga in the journal or the index,
/// no marker in any participant: a wrong `--data-dir`, or participants pointed elsewhere)
/// says so and exits 3, never "ok". Before: status ok, exit 0.
#[test]
fn an_audit_that_checked_nothing_says_so_and_exits_non_zero() {
    let dir = data_dir();
    init_participants(dir.path());
    append(dir.path(), &[]);
    let (code, report) = audit(dir.path());
    assert_eq!(code, Some(3), "{report}");
    assert_eq!(report["checked_nothing"], Json::Bool(true), "{report}");
    let out = sagalog(&["audit"], dir.path());
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&out).contains("checked nothing"), "{}", stdout(&out));
    // A healthy directory with sagas still passes.
    let (code, report) = audit(healthy().path());
    assert_eq!((code, &report["checked_nothing"]), (Some(0), &Json::Bool(false)), "{report}");
}
