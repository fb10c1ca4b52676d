//! A harness for executor and recovery tests: a data directory with a journal, a catalog whose
//! actions run on one scripted in-memory participant, and an executor.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sagalog::catalog::Catalog;
use sagalog::engine::{SagaDefinition, StepCall, Value};
use sagalog::executor::{Executor, Snapshot};
use sagalog::journal::{Journal, Options, SyncPolicy};
use sagalog::participant::memory::Memory;
use sagalog::participant::{Direction, Participant};

pub const CONFIG: &str = r#"
[executor]
breaker_failures = 3
breaker_cooldown_ms = 300
breaker_successes = 1

[participants.mem]
kind = "memory"

[actions.act]
participant = "mem"
params = { n = "int" }
forward = { sql = "do", args = ["n"] }
compensate = { sql = "undo", args = ["n"] }
retry = { max_attempts = 4, initial_backoff_ms = 5, max_backoff_ms = 20, jitter = 0.0 }
compensate_retry = { max_attempts = 3, initial_backoff_ms = 5, max_backoff_ms = 20, jitter = 0.0 }
timeout_ms = 300
"#;

pub struct Harness {
    pub exec: Executor,
    pub mem: Memory,
    pub journal: Journal,
}

/// Opens the journal of `dir` and an executor over `mem` (which survives "restarts").
pub fn start(dir: &Path, mem: &Memory, config: &str) -> Harness {
    let options = Options { sync: SyncPolicy::Never, ..Options::default() };
    let journal = Journal::open_dir(dir, options).expect("open journal").journal;
    let catalog = Arc::new(Catalog::parse(config).expect("catalog"));
    let mut participants: BTreeMap<String, Arc<dyn Participant>> = BTreeMap::new();
    participants.insert("mem".into(), Arc::new(mem.clone()));
    let exec = Executor::new(journal.clone(), catalog, participants);
    Harness { exec, mem: mem.clone(), journal }
}

pub fn saga(id: &str, steps: usize) -> SagaDefinition {
    let steps = (0..steps)
        .map(|n| StepCall {
            action: "act".into(),
            params: BTreeMap::from([("n".to_string(), Value::Int(n as i64))]),
            from: Default::default(),
        })
        .collect();
    SagaDefinition { id: id.into(), steps }
}

/// Waits (bounded) until the saga is COMPLETED, COMPENSATED or STUCK.
pub async fn settled(exec: &Executor, id: &str) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(20), exec.wait_settled(id))
        .await
        .unwrap_or_else(|_| panic!("saga {id} did not settle: {:?}", exec.get(id).map(|s| s.status)))
        .expect("saga exists")
}

pub fn fwd(step: u32) -> (u32, Direction) {
    (step, Direction::Forward)
}

pub fn comp(step: u32) -> (u32, Direction) {
    (step, Direction::Compensate)
}

/// A finished saga as a test checks it, whether it is still held (watched) or already
/// archived in the index: with an index, a saga that finishes quickly can leave memory before
/// the test subscribes, so `watch` alone would race the archiver.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: String,
    pub reason: Option<String>,
    pub steps: Vec<FinishedStep>,
}

#[derive(Debug, Clone)]
pub struct FinishedStep {
    pub forward_attempts: u32,
    pub by_marker: bool,
    pub compensated: bool,
}

/// Waits (at most 20 s) until `id` is terminal or STUCK, held or archived.
pub async fn finished(exec: &Executor, id: &str) -> Finished {
    use sagalog::engine::Status;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if let Some(mut rx) = exec.watch(id) {
            let done = |s: &Snapshot| s.status.is_terminal() || s.status == Status::Stuck;
            if let Ok(Ok(snap)) = tokio::time::timeout(Duration::from_millis(200), rx.wait_for(done)).await {
                let s = snap.clone();
                return Finished {
                    status: s.status.as_str().to_owned(),
                    reason: s.saga.compensation_reason.clone(),
                    steps: s
                        .saga
                        .steps
                        .iter()
                        .map(|st| FinishedStep {
                            forward_attempts: st.forward.total_attempts,
                            by_marker: st.forward.by_marker,
                            compensated: st.compensate.done,
                        })
                        .collect(),
                };
            }
            continue; // still running, or it left memory while we waited: look again
        }
        if let Some(r) = exec.archived(id).expect("read the index") {
            return Finished {
                status: r.status.clone(),
                reason: r.compensation_reason.clone(),
                steps: r
                    .steps
                    .iter()
                    .map(|st| FinishedStep {
                        forward_attempts: st.forward_attempts,
                        by_marker: st.forward_by_marker,
                        compensated: st.compensated,
                    })
                    .collect(),
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("saga {id} did not finish in 20 s");
}
