//! Recovery: the journal → engine state → in-doubt resolution → executor.
//!
//! On start, every record is read back (through the same checksummed reader as
//! `sagalog wal verify`) and applied with [`Saga::apply`], the function live running uses, so a
//! rebuilt saga is exactly the saga that was running. A `RecoveryStarted { reason: "recovery" }`
//! record (on-disk kind `Checkpoint`) is journaled to count the recovery for every unfinished saga, and each unfinished
//! saga is handed to the executor, whose first [`Saga::next`] tells it what to do: a step that
//! was started but has no outcome is *in doubt* and is settled by its participant's marker
//! (present → recorded as succeeded without re-running; absent → run again), then the saga
//! continues forward or keeps compensating. `docs/recovery.md` has the full table.
//!
//! Never does: run a participant action itself, or skip a record it cannot decode.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::engine::record::{DecodeError, RecoveryStarted};
use crate::engine::{Record, Saga};
use crate::executor::Executor;
use crate::journal;

/// What a recovery pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    pub sagas: usize,
    pub unfinished: usize,
    /// Steps started with no journaled outcome (settled by marker once running).
    pub in_doubt: usize,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Journal(#[from] journal::Error),
    #[error("journal record at lsn {lsn} cannot be read: {source}")]
    Record { lsn: u64, source: DecodeError },
    #[error("journal is corrupt: {0}; run `sagalog wal verify`")]
    Corrupt(String),
}

/// Every saga found in the journal, and the LSN of each one's `SagaSubmitted`.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub sagas: BTreeMap<String, Saga>,
    pub first_lsn: BTreeMap<String, u64>,
    /// Records replayed.
    pub records: u64,
}

/// Reads the journal in `journal_dir` from `from_lsn` (every record is still verified) and
/// rebuilds every saga submitted from there on. Records of sagas submitted earlier belong to
/// sagas the checkpoint says are finished and archived; they are skipped. Pure apart from
/// reading.
pub fn rebuild(journal_dir: &Path, from_lsn: u64) -> Result<Rebuilt, Error> {
    rebuild_upto(journal_dir, from_lsn, None)
}

/// [`rebuild`] of a journal that is being written: only records up to `upto_lsn` (the
/// acknowledged LSN when the pass starts) are read.
pub fn rebuild_upto(journal_dir: &Path, from_lsn: u64, upto_lsn: Option<u64>) -> Result<Rebuilt, Error> {
    let mut out = Rebuilt::default();
    let mut failure = None;
    let summary = journal::scan_upto(journal_dir, from_lsn, upto_lsn, |r, _, _| {
        if failure.is_some() {
            return;
        }
        match Record::decode(r.kind, r.payload) {
            Ok(record) => {
                match &record {
                    Record::SagaSubmitted(s) => {
                        out.first_lsn.entry(s.saga.clone()).or_insert(r.lsn);
                    }
                    // The saga's records before its latest snapshot are no longer needed.
                    Record::SagaSnapshot(s) => {
                        out.first_lsn.insert(s.saga.id.clone(), r.lsn);
                    }
                    _ => {}
                }
                out.records += 1;
                apply(&mut out.sagas, &record);
            }
            Err(source) => failure = Some(Error::Record { lsn: r.lsn, source }),
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(problem) = summary.problem.filter(|p| p.severity == journal::Severity::Corrupt) {
        return Err(Error::Corrupt(problem.to_string()));
    }
    Ok(out)
}

/// Applies one record to the set of sagas: the replay step shared by recovery and the
/// offline tools.
pub fn apply(sagas: &mut BTreeMap<String, Saga>, record: &Record) {
    match record {
        Record::SagaSubmitted(s) => {
            sagas.entry(s.saga.clone()).or_insert_with(|| Saga::submitted(s));
        }
        // A replay that starts at (or passed) the snapshot has the saga from here on.
        Record::SagaSnapshot(s) => {
            let saga = sagas.entry(s.saga.id.clone()).or_insert_with(|| (*s.saga).clone());
            saga.apply(record);
        }
        Record::RecoveryStarted(c) if c.reason == RECOVERY => sagas.values_mut().for_each(Saga::note_recovery),
        Record::RecoveryStarted(_) => {}
        other => {
            if let Some(saga) = other.saga().and_then(|id| sagas.get_mut(id)) {
                saga.apply(other);
            }
        }
    }
}

const RECOVERY: &str = "recovery";

/// [`rebuild`] of the executor's journal on a blocking thread (it reads and decodes the log).
/// With `live`, only records acknowledged when the pass starts are read (the writer keeps
/// appending meanwhile).
async fn rebuild_off_runtime(executor: &Executor, from_lsn: u64, live: bool) -> Result<Rebuilt, Error> {
    let journal_dir = executor.journal().dir().to_path_buf();
    let upto = live.then(|| executor.journal().acked_lsn());
    tokio::task::spawn_blocking(move || rebuild_upto(&journal_dir, from_lsn, upto))
        .await
        .map_err(|e| Error::Corrupt(format!("recovery task failed: {e}")))?
}

/// Rebuilds every saga from the journal (from the checkpoint's `from_lsn`) and hands them to
/// the executor, which archives the finished ones, settles in-doubt steps and finishes or
/// compensates each unfinished saga.
pub async fn recover(executor: &Executor, from_lsn: u64) -> Result<Report, Error> {
    let started = Instant::now();
    let Rebuilt { mut sagas, first_lsn, records } = rebuild_off_runtime(executor, from_lsn, false).await?;
    let unfinished = sagas.values().filter(|s| !s.is_finished()).count();
    let in_doubt = sagas
        .values()
        .flat_map(|s| s.steps.iter())
        // A delay step waiting for its deadline is not in doubt: it has no participant.
        .filter(|st| (st.forward.in_flight && !st.is_delay()) || st.compensate.in_flight)
        .count();
    if unfinished > 0 {
        let record = Record::RecoveryStarted(RecoveryStarted {
            reason: RECOVERY.into(),
            unfinished: unfinished as u64,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        });
        executor.journal().append(record.kind(), record.encode()).await?;
        apply(&mut sagas, &record);
    }
    let report = Report { records, sagas: sagas.len(), unfinished, in_doubt, duration: started.elapsed() };
    for saga in sagas.into_values() {
        let lsn = first_lsn.get(&saga.id).copied().unwrap_or(from_lsn);
        executor.adopt(saga, lsn);
    }
    crate::metrics::get().recovery(report.duration);
    tracing::info!(
        records,
        sagas = report.sagas,
        unfinished,
        in_doubt,
        ms = report.duration.as_millis() as u64,
        "recovery: journal replayed, unfinished sagas resumed"
    );
    Ok(report)
}

/// What an on-demand recovery pass ([`recover_missing`]) found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Unfinished sagas in the journal.
    pub unfinished: usize,
    /// Of those, sagas that had no running task and were restarted.
    pub restarted: usize,
    pub duration: Duration,
}

/// A recovery pass on a running executor (`Admin.Recover`): re-reads the journal from the
/// oldest record still needed and restarts every unfinished saga that has no task driving it
/// (normally none). Sagas with a task are left alone: their in-memory state is ahead of the
/// journal read here.
///
/// The read happens before the look at the executor, so a saga may finish in between: its
/// task journals `SagaFinished`, ends, and archives it. Such a saga is never restarted: one
/// the executor holds finished (between the task's end and its archiving, or kept in memory
/// because archiving failed) is skipped, and one it no longer holds is looked up in the index
/// (archiving writes the index before it forgets the saga). A saga held unfinished with no
/// task restarts from the fresher of the two states.
pub async fn recover_missing(executor: &Executor) -> Result<PassReport, Error> {
    let started = Instant::now();
    let from_lsn = executor.checkpoint_lsn();
    let Rebuilt { sagas, first_lsn, .. } = rebuild_off_runtime(executor, from_lsn, true).await?;
    let mut report = PassReport::default();
    for read in sagas.into_values().filter(|s| !s.is_finished()) {
        report.unfinished += 1;
        let saga = match executor.known(&read.id) {
            Some((true, _)) => continue,
            Some((false, held)) if held.is_finished() => continue,
            Some((false, held)) if held.version > read.version => held,
            Some((false, _)) => read,
            None => match executor.archived(&read.id) {
                Ok(None) => read,
                Ok(Some(_)) => continue,
                Err(e) => {
                    // Neither present nor absent: restarting could run a finished saga again.
                    tracing::error!(saga_id = %read.id, error = %e, "recovery pass: cannot read the index; saga left alone");
                    continue;
                }
            },
        };
        tracing::warn!(saga_id = %saga.id, "recovery pass: unfinished saga had no running task; restarting it");
        let lsn = first_lsn.get(&saga.id).copied().unwrap_or(from_lsn);
        executor.adopt(saga, lsn);
        report.restarted += 1;
    }
    report.duration = started.elapsed();
    crate::metrics::get().recovery(report.duration);
    Ok(report)
}
