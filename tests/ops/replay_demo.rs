//! The toolkit end to end on the embedded default (SQLite, DuckDB and files): a real server
//! process running demo sagas is killed with SIGKILL; the dry run then plans the recovery
//! without changing a byte (DuckDB and SQLite opened read-only after a crash, their WAL files
//! included), offline replay recovers everything, the audit agrees, and the export holds every
//! saga.

#![cfg(feature = "duckdb")]

use crate::ops_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ops_support::{fingerprint, sagalog, stderr, stdout};
use serde_json::Value as Json;

/// A crash of the demo load, then dry run, replay, audit and export on what it left.
#[test]
fn toolkit_on_a_crashed_demo_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded default, its HTTP port (metrics and the demo notifier) on a free port.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    std::fs::write(dir.path().join("sagalog.toml"), sagalog::config::embedded::embedded_default_with_http(&http))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["debug", "saga-load", "--concurrency", "8", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).count());
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap();
    child.wait().unwrap();
    let acked = reader.join().unwrap();
    assert!(acked > 10, "too few sagas acknowledged ({acked}) for the test to mean anything");

    let keep = |f: &mut std::collections::BTreeMap<std::path::PathBuf, (u64, u32)>| {
        f.retain(|p, _| !p.to_string_lossy().ends_with("-shm"));
    };
    let mut before = fingerprint(dir.path());
    keep(&mut before);
    let wals: Vec<_> = before.keys().filter(|p| p.to_string_lossy().ends_with("wal")).collect();
    eprintln!("participant write-ahead files left by the crash: {wals:?}");
    let out = sagalog(&["replay", "--dry-run", "--json"], dir.path());
    assert!(out.status.success(), "dry run after a crash: {}", stderr(&out));
    let plan: Json = serde_json::from_str(&stdout(&out)).unwrap();
    let mut after = fingerprint(dir.path());
    keep(&mut after);
    assert_eq!(after, before, "the dry run changed the crashed data directory");
    let unfinished = plan["totals"]["unfinished"].as_u64().unwrap();
    eprintln!("{acked} acknowledged, {unfinished} unfinished, totals {}", plan["totals"]);

    let out = sagalog(&["replay", "--json"], dir.path());
    assert!(out.status.success(), "replay: {} {}", stdout(&out), stderr(&out));
    let summary: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["unfinished"].as_u64(), Some(unfinished), "{summary}");
    // The plan assumes the steps still to run succeed; some demo sagas are built to fail (and
    // compensate), so only the sum is certain: every unfinished saga finished one way or the other.
    let finished = summary["completed"].as_u64().unwrap() + summary["compensated"].as_u64().unwrap();
    assert_eq!(finished, unfinished, "{summary} vs plan {}", plan["totals"]);
    assert_eq!(summary["stuck"], serde_json::json!([]), "{summary}");

    let audit = sagalog(&["audit", "--json"], dir.path());
    assert!(audit.status.success(), "audit after recovery: {}", stdout(&audit));

    let file = dir.path().join("history.duckdb");
    let out = sagalog(&["export", "--duckdb", file.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "export: {}", stderr(&out));
    let conn = duckdb::Connection::open(&file).unwrap();
    let sagas: i64 = conn.query_row("SELECT count(*) FROM sagas", [], |r| r.get(0)).unwrap();
    let open: i64 = conn
        .query_row("SELECT count(*) FROM sagas WHERE status NOT IN ('COMPLETED', 'COMPENSATED')", [], |r| r.get(0))
        .unwrap();
    assert!(sagas as usize >= acked, "{sagas} sagas exported, {acked} acknowledged");
    assert_eq!(open, 0, "every saga finished after the replay");
}
