//! Guarded steps (issue 11 item 2): a SQL operation may declare how many rows it must affect
//! (`rows = 1`, `rows = "1+"`). Fewer is a business rule failing: a permanent failure, rolled
//! back with its marker, and the saga compensates its completed steps. The issue's example:
//! debit an account only if the balance covers it.

use std::time::Duration;

use sagalog::engine::{SagaDefinition, Status, StepCall, Value};
use sagalog::node::Node;

const CONFIG: &str = r#"
[journal]
sync = "never"

[participants.mem]
kind = "memory"

[participants.ledger]
kind = "sqlite"
path = "ledger.sqlite"
init = [
  "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)",
  "INSERT OR IGNORE INTO accounts VALUES ('alice', 100)",
]

[actions.reserve]
participant = "mem"
params = { n = "int" }
forward = { sql = "do", args = ["n"] }
compensate = { sql = "undo", args = ["n"] }

[actions.debit]
participant = "ledger"
params = { account = "text", amount = "int" }
forward = { sql = "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2 AND balance >= ?1", args = ["amount", "account"], rows = 1 }
compensate = { sql = "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2", args = ["amount", "account"], rows = 1 }
"#;

fn order(id: &str, amount: i64) -> SagaDefinition {
    SagaDefinition {
        id: id.into(),
        steps: vec![
            StepCall { action: "reserve".into(), params: [("n".to_string(), Value::Int(1))].into() },
            StepCall {
                action: "debit".into(),
                params: [
                    ("account".to_string(), Value::Text("alice".into())),
                    ("amount".to_string(), Value::Int(amount)),
                ]
                .into(),
            },
        ],
    }
}

fn balance(dir: &std::path::Path) -> i64 {
    let db = rusqlite::Connection::open(dir.join("ledger.sqlite")).unwrap();
    db.query_row("SELECT balance FROM accounts WHERE id = 'alice'", [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_the_balance_does_not_cover_fails_the_guard_and_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sagalog.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut node = Node::start(dir.path(), Some(&config)).await.unwrap();
    let settle = |id: &'static str| {
        let exec = node.executor.clone();
        async move {
            let mut rx = exec.watch(id).unwrap();
            tokio::time::timeout(
                Duration::from_secs(20),
                rx.wait_for(|s| s.status.is_terminal() || s.status == Status::Stuck),
            )
            .await
            .unwrap()
            .unwrap()
            .clone()
        }
    };
    node.executor.submit(order("covered", 30)).await.unwrap();
    assert_eq!(settle("covered").await.status, Status::Completed);
    assert_eq!(balance(dir.path()), 70);

    node.executor.submit(order("overdrawn", 500)).await.unwrap();
    let snap = settle("overdrawn").await;
    assert_eq!(snap.status, Status::Compensated);
    let reason = snap.saga.compensation_reason.unwrap_or_default();
    assert!(reason.contains("guard failed: expected exactly 1 rows affected, got 0"), "{reason}");
    assert_eq!(snap.saga.steps[1].forward.total_attempts, 1, "a failed guard is permanent: not retried");
    assert!(snap.saga.steps[0].compensate.done, "the reservation was compensated");
    assert_eq!(balance(dir.path()), 70, "nothing was debited");
    node.shutdown().await.unwrap();
}
