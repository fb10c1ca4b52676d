//! Table tests of the pure state machine: journal records fed to [`Saga::apply`], the answer of
//! [`Saga::next`] and [`Saga::status`] checked after them. No executor, no tokio, no I/O.
//!
//! Each row is one journal (a record sequence) and the decision the engine must take after
//! replaying it, so the same table documents what recovery does with a journal cut anywhere.
//! The scenario tests below the table drive a saga to its end by following `next()`, and check
//! the order in which steps and compensations run.

use std::collections::BTreeMap;

use super::model::{StepCall, StepPolicy};
use super::record::{
    CancelRequested, Failed, Finished, Outcome, Record, RecoveryStarted, ResolveDecision, Resolved, Started, Submitted,
    Succeeded,
};
use super::saga::{Next, Saga, Status};
use super::value::Value;
use crate::engine::Direction::{self, Compensate as C, Forward as F};

pub(crate) const ID: &str = "saga-1";

pub(crate) fn submitted(steps: usize, policy: StepPolicy) -> Submitted {
    Submitted {
        saga: ID.into(),
        steps: (0..steps)
            .map(|i| StepCall {
                action: format!("act{i}"),
                params: BTreeMap::from([("n".into(), Value::Int(i as i64))]),
                from: Default::default(),
            })
            .collect(),
        policies: vec![policy; steps],
        digest: 7,
        at_ms: 1,
        actions: Default::default(),
        scope: None,
    }
}

fn policy(max_attempts: u32, compensate_max_attempts: u32) -> StepPolicy {
    StepPolicy { max_attempts, compensate_max_attempts }
}

fn started(step: u32, direction: Direction) -> Record {
    Record::StepStarted(Started {
        saga: ID.into(),
        step,
        direction,
        attempt: 0,
        at_ms: 10 + step as u64,
        deadline_ms: None,
    })
}

/// A delay step's start: its `StepStarted` (record version 2) journals the deadline.
fn delay_started(step: u32, deadline_ms: u64) -> Record {
    Record::StepStarted(Started {
        saga: ID.into(),
        step,
        direction: F,
        attempt: 1,
        at_ms: 10 + step as u64,
        deadline_ms: Some(deadline_ms),
    })
}

fn ok(step: u32, direction: Direction) -> Record {
    Record::StepSucceeded(Succeeded {
        saga: ID.into(),
        step,
        direction,
        attempt: 0,
        by_marker: false,
        at_ms: 20,
        outputs: Default::default(),
    })
}

fn ok_by_marker(step: u32, direction: Direction) -> Record {
    Record::StepSucceeded(Succeeded {
        saga: ID.into(),
        step,
        direction,
        attempt: 0,
        by_marker: true,
        at_ms: 20,
        outputs: Default::default(),
    })
}

fn failed(step: u32, direction: Direction, retryable: bool, maybe_applied: bool) -> Record {
    Record::StepFailed(Failed {
        saga: ID.into(),
        step,
        direction,
        attempt: 0,
        error: "boom".into(),
        retryable,
        maybe_applied,
        at_ms: 30,
    })
}

/// A retryable failure whose effect may have applied (an error with unknown fate, a timeout).
fn timed_out(step: u32, direction: Direction) -> Record {
    failed(step, direction, true, true)
}

/// The marker lookup of an in-doubt step found no marker: certainly not applied.
fn no_marker(step: u32, direction: Direction) -> Record {
    failed(step, direction, true, false)
}

/// A permanent error: rolled back, compensate at once.
fn rejected(step: u32, direction: Direction) -> Record {
    failed(step, direction, false, false)
}

fn finished(outcome: Outcome) -> Record {
    Record::SagaFinished(Finished { saga: ID.into(), outcome, at_ms: 40 })
}

fn cancel() -> Record {
    Record::CancelRequested(CancelRequested { saga: ID.into(), at_ms: 50 })
}

fn resolved(decision: ResolveDecision) -> Record {
    Record::Resolved(Resolved { saga: ID.into(), decision, by: "op".into(), at_ms: 60 })
}

/// `step` forward, started and succeeded.
fn done(step: u32) -> [Record; 2] {
    [started(step, F), ok(step, F)]
}

/// `step` compensated, started and succeeded.
fn undone(step: u32) -> [Record; 2] {
    [started(step, C), ok(step, C)]
}

fn replay(steps: usize, policy: StepPolicy, records: &[Record]) -> Saga {
    let mut saga = Saga::submitted(&submitted(steps, policy));
    for record in records {
        saga.apply(record);
    }
    saga
}

fn run(step: u32, direction: Direction, attempt: u32, after_failure: bool) -> Next {
    Next::Run { step, direction, attempt, after_failure }
}

fn resolve(step: u32, direction: Direction) -> Next {
    Next::Resolve { step, direction }
}

struct Case {
    name: &'static str,
    steps: usize,
    policy: StepPolicy,
    records: Vec<Record>,
    next: Next,
    status: Status,
}

fn case(
    name: &'static str,
    steps: usize,
    policy: StepPolicy,
    records: Vec<Vec<Record>>,
    next: Next,
    status: Status,
) -> Case {
    Case { name, steps, policy, records: records.concat(), next, status }
}

fn table() -> Vec<Case> {
    let p1 = policy(1, 1);
    let p3 = policy(3, 2);
    use Status::*;
    vec![
        // Happy path, one prefix at a time.
        case("submitted only runs step 0", 3, p3, vec![], run(0, F, 1, false), Pending),
        case("step 0 in flight is in doubt", 3, p3, vec![vec![started(0, F)]], resolve(0, F), Running),
        case("step 0 done runs step 1", 3, p3, vec![done(0).into()], run(1, F, 1, false), Running),
        case(
            "every step done finishes completed",
            3,
            p3,
            vec![done(0).into(), done(1).into(), done(2).into()],
            Next::Finish(Outcome::Completed),
            Running,
        ),
        case(
            "finished completed is done",
            3,
            p3,
            vec![done(0).into(), done(1).into(), done(2).into(), vec![finished(Outcome::Completed)]],
            Next::Done,
            Completed,
        ),
        case("a saga without steps finishes at once", 0, p3, vec![], Next::Finish(Outcome::Completed), Pending),
        // Retryable failures.
        case(
            "retryable failure with budget left retries after back-off",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), timed_out(1, F)]],
            run(1, F, 2, true),
            Running,
        ),
        case(
            "retry then success moves on without back-off",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), timed_out(1, F), started(1, F), ok(1, F)]],
            run(2, F, 1, false),
            Running,
        ),
        case(
            "budget spent, maybe applied: resolve the step's marker before compensating",
            3,
            policy(2, 2),
            vec![done(0).into(), vec![started(1, F), timed_out(1, F), started(1, F), timed_out(1, F)]],
            resolve(1, F),
            Compensating,
        ),
        case(
            "a timeout, then a permanent failure: the timed-out attempt may have committed, ask its marker",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), timed_out(1, F), started(1, F), rejected(1, F)]],
            resolve(1, F),
            Compensating,
        ),
        case(
            "a timeout, a permanent failure, then no marker: skip it, compensate the step below",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), timed_out(1, F), started(1, F), rejected(1, F), no_marker(1, F)]],
            run(0, C, 1, false),
            Compensating,
        ),
        case(
            "an in-flight step whose participant is gone is unknown, not 'not applied': ask again",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), failed(1, F, false, true)]],
            resolve(1, F),
            Compensating,
        ),
        case(
            "budget spent, certainly not applied: skip it, compensate the step below",
            3,
            policy(2, 2),
            vec![done(0).into(), vec![started(1, F), no_marker(1, F), started(1, F), no_marker(1, F)]],
            run(0, C, 1, false),
            Compensating,
        ),
        case(
            "budget of one: the first retryable failure compensates",
            2,
            p1,
            vec![done(0).into(), vec![started(1, F), no_marker(1, F)]],
            run(0, C, 1, false),
            Compensating,
        ),
        // Permanent failure at step k: compensate k-1 .. 0.
        case(
            "permanent failure at step 2 compensates step 1 first",
            4,
            p3,
            vec![done(0).into(), done(1).into(), vec![started(2, F), rejected(2, F)]],
            run(1, C, 1, false),
            Compensating,
        ),
        case(
            "then step 0",
            4,
            p3,
            vec![done(0).into(), done(1).into(), vec![started(2, F), rejected(2, F)], undone(1).into()],
            run(0, C, 1, false),
            Compensating,
        ),
        case(
            "then it finishes compensated",
            4,
            p3,
            vec![
                done(0).into(),
                done(1).into(),
                vec![started(2, F), rejected(2, F)],
                undone(1).into(),
                undone(0).into(),
            ],
            Next::Finish(Outcome::Compensated),
            Compensating,
        ),
        case(
            "finished compensated is done",
            4,
            p3,
            vec![
                done(0).into(),
                vec![started(1, F), rejected(1, F)],
                undone(0).into(),
                vec![finished(Outcome::Compensated)],
            ],
            Next::Done,
            Compensated,
        ),
        case(
            "permanent failure of step 0 has nothing to undo",
            3,
            p3,
            vec![vec![started(0, F), rejected(0, F)]],
            Next::Finish(Outcome::Compensated),
            Compensating,
        ),
        case(
            "a permanent error that may have applied is resolved first",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), failed(1, F, false, true)]],
            resolve(1, F),
            Compensating,
        ),
        // Cancel.
        case(
            "cancel before any step compensates nothing",
            3,
            p3,
            vec![vec![cancel()]],
            Next::Finish(Outcome::Compensated),
            Compensating,
        ),
        case(
            "cancel between steps compensates the done ones",
            3,
            p3,
            vec![done(0).into(), done(1).into(), vec![cancel()]],
            run(1, C, 1, false),
            Compensating,
        ),
        case(
            "cancel while a step is in flight waits for its outcome",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), cancel()]],
            resolve(1, F),
            Running,
        ),
        case(
            "cancel between StepStarted and StepSucceeded of the last step compensates it",
            3,
            p3,
            vec![done(0).into(), done(1).into(), vec![started(2, F), cancel(), ok(2, F)]],
            run(2, C, 1, false),
            Compensating,
        ),
        case(
            "cancel in flight, then a retryable failure with budget left: compensate, resolve first",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), cancel(), timed_out(1, F)]],
            resolve(1, F),
            Compensating,
        ),
        case(
            "cancel in flight, then no marker: compensate the steps below",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), cancel(), no_marker(1, F)]],
            run(0, C, 1, false),
            Compensating,
        ),
        case(
            "cancel in flight, success by marker after a crash: compensate it",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), cancel(), ok_by_marker(1, F)]],
            run(1, C, 1, false),
            Compensating,
        ),
        case(
            "cancel after all steps but before SagaFinished compensates",
            2,
            p3,
            vec![done(0).into(), done(1).into(), vec![cancel()]],
            run(1, C, 1, false),
            Compensating,
        ),
        case(
            "cancel after SagaFinished changes nothing",
            2,
            p3,
            vec![done(0).into(), done(1).into(), vec![finished(Outcome::Completed), cancel()]],
            Next::Done,
            Completed,
        ),
        case(
            "cancel while a retry waits for its back-off compensates at once",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), no_marker(1, F), cancel()]],
            run(0, C, 1, false),
            Compensating,
        ),
        // In doubt (crash between StepStarted and the outcome).
        case(
            "in-doubt step with its marker present is not run again",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), ok_by_marker(1, F)]],
            run(2, F, 1, false),
            Running,
        ),
        case(
            "in-doubt step without its marker runs again as attempt 2",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), no_marker(1, F)]],
            run(1, F, 2, true),
            Running,
        ),
        case(
            "maybe-applied step resolved present during compensation is compensated",
            3,
            policy(1, 1),
            vec![done(0).into(), vec![started(1, F), timed_out(1, F), ok_by_marker(1, F)]],
            run(1, C, 1, false),
            Compensating,
        ),
        case(
            "maybe-applied step resolved absent during compensation is skipped",
            3,
            policy(1, 1),
            vec![done(0).into(), vec![started(1, F), timed_out(1, F), no_marker(1, F)]],
            run(0, C, 1, false),
            Compensating,
        ),
        case(
            "compensation in flight is in doubt",
            3,
            p3,
            vec![done(0).into(), done(1).into(), vec![started(2, F), rejected(2, F), started(1, C)]],
            resolve(1, C),
            Compensating,
        ),
        case(
            "compensation in doubt, marker present: continue below",
            3,
            p3,
            vec![
                done(0).into(),
                done(1).into(),
                vec![started(2, F), rejected(2, F), started(1, C), ok_by_marker(1, C)],
            ],
            run(0, C, 1, false),
            Compensating,
        ),
        // Compensation failures, STUCK and operator resolutions.
        case(
            "compensation retryable failure with budget left retries",
            3,
            policy(3, 2),
            vec![done(0).into(), done(1).into(), vec![started(2, F), rejected(2, F), started(1, C), timed_out(1, C)]],
            run(1, C, 2, true),
            Compensating,
        ),
        case(
            "compensation budget spent is STUCK",
            3,
            policy(3, 1),
            vec![done(0).into(), done(1).into(), vec![started(2, F), rejected(2, F), started(1, C), timed_out(1, C)]],
            Next::Stuck { step: 1 },
            Stuck,
        ),
        case(
            "compensation permanent failure is STUCK",
            3,
            policy(3, 5),
            vec![done(0).into(), done(1).into(), vec![started(2, F), rejected(2, F), started(1, C), rejected(1, C)]],
            Next::Stuck { step: 1 },
            Stuck,
        ),
        case(
            "RetryCompensation gives the STUCK step a fresh budget",
            3,
            policy(3, 1),
            vec![
                done(0).into(),
                done(1).into(),
                vec![
                    started(2, F),
                    rejected(2, F),
                    started(1, C),
                    rejected(1, C),
                    resolved(ResolveDecision::RetryCompensation),
                ],
            ],
            run(1, C, 2, false),
            Compensating,
        ),
        case(
            "MarkCompensated settles every remaining step",
            3,
            policy(3, 1),
            vec![
                done(0).into(),
                done(1).into(),
                vec![
                    started(2, F),
                    rejected(2, F),
                    started(1, C),
                    rejected(1, C),
                    resolved(ResolveDecision::MarkCompensated),
                ],
            ],
            Next::Finish(Outcome::Compensated),
            Compensating,
        ),
        case(
            "MarkCompensated of a running saga changes nothing",
            3,
            p3,
            vec![done(0).into(), vec![resolved(ResolveDecision::MarkCompensated)]],
            run(1, F, 1, false),
            Running,
        ),
        case(
            "RetryCompensation of a finished saga changes nothing",
            1,
            p3,
            vec![done(0).into(), vec![finished(Outcome::Completed), resolved(ResolveDecision::RetryCompensation)]],
            Next::Done,
            Completed,
        ),
        // Reopening a completed saga.
        case(
            "CompensateCompleted reopens a completed saga from its last step",
            3,
            p3,
            vec![
                done(0).into(),
                done(1).into(),
                done(2).into(),
                vec![finished(Outcome::Completed), resolved(ResolveDecision::CompensateCompleted)],
            ],
            run(2, C, 1, false),
            Compensating,
        ),
        case(
            "CompensateCompleted of a running saga changes nothing",
            3,
            p3,
            vec![done(0).into(), vec![resolved(ResolveDecision::CompensateCompleted)]],
            run(1, F, 1, false),
            Running,
        ),
        case(
            "CompensateCompleted of a compensated saga changes nothing",
            2,
            p3,
            vec![
                done(0).into(),
                vec![started(1, F), rejected(1, F)],
                undone(0).into(),
                vec![finished(Outcome::Compensated), resolved(ResolveDecision::CompensateCompleted)],
            ],
            Next::Done,
            Compensated,
        ),
        // Delay steps: no participant, the deadline journaled with the start.
        case(
            "a delay in flight waits for its journaled deadline (also after a restart)",
            3,
            p3,
            vec![done(0).into(), vec![delay_started(1, 5_000)]],
            Next::Wait { step: 1, until_ms: 5_000 },
            Running,
        ),
        case(
            "a delay that ended moves on to the next step",
            3,
            p3,
            vec![done(0).into(), vec![delay_started(1, 5_000), ok(1, F)]],
            run(2, F, 1, false),
            Running,
        ),
        case(
            "a cancel during a delay compensates at once",
            3,
            p3,
            vec![done(0).into(), vec![delay_started(1, 5_000), cancel()]],
            run(0, C, 1, false),
            Compensating,
        ),
        case(
            "a delay in flight during compensation is passed over",
            3,
            p3,
            vec![done(0).into(), vec![delay_started(1, 5_000), cancel()], undone(0).into()],
            Next::Finish(Outcome::Compensated),
            Compensating,
        ),
        case(
            "a delay that ended is not compensated: the step below is",
            3,
            p3,
            vec![done(0).into(), vec![delay_started(1, 5_000), ok(1, F), started(2, F), rejected(2, F)]],
            run(0, C, 1, false),
            Compensating,
        ),
        case(
            "a completed saga with a delay reopened compensates the other steps only",
            2,
            p3,
            vec![
                vec![delay_started(0, 5_000), ok(0, F)],
                done(1).into(),
                vec![finished(Outcome::Completed), resolved(ResolveDecision::CompensateCompleted)],
                undone(1).into(),
            ],
            Next::Finish(Outcome::Compensated),
            Compensating,
        ),
        case(
            "a step started without a deadline is in doubt, not a delay",
            3,
            p3,
            vec![done(0).into(), vec![started(1, F), cancel()]],
            resolve(1, F),
            Running,
        ),
        // Records that do not fit are ignored.
        case(
            "out-of-range steps change nothing",
            2,
            p3,
            vec![done(0).into(), vec![started(2, F), rejected(2, F), ok(9, F), started(u32::MAX, C)]],
            run(1, F, 1, false),
            Running,
        ),
    ]
}

#[test]
fn table_of_journals_gives_the_expected_next_action_and_status() {
    let mut failures = Vec::new();
    for case in table() {
        let saga = replay(case.steps, case.policy, &case.records);
        let (next, status) = (saga.next(), saga.status());
        if next != case.next || status != case.status {
            failures.push(format!(
                "{}: expected {:?} / {:?}, got {:?} / {:?}",
                case.name, case.next, case.status, next, status
            ));
        }
    }
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));
}

/// Each row, replayed twice, gives the same state (apply and next are deterministic), and a
/// saga's version counts exactly the records of that saga it was given.
#[test]
fn replay_is_deterministic_and_versions_count_records() {
    for case in table() {
        let a = replay(case.steps, case.policy, &case.records);
        let b = replay(case.steps, case.policy, &case.records);
        assert_eq!(a, b, "{}", case.name);
        assert_eq!(a.version, 1 + case.records.len() as u64, "{}", case.name);
    }
}

#[test]
fn records_of_other_sagas_and_global_records_change_nothing() {
    let before = replay(2, policy(3, 2), &done(0));
    let mut after = before.clone();
    let other = |r: Record| match r {
        Record::StepStarted(mut s) => {
            s.saga = "saga-2".into();
            Record::StepStarted(s)
        }
        Record::CancelRequested(mut c) => {
            c.saga = "saga-2".into();
            Record::CancelRequested(c)
        }
        r => r,
    };
    after.apply(&other(started(1, F)));
    after.apply(&other(cancel()));
    after.apply(&Record::RecoveryStarted(RecoveryStarted { reason: "recovery".into(), unfinished: 1, at_ms: 5 }));
    assert_eq!(after, before);
}

/// A delay step's deadline is the one its first `StepStarted` journaled: replay keeps it, the
/// step's progress shows it, and it is the step's identity as a delay (no marker, no
/// compensation).
#[test]
fn a_delay_keeps_its_journaled_deadline_and_is_no_participant_step() {
    let saga = replay(2, policy(3, 2), &[delay_started(0, 7_000)]);
    let s = &saga.steps[0];
    assert!(s.is_delay());
    assert_eq!((s.forward.deadline_ms, s.forward.in_flight, s.forward.total_attempts), (Some(7_000), true, 1));
    assert_eq!(saga.next(), Next::Wait { step: 0, until_ms: 7_000 });
    let saga = replay(2, policy(3, 2), &[delay_started(0, 7_000), ok(0, F)]);
    assert!(saga.steps[0].is_delay() && saga.steps[0].forward.done);
    assert_eq!(saga.steps[0].forward.deadline_ms, Some(7_000), "kept once done (shown by Get)");
    let saga = replay(2, policy(3, 2), &[delay_started(0, 7_000), cancel()]);
    assert_eq!(saga.compensation_reason.as_deref(), Some("cancelled"), "no wait for the delay to end");
    assert_eq!(saga.next(), Next::Finish(Outcome::Compensated));
    assert!(!replay(2, policy(3, 2), &[started(0, F)]).steps[0].is_delay());
}

#[test]
fn cancel_is_remembered_and_names_the_reason() {
    let saga = replay(3, policy(3, 2), &[&done(0)[..], &[started(1, F), cancel()]].concat());
    assert!(saga.cancel_requested);
    assert_eq!(saga.compensation_reason, None, "no compensation before the in-flight outcome");
    let saga = replay(3, policy(3, 2), &[&done(0)[..], &[started(1, F), cancel(), ok(1, F)]].concat());
    assert_eq!(saga.compensation_reason.as_deref(), Some("cancelled"));
    let saga = replay(3, policy(3, 2), &[&done(0)[..], &[started(1, F), rejected(1, F)]].concat());
    assert_eq!(saga.compensation_reason.as_deref(), Some("step 1 failed: boom"));
    let saga = replay(
        3,
        policy(2, 2),
        &[&done(0)[..], &[started(1, F), no_marker(1, F)], &[started(1, F), no_marker(1, F)]].concat(),
    );
    assert_eq!(saga.compensation_reason.as_deref(), Some("step 1 failed 2 times, last: boom"));
}

#[test]
fn attempts_count_against_the_budget_and_in_total() {
    let saga = replay(2, policy(3, 2), &[started(0, F), timed_out(0, F), started(0, F), ok_by_marker(0, F)]);
    let f = &saga.steps[0].forward;
    assert_eq!((f.attempts, f.total_attempts, f.done, f.by_marker, f.in_flight), (2, 2, true, true, false));
    assert_eq!(f.first_started_at_ms, Some(10));
    assert_eq!(f.finished_at_ms, Some(20));
    // RetryCompensation resets the budget, not the total: the next attempt number keeps counting.
    let saga = replay(
        2,
        policy(3, 1),
        &[&done(0)[..], &[started(1, F), rejected(1, F), started(0, C), timed_out(0, C)]].concat(),
    );
    assert_eq!(saga.next(), Next::Stuck { step: 0 });
    assert_eq!(saga.steps[0].compensate.last_error.as_deref(), Some("boom"));
    let mut saga = saga;
    saga.apply(&resolved(ResolveDecision::RetryCompensation));
    assert_eq!((saga.steps[0].compensate.attempts, saga.steps[0].compensate.total_attempts), (0, 1));
    assert_eq!(saga.next(), run(0, C, 2, false));
}

#[test]
fn missing_policies_default_to_one_attempt() {
    let mut record = submitted(2, policy(5, 5));
    record.policies.truncate(1);
    let saga = Saga::submitted(&record);
    assert_eq!(saga.steps[0].policy, policy(5, 5));
    assert_eq!(saga.steps[1].policy, policy(1, 1));
    let mut saga = saga;
    for r in [&done(0)[..], &[started(1, F), no_marker(1, F)]].concat() {
        saga.apply(&r);
    }
    assert_eq!(saga.status(), Status::Compensating, "one attempt: the first failure compensates");
}

#[test]
fn recoveries_are_counted_only_while_unfinished() {
    let mut saga = replay(1, policy(1, 1), &[started(0, F)]);
    saga.note_recovery();
    saga.note_recovery();
    assert_eq!(saga.recoveries, 2);
    saga.apply(&ok(0, F));
    saga.apply(&finished(Outcome::Completed));
    saga.note_recovery();
    assert_eq!(saga.recoveries, 2);
    assert!(saga.is_finished());
    assert_eq!(saga.finished_at_ms, Some(40));
}

/// What the scripted participant does with each action `next()` asks for.
type Script<'a> = &'a mut dyn FnMut(&Next) -> Vec<Record>;

/// Follows `next()` until `Done` (or a STUCK saga the script leaves alone), applying what the
/// script journals, and returns every action taken.
fn drive(saga: &mut Saga, script: Script<'_>) -> Vec<Next> {
    let mut trace = Vec::new();
    for _ in 0..1000 {
        let next = saga.next();
        trace.push(next);
        let records = match next {
            Next::Done => return trace,
            Next::Finish(outcome) => vec![finished(outcome)],
            _ => script(&next),
        };
        if records.is_empty() {
            return trace;
        }
        for record in &records {
            saga.apply(record);
        }
    }
    panic!("saga did not settle: {trace:?}");
}

/// Forward runs and compensation runs in the order they were asked for.
fn runs(trace: &[Next], direction: Direction) -> Vec<u32> {
    trace
        .iter()
        .filter_map(|n| match n {
            Next::Run { step, direction: d, .. } if *d == direction => Some(*step),
            _ => None,
        })
        .collect()
}

#[test]
fn happy_path_runs_every_step_once_in_order_and_completes() {
    let mut saga = Saga::submitted(&submitted(4, policy(3, 2)));
    let trace = drive(&mut saga, &mut |next| match *next {
        Next::Run { step, direction, .. } => vec![started(step, direction), ok(step, direction)],
        _ => panic!("unexpected {next:?}"),
    });
    assert_eq!(runs(&trace, F), [0, 1, 2, 3]);
    assert_eq!(runs(&trace, C), Vec::<u32>::new());
    assert_eq!(trace[trace.len() - 2..], [Next::Finish(Outcome::Completed), Next::Done]);
    assert_eq!(saga.status(), Status::Completed);
}

#[test]
fn permanent_failure_at_step_k_compensates_k_minus_1_down_to_0() {
    for steps in 1..=5u32 {
        for k in 0..steps {
            let mut saga = Saga::submitted(&submitted(steps as usize, policy(3, 2)));
            let trace = drive(&mut saga, &mut |next| match *next {
                Next::Run { step, direction: F, .. } if step == k => vec![started(step, F), rejected(step, F)],
                Next::Run { step, direction, .. } => vec![started(step, direction), ok(step, direction)],
                _ => panic!("unexpected {next:?}"),
            });
            assert_eq!(runs(&trace, F), (0..=k).collect::<Vec<_>>(), "{steps} steps, failing at {k}");
            assert_eq!(runs(&trace, C), (0..k).rev().collect::<Vec<_>>(), "{steps} steps, failing at {k}");
            assert_eq!(saga.status(), Status::Compensated);
        }
    }
}

#[test]
fn retryable_failures_are_retried_until_success_within_the_budget() {
    let mut saga = Saga::submitted(&submitted(2, policy(3, 2)));
    let mut failures_left = 2;
    let trace = drive(&mut saga, &mut |next| match *next {
        Next::Run { step: 1, direction: F, .. } if failures_left > 0 => {
            failures_left -= 1;
            vec![started(1, F), timed_out(1, F)]
        }
        Next::Run { step, direction, .. } => vec![started(step, direction), ok(step, direction)],
        _ => panic!("unexpected {next:?}"),
    });
    assert_eq!(trace[1..4], [run(1, F, 1, false), run(1, F, 2, true), run(1, F, 3, true)]);
    assert_eq!(saga.status(), Status::Completed);
}

#[test]
fn cancel_mid_run_of_the_last_step_compensates_every_step_in_reverse() {
    let mut saga = Saga::submitted(&submitted(3, policy(3, 2)));
    let trace = drive(&mut saga, &mut |next| match *next {
        Next::Run { step: 2, direction: F, .. } => vec![started(2, F), cancel(), ok(2, F)],
        Next::Run { step, direction, .. } => vec![started(step, direction), ok(step, direction)],
        _ => panic!("unexpected {next:?}"),
    });
    assert_eq!(runs(&trace, C), [2, 1, 0]);
    assert_eq!(saga.status(), Status::Compensated);
}

#[test]
fn stuck_saga_waits_and_an_operator_decision_unblocks_it() {
    let mut saga = Saga::submitted(&submitted(3, policy(3, 1)));
    let mut stuck_once = true;
    let trace = drive(&mut saga, &mut |next| match *next {
        Next::Run { step: 2, direction: F, .. } => vec![started(2, F), rejected(2, F)],
        Next::Run { step: 1, direction: C, .. } if stuck_once => {
            stuck_once = false;
            vec![started(1, C), rejected(1, C)]
        }
        Next::Run { step, direction, .. } => vec![started(step, direction), ok(step, direction)],
        Next::Stuck { step: 1 } => vec![resolved(ResolveDecision::RetryCompensation)],
        _ => panic!("unexpected {next:?}"),
    });
    assert!(trace.contains(&Next::Stuck { step: 1 }));
    assert_eq!(runs(&trace, C), [1, 1, 0]);
    assert_eq!(saga.status(), Status::Compensated);
}

/// A forward step left in doubt whose marker cannot be read (the executor journals a lookup's
/// permanent error as `StepFailed { retryable: false, maybe_applied: true }`) stays uncertain
/// for good: during compensation `next()` asks to resolve it again after every such failure,
/// and the saga never becomes STUCK, so the executor journals failures in a loop instead of
/// waiting for an operator. Fixed (issue 10 item 10): such lookups count against the step's
/// compensation budget, then the saga is STUCK.
#[test]
fn unreadable_marker_of_an_in_doubt_step_ends_stuck_not_in_a_loop() {
    let mut saga = replay(2, policy(3, 2), &[&done(0)[..], &[started(1, F)]].concat());
    let mut lookups = 0;
    while let Next::Resolve { step, direction } = saga.next() {
        lookups += 1;
        if lookups > 100 {
            break;
        }
        saga.apply(&failed(step, direction, false, true));
    }
    assert!(lookups <= 100, "still asked to resolve step 1 after 100 permanent lookup failures ({:?})", saga.status());
    assert_eq!(saga.status(), Status::Stuck);
    assert_eq!(lookups, 2, "one lookup in the forward phase, then the compensation budget (2) in all");
}

/// A saga STUCK on an unreadable marker is an operator's call like any STUCK saga:
/// `RetryCompensation` gives the lookups a fresh budget, `MarkCompensated` takes the step (and
/// every remaining compensation) on the operator's word.
#[test]
fn stuck_on_an_unreadable_marker_is_unblocked_by_either_operator_decision() {
    let unreadable = failed(1, F, false, true);
    let journal = [&done(0)[..], &[started(1, F), unreadable.clone(), unreadable]].concat();
    let saga = replay(2, policy(3, 2), &journal);
    assert_eq!(saga.next(), Next::Stuck { step: 1 });
    assert_eq!(saga.steps[1].forward.last_error.as_deref(), Some("boom"), "the reason is the lookup's error");

    let mut retry = saga.clone();
    retry.apply(&resolved(ResolveDecision::RetryCompensation));
    assert_eq!(retry.next(), Next::Resolve { step: 1, direction: F });
    retry.apply(&no_marker(1, F));
    assert!(matches!(retry.next(), Next::Run { step: 0, direction: C, .. }), "{:?}", retry.next());

    let mut marked = saga;
    marked.apply(&resolved(ResolveDecision::MarkCompensated));
    assert_eq!(marked.next(), Next::Finish(Outcome::Compensated));
}

/// Issue 11 item 1: a step runs with its `from` references replaced by the earlier steps'
/// journaled outputs and, for its compensation, its own forward outputs as `output.<name>`;
/// a reference whose step has not returned the output names it.
#[test]
fn a_step_resolves_its_references_from_the_journaled_outputs() {
    let call = |action: &str, from: &[(&str, &str)]| StepCall {
        action: action.into(),
        params: BTreeMap::from([("n".to_owned(), Value::Int(1))]),
        from: from.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    let submitted = Submitted {
        saga: "s".into(),
        steps: vec![call("a", &[]), call("b", &[("id", "steps.0.id")])],
        policies: vec![StepPolicy { max_attempts: 1, compensate_max_attempts: 1 }; 2],
        digest: 1,
        at_ms: 0,
        actions: Default::default(),
        scope: None,
    };
    let mut saga = Saga::submitted(&submitted);
    let err = saga.resolved_call(1).unwrap_err();
    assert!(err.contains("parameter \"id\" takes steps.0.id, which has no value"), "{err}");
    saga.apply(&Record::StepStarted(Started {
        saga: "s".into(),
        step: 0,
        direction: Direction::Forward,
        attempt: 1,
        at_ms: 1,
        deadline_ms: None,
    }));
    saga.apply(&Record::StepSucceeded(Succeeded {
        saga: "s".into(),
        step: 0,
        direction: Direction::Forward,
        attempt: 1,
        by_marker: false,
        at_ms: 2,
        outputs: BTreeMap::from([("id".to_owned(), Value::Int(42))]),
    }));
    let resolved = saga.resolved_call(1).unwrap();
    assert_eq!(resolved.params.get("id"), Some(&Value::Int(42)));
    assert!(resolved.from.is_empty(), "references are replaced, not kept");
    let own = saga.resolved_call(0).unwrap();
    assert_eq!(own.params.get("output.id"), Some(&Value::Int(42)), "the compensation sees its own outputs");
}
