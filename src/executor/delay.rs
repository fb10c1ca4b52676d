//! Delay steps: an action with `delay_ms` waits, durably, and touches no participant.
//!
//! Owns a delay step's three moments. **Start**: the deadline (wall-clock ms since the epoch,
//! `now + delay`) is journaled in the step's `StepStarted`, admitted like a participant call
//! (so no delay starts once a drain has returned), and made durable before the wait begins.
//! **Wait**: `Saga::next` says [`Next::Wait`] with the journaled deadline; the task gives its
//! `in_flight_max` slot up and sleeps outside the slots (as a saga parked behind a breaker
//! does), waking early for a control record (a cancel makes `next` compensate at once: the
//! saga queues for a slot again) or a drain (the task ends; the saga stays as journaled).
//! **End**: once the deadline has passed, with a slot again, `StepSucceeded` is journaled,
//! unless a control record made it stale.
//!
//! Why the deadline is wall-clock and journaled: it must outlive the process. A restart
//! replays the `StepStarted`, `next` says `Wait` with the same deadline, and the task waits
//! only for what is left of it (nothing, if it has passed): the delay is neither started over
//! nor shortened, and the step's `StepStarted` and `StepSucceeded` are journaled once each.
//! A wall clock set back makes the wait longer by as much; one set forward, shorter.
//!
//! Never does: compute a deadline for a step whose `StepStarted` journaled one, call a
//! participant or look up a marker for a delay step, hold a slot while waiting, or hold a std
//! `Mutex` across an `.await`.

use std::time::Duration;

use super::handle::now_ms;
use super::task::{Check, SagaTask};
use crate::engine::record::{Started, Succeeded};
use crate::engine::{Next, Record};
use crate::journal;
use crate::participant::Direction;

impl SagaTask {
    /// The delay of step `step` if its action is a delay action (journaled definition first,
    /// today's config for a saga journaled before definitions were), or why it has none.
    pub(super) fn delay_of(&self, step: u32) -> Option<Result<u64, String>> {
        let call = &self.saga.steps.get(step as usize)?.call;
        let catalog = &self.exec.inner.catalog;
        let action = self.saga.actions.get(&call.action).or_else(|| catalog.action(&call.action))?;
        crate::catalog::delay_of(action, call, catalog.config.executor.delay_ms_max)
    }

    /// Starts a delay step: journals its `StepStarted` with the deadline and waits until it is
    /// durable. The wait itself is the drive loop's next `Next::Wait`.
    pub(super) async fn start_delay(
        &mut self,
        step: u32,
        attempt: u32,
        delay: Result<u64, String>,
    ) -> Result<(), journal::Error> {
        let delay_ms = match delay {
            Ok(ms) => ms,
            Err(error) => {
                let error = format!("cannot run step: {error}");
                return self.fail_for_good(step, Direction::Forward, attempt, error, false).await;
            }
        };
        let at_ms = now_ms();
        let deadline_ms = at_ms.saturating_add(delay_ms);
        let saga = self.saga.id.clone();
        let direction = Direction::Forward;
        let started = Started { saga, step, direction, attempt, at_ms, deadline_ms: Some(deadline_ms) };
        let exec = self.exec.clone();
        // Admitted like a participant call, so that no step starts after a drain returned; no
        // participant is called, so the admission ends once the start is journaled.
        let Some(admitted) =
            self.journal_start(&exec.inner.drain, Record::StepStarted(started), Check::Planned).await?
        else {
            return Ok(());
        };
        drop(admitted);
        tracing::info!(saga_id = %self.saga.id, step, delay_ms, deadline_ms, "delay step started (deadline journaled)");
        Ok(())
    }

    /// `Next::Wait`, holding a slot: journals the step's success if its deadline has passed,
    /// else leaves the slot to wait outside it ([`SagaTask::wait_out_delay`]).
    pub(super) async fn wait_delay(&mut self, step: u32, until_ms: u64) -> Result<(), journal::Error> {
        let at_ms = now_ms();
        if at_ms < until_ms {
            self.leave_slot = true;
            return Ok(());
        }
        let attempt = self.saga.steps.get(step as usize).map_or(0, |s| s.forward.total_attempts);
        let saga = self.saga.id.clone();
        let direction = Direction::Forward;
        let outputs = Default::default();
        let succeeded = Succeeded { saga, step, direction, attempt, by_marker: false, at_ms, outputs };
        // A decision, like a start: not journaled if a cancel made it stale.
        if self.journal_if_planned(Record::StepSucceeded(succeeded)).await? {
            tracing::info!(saga_id = %self.saga.id, step, late_ms = at_ms - until_ms, "delay step ended");
        }
        Ok(())
    }

    /// Waits out a delay holding no slot, until its deadline, a control record that changes
    /// the plan (a cancel: compensate now), or a drain (the task ends; the next start resumes
    /// the wait from the journal). Then queues the saga for a slot again.
    pub(super) async fn wait_out_delay(mut self) {
        self.holds_slot = false;
        let exec = self.exec.clone();
        loop {
            if exec.draining() {
                return self.end().await;
            }
            let Next::Wait { until_ms, .. } = self.saga.next() else { break };
            let now = now_ms();
            if now >= until_ms {
                break;
            }
            let remaining = Duration::from_millis(until_ms - now);
            let paused = tokio::select! {
                paused = self.pause(remaining) => paused,
                () = exec.inner.drain.started() => Ok(()),
            };
            if let Err(e) = paused {
                tracing::error!(saga_id = %self.saga.id, error = %e, "saga task stopped: journal unavailable");
                return self.end().await;
            }
        }
        self.holds_slot = true;
        self.redispatch();
    }
}
