//! sagalog: a durable saga engine.
//!
//! The map of the crate, in the order data flows through it:
//! - [`data_dir`] owns the data directory's layout and the OS lock that gives one process
//!   at a time the right to write it;
//! - [`journal`] owns the write-ahead log on disk: the single writer thread with group
//!   commit, segment rotation, the memory-mapped reader, open-time recovery of a torn tail,
//!   and the offline `verify` / `repair` operations. The bytes themselves are defined by the
//!   `sagalog-wal-format` crate;
//! - [`config`] is the config file's schema, defaults and embedded default, a leaf that
//!   imports nothing else of the crate; [`catalog`] checks it: the named, typed actions clients
//!   use against their participants, validation of submitted sagas, binding of their values;
//! - [`engine`] is the pure saga state machine: journal records in, next action out;
//! - [`participant`] holds the `Participant` contract and its implementations (PostgreSQL,
//!   SQLite, DuckDB, files, and an in-memory one for tests);
//! - [`executor`] runs sagas journal-first, with retries, timeouts, circuit breakers and
//!   compensation; [`recovery`] rebuilds sagas from the journal after a crash and hands them
//!   to it;
//! - [`index`] archives finished sagas in sled, so status queries outlive their journal
//!   segments; [`checkpoint`] is the file that says from where recovery must replay;
//! - [`node`] assembles a running instance (lock, journal, participants, executor, recovery);
//! - [`api`] holds the generated gRPC types and the status conversion both sides share;
//!   [`server`] serves them (auth, limits, health, metrics endpoint, graceful shutdown);
//! - [`metrics`] holds the process-wide Prometheus metrics; [`clock`] reads the wall clock
//!   for the timestamps sagalog records;
//! - [`ops`] is the offline operator toolkit (recovery plan, replay, audit, export);
//! - [`cli`] is the `sagalog` command line; `anyhow` is used only there and in `main.rs`;
//! - [`client`] is the Rust client of the gRPC API, used by the CLI's client commands and tests.
//!
//! The modules form no import cycle; `tests/architecture.rs` enforces that and the import
//! rules of `docs/architecture.md`.

pub mod api;
pub mod catalog;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod data_dir;
pub mod engine;
pub mod executor;
pub mod index;
pub mod journal;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod participant;
pub mod recovery;
pub mod server;

pub use sagalog_wal_format as wal_format;
