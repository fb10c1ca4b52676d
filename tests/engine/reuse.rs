//! Issue 10 A4: a saga id the index has forgotten may be used again, and the new saga is a new
//! incarnation: the markers its predecessor left do not vouch for its steps. Likewise two
//! instances (data directories) sharing one participant database never vouch for each other's
//! sagas. Before markers carried the incarnation's scope, both resubmissions were reported
//! COMPLETED with every step "applied by marker" and nothing done.

use std::path::Path;
use std::time::Duration;

use sagalog::engine::{SagaDefinition, Status, StepCall, Value};
use sagalog::executor::SubmitOutcome;
use sagalog::node::Node;

fn config(db: &Path) -> String {
    format!(
        r#"
[journal]
sync = "never"

[index]
checkpoint_interval_ms = 100

[participants.db]
kind = "sqlite"
path = "{}"
init = ["CREATE TABLE IF NOT EXISTS effects (saga TEXT NOT NULL, step INTEGER NOT NULL)"]

[actions.record]
participant = "db"
params = {{ saga = "text", step = "int" }}
forward = {{ sql = "INSERT INTO effects (saga, step) VALUES (?1, ?2)", args = ["saga", "step"] }}
compensate = {{ sql = "DELETE FROM effects WHERE saga = ?1 AND step = ?2", args = ["saga", "step"] }}
"#,
        db.display()
    )
}

fn saga(id: &str) -> SagaDefinition {
    let step = |n: i64| StepCall {
        action: "record".into(),
        params: [("saga".to_owned(), Value::Text(id.into())), ("step".to_owned(), Value::Int(n))].into(),
        from: Default::default(),
    };
    SagaDefinition { id: id.into(), steps: vec![step(0), step(1)] }
}

async fn start(dir: &Path, db: &Path) -> Node {
    let path = dir.join("sagalog.toml");
    std::fs::write(&path, config(db)).unwrap();
    Node::start(dir, Some(&path)).await.unwrap()
}

/// Submits `id` and waits until it is COMPLETED; answers how many of its steps were settled
/// "applied by marker" rather than applied.
async fn run(node: &Node, id: &str) -> usize {
    assert_eq!(node.executor.submit(saga(id)).await.unwrap(), SubmitOutcome::Accepted);
    let done = crate::engine_support::finished(&node.executor, id).await;
    assert_eq!(done.status, "COMPLETED", "{done:?}");
    done.steps.iter().filter(|s| s.by_marker).count()
}

fn effects(db: &Path, id: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM effects WHERE saga = ?1", [id], |r| r.get(0)).unwrap()
}

async fn archived(node: &Node, id: &str) {
    for _ in 0..200 {
        if node.executor.archived(id).unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{id} was not archived");
}

/// While the index knows the id, a resubmission is the same saga (idempotent: nothing runs
/// again). Once the index has forgotten it (retention), the id may be used again: the new
/// saga runs every step for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_saga_id_runs_again_as_a_new_saga() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let node = start(dir.path(), &db).await;
    assert_eq!(run(&node, "order-1").await, 0);
    assert_eq!(effects(&db, "order-1"), 2);
    archived(&node, "order-1").await;

    // Known: idempotent, nothing runs again.
    let again = node.executor.submit(saga("order-1")).await.unwrap();
    assert_eq!(again, SubmitOutcome::AlreadyExists(Status::Completed));
    assert_eq!(effects(&db, "order-1"), 2);

    // Forgotten (what retention does): a new incarnation, whose steps really run.
    assert_eq!(node.index.purge_finished_before(u64::MAX).unwrap(), 1);
    assert!(node.executor.archived("order-1").unwrap().is_none());
    assert_eq!(run(&node, "order-1").await, 0, "the old incarnation's markers vouched for the new saga's steps");
    assert_eq!(effects(&db, "order-1"), 4, "the new saga's effects were not applied");
}

/// Two data directories serving one participant database: the same saga id on each is two
/// sagas, each applied for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_database_never_vouch_for_each_other() {
    let (a, b, shared) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let db = shared.path().join("shared.sqlite");
    let mut node = start(a.path(), &db).await;
    assert_eq!(run(&node, "order-9").await, 0);
    node.shutdown().await.unwrap();
    drop(node);

    let mut node = start(b.path(), &db).await;
    assert_eq!(run(&node, "order-9").await, 0, "instance b's saga was settled by instance a's markers");
    assert_eq!(effects(&db, "order-9"), 4);
    let ids: Vec<String> =
        [a.path(), b.path()].iter().map(|d| std::fs::read_to_string(d.join("instance-id")).unwrap()).collect();
    assert_ne!(ids[0], ids[1], "each data directory has its own instance id");
    node.shutdown().await.unwrap();
}
