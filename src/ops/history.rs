//! The journal read back for the offline tools, and the configuration they run with.
//!
//! Every record is read through the checksummed scanner and decoded; a record that does not
//! decode, or corruption anywhere in the log, is an error naming its LSN or segment, never
//! skipped. Sagas are rebuilt with [`crate::recovery::apply`], the step recovery itself
//! replays, so a tool sees exactly the sagas the next start will see.
//!
//! [`unfinished`] keeps only unfinished sagas in memory: a saga leaves the map as soon as its
//! `SagaFinished` is read, so the memory a dry-run needs grows with the unfinished sagas, not
//! with the length of the log. A finished saga reopened later in the log (an operator's
//! `CompensateCompleted`) is rebuilt in a second, targeted pass.
//!
//! Never does: write anything (not the config, not the checkpoint, not the journal).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::Error;
use crate::catalog::{Catalog, EMBEDDED_DEFAULT};
use crate::data_dir::{Access, DataDir, JOURNAL_DIR};
use crate::engine::{Record, ResolveDecision, Saga};
use crate::journal::{self, Severity};
use crate::node::CONFIG_FILE;
use crate::{checkpoint, recovery};

/// Locks an existing data directory; refuses to create one (a typo in `--data-dir` must not
/// produce an empty directory that "recovers" nothing).
pub fn open_data_dir(path: &Path, access: Access) -> Result<DataDir, Error> {
    if !path.join(JOURNAL_DIR).is_dir() {
        return Err(Error::NotADataDir { path: path.to_path_buf() });
    }
    Ok(DataDir::open(path, access)?)
}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConfigSource {
    /// `--config F`.
    File(PathBuf),
    /// The data directory's own `sagalog.toml`.
    DataDir(PathBuf),
    /// No file: the embedded default, as `serve` would write it (the tools do not write it).
    EmbeddedDefault,
    /// An online run: the configuration the running server loaded.
    Server,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) | ConfigSource::DataDir(p) => write!(f, "{}", p.display()),
            ConfigSource::EmbeddedDefault => {
                f.write_str("the embedded default (no sagalog.toml in the data directory)")
            }
            ConfigSource::Server => f.write_str("the running server's"),
        }
    }
}

/// The configuration `serve` would use: `--config F`, else `D/sagalog.toml`, else the
/// embedded default, read without writing it.
pub fn load_catalog(data_dir: &Path, config: Option<&Path>) -> Result<(Catalog, ConfigSource), Error> {
    if let Some(path) = config {
        return Ok((crate::node::load_config(path)?, ConfigSource::File(path.to_path_buf())));
    }
    let own = data_dir.join(CONFIG_FILE);
    if own.exists() {
        return Ok((crate::node::load_config(&own)?, ConfigSource::DataDir(own)));
    }
    Ok((Catalog::parse(EMBEDDED_DEFAULT)?, ConfigSource::EmbeddedDefault))
}

/// The LSN recovery replays from: the checkpoint's, or the first LSN without one.
pub fn replay_from(data_dir: &Path) -> Result<u64, Error> {
    Ok(checkpoint::read(data_dir)?.map_or(crate::wal_format::FIRST_LSN, |c| c.replay_from_lsn))
}

/// What reading the journal found, apart from the records themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogFacts {
    /// Records handed to the visitor (from the requested LSN on).
    pub records: u64,
    pub first_lsn: Option<u64>,
    pub last_lsn: Option<u64>,
    /// Bytes checksummed.
    pub verified_bytes: u64,
    /// A torn tail of the last segment (never acknowledged; the next writer truncates it).
    pub torn_tail: Option<String>,
}

/// Reads and decodes every record from `from_lsn` on (all records are verified), handing each
/// to `visit` with its LSN. Corruption and undecodable records are errors.
pub fn read(journal_dir: &Path, from_lsn: u64, visit: impl FnMut(u64, Record)) -> Result<LogFacts, Error> {
    read_upto(journal_dir, from_lsn, None, visit)
}

/// [`read`] of a journal a running server is appending to: only the records up to `upto_lsn`
/// (its acknowledged LSN when the read began, so durable) are read; what the writer appends
/// after it is never looked at. `None` reads everything (a journal no one writes).
pub fn read_upto(
    journal_dir: &Path,
    from_lsn: u64,
    upto_lsn: Option<u64>,
    mut visit: impl FnMut(u64, Record),
) -> Result<LogFacts, Error> {
    let mut failure = None;
    let mut records = 0u64;
    let summary = journal::scan_upto(journal_dir, from_lsn, upto_lsn, |r, _, _| {
        if failure.is_some() {
            return;
        }
        match Record::decode(r.kind, r.payload) {
            Ok(record) => {
                records += 1;
                visit(r.lsn, record);
            }
            Err(source) => failure = Some(Error::Record { lsn: r.lsn, source }),
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let torn_tail = match summary.problem {
        Some(p) if p.severity == Severity::Corrupt => return Err(Error::Corrupt(p.to_string())),
        // Online, the bytes past the bound are the writer's append in progress, not a tail.
        Some(_) if upto_lsn.is_some() => None,
        Some(p) => Some(p.to_string()),
        None => None,
    };
    Ok(LogFacts {
        records,
        first_lsn: summary.first_lsn,
        last_lsn: summary.last_lsn,
        verified_bytes: summary.verified_bytes,
        torn_tail,
    })
}

/// The unfinished sagas recovery would resume.
#[derive(Debug, Default)]
pub struct Unfinished {
    pub sagas: BTreeMap<String, Saga>,
    /// LSN of each unfinished saga's `SagaSubmitted`.
    pub first_lsn: BTreeMap<String, u64>,
    /// Sagas submitted in the replayed range that are finished (recovery archives them).
    pub finished: u64,
    pub log: LogFacts,
}

/// Rebuilds the sagas recovery would find unfinished, replaying from `from_lsn`, holding only
/// unfinished sagas in memory.
pub fn unfinished(journal_dir: &Path, from_lsn: u64) -> Result<Unfinished, Error> {
    unfinished_upto(journal_dir, from_lsn, None)
}

/// [`unfinished`] over the records up to `upto_lsn` (see [`read_upto`]).
pub fn unfinished_upto(journal_dir: &Path, from_lsn: u64, upto_lsn: Option<u64>) -> Result<Unfinished, Error> {
    let mut out = Unfinished::default();
    let mut reopened = BTreeSet::new();
    out.log = read_upto(journal_dir, from_lsn, upto_lsn, |lsn, record| {
        if let Record::SagaSubmitted(s) = &record
            && !out.sagas.contains_key(&s.saga)
        {
            out.first_lsn.insert(s.saga.clone(), lsn);
        }
        // The saga's records before its latest snapshot are no longer needed (recovery too
        // starts it there).
        if let Record::SagaSnapshot(s) = &record {
            out.first_lsn.insert(s.saga.id.clone(), lsn);
        }
        if let Record::Resolved(r) = &record
            && r.decision == ResolveDecision::CompensateCompleted
            && !out.sagas.contains_key(&r.saga)
        {
            reopened.insert(r.saga.clone());
        }
        recovery::apply(&mut out.sagas, &record);
        if let Some(id) = record.saga()
            && out.sagas.get(id).is_some_and(Saga::is_finished)
        {
            out.sagas.remove(id);
            out.first_lsn.remove(id);
            out.finished += 1;
        }
    })?;
    if !reopened.is_empty() {
        let (sagas, first_lsn) = rebuild_only(journal_dir, from_lsn, upto_lsn, &reopened)?;
        for (id, saga) in sagas {
            if saga.is_finished() {
                continue;
            }
            // Counted as finished when its first `SagaFinished` was read; it is not.
            out.finished = out.finished.saturating_sub(1);
            if let Some(lsn) = first_lsn.get(&id) {
                out.first_lsn.insert(id.clone(), *lsn);
            }
            out.sagas.insert(id, saga);
        }
    }
    Ok(out)
}

type SagaMap = BTreeMap<String, Saga>;

/// Rebuilds just the sagas in `ids`, from every record of theirs from `from_lsn` on.
fn rebuild_only(
    journal_dir: &Path,
    from_lsn: u64,
    upto_lsn: Option<u64>,
    ids: &BTreeSet<String>,
) -> Result<(SagaMap, BTreeMap<String, u64>), Error> {
    let mut sagas = BTreeMap::new();
    let mut first_lsn = BTreeMap::new();
    read_upto(journal_dir, from_lsn, upto_lsn, |lsn, record| {
        let wanted = match &record {
            Record::RecoveryStarted(_) => true,
            other => other.saga().is_some_and(|id| ids.contains(id)),
        };
        if !wanted {
            return;
        }
        match &record {
            Record::SagaSubmitted(s) => {
                first_lsn.entry(s.saga.clone()).or_insert(lsn);
            }
            Record::SagaSnapshot(s) => {
                first_lsn.insert(s.saga.id.clone(), lsn);
            }
            _ => {}
        }
        recovery::apply(&mut sagas, &record);
    })?;
    Ok((sagas, first_lsn))
}

/// Every saga whose records are in the journal from `from_lsn` on, finished or not, with the
/// LSN of its `SagaSubmitted` and of its latest `SagaFinished`. Holds every saga in memory:
/// for the tools that need finished sagas too (audit, `--compensate-since`).
#[derive(Debug, Default)]
pub struct Everything {
    pub sagas: BTreeMap<String, Saga>,
    pub first_lsn: BTreeMap<String, u64>,
    pub finished_lsn: BTreeMap<String, u64>,
    pub log: LogFacts,
}

pub fn everything(journal_dir: &Path, from_lsn: u64) -> Result<Everything, Error> {
    everything_upto(journal_dir, from_lsn, None)
}

/// [`everything`] over the records up to `upto_lsn` (see [`read_upto`]).
pub fn everything_upto(journal_dir: &Path, from_lsn: u64, upto_lsn: Option<u64>) -> Result<Everything, Error> {
    let mut out = Everything::default();
    out.log = read_upto(journal_dir, from_lsn, upto_lsn, |lsn, record| {
        match &record {
            Record::SagaSubmitted(s) => {
                out.first_lsn.entry(s.saga.clone()).or_insert(lsn);
            }
            Record::SagaSnapshot(s) => {
                out.first_lsn.insert(s.saga.id.clone(), lsn);
            }
            Record::SagaFinished(f) if out.sagas.contains_key(&f.saga) => {
                out.finished_lsn.insert(f.saga.clone(), lsn);
            }
            _ => {}
        }
        recovery::apply(&mut out.sagas, &record);
    })?;
    Ok(out)
}
