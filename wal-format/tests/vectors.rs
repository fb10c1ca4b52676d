//! Golden vectors: segment files written once, by format version 1, that must decode the same
//! way forever.
//!
//! The files in `wal-format/vectors/` are never edited or regenerated. A new format version
//! adds new files (and a new generator); the tests below keep proving that every file ever
//! written still decodes to exactly what it decoded to on the day it was written. The
//! fingerprint table catches an accidental edit of a vector before any decoding is compared.
//!
//! The generator is an ignored test, run by hand only when a vector is added:
//! `cargo test -p sagalog-wal-format --test vectors -- --ignored generate`. It refuses to
//! overwrite a file whose bytes differ from what it would write.

use std::path::{Path, PathBuf};

use sagalog_wal_format::error::{DecodeError, ErrorKind};
use sagalog_wal_format::segment::{self, Expect, SegmentSummary, Tail};
use sagalog_wal_format::{RecordKind, SegmentHeader, frame};

/// The epoch of the log the v1 vectors belong to.
const EPOCH: u64 = 0x5a6a_10c0_0000_0001;
/// The epoch of `v1-other-epoch.wal`: a segment of a different log.
const FOREIGN_EPOCH: u64 = 0x0bad_e90c_0000_0002;

// Payloads are hand-encoded MessagePack maps (fixmap 0x80|n, fixstr 0xa0|len, positive
// fixint), so `sagalog wal dump` shows them as documents. Their schema is the engine's; the
// format only carries the bytes.

/// `{"saga":"demo-1","steps":2}`
const SUBMITTED_DEMO_1: &[u8] = b"\x82\xa4saga\xa6demo-1\xa5steps\x02";
/// `{"saga":"demo-1","step":0}`
const STARTED_STEP_0: &[u8] = b"\x82\xa4saga\xa6demo-1\xa4step\x00";
/// `{"saga":"demo-1","step":0,"error":"timeout"}`
const FAILED_STEP_0: &[u8] = b"\x83\xa4saga\xa6demo-1\xa4step\x00\xa5error\xa7timeout";
/// `{"saga":"demo-1","step":0,"attempt":2}`
const SUCCEEDED_STEP_0: &[u8] = b"\x83\xa4saga\xa6demo-1\xa4step\x00\xa7attempt\x02";
/// `{"saga":"demo-1","outcome":"completed"}`
const FINISHED_DEMO_1: &[u8] = b"\x82\xa4saga\xa6demo-1\xa7outcome\xa9completed";
/// `{"saga":"demo-2","steps":1}`
const SUBMITTED_DEMO_2: &[u8] = b"\x82\xa4saga\xa6demo-2\xa5steps\x01";
/// `{"lsn":5}`
const CHECKPOINT_AT_5: &[u8] = b"\x81\xa3lsn\x05";

/// The records of `v1-valid.wal`, segment 1, in order.
const VALID_RECORDS: [(u64, RecordKind, &[u8]); 5] = [
    (1, RecordKind::SagaSubmitted, SUBMITTED_DEMO_1),
    (2, RecordKind::StepStarted, STARTED_STEP_0),
    (3, RecordKind::StepFailed, FAILED_STEP_0),
    (4, RecordKind::StepSucceeded, SUCCEEDED_STEP_0),
    (5, RecordKind::SagaFinished, FINISHED_DEMO_1),
];
/// Byte offsets of the frames of `VALID_RECORDS`, and the offset just past the last one.
const VALID_OFFSETS: [u64; 5] = [64, 112, 160, 224, 280];
const VALID_END: u64 = 336;

/// The record whose frame is cut short at the end of `v1-torn-tail.wal`.
const TORN_RECORD: (u64, RecordKind, &[u8]) = (6, RecordKind::SagaSubmitted, SUBMITTED_DEMO_2);
/// How many bytes of that 48-byte frame were kept: its header and part of its payload.
const TORN_KEPT_BYTES: usize = 37;

/// The middle record of `v1-valid.wal`, and the bit of its payload flipped in
/// `v1-bitflip-mid.wal`.
const BITFLIP_RECORD: usize = 2;
const BITFLIP_PAYLOAD_BYTE: usize = 9;
const BITFLIP_MASK: u8 = 0x04;

/// Zero bytes appended to the valid segment in `v1-zero-tail.wal`.
const ZERO_TAIL_BYTES: usize = 4096;

/// The records of `v1-other-epoch.wal`, segment 2, continuing `v1-valid.wal`'s LSNs.
const OTHER_EPOCH_RECORDS: [(u64, RecordKind, &[u8]); 2] =
    [(6, RecordKind::SagaSubmitted, SUBMITTED_DEMO_2), (7, RecordKind::Checkpoint, CHECKPOINT_AT_5)];

/// Every vector file, its length and the crc32fast hash of its bytes. A vector is never
/// edited; if one of these fails, restore the file from version control.
const FINGERPRINTS: [(&str, u64, u32); 5] = [
    ("v1-valid.wal", 336, 0x3435_ebef),
    ("v1-torn-tail.wal", 373, 0xd18b_4a57),
    ("v1-bitflip-mid.wal", 336, 0x57b6_a96e),
    ("v1-zero-tail.wal", 4432, 0x97c2_48d8),
    ("v1-other-epoch.wal", 144, 0x479d_90c3),
];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn read_vector(name: &str) -> Vec<u8> {
    let path = vectors_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read vector {}: {e}", path.display()))
}

/// A decoded record, owned, so scans can be compared with `assert_eq!`.
type Seen = (u64, RecordKind, Vec<u8>, u64);

fn scan(segment: u64, bytes: &[u8], expect: Expect) -> (Vec<Seen>, Result<SegmentSummary, DecodeError>) {
    let mut seen = Vec::new();
    let result =
        segment::scan(segment, bytes, expect, |r, offset| seen.push((r.lsn, r.kind, r.payload.to_vec(), offset)));
    (seen, result)
}

fn expected_valid_records() -> Vec<Seen> {
    VALID_RECORDS
        .iter()
        .zip(VALID_OFFSETS)
        .map(|((lsn, kind, payload), at)| (*lsn, *kind, payload.to_vec(), at))
        .collect()
}

fn valid_header() -> SegmentHeader {
    SegmentHeader { segment_id: 1, first_lsn: 1, epoch: EPOCH }
}

/// The exact bytes of every vector, as format version 1 writes them.
fn build_vectors() -> Vec<(&'static str, Vec<u8>)> {
    let encode = |out: &mut Vec<u8>, epoch: u64, (lsn, kind, payload): (u64, RecordKind, &[u8])| {
        frame::encode(out, epoch, lsn, kind, payload).expect("vector records are encodable");
    };
    let mut valid = valid_header().encode().to_vec();
    for record in VALID_RECORDS {
        encode(&mut valid, EPOCH, record);
    }

    let mut torn = valid.clone();
    encode(&mut torn, EPOCH, TORN_RECORD);
    torn.truncate(valid.len() + TORN_KEPT_BYTES);

    let mut bitflip = valid.clone();
    let flip_at = VALID_OFFSETS[BITFLIP_RECORD] as usize + frame::FRAME_HEADER_BYTES + BITFLIP_PAYLOAD_BYTE;
    bitflip[flip_at] ^= BITFLIP_MASK;

    let mut zero_tail = valid.clone();
    zero_tail.resize(valid.len() + ZERO_TAIL_BYTES, 0);

    let mut other_epoch = SegmentHeader { segment_id: 2, first_lsn: 6, epoch: FOREIGN_EPOCH }.encode().to_vec();
    for record in OTHER_EPOCH_RECORDS {
        encode(&mut other_epoch, FOREIGN_EPOCH, record);
    }

    vec![
        ("v1-valid.wal", valid),
        ("v1-torn-tail.wal", torn),
        ("v1-bitflip-mid.wal", bitflip),
        ("v1-zero-tail.wal", zero_tail),
        ("v1-other-epoch.wal", other_epoch),
    ]
}

/// Writes the vectors that do not exist yet. Run by hand, never in CI; refuses to change an
/// existing vector, because vectors are never edited.
#[test]
#[ignore = "writes wal-format/vectors/; run by hand only when adding a vector"]
fn generate_vectors() {
    std::fs::create_dir_all(vectors_dir()).unwrap();
    for (name, bytes) in build_vectors() {
        let path = vectors_dir().join(name);
        match std::fs::read(&path) {
            Ok(existing) => assert_eq!(existing, bytes, "{name} exists with other bytes; vectors are never edited"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::write(&path, &bytes).unwrap(),
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        }
        println!("{name}: {} bytes, crc32 {:#010x}", bytes.len(), crc32fast::hash(&bytes));
    }
}

/// No vector has been edited: each file has the length and hash it was written with.
#[test]
fn vectors_have_their_recorded_fingerprints() {
    for (name, len, crc) in FINGERPRINTS {
        let bytes = read_vector(name);
        assert_eq!((bytes.len() as u64, crc32fast::hash(&bytes)), (len, crc), "{name} was edited; restore it");
    }
}

/// Every file in `vectors/` is pinned by a fingerprint, so none can be added without one.
#[test]
fn every_vector_file_has_a_fingerprint() {
    for entry in std::fs::read_dir(vectors_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".wal") {
            assert!(FINGERPRINTS.iter().any(|(n, _, _)| *n == name), "{name} has no fingerprint");
        }
    }
}

/// Today's encoder still writes version 1 byte for byte: same header, frames, checksums and
/// padding as on the day the vectors were written. (When a new version is written, this test
/// moves to that version's vectors; the decoding tests below stay.)
#[test]
fn the_encoder_still_writes_the_v1_vectors() {
    for (name, bytes) in build_vectors() {
        assert!(bytes == read_vector(name), "{name}: the encoder's output differs from the vector");
    }
}

/// `v1-valid.wal` decodes to exactly its five records, at their offsets, with a clean tail.
#[test]
fn valid_segment_decodes_to_its_records() {
    let bytes = read_vector("v1-valid.wal");
    let expect = Expect { segment_id: Some(1), first_lsn: Some(1), epoch: Some(EPOCH) };
    let (seen, result) = scan(1, &bytes, expect);
    assert_eq!(seen, expected_valid_records());
    let summary = result.unwrap();
    assert_eq!(
        summary,
        SegmentSummary {
            header: valid_header(),
            records: 5,
            last_lsn: Some(5),
            valid_end: VALID_END,
            tail: Tail::Clean
        }
    );
    assert_eq!(summary.next_lsn(), 6);
    summary.require_clean().unwrap();
}

/// A last frame cut short keeps every earlier record and is a torn tail at that frame's offset,
/// which only the last segment of a log may have.
#[test]
fn torn_tail_keeps_earlier_records_and_ends_at_the_cut_frame() {
    let bytes = read_vector("v1-torn-tail.wal");
    let (seen, result) = scan(1, &bytes, Expect::default());
    assert_eq!(seen, expected_valid_records());
    let summary = result.unwrap();
    let kind = ErrorKind::FrameTruncated { needed: 48, available: TORN_KEPT_BYTES as u64 };
    assert_eq!(summary.tail, Tail::Torn { offset: VALID_END, len: TORN_KEPT_BYTES as u64, kind });
    assert_eq!((summary.valid_end, summary.last_lsn, summary.next_lsn()), (VALID_END, Some(5), 6));
    assert_eq!(summary.require_clean(), Err(DecodeError::new(1, VALID_END, kind)));
}

/// A flipped payload bit in the middle record, with valid records after it, is corruption at
/// that record, never the end of the log.
#[test]
fn bitflip_in_a_middle_record_is_corruption_not_a_tail() {
    let bytes = read_vector("v1-bitflip-mid.wal");
    let (seen, result) = scan(1, &bytes, Expect::default());
    assert_eq!(seen, expected_valid_records()[..BITFLIP_RECORD].to_vec(), "records before the damage are delivered");
    let err = result.unwrap_err();
    let mut expected = DecodeError::new(
        1,
        VALID_OFFSETS[BITFLIP_RECORD],
        ErrorKind::FrameChecksum { stored: 0xcedf_4a45, computed: 0xf540_e901 },
    );
    expected.valid_data_at = Some(VALID_OFFSETS[BITFLIP_RECORD + 1]);
    assert_eq!(err, expected);
}

/// Zeros after the last record are a zeroed tail covering exactly the zero bytes.
#[test]
fn zero_tail_is_reported_as_zeroed() {
    let bytes = read_vector("v1-zero-tail.wal");
    let (seen, result) = scan(1, &bytes, Expect::default());
    assert_eq!(seen, expected_valid_records());
    let summary = result.unwrap();
    assert_eq!(summary.tail, Tail::Zeroed { offset: VALID_END, len: ZERO_TAIL_BYTES as u64 });
    assert_eq!(summary.valid_end, VALID_END);
    let trailing = ErrorKind::TrailingBytes { len: ZERO_TAIL_BYTES as u64 };
    assert_eq!(summary.require_clean(), Err(DecodeError::new(1, VALID_END, trailing)));
}

/// A segment of another log decodes on its own, but is refused (at the epoch field) as the
/// segment that would follow `v1-valid.wal`, although its id and first LSN fit.
#[test]
fn segment_of_another_epoch_is_refused_as_a_successor() {
    let bytes = read_vector("v1-other-epoch.wal");
    let (seen, result) = scan(2, &bytes, Expect::default());
    let records: Vec<Seen> = OTHER_EPOCH_RECORDS
        .iter()
        .zip([64, 112])
        .map(|((lsn, kind, payload), at)| (*lsn, *kind, payload.to_vec(), at))
        .collect();
    assert_eq!(seen, records);
    let summary = result.unwrap();
    assert_eq!(summary.header, SegmentHeader { segment_id: 2, first_lsn: 6, epoch: FOREIGN_EPOCH });
    assert_eq!((summary.tail, summary.next_lsn()), (Tail::Clean, 8));

    let successor = Expect { epoch: Some(EPOCH), segment_id: Some(2), first_lsn: Some(6) };
    let (seen, result) = scan(2, &bytes, successor);
    assert!(seen.is_empty(), "no record of a refused segment is delivered");
    let kind = ErrorKind::EpochMismatch { expected: EPOCH, found: FOREIGN_EPOCH };
    assert_eq!(result.unwrap_err(), DecodeError::new(2, 32, kind));
}

/// The raw bytes of `v1-valid.wal` sit exactly where the README's byte tables put them, and
/// its first frame's checksum covers exactly what the README says it covers.
#[test]
fn valid_segment_bytes_follow_the_spec_tables() {
    let b = read_vector("v1-valid.wal");
    let u16_at = |at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let zero = |range: std::ops::Range<usize>| b[range].iter().all(|x| *x == 0);

    assert_eq!(&b[0..8], b"SAGAWAL\0");
    assert_eq!((u16_at(8), u16_at(10)), (1, 64), "format version, header length");
    assert!(zero(12..16) && zero(40..60), "header reserved bytes");
    assert_eq!((u64_at(16), u64_at(24), u64_at(32)), (1, 1, EPOCH), "segment id, first lsn, epoch");
    assert_eq!(u32_at(60), crc32fast::hash(&b[0..60]), "header crc covers bytes 0..60");

    let (f, payload) = (64, SUBMITTED_DEMO_1);
    let end = f + 48;
    assert_eq!(u32_at(f) as usize, payload.len(), "payload length");
    assert_eq!((u64_at(f + 8), b[f + 16], b[f + 17]), (1, RecordKind::SagaSubmitted as u8, 1), "lsn, kind, version");
    assert!(zero(f + 18..f + 24), "frame reserved bytes");
    assert_eq!(&b[f + 24..f + 24 + payload.len()], payload);
    assert!(zero(f + 24 + payload.len()..end), "padding to a multiple of 8");
    let mut crc = crc32fast::Hasher::new();
    crc.update(&EPOCH.to_le_bytes());
    crc.update(&b[f..f + 4]);
    crc.update(&b[f + 8..end]);
    assert_eq!(u32_at(f + 4), crc.finalize(), "frame crc: epoch, bytes 0..4, bytes 8.., payload, padding");
}
