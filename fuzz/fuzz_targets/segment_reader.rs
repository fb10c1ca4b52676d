//! Fuzz target: a whole segment file, header, frames and tail.
//!
//! The body lives in `sagalog_wal_format::fuzzing` so that the stable test
//! `wal-format/tests/fuzz_stable.rs` runs exactly the same checks on every CI run.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sagalog_wal_format::fuzzing::segment_reader(data));
