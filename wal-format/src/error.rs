//! Errors of the format: what is wrong with a byte range and where.
//!
//! A [`DecodeError`] always names the segment and the byte offset (from the start of the
//! segment file) of the first byte that could not be accepted, because that is what an
//! operator needs to find the damage with `sagalog wal verify` or a hex editor.

use std::fmt;

/// What is wrong at a given place in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("segment header is cut short ({available} of {needed} bytes)")]
    HeaderTruncated { needed: u64, available: u64 },
    #[error("bad magic: this is not a sagalog segment")]
    BadMagic,
    #[error("segment format version {found} is not supported (this build reads 1..={supported})")]
    UnsupportedFormatVersion { found: u16, supported: u16 },
    #[error("segment header declares {found} bytes, expected {expected}")]
    HeaderLength { found: u16, expected: u16 },
    #[error("segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("segment header reserved bytes are not zero")]
    HeaderReserved,
    #[error("segment header says segment {found}, expected {expected}")]
    SegmentIdMismatch { expected: u64, found: u64 },
    #[error("segment starts at lsn {found}, expected {expected}")]
    FirstLsnMismatch { expected: u64, found: u64 },
    #[error("segment belongs to log epoch {found:#018x}, this log is epoch {expected:#018x}")]
    EpochMismatch { expected: u64, found: u64 },
    #[error("record frame is cut short ({available} of {needed} bytes)")]
    FrameTruncated { needed: u64, available: u64 },
    #[error("zero-filled bytes where a record frame should start")]
    Zeroed,
    #[error("record length {len} exceeds the maximum of {max} bytes")]
    LengthTooLarge { len: u32, max: u32 },
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    FrameChecksum { stored: u32, computed: u32 },
    #[error("record has lsn 0, which is never written")]
    ZeroLsn,
    #[error("record format version {found} is not supported (this build reads 1..={supported})")]
    UnsupportedRecordVersion { found: u8, supported: u8 },
    #[error("record kind {found} is unknown to this build")]
    UnknownKind { found: u8 },
    #[error("record frame reserved bytes are not zero")]
    FrameReserved,
    #[error(
        "record {lsn} has synced distance {distance}, outside 1..={lsn} (its sync watermark would not be below it)"
    )]
    SyncedDistance { lsn: u64, distance: u64 },
    #[error("record format version {found} in a segment of format version {segment_version}")]
    RecordVersionMismatch { found: u8, segment_version: u16 },
    #[error("record has lsn {found}, expected {expected} (a gap or a duplicate)")]
    LsnGap { expected: u64, found: u64 },
    #[error("{len} bytes after the last record of a sealed segment")]
    TrailingBytes { len: u64 },
    #[error("segment {expected} is missing: segment ids must be dense")]
    SegmentMissing { expected: u64 },
}

impl ErrorKind {
    /// Whether this problem could be what an interrupted append leaves at the end of the log:
    /// a frame whose bytes did not all reach the disk. Problems in a frame whose checksum is
    /// *valid* (unknown kind, newer version, LSN gap) can never be torn writes: a complete,
    /// checksummed frame was written that this reader must not ignore.
    pub fn could_be_torn_write(&self) -> bool {
        matches!(
            self,
            ErrorKind::FrameTruncated { .. }
                | ErrorKind::Zeroed
                | ErrorKind::LengthTooLarge { .. }
                | ErrorKind::FrameChecksum { .. }
        )
    }
}

/// A problem at a known place: `segment` is the segment id, `offset` the byte offset from the
/// start of that segment's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub segment: u64,
    pub offset: u64,
    pub kind: ErrorKind,
    /// For an invalid frame that is followed by a valid one: the offset where valid data
    /// resumes. Its presence is what makes the problem corruption rather than a torn tail.
    pub valid_data_at: Option<u64>,
    /// Version 2 segments: the sync watermark of the frame at `valid_data_at`, at or past the
    /// LSN the damaged frame should carry. It proves the damage hit synced data: that frame was
    /// written after an `fdatasync` covering the damaged record had returned.
    pub synced_lsn_at_valid: Option<u64>,
}

impl DecodeError {
    pub fn new(segment: u64, offset: u64, kind: ErrorKind) -> Self {
        DecodeError { segment, offset, kind, valid_data_at: None, synced_lsn_at_valid: None }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {} offset {}: {}", self.segment, self.offset, self.kind)?;
        match (self.valid_data_at, self.synced_lsn_at_valid) {
            (Some(at), Some(synced)) => write!(
                f,
                "; valid records follow at offset {at}, written when records up to lsn {synced} were synced, \
                 so this damages synced data: corruption, not a torn tail"
            )?,
            (Some(at), None) => {
                write!(f, "; valid records follow at offset {at}, so this is corruption, not a torn tail")?
            }
            (None, _) => {}
        }
        Ok(())
    }
}

impl std::error::Error for DecodeError {}

/// Why a record could not be encoded. Encoding refuses rather than writing a frame that a
/// reader would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("record payload of {len} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge { len: usize, max: u32 },
    #[error("lsn 0 is reserved and never written")]
    ZeroLsn,
    #[error("sync watermark {synced_lsn} is not below the record's lsn {lsn}")]
    SyncedLsnNotBelow { lsn: u64, synced_lsn: u64 },
}
