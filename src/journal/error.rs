//! Errors of the journal, typed at its boundary.
//!
//! Each message names the file or the segment and offset concerned, because the reader of the
//! message is an operator deciding whether to run `sagalog wal verify` or restore a disk.

use std::io;
use std::path::PathBuf;

use sagalog_wal_format::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("journal is corrupt in {path}: {source}; run `sagalog wal verify` and `sagalog wal repair`")]
    Corrupt { path: PathBuf, source: DecodeError },
    #[error("journal is missing segment {segment} (found segments on both sides of it)")]
    MissingSegment { segment: u64 },
    #[error("journal file {path} is not named like a segment (expected NNNNNNNNNNNNNNNNNNNN.wal)")]
    StrayFile { path: PathBuf },
    #[error(
        "journal is poisoned by an earlier failure and accepts no more appends: {cause}; restart to recover from disk"
    )]
    Poisoned { cause: String },
    #[error("record payload of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { len: usize, max: u32 },
    #[error("journal is shut down")]
    Closed,
    #[error("invalid journal option: {0}")]
    Options(String),
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::Error),
    /// The journal disagrees with the rest of the data directory; refused before opening
    /// changed anything. The message names what disagrees and what to run.
    #[error("{message}")]
    Inconsistent { message: String },
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::Error),
    #[error(
        "refusing to cut the journal at LSN {cut_lsn} (first corruption in {path}): checkpoint {checkpoint} says          recovery replays from LSN {replay_from_lsn}, so records that recovery needs would be gone and the server          would refuse to start; nothing was changed. Restore the journal from a backup if you have one;          `sagalog wal verify --data-dir D` shows the damage and `sagalog replay --data-dir D --dry-run` what          recovery would do"
    )]
    BelowCheckpoint { cut_lsn: u64, replay_from_lsn: u64, path: PathBuf, checkpoint: PathBuf },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}
