//! Injected I/O failures for the journal writer, so tests can prove what an fsync or write
//! error does without a failing disk.
//!
//! The writer consults the hooks before each real write and `fdatasync` of a segment. A
//! failed write is made realistic: half of the buffer is written first, as a short write
//! followed by an error would leave it. Counters let a test assert that a failed fsync is
//! never retried.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts segment writes and syncs and fails the n-th one (1-based; 0 = never).
#[derive(Debug, Default)]
pub struct IoFaults {
    fail_write_at: AtomicU64,
    fail_sync_at: AtomicU64,
    writes: AtomicU64,
    syncs: AtomicU64,
}

impl IoFaults {
    pub fn new() -> Self {
        IoFaults::default()
    }

    /// Makes the `n`-th sync from now fail (1 = the next one).
    pub fn fail_sync_in(&self, n: u64) {
        self.fail_sync_at.store(self.syncs.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// Makes the `n`-th write from now fail after writing half its bytes (1 = the next one).
    pub fn fail_write_in(&self, n: u64) {
        self.fail_write_at.store(self.writes.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// Segment syncs attempted so far (failed ones included).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Segment writes attempted so far (failed ones included).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Called before a sync: `Err` means "this sync failed".
    pub(crate) fn on_sync(&self) -> io::Result<()> {
        let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_sync_at.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        Ok(())
    }

    /// Called before a write of `len` bytes: `Some(k)` means "write only k bytes, then fail".
    pub(crate) fn on_write(&self, len: usize) -> Option<usize> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        (n == self.fail_write_at.load(Ordering::SeqCst)).then_some(len / 2)
    }
}
