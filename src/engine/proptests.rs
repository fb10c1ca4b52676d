//! Property tests of the state machine, over two kinds of journals:
//!
//! - *arbitrary* record sequences (any kind, any step number, other sagas' records, any flags):
//!   `apply` never panics, and whatever state results, `next()` and `status()` agree and
//!   `next()` only ever asks for an action its rules allow;
//! - *driven* journals, written the way the executor writes them: follow `next()`, journal the
//!   outcome of a simulated participant that knows the truth (whether each effect really
//!   applied), with cancels injected anywhere (also between a `StepStarted` and its outcome),
//!   crashes that leave a step in doubt, operator decisions for STUCK sagas and reopens of
//!   completed ones, and delay steps among the others (waited out, cancelled mid-wait, crashed
//!   mid-wait). These check the saga protocol itself: forward steps in order, strictly
//!   decreasing compensations, never undoing what did not apply, never leaving applied effects
//!   behind, and termination once the participant behaves.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::model::{StepCall, StepPolicy};
use super::record::{
    CancelRequested, Failed, Finished, Outcome, Record, RecoveryStarted, ResolveDecision, Resolved, Started, Submitted,
    Succeeded,
};
use super::saga::{Next, Saga, Status, StepState};
use crate::engine::Direction::{self, Compensate as C, Forward as F};

const ID: &str = "saga-p";

fn submitted(policies: &[StepPolicy], steps: usize) -> Submitted {
    Submitted {
        saga: ID.into(),
        steps: (0..steps)
            .map(|i| StepCall { action: format!("a{i}"), params: BTreeMap::new(), from: Default::default() })
            .collect(),
        policies: policies.to_vec(),
        digest: 1,
        at_ms: 0,
        actions: Default::default(),
        scope: None,
    }
}

/// Nothing left to undo at this step: compensated, a delay (no effect), or its forward effect
/// certainly absent.
fn settled(s: &StepState) -> bool {
    s.compensate.done || s.is_delay() || (!s.forward.done && !s.forward.uncertain())
}

/// What must hold of any state, however it was reached.
fn check_state(saga: &Saga) {
    let next = saga.next();
    let status = saga.status();
    let steps = &saga.steps;
    let n = steps.len() as u32;
    let above_settled = |k: u32| steps[k as usize + 1..].iter().all(settled);
    assert_eq!(status.is_terminal(), next == Next::Done, "{status:?} vs {next:?}");
    assert_eq!(status.is_terminal(), saga.is_finished(), "{status:?}");
    assert_eq!(status == Status::Stuck, matches!(next, Next::Stuck { .. }), "{status:?} vs {next:?}");
    let forward_phase = matches!(status, Status::Pending | Status::Running);
    match next {
        Next::Run { step, direction: F, attempt, after_failure } => {
            assert!(forward_phase, "forward run while {status:?}");
            assert!(step < n);
            assert!(steps[..step as usize].iter().all(|s| s.forward.done), "step {step} runs before the steps below");
            let f = &steps[step as usize].forward;
            assert!(!f.done && !f.in_flight, "{f:?}");
            assert_eq!(attempt, f.total_attempts + 1);
            assert_eq!(after_failure, f.attempts > 0);
        }
        Next::Resolve { step, direction: F } if forward_phase => {
            assert!(step < n);
            assert!(steps[..step as usize].iter().all(|s| s.forward.done));
            assert!(steps[step as usize].forward.in_flight && !steps[step as usize].forward.done);
            assert!(!steps[step as usize].is_delay(), "a delay step is waited for, never looked up");
        }
        Next::Wait { step, until_ms } => {
            assert!(forward_phase, "a delay waited for while {status:?}");
            assert!(step < n);
            assert!(steps[..step as usize].iter().all(|s| s.forward.done), "delay {step} before the steps below");
            let f = &steps[step as usize].forward;
            assert!(f.in_flight && !f.done && f.deadline_ms == Some(until_ms), "{f:?}");
        }
        Next::Resolve { step, direction: F } => {
            assert_eq!(status, Status::Compensating);
            assert!(step < n && above_settled(step), "resolve {step} with unsettled steps above");
            let s = &steps[step as usize];
            assert!(s.forward.uncertain() && !s.compensate.done && !s.is_delay());
        }
        Next::Resolve { step, direction: C } => {
            assert_eq!(status, Status::Compensating);
            assert!(step < n && above_settled(step), "resolve compensation {step} with unsettled steps above");
            let s = &steps[step as usize];
            assert!(s.forward.done && s.compensate.in_flight && !s.compensate.done, "{s:?}");
        }
        Next::Run { step, direction: C, attempt, after_failure } => {
            assert_eq!(status, Status::Compensating);
            assert!(step < n && above_settled(step), "compensation {step} with unsettled steps above");
            let s = &steps[step as usize];
            let c = &s.compensate;
            assert!(s.forward.done, "compensating step {step}, whose forward effect is not known to exist");
            assert!(!s.is_delay(), "compensating delay step {step}, which has no effect");
            assert!(!c.done && !c.in_flight && !c.failed_permanently, "{c:?}");
            assert!(c.attempts == 0 || c.attempts < s.policy.compensate_max_attempts, "{c:?}");
            assert_eq!(attempt, c.total_attempts + 1);
            assert_eq!(after_failure, c.attempts > 0);
        }
        Next::Stuck { step } => {
            assert!(step < n && above_settled(step));
            let s = &steps[step as usize];
            let (f, c) = (&s.forward, &s.compensate);
            if f.uncertain() {
                // The marker of an in-doubt step could not be read within the budget.
                assert!(!c.done && f.unreadable_markers >= s.policy.compensate_max_attempts.max(1), "{f:?}");
            } else {
                assert!(f.done && !c.done && !c.in_flight);
                assert!(c.failed_permanently || c.attempts >= s.policy.compensate_max_attempts, "{c:?}");
            }
        }
        Next::Finish(Outcome::Completed) => {
            assert!(forward_phase);
            assert!(steps.iter().all(|s| s.forward.done));
        }
        Next::Finish(Outcome::Compensated) => {
            assert_eq!(status, Status::Compensating);
            assert!(steps.iter().all(settled));
        }
        Next::Done => {}
    }
}

fn arb_saga_id() -> impl Strategy<Value = String> {
    prop_oneof![9 => Just(ID.to_owned()), 1 => Just("other".to_owned())]
}

fn arb_step(steps: u32) -> impl Strategy<Value = u32> {
    prop_oneof![12 => 0..steps + 2, 1 => Just(u32::MAX)]
}

fn arb_direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(F), Just(C)]
}

fn arb_decision() -> impl Strategy<Value = ResolveDecision> {
    prop_oneof![
        Just(ResolveDecision::MarkCompensated),
        Just(ResolveDecision::RetryCompensation),
        Just(ResolveDecision::CompensateCompleted),
    ]
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![Just(Outcome::Completed), Just(Outcome::Compensated)]
}

/// Any record, for a saga of `steps` steps (and a few for another saga, or out of range).
fn arb_record(steps: u32) -> impl Strategy<Value = Record> {
    prop_oneof![
        4 => (arb_saga_id(), arb_step(steps), arb_direction(), 0..4u32, prop::option::weighted(0.2, 0..3u64))
            .prop_map(|(saga, step, direction, attempt, deadline_ms)| Record::StepStarted(Started { saga, step, direction, attempt, at_ms: 1, deadline_ms })),
        3 => (arb_saga_id(), arb_step(steps), arb_direction(), any::<bool>()).prop_map(|(saga, step, direction, by_marker)| {
            Record::StepSucceeded(Succeeded { saga, step, direction, attempt: 1, by_marker, at_ms: 2, outputs: Default::default() })
        }),
        3 => (arb_saga_id(), arb_step(steps), arb_direction(), any::<bool>(), any::<bool>()).prop_map(
            |(saga, step, direction, retryable, maybe_applied)| {
                Record::StepFailed(Failed { saga, step, direction, attempt: 1, error: "e".into(), retryable, maybe_applied, at_ms: 3 })
            }
        ),
        1 => (arb_saga_id(), arb_outcome()).prop_map(|(saga, outcome)| Record::SagaFinished(Finished { saga, outcome, at_ms: 4 })),
        1 => arb_saga_id().prop_map(|saga| Record::CancelRequested(CancelRequested { saga, at_ms: 5 })),
        2 => (arb_saga_id(), arb_decision())
            .prop_map(|(saga, decision)| Record::Resolved(Resolved { saga, decision, by: "op".into(), at_ms: 6 })),
        1 => Just(Record::RecoveryStarted(RecoveryStarted { reason: "recovery".into(), unfinished: 1, at_ms: 7 })),
        1 => arb_saga_id().prop_map(|saga| Record::SagaSubmitted(Submitted { saga, steps: Vec::new(), policies: Vec::new(), digest: 9, at_ms: 8, actions: Default::default(), scope: None })),
    ]
}

fn arb_policy() -> impl Strategy<Value = StepPolicy> {
    (0..4u32, 0..4u32)
        .prop_map(|(max_attempts, compensate_max_attempts)| StepPolicy { max_attempts, compensate_max_attempts })
}

/// An arbitrary saga (policies possibly missing or zero) and an arbitrary journal for it.
fn arb_journal() -> impl Strategy<Value = (usize, Vec<StepPolicy>, Vec<Record>)> {
    (0..5usize).prop_flat_map(|steps| {
        (
            Just(steps),
            prop::collection::vec(arb_policy(), 0..=steps),
            prop::collection::vec(arb_record(steps as u32), 0..80),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Any journal: no panic, and after every record the state is one `next()` can plan from.
    #[test]
    fn arbitrary_journals_never_panic_and_next_agrees_with_status((steps, policies, records) in arb_journal()) {
        let mut saga = Saga::submitted(&submitted(&policies, steps));
        check_state(&saga);
        for record in &records {
            let before = saga.clone();
            saga.apply(record);
            if record.saga() == Some(ID) {
                prop_assert_eq!(saga.version, before.version + 1);
            } else {
                prop_assert_eq!(&saga, &before, "another saga's record changed this one");
            }
            prop_assert_eq!(saga.steps.len(), steps);
            if before.is_finished() && !matches!(record, Record::SagaFinished(_) | Record::Resolved(_)) {
                prop_assert_eq!(before.status(), saga.status(), "{:?} changed a finished saga", record);
            }
            check_state(&saga);
        }
    }
}

/// What happens outside the saga's own plan before or during one action.
#[derive(Debug, Clone, Copy)]
enum Inject {
    Nothing,
    /// `CancelRequested` before the action.
    CancelBefore,
    /// `CancelRequested` after the action's `StepStarted`, before its outcome.
    CancelMid,
    /// `Resolved { CompensateCompleted }` (the undo of `sagalog replay`), whatever the state.
    Reopen,
    /// The process crashes after the action's `StepStarted`; the saga is rebuilt from the
    /// journal and continues.
    Crash,
}

/// One simulated action: which outcome the participant gives, the true fate of an effect
/// whose outcome is unknown, and what is injected around it.
#[derive(Debug, Clone, Copy)]
struct Choice {
    outcome: u8,
    fate: bool,
    inject: Inject,
}

fn arb_choice() -> impl Strategy<Value = Choice> {
    let inject = prop_oneof![
        8 => Just(Inject::Nothing),
        1 => Just(Inject::CancelBefore),
        1 => Just(Inject::CancelMid),
        1 => Just(Inject::Reopen),
        2 => Just(Inject::Crash),
    ];
    (any::<u8>(), any::<bool>(), inject).prop_map(|(outcome, fate, inject)| Choice { outcome, fate, inject })
}

/// A saga, its journal, and the truth the participant knows (which effects really exist).
struct Sim {
    policies: Vec<StepPolicy>,
    /// Which steps are delay steps (no participant: they wait, apply nothing, and are never
    /// compensated).
    delays: Vec<bool>,
    /// The deadline each delay step's last `StepStarted` journaled: a wait must be for it.
    deadlines: BTreeMap<u32, u64>,
    saga: Saga,
    journal: Vec<Record>,
    /// Whether each step's forward / compensating effect really applied.
    forward_applied: Vec<bool>,
    compensate_applied: Vec<bool>,
    /// Journal facts, kept as records are written, to check them without the engine's state.
    forward_succeeded: Vec<bool>,
    started: BTreeMap<(u32, Direction), u32>,
    last_compensation: Option<u32>,
    cancelled: bool,
    marked_by_operator: bool,
    retries_granted: u32,
    finishes: Vec<Outcome>,
}

impl Sim {
    fn new(policies: Vec<StepPolicy>, delays: &[bool]) -> Sim {
        let n = policies.len();
        let delays = (0..n).map(|k| delays.get(k).copied().unwrap_or(false)).collect();
        let saga = Saga::submitted(&submitted(&policies, n));
        let journal = vec![Record::SagaSubmitted(submitted(&policies, n))];
        Sim {
            policies,
            delays,
            deadlines: BTreeMap::new(),
            saga,
            journal,
            forward_applied: vec![false; n],
            compensate_applied: vec![false; n],
            forward_succeeded: vec![false; n],
            started: BTreeMap::new(),
            last_compensation: None,
            cancelled: false,
            marked_by_operator: false,
            retries_granted: 0,
            finishes: Vec::new(),
        }
    }

    fn truth(&mut self, step: u32, direction: Direction) -> &mut bool {
        match direction {
            F => &mut self.forward_applied[step as usize],
            C => &mut self.compensate_applied[step as usize],
        }
    }

    /// Journals `record` (checking the journal-level rules) and applies it.
    fn write(&mut self, record: Record) {
        match &record {
            Record::StepStarted(r) => {
                let (k, n) = (r.step, self.policies.len() as u32);
                assert!(k < n);
                let count = self.started.entry((k, r.direction)).or_default();
                *count += 1;
                assert_eq!(r.attempt, *count, "attempt numbers count every start");
                match r.direction {
                    F => {
                        assert_eq!(
                            self.delays[k as usize],
                            r.deadline_ms.is_some(),
                            "a delay step starts with a deadline"
                        );
                        assert!(
                            self.forward_succeeded[..k as usize].iter().all(|s| *s),
                            "forward step {k} started before every step below it succeeded"
                        );
                        assert!(self.last_compensation.is_none(), "forward step {k} started after compensation began");
                        assert!(*count <= self.policies[k as usize].max_attempts, "forward budget exceeded");
                    }
                    C => {
                        assert!(!self.delays[k as usize], "compensating delay step {k}, which has no effect");
                        assert!(self.forward_succeeded[k as usize], "compensating step {k}, which never succeeded");
                        if let Some(last) = self.last_compensation {
                            assert!(k <= last, "compensation of {k} after compensation of {last}");
                        }
                        self.last_compensation = Some(k);
                        let budget = self.policies[k as usize].compensate_max_attempts * (1 + self.retries_granted);
                        assert!(*count <= budget, "compensation budget exceeded");
                    }
                }
            }
            Record::StepSucceeded(r) if r.direction == F => {
                let k = r.step as usize;
                assert!(
                    self.forward_applied[k] || self.delays[k],
                    "success journaled for an effect that does not exist"
                );
                self.forward_succeeded[r.step as usize] = true;
            }
            Record::SagaFinished(r) => {
                match r.outcome {
                    Outcome::Completed => {
                        assert!(!self.cancelled, "a cancelled saga completed");
                        let applied = self.forward_applied.iter().zip(&self.delays).all(|(a, delay)| *a || *delay);
                        assert!(applied, "completed with a step not applied");
                        assert!(self.compensate_applied.iter().all(|a| !a), "completed after compensating");
                    }
                    Outcome::Compensated => {
                        if !self.marked_by_operator {
                            for (k, (f, c)) in self.forward_applied.iter().zip(&self.compensate_applied).enumerate() {
                                assert!(!f || *c, "compensated, but the effect of step {k} is left behind");
                            }
                        }
                    }
                }
                self.finishes.push(r.outcome);
            }
            Record::CancelRequested(_) if !self.saga.is_finished() => self.cancelled = true,
            _ => {}
        }
        let cancel = matches!(record, Record::CancelRequested(_));
        self.saga.apply(&record);
        self.journal.push(record);
        if cancel {
            assert!(!matches!(self.saga.next(), Next::Wait { .. }), "a cancel waits for a delay to end");
        }
        if self.saga.status() == Status::Pending {
            assert!(self.started.is_empty(), "PENDING after a step started");
        }
        check_state(&self.saga);
    }

    /// The process restarts: the saga is rebuilt from its journal, as recovery does.
    fn crash(&mut self) {
        let mut rebuilt = Saga::submitted(&submitted(&self.policies, self.policies.len()));
        for record in &self.journal[1..] {
            rebuilt.apply(record);
        }
        rebuilt.recoveries = self.saga.recoveries;
        rebuilt.note_recovery();
        self.saga = rebuilt;
    }

    fn succeeded(&self, step: u32, direction: Direction, attempt: u32, by_marker: bool) -> Record {
        Record::StepSucceeded(Succeeded {
            saga: ID.into(),
            step,
            direction,
            attempt,
            by_marker,
            at_ms: 0,
            outputs: Default::default(),
        })
    }

    fn failed(&self, step: u32, direction: Direction, attempt: u32, retryable: bool, maybe_applied: bool) -> Record {
        let error = "simulated".into();
        Record::StepFailed(Failed {
            saga: ID.into(),
            step,
            direction,
            attempt,
            error,
            retryable,
            maybe_applied,
            at_ms: 0,
        })
    }

    /// Does what `next()` says, once. Returns false when there is nothing left to do.
    fn act(&mut self, choice: Choice, benign: bool) -> bool {
        match choice.inject {
            Inject::CancelBefore if !benign => {
                self.write(Record::CancelRequested(CancelRequested { saga: ID.into(), at_ms: 0 }))
            }
            Inject::Reopen if !benign => {
                let by = "op".into();
                let decision = ResolveDecision::CompensateCompleted;
                self.write(Record::Resolved(Resolved { saga: ID.into(), decision, by, at_ms: 0 }))
            }
            _ => {}
        }
        match self.saga.next() {
            Next::Done => return false,
            Next::Finish(outcome) => self.write(Record::SagaFinished(Finished { saga: ID.into(), outcome, at_ms: 0 })),
            Next::Stuck { .. } => {
                let decision = if !benign && choice.outcome.is_multiple_of(4) {
                    self.marked_by_operator = true;
                    ResolveDecision::MarkCompensated
                } else {
                    self.retries_granted += 1;
                    ResolveDecision::RetryCompensation
                };
                self.write(Record::Resolved(Resolved { saga: ID.into(), decision, by: "op".into(), at_ms: 0 }));
            }
            // The marker tells the truth.
            Next::Resolve { step, direction } => {
                let attempt = self.started.get(&(step, direction)).copied().unwrap_or(0);
                let record = if *self.truth(step, direction) {
                    self.succeeded(step, direction, attempt, true)
                } else {
                    self.failed(step, direction, attempt, true, false)
                };
                self.write(record);
            }
            // The deadline is the one the step's start journaled, never a new one.
            Next::Wait { step, until_ms } => {
                assert_eq!(self.deadlines.get(&step), Some(&until_ms), "delay {step} waits for another deadline");
                let attempt = self.started.get(&(step, F)).copied().unwrap_or(0);
                self.write(self.succeeded(step, F, attempt, false));
            }
            // A delay starts: its deadline is journaled, then the wait begins (a crash or a
            // cancel may come first).
            Next::Run { step, direction: F, attempt, .. } if self.delays[step as usize] => {
                let deadline_ms = 1000 * u64::from(step + 1) + u64::from(attempt);
                self.deadlines.insert(step, deadline_ms);
                let started =
                    Started { saga: ID.into(), step, direction: F, attempt, at_ms: 0, deadline_ms: Some(deadline_ms) };
                self.write(Record::StepStarted(started));
                if matches!(choice.inject, Inject::CancelMid) && !benign {
                    self.write(Record::CancelRequested(CancelRequested { saga: ID.into(), at_ms: 0 }));
                }
                if matches!(choice.inject, Inject::Crash) && !benign {
                    self.crash();
                }
            }
            Next::Run { step, direction, attempt, .. } => {
                self.write(Record::StepStarted(Started {
                    saga: ID.into(),
                    step,
                    direction,
                    attempt,
                    at_ms: 0,
                    deadline_ms: None,
                }));
                if matches!(choice.inject, Inject::CancelMid) && !benign {
                    self.write(Record::CancelRequested(CancelRequested { saga: ID.into(), at_ms: 0 }));
                }
                let already = *self.truth(step, direction);
                let outcome = if benign { 0 } else { choice.outcome % 7 };
                match outcome {
                    // Success (by marker if an earlier attempt had applied it).
                    0..=2 => {
                        *self.truth(step, direction) = true;
                        self.write(self.succeeded(step, direction, attempt, already));
                    }
                    // A timeout: the effect's fate is unknown to the saga.
                    3 => {
                        *self.truth(step, direction) |= choice.fate;
                        self.write(self.failed(step, direction, attempt, true, true));
                    }
                    // A crash with the attempt in flight.
                    4 => {
                        *self.truth(step, direction) |= choice.fate;
                        self.crash();
                    }
                    // A permanent error rolls back; the participant finds an earlier attempt's marker.
                    5 if already => self.write(self.succeeded(step, direction, attempt, true)),
                    5 => self.write(self.failed(step, direction, attempt, false, false)),
                    // A permanent error that says nothing of earlier attempts: it came before the
                    // participant could read their marker (the store vanished, the participant
                    // was removed), or an earlier, timed-out attempt commits only afterwards.
                    // The saga must not conclude "never applied" from it.
                    _ => self.write(self.failed(step, direction, attempt, false, false)),
                }
                if matches!(choice.inject, Inject::Crash) && !benign {
                    self.crash();
                }
            }
        }
        true
    }
}

/// Step policies, which steps are delays (a delay has one attempt, as its action's
/// definition gives it), and the choices.
fn arb_driven() -> impl Strategy<Value = (Vec<StepPolicy>, Vec<bool>, Vec<Choice>)> {
    let policy = (1..4u32, 1..3u32)
        .prop_map(|(max_attempts, compensate_max_attempts)| StepPolicy { max_attempts, compensate_max_attempts });
    (prop::collection::vec((policy, prop::bool::weighted(0.2)), 0..6), prop::collection::vec(arb_choice(), 0..60))
        .prop_map(|(steps, choices)| {
            let (policies, delays) = steps
                .into_iter()
                .map(|(p, delay)| if delay { (StepPolicy { max_attempts: 1, ..p }, true) } else { (p, false) })
                .unzip();
            (policies, delays, choices)
        })
}

/// Runs the simulation over `choices`, then with a healthy participant until the saga is done,
/// and checks how it ended. Returns the simulation for the coverage test below.
fn simulate(policies: Vec<StepPolicy>, delays: &[bool], choices: &[Choice]) -> Result<Sim, TestCaseError> {
    let n = policies.len();
    let mut sim = Sim::new(policies, delays);
    for choice in choices {
        sim.act(*choice, false);
    }
    let calm = Choice { outcome: 0, fate: false, inject: Inject::Nothing };
    let mut settled = false;
    for _ in 0..8 * n + 8 {
        if !sim.act(calm, true) {
            settled = true;
            break;
        }
    }
    prop_assert!(settled, "saga did not finish with a healthy participant: {:?}", sim.saga.next());
    prop_assert!(sim.saga.status().is_terminal());
    let Some((last, earlier)) = sim.finishes.split_last() else {
        return Err(TestCaseError::fail("a finished saga without SagaFinished"));
    };
    prop_assert_eq!(*last == Outcome::Completed, sim.saga.status() == Status::Completed);
    // Every finish but the last was a completed saga reopened by an operator.
    prop_assert!(earlier.iter().all(|o| *o == Outcome::Completed), "{:?}", sim.finishes);
    if sim.saga.status() == Status::Compensated && !sim.marked_by_operator {
        prop_assert!(sim.forward_applied.iter().zip(&sim.compensate_applied).all(|(f, c)| !f || *c));
    }
    Ok(sim)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Executor-shaped journals keep the saga protocol, and once the participant behaves the
    /// saga finishes: COMPLETED with every effect applied, or COMPENSATED with none left.
    #[test]
    fn driven_journals_keep_the_protocol_and_finish((policies, delays, choices) in arb_driven()) {
        simulate(policies, &delays, &choices)?;
    }
}

/// The driven journals reach every situation the protocol checks are about, or the property
/// test above proves little: both endings, compensation after a cancel that arrived mid-step,
/// in-doubt steps resolved by marker, STUCK sagas and both operator decisions, reopened sagas.
#[test]
fn driven_journals_reach_every_situation() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = arb_driven();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..500 {
        let (policies, delays, choices) = strategy.new_tree(&mut runner).unwrap().current();
        let sim = simulate(policies, &delays, &choices).unwrap();
        let journal = &sim.journal;
        let compensated = sim.saga.status() == Status::Compensated;
        let mut cancel_mid = false;
        for (i, record) in journal.iter().enumerate() {
            match record {
                Record::CancelRequested(_) if matches!(journal[i - 1], Record::StepStarted(_)) && compensated => {
                    cancel_mid = true;
                    if matches!(&journal[i - 1], Record::StepStarted(r) if r.deadline_ms.is_some()) {
                        seen.insert("cancel during a delay, then compensated");
                    }
                }
                Record::StepSucceeded(r) if r.direction == F && sim.delays[r.step as usize] => {
                    seen.insert("delay waited out");
                }
                Record::StepSucceeded(r) if r.by_marker => {
                    seen.insert(if r.direction == F { "forward success by marker" } else { "compensation by marker" });
                }
                Record::StepFailed(r) if r.retryable && !r.maybe_applied => {
                    seen.insert("in-doubt step without marker");
                }
                Record::Resolved(r) => {
                    seen.insert(match r.decision {
                        ResolveDecision::MarkCompensated => "MarkCompensated",
                        ResolveDecision::RetryCompensation => "RetryCompensation",
                        ResolveDecision::CompensateCompleted => "CompensateCompleted",
                    });
                }
                _ => {}
            }
        }
        if cancel_mid {
            seen.insert("cancel mid-step, then compensated");
        }
        if sim.finishes.len() > 1 {
            seen.insert("completed, reopened, compensated");
        }
        if sim.compensate_applied.iter().filter(|c| **c).count() >= 2 {
            seen.insert("two or more steps compensated");
        }
        seen.insert(if compensated { "compensated" } else { "completed" });
    }
    let expected = [
        "forward success by marker",
        "compensation by marker",
        "in-doubt step without marker",
        "MarkCompensated",
        "RetryCompensation",
        "CompensateCompleted",
        "cancel mid-step, then compensated",
        "completed, reopened, compensated",
        "two or more steps compensated",
        "compensated",
        "completed",
        "delay waited out",
        "cancel during a delay, then compensated",
    ];
    for situation in expected {
        assert!(seen.contains(situation), "no driven journal reached {situation:?}; reached {seen:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A `SagaSnapshot` anywhere in a saga's journal changes nothing but the version: replaying
    /// the journal with it, or only the snapshot and what follows it (what recovery does once
    /// the checkpoint has passed the saga's older records), gives the state the journal
    /// without it gives, plus one version (trust item B19).
    #[test]
    fn replay_from_a_snapshot_equals_replay_from_the_start((policies, delays, choices) in arb_driven(), cut in any::<prop::sample::Index>()) {
        let sim = simulate(policies.clone(), &delays, &choices)?;
        let journal = &sim.journal[1..];
        let k = cut.index(journal.len() + 1);
        let submitted = submitted(&policies, policies.len());
        let mut before = Saga::submitted(&submitted);
        for r in &journal[..k] {
            before.apply(r);
        }
        let snapshot = Record::SagaSnapshot(super::record::Snapshotted { saga: Box::new(before.clone()), at_ms: 5 });
        let mut plain = Saga::submitted(&submitted);
        let mut with_snapshot = Saga::submitted(&submitted);
        for (i, r) in journal.iter().enumerate() {
            if i == k {
                with_snapshot.apply(&snapshot);
            }
            plain.apply(r);
            with_snapshot.apply(r);
        }
        if k == journal.len() {
            with_snapshot.apply(&snapshot);
        }
        // Recovery's replay once the checkpoint passed the older records: the snapshot first.
        let Record::SagaSnapshot(s) = &snapshot else { unreachable!() };
        let mut from_snapshot = (*s.saga).clone();
        from_snapshot.apply(&snapshot);
        for r in &journal[k..] {
            from_snapshot.apply(r);
        }
        prop_assert_eq!(&with_snapshot, &from_snapshot);
        prop_assert_eq!(with_snapshot.version, plain.version + 1);
        with_snapshot.version = plain.version;
        prop_assert_eq!(&with_snapshot, &plain);
        prop_assert_eq!(with_snapshot.next(), plain.next());
    }
}
