//! Concurrency: `max_in_flight` slots, the queue of sagas waiting for one, and the worker that
//! holds a slot. A saga parked behind an open breaker, waiting out a delay step, or STUCK gives
//! its slot up.
//!
//! A queued saga costs its state only, not a tokio task: recovery may adopt a hundred thousand
//! at once. Taking a slot and queueing happen under the queue's lock, and so does a worker's
//! "queue empty, release my slot": a saga can never be queued while every slot's worker is
//! leaving.
//!
//! Never does: hold the queue's lock across an `.await` (it guards a push, a pop or a slot
//! release, nothing more), or start a queued saga while draining (queued sagas are journaled;
//! the next start resumes them).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::drain::Drain;
use super::task::SagaTask;

pub(super) struct Slots {
    permits: Arc<Semaphore>,
    /// Sagas waiting for a slot, oldest first.
    waiting: Mutex<VecDeque<SagaTask>>,
}

impl Slots {
    pub(super) fn new(max_in_flight: usize) -> Slots {
        Slots { permits: Arc::new(Semaphore::new(max_in_flight)), waiting: Mutex::new(VecDeque::new()) }
    }

    fn waiting(&self) -> MutexGuard<'_, VecDeque<SagaTask>> {
        // Pushes and pops only; a poisoned lock still holds a valid queue.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `task` in a free slot, or queues it for the next slot to free up.
    pub(super) fn dispatch(&self, task: SagaTask) {
        let mut waiting = self.waiting();
        match self.permits.clone().try_acquire_owned() {
            Ok(slot) => {
                drop(waiting);
                tokio::spawn(worker(slot, task));
            }
            Err(_) => waiting.push_back(task),
        }
    }

    /// The next waiting saga for the worker holding `slot`, or `None` after releasing the slot
    /// (under the queue's lock) when none is left or the executor is draining.
    fn next_or_release(&self, slot: OwnedSemaphorePermit, drain: &Drain) -> Option<(OwnedSemaphorePermit, SagaTask)> {
        let mut waiting = self.waiting();
        let next = if drain.is_draining() { None } else { waiting.pop_front() };
        match next {
            Some(next) => Some((slot, next)),
            None => {
                drop(slot);
                None
            }
        }
    }
}

/// Holds one slot: drives a saga until it ends or needs an operator, then takes the next
/// waiting saga, until none is left.
async fn worker(mut slot: OwnedSemaphorePermit, mut task: SagaTask) {
    let exec = task.exec.clone();
    loop {
        if let Some(waiting) = task.run().await {
            // A STUCK saga waits for an operator, a parked one for its breaker or its delay's
            // deadline, outside the slots: none must starve others.
            if waiting.is_parked() {
                tokio::spawn(waiting.wait_while_parked());
            } else {
                tokio::spawn(waiting.wait_for_operator());
            }
        }
        match exec.inner.slots.next_or_release(slot, &exec.inner.drain) {
            Some((kept, next)) => (slot, task) = (kept, next),
            None => return,
        }
    }
}
