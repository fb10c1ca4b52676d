//! Recovery time: how long a restart takes to rebuild, and to serve again, after a crash that
//! left 100,000 sagas unfinished, and how much memory the rebuild needs.
//!
//! The journal is written once, as a crashed executor would have left it: for every saga its
//! `SagaSubmitted` (3 `noop` steps) and a forward `StepStarted` of step 0 with no outcome, so
//! every saga is unfinished and has one step in doubt. Written by 64 concurrent appenders under
//! `SyncPolicy::Never` (the content is what matters, not how it got there) and synced at
//! shutdown. Then, in rounds, each in a fresh child process of the bench (a restart is a fresh
//! process: its page faults and its peak memory only show there):
//! - `rebuild`: `sagalog::recovery::rebuild(journal_dir, 1)`, the pure replay (read, verify,
//!   decode, apply), with the process's peak RSS (`VmHWM`, reset through `/proc/self/clear_refs`
//!   just before) read right after it returns;
//! - `serving`: the path of a restart up to the point where the executor accepts work again, on
//!   a fresh copy of the journal (copied outside the timed region): `Journal::open_dir` (which
//!   scans the log for a torn tail), `Index::open`, `Executor::with_index`, and
//!   `recovery::recover(&executor, 1)` returning. The executor then settles the in-doubt steps
//!   in the background; that work is not timed, and the round ends by shutting it down.
//!
//! The journal was just written, so it is in the page cache: these are CPU figures, not cold
//! disk reads. Plain timed runs printed to stderr (no criterion: each figure is one long run).
//! Knobs: `SAGALOG_BENCH_RECOVERY_SAGAS` (default 100000), `SAGALOG_BENCH_DIR` (scratch disk).
//! Without `--bench` (as under `cargo test --benches`) it runs once with 1,000 sagas.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sagalog::catalog::Catalog;
use sagalog::engine::record::{Started, Submitted};
use sagalog::engine::{Record, SagaDefinition, StepCall};
use sagalog::executor::Executor;
use sagalog::index::Index;
use sagalog::journal::{Journal, Options, SyncPolicy};
use sagalog::participant::memory::Memory;
use sagalog::participant::{Direction, Participant};
use sagalog::recovery;
use tempfile::TempDir;
use tokio::runtime::Runtime;

const CONFIG: &str = r#"
[participants.mem]
kind = "memory"

[actions.noop]
participant = "mem"
forward = { noop = true }
compensate = { noop = true }
"#;

const STEPS: usize = 3;
const APPENDERS: u64 = 64;
const ROUNDS: usize = 3;
/// Set in a child process: which round it measures (`rebuild:<n>` or `serving:<n>`).
const CHILD_ROUND: &str = "SAGALOG_BENCH_RECOVERY_ROUND";
/// Set in a child process: the data directory holding the crashed journal.
const CHILD_SOURCE: &str = "SAGALOG_BENCH_RECOVERY_SOURCE";

fn main() {
    // A child process measures one round: a restart is a fresh process, and only a fresh
    // process shows its page faults and its true peak memory.
    if let Some(round) = std::env::var_os(CHILD_ROUND) {
        let round = round.to_string_lossy();
        let source = PathBuf::from(std::env::var_os(CHILD_SOURCE).expect("the parent names the journal"));
        let sagas = sagas(true);
        match round.split_once(':') {
            Some(("rebuild", n)) => rebuild_round(n, &source.join("journal"), sagas),
            Some(("serving", n)) => serving_round(n, &source, sagas),
            _ => panic!("unknown round {round:?}"),
        }
        return;
    }
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let sagas = sagas(benchmarking);
    let rounds = if benchmarking { ROUNDS } else { 1 };
    let source = scratch();
    let rt = runtime();
    let built = Instant::now();
    rt.block_on(crashed_journal(source.path(), sagas));
    let (segments, bytes) = dir_size(&source.path().join("journal"));
    eprintln!(
        "recovery: {sagas} unfinished sagas, {} records in {segments} segments, {:.1} MiB, written in {:.1} s \
         (scratch under {})",
        2 * sagas,
        bytes as f64 / (1024.0 * 1024.0),
        built.elapsed().as_secs_f64(),
        scratch_base().display(),
    );
    drop(rt);
    for kind in ["rebuild", "serving"] {
        for round in 1..=rounds {
            let status = std::process::Command::new(std::env::current_exe().expect("the bench's own path"))
                .env(CHILD_ROUND, format!("{kind}:{round}"))
                .env(CHILD_SOURCE, source.path())
                .env("SAGALOG_BENCH_RECOVERY_SAGAS", sagas.to_string())
                .status()
                .expect("run a measuring child process");
            assert!(status.success(), "the {kind} round {round} failed: {status}");
        }
    }
}

/// The number of sagas to recover: `SAGALOG_BENCH_RECOVERY_SAGAS`, else 100,000 (1,000 when
/// not benchmarking).
fn sagas(benchmarking: bool) -> u64 {
    match std::env::var("SAGALOG_BENCH_RECOVERY_SAGAS").ok().and_then(|s| s.parse().ok()) {
        Some(n) => n,
        None if benchmarking => 100_000,
        None => 1_000,
    }
}

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::parse(CONFIG).expect("the bench config is valid"))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("build the tokio runtime")
}

/// Writes `sagas` sagas, each left with its first step started and no outcome.
async fn crashed_journal(root: &Path, sagas: u64) {
    let catalog = catalog();
    let options = Options { sync: SyncPolicy::Never, ..Options::default() };
    let journal = Journal::open_dir(root, options).expect("open the journal").journal;
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|appender| {
            let journal = journal.clone();
            let policies = catalog.validate(&saga("x")).expect("the bench saga is valid");
            tokio::spawn(async move {
                for n in (appender..sagas).step_by(APPENDERS as usize) {
                    let definition = saga(&format!("saga-{n:07}"));
                    let submitted = Record::SagaSubmitted(Submitted {
                        saga: definition.id.clone(),
                        digest: definition.digest(),
                        steps: definition.steps,
                        policies: policies.clone(),
                        at_ms: 1,
                        actions: Default::default(),
                        scope: None,
                    });
                    let started = Record::StepStarted(Started {
                        saga: definition.id,
                        step: 0,
                        direction: Direction::Forward,
                        attempt: 1,
                        at_ms: 2,
                        deadline_ms: None,
                    });
                    for record in [submitted, started] {
                        journal.append(record.kind(), record.encode()).await.expect("append");
                    }
                }
            })
        })
        .collect();
    for appender in appenders {
        appender.await.expect("an appender panicked");
    }
    journal.shutdown().await.expect("shut the journal down");
}

fn saga(id: &str) -> SagaDefinition {
    let steps = (0..STEPS)
        .map(|_| StepCall { action: "noop".into(), params: BTreeMap::new(), from: Default::default() })
        .collect();
    SagaDefinition { id: id.to_owned(), steps }
}

/// Times the pure replay and reads the peak memory it needed.
fn rebuild_round(round: &str, journal_dir: &Path, sagas: u64) {
    let before = reset_peak();
    let start = Instant::now();
    let rebuilt = recovery::rebuild(journal_dir, 1).expect("rebuild");
    let elapsed = start.elapsed();
    let (hwm, rss) = (status_kb("VmHWM"), status_kb("VmRSS"));
    let unfinished = rebuilt.sagas.values().filter(|s| !s.is_finished()).count();
    assert_eq!(unfinished as u64, sagas, "every saga is rebuilt unfinished");
    eprintln!(
        "rebuild round {round}: {:.3} s for {} records, {unfinished} unfinished sagas ({:.0} records/s); \
         VmRSS before {before} kB, VmHWM after {hwm} kB (+{} kB), VmRSS after {rss} kB",
        elapsed.as_secs_f64(),
        rebuilt.records,
        rebuilt.records as f64 / elapsed.as_secs_f64(),
        hwm.saturating_sub(before),
    );
}

/// Times a restart up to `recover` returning, on a fresh copy of the crashed journal.
fn serving_round(round: &str, source: &Path, sagas: u64) {
    let catalog = catalog();
    let dir = scratch();
    copy_dir(&source.join("journal"), &dir.path().join("journal"));
    let rt = runtime();
    let before = reset_peak();
    let (timings, report, journal) = rt.block_on(async {
        let start = Instant::now();
        let options = Options { sync: SyncPolicy::Always, ..Options::default() };
        let journal = Journal::open_dir(dir.path(), options).expect("open the journal").journal;
        let opened = start.elapsed();
        let index = Index::open(dir.path().join("index")).expect("open the index");
        let participant: Arc<dyn Participant> = Arc::new(Memory::new("mem"));
        let participants = BTreeMap::from([("mem".to_owned(), participant)]);
        let exec = Executor::with_index(journal.clone(), catalog.clone(), participants, Some(index));
        let created = start.elapsed();
        let report = recovery::recover(&exec, 1).await.expect("recover");
        let serving = start.elapsed();
        ([opened, created - opened, report.duration, serving - created - report.duration, serving], report, journal)
    });
    let hwm = status_kb("VmHWM");
    assert_eq!(report.unfinished as u64, sagas, "every saga is resumed");
    let [open, create, recover, adopt, total] = timings.map(|t| t.as_secs_f64());
    eprintln!(
        "serving round {round}: {total:.3} s to serving again = journal open {open:.3} + index open and executor \
         {create:.3} + recover's replay and checkpoint record {recover:.3} + handing {} sagas to the executor \
         {adopt:.3}; {} in doubt; VmRSS before {before} kB, VmHWM after {hwm} kB",
        report.unfinished, report.in_doubt,
    );
    // Stop the background resolution: appends fail once the journal is shut down, and the
    // runtime drops whatever tasks are left.
    let _ = rt.block_on(journal.shutdown());
    rt.shutdown_timeout(Duration::from_secs(5));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's journal directory");
    for entry in std::fs::read_dir(from).expect("list the journal") {
        let path = entry.expect("read the journal directory").path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().expect("a file name"))).expect("copy a segment");
        }
    }
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS and returns that RSS in kB.
fn reset_peak() -> u64 {
    // Writing "5" to clear_refs resets the peak RSS (Linux 4.0+); where that is not possible the
    // figures printed are peaks since the start of the process, which only overstates them.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kb("VmRSS")
}

/// A `kB` line of `/proc/self/status` (0 where there is no such file).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Files and bytes directly in `dir`.
fn dir_size(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

fn scratch_base() -> PathBuf {
    std::env::var_os("SAGALOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A fresh directory that is removed (with everything written into it) when dropped.
fn scratch() -> TempDir {
    tempfile::Builder::new().prefix("sagalog-bench-").tempdir_in(scratch_base()).expect("create a scratch directory")
}
