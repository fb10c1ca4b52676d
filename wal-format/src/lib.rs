//! The bytes of sagalog's write-ahead log, and nothing else.
//!
//! This crate owns the on-disk format: segment file names, the segment header, the record
//! frame, the checksum and the rules a reader applies when bytes are missing or damaged. It
//! never touches a file: callers hand it byte slices (usually a memory map) and get back
//! records or a [`DecodeError`] that names the segment and byte offset of the first problem.
//!
//! Invariants every function here keeps:
//! - no input makes it panic, and every length read from the input is bounded before it is
//!   used to index or allocate;
//! - an invalid frame is only ever reported as a *torn tail* when nothing after it in the same
//!   segment proves it was synced: in a version 1 segment, no valid frame follows it; in a
//!   version 2 segment, no valid frame after it carries a sync watermark at or past it.
//!   Anything else is corruption (see [`segment::scan`]);
//! - every format version ever written stays decodable; `vectors/` holds golden files that
//!   prove it. The normative specification is this crate's `README.md`.

pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod header;
pub mod kind;
pub mod segment;

pub use error::{DecodeError, EncodeError, ErrorKind};
pub use frame::{
    FRAME_ALIGN_BYTES, FRAME_HEADER_BYTES, PAYLOAD_BYTES_MAX, RECORD_VERSION, RECORD_VERSION_1, Record, frame_bytes,
};
pub use header::{FORMAT_VERSION, FORMAT_VERSION_1, MAGIC, SEGMENT_HEADER_BYTES, SegmentHeader};
pub use kind::RecordKind;
pub use segment::{Expect, SegmentSummary, Tail};

/// The log sequence number of the first record ever appended to a log. LSN 0 is never
/// written, which is what lets a zero-filled frame header be told apart from a real one.
pub const FIRST_LSN: u64 = 1;

/// Suffix of every segment file name.
pub const SEGMENT_FILE_SUFFIX: &str = ".wal";

/// Digits in the zero-padded decimal segment id of a file name, enough for any `u64`.
const SEGMENT_NAME_DIGITS: usize = 20;

/// The file name of segment `segment_id`: twenty zero-padded decimal digits and `.wal`, so
/// that lexical order is numeric order (`00000000000000000001.wal`).
pub fn segment_file_name(segment_id: u64) -> String {
    format!("{segment_id:0SEGMENT_NAME_DIGITS$}{SEGMENT_FILE_SUFFIX}")
}

/// Parses a segment file name back into its id; `None` for any other name (temporary files,
/// backups, stray files), which a reader must ignore or report, never decode.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_FILE_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_numerically() {
        for id in [0, 1, 9, 10, 12345, u64::MAX] {
            assert_eq!(parse_segment_file_name(&segment_file_name(id)), Some(id));
        }
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn foreign_file_names_are_not_segments() {
        for name in [
            "1.wal",
            "0000000000000000000a.wal",
            "00000000000000000001.wal.tmp",
            "00000000000000000001.log",
            "99999999999999999999.wal", // overflows u64
            "",
        ] {
            assert_eq!(parse_segment_file_name(name), None, "{name}");
        }
    }
}
