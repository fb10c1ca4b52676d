//! Interrupting a step's statement when its saga is cancelled (`Participant::interrupt`).
//!
//! A participant registers each step while that step's own statements run on a connection
//! ([`Running::enter`], dropped when they end), with the connection's way to stop its current
//! statement: SQLite's interrupt handle, PostgreSQL's cancel token. (DuckDB's steps are not
//! interrupted: its interrupt is connection-wide and would reach the other steps of the same
//! group commit; a cancelled DuckDB step finishes, and compensation undoes it.) The executor
//! asks to interrupt a step by key and attempt; only a step registered right now is
//! interrupted, under the same lock that ends its registration, so an interrupt never reaches
//! the statements of the next step run on the same connection. That holds for SQLite, whose
//! interrupt acts at once and only on a statement running then. PostgreSQL's cancel request
//! travels on a connection of its own and may land late: it then costs the step it lands on
//! one retryable failure, settled like any.
//!
//! An interrupted step is rolled back by its participant, but the executor does not rely on
//! that: it journals the attempt as maybe applied, and the marker settles it (`in_doubt.rs`).
//!
//! Never does: stop a step's commit on purpose, or interrupt a step that is not running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::StepKey;

/// What stops the statement running on one connection.
pub(crate) trait Interrupter: Send + 'static {
    fn interrupt(&self);
}

struct Slot {
    attempt: u32,
    interrupter: Box<dyn Interrupter>,
    interrupted: bool,
}

/// The steps running now on a participant, by key.
#[derive(Clone, Default)]
pub(crate) struct Running(Arc<Mutex<HashMap<StepKey, Slot>>>);

impl Running {
    /// Registers `key`'s attempt while its statements run; the registration ends with the
    /// guard.
    pub(crate) fn enter(&self, key: &StepKey, attempt: u32, interrupter: impl Interrupter) -> Entered {
        let slot = Slot { attempt, interrupter: Box::new(interrupter), interrupted: false };
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), slot);
        Entered { running: self.clone(), key: key.clone(), attempt }
    }

    /// Interrupts `key`'s attempt `attempt` if it runs now; answers whether it did.
    pub(crate) fn interrupt(&self, key: &StepKey, attempt: u32) -> bool {
        let mut running = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get_mut(key) {
            Some(slot) if slot.attempt == attempt => {
                slot.interrupted = true;
                slot.interrupter.interrupt();
                true
            }
            _ => false,
        }
    }
}

/// A step's registration; ends when dropped.
pub(crate) struct Entered {
    running: Running,
    key: StepKey,
    attempt: u32,
}

impl Entered {
    /// The attempt registered.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the step was interrupted (checked before each of its statements: an interrupt
    /// that arrived between two statements stops the next one).
    pub(crate) fn interrupted(&self) -> bool {
        let running = self.running.0.lock().unwrap_or_else(PoisonError::into_inner);
        running.get(&self.key).is_some_and(|slot| slot.attempt == self.attempt && slot.interrupted)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut running = self.running.0.lock().unwrap_or_else(PoisonError::into_inner);
        if running.get(&self.key).is_some_and(|slot| slot.attempt == self.attempt) {
            running.remove(&self.key);
        }
    }
}

impl Interrupter for rusqlite::InterruptHandle {
    fn interrupt(&self) {
        rusqlite::InterruptHandle::interrupt(self);
    }
}

/// PostgreSQL: a cancel request for the connection's current query, sent on a connection of
/// its own (needs a Tokio runtime; without one nothing is sent).
impl Interrupter for tokio_postgres::CancelToken {
    fn interrupt(&self) {
        let token = self.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = token.cancel_query(tokio_postgres::NoTls).await {
                    tracing::warn!(error = %e, "could not send a cancel request for an interrupted step");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::participant::Direction;

    struct Count(Arc<AtomicU32>);
    impl Interrupter for Count {
        fn interrupt(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn key(step: u32) -> StepKey {
        StepKey { saga_id: "s".into(), step, direction: Direction::Forward, scope: None }
    }

    /// Only the registered attempt of the registered key is interrupted, and only while it is
    /// registered; a later attempt's registration is not ended by an earlier guard.
    #[test]
    fn only_a_running_attempt_is_interrupted() {
        let running = Running::default();
        let hits = Arc::new(AtomicU32::new(0));
        assert!(!running.interrupt(&key(0), 1), "nothing runs");
        let entered = running.enter(&key(0), 2, Count(hits.clone()));
        assert!(!running.interrupt(&key(0), 1), "another attempt");
        assert!(!running.interrupt(&key(1), 2), "another step");
        assert!(!entered.interrupted());
        assert!(running.interrupt(&key(0), 2));
        assert!(entered.interrupted());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        drop(entered);
        assert!(!running.interrupt(&key(0), 2), "its statements ended");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
