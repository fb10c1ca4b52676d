//! Step outputs (issue 11 item 1): a forward step's statement returns a row; its declared
//! `returns` are journaled with the step's success and stored with its marker; a later step
//! takes them as parameters (`from = "steps.N.name"`) and the step's own compensation as
//! `output.name`. After a crash between the participant's commit and the journal record, the
//! step is settled by its marker and the outputs come back from the marker: the later step
//! and the compensation receive the committed value.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sagalog::catalog::Catalog;
use sagalog::engine::record::{Started, Submitted};
use sagalog::engine::{Direction, Record, SagaDefinition, Scope, Status, StepCall, StepKey, Value};
use sagalog::executor::Executor;
use sagalog::journal::{Journal, Options, SyncPolicy};
use sagalog::participant::Participant;
use sagalog::participant::sqlite::Sqlite;

const CONFIG: &str = r#"
[journal]
sync = "never"

[participants.ledger]
kind = "sqlite"
path = "ledger.sqlite"

[actions.record_execution]
participant = "ledger"
params = { job = "text" }
returns = { execution_id = "int", job = "text" }
forward = { sql = "INSERT INTO executions (job) VALUES (?1) RETURNING id AS execution_id, job", args = ["job"] }
compensate = { sql = "DELETE FROM executions WHERE id = ?1", args = ["output.execution_id"], rows = 1 }

[actions.store_result]
participant = "ledger"
params = { execution_id = "int", rows = "int" }
forward = { sql = "INSERT INTO results (execution_id, rows) VALUES (?1, ?2)", args = ["execution_id", "rows"] }
compensate = { sql = "DELETE FROM results WHERE execution_id = ?1", args = ["execution_id"] }
"#;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS executions (id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS results (execution_id INTEGER NOT NULL, rows INTEGER NOT NULL CHECK (rows >= 0));";

/// Record an execution, then store a result under its id; `rows < 0` fails the second step
/// for good, so the first is compensated by the id it returned.
fn job(id: &str, rows: i64) -> SagaDefinition {
    let first = StepCall {
        action: "record_execution".into(),
        params: BTreeMap::from([("job".into(), Value::Text(format!("job-{id}")))]),
        from: BTreeMap::new(),
    };
    let second = StepCall {
        action: "store_result".into(),
        params: BTreeMap::from([("rows".into(), Value::Int(rows))]),
        from: BTreeMap::from([("execution_id".into(), "steps.0.execution_id".into())]),
    };
    SagaDefinition { id: id.into(), steps: vec![first, second] }
}

fn ledger(dir: &Path) -> Arc<Sqlite> {
    let sqlite = Sqlite::open("ledger", dir.join("ledger.sqlite"), 2).unwrap();
    rusqlite::Connection::open(dir.join("ledger.sqlite")).unwrap().execute_batch(SCHEMA).unwrap();
    Arc::new(sqlite)
}

fn executor(dir: &Path, ledger: Arc<Sqlite>) -> Executor {
    let journal = Journal::open_dir(dir.join("journal"), Options { sync: SyncPolicy::Never, ..Options::default() })
        .unwrap()
        .journal;
    let participants: BTreeMap<String, Arc<dyn Participant>> = BTreeMap::from([("ledger".into(), ledger as _)]);
    Executor::new(journal, Arc::new(Catalog::parse(CONFIG).unwrap()), participants)
}

async fn settled(exec: &Executor, id: &str) -> sagalog::executor::Snapshot {
    let mut rx = exec.watch(id).unwrap();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| s.status.is_terminal() || s.status == Status::Stuck))
        .await
        .unwrap()
        .unwrap()
        .clone()
}

fn rows(dir: &Path, sql: &str) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(dir.join("ledger.sqlite")).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// The id the database chose flows to the next step, is shown with the step, and the
/// compensation deletes exactly that row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_flows_to_the_next_step_and_to_the_compensation() {
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(dir.path(), ledger(dir.path()));
    exec.submit(job("a", 5)).await.unwrap();
    let snap = settled(&exec, "a").await;
    assert_eq!(snap.status, Status::Completed, "{:?}", snap.saga);
    let outputs = &snap.saga.steps[0].forward.outputs;
    assert_eq!(outputs.get("job"), Some(&Value::Text("job-a".into())));
    let Some(Value::Int(id)) = outputs.get("execution_id").cloned() else { panic!("no execution_id: {outputs:?}") };
    assert_eq!(rows(dir.path(), "SELECT execution_id, CAST(rows AS TEXT) FROM results"), vec![(id, "5".into())]);

    exec.submit(job("b", -1)).await.unwrap();
    let snap = settled(&exec, "b").await;
    assert_eq!(snap.status, Status::Compensated, "{:?}", snap.saga);
    assert!(snap.saga.steps[0].compensate.done, "the execution was compensated by its id");
    assert_eq!(
        rows(dir.path(), "SELECT id, job FROM executions"),
        vec![(id, "job-a".into())],
        "b's row deleted, a's kept"
    );
}

/// A crash after the participant committed step 0 (marker and outputs included) and before
/// its outcome reached the journal: recovery settles the step by its marker, recovers the
/// committed outputs from it, and step 1 runs with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_of_a_step_settled_by_its_marker_come_from_the_marker() {
    let dir = tempfile::tempdir().unwrap();
    let def = job("crashed", 7);
    let catalog = Catalog::parse(CONFIG).unwrap();
    let scope = Scope::draw(&Scope::draw_instance());
    let records = [
        Record::SagaSubmitted(Submitted {
            saga: def.id.clone(),
            digest: def.digest(),
            steps: def.steps.clone(),
            policies: catalog.validate(&def).unwrap(),
            at_ms: 1,
            actions: catalog.resolved_actions(&def),
            scope: Some(scope.clone()),
        }),
        Record::StepStarted(Started {
            saga: def.id.clone(),
            step: 0,
            direction: Direction::Forward,
            attempt: 1,
            at_ms: 2,
            deadline_ms: None,
        }),
    ];
    let opened =
        Journal::open_dir(dir.path().join("journal"), Options { sync: SyncPolicy::Never, ..Options::default() })
            .unwrap();
    for r in &records {
        opened.journal.append(r.kind(), r.encode()).await.unwrap();
    }
    opened.journal.shutdown().await.unwrap();
    drop(opened);
    // The crashed process's apply: committed with its marker and outputs, never journaled.
    let before_crash = ledger(dir.path());
    let (_, op) =
        sagalog::catalog::bind(&catalog.config.actions["record_execution"], &def.steps[0], Direction::Forward).unwrap();
    let key = StepKey::new("crashed", 0, Direction::Forward).scoped(Some(scope));
    let (_, committed) = before_crash.apply_with_outputs(&key, 1, &op).await.unwrap();
    assert!(committed.contains_key("execution_id"), "{committed:?}");
    drop(before_crash);

    let exec = executor(dir.path(), Arc::new(Sqlite::open("ledger", dir.path().join("ledger.sqlite"), 2).unwrap()));
    sagalog::recovery::recover(&exec, 1).await.unwrap();
    let snap = settled(&exec, "crashed").await;
    assert_eq!(snap.status, Status::Completed, "{:?}", snap.saga);
    assert!(snap.saga.steps[0].forward.by_marker, "settled by its marker: {:?}", snap.saga.steps[0]);
    assert_eq!(snap.saga.steps[0].forward.outputs, committed, "the outputs recovered are the ones committed");
    let Some(Value::Int(id)) = committed.get("execution_id").cloned() else { unreachable!() };
    assert_eq!(rows(dir.path(), "SELECT execution_id, CAST(rows AS TEXT) FROM results"), vec![(id, "7".into())]);
    assert_eq!(rows(dir.path(), "SELECT id, job FROM executions").len(), 1, "step 0 was not run again");
}
