//! Injected I/O failures for the journal writer, so tests can prove what an fsync, write or
//! segment-creation error does without a failing disk. Never consulted in production (the
//! hooks exist only when `Options::faults` is set) and never touches a file itself.
//!
//! The writer consults the hooks before each real write and `fdatasync` of a segment, and
//! before each step of creating a segment. A failed write is made realistic: half of the
//! buffer is written first, as a short write followed by an error would leave it. Counters let
//! a test assert that a failed fsync is never retried. A test can also hold the writer inside
//! its next sync, to decide exactly which appends form the next batch, and let held syncs
//! through one at a time.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

/// A step of creating a segment file, in the order the writer takes them (see
/// `segment::create`): the steps from `SyncDir` on come after the new segment is visible under
/// its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateStep {
    /// Creating `<segment>.wal.tmp`.
    CreateTmp,
    /// Writing the segment header into it.
    WriteHeader,
    /// `fsync` of the temporary file.
    SyncTmp,
    /// Renaming it to its final name.
    Rename,
    /// `fsync` of the journal directory after the rename.
    SyncDir,
    /// Opening the new segment for appending.
    OpenAppend,
}

impl CreateStep {
    pub const ALL: [CreateStep; 6] = [
        CreateStep::CreateTmp,
        CreateStep::WriteHeader,
        CreateStep::SyncTmp,
        CreateStep::Rename,
        CreateStep::SyncDir,
        CreateStep::OpenAppend,
    ];
}

/// Counts segment writes, syncs and creations and fails the n-th one (1-based; 0 = never).
#[derive(Debug, Default)]
pub struct IoFaults {
    fail_write_at: AtomicU64,
    fail_sync_at: AtomicU64,
    /// (n-th creation, step it fails at).
    fail_create_at: Mutex<Option<(u64, CreateStep)>>,
    writes: AtomicU64,
    syncs: AtomicU64,
    creates: AtomicU64,
    /// While true, a sync waits (before it runs) until [`IoFaults::release_syncs`].
    hold: Mutex<bool>,
    held_changed: Condvar,
    /// True while the writer waits in a held sync.
    waiting: AtomicBool,
    /// Held syncs still allowed through (see [`IoFaults::let_syncs_through`]).
    passes: AtomicU64,
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

    /// Makes the `n`-th segment creation from now (1 = the next one) fail at `step`; the steps
    /// before it happen for real, `step` itself does not.
    pub fn fail_create_in(&self, n: u64, step: CreateStep) {
        let at = self.creates.load(Ordering::SeqCst) + n;
        *self.fail_create_at.lock().unwrap_or_else(PoisonError::into_inner) = Some((at, step));
    }

    /// Makes every sync from now on wait, before it runs, until [`IoFaults::release_syncs`].
    pub fn hold_syncs(&self) {
        *self.hold.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// While syncs are held, lets the next `n` of them run (the one waiting now first); the
    /// sync after them is held again. A test uses it to make the writer sync one batch and
    /// stop inside the next one's sync, with everything queued meanwhile written in it.
    pub fn let_syncs_through(&self, n: u64) {
        let _held = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        self.passes.fetch_add(n, Ordering::SeqCst);
        self.held_changed.notify_all();
    }

    /// Lets held syncs go on.
    pub fn release_syncs(&self) {
        *self.hold.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.held_changed.notify_all();
    }

    /// Whether the writer is waiting in a held sync right now.
    pub fn sync_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Segment syncs attempted so far (failed ones included).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Segment writes attempted so far (failed ones included).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Segment creations attempted so far (failed ones included).
    pub fn creates(&self) -> u64 {
        self.creates.load(Ordering::SeqCst)
    }

    /// Called before a sync: `Err` means "this sync failed".
    pub(crate) fn on_sync(&self) -> io::Result<()> {
        let mut held = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        while *held {
            if self.passes.load(Ordering::SeqCst) > 0 {
                self.passes.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            self.waiting.store(true, Ordering::SeqCst);
            held = self.held_changed.wait(held).unwrap_or_else(PoisonError::into_inner);
        }
        self.waiting.store(false, Ordering::SeqCst);
        drop(held);
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

    /// Called when a segment creation starts: the step at which it must fail, if any.
    pub(crate) fn on_create(&self) -> Option<CreateStep> {
        let n = self.creates.fetch_add(1, Ordering::SeqCst) + 1;
        match *self.fail_create_at.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((at, step)) if at == n => Some(step),
            _ => None,
        }
    }
}
