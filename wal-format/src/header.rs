//! The 64-byte segment header: identifies the file as a sagalog segment of one log.
//!
//! Layout (little-endian; see the crate README for the normative table):
//!
//! | offset | bytes | field                          |
//! |-------:|------:|--------------------------------|
//! |      0 |     8 | magic `SAGAWAL\0`              |
//! |      8 |     2 | format version (1 or 2)        |
//! |     10 |     2 | header length (64)             |
//! |     12 |     4 | reserved, zero                 |
//! |     16 |     8 | segment id                     |
//! |     24 |     8 | first LSN                      |
//! |     32 |     8 | log epoch                      |
//! |     40 |    20 | reserved, zero                 |
//! |     60 |     4 | CRC32 of bytes 0..60           |
//!
//! Both versions have this layout. The version says which record frames the segment holds and
//! which rules a reader applies after damage (see `segment::scan`): version 1 segments hold
//! version 1 frames, version 2 segments version 2 frames, which carry a sync watermark.

use crate::error::ErrorKind;

/// The first eight bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"SAGAWAL\0";
/// The segment format version this build writes (and the newest it reads).
pub const FORMAT_VERSION: u16 = 2;
/// The first segment format version: version 1 frames, no sync watermarks.
pub const FORMAT_VERSION_1: u16 = 1;
/// Size of the segment header; the first record frame starts right after it.
pub const SEGMENT_HEADER_BYTES: usize = 64;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + MAGIC.len();
const HEADER_LEN_AT: usize = VERSION_AT + 2;
const RESERVED_A_AT: usize = HEADER_LEN_AT + 2;
const SEGMENT_ID_AT: usize = RESERVED_A_AT + 4;
const FIRST_LSN_AT: usize = SEGMENT_ID_AT + 8;
/// Byte offset of the epoch field; errors about the epoch point here.
pub const EPOCH_AT: usize = FIRST_LSN_AT + 8;
const RESERVED_B_AT: usize = EPOCH_AT + 8;
const CRC_AT: usize = SEGMENT_HEADER_BYTES - 4;

// The layout is derived field by field; these pin it to the documented table.
const _: () = assert!(SEGMENT_ID_AT == 16 && FIRST_LSN_AT == 24 && EPOCH_AT == 32);
const _: () = assert!(RESERVED_B_AT == 40 && CRC_AT == 60);
const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(crate::frame::FRAME_ALIGN_BYTES));

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Dense, increasing id; the file is named after it.
    pub segment_id: u64,
    /// LSN of the first record in this segment (or of the next record appended to an empty one).
    pub first_lsn: u64,
    /// Random number chosen when the log was created, shared by all its segments. It seeds
    /// every record checksum, so a frame from another log never validates here.
    pub epoch: u64,
}

impl SegmentHeader {
    /// The exact bytes of this header as a **version 1** segment's (kept so that the version 1
    /// vectors stay reproducible; the journal writes version 2 with [`SegmentHeader::encode_v2`]).
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        self.encode_version(FORMAT_VERSION_1)
    }

    /// The exact bytes of this header as a version 2 segment's: what the journal writes.
    pub fn encode_v2(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        self.encode_version(FORMAT_VERSION)
    }

    fn encode_version(&self, version: u16) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[MAGIC_AT..VERSION_AT].copy_from_slice(&MAGIC);
        out[VERSION_AT..HEADER_LEN_AT].copy_from_slice(&version.to_le_bytes());
        out[HEADER_LEN_AT..RESERVED_A_AT].copy_from_slice(&(SEGMENT_HEADER_BYTES as u16).to_le_bytes());
        out[SEGMENT_ID_AT..FIRST_LSN_AT].copy_from_slice(&self.segment_id.to_le_bytes());
        out[FIRST_LSN_AT..EPOCH_AT].copy_from_slice(&self.first_lsn.to_le_bytes());
        out[EPOCH_AT..RESERVED_B_AT].copy_from_slice(&self.epoch.to_le_bytes());
        let crc = crc32fast::hash(&out[..CRC_AT]);
        out[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `bytes`. On error, the `u64` is the offset of the
    /// offending field within the header.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, (u64, ErrorKind)> {
        SegmentHeader::decode_versioned(bytes).map(|(header, _)| header)
    }

    /// [`SegmentHeader::decode`], also returning the segment's format version.
    pub fn decode_versioned(bytes: &[u8]) -> Result<(SegmentHeader, u16), (u64, ErrorKind)> {
        let Some(h) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err((
                0,
                ErrorKind::HeaderTruncated { needed: SEGMENT_HEADER_BYTES as u64, available: bytes.len() as u64 },
            ));
        };
        if h[MAGIC_AT..VERSION_AT] != MAGIC {
            return Err((MAGIC_AT as u64, ErrorKind::BadMagic));
        }
        let stored = u32_at(h, CRC_AT);
        let computed = crc32fast::hash(&h[..CRC_AT]);
        if stored != computed {
            return Err((CRC_AT as u64, ErrorKind::HeaderChecksum { stored, computed }));
        }
        let version = u16::from_le_bytes([h[VERSION_AT], h[VERSION_AT + 1]]);
        if version == 0 || version > FORMAT_VERSION {
            return Err((
                VERSION_AT as u64,
                ErrorKind::UnsupportedFormatVersion { found: version, supported: FORMAT_VERSION },
            ));
        }
        let header_len = u16::from_le_bytes([h[HEADER_LEN_AT], h[HEADER_LEN_AT + 1]]);
        if usize::from(header_len) != SEGMENT_HEADER_BYTES {
            return Err((
                HEADER_LEN_AT as u64,
                ErrorKind::HeaderLength { found: header_len, expected: SEGMENT_HEADER_BYTES as u16 },
            ));
        }
        let reserved = (RESERVED_A_AT..SEGMENT_ID_AT).chain(RESERVED_B_AT..CRC_AT);
        if let Some(at) = reserved.into_iter().find(|at| h[*at] != 0) {
            return Err((at as u64, ErrorKind::HeaderReserved));
        }
        let header = SegmentHeader {
            segment_id: u64_at(h, SEGMENT_ID_AT),
            first_lsn: u64_at(h, FIRST_LSN_AT),
            epoch: u64_at(h, EPOCH_AT),
        };
        Ok((header, version))
    }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: SegmentHeader = SegmentHeader { segment_id: 7, first_lsn: 1234, epoch: 0xdead_beef_0bad_cafe };

    #[test]
    fn header_round_trips() {
        assert_eq!(SegmentHeader::decode_versioned(&H.encode()), Ok((H, 1)));
        assert_eq!(SegmentHeader::decode_versioned(&H.encode_v2()), Ok((H, 2)));
    }

    #[test]
    fn every_single_bit_flip_in_the_header_is_detected() {
        for good in [H.encode(), H.encode_v2()] {
            for bit in 0..SEGMENT_HEADER_BYTES * 8 {
                let mut bad = good;
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(SegmentHeader::decode(&bad).is_err(), "flip of bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        let good = H.encode();
        for len in 0..SEGMENT_HEADER_BYTES {
            assert!(matches!(SegmentHeader::decode(&good[..len]), Err((0, ErrorKind::HeaderTruncated { .. }))));
        }
    }
}
