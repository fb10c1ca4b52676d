//! The checkpoint file: the promise that lets the journal delete old segments.
//!
//! A [`Checkpoint`] says: recovery replays the journal from `replay_from_lsn`, and every saga
//! with a record below that LSN is finished and archived in the index. Whoever writes one
//! must therefore have [`crate::index::Index::flush`]ed the index first, and the journal may
//! delete segments below `replay_from_lsn` only after [`write()`] has returned.
//!
//! # File format
//!
//! `<data-dir>/checkpoint`, exactly [`FILE_BYTES`] bytes, integers little-endian:
//!
//! | offset | size | field                 | meaning                                        |
//! |-------:|-----:|-----------------------|------------------------------------------------|
//! |      0 |    8 | magic                 | the ASCII bytes `SAGACKPT`                     |
//! |      8 |    2 | format version (u16)  | [`FORMAT_VERSION`] (2)                         |
//! |     10 |    8 | `replay_from_lsn`     | first LSN recovery replays                     |
//! |     18 |    8 | `indexed_through_lsn` | the index holds every saga finished up to here |
//! |     26 |    8 | `written_at_ms`       | wall clock when written, for operators         |
//! |     34 |    8 | `journal_next_lsn`    | every LSN below it was durable in the journal  |
//! |     42 |    4 | CRC32 (u32)           | `crc32fast` of bytes 0..42                     |
//!
//! Version 1 (written by earlier builds, still read) is the same without `journal_next_lsn`:
//! 38 bytes, the CRC32 at offset 34 over bytes 0..34. It reads back with `journal_next_lsn`
//! 0 ("unknown"), and an index written before version 2 carries no
//! [`crate::index::Index::indexed_through_lsn`] mark, so startup skips the checks that need
//! them. Any other version is reported as an error.
//!
//! Startup cross-checks a checkpoint against the journal and the index (see
//! `crate::node`): `replay_from_lsn` must lie within the journal, the journal must reach
//! `journal_next_lsn`, and the index must be marked as holding at least `indexed_through_lsn`.
//!
//! # Writing, and what a crash leaves
//!
//! [`write()`] writes `checkpoint.tmp`, fsyncs it, renames it over `checkpoint` and fsyncs the
//! data directory:
//! - a crash before the rename leaves the previous `checkpoint` (or none) untouched, and
//!   perhaps a partial `checkpoint.tmp`, which [`read()`] never looks at and the next
//!   [`write()`] overwrites;
//! - a crash after the rename but before the directory fsync leaves either the old or the new
//!   file under the name `checkpoint`, each complete (the new one's bytes were fsynced before
//!   the rename). The old one is still true, because no segment was deleted yet;
//! - once the directory fsync returns, the new checkpoint survives any crash.
//!
//! # Reading
//!
//! [`read()`] returns `None` when there is no checkpoint (a fresh data directory, or one whose
//! journal was never trimmed). A checkpoint that exists but cannot be read (too short, too
//! long, bad magic, unknown version, bad checksum) is an error, and startup must stop on it:
//! ignoring it would replay from the start of a journal whose first segments are gone, and
//! silently lose the sagas they held.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Name of the checkpoint file inside a data directory.
pub const FILE_NAME: &str = "checkpoint";
/// Name of the file a checkpoint is written to before it is renamed into place.
pub const TMP_FILE_NAME: &str = "checkpoint.tmp";
/// The first bytes of every checkpoint file.
pub const MAGIC: [u8; 8] = *b"SAGACKPT";
/// The format version this build writes (it also reads [`FORMAT_VERSION_1`]).
pub const FORMAT_VERSION: u16 = 2;
/// The first format version, without `journal_next_lsn`.
pub const FORMAT_VERSION_1: u16 = 1;

const VERSION_OFFSET: usize = MAGIC.len();
const REPLAY_FROM_OFFSET: usize = VERSION_OFFSET + size_of::<u16>();
const INDEXED_THROUGH_OFFSET: usize = REPLAY_FROM_OFFSET + size_of::<u64>();
const WRITTEN_AT_OFFSET: usize = INDEXED_THROUGH_OFFSET + size_of::<u64>();
const JOURNAL_NEXT_OFFSET: usize = WRITTEN_AT_OFFSET + size_of::<u64>();
const CRC_OFFSET: usize = JOURNAL_NEXT_OFFSET + size_of::<u64>();
/// Size of a checkpoint file (of [`FORMAT_VERSION`]) in bytes.
pub const FILE_BYTES: usize = CRC_OFFSET + size_of::<u32>();
/// In a version-1 file the checksum follows `written_at_ms`.
const V1_CRC_OFFSET: usize = JOURNAL_NEXT_OFFSET;
/// Size of a version-1 checkpoint file in bytes.
pub const V1_FILE_BYTES: usize = V1_CRC_OFFSET + size_of::<u32>();

// The byte table in the module doc, checked.
const _: () = assert!(REPLAY_FROM_OFFSET == 10);
const _: () = assert!(INDEXED_THROUGH_OFFSET == 18);
const _: () = assert!(WRITTEN_AT_OFFSET == 26);
const _: () = assert!(JOURNAL_NEXT_OFFSET == 34);
const _: () = assert!(CRC_OFFSET == 42);
const _: () = assert!(FILE_BYTES == 46);
const _: () = assert!(V1_FILE_BYTES == 38);

/// Where recovery starts and how far the index reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Recovery replays the journal from this LSN; every saga with a record below it is
    /// finished and in the index.
    pub replay_from_lsn: u64,
    /// The index holds every saga that finished at or below this LSN.
    pub indexed_through_lsn: u64,
    pub written_at_ms: u64,
    /// Every LSN below this was durable in the journal when the checkpoint was written: a
    /// journal that ends below it lost records (a deleted last segment). 0 when unknown (a
    /// version-1 file).
    pub journal_next_lsn: u64,
}

/// What is wrong with the bytes of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("it is {len} bytes long, shorter than the {expected} of a checkpoint")]
    Short { len: usize, expected: usize },
    #[error("it is longer than the {expected} bytes of a checkpoint")]
    Long { expected: usize },
    #[error("it does not start with the magic SAGACKPT")]
    BadMagic,
    #[error(
        "it has format version {0}, which this sagalog does not read (it reads {FORMAT_VERSION_1} and {FORMAT_VERSION})"
    )]
    UnknownVersion(u16),
    #[error("its checksum is {stored:#010x} but its bytes sum to {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "checkpoint {} cannot be trusted: {problem}; refusing to start, since recovery would replay from the wrong place",
        path.display()
    )]
    Damaged { path: PathBuf, problem: Problem },
}

impl Checkpoint {
    /// The file's bytes ([`FORMAT_VERSION`]), as the module doc lays them out.
    pub fn encode(&self) -> [u8; FILE_BYTES] {
        let mut bytes = [0u8; FILE_BYTES];
        self.encode_common(&mut bytes, FORMAT_VERSION);
        bytes[JOURNAL_NEXT_OFFSET..CRC_OFFSET].copy_from_slice(&self.journal_next_lsn.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..CRC_OFFSET]);
        bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The bytes an earlier build wrote ([`FORMAT_VERSION_1`], no `journal_next_lsn`); for
    /// tests of reading old data directories.
    pub fn encode_version_1(&self) -> [u8; V1_FILE_BYTES] {
        let mut bytes = [0u8; V1_FILE_BYTES];
        self.encode_common(&mut bytes, FORMAT_VERSION_1);
        let crc = crc32fast::hash(&bytes[..V1_CRC_OFFSET]);
        bytes[V1_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Magic, version and the fields both versions share.
    fn encode_common(&self, bytes: &mut [u8], version: u16) {
        bytes[..VERSION_OFFSET].copy_from_slice(&MAGIC);
        bytes[VERSION_OFFSET..REPLAY_FROM_OFFSET].copy_from_slice(&version.to_le_bytes());
        bytes[REPLAY_FROM_OFFSET..INDEXED_THROUGH_OFFSET].copy_from_slice(&self.replay_from_lsn.to_le_bytes());
        bytes[INDEXED_THROUGH_OFFSET..WRITTEN_AT_OFFSET].copy_from_slice(&self.indexed_through_lsn.to_le_bytes());
        bytes[WRITTEN_AT_OFFSET..JOURNAL_NEXT_OFFSET].copy_from_slice(&self.written_at_ms.to_le_bytes());
    }

    /// Decodes a whole checkpoint file of either version. Checks, in order: length of the
    /// header, magic, version, length for that version, checksum.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, Problem> {
        if bytes.len() < REPLAY_FROM_OFFSET {
            return Err(Problem::Short { len: bytes.len(), expected: FILE_BYTES });
        }
        if bytes[..VERSION_OFFSET] != MAGIC {
            return Err(Problem::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[VERSION_OFFSET], bytes[VERSION_OFFSET + 1]]);
        let crc_offset = match version {
            FORMAT_VERSION => CRC_OFFSET,
            FORMAT_VERSION_1 => V1_CRC_OFFSET,
            other => return Err(Problem::UnknownVersion(other)),
        };
        let expected = crc_offset + size_of::<u32>();
        if bytes.len() < expected {
            return Err(Problem::Short { len: bytes.len(), expected });
        }
        if bytes.len() > expected {
            return Err(Problem::Long { expected });
        }
        let computed = crc32fast::hash(&bytes[..crc_offset]);
        let stored = u32::from_le_bytes(le_field(bytes, crc_offset));
        if stored != computed {
            return Err(Problem::BadChecksum { stored, computed });
        }
        Ok(Checkpoint {
            replay_from_lsn: u64::from_le_bytes(le_field(bytes, REPLAY_FROM_OFFSET)),
            indexed_through_lsn: u64::from_le_bytes(le_field(bytes, INDEXED_THROUGH_OFFSET)),
            written_at_ms: u64::from_le_bytes(le_field(bytes, WRITTEN_AT_OFFSET)),
            journal_next_lsn: match version {
                FORMAT_VERSION => u64::from_le_bytes(le_field(bytes, JOURNAL_NEXT_OFFSET)),
                _ => 0,
            },
        })
    }
}

/// The `N` bytes at `offset`; callers checked the length, so offsets are in range.
fn le_field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut field = [0u8; N];
    field.copy_from_slice(&bytes[offset..offset + N]);
    field
}

/// Wraps an I/O failure of `op` on `path`.
fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> Error + 'p {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

/// The checkpoint file of the data directory `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Replaces the checkpoint of `data_dir` with `cp`, durably, or leaves the old one in place.
/// See the module doc for what a crash at each step leaves.
pub fn write(data_dir: &Path, cp: &Checkpoint) -> Result<(), Error> {
    let tmp = data_dir.join(TMP_FILE_NAME);
    let target = path(data_dir);
    // Truncating replaces whatever an earlier crash left in the temporary file.
    let mut file =
        OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(&cp.encode()).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(io_err("rename into place", &target))?;
    File::open(data_dir).and_then(|dir| dir.sync_all()).map_err(io_err("fsync directory", data_dir))?;
    tracing::debug!(
        replay_from_lsn = cp.replay_from_lsn,
        indexed_through_lsn = cp.indexed_through_lsn,
        journal_next_lsn = cp.journal_next_lsn,
        "checkpoint written"
    );
    Ok(())
}

/// The checkpoint of `data_dir`: `None` if there is none, an error if there is one that
/// cannot be read. `checkpoint.tmp` is never looked at.
pub fn read(data_dir: &Path) -> Result<Option<Checkpoint>, Error> {
    let path = path(data_dir);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { op: "open", path, source }),
    };
    // One byte more than a checkpoint is enough to tell a file that is too long.
    let mut bytes = Vec::with_capacity(FILE_BYTES + 1);
    let read_max = u64::try_from(FILE_BYTES + 1).unwrap_or(u64::MAX);
    if let Err(source) = file.take(read_max).read_to_end(&mut bytes) {
        return Err(Error::Io { op: "read", path, source });
    }
    match Checkpoint::decode(&bytes) {
        Ok(cp) => Ok(Some(cp)),
        Err(problem) => Err(Error::Damaged { path, problem }),
    }
}
