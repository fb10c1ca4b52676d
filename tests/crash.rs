//! Crash torture: a real `sagalog` process runs many concurrent demo sagas (SQLite, DuckDB and
//! files; some designed to fail) and is killed with SIGKILL at random moments, round after
//! round; a final run recovers and settles everything. Then, for every saga whose submit was
//! acknowledged: it is terminal with the expected outcome; a completed saga's effects exist
//! exactly once in every participant (rows counted, not just markers) with forward markers; a
//! compensated saga's effects are gone, with a compensation marker for every forward marker.

#![cfg(feature = "duckdb")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sagalog_bin;
use rand::{Rng, SeedableRng};

const TIME_BUDGET: Duration = Duration::from_secs(45);
const ROUNDS_MAX: usize = 40;

/// Runs `sagalog debug saga-load` and SIGKILLs it after `after`; returns the acknowledged
/// (saga id, expected status) pairs it printed.
fn load_round(dir: &Path, after: Duration) -> Vec<(String, String)> {
    let mut child = Command::new(sagalog_bin())
        .args(["debug", "saga-load", "--concurrency", "8", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
    std::thread::sleep(after);
    child.kill().unwrap();
    child.wait().unwrap();
    let lines = reader.join().unwrap();
    lines
        .iter()
        .filter_map(|l| match l.split(' ').collect::<Vec<_>>().as_slice() {
            ["ack", id, expect] => Some((id.to_string(), expect.to_string())),
            _ => None,
        })
        .collect()
}

/// Every acknowledged saga is finished as expected, exactly once everywhere, after hundreds of
/// SIGKILLs spread over many rounds.
#[test]
fn sigkill_torture_every_acknowledged_saga_finishes_exactly_once() {
    let seed: u64 = std::env::var("SAGALOG_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("saga crash test seed {seed} (set SAGALOG_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < ROUNDS_MAX && started.elapsed() < TIME_BUDGET {
        rounds += 1;
        let acks = load_round(dir.path(), Duration::from_millis(rng.random_range(150..1500)));
        eprintln!("round {rounds}: {} acks", acks.len());
        acked.extend(acks);
    }
    assert!(acked.len() > 50, "too few sagas acknowledged ({}) for the test to mean anything", acked.len());

    let out = Command::new(sagalog_bin())
        .args(["debug", "settle", "--timeout-secs", "120", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "settle: {}", String::from_utf8_lossy(&out.stderr));
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    let statuses: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| match l.splitn(4, ' ').collect::<Vec<_>>().as_slice() {
            ["saga", id, status, reason] => {
                reasons.insert(id.to_string(), reason.to_string());
                Some((id.to_string(), status.to_string()))
            }
            _ => None,
        })
        .collect();

    let d = dir.path().join("demo");
    let ledger = rusqlite::Connection::open(d.join("ledger.sqlite")).unwrap();
    let warehouse = duckdb::Connection::open(d.join("warehouse.duckdb")).unwrap();
    let sqlite_rows = count_sqlite(&ledger, "SELECT run_id, count(*) FROM executions GROUP BY run_id");
    let duck_rows = count_duck(&warehouse, "SELECT run_id, count(*) FROM results GROUP BY run_id");
    let sqlite_markers = markers_sqlite(&ledger);
    let duck_markers = markers_duck(&warehouse);
    for (id, expect) in &acked {
        let status = statuses.get(id).unwrap_or_else(|| panic!("acknowledged saga {id} is unknown after recovery"));
        assert_eq!(status, expect, "saga {id} (compensation reason: {:?})", reasons.get(id));
        let artifact = d.join("artifacts/runs").join(format!("{id}.json")).exists();
        match expect.as_str() {
            "COMPLETED" => {
                assert_eq!(sqlite_rows.get(id), Some(&1), "{id}: ledger row exactly once");
                assert_eq!(duck_rows.get(id), Some(&1), "{id}: warehouse row exactly once");
                assert!(artifact, "{id}: artefact written");
                assert!(sqlite_markers.contains(&(id.clone(), 0, "forward".into())), "{id}: ledger marker");
                assert!(duck_markers.contains(&(id.clone(), 1, "forward".into())), "{id}: warehouse marker");
            }
            _ => {
                assert_eq!(sqlite_rows.get(id), None, "{id}: ledger row undone");
                assert_eq!(duck_rows.get(id), None, "{id}: warehouse row undone");
                assert!(!artifact, "{id}: no artefact");
                for (step, markers) in [(0, &sqlite_markers), (1, &duck_markers)] {
                    let forward = markers.contains(&(id.clone(), step, "forward".into()));
                    let compensated = markers.contains(&(id.clone(), step, "compensate".into()));
                    assert_eq!(forward, compensated, "{id}: step {step} forward marker without compensation");
                }
            }
        }
    }
    eprintln!("{rounds} rounds, {} acknowledged sagas, {} sagas in all", acked.len(), statuses.len());
}

fn count_sqlite(c: &rusqlite::Connection, sql: &str) -> BTreeMap<String, i64> {
    let mut stmt = c.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

fn count_duck(c: &duckdb::Connection, sql: &str) -> BTreeMap<String, i64> {
    let mut stmt = c.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

fn markers_sqlite(c: &rusqlite::Connection) -> BTreeSet<(String, i64, String)> {
    let mut stmt = c.prepare("SELECT saga_id, step, direction FROM sagalog_markers").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

fn markers_duck(c: &duckdb::Connection) -> BTreeSet<(String, i64, String)> {
    let mut stmt = c.prepare("SELECT saga_id, step, direction FROM sagalog_markers").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}
