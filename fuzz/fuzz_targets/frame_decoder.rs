//! Fuzz target: one record frame, checked against the epoch in the input's first 8 bytes.
//!
//! The body lives in `sagalog_wal_format::fuzzing` so that the stable test
//! `wal-format/tests/fuzz_stable.rs` runs exactly the same checks on every CI run.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sagalog_wal_format::fuzzing::frame_decoder(data));
