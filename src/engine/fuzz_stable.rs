//! The `record_decoder` fuzz body ([`super::fuzzing::record_decoder`]), run on stable on every
//! `cargo test`: over the stored seed corpus `fuzz/corpus/record_decoder/`, every golden
//! vector, and thousands of deterministic pseudo-random inputs (random bytes, mutated seeds,
//! and random valid records, whole and mutated), so a decoder that panics or stops
//! round-tripping fails CI without nightly. Not coverage-guided: it complements a real
//! `cargo +nightly fuzz run record_decoder`, it does not replace it.
//!
//! Inputs come from a seeded xorshift generator: a failure names the input and reproduces.
//! The seed corpus is written by the ignored `generate_corpus` test, by hand only:
//! `cargo test --no-default-features --lib engine::fuzz_stable -- --ignored generate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::fuzzing::record_decoder;
use super::golden;
use super::model::{StepCall, StepPolicy};
use super::record::{
    CancelRequested, Failed, Finished, Outcome, Record, RecoveryStarted, ResolveDecision, Resolved, Snapshotted,
    Started, Submitted, Succeeded,
};
use super::value::Value;
use crate::engine::Direction;

/// Pseudo-random inputs per kind of input; a few seconds in a debug build.
const RANDOM_INPUTS: usize = 4_000;
const RANDOM_BYTES_MAX: usize = 256;

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

    fn flip(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn text(&mut self) -> String {
        const PIECES: [&str; 6] = ["", "a", "saga-1", "é", "\u{1f980}", "\0"];
        (0..self.below(4)).map(|_| PIECES[self.below(PIECES.len())]).collect()
    }

    /// A u64 biased towards the edges of the MessagePack integer encodings.
    fn int(&mut self) -> u64 {
        const EDGES: [u64; 9] = [0, 1, 127, 128, 255, 256, 65_535, 65_536, u64::MAX];
        if self.flip() { EDGES[self.below(EDGES.len())] } else { self.next() >> self.below(64) }
    }
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/record_decoder")
}

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| (path.display().to_string(), std::fs::read(&path).unwrap()))
        .collect();
    files.sort();
    files
}

/// The seed corpus; missing or empty is a failure, so this file cannot pass by testing nothing.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let files = read_dir_files(&corpus_dir());
    assert!(!files.is_empty(), "fuzz corpus {} is empty", corpus_dir().display());
    files
}

fn vectors() -> Vec<(String, Vec<u8>)> {
    let files: Vec<_> =
        read_dir_files(&golden::vectors_dir()).into_iter().filter(|(name, _)| name.ends_with(".msgpack")).collect();
    assert_eq!(files.len(), golden::vectors().len(), "golden vectors missing");
    files
}

/// Runs `test` on a thread with the 8 MiB stack of a main thread, where libFuzzer runs the
/// target. Deeply nested input stops at rmp-serde's depth limit (1024). Measured: in a release
/// build those 1024 levels fit in 128 KiB of stack, but in a debug build they take 2-3 MiB,
/// more than a test thread's default 2 MiB (the corpus holds such an input).
fn on_big_stack(test: impl FnOnce() + Send + 'static) {
    let worker = std::thread::Builder::new().stack_size(8 << 20).spawn(test).unwrap();
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs the body on `input`, naming the input if it panics; returns how many kinds accepted it.
fn run(what: &str, input: &[u8]) -> usize {
    match std::panic::catch_unwind(|| record_decoder(input)) {
        Ok(accepted) => accepted,
        Err(_) => panic!("fuzz body failed on {what}: {input:02x?}"),
    }
}

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => Value::Null,
        1 => Value::Bool(rng.flip()),
        2 => Value::Int(rng.int() as i64),
        // Any bit pattern: NaNs, infinities, subnormals and negative zero included.
        3 => Value::Float(f64::from_bits(rng.next())),
        4 => Value::Text(rng.text()),
        _ => {
            let len = rng.below(40);
            Value::Bytes(rng.bytes(len))
        }
    }
}

fn random_direction(rng: &mut Rng) -> Direction {
    if rng.flip() { Direction::Forward } else { Direction::Compensate }
}

/// A valid record of a random kind with random field values.
fn random_record(rng: &mut Rng) -> Record {
    let saga = rng.text();
    let at_ms = rng.int();
    let step = rng.int() as u32;
    let attempt = rng.int() as u32;
    match rng.below(9) {
        0 => random_submitted(rng, saga, at_ms),
        1 => Record::StepStarted(Started {
            saga,
            step,
            direction: random_direction(rng),
            attempt,
            at_ms,
            deadline_ms: None,
        }),
        2 => {
            let (direction, by_marker) = (random_direction(rng), rng.flip());
            Record::StepSucceeded(Succeeded {
                saga,
                step,
                direction,
                attempt,
                by_marker,
                at_ms,
                outputs: Default::default(),
            })
        }
        3 => Record::StepFailed(Failed {
            saga,
            step,
            direction: random_direction(rng),
            attempt,
            error: rng.text(),
            retryable: rng.flip(),
            maybe_applied: rng.flip(),
            at_ms,
        }),
        4 => {
            let outcome = if rng.flip() { Outcome::Completed } else { Outcome::Compensated };
            Record::SagaFinished(Finished { saga, outcome, at_ms })
        }
        5 => Record::CancelRequested(CancelRequested { saga, at_ms }),
        6 => {
            let decisions = [
                ResolveDecision::MarkCompensated,
                ResolveDecision::RetryCompensation,
                ResolveDecision::CompensateCompleted,
            ];
            let decision = decisions[rng.below(3)];
            Record::Resolved(Resolved { saga, decision, by: rng.text(), at_ms })
        }
        7 => Record::RecoveryStarted(RecoveryStarted { reason: rng.text(), unfinished: rng.int(), at_ms }),
        // A snapshot of a random saga: a random submit and a few of its records applied.
        _ => {
            let Record::SagaSubmitted(submitted) = random_submitted(rng, saga.clone(), at_ms) else {
                unreachable!("random_submitted builds a SagaSubmitted")
            };
            let mut state = super::saga::Saga::submitted(&submitted);
            for _ in 0..rng.below(6) {
                let mut record = random_record(rng);
                if let Some(id) = record_saga_mut(&mut record) {
                    *id = saga.clone();
                }
                state.apply(&record);
            }
            Record::SagaSnapshot(Snapshotted { saga: Box::new(state), at_ms })
        }
    }
}

/// The saga id field of a saga's record, to point a random record at a chosen saga.
fn record_saga_mut(record: &mut Record) -> Option<&mut String> {
    match record {
        Record::SagaSubmitted(r) => Some(&mut r.saga),
        Record::StepStarted(r) => Some(&mut r.saga),
        Record::StepSucceeded(r) => Some(&mut r.saga),
        Record::StepFailed(r) => Some(&mut r.saga),
        Record::SagaFinished(r) => Some(&mut r.saga),
        Record::CancelRequested(r) => Some(&mut r.saga),
        Record::Resolved(r) => Some(&mut r.saga),
        Record::RecoveryStarted(_) | Record::SagaSnapshot(_) => None,
    }
}

/// A random `SagaSubmitted` of `saga`.
fn random_submitted(rng: &mut Rng, saga: String, at_ms: u64) -> Record {
    let steps: Vec<StepCall> = (0..rng.below(3))
        .map(|_| StepCall {
            action: rng.text(),
            params: (0..rng.below(4)).map(|_| (rng.text(), random_value(rng))).collect::<BTreeMap<_, _>>(),
            from: Default::default(),
        })
        .collect();
    // One policy per step, as every writer journals it (a decoder refuses anything else).
    let policies = (0..steps.len())
        .map(|_| StepPolicy { max_attempts: rng.int() as u32, compensate_max_attempts: rng.int() as u32 })
        .collect();
    Record::SagaSubmitted(Submitted {
        saga,
        steps,
        policies,
        digest: rng.int() as u32,
        at_ms,
        actions: Default::default(),
        scope: None,
    })
}

/// One to three random structural changes: bit flips, byte overwrites, truncation, insertion,
/// or a splice with another seed.
fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = out.len();
        match rng.below(5) {
            0 if len > 0 => {
                let bit = rng.below(len * 8);
                out[bit / 8] ^= 1 << (bit % 8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                let n = (1 + rng.below(4)).min(len - at);
                out[at..at + n].copy_from_slice(&rng.bytes(n));
            }
            2 => out.truncate(rng.below(len + 1)),
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                out.splice(at..at, rng.bytes(n));
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let to = from + rng.below(other.len() - from + 1);
                let at = rng.below(len + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..to]);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn record_decoder_accepts_its_corpus_and_the_vectors() {
    on_big_stack(accepts_its_corpus_and_the_vectors);
}

fn accepts_its_corpus_and_the_vectors() {
    for (name, bytes) in corpus() {
        run(&name, &bytes);
    }
    for (name, bytes) in vectors() {
        // Each vector decodes at least as its own kind (and as the kinds whose fields it has).
        assert!(run(&name, &bytes) >= 1, "{name} decodes as no kind");
    }
}

/// Every random valid record decodes as its own kind to itself, and the body holds on it.
#[test]
fn record_decoder_round_trips_random_valid_records() {
    let mut rng = Rng::new(0x5a6a_dec0_0000_0001);
    for i in 0..RANDOM_INPUTS {
        let record = random_record(&mut rng);
        let bytes = record.encode();
        let decoded = Record::decode(record.kind(), &bytes).unwrap_or_else(|e| panic!("record {i}: {e}: {record:?}"));
        assert_eq!(decoded.encode(), bytes, "record {i}");
        assert!(run(&format!("random record {i}"), &bytes) >= 1);
    }
}

/// The body never panics over random bytes, mutated seeds and mutated valid records; and the
/// mutated inputs reach every kind's round trip, or this test proves little.
#[test]
fn record_decoder_survives_random_and_mutated_inputs() {
    on_big_stack(survives_random_and_mutated_inputs);
}

fn survives_random_and_mutated_inputs() {
    let mut seeds: Vec<Vec<u8>> = corpus().into_iter().chain(vectors()).map(|(_, b)| b).collect();
    let mut rng = Rng::new(0x5a6a_dec0_0000_0002);
    let mut accepted_mutants = 0;
    let mut kinds_reached = std::collections::BTreeSet::new();
    for i in 0..RANDOM_INPUTS {
        let len = rng.below(RANDOM_BYTES_MAX);
        run(&format!("random input {i}"), &rng.bytes(len));
        let seed = seeds[rng.below(seeds.len())].clone();
        let mutant = mutate(&mut rng, &seed, &seeds);
        if run(&format!("mutated seed {i}"), &mutant) > 0 {
            accepted_mutants += 1;
        }
        let record = random_record(&mut rng);
        let mutant = mutate(&mut rng, &record.encode(), &seeds);
        if run(&format!("mutated record {i}"), &mutant) > 0 {
            accepted_mutants += 1;
            if let Ok(again) = Record::decode(record.kind(), &mutant) {
                kinds_reached.insert(again.kind());
            }
        }
        if i % 64 == 0 {
            seeds.push(record.encode());
        }
    }
    assert!(accepted_mutants > RANDOM_INPUTS / 20, "only {accepted_mutants} mutated inputs decoded");
    assert_eq!(kinds_reached.len(), crate::wal_format::RecordKind::ALL.len(), "{kinds_reached:?}");
}

/// Hostile length prefixes and deep nesting are errors, not allocations or stack overflows.
#[test]
fn record_decoder_refuses_huge_lengths_and_deep_nesting() {
    on_big_stack(|| {
        for (what, input) in hostile_inputs() {
            assert_eq!(run(what, &input), 0, "{what} decoded");
        }
    });
}

fn hostile_inputs() -> Vec<(&'static str, Vec<u8>)> {
    // A map with one unknown key whose value nests `depth` arrays: skipping it recurses.
    let nested = |depth: usize| [&b"\x81\xa1x"[..], &vec![0x91; depth], &b"\xc0"[..]].concat();
    vec![
        ("map32 of 4G entries", b"\xdf\xff\xff\xff\xff".to_vec()),
        ("array32 of 4G elements", b"\xdd\xff\xff\xff\xff".to_vec()),
        ("str32 of 4G bytes as the saga", [&b"\x81\xa4saga\xdb\xff\xff\xff\xff"[..], b"abc"].concat()),
        ("bin32 of 4G bytes", b"\xc6\xff\xff\xff\xff".to_vec()),
        ("steps: array32 of 4G", [&b"\x82\xa4saga\xa1s\xa5steps\xdd\xff\xff\xff\xff"[..]].concat()),
        ("unknown field nesting 100000 arrays", nested(100_000)),
        ("unknown field nesting 2000 arrays", nested(2_000)),
    ]
}

/// The seed corpus: the golden vectors and small edge cases. Written by hand only; existing
/// files are never changed, so libFuzzer's own additions are kept.
#[test]
#[ignore = "writes fuzz/corpus/record_decoder/; run by hand"]
fn generate_corpus() {
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("empty-map".into(), b"\x80".to_vec()),
        ("empty-array".into(), b"\x90".to_vec()),
        ("nil".into(), b"\xc0".to_vec()),
        // StepStarted as a positional array (serde accepts structs as sequences).
        ("started-as-array".into(), b"\x95\xa1s\x01\xa7Forward\x02\x03".to_vec()),
        ("finished-unknown-outcome".into(), b"\x83\xa4saga\xa1s\xa7outcome\xa7Aborted\xa5at_ms\x00".to_vec()),
        ("resolved-decision-as-int".into(), b"\x84\xa4saga\xa1s\xa8decision\x01\xa2by\xa1o\xa5at_ms\x00".to_vec()),
        ("duplicate-field".into(), b"\x83\xa4saga\xa1s\xa4saga\xa1t\xa5at_ms\x00".to_vec()),
        ("invalid-utf8-saga".into(), b"\x82\xa4saga\xa2\xc3\x28\xa5at_ms\x00".to_vec()),
        (
            "negative-step".into(),
            b"\x85\xa4saga\xa1s\xa4step\xff\xa9direction\xa7Forward\xa7attempt\x01\xa5at_ms\x00".to_vec(),
        ),
        (
            "submitted-nan-float".into(),
            Record::SagaSubmitted(Submitted {
                saga: "s".into(),
                steps: vec![StepCall {
                    action: "a".into(),
                    params: BTreeMap::from([("f".into(), Value::Float(f64::NAN))]),
                    from: Default::default(),
                }],
                policies: Vec::new(),
                digest: 0,
                at_ms: 0,
                actions: Default::default(),
                scope: None,
            })
            .encode(),
        ),
    ];
    for (name, input) in hostile_inputs().into_iter().filter(|(_, input)| input.len() < 4096) {
        files.push((name.replace([' ', ':'], "-"), input));
    }
    for (path, bytes) in vectors() {
        let name = Path::new(&path).file_stem().unwrap().to_string_lossy().into_owned();
        files.push((name, bytes));
    }
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, bytes).unwrap();
        }
    }
}
