//! Crafted data directories for the operator-toolkit tests: a SQLite ledger and a file tree
//! (no DuckDB, so the tests run in every build), journals written record by record as a
//! crashed executor leaves them, and participants committed behind the journal's back.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sagalog::catalog::Catalog;
use sagalog::engine::record::{Failed, Finished, Started, Submitted, Succeeded};
use sagalog::engine::{Outcome, Record, SagaDefinition, StepCall, Value};
use sagalog::journal::{Journal, Options, SyncPolicy};
use sagalog::participant::{self, Direction, StepKey};

/// Steps: 0 `record` (SQLite row), 1 `write` (a file), 2 `fragile` (SQLite; its compensation
/// always fails permanently, so a saga compensating it gets STUCK).
pub const CONFIG: &str = r#"
[journal]
sync = "always"

[executor]
breaker_failures = 1000
max_in_flight = 32

[index]
checkpoint_interval_ms = 200

[participants.ledger]
kind = "sqlite"
path = "p/ledger.sqlite"
init = ["CREATE TABLE IF NOT EXISTS executions (run_id TEXT PRIMARY KEY, rows INTEGER NOT NULL CHECK (rows >= 0))"]

[participants.files]
kind = "fs"
path = "p/files"

[actions.record]
participant = "ledger"
params = { run_id = "text", rows = "int" }
forward = { sql = "INSERT INTO executions (run_id, rows) VALUES (?1, ?2)", args = ["run_id", "rows"] }
compensate = { sql = "DELETE FROM executions WHERE run_id = ?1", args = ["run_id"] }
check = { sql = "SELECT count(*) FROM executions WHERE run_id = ?1", args = ["run_id"] }
retry = { max_attempts = 10, initial_backoff_ms = 5, max_backoff_ms = 50, jitter = 0.0 }
compensate_retry = { max_attempts = 10, initial_backoff_ms = 5, max_backoff_ms = 50, jitter = 0.0 }
timeout_ms = 30000

[actions.write]
participant = "files"
params = { run_id = "text", report = "text" }
forward = { put = "runs/{run_id}.json", contents = "report" }
compensate = { delete = "runs/{run_id}.json" }
retry = { max_attempts = 10, initial_backoff_ms = 5, max_backoff_ms = 50, jitter = 0.0 }
compensate_retry = { max_attempts = 10, initial_backoff_ms = 5, max_backoff_ms = 50, jitter = 0.0 }
timeout_ms = 30000

[actions.fragile]
participant = "ledger"
params = { run_id = "text" }
forward = { noop = true }
compensate = { sql = "DELETE FROM no_such_table WHERE run_id = ?1", args = ["run_id"] }
retry = { max_attempts = 1 }
compensate_retry = { max_attempts = 1 }
timeout_ms = 5000
"#;

pub fn catalog() -> Catalog {
    Catalog::parse(CONFIG).expect("test config")
}

/// A two-step saga (record, write); `rows < 0` makes step 0 fail permanently.
pub fn two_steps(id: &str, rows: i64) -> SagaDefinition {
    let text = |s: &str| Value::Text(s.to_owned());
    SagaDefinition {
        id: id.into(),
        steps: vec![
            StepCall {
                action: "record".into(),
                params: BTreeMap::from([("run_id".into(), text(id)), ("rows".into(), Value::Int(rows))]),
                from: Default::default(),
            },
            StepCall {
                action: "write".into(),
                params: BTreeMap::from([
                    ("run_id".into(), text(id)),
                    ("report".into(), text(&format!("{{\"rows\":{rows}}}"))),
                ]),
                from: Default::default(),
            },
        ],
    }
}

/// record, write, fragile.
pub fn three_steps(id: &str) -> SagaDefinition {
    let mut s = two_steps(id, 1);
    s.steps.push(StepCall {
        action: "fragile".into(),
        params: BTreeMap::from([("run_id".into(), Value::Text(id.into()))]),
        from: Default::default(),
    });
    s
}

pub fn submitted(def: &SagaDefinition, at_ms: u64) -> Record {
    let policies = catalog().validate(def).expect("valid saga");
    Record::SagaSubmitted(Submitted {
        saga: def.id.clone(),
        digest: def.digest(),
        steps: def.steps.clone(),
        policies,
        at_ms,
        actions: Default::default(),
        scope: None,
    })
}

pub fn started(id: &str, step: u32, direction: Direction, attempt: u32) -> Record {
    Record::StepStarted(Started {
        saga: id.into(),
        step,
        direction,
        attempt,
        at_ms: 1_000 + u64::from(step),
        deadline_ms: None,
    })
}

pub fn succeeded(id: &str, step: u32, direction: Direction, attempt: u32) -> Record {
    Record::StepSucceeded(Succeeded {
        saga: id.into(),
        step,
        direction,
        attempt,
        by_marker: false,
        at_ms: 2_000,
        outputs: Default::default(),
    })
}

pub fn failed(id: &str, step: u32, direction: Direction, attempt: u32, retryable: bool) -> Record {
    Record::StepFailed(Failed {
        saga: id.into(),
        step,
        direction,
        attempt,
        error: if retryable { "database is locked".into() } else { "CHECK constraint failed".into() },
        retryable,
        maybe_applied: retryable,
        at_ms: 3_000,
    })
}

pub fn finished(id: &str, outcome: Outcome) -> Record {
    Record::SagaFinished(Finished { saga: id.into(), outcome, at_ms: 4_000 })
}

/// A data directory with the test config as its `sagalog.toml`.
pub fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sagalog.toml"), CONFIG).expect("write config");
    dir
}

/// Appends `records` to the journal of `dir` (creating it), durably.
pub fn append(dir: &Path, records: &[Record]) {
    let options = Options { sync: SyncPolicy::Always, ..Options::default() };
    let opened = Journal::open_dir(dir, options).expect("open journal");
    for r in records {
        opened.journal.append_blocking(r.kind(), r.encode()).expect("append");
    }
    opened.journal.shutdown_blocking().expect("shutdown");
}

/// Commits `step` of `def` in `direction` in its participant (effect and marker), as a crashed
/// executor's call did before the crash.
pub fn commit(dir: &Path, def: &SagaDefinition, step: u32, direction: Direction) {
    let catalog = catalog();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let participants = participant::open_all(&catalog.config.participants, dir).expect("open participants");
        let (name, op) = catalog.operation(&def.steps[step as usize], direction).expect("operation");
        let key = StepKey { saga_id: def.id.clone(), step, direction, scope: None };
        participants[&name].apply(&key, 1, &op).await.expect("apply");
    });
}

/// Opens (and so initialises) every participant once, without applying anything.
pub fn init_participants(dir: &Path) {
    let catalog = catalog();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        participant::open_all(&catalog.config.participants, dir).expect("open participants");
    });
}

/// CRC32 and size of every file under `dir`, by relative path.
pub fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (u64, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(
                    path.strip_prefix(dir).unwrap().to_path_buf(),
                    (bytes.len() as u64, crc32fast::hash(&bytes)),
                );
            }
        }
    }
    out
}

pub fn sagalog(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagalog")).args(args).arg("--data-dir").arg(dir).output().expect("run sagalog")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Copies a whole directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Final statuses through a serve-style start (`sagalog debug settle`, which runs
/// `Node::start`): saga id → status.
pub fn settle(dir: &Path) -> BTreeMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["debug", "settle", "--timeout-secs", "60", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run settle");
    assert!(out.status.success(), "settle failed: {}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| match l.splitn(4, ' ').collect::<Vec<_>>().as_slice() {
            ["saga", id, status, _] => Some((id.to_string(), status.to_string())),
            _ => None,
        })
        .collect()
}

/// Ledger rows by run id.
pub fn ledger_rows(dir: &Path) -> BTreeMap<String, i64> {
    let path = dir.join("p/ledger.sqlite");
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT run_id, count(*) FROM executions GROUP BY run_id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// Artefact files by run id.
pub fn artefacts(dir: &Path) -> Vec<String> {
    let runs = dir.join("p/files/runs");
    let mut out: Vec<String> = match std::fs::read_dir(runs) {
        Ok(entries) => {
            entries.map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".json").to_owned()).collect()
        }
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}
