//! Deliberate repair of a damaged log: `sagalog wal repair`.
//!
//! Two modes, chosen by the operator:
//! - [`RepairMode::TornTail`] (the default) only does what opening the journal would do:
//!   cut a torn or zero-filled tail off the last segment. It refuses a corrupt log.
//! - [`RepairMode::TruncateCorrupt`] cuts the log at the first corruption. Before anything is
//!   cut, the damaged segment is copied into `D/wal-backup/` and synced; segments after the
//!   damage (which can no longer follow without an LSN gap) are moved there too. Records at and
//!   after the cut are gone from the log, which is why this needs an explicit flag.
//!
//! Both run under the exclusive data-directory lock.
//!
//! The cut never goes below the checkpoint's `replay_from_lsn` ([`Error::BelowCheckpoint`],
//! nothing changed): recovery needs the records from there on, and the server would refuse to
//! start on the result. A cut below the end the checkpoint recorded (`journal_next_lsn`, so
//! acknowledged records leave the log) is reported in [`RepairReport::checkpoint_end_lowered`],
//! and the checkpoint is rewritten to record the new end, so the next start accepts the
//! repaired log.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sagalog_wal_format::SEGMENT_HEADER_BYTES;

use super::Error;
use super::scan::{LogSummary, Severity, scan};
use super::segment::{fsync_dir, list, truncate};
use crate::checkpoint::{self, Checkpoint};
use crate::data_dir::{Access, DataDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairMode {
    TornTail,
    TruncateCorrupt,
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// The log before the repair.
    pub before: LogSummary,
    /// (segment file, offset cut at, bytes removed), if a segment was shortened.
    pub truncated: Option<(PathBuf, u64, u64)>,
    /// Copies and moved segments in the backup folder.
    pub backups: Vec<PathBuf>,
    /// True when the log was already clean and nothing was changed.
    pub nothing_to_do: bool,
    /// (end the checkpoint recorded, new end): the cut removed acknowledged records at and
    /// after the new end, and the checkpoint now records that end.
    pub checkpoint_end_lowered: Option<(u64, u64)>,
}

/// Repairs the journal of the data directory at `root`.
pub fn repair(root: &Path, mode: RepairMode) -> Result<RepairReport, Error> {
    let data_dir = DataDir::open(root, Access::Exclusive)?;
    let dir = data_dir.journal_dir();
    let before = scan(&dir, |_, _, _| {})?;
    let mut report = RepairReport {
        before: before.clone(),
        truncated: None,
        backups: Vec::new(),
        nothing_to_do: false,
        checkpoint_end_lowered: None,
    };
    let Some(problem) = before.problem.clone() else {
        report.nothing_to_do = true;
        return Ok(report);
    };
    if problem.severity == Severity::Corrupt && mode != RepairMode::TruncateCorrupt {
        return Err(Error::Corrupt { path: problem.path, source: problem.error });
    }
    // The first LSN the cut removes; a torn tail was never acknowledged and holds none.
    let cut_lsn = before.next_lsn;
    let cp = checkpoint::read(data_dir.root())?;
    if let Some(cp) = &cp
        && problem.severity == Severity::Corrupt
        && cut_lsn < cp.replay_from_lsn
    {
        return Err(Error::BelowCheckpoint {
            cut_lsn,
            replay_from_lsn: cp.replay_from_lsn,
            path: problem.path,
            checkpoint: checkpoint::path(data_dir.root()),
        });
    }
    let (segment, offset) = (problem.error.segment, problem.error.offset);
    let listing = list(&dir)?;
    let backup_dir = data_dir.backup_dir();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if problem.severity == Severity::Corrupt {
        fs::create_dir_all(&backup_dir).map_err(Error::io("create", &backup_dir))?;
        for (id, path) in listing.segments.iter().filter(|(id, _)| *id >= segment) {
            let target = backup_dir.join(format!("{}.{stamp}", file_name(path)));
            if *id == segment && offset >= SEGMENT_HEADER_BYTES as u64 {
                // The damaged segment keeps its good prefix: copy it aside, then cut it below.
                fs::copy(path, &target).map_err(Error::io("copy to backup", path))?;
                fs::File::open(&target).and_then(|f| f.sync_all()).map_err(Error::io("fsync", &target))?;
            } else {
                fs::rename(path, &target).map_err(Error::io("move to backup", path))?;
            }
            report.backups.push(target);
        }
        fsync_dir(&backup_dir)?;
        fsync_dir(&dir)?;
    }
    if let Some((_, path)) = listing.segments.iter().find(|(id, _)| *id == segment)
        && offset >= SEGMENT_HEADER_BYTES as u64
        && path.exists()
    {
        let len = fs::metadata(path).map_err(Error::io("stat", path))?.len();
        truncate(path, offset)?;
        report.truncated = Some((path.clone(), offset, len.saturating_sub(offset)));
    }
    if let Some(cp) = cp.filter(|cp| problem.severity == Severity::Corrupt && cp.journal_next_lsn > cut_lsn) {
        checkpoint::write(data_dir.root(), &Checkpoint { journal_next_lsn: cut_lsn, ..cp })?;
        report.checkpoint_end_lowered = Some((cp.journal_next_lsn, cut_lsn));
    }
    tracing::warn!(
        truncated = report
            .truncated
            .as_ref()
            .map(|(path, offset, bytes)| format!("{} at {offset} ({bytes} bytes)", path.display()))
            .unwrap_or_default(),
        backups = report.backups.len(),
        "repaired the journal"
    );
    Ok(report)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
