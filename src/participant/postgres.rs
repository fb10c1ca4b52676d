//! The PostgreSQL participant: a deadpool of tokio-postgres connections (no TLS).
//!
//! `apply` runs one transaction that first inserts the step's marker with
//! `ON CONFLICT DO NOTHING`, then runs the step's statement, then commits. Inserting the marker
//! first makes the primary key the lock: a concurrent apply of the same key waits on the
//! uncommitted marker row and, once the first commits, inserts nothing and reports
//! `AlreadyApplied`; if the first rolls back, the second proceeds. No `SELECT … FOR UPDATE`.
//!
//! Fencing (`settle_marker`, the executor's in-doubt lookup): both `apply` and
//! `settle_marker` start their transaction with `pg_advisory_xact_lock(<key hash>)` (FNV-1a,
//! 64 bits, over the step key: [`key_lock_id`]), held until the transaction ends. The lookup
//! therefore waits for an apply transaction that is still running in the server (a timed-out
//! attempt whose COMMIT was already sent, or one of a crashed process), then reads the marker
//! and, when there is none, inserts a fence row (`sagalog_fences`) and commits it before it
//! answers "absent". An apply that gets the lock later reads the fence and fails permanently
//! when its attempt is fenced off. Both transactions run at READ COMMITTED whatever the
//! server's default isolation, so the statements after the lock see what committed while they
//! waited for it (under REPEATABLE READ the snapshot would predate the wait). A hash collision
//! only makes two keys wait for each other.
//!
//! Parameters are bound, never pasted. PostgreSQL infers each `$n`'s type from the statement,
//! and a [`Value`] is converted to that type: `Int` binds to `bigint`, `integer` and
//! `smallint` (range-checked), `Float` to `double precision` and `real`, `Text` to text-like
//! types, `Bytes` to `bytea`, `Bool` to `boolean`, and `Null` to any of these. For any other
//! column type the statement must cast, e.g. `$1::text::uuid` or `CAST($2 AS text)::jsonb`.
//!
//! The marker table is created on first use. Nothing here connects before the first call:
//! starting the engine while PostgreSQL is down is fine, and `probe` tells when it is back.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::sync::OnceCell;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, NoTls};

use super::batch::BatchStep;
use super::marker::{decode_outputs, encode_outputs};
use super::{
    Applied, BoxFuture, Direction, Error, Kind, MarkerEntry, Operation, Outputs, Participant, Statement, StepKey,
    Tables, fenced_off,
};
use crate::engine::value::Value;

mod group;

/// The most connections one PostgreSQL participant keeps.
pub const POOL_SIZE_MAX: usize = 256;
/// Connect timeout used when the conninfo does not set `connect_timeout`.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// How long a call waits for a free pooled connection before failing as retryable.
pub const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL database acting as a saga participant. Cheap to share behind an `Arc`.
pub struct Postgres {
    inner: Arc<Inner>,
    /// The group commit of the steps' applies; `None` with `group_commit = false` (each step
    /// then commits its own transaction).
    group: Option<group::Group>,
}

/// What a call needs, shared with the group commit's committers.
struct Inner {
    name: String,
    pool: Pool,
    /// Set once the marker and fence tables are known to exist.
    schema: OnceCell<()>,
    /// Opened by [`Postgres::connect_read_only`]: every session is read-only, no table is
    /// created, `apply` fails, and a missing marker table reads as "no markers".
    read_only: bool,
    /// The marker and fence tables' names.
    tables: Tables,
    /// The steps whose statements run now, for `interrupt` (a cancelled saga's step).
    running: super::interrupt::Running,
}

impl Postgres {
    /// Builds the pool for `conninfo` (libpq key/value or URL form) with up to `pool_size`
    /// connections. No connection is made yet; a malformed conninfo is a permanent error.
    pub fn connect(name: &str, conninfo: &str, pool_size: usize) -> Result<Postgres, Error> {
        Postgres::build(name, conninfo, pool_size, false, Tables::default())
    }

    /// [`Postgres::connect`] with the marker and fence tables named `tables` (config keys
    /// `marker_table`, `fence_table`).
    pub fn connect_with_tables(
        name: &str,
        conninfo: &str,
        pool_size: usize,
        tables: Tables,
    ) -> Result<Postgres, Error> {
        Postgres::build(name, conninfo, pool_size, false, tables)
    }

    /// Like [`Postgres::connect`], for the offline tools: every session runs with
    /// `default_transaction_read_only = on` (the server refuses writes), the marker table is
    /// never created, `apply` fails, and a database without a marker table has no markers.
    pub fn connect_read_only(name: &str, conninfo: &str, pool_size: usize) -> Result<Postgres, Error> {
        Postgres::build(name, conninfo, pool_size, true, Tables::default())
    }

    /// [`Postgres::connect_read_only`] with the marker and fence tables named `tables`.
    pub fn connect_read_only_with_tables(
        name: &str,
        conninfo: &str,
        pool_size: usize,
        tables: Tables,
    ) -> Result<Postgres, Error> {
        Postgres::build(name, conninfo, pool_size, true, tables)
    }

    fn build(name: &str, conninfo: &str, pool_size: usize, read_only: bool, tables: Tables) -> Result<Postgres, Error> {
        if pool_size == 0 || pool_size > POOL_SIZE_MAX {
            return Err(Error::permanent(name, format!("pool size {pool_size} is outside 1..={POOL_SIZE_MAX}")));
        }
        // The conninfo may hold a password: it never goes into a message.
        let mut config = tokio_postgres::Config::from_str(conninfo)
            .map_err(|e| Error::permanent(name, format!("invalid postgres conninfo: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT_DEFAULT);
        }
        if read_only {
            let options = config.get_options().map(str::to_owned).unwrap_or_default();
            config.options(format!("{options} -c default_transaction_read_only=on").trim_start());
        }
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT_DEFAULT))
            .recycle_timeout(Some(CONNECT_TIMEOUT_DEFAULT))
            .build()
            .map_err(|e| Error::permanent(name, format!("building the connection pool: {e}")))?;
        let running = super::interrupt::Running::default();
        let inner = Inner { name: name.to_owned(), pool, schema: OnceCell::new(), read_only, tables, running };
        let group = (!read_only).then(|| group::Group::new(pool_size));
        Ok(Postgres { inner: Arc::new(inner), group })
    }

    /// Turns the group commit on (the default) or off (config key `group_commit`): off, every
    /// step commits a transaction of its own.
    pub fn with_group_commit(mut self, on: bool) -> Postgres {
        let pool_size = self.inner.pool.status().max_size;
        self.group = (on && !self.inner.read_only).then(|| group::Group::new(pool_size));
        self
    }

    /// How many group commits ran so far, and how many steps they held in all: their ratio
    /// is the steps sharing one commit.
    pub fn group_commits(&self) -> (u64, u64) {
        self.group.as_ref().map_or((0, 0), group::Group::counts)
    }
}

impl Inner {
    /// A pooled connection, with the marker and fence tables created if this is the first use.
    async fn client(&self) -> Result<Object, Error> {
        let client = self.pool.get().await.map_err(|e| classify_pool(&self.name, &e))?;
        if !self.read_only {
            self.schema.get_or_try_init(|| create_tables(&self.name, &client, &self.tables)).await?;
        }
        Ok(client)
    }

    /// Applies one step in a transaction of its own.
    async fn apply_sql(
        &self,
        key: &StepKey,
        attempt: u32,
        statements: &[Statement],
    ) -> Result<(Applied, Outputs), Error> {
        let name = self.name.as_str();
        let mut client = self.client().await?;
        let tx = begin(name, &mut client).await?;
        // An error drops the transaction, and tokio-postgres rolls a dropped transaction back
        // before the connection runs anything else.
        let (applied, outputs) = self.run_step(&tx, key, attempt, statements, Locked::No).await?;
        if applied == Applied::Applied {
            tx.commit().await.map_err(|e| classify(name, "commit", &e))?;
        } else {
            tx.rollback().await.map_err(|e| classify(name, "rollback", &e))?;
        }
        Ok((applied, outputs))
    }

    /// Runs one step inside the open transaction `tx`: the key's lock, the fence check, the
    /// marker insert, the step's statements and its outputs. Its work is to be kept (committed)
    /// only when it answers `Applied`: on `AlreadyApplied` or an error the caller rolls it back
    /// (the transaction, or the step's savepoint in a group commit).
    async fn run_step(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        key: &StepKey,
        attempt: u32,
        statements: &[Statement],
        locked: Locked,
    ) -> Result<(Applied, Outputs), Error> {
        // Interruptible (a cancel request for this connection) while the step's own
        // statements run. An interrupted step that failed answers that it was interrupted,
        // whatever the failure (the cancel's own error, usually): a group commit that runs
        // its steps again does not run this one again.
        let entered = self.running.enter(key, attempt, tx.cancel_token());
        let result = self.run_step_entered(tx, key, statements, &entered, locked).await;
        if result.is_err() && entered.interrupted() {
            return Err(interrupted(&self.name, &Statement::context(key, 0, statements.len())));
        }
        result
    }

    async fn run_step_entered(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        key: &StepKey,
        statements: &[Statement],
        entered: &super::interrupt::Entered,
        locked: Locked,
    ) -> Result<(Applied, Outputs), Error> {
        let name = self.name.as_str();
        let markers = &self.tables.markers;
        let step = step_param(name, key.step)?;
        let attempt = entered.attempt();
        let claim = claim_sql(markers, &self.tables.fences);
        let (lock, claim) = tokio::try_join!(tx.prepare_cached(LOCK_SQL), tx.prepare_cached(&claim))
            .map_err(|e| classify(name, "prepare the marker statements", &e))?;
        // One round trip: the lock, then the fence check with the marker insert, sent together
        // (pipelined, in this order; see `LOCK_SQL`).
        let direction = key.direction.as_str();
        let (_, claimed) = tokio::try_join!(
            biased;
            async {
                match locked {
                    Locked::Already => Ok(0),
                    Locked::No => tx
                        .execute(&lock, &[&key_lock_id(key)])
                        .await
                        .map_err(|e| classify(name, "lock the step key", &e)),
                }
            },
            async {
                tx.query_one(&claim, &[&&*key.marker_id(), &step, &direction, &i64::from(attempt)])
                    .await
                    .map_err(|e| classify(name, "look up fence and insert marker", &e))
            },
        )?;
        if let Some(through) = fenced_row(name, key, &claimed)?
            && through >= attempt
        {
            return Err(fenced_off(name, key, attempt, through));
        }
        let inserted: i64 = claimed.try_get(1).map_err(|e| classify(name, "insert marker", &e))?;
        if inserted == 0 {
            // The marker existed: answer the outputs stored with it, if the step has any.
            let outputs = if statements.iter().any(|s| !s.returns.is_empty()) {
                stored_outputs(name, tx.client(), markers, key).await?
            } else {
                Outputs::new()
            };
            return Ok((Applied::AlreadyApplied, outputs));
        }
        let mut outputs = Outputs::new();
        for (i, statement) in statements.iter().enumerate() {
            let context = Statement::context(key, i, statements.len());
            if entered.interrupted() {
                return Err(interrupted(name, &context));
            }
            let stmt = tx.prepare_cached(&statement.sql).await.map_err(|e| classify(name, &context, &e))?;
            let params = bind(name, stmt.params(), &statement.args)?;
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
            // Rows changed, or returned by a `SELECT` / `… RETURNING`.
            let affected = if statement.returns.is_empty() {
                tx.execute(&stmt, &refs).await.map_err(|e| classify(name, &context, &e))?
            } else {
                let rows = tx.query(&stmt, &refs).await.map_err(|e| classify(name, &context, &e))?;
                let columns: Vec<String> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
                let first = rows
                    .first()
                    .map(|row| (0..columns.len()).map(|i| from_pg(name, &context, row, i)).collect())
                    .transpose()?;
                let count = rows.len() as u64;
                outputs = statement.outputs_from(name, &context, &columns, first, count)?;
                count
            };
            // A guard that fails rolls back with the step: statements and marker.
            statement.check_rows(name, &context, affected)?;
        }
        if let Some(bytes) = encode_outputs(&outputs) {
            let sql = format!("UPDATE {markers} SET outputs = $4 WHERE saga_id = $1 AND step = $2 AND direction = $3");
            tx.execute(&sql, &[&&*key.marker_id(), &step, &direction, &bytes])
                .await
                .map_err(|e| classify(name, "store the step's outputs with its marker", &e))?;
        }
        Ok((Applied::Applied, outputs))
    }
}

/// Whether the transaction holds a step's key lock before the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locked {
    /// The step takes it (`LOCK_SQL`), pipelined with its claim.
    No,
    /// Its batch took it, with the other steps' keys (`LOCK_MANY_SQL`), in a statement that
    /// ended before the step's claim started.
    Already,
}

/// What an interrupted step answers (retryable: its marker settles it).
fn interrupted(name: &str, context: &str) -> Error {
    Error::retryable(name, format!("{context}: {INTERRUPTED}"))
}

/// The end of an interrupted step's error message.
const INTERRUPTED: &str = "interrupted (the saga was cancelled)";

/// Whether `error` is a step's own interruption ([`interrupted`]).
fn is_interrupted(error: &Error) -> bool {
    error.kind == super::ErrorKind::Retryable && error.message.ends_with(INTERRUPTED)
}

/// Shows the name only: the conninfo may hold a password.
impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

impl Participant for Postgres {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn kind(&self) -> Kind {
        Kind::Postgres
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
            if self.inner.read_only {
                return Err(Error::permanent(&self.inner.name, "opened read-only: it cannot apply a step"));
            }
            let statements = op.sql(&self.inner.name)?;
            match &self.group {
                Some(group) => group.apply(&self.inner, BatchStep { key: key.clone(), attempt, statements }).await,
                None => self.inner.apply_sql(key, attempt, &statements).await,
            }
        })
    }

    fn prepare_check<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Option<usize>, Error>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            match client.prepare(sql).await {
                Ok(stmt) => Ok(Some(stmt.params().len())),
                Err(e) => Err(classify(&self.inner.name, "does not prepare", &e)),
            }
        })
    }

    fn marker_outputs<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<Outputs, Error>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            match stored_outputs(&self.inner.name, &client, &self.inner.tables.markers, key).await {
                // A read-only session on a table from before outputs (or without a marker table).
                Err(_) if self.inner.read_only => Ok(Outputs::new()),
                other => other,
            }
        })
    }

    fn group_commits(&self) -> Option<(u64, u64)> {
        self.group.as_ref().map(group::Group::counts)
    }

    fn interrupt(&self, key: &StepKey, attempt: u32) -> bool {
        self.inner.running.interrupt(key, attempt)
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let name = self.inner.name.as_str();
            if self.inner.read_only {
                return Err(Error::permanent(name, "opened read-only: it cannot fence a step's attempts"));
            }
            let step = step_param(name, key.step)?;
            let (markers, fences) = (&self.inner.tables.markers, &self.inner.tables.fences);
            let mut client = self.inner.client().await?;
            let tx = begin(name, &mut client).await?;
            let exists =
                format!("SELECT EXISTS (SELECT 1 FROM {markers} WHERE saga_id = $1 AND step = $2 AND direction = $3)");
            let fence = fence_sql(&self.inner.tables.fences);
            let (lock, exists, fence) =
                tokio::try_join!(tx.prepare_cached(LOCK_SQL), tx.prepare_cached(&exists), tx.prepare_cached(&fence))
                    .map_err(|e| classify(name, "fence: prepare", &e))?;
            // Pipelined as in `apply`: the lock waits for an apply transaction of this key that
            // is still running; the marker and fence reads run after it is granted.
            let direction = key.direction.as_str();
            let (_, marker, fence) = tokio::try_join!(
                biased;
                async { tx.execute(&lock, &[&key_lock_id(key)]).await.map_err(|e| classify(name, "lock the step key", &e)) },
                async {
                    tx.query_one(&exists, &[&&*key.marker_id(), &step, &direction])
                        .await
                        .map_err(|e| classify(name, "fence: look up marker", &e))
                },
                async {
                    tx.query_one(&fence, &[&&*key.marker_id(), &step, &direction])
                        .await
                        .map_err(|e| classify(name, "look up fence", &e))
                },
            )?;
            if marker.try_get::<_, bool>(0).map_err(|e| classify(name, "fence: look up marker", &e))? {
                tx.rollback().await.map_err(|e| classify(name, "fence: rollback", &e))?;
                return Ok(true);
            }
            if fenced_row(name, key, &fence)?.is_none_or(|through| through < through_attempt) {
                let insert = format!(
                    "INSERT INTO {fences} (saga_id, step, direction, through_attempt) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING"
                );
                let stmt = tx.prepare_cached(&insert).await.map_err(|e| classify(name, "insert fence", &e))?;
                tx.execute(&stmt, &[&&*key.marker_id(), &step, &key.direction.as_str(), &i64::from(through_attempt)])
                    .await
                    .map_err(|e| classify(name, "insert fence", &e))?;
            }
            // "Absent" only once the fence is committed; a failed or lost COMMIT is an error
            // (retryable if the connection went), never "absent".
            tx.commit().await.map_err(|e| classify(name, "fence: commit", &e))?;
            Ok(false)
        })
    }

    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let step = step_param(&self.inner.name, key.step)?;
            let markers = &self.inner.tables.markers;
            let client = self.inner.client().await?;
            let sql =
                format!("SELECT EXISTS (SELECT 1 FROM {markers} WHERE saga_id = $1 AND step = $2 AND direction = $3)");
            let row = match client.query_one(&sql, &[&&*key.marker_id(), &step, &key.direction.as_str()]).await {
                Ok(row) => row,
                Err(e) if self.inner.read_only && sqlstate(&e) == Some(UNDEFINED_TABLE) => return Ok(false),
                Err(e) => return Err(classify(&self.inner.name, "look up marker", &e)),
            };
            row.try_get::<_, bool>(0).map_err(|e| classify(&self.inner.name, "look up marker", &e))
        })
    }

    fn markers<'a>(&'a self, saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>> {
        Box::pin(async move {
            let markers = &self.inner.tables.markers;
            let client = self.inner.client().await?;
            let sql = format!(
                "SELECT step, direction FROM {markers} WHERE saga_id = $1 OR left(saga_id, char_length($1) + 1) = $1 || ' '"
            );
            let rows = match client.query(&sql, &[&saga_id]).await {
                Ok(rows) => rows,
                Err(e) if self.inner.read_only && sqlstate(&e) == Some(UNDEFINED_TABLE) => return Ok(Vec::new()),
                Err(e) => return Err(classify(&self.inner.name, "list markers", &e)),
            };
            let mut markers = Vec::with_capacity(rows.len());
            for row in rows {
                let step: i32 = row.try_get(0).map_err(|e| classify(&self.inner.name, "list markers", &e))?;
                let direction: &str = row.try_get(1).map_err(|e| classify(&self.inner.name, "list markers", &e))?;
                markers.push(super::marker::parse_marker(&self.inner.name, i64::from(step), direction)?);
            }
            markers.sort();
            Ok(markers)
        })
    }

    fn all_markers(&self) -> BoxFuture<'_, Result<Vec<MarkerEntry>, Error>> {
        Box::pin(async move {
            let markers = &self.inner.tables.markers;
            let client = self.inner.client().await?;
            let sql = format!(
                "SELECT saga_id, step, direction, (extract(epoch FROM applied_at) * 1000)::bigint FROM {markers} \
                 ORDER BY saga_id, step, direction"
            );
            let rows = match client.query(&sql, &[]).await {
                Ok(rows) => rows,
                Err(e) if self.inner.read_only && sqlstate(&e) == Some(UNDEFINED_TABLE) => return Ok(Vec::new()),
                Err(e) => return Err(classify(&self.inner.name, "list markers", &e)),
            };
            let mut markers = Vec::with_capacity(rows.len());
            for row in rows {
                let get = |e: tokio_postgres::Error| classify(&self.inner.name, "list markers", &e);
                let stored: String = row.try_get(0).map_err(get)?;
                let step: i32 = row.try_get(1).map_err(get)?;
                let direction: &str = row.try_get(2).map_err(get)?;
                let at: Option<i64> = row.try_get(3).map_err(get)?;
                let (step, direction) = super::marker::parse_marker(&self.inner.name, i64::from(step), direction)?;
                let (saga_id, scope) = StepKey::split_marker_id(&stored);
                let key = StepKey { saga_id, step, direction, scope };
                markers.push(MarkerEntry { key, applied_at_ms: at.and_then(|ms| u64::try_from(ms).ok()) });
            }
            markers.sort();
            Ok(markers)
        })
    }

    fn count<'a>(&'a self, sql: &'a str, args: &'a [Value]) -> BoxFuture<'a, Result<i64, Error>> {
        Box::pin(async move {
            let name = self.inner.name.as_str();
            let client = self.inner.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(|e| classify(name, "effect check", &e))?;
            let params = bind(name, stmt.params(), args)?;
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
            let row = client.query_one(&stmt, &refs).await.map_err(|e| classify(name, "effect check", &e))?;
            row.try_get::<_, i64>(0).map_err(|e| classify(name, "effect check", &e))
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut client = self.inner.client().await?;
            if self.inner.read_only {
                client.simple_query("SELECT 1").await.map_err(|e| classify(&self.inner.name, "probe", &e))?;
                return Ok(());
            }
            // A read succeeds on a server that cannot write (disk full, a read-only standby):
            // the probe writes a marker row the way a step does, then rolls it back. An error
            // drops the transaction, which tokio-postgres rolls back.
            let name = self.inner.name.as_str();
            let markers = &self.inner.tables.markers;
            let tx = client.transaction().await.map_err(|e| classify(name, "probe: begin transaction", &e))?;
            let insert = format!(
                "INSERT INTO {markers} (saga_id, step, direction) VALUES ('', -1, 'probe') ON CONFLICT DO NOTHING"
            );
            tx.execute(&insert, &[]).await.map_err(|e| classify(name, "probe: write a marker row", &e))?;
            tx.rollback().await.map_err(|e| classify(name, "probe: rollback", &e))?;
            Ok(())
        })
    }
}

/// The 64-bit advisory lock id of a step key: FNV-1a over the saga id (its
/// [`StepKey::marker_id`]: with the scope, for a scoped saga), a 0xFF separator (no
/// UTF-8 text holds that byte), the step (4 bytes, little-endian) and the direction's name.
/// Every build must compute the same id for the same key (a crashed process's transaction and
/// the next process's lookup lock the same id): never change it.
pub fn key_lock_id(key: &StepKey) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let step = key.step.to_le_bytes();
    let id = key.marker_id();
    let bytes = id.as_bytes().iter().chain(&[0xFF]).chain(&step).chain(key.direction.as_str().as_bytes());
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    i64::from_le_bytes(hash.to_le_bytes())
}

/// Begins a READ COMMITTED transaction (see the module documentation).
async fn begin<'a>(name: &str, client: &'a mut Object) -> Result<deadpool_postgres::Transaction<'a>, Error> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(|e| classify(name, "begin transaction", &e))
}

/// Takes the key's transaction-scoped advisory lock, waiting for whoever holds it
/// (`$1` = [`key_lock_id`]).
///
/// `apply` and `settle_marker` send it pipelined with the reads that must follow it: the
/// futures are polled in order (`try_join!(biased; …)`), and tokio-postgres sends a prepared
/// statement's request on its future's first poll, so the server receives the lock first.
/// The server runs each request to completion before it starts the next, and at READ
/// COMMITTED every statement takes its snapshot when it starts: the reads after the lock see
/// everything that committed while the lock was awaited (`tests/engine/late_commit.rs` tests
/// both orders).
const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock($1)";

/// Takes the advisory locks of many keys (`$1`: their [`key_lock_id`]s), in the array's order:
/// a group commit passes them sorted, so that two batches waiting for each other's keys take
/// them in the same order and do not deadlock.
const LOCK_MANY_SQL: &str = "SELECT pg_advisory_xact_lock(id) FROM unnest($1::bigint[]) AS id";

/// A step's claim, one statement: the highest attempt of the key ($1-$3) a fencing lookup
/// fenced off (NULL if none), and how many marker rows it inserted (0 or 1): the marker is
/// inserted unless attempt $4 is fenced off or the marker exists. Sent right after `LOCK_SQL`,
/// so its snapshot sees every fence and marker committed while the lock was awaited.
fn claim_sql(markers: &str, fences: &str) -> String {
    format!(
        "WITH fence AS (SELECT max(through_attempt) AS through FROM {fences} \
         WHERE saga_id = $1 AND step = $2 AND direction = $3), \
         marker AS (INSERT INTO {markers} (saga_id, step, direction) SELECT $1, $2, $3 FROM fence \
         WHERE fence.through IS NULL OR fence.through < $4 ON CONFLICT DO NOTHING RETURNING 1) \
         SELECT (SELECT through FROM fence), (SELECT count(*) FROM marker)"
    )
}

/// The highest attempt of a key ($1-$3) a fencing lookup fenced off: one row, NULL if none.
fn fence_sql(fences: &str) -> String {
    format!("SELECT max(through_attempt) FROM {fences} WHERE saga_id = $1 AND step = $2 AND direction = $3")
}

/// The fenced-off attempt that a `fence_sql` row holds, if any.
fn fenced_row(name: &str, key: &StepKey, row: &tokio_postgres::Row) -> Result<Option<u32>, Error> {
    let through: Option<i64> = row.try_get(0).map_err(|e| classify(name, "look up fence", &e))?;
    through
        .map(|t| {
            u32::try_from(t).map_err(|_| {
                Error::permanent(name, format!("fence table holds an invalid attempt number {t} for {key}"))
            })
        })
        .transpose()
}

/// Creates the marker and the fence table, each on its own (a race lost on one must not skip
/// the other).
async fn create_tables(name: &str, client: &Object, tables: &Tables) -> Result<(), Error> {
    create_marker_table(name, client, &tables.markers).await?;
    let fences = &tables.fences;
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {fences} (
            saga_id text NOT NULL,
            step integer NOT NULL,
            direction text NOT NULL,
            through_attempt bigint NOT NULL,
            fenced_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (saga_id, step, direction, through_attempt)
        )"
    );
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(sqlstate(&e), Some("23505" | "42P07")) => Ok(()),
        Err(e) => Err(classify(name, "create fence table", &e)),
    }
}

async fn create_marker_table(name: &str, client: &Object, markers: &str) -> Result<(), Error> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {markers} (
            saga_id text NOT NULL,
            step integer NOT NULL,
            direction text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            outputs bytea,
            PRIMARY KEY (saga_id, step, direction)
        )"
    );
    match client.batch_execute(&sql).await {
        Ok(()) => {}
        // Two sessions running `CREATE TABLE IF NOT EXISTS` at once can both pass the existence
        // check; the loser fails on the catalog's unique index. The table exists either way.
        Err(e) if matches!(sqlstate(&e), Some("23505" | "42P07")) => {}
        Err(e) => return Err(classify(name, "create marker table", &e)),
    }
    // A marker table from before step outputs gets the column (NULL: no outputs).
    let sql = format!("ALTER TABLE {markers} ADD COLUMN IF NOT EXISTS outputs bytea");
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        // Two sessions adding the column at once: the loser fails on the catalog; it exists.
        Err(e) if matches!(sqlstate(&e), Some("23505" | "42701")) => Ok(()),
        Err(e) => Err(classify(name, "add the outputs column to the marker table", &e)),
    }
}

/// The outputs stored with the marker of `key` (none when there is no marker or no outputs).
async fn stored_outputs(
    name: &str,
    client: &tokio_postgres::Client,
    markers: &str,
    key: &StepKey,
) -> Result<Outputs, Error> {
    let step = step_param(name, key.step)?;
    let sql = format!("SELECT outputs FROM {markers} WHERE saga_id = $1 AND step = $2 AND direction = $3");
    let row = client
        .query_opt(&sql, &[&&*key.marker_id(), &step, &key.direction.as_str()])
        .await
        .map_err(|e| classify(name, "look up the marker's outputs", &e))?;
    let bytes: Option<Vec<u8>> = match row {
        Some(row) => row.try_get(0).map_err(|e| classify(name, "look up the marker's outputs", &e))?,
        None => None,
    };
    decode_outputs(name, bytes.as_deref())
}

/// Column `i` of a returned row as a value (the types a step's outputs can have).
fn from_pg(name: &str, context: &str, row: &tokio_postgres::Row, i: usize) -> Result<Value, Error> {
    let get = |e: tokio_postgres::Error| classify(name, context, &e);
    let ty = row.columns()[i].type_().clone();
    Ok(match ty {
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map_err(get)?.map_or(Value::Null, |v| Value::Int(v.into())),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(get)?.map_or(Value::Null, |v| Value::Int(v.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(get)?.map_or(Value::Null, Value::Int),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i).map_err(get)?.map_or(Value::Null, |v| Value::Float(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(get)?.map_or(Value::Null, Value::Float),
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(get)?.map_or(Value::Null, Value::Bool),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i).map_err(get)?.map_or(Value::Null, Value::Bytes),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(i).map_err(get)?.map_or(Value::Null, Value::Text)
        }
        other => {
            return Err(Error::permanent(
                name,
                format!(
                    "{context}: column {:?} has type {other}, which no output type takes (cast it in the statement)",
                    row.columns()[i].name()
                ),
            ));
        }
    })
}

/// SQLSTATE of a relation that does not exist (a read-only session's missing marker table).
const UNDEFINED_TABLE: &str = "42P01";

/// The marker table's `step` column is an `integer`.
fn step_param(name: &str, step: u32) -> Result<i32, Error> {
    i32::try_from(step).map_err(|_| Error::permanent(name, format!("step number {step} does not fit the marker table")))
}

/// Converts each value to the Rust type matching the PostgreSQL type inferred for its `$n`.
fn bind(name: &str, types: &[Type], args: &[Value]) -> Result<Vec<Box<dyn ToSql + Sync + Send>>, Error> {
    if types.len() != args.len() {
        return Err(Error::permanent(
            name,
            format!("statement has {} parameters but {} values were given", types.len(), args.len()),
        ));
    }
    types.iter().zip(args).enumerate().map(|(i, (ty, value))| bind_one(name, i + 1, ty, value)).collect()
}

fn bind_one(name: &str, position: usize, ty: &Type, value: &Value) -> Result<Box<dyn ToSql + Sync + Send>, Error> {
    let mismatch = || {
        Error::permanent(
            name,
            format!(
                "parameter ${position}: cannot bind a {} value to postgres type {ty}; cast it in the statement",
                value.type_name()
            ),
        )
    };
    let out_of_range = |i: i64| Error::permanent(name, format!("parameter ${position}: {i} does not fit {ty}"));
    let bound: Box<dyn ToSql + Sync + Send> = match value {
        Value::Null => match *ty {
            Type::BOOL => Box::new(None::<bool>),
            Type::INT2 => Box::new(None::<i16>),
            Type::INT4 => Box::new(None::<i32>),
            Type::INT8 => Box::new(None::<i64>),
            Type::FLOAT4 => Box::new(None::<f32>),
            Type::FLOAT8 => Box::new(None::<f64>),
            Type::BYTEA => Box::new(None::<Vec<u8>>),
            _ if <String as ToSql>::accepts(ty) => Box::new(None::<String>),
            _ => return Err(mismatch()),
        },
        Value::Bool(b) if *ty == Type::BOOL => Box::new(*b),
        Value::Int(i) => match *ty {
            Type::INT8 => Box::new(*i),
            Type::INT4 => Box::new(i32::try_from(*i).map_err(|_| out_of_range(*i))?),
            Type::INT2 => Box::new(i16::try_from(*i).map_err(|_| out_of_range(*i))?),
            _ => return Err(mismatch()),
        },
        Value::Float(f) => match *ty {
            Type::FLOAT8 => Box::new(*f),
            // Narrowing to `real` rounds, as PostgreSQL itself does when it casts.
            #[allow(clippy::cast_possible_truncation)]
            Type::FLOAT4 => Box::new(*f as f32),
            _ => return Err(mismatch()),
        },
        Value::Text(s) if <String as ToSql>::accepts(ty) => Box::new(s.clone()),
        Value::Bytes(b) if *ty == Type::BYTEA => Box::new(b.clone()),
        Value::Bool(_) | Value::Text(_) | Value::Bytes(_) => return Err(mismatch()),
    };
    Ok(bound)
}

fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.code().map(|c| c.code())
}

/// Says whether retrying can help, by SQLSTATE class when the server answered: connection
/// trouble (08), serialization failure and deadlock (40001, 40P01), lock timeout (55P03),
/// statement cancelled (57014), server shutting down or starting (57P01-57P03) and
/// insufficient resources (53) can pass; integrity (23), data (22), syntax and undefined
/// objects (42) and everything else cannot. Without an answer, a lost or refused connection or
/// a timeout is retryable and anything else (a bad parameter, an unexpected reply) is not.
fn classify(name: &str, context: &str, error: &tokio_postgres::Error) -> Error {
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        let message = format!("{context}: {} (SQLSTATE {code})", db.message());
        let retryable = code.starts_with("08")
            || code.starts_with("53")
            || matches!(code, "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03");
        return if retryable { Error::retryable(name, message) } else { Error::permanent(name, message) };
    }
    let text = error.to_string();
    let message = format!("{context}: {text}");
    let retryable = error.is_closed()
        || text.starts_with("error communicating with the server")
        || text.starts_with("error connecting to server")
        || text.starts_with("timeout waiting for server")
        || text.starts_with("error performing TLS handshake")
        || text.starts_with("unexpected message from server")
        || has_io_source(error);
    if retryable { Error::retryable(name, message) } else { Error::permanent(name, message) }
}

fn has_io_source(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn classify_pool(name: &str, error: &PoolError) -> Error {
    match error {
        PoolError::Backend(e) => classify(name, "connect", e),
        PoolError::Timeout(kind) => Error::retryable(name, format!("connection pool timed out ({kind:?})")),
        PoolError::Closed => Error::retryable(name, "connection pool is closed"),
        PoolError::NoRuntimeSpecified => Error::permanent(name, "bug: connection pool has no runtime"),
        PoolError::PostCreateHook(e) => Error::retryable(name, format!("connection setup failed: {e}")),
    }
}
