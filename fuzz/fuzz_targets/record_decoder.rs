//! Fuzz target: arbitrary bytes decoded as the payload of every journal record kind.
//!
//! The body lives in `sagalog::engine::fuzzing` so that the stable test
//! `src/engine/fuzz_stable.rs` runs exactly the same checks on every CI run.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sagalog::engine::fuzzing::record_decoder(data);
});
