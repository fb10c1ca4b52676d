//! Participants: the databases, file trees, HTTP services and worker queues a saga's steps act
//! on.
//!
//! # The contract every participant keeps
//!
//! A step is identified by its [`StepKey`] `(saga_id, step, direction)`: the idempotency key,
//! in the saga incarnation's marker scope (`StepKey::scope`, see [`crate::engine::Scope`]). A
//! marker or fence answers for its own scope only: an earlier saga with the same id, another
//! instance's saga, and an unscoped saga (journaled before scopes) never see each other's.
//!
//! - [`Participant::apply`] performs the operation **and** records a completion marker for the
//!   key **in the same local transaction** (for SQL participants: one database transaction
//!   holding both the statement and an `INSERT` into the marker table, whose primary key is the
//!   step key). Either both become durable or neither does.
//! - If the marker for the key already exists, `apply` changes nothing and returns
//!   [`Applied::AlreadyApplied`]. A retry may therefore always call `apply` again: it never
//!   applies an effect twice.
//! - [`Participant::lookup_marker`] answers, read-only, whether the step's transaction
//!   committed. The offline tools use it (and [`Participant::lookup_markers`]); they write
//!   nothing.
//! - [`Participant::settle_marker`] is the executor's in-doubt lookup, for a step that was
//!   started but has no journaled outcome (a crash, a timeout, a lost reply). It is a
//!   *fencing* lookup: it knows the attempt it settles (`through_attempt`), and once it has
//!   answered "absent", **no attempt `<= through_attempt` of that key ever commits**, whether
//!   that attempt's transaction is still running in this process (a timed-out future whose
//!   blocking task goes on), its statements are still on their way to the server, or it
//!   belongs to a crashed process. Every `apply` knows its attempt number (the one journaled
//!   in its `StepStarted`); an apply of a fenced-off attempt changes nothing and fails
//!   permanently. Later attempts are not affected. The SQL kinds write the fence into the
//!   fence table (`sagalog_fences`) in the transaction that reads the marker, and serialize
//!   the two transactions (SQLite and DuckDB: the in-process write lock and, for SQLite,
//!   `BEGIN IMMEDIATE`; PostgreSQL: `pg_advisory_xact_lock` on a 64-bit hash of the key,
//!   taken first in both), so a lookup waits for an apply transaction already running, and
//!   an apply that starts later finds the fence (see `docs/recovery.md`, "A late commit after
//!   a timeout").
//! - Errors say whether retrying can help ([`ErrorKind::Retryable`]: connection refused or
//!   reset, timeout, busy/locked, serialization failure) or not ([`ErrorKind::Permanent`]:
//!   constraint violation, bad parameter, missing table). A retryable error promises nothing
//!   about whether the transaction committed; the caller resolves that with `lookup_marker`
//!   or simply by calling `apply` again.
//! - File participants have no transactions: they write and fsync an *intent* (a redo record
//!   naming the one rename that makes the effect visible) before the effect, and turn it into
//!   the marker after. `apply` and `lookup_marker` roll an intent forward and then answer
//!   "present", so "no marker" still means "certainly not applied"; a write that fails before
//!   the intent is durable changes nothing (see [`fs`]).
//! - Participants never panic on bad input and never block the async runtime: SQLite and
//!   DuckDB work runs on blocking threads.
//! - The marker table (`sagalog_markers`) and the fence table (`sagalog_fences`) are created
//!   on first use, except by a participant opened read-only ([`open_all_read_only`], for the
//!   offline tools): that one changes nothing in the database or file tree, refuses `apply`
//!   and `settle_marker`, and reads a missing marker table as "no markers".
//!
//! # Participants without markers (`http`, `worker`)
//!
//! An HTTP service, and a worker queue served by the user's own processes, have no local
//! transaction sagalog can put a marker in, so [`Participant::has_markers`] answers `false`
//! and the guarantee is weaker, and different: **at-least-once, deduplicated by the
//! receiver's key**. Every request (every task handed to a worker) carries the key
//! `<saga id>/<step>/<direction>` (`Idempotency-Key` for `http`, the task's `idempotency_key`
//! for `worker`), the same on every attempt and after a crash, and the receiver must apply
//! each key's effect once and answer a repeated key as it answered the first (what the key
//! means to it is its contract, not sagalog's). Therefore:
//!
//! - `lookup_marker`, `lookup_markers` and `settle_marker` fail permanently: there is nothing
//!   to look up, and "no marker" must never read as "not applied".
//! - **An in-doubt step is re-sent, never assumed.** Where the executor would settle an
//!   in-doubt step by its marker (a crash between `StepStarted` and the outcome, a lost
//!   reply), it asks `has_markers` and, for a participant without markers, runs the step
//!   again as a new journaled attempt with the same key: the receiver's answer settles it
//!   (a 2xx with its outputs: applied; the request had arrived or it arrives now).
//! - **A step that may have been sent is compensated, never skipped.** When the saga
//!   compensates, a forward step left uncertain (in doubt, failed retryably, timed out) is
//!   settled the same way, by re-sending it with its key, and then compensated with the
//!   outputs of that answer; its compensation carries its own key. A permanent failure of an
//!   attempt that follows one which may have been sent (and a 2xx whose outputs cannot be
//!   read, see [`Error::maybe_applied`]) keeps the step uncertain; repeated, it counts
//!   against the compensation budget like an unreadable marker, and the saga ends STUCK with
//!   the error for an operator, never with the effect silently left in place.
//! - **A permanent failure is decided by the participant's error.** With
//!   [`Error::maybe_applied`] set, the step stays uncertain (above): `http` sets it on a 2xx
//!   whose outputs cannot be read and on a permanent failure of any attempt after the first
//!   (an earlier one may have been sent). Without it, the answer speaks for the key: a
//!   `worker`'s `Fail { retryable: false }` for a forward step re-sent during compensation is
//!   its verdict "not applied" (the worker deduplicates by key, so an applied key would have
//!   answered its output), journaled as such, and the step is skipped.
//! - Retryable errors may carry the receiver's minimum wait ([`Error::retry_after_ms`], from
//!   `Retry-After`); the executor waits at least that long before the next attempt.

pub mod batch;
#[cfg(feature = "duckdb")]
pub mod duckdb;
pub mod fs;
pub mod http;
mod interrupt;
mod marker;
pub use marker::Tables;
pub mod memory;
pub mod null;
mod pool;
pub mod postgres;
pub mod sqlite;
pub mod stores;
pub mod worker;

use std::future::Future;
use std::pin::Pin;

use crate::config::{ParticipantConfig, RowsGuard};
use crate::engine::value::Value;

/// Name of the marker table every SQL participant keeps, unless its config names another
/// (`marker_table`).
pub const MARKER_TABLE: &str = crate::config::MARKER_TABLE_DEFAULT;

/// Name of the fence table every SQL participant keeps: one row per fencing lookup that found
/// no marker, `(saga_id, step, direction, through_attempt)`; an apply of an attempt
/// `<= through_attempt` of that key is refused. A table of its own, so marker tables created
/// by earlier builds are used unchanged.
pub const FENCE_TABLE: &str = crate::config::FENCE_TABLE_DEFAULT;

pub use crate::config::Kind;
pub use crate::engine::model::{Direction, StepKey};

/// One marker as a participant stores it, for audits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MarkerEntry {
    pub key: StepKey,
    /// When the marker was committed, if the participant records it (the SQL kinds do; the
    /// file kind uses the marker file's modification time; the memory kind has none).
    pub applied_at_ms: Option<u64>,
}

/// A concrete operation, with its parameters already bound from the saga's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// One SQL statement with positional parameters (`?1`… for SQLite/DuckDB, `$1`… for
    /// PostgreSQL), bound in order, never pasted into the text.
    Sql {
        sql: String,
        args: Vec<Value>,
        /// The rows the statement must affect (a business rule); fewer fails the step
        /// permanently, rolled back with its marker.
        rows: Option<RowsGuard>,
    },
    /// Write `contents` to `path` (relative to the participant's root) atomically.
    FilePut { path: String, contents: Vec<u8> },
    /// Delete `path`; absence is success.
    FileDelete { path: String },
    /// Copy `from` to `to` atomically (the copy is written like a put).
    FileCopy { from: String, to: String },
    /// Do nothing but record the marker (benchmarks, tests).
    Noop,
    /// Several SQL statements, run in order in the one transaction that writes the marker;
    /// each statement's guard is checked after it runs.
    Statements(Vec<Statement>),
    /// A task for a worker queue ([`worker`]): its name, its parameters by name, and what
    /// its output must hold (the action's `returns`; empty for a compensation).
    Task {
        task: String,
        params: std::collections::BTreeMap<String, Value>,
        returns: std::collections::BTreeMap<String, crate::config::ParamType>,
    },
    /// One request to an HTTP participant: `method` and `path` (templates filled, path values
    /// percent-encoded, appended to the participant's `base_url`), an optional JSON body, and
    /// the step's outputs: each name's JSON Pointer into the response and declared type.
    Http {
        method: String,
        path: String,
        body: Option<serde_json::Value>,
        outputs: std::collections::BTreeMap<String, (String, crate::config::ParamType)>,
    },
}

impl Operation {
    /// The statements a SQL participant runs for this operation, in order: none for `Noop`
    /// (the marker alone is recorded); a file operation is a permanent error naming the
    /// participant.
    pub fn sql(&self, participant: &str) -> Result<Vec<Statement>, Error> {
        match self {
            Operation::Sql { sql, args, rows } => {
                Ok(vec![Statement { sql: sql.clone(), args: args.clone(), rows: *rows, returns: Default::default() }])
            }
            Operation::Statements(statements) => Ok(statements.clone()),
            Operation::Noop => Ok(Vec::new()),
            Operation::FilePut { .. } | Operation::FileDelete { .. } | Operation::FileCopy { .. } => {
                Err(Error::permanent(participant, "a SQL participant cannot run a file operation"))
            }
            Operation::Task { .. } => Err(Error::permanent(participant, "a SQL participant cannot run a worker task")),
            Operation::Http { .. } => {
                Err(Error::permanent(participant, "a SQL participant cannot send an HTTP request"))
            }
        }
    }
}

/// The statement a SQL participant runs for a step, owned (it moves to a blocking thread).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub args: Vec<Value>,
    pub rows: Option<RowsGuard>,
    /// The step's outputs this statement returns (its action's `returns`): the columns of the
    /// single row it returns, by name. Empty for every other statement.
    pub returns: std::collections::BTreeMap<String, crate::config::ParamType>,
}

impl Statement {
    /// A permanent error naming the step when `affected` breaks the statement's guard: the
    /// caller rolls its transaction back (the marker with it) and the saga compensates.
    /// `context` names the step (and the statement, see [`Statement::context`]).
    pub fn check_rows(&self, participant: &str, context: &str, affected: u64) -> Result<(), Error> {
        match self.rows.map(|guard| guard.check(affected)) {
            Some(Err(message)) => Err(Error::permanent(participant, format!("{context}: {message}"))),
            _ => Ok(()),
        }
    }

    /// What an error of statement `index` (from 0) of `count` names: the step, and the
    /// statement's number when the step has several.
    pub fn context(key: &StepKey, index: usize, count: usize) -> String {
        if count > 1 { format!("step {key}, statement {} of {count}", index + 1) } else { format!("step {key}") }
    }
}

/// What a step returned: its action's `returns`, by name.
pub type Outputs = std::collections::BTreeMap<String, Value>;

impl Statement {
    /// The step's outputs from what this statement returned: `columns` names the columns,
    /// `first` is the first row returned (already converted) and `returned` counts the rows.
    /// Exactly one row must come back, with
    /// a non-NULL column of each declared output, of its type (an integer is accepted for a
    /// float and, as 0 or 1, for a bool); anything else is a permanent error naming the output,
    /// and the caller rolls the transaction back with its marker.
    pub fn outputs_from(
        &self,
        participant: &str,
        context: &str,
        columns: &[String],
        first: Option<Vec<Value>>,
        returned: u64,
    ) -> Result<Outputs, Error> {
        let fail = |m: String| Err(Error::permanent(participant, format!("{context}: {m}")));
        let Some(row) = first.filter(|_| returned == 1) else {
            return fail(format!(
                "the statement must return exactly 1 row for the step's outputs, it returned {returned}"
            ));
        };
        let mut outputs = Outputs::new();
        for (name, ty) in &self.returns {
            let Some(i) = columns.iter().position(|c| c == name) else {
                return fail(format!(
                    "the returned row has no column {name:?} for output {name:?} (columns: {columns:?})"
                ));
            };
            let value = match (ty, row.get(i).cloned().unwrap_or(Value::Null)) {
                (crate::config::ParamType::Float, Value::Int(n)) => Value::Float(n as f64),
                (crate::config::ParamType::Bool, Value::Int(n @ (0 | 1))) => Value::Bool(n == 1),
                (_, Value::Null) => return fail(format!("output {name:?} is NULL")),
                (ty, value) if value.type_name() == ty.name() => value,
                (ty, value) => {
                    return fail(format!("output {name:?} is {}, declared {}", value.type_name(), ty.name()));
                }
            };
            outputs.insert(name.clone(), value);
        }
        Ok(outputs)
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The operation and its marker committed now.
    Applied,
    /// The marker already existed: nothing was changed.
    AlreadyApplied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Trying again may succeed (the participant is down, busy, or the transaction lost a race).
    Retryable,
    /// Trying again cannot succeed (constraint violation, bad parameter, missing object).
    Permanent,
}

/// A participant failure, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{participant}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub participant: String,
    pub message: String,
    /// The least time to wait before the next attempt, when the participant was told one (an
    /// HTTP `Retry-After`); `None` for every other error and kind.
    pub retry_after_ms: Option<u64>,
    /// A permanent error after the effect may have been applied (an HTTP 2xx whose outputs
    /// cannot be read, or any permanent failure of an HTTP attempt after the first: an earlier
    /// one may have been sent): the step stays uncertain, so the saga never skips its
    /// compensation. False for every other error and kind (a retryable error promises nothing
    /// anyway); for a participant without markers, false on a permanent error means the
    /// receiver answered for the key: a forward step re-sent during compensation is then "not
    /// applied" and skipped (a `worker`'s `Fail { retryable: false }`).
    pub maybe_applied: bool,
}

impl Error {
    pub fn retryable(participant: &str, message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Retryable,
            participant: participant.to_owned(),
            message: message.into(),
            retry_after_ms: None,
            maybe_applied: false,
        }
    }

    pub fn permanent(participant: &str, message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Permanent,
            participant: participant.to_owned(),
            message: message.into(),
            retry_after_ms: None,
            maybe_applied: false,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }
}

/// Opens every participant a config declares. Relative paths are under `data_dir`; `init`
/// statements run before the participant takes its connections. `memory` participants are
/// created empty. A file-backed store (SQLite, DuckDB, `fs`) is created only the first time
/// (and recorded in `D/stores.json`); one that was created before and is missing now stands
/// in [`stores::Parked`], failing every call with a reason that names the file (see
/// [`stores`]).
pub fn open_all(
    participants: &std::collections::BTreeMap<String, ParticipantConfig>,
    data_dir: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, std::sync::Arc<dyn Participant>>, Error> {
    let mut manifest = stores::Manifest::read(data_dir)?;
    let before = manifest.clone();
    let mut out: std::collections::BTreeMap<String, std::sync::Arc<dyn Participant>> = Default::default();
    for (name, p) in participants {
        let configured = p.path.clone().unwrap_or_default();
        let store = data_dir.join(&configured);
        let file_backed = matches!(p.kind, Kind::Sqlite | Kind::Duckdb | Kind::Fs);
        let decision = if file_backed {
            stores::decide(&manifest, name, p.kind, &configured, &store)
        } else {
            stores::Decision::Open
        };
        let participant = match decision {
            stores::Decision::Park(reason) => {
                let (name_owned, config, root) = (name.clone(), p.clone(), data_dir.to_path_buf());
                let reopen: stores::Reopen = Box::new(move || open_one(&name_owned, &config, &root));
                std::sync::Arc::new(stores::Parked::new(name, p.kind, store.clone(), reason, reopen))
            }
            stores::Decision::Open | stores::Decision::Create => open_one(name, p, data_dir)?,
        };
        if file_backed && store.exists() {
            manifest.stores.insert(name.clone(), stores::Store { kind: p.kind, path: configured });
        }
        out.insert(name.clone(), participant);
    }
    if manifest != before {
        manifest.version = 1;
        manifest.write(data_dir)?;
    }
    Ok(out)
}

/// Opens (creating its store if missing) one participant.
fn open_one(
    name: &str,
    p: &ParticipantConfig,
    data_dir: &std::path::Path,
) -> Result<std::sync::Arc<dyn Participant>, Error> {
    let path = || {
        let rel = p.path.as_deref().unwrap_or_default();
        let path = data_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::permanent(name, format!("cannot create {}: {e}", parent.display())))?;
        }
        Ok::<_, Error>(path)
    };
    let participant: std::sync::Arc<dyn Participant> = match p.kind {
        Kind::Sqlite => {
            let path = path()?;
            run_init_sqlite(name, &path, &p.init)?;
            std::sync::Arc::new(sqlite::Sqlite::open_with_tables(name, path, p.pool_size, Tables::of(p))?)
        }
        #[cfg(feature = "duckdb")]
        Kind::Duckdb => {
            let path = path()?;
            let db = duckdb::Duckdb::open_with_tables(name, path, p.pool_size, Tables::of(p))?;
            let conn = db.connection()?;
            for statement in &p.init {
                conn.execute_batch(statement)
                    .map_err(|e| Error::permanent(name, format!("init statement {statement:?} failed: {e}")))?;
            }
            std::sync::Arc::new(db)
        }
        #[cfg(not(feature = "duckdb"))]
        Kind::Duckdb => {
            return Err(Error::permanent(
                name,
                "this build has no DuckDB support (built without the `duckdb` feature)",
            ));
        }
        Kind::Postgres => {
            let url = p.url.as_deref().unwrap_or_default();
            let db = postgres::Postgres::connect_with_tables(name, url, p.pool_size, Tables::of(p))?;
            std::sync::Arc::new(db.with_group_commit(p.group_commit()))
        }
        Kind::Fs => {
            let root = path()?;
            std::fs::create_dir_all(&root)
                .map_err(|e| Error::permanent(name, format!("cannot create {}: {e}", root.display())))?;
            std::sync::Arc::new(fs::Fs::open(name, root)?)
        }
        Kind::Memory => std::sync::Arc::new(memory::Memory::new(name)),
        Kind::Null => std::sync::Arc::new(null::Null::new(name)),
        Kind::Worker => std::sync::Arc::new(worker::Worker::open(name, p)),
        Kind::Http => std::sync::Arc::new(http::Http::open(name, p)?),
    };
    Ok(participant)
}

/// Participants opened by [`open_all_read_only`], and what the caller should know about them.
pub struct ReadOnlySet {
    pub participants: std::collections::BTreeMap<String, std::sync::Arc<dyn Participant>>,
    /// One line per participant that could not be opened as configured and stands in as an
    /// empty participant (no markers), e.g. a database file that does not exist yet.
    pub notes: Vec<String>,
}

/// Opens every participant a config declares **without changing anything**: SQLite and DuckDB
/// files read-only, no `init` statements, no marker table or marker directory created,
/// PostgreSQL sessions in read-only transactions. A SQLite/DuckDB file or `fs` root that does
/// not exist has never recorded a marker: it stands in as an empty participant, with a note.
/// A `memory` participant keeps nothing across processes and is empty too. An `http`
/// participant sends no request at all (its probe only opens a TCP connection), and a header
/// whose environment variable is missing is a note, not an error. `apply` on any of
/// them fails, and so does `settle_marker` (it writes a fence) on the SQL and file kinds. For the offline tools (`sagalog replay --dry-run`, `sagalog audit`).
pub fn open_all_read_only(
    participants: &std::collections::BTreeMap<String, ParticipantConfig>,
    data_dir: &std::path::Path,
) -> Result<ReadOnlySet, Error> {
    let mut set = ReadOnlySet { participants: Default::default(), notes: Vec::new() };
    for (name, p) in participants {
        let path = data_dir.join(p.path.as_deref().unwrap_or_default());
        let missing = matches!(p.kind, Kind::Sqlite | Kind::Duckdb | Kind::Fs) && !path.exists();
        let participant: std::sync::Arc<dyn Participant> = if missing {
            set.notes.push(format!("participant {name}: {} does not exist; it holds no markers", path.display()));
            std::sync::Arc::new(memory::Memory::new(name))
        } else {
            match p.kind {
                Kind::Sqlite => std::sync::Arc::new(sqlite::Sqlite::open_read_only_with_tables(
                    name,
                    path,
                    p.pool_size,
                    Tables::of(p),
                )?),
                #[cfg(feature = "duckdb")]
                Kind::Duckdb => std::sync::Arc::new(duckdb::Duckdb::open_read_only_with_tables(
                    name,
                    path,
                    p.pool_size,
                    Tables::of(p),
                )?),
                #[cfg(not(feature = "duckdb"))]
                Kind::Duckdb => {
                    return Err(Error::permanent(
                        name,
                        "this build has no DuckDB support (built without the `duckdb` feature)",
                    ));
                }
                Kind::Postgres => {
                    let url = p.url.as_deref().unwrap_or_default();
                    std::sync::Arc::new(postgres::Postgres::connect_read_only_with_tables(
                        name,
                        url,
                        p.pool_size,
                        Tables::of(p),
                    )?)
                }
                Kind::Fs => std::sync::Arc::new(fs::Fs::open_read_only(name, path)?),
                Kind::Memory => std::sync::Arc::new(memory::Memory::new(name)),
                Kind::Null => std::sync::Arc::new(null::Null::new(name)),
                // A queue with no worker: it keeps no markers to read, and offline nothing
                // polls it.
                Kind::Worker => std::sync::Arc::new(worker::Worker::open(name, p)),
                Kind::Http => {
                    let (http, notes) = http::Http::open_read_only(name, p)?;
                    set.notes.extend(notes);
                    std::sync::Arc::new(http)
                }
            }
        };
        set.participants.insert(name.clone(), participant);
    }
    Ok(set)
}

fn run_init_sqlite(name: &str, path: &std::path::Path, init: &[String]) -> Result<(), Error> {
    if init.is_empty() {
        return Ok(());
    }
    let conn = rusqlite::Connection::open(path)
        .map_err(|e| Error::retryable(name, format!("cannot open {}: {e}", path.display())))?;
    for statement in init {
        conn.execute_batch(statement)
            .map_err(|e| Error::permanent(name, format!("init statement {statement:?} failed: {e}")))?;
    }
    Ok(())
}

/// The permanent error of an apply whose attempt a fencing lookup fenced off: nothing was
/// applied, and nothing will be.
pub fn fenced_off(participant: &str, key: &StepKey, attempt: u32, through_attempt: u32) -> Error {
    Error::permanent(
        participant,
        format!(
            "step {key}: attempt {attempt} was fenced off by a marker lookup (no attempt up to {through_attempt} may \
             commit after the lookup found no marker); nothing was applied"
        ),
    )
}

/// A boxed future, so participants can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The answer of a marker call (`lookup_marker`, `settle_marker`, `markers`, `all_markers`) to
/// a participant without markers (`has_markers() == false`): a permanent error saying `why`.
pub(crate) fn no_markers<'a, T: Send + 'a>(participant: &str, why: &str) -> BoxFuture<'a, Result<T, Error>> {
    Box::pin(std::future::ready(Err(Error::permanent(participant, why))))
}

/// A database or file tree that steps act on. See the module documentation for the contract.
pub trait Participant: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn kind(&self) -> Kind;
    /// Whether the participant records a marker with each effect (every kind but `http` and
    /// `worker`). One that does not is a participant **without markers**: its effects are
    /// at-least-once, deduplicated by the receiver with the step's idempotency key
    /// (`<saga>/<step>/<direction>`, see [`StepKey`]'s `Display`). The executor then never
    /// settles an in-doubt step by a lookup, and never as "absent": it sends the step again with
    /// the same key, as a new journaled attempt, and the answer settles it
    /// (`executor/in_doubt.rs`); compensation never skips a step that may have been applied.
    /// Whether a permanent failure answered for the key leaves the step uncertain or is the
    /// receiver's verdict "not applied" is the error's [`Error::maybe_applied`] (see the module
    /// doc, "Participants without markers").
    fn has_markers(&self) -> bool {
        true
    }
    /// Performs `op` and records the marker for `key` in one local transaction, as attempt
    /// `attempt` of the step (the number its `StepStarted` journaled, from 1). If a fencing
    /// lookup ([`Participant::settle_marker`]) fenced off this attempt, nothing changes and the
    /// error is permanent (see [`fenced_off`]).
    fn apply<'a>(&'a self, key: &'a StepKey, attempt: u32, op: &'a Operation) -> BoxFuture<'a, Result<Applied, Error>>;
    /// [`Participant::apply`], also answering the step's outputs (see `Statement::returns`):
    /// those its statement returned now, or, when the marker existed already, those stored
    /// with the marker. The default (kinds that return nothing) answers none.
    fn apply_with_outputs<'a>(
        &'a self,
        key: &'a StepKey,
        attempt: u32,
        op: &'a Operation,
    ) -> BoxFuture<'a, Result<(Applied, Outputs), Error>> {
        Box::pin(async move { self.apply(key, attempt, op).await.map(|applied| (applied, Outputs::new())) })
    }
    /// The outputs stored with the marker of `key` (read-only; none when there is no marker or
    /// the step returned nothing). The executor reads them for a step settled by its marker.
    fn marker_outputs<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<Outputs, Error>> {
        let _ = key;
        Box::pin(async move { Ok(Outputs::new()) })
    }
    /// Whether the marker for `key` exists (read-only: writes nothing, fences nothing).
    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>>;
    /// The executor's in-doubt lookup: whether the marker for `key` exists and, when it does
    /// not, a fence through `through_attempt`: once this has answered `false`, no apply of an
    /// attempt `<= through_attempt` of `key` commits, ever (one still running is waited for
    /// first, one that starts later is refused). Attempts above it still apply. A participant
    /// opened read-only refuses it (it would have to write).
    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>>;
    /// Every marker of a saga, for audits and tests: (step, direction).
    fn markers<'a>(&'a self, saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>>;
    /// Every marker of every saga, sorted by key (read-only): what `sagalog audit` compares
    /// with the journal and the index, including markers no known saga explains. Every kind in
    /// this crate implements it; the default (for participants defined elsewhere) says it
    /// cannot, so adding this method broke no implementation.
    fn all_markers(&self) -> BoxFuture<'_, Result<Vec<MarkerEntry>, Error>> {
        Box::pin(async move { Err(Error::permanent(self.name(), "this participant cannot list its markers")) })
    }
    /// [`Participant::lookup_marker`] for many keys at once (read-only), answers in the order
    /// of `keys`. The default asks one key at a time; the SQL kinds answer a batch on one
    /// connection, which `sagalog replay --dry-run` needs for logs with many in-doubt steps.
    fn lookup_markers<'a>(&'a self, keys: &'a [StepKey]) -> BoxFuture<'a, Result<Vec<bool>, Error>> {
        Box::pin(async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.push(self.lookup_marker(key).await?);
            }
            Ok(found)
        })
    }
    /// Runs a read-only statement that returns one count (an action's effect check, for
    /// `sagalog audit`). The SQL kinds implement it; the default says the participant cannot.
    fn count<'a>(&'a self, sql: &'a str, args: &'a [Value]) -> BoxFuture<'a, Result<i64, Error>> {
        let _ = (sql, args);
        Box::pin(async move { Err(Error::permanent(self.name(), "this participant cannot run effect checks")) })
    }
    /// Prepares `sql` against the database without running it, for `sagalog config check`:
    /// `Ok(Some(n))` with its parameter count, `Ok(None)` for a kind that runs no SQL, an
    /// error (permanent) naming what does not prepare. Writes nothing.
    fn prepare_check<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Option<usize>, Error>> {
        let _ = sql;
        Box::pin(async move { Ok(None) })
    }
    /// A cheap health check: connect and run a trivial query.
    fn probe(&self) -> BoxFuture<'_, Result<(), Error>>;
    /// Whether a call could be served now, checked before each attempt is journaled. An error
    /// (retryable, with the reason) opens the participant's breaker at once, so sagas park
    /// without spending attempts (a worker queue that no worker polls). Default: always ready.
    fn ready(&self) -> Result<(), Error> {
        Ok(())
    }
    /// The executor tells the participant that the outcome it returned for attempt `attempt` of
    /// `key` is durable in the journal (a worker's `Complete` answers only then). Default: no-op.
    fn outcome_durable(&self, key: &StepKey, attempt: u32) {
        let _ = (key, attempt);
    }
    /// How many group commits this participant ran and the steps they held, if it
    /// group-commits (SQLite, DuckDB, PostgreSQL with `group_commit` on); the metrics
    /// `participant_group_commits_total` and `participant_group_commit_steps_total`.
    fn group_commits(&self) -> Option<(u64, u64)> {
        None
    }
    /// Stops the statement that attempt `attempt` of `key` runs now, because its saga was
    /// cancelled: SQLite's interrupt, PostgreSQL's cancel request (`participant/interrupt.rs`). Answers whether the attempt was running (and so was asked
    /// to stop). The attempt then ends with an error, or with its outcome if the statement had
    /// finished; either way the executor settles it by its marker. A worker learns of the
    /// cancel from its heartbeat's answer instead. Default: nothing to interrupt.
    fn interrupt(&self, key: &StepKey, attempt: u32) -> bool {
        let _ = (key, attempt);
        false
    }
    /// The task queue of a `worker` participant, for the `Workers` API; `None` for other kinds.
    fn worker_queue(&self) -> Option<std::sync::Arc<worker::Queue>> {
        None
    }
}
