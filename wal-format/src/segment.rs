//! Reading a whole segment: header, then frames, then a verdict on whatever follows them.
//!
//! [`scan`] is the single place where the format decides between "end of data" and
//! "corruption"; the journal's open path, `sagalog wal verify` and the fuzz targets all go
//! through it, so they cannot disagree.
//!
//! The rule: after the last valid frame, the rest of the segment is either
//! - nothing ([`Tail::Clean`]);
//! - zeros only ([`Tail::Zeroed`]), which a preallocating or crashed file system can leave;
//! - an invalid frame with **no valid frame anywhere after it** ([`Tail::Torn`]): the remains
//!   of an append that never completed;
//!
//! and anything else, an invalid frame followed by a valid one, is corruption, reported as a
//! [`DecodeError`] with `valid_data_at` set. Treating it as the end of the log would silently
//! drop records that may have been acknowledged. Whether a zeroed or torn tail is acceptable
//! depends on where the segment sits in the log; that is the caller's decision
//! ([`SegmentSummary::require_clean`]).

use crate::error::{DecodeError, ErrorKind};
use crate::frame::{self, FRAME_ALIGN_BYTES, Record};
use crate::header::{EPOCH_AT, SEGMENT_HEADER_BYTES, SegmentHeader};

/// What the caller already knows about the segment it is reading; each `Some` is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    /// The id the file name carries.
    pub segment_id: Option<u64>,
    /// One past the last LSN of the previous segment.
    pub first_lsn: Option<u64>,
    /// The epoch of the log this segment belongs to.
    pub epoch: Option<u64>,
}

/// What follows the last valid frame of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The segment ends exactly after its last valid frame.
    Clean,
    /// Only zero bytes follow, starting at `offset`.
    Zeroed { offset: u64, len: u64 },
    /// An incomplete or damaged frame at `offset`, with nothing valid after it.
    Torn { offset: u64, len: u64, kind: ErrorKind },
}

/// The result of scanning a segment that is not corrupt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub header: SegmentHeader,
    /// Valid records in the segment.
    pub records: u64,
    /// LSN of the last valid record, if any.
    pub last_lsn: Option<u64>,
    /// Offset just past the last valid frame (where the next append would go).
    pub valid_end: u64,
    pub tail: Tail,
}

impl SegmentSummary {
    /// The LSN the next record after this segment must carry.
    pub fn next_lsn(&self) -> u64 {
        self.last_lsn.map_or(self.header.first_lsn, |l| l.saturating_add(1))
    }

    /// For a segment that is not the last of its log: it was synced before the next one was
    /// created, so nothing may follow its last frame; a tail there is corruption.
    pub fn require_clean(&self) -> Result<(), DecodeError> {
        let segment = self.header.segment_id;
        match &self.tail {
            Tail::Clean => Ok(()),
            Tail::Zeroed { offset, len } => {
                Err(DecodeError::new(segment, *offset, ErrorKind::TrailingBytes { len: *len }))
            }
            Tail::Torn { offset, kind, .. } => Err(DecodeError::new(segment, *offset, *kind)),
        }
    }
}

/// Scans one segment's bytes, calling `on_record(record, offset)` for each valid record in
/// order. `segment` is the id used in errors before the header has been read (normally the id
/// from the file name). Never panics, whatever `bytes` holds.
pub fn scan(
    segment: u64,
    bytes: &[u8],
    expect: Expect,
    mut on_record: impl FnMut(Record<'_>, u64),
) -> Result<SegmentSummary, DecodeError> {
    let header = SegmentHeader::decode(bytes).map_err(|(at, kind)| DecodeError::new(segment, at, kind))?;
    check_header(segment, &header, expect)?;
    let segment = header.segment_id;
    let epoch = header.epoch;
    let len = bytes.len() as u64;
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut next_lsn = header.first_lsn;
    let mut records = 0u64;
    let mut last_lsn = None;
    let tail = loop {
        let Some(rest) = bytes.get(offset..).filter(|r| !r.is_empty()) else {
            break Tail::Clean;
        };
        match frame::decode(rest, epoch) {
            Ok((record, n)) => {
                if record.lsn != next_lsn {
                    let kind = ErrorKind::LsnGap { expected: next_lsn, found: record.lsn };
                    return Err(DecodeError::new(segment, offset as u64, kind));
                }
                on_record(record, offset as u64);
                records += 1;
                last_lsn = Some(record.lsn);
                // Wrapping, not saturating: after LSN u64::MAX the expected LSN is 0, which no
                // valid frame carries, so a second record with u64::MAX is reported as a gap
                // instead of being accepted as a duplicate.
                next_lsn = record.lsn.wrapping_add(1);
                offset += n;
            }
            Err(kind) if !kind.could_be_torn_write() => {
                return Err(DecodeError::new(segment, offset as u64, kind));
            }
            Err(kind) => {
                if let Some(valid) = find_valid_frame(bytes, offset + FRAME_ALIGN_BYTES, epoch, next_lsn) {
                    let mut err = DecodeError::new(segment, offset as u64, kind);
                    err.valid_data_at = Some(valid as u64);
                    return Err(err);
                }
                let rest_len = len - offset as u64;
                if rest.iter().all(|b| *b == 0) {
                    break Tail::Zeroed { offset: offset as u64, len: rest_len };
                }
                break Tail::Torn { offset: offset as u64, len: rest_len, kind };
            }
        }
    };
    Ok(SegmentSummary { header, records, last_lsn, valid_end: offset as u64, tail })
}

fn check_header(segment: u64, header: &SegmentHeader, expect: Expect) -> Result<(), DecodeError> {
    if let Some(expected) = expect.segment_id.filter(|e| *e != header.segment_id) {
        let kind = ErrorKind::SegmentIdMismatch { expected, found: header.segment_id };
        return Err(DecodeError::new(segment, 16, kind));
    }
    if let Some(expected) = expect.epoch.filter(|e| *e != header.epoch) {
        let kind = ErrorKind::EpochMismatch { expected, found: header.epoch };
        return Err(DecodeError::new(segment, EPOCH_AT as u64, kind));
    }
    if let Some(expected) = expect.first_lsn.filter(|e| *e != header.first_lsn) {
        let kind = ErrorKind::FirstLsnMismatch { expected, found: header.first_lsn };
        return Err(DecodeError::new(segment, 24, kind));
    }
    if header.first_lsn == 0 {
        return Err(DecodeError::new(segment, 24, ErrorKind::ZeroLsn));
    }
    Ok(())
}

/// The offset of the first valid frame at or after `from` (frames are aligned, so only aligned
/// offsets are tried) whose LSN could follow the damage: at least `next_lsn` (the damaged
/// frame's) and no further ahead than the bytes left could hold. The LSN bound keeps a crafted
/// tail from making the search checksum large candidate frames at every offset.
fn find_valid_frame(bytes: &[u8], from: usize, epoch: u64, next_lsn: u64) -> Option<usize> {
    let from = from.next_multiple_of(FRAME_ALIGN_BYTES);
    let frames_left = (bytes.len().saturating_sub(from) / frame::FRAME_HEADER_BYTES) as u64;
    let lsn_max = next_lsn.saturating_add(frames_left);
    (from..bytes.len()).step_by(FRAME_ALIGN_BYTES).find(|at| {
        bytes.get(*at..).is_some_and(|b| {
            frame::peek_lsn(b).is_some_and(|lsn| (next_lsn..=lsn_max).contains(&lsn)) && frame::is_valid_frame(b, epoch)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::RecordKind;

    const EPOCH: u64 = 77;

    fn segment(first_lsn: u64, payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let header = SegmentHeader { segment_id: 3, first_lsn, epoch: EPOCH };
        let mut v = header.encode().to_vec();
        let mut offsets = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            offsets.push(v.len());
            frame::encode(&mut v, EPOCH, first_lsn + i as u64, RecordKind::StepStarted, p).unwrap();
        }
        (v, offsets)
    }

    fn lsns(bytes: &[u8]) -> Result<(Vec<u64>, SegmentSummary), DecodeError> {
        let mut seen = Vec::new();
        let s = scan(3, bytes, Expect::default(), |r, _| seen.push(r.lsn))?;
        Ok((seen, s))
    }

    #[test]
    fn clean_segment_reads_every_record() {
        let (v, _) = segment(10, &[b"a", b"bb", b"ccc"]);
        let (seen, s) = lsns(&v).unwrap();
        assert_eq!(seen, vec![10, 11, 12]);
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(s.valid_end, v.len() as u64);
        assert_eq!(s.next_lsn(), 13);
    }

    #[test]
    fn empty_segment_is_clean_and_next_lsn_is_its_first() {
        let (v, _) = segment(5, &[]);
        let (seen, s) = lsns(&v).unwrap();
        assert!(seen.is_empty());
        assert_eq!(s.next_lsn(), 5);
    }

    #[test]
    fn cut_last_frame_is_a_torn_tail_keeping_earlier_records() {
        let (v, offsets) = segment(1, &[b"one", b"two", b"three-three"]);
        let last = offsets[2];
        for cut in last + 1..v.len() {
            let (seen, s) = lsns(&v[..cut]).unwrap();
            assert_eq!(seen, vec![1, 2]);
            assert_eq!(s.valid_end, last as u64);
            assert!(matches!(s.tail, Tail::Torn { offset, .. } if offset == last as u64), "cut {cut}: {:?}", s.tail);
        }
    }

    #[test]
    fn zeros_after_the_last_frame_are_a_zeroed_tail() {
        let (mut v, _) = segment(1, &[b"one"]);
        let end = v.len();
        v.extend_from_slice(&[0; 4096]);
        let (_, s) = lsns(&v).unwrap();
        assert_eq!(s.tail, Tail::Zeroed { offset: end as u64, len: 4096 });
        assert!(s.require_clean().is_err());
    }

    #[test]
    fn damage_followed_by_valid_frames_is_corruption_at_the_damage() {
        let (mut v, offsets) = segment(1, &[b"one", b"two", b"three"]);
        v[offsets[1] + 30] ^= 0x10;
        let err = lsns(&v).unwrap_err();
        assert_eq!(err.offset, offsets[1] as u64);
        assert_eq!(err.valid_data_at, Some(offsets[2] as u64));
        assert!(matches!(err.kind, ErrorKind::FrameChecksum { .. }));
    }

    #[test]
    fn lsn_gap_is_corruption() {
        let header = SegmentHeader { segment_id: 3, first_lsn: 1, epoch: EPOCH };
        let mut v = header.encode().to_vec();
        frame::encode(&mut v, EPOCH, 1, RecordKind::StepStarted, b"a").unwrap();
        let at = v.len();
        frame::encode(&mut v, EPOCH, 3, RecordKind::StepStarted, b"b").unwrap();
        let err = lsns(&v).unwrap_err();
        assert_eq!((err.offset, err.kind), (at as u64, ErrorKind::LsnGap { expected: 2, found: 3 }));
    }

    #[test]
    fn expectations_are_checked() {
        let (v, _) = segment(1, &[b"x"]);
        let e = |expect| scan(3, &v, expect, |_, _| {}).unwrap_err();
        let err = e(Expect { epoch: Some(EPOCH + 1), ..Expect::default() });
        assert_eq!(err.offset, EPOCH_AT as u64);
        assert!(matches!(err.kind, ErrorKind::EpochMismatch { .. }));
        assert!(matches!(
            e(Expect { segment_id: Some(4), ..Expect::default() }).kind,
            ErrorKind::SegmentIdMismatch { .. }
        ));
        assert!(matches!(
            e(Expect { first_lsn: Some(2), ..Expect::default() }).kind,
            ErrorKind::FirstLsnMismatch { .. }
        ));
    }
}
