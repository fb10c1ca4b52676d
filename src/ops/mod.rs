//! The offline operator toolkit: what `sagalog replay`, `sagalog audit` and `sagalog export`
//! do, as a library the command line and the tests call.
//!
//! - [`history`] reads the journal back for the tools (every record verified and decoded,
//!   the same `Saga::apply` as recovery) and resolves the configuration without writing it;
//! - [`plan`] answers "what will recovery do?" saga by saga, step by step, asking
//!   participants opened read-only for the markers of in-doubt steps (`replay --dry-run`);
//! - [`replay`] performs that recovery offline, without serving, and the undo of sagas that
//!   completed after a point (`replay --compensate-since`);
//! - [`audit`] cross-checks the journal and the index against every participant's markers;
//! - `export` (with the `duckdb` feature) writes the saga history into DuckDB tables.
//!
//! Never does: write anything from a read-only tool (dry-run, audit, export read the data
//! directory under its shared lock and open participants read-only), or run a participant
//! action other than through the executor.

pub mod audit;
#[cfg(feature = "duckdb")]
pub mod export;
pub mod history;
pub mod plan;
pub mod replay;

use std::path::PathBuf;

/// Why an offline tool could not do its work. Each variant names what and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is not a sagalog data directory (it has no journal folder)")]
    NotADataDir { path: PathBuf },
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::Error),
    #[error(transparent)]
    Config(#[from] crate::catalog::ConfigError),
    #[error(transparent)]
    Journal(#[from] crate::journal::Error),
    #[error("journal record at lsn {lsn} cannot be read: {source}")]
    Record { lsn: u64, source: crate::engine::record::DecodeError },
    #[error("the journal is corrupt: {0}; run `sagalog wal verify` (and `wal repair`)")]
    Corrupt(String),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::Error),
    #[error(transparent)]
    Index(#[from] crate::index::Error),
    #[error("participant {0}")]
    Participant(#[from] crate::participant::Error),
    #[error(transparent)]
    Recovery(#[from] crate::recovery::Error),
    #[error(transparent)]
    Node(#[from] crate::node::Error),
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {message}")]
    Export { what: String, message: String },
}

impl Error {
    /// Whether the data itself is damaged (exit code 1, like `wal verify`) rather than the
    /// tool misused or an I/O failure (exit code 2).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt(_) | Error::Record { .. })
            || matches!(self, Error::Journal(crate::journal::Error::Corrupt { .. }))
            || matches!(
                self,
                Error::Recovery(crate::recovery::Error::Corrupt(_) | crate::recovery::Error::Record { .. })
            )
            || matches!(self, Error::Node(crate::node::Error::Journal(crate::journal::Error::Corrupt { .. })))
    }
}
