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
    /// Woken when the drain starts (a delay step's wait ends then).
    began: Notify,
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

    /// [`Drain::call_started`], unless draining: `None` then, and the step must not start.
    /// The count goes up before the flag is read, and [`Drain::start`] sets the flag before it
    /// reads the count (both `SeqCst`), so either the drain waits for this call or the call
    /// sees the flag: no step starts after `start` has returned.
    pub(super) fn admit(&self) -> Option<CallInFlight<'_>> {
        let call = self.call_started();
        // Dropping `call` wakes a drain waiting on it.
        (!self.is_draining()).then_some(call)
    }

    /// Returns once a drain has started (at once if one has): what a delay step's wait,
    /// which no call counts, ends on.
    pub(super) async fn started(&self) {
        loop {
            // Created before the check, so a start between the two is not lost.
            let began = self.began.notified();
            if self.is_draining() {
                return;
            }
            began.await;
        }
    }

    /// Sets the draining flag, then waits up to `grace` for the calls in flight to return and
    /// their outcomes to be journaled. Returns the number of calls still running then.
    pub(super) async fn start(&self, grace: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        self.began.notify_waiters();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_last_outcome_then_returns_without_polling() {
        let drain = std::sync::Arc::new(Drain::default());
        let held = std::sync::Arc::clone(&drain);
        let (entered, started) = tokio::sync::oneshot::channel();
        let call = tokio::spawn(async move {
            let mut in_flight = held.call_started();
            let _ = entered.send(());
            tokio::time::sleep(Duration::from_millis(30)).await;
            in_flight.returned();
            tokio::time::sleep(Duration::from_millis(30)).await; // journaling the outcome
            drop(in_flight);
        });
        started.await.unwrap();
        let began = std::time::Instant::now();
        assert_eq!(drain.start(Duration::from_secs(10)).await, 0);
        assert!(drain.is_draining());
        assert!(began.elapsed() >= Duration::from_millis(50), "returned before the outcome was journaled");
        assert!(began.elapsed() < Duration::from_secs(5), "did not wake on the last guard");
        call.await.unwrap();
    }

    #[tokio::test]
    async fn reports_the_calls_still_running_at_the_deadline() {
        let drain = Drain::default();
        let _running = drain.call_started();
        let mut returned = drain.call_started();
        returned.returned();
        assert_eq!(drain.start(Duration::from_millis(20)).await, 1);
    }
}
