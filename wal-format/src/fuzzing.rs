//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` (nightly, coverage-guided)
//! and by the stable test `tests/fuzz_stable.rs`, which runs them over the stored corpus and
//! random inputs on every CI run. Each body panics only when an invariant of the format is
//! broken, which is exactly what a fuzzer should report.

use crate::frame;
use crate::segment::{self, Expect, Tail};

/// Frame decoder: decoding never panics, and whatever decodes re-encodes to the same bytes.
/// The first 8 bytes of `data` choose the epoch the frame is checked against.
pub fn frame_decoder(data: &[u8]) {
    let (epoch, bytes) = split_epoch(data);
    if let Ok((record, n)) = frame::decode(bytes, epoch) {
        assert!(n <= bytes.len(), "a decoded frame must lie within the input");
        let mut again = Vec::new();
        let written = match record.synced_lsn {
            None => frame::encode(&mut again, epoch, record.lsn, record.kind, record.payload),
            Some(synced) => frame::encode_v2(&mut again, epoch, record.lsn, record.kind, record.payload, synced),
        }
        .expect("a decoded record must be encodable");
        assert_eq!(written, n);
        assert_eq!(again.as_slice(), &bytes[..n], "decode/encode must round-trip byte for byte");
    }
}

/// Segment reader: scanning never panics; a successful scan reports records in LSN order at
/// increasing offsets inside the input, and a tail that lies where the records end.
pub fn segment_reader(data: &[u8]) {
    let mut last: Option<(u64, u64)> = None;
    let result = segment::scan(0, data, Expect::default(), |record, offset| {
        assert!((offset as usize) < data.len());
        if let Some((lsn, at)) = last {
            assert_eq!(record.lsn, lsn + 1, "records must come out in LSN order");
            assert!(offset > at);
        }
        last = Some((record.lsn, offset));
    });
    if let Ok(summary) = result {
        assert!(summary.valid_end as usize <= data.len());
        assert_eq!(summary.last_lsn, last.map(|(lsn, _)| lsn));
        match summary.tail {
            Tail::Clean => assert_eq!(summary.valid_end as usize, data.len()),
            Tail::Zeroed { offset, len } | Tail::Torn { offset, len, .. } => {
                assert_eq!(offset, summary.valid_end);
                assert_eq!(offset + len, data.len() as u64);
            }
            Tail::Unsynced { offset, len, valid_at, .. } => {
                assert_eq!(
                    summary.format_version,
                    crate::FORMAT_VERSION,
                    "only version 2 segments have unsynced tails"
                );
                assert_eq!(offset, summary.valid_end);
                assert_eq!(offset + len, data.len() as u64);
                assert!((offset..offset + len).contains(&valid_at), "the valid frame lies inside the tail");
            }
        }
    }
}

fn split_epoch(data: &[u8]) -> (u64, &[u8]) {
    match data.split_first_chunk::<8>() {
        Some((epoch, rest)) => (u64::from_le_bytes(*epoch), rest),
        None => (0, data),
    }
}
