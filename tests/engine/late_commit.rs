//! Issue 10 item A6: a late commit after a step timeout. A timed-out attempt's transaction
//! keeps running (on its blocking thread for SQLite, inside PostgreSQL for PostgreSQL); the
//! in-doubt marker lookup that settles that attempt must agree with what finally commits:
//! either it waits for the transaction and says "present", or it says "absent" and neither
//! the effect nor the marker ever appear.
//!
//! PostgreSQL tests use `SAGALOG_TEST_POSTGRES` (default
//! `host=127.0.0.1 port=5432 user=postgres dbname=test`) and print `SKIPPED` without a server,
//! unless `SAGALOG_REQUIRE_POSTGRES=1`.

use std::sync::Arc;
use std::time::Duration;

use sagalog::engine::Value;
use sagalog::participant::postgres::Postgres;
use sagalog::participant::sqlite::Sqlite;
use sagalog::participant::{Applied, Direction, Operation, Participant, StepKey};

fn suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn key(saga: &str) -> StepKey {
    StepKey { saga_id: format!("{saga}-{}", suffix()), step: 0, direction: Direction::Forward, scope: None }
}

/// SQLite: attempt 1's blocking task waits for another connection's write lock, the step
/// times out (the future is dropped, the task goes on), and the lookup runs while that
/// transaction is still on its way. Before the fence, the lookup read "absent" at once and the
/// effect and marker committed a moment later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_lookup_during_a_timed_out_apply_agrees_with_what_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sqlite");
    let sqlite = Arc::new(Sqlite::open("sqlite", &path, 4).unwrap());
    let admin = rusqlite::Connection::open(&path).unwrap();
    admin.execute_batch("CREATE TABLE effects (id INTEGER PRIMARY KEY, note TEXT)").unwrap();
    let key = key("late");
    let op = Operation::Sql {
        sql: "INSERT INTO effects (id, note) VALUES (?1, ?2)".to_owned(),
        args: vec![Value::Int(1), Value::Text("late".to_owned())],
        rows: None,
    };

    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let timed_out = tokio::time::timeout(Duration::from_millis(200), sqlite.apply(&key, 1, &op)).await;
    assert!(timed_out.is_err(), "attempt 1 should have timed out behind the held lock: {timed_out:?}");

    let lookup = tokio::spawn({
        let (sqlite, key) = (Arc::clone(&sqlite), key.clone());
        async move { sqlite.settle_marker(&key, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.execute_batch("COMMIT").unwrap();
    drop(holder);
    let said = tokio::time::timeout(Duration::from_secs(10), lookup).await.unwrap().unwrap().unwrap();

    // Another write waits for the write lock, so attempt 1's task has ended when it returns.
    let other = StepKey { step: 1, ..key.clone() };
    assert_eq!(sqlite.apply(&other, 1, &Operation::Noop).await.unwrap(), Applied::Applied);
    let present = sqlite.lookup_marker(&key).await.unwrap();
    let rows: i64 = admin.query_row("SELECT count(*) FROM effects WHERE id = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(
        said,
        present,
        "the lookup answered {said} but the marker is {}",
        if present { "present" } else { "absent" }
    );
    assert_eq!(rows, i64::from(present), "the effect and its marker commit together");
}

/// `conninfo` with the sessions' default isolation made SERIALIZABLE, in either form
/// `SAGALOG_TEST_POSTGRES` may take: key/value (`host=… user=…`) or a URL (`postgres://…`).
fn with_serializable_default(conninfo: &str) -> String {
    if conninfo.contains("://") {
        let separator = if conninfo.contains('?') { '&' } else { '?' };
        format!("{conninfo}{separator}options=-c%20default_transaction_isolation%3Dserializable")
    } else {
        format!("{conninfo} options='-c default_transaction_isolation=serializable'")
    }
}

/// PostgreSQL: attempt 1's COMMIT is slow (a deferred constraint trigger sleeps at commit
/// time, as a synchronous standby or a deferred check would), the step times out while the
/// COMMIT is already on its way, and the lookup runs before the commit finishes. Before the
/// fence, the lookup read "absent" and the effect and marker appeared a moment later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_lookup_during_a_timed_out_commit_agrees_with_what_commits() {
    let Some(client) = crate::pg_support::client("late commit test").await else { return };
    let run = suffix();
    let table = format!("sagalog_late_{run}");
    let function = format!("sagalog_late_sleep_{run}");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, note text);
             CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {table}
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {function}();"
        ))
        .await
        .unwrap();
    let pg = Postgres::connect("postgres", &crate::pg_support::conninfo(), 4).unwrap();
    let key = key("late");
    let op = Operation::Sql {
        sql: format!("INSERT INTO {table} (id, note) VALUES ($1, $2)"),
        args: vec![Value::Int(1), Value::Text("late".to_owned())],
        rows: None,
    };

    let began = std::time::Instant::now();
    let timed_out = tokio::time::timeout(Duration::from_millis(500), pg.apply(&key, 1, &op)).await;
    assert!(timed_out.is_err(), "attempt 1 should have timed out in its slow COMMIT: {timed_out:?}");
    // The lookup runs on another pool (another process after a crash, or another connection
    // of this one: the dropped attempt's own connection would queue the lookup behind its
    // COMMIT).
    let recovering = Postgres::connect("postgres", &crate::pg_support::conninfo(), 1).unwrap();
    let said = tokio::time::timeout(Duration::from_secs(10), recovering.settle_marker(&key, 1)).await.unwrap().unwrap();

    // The commit sleeps 2 s: past that, whatever attempt 1 does has happened.
    tokio::time::sleep(Duration::from_millis(3000).saturating_sub(began.elapsed())).await;
    let present = pg.lookup_marker(&key).await.unwrap();
    let rows: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    client.batch_execute(&format!("DROP TABLE {table}; DROP FUNCTION {function}();")).await.unwrap();
    client.execute("DELETE FROM sagalog_markers WHERE saga_id = $1", &[&key.saga_id]).await.unwrap();
    client.execute("DELETE FROM sagalog_fences WHERE saga_id = $1", &[&key.saga_id]).await.unwrap();
    assert_eq!(
        said,
        present,
        "the lookup answered {said} but the marker is {}",
        if present { "present" } else { "absent" }
    );
    assert_eq!(rows, i64::from(present), "the effect and its marker commit together");
}

/// The executor: a forward step's only attempt times out while its transaction goes on and
/// commits later; the saga compensates, and compensation settles the step with the fencing
/// lookup. The late commit is refused, so what compensation decided ("not applied, nothing to
/// undo") stays true. Before the fence, the effect landed after the saga was COMPENSATED and
/// was never undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_a_late_commit_after_the_lookup_never_lands() {
    use crate::engine_support::{CONFIG, comp, fwd, saga, settled, start};
    use sagalog::engine::Status;
    use sagalog::participant::memory::{Fault, Memory};

    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    mem.inject(Some(1), Some(Direction::Forward), Fault::LateCommit(Duration::from_millis(600)));
    let config = CONFIG
        .replace("retry = { max_attempts = 4,", "retry = { max_attempts = 1,")
        .replace("timeout_ms = 300", "timeout_ms = 100");
    let h = start(dir.path(), &mem, &config);
    h.exec.submit(saga("late", 2)).await.unwrap();
    let snap = settled(&h.exec, "late").await;
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(mem.effects("late"), vec![fwd(0), comp(0)]);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(mem.effects("late"), vec![fwd(0), comp(0)], "a late commit landed after compensation skipped it");
    // The saga's markers and fences carry its incarnation's scope.
    assert!(snap.saga.scope.is_some(), "a submitted saga has a marker scope");
    let key = StepKey::new("late", 1, Direction::Forward).scoped(snap.saga.scope.clone());
    assert!(!mem.lookup_marker(&key).await.unwrap());
    assert_eq!(mem.fenced_through(&key), Some(1), "compensation settled attempt 1 with the fencing lookup");
}

/// PostgreSQL, the other order: a fencing lookup is in its transaction (it holds the key's
/// advisory lock and has written its fence, not yet committed) when attempt 1's apply starts.
/// The apply waits for the lock, then sees the fence committed while it waited (it runs at
/// READ COMMITTED, whatever the server's default: here SERIALIZABLE), and is refused without
/// applying anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_an_apply_that_starts_during_a_lookup_sees_its_fence() {
    let Some(mut client) = crate::pg_support::client("late commit test").await else { return };
    let pg = Arc::new(Postgres::connect("postgres", &crate::pg_support::conninfo(), 2).unwrap());
    let key = key("during");
    // First use creates the tables.
    assert!(!pg.settle_marker(&StepKey { step: 9, ..key.clone() }, 1).await.unwrap());
    // The lookup, as `settle_marker` runs it, stopped before its COMMIT; the server's default
    // isolation is made SERIALIZABLE for the apply's sessions (a snapshot taken at the first
    // statement would predate the lock wait).
    let lookup = client.transaction().await.unwrap();
    lookup
        .execute("SELECT pg_advisory_xact_lock($1)", &[&sagalog::participant::postgres::key_lock_id(&key)])
        .await
        .unwrap();
    lookup
        .execute(
            "INSERT INTO sagalog_fences (saga_id, step, direction, through_attempt) VALUES ($1, 0, 'forward', 1)",
            &[&key.saga_id],
        )
        .await
        .unwrap();
    let serializable = with_serializable_default(&crate::pg_support::conninfo());
    let rr = Arc::new(Postgres::connect("postgres", &serializable, 1).unwrap());
    let apply = tokio::spawn({
        let (rr, key) = (Arc::clone(&rr), key.clone());
        async move { rr.apply(&key, 1, &Operation::Noop).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    if apply.is_finished() {
        panic!("the apply did not wait for the lookup's lock: {:?}", apply.await);
    }
    lookup.commit().await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), apply).await.unwrap().unwrap();
    let message = match result {
        Err(e) if e.kind == sagalog::participant::ErrorKind::Permanent => e.message,
        other => panic!("attempt 1 should have been fenced off, got {other:?}"),
    };
    assert!(message.contains("attempt 1 was fenced off"), "{message}");
    assert!(!pg.lookup_marker(&key).await.unwrap(), "nothing was applied");
    assert_eq!(rr.apply(&key, 2, &Operation::Noop).await.unwrap(), Applied::Applied, "attempt 2 still applies");
    client.execute("DELETE FROM sagalog_markers WHERE saga_id = $1", &[&key.saga_id]).await.unwrap();
    client.execute("DELETE FROM sagalog_fences WHERE saga_id = $1", &[&key.saga_id]).await.unwrap();
}
