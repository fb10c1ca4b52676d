//! A running sagalog instance: the data directory (held exclusively), its journal, the
//! participants of its configuration, the executor, and the recovery pass that resumes what a
//! previous run left unfinished. `sagalog serve` runs one; tests and tools embed one.
//!
//! Configuration: `--config F` if given; otherwise the data directory's own `sagalog.toml`;
//! otherwise the embedded default is written there first (atomically: temporary file, fsync,
//! rename, directory fsync), so later offline commands need only `--data-dir`. A config that is
//! empty or cut short is refused as such ([`load_config`]).
//!
//! Before anything is opened for writing, startup cross-checks the durable state
//! ([`check_journal`], [`check_index_mark`]): the checkpoint, the journal's LSN range and the
//! index must agree, or the start is refused with [`Error::Inconsistent`], naming what
//! disagrees and what to run. It never guesses and never recreates a missing journal or index
//! next to a checkpoint: an empty one would drop every saga the missing one held.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::catalog::{Catalog, ConfigError, EMBEDDED_DEFAULT};
use crate::checkpoint::{self, Checkpoint};
use crate::data_dir::{Access, DataDir, JOURNAL_DIR};
use crate::executor::Executor;
use crate::index::{self, Index};
use crate::journal::{self, Journal, LogSummary, Options, SyncPolicy};
use crate::wal_format::FIRST_LSN;
use crate::{participant, recovery};

/// File name of a data directory's own configuration.
pub const CONFIG_FILE: &str = "sagalog.toml";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::Error),
    #[error(transparent)]
    Journal(#[from] journal::Error),
    #[error("participant {0}")]
    Participant(#[from] participant::Error),
    #[error("recovery failed: {0}")]
    Recovery(#[from] recovery::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Index(#[from] index::Error),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    /// The checkpoint, the journal and the index disagree; see [`refusal`].
    #[error("{message}")]
    Inconsistent { message: String },
    #[error("cannot listen on {addr} (server.metrics_listen: metrics and the demo notifier): {source}")]
    Listen { addr: String, source: std::io::Error },
}

/// Folder of the sled index inside the data directory.
pub const INDEX_DIR: &str = "index";

/// A started instance.
pub struct Node {
    pub executor: Executor,
    pub journal: Journal,
    pub index: Index,
    pub catalog: Arc<Catalog>,
    pub config_path: PathBuf,
    pub recovery: recovery::Report,
    /// The HTTP port (`[server] metrics_listen`), bound before recovery and not yet served:
    /// `server::start` serves it. Bound early so that a step recovery resumes that calls the
    /// server's own demo notifier waits in the listen backlog until it is served, instead of
    /// being refused (which opened the notifier's breaker at every restart and parked sagas).
    pub http_listener: Option<tokio::net::TcpListener>,
    /// The periodic checkpoint task; it holds the data directory (and its lock) while it runs.
    archiver: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Locks `data_dir`, opens the journal (repairing a torn tail, refusing corruption), opens
    /// the participants, and runs recovery.
    pub async fn start(data_dir: &Path, config: Option<&Path>) -> Result<Node, Error> {
        Node::start_with_faults(data_dir, config, None).await
    }

    /// [`Node::start`] with injected journal I/O failures, for tests.
    pub async fn start_with_faults(
        data_dir: &Path,
        config: Option<&Path>,
        faults: Option<Arc<journal::IoFaults>>,
    ) -> Result<Node, Error> {
        refuse_missing_journal_dir(data_dir)?;
        let data_dir = Arc::new(DataDir::open(data_dir, Access::Exclusive)?);
        if config.is_none() {
            refuse_other_config(data_dir.root())?;
        }
        let config_path = match config {
            Some(path) => path.to_path_buf(),
            None => ensure_default_config(data_dir.root())?,
        };
        let catalog = Arc::new(load_config(&config_path)?);
        record_config(data_dir.root(), &config_path)?;
        let sync = SyncPolicy::parse(&catalog.config.journal.sync).map_err(ConfigError::Invalid)?;
        let options =
            Options { sync, segment_bytes_max: catalog.config.journal.segment_bytes_max, faults, ..Options::default() };
        // A checkpoint that cannot be read stops the start: replaying from the wrong place
        // could miss sagas.
        let cp = checkpoint::read(data_dir.root())?;
        let index_dir = data_dir.root().join(INDEX_DIR);
        // Looked at before sled gets a chance to create an empty index there.
        let index_existed = index_dir.is_dir();
        let root = data_dir.root().to_path_buf();
        let opened = Journal::open_checked(data_dir.clone(), options, |summary| {
            check_journal(&root, cp.as_ref(), index_existed, summary)
        })?;
        if let Some((path, offset, bytes)) = &opened.truncated_tail {
            tracing::warn!(segment = %path.display(), offset, bytes, "journal had a torn tail (never acknowledged); truncated");
        }
        let participants = participant::open_all(&catalog.config.participants, data_dir.root())?;
        let index = Index::open_with_cache(&index_dir, catalog.config.index.cache_bytes_max).map_err(|e| {
            Error::Inconsistent { message: refusal(&root, &format!("the index cannot be opened: {e}")) }
        })?;
        if let Some(cp) = &cp {
            check_index_mark(&root, cp, &index)?;
        }
        let from_lsn = cp.map_or(FIRST_LSN, |c| c.replay_from_lsn);
        spawn_start_checks(catalog.clone(), participants.clone());
        let instance = instance_id(data_dir.root())?;
        let executor =
            Executor::on_instance(opened.journal.clone(), catalog.clone(), participants, Some(index.clone()), instance);
        let http_listener = bind_http(&catalog.config.server.metrics_listen).await?;
        let recovery = recovery::recover(&executor, from_lsn).await?;
        let mut node = Node {
            executor,
            journal: opened.journal,
            index,
            catalog,
            config_path,
            recovery,
            http_listener,
            archiver: None,
        };
        node.archiver = Some(node.spawn_archiver(data_dir));
        Ok(node)
    }

    /// Every `checkpoint_interval_ms`: flush the index, write a checkpoint at the oldest LSN
    /// still needed, let the journal delete the segments below it, purge sagas older than the
    /// retention (`retention_hours`, `retention_sagas_max`), and ask sagas that pin the checkpoint too far back to re-journal their
    /// state (`index.snapshot_lag_records`). The order matters: a segment is deleted only after the index holding its
    /// finished sagas is durable and the checkpoint says recovery no longer needs it.
    fn spawn_archiver(&self, data_dir: Arc<DataDir>) -> tokio::task::JoinHandle<()> {
        let (executor, journal, index) = (self.executor.clone(), self.journal.clone(), self.index.clone());
        let config = self.catalog.config.index.clone();
        let every = Duration::from_millis(config.checkpoint_interval_ms.max(100));
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(every).await;
                match archive_pass(&executor, &journal, &index, data_dir.root(), &config, last).await {
                    Ok(lsn) => last = lsn,
                    Err(Error::Journal(journal::Error::Closed | journal::Error::Poisoned { .. })) => return,
                    Err(e) => tracing::error!(error = %e, "checkpoint failed; the journal keeps its segments"),
                }
                // A saga that has pinned the checkpoint for more than `snapshot_lag_records`
                // re-journals its state; the next pass can then pass its older records.
                let below = journal.acked_lsn().saturating_sub(config.snapshot_lag_records);
                if below > 0 {
                    let asked = executor.ask_snapshots(below);
                    if asked > 0 {
                        tracing::info!(asked, below, "asked long-lived sagas to re-journal their state");
                    }
                }
            }
        })
    }

    /// Stops the checkpoint task, flushes the index, syncs and closes the journal (which
    /// releases the data directory). Running sagas stop where they are: the next start's
    /// recovery finishes them.
    ///
    /// The journal is closed even when the index flush fails, and its failure is the one
    /// reported: a poisoned journal (`Error::Journal(Poisoned)`) is the cause an operator must
    /// see, while a full disk usually fails the index flush too.
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        if let Some(archiver) = self.archiver.take() {
            archiver.abort();
            let _ = archiver.await;
        }
        self.record_journal_end().await;
        let flushed = self.index.flush();
        match self.journal.shutdown().await {
            Err(e) => {
                if let Err(index) = flushed {
                    tracing::error!(error = %index, "index flush failed at shutdown too");
                }
                Err(e.into())
            }
            Ok(()) => flushed.map_err(Error::from),
        }
    }
}

impl Node {
    /// Records in the checkpoint, if there is one, how far the journal reaches now, so that
    /// the next start notices a journal whose last segments were lost meanwhile. Best effort:
    /// a failure is logged and the shutdown goes on (the previous checkpoint stays true).
    async fn record_journal_end(&self) {
        let acked = self.journal.acked_lsn();
        if self.journal.sync().await.is_err() {
            return; // poisoned or closed: the shutdown reports it
        }
        let root = self.data_root();
        let result = tokio::task::spawn_blocking(move || match checkpoint::read(&root)? {
            Some(cp) if cp.journal_next_lsn != 0 && cp.journal_next_lsn <= acked => {
                checkpoint::write(&root, &Checkpoint { journal_next_lsn: acked + 1, ..cp })
            }
            _ => Ok(()),
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record the journal's end in the checkpoint"),
            Err(e) => tracing::warn!(error = %e, "could not record the journal's end in the checkpoint"),
        }
    }

    /// The data directory: the parent of the journal folder.
    fn data_root(&self) -> PathBuf {
        self.journal.dir().parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

/// One checkpoint; returns the checkpoint LSN (unchanged passes write nothing).
pub async fn archive_pass(
    executor: &Executor,
    journal: &Journal,
    index: &Index,
    data_dir: &Path,
    retention: &crate::config::IndexConfig,
    last_lsn: u64,
) -> Result<u64, Error> {
    let lsn = executor.checkpoint_lsn();
    if lsn > last_lsn {
        // Everything acknowledged so far is made durable before the checkpoint says so (under
        // `sync = "never"` an acknowledged record may still be only in the page cache).
        let acked = journal.acked_lsn();
        journal.sync().await?;
        let indexed_through_lsn = lsn.saturating_sub(1);
        index.mark_indexed_through(indexed_through_lsn)?;
        index.flush()?;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let cp = Checkpoint {
            replay_from_lsn: lsn,
            indexed_through_lsn,
            written_at_ms: now_ms,
            journal_next_lsn: acked + 1,
        };
        let dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || checkpoint::write(&dir, &cp))
            .await
            .map_err(|e| Error::Write { path: data_dir.to_path_buf(), source: std::io::Error::other(e) })??;
        let deleted = journal.truncate_before(lsn).await?;
        tracing::debug!(lsn, deleted, "checkpoint written");
    }
    if retention.retention_hours > 0 {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let purged = index.purge_finished_before(now_ms.saturating_sub(retention.retention_hours * 3_600_000))?;
        if purged > 0 {
            tracing::info!(purged, "purged finished sagas past their retention");
        }
    }
    if retention.retention_sagas_max > 0 {
        let purged = index.purge_beyond_count(retention.retention_sagas_max)?;
        if purged > 0 {
            tracing::debug!(
                purged,
                kept = retention.retention_sagas_max,
                "purged finished sagas beyond retention_sagas_max"
            );
        }
    }
    Ok(lsn.max(last_lsn))
}

/// The message of a refused start: what disagrees, then what to run.
pub fn refusal(root: &Path, what: &str) -> String {
    let d = root.display();
    format!(
        "data directory {d} is inconsistent: {what}. Refusing to start rather than drop acknowledged sagas. \
         Run `sagalog wal verify --data-dir {d}` and `sagalog replay --data-dir {d} --dry-run` to see what is \
         there, and restore the missing or damaged file from a backup (see docs/recovery.md, \"Damaged or \
         missing side files\")"
    )
}

/// A journal folder that is gone while the checkpoint or the index is still there: opening
/// the data directory would create an empty one and every saga of the old one would be lost.
/// Checked before [`DataDir::open`], which creates the folder.
fn refuse_missing_journal_dir(root: &Path) -> Result<(), Error> {
    let journal_dir = root.join(JOURNAL_DIR);
    if journal_dir.exists() {
        return Ok(());
    }
    let others: Vec<String> = [checkpoint::path(root), root.join(INDEX_DIR)]
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let what =
        format!("the journal directory {} is missing, but {} exist", journal_dir.display(), others.join(" and "));
    Err(Error::Inconsistent { message: refusal(root, &what) })
}

/// Cross-checks the journal's LSN range (the scan of `summary`, before opening changed
/// anything) against the checkpoint `cp` and the presence of the index folder.
pub fn check_journal(
    root: &Path,
    cp: Option<&Checkpoint>,
    index_existed: bool,
    summary: &LogSummary,
) -> Result<(), String> {
    let cp_path = checkpoint::path(root);
    let index_dir = root.join(INDEX_DIR);
    let journal_dir = root.join(JOURNAL_DIR);
    let first = summary.segments.first();
    let end = match (summary.last_lsn, summary.segments.last()) {
        (Some(last), Some(seg)) => format!("its last record is LSN {last}, in {}", seg.path.display()),
        (None, Some(seg)) => format!("it holds no record; its last segment is {}", seg.path.display()),
        _ => format!("{} holds no segment", journal_dir.display()),
    };
    let what = match (cp, first) {
        (Some(cp), _) if !index_existed => format!(
            "the index {} is missing, but checkpoint {} says every saga finished below LSN {} is archived there",
            index_dir.display(),
            cp_path.display(),
            cp.replay_from_lsn
        ),
        (Some(cp), None) => format!(
            "the journal {} has no segment, but checkpoint {} says recovery replays from LSN {}",
            journal_dir.display(),
            cp_path.display(),
            cp.replay_from_lsn
        ),
        (Some(cp), Some(first)) if first.first_lsn > cp.replay_from_lsn => format!(
            "the journal's lowest segment {} starts at LSN {}, but checkpoint {} says recovery replays from LSN {}: \
             the segments holding LSNs {}..{} are missing",
            first.path.display(),
            first.first_lsn,
            cp_path.display(),
            cp.replay_from_lsn,
            cp.replay_from_lsn,
            first.first_lsn.saturating_sub(1)
        ),
        (Some(cp), Some(_)) if cp.replay_from_lsn > summary.next_lsn => format!(
            "checkpoint {} says recovery replays from LSN {}, past the end of the journal ({end}): the journal's \
             last segments are missing, or the checkpoint belongs to another journal",
            cp_path.display(),
            cp.replay_from_lsn
        ),
        (Some(cp), Some(_)) if cp.journal_next_lsn > summary.next_lsn => format!(
            "checkpoint {} recorded that the journal held every LSN below {}, but {end}: the journal's last \
             segments are missing or were cut",
            cp_path.display(),
            cp.journal_next_lsn
        ),
        (None, Some(first)) if first.first_lsn != FIRST_LSN => format!(
            "the journal's lowest segment {} starts at LSN {}, not {FIRST_LSN}, and there is no checkpoint {}: \
             the checkpoint, or the segments holding LSNs {FIRST_LSN}..{}, are missing",
            first.path.display(),
            first.first_lsn,
            cp_path.display(),
            first.first_lsn.saturating_sub(1)
        ),
        _ => return Ok(()),
    };
    Err(refusal(root, &what))
}

/// Checks that the index holds what the checkpoint promises it holds. A checkpoint written
/// by an earlier build (`journal_next_lsn` 0) comes with an index that carries no mark, and
/// is not checked.
fn check_index_mark(root: &Path, cp: &Checkpoint, index: &Index) -> Result<(), Error> {
    if cp.journal_next_lsn == 0 {
        return Ok(());
    }
    let mark = index.indexed_through_lsn()?;
    if mark.unwrap_or(0) >= cp.indexed_through_lsn {
        return Ok(());
    }
    let holds = match mark {
        Some(m) => format!("is marked as holding the sagas finished through LSN {m}"),
        None => "carries no indexed_through_lsn mark (it is new, emptied or damaged)".to_owned(),
    };
    let what = format!(
        "the index {} {holds}, but checkpoint {} says it holds every saga finished through LSN {}: the index was \
         replaced, damaged or restored from an older copy",
        index.path().display(),
        checkpoint::path(root).display(),
        cp.indexed_through_lsn
    );
    Err(Error::Inconsistent { message: refusal(root, &what) })
}

/// The data directory's config file, written from the embedded default if it does not exist.
/// The file in the data directory naming the config it was last served with.
pub const SERVED_WITH_FILE: &str = "served-with";

/// A config path as recorded and compared: absolute, symlinks resolved where possible.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A start without `--config` on a data directory last served with another config refuses,
/// naming it: the embedded default's actions are not that config's, so in-flight sagas would
/// go STUCK ("no longer declared") or run other statements.
fn refuse_other_config(root: &Path) -> Result<(), Error> {
    let Ok(recorded) = std::fs::read_to_string(root.join(SERVED_WITH_FILE)) else { return Ok(()) };
    let recorded = PathBuf::from(recorded.trim_end_matches('\n'));
    let default = canonical(&root.join(CONFIG_FILE));
    if recorded.as_os_str().is_empty() || recorded == default {
        return Ok(());
    }
    Err(Error::Inconsistent {
        message: format!(
            "data directory {} was last served with --config {}; without --config it would run the embedded \
             default instead, whose actions differ (in-flight sagas would go STUCK or run other statements): start \
             it with --config {}, or with another --config on purpose (recorded in {})",
            root.display(),
            recorded.display(),
            recorded.display(),
            root.join(SERVED_WITH_FILE).display()
        ),
    })
}

/// The checks of `sagalog config check` that need the participants, run in the background
/// of a start (they never delay or stop it): every SQL statement of the catalog prepared with
/// its parameter count. Each failure is logged with its root cause, so a statement that no
/// longer prepares is named at start, not at the first saga that needs it. The participants'
/// probes are the server's (`server::participant_health`: logged with their cause at start,
/// and published in the health service).
fn spawn_start_checks(
    catalog: Arc<Catalog>,
    participants: std::collections::BTreeMap<String, Arc<dyn participant::Participant>>,
) {
    tokio::spawn(async move {
        const WITHIN: Duration = Duration::from_secs(10);
        for (action, a) in &catalog.config.actions {
            let Some(p) = participants.get(&a.participant) else { continue };
            let statements = crate::catalog::statements(a);
            for (direction, sql, args) in statements {
                match tokio::time::timeout(WITHIN, p.prepare_check(sql)).await {
                    Ok(Ok(Some(params))) if params != args => tracing::warn!(
                        %action, direction, params, args, %sql, "statement takes another number of parameters than its args"
                    ),
                    Ok(Err(e)) => tracing::warn!(%action, direction, error = %e, %sql, "statement does not prepare"),
                    _ => {}
                }
            }
        }
    });
}

/// The file in the data directory holding its instance id (16 hex digits and a newline).
pub const INSTANCE_FILE: &str = "instance-id";

/// The data directory's instance id, drawn and written (atomically) on its first start. Every
/// saga it accepts carries it in its marker scope, so that two instances sharing a participant
/// database never vouch for each other's sagas. A file that does not hold an id is refused, not
/// replaced: it names the instance the journal's sagas were scoped with.
pub fn instance_id(root: &Path) -> Result<String, Error> {
    let path = root.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim_end_matches('\n');
            if crate::engine::Scope::is_instance(id) {
                Ok(id.to_owned())
            } else {
                Err(Error::Inconsistent {
                    message: format!(
                        "{} does not hold an instance id (16 lowercase hex digits): {:?}; restore it from a backup \
                         of this data directory, or delete it to draw a new one (sagas already journaled keep the \
                         scope they were submitted with)",
                        path.display(),
                        text.chars().take(40).collect::<String>()
                    ),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = crate::engine::Scope::draw_instance();
            write_atomically(&root.join(format!("{INSTANCE_FILE}.tmp")), &path, format!("{id}\n").as_bytes())?;
            tracing::info!(path = %path.display(), instance = %id, "drew this data directory's instance id");
            Ok(id)
        }
        Err(source) => Err(Error::Write { path, source }),
    }
}

/// Binds `[server] metrics_listen`, if set (see [`Node::http_listener`]).
async fn bind_http(listen: &str) -> Result<Option<tokio::net::TcpListener>, Error> {
    if listen.is_empty() {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
        Error::Config(ConfigError::Invalid(format!(
            "server.metrics_listen = {listen:?} is not an IP:port address: {e}"
        )))
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr: listen.to_owned(), source })?;
    Ok(Some(listener))
}

/// Records the config this start serves with (only after it loaded).
fn record_config(root: &Path, config: &Path) -> Result<(), Error> {
    let path = root.join(SERVED_WITH_FILE);
    let text = format!("{}\n", canonical(config).display());
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    write_atomically(&root.join(format!("{SERVED_WITH_FILE}.tmp")), &path, text.as_bytes())
}

fn ensure_default_config(root: &Path) -> Result<PathBuf, Error> {
    let path = root.join(CONFIG_FILE);
    if !path.exists() {
        let tmp = root.join(format!("{CONFIG_FILE}.tmp"));
        write_atomically(&tmp, &path, EMBEDDED_DEFAULT.as_bytes())?;
        tracing::info!(path = %path.display(), "no --config given: wrote the embedded default configuration");
    }
    Ok(path)
}

/// Writes `bytes` to `path` so that a crash or power loss leaves either no file or all of it:
/// into `tmp`, `fsync`, rename over `path`, `fsync` of the directory.
fn write_atomically(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let failed = |p: &Path| {
        let path = p.to_path_buf();
        move |source| Error::Write { path, source }
    };
    let mut file = std::fs::File::create(tmp).map_err(failed(tmp))?;
    file.write_all(bytes).map_err(failed(tmp))?;
    file.sync_all().map_err(failed(tmp))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(failed(path))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed(dir))
}

/// Reads and checks a config file like [`Catalog::load`], first refusing one that is empty,
/// zero-filled or a cut-short copy of the generated default, with a message saying so: such a
/// file is what a power loss or a full disk leaves of a config being written (before the
/// default was written atomically), and its missing lines would otherwise surface as some
/// unrelated error, such as "no tokens".
pub fn load_config(path: &Path) -> Result<Catalog, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    let damage = if bytes.iter().all(u8::is_ascii_whitespace) {
        Some(format!("the file is empty ({} bytes)", bytes.len()))
    } else if bytes.contains(&0) {
        Some(format!("the file holds zero bytes (NUL) among its {} bytes", bytes.len()))
    } else if EMBEDDED_DEFAULT.as_bytes().starts_with(&bytes) && bytes.len() < EMBEDDED_DEFAULT.len() {
        Some(format!(
            "the file is cut short: its {} bytes are the start of the {}-byte generated default",
            bytes.len(),
            EMBEDDED_DEFAULT.len()
        ))
    } else {
        None
    };
    if let Some(damage) = damage {
        return Err(ConfigError::Parse {
            path: path.display().to_string(),
            message: format!(
                "{damage}, as a power loss or a full disk while it was written leaves it; restore it, or, if it \
                 was the generated default, delete it and the next `sagalog serve` writes it again"
            ),
        });
    }
    Catalog::load(path)
}
