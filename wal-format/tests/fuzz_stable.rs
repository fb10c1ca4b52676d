//! The fuzz target bodies, run on stable on every `cargo test`.
//!
//! `fuzz/` drives `sagalog_wal_format::fuzzing` with coverage-guided libFuzzer, which needs a
//! nightly toolchain and is run by hand. This file runs the same bodies over the stored seed
//! corpus, every golden vector and a fixed number of deterministic pseudo-random inputs, so a
//! regression that makes the decoder panic or break an invariant fails CI without nightly.
//!
//! Pseudo-random inputs come from a seeded xorshift generator: a failure names its seed and
//! iteration and reproduces exactly. Many inputs are "resealed": a field is changed and the
//! frame checksum recomputed, so the checks that run after the checksum are reached too.
//!
//! The seed corpus is written by the ignored `generate_corpus` test, by hand only:
//! `cargo test -p sagalog-wal-format --test fuzz_stable -- --ignored generate`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sagalog_wal_format::error::ErrorKind;
use sagalog_wal_format::fuzzing::{frame_decoder, segment_reader};
use sagalog_wal_format::segment::{self, Expect, Tail};
use sagalog_wal_format::{
    FRAME_HEADER_BYTES, PAYLOAD_BYTES_MAX, RecordKind, SEGMENT_HEADER_BYTES, SegmentHeader, frame,
};

/// Pseudo-random inputs per target and kind of input; keeps the whole file well under 10 s in
/// a debug build.
const RANDOM_INPUTS: usize = 20_000;
/// The longest pure-random input.
const RANDOM_BYTES_MAX: usize = 512;

/// xorshift64*: small, seeded, and good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

type Named = (String, Vec<u8>);

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_dir_files(dir: &Path) -> Vec<Named> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut files: Vec<Named> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| (path.display().to_string(), std::fs::read(&path).unwrap()))
        .collect();
    files.sort();
    files
}

/// The seed corpus of a fuzz target. Missing or empty is a failure, so this file can never
/// pass by testing nothing.
fn corpus(target: &str) -> Vec<Named> {
    let dir = repo_dir().join("fuzz/corpus").join(target);
    let files = read_dir_files(&dir);
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    files
}

/// Every golden vector (whole segment files).
fn vectors() -> Vec<Named> {
    let files: Vec<Named> = read_dir_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors"))
        .into_iter()
        .filter(|(name, _)| name.ends_with(".wal"))
        .collect();
    assert!(files.len() >= 5, "the golden vectors are missing");
    files
}

/// Frame-decoder inputs made from a segment: each frame prefixed with the segment's epoch.
fn frames_of(segment: &[u8]) -> Vec<Vec<u8>> {
    let Ok(header) = SegmentHeader::decode(segment) else { return Vec::new() };
    let mut out = Vec::new();
    let _ = segment::scan(header.segment_id, segment, Expect::default(), |record, offset| {
        let start = offset as usize;
        let end = start + frame::frame_bytes(record.payload.len());
        out.push([&header.epoch.to_le_bytes()[..], &segment[start..end]].concat());
    });
    out
}

/// Recomputes the checksum of the frame at `at`, if its length fits `bytes`, so that a changed
/// field is seen by the checks behind the checksum.
fn reseal(bytes: &mut [u8], at: usize, epoch: u64) {
    let Some(header) = bytes.get(at..at + FRAME_HEADER_BYTES) else { return };
    let len = u32::from_le_bytes(header[..4].try_into().unwrap());
    if len > PAYLOAD_BYTES_MAX {
        return;
    }
    let end = at + frame::frame_bytes(len as usize);
    if end > bytes.len() {
        return;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&epoch.to_le_bytes());
    crc.update(&bytes[at..at + 4]);
    crc.update(&bytes[at + 8..end]);
    let crc = crc.finalize();
    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// u32 values that probe the length checks: empty, unaligned, at and past the maximum.
const LENGTHS_EXTREME: [u32; 8] =
    [0, 1, 7, 8, PAYLOAD_BYTES_MAX - 1, PAYLOAD_BYTES_MAX, PAYLOAD_BYTES_MAX + 1, u32::MAX];
/// u64 values that probe the LSN and id checks.
const U64_EXTREME: [u64; 5] = [0, 1, 2, u64::MAX - 1, u64::MAX];

/// One random structural change to `input`: bit flips, byte overwrites, truncation, insertion,
/// a splice with another seed, or an extreme value in an aligned length or LSN field.
fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = out.len();
        match rng.below(7) {
            0 if len > 0 => {
                let bit = rng.below(len * 8);
                out[bit / 8] ^= 1 << (bit % 8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                let n = (1 + rng.below(8)).min(len - at);
                out[at..at + n].copy_from_slice(&rng.bytes(n));
            }
            2 => out.truncate(rng.below(len + 1)),
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(64);
                let fill = if rng.below(2) == 0 { vec![0; n] } else { rng.bytes(n) };
                out.splice(at..at, fill);
            }
            4 => {
                let other = rng.pick(seeds);
                let from = rng.below(other.len() + 1);
                let to = from + rng.below(other.len() - from + 1);
                let at = rng.below(len + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..to]);
            }
            5 if len >= 4 => {
                let at = rng.below(len / 8 + 1) * 8;
                if at + 4 <= len {
                    out[at..at + 4].copy_from_slice(&rng.pick(&LENGTHS_EXTREME).to_le_bytes());
                }
            }
            6 if len >= 8 => {
                let at = rng.below(len / 8 + 1) * 8;
                if at + 8 <= len {
                    out[at..at + 8].copy_from_slice(&rng.pick(&U64_EXTREME).to_le_bytes());
                }
            }
            _ => {}
        }
    }
    out
}

/// A valid segment with random header fields and records, and the offsets of its frames:
/// format version 1 or 2 (version 2 frames get random sync watermarks below their LSNs).
fn random_segment(rng: &mut Rng) -> (Vec<u8>, Vec<usize>, u64) {
    let epoch = rng.next();
    let first_lsn = if rng.below(8) == 0 { u64::MAX - rng.below(3) as u64 } else { 1 + rng.below(1000) as u64 };
    let header = SegmentHeader { segment_id: rng.next() % 100, first_lsn, epoch };
    let v2 = rng.below(2) == 0;
    let mut bytes = if v2 { header.encode_v2().to_vec() } else { header.encode().to_vec() };
    let mut offsets = Vec::new();
    for i in 0..rng.below(6) {
        offsets.push(bytes.len());
        let kind = *rng.pick(&RecordKind::ALL);
        let len = rng.below(40);
        let payload = rng.bytes(len);
        let lsn = first_lsn.wrapping_add(i as u64).max(1);
        if v2 {
            let synced = lsn.saturating_sub(1 + rng.below(i + 2) as u64);
            frame::encode_v2(&mut bytes, epoch, lsn, kind, &payload, synced).unwrap();
        } else {
            frame::encode(&mut bytes, epoch, lsn, kind, &payload).unwrap();
        }
    }
    (bytes, offsets, epoch)
}

/// Changes one checksummed field of the frame at `at` (kind, version, reserved byte, padding,
/// LSN or length) and reseals it, so the decoder's post-checksum checks are exercised.
fn resealed_field_change(rng: &mut Rng, bytes: &mut [u8], at: usize, epoch: u64) {
    match rng.below(6) {
        0 => bytes[at + 16] = rng.next() as u8,
        1 => bytes[at + 17] = rng.below(4) as u8,
        2 => bytes[at + 18 + rng.below(6)] = 1 + rng.below(255) as u8,
        3 => {
            let last = bytes.len().min(at + 24 + 64) - 1;
            bytes[last] ^= 1 + rng.below(255) as u8;
        }
        4 => bytes[at + 8..at + 16].copy_from_slice(&rng.pick(&U64_EXTREME).to_le_bytes()),
        _ => bytes[at..at + 4].copy_from_slice(&(rng.below(64) as u32).to_le_bytes()),
    }
    reseal(bytes, at, epoch);
}

/// Every seed of the frame decoder: its corpus and the frames of every vector.
fn frame_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = corpus("frame_decoder").into_iter().map(|(_, b)| b).collect();
    for (_, bytes) in vectors() {
        seeds.extend(frames_of(&bytes));
    }
    seeds
}

/// Every seed of the segment reader: its corpus and every vector.
fn segment_seeds() -> Vec<Vec<u8>> {
    corpus("segment_reader").into_iter().chain(vectors()).map(|(_, b)| b).collect()
}

/// Runs `body` on `input`, naming the input in the panic message if it fails.
fn run(body: fn(&[u8]), what: &str, input: &[u8]) {
    if std::panic::catch_unwind(|| body(input)).is_err() {
        panic!("fuzz body failed on {what}: {input:02x?}");
    }
}

/// The frame decoder body holds on every stored seed and every frame of every vector.
#[test]
fn frame_decoder_accepts_its_corpus_and_the_vectors() {
    for (name, bytes) in corpus("frame_decoder") {
        run(frame_decoder, &name, &bytes);
    }
    for (name, bytes) in vectors() {
        run(frame_decoder, &name, &bytes);
        for frame in frames_of(&bytes) {
            run(frame_decoder, &format!("a frame of {name}"), &frame);
        }
    }
}

/// The segment reader body holds on every stored seed and every vector.
#[test]
fn segment_reader_accepts_its_corpus_and_the_vectors() {
    for (name, bytes) in corpus("segment_reader").into_iter().chain(vectors()) {
        run(segment_reader, &name, &bytes);
    }
}

/// The frame decoder never panics and round-trips whatever it accepts, over random bytes,
/// mutated seeds and valid frames with a changed, resealed field.
#[test]
fn frame_decoder_survives_random_and_mutated_inputs() {
    let seeds = frame_seeds();
    let mut rng = Rng::new(0x5a6a_f4a3_0000_0001);
    for i in 0..RANDOM_INPUTS {
        let len = rng.below(RANDOM_BYTES_MAX);
        run(frame_decoder, &format!("random input {i}"), &rng.bytes(len));
        let seed = rng.pick(&seeds).clone();
        run(frame_decoder, &format!("mutation {i}"), &mutate(&mut rng, &seed, &seeds));
        let (segment, offsets, epoch) = random_segment(&mut rng);
        if let Some(at) = offsets.first() {
            let mut input = [&epoch.to_le_bytes()[..], &segment[*at..]].concat();
            resealed_field_change(&mut rng, &mut input, 8, epoch);
            run(frame_decoder, &format!("resealed frame {i}"), &input);
        }
    }
}

/// The segment reader never panics and keeps its invariants over random bytes behind a valid
/// header, mutated seeds and random segments with a changed, resealed frame.
#[test]
fn segment_reader_survives_random_and_mutated_inputs() {
    let seeds = segment_seeds();
    let mut rng = Rng::new(0x5a6a_5e60_0000_0002);
    let mut outcomes = BTreeSet::new();
    for i in 0..RANDOM_INPUTS {
        let (mut segment, offsets, epoch) = random_segment(&mut rng);
        let mut noise = segment[..SEGMENT_HEADER_BYTES].to_vec();
        let len = rng.below(RANDOM_BYTES_MAX);
        noise.extend(rng.bytes(len));
        run(segment_reader, &format!("random input {i}"), &noise);
        let seed = rng.pick(&seeds).clone();
        run(segment_reader, &format!("mutation {i}"), &mutate(&mut rng, &seed, &seeds));
        if !offsets.is_empty() {
            let at = *rng.pick(&offsets);
            resealed_field_change(&mut rng, &mut segment, at, epoch);
        }
        let input = mutate(&mut rng, &segment, &seeds);
        run(segment_reader, &format!("resealed segment {i}"), &input);
        for input in [&noise, &input] {
            outcomes.insert(outcome(input));
        }
    }
    // The inputs must reach every verdict of the reader, or this test proves little.
    for verdict in [
        "clean",
        "zeroed",
        "torn",
        "unsynced",
        "corrupt",
        "corrupt-synced",
        "LsnGap",
        "UnknownKind",
        "UnsupportedRecordVersion",
        "FrameReserved",
        "SyncedDistance",
    ] {
        assert!(outcomes.contains(verdict), "no random input reached {verdict}: {outcomes:?}");
    }
}

/// Names the verdict of `segment::scan` on `bytes`, to check which decisions the inputs reach.
fn outcome(bytes: &[u8]) -> String {
    match segment::scan(0, bytes, Expect::default(), |_, _| {}) {
        Ok(summary) => match summary.tail {
            Tail::Clean => "clean".into(),
            Tail::Zeroed { .. } => "zeroed".into(),
            Tail::Torn { .. } => "torn".into(),
            Tail::Unsynced { .. } => "unsynced".into(),
        },
        Err(err) if err.synced_lsn_at_valid.is_some() => "corrupt-synced".into(),
        Err(err) if err.valid_data_at.is_some() => "corrupt".into(),
        Err(err) => format!("{:?}", err.kind).split([' ', '{']).next().unwrap_or_default().to_string(),
    }
}

/// A record after LSN `u64::MAX` is never accepted: the LSN after the last one does not exist,
/// so a second frame carrying `u64::MAX` is a duplicate, not a successor.
#[test]
fn no_record_is_accepted_after_the_last_lsn() {
    let epoch = 9;
    let mut bytes = SegmentHeader { segment_id: 1, first_lsn: u64::MAX, epoch }.encode().to_vec();
    frame::encode(&mut bytes, epoch, u64::MAX, RecordKind::StepStarted, b"a").unwrap();
    let second = bytes.len() as u64;
    frame::encode(&mut bytes, epoch, u64::MAX, RecordKind::StepStarted, b"b").unwrap();
    run(segment_reader, "two records with lsn u64::MAX", &bytes);
    let err = segment::scan(1, &bytes, Expect::default(), |_, _| {}).unwrap_err();
    assert_eq!(err.offset, second);
    assert!(matches!(err.kind, ErrorKind::LsnGap { found: u64::MAX, .. }), "{err}");
}

/// The seed corpora: small files that reach each decision of the decoder. Written by hand
/// only (existing files are never changed, so libFuzzer's own additions are kept).
#[test]
#[ignore = "writes fuzz/corpus/; run by hand"]
fn generate_corpus() {
    let epoch: u64 = 0x5a6a_10c0_0000_0001;
    let one = |lsn: u64, kind: RecordKind, payload: &[u8]| {
        let mut v = epoch.to_le_bytes().to_vec();
        frame::encode(&mut v, epoch, lsn, kind, payload).unwrap();
        v
    };
    let mut frames: Vec<(String, Vec<u8>)> = vec![
        ("empty-payload".into(), one(1, RecordKind::Checkpoint, b"")),
        ("payload-7-bytes".into(), one(2, RecordKind::StepStarted, b"\x82\xa1s\x00\xa1x\x01")),
        ("payload-8-bytes".into(), one(3, RecordKind::StepSucceeded, b"\x81\xa5steps\x00")),
        ("payload-9-bytes".into(), one(u64::MAX, RecordKind::Resolved, b"\x81\xa4saga\xa2a1")),
        ("zero-header".into(), [epoch.to_le_bytes().to_vec(), vec![0; 32]].concat()),
        ("short".into(), epoch.to_le_bytes().to_vec()),
    ];
    let mut unknown_kind = one(4, RecordKind::SagaFinished, b"\x80");
    unknown_kind[8 + 16] = 200;
    reseal(&mut unknown_kind, 8, epoch);
    frames.push(("unknown-kind-resealed".into(), unknown_kind));
    let mut too_long = one(5, RecordKind::StepFailed, b"\x80");
    too_long[8..12].copy_from_slice(&(PAYLOAD_BYTES_MAX + 1).to_le_bytes());
    frames.push(("length-too-large".into(), too_long));

    let header = SegmentHeader { segment_id: 1, first_lsn: 1, epoch };
    let mut gap = header.encode().to_vec();
    frame::encode(&mut gap, epoch, 1, RecordKind::SagaSubmitted, b"\x80").unwrap();
    frame::encode(&mut gap, epoch, 3, RecordKind::StepStarted, b"\x80").unwrap();
    let mut newer_version = header.encode().to_vec();
    frame::encode(&mut newer_version, epoch, 1, RecordKind::SagaSubmitted, b"\x80").unwrap();
    newer_version[64 + 17] = 2;
    reseal(&mut newer_version, 64, epoch);
    let mut zeros_then_frame = header.encode().to_vec();
    zeros_then_frame.resize(64 + 64, 0);
    frame::encode(&mut zeros_then_frame, epoch, 1, RecordKind::SagaSubmitted, b"\x80").unwrap();
    let mut segments: Vec<(String, Vec<u8>)> = vec![
        ("header-only".into(), header.encode().to_vec()),
        ("header-cut".into(), header.encode()[..40].to_vec()),
        ("lsn-gap".into(), gap),
        ("newer-record-version".into(), newer_version),
        ("zeros-then-frame".into(), zeros_then_frame),
    ];
    for (name, bytes) in vectors() {
        let name = Path::new(&name).file_stem().unwrap().to_string_lossy().into_owned();
        segments.push((name, bytes));
    }

    for (target, files) in [("frame_decoder", frames), ("segment_reader", segments)] {
        let dir = repo_dir().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            let path = dir.join(name);
            if !path.exists() {
                std::fs::write(&path, bytes).unwrap();
            }
        }
    }
}
