//! The body of the `record_decoder` fuzz target (`fuzz/fuzz_targets/record_decoder.rs`), kept
//! in the library so that the stable test `engine::fuzz_stable` runs exactly the same checks on
//! every `cargo test`, without nightly.
//!
//! The body panics only when an invariant of the record payload encoding breaks, which is what
//! a fuzzer reports: decoding arbitrary bytes as any record kind must never panic, and whatever
//! decodes must re-encode to a payload that decodes to the same value and encodes to the same
//! bytes again (the encoding is canonical).

use super::record::Record;
use super::value::Value;
use crate::wal_format::RecordKind;

/// Decodes `data` as the payload of every record kind and checks the round trip of whatever
/// decodes. Returns how many kinds accepted it (for the stable test's coverage checks).
#[doc(hidden)]
pub fn record_decoder(data: &[u8]) -> usize {
    let mut accepted = 0;
    for kind in RecordKind::ALL {
        if let Ok(record) = Record::decode(kind, data) {
            round_trip(kind, &record);
            accepted += 1;
        }
    }
    accepted
}

/// `record` (decoded as `kind`) survives encode → decode → encode unchanged.
fn round_trip(kind: RecordKind, record: &Record) {
    assert_eq!(record.kind(), kind, "a payload decoded as {kind:?} gave another kind");
    let bytes = record.encode();
    let again = match Record::decode(kind, &bytes) {
        Ok(again) => again,
        Err(e) => panic!("a re-encoded {kind:?} payload does not decode: {e}; bytes {bytes:02x?}"),
    };
    assert_eq!(again.encode(), bytes, "{kind:?}: encoding a decoded payload is not stable");
    // NaN is not equal to itself; the byte comparison above already covers such values.
    if !has_nan(record) {
        assert_eq!(&again, record, "{kind:?}: the value changed across encode and decode");
    }
}

fn has_nan(record: &Record) -> bool {
    match record {
        Record::SagaSubmitted(s) => {
            s.steps.iter().flat_map(|c| c.params.values()).any(|v| matches!(v, Value::Float(f) if f.is_nan()))
        }
        _ => false,
    }
}
