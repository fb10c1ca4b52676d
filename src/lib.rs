//! sagalog: a durable saga engine.
//!
//! The map of the crate, in the order data flows through it:
//! - [`data_dir`] owns the data directory's layout and the OS lock that gives one process
//!   at a time the right to write it;
//! - [`journal`] owns the write-ahead log on disk: the single writer thread with group
//!   commit, segment rotation, the memory-mapped reader, open-time recovery of a torn tail,
//!   and the offline `verify` / `repair` operations. The bytes themselves are defined by the
//!   `sagalog-wal-format` crate;
//! - [`cli`] is the `sagalog` command line; `anyhow` is used only there and in `main.rs`.
//!
//! The engine, executor, participants, recovery and the gRPC API build on the journal and
//! arrive in their own modules.

pub mod cli;
pub mod data_dir;
pub mod journal;

pub use sagalog_wal_format as wal_format;
