//! A running sagalog instance: the data directory (held exclusively), its journal, the
//! participants of its configuration, the executor, and the recovery pass that resumes what a
//! previous run left unfinished. `sagalog serve` runs one; tests and tools embed one.
//!
//! Configuration: `--config F` if given; otherwise the data directory's own `sagalog.toml`;
//! otherwise the embedded default is written there first (atomically: temporary file, fsync,
//! rename, directory fsync), so later offline commands need only `--data-dir`. A config that is
//! empty or cut short is refused as such ([`load_config`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::catalog::{Catalog, ConfigError, EMBEDDED_DEFAULT};
use crate::checkpoint::{self, Checkpoint};
use crate::data_dir::{Access, DataDir};
use crate::executor::Executor;
use crate::index::{self, Index};
use crate::journal::{self, Journal, Options, SyncPolicy};
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
        let data_dir = Arc::new(DataDir::open(data_dir, Access::Exclusive)?);
        let config_path = match config {
            Some(path) => path.to_path_buf(),
            None => ensure_default_config(data_dir.root())?,
        };
        let catalog = Arc::new(load_config(&config_path)?);
        let sync = SyncPolicy::parse(&catalog.config.journal.sync).map_err(ConfigError::Invalid)?;
        let options =
            Options { sync, segment_bytes_max: catalog.config.journal.segment_bytes_max, faults, ..Options::default() };
        let opened = Journal::open(data_dir.clone(), options)?;
        if let Some((path, offset, bytes)) = &opened.truncated_tail {
            tracing::warn!(segment = %path.display(), offset, bytes, "journal had a torn tail (never acknowledged); truncated");
        }
        let participants = participant::open_all(&catalog.config.participants, data_dir.root())?;
        let index = Index::open_with_cache(data_dir.root().join(INDEX_DIR), catalog.config.index.cache_bytes_max)?;
        // A checkpoint that cannot be read stops the start: replaying from the wrong place
        // could miss sagas.
        let from_lsn = checkpoint::read(data_dir.root())?.map_or(crate::wal_format::FIRST_LSN, |c| c.replay_from_lsn);
        let executor = Executor::with_index(opened.journal.clone(), catalog.clone(), participants, Some(index.clone()));
        let recovery = recovery::recover(&executor, from_lsn).await?;
        let mut node =
            Node { executor, journal: opened.journal, index, catalog, config_path, recovery, archiver: None };
        node.archiver = Some(node.spawn_archiver(data_dir));
        Ok(node)
    }

    /// Every `checkpoint_interval_ms`: flush the index, write a checkpoint at the oldest LSN
    /// still needed, let the journal delete the segments below it, and purge sagas older than
    /// the retention. The order matters: a segment is deleted only after the index holding its
    /// finished sagas is durable and the checkpoint says recovery no longer needs it.
    fn spawn_archiver(&self, data_dir: Arc<DataDir>) -> tokio::task::JoinHandle<()> {
        let (executor, journal, index) = (self.executor.clone(), self.journal.clone(), self.index.clone());
        let config = self.catalog.config.index.clone();
        let every = Duration::from_millis(config.checkpoint_interval_ms.max(100));
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(every).await;
                match archive_pass(&executor, &journal, &index, data_dir.root(), config.retention_hours, last).await {
                    Ok(lsn) => last = lsn,
                    Err(Error::Journal(journal::Error::Closed | journal::Error::Poisoned { .. })) => return,
                    Err(e) => tracing::error!(error = %e, "checkpoint failed; the journal keeps its segments"),
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

/// One checkpoint; returns the checkpoint LSN (unchanged passes write nothing).
pub async fn archive_pass(
    executor: &Executor,
    journal: &Journal,
    index: &Index,
    data_dir: &Path,
    retention_hours: u64,
    last_lsn: u64,
) -> Result<u64, Error> {
    let lsn = executor.checkpoint_lsn();
    if lsn > last_lsn {
        index.flush()?;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let cp = Checkpoint { replay_from_lsn: lsn, indexed_through_lsn: lsn.saturating_sub(1), written_at_ms: now_ms };
        let dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || checkpoint::write(&dir, &cp))
            .await
            .map_err(|e| Error::Write { path: data_dir.to_path_buf(), source: std::io::Error::other(e) })??;
        let deleted = journal.truncate_before(lsn).await?;
        tracing::debug!(lsn, deleted, "checkpoint written");
    }
    if retention_hours > 0 {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let purged = index.purge_finished_before(now_ms.saturating_sub(retention_hours * 3_600_000))?;
        if purged > 0 {
            tracing::info!(purged, "purged finished sagas past their retention");
        }
    }
    Ok(lsn.max(last_lsn))
}

/// The data directory's config file, written from the embedded default if it does not exist.
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
