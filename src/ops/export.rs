//! `sagalog export --duckdb FILE`: the saga history as DuckDB tables, for SQL analytics.
//!
//! Sources: every record still in the journal (sagas with every attempt, error and timing,
//! and every recovery pass), plus the sagas archived in the index whose journal segments were
//! already deleted (their steps, attempt counts and last errors, without per-attempt rows).
//! The schema is documented in `docs/operations.md`, with ready-made queries that the test
//! suite runs against an export (`tests/ops/export.rs`). Times are `TIMESTAMP` (UTC).
//!
//! Tables (each replaced on every export):
//! - `sagas(saga_id, status, submitted_at, finished_at, duration_ms, steps, recoveries,
//!   compensation_reason, source)`: `source` is `journal` or `index`;
//! - `steps(saga_id, step, action, participant, forward_attempts, forward_done,
//!   forward_by_marker, compensate_attempts, compensated, last_error, started_at, finished_at,
//!   duration_ms, outputs)`: `outputs` is a JSON object of what the step returned, or NULL;
//! - `attempts(saga_id, step, direction, attempt, action, participant, started_at, ended_at,
//!   duration_ms, outcome, by_marker, retryable, error, lsn)`: `outcome` is `succeeded`,
//!   `failed` or `in_doubt` (no outcome journaled);
//! - `recoveries(lsn, started_at, unfinished)`: one row per recovery pass;
//! - `recovered_sagas(recovery_lsn, saga_id)`: the sagas each pass found unfinished.
//!
//! Never does: write to the data directory (shared lock; the index is read from a copy).

use std::collections::BTreeMap;
use std::path::Path;

use duckdb::{Connection, params};

use super::Error;
use super::audit::{archived, open_index_copy};
use super::history;
use crate::catalog::Catalog;
use crate::data_dir::Access;
use crate::engine::{Record, Saga};
use crate::index::SagaRecord;
use crate::participant::Direction;

/// Rows written per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub sagas: u64,
    pub steps: u64,
    pub attempts: u64,
    pub recoveries: u64,
}

/// The DDL of the export, in one place (docs/operations.md shows the same schema).
pub const SCHEMA: &str = "
CREATE OR REPLACE TABLE sagas (saga_id VARCHAR PRIMARY KEY, status VARCHAR NOT NULL, submitted_at TIMESTAMP,
  finished_at TIMESTAMP, duration_ms BIGINT, steps INTEGER NOT NULL, recoveries INTEGER NOT NULL,
  compensation_reason VARCHAR, source VARCHAR NOT NULL);
CREATE OR REPLACE TABLE steps (saga_id VARCHAR NOT NULL, step INTEGER NOT NULL, action VARCHAR NOT NULL,
  participant VARCHAR, forward_attempts INTEGER NOT NULL, forward_done BOOLEAN NOT NULL,
  forward_by_marker BOOLEAN NOT NULL, compensate_attempts INTEGER NOT NULL, compensated BOOLEAN NOT NULL,
  last_error VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, duration_ms BIGINT, outputs VARCHAR);
CREATE OR REPLACE TABLE attempts (saga_id VARCHAR NOT NULL, step INTEGER NOT NULL, direction VARCHAR NOT NULL,
  attempt INTEGER NOT NULL, action VARCHAR, participant VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP,
  duration_ms BIGINT, outcome VARCHAR NOT NULL, by_marker BOOLEAN NOT NULL, retryable BOOLEAN, error VARCHAR,
  lsn BIGINT NOT NULL);
CREATE OR REPLACE TABLE recoveries (lsn BIGINT PRIMARY KEY, started_at TIMESTAMP, unfinished BIGINT NOT NULL);
CREATE OR REPLACE TABLE recovered_sagas (recovery_lsn BIGINT NOT NULL, saga_id VARCHAR NOT NULL);
";

/// One attempt as read from the journal.
#[derive(Debug, Clone)]
struct AttemptRow {
    saga: String,
    step: u32,
    direction: Direction,
    attempt: u32,
    started_ms: Option<u64>,
    ended_ms: Option<u64>,
    outcome: &'static str,
    by_marker: bool,
    retryable: Option<bool>,
    error: Option<String>,
    lsn: u64,
}

/// What the journal yields for the export.
#[derive(Debug, Default)]
struct Journaled {
    sagas: BTreeMap<String, Saga>,
    attempts: Vec<AttemptRow>,
    /// (lsn, at_ms, unfinished, saga ids found unfinished)
    recoveries: Vec<(u64, u64, u64, Vec<String>)>,
}

fn read_journal(journal_dir: &Path, upto_lsn: Option<u64>) -> Result<Journaled, Error> {
    let mut out = Journaled::default();
    // Open attempts by (saga, step, direction): index into `out.attempts`.
    let mut open: BTreeMap<(String, u32, Direction), usize> = BTreeMap::new();
    history::read_upto(journal_dir, crate::wal_format::FIRST_LSN, upto_lsn, |lsn, record| {
        match &record {
            Record::StepStarted(s) => {
                open.insert((s.saga.clone(), s.step, s.direction), out.attempts.len());
                out.attempts.push(AttemptRow {
                    saga: s.saga.clone(),
                    step: s.step,
                    direction: s.direction,
                    attempt: s.attempt,
                    started_ms: Some(s.at_ms),
                    ended_ms: None,
                    outcome: "in_doubt",
                    by_marker: false,
                    retryable: None,
                    error: None,
                    lsn,
                });
            }
            Record::StepSucceeded(s) => {
                let row = close(&mut out.attempts, &mut open, (&s.saga, s.step, s.direction), s.attempt, lsn);
                row.ended_ms = Some(s.at_ms);
                row.outcome = "succeeded";
                row.by_marker = s.by_marker;
            }
            Record::StepFailed(f) => {
                let row = close(&mut out.attempts, &mut open, (&f.saga, f.step, f.direction), f.attempt, lsn);
                row.ended_ms = Some(f.at_ms);
                row.outcome = "failed";
                row.retryable = Some(f.retryable);
                row.error = Some(f.error.clone());
            }
            Record::RecoveryStarted(c) if c.reason == "recovery" => {
                let ids: Vec<String> = out.sagas.values().filter(|s| !s.is_finished()).map(|s| s.id.clone()).collect();
                out.recoveries.push((lsn, c.at_ms, c.unfinished, ids));
            }
            _ => {}
        }
        crate::recovery::apply(&mut out.sagas, &record);
    })?;
    Ok(out)
}

/// The attempt an outcome record closes: the open one for its step, or a new row for an
/// outcome journaled without a start (a failure recorded before any attempt could run).
fn close<'a>(
    attempts: &'a mut Vec<AttemptRow>,
    open: &mut BTreeMap<(String, u32, Direction), usize>,
    (saga, step, direction): (&str, u32, Direction),
    attempt: u32,
    lsn: u64,
) -> &'a mut AttemptRow {
    let at = match open.remove(&(saga.to_owned(), step, direction)) {
        Some(at) => at,
        None => {
            attempts.push(AttemptRow {
                saga: saga.to_owned(),
                step,
                direction,
                attempt,
                started_ms: None,
                ended_ms: None,
                outcome: "failed",
                by_marker: false,
                retryable: None,
                error: None,
                lsn,
            });
            attempts.len() - 1
        }
    };
    &mut attempts[at]
}

fn db_error(what: &str) -> impl Fn(duckdb::Error) -> Error + '_ {
    move |e| Error::Export { what: what.to_owned(), message: e.to_string() }
}

/// A step's outputs as a JSON object (the saga-file dialect), or NULL when it returned none.
fn outputs_json(outputs: &BTreeMap<String, crate::engine::Value>) -> Option<String> {
    (!outputs.is_empty())
        .then(|| serde_json::Value::Object(outputs.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()).to_string())
}

fn ms(v: Option<u64>) -> Option<i64> {
    v.and_then(|v| i64::try_from(v).ok())
}

/// Exports the history of `data_dir` into the DuckDB file `target`.
pub fn export(data_dir: &Path, config: Option<&Path>, target: &Path) -> Result<Counts, Error> {
    let dir = history::open_data_dir(data_dir, Access::Shared)?;
    let (catalog, _) = history::load_catalog(dir.root(), config)?;
    let journal = read_journal(&dir.journal_dir(), None)?;
    let index = open_index_copy(dir.root())?;
    let records = archived(index.index())?;
    drop(index);
    drop(dir);
    let conn = Connection::open(target).map_err(db_error(&format!("open {}", target.display())))?;
    write(&conn, &catalog, &journal, &records).map_err(db_error(&format!("write {}", target.display())))
}

/// Exports a running server's history into the DuckDB file `target`: its journal read up to
/// `upto_lsn` (the acknowledged LSN), and `records`, every saga archived in its index.
pub fn export_online(
    catalog: &Catalog,
    journal_dir: &Path,
    upto_lsn: u64,
    records: &[SagaRecord],
    target: &Path,
) -> Result<Counts, Error> {
    let journal = read_journal(journal_dir, Some(upto_lsn))?;
    let conn = Connection::open(target).map_err(db_error(&format!("open {}", target.display())))?;
    write(&conn, catalog, &journal, records).map_err(db_error(&format!("write {}", target.display())))
}

/// The name the downloaded export is attached under while it is copied.
const SOURCE_ALIAS: &str = "sagalog_online_export_source";

/// The tables of the export, in [`SCHEMA`]'s order.
const TABLES: [&str; 5] = ["sagas", "steps", "attempts", "recoveries", "recovered_sagas"];

/// Copies the export tables of the DuckDB file `source` (an online export a server sent) into
/// `target`, replacing only those tables there, as the offline export does.
pub fn merge_export(source: &Path, target: &Path) -> Result<Counts, Error> {
    let conn = Connection::open(target).map_err(db_error(&format!("open {}", target.display())))?;
    let quoted = source.display().to_string().replace('\'', "''");
    let copy = || -> duckdb::Result<Counts> {
        // An alias no file name gives: DuckDB names a database after its file (`online.duckdb`
        // is `online`), and the target's own name must not collide with it.
        conn.execute_batch(&format!("ATTACH '{quoted}' AS {SOURCE_ALIAS} (READ_ONLY);"))?;
        conn.execute_batch("BEGIN;")?;
        conn.execute_batch(SCHEMA)?;
        for table in TABLES {
            conn.execute_batch(&format!("INSERT INTO main.{table} SELECT * FROM {SOURCE_ALIAS}.{table};"))?;
        }
        conn.execute_batch(&format!("COMMIT; DETACH {SOURCE_ALIAS};"))?;
        let count = |table: &str| -> duckdb::Result<u64> {
            conn.query_row(&format!("SELECT count(*) FROM main.{table}"), [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        };
        Ok(Counts {
            sagas: count("sagas")?,
            steps: count("steps")?,
            attempts: count("attempts")?,
            recoveries: count("recoveries")?,
        })
    };
    copy().map_err(db_error(&format!("copy {} into {}", source.display(), target.display())))
}

fn write(conn: &Connection, catalog: &Catalog, journal: &Journaled, records: &[SagaRecord]) -> duckdb::Result<Counts> {
    // Staging tables hold plain integers; the final tables convert them to TIMESTAMPs.
    conn.execute_batch(
        "CREATE OR REPLACE TEMP TABLE s_sagas (saga_id VARCHAR, status VARCHAR, submitted_ms BIGINT, finished_ms BIGINT,
           steps INTEGER, recoveries INTEGER, compensation_reason VARCHAR, source VARCHAR);
         CREATE OR REPLACE TEMP TABLE s_steps (saga_id VARCHAR, step INTEGER, action VARCHAR, participant VARCHAR,
           forward_attempts INTEGER, forward_done BOOLEAN, forward_by_marker BOOLEAN, compensate_attempts INTEGER,
           compensated BOOLEAN, last_error VARCHAR, started_ms BIGINT, finished_ms BIGINT, outputs VARCHAR);
         CREATE OR REPLACE TEMP TABLE s_attempts (saga_id VARCHAR, step INTEGER, direction VARCHAR, attempt INTEGER,
           action VARCHAR, participant VARCHAR, started_ms BIGINT, ended_ms BIGINT, outcome VARCHAR, by_marker BOOLEAN,
           retryable BOOLEAN, error VARCHAR, lsn BIGINT);
         CREATE OR REPLACE TEMP TABLE s_recoveries (lsn BIGINT, at_ms BIGINT, unfinished BIGINT);
         CREATE OR REPLACE TEMP TABLE s_recovered (recovery_lsn BIGINT, saga_id VARCHAR);",
    )?;
    // A delay action has no participant: NULL, like an action no longer declared.
    let participant_of = |action: &str| catalog.action(action).filter(|a| !a.is_delay()).map(|a| a.participant.clone());
    let mut counts = Counts::default();
    {
        let mut sagas = conn.appender("s_sagas")?;
        let mut steps = conn.appender("s_steps")?;
        for saga in journal.sagas.values() {
            sagas.append_row(params![
                saga.id,
                saga.status().as_str(),
                ms(Some(saga.submitted_at_ms)),
                ms(saga.finished_at_ms),
                saga.steps.len() as i64,
                i64::from(saga.recoveries),
                saga.compensation_reason,
                "journal"
            ])?;
            counts.sagas += 1;
            for (i, s) in saga.steps.iter().enumerate() {
                let last_error = s.compensate.last_error.clone().or_else(|| s.forward.last_error.clone());
                steps.append_row(params![
                    saga.id,
                    i as i64,
                    s.call.action,
                    participant_of(&s.call.action),
                    i64::from(s.forward.total_attempts),
                    s.forward.done,
                    s.forward.by_marker,
                    i64::from(s.compensate.total_attempts),
                    s.compensate.done,
                    last_error,
                    ms(s.forward.first_started_at_ms),
                    ms(s.forward.finished_at_ms),
                    outputs_json(&s.forward.outputs)
                ])?;
                counts.steps += 1;
            }
        }
        for r in records.iter().filter(|r| !journal.sagas.contains_key(&r.id)) {
            sagas.append_row(params![
                r.id,
                r.status,
                ms(Some(r.submitted_at_ms)),
                ms(Some(r.finished_at_ms)),
                r.steps.len() as i64,
                i64::from(r.recoveries),
                r.compensation_reason,
                "index"
            ])?;
            counts.sagas += 1;
            for (i, s) in r.steps.iter().enumerate() {
                steps.append_row(params![
                    r.id,
                    i as i64,
                    s.action,
                    participant_of(&s.action),
                    i64::from(s.forward_attempts),
                    s.forward_done,
                    s.forward_by_marker,
                    i64::from(s.compensate_attempts),
                    s.compensated,
                    s.last_error,
                    None::<i64>,
                    None::<i64>,
                    outputs_json(&s.outputs)
                ])?;
                counts.steps += 1;
            }
        }
        sagas.flush()?;
        steps.flush()?;
    }
    {
        let mut attempts = conn.appender("s_attempts")?;
        for a in &journal.attempts {
            let action =
                journal.sagas.get(&a.saga).and_then(|s| s.steps.get(a.step as usize)).map(|s| s.call.action.clone());
            let participant = action.as_deref().and_then(participant_of);
            attempts.append_row(params![
                a.saga,
                i64::from(a.step),
                a.direction.as_str(),
                i64::from(a.attempt),
                action,
                participant,
                ms(a.started_ms),
                ms(a.ended_ms),
                a.outcome,
                a.by_marker,
                a.retryable,
                a.error,
                ms(Some(a.lsn))
            ])?;
            counts.attempts += 1;
        }
        attempts.flush()?;
        let mut recoveries = conn.appender("s_recoveries")?;
        let mut recovered = conn.appender("s_recovered")?;
        for (lsn, at_ms, unfinished, ids) in &journal.recoveries {
            recoveries.append_row(params![ms(Some(*lsn)), ms(Some(*at_ms)), ms(Some(*unfinished))])?;
            counts.recoveries += 1;
            for id in ids {
                recovered.append_row(params![ms(Some(*lsn)), id])?;
            }
        }
        recoveries.flush()?;
        recovered.flush()?;
    }
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(
        "INSERT INTO sagas SELECT saga_id, status, epoch_ms(submitted_ms), epoch_ms(finished_ms),
           finished_ms - submitted_ms, steps, recoveries, compensation_reason, source FROM s_sagas;
         INSERT INTO steps SELECT saga_id, step, action, participant, forward_attempts, forward_done, forward_by_marker,
           compensate_attempts, compensated, last_error, epoch_ms(started_ms), epoch_ms(finished_ms),
           finished_ms - started_ms, outputs FROM s_steps;
         INSERT INTO attempts SELECT saga_id, step, direction, attempt, action, participant, epoch_ms(started_ms),
           epoch_ms(ended_ms), ended_ms - started_ms, outcome, by_marker, retryable, error, lsn FROM s_attempts;
         INSERT INTO recoveries SELECT lsn, epoch_ms(at_ms), unfinished FROM s_recoveries;
         INSERT INTO recovered_sagas SELECT recovery_lsn, saga_id FROM s_recovered;
         DROP TABLE s_sagas; DROP TABLE s_steps; DROP TABLE s_attempts; DROP TABLE s_recoveries; DROP TABLE s_recovered;
         CHECKPOINT;",
    )?;
    Ok(counts)
}
