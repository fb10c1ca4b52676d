//! Offline recovery: `sagalog replay --data-dir D` does what the next `serve` start would do
//! (the same journal open, participants, index, executor and `recovery::recover`), waits until
//! every saga is COMPLETED, COMPENSATED or STUCK, writes a checkpoint, and stops, without
//! serving anything. `--compensate-since` reopens the sagas that completed after a point and
//! compensates them, journaled like any compensation.
//!
//! Safe to interrupt at any moment: every decision is journaled before it acts, so a rerun (or
//! a `serve` start) recovers from wherever the interrupted run stopped, and recovery is
//! idempotent. The data directory is held exclusively (refused while a server runs).
//!
//! Never does: write the configuration (a data directory without `sagalog.toml` runs on the
//! embedded default, as `serve` would), or touch a participant except through the executor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Error;
use super::history::{self, ConfigSource};
use crate::catalog::Catalog;
use crate::checkpoint::{self, Checkpoint};
use crate::data_dir::{Access, DataDir};
use crate::engine::record::Resolved;
use crate::engine::{Outcome, Record, ResolveDecision, Status};
use crate::executor::Executor;
use crate::index::{Index, ListFilter};
use crate::journal::{Journal, Options, SyncPolicy};
use crate::node::{INDEX_DIR, archive_pass};
use crate::{participant, recovery};

/// A data directory opened for writing without serving: what `Node::start` assembles, minus
/// the periodic checkpoint task (the tool writes one checkpoint when it is done).
pub struct Offline {
    pub executor: Executor,
    pub journal: Journal,
    pub index: Index,
    pub catalog: Arc<Catalog>,
    pub config: ConfigSource,
    root: PathBuf,
    /// The LSN the checkpoint said recovery replays from.
    pub replay_from_lsn: u64,
    /// The first LSN this run appended (records from here on are this run's work).
    pub start_lsn: u64,
    _data_dir: Arc<DataDir>,
}

impl Offline {
    /// Locks `data_dir` exclusively and opens its journal, participants and index.
    pub fn open(data_dir: &Path, config: Option<&Path>) -> Result<Offline, Error> {
        let dir = Arc::new(history::open_data_dir(data_dir, Access::Exclusive)?);
        let (catalog, source) = history::load_catalog(dir.root(), config)?;
        let sync = SyncPolicy::parse(&catalog.config.journal.sync).map_err(crate::catalog::ConfigError::Invalid)?;
        let options =
            Options { sync, segment_bytes_max: catalog.config.journal.segment_bytes_max, ..Options::default() };
        let opened = Journal::open(dir.clone(), options)?;
        if let Some((path, offset, bytes)) = &opened.truncated_tail {
            tracing::warn!(segment = %path.display(), offset, bytes, "journal had a torn tail (never acknowledged); truncated");
        }
        let participants = participant::open_all(&catalog.config.participants, dir.root())?;
        let index = Index::open(dir.root().join(INDEX_DIR))?;
        let replay_from_lsn = history::replay_from(dir.root())?;
        let catalog = Arc::new(catalog);
        let journal = opened.journal;
        let executor = Executor::with_index(journal.clone(), catalog.clone(), participants, Some(index.clone()));
        let start_lsn = journal.acked_lsn() + 1;
        Ok(Offline {
            executor,
            journal,
            index,
            catalog,
            config: source,
            root: dir.root().to_path_buf(),
            replay_from_lsn,
            start_lsn,
            _data_dir: dir,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Waits until no saga is running any more (all COMPLETED, COMPENSATED or STUCK), the
    /// deadline passes, or `interrupted` resolves; calls `progress(settled)` as sagas settle.
    /// Returns the sagas still running (with the participant each is parked on, if any).
    pub async fn wait_settled(
        &self,
        deadline: Duration,
        mut progress: impl FnMut(usize),
        interrupted: impl std::future::Future<Output = ()>,
    ) -> Vec<(String, Option<String>)> {
        let end = tokio::time::Instant::now() + deadline;
        tokio::pin!(interrupted);
        loop {
            let running: Vec<(String, Option<String>)> = self
                .executor
                .list()
                .into_iter()
                .filter(|s| !s.status.is_terminal() && s.status != Status::Stuck)
                .map(|s| (s.saga.id, s.parked_on))
                .collect();
            progress(running.len());
            if running.is_empty() || tokio::time::Instant::now() >= end {
                return running;
            }
            tokio::select! {
                _ = tokio::time::sleep(SETTLE_POLL) => {}
                _ = &mut interrupted => return running,
            }
        }
    }

    /// Writes a checkpoint (letting the journal drop what the index now holds), flushes the
    /// index and closes the journal, which releases the data directory.
    pub async fn close(self) -> Result<(), Error> {
        archive_pass(&self.executor, &self.journal, &self.index, &self.root, &self.catalog.config.index, 0).await?;
        self.index.flush()?;
        self.journal.shutdown().await?;
        Ok(())
    }

    /// Closes without a checkpoint (after an interruption: the next start recovers).
    pub async fn abandon(self) -> Result<(), Error> {
        self.index.flush()?;
        self.journal.shutdown().await?;
        Ok(())
    }
}

/// How often settling is checked.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// What a replay did, counted from the records it journaled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Records replayed by recovery, sagas found, unfinished ones resumed.
    pub records_replayed: u64,
    pub sagas_found: usize,
    pub unfinished: usize,
    pub in_doubt: usize,
    pub completed: u64,
    pub compensated: u64,
    /// Sagas left STUCK (waiting for an operator).
    pub stuck: Vec<String>,
    /// Sagas still running when the run ended (interrupted or timed out), with the
    /// participant each is parked on.
    pub still_running: Vec<(String, Option<String>)>,
    /// Step attempts this run started (forward and compensation)...
    pub steps_run: u64,
    /// ... of which repeated a step attempted before (attempt > 1).
    pub steps_rerun: u64,
    pub compensations_run: u64,
    /// In-doubt steps settled by their marker, without running them.
    pub settled_by_marker: u64,
    pub duration_ms: u64,
}

/// Counts what was journaled from `from_lsn` on.
pub fn count_work(journal_dir: &Path, from_lsn: u64, summary: &mut Summary) -> Result<(), Error> {
    history::read(journal_dir, from_lsn, |_, record| match record {
        Record::StepStarted(s) => {
            summary.steps_run += 1;
            summary.steps_rerun += u64::from(s.attempt > 1);
            summary.compensations_run += u64::from(s.direction == participant::Direction::Compensate);
        }
        Record::StepSucceeded(s) if s.by_marker => summary.settled_by_marker += 1,
        Record::SagaFinished(f) => match f.outcome {
            Outcome::Completed => summary.completed += 1,
            Outcome::Compensated => summary.compensated += 1,
        },
        _ => {}
    })?;
    Ok(())
}

/// The stuck sagas the executor holds.
pub fn stuck(executor: &Executor) -> Vec<String> {
    let mut ids: Vec<String> =
        executor.list().into_iter().filter(|s| s.status == Status::Stuck).map(|s| s.saga.id).collect();
    ids.sort();
    ids
}

/// A point in the history: an LSN, or a wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Since {
    /// Sagas whose `SagaFinished` has a greater LSN.
    Lsn(u64),
    /// Sagas that finished at or after this time (ms since the Unix epoch).
    TimeMs(u64),
}

/// Parses `--compensate-since`: a plain number is an LSN; otherwise an RFC 3339 time
/// (`2026-11-24T03:00:00Z`) or a duration back from now (`90m`, `2h 30m`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<Since, Error> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Since::Lsn)
            .map_err(|e| Error::Usage(format!("--compensate-since {text:?}: not a valid LSN: {e}")));
    }
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(time_error) => match humantime::parse_duration(text) {
            Ok(back) => now
                .checked_sub(back)
                .ok_or_else(|| Error::Usage(format!("--compensate-since {text:?}: reaches before the Unix epoch")))?,
            Err(_) => {
                return Err(Error::Usage(format!(
                    "--compensate-since {text:?} is neither an LSN (a number), an RFC 3339 time \
                     (2026-11-24T03:00:00Z: {time_error}) nor a duration back from now (2h, 30m)"
                )));
            }
        },
    };
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::Usage(format!("--compensate-since {text:?} is before 1970")))?;
    Ok(Since::TimeMs(u64::try_from(ms.as_millis()).unwrap_or(u64::MAX)))
}

/// A completed saga that `--compensate-since` would undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub id: String,
    pub first_lsn: u64,
    pub finished_lsn: u64,
    pub finished_at_ms: u64,
}

/// Which completed sagas a point selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// Completed sagas whose journal records are all still there: they can be compensated.
    pub compensable: Vec<Candidate>,
    /// Completed sagas after the point that are only in the index: their journal segments were
    /// deleted after a checkpoint, and with them the step parameters a compensation needs.
    /// They are reported, never guessed at (`id`, `finished_at_ms`).
    pub archived_only: Vec<(String, u64)>,
    /// Set when the point is an LSN older than the journal's first record: sagas that
    /// completed in between are only in the index, which keeps no LSNs.
    pub note: Option<String>,
}

/// Selects the completed sagas after `since`, from the journal (all of it still on disk) and
/// the index.
pub fn select(journal_dir: &Path, index: &Index, since: Since) -> Result<Selection, Error> {
    let all = history::everything(journal_dir, crate::wal_format::FIRST_LSN)?;
    let mut selection = Selection::default();
    for (id, saga) in &all.sagas {
        if saga.status() != Status::Completed {
            continue;
        }
        let (Some(&first_lsn), Some(&finished_lsn)) = (all.first_lsn.get(id), all.finished_lsn.get(id)) else {
            continue;
        };
        let finished_at_ms = saga.finished_at_ms.unwrap_or(0);
        let after = match since {
            Since::Lsn(lsn) => finished_lsn > lsn,
            Since::TimeMs(ms) => finished_at_ms >= ms,
        };
        if after {
            selection.compensable.push(Candidate { id: id.clone(), first_lsn, finished_lsn, finished_at_ms });
        }
    }
    match since {
        Since::TimeMs(ms) => {
            let filter = ListFilter {
                status: Some(Status::Completed.as_str().into()),
                finished_since_ms: Some(ms),
                finished_until_ms: None,
            };
            let mut token: Option<String> = None;
            loop {
                let (page, next) = index.list(&filter, token.as_deref(), crate::index::LIST_LIMIT_MAX)?;
                for record in page {
                    if !all.sagas.contains_key(&record.id) {
                        selection.archived_only.push((record.id, record.finished_at_ms));
                    }
                }
                match next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
        }
        Since::Lsn(lsn) => {
            if let Some(first) = all.log.first_lsn.filter(|first| lsn + 1 < *first) {
                selection.note = Some(format!(
                    "the journal starts at lsn {first}: sagas that completed between lsn {lsn} and {first} are only in \
                     the index, which keeps no LSNs; select them by time instead (--compensate-since TIME)"
                ));
            }
        }
    }
    selection.compensable.sort_by_key(|c| c.finished_lsn);
    Ok(selection)
}

/// Reopens every compensable candidate and hands it to the executor: lowers the checkpoint
/// first if a candidate's records lie below it (so that a crash in the middle still finds the
/// saga on the next start), then journals `Resolved { CompensateCompleted }` for each.
pub async fn reopen(offline: &Offline, candidates: &[Candidate], by: &str) -> Result<usize, Error> {
    let Some(lowest) = candidates.iter().map(|c| c.first_lsn).min() else { return Ok(0) };
    if lowest < offline.replay_from_lsn {
        let cp = Checkpoint {
            replay_from_lsn: lowest,
            indexed_through_lsn: lowest.saturating_sub(1),
            written_at_ms: now_ms(),
            // Unknown here; the archive pass at the end of the run records it.
            journal_next_lsn: 0,
        };
        let root = offline.root.clone();
        tokio::task::spawn_blocking(move || checkpoint::write(&root, &cp))
            .await
            .map_err(|e| Error::Usage(format!("checkpoint writer stopped: {e}")))??;
    }
    // The sagas' full state, from the journal (the index does not keep step parameters).
    let journal_dir = offline.journal.dir().to_path_buf();
    let ids: BTreeMap<String, u64> = candidates.iter().map(|c| (c.id.clone(), c.first_lsn)).collect();
    let mut sagas = tokio::task::spawn_blocking(move || history::everything(&journal_dir, lowest))
        .await
        .map_err(|e| Error::Usage(format!("the journal reader stopped: {e}")))??
        .sagas;
    let mut reopened = 0;
    for (id, first_lsn) in ids {
        let Some(mut saga) = sagas.remove(&id) else { continue };
        if saga.status() != Status::Completed {
            continue;
        }
        let record = Record::Resolved(Resolved {
            saga: id.clone(),
            decision: ResolveDecision::CompensateCompleted,
            by: by.to_owned(),
            at_ms: now_ms(),
        });
        offline.journal.append(record.kind(), record.encode()).await?;
        saga.apply(&record);
        offline.executor.adopt(saga, first_lsn);
        reopened += 1;
    }
    Ok(reopened)
}

/// Runs recovery on an opened data directory (the same call `Node::start` makes).
pub async fn recover(offline: &Offline, from_lsn: u64) -> Result<recovery::Report, Error> {
    Ok(recovery::recover(&offline.executor, from_lsn).await?)
}

use crate::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    /// A number is an LSN; an RFC 3339 time or a duration back from now is a time; anything
    /// else is refused with a message naming the input.
    #[test]
    fn since_parses_lsns_times_and_durations() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_since("42", now).unwrap(), Since::Lsn(42));
        assert_eq!(parse_since("2026-01-01T10:00:00Z", now).unwrap(), Since::TimeMs(1_767_261_600_000));
        assert_eq!(parse_since("2h", now).unwrap(), Since::TimeMs(1_800_000_000_000 - 7_200_000));
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "99999999999999999999999"] {
            let message = parse_since(bad, now).unwrap_err().to_string();
            assert!(message.contains("--compensate-since"), "{bad:?}: {message}");
        }
    }
}
