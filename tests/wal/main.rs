//! The write-ahead log: round trips, torn tails, corruption, power loss in a group commit,
//! injected I/O faults, the `wal` CLI and SIGKILL of real writer processes.
//!
//! One test binary for the area (each file is a module), so the suite links a few binaries
//! instead of one per file.

mod common;
mod power_loss;
mod wal_cli;
mod wal_corruption;
mod wal_crash;
mod wal_faults;
mod wal_roundtrip;
mod wal_torn_tail;
