//! The write-ahead log on disk.
//!
//! - [`Journal`] (writer.rs) is the cheap, cloneable handle appenders use; one writer thread
//!   owns the active segment and group-commits whatever is waiting in its bounded channel.
//! - [`scan`] (scan.rs) reads and verifies a whole log through memory maps; open, `verify`,
//!   `dump` and recovery all use it.
//! - [`repair`] (repair.rs) is the deliberate, backed-up cutting of a damaged log.
//! - segment.rs owns segment files: listing, mapping, creating, truncating, deleting.
//! - faults.rs injects write, fsync and segment-creation failures for tests.

mod error;
mod faults;
mod options;
mod repair;
mod scan;
mod segment;
mod writer;

pub use error::Error;
pub use faults::{CreateStep, IoFaults};
pub use options::{Options, SyncPolicy};
pub use repair::{RepairMode, RepairReport, repair};
pub use scan::{LogSummary, Problem, SegmentReport, Severity, scan, scan_from, scan_upto, scan_window, verify};
pub use writer::{Journal, Opened, Queued};
