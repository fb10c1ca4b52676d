//! The operator toolkit: `replay` (plan, offline replay, `--compensate-since`), `audit` and
//! `export`, on crafted and crashed data directories.
//!
//! One test binary for the area (each file is a module), so the suite links a few binaries
//! instead of one per file.

mod audit;
mod config_check;
mod export;
mod http;
mod ops_support;
mod replay;
mod replay_crash;
mod replay_demo;
