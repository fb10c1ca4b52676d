//! Reading a whole segment: header, then frames, then a verdict on whatever follows them.
//!
//! [`scan`] is the single place where the format decides between "end of data" and
//! "corruption"; the journal's open path, `sagalog wal verify` and the fuzz targets all go
//! through it, so they cannot disagree.
//!
//! The rule: after the last valid frame, the rest of the segment is either
//! - nothing ([`Tail::Clean`]);
//! - zeros only ([`Tail::Zeroed`]), which a preallocating or crashed file system can leave;
//! - an invalid frame with **nothing after it that proves it was synced**: the remains of an
//!   append that never completed ([`Tail::Torn`]), or, in a version 2 segment, of a last batch
//!   whose pages reached the disk out of order ([`Tail::Unsynced`]);
//!
//! and anything else is corruption, reported as a [`DecodeError`] with `valid_data_at` set.
//! What counts as proof depends on the segment's format version:
//! - version 1: any valid frame after the damage (the format cannot tell more);
//! - version 2: a valid frame after the damage whose sync watermark is at or past the LSN the
//!   damaged frame should carry: it was written after an `fdatasync` covering that record
//!   returned, so the damage hit synced data. Valid frames with a lower watermark belong to
//!   the same never-synced batch (or a later unsynced one) and are cut with it. In a version 2
//!   segment a frame with a valid checksum but the wrong LSN or record version is debris too (a
//!   stale block of an older segment of the same log), judged by the same proof.
//!
//! Treating proven damage as the end of the log would silently drop acknowledged records.
//! Whether a zeroed, torn or unsynced tail is acceptable depends on where the segment sits in
//! the log; that is the caller's decision ([`SegmentSummary::require_clean`]).

use crate::error::{DecodeError, ErrorKind};
use crate::frame::{self, FRAME_ALIGN_BYTES, RECORD_VERSION, RECORD_VERSION_1, Record};
use crate::header::{EPOCH_AT, FORMAT_VERSION_1, SEGMENT_HEADER_BYTES, SegmentHeader};

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
    /// Version 2 segments only: damage at `offset` followed by valid frames (the first at
    /// `valid_at`), none of whose sync watermarks reaches the damaged record: a never-synced
    /// batch whose later pages reached the disk but not an earlier one. Nothing from `offset`
    /// on was ever durable, so, like a torn tail, it is cut there.
    Unsynced { offset: u64, len: u64, kind: ErrorKind, valid_at: u64 },
}

/// The result of scanning a segment that is not corrupt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub header: SegmentHeader,
    /// The header's format version: which frames and which damage rules apply.
    pub format_version: u16,
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
            Tail::Torn { offset, kind, .. } | Tail::Unsynced { offset, kind, .. } => {
                Err(DecodeError::new(segment, *offset, *kind))
            }
        }
    }
}

/// Scans one segment's bytes, calling `on_record(record, offset)` for each valid record in
/// order. `segment` is the id used in errors before the header has been read (normally the id
/// from the file name). Never panics, whatever `bytes` holds. The search past damage (for
/// proof that it hit synced data) runs only when an invalid frame is met, never on a clean
/// segment.
pub fn scan(
    segment: u64,
    bytes: &[u8],
    expect: Expect,
    mut on_record: impl FnMut(Record<'_>, u64),
) -> Result<SegmentSummary, DecodeError> {
    let (header, format_version) =
        SegmentHeader::decode_versioned(bytes).map_err(|(at, kind)| DecodeError::new(segment, at, kind))?;
    check_header(segment, &header, expect)?;
    let v1 = format_version == FORMAT_VERSION_1;
    let record_version = if v1 { RECORD_VERSION_1 } else { RECORD_VERSION };
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
        let kind = match frame::decode(rest, epoch) {
            Ok((record, n)) if record.version == record_version && record.lsn == next_lsn => {
                on_record(record, offset as u64);
                records += 1;
                last_lsn = Some(record.lsn);
                // Wrapping, not saturating: after LSN u64::MAX the expected LSN is 0, which no
                // valid frame carries, so a second record with u64::MAX is reported as a gap
                // instead of being accepted as a duplicate.
                next_lsn = record.lsn.wrapping_add(1);
                offset += n;
                continue;
            }
            Ok((record, _)) => {
                let kind = if record.version != record_version {
                    ErrorKind::RecordVersionMismatch { found: record.version, segment_version: format_version }
                } else {
                    ErrorKind::LsnGap { expected: next_lsn, found: record.lsn }
                };
                // Version 1: a complete frame with a valid checksum is never debris. Version 2:
                // it may be a stale block of an older segment of this log where the last
                // batch's page never arrived; the proof below decides.
                if v1 {
                    return Err(DecodeError::new(segment, offset as u64, kind));
                }
                kind
            }
            Err(kind) if !kind.could_be_torn_write() => {
                return Err(DecodeError::new(segment, offset as u64, kind));
            }
            Err(kind) => kind,
        };
        let rest_len = len - offset as u64;
        let at = offset as u64;
        if v1 {
            if let Some(valid) = find_valid_frame_v1(bytes, offset + FRAME_ALIGN_BYTES, epoch, next_lsn) {
                let mut err = DecodeError::new(segment, at, kind);
                err.valid_data_at = Some(valid as u64);
                return Err(err);
            }
        } else {
            let found = find_sync_proof(bytes, offset, epoch, next_lsn);
            if let Some((valid, synced)) = found.proof {
                let mut err = DecodeError::new(segment, at, kind);
                err.valid_data_at = Some(valid as u64);
                err.synced_lsn_at_valid = Some(synced);
                return Err(err);
            }
            if let Some(valid) = found.first_valid {
                break Tail::Unsynced { offset: at, len: rest_len, kind, valid_at: valid as u64 };
            }
        }
        if rest.iter().all(|b| *b == 0) {
            break Tail::Zeroed { offset: at, len: rest_len };
        }
        break Tail::Torn { offset: at, len: rest_len, kind };
    };
    Ok(SegmentSummary { header, format_version, records, last_lsn, valid_end: offset as u64, tail })
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

/// The LSNs a frame found at or after `from` may carry to count: at least `next_lsn` (the
/// damaged frame's) and no further ahead than the bytes left could hold. The bound costs
/// nothing for real logs (a record after the damage carries a later LSN) and keeps a crafted
/// tail from making the search checksum large candidate frames at every offset.
fn candidates(bytes: &[u8], from: usize, next_lsn: u64) -> impl Iterator<Item = (usize, &[u8])> {
    let from = from.next_multiple_of(FRAME_ALIGN_BYTES);
    let frames_left = (bytes.len().saturating_sub(from) / frame::FRAME_HEADER_BYTES) as u64;
    let lsn_max = next_lsn.saturating_add(frames_left);
    (from..bytes.len()).step_by(FRAME_ALIGN_BYTES).filter_map(move |at| {
        let b = bytes.get(at..)?;
        frame::peek_lsn(b).filter(|lsn| (next_lsn..=lsn_max).contains(lsn)).map(|_| (at, b))
    })
}

/// Version 1: the offset of the first valid version 1 frame at or after `from` (frames are
/// aligned, so only aligned offsets are tried) whose LSN could follow the damage.
fn find_valid_frame_v1(bytes: &[u8], from: usize, epoch: u64, next_lsn: u64) -> Option<usize> {
    candidates(bytes, from, next_lsn)
        .find(|(_, b)| frame::valid_frame(b, epoch, RECORD_VERSION_1).is_some())
        .map(|c| c.0)
}

/// What the version 2 search past damage found.
struct Found {
    /// The first valid frame whose sync watermark is at or past the damaged record, and that
    /// watermark: proof that the damage hit synced data.
    proof: Option<(usize, u64)>,
    /// The first valid frame (proof or not) whose LSN could follow the damage.
    first_valid: Option<usize>,
}

/// Version 2: looks at every aligned offset from `from` (the damage itself included, since in
/// a version 2 segment a valid frame with the wrong LSN is debris) for a valid version 2 frame
/// whose watermark reaches `next_lsn`, the LSN of the damaged record.
fn find_sync_proof(bytes: &[u8], from: usize, epoch: u64, next_lsn: u64) -> Found {
    let mut found = Found { proof: None, first_valid: None };
    for (at, b) in candidates(bytes, from, next_lsn) {
        let Some(record) = frame::valid_frame(b, epoch, RECORD_VERSION) else { continue };
        found.first_valid.get_or_insert(at);
        if let Some(synced) = record.synced_lsn.filter(|s| *s >= next_lsn) {
            found.proof = Some((at, synced));
            break;
        }
    }
    found
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

    /// A version 2 segment of `batches`: each batch's frames carry the LSN before the batch as
    /// their sync watermark (what a `sync = always` writer does). Returns the bytes and the
    /// offsets of every frame.
    fn segment_v2(first_lsn: u64, batches: &[&[&[u8]]]) -> (Vec<u8>, Vec<usize>) {
        let header = SegmentHeader { segment_id: 3, first_lsn, epoch: EPOCH };
        let mut v = header.encode_v2().to_vec();
        let mut offsets = Vec::new();
        let mut lsn = first_lsn;
        for batch in batches {
            let synced = lsn - 1;
            for p in *batch {
                offsets.push(v.len());
                frame::encode_v2(&mut v, EPOCH, lsn, RecordKind::StepStarted, p, synced).unwrap();
                lsn += 1;
            }
        }
        (v, offsets)
    }

    #[test]
    fn v2_hole_in_the_last_batch_is_an_unsynced_tail_cut_at_the_hole() {
        let (mut v, offsets) = segment_v2(1, &[&[b"one", b"two"], &[b"three", b"four", b"five"]]);
        // The first frame of the last batch never reached the disk; the later ones did.
        v[offsets[2]..offsets[3]].fill(0);
        let (seen, s) = lsns(&v).unwrap();
        assert_eq!(seen, vec![1, 2], "only the synced prefix is kept");
        assert_eq!(s.valid_end, offsets[2] as u64);
        let len = (v.len() - offsets[2]) as u64;
        let expected =
            Tail::Unsynced { offset: offsets[2] as u64, len, kind: ErrorKind::Zeroed, valid_at: offsets[3] as u64 };
        assert_eq!(s.tail, expected);
        assert!(s.require_clean().is_err(), "a sealed segment never has an unsynced tail");
    }

    #[test]
    fn v2_damage_before_a_later_batch_is_corruption_with_its_proof() {
        let (mut v, offsets) = segment_v2(1, &[&[b"one", b"two"], &[b"three"], &[b"four"]]);
        // Record 2 was synced before batch 3 (record 3's watermark is 2) was written.
        v[offsets[1] + 26] ^= 0x01;
        let err = lsns(&v).unwrap_err();
        assert_eq!(
            (err.offset, err.valid_data_at, err.synced_lsn_at_valid),
            (offsets[1] as u64, Some(offsets[2] as u64), Some(2))
        );
        assert!(matches!(err.kind, ErrorKind::FrameChecksum { .. }));
        assert!(err.to_string().contains("synced data"), "{err}");
    }

    #[test]
    fn v2_stale_frame_of_an_older_segment_is_debris() {
        let (mut v, offsets) = segment_v2(10, &[&[b"ten"], &[b"eleven", b"twelve"]]);
        // Where record 11 should be, a valid frame of this log with an older LSN (a block of an
        // older segment, never overwritten): not a record, and no proof of synced damage.
        let mut stale = Vec::new();
        frame::encode_v2(&mut stale, EPOCH, 4, RecordKind::StepStarted, b"old!!!", 3).unwrap();
        v[offsets[1]..offsets[1] + stale.len()].copy_from_slice(&stale);
        let (seen, s) = lsns(&v).unwrap();
        assert_eq!(seen, vec![10]);
        // Record 12 after it is valid but of the same unsynced batch (watermark 10): cut too.
        let kind = ErrorKind::LsnGap { expected: 11, found: 4 };
        let len = (v.len() - offsets[1]) as u64;
        assert_eq!(s.tail, Tail::Unsynced { offset: offsets[1] as u64, len, kind, valid_at: offsets[2] as u64 });
    }

    #[test]
    fn v1_rules_are_unchanged_in_v1_segments() {
        // A v2 frame in a v1 segment is refused, never read or cut as debris.
        let (mut v, _) = segment(1, &[b"a"]);
        let at = v.len();
        frame::encode_v2(&mut v, EPOCH, 2, RecordKind::StepStarted, b"b", 1).unwrap();
        let err = lsns(&v).unwrap_err();
        assert_eq!(
            (err.offset, err.kind),
            (at as u64, ErrorKind::RecordVersionMismatch { found: 2, segment_version: 1 })
        );
    }
}
