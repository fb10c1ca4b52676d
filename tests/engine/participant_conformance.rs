//! The participant contract, proven once for every participant kind.
//!
//! `cases` holds the behaviours, each written once against `&dyn Participant`; a [`Harness`]
//! supplies what differs per kind: the text of the effect statement (`?1` for SQLite and
//! DuckDB, `$1` for PostgreSQL, a file put for the file participant) and a way to count effect
//! rows behind the participant's back. The `common_suite!`/`sql_suite!` macros instantiate
//! the cases for each kind; kind-specific tests follow in each kind's module.
//!
//! PostgreSQL tests use `SAGALOG_TEST_POSTGRES` (libpq conninfo, default
//! `host=127.0.0.1 port=5432 user=postgres dbname=test`). Without a server they print
//! `SKIPPED` and pass, unless `SAGALOG_REQUIRE_POSTGRES=1`. Every harness uses its own effect
//! table and saga ids with a random suffix, so tests run in parallel against one database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sagalog::engine::{Scope, Value};
#[cfg(feature = "duckdb")]
use sagalog::participant::duckdb::Duckdb;
use sagalog::participant::fs::Fs;
use sagalog::participant::memory::Memory;
use sagalog::participant::postgres::Postgres;
use sagalog::participant::sqlite::Sqlite;
use sagalog::participant::{Applied, Direction, ErrorKind, MarkerEntry, Operation, Participant, StepKey};

/// How a kind's effects are inspected directly, bypassing the participant.
enum Effects {
    Sqlite(PathBuf),
    #[cfg(feature = "duckdb")]
    Duckdb(Arc<Duckdb>),
    Postgres(tokio_postgres::Client),
    Fs(PathBuf),
    Memory(Memory),
}

/// One participant under test, with its effect table (or directory) and a unique run id.
struct Harness {
    participant: Arc<dyn Participant>,
    effects: Effects,
    table: String,
    run_id: String,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    fn p(&self) -> &dyn Participant {
        &*self.participant
    }

    /// A key whose saga id is unique to this harness.
    fn key(&self, saga: &str, step: u32, direction: Direction) -> StepKey {
        StepKey { saga_id: format!("{saga}-{}", self.run_id), step, direction, scope: None }
    }

    fn is_sql(&self) -> bool {
        !matches!(self.effects, Effects::Fs(_) | Effects::Memory(_))
    }

    /// The operation that creates effect row `id` (a file `effects/<id>` for the file kind).
    fn insert(&self, id: i64, note: &str) -> Operation {
        self.insert_value(id, Value::Text(note.to_owned()))
    }

    fn insert_value(&self, id: i64, note: Value) -> Operation {
        let args = vec![Value::Int(id), note];
        let sql = match &self.effects {
            Effects::Postgres(_) => format!("INSERT INTO {} (id, note) VALUES ($1, $2)", self.table),
            Effects::Fs(_) => {
                let contents = match &args[1] {
                    Value::Text(s) => s.clone().into_bytes(),
                    other => format!("{other:?}").into_bytes(),
                };
                return Operation::FilePut { path: format!("effects/{id}"), contents };
            }
            _ => format!("INSERT INTO {} (id, note) VALUES (?1, ?2)", self.table),
        };
        Operation::Sql { sql, args, rows: None }
    }

    /// How many effect rows with `id` exist (for the memory kind: how many effects `saga_id` has).
    async fn count(&self, saga_id: &str, id: i64) -> i64 {
        let sql = format!("SELECT count(*) FROM {} WHERE id = ?1", self.table);
        match &self.effects {
            Effects::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.query_row(&sql, [id], |r| r.get(0)).unwrap()
            }
            #[cfg(feature = "duckdb")]
            Effects::Duckdb(db) => db.connection().unwrap().query_row(&sql, [id], |r| r.get(0)).unwrap(),
            Effects::Postgres(client) => {
                let sql = format!("SELECT count(*) FROM {} WHERE id = $1", self.table);
                client.query_one(&sql, &[&id]).await.unwrap().get(0)
            }
            Effects::Fs(root) => i64::from(root.join("effects").join(id.to_string()).exists()),
            Effects::Memory(memory) => i64::try_from(memory.effects(saga_id).len()).unwrap(),
        }
    }

    /// The stored note of effect row `id` (SQL kinds only).
    async fn note(&self, id: i64) -> Option<String> {
        let sql = format!("SELECT note FROM {} WHERE id = ?1", self.table);
        match &self.effects {
            Effects::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.query_row(&sql, [id], |r| r.get(0)).unwrap()
            }
            #[cfg(feature = "duckdb")]
            Effects::Duckdb(db) => db.connection().unwrap().query_row(&sql, [id], |r| r.get(0)).unwrap(),
            Effects::Postgres(client) => {
                let sql = format!("SELECT note FROM {} WHERE id = $1", self.table);
                client.query_one(&sql, &[&id]).await.unwrap().get(0)
            }
            Effects::Fs(_) | Effects::Memory(_) => panic!("note() is for SQL participants"),
        }
    }

    /// Drops what this harness created in a shared database.
    async fn finish(self) {
        if let Effects::Postgres(client) = &self.effects {
            client.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table)).await.unwrap();
            // Unscoped ids end with the run id; scoped ones with "<run id> <scope>".
            let (plain, scoped) = (format!("%-{}", self.run_id), format!("%-{} %", self.run_id));
            for table in ["sagalog_markers", "sagalog_fences"] {
                let sql = format!("DELETE FROM {table} WHERE saga_id LIKE $1 OR saga_id LIKE $2");
                client.execute(&sql, &[&plain, &scoped]).await.unwrap();
            }
        }
    }
}

fn run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn effect_table_ddl(table: &str) -> String {
    format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, note TEXT)")
}

async fn make_sqlite() -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("participant.sqlite");
    let sqlite = Sqlite::open("sqlite", &path, 4).unwrap();
    let (run_id, table) = (run_id(), "effects".to_owned());
    rusqlite::Connection::open(&path).unwrap().execute_batch(&effect_table_ddl(&table)).unwrap();
    Some(Harness { participant: Arc::new(sqlite), effects: Effects::Sqlite(path), table, run_id, _dir: Some(dir) })
}

#[cfg(feature = "duckdb")]
async fn make_duckdb() -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let duckdb = Arc::new(Duckdb::open("duckdb", dir.path().join("participant.duckdb"), 4).unwrap());
    let (run_id, table) = (run_id(), "effects".to_owned());
    duckdb.connection().unwrap().execute_batch(&effect_table_ddl(&table)).unwrap();
    Some(Harness { participant: duckdb.clone(), effects: Effects::Duckdb(duckdb), table, run_id, _dir: Some(dir) })
}

async fn make_fs() -> Option<Harness> {
    // The root is one level inside a private directory, so "nothing escaped the root" is a
    // check on that directory, not on a shared /tmp where another process may own an `x`.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let fs = Fs::open("fs", root.clone()).unwrap();
    Some(Harness {
        participant: Arc::new(fs),
        effects: Effects::Fs(root),
        table: "effects".to_owned(),
        run_id: run_id(),
        _dir: Some(dir),
    })
}

async fn make_memory() -> Option<Harness> {
    let memory = Memory::new("memory");
    Some(Harness {
        participant: Arc::new(memory.clone()),
        effects: Effects::Memory(memory),
        table: "effects".to_owned(),
        run_id: run_id(),
        _dir: None,
    })
}

async fn make_postgres() -> Option<Harness> {
    make_postgres_with(true).await
}

/// With `group_commit = false`: every step in a transaction of its own.
async fn make_postgres_unbatched() -> Option<Harness> {
    make_postgres_with(false).await
}

async fn make_postgres_with(group_commit: bool) -> Option<Harness> {
    let client = crate::pg_support::client("participant conformance test").await?;
    let run_id = run_id();
    let table = format!("sagalog_conformance_{run_id}");
    client.batch_execute(&effect_table_ddl(&table)).await.unwrap();
    let postgres =
        Postgres::connect("postgres", &crate::pg_support::conninfo(), 4).unwrap().with_group_commit(group_commit);
    Some(Harness { participant: Arc::new(postgres), effects: Effects::Postgres(client), table, run_id, _dir: None })
}

fn assert_permanent<T: std::fmt::Debug>(result: Result<T, sagalog::participant::Error>) -> String {
    match result {
        Err(e) if e.kind == ErrorKind::Permanent => e.message,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

/// The behaviours every participant shares, written once.
mod cases {
    use super::*;
    use Direction::{Compensate, Forward};

    pub async fn apply_then_lookup(h: &Harness) {
        let key = h.key("lookup", 0, Forward);
        assert_eq!(h.p().apply(&key, 1, &h.insert(1, "one")).await.unwrap(), Applied::Applied);
        assert!(h.p().lookup_marker(&key).await.unwrap());
        assert_eq!(h.count(&key.saga_id, 1).await, 1);
    }

    pub async fn second_apply_is_already_applied(h: &Harness) {
        let key = h.key("twice", 0, Forward);
        let op = h.insert(2, "two");
        assert_eq!(h.p().apply(&key, 1, &op).await.unwrap(), Applied::Applied);
        assert_eq!(h.p().apply(&key, 1, &op).await.unwrap(), Applied::AlreadyApplied);
        assert_eq!(h.count(&key.saga_id, 2).await, 1);
    }

    pub async fn directions_are_distinct_keys(h: &Harness) {
        let forward = h.key("directions", 3, Forward);
        let compensate = h.key("directions", 3, Compensate);
        assert_eq!(h.p().apply(&forward, 1, &h.insert(3, "forward")).await.unwrap(), Applied::Applied);
        assert!(!h.p().lookup_marker(&compensate).await.unwrap());
        assert_eq!(h.p().apply(&compensate, 1, &h.insert(4, "compensate")).await.unwrap(), Applied::Applied);
        assert!(h.p().lookup_marker(&forward).await.unwrap());
        assert!(h.p().lookup_marker(&compensate).await.unwrap());
    }

    pub async fn lookup_unknown_key_is_false(h: &Harness) {
        assert!(!h.p().lookup_marker(&h.key("unknown", 0, Forward)).await.unwrap());
        assert!(!h.p().lookup_marker(&h.key("unknown", u32::MAX / 2, Compensate)).await.unwrap());
    }

    pub async fn markers_lists_exactly_what_was_applied(h: &Harness) {
        let listed = h.key("listed", 0, Forward).saga_id;
        assert_eq!(h.p().markers(&listed).await.unwrap(), vec![]);
        for (step, direction) in [(0, Forward), (1, Forward), (1, Compensate), (2, Forward)] {
            h.p().apply(&h.key("listed", step, direction), 1, &Operation::Noop).await.unwrap();
        }
        h.p().apply(&h.key("other", 5, Forward), 1, &Operation::Noop).await.unwrap();
        let mut markers = h.p().markers(&listed).await.unwrap();
        markers.sort();
        assert_eq!(markers, vec![(0, Forward), (1, Forward), (1, Compensate), (2, Forward)]);
    }

    pub async fn all_markers_lists_every_saga(h: &Harness) {
        let mine = |e: &MarkerEntry| e.key.saga_id.ends_with(&h.run_id);
        let listed = || async { h.p().all_markers().await.unwrap().into_iter().filter(mine).collect::<Vec<_>>() };
        assert_eq!(listed().await, vec![]);
        let mut keys = vec![h.key("all-a", 0, Forward), h.key("all-a", 0, Compensate), h.key("all-b", 3, Forward)];
        for key in &keys {
            h.p().apply(key, 1, &Operation::Noop).await.unwrap();
        }
        keys.sort();
        let entries = listed().await;
        assert_eq!(entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>(), keys, "every marker, sorted by key");
        if !matches!(h.effects, Effects::Memory(_)) {
            assert!(entries.iter().all(|e| e.applied_at_ms.is_some_and(|ms| ms > 1_600_000_000_000)), "{entries:?}");
        }
    }

    pub async fn lookup_markers_answers_in_order(h: &Harness) {
        let (a, b, c) = (h.key("batch", 0, Forward), h.key("batch", 1, Forward), h.key("batch", 1, Compensate));
        h.p().apply(&b, 1, &Operation::Noop).await.unwrap();
        let keys = [a.clone(), b.clone(), c, b, a];
        assert_eq!(h.p().lookup_markers(&keys).await.unwrap(), vec![false, true, false, true, false]);
        assert_eq!(h.p().lookup_markers(&[]).await.unwrap(), Vec::<bool>::new());
    }

    /// Issue 10 A4: a marker vouches for its own saga incarnation only. An earlier saga with
    /// the same id (one the index forgot), another instance's saga, and an unscoped saga
    /// (journaled before scopes) each see "absent" and apply for themselves; every listing
    /// returns each marker with its scope.
    pub async fn a_marker_answers_for_its_scope_only(h: &Harness) {
        let instance = Scope::draw_instance();
        let first = h.key("reused", 0, Forward).scoped(Some(Scope::draw(&instance)));
        let second = first.clone().scoped(Some(Scope::draw(&instance)));
        let elsewhere = first.clone().scoped(Some(Scope::draw(&Scope::draw_instance())));
        let unscoped = first.clone().scoped(None);
        assert_eq!(h.p().apply(&first, 1, &h.insert(40, "first")).await.unwrap(), Applied::Applied);
        for other in [&second, &elsewhere, &unscoped] {
            assert!(!h.p().lookup_marker(other).await.unwrap(), "{other:?} answered by {first:?}");
            assert!(!h.p().settle_marker(other, 1).await.unwrap(), "{other:?} settled by {first:?}");
        }
        assert_eq!(
            h.p().lookup_markers(&[first.clone(), second.clone(), elsewhere.clone(), unscoped.clone()]).await.unwrap(),
            vec![true, false, false, false]
        );
        assert_eq!(h.p().apply(&second, 2, &h.insert(41, "second")).await.unwrap(), Applied::Applied);
        assert_eq!(h.p().apply(&unscoped, 2, &h.insert(42, "unscoped")).await.unwrap(), Applied::Applied);
        assert!(h.p().lookup_marker(&second).await.unwrap() && h.p().lookup_marker(&unscoped).await.unwrap());
        assert!(!h.p().lookup_marker(&elsewhere).await.unwrap());
        let mut expected = vec![first.clone(), second.clone(), unscoped.clone()];
        expected.sort();
        let listed: Vec<StepKey> = h
            .p()
            .all_markers()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .filter(|k| k.saga_id == first.saga_id)
            .collect();
        assert_eq!(listed, expected, "all_markers returns every incarnation's marker with its scope");
        assert_eq!(
            h.p().markers(&first.saga_id).await.unwrap(),
            vec![(0, Forward); 3],
            "markers(id) spans incarnations"
        );
    }

    pub async fn probe_succeeds(h: &Harness) {
        h.p().probe().await.unwrap();
    }

    pub async fn noop_records_only_the_marker(h: &Harness) {
        let key = h.key("noop", 0, Forward);
        assert_eq!(h.p().apply(&key, 1, &Operation::Noop).await.unwrap(), Applied::Applied);
        assert_eq!(h.p().apply(&key, 1, &Operation::Noop).await.unwrap(), Applied::AlreadyApplied);
        assert!(h.p().lookup_marker(&key).await.unwrap());
    }

    pub async fn concurrent_applies_of_one_key_apply_once(h: &Harness) {
        let key = h.key("race", 0, Forward);
        let op = h.insert(5, "race");
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (p, key, op) = (Arc::clone(&h.participant), key.clone(), op.clone());
            tasks.spawn(async move { p.apply(&key, 1, &op).await });
        }
        let mut applied = 0;
        while let Some(result) = tasks.join_next().await {
            if result.unwrap().unwrap() == Applied::Applied {
                applied += 1;
            }
        }
        assert_eq!(applied, 1, "exactly one concurrent apply commits");
        assert_eq!(h.count(&key.saga_id, 5).await, 1);
    }

    pub async fn constraint_violation_is_permanent_and_leaves_no_marker(h: &Harness) {
        assert!(h.is_sql());
        let first = h.key("constraint", 0, Forward);
        let second = h.key("constraint", 1, Forward);
        h.p().apply(&first, 1, &h.insert(6, "first")).await.unwrap();
        assert_permanent(h.p().apply(&second, 1, &h.insert(6, "duplicate")).await);
        assert!(!h.p().lookup_marker(&second).await.unwrap(), "the failed transaction rolled its marker back");
        assert_eq!(h.count(&second.saga_id, 6).await, 1);
        assert_eq!(h.note(6).await.as_deref(), Some("first"));
    }

    pub async fn bad_sql_is_permanent(h: &Harness) {
        let statements = ["INSRT INTO nowhere VALUES (1)", "INSERT INTO no_such_table_sagalog (id) VALUES (1)"];
        for (step, sql) in (0..).zip(statements) {
            let key = h.key("bad-sql", step, Forward);
            let op = Operation::Sql { sql: sql.to_owned(), args: vec![], rows: None };
            assert_permanent(h.p().apply(&key, 1, &op).await);
            assert!(!h.p().lookup_marker(&key).await.unwrap());
        }
    }

    pub async fn parameters_are_bound_not_pasted(h: &Harness) {
        let hostile = format!("x'); DROP TABLE {}; --", h.table);
        let key = h.key("injection", 0, Forward);
        h.p().apply(&key, 1, &h.insert(7, &hostile)).await.unwrap();
        assert_eq!(h.note(7).await, Some(hostile), "stored verbatim");
        assert_eq!(h.count(&key.saga_id, 7).await, 1, "the table is still there");
    }

    pub async fn null_binds_as_sql_null(h: &Harness) {
        let key = h.key("null", 0, Forward);
        h.p().apply(&key, 1, &h.insert_value(8, Value::Null)).await.unwrap();
        assert_eq!(h.note(8).await, None);
        assert_eq!(h.count(&key.saga_id, 8).await, 1);
    }

    pub async fn returning_statement_commits(h: &Harness) {
        let key = h.key("returning", 0, Forward);
        let Operation::Sql { sql, args, .. } = h.insert(9, "returned") else { unreachable!("SQL kinds only") };
        let op = Operation::Sql { sql: format!("{sql} RETURNING id"), args, rows: None };
        assert_eq!(h.p().apply(&key, 1, &op).await.unwrap(), Applied::Applied);
        assert_eq!(h.count(&key.saga_id, 9).await, 1);
        assert!(h.p().lookup_marker(&key).await.unwrap());
    }

    /// Issue 11 item 3: several statements run in order in the one transaction that writes
    /// the marker; a failure of any of them (an error or its guard) rolls back every earlier
    /// one with the marker, and the error names the statement.
    pub async fn several_statements_commit_together_or_not_at_all(h: &Harness) {
        use sagalog::config::RowsGuard;
        use sagalog::participant::Statement;
        let ph = |n: u32| if matches!(h.effects, Effects::Postgres(_)) { format!("${n}") } else { format!("?{n}") };
        let insert = |id: i64| Statement {
            sql: format!("INSERT INTO {} (id, note) VALUES ({}, {})", h.table, ph(1), ph(2)),
            args: vec![Value::Int(id), Value::Text("multi".into())],
            rows: Some(RowsGuard::Exactly(1)),
            returns: Default::default(),
        };
        let touch = |id: i64, rows| Statement {
            sql: format!("UPDATE {} SET note = 'touched' WHERE id = {}", h.table, ph(1)),
            args: vec![Value::Int(id)],
            rows: Some(rows),
            returns: Default::default(),
        };
        let key = h.key("multi", 0, Forward);
        let both = Operation::Statements(vec![insert(60), touch(60, RowsGuard::Exactly(1))]);
        assert_eq!(h.p().apply(&key, 1, &both).await.unwrap(), Applied::Applied);
        assert_eq!(h.count(&key.saga_id, 60).await, 1);
        assert_eq!(h.note(60).await.as_deref(), Some("touched"), "the statements ran in order");
        assert_eq!(h.p().apply(&key, 1, &both).await.unwrap(), Applied::AlreadyApplied);

        // The second statement's guard fails: the first statement's row rolls back too.
        let key = h.key("multi", 1, Forward);
        let guarded = Operation::Statements(vec![insert(61), touch(-1, RowsGuard::AtLeast(1))]);
        let message = assert_permanent(h.p().apply(&key, 1, &guarded).await);
        assert!(message.contains("statement 2 of 2"), "the error names the statement: {message}");
        assert!(message.contains("guard failed: expected at least 1 rows affected, got 0"), "{message}");
        assert_eq!(h.count(&key.saga_id, 61).await, 0, "the first statement rolled back with the guard");
        assert!(!h.p().lookup_marker(&key).await.unwrap());

        // The second statement fails (a duplicate key): nothing of the step remains.
        let key = h.key("multi", 2, Forward);
        let failing = Operation::Statements(vec![insert(62), insert(62)]);
        let message = assert_permanent(h.p().apply(&key, 1, &failing).await);
        assert!(message.contains("statement 2 of 2"), "the error names the statement: {message}");
        assert_eq!(h.count(&key.saga_id, 62).await, 0);
        assert!(!h.p().lookup_marker(&key).await.unwrap());
    }

    /// Issue 11 item 1: the single row a statement returns gives the step's declared outputs,
    /// committed with the marker: a second apply and `marker_outputs` answer the same values.
    /// A row without a declared column, or not exactly one row, fails the step permanently
    /// and rolls it back with its marker.
    pub async fn a_returned_row_gives_the_outputs_stored_with_the_marker(h: &Harness) {
        use sagalog::config::ParamType;
        use sagalog::participant::Statement;
        let ph = |n: u32| if matches!(h.effects, Effects::Postgres(_)) { format!("${n}") } else { format!("?{n}") };
        let returns = BTreeMap::from([("id".to_owned(), ParamType::Int), ("note".to_owned(), ParamType::Text)]);
        let insert = |id: i64, returning: &str| {
            Operation::Statements(vec![Statement {
                sql: format!("INSERT INTO {} (id, note) VALUES ({}, {}) RETURNING {returning}", h.table, ph(1), ph(2)),
                args: vec![Value::Int(id), Value::Text(format!("n{id}"))],
                rows: None,
                returns: returns.clone(),
            }])
        };
        let key = h.key("outputs", 0, Forward);
        let (applied, outputs) = h.p().apply_with_outputs(&key, 1, &insert(70, "id, note")).await.unwrap();
        let expected =
            BTreeMap::from([("id".to_owned(), Value::Int(70)), ("note".to_owned(), Value::Text("n70".into()))]);
        assert_eq!((applied, &outputs), (Applied::Applied, &expected));
        let (again, stored) = h.p().apply_with_outputs(&key, 2, &insert(70, "id, note")).await.unwrap();
        assert_eq!((again, &stored), (Applied::AlreadyApplied, &expected), "a retry answers the stored outputs");
        assert_eq!(h.p().marker_outputs(&key).await.unwrap(), expected);
        assert_eq!(h.p().marker_outputs(&h.key("outputs", 9, Forward)).await.unwrap(), BTreeMap::new());

        let key = h.key("outputs", 1, Forward);
        let message = assert_permanent(h.p().apply_with_outputs(&key, 1, &insert(71, "id")).await);
        assert!(message.contains("no column \"note\""), "{message}");
        assert_eq!(h.count(&key.saga_id, 71).await, 0, "the row rolled back with the failed outputs");
        assert!(!h.p().lookup_marker(&key).await.unwrap());

        let key = h.key("outputs", 2, Forward);
        let none = Operation::Statements(vec![Statement {
            sql: format!("UPDATE {} SET note = 'x' WHERE id = {} RETURNING id, note", h.table, ph(1)),
            args: vec![Value::Int(-5)],
            rows: None,
            returns: returns.clone(),
        }]);
        let message = assert_permanent(h.p().apply_with_outputs(&key, 1, &none).await);
        assert!(message.contains("must return exactly 1 row for the step's outputs, it returned 0"), "{message}");
        assert!(!h.p().lookup_marker(&key).await.unwrap());
    }

    pub async fn a_guard_that_fails_rolls_back_with_its_marker(h: &Harness) {
        use sagalog::config::RowsGuard;
        let ph = if matches!(h.effects, Effects::Postgres(_)) { "$1" } else { "?1" };
        h.p().apply(&h.key("guard-seed", 0, Forward), 1, &h.insert(21, "before")).await.unwrap();
        let update = |id: i64, rows| Operation::Sql {
            sql: format!("UPDATE {} SET note = 'after' WHERE id = {ph}", h.table),
            args: vec![Value::Int(id)],
            rows: Some(rows),
        };
        let untouched = format!("SELECT count(*) FROM {} WHERE id = {ph} AND note = 'before'", h.table);
        // No row matches: the business rule fails, permanently, naming what it expected.
        let key = h.key("guard", 0, Forward);
        let message = assert_permanent(h.p().apply(&key, 1, &update(22, RowsGuard::Exactly(1))).await);
        assert!(message.contains("guard failed: expected exactly 1 rows affected, got 0"), "{message}");
        assert!(!h.p().lookup_marker(&key).await.unwrap(), "the marker rolled back with the statement");
        // A row changed, but not as many as required: the change rolls back too.
        let key = h.key("guard", 1, Forward);
        let message = assert_permanent(h.p().apply(&key, 1, &update(21, RowsGuard::Exactly(2))).await);
        assert!(message.contains("expected exactly 2 rows affected, got 1"), "{message}");
        assert_eq!(
            h.p().count(&untouched, &[Value::Int(21)]).await.unwrap(),
            1,
            "the failed guard's change rolled back"
        );
        assert!(!h.p().lookup_marker(&key).await.unwrap());
        // "1+" is met: the statement and its marker commit.
        let key = h.key("guard", 2, Forward);
        assert_eq!(h.p().apply(&key, 1, &update(21, RowsGuard::AtLeast(1))).await.unwrap(), Applied::Applied);
        assert_eq!(h.p().count(&untouched, &[Value::Int(21)]).await.unwrap(), 0);
        assert!(h.p().lookup_marker(&key).await.unwrap());
    }

    pub async fn count_runs_an_effect_check(h: &Harness) {
        let key = h.key("count", 0, Forward);
        h.p().apply(&key, 1, &h.insert(11, "counted")).await.unwrap();
        let placeholder = if matches!(h.effects, Effects::Postgres(_)) { "$1" } else { "?1" };
        let sql = format!("SELECT count(*) FROM {} WHERE id = {placeholder}", h.table);
        assert_eq!(h.p().count(&sql, &[Value::Int(11)]).await.unwrap(), 1);
        assert_eq!(h.p().count(&sql, &[Value::Int(12)]).await.unwrap(), 0);
        assert_permanent(h.p().count("SELECT count(*) FROM no_such_table_sagalog", &[]).await);
    }

    pub async fn a_fence_refuses_attempts_through_it_and_the_next_one_applies(h: &Harness) {
        let key = h.key("fence", 0, Forward);
        let op = h.insert(12, "fenced");
        assert!(!h.p().settle_marker(&key, 2).await.unwrap(), "no marker: the lookup says absent");
        for attempt in [1, 2] {
            let message = assert_permanent(h.p().apply(&key, attempt, &op).await);
            assert!(message.contains(&format!("attempt {attempt} was fenced off")), "{message}");
        }
        assert_eq!(h.count(&key.saga_id, 12).await, 0, "a fenced-off attempt applies nothing");
        assert!(!h.p().lookup_marker(&key).await.unwrap(), "nor records a marker");
        // A lower fence later does not lower it; the next attempt applies.
        assert!(!h.p().settle_marker(&key, 1).await.unwrap());
        assert_permanent(h.p().apply(&key, 2, &op).await);
        assert_eq!(h.p().apply(&key, 3, &op).await.unwrap(), Applied::Applied);
        assert_eq!(h.count(&key.saga_id, 12).await, 1);
        assert!(h.p().settle_marker(&key, 3).await.unwrap(), "present once attempt 3 committed");
        assert_eq!(h.p().apply(&key, 4, &op).await.unwrap(), Applied::AlreadyApplied);
        assert_eq!(h.count(&key.saga_id, 12).await, 1);
    }

    pub async fn a_fence_holds_for_its_key_only(h: &Harness) {
        let fenced = h.key("fence-key", 0, Forward);
        assert!(!h.p().settle_marker(&fenced, 5).await.unwrap());
        for other in
            [h.key("fence-key", 0, Compensate), h.key("fence-key", 1, Forward), h.key("fence-other", 0, Forward)]
        {
            assert_eq!(h.p().apply(&other, 1, &Operation::Noop).await.unwrap(), Applied::Applied, "{other}");
        }
        assert_permanent(h.p().apply(&fenced, 5, &Operation::Noop).await);
    }

    /// Issue 10 A4: a fence of one saga incarnation never refuses another's attempts.
    pub async fn a_fence_holds_for_its_scope_only(h: &Harness) {
        let instance = Scope::draw_instance();
        let fenced = h.key("fence-scope", 0, Forward).scoped(Some(Scope::draw(&instance)));
        assert!(!h.p().settle_marker(&fenced, 3).await.unwrap());
        let unscoped = h.key("fence-scope", 0, Forward);
        let later = unscoped.clone().scoped(Some(Scope::draw(&instance)));
        let other_instance = unscoped.clone().scoped(Some(Scope::draw(&Scope::draw_instance())));
        for other in [later, other_instance, unscoped] {
            assert_eq!(h.p().apply(&other, 1, &Operation::Noop).await.unwrap(), Applied::Applied, "{other:?}");
        }
        assert_permanent(h.p().apply(&fenced, 1, &Operation::Noop).await);
    }

    pub async fn the_read_only_lookup_fences_nothing(h: &Harness) {
        let key = h.key("plain-lookup", 0, Forward);
        assert!(!h.p().lookup_marker(&key).await.unwrap());
        assert_eq!(h.p().lookup_markers(std::slice::from_ref(&key)).await.unwrap(), vec![false]);
        assert_eq!(h.p().apply(&key, 1, &Operation::Noop).await.unwrap(), Applied::Applied);
    }

    pub async fn file_operation_is_permanent(h: &Harness) {
        let key = h.key("file-op", 0, Forward);
        let op = Operation::FilePut { path: "x".to_owned(), contents: vec![1] };
        assert_permanent(h.p().apply(&key, 1, &op).await);
        assert!(!h.p().lookup_marker(&key).await.unwrap());
    }
}

/// Expands each named case into a `#[tokio::test]` against the harness `$make` builds.
macro_rules! case_tests {
    ($make:path => $( $(#[$doc:meta])* $case:ident ),* $(,)?) => {
        $(
            $(#[$doc])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(h) = $make().await else { return };
                crate::participant_conformance::cases::$case(&h).await;
                h.finish().await;
            }
        )*
    };
}

/// The cases every participant kind must pass.
macro_rules! common_suite {
    ($make:path) => {
        case_tests! { $make =>
            /// An applied step's marker is found and its effect exists exactly once.
            apply_then_lookup,
            /// Applying the same key again changes nothing and reports AlreadyApplied.
            second_apply_is_already_applied,
            /// A step's forward and compensate markers are separate keys.
            directions_are_distinct_keys,
            /// lookup_marker of a key never applied is false.
            lookup_unknown_key_is_false,
            /// markers(saga) lists exactly the applied (step, direction) pairs of that saga.
            markers_lists_exactly_what_was_applied,
            /// all_markers lists every marker of every saga, sorted, with its commit time.
            all_markers_lists_every_saga,
            /// lookup_markers answers a batch of keys in order, as lookup_marker would.
            lookup_markers_answers_in_order,
            /// probe succeeds against a healthy participant.
            probe_succeeds,
            /// A Noop records its marker and is idempotent like any operation.
            noop_records_only_the_marker,
            /// Of concurrent applies of one key exactly one commits; the effect exists once.
            concurrent_applies_of_one_key_apply_once,
            /// A marker answers for its saga incarnation's scope only (issue 10 A4).
            a_marker_answers_for_its_scope_only,
        }
    };
}

/// The fencing lookup: every kind fences by attempt (the file kind in memory: its applies run
/// only in this process).
macro_rules! fence_suite {
    ($make:path) => {
        case_tests! { $make =>
            /// settle_marker through attempt N found no marker: attempts 1..=N are refused
            /// (permanently, nothing applied), N+1 applies; a lower fence does not lower it.
            a_fence_refuses_attempts_through_it_and_the_next_one_applies,
            /// A fence holds for its own key: the other direction, step and saga still apply.
            a_fence_holds_for_its_key_only,
            /// lookup_marker and lookup_markers (the offline tools') write no fence.
            the_read_only_lookup_fences_nothing,
            /// A fence holds for its saga incarnation's scope only (issue 10 A4).
            a_fence_holds_for_its_scope_only,
        }
    };
}

/// The cases every SQL participant kind must pass.
macro_rules! sql_suite {
    ($make:path) => {
        case_tests! { $make =>
            /// A constraint violation is permanent and rolls the marker back with the statement.
            constraint_violation_is_permanent_and_leaves_no_marker,
            /// A syntax error or a missing table is permanent and records no marker.
            bad_sql_is_permanent,
            /// A hostile text parameter is stored verbatim: parameters are bound, not pasted.
            parameters_are_bound_not_pasted,
            /// A Null value binds as SQL NULL into a text column.
            null_binds_as_sql_null,
            /// A statement that returns rows (`… RETURNING`) runs and commits with its marker.
            returning_statement_commits,
            /// A file operation sent to a SQL participant is permanent and records no marker.
            file_operation_is_permanent,
            /// count runs an action's effect check (bound parameters, one count back).
            count_runs_an_effect_check,
            /// A guarded statement (`rows = N`, `rows = "N+"`) that affects too few rows fails
            /// permanently with `guard failed: expected …, got …`, rolled back with its marker.
            a_guard_that_fails_rolls_back_with_its_marker,
            /// Several statements commit together with the marker, or none of them does.
            several_statements_commit_together_or_not_at_all,
            /// A returned row gives the step's outputs, stored with its marker (issue 11 item 1).
            a_returned_row_gives_the_outputs_stored_with_the_marker,
        }
    };
}

mod memory {
    common_suite!(super::make_memory);
    fence_suite!(super::make_memory);
}

mod sqlite {
    use super::*;

    common_suite!(super::make_sqlite);
    sql_suite!(super::make_sqlite);
    fence_suite!(super::make_sqlite);

    /// Issue 10 A4: `marker_table` and `fence_table` name the tables a participant opened from
    /// its config writes; the default tables are not created beside them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn configured_marker_and_fence_tables_are_the_ones_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = sagalog::catalog::Catalog::parse(
            "[participants.db]\nkind = \"sqlite\"\npath = \"db.sqlite\"\nmarker_table = \"tenant_a_markers\"\n\
             fence_table = \"tenant_a_fences\"\n",
        )
        .unwrap();
        let opened = sagalog::participant::open_all(&config.config.participants, dir.path()).unwrap();
        let p = &opened["db"];
        let (applied, fenced) =
            (StepKey::new("tables", 0, Direction::Forward), StepKey::new("tables", 1, Direction::Forward));
        p.apply(&applied, 1, &Operation::Noop).await.unwrap();
        assert!(!p.settle_marker(&fenced, 1).await.unwrap());
        let conn = rusqlite::Connection::open(dir.path().join("db.sqlite")).unwrap();
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
        };
        assert_eq!((count("tenant_a_markers"), count("tenant_a_fences")), (1, 1));
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('sagalog_markers', 'sagalog_fences')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the default tables were created too");
        assert!(p.lookup_marker(&applied).await.unwrap());
    }

    /// A write lock held past the busy timeout by another connection gives a retryable error,
    /// and the same apply succeeds once the lock is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn locked_database_is_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.sqlite");
        let sqlite = Sqlite::open("sqlite", &path, 2).unwrap().with_busy_timeout(Duration::from_millis(100));
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let key = StepKey { saga_id: "locked".to_owned(), step: 0, direction: Direction::Forward, scope: None };
        let error = sqlite.apply(&key, 1, &Operation::Noop).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Retryable, "{error}");
        holder.execute_batch("ROLLBACK").unwrap();
        assert_eq!(sqlite.apply(&key, 1, &Operation::Noop).await.unwrap(), Applied::Applied);
    }

    /// quick_check reports "ok" for a database the participant has written.
    #[tokio::test]
    async fn quick_check_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Sqlite::open("sqlite", dir.path().join("check.sqlite"), 1).unwrap();
        let key = StepKey { saga_id: "check".to_owned(), step: 0, direction: Direction::Forward, scope: None };
        sqlite.apply(&key, 1, &Operation::Noop).await.unwrap();
        assert_eq!(sqlite.quick_check().await.unwrap(), "ok");
    }

    /// Opened read-only (the offline tools): the same markers, `apply` refused, no file
    /// created or changed (no `-wal`/`-shm` either), and a database without a marker table
    /// has no markers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_only_open_reads_markers_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.sqlite");
        let key = StepKey { saga_id: "ro".to_owned(), step: 1, direction: Direction::Forward, scope: None };
        {
            let sqlite = Sqlite::open("sqlite", &path, 1).unwrap();
            sqlite.apply(&key, 1, &Operation::Noop).await.unwrap();
        }
        let files = || {
            let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
                .collect();
            v.sort();
            v
        };
        // The writer's last connection closes on a blocking thread after the drop (checkpointing
        // and removing `-wal` and `-shm`): wait for that, or it races the comparison below.
        for _ in 0..500 {
            if files().iter().all(|(name, _)| !name.ends_with("-wal") && !name.ends_with("-shm")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = files();
        let ro = Sqlite::open_read_only("sqlite", &path, 2).unwrap();
        assert!(ro.lookup_marker(&key).await.unwrap());
        assert_eq!(ro.all_markers().await.unwrap().len(), 1);
        assert_permanent(ro.apply(&StepKey { step: 2, ..key.clone() }, 1, &Operation::Noop).await);
        assert_permanent(ro.settle_marker(&StepKey { step: 2, ..key.clone() }, 1).await);
        drop(ro);
        assert_eq!(files(), before, "a read-only open changed the directory");

        let bare = dir.path().join("bare.sqlite");
        rusqlite::Connection::open(&bare).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        let ro = Sqlite::open_read_only("bare", &bare, 1).unwrap();
        assert!(!ro.lookup_marker(&key).await.unwrap());
        assert_eq!(ro.all_markers().await.unwrap(), vec![]);
        assert_eq!(ro.lookup_markers(std::slice::from_ref(&key)).await.unwrap(), vec![false]);
    }

    /// Issue 10 item 14: a database that reads but cannot write (here a trigger refuses
    /// marker inserts, as a full disk or an invalidated file would) fails the health probe,
    /// so a breaker does not close on it; the probe leaves no row behind once writes work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probe_fails_when_markers_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sqlite");
        let sqlite = Sqlite::open("sqlite", &path, 2).unwrap();
        let admin = rusqlite::Connection::open(&path).unwrap();
        admin
            .execute_batch(
                "CREATE TRIGGER full BEFORE INSERT ON sagalog_markers \
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
            )
            .unwrap();
        let key = StepKey { saga_id: "full".to_owned(), step: 0, direction: Direction::Forward, scope: None };
        assert!(!sqlite.lookup_marker(&key).await.unwrap(), "reads still work");
        assert!(sqlite.probe().await.is_err(), "a probe that only reads passes on a database that cannot write");
        admin.execute_batch("DROP TRIGGER full").unwrap();
        sqlite.probe().await.unwrap();
        assert_eq!(sqlite.all_markers().await.unwrap(), vec![], "the probe's row was rolled back");
    }

    /// Issue 10 item 14: many sagas writing at once (a breaker closing) through a small pool
    /// with no busy wait at all: writers are serialized in the process, so none fails as busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_are_serialized_and_none_fails_as_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herd.sqlite");
        let sqlite = Arc::new(Sqlite::open("sqlite", &path, 2).unwrap().with_busy_timeout(Duration::ZERO));
        let writers: Vec<_> = (0..40u32)
            .map(|step| {
                let sqlite = Arc::clone(&sqlite);
                tokio::spawn(async move {
                    let key = StepKey { saga_id: "herd".to_owned(), step, direction: Direction::Forward, scope: None };
                    sqlite.apply(&key, 1, &Operation::Noop).await
                })
            })
            .collect();
        for writer in writers {
            assert_eq!(writer.await.unwrap().unwrap(), Applied::Applied);
        }
        assert_eq!(sqlite.markers("herd").await.unwrap().len(), 40);
    }

    /// A database whose marker table an earlier build created (no fence table): its markers
    /// read back unchanged, read-only too, and a read-write open adds the fence table beside
    /// it, so fencing works on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_from_before_fences_keeps_its_markers_and_gets_a_fence_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE sagalog_markers (saga_id TEXT NOT NULL, step INTEGER NOT NULL, direction TEXT NOT NULL, \
             applied_at_ms INTEGER NOT NULL, PRIMARY KEY (saga_id, step, direction));
             INSERT INTO sagalog_markers VALUES ('old', 0, 'forward', 1700000000000);",
        )
        .unwrap();
        let tables = |conn: &rusqlite::Connection| -> Vec<String> {
            let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        let done = StepKey { saga_id: "old".to_owned(), step: 0, direction: Direction::Forward, scope: None };
        let ro = Sqlite::open_read_only("sqlite", &path, 1).unwrap();
        assert!(ro.lookup_marker(&done).await.unwrap());
        drop(ro);
        assert_eq!(tables(&old), ["sagalog_markers"], "a read-only open created no table");

        let sqlite = Sqlite::open("sqlite", &path, 2).unwrap();
        assert_eq!(tables(&old), ["sagalog_fences", "sagalog_markers"]);
        assert!(sqlite.lookup_marker(&done).await.unwrap());
        assert!(sqlite.settle_marker(&done, 1).await.unwrap(), "the old marker settles as present");
        let open = StepKey { step: 1, ..done.clone() };
        assert!(!sqlite.settle_marker(&open, 1).await.unwrap());
        assert_permanent(sqlite.apply(&open, 1, &Operation::Noop).await);
        assert_eq!(sqlite.apply(&open, 2, &Operation::Noop).await.unwrap(), Applied::Applied);
    }

    /// A pool size of zero is refused as a permanent error.
    #[test]
    fn zero_pool_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_permanent(Sqlite::open("sqlite", dir.path().join("zero.sqlite"), 0));
    }
}

#[cfg(feature = "duckdb")]
mod duckdb {
    use super::*;

    common_suite!(super::make_duckdb);
    sql_suite!(super::make_duckdb);
    fence_suite!(super::make_duckdb);

    /// Opened read-only: the same markers, `apply` refused, and a database without a marker
    /// table has no markers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_only_open_reads_markers_and_refuses_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.duckdb");
        let key = StepKey { saga_id: "ro".to_owned(), step: 1, direction: Direction::Forward, scope: None };
        {
            let db = Duckdb::open("duckdb", &path, 1).unwrap();
            db.apply(&key, 1, &Operation::Noop).await.unwrap();
        }
        let ro = Duckdb::open_read_only("duckdb", &path, 2).unwrap();
        assert!(ro.lookup_marker(&key).await.unwrap());
        assert_eq!(ro.lookup_markers(&[key.clone(), StepKey { step: 2, ..key.clone() }]).await.unwrap(), [true, false]);
        let listed: Vec<StepKey> = ro.all_markers().await.unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(listed, std::slice::from_ref(&key));
        assert_permanent(ro.apply(&StepKey { step: 3, ..key.clone() }, 1, &Operation::Noop).await);
        assert_permanent(ro.settle_marker(&StepKey { step: 3, ..key.clone() }, 1).await);
        drop(ro);

        let bare = dir.path().join("bare.duckdb");
        ::duckdb::Connection::open(&bare).unwrap().execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        let ro = Duckdb::open_read_only("bare", &bare, 1).unwrap();
        assert!(!ro.lookup_marker(&key).await.unwrap());
        assert_eq!(ro.all_markers().await.unwrap(), vec![]);
    }
}

/// The same suites with the group commit off (`group_commit = false`).
mod postgres_unbatched {
    common_suite!(super::make_postgres_unbatched);
    sql_suite!(super::make_postgres_unbatched);
    fence_suite!(super::make_postgres_unbatched);
}

mod postgres {
    use super::*;

    common_suite!(super::make_postgres);
    sql_suite!(super::make_postgres);
    fence_suite!(super::make_postgres);

    /// `group_commit` in a participant's config reaches the participant: on by default (its
    /// steps are counted in group commits), off with `group_commit = false` (none are).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_group_commit_key_turns_batching_on_and_off() {
        let Some(client) = crate::pg_support::client("participant conformance test").await else { return };
        let dir = tempfile::tempdir().unwrap();
        let url = crate::pg_support::conninfo();
        let config = sagalog::catalog::Catalog::parse(&format!(
            "[participants.on]\nkind = \"postgres\"\nurl = \"{url}\"\n\
             [participants.off]\nkind = \"postgres\"\nurl = \"{url}\"\ngroup_commit = false\n"
        ))
        .unwrap();
        let opened = sagalog::participant::open_all(&config.config.participants, dir.path()).unwrap();
        let run = run_id();
        for name in ["on", "off"] {
            let key = StepKey::new(format!("switch-{run}-{name}"), 0, Direction::Forward);
            assert_eq!(opened[name].apply(&key, 1, &Operation::Noop).await.unwrap(), Applied::Applied);
        }
        assert_eq!(opened["on"].group_commits(), Some((1, 1)));
        assert_eq!(opened["off"].group_commits(), None);
        let like = format!("switch-{run}-%");
        client.execute("DELETE FROM sagalog_markers WHERE saga_id LIKE $1", &[&like]).await.unwrap();
    }

    /// A table for the group-commit cases: a `CHECK` that fails a step at once, and a deferred
    /// `UNIQUE` that fails it only at `COMMIT`.
    async fn group_table(client: &tokio_postgres::Client) -> String {
        let table = format!("sagalog_group_{}", run_id());
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id BIGINT PRIMARY KEY, note TEXT CHECK (note <> 'bad'), \
                 n BIGINT UNIQUE DEFERRABLE INITIALLY DEFERRED)"
            ))
            .await
            .unwrap();
        table
    }

    fn insert_n(table: &str, id: i64, note: &str, n: i64) -> Operation {
        Operation::Sql {
            sql: format!("INSERT INTO {table} (id, note, n) VALUES ($1, $2, $3)"),
            args: vec![Value::Int(id), Value::Text(note.to_owned()), Value::Int(n)],
            rows: None,
        }
    }

    async fn rows(client: &tokio_postgres::Client, table: &str) -> std::collections::BTreeSet<i64> {
        let rows = client.query(&format!("SELECT id FROM {table}"), &[]).await.unwrap();
        rows.iter().map(|r| r.get::<_, i64>(0)).collect()
    }

    /// Issue 13 item 7: steps applied together share a commit, and each is answered as it
    /// would be alone. 96 concurrent applies: every 7th fails its `CHECK` (permanent, at once),
    /// and two insert the same value of a deferred `UNIQUE`, which only the `COMMIT` refuses
    /// (then the batch's steps run again one by one: exactly one of the two applies). Every
    /// step answered "applied" has its row and its marker; no other step has either; and the
    /// steps shared fewer commits than there were steps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn steps_applied_together_share_a_commit_and_fail_alone() {
        let Some(client) = crate::pg_support::client("participant conformance test").await else { return };
        let table = group_table(&client).await;
        let run = run_id();
        let pg = Arc::new(Postgres::connect("pg", &crate::pg_support::conninfo(), 4).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..96i64 {
            let note = if id % 7 == 3 { "bad" } else { "ok" };
            // 20 and 60 both insert n = 20 (neither is a multiple-of-7-plus-3).
            let n = if id == 60 { 20 } else { id };
            let (pg, op) = (Arc::clone(&pg), insert_n(&table, id, note, n));
            let key = StepKey::new(format!("group-{run}-{id}"), 0, Direction::Forward);
            tasks.spawn(async move { (id, key.clone(), pg.apply(&key, 1, &op).await) });
        }
        let mut applied = std::collections::BTreeSet::new();
        let mut unique_failures = 0;
        while let Some(joined) = tasks.join_next().await {
            let (id, key, result) = joined.unwrap();
            match result {
                Ok(Applied::Applied) => {
                    assert_ne!(id % 7, 3, "step {id} broke its CHECK and was applied");
                    applied.insert(id);
                }
                Err(e) if e.kind == ErrorKind::Permanent && id % 7 == 3 => {
                    assert!(e.message.contains("23514"), "step {id}: {e}");
                }
                Err(e) if e.kind == ErrorKind::Permanent && (id == 20 || id == 60) => {
                    assert!(e.message.contains("23505"), "step {id}: {e}");
                    unique_failures += 1;
                }
                other => panic!("step {id}: {other:?}"),
            }
            assert_eq!(pg.lookup_marker(&key).await.unwrap(), applied.contains(&id), "step {id}'s marker");
        }
        assert_eq!(unique_failures, 1, "exactly one of the two steps with n = 20 fails");
        assert_eq!(applied.len(), 96 - 14 - 1);
        assert_eq!(rows(&client, &table).await, applied, "the rows are the applied steps' rows");
        let (transactions, steps) = pg.group_commits();
        assert_eq!(steps, 96);
        assert!(transactions < steps, "{steps} steps in {transactions} batches: no step shared a commit");
        client.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
        let like = format!("group-{run}-%");
        client.execute("DELETE FROM sagalog_markers WHERE saga_id LIKE $1", &[&like]).await.unwrap();
    }

    /// Issue 13 item 7, under a fault: the connection of a batch dies while a step of it waits
    /// for a row lock. The steps that batch had applied before are answered retryable, not
    /// applied, and have neither row nor marker (the transaction never committed); the steps
    /// after it never ran; each applies on its next attempt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_batch_whose_connection_dies_answers_none_of_its_steps_applied() {
        let Some(client) = crate::pg_support::client("participant conformance test").await else { return };
        let table = group_table(&client).await;
        let run = run_id();
        // Two outside transactions hold the rows 1000 and 1001 (uncommitted inserts). Only the
        // backends their pids block are watched and killed: other tests share the database.
        let (mut holders, mut pids) = (Vec::new(), Vec::new());
        for id in [1000i64, 1001] {
            let holder = crate::pg_support::client("participant conformance test").await.unwrap();
            holder
                .batch_execute(&format!("BEGIN; INSERT INTO {table} (id, note, n) VALUES ({id}, 'held', {id})"))
                .await
                .unwrap();
            pids.push(holder.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get::<_, i32>(0));
            holders.push(holder);
        }
        // A pool of 2: one batch at a time.
        let pg = Arc::new(Postgres::connect("pg", &crate::pg_support::conninfo(), 2).unwrap());
        let key = |id: i64| StepKey::new(format!("lost-{run}-{id}"), 0, Direction::Forward);
        let spawn = |tasks: &mut tokio::task::JoinSet<_>, id: i64, attempt: u32| {
            let (pg, op, key) = (Arc::clone(&pg), insert_n(&table, id, "ok", id), key(id));
            tasks.spawn(async move { (id, pg.apply(&key, attempt, &op).await) });
        };
        let waiting = |holder: i32| {
            let client = &client;
            async move {
                for _ in 0..500 {
                    let row = client
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                            &[&holder],
                        )
                        .await
                        .unwrap();
                    if row.get::<_, i64>(0) >= 1 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("no step came to wait for the held row");
            }
        };
        let mut first = tokio::task::JoinSet::new();
        spawn(&mut first, 1000, 1);
        waiting(pids[0]).await;
        // The first batch waits on row 1000: these queue for the next one, 1001 among them.
        let mut second = tokio::task::JoinSet::new();
        for id in 1..=8 {
            spawn(&mut second, id, 1);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        spawn(&mut second, 1001, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        for id in 9..=12 {
            spawn(&mut second, id, 1);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Row 1000 is freed: the first batch commits, the second takes the 13 queued steps and
        // waits on row 1001. Then its connection dies.
        holders[0].batch_execute("ROLLBACK").await.unwrap();
        let (id, result) = first.join_next().await.unwrap().unwrap();
        assert_eq!((id, result.unwrap()), (1000, Applied::Applied));
        waiting(pids[1]).await;
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&pids[1]],
            )
            .await
            .unwrap();
        while let Some(joined) = second.join_next().await {
            let (id, result) = joined.unwrap();
            match result {
                Err(e) => assert_eq!(e.kind, ErrorKind::Retryable, "step {id}: {e}"),
                Ok(applied) => panic!("step {id} answered {applied:?} from a transaction that never committed"),
            }
            assert!(!pg.lookup_marker(&key(id)).await.unwrap(), "step {id} left a marker");
        }
        assert_eq!(rows(&client, &table).await, [1000].into(), "only the first batch's row exists");
        // Each step applies on its next attempt (1001 once its holder is gone).
        holders[1].batch_execute("ROLLBACK").await.unwrap();
        let mut retry = tokio::task::JoinSet::new();
        for id in (1..=12).chain([1001]) {
            spawn(&mut retry, id, 2);
        }
        while let Some(joined) = retry.join_next().await {
            let (id, result) = joined.unwrap();
            assert_eq!(result.unwrap(), Applied::Applied, "step {id}, attempt 2");
        }
        assert_eq!(rows(&client, &table).await.len(), 14);
        client.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
        let like = format!("lost-{run}-%");
        client.execute("DELETE FROM sagalog_markers WHERE saga_id LIKE $1", &[&like]).await.unwrap();
    }

    /// Issue 10 A4: two instances sharing one database, each with its own `marker_table` and
    /// `fence_table`: each writes only its own tables and never sees the other's markers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_with_their_own_marker_tables_keep_apart() {
        let Some(client) = crate::pg_support::client("participant conformance test").await else { return };
        let suffix = run_id();
        let tables = |who: &str| sagalog::participant::Tables {
            markers: format!("m_{who}_{suffix}"),
            fences: format!("f_{who}_{suffix}"),
        };
        let a = Postgres::connect_with_tables("a", &crate::pg_support::conninfo(), 2, tables("a")).unwrap();
        let b = Postgres::connect_with_tables("b", &crate::pg_support::conninfo(), 2, tables("b")).unwrap();
        let key = StepKey::new(format!("shared-{suffix}"), 0, Direction::Forward);
        assert_eq!(a.apply(&key, 1, &Operation::Noop).await.unwrap(), Applied::Applied);
        assert!(!b.lookup_marker(&key).await.unwrap(), "b answered from a's marker table");
        assert!(!b.settle_marker(&key, 1).await.unwrap());
        assert_eq!(a.apply(&key, 2, &Operation::Noop).await.unwrap(), Applied::AlreadyApplied, "b's fence reached a");
        let count = |table: String| {
            let client = &client;
            async move { client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get::<_, i64>(0) }
        };
        let (ta, tb) = (tables("a"), tables("b"));
        assert_eq!(
            (count(ta.markers.clone()).await, count(ta.fences.clone()).await),
            (1, 0),
            "a wrote its marker into its own table"
        );
        assert_eq!((count(tb.markers.clone()).await, count(tb.fences.clone()).await), (0, 1));
        for t in [ta.markers, ta.fences, tb.markers, tb.fences] {
            client.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
        }
    }

    /// A server that does not answer makes probe and apply fail as retryable, not permanent.
    #[tokio::test]
    async fn unreachable_server_is_retryable() {
        let postgres = Postgres::connect("down", "host=127.0.0.1 port=1 user=nobody connect_timeout=2", 1).unwrap();
        let error = postgres.probe().await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Retryable, "{error}");
        let key = StepKey { saga_id: "down".to_owned(), step: 0, direction: Direction::Forward, scope: None };
        let error = postgres.apply(&key, 1, &Operation::Noop).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Retryable, "{error}");
    }

    /// Opened read-only (the offline tools): the fencing lookup is refused (it would write),
    /// and the plain lookup still reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_only_refuses_the_fencing_lookup() {
        let Some(h) = make_postgres().await else { return };
        let key = h.key("ro-fence", 0, Direction::Forward);
        h.p().apply(&key, 1, &Operation::Noop).await.unwrap();
        let ro = Postgres::connect_read_only("ro", &crate::pg_support::conninfo(), 1).unwrap();
        assert!(ro.lookup_marker(&key).await.unwrap());
        let message = assert_permanent(ro.settle_marker(&StepKey { step: 1, ..key.clone() }, 1).await);
        assert!(message.contains("read-only"), "{message}");
        h.finish().await;
    }

    /// A malformed conninfo is a permanent error at construction.
    #[test]
    fn malformed_conninfo_is_permanent() {
        assert_permanent(Postgres::connect("bad", "host='unterminated", 1));
    }

    /// An Int too large for an `integer` parameter is refused before it reaches the server,
    /// and the marker is rolled back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn int_out_of_range_for_integer_is_permanent() {
        let Some(h) = make_postgres().await else { return };
        let key = h.key("range", 0, Direction::Forward);
        let sql = format!("INSERT INTO {} (id, note) VALUES ($1::integer, $2)", h.table);
        let op = Operation::Sql { sql, args: vec![Value::Int(1 << 40), Value::Text("big".to_owned())], rows: None };
        let message = assert_permanent(h.p().apply(&key, 1, &op).await);
        assert!(message.contains("$1"), "{message}");
        assert!(!h.p().lookup_marker(&key).await.unwrap());
        h.finish().await;
    }
}

mod fs {
    use super::*;

    async fn read(h: &Harness, relative: &str) -> Option<Vec<u8>> {
        let Effects::Fs(root) = &h.effects else { unreachable!() };
        std::fs::read(root.join(relative)).ok()
    }

    fn root(h: &Harness) -> &Path {
        let Effects::Fs(root) = &h.effects else { unreachable!() };
        root
    }

    fn put(path: &str, contents: &str) -> Operation {
        Operation::FilePut { path: path.to_owned(), contents: contents.as_bytes().to_vec() }
    }

    common_suite!(super::make_fs);
    fence_suite!(super::make_fs);

    /// Issue 10 item 14: the probe walks the marker write path (create, write, fsync,
    /// remove), so a marker directory that can be listed but not written in fails it. The
    /// tests run as root, where permissions do not stop writes: the probe's file name is
    /// taken by a directory instead. A passing probe leaves nothing behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probe_fails_when_the_marker_directory_cannot_be_written() {
        let h = make_fs().await.unwrap();
        let markers = root(&h).join(".sagalog-markers");
        h.p().probe().await.unwrap();
        assert_eq!(std::fs::read_dir(&markers).unwrap().count(), 0, "the probe left a file");
        let blocker = markers.join("%sagalog-probe");
        std::fs::create_dir(&blocker).unwrap();
        assert!(h.p().probe().await.is_err(), "a probe that only reads metadata passes");
        assert_eq!(h.p().all_markers().await.unwrap(), vec![], "the probe's name is never a saga");
        std::fs::remove_dir(&blocker).unwrap();
        h.p().probe().await.unwrap();
    }

    /// Opened read-only: the same markers, `apply` refused, and a root without a marker
    /// directory gets none created.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_only_open_reads_markers_and_creates_nothing() {
        let h = make_fs().await.unwrap();
        let key = h.key("ro", 0, Direction::Forward);
        h.p().apply(&key, 1, &put("x.txt", "x")).await.unwrap();
        let ro = Fs::open_read_only("fs", root(&h).to_path_buf()).unwrap();
        assert!(ro.lookup_marker(&key).await.unwrap());
        assert_eq!(ro.all_markers().await.unwrap().into_iter().map(|e| e.key).collect::<Vec<_>>(), vec![key.clone()]);
        assert_permanent(ro.apply(&h.key("ro", 1, Direction::Forward), 1, &put("y.txt", "y")).await);
        assert!(!root(&h).join("y.txt").exists());

        let empty = tempfile::tempdir().unwrap();
        let ro = Fs::open_read_only("fs", empty.path().to_path_buf()).unwrap();
        assert_eq!(ro.all_markers().await.unwrap(), vec![]);
        assert!(!ro.lookup_marker(&key).await.unwrap());
        assert!(walk(empty.path()).is_empty(), "nothing created");
    }

    /// Saga ids that needed encoding come back decoded from all_markers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn all_markers_decodes_encoded_saga_ids() {
        let h = make_fs().await.unwrap();
        let key =
            StepKey { saga_id: format!("a/b c:{}", h.run_id), step: 2, direction: Direction::Compensate, scope: None };
        h.p().apply(&key, 1, &Operation::Noop).await.unwrap();
        let all: Vec<StepKey> = h.p().all_markers().await.unwrap().into_iter().map(|e| e.key).collect();
        assert!(all.contains(&key), "{all:?}");
    }

    /// Put, copy and delete take visible effect, creating directories as needed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_copy_delete_are_visible() {
        let h = make_fs().await.unwrap();
        h.p().apply(&h.key("files", 0, Direction::Forward), 1, &put("a/b/c.txt", "hello")).await.unwrap();
        assert_eq!(read(&h, "a/b/c.txt").await.as_deref(), Some(&b"hello"[..]));
        let copy = Operation::FileCopy { from: "a/b/c.txt".to_owned(), to: "d/e.txt".to_owned() };
        h.p().apply(&h.key("files", 1, Direction::Forward), 1, &copy).await.unwrap();
        assert_eq!(read(&h, "d/e.txt").await.as_deref(), Some(&b"hello"[..]));
        let delete = Operation::FileDelete { path: "a/b/c.txt".to_owned() };
        h.p().apply(&h.key("files", 2, Direction::Forward), 1, &delete).await.unwrap();
        assert_eq!(read(&h, "a/b/c.txt").await, None);
        let leftovers: Vec<_> =
            walk(root(&h)).into_iter().filter(|p| p.to_string_lossy().contains(".sagalog-tmp-")).collect();
        assert!(leftovers.is_empty(), "no temporary files remain: {leftovers:?}");
    }

    /// A put over an existing file replaces its contents.
    #[tokio::test]
    async fn put_replaces_existing_file() {
        let h = make_fs().await.unwrap();
        h.p().apply(&h.key("replace", 0, Direction::Forward), 1, &put("f", "old")).await.unwrap();
        h.p().apply(&h.key("replace", 1, Direction::Forward), 1, &put("f", "new")).await.unwrap();
        assert_eq!(read(&h, "f").await.as_deref(), Some(&b"new"[..]));
    }

    /// Deleting a file that does not exist succeeds and records the marker.
    #[tokio::test]
    async fn delete_of_missing_file_succeeds() {
        let h = make_fs().await.unwrap();
        let key = h.key("delete-missing", 0, Direction::Compensate);
        let delete = Operation::FileDelete { path: "never/was.txt".to_owned() };
        assert_eq!(h.p().apply(&key, 1, &delete).await.unwrap(), Applied::Applied);
        assert!(h.p().lookup_marker(&key).await.unwrap());
    }

    /// Copying from a source that does not exist is permanent and records no marker.
    #[tokio::test]
    async fn copy_of_missing_source_is_permanent() {
        let h = make_fs().await.unwrap();
        let key = h.key("copy-missing", 0, Direction::Forward);
        let copy = Operation::FileCopy { from: "nope".to_owned(), to: "x".to_owned() };
        let message = assert_permanent(h.p().apply(&key, 1, &copy).await);
        assert!(message.contains("nope"), "{message}");
        assert!(!h.p().lookup_marker(&key).await.unwrap());
    }

    /// Paths that are empty, absolute, climb out of the root or reach into the marker
    /// directory are refused as permanent errors, touching nothing.
    #[tokio::test]
    async fn path_traversal_is_refused() {
        let h = make_fs().await.unwrap();
        let bad = ["../x", "/etc/passwd", "a/../../x", "a/..", "", "./a", ".sagalog-markers/x/0.forward"];
        for (step, path) in (0..).zip(bad) {
            let key = h.key("traversal", step, Direction::Forward);
            let message = assert_permanent(h.p().apply(&key, 1, &put(path, "evil")).await);
            assert!(message.contains(&format!("{path:?}")), "the error names the path: {message}");
            assert!(!h.p().lookup_marker(&key).await.unwrap());
            let copy = Operation::FileCopy { from: path.to_owned(), to: "stolen".to_owned() };
            assert_permanent(h.p().apply(&key, 1, &copy).await);
        }
        assert!(!root(&h).parent().unwrap().join("x").exists());
        assert_eq!(read(&h, "stolen").await, None);
    }

    /// With the marker present, apply touches nothing: a changed file stays changed.
    #[tokio::test]
    async fn already_applied_touches_nothing() {
        let h = make_fs().await.unwrap();
        let key = h.key("untouched", 0, Direction::Forward);
        h.p().apply(&key, 1, &put("f", "ours")).await.unwrap();
        std::fs::write(root(&h).join("f"), "changed since").unwrap();
        assert_eq!(h.p().apply(&key, 1, &put("f", "ours")).await.unwrap(), Applied::AlreadyApplied);
        assert_eq!(read(&h, "f").await.as_deref(), Some(&b"changed since"[..]));
    }

    /// A saga id that is not a safe directory name is encoded: its markers stay inside the
    /// marker directory and are listed like any other.
    #[tokio::test]
    async fn unsafe_saga_id_is_encoded() {
        let h = make_fs().await.unwrap();
        for saga_id in ["../../escape", "a/b c", ".", ""] {
            let key = StepKey { saga_id: saga_id.to_owned(), step: 4, direction: Direction::Forward, scope: None };
            assert_eq!(h.p().apply(&key, 1, &Operation::Noop).await.unwrap(), Applied::Applied);
            assert!(h.p().lookup_marker(&key).await.unwrap());
            assert_eq!(h.p().markers(saga_id).await.unwrap(), vec![(4, Direction::Forward)]);
        }
        let outside: Vec<_> =
            walk(root(&h)).into_iter().filter(|p| !p.starts_with(root(&h).join(".sagalog-markers"))).collect();
        assert!(outside.is_empty(), "markers stay in the marker directory: {outside:?}");
    }

    /// A SQL statement sent to the file participant is permanent and records no marker.
    #[tokio::test]
    async fn sql_operation_is_permanent() {
        let h = make_fs().await.unwrap();
        let key = h.key("sql", 0, Direction::Forward);
        assert_permanent(
            h.p().apply(&key, 1, &Operation::Sql { sql: "SELECT 1".to_owned(), args: vec![], rows: None }).await,
        );
        assert!(!h.p().lookup_marker(&key).await.unwrap());
    }

    /// A root that does not exist is refused as a permanent error.
    #[test]
    fn missing_root_is_permanent() {
        let dir = tempfile::tempdir().unwrap();
        assert_permanent(Fs::open("fs", dir.path().join("absent")));
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
        found
    }
}
