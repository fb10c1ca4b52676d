//! Guarded steps (issue 11 item 2): a SQL operation may declare how many rows it must affect
//! (`rows = 1`, `rows = "1+"`). Fewer is a business rule failing: a permanent failure, rolled
//! back with its marker, and the saga compensates its completed steps. The issue's example:
//! debit an account only if the balance covers it.

use sagalog::engine::{SagaDefinition, StepCall, Value};
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
  "INSERT OR IGNORE INTO accounts VALUES ('bob', 0)",
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

# Issue 11 item 3: both legs of a transfer in one step (one transaction with the marker).
[actions.transfer]
participant = "ledger"
params = { from = "text", to = "text", amount = "int" }

[actions.transfer.forward]
sql = [
  "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2 AND balance >= ?1",
  "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
]
args = [["amount", "from"], ["amount", "to"]]
rows = 1

[actions.transfer.compensate]
sql = [
  "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2",
  "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
]
args = [["amount", "to"], ["amount", "from"]]
rows = [1, 1]
"#;

fn order(id: &str, amount: i64) -> SagaDefinition {
    SagaDefinition {
        id: id.into(),
        steps: vec![
            StepCall {
                action: "reserve".into(),
                params: [("n".to_string(), Value::Int(1))].into(),
                from: Default::default(),
            },
            StepCall {
                action: "debit".into(),
                params: [
                    ("account".to_string(), Value::Text("alice".into())),
                    ("amount".to_string(), Value::Int(amount)),
                ]
                .into(),
                from: Default::default(),
            },
        ],
    }
}

fn balance(dir: &std::path::Path) -> i64 {
    balance_of(dir, "alice")
}

fn balance_of(dir: &std::path::Path, account: &str) -> i64 {
    let db = rusqlite::Connection::open(dir.join("ledger.sqlite")).unwrap();
    db.query_row("SELECT balance FROM accounts WHERE id = ?1", [account], |r| r.get(0)).unwrap()
}

fn transfer(id: &str, to: &str, amount: i64, then_fail: bool) -> SagaDefinition {
    let text = |s: &str| Value::Text(s.into());
    let mut steps = vec![StepCall {
        action: "transfer".into(),
        params: [
            ("from".to_string(), text("alice")),
            ("to".to_string(), text(to)),
            ("amount".to_string(), Value::Int(amount)),
        ]
        .into(),
        from: Default::default(),
    }];
    if then_fail {
        // A debit no balance covers: its guard fails, and the transfer is compensated.
        steps.push(StepCall {
            action: "debit".into(),
            params: [("account".to_string(), text("bob")), ("amount".to_string(), Value::Int(1_000_000))].into(),
            from: Default::default(),
        });
    }
    SagaDefinition { id: id.into(), steps }
}

/// Issue 11 item 3, through the executor: a two-statement step commits both legs; a second
/// statement whose guard fails (no such account) rolls back the first leg with the marker and
/// the saga compensates; a completed transfer that a later step's failure compensates runs
/// its two-statement compensation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_statement_step_commits_every_statement_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sagalog.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut node = Node::start(dir.path(), Some(&config)).await.unwrap();
    let settle = |id: &'static str| crate::engine_support::finished(&node.executor, id);
    node.executor.submit(transfer("t-ok", "bob", 40, false)).await.unwrap();
    assert_eq!(settle("t-ok").await.status, "COMPLETED");
    assert_eq!((balance_of(dir.path(), "alice"), balance_of(dir.path(), "bob")), (60, 40));

    node.executor.submit(transfer("t-nobody", "nobody", 10, false)).await.unwrap();
    let snap = settle("t-nobody").await;
    assert_eq!(snap.status, "COMPENSATED");
    let reason = snap.reason.unwrap_or_default();
    assert!(reason.contains("statement 2 of 2: guard failed: expected exactly 1 rows affected, got 0"), "{reason}");
    assert_eq!(balance_of(dir.path(), "alice"), 60, "the first leg rolled back with the second");

    node.executor.submit(transfer("t-undone", "bob", 25, true)).await.unwrap();
    let snap = settle("t-undone").await;
    assert_eq!(snap.status, "COMPENSATED");
    assert!(snap.steps[0].compensated, "the transfer was compensated");
    assert_eq!((balance_of(dir.path(), "alice"), balance_of(dir.path(), "bob")), (60, 40), "both legs undone");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_the_balance_does_not_cover_fails_the_guard_and_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sagalog.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut node = Node::start(dir.path(), Some(&config)).await.unwrap();
    let settle = |id: &'static str| crate::engine_support::finished(&node.executor, id);
    node.executor.submit(order("covered", 30)).await.unwrap();
    assert_eq!(settle("covered").await.status, "COMPLETED");
    assert_eq!(balance(dir.path()), 70);

    node.executor.submit(order("overdrawn", 500)).await.unwrap();
    let snap = settle("overdrawn").await;
    assert_eq!(snap.status, "COMPENSATED");
    let reason = snap.reason.unwrap_or_default();
    assert!(reason.contains("guard failed: expected exactly 1 rows affected, got 0"), "{reason}");
    assert_eq!(snap.steps[1].forward_attempts, 1, "a failed guard is permanent: not retried");
    assert!(snap.steps[0].compensated, "the reservation was compensated");
    assert_eq!(balance(dir.path()), 70, "nothing was debited");
    node.shutdown().await.unwrap();
}
