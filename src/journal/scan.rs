//! Reading and verifying a whole log: every segment in id order, every checksum, LSN and
//! epoch continuity across segments.
//!
//! [`scan`] never changes anything on disk. It stops at the first corruption and reports it as
//! a [`Problem`] naming the segment file and byte offset; records before it have been handed
//! to the visitor, records after it are not. A torn, zeroed or unsynced tail of the *last*
//! segment is a [`Severity::Warning`]: opening the journal repairs it, since it was never
//! acknowledged. An unsynced tail (format version 2) is the hole a power loss leaves in the
//! last batch when a later page reached the disk but not an earlier one: valid frames follow
//! the damage, but none carries a sync watermark reaching it, so none was ever synced.

use std::path::{Path, PathBuf};

use sagalog_wal_format::segment::{self, Expect, Tail};
use sagalog_wal_format::{DecodeError, ErrorKind, FIRST_LSN, Record, SegmentHeader};

use super::Error;
use super::segment::{list, read};

/// One segment as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub id: u64,
    pub path: PathBuf,
    /// File size.
    pub bytes: u64,
    pub first_lsn: u64,
    /// The segment's format version (1 or 2).
    pub format_version: u16,
    pub records: u64,
    pub last_lsn: Option<u64>,
    /// Offset just past the last valid record.
    pub valid_end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The log opens; opening repairs this (a torn or zero-filled tail of the last segment).
    Warning,
    /// The log does not open until an operator repairs it.
    Corrupt,
}

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub path: PathBuf,
    pub error: DecodeError,
    /// For an unsynced tail: the offset of the first valid frame after the damage. It and every
    /// frame after it were never synced (no sync watermark reaches the damage) and are cut with
    /// the tail.
    pub unsynced_valid_at: Option<u64>,
}

impl Problem {
    fn corrupt(path: &Path, error: DecodeError) -> Problem {
        Problem { severity: Severity::Corrupt, path: path.to_path_buf(), error, unsynced_valid_at: None }
    }
}

/// The damage of a segment id that does not follow the previous one (a segment is missing).
fn missing_before(expect: &Expect, id: u64, path: &Path) -> Option<Problem> {
    let expected = expect.segment_id.filter(|e| *e != id)?;
    Some(Problem::corrupt(path, DecodeError::new(id, 0, ErrorKind::SegmentMissing { expected })))
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.severity, self.unsynced_valid_at) {
            (Severity::Warning, None) => {
                write!(f, "torn tail (never acknowledged; opening the journal truncates it)")?;
            }
            (Severity::Warning, Some(at)) => write!(
                f,
                "unsynced tail (the last batch was never synced, so under sync = always never acknowledged, \
                 and a later page of it reached the disk before an earlier one: the valid frames from offset \
                 {at} on carry sync watermarks below the damage; opening the journal truncates it)"
            )?,
            (Severity::Corrupt, _) => write!(f, "corruption")?,
        }
        write!(f, " in {}: {}", self.path.display(), self.error)
    }
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// The log's epoch (from its first segment), if it has a segment.
    pub epoch: Option<u64>,
    /// Segments read, in order, up to and including the one with a corruption.
    pub segments: Vec<SegmentReport>,
    /// Valid records seen (before any corruption).
    pub records: u64,
    pub first_lsn: Option<u64>,
    pub last_lsn: Option<u64>,
    /// The LSN the next append gets, if the log opens.
    pub next_lsn: u64,
    /// Bytes of valid records and headers (what was checksummed).
    pub verified_bytes: u64,
    /// Files in the journal directory that are not segments; never touched.
    pub strays: Vec<PathBuf>,
    /// Leftovers of interrupted segment creations; opening removes them.
    pub leftovers: Vec<PathBuf>,
    pub problem: Option<Problem>,
}

impl LogSummary {
    pub fn is_corrupt(&self) -> bool {
        self.problem.as_ref().is_some_and(|p| p.severity == Severity::Corrupt)
    }
}

/// Scans the log in `dir`, handing every valid record to `visit` in LSN order along with the
/// segment id and offset it was read from. Only I/O failures are errors; what is wrong with the
/// bytes is in [`LogSummary::problem`].
pub fn scan(dir: &Path, visit: impl FnMut(Record<'_>, u64, u64)) -> Result<LogSummary, Error> {
    scan_from(dir, FIRST_LSN, visit)
}

/// [`scan`], handing `visit` only the records from `from_lsn` on. Every record is still
/// verified (checksums, LSN and epoch chains), because a reader that skipped the bytes before
/// `from_lsn` could not tell a sound log from a damaged one; at read speed this costs
/// little, and checkpoints keep the log short.
pub fn scan_from(dir: &Path, from_lsn: u64, visit: impl FnMut(Record<'_>, u64, u64)) -> Result<LogSummary, Error> {
    scan_upto(dir, from_lsn, None, visit)
}

/// [`scan_from`] of a journal that may be written meanwhile (an `Admin.Recover` pass): only
/// records up to `upto_lsn`, the acknowledged LSN when the pass started, are read and handed
/// to `visit`; whatever the writer appends after it (never acknowledged yet) is not looked at.
/// `None` reads everything, for a journal no one writes.
pub fn scan_upto(
    dir: &Path,
    from_lsn: u64,
    upto_lsn: Option<u64>,
    mut visit: impl FnMut(Record<'_>, u64, u64),
) -> Result<LogSummary, Error> {
    let listing = list(dir)?;
    let mut summary = LogSummary {
        epoch: None,
        segments: Vec::with_capacity(listing.segments.len()),
        records: 0,
        first_lsn: None,
        last_lsn: None,
        next_lsn: FIRST_LSN,
        verified_bytes: 0,
        strays: listing.strays,
        leftovers: listing.leftovers,
        problem: None,
    };
    let count = listing.segments.len();
    let mut expect = Expect::default();
    for (i, (id, path)) in listing.segments.into_iter().enumerate() {
        let corrupt = |error: DecodeError| Problem::corrupt(&path, error);
        if let Some(problem) = missing_before(&expect, id, &path) {
            summary.problem = Some(problem);
            break;
        }
        let bytes = read(&path, None)?;
        let bytes = match upto_lsn {
            // A segment that starts past the bound was created after it: not part of the pass.
            Some(upto) if SegmentHeader::decode(&bytes).is_ok_and(|h| h.first_lsn > upto) => break,
            _ => &bytes[..],
        };
        // (records, first LSN, last LSN) visited in this segment.
        let mut seen: (u64, Option<u64>, Option<u64>) = (0, None, None);
        let scanned = segment::scan(id, bytes, Expect { segment_id: Some(id), ..expect }, |record, offset| {
            if upto_lsn.is_some_and(|upto| record.lsn > upto) {
                return;
            }
            seen = (seen.0 + 1, seen.1.or(Some(record.lsn)), Some(record.lsn));
            if record.lsn >= from_lsn {
                visit(record, id, offset)
            }
        });
        let seg = match scanned {
            Ok(seg) => seg,
            Err(error) => {
                // Records before the damage were verified and visited; count them.
                summary.records += seen.0;
                summary.first_lsn = summary.first_lsn.or(seen.1);
                summary.last_lsn = seen.2.or(summary.last_lsn);
                summary.problem = Some(corrupt(error));
                break;
            }
        };
        summary.epoch.get_or_insert(seg.header.epoch);
        summary.first_lsn = summary.first_lsn.or(seg.last_lsn.map(|_| seg.header.first_lsn));
        summary.last_lsn = seg.last_lsn.or(summary.last_lsn);
        summary.records += seg.records;
        summary.next_lsn = seg.next_lsn();
        summary.verified_bytes += seg.valid_end;
        summary.segments.push(SegmentReport {
            id,
            path: path.clone(),
            bytes: bytes.len() as u64,
            first_lsn: seg.header.first_lsn,
            format_version: seg.format_version,
            records: seg.records,
            last_lsn: seg.last_lsn,
            valid_end: seg.valid_end,
        });
        let last = i + 1 == count;
        match (seg.tail, last) {
            (Tail::Clean, _) => {}
            // Only the last segment may end in an interrupted append; a sealed one was synced
            // before its successor was created, so anything after its records is damage.
            (_, false) => {
                if let Err(error) = seg.require_clean() {
                    summary.problem = Some(corrupt(error));
                }
                break;
            }
            (Tail::Zeroed { offset, .. }, true) => {
                let error = DecodeError::new(id, offset, ErrorKind::Zeroed);
                let unsynced_valid_at = None;
                summary.problem =
                    Some(Problem { severity: Severity::Warning, path: path.clone(), error, unsynced_valid_at });
            }
            (Tail::Torn { offset, kind, .. }, true) => {
                let error = DecodeError::new(id, offset, kind);
                let unsynced_valid_at = None;
                summary.problem =
                    Some(Problem { severity: Severity::Warning, path: path.clone(), error, unsynced_valid_at });
            }
            (Tail::Unsynced { offset, kind, valid_at, .. }, true) => {
                let error = DecodeError::new(id, offset, kind);
                let unsynced_valid_at = Some(valid_at);
                summary.problem =
                    Some(Problem { severity: Severity::Warning, path: path.clone(), error, unsynced_valid_at });
            }
        }
        expect =
            Expect { segment_id: id.checked_add(1), first_lsn: Some(seg.next_lsn()), epoch: Some(seg.header.epoch) };
    }
    Ok(summary)
}

/// Reads a window of the log for a page of a dump (`GET /v1/admin/journal/records`): the
/// records from `from_lsn` up to `upto_lsn`, until `visit` answers `Break`. Unlike
/// [`scan_upto`], the segments before the one that holds `from_lsn` are not read (their
/// headers only), so paging through a log costs each page its own records, not everything
/// before them; the records handed over are checksummed and chained from the first segment
/// read on. Answers the corruption met in the window, if any (a torn tail of the last segment
/// is not: it was never acknowledged).
pub fn scan_window(
    dir: &Path,
    from_lsn: u64,
    upto_lsn: Option<u64>,
    mut visit: impl FnMut(Record<'_>, u64, u64) -> std::ops::ControlFlow<()>,
) -> Result<Option<Problem>, Error> {
    let segments = list(dir)?.segments;
    // The last segment that starts at or before `from_lsn` (a header that does not decode is
    // read in full, so the damage is reported).
    let mut start = 0;
    for (i, (_, path)) in segments.iter().enumerate().rev() {
        let head = read(path, Some(sagalog_wal_format::SEGMENT_HEADER_BYTES as u64))?;
        if SegmentHeader::decode(&head).map_or(true, |h| h.first_lsn <= from_lsn) {
            start = i;
            break;
        }
    }
    let count = segments.len();
    let mut expect = Expect::default();
    let mut stopped = false;
    for (i, (id, path)) in segments.into_iter().enumerate().skip(start) {
        let corrupt = |error: DecodeError| Problem::corrupt(&path, error);
        if let Some(problem) = missing_before(&expect, id, &path) {
            return Ok(Some(problem));
        }
        let bytes = read(&path, None)?;
        if upto_lsn.is_some_and(|upto| SegmentHeader::decode(&bytes).is_ok_and(|h| h.first_lsn > upto)) {
            break;
        }
        let scanned = segment::scan(id, &bytes, Expect { segment_id: Some(id), ..expect }, |record, offset| {
            if stopped || upto_lsn.is_some_and(|upto| record.lsn > upto) || record.lsn < from_lsn {
                return;
            }
            stopped = visit(record, id, offset).is_break();
        });
        let seg = match scanned {
            Ok(seg) => seg,
            Err(error) => return Ok(Some(corrupt(error))),
        };
        if stopped {
            break;
        }
        let last = i + 1 == count;
        if !last
            && !matches!(seg.tail, Tail::Clean)
            && let Err(error) = seg.require_clean()
        {
            return Ok(Some(corrupt(error)));
        }
        expect =
            Expect { segment_id: id.checked_add(1), first_lsn: Some(seg.next_lsn()), epoch: Some(seg.header.epoch) };
    }
    Ok(None)
}

/// Scans the log without looking at the records: the check behind `sagalog wal verify`.
pub fn verify(dir: &Path) -> Result<LogSummary, Error> {
    scan(dir, |_, _, _| {})
}
