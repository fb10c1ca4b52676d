//! The record frame: one record's header, payload and padding.
//!
//! Layout (little-endian; see the crate README for the normative table):
//!
//! | offset | bytes | field                                                   |
//! |-------:|------:|---------------------------------------------------------|
//! |      0 |     4 | payload length `n` (≤ [`PAYLOAD_BYTES_MAX`])            |
//! |      4 |     4 | CRC32 (see below)                                       |
//! |      8 |     8 | LSN (never 0)                                           |
//! |     16 |     1 | record kind ([`RecordKind`])                            |
//! |     17 |     1 | record format version (1 or 2)                          |
//! |     18 |     6 | version 1: reserved, zero. Version 2: synced distance   |
//! |     24 |   `n` | payload (MessagePack)                                   |
//! |   24+n |   0–7 | zero padding to the next multiple of 8                  |
//!
//! The CRC32 (IEEE, as computed by crc32fast) covers, in order: the log epoch (8 bytes LE),
//! frame bytes 0..4, frame bytes 8..24, the payload and the padding. Everything in the frame
//! except the checksum itself is therefore covered, and a frame copied from another log (another
//! epoch) never validates.
//!
//! The *synced distance* of a version 2 frame (a `u48`, `1..=lsn`) is the frame's LSN minus its
//! *sync watermark*: the highest LSN that an `fdatasync` had made durable when the frame was
//! encoded (0 when none). It is what lets a reader tell a hole in the never-acknowledged last
//! batch from damage to synced data (see `segment::scan`). Both versions have the same size,
//! so [`frame_bytes`] holds for both.
//!
//! [`encode`] writes version 1 (kept so that the version 1 vectors stay reproducible byte for
//! byte); the journal writes version 2 with [`encode_v2`]. [`decode`] reads both.

use crate::error::{EncodeError, ErrorKind};
use crate::header::{u32_at, u64_at};
use crate::kind::RecordKind;

/// Size of a frame header; the payload starts right after it.
pub const FRAME_HEADER_BYTES: usize = 24;
/// Frames start at offsets that are multiples of this, counted from the start of the file.
pub const FRAME_ALIGN_BYTES: usize = 8;
/// The largest payload a record may carry: 16 MiB. Readers reject larger lengths before
/// touching the bytes, so a damaged length can never make them allocate or read out of bounds.
pub const PAYLOAD_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// The record format version this build writes (and the newest it reads).
pub const RECORD_VERSION: u8 = 2;
/// The first record format version: bytes 18..24 reserved, no sync watermark.
pub const RECORD_VERSION_1: u8 = 1;
/// The largest synced distance a version 2 frame can hold (48 bits). A writer whose watermark
/// is further behind stores this, which claims *less* was durable than was: the safe side.
pub const SYNCED_DISTANCE_MAX: u64 = (1 << 48) - 1;

const LEN_AT: usize = 0;
const CRC_AT: usize = LEN_AT + 4;
const LSN_AT: usize = CRC_AT + 4;
const KIND_AT: usize = LSN_AT + 8;
const VERSION_AT: usize = KIND_AT + 1;
const RESERVED_AT: usize = VERSION_AT + 1;
/// Version 2 keeps the synced distance where version 1 has its reserved bytes.
const DISTANCE_AT: usize = RESERVED_AT;

const _: () = assert!(LSN_AT == 8 && KIND_AT == 16 && RESERVED_AT == 18);
const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(FRAME_ALIGN_BYTES));
const _: () = assert!(FRAME_ALIGN_BYTES.is_power_of_two());
// The largest frame must fit the u32 arithmetic readers do on lengths.
const _: () = assert!((PAYLOAD_BYTES_MAX as u64) + (FRAME_HEADER_BYTES + FRAME_ALIGN_BYTES) as u64 <= u32::MAX as u64);

/// One decoded record, borrowing its payload from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub lsn: u64,
    pub kind: RecordKind,
    pub payload: &'a [u8],
    /// The frame's record format version ([`RECORD_VERSION_1`] or [`RECORD_VERSION`]).
    pub version: u8,
    /// Version 2: the sync watermark, the highest LSN durable when the frame was encoded (0 when
    /// none). `None` for version 1 frames, which do not carry one.
    pub synced_lsn: Option<u64>,
}

/// Total bytes a frame with a payload of `payload_len` bytes occupies, padding included.
pub fn frame_bytes(payload_len: usize) -> usize {
    (FRAME_HEADER_BYTES + payload_len).next_multiple_of(FRAME_ALIGN_BYTES)
}

fn checksum(epoch: u64, header: &[u8], payload_and_padding: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(&header[LEN_AT..CRC_AT]);
    h.update(&header[LSN_AT..FRAME_HEADER_BYTES]);
    h.update(payload_and_padding);
    h.finalize()
}

/// Appends the **version 1** frame for one record to `out`, returning the number of bytes
/// appended. The journal writes version 2 ([`encode_v2`]); this stays for the version 1
/// vectors and for tools that build old segments.
pub fn encode(out: &mut Vec<u8>, epoch: u64, lsn: u64, kind: RecordKind, payload: &[u8]) -> Result<usize, EncodeError> {
    encode_version(out, epoch, lsn, kind, payload, RECORD_VERSION_1, [0; 6])
}

/// Appends the version 2 frame for one record to `out`, returning the number of bytes
/// appended. `synced_lsn` is the writer's sync watermark: the highest LSN an `fdatasync` had
/// made durable when this frame was encoded (0 when none); it must be below `lsn`.
pub fn encode_v2(
    out: &mut Vec<u8>,
    epoch: u64,
    lsn: u64,
    kind: RecordKind,
    payload: &[u8],
    synced_lsn: u64,
) -> Result<usize, EncodeError> {
    if lsn != 0 && synced_lsn >= lsn {
        return Err(EncodeError::SyncedLsnNotBelow { lsn, synced_lsn });
    }
    let distance = (lsn - synced_lsn).min(SYNCED_DISTANCE_MAX).to_le_bytes();
    let mut field = [0u8; 6];
    field.copy_from_slice(&distance[..6]);
    encode_version(out, epoch, lsn, kind, payload, RECORD_VERSION, field)
}

fn encode_version(
    out: &mut Vec<u8>,
    epoch: u64,
    lsn: u64,
    kind: RecordKind,
    payload: &[u8],
    version: u8,
    field_18: [u8; 6],
) -> Result<usize, EncodeError> {
    if payload.len() > PAYLOAD_BYTES_MAX as usize {
        return Err(EncodeError::PayloadTooLarge { len: payload.len(), max: PAYLOAD_BYTES_MAX });
    }
    if lsn == 0 {
        return Err(EncodeError::ZeroLsn);
    }
    let total = frame_bytes(payload.len());
    let start = out.len();
    out.resize(start + FRAME_HEADER_BYTES, 0);
    let header = &mut out[start..];
    header[LEN_AT..CRC_AT].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[LSN_AT..KIND_AT].copy_from_slice(&lsn.to_le_bytes());
    header[KIND_AT] = kind as u8;
    header[VERSION_AT] = version;
    header[RESERVED_AT..FRAME_HEADER_BYTES].copy_from_slice(&field_18);
    out.extend_from_slice(payload);
    out.resize(start + total, 0);
    let crc = {
        let frame = &out[start..];
        checksum(epoch, &frame[..FRAME_HEADER_BYTES], &frame[FRAME_HEADER_BYTES..])
    };
    out[start + CRC_AT..start + LSN_AT].copy_from_slice(&crc.to_le_bytes());
    // Check a record when it is encoded as well as when it is decoded.
    debug_assert_eq!(
        decode(&out[start..], epoch).map(|(r, n)| (r.lsn, r.kind, r.version, n)),
        Ok((lsn, kind, version, total))
    );
    Ok(total)
}

/// Decodes the frame at the start of `bytes` (which may extend past it), returning the record
/// and the frame's total size. Checks run in an order that never reads past `bytes`, never
/// trusts a length before bounding it, and reports a checksum problem before any problem with
/// a checksummed field (so that a torn write is never mistaken for a newer format).
pub fn decode(bytes: &[u8], epoch: u64) -> Result<(Record<'_>, usize), ErrorKind> {
    let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
        if bytes.iter().all(|b| *b == 0) {
            return Err(ErrorKind::Zeroed);
        }
        return Err(ErrorKind::FrameTruncated { needed: FRAME_HEADER_BYTES as u64, available: bytes.len() as u64 });
    };
    if header.iter().all(|b| *b == 0) {
        return Err(ErrorKind::Zeroed);
    }
    let len = u32_at(header, LEN_AT);
    if len > PAYLOAD_BYTES_MAX {
        return Err(ErrorKind::LengthTooLarge { len, max: PAYLOAD_BYTES_MAX });
    }
    let total = frame_bytes(len as usize);
    let Some(frame) = bytes.get(..total) else {
        return Err(ErrorKind::FrameTruncated { needed: total as u64, available: bytes.len() as u64 });
    };
    let stored = u32_at(header, CRC_AT);
    let computed = checksum(epoch, header, &frame[FRAME_HEADER_BYTES..]);
    if stored != computed {
        return Err(ErrorKind::FrameChecksum { stored, computed });
    }
    let lsn = u64_at(header, LSN_AT);
    if lsn == 0 {
        return Err(ErrorKind::ZeroLsn);
    }
    let version = header[VERSION_AT];
    if version == 0 || version > RECORD_VERSION {
        return Err(ErrorKind::UnsupportedRecordVersion { found: version, supported: RECORD_VERSION });
    }
    let Some(kind) = RecordKind::from_u8(header[KIND_AT]) else {
        return Err(ErrorKind::UnknownKind { found: header[KIND_AT] });
    };
    let payload_end = FRAME_HEADER_BYTES + len as usize;
    let reserved: &[u8] = if version == RECORD_VERSION_1 { &header[RESERVED_AT..] } else { &[] };
    if reserved.iter().chain(&frame[payload_end..]).any(|b| *b != 0) {
        return Err(ErrorKind::FrameReserved);
    }
    let synced_lsn = match version {
        RECORD_VERSION_1 => None,
        _ => {
            let distance = u48_at(header, DISTANCE_AT);
            if distance == 0 || distance > lsn {
                return Err(ErrorKind::SyncedDistance { lsn, distance });
            }
            Some(lsn - distance)
        }
    };
    Ok((Record { lsn, kind, payload: &frame[FRAME_HEADER_BYTES..payload_end], version, synced_lsn }, total))
}

fn u48_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a[..6].copy_from_slice(&b[at..at + 6]);
    u64::from_le_bytes(a)
}

/// The LSN field of a frame header at the start of `bytes`, unchecked.
pub(crate) fn peek_lsn(bytes: &[u8]) -> Option<u64> {
    bytes.get(..FRAME_HEADER_BYTES).map(|h| u64_at(h, LSN_AT))
}

/// A cheap test of whether a *valid* frame of record version `version` starts at `bytes`: the
/// structural fields are checked first and the checksum only if they pass. Returns the record.
/// Used to tell corruption (valid data follows the damage) from a torn tail.
pub(crate) fn valid_frame(bytes: &[u8], epoch: u64, version: u8) -> Option<Record<'_>> {
    let header = bytes.get(..FRAME_HEADER_BYTES)?;
    if u64_at(header, LSN_AT) == 0
        || header[VERSION_AT] != version
        || RecordKind::from_u8(header[KIND_AT]).is_none()
        || (version == RECORD_VERSION_1 && header[RESERVED_AT..].iter().any(|b| *b != 0))
    {
        return None;
    }
    decode(bytes, epoch).ok().map(|(record, _)| record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EPOCH: u64 = 0x0123_4567_89ab_cdef;

    fn one(lsn: u64, kind: RecordKind, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, EPOCH, lsn, kind, payload).unwrap();
        v
    }

    #[test]
    fn frames_are_aligned_and_sized_by_frame_bytes() {
        for len in 0..40 {
            let v = one(1, RecordKind::StepStarted, &vec![0xAB; len]);
            assert_eq!(v.len(), frame_bytes(len));
            assert_eq!(v.len() % FRAME_ALIGN_BYTES, 0);
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let good = one(42, RecordKind::StepSucceeded, b"hello, world");
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad, EPOCH).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn another_epoch_never_validates() {
        let good = one(1, RecordKind::SagaSubmitted, b"x");
        assert!(matches!(decode(&good, EPOCH ^ 1), Err(ErrorKind::FrameChecksum { .. })));
    }

    #[test]
    fn oversized_lengths_are_rejected_before_reading() {
        let mut v = one(1, RecordKind::SagaSubmitted, b"x");
        v[..4].copy_from_slice(&(PAYLOAD_BYTES_MAX + 1).to_le_bytes());
        assert!(matches!(decode(&v, EPOCH), Err(ErrorKind::LengthTooLarge { .. })));
        let mut big = Vec::new();
        assert!(encode(&mut big, EPOCH, 1, RecordKind::Checkpoint, &vec![0; PAYLOAD_BYTES_MAX as usize + 1]).is_err());
        assert!(big.is_empty(), "a refused encode writes nothing");
    }

    #[test]
    fn zero_lsn_is_refused_by_the_encoder() {
        assert_eq!(encode(&mut Vec::new(), EPOCH, 0, RecordKind::Checkpoint, b""), Err(EncodeError::ZeroLsn));
    }

    #[test]
    fn short_and_zero_inputs_are_classified() {
        let good = one(3, RecordKind::StepFailed, b"payload!");
        for cut in 1..good.len() {
            assert!(matches!(decode(&good[..cut], EPOCH), Err(ErrorKind::FrameTruncated { .. })), "cut {cut}");
        }
        assert_eq!(decode(&[], EPOCH).unwrap_err(), ErrorKind::Zeroed);
        assert_eq!(decode(&[0; 100], EPOCH).unwrap_err(), ErrorKind::Zeroed);
    }

    #[test]
    fn v2_watermark_must_be_below_the_lsn() {
        assert_eq!(
            encode_v2(&mut Vec::new(), EPOCH, 5, RecordKind::Checkpoint, b"", 5),
            Err(EncodeError::SyncedLsnNotBelow { lsn: 5, synced_lsn: 5 })
        );
        // A resealed distance of 0 or past the LSN is refused with its values.
        for (distance, lsn) in [(0u64, 5u64), (6, 5)] {
            let mut v = Vec::new();
            encode_v2(&mut v, EPOCH, lsn, RecordKind::Checkpoint, b"x", 1).unwrap();
            v[DISTANCE_AT..FRAME_HEADER_BYTES].copy_from_slice(&distance.to_le_bytes()[..6]);
            let crc = checksum(EPOCH, &v[..FRAME_HEADER_BYTES], &v[FRAME_HEADER_BYTES..]);
            v[CRC_AT..LSN_AT].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode(&v, EPOCH).unwrap_err(), ErrorKind::SyncedDistance { lsn, distance });
        }
    }

    #[test]
    fn every_bit_flip_of_a_v2_frame_is_detected() {
        let mut good = Vec::new();
        encode_v2(&mut good, EPOCH, 42, RecordKind::StepSucceeded, b"hello, world", 40).unwrap();
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad, EPOCH).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    proptest! {
        #[test]
        fn round_trips(lsn in 1u64.., tag in 1u8..=8, payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            let kind = RecordKind::from_u8(tag).unwrap();
            let v = one(lsn, kind, &payload);
            let (rec, n) = decode(&v, EPOCH).unwrap();
            prop_assert_eq!(n, v.len());
            prop_assert_eq!(rec, Record { lsn, kind, payload: &payload, version: 1, synced_lsn: None });
            prop_assert!(valid_frame(&v, EPOCH, RECORD_VERSION_1).is_some());
        }

        #[test]
        fn v2_round_trips_with_its_watermark(
            lsn in 1u64..,
            behind in 1u64..,
            tag in 1u8..=8,
            payload in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let kind = RecordKind::from_u8(tag).unwrap();
            let synced = lsn.saturating_sub(behind);
            let mut v = Vec::new();
            encode_v2(&mut v, EPOCH, lsn, kind, &payload, synced).unwrap();
            prop_assert_eq!(v.len(), frame_bytes(payload.len()));
            let (rec, n) = decode(&v, EPOCH).unwrap();
            prop_assert_eq!(n, v.len());
            // A watermark too far behind for 48 bits is stored lower, never higher.
            let stored = if lsn - synced > SYNCED_DISTANCE_MAX { lsn - SYNCED_DISTANCE_MAX } else { synced };
            prop_assert_eq!(rec, Record { lsn, kind, payload: &payload, version: 2, synced_lsn: Some(stored) });
            prop_assert!(valid_frame(&v, EPOCH, RECORD_VERSION).is_some());
            prop_assert!(valid_frame(&v, EPOCH, RECORD_VERSION_1).is_none());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), epoch in any::<u64>()) {
            let _ = decode(&bytes, epoch);
            let _ = valid_frame(&bytes, epoch, RECORD_VERSION);
            let _ = valid_frame(&bytes, epoch, RECORD_VERSION_1);
        }
    }
}
