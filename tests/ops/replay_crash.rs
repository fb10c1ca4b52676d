//! `sagalog replay` killed with SIGKILL at random moments and run again converges to the same
//! result as an uninterrupted serve-style start: every saga ends as designed, every effect
//! exists exactly once (or not at all), and the audit finds nothing to report.

use crate::ops_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ops_support::*;
use rand::{Rng, SeedableRng};
use sagalog::participant::Direction::Forward;

const SAGAS: usize = 1000;
const ROUNDS_MAX: usize = 8;

/// Replay killed at random points, rerun until it finishes: the same final states as a start
/// that was never interrupted, effects exactly once, and a clean audit.
#[test]
fn replay_killed_at_random_points_converges() {
    let seed: u64 = std::env::var("SAGALOG_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("replay crash test seed {seed} (set SAGALOG_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = data_dir();
    init_participants(dir.path());
    // Sagas journaled as submitted (every 5th designed to fail at step 0, so it compensates),
    // some with step 0 in doubt, committed or not.
    let mut records = Vec::new();
    let mut expected = std::collections::BTreeMap::new();
    for n in 0..SAGAS {
        let id = format!("s{n:03}");
        let rows = if n % 5 == 0 { -1 } else { n as i64 };
        let def = two_steps(&id, rows);
        records.push(submitted(&def, 10));
        if n % 7 == 3 {
            records.push(started(&id, 0, Forward, 1));
            if n % 2 == 0 && rows >= 0 {
                commit(dir.path(), &def, 0, Forward);
            }
        }
        expected.insert(id, if rows < 0 { "COMPENSATED" } else { "COMPLETED" });
    }
    append(dir.path(), &records);
    let reference = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), reference.path());

    let started_at = Instant::now();
    let mut kills = 0;
    for round in 0..ROUNDS_MAX {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sagalog"))
            .args(["replay", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let after = Duration::from_millis(rng.random_range(30..600));
        std::thread::sleep(after);
        match child.try_wait().unwrap() {
            Some(status) => {
                eprintln!("round {round}: replay finished by itself ({status}) before {after:?}");
                break;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                eprintln!("round {round}: killed after {after:?}");
            }
        }
    }
    assert!(kills >= 2, "the replay was killed only {kills} times: the test proves nothing (seed {seed})");
    let out = sagalog(&["replay", "--json"], dir.path());
    assert!(out.status.success(), "final replay: {} {}", stdout(&out), stderr(&out));
    eprintln!("{kills} kills, {:?}", started_at.elapsed());

    let statuses = settle(dir.path());
    let reference_statuses = settle(reference.path());
    assert_eq!(statuses.len(), SAGAS);
    for (id, want) in &expected {
        assert_eq!(statuses.get(id).map(String::as_str), Some(*want), "saga {id}");
    }
    assert_eq!(statuses, reference_statuses, "same end as an uninterrupted start");
    let rows = ledger_rows(dir.path());
    let files = artefacts(dir.path());
    for (id, want) in &expected {
        let completed = *want == "COMPLETED";
        assert_eq!(rows.get(id).copied(), completed.then_some(1), "{id}: ledger row exactly once or not at all");
        assert_eq!(files.contains(id), completed, "{id}: artefact");
    }
    assert_eq!(rows, ledger_rows(reference.path()));
    let audit = sagalog(&["audit"], dir.path());
    assert!(audit.status.success(), "audit after the crashes: {}", stdout(&audit));
}
