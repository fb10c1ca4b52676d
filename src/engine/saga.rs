//! One saga's state and the two pure functions that drive it: [`Saga::apply`] (a journal
//! record → the new state) and [`Saga::next`] (the state → what to do now).
//!
//! Rules (see docs/recovery.md for the table):
//! - steps run forward in order; a step is *uncertain* while it is in flight (started, no
//!   outcome) or after a failure that may have applied it (retryable error, timeout);
//! - a retryable failure is retried while the step's budget lasts; a permanent failure, an
//!   exhausted budget or a cancel switches the saga to compensation;
//! - once an attempt may have applied the step, the step stays uncertain until it succeeds or
//!   its marker says "not applied": a later attempt's permanent failure does not clear it;
//! - compensation walks the steps in strict reverse order: an uncertain forward step is first
//!   resolved by its participant's marker, a step that certainly did not apply is skipped,
//!   every applied step is compensated; a compensation that fails permanently or exhausts its
//!   budget makes the saga STUCK until an operator resolves it;
//! - a marker that cannot be read (a lookup failed permanently: no marker table, an
//!   invalidated database, EACCES) is asked again at most the step's compensation budget
//!   times, then the saga is STUCK with the lookup's error: it never loops;
//! - an operator may reopen a COMPLETED saga (`Resolved { CompensateCompleted }`): it goes back
//!   to compensating, and every step is compensated like after a failure;
//! - a *delay step* (its `StepStarted` carries a `deadline_ms`) touches no participant: while
//!   it is in flight `next` says [`Next::Wait`] until the journaled deadline (never a marker
//!   lookup, and never a new deadline), a cancel does not wait for it to end, and compensation
//!   passes over it (it has no effect to undo).
//!
//! Records that do not fit the state (a step number out of range, another saga's record) are
//! ignored with no change: the journal is trusted, and recovery must never panic on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::model::Direction;
use super::model::{OWN_OUTPUT_PREFIX, OutputRef, StepCall, StepPolicy};
use super::record::{Outcome, Record, ResolveDecision, Submitted};
use super::value::Value;
use crate::config::ActionConfig;

/// Where a saga stands, as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    Pending,
    Running,
    Completed,
    Compensating,
    Compensated,
    Stuck,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Running => "RUNNING",
            Status::Completed => "COMPLETED",
            Status::Compensating => "COMPENSATING",
            Status::Compensated => "COMPENSATED",
            Status::Stuck => "STUCK",
        }
    }

    /// Completed and Compensated are final; Stuck waits for an operator.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated)
    }
}

/// One direction of one step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepProgress {
    /// Attempts started against the current budget.
    pub attempts: u32,
    /// Attempts started in all.
    pub total_attempts: u32,
    /// Started, with no outcome journaled yet.
    pub in_flight: bool,
    /// Succeeded (the participant applied it, or its marker proved it was).
    pub done: bool,
    /// The last failure may have applied the effect.
    pub maybe_applied: bool,
    /// The last failure was permanent.
    pub failed_permanently: bool,
    pub last_error: Option<String>,
    pub by_marker: bool,
    /// Marker lookups that failed for good (`StepFailed { retryable: false, maybe_applied:
    /// true }`, which only a lookup journals): the effect's fate could not be learned. Counted
    /// against the step's compensation budget; an operator's `RetryCompensation` resets it.
    #[serde(default)]
    pub unreadable_markers: u32,
    pub first_started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// A delay step's deadline (wall-clock ms since the epoch), from its `StepStarted`: set
    /// for a delay step once it started, `None` for every other step. Left out of a snapshot
    /// when absent, so snapshots of sagas without delays keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// What the step returned when it succeeded (forward only; see `ActionConfig::returns`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Value>,
}

impl StepProgress {
    /// Whether the effect of this direction may exist without that being known for sure.
    pub fn uncertain(&self) -> bool {
        !self.done && (self.in_flight || self.maybe_applied)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub call: StepCall,
    pub policy: StepPolicy,
    pub forward: StepProgress,
    pub compensate: StepProgress,
}

impl StepState {
    /// Whether this is a delay step that has started (its forward `StepStarted` journaled a
    /// deadline): it waits, applies nothing anywhere, and has nothing to compensate.
    pub fn is_delay(&self) -> bool {
        self.forward.deadline_ms.is_some()
    }

    pub fn progress_of(&self, direction: Direction) -> &StepProgress {
        match direction {
            Direction::Forward => &self.forward,
            Direction::Compensate => &self.compensate,
        }
    }

    fn progress(&mut self, direction: Direction) -> &mut StepProgress {
        match direction {
            Direction::Forward => &mut self.forward,
            Direction::Compensate => &mut self.compensate,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    Forward,
    Compensating,
    Finished(Outcome),
}

/// What the executor should do for a saga now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run `step` in `direction` as attempt number `attempt`; `after_failure` asks for a
    /// back-off first.
    Run { step: u32, direction: Direction, attempt: u32, after_failure: bool },
    /// The step's effect is uncertain: look up its marker and journal what it says.
    Resolve { step: u32, direction: Direction },
    /// A delay step is in flight: wait until `until_ms` (wall-clock ms since the epoch, as its
    /// `StepStarted` journaled it; holding no slot), then journal its success. A deadline
    /// already passed is journaled at once.
    Wait { step: u32, until_ms: u64 },
    /// Every step is settled: journal `SagaFinished` with this outcome.
    Finish(Outcome),
    /// A compensation failed for good, or the marker of an in-doubt step could not be read
    /// within the compensation budget: wait for an operator.
    Stuck { step: u32 },
    /// The saga is finished; nothing to do.
    Done,
}

/// A saga's state, built only from its journal records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub id: String,
    pub digest: u32,
    pub steps: Vec<StepState>,
    phase: Phase,
    pub cancel_requested: bool,
    /// Why the saga compensates (the failure or "cancelled").
    pub compensation_reason: Option<String>,
    /// Recovery passes that found this saga unfinished.
    pub recoveries: u32,
    /// Records applied so far: a version number for watchers.
    pub version: u64,
    pub submitted_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// The action definitions journaled with `SagaSubmitted` (empty for records that predate
    /// them): what the executor runs, not today's config. Shared, so that the snapshots
    /// published to watchers do not copy it.
    #[serde(default)]
    pub actions: Arc<BTreeMap<String, ActionConfig>>,
    /// The marker scope journaled with `SagaSubmitted` (`None` for records that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Saga {
    /// The call of step `step` with every value it runs with: its own parameters, each `from`
    /// reference replaced by the referenced earlier step's output, and (for a compensation's
    /// `args = ["output.name"]`) the step's own forward outputs as `output.<name>`. An error
    /// names the reference that has no value (the earlier step has not returned it).
    pub fn resolved_call(&self, step: u32) -> Result<StepCall, String> {
        let Some(state) = self.steps.get(step as usize) else { return Err(format!("the saga has no step {step}")) };
        let mut call = state.call.clone();
        for (param, reference) in std::mem::take(&mut call.from) {
            let value = OutputRef::parse(&reference)
                .and_then(|r| self.steps.get(r.step as usize).filter(|_| r.step < step)?.forward.outputs.get(&r.output))
                .ok_or_else(|| format!("parameter {param:?} takes {reference}, which has no value"))?;
            call.params.insert(param, value.clone());
        }
        for (name, value) in &state.forward.outputs {
            call.params.insert(format!("{OWN_OUTPUT_PREFIX}{name}"), value.clone());
        }
        Ok(call)
    }

    /// The state right after `SagaSubmitted`.
    pub fn submitted(record: &Submitted) -> Saga {
        let steps = record
            .steps
            .iter()
            .zip(record.policies.iter().copied().chain(std::iter::repeat(DEFAULT_POLICY)))
            .map(|(call, policy)| StepState {
                call: call.clone(),
                policy,
                forward: StepProgress::default(),
                compensate: StepProgress::default(),
            })
            .collect();
        Saga {
            id: record.saga.clone(),
            digest: record.digest,
            steps,
            phase: Phase::Forward,
            cancel_requested: false,
            compensation_reason: None,
            recoveries: 0,
            version: 1,
            submitted_at_ms: record.at_ms,
            finished_at_ms: None,
            actions: Arc::new(record.actions.clone()),
            scope: record.scope.clone(),
        }
    }

    pub fn status(&self) -> Status {
        match self.phase {
            Phase::Finished(Outcome::Completed) => Status::Completed,
            Phase::Finished(Outcome::Compensated) => Status::Compensated,
            Phase::Compensating if matches!(self.next(), Next::Stuck { .. }) => Status::Stuck,
            Phase::Compensating => Status::Compensating,
            Phase::Forward if self.steps.iter().any(|s| s.forward.total_attempts > 0) => Status::Running,
            Phase::Forward => Status::Pending,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished(_))
    }

    /// Applies one of this saga's records. Records of other sagas and out-of-range steps
    /// change nothing.
    pub fn apply(&mut self, record: &Record) {
        if record.saga() != Some(self.id.as_str()) {
            return;
        }
        self.version += 1;
        match record {
            Record::SagaSubmitted(_) | Record::RecoveryStarted(_) => {}
            // The state the saga's records before this one built: the same as `self` live, the
            // only state replay has of the saga when it starts at this record.
            Record::SagaSnapshot(r) => {
                *self = (*r.saga).clone();
                self.version += 1;
            }
            Record::StepStarted(r) => {
                let Some(step) = self.steps.get_mut(r.step as usize) else { return };
                let p = step.progress(r.direction);
                p.attempts += 1;
                p.total_attempts += 1;
                p.in_flight = true;
                p.first_started_at_ms.get_or_insert(r.at_ms);
                if r.deadline_ms.is_some() {
                    p.deadline_ms = r.deadline_ms;
                }
            }
            Record::StepSucceeded(r) => {
                let Some(step) = self.steps.get_mut(r.step as usize) else { return };
                let p = step.progress(r.direction);
                p.in_flight = false;
                p.done = true;
                p.maybe_applied = false;
                p.by_marker = r.by_marker;
                p.finished_at_ms = Some(r.at_ms);
                p.outputs = r.outputs.clone();
                if r.direction == Direction::Forward && self.cancel_requested {
                    self.start_compensating("cancelled");
                }
            }
            Record::StepFailed(r) => {
                let Some(step) = self.steps.get_mut(r.step as usize) else { return };
                let budget = match r.direction {
                    Direction::Forward => step.policy.max_attempts,
                    Direction::Compensate => step.policy.compensate_max_attempts,
                };
                let p = step.progress(r.direction);
                p.in_flight = false;
                // Only the marker's verdict ("not applied", journaled as a retryable failure
                // without `maybe_applied`) clears the doubt an earlier attempt left. A permanent
                // failure speaks for its own attempt alone: an earlier attempt that timed out or
                // lost its reply may still have committed, so compensation must ask the marker.
                match (r.retryable, r.maybe_applied) {
                    (true, false) => p.maybe_applied = false,
                    (_, true) => p.maybe_applied = true,
                    (false, false) => {}
                }
                p.failed_permanently = !r.retryable;
                p.last_error = Some(r.error.clone());
                if !r.retryable && r.maybe_applied {
                    p.unreadable_markers += 1;
                }
                let exhausted = p.attempts >= budget;
                if r.direction == Direction::Forward && self.phase == Phase::Forward {
                    if !r.retryable {
                        self.start_compensating(&format!("step {} failed: {}", r.step, r.error));
                    } else if exhausted {
                        self.start_compensating(&format!("step {} failed {} times, last: {}", r.step, budget, r.error));
                    } else if self.cancel_requested {
                        self.start_compensating("cancelled");
                    }
                }
            }
            Record::SagaFinished(r) => {
                self.phase = Phase::Finished(r.outcome);
                self.finished_at_ms = Some(r.at_ms);
            }
            Record::CancelRequested(_) => {
                if self.is_finished() {
                    return;
                }
                self.cancel_requested = true;
                // A delay in flight has no effect to wait for: the cancel compensates at once.
                let in_flight = self.steps.iter().any(|s| s.forward.in_flight && !s.is_delay());
                if self.phase == Phase::Forward && !in_flight {
                    self.start_compensating("cancelled");
                }
            }
            Record::Resolved(r) if r.decision == ResolveDecision::CompensateCompleted => {
                // Only a completed saga is reopened; for any other saga this changes nothing,
                // so a stray or repeated record is harmless.
                if self.phase == Phase::Finished(Outcome::Completed) {
                    self.phase = Phase::Compensating;
                    self.finished_at_ms = None;
                    self.compensation_reason = Some(format!("completed saga compensated by {}", r.by));
                }
            }
            Record::Resolved(r) => {
                if self.phase != Phase::Compensating {
                    return;
                }
                for step in &mut self.steps {
                    let c = &mut step.compensate;
                    if c.done {
                        continue;
                    }
                    match r.decision {
                        // The operator took responsibility for every remaining compensation.
                        ResolveDecision::MarkCompensated => {
                            if step.forward.done || step.forward.uncertain() {
                                c.done = true;
                                c.in_flight = false;
                                c.last_error = Some(format!("marked compensated by {}", r.by));
                            }
                        }
                        ResolveDecision::RetryCompensation => {
                            c.attempts = 0;
                            c.failed_permanently = false;
                            step.forward.unreadable_markers = 0;
                        }
                        // Handled above, before the phase check.
                        ResolveDecision::CompensateCompleted => {}
                    }
                }
            }
        }
    }

    /// Counts a recovery pass that found this saga unfinished.
    pub fn note_recovery(&mut self) {
        if !self.is_finished() {
            self.recoveries += 1;
        }
    }

    fn start_compensating(&mut self, reason: &str) {
        if self.phase == Phase::Forward {
            self.phase = Phase::Compensating;
            self.compensation_reason = Some(reason.to_owned());
        }
    }

    /// What to do now. Pure: the same state always gives the same answer.
    pub fn next(&self) -> Next {
        match self.phase {
            Phase::Finished(_) => Next::Done,
            Phase::Forward => self.next_forward(),
            Phase::Compensating => self.next_compensation(),
        }
    }

    fn next_forward(&self) -> Next {
        let Some(i) = self.steps.iter().position(|s| !s.forward.done) else {
            return Next::Finish(Outcome::Completed);
        };
        let step = i as u32;
        let f = &self.steps[i].forward;
        if let (true, Some(until_ms)) = (f.in_flight, f.deadline_ms) {
            return Next::Wait { step, until_ms };
        }
        if f.in_flight {
            return Next::Resolve { step, direction: Direction::Forward };
        }
        // A failure in the forward phase is always retryable with budget left: anything else
        // switched the saga to compensation when it was applied.
        Next::Run { step, direction: Direction::Forward, attempt: f.total_attempts + 1, after_failure: f.attempts > 0 }
    }

    fn next_compensation(&self) -> Next {
        for (i, s) in self.steps.iter().enumerate().rev() {
            let step = i as u32;
            let (f, c) = (&s.forward, &s.compensate);
            if c.done || s.is_delay() {
                continue; // compensated, or a delay: nothing to undo
            }
            if f.uncertain() {
                // Bounded: a marker that cannot be read is an operator's call, not a loop.
                if f.unreadable_markers >= s.policy.compensate_max_attempts.max(1) {
                    return Next::Stuck { step };
                }
                return Next::Resolve { step, direction: Direction::Forward };
            }
            if !f.done {
                continue; // certainly never applied: nothing to undo
            }
            if c.in_flight {
                return Next::Resolve { step, direction: Direction::Compensate };
            }
            if c.failed_permanently || (c.attempts >= s.policy.compensate_max_attempts && c.attempts > 0) {
                return Next::Stuck { step };
            }
            return Next::Run {
                step,
                direction: Direction::Compensate,
                attempt: c.total_attempts + 1,
                after_failure: c.attempts > 0,
            };
        }
        Next::Finish(Outcome::Compensated)
    }
}

/// Budgets for steps journaled without a policy (never written by this version).
const DEFAULT_POLICY: StepPolicy = StepPolicy { max_attempts: 1, compensate_max_attempts: 1 };
