//! What format version 2 costs a clean scan, next to version 1 in the same run: the same
//! records (1 KiB payloads) encoded both ways into 64 MiB segments, each scanned repeatedly
//! with `segment::scan`. The only differences on the clean path are the record-version check
//! and the decoding of the synced distance; the look-past-the-damage search never runs.
//!
//! A measurement, not a check, so it is ignored; run it in release:
//! `cargo test --release -p sagalog-wal-format --test scan_cost -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use sagalog_wal_format::segment::{self, Expect, Tail};
use sagalog_wal_format::{RecordKind, SegmentHeader, frame};

const SEGMENT_BYTES: usize = 64 << 20;
const PAYLOAD_BYTES: usize = 1024;
const PASSES: usize = 15;
const EPOCH: u64 = 0x5ca1_ab1e;

fn build(v2: bool) -> Vec<u8> {
    let header = SegmentHeader { segment_id: 1, first_lsn: 1, epoch: EPOCH };
    let mut bytes = if v2 { header.encode_v2().to_vec() } else { header.encode().to_vec() };
    let payload: Vec<u8> = (0..PAYLOAD_BYTES).map(|i| ((i * 31) ^ (i >> 8)) as u8).collect();
    let mut lsn = 1u64;
    while bytes.len() + frame::frame_bytes(PAYLOAD_BYTES) <= SEGMENT_BYTES {
        if v2 {
            // Batches of 64, as a busy group commit leaves them.
            frame::encode_v2(&mut bytes, EPOCH, lsn, RecordKind::StepSucceeded, &payload, (lsn - 1) / 64 * 64).unwrap();
        } else {
            frame::encode(&mut bytes, EPOCH, lsn, RecordKind::StepSucceeded, &payload).unwrap();
        }
        lsn += 1;
    }
    bytes
}

fn median_pass(bytes: &[u8]) -> Duration {
    let mut times: Vec<Duration> = (0..PASSES)
        .map(|_| {
            let started = Instant::now();
            let mut n = 0u64;
            let summary = segment::scan(1, bytes, Expect::default(), |r, _| n += r.payload.len() as u64).unwrap();
            std::hint::black_box(&summary.tail);
            std::hint::black_box(n);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[PASSES / 2]
}

#[test]
#[ignore = "a measurement; run by hand in release"]
fn measure_clean_scan_v1_vs_v2() {
    let v1 = build(false);
    let v2 = build(true);
    assert_eq!(v1.len(), v2.len(), "both versions have the same frame sizes");
    // Interleave the two so that machine noise hits both alike.
    let mut t1 = Vec::new();
    let mut t2 = Vec::new();
    for _ in 0..3 {
        t1.push(median_pass(&v1));
        t2.push(median_pass(&v2));
    }
    let (t1, t2) = (t1.iter().min().unwrap(), t2.iter().min().unwrap());
    let gbps = |t: &Duration| v1.len() as f64 / t.as_secs_f64() / 1e9;
    eprintln!(
        "scan_cost: {} bytes per pass; version 1 {:.1} ms ({:.2} GB/s), version 2 {:.1} ms ({:.2} GB/s), v2/v1 time {:.3}",
        v1.len(),
        t1.as_secs_f64() * 1e3,
        gbps(t1),
        t2.as_secs_f64() * 1e3,
        gbps(t2),
        t2.as_secs_f64() / t1.as_secs_f64()
    );
    // The worst damage for the search: a hole at the first frame of a full last segment, all
    // of whose later frames are valid but unsynced (watermark 0): every aligned offset is tried.
    let unsynced = {
        let header = SegmentHeader { segment_id: 1, first_lsn: 1, epoch: EPOCH };
        let mut bytes = header.encode_v2().to_vec();
        let payload = vec![7u8; PAYLOAD_BYTES];
        let mut lsn = 1u64;
        while bytes.len() + frame::frame_bytes(PAYLOAD_BYTES) <= SEGMENT_BYTES {
            frame::encode_v2(&mut bytes, EPOCH, lsn, RecordKind::StepSucceeded, &payload, 0).unwrap();
            lsn += 1;
        }
        bytes[64..64 + frame::frame_bytes(PAYLOAD_BYTES)].fill(0);
        bytes
    };
    let t = median_pass(&unsynced);
    let tail = segment::scan(1, &unsynced, Expect::default(), |_, _| {}).unwrap().tail;
    assert!(matches!(tail, Tail::Unsynced { offset: 64, .. }), "{tail:?}");
    eprintln!(
        "scan_cost: a hole at the first frame of a full version 2 segment (the search tries every offset): {:.1} ms, {:.2}x a clean pass",
        t.as_secs_f64() * 1e3,
        t.as_secs_f64() / t2.as_secs_f64()
    );
}
