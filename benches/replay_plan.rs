//! `sagalog replay --dry-run` on a large log: target "a 1 GiB log with 100,000 unfinished
//! sagas: under 5 s, under 1 GiB of memory".
//!
//! The data directory is written once (and kept for later runs, see below): a journal of
//! about 1 GiB where finished sagas (two steps, a ~700-byte report parameter, six records
//! each) are interleaved with 100,000 unfinished ones, a third of them only submitted, a
//! third with step 0 (SQLite) in doubt, a third with step 1 (files) in doubt; half of the
//! in-doubt steps have their marker in the participant. Written by four appender threads under
//! `SyncPolicy::Never` and synced at shutdown.
//!
//! Each round runs the real binary, `sagalog replay --dry-run --json --data-dir D`, as a
//! fresh process with its output to `/dev/null`, and measures its wall time and its peak RSS
//! (`/usr/bin/time -f %M`, the kernel's `ru_maxrss` of the child; without `/usr/bin/time`,
//! `VmHWM` polled from `/proc/<pid>/status`, a lower bound). The journal is in the page cache
//! after the first round: warm figures.
//!
//! Knobs: `SAGALOG_BENCH_REPLAY_MIB` (journal size, default 1024), `SAGALOG_BENCH_REPLAY_UNFINISHED`
//! (default 100000), `SAGALOG_BENCH_DIR` (where the data directory is kept, default the system
//! temp dir; delete it to regenerate). Without `--bench` (as under `cargo test --benches`) it
//! runs once on a 4 MiB log with 1,000 unfinished sagas.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sagalog::catalog::Catalog;
use sagalog::engine::record::{Finished, Started, Submitted, Succeeded};
use sagalog::engine::{Outcome, Record, SagaDefinition, StepCall, Value};
use sagalog::journal::{Journal, Options, SyncPolicy};
use sagalog::participant::Direction;

const CONFIG: &str = r#"
[participants.ledger]
kind = "sqlite"
path = "p/ledger.sqlite"

[participants.files]
kind = "fs"
path = "p/files"

[actions.record]
participant = "ledger"
params = { run_id = "text", rows = "int" }
forward = { sql = "INSERT INTO executions (run_id, rows) VALUES (?1, ?2)", args = ["run_id", "rows"] }
compensate = { sql = "DELETE FROM executions WHERE run_id = ?1", args = ["run_id"] }

[actions.write]
participant = "files"
params = { run_id = "text", report = "text" }
forward = { put = "runs/{run_id}.json", contents = "report" }
compensate = { delete = "runs/{run_id}.json" }
"#;

const ROUNDS: usize = 3;
const APPENDERS: usize = 4;

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let knob = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (mib, unfinished) = if benchmarking {
        (knob("SAGALOG_BENCH_REPLAY_MIB", 1024), knob("SAGALOG_BENCH_REPLAY_UNFINISHED", 100_000))
    } else {
        (4, 1_000)
    };
    let base = std::env::var_os("SAGALOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("sagalog-bench-replay-{mib}mib-{unfinished}"));
    if !dir.join("READY").exists() {
        let started = Instant::now();
        let _ = std::fs::remove_dir_all(&dir);
        generate(&dir, mib * 1024 * 1024, unfinished);
        std::fs::write(dir.join("READY"), b"").expect("mark the data directory ready");
        eprintln!("replay_plan: generated {} in {:.1} s", dir.display(), started.elapsed().as_secs_f64());
    }
    let (segments, bytes) = journal_size(&dir);
    eprintln!(
        "replay_plan: {} with a {:.1} MiB journal in {segments} segments, {unfinished} unfinished sagas",
        dir.display(),
        bytes as f64 / (1024.0 * 1024.0)
    );
    let rounds = if benchmarking { ROUNDS } else { 1 };
    for round in 1..=rounds {
        let (elapsed, peak_kib, how) = measure(&dir);
        eprintln!(
            "replay_plan round {round}: dry-run {:.3} s, peak RSS {:.1} MiB ({how})",
            elapsed.as_secs_f64(),
            peak_kib as f64 / 1024.0
        );
    }
    if !benchmarking {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Runs one dry run; returns its wall time, peak RSS in KiB and how the peak was measured.
fn measure(dir: &Path) -> (Duration, u64, &'static str) {
    let bin = env!("CARGO_BIN_EXE_sagalog");
    let time = Path::new("/usr/bin/time");
    let started = Instant::now();
    if time.exists() {
        let out = Command::new(time)
            .args(["-f", "%M"])
            .arg(bin)
            .args(["replay", "--dry-run", "--json", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .output()
            .expect("run sagalog under /usr/bin/time");
        let elapsed = started.elapsed();
        assert!(out.status.success(), "dry run failed: {}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let peak = stderr.lines().last().and_then(|l| l.trim().parse().ok()).expect("/usr/bin/time prints %M");
        return (elapsed, peak, "ru_maxrss via /usr/bin/time");
    }
    let mut child = Command::new(bin)
        .args(["replay", "--dry-run", "--json", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("run sagalog");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait for sagalog") {
            assert!(status.success(), "dry run failed: {status}");
            return (started.elapsed(), peak, "VmHWM polled every 2 ms (a lower bound)");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn journal_size(dir: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir.join("journal")).expect("journal dir") {
        let entry = entry.expect("entry");
        n += 1;
        bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
    }
    (n, bytes)
}

fn definition(id: &str, report_bytes: usize) -> SagaDefinition {
    let text = |s: &str| Value::Text(s.to_owned());
    let report = format!("{{\"run\":\"{id}\",\"notes\":\"{}\"}}", "x".repeat(report_bytes));
    SagaDefinition {
        id: id.to_owned(),
        steps: vec![
            StepCall {
                action: "record".into(),
                params: BTreeMap::from([("run_id".into(), text(id)), ("rows".into(), Value::Int(7))]),
                from: Default::default(),
            },
            StepCall {
                action: "write".into(),
                params: BTreeMap::from([("run_id".into(), text(id)), ("report".into(), Value::Text(report))]),
                from: Default::default(),
            },
        ],
    }
}

/// The records of one saga: finished (`kind` = None) or unfinished of kind 0, 1 or 2.
fn saga_records(catalog: &Catalog, id: &str, kind: Option<u64>, at_ms: u64) -> Vec<Record> {
    let def = definition(id, 640);
    let policies = catalog.validate(&def).expect("valid bench saga");
    let saga = id.to_owned();
    let mut out = vec![Record::SagaSubmitted(Submitted {
        saga: saga.clone(),
        digest: def.digest(),
        steps: def.steps,
        policies,
        at_ms,
        actions: Default::default(),
        scope: None,
    })];
    let start = |step| {
        Record::StepStarted(Started {
            saga: saga.clone(),
            step,
            direction: Direction::Forward,
            attempt: 1,
            at_ms,
            deadline_ms: None,
        })
    };
    let done = |step| {
        Record::StepSucceeded(Succeeded {
            saga: saga.clone(),
            step,
            direction: Direction::Forward,
            attempt: 1,
            by_marker: false,
            at_ms,
            outputs: Default::default(),
        })
    };
    match kind {
        None => {
            out.extend([start(0), done(0), start(1), done(1)]);
            out.push(Record::SagaFinished(Finished { saga: saga.clone(), outcome: Outcome::Completed, at_ms }));
        }
        Some(0) => {}
        Some(1) => out.push(start(0)),
        Some(_) => out.extend([start(0), done(0), start(1)]),
    }
    out
}

fn generate(dir: &Path, target_bytes: u64, unfinished: u64) {
    std::fs::create_dir_all(dir.join("p/files")).expect("create the data directory");
    std::fs::write(dir.join("sagalog.toml"), CONFIG).expect("write the config");
    let catalog = Arc::new(Catalog::parse(CONFIG).expect("the bench config is valid"));
    let bytes_of = |records: &[Record]| records.iter().map(|r| r.encode().len() as u64 + 24).sum::<u64>();
    let finished_bytes = bytes_of(&saga_records(&catalog, "f00000000", None, 1));
    let unfinished_bytes: u64 =
        (0..3).map(|k| bytes_of(&saga_records(&catalog, "u00000000", Some(k), 1))).sum::<u64>() / 3;
    let finished = target_bytes.saturating_sub(unfinished * unfinished_bytes) / finished_bytes;
    let total = finished + unfinished;
    // Unfinished sagas are spread evenly through the log.
    let every = (total / unfinished.max(1)).max(1);
    let options = Options { sync: SyncPolicy::Never, ..Options::default() };
    let journal = Journal::open_dir(dir, options).expect("open the journal").journal;
    std::thread::scope(|scope| {
        for t in 0..APPENDERS as u64 {
            let (journal, catalog) = (journal.clone(), catalog.clone());
            scope.spawn(move || {
                let mut n = t;
                while n < total {
                    let records = if n % every == 0 && n / every < unfinished {
                        let u = n / every;
                        saga_records(&catalog, &format!("u{u:08}"), Some(u % 3), 1_700_000_000_000 + n)
                    } else {
                        saga_records(&catalog, &format!("f{n:08}"), None, 1_700_000_000_000 + n)
                    };
                    for r in records {
                        journal.append_blocking(r.kind(), r.encode()).expect("append");
                    }
                    n += APPENDERS as u64;
                }
            });
        }
    });
    journal.shutdown_blocking().expect("sync and close the journal");
    // Markers for half of the in-doubt steps, written straight into the participants.
    let ledger = rusqlite::Connection::open(dir.join("p/ledger.sqlite")).expect("open the ledger");
    ledger
        .execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE executions (run_id TEXT PRIMARY KEY, rows INTEGER NOT NULL);
             CREATE TABLE sagalog_markers (saga_id TEXT NOT NULL, step INTEGER NOT NULL, direction TEXT NOT NULL,
               applied_at_ms INTEGER NOT NULL, PRIMARY KEY (saga_id, step, direction));
             BEGIN;",
        )
        .expect("create the ledger");
    for u in (0..unfinished).filter(|u| u % 3 != 0) {
        let id = format!("u{u:08}");
        let committed = u % 2 == 0;
        if u % 3 == 1 && committed || u % 3 == 2 {
            ledger.execute("INSERT INTO sagalog_markers VALUES (?1, 0, 'forward', 1)", [&id]).expect("insert a marker");
        }
        if u % 3 == 2 && committed {
            let marker_dir = dir.join("p/files/.sagalog-markers").join(&id);
            std::fs::create_dir_all(&marker_dir).expect("create a marker directory");
            std::fs::write(marker_dir.join("1.forward"), b"marker\n").expect("write a marker");
        }
    }
    ledger.execute_batch("COMMIT").expect("commit the markers");
    drop(ledger);
}
