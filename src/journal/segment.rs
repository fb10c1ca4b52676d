//! Segment files: listing them, reading them, creating, truncating and deleting them durably.
//!
//! Every operation that changes which segment files exist is followed by an `fsync` of the
//! journal directory, and a segment appears under its final name only complete: it is written
//! as `<name>.tmp`, synced, then renamed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sagalog_wal_format::{SegmentHeader, parse_segment_file_name, segment_file_name};

use super::Error;
use super::faults::{CreateStep, IoFaults};

/// Suffix of a segment being created; such a file is never part of the log.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// The journal directory's contents, segments sorted by id.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub segments: Vec<(u64, PathBuf)>,
    /// Interrupted segment creations (`*.wal.tmp`).
    pub leftovers: Vec<PathBuf>,
    /// Files that are neither; reported, never touched.
    pub strays: Vec<PathBuf>,
}

pub(crate) fn list(dir: &Path) -> Result<Listing, Error> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
        let entry = entry.map_err(Error::io("read directory", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = parse_segment_file_name(&name) {
            listing.segments.push((id, path));
        } else if name.strip_suffix(TMP_SUFFIX).and_then(parse_segment_file_name).is_some() {
            listing.leftovers.push(path);
        } else {
            listing.strays.push(path);
        }
    }
    listing.segments.sort();
    Ok(listing)
}

/// Reads the first `len_max` bytes of a segment (all of it when `None`) with plain reads.
///
/// Not a memory map: an I/O error on a mapped page (a failing disk, EIO) or a file shortened
/// under a live map (a poisoned writer's rollback) is a SIGBUS that kills the process; a read
/// reports either as an error naming the file. Readers of a live journal also bound what they
/// look at by the acknowledged LSN (see `scan::scan_upto`).
pub(crate) fn read(path: &Path, len_max: Option<u64>) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let file = File::open(path).map_err(Error::io("open", path))?;
    let file_len = file.metadata().map_err(Error::io("stat", path))?.len();
    let len = len_max.map_or(file_len, |m| m.min(file_len));
    let capacity =
        usize::try_from(len).map_err(|_| Error::Options(format!("{} is too large to read", path.display())))?;
    let mut bytes = Vec::with_capacity(capacity);
    file.take(len).read_to_end(&mut bytes).map_err(Error::io("read", path))?;
    Ok(bytes)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("fsync directory", dir))
}

/// Creates segment `header.segment_id` in `dir` durably, in the current format version (2),
/// and returns it open for appending.
///
/// `faults` (tests only) can make any step fail; see [`CreateStep`]. A failure from
/// `CreateStep::SyncDir` on leaves the new segment in place under its final name: the caller
/// must then keep its predecessor exactly as synced, since the new segment's header already
/// names the LSN that follows it.
pub(crate) fn create(dir: &Path, header: &SegmentHeader, faults: Option<&IoFaults>) -> Result<(PathBuf, File), Error> {
    let path = dir.join(segment_file_name(header.segment_id));
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", segment_file_name(header.segment_id)));
    let fail_at = faults.and_then(IoFaults::on_create);
    let step = |step: CreateStep, op: &'static str, path: &Path| {
        if fail_at == Some(step) {
            return Err(Error::Io { op, path: path.to_path_buf(), source: io::Error::other("injected failure") });
        }
        Ok(())
    };
    {
        step(CreateStep::CreateTmp, "create", &tmp)?;
        let mut f =
            OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(Error::io("create", &tmp))?;
        step(CreateStep::WriteHeader, "write", &tmp)?;
        f.write_all(&header.encode_v2()).map_err(Error::io("write", &tmp))?;
        step(CreateStep::SyncTmp, "fsync", &tmp)?;
        f.sync_all().map_err(Error::io("fsync", &tmp))?;
    }
    step(CreateStep::Rename, "rename", &tmp)?;
    fs::rename(&tmp, &path).map_err(Error::io("rename", &tmp))?;
    step(CreateStep::SyncDir, "fsync directory", dir)?;
    fsync_dir(dir)?;
    step(CreateStep::OpenAppend, "open for append", &path)?;
    let file = open_append(&path)?;
    Ok((path, file))
}

pub(crate) fn open_append(path: &Path) -> Result<File, Error> {
    OpenOptions::new().append(true).open(path).map_err(Error::io("open for append", path))
}

/// Shortens a segment to `len` bytes and makes the new length durable.
pub(crate) fn truncate(path: &Path, len: u64) -> Result<(), Error> {
    let f = OpenOptions::new().write(true).open(path).map_err(Error::io("open", path))?;
    f.set_len(len).map_err(Error::io("truncate", path))?;
    f.sync_all().map_err(Error::io("fsync", path))
}

/// Deletes leftovers of interrupted segment creations.
pub(crate) fn remove_leftovers(dir: &Path, leftovers: &[PathBuf]) -> Result<(), Error> {
    for path in leftovers {
        tracing::warn!(path = %path.display(), "removing leftover of an interrupted segment creation");
        fs::remove_file(path).map_err(Error::io("remove", path))?;
    }
    if !leftovers.is_empty() {
        fsync_dir(dir)?;
    }
    Ok(())
}
