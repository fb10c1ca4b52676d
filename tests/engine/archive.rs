//! Archiving: finished sagas move to the sled index and leave memory, checkpoints let the
//! journal delete old segments, and status survives both the deletion and a restart.

use std::time::Duration;

use sagalog::engine::{SagaDefinition, Status, StepCall, Value};
use sagalog::executor::{Error, SubmitOutcome};
use sagalog::node::Node;

const CONFIG: &str = r#"
[journal]
sync = "never"
segment_bytes_max = 4096

[index]
checkpoint_interval_ms = 1000

[participants.mem]
kind = "memory"

[actions.act]
participant = "mem"
params = { n = "int" }
forward = { sql = "do", args = ["n"] }
compensate = { sql = "undo", args = ["n"] }
"#;

fn saga(id: &str, steps: i64) -> SagaDefinition {
    let steps = (0..steps)
        .map(|n| StepCall { action: "act".into(), params: [("n".to_string(), Value::Int(n))].into() })
        .collect();
    SagaDefinition { id: id.into(), steps }
}

fn segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "wal"))
        .count()
}

/// Finished sagas are served from the index after they leave memory; the journal shrinks once
/// a checkpoint covers them; after a restart (replaying from the checkpoint) their status,
/// idempotent resubmission and conflict detection all still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_are_archived_and_the_journal_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sagalog.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut node = Node::start(dir.path(), Some(&config)).await.unwrap();
    for i in 0..120 {
        node.executor.submit(saga(&format!("a{i}"), 3)).await.unwrap();
    }
    for i in 0..120 {
        let id = format!("a{i}");
        if let Some(mut rx) = node.executor.watch(&id) {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.status.is_terminal())).await;
        }
    }
    let peak = segments(dir.path());
    assert!(peak > 3, "the test needs several segments, got {peak}");
    let mut shrunk = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if segments(dir.path()) < peak {
            shrunk = true;
            break;
        }
    }
    assert!(shrunk, "a checkpoint let the journal delete segments");
    assert!(node.executor.list().is_empty(), "finished sagas left memory");
    let archived = node.executor.archived("a7").unwrap().expect("served from the index");
    assert_eq!(archived.status, "COMPLETED");
    node.shutdown().await.unwrap();
    drop(node);

    let mut node = Node::start(dir.path(), Some(&config)).await.unwrap();
    assert_eq!(node.executor.archived("a0").unwrap().map(|r| r.status), Some("COMPLETED".into()));
    assert_eq!(node.executor.submit(saga("a0", 3)).await.unwrap(), SubmitOutcome::AlreadyExists(Status::Completed));
    assert!(matches!(node.executor.submit(saga("a0", 2)).await, Err(Error::Conflict { .. })));
    assert!(matches!(node.executor.cancel("a0").await, Err(Error::WrongState { .. })));
    node.shutdown().await.unwrap();
}
