//! Golden vectors: segment files written once, by format versions 1 and 2, that must decode the
//! same way forever.
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
use sagalog_wal_format::{FORMAT_VERSION, FORMAT_VERSION_1, RecordKind, SegmentHeader, frame};

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

/// The epoch of the log the v2 vectors belong to.
const EPOCH_V2: u64 = 0x5a6a_10c0_0002_0001;

/// How `v2-valid.wal`'s records were group-committed: (records in the batch, the sync
/// watermark its frames carry). Each batch's watermark is the last LSN of the batch before,
/// as a `sync = always` writer sets it.
const V2_BATCHES: [(usize, u64); 3] = [(2, 0), (2, 2), (1, 4)];

/// The never-acknowledged last batch of `v2-hole-last-batch.wal`, after the five synced
/// records: its first frame never reached the disk (zeros), the later two did.
const V2_LAST_BATCH: [(u64, RecordKind, &[u8]); 3] = [
    (6, RecordKind::SagaSubmitted, SUBMITTED_DEMO_2),
    (7, RecordKind::StepStarted, STARTED_DEMO_2),
    (8, RecordKind::StepSucceeded, SUCCEEDED_DEMO_2),
];
/// `{"saga":"demo-2","step":0}`
const STARTED_DEMO_2: &[u8] = b"\x82\xa4saga\xa6demo-2\xa4step\x00";
/// `{"saga":"demo-2","step":0,"attempt":1}`
const SUCCEEDED_DEMO_2: &[u8] = b"\x83\xa4saga\xa6demo-2\xa4step\x00\xa7attempt\x01";
/// Offsets of the last batch's frames in `v2-hole-last-batch.wal`, and its end.
const V2_LAST_BATCH_OFFSETS: [u64; 3] = [336, 384, 432];
const V2_HOLE_END: u64 = 488;

/// `v2-damage-synced.wal` flips the same bit as `v1-bitflip-mid.wal` (record 3, of the second
/// batch); `v2-bitflip-last.wal` flips bit 0x04 of byte 9 of record 5's payload (the last batch).
const V2_BITFLIP_LAST_RECORD: usize = 4;

/// Every vector file, its length and the crc32fast hash of its bytes. A vector is never
/// edited; if one of these fails, restore the file from version control.
const FINGERPRINTS: [(&str, u64, u32); 10] = [
    ("v1-valid.wal", 336, 0x3435_ebef),
    ("v1-torn-tail.wal", 373, 0xd18b_4a57),
    ("v1-bitflip-mid.wal", 336, 0x57b6_a96e),
    ("v1-zero-tail.wal", 4432, 0x97c2_48d8),
    ("v1-other-epoch.wal", 144, 0x479d_90c3),
    ("v2-valid.wal", 336, 0xa559_bfa3),
    ("v2-torn-tail.wal", 373, 0x7a67_eac6),
    ("v2-hole-last-batch.wal", 488, 0x9589_29a7),
    ("v2-damage-synced.wal", 336, 0xc6da_fd22),
    ("v2-bitflip-last.wal", 336, 0xa505_1e30),
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

    let mut vectors = vec![
        ("v1-valid.wal", valid),
        ("v1-torn-tail.wal", torn),
        ("v1-bitflip-mid.wal", bitflip),
        ("v1-zero-tail.wal", zero_tail),
        ("v1-other-epoch.wal", other_epoch),
    ];
    vectors.extend(build_v2_vectors());
    vectors
}

/// The exact bytes of the version 2 vectors, as the journal's encoder writes them.
fn build_v2_vectors() -> Vec<(&'static str, Vec<u8>)> {
    let encode = |out: &mut Vec<u8>, synced: u64, (lsn, kind, payload): (u64, RecordKind, &[u8])| {
        frame::encode_v2(out, EPOCH_V2, lsn, kind, payload, synced).expect("vector records are encodable");
    };
    let mut valid = valid_header_v2().encode_v2().to_vec();
    let mut records = VALID_RECORDS.iter();
    for (n, synced) in V2_BATCHES {
        for record in records.by_ref().take(n) {
            encode(&mut valid, synced, *record);
        }
    }

    let mut torn = valid.clone();
    encode(&mut torn, 5, TORN_RECORD);
    torn.truncate(valid.len() + TORN_KEPT_BYTES);

    let mut hole = valid.clone();
    for record in V2_LAST_BATCH {
        encode(&mut hole, 5, record);
    }
    hole[V2_LAST_BATCH_OFFSETS[0] as usize..V2_LAST_BATCH_OFFSETS[1] as usize].fill(0);

    let flip = |record: usize| {
        let mut bytes = valid.clone();
        bytes[VALID_OFFSETS[record] as usize + frame::FRAME_HEADER_BYTES + BITFLIP_PAYLOAD_BYTE] ^= BITFLIP_MASK;
        bytes
    };
    vec![
        ("v2-valid.wal", valid.clone()),
        ("v2-torn-tail.wal", torn),
        ("v2-hole-last-batch.wal", hole),
        ("v2-damage-synced.wal", flip(BITFLIP_RECORD)),
        ("v2-bitflip-last.wal", flip(V2_BITFLIP_LAST_RECORD)),
    ]
}

fn valid_header_v2() -> SegmentHeader {
    SegmentHeader { segment_id: 1, first_lsn: 1, epoch: EPOCH_V2 }
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

/// Today's encoders still write versions 1 and 2 byte for byte: same header, frames, checksums
/// and padding as on the day the vectors were written.
#[test]
fn the_encoders_still_write_the_vectors() {
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
            format_version: FORMAT_VERSION_1,
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

/// A decoded record with its sync watermark, owned.
type SeenV2 = (u64, RecordKind, Vec<u8>, u64, Option<u64>);

fn scan_v2(bytes: &[u8]) -> (Vec<SeenV2>, Result<SegmentSummary, DecodeError>) {
    let mut seen = Vec::new();
    let expect = Expect { segment_id: Some(1), first_lsn: Some(1), epoch: Some(EPOCH_V2) };
    let result = segment::scan(1, bytes, expect, |r, offset| {
        seen.push((r.lsn, r.kind, r.payload.to_vec(), offset, r.synced_lsn));
    });
    (seen, result)
}

/// The records of `v2-valid.wal` with the watermarks of their batches.
fn expected_v2_records() -> Vec<SeenV2> {
    let watermarks = V2_BATCHES.iter().flat_map(|(n, synced)| std::iter::repeat_n(*synced, *n));
    expected_valid_records()
        .into_iter()
        .zip(watermarks)
        .map(|((lsn, kind, payload, at), synced)| (lsn, kind, payload, at, Some(synced)))
        .collect()
}

/// `v2-valid.wal` decodes to the five records of `v1-valid.wal`, at the same offsets, each
/// with its batch's sync watermark, and a clean tail.
#[test]
fn v2_valid_segment_decodes_to_its_records_and_watermarks() {
    let (seen, result) = scan_v2(&read_vector("v2-valid.wal"));
    assert_eq!(seen, expected_v2_records());
    let summary = result.unwrap();
    let expected = SegmentSummary {
        header: valid_header_v2(),
        format_version: FORMAT_VERSION,
        records: 5,
        last_lsn: Some(5),
        valid_end: VALID_END,
        tail: Tail::Clean,
    };
    assert_eq!(summary, expected);
    summary.require_clean().unwrap();
}

/// A version 2 last frame cut short is a torn tail, exactly as in version 1.
#[test]
fn v2_torn_tail_keeps_earlier_records() {
    let (seen, result) = scan_v2(&read_vector("v2-torn-tail.wal"));
    assert_eq!(seen, expected_v2_records());
    let kind = ErrorKind::FrameTruncated { needed: 48, available: TORN_KEPT_BYTES as u64 };
    assert_eq!(result.unwrap().tail, Tail::Torn { offset: VALID_END, len: TORN_KEPT_BYTES as u64, kind });
}

/// The shape that used to need an operator: the last batch's first frame is zeros, its later
/// frames are intact. Their watermark (5) does not reach the lost record (6), so nothing after
/// the hole was ever synced: the tail is cut at the hole and the synced records are kept.
#[test]
fn v2_hole_in_the_last_batch_opens_keeping_the_synced_records() {
    let bytes = read_vector("v2-hole-last-batch.wal");
    let (seen, result) = scan_v2(&bytes);
    assert_eq!(seen, expected_v2_records());
    let summary = result.unwrap();
    let tail = Tail::Unsynced {
        offset: V2_LAST_BATCH_OFFSETS[0],
        len: V2_HOLE_END - V2_LAST_BATCH_OFFSETS[0],
        kind: ErrorKind::Zeroed,
        valid_at: V2_LAST_BATCH_OFFSETS[1],
    };
    assert_eq!((summary.valid_end, summary.next_lsn(), summary.tail), (VALID_END, 6, tail));
    assert_eq!(summary.require_clean(), Err(DecodeError::new(1, VALID_END, ErrorKind::Zeroed)));
}

/// Damage to record 3, of the second batch: record 4 (same batch, watermark 2) is valid but
/// proves nothing; record 5 (watermark 4) was written after record 3 was synced, so this is
/// damage to synced data, refused at record 3 with record 5 as the proof.
#[test]
fn v2_damage_to_synced_data_is_refused_with_its_proof() {
    let (seen, result) = scan_v2(&read_vector("v2-damage-synced.wal"));
    assert_eq!(seen, expected_v2_records()[..BITFLIP_RECORD].to_vec());
    let mut expected = DecodeError::new(
        1,
        VALID_OFFSETS[BITFLIP_RECORD],
        ErrorKind::FrameChecksum { stored: 0x994e_9647, computed: 0xa2d1_3503 },
    );
    expected.valid_data_at = Some(VALID_OFFSETS[BITFLIP_RECORD + 2]);
    expected.synced_lsn_at_valid = Some(4);
    assert_eq!(result.unwrap_err(), expected);
}

/// The one case the format cannot decide: damage in the last batch with nothing after it. It
/// reads exactly like a batch torn by a power loss, and is cut as a torn tail.
#[test]
fn v2_damage_in_the_last_batch_is_a_torn_tail() {
    let (seen, result) = scan_v2(&read_vector("v2-bitflip-last.wal"));
    assert_eq!(seen, expected_v2_records()[..V2_BITFLIP_LAST_RECORD].to_vec());
    let summary = result.unwrap();
    let at = VALID_OFFSETS[V2_BITFLIP_LAST_RECORD];
    assert!(
        matches!(summary.tail, Tail::Torn { offset, len, kind: ErrorKind::FrameChecksum { .. } } if offset == at && len == VALID_END - at),
        "{:?}",
        summary.tail
    );
}

/// The version 2 bytes differ from version 1 only where the README says: the header's format
/// version, each frame's record version and synced distance, and so the frame checksums.
#[test]
fn v2_bytes_follow_the_spec_tables() {
    let b = read_vector("v2-valid.wal");
    let u16_at = |at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
    let u48_at = |at: usize| {
        let mut a = [0u8; 8];
        a[..6].copy_from_slice(&b[at..at + 6]);
        u64::from_le_bytes(a)
    };
    assert_eq!((u16_at(8), u16_at(10)), (2, 64), "format version, header length");
    let watermarks = V2_BATCHES.iter().flat_map(|(n, synced)| std::iter::repeat_n(*synced, *n));
    for ((f, (lsn, _, _)), synced) in VALID_OFFSETS.iter().zip(VALID_RECORDS).zip(watermarks) {
        let f = *f as usize;
        assert_eq!(b[f + 17], 2, "record version of lsn {lsn}");
        assert_eq!(u48_at(f + 18), lsn - synced, "synced distance of lsn {lsn}");
    }
}
