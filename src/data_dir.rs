//! The data directory: where sagalog keeps everything it owns, and who may write it.
//!
//! Layout under the directory `D` (`--data-dir D`):
//! - `D/LOCK`: the lock file. A writer (the server, `wal repair`, offline replay) holds an
//!   exclusive `flock` on it for as long as it runs; read-only tools hold a shared one. The
//!   kernel drops the lock when the process dies, so `kill -9` never leaves a stale lock; the
//!   pid written into the file only serves the error message.
//! - `D/journal/`: the write-ahead log segments (see the `sagalog-wal-format` README).
//! - `D/wal-backup/`: copies of damaged segments taken by `sagalog wal repair` before it
//!   cuts anything.
//!
//! Directories it creates are synced into their parents before it returns.
//!
//! This module never deletes anything and never blocks on a lock: a held lock is an error
//! that names the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the journal folder inside a data directory.
pub const JOURNAL_DIR: &str = "journal";
/// Name of the folder that keeps copies of damaged segments.
pub const BACKUP_DIR: &str = "wal-backup";
const LOCK_FILE: &str = "LOCK";

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data directory {path} is in use by another sagalog process{holder}; stop it first")]
    Locked { path: PathBuf, holder: String },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
}

/// How a process holds the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only; several readers may hold the directory at once, but no writer.
    Shared,
    /// Reads and writes; excludes every other holder.
    Exclusive,
}

/// A held data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    access: Access,
    _lock: File,
}

impl DataDir {
    /// Locks the data directory at `root`, creating it (and its journal folder) if needed.
    pub fn open(root: impl AsRef<Path>, access: Access) -> Result<DataDir, Error> {
        let root = root.as_ref().to_path_buf();
        let journal = root.join(JOURNAL_DIR);
        create_dirs_durably(&journal)?;
        let lock_path = root.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| Error::Io { op: "open", path: lock_path.clone(), source })?;
        match try_lock_briefly(&lock, access) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = lock.read_to_string(&mut text);
                let holder = match text.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                return Err(Error::Locked { path: root, holder });
            }
            Err(TryLockError::Error(source)) => return Err(Error::Io { op: "lock", path: lock_path, source }),
        }
        if access == Access::Exclusive {
            // Only for the message another process prints; correctness rests on the flock.
            let _ = lock.set_len(0);
            let _ = lock.seek(SeekFrom::Start(0));
            let _ = writeln!(lock, "{}", std::process::id());
        }
        Ok(DataDir { root, access, _lock: lock })
    }

    pub fn access(&self) -> Access {
        self.access
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.root.join(JOURNAL_DIR)
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.root.join(BACKUP_DIR)
    }
}

/// Creates `dir` and its missing ancestors, and syncs each new directory's entry into its
/// parent: on a first boot the journal must not vanish with a power loss after its first
/// acknowledged record (a segment's own sync only makes the entries inside `journal/`
/// durable).
fn create_dirs_durably(dir: &Path) -> Result<(), Error> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { op: "create", path: dir.to_path_buf(), source })?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent).and_then(|d| d.sync_all()).map_err(|source| Error::Io {
            op: "fsync directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// How long a held lock is retried before it is reported. A lock can be held for a moment by
/// a process that is not sagalog at all: a child forked by this very process shares the locked
/// file description until its `exec` closes it. Real holders hold for much longer.
const LOCK_RETRY_FOR: std::time::Duration = std::time::Duration::from_millis(500);

fn try_lock_briefly(lock: &File, access: Access) -> Result<(), TryLockError> {
    let started = std::time::Instant::now();
    loop {
        let attempt = match access {
            Access::Shared => lock.try_lock_shared(),
            Access::Exclusive => lock.try_lock(),
        };
        match attempt {
            Err(TryLockError::WouldBlock) if started.elapsed() < LOCK_RETRY_FOR => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_everyone_and_shared_excludes_writers() {
        let dir = tempfile::tempdir().unwrap();
        let writer = DataDir::open(dir.path(), Access::Exclusive).unwrap();
        let err = DataDir::open(dir.path(), Access::Shared).unwrap_err();
        assert!(err.to_string().contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(matches!(DataDir::open(dir.path(), Access::Exclusive), Err(Error::Locked { .. })));
        drop(writer);
        let r1 = DataDir::open(dir.path(), Access::Shared).unwrap();
        let _r2 = DataDir::open(dir.path(), Access::Shared).unwrap();
        assert!(matches!(DataDir::open(dir.path(), Access::Exclusive), Err(Error::Locked { .. })));
        drop(r1);
    }
}
