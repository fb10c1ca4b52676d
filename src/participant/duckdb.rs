//! The DuckDB participant: one DuckDB database file, opened once, with a pool of cloned
//! connections to that one database instance.
//!
//! DuckDB lets one process write a database file, and inside that process its transactions are
//! optimistic: two concurrent writers conflict at commit instead of waiting. This participant
//! therefore serializes its own `apply` calls with a write lock, so that within the process a
//! marker check can never race another apply of the same key; reads (`lookup_marker`,
//! `markers`, `probe`) run concurrently on the other pooled connections. A conflict that still
//! happens (a statement racing work done through [`Duckdb::connection`]) is retryable.
//!
//! `apply` runs the fence check, the marker check, the step's statement and the marker insert
//! in one transaction. **Group commit** (`participant::batch`): applies that arrive while a
//! transaction runs are queued, and the next writer runs up to `BATCH_MAX` of them in one
//! transaction and one commit. DuckDB has no savepoints and aborts a transaction at its first
//! error, so a step that fails (a constraint, a guard, a fence row) ends the pass: it gets its
//! error, the transaction is rolled back, and the others run again in a new one. Failing steps
//! thus cost a pass each; the common case, all steps applied, costs one commit. `settle_marker` (the executor's fencing lookup) takes the same write
//! lock and reads the marker: a timed-out apply still running on its blocking thread holds the
//! write lock until its transaction ends, so the lookup waits for it. When there is no marker
//! the fence is kept **in memory**, and an apply of a fenced-off attempt that takes the write
//! lock later fails permanently. Memory is enough because DuckDB lets one process write a file:
//! an attempt can only run in this process (a crashed process's transaction is gone with it),
//! and a queued step whose `apply` future was dropped (a timeout) runs under the same write
//! lock, so it either commits before the lookup reads or finds the lookup's fence. A fence
//! row written and committed per lookup (as SQLite and PostgreSQL do) cost one DuckDB commit
//! per in-doubt step under the write lock: after a crash with hundreds of steps in doubt, the
//! applies queued behind those commits timed out and the breaker parked every saga (found by
//! `tests/crash.rs`). Fence rows an earlier build wrote to `sagalog_fences` are still honoured.
//! Every call into DuckDB runs on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use duckdb::{Connection, params, params_from_iter};

use super::batch::{BatchStep, Batching, GroupCommit, StepRun};
use super::marker::{self, decode_outputs, encode_outputs, now_ms};
use super::pool::BlockingPool;
use super::{
    Applied, BoxFuture, Direction, Error, Kind, MarkerEntry, Operation, Outputs, Participant, Statement, StepKey,
    Tables, fenced_off,
};
use crate::engine::value::Value;

/// The most connections one DuckDB participant keeps.
pub const POOL_SIZE_MAX: usize = 64;

/// A DuckDB database file acting as a saga participant. Cheap to share behind an `Arc`.
pub struct Duckdb {
    name: String,
    path: PathBuf,
    /// The connection the pool's connections are cloned from; kept so the database instance
    /// stays open even when every pooled connection was dropped.
    base: Arc<Mutex<Connection>>,
    /// Held by `apply`, `settle_marker` and the write probe from before they take a connection
    /// until their transaction ends: one writer at a time inside this process, and waiting
    /// writers do not hold pooled connections.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Attempts `settle_marker` found not applied, per key (see the module doc): kept in
    /// memory, checked by `apply` under the write lock.
    fences: Arc<Mutex<std::collections::HashMap<StepKey, u32>>>,
    pool: Arc<BlockingPool<Connection>>,
    /// Where `apply` queues its step for the next group commit.
    group: GroupCommit<Connection>,
    /// Opened by [`Duckdb::open_read_only`]: `apply` fails, nothing is ever written.
    read_only: bool,
    /// False only for a read-only database without a marker table: it holds no markers.
    has_marker_table: bool,
    /// False only for a read-only database whose marker table predates step outputs.
    has_outputs_column: bool,
    /// The marker and fence tables' names.
    tables: Arc<Tables>,
}

impl Duckdb {
    /// Opens (creating if needed) the database at `path` with up to `pool_size` connections
    /// and creates the marker and fence tables.
    ///
    /// This does blocking file I/O: call it at startup, or from a blocking thread.
    pub fn open(name: &str, path: impl Into<PathBuf>, pool_size: usize) -> Result<Duckdb, Error> {
        Duckdb::open_with_tables(name, path, pool_size, Tables::default())
    }

    /// [`Duckdb::open`] with the marker and fence tables named `tables` (config keys
    /// `marker_table`, `fence_table`).
    pub fn open_with_tables(
        name: &str,
        path: impl Into<PathBuf>,
        pool_size: usize,
        tables: Tables,
    ) -> Result<Duckdb, Error> {
        let Tables { markers, fences } = &tables;
        if pool_size == 0 || pool_size > POOL_SIZE_MAX {
            return Err(Error::permanent(name, format!("pool size {pool_size} is outside 1..={POOL_SIZE_MAX}")));
        }
        let path = path.into();
        let base = Connection::open(&path).map_err(|e| classify(name, &format!("open {}", path.display()), &e))?;
        base.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {markers} (
                saga_id TEXT NOT NULL,
                step INTEGER NOT NULL,
                direction TEXT NOT NULL,
                applied_at_ms BIGINT NOT NULL,
                outputs BLOB,
                PRIMARY KEY (saga_id, step, direction)
            )"
        ))
        .map_err(|e| classify(name, "create marker table", &e))?;
        // A marker table from before step outputs gets the column (NULL: no outputs).
        base.execute_batch(&format!("ALTER TABLE {markers} ADD COLUMN IF NOT EXISTS outputs BLOB"))
            .map_err(|e| classify(name, "add the outputs column to the marker table", &e))?;
        base.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {fences} (
                saga_id TEXT NOT NULL,
                step INTEGER NOT NULL,
                direction TEXT NOT NULL,
                through_attempt BIGINT NOT NULL,
                fenced_at_ms BIGINT NOT NULL,
                PRIMARY KEY (saga_id, step, direction, through_attempt)
            )"
        ))
        .map_err(|e| classify(name, "create fence table", &e))?;
        let first = base.try_clone().map_err(|e| classify(name, "clone connection", &e))?;
        let base = Arc::new(Mutex::new(base));
        let connector = {
            let (name, base) = (name.to_owned(), Arc::clone(&base));
            move || clone_connection(&name, &base)
        };
        let pool = Arc::new(BlockingPool::new(name, pool_size, first, connector, |_| true));
        let (write_lock, fences, tables) = (Arc::default(), Arc::default(), Arc::new(tables));
        Ok(Duckdb {
            name: name.to_owned(),
            path,
            base,
            group: group_commit(name, &pool, &write_lock, &fences, &tables),
            write_lock,
            fences,
            pool,
            read_only: false,
            has_marker_table: true,
            has_outputs_column: true,
            tables,
        })
    }

    /// Opens an existing database file read-only (DuckDB's `access_mode = READ_ONLY`), for
    /// the offline tools: no table is created, `apply` fails, and a database without a marker
    /// table reads as having no markers.
    ///
    /// This does blocking file I/O: call it at startup, or from a blocking thread.
    pub fn open_read_only(name: &str, path: impl Into<PathBuf>, pool_size: usize) -> Result<Duckdb, Error> {
        Duckdb::open_read_only_with_tables(name, path, pool_size, Tables::default())
    }

    /// [`Duckdb::open_read_only`] with the marker and fence tables named `tables`.
    pub fn open_read_only_with_tables(
        name: &str,
        path: impl Into<PathBuf>,
        pool_size: usize,
        tables: Tables,
    ) -> Result<Duckdb, Error> {
        if pool_size == 0 || pool_size > POOL_SIZE_MAX {
            return Err(Error::permanent(name, format!("pool size {pool_size} is outside 1..={POOL_SIZE_MAX}")));
        }
        let path = path.into();
        let config = duckdb::Config::default()
            .access_mode(duckdb::AccessMode::ReadOnly)
            .map_err(|e| classify(name, "configure read-only access", &e))?;
        let base = Connection::open_with_flags(&path, config)
            .map_err(|e| classify(name, &format!("open {} read-only", path.display()), &e))?;
        let has_marker_table = base
            .query_row(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'",
                [&tables.markers],
                |row| row.get::<_, i64>(0),
            )
            .map_err(|e| classify(name, "look for the marker table", &e))?
            > 0;
        let has_outputs_column = has_marker_table
            && base
                .query_row(
                    "SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND schema_name = 'main' \
                     AND column_name = 'outputs'",
                    [&tables.markers],
                    |row| row.get::<_, i64>(0),
                )
                .map_err(|e| classify(name, "look for the outputs column", &e))?
                > 0;
        let first = base.try_clone().map_err(|e| classify(name, "clone connection", &e))?;
        let base = Arc::new(Mutex::new(base));
        let connector = {
            let (name, base) = (name.to_owned(), Arc::clone(&base));
            move || clone_connection(&name, &base)
        };
        let pool = Arc::new(BlockingPool::new(name, pool_size, first, connector, |_| true));
        let (write_lock, fences, tables) = (Arc::default(), Arc::default(), Arc::new(tables));
        Ok(Duckdb {
            name: name.to_owned(),
            path,
            base,
            group: group_commit(name, &pool, &write_lock, &fences, &tables),
            write_lock,
            fences,
            pool,
            read_only: true,
            has_marker_table,
            has_outputs_column,
            tables,
        })
    }

    /// How many group commits ran so far, and how many steps they held in all.
    pub fn group_commits(&self) -> (u64, u64) {
        self.group.counts()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new connection to the same database instance, for setup and inspection (tests, tools).
    /// DuckDB lets only one database instance per file and process exist, so this is the way to
    /// look at the data while the participant is open. Blocking: use it off the async runtime.
    pub fn connection(&self) -> Result<Connection, Error> {
        clone_connection(&self.name, &self.base)
    }

    async fn run<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&str, &mut Connection) -> Result<T, Error> + Send + 'static,
    {
        let name = self.name.clone();
        self.pool.run(move |conn| work(&name, conn)).await
    }
}

impl std::fmt::Debug for Duckdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Duckdb").field("name", &self.name).field("path", &self.path).finish_non_exhaustive()
    }
}

impl Participant for Duckdb {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> Kind {
        Kind::Duckdb
    }

    fn group_commits(&self) -> Option<(u64, u64)> {
        Some(self.group.counts())
    }

    fn apply<'a>(&'a self, key: &'a StepKey, attempt: u32, op: &'a Operation) -> BoxFuture<'a, Result<Applied, Error>> {
        Box::pin(async move { self.apply_with_outputs(key, attempt, op).await.map(|(applied, _)| applied) })
    }

    fn prepare_check<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Option<usize>, Error>> {
        let sql = sql.to_owned();
        Box::pin(self.run(move |name, conn| {
            let stmt = conn.prepare(&sql).map_err(|e| Error::permanent(name, format!("does not prepare: {e}")))?;
            Ok(Some(stmt.parameter_count()))
        }))
    }

    fn marker_outputs<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<Outputs, Error>> {
        let key = key.clone();
        let readable = self.has_marker_table && self.has_outputs_column;
        let tables = Arc::clone(&self.tables);
        Box::pin(self.run(move |name, conn| {
            if !readable {
                return Ok(Outputs::new());
            }
            Ok(stored_outputs(name, conn, &tables, &key)?.unwrap_or_default())
        }))
    }

    fn apply_with_outputs<'a>(
        &'a self,
        key: &'a StepKey,
        attempt: u32,
        op: &'a Operation,
    ) -> BoxFuture<'a, Result<(Applied, Outputs), Error>> {
        Box::pin(async move {
            if self.read_only {
                return Err(Error::permanent(&self.name, "opened read-only: it cannot apply a step"));
            }
            let statements = op.sql(&self.name)?;
            // A committer task of its own runs the step under the write lock: dropping this
            // future (a step timeout) neither strands the queued step nor cuts a transaction
            // short, and a fencing lookup waits for it.
            self.group.apply(BatchStep { key: key.clone(), attempt, statements }).await
        })
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            if self.read_only {
                return Err(Error::permanent(&self.name, "opened read-only: it cannot fence a step's attempts"));
            }
            let key = key.clone();
            // As in `apply`: the guard travels with the transaction.
            let writer = Arc::clone(&self.write_lock).lock_owned().await;
            let fences = Arc::clone(&self.fences);
            let tables = Arc::clone(&self.tables);
            self.run(move |name, conn| {
                let _writer = writer;
                let present = marker_exists(name, conn, &tables, &key)?;
                if !present {
                    let mut fences = fences.lock().unwrap_or_else(PoisonError::into_inner);
                    let through = fences.entry(key).or_default();
                    *through = (*through).max(through_attempt);
                }
                Ok(present)
            })
            .await
        })
    }

    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        let key = key.clone();
        let has_table = self.has_marker_table;
        let tables = Arc::clone(&self.tables);
        Box::pin(
            self.run(move |name, conn| if has_table { marker_exists(name, conn, &tables, &key) } else { Ok(false) }),
        )
    }

    fn lookup_markers<'a>(&'a self, keys: &'a [StepKey]) -> BoxFuture<'a, Result<Vec<bool>, Error>> {
        let keys = keys.to_vec();
        let has_table = self.has_marker_table;
        let tables = Arc::clone(&self.tables);
        Box::pin(self.run(move |name, conn| {
            if !has_table {
                return Ok(vec![false; keys.len()]);
            }
            keys.iter().map(|key| marker_exists(name, conn, &tables, key)).collect()
        }))
    }

    fn all_markers(&self) -> BoxFuture<'_, Result<Vec<MarkerEntry>, Error>> {
        let has_table = self.has_marker_table;
        let markers_table = self.tables.markers.clone();
        Box::pin(self.run(move |name, conn| {
            if !has_table {
                return Ok(Vec::new());
            }
            let sql = marker::list_all_sql(&markers_table);
            let mut stmt = conn.prepare(&sql).map_err(|e| classify(name, "list markers", &e))?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| classify(name, "list markers", &e))?;
            marker::entries(name, rows)
        }))
    }

    fn markers<'a>(&'a self, saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>> {
        let saga_id = saga_id.to_owned();
        let has_table = self.has_marker_table;
        let markers_table = self.tables.markers.clone();
        Box::pin(self.run(move |name, conn| {
            if !has_table {
                return Ok(Vec::new());
            }
            let sql = marker::list_saga_sql(&markers_table, "$1");
            let mut stmt = conn.prepare(&sql).map_err(|e| classify(name, "list markers", &e))?;
            let rows = stmt
                .query_map([&saga_id], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| classify(name, "list markers", &e))?;
            marker::steps(name, rows)
        }))
    }

    fn count<'a>(&'a self, sql: &'a str, args: &'a [Value]) -> BoxFuture<'a, Result<i64, Error>> {
        let (sql, args) = (sql.to_owned(), args.to_vec());
        Box::pin(self.run(move |name, conn| {
            conn.query_row(&sql, params_from_iter(args.iter().map(to_duckdb)), |r| r.get(0))
                .map_err(|e| classify(name, "effect check", &e))
        }))
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        let read_only = self.read_only;
        Box::pin(async move {
            if read_only {
                return self
                    .run(|name, conn| {
                        conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                            .map_err(|e| classify(name, "probe", &e))?;
                        Ok(())
                    })
                    .await;
            }
            // A read succeeds on an invalidated database or a full disk: the probe writes a
            // marker row the way `apply` does (under the same write lock), then rolls it back.
            let writer = Arc::clone(&self.write_lock).lock_owned().await;
            let markers_table = self.tables.markers.clone();
            self.run(move |name, conn| {
                let _writer = writer;
                let tx = conn.transaction().map_err(|e| classify(name, "probe: begin transaction", &e))?;
                let insert = format!(
                    "INSERT INTO {markers_table} (saga_id, step, direction, applied_at_ms) VALUES ('', -1, 'probe', 0)"
                );
                tx.execute(&insert, []).map_err(|e| classify(name, "probe: write a marker row", &e))?;
                tx.rollback().map_err(|e| classify(name, "probe: rollback", &e))
            })
            .await
        })
    }
}

/// The participant's group commit, on its pool, write lock and in-memory fences.
fn group_commit(
    name: &str,
    pool: &Arc<BlockingPool<Connection>>,
    write_lock: &Arc<tokio::sync::Mutex<()>>,
    fences: &Arc<Mutex<std::collections::HashMap<StepKey, u32>>>,
    tables: &Arc<Tables>,
) -> GroupCommit<Connection> {
    let db = Arc::new(DuckdbBatching { fences: Arc::clone(fences), tables: Arc::clone(tables) });
    GroupCommit::new(name, Arc::clone(pool), Arc::clone(write_lock), db)
}

/// DuckDB's part of a group commit: one transaction, and no savepoints (see the module doc).
struct DuckdbBatching {
    fences: Arc<Mutex<std::collections::HashMap<StepKey, u32>>>,
    tables: Arc<Tables>,
}

impl Batching<Connection> for DuckdbBatching {
    fn begin(&self, name: &str, conn: &mut Connection) -> Result<(), Error> {
        conn.execute_batch("BEGIN TRANSACTION").map_err(|e| classify(name, "begin transaction", &e))
    }

    fn step(&self, name: &str, conn: &mut Connection, step: &BatchStep) -> StepRun {
        let BatchStep { key, attempt, statements } = step;
        let fenced = self.fences.lock().unwrap_or_else(PoisonError::into_inner).get(key).copied();
        if let Some(through) = fenced.filter(|through| attempt <= through) {
            // Decided from memory: the transaction is untouched.
            return StepRun { result: Err(fenced_off(name, key, *attempt, through)), usable: true };
        }
        let result = apply_in(name, conn, &self.tables, key, *attempt, statements);
        // Any error leaves DuckDB's transaction aborted, or holding the step's work.
        StepRun { usable: result.is_ok(), result }
    }

    fn rollback(&self, _name: &str, conn: &mut Connection) {
        // Always: DuckDB's autocommit flag does not tell an aborted transaction from none, and
        // a ROLLBACK outside a transaction only fails.
        let _ = conn.execute_batch("ROLLBACK");
    }

    fn commit(&self, name: &str, conn: &mut Connection) -> Result<(), Error> {
        conn.execute_batch("COMMIT").map_err(|e| commit_error(name, &e))
    }

    fn committed(&self, step: &BatchStep) {
        // The marker exists now: later lookups answer from it, and the map does not keep every
        // step that was ever settled "absent".
        self.fences.lock().unwrap_or_else(PoisonError::into_inner).remove(&step.key);
    }
}

/// One step inside a group commit's transaction: fence row check, marker check, statements,
/// marker insert. `Applied` is to be kept; `AlreadyApplied` changed nothing; an error leaves
/// the transaction to be rolled back.
fn apply_in(
    name: &str,
    tx: &Connection,
    tables: &Tables,
    key: &StepKey,
    attempt: u32,
    statements: &[Statement],
) -> Result<(Applied, Outputs), Error> {
    if let Some(through) = fenced_through(name, tx, tables, key)?
        && through >= attempt
    {
        return Err(fenced_off(name, key, attempt, through));
    }
    if let Some(outputs) = stored_outputs(name, tx, tables, key)? {
        return Ok((Applied::AlreadyApplied, outputs));
    }
    let mut outputs = Outputs::new();
    for (i, statement) in statements.iter().enumerate() {
        let context = Statement::context(key, i, statements.len());
        let params = params_from_iter(statement.args.iter().map(to_duckdb));
        let affected = if statement.returns.is_empty() {
            tx.execute(&statement.sql, params).map_err(|e| classify(name, &context, &e))?
        } else {
            let mut stmt = tx.prepare(&statement.sql).map_err(|e| classify(name, &context, &e))?;
            let mut rows = stmt.query(params).map_err(|e| classify(name, &context, &e))?;
            let (mut columns, mut first, mut count) = (Vec::new(), None, 0usize);
            while let Some(row) = rows.next().map_err(|e| classify(name, &context, &e))? {
                count += 1;
                if columns.is_empty() {
                    columns = row.as_ref().column_names();
                }
                // The outputs' row: the first one (a second one fails the step anyway).
                if first.is_none() {
                    let values = (0..columns.len())
                        .map(|i| row.get::<_, duckdb::types::Value>(i).map(from_duckdb))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| classify(name, &context, &e))?;
                    first = Some(values);
                }
            }
            outputs = statement.outputs_from(name, &context, &columns, first, count as u64)?;
            count
        };
        // A guard that fails ends the pass: statements and marker roll back.
        statement.check_rows(name, &context, affected as u64)?;
    }
    let insert = format!(
        "INSERT INTO {} (saga_id, step, direction, applied_at_ms, outputs) VALUES (?, ?, ?, ?, ?)",
        tables.markers
    );
    let stored = encode_outputs(&outputs);
    tx.execute(&insert, params![&*key.marker_id(), key.step, key.direction.as_str(), now_ms(), stored]).map_err(
        |e| {
            // The marker check above found nothing, so a duplicate marker means another writer
            // committed this key meanwhile: a retry will see its marker and report AlreadyApplied.
            let error = classify(name, "insert marker", &e);
            if is_constraint(&e) { Error::retryable(name, error.message) } else { error }
        },
    )?;
    Ok((Applied::Applied, outputs))
}

/// The outputs stored with the marker of `key`, or `None` when there is no marker.
fn stored_outputs(name: &str, conn: &Connection, tables: &Tables, key: &StepKey) -> Result<Option<Outputs>, Error> {
    let sql = format!("SELECT outputs FROM {} WHERE saga_id = ? AND step = ? AND direction = ?", tables.markers);
    let mut stmt = conn.prepare(&sql).map_err(|e| classify(name, "look up marker", &e))?;
    let mut rows = stmt
        .query(params![&*key.marker_id(), key.step, key.direction.as_str()])
        .map_err(|e| classify(name, "look up marker", &e))?;
    let Some(row) = rows.next().map_err(|e| classify(name, "look up marker", &e))? else { return Ok(None) };
    let bytes: Option<Vec<u8>> = row.get(0).map_err(|e| classify(name, "look up marker", &e))?;
    decode_outputs(name, bytes.as_deref()).map(Some)
}

fn from_duckdb(value: duckdb::types::Value) -> Value {
    use duckdb::types::Value as V;
    match value {
        V::Boolean(b) => Value::Bool(b),
        V::TinyInt(n) => Value::Int(n.into()),
        V::SmallInt(n) => Value::Int(n.into()),
        V::Int(n) => Value::Int(n.into()),
        V::BigInt(n) => Value::Int(n),
        V::UTinyInt(n) => Value::Int(n.into()),
        V::USmallInt(n) => Value::Int(n.into()),
        V::UInt(n) => Value::Int(n.into()),
        V::UBigInt(n) => i64::try_from(n).map_or_else(|_| Value::Text(n.to_string()), Value::Int),
        V::HugeInt(n) => i64::try_from(n).map_or_else(|_| Value::Text(n.to_string()), Value::Int),
        V::Float(f) => Value::Float(f.into()),
        V::Double(f) => Value::Float(f),
        V::Text(s) => Value::Text(s),
        V::Blob(b) => Value::Bytes(b),
        // Every other type (NULL included) reads as NULL, which no output accepts: the step
        // fails naming the output (cast the column in the statement).
        _ => Value::Null,
    }
}

/// The highest attempt of `key` a fence row (written by an earlier build) fenced off, if any.
fn fenced_through(name: &str, conn: &Connection, tables: &Tables, key: &StepKey) -> Result<Option<u32>, Error> {
    let sql =
        format!("SELECT max(through_attempt) FROM {} WHERE saga_id = ? AND step = ? AND direction = ?", tables.fences);
    let through: Option<i64> = conn
        .query_row(&sql, params![&*key.marker_id(), key.step, key.direction.as_str()], |row| row.get(0))
        .map_err(|e| classify(name, "look up fence", &e))?;
    through
        .map(|t| {
            u32::try_from(t).map_err(|_| {
                Error::permanent(name, format!("fence table holds an invalid attempt number {t} for {key}"))
            })
        })
        .transpose()
}

fn marker_exists(name: &str, conn: &Connection, tables: &Tables, key: &StepKey) -> Result<bool, Error> {
    let sql = format!("SELECT count(*) FROM {} WHERE saga_id = ? AND step = ? AND direction = ?", tables.markers);
    let count: i64 = conn
        .query_row(&sql, params![&*key.marker_id(), key.step, key.direction.as_str()], |row| row.get(0))
        .map_err(|e| classify(name, "look up marker", &e))?;
    Ok(count > 0)
}

fn clone_connection(name: &str, base: &Mutex<Connection>) -> Result<Connection, Error> {
    // The base connection is only ever cloned, never used for queries, so a poisoned lock still
    // guards a usable connection.
    let base = base.lock().unwrap_or_else(PoisonError::into_inner);
    base.try_clone().map_err(|e| classify(name, "clone connection", &e))
}

fn to_duckdb(value: &Value) -> duckdb::types::Value {
    use duckdb::types::Value as V;
    match value {
        Value::Null => V::Null,
        Value::Bool(b) => V::Boolean(*b),
        Value::Int(i) => V::BigInt(*i),
        Value::Float(f) => V::Double(*f),
        Value::Text(s) => V::Text(s.clone()),
        Value::Bytes(b) => V::Blob(b.clone()),
    }
}

/// An error raised by COMMIT itself. DuckDB may have written part of its WAL (an I/O error,
/// "database invalidated") before failing, so the transaction is in doubt: never "certainly
/// not applied", which would let compensation skip a step that committed. A retry's marker
/// check (or recovery's lookup) settles it.
fn commit_error(name: &str, error: &duckdb::Error) -> Error {
    Error::retryable(name, format!("commit (outcome in doubt, settled by the marker): {error}"))
}

fn is_constraint(error: &duckdb::Error) -> bool {
    error.to_string().starts_with("Constraint Error")
}

/// Says whether retrying can help. DuckDB reports its error class only as the message prefix
/// ("Constraint Error: …", "Binder Error: …"), so the classes are matched on the text:
/// transaction conflicts, lock and I/O trouble and interrupts can pass; constraint, binder,
/// parser, catalog and conversion errors cannot, nor can anything unrecognised.
fn classify(name: &str, context: &str, error: &duckdb::Error) -> Error {
    let text = error.to_string();
    let message = format!("{context}: {text}");
    let retryable = matches!(error, duckdb::Error::DuckDBFailure(..))
        && (text.starts_with("TransactionContext Error")
            || text.contains("Conflict on")
            || text.contains("write-write conflict")
            || text.starts_with("IO Error")
            || text.starts_with("Interrupt")
            || text.starts_with("Out of Memory Error"));
    if retryable { Error::retryable(name, message) } else { Error::permanent(name, message) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error from COMMIT is in doubt, whatever its class: a permanent classification would
    /// have compensation skip a step whose transaction may have committed (issue 10, item 8).
    #[test]
    fn a_commit_error_is_in_doubt_never_permanent() {
        for error in [
            duckdb::Error::InvalidParameterName("x".into()),
            duckdb::Error::ExecuteReturnedResults,
            duckdb::Error::QueryReturnedNoRows,
        ] {
            assert_eq!(
                classify("w", "commit", &error).kind,
                super::super::ErrorKind::Permanent,
                "the classifier alone"
            );
            let e = commit_error("w", &error);
            assert!(e.is_retryable(), "{e}");
            assert!(e.message.contains("in doubt"), "{e}");
        }
    }

    /// Group commit without savepoints: many concurrent applies, every third violating a CHECK
    /// constraint, share transactions; each failing step fails alone (no row, no marker),
    /// every other one has its row and marker exactly once, and applying them all again
    /// changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_step_in_a_group_commit_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.duckdb");
        let db = Arc::new(Duckdb::open("db", &path, 2).unwrap());
        db.connection().unwrap().execute_batch("CREATE TABLE t (n BIGINT NOT NULL CHECK (n % 3 != 0))").unwrap();
        let key = |n: i64| StepKey { saga_id: format!("s{n}"), step: 0, direction: Direction::Forward, scope: None };
        let insert = |n: i64| Operation::Sql {
            sql: "INSERT INTO t (n) VALUES (?)".into(),
            args: vec![Value::Int(n)],
            rows: None,
        };
        for round in 0..2 {
            let tasks: Vec<_> = (1..=120i64)
                .map(|n| {
                    let db = Arc::clone(&db);
                    tokio::spawn(async move { db.apply(&key(n), 1, &insert(n)).await })
                })
                .collect();
            for (n, task) in (1..=120i64).zip(tasks) {
                match (n % 3 == 0, task.await.unwrap(), round) {
                    (true, Err(e), _) => assert!(!e.is_retryable(), "{n}: {e}"),
                    (false, Ok(Applied::Applied), 0) | (false, Ok(Applied::AlreadyApplied), 1) => {}
                    (_, other, _) => panic!("round {round}: {n}: {other:?}"),
                }
            }
        }
        let conn = db.connection().unwrap();
        let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 80);
        for n in 1..=120i64 {
            assert_eq!(db.lookup_marker(&key(n)).await.unwrap(), n % 3 != 0, "{n}");
        }
        let (transactions, steps) = db.group_commits();
        assert_eq!(steps, 240);
        assert!(transactions < steps / 2, "{transactions} transactions for {steps} steps: not grouped");
    }
}
