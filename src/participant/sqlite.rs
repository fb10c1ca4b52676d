//! The SQLite participant: a small pool of connections to one database file, and the blocking
//! pool that the DuckDB participant shares.
//!
//! `apply` checks the fence and the marker, runs the step's statements and inserts the marker
//! inside one `BEGIN IMMEDIATE` transaction, so the statements and their marker commit together
//! or not at all. `BEGIN IMMEDIATE` takes SQLite's write lock up front: two applies of the same
//! key are serialized, and the second one sees the first one's marker.
//!
//! **Group commit** (`participant::batch`): applies that arrive while a transaction runs are
//! queued, and the next writer runs up to [`BATCH_MAX`] of them in **one** transaction, each
//! inside its own `SAVEPOINT`: a step that fails (a constraint, a guard, a fence) rolls back to
//! its savepoint alone, statements and marker together, and the others go on. One `COMMIT`
//! (one fsync of SQLite's WAL) then answers them all; nobody is answered "applied" before it.
//! A step after whose error SQLite rolls the whole transaction back (`SQLITE_FULL`,
//! `SQLITE_IOERR`, a trigger's `RAISE(ROLLBACK)`) fails alone: the others run again in a new
//! transaction.
//!
//! `settle_marker` (the executor's fencing lookup) is a writer too: it takes the write lock
//! below and `BEGIN IMMEDIATE`, reads the marker and, when there is none, inserts a fence row
//! (`sagalog_fences`) in the same transaction. A timed-out apply still running on its blocking
//! thread holds the write lock until its transaction ends, so the lookup waits for it and sees
//! its marker; an apply of a fenced-off attempt that starts later finds the fence and fails
//! permanently, changing nothing.
//!
//! Writers are serialized inside the process (`write_lock`, as the DuckDB participant does):
//! SQLite's busy handler sleeps and polls, so writers racing for the lock starve each other
//! (and fail as busy) when many sagas start at once, for instance when a breaker closes.
//! Waiting writers wait on the lock, holding no pooled connection; readers are not affected.
//!
//! Every call into SQLite runs on a blocking thread (`spawn_blocking`), never on the async
//! runtime. The database runs in WAL mode with `synchronous=FULL`, so a committed marker is on
//! disk when `apply` returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params, params_from_iter};

use super::batch::{BatchStep, Batching, GroupCommit, StepRun};
use super::interrupt::Running;
use super::marker::{self, decode_outputs, encode_outputs, now_ms};
use super::pool::BlockingPool;
use super::{
    Applied, BoxFuture, Direction, Error, Kind, MarkerEntry, Operation, Outputs, Participant, Statement, StepKey,
    Tables, fenced_off,
};
use crate::engine::value::Value;

/// The most connections one SQLite participant keeps. SQLite has one writer at a time, so more
/// connections only help readers (`lookup_marker`, `markers`).
pub const POOL_SIZE_MAX: usize = 64;

pub use super::batch::BATCH_MAX;

/// How long a statement waits for another connection's write lock before failing as busy.
pub const BUSY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// A SQLite database file acting as a saga participant. Cheap to share behind an `Arc`.
pub struct Sqlite {
    name: String,
    path: PathBuf,
    busy_timeout: Duration,
    pool: Arc<BlockingPool<Connection>>,
    /// Where `apply` queues its step for the next group commit.
    group: GroupCommit<Connection>,
    /// Opened by [`Sqlite::open_read_only`]: `apply` fails, nothing is ever written.
    read_only: bool,
    /// False only for a read-only database without a marker table: it holds no markers.
    has_marker_table: bool,
    /// False only for a read-only database whose marker table predates step outputs.
    has_outputs_column: bool,
    /// Held by `apply`, `settle_marker` and the write probe from before they take a connection
    /// until their transaction ends: one writer at a time inside this process.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// The marker and fence tables' names.
    tables: Arc<Tables>,
    /// The steps whose statements run now, for `interrupt` (a cancelled saga's step).
    running: Running,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path` with a pool of up to `pool_size`
    /// connections, switches it to WAL mode and creates the marker and fence tables.
    ///
    /// This does blocking file I/O: call it at startup, or from a blocking thread.
    pub fn open(name: &str, path: impl Into<PathBuf>, pool_size: usize) -> Result<Sqlite, Error> {
        Sqlite::open_with_tables(name, path, pool_size, Tables::default())
    }

    /// [`Sqlite::open`] with the marker and fence tables named `tables` (config keys
    /// `marker_table`, `fence_table`).
    pub fn open_with_tables(
        name: &str,
        path: impl Into<PathBuf>,
        pool_size: usize,
        tables: Tables,
    ) -> Result<Sqlite, Error> {
        let Tables { markers, fences } = &tables;
        if pool_size == 0 || pool_size > POOL_SIZE_MAX {
            return Err(Error::permanent(name, format!("pool size {pool_size} is outside 1..={POOL_SIZE_MAX}")));
        }
        let path = path.into();
        let first = connect(name, &path, BUSY_TIMEOUT_DEFAULT)?;
        first
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {markers} (
                    saga_id TEXT NOT NULL,
                    step INTEGER NOT NULL,
                    direction TEXT NOT NULL,
                    applied_at_ms INTEGER NOT NULL,
                    outputs BLOB,
                    PRIMARY KEY (saga_id, step, direction)
                )"
            ))
            .map_err(|e| classify(name, "create marker table", &e))?;
        // A marker table from before step outputs gets the column (NULL: no outputs).
        if !has_outputs_column(name, &first, markers)? {
            first
                .execute_batch(&format!("ALTER TABLE {markers} ADD COLUMN outputs BLOB"))
                .map_err(|e| classify(name, "add the outputs column to the marker table", &e))?;
        }
        first
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {fences} (
                    saga_id TEXT NOT NULL,
                    step INTEGER NOT NULL,
                    direction TEXT NOT NULL,
                    through_attempt INTEGER NOT NULL,
                    fenced_at_ms INTEGER NOT NULL,
                    PRIMARY KEY (saga_id, step, direction, through_attempt)
                )"
            ))
            .map_err(|e| classify(name, "create fence table", &e))?;
        let connector = {
            let (name, path) = (name.to_owned(), path.clone());
            move || connect(&name, &path, BUSY_TIMEOUT_DEFAULT)
        };
        let pool = Arc::new(BlockingPool::new(name, pool_size, first, connector, Connection::is_autocommit));
        let (write_lock, tables, running) = (Arc::default(), Arc::new(tables), Running::default());
        Ok(Sqlite {
            name: name.to_owned(),
            path,
            busy_timeout: BUSY_TIMEOUT_DEFAULT,
            group: group_commit(name, &pool, &write_lock, &tables, BUSY_TIMEOUT_DEFAULT, &running),
            pool,
            read_only: false,
            has_marker_table: true,
            has_outputs_column: true,
            write_lock,
            tables,
            running,
        })
    }

    /// Opens an existing database read-only, for the offline tools: no table is created, no
    /// pragma is changed, `apply` fails, and a database without a marker table reads as having
    /// no markers. The file must exist.
    ///
    /// This does blocking file I/O: call it at startup, or from a blocking thread.
    pub fn open_read_only(name: &str, path: impl Into<PathBuf>, pool_size: usize) -> Result<Sqlite, Error> {
        Sqlite::open_read_only_with_tables(name, path, pool_size, Tables::default())
    }

    /// [`Sqlite::open_read_only`] with the marker and fence tables named `tables`.
    pub fn open_read_only_with_tables(
        name: &str,
        path: impl Into<PathBuf>,
        pool_size: usize,
        tables: Tables,
    ) -> Result<Sqlite, Error> {
        if pool_size == 0 || pool_size > POOL_SIZE_MAX {
            return Err(Error::permanent(name, format!("pool size {pool_size} is outside 1..={POOL_SIZE_MAX}")));
        }
        let path = path.into();
        let first = connect_read_only(name, &path, BUSY_TIMEOUT_DEFAULT)?;
        let has_marker_table = first
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [&tables.markers],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| classify(name, "look for the marker table", &e))?
            > 0;
        let has_outputs_column = has_marker_table && has_outputs_column(name, &first, &tables.markers)?;
        let connector = {
            let (name, path) = (name.to_owned(), path.clone());
            move || connect_read_only(&name, &path, BUSY_TIMEOUT_DEFAULT)
        };
        let pool = Arc::new(BlockingPool::new(name, pool_size, first, connector, Connection::is_autocommit));
        let (write_lock, tables, running) = (Arc::default(), Arc::new(tables), Running::default());
        Ok(Sqlite {
            name: name.to_owned(),
            path,
            busy_timeout: BUSY_TIMEOUT_DEFAULT,
            group: group_commit(name, &pool, &write_lock, &tables, BUSY_TIMEOUT_DEFAULT, &running),
            pool,
            read_only: true,
            has_marker_table,
            has_outputs_column,
            write_lock,
            tables,
            running,
        })
    }

    /// Sets how long a statement waits for another connection's lock before it fails with a
    /// retryable "database is locked" error.
    pub fn with_busy_timeout(mut self, busy_timeout: Duration) -> Sqlite {
        self.busy_timeout = busy_timeout;
        self.group = group_commit(&self.name, &self.pool, &self.write_lock, &self.tables, busy_timeout, &self.running);
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `PRAGMA quick_check` and returns its answer: `"ok"` for a sound database, otherwise
    /// the problems it found, one per line.
    pub async fn quick_check(&self) -> Result<String, Error> {
        self.run(|name, conn| {
            let mut stmt = conn.prepare("PRAGMA quick_check").map_err(|e| classify(name, "quick_check", &e))?;
            let rows = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| classify(name, "quick_check", &e))?;
            Ok(rows.join("\n"))
        })
        .await
    }

    /// Runs `work` on a pooled connection on a blocking thread, with this participant's busy
    /// timeout applied.
    async fn run<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&str, &mut Connection) -> Result<T, Error> + Send + 'static,
    {
        run_on(&self.pool, self.name.clone(), self.busy_timeout, work).await
    }

    /// How many group commits ran so far, and how many steps they held in all: their ratio
    /// is the steps sharing one commit (one fsync).
    pub fn group_commits(&self) -> (u64, u64) {
        self.group.counts()
    }
}

/// The participant's group commit, on its pool and write lock.
fn group_commit(
    name: &str,
    pool: &Arc<BlockingPool<Connection>>,
    write_lock: &Arc<tokio::sync::Mutex<()>>,
    tables: &Arc<Tables>,
    busy_timeout: Duration,
    running: &Running,
) -> GroupCommit<Connection> {
    let db = Arc::new(SqliteBatching { tables: Arc::clone(tables), busy_timeout, running: running.clone() });
    GroupCommit::new(name, Arc::clone(pool), Arc::clone(write_lock), db)
}

/// SQLite's part of a group commit: `BEGIN IMMEDIATE`, and each step under a savepoint.
struct SqliteBatching {
    tables: Arc<Tables>,
    busy_timeout: Duration,
    running: Running,
}

impl Batching<Connection> for SqliteBatching {
    fn prepare(&self, name: &str, conn: &mut Connection) -> Result<(), Error> {
        conn.busy_timeout(self.busy_timeout).map_err(|e| classify(name, "set busy timeout", &e))
    }

    fn begin(&self, name: &str, conn: &mut Connection) -> Result<(), Error> {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| classify(name, "begin transaction", &e))
    }

    fn step(&self, name: &str, conn: &mut Connection, step: &BatchStep) -> StepRun {
        if let Err(e) = conn.execute_batch("SAVEPOINT sagalog_step") {
            return StepRun { result: Err(classify(name, "savepoint", &e)), usable: !conn.is_autocommit() };
        }
        // Registered (interruptible) while the step's own statements run, not its savepoint's
        // release nor anything after it.
        let applied = {
            let entered = self.running.enter(&step.key, step.attempt, conn.get_interrupt_handle());
            let interrupted = || entered.interrupted();
            apply_in(name, conn, &self.tables, &step.key, step.attempt, &step.statements, &interrupted)
        };
        let result = match applied {
            // Keep the step's work in the transaction.
            Ok((Applied::Applied, outputs)) => conn
                .execute_batch("RELEASE sagalog_step")
                .map(|()| (Applied::Applied, outputs))
                .map_err(|e| classify(name, "release savepoint", &e)),
            other => other,
        };
        let undone = match &result {
            Ok((Applied::Applied, _)) => true,
            // Nothing to keep: back to the savepoint, which is then released.
            _ => conn.execute_batch("ROLLBACK TO sagalog_step; RELEASE sagalog_step").is_ok(),
        };
        // A step whose work could not be undone, or a transaction SQLite ended, ends the pass.
        StepRun { result, usable: undone && !conn.is_autocommit() }
    }

    fn rollback(&self, _name: &str, conn: &mut Connection) {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }

    fn commit(&self, name: &str, conn: &mut Connection) -> Result<(), Error> {
        conn.execute_batch("COMMIT").map_err(|e| classify(name, "commit", &e))
    }
}

/// Runs `work` on a connection of `pool` on a blocking thread, with `busy_timeout` applied.
async fn run_on<T, F>(
    pool: &BlockingPool<Connection>,
    name: String,
    busy_timeout: Duration,
    work: F,
) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(&str, &mut Connection) -> Result<T, Error> + Send + 'static,
{
    pool.run(move |conn| {
        conn.busy_timeout(busy_timeout).map_err(|e| classify(&name, "set busy timeout", &e))?;
        work(&name, conn)
    })
    .await
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite").field("name", &self.name).field("path", &self.path).finish_non_exhaustive()
    }
}

impl Participant for Sqlite {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> Kind {
        Kind::Sqlite
    }

    fn apply<'a>(&'a self, key: &'a StepKey, attempt: u32, op: &'a Operation) -> BoxFuture<'a, Result<Applied, Error>> {
        Box::pin(async move { self.apply_with_outputs(key, attempt, op).await.map(|(applied, _)| applied) })
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
            // A committer task of its own runs the step: dropping this future (a step timeout)
            // neither strands the queued step nor cuts a transaction short.
            self.group.apply(BatchStep { key: key.clone(), attempt, statements }).await
        })
    }

    fn group_commits(&self) -> Option<(u64, u64)> {
        Some(self.group.counts())
    }

    fn interrupt(&self, key: &StepKey, attempt: u32) -> bool {
        self.running.interrupt(key, attempt)
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            if self.read_only {
                return Err(Error::permanent(&self.name, "opened read-only: it cannot fence a step's attempts"));
            }
            let key = key.clone();
            // As in `apply`: the guard travels with the transaction, so a lookup that timed out
            // still ends its transaction before another writer starts.
            let writer = Arc::clone(&self.write_lock).lock_owned().await;
            let tables = Arc::clone(&self.tables);
            self.run(move |name, conn| {
                let _writer = writer;
                settle_blocking(name, conn, &tables, &key, through_attempt)
            })
            .await
        })
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
            let sql = marker::list_saga_sql(&markers_table, "?1");
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| classify(name, "list markers", &e))?;
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
            conn.prepare_cached(&sql)
                .and_then(|mut stmt| stmt.query_row(params_from_iter(args.iter().map(to_sqlite)), |r| r.get(0)))
                .map_err(|e| classify(name, "effect check", &e))
        }))
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if self.read_only {
                return self
                    .run(|name, conn| {
                        conn.query_row("SELECT 1", [], |_| Ok(())).map_err(|e| classify(name, "probe", &e))
                    })
                    .await;
            }
            let writer = Arc::clone(&self.write_lock).lock_owned().await;
            let tables = Arc::clone(&self.tables);
            self.run(move |name, conn| {
                let _writer = writer;
                probe_write(name, conn, &tables)
            })
            .await
        })
    }
}

/// A read succeeds even while another connection holds the write lock (WAL mode), or while
/// the disk is full, so the probe walks a step's write path: the write lock, a marker row
/// inserted, then rolled back. Nothing is left behind; the probe row's step (-1) is one no
/// step has.
fn probe_write(name: &str, conn: &mut Connection, tables: &Tables) -> Result<(), Error> {
    let markers = &tables.markers;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| classify(name, "probe: begin transaction", &e))?;
    let insert = format!(
        "INSERT OR REPLACE INTO {markers} (saga_id, step, direction, applied_at_ms) VALUES ('', -1, 'probe', 0)"
    );
    tx.execute(&insert, []).map_err(|e| classify(name, "probe: write a marker row", &e))?;
    tx.rollback().map_err(|e| classify(name, "probe: rollback", &e))
}

/// One step inside a transaction (a group commit's savepoint): fence check, marker check,
/// statements, marker insert. Leaves committing or rolling back to the caller: `Applied` is to
/// be kept; `AlreadyApplied` and errors changed nothing worth keeping.
fn apply_in(
    name: &str,
    tx: &Connection,
    tables: &Tables,
    key: &StepKey,
    attempt: u32,
    statements: &[Statement],
    interrupted: &dyn Fn() -> bool,
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
        if interrupted() {
            return Err(Error::retryable(name, format!("{context}: interrupted (the saga was cancelled)")));
        }
        let mut stmt = tx.prepare_cached(&statement.sql).map_err(|e| classify(name, &context, &e))?;
        let returns_rows = stmt.column_count() > 0;
        // Stepping through the rows (rather than `execute`) also runs `… RETURNING` statements
        // to completion; what they return is not kept, only counted.
        let mut returned = 0u64;
        let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let mut first = None;
        {
            let mut rows = stmt
                .query(params_from_iter(statement.args.iter().map(to_sqlite)))
                .map_err(|e| classify(name, &context, &e))?;
            while let Some(row) = rows.next().map_err(|e| classify(name, &context, &e))? {
                returned += 1;
                // The outputs' row: the first one (a second one fails the step anyway).
                if !statement.returns.is_empty() && first.is_none() {
                    let values = (0..columns.len())
                        .map(|i| row.get::<_, rusqlite::types::Value>(i).map(from_sqlite))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| classify(name, &context, &e))?;
                    first = Some(values);
                }
            }
        }
        if !statement.returns.is_empty() {
            outputs = statement.outputs_from(name, &context, &columns, first, returned)?;
        }
        // Rows returned (`SELECT`, `… RETURNING`), else rows changed by this statement.
        let affected = if returns_rows { returned } else { tx.changes() };
        // A guard that fails rolls the step back: statements and marker.
        statement.check_rows(name, &context, affected)?;
    }
    let insert = format!(
        "INSERT INTO {} (saga_id, step, direction, applied_at_ms, outputs) VALUES (?1, ?2, ?3, ?4, ?5)",
        tables.markers
    );
    let stored = encode_outputs(&outputs);
    tx.prepare_cached(&insert)
        .and_then(|mut stmt| {
            stmt.execute(params![&*key.marker_id(), key.step, key.direction.as_str(), now_ms(), stored])
        })
        .map_err(|e| classify(name, "insert marker", &e))?;
    Ok((Applied::Applied, outputs))
}

/// The outputs stored with the marker of `key`, or `None` when there is no marker.
fn stored_outputs(name: &str, conn: &Connection, tables: &Tables, key: &StepKey) -> Result<Option<Outputs>, Error> {
    let sql = format!("SELECT outputs FROM {} WHERE saga_id = ?1 AND step = ?2 AND direction = ?3", tables.markers);
    let row: Option<Option<Vec<u8>>> = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| {
            stmt.query_row(params![&*key.marker_id(), key.step, key.direction.as_str()], |r| r.get(0)).optional()
        })
        .map_err(|e| classify(name, "look up marker", &e))?;
    row.map(|bytes| decode_outputs(name, bytes.as_deref())).transpose()
}

/// Whether the marker table `table` has the `outputs` column (tables from before step
/// outputs do not).
fn has_outputs_column(name: &str, conn: &Connection, table: &str) -> Result<bool, Error> {
    conn.query_row("SELECT count(*) FROM pragma_table_info(?1) WHERE name = 'outputs'", [table], |r| r.get::<_, i64>(0))
        .map(|n| n > 0)
        .map_err(|e| classify(name, "look for the outputs column", &e))
}

fn from_sqlite(value: rusqlite::types::Value) -> Value {
    use rusqlite::types::Value as V;
    match value {
        V::Null => Value::Null,
        V::Integer(i) => Value::Int(i),
        V::Real(f) => Value::Float(f),
        V::Text(s) => Value::Text(s),
        V::Blob(b) => Value::Bytes(b),
    }
}

/// The body of `settle_marker`: under the write lock and `BEGIN IMMEDIATE`, the marker, or a
/// fence through `through_attempt` committed before the answer "absent" is given.
fn settle_blocking(
    name: &str,
    conn: &mut Connection,
    tables: &Tables,
    key: &StepKey,
    through_attempt: u32,
) -> Result<bool, Error> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| classify(name, "fence: begin transaction", &e))?;
    if marker_exists(name, &tx, tables, key)? {
        tx.rollback().map_err(|e| classify(name, "fence: rollback", &e))?;
        return Ok(true);
    }
    if fenced_through(name, &tx, tables, key)?.is_none_or(|through| through < through_attempt) {
        let insert = format!(
            "INSERT INTO {} (saga_id, step, direction, through_attempt, fenced_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            tables.fences
        );
        tx.prepare_cached(&insert)
            .and_then(|mut stmt| {
                stmt.execute(params![&*key.marker_id(), key.step, key.direction.as_str(), through_attempt, now_ms()])
            })
            .map_err(|e| classify(name, "insert fence", &e))?;
    }
    tx.commit().map_err(|e| classify(name, "fence: commit", &e))?;
    Ok(false)
}

/// The highest attempt of `key` a fencing lookup fenced off, if any.
fn fenced_through(name: &str, conn: &Connection, tables: &Tables, key: &StepKey) -> Result<Option<u32>, Error> {
    let sql = format!(
        "SELECT max(through_attempt) FROM {} WHERE saga_id = ?1 AND step = ?2 AND direction = ?3",
        tables.fences
    );
    let through: Option<i64> = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| stmt.query_row(params![&*key.marker_id(), key.step, key.direction.as_str()], |r| r.get(0)))
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
    let sql =
        format!("SELECT EXISTS (SELECT 1 FROM {} WHERE saga_id = ?1 AND step = ?2 AND direction = ?3)", tables.markers);
    conn.prepare_cached(&sql)
        .and_then(|mut stmt| stmt.query_row(params![&*key.marker_id(), key.step, key.direction.as_str()], |r| r.get(0)))
        .map_err(|e| classify(name, "look up marker", &e))
}

fn to_sqlite(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match value {
        Value::Null => V::Null,
        Value::Bool(b) => V::Integer(i64::from(*b)),
        Value::Int(i) => V::Integer(*i),
        Value::Float(f) => V::Real(*f),
        Value::Text(s) => V::Text(s.clone()),
        Value::Bytes(b) => V::Blob(b.clone()),
    }
}

/// Opens one pooled connection: WAL, `synchronous=FULL`, foreign keys enforced.
fn connect(name: &str, path: &Path, busy_timeout: Duration) -> Result<Connection, Error> {
    let conn = Connection::open(path).map_err(|e| classify(name, &format!("open {}", path.display()), &e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| classify(name, "set busy timeout", &e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(|e| classify(name, "enable WAL", &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::permanent(name, format!("{} cannot use WAL (journal mode is {mode})", path.display())));
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(|e| classify(name, "set pragmas", &e))?;
    Ok(conn)
}

/// Opens one read-only connection that changes no file: no pragma that writes (the journal
/// mode stays as the database has it). Without a `-wal` file the database file alone is the
/// whole state and it is opened `immutable` (SQLite then creates no `-wal`/`-shm` files, which
/// a plain read-only open of a WAL database would). With a `-wal` file (left by a crash), it
/// is opened read-only and SQLite may rebuild its `-shm` wal-index, which holds no persistent
/// content; the database and its `-wal` are never written.
fn connect_read_only(name: &str, path: &Path, busy_timeout: Duration) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let immutable = !Path::new(&wal).exists();
    let uri = format!("file:{}?mode=ro{}", uri_path(path), if immutable { "&immutable=1" } else { "" });
    let conn = Connection::open_with_flags(&uri, flags)
        .map_err(|e| classify(name, &format!("open {} read-only", path.display()), &e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| classify(name, "set busy timeout", &e))?;
    Ok(conn)
}

/// A file path as the path part of a SQLite `file:` URI: every byte outside the unreserved
/// set and `/` percent-encoded.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Says whether retrying can help: lock contention and I/O trouble can pass; constraint
/// violations, SQL errors, missing tables and type mismatches cannot.
fn classify(name: &str, context: &str, error: &rusqlite::Error) -> Error {
    let message = format!("{context}: {error}");
    let retryable = match error {
        rusqlite::Error::SqliteFailure(failure, detail) => {
            matches!(
                failure.code,
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::DiskFull
                    | ErrorCode::OutOfMemory
                    | ErrorCode::OperationInterrupted
                    | ErrorCode::FileLockingProtocolFailed
                    | ErrorCode::SchemaChanged
            ) || detail.as_deref().is_some_and(|d| d.contains("database is locked"))
        }
        _ => false,
    };
    if retryable { Error::retryable(name, message) } else { Error::permanent(name, message) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn key(saga: &str, step: u32) -> StepKey {
        StepKey { saga_id: saga.to_owned(), step, direction: Direction::Forward, scope: None }
    }

    fn insert(n: i64) -> Operation {
        Operation::Sql { sql: "INSERT INTO t (n) VALUES (?1)".into(), args: vec![Value::Int(n)], rows: None }
    }

    fn rows(db: &Path) -> Vec<i64> {
        let conn = Connection::open(db).unwrap();
        let mut stmt = conn.prepare("SELECT n FROM t ORDER BY n").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    /// Group commit: many concurrent applies, every third violating a CHECK constraint, share
    /// transactions; each failing step rolls back alone (no row, no marker), every other one
    /// has its row and marker exactly once, and applying them all again changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_step_in_a_group_commit_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (n INTEGER NOT NULL CHECK (n % 3 != 0))")
            .unwrap();
        let db = Arc::new(Sqlite::open("db", &path, 4).unwrap());
        for round in 0..2 {
            let tasks: Vec<_> = (1..=300i64)
                .map(|n| {
                    let db = Arc::clone(&db);
                    tokio::spawn(async move { db.apply(&key(&format!("s{n}"), 0), 1, &insert(n)).await })
                })
                .collect();
            for (n, task) in (1..=300i64).zip(tasks) {
                let result = task.await.unwrap();
                match (n % 3 == 0, round) {
                    (true, _) => assert!(!result.unwrap_err().is_retryable(), "{n}: a CHECK failure is permanent"),
                    (false, 0) => assert_eq!(result.unwrap(), Applied::Applied, "{n}"),
                    (false, _) => assert_eq!(result.unwrap(), Applied::AlreadyApplied, "{n}"),
                }
            }
        }
        let expected: Vec<i64> = (1..=300).filter(|n| n % 3 != 0).collect();
        assert_eq!(rows(&path), expected);
        let (transactions, steps) = db.group_commits();
        assert_eq!(steps, 600);
        assert!(transactions < steps / 4, "{transactions} transactions for {steps} steps: not grouped");
        for n in 1..=300i64 {
            assert_eq!(db.lookup_marker(&key(&format!("s{n}"), 0)).await.unwrap(), n % 3 != 0, "{n}");
        }
    }

    /// A step after whose error SQLite rolls the whole transaction back (here a trigger's
    /// `RAISE(ROLLBACK)`; a full disk or an I/O error does the same) fails alone: its batch
    /// mates run again in a new transaction and are applied, none is answered "applied"
    /// without its row, and applying everything again changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_that_makes_sqlite_roll_back_the_transaction_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE t (n INTEGER NOT NULL);
                 CREATE TRIGGER poison BEFORE INSERT ON t WHEN NEW.n % 50 = 13 BEGIN SELECT RAISE(ROLLBACK, 'poisoned'); END;",
            )
            .unwrap();
        let db = Arc::new(Sqlite::open("db", &path, 4).unwrap());
        for round in 0..2 {
            let tasks: Vec<_> = (1..=200i64)
                .map(|n| {
                    let db = Arc::clone(&db);
                    tokio::spawn(async move { (n, db.apply(&key(&format!("p{n}"), 0), 1, &insert(n)).await) })
                })
                .collect();
            let mut answers = BTreeMap::new();
            for task in tasks {
                let (n, result) = task.await.unwrap();
                answers.insert(n, result);
            }
            let table = rows(&path);
            for (n, result) in &answers {
                match (n % 50 == 13, result, round) {
                    (true, Err(e), _) => assert!(e.message.contains("poisoned"), "{n}: {e}"),
                    (false, Ok(Applied::Applied), 0) | (false, Ok(Applied::AlreadyApplied), 1) => {}
                    other => panic!("round {round}: {n}: {other:?}"),
                }
                assert_eq!(table.contains(n), n % 50 != 13, "round {round}: {n}");
                assert_eq!(db.lookup_marker(&key(&format!("p{n}"), 0)).await.unwrap(), n % 50 != 13, "{n}");
            }
        }
    }

    /// An apply whose future is dropped right after it queued its step (a step timeout) is still
    /// run by its own committer: the fencing lookup that follows waits for it and sees its
    /// marker, so the late commit is never read as "absent".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_apply_still_commits_before_the_fencing_lookup_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE t (n INTEGER NOT NULL)").unwrap();
        let db = Sqlite::open("db", &path, 2).unwrap();
        for n in 0..20i64 {
            let k = key(&format!("late{n}"), 0);
            // Polled once: the step is queued and its committer spawned, then the future is
            // dropped, as a step timeout drops it.
            let op = insert(n);
            let mut apply = db.apply(&k, 1, &op);
            // (A fast committer on another thread may even answer at that first poll.)
            let _ = apply.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
            drop(apply);
            let present = db.settle_marker(&k, 1).await.unwrap();
            assert_eq!(present, rows(&path).contains(&n), "{n}: the lookup and the table disagree");
        }
    }
}
