//! Shutdown: the draining flag and the participant calls in flight.
//!
//! Once [`Drain::start`] is called, no saga is submitted and no new step starts; it then waits,
//! without polling, for every participant call under way to return and for its outcome to be
//! journaled (made durable, or at least handed to the journal writer, which keeps queue order
//! and syncs it on shutdown), or for the grace period to run out.
//!
//! Owns the counters behind that wait; a [`CallInFlight`] guard keeps them right on every exit
//! path, a task dropped on a journal error included.
//!
//! Never does: cancel or abort a call (one still running at the deadline is left to recovery,
//! which settles it by its marker), or hold a lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub(super) struct Drain {
    draining: AtomicBool,
    /// Participant calls running now.
    calls: AtomicUsize,
    /// Calls started whose outcome is not yet journaled (`calls` is a subset).
    unjournaled: AtomicUsize,
    /// Woken when `unjournaled` drops to zero.
    idle: Notify,
}

impl Drain {
    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Counts a participant call from now until the guard is dropped (once its outcome is
    /// journaled).
    pub(super) fn call_started(&self) -> CallInFlight<'_> {
        self.unjournaled.fetch_add(1, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        CallInFlight { drain: self, calling: true }
    }

    /// Sets the draining flag, then waits up to `grace` for the calls in flight to return and
    /// their outcomes to be journaled. Returns the number of calls still running then.
    pub(super) async fn start(&self, grace: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            // Created before the check, so a wake-up between the two is not lost.
            let idle = self.idle.notified();
            if self.unjournaled.load(Ordering::SeqCst) == 0 {
                return self.calls.load(Ordering::SeqCst);
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.calls.load(Ordering::SeqCst);
            }
        }
    }
}

/// A participant call in flight: counted as running until [`CallInFlight::returned`], and as
/// unjournaled until dropped.
pub(super) struct CallInFlight<'a> {
    drain: &'a Drain,
    calling: bool,
}

impl CallInFlight<'_> {
    /// The participant answered (or the call timed out); its outcome is not journaled yet.
    pub(super) fn returned(&mut self) {
        if std::mem::replace(&mut self.calling, false) {
            self.drain.calls.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for CallInFlight<'_> {
    fn drop(&mut self) {
        self.returned();
        if self.drain.unjournaled.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drain.idle.notify_waiters();
        }
    }
}
