//! The executor, recovery, the archive and the participants: compensation, cancel, STUCK and
//! resolve, crash recovery by marker, the sled index, the participant contract (conformance)
//! and outages behind circuit breakers.
//!
//! One test binary for the area (each file is a module), so the suite links a few binaries
//! instead of one per file.

mod archive;
mod cancel_interrupt;
mod compensation;
mod delay;
mod engine_support;
mod fs_marker;
mod guards;
mod http;
mod index;
mod late_commit;
mod limits;
mod outputs;
mod participant_conformance;
mod participant_outage;
#[path = "../support/postgres.rs"]
mod pg_support;
mod races;
mod recovery;
mod reuse;
mod side_files;
