//! The executor's behaviour as a user relies on it: steps in order, retries, circuit breakers
//! that park instead of failing, compensation in strict reverse order of completed steps,
//! cancel, STUCK and operator resolution. Participants are scripted in-memory ones.

use crate::engine_support;

use std::time::Duration;

use engine_support::{CONFIG, comp, fwd, saga, settled, start};
use sagalog::engine::{Record, ResolveDecision, Status};
use sagalog::executor::{Error, SubmitOutcome};
use sagalog::participant::Direction;
use sagalog::participant::memory::{Fault, Memory};

/// Happy path: every step applied once, in order, and the saga completes.
#[tokio::test]
async fn happy_path_completes_with_each_step_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &Memory::new("mem"), CONFIG);
    assert_eq!(h.exec.submit(saga("s1", 3)).await.unwrap(), SubmitOutcome::Accepted);
    let snap = settled(&h.exec, "s1").await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(h.mem.effects("s1"), vec![fwd(0), fwd(1), fwd(2)]);
}

/// A permanent failure at each step position compensates exactly the completed steps, in
/// reverse order, and the failed step itself is not compensated (it rolled back).
#[tokio::test]
async fn permanent_failure_at_each_position_compensates_completed_steps_in_reverse() {
    for k in 0..3u32 {
        let dir = tempfile::tempdir().unwrap();
        let mem = Memory::new("mem");
        mem.inject(Some(k), Some(Direction::Forward), Fault::Permanent);
        let h = start(dir.path(), &mem, CONFIG);
        let id = format!("fail-at-{k}");
        h.exec.submit(saga(&id, 3)).await.unwrap();
        let snap = settled(&h.exec, &id).await;
        assert_eq!(snap.status, Status::Compensated, "failure at {k}");
        let mut expected: Vec<_> = (0..k).map(fwd).collect();
        expected.extend((0..k).rev().map(comp));
        assert_eq!(mem.effects(&id), expected, "failure at {k}");
        assert!(snap.saga.compensation_reason.unwrap().contains(&format!("step {k} failed")));
    }
}

/// A retryable failure is retried with back-off and the saga completes; the effect exists once.
#[tokio::test]
async fn retryable_failure_that_recovers_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    mem.inject(Some(1), Some(Direction::Forward), Fault::Retryable);
    mem.inject(Some(1), Some(Direction::Forward), Fault::Retryable);
    let h = start(dir.path(), &mem, CONFIG);
    h.exec.submit(saga("r", 3)).await.unwrap();
    let snap = settled(&h.exec, "r").await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(snap.saga.steps[1].forward.total_attempts, 3);
    assert_eq!(mem.effects("r"), vec![fwd(0), fwd(1), fwd(2)]);
}

/// A reply lost after the participant committed: the retry finds the marker, nothing is
/// applied twice, and the success is recorded as established by marker.
#[tokio::test]
async fn lost_reply_is_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    mem.inject(Some(0), Some(Direction::Forward), Fault::CommitThenFail);
    let h = start(dir.path(), &mem, CONFIG);
    h.exec.submit(saga("lost", 2)).await.unwrap();
    let snap = settled(&h.exec, "lost").await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(mem.effects("lost"), vec![fwd(0), fwd(1)]);
    assert!(snap.saga.steps[0].forward.by_marker);
}

/// A step that exceeds its timeout is retried (the timeout is a retryable failure).
#[tokio::test]
async fn timed_out_step_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    mem.inject(Some(0), Some(Direction::Forward), Fault::Delay(Duration::from_millis(1000)));
    let h = start(dir.path(), &mem, CONFIG);
    h.exec.submit(saga("slow", 1)).await.unwrap();
    let snap = settled(&h.exec, "slow").await;
    assert_eq!(snap.status, Status::Completed);
    assert!(snap.saga.steps[0].forward.total_attempts >= 2);
    assert_eq!(mem.effects("slow"), vec![fwd(0)]);
}

/// Retries exhausted: the saga compensates its completed steps (budget 4 attempts).
#[tokio::test]
async fn exhausted_retries_compensate() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    for _ in 0..4 {
        mem.inject(Some(1), Some(Direction::Forward), Fault::Retryable);
    }
    let h = start(dir.path(), &mem, &CONFIG.replace("breaker_failures = 3", "breaker_failures = 100"));
    h.exec.submit(saga("ex", 2)).await.unwrap();
    let snap = settled(&h.exec, "ex").await;
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(snap.saga.steps[1].forward.total_attempts, 4);
    assert_eq!(mem.effects("ex"), vec![fwd(0), comp(0)]);
}

/// A participant that goes down opens its breaker: the saga is parked (no more attempts, no
/// retries burnt), and resumes by itself when the participant comes back.
#[tokio::test]
async fn open_breaker_parks_the_saga_and_it_resumes_when_the_participant_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    mem.set_down(true);
    let h = start(dir.path(), &mem, &CONFIG.replace("max_attempts = 4", "max_attempts = 50"));
    h.exec.submit(saga("park", 2)).await.unwrap();
    let mut parked = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Some(p) = h.exec.get("park").and_then(|s| s.parked_on) {
            parked = Some(p);
            break;
        }
    }
    assert_eq!(parked.as_deref(), Some("mem"), "the saga is parked on the sick participant");
    assert!(h.exec.breakers().contains(&("mem".to_string(), "open")));
    let calls = mem.applies();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(mem.applies(), calls, "a parked saga makes no attempts");
    mem.set_down(false);
    let snap = settled(&h.exec, "park").await;
    assert_eq!(snap.status, Status::Completed);
    assert!(snap.saga.steps[0].forward.total_attempts < 50, "parking did not burn the retry budget");
    assert_eq!(mem.effects("park"), vec![fwd(0), fwd(1)]);
}

/// Cancel mid-saga: the step in flight finishes, then every completed step is compensated in
/// reverse order and the saga ends COMPENSATED.
#[tokio::test]
async fn cancel_mid_saga_compensates_completed_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    mem.inject(Some(1), Some(Direction::Forward), Fault::Delay(Duration::from_millis(150)));
    let h = start(dir.path(), &mem, CONFIG);
    h.exec.submit(saga("c", 4)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.exec.cancel("c").await.unwrap();
    let snap = settled(&h.exec, "c").await;
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(mem.effects("c"), vec![fwd(0), fwd(1), comp(1), comp(0)]);
    assert!(matches!(h.exec.cancel("c").await, Err(Error::WrongState { .. })), "a finished saga cannot be cancelled");
}

/// A compensation that keeps failing makes the saga STUCK; an operator's "retry compensation"
/// then finishes it, and "mark compensated" finishes another without running anything.
#[tokio::test]
async fn failing_compensation_is_stuck_until_an_operator_resolves_it() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    let h = start(dir.path(), &mem, &CONFIG.replace("breaker_failures = 3", "breaker_failures = 100"));
    for id in ["stuck-a", "stuck-b"] {
        mem.inject(Some(2), Some(Direction::Forward), Fault::Permanent);
        for _ in 0..3 {
            mem.inject(Some(1), Some(Direction::Compensate), Fault::Retryable);
        }
        h.exec.submit(saga(id, 3)).await.unwrap();
        let snap = settled(&h.exec, id).await;
        assert_eq!(snap.status, Status::Stuck, "{id}");
        assert_eq!(mem.effects(id), vec![fwd(0), fwd(1)], "{id}: compensation of step 0 waits for step 1");
    }
    assert!(matches!(
        h.exec.resolve("s-none", ResolveDecision::RetryCompensation, "op").await,
        Err(Error::NotFound { .. })
    ));
    h.exec.resolve("stuck-a", ResolveDecision::RetryCompensation, "alice").await.unwrap();
    h.exec.resolve("stuck-b", ResolveDecision::MarkCompensated, "bob").await.unwrap();
    for id in ["stuck-a", "stuck-b"] {
        let mut snap = settled(&h.exec, id).await;
        for _ in 0..100 {
            if snap.status != Status::Stuck {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            snap = settled(&h.exec, id).await;
        }
        assert_eq!(snap.status, Status::Compensated, "{id}");
    }
    assert_eq!(mem.effects("stuck-a"), vec![fwd(0), fwd(1), comp(1), comp(0)]);
    assert_eq!(mem.effects("stuck-b"), vec![fwd(0), fwd(1)], "mark-compensated runs nothing");
}

/// With one slot (`max_in_flight = 1`), every submitted saga still runs: those beyond the
/// limit wait in line, and a STUCK saga waiting for an operator does not hold the slot.
#[tokio::test]
async fn sagas_beyond_the_limit_wait_in_line_and_a_stuck_saga_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    let config = CONFIG
        .replace("[executor]\n", "[executor]\nmax_in_flight = 1\n")
        .replace("breaker_failures = 3", "breaker_failures = 100");
    let h = start(dir.path(), &mem, &config);
    mem.inject(Some(1), Some(Direction::Forward), Fault::Permanent);
    for _ in 0..3 {
        mem.inject(Some(0), Some(Direction::Compensate), Fault::Retryable);
    }
    h.exec.submit(saga("stuck", 2)).await.unwrap();
    assert_eq!(settled(&h.exec, "stuck").await.status, Status::Stuck);
    let ids: Vec<String> = (0..20).map(|n| format!("line-{n}")).collect();
    for id in &ids {
        h.exec.submit(saga(id, 2)).await.unwrap();
    }
    for id in &ids {
        assert_eq!(settled(&h.exec, id).await.status, Status::Completed, "{id} ran although one saga is STUCK");
        assert_eq!(mem.effects(id), vec![fwd(0), fwd(1)], "{id}");
    }
    h.exec.resolve("stuck", ResolveDecision::RetryCompensation, "op").await.unwrap();
    let mut snap = settled(&h.exec, "stuck").await;
    for _ in 0..100 {
        if snap.status != Status::Stuck {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        snap = settled(&h.exec, "stuck").await;
    }
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(mem.effects("stuck"), vec![fwd(0), comp(0)]);
}

/// A failed fdatasync poisons the journal: the submit it covered is refused (never
/// acknowledged), its saga never touches a participant, and later submits are refused too.
#[tokio::test]
async fn a_failed_fsync_refuses_the_submit_and_touches_nothing() {
    use std::sync::Arc;

    use sagalog::catalog::Catalog;
    use sagalog::executor::Executor;
    use sagalog::journal::{IoFaults, Journal, Options, SyncPolicy};
    use sagalog::participant::Participant;

    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(IoFaults::new());
    let options = Options { sync: SyncPolicy::Always, faults: Some(faults.clone()), ..Options::default() };
    let journal = Journal::open_dir(dir.path(), options).unwrap().journal;
    let mem = Memory::new("mem");
    let participants = [("mem".to_string(), Arc::new(mem.clone()) as Arc<dyn Participant>)].into();
    let exec = Executor::new(journal, Arc::new(Catalog::parse(engine_support::CONFIG).unwrap()), participants);
    exec.submit(saga("before", 2)).await.unwrap();
    assert_eq!(settled(&exec, "before").await.status, Status::Completed);

    faults.fail_sync_in(1);
    let refused = exec.submit(saga("covered", 2)).await;
    assert!(matches!(refused, Err(Error::Journal(_))), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(mem.effects("covered").is_empty(), "a saga whose submit failed ran a step");
    assert!(exec.get("covered").is_none());
    assert!(matches!(exec.submit(saga("after", 2)).await, Err(Error::Journal(_))));
}

/// Submits are idempotent by id: the same definition again is accepted without a new saga;
/// a different definition under the same id is refused; an invalid saga is refused by name.
#[tokio::test]
async fn submit_is_idempotent_by_id_and_refuses_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &Memory::new("mem"), CONFIG);
    h.exec.submit(saga("same", 2)).await.unwrap();
    settled(&h.exec, "same").await;
    assert_eq!(h.exec.submit(saga("same", 2)).await.unwrap(), SubmitOutcome::AlreadyExists(Status::Completed));
    assert!(matches!(h.exec.submit(saga("same", 3)).await, Err(Error::Conflict { .. })));
    assert_eq!(h.mem.effects("same").len(), 2, "a resubmit runs nothing again");
    let mut bad = saga("bad", 1);
    bad.steps[0].action = "missing".into();
    let err = h.exec.submit(bad).await.unwrap_err().to_string();
    assert!(err.contains("step 0: unknown action \"missing\""), "{err}");
}

/// Many sagas run concurrently and each completes with its own effects once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sagas_complete() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &Memory::new("mem"), CONFIG);
    for i in 0..200 {
        h.exec.submit(saga(&format!("m{i}"), 3)).await.unwrap();
    }
    for i in 0..200 {
        let id = format!("m{i}");
        assert_eq!(settled(&h.exec, &id).await.status, Status::Completed);
        assert_eq!(h.mem.effects(&id), vec![fwd(0), fwd(1), fwd(2)]);
    }
}

/// Issue 10 item 10: the marker of an in-doubt step cannot be read (a permanent lookup error,
/// such as a restored database without the marker table). The saga must not journal lookup
/// failures in a loop: after the step's compensation budget (3 here) it is STUCK with the
/// lookup's error as the reason, and an operator's `RetryCompensation` then unblocks it once
/// the markers are readable again. Before the fix this never settled (one record per lookup,
/// forever).
#[tokio::test]
async fn unreadable_marker_ends_stuck_with_the_reason_after_a_bounded_number_of_records() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    // One forward attempt: its retryable failure (effect maybe applied) starts compensation,
    // which must first settle step 1 by its marker.
    mem.inject(Some(1), Some(Direction::Forward), Fault::Retryable);
    mem.set_markers_unreadable(true);
    let config = CONFIG.replace("max_attempts = 4,", "max_attempts = 1,");
    let h = start(dir.path(), &mem, &config);
    h.exec.submit(saga("unreadable", 2)).await.unwrap();
    let snap = settled(&h.exec, "unreadable").await;
    assert_eq!(snap.status, Status::Stuck);
    let reason = snap.saga.steps[1].forward.last_error.clone().unwrap_or_default();
    assert!(reason.contains("cannot read marker") && reason.contains("sagalog_markers"), "reason: {reason:?}");

    let lookup_failures = || {
        let mut n = 0;
        sagalog::journal::scan(&dir.path().join("journal"), |r, _, _| {
            if let Ok(Record::StepFailed(f)) = Record::decode(r.kind, r.payload)
                && f.step == 1
                && !f.retryable
                && f.maybe_applied
            {
                n += 1;
            }
        })
        .unwrap();
        n
    };
    assert_eq!(lookup_failures(), 3, "one journal record per lookup, bounded by compensate_retry.max_attempts");

    mem.set_markers_unreadable(false);
    let mut watch = h.exec.watch("unreadable").unwrap();
    h.exec.resolve("unreadable", ResolveDecision::RetryCompensation, "op").await.unwrap();
    // Not `settled`: the snapshot may still say STUCK until the task applies the decision.
    let snap = tokio::time::timeout(Duration::from_secs(20), watch.wait_for(|s| s.status.is_terminal()))
        .await
        .expect("the resolved saga finishes")
        .unwrap()
        .clone();
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(mem.effects("unreadable"), vec![fwd(0), comp(0)], "step 1 had no marker: only step 0 is undone");
    assert_eq!(lookup_failures(), 3);
}

/// Issue 10 item 14: sagas parked behind an open breaker give their slot up. With as many
/// parked sagas as `max_in_flight` slots, a saga on a healthy participant still runs (before
/// the fix it waited in line behind them for as long as the outage lasted), and the parked
/// ones finish once their participant is back.
#[tokio::test]
async fn parked_sagas_free_their_slots_for_a_healthy_participant() {
    use sagalog::catalog::Catalog;
    use sagalog::engine::{SagaDefinition, StepCall, Value};
    use sagalog::executor::Executor;
    use sagalog::journal::{Journal, Options, SyncPolicy};
    use sagalog::participant::Participant;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const PARKED: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[participants.ok]\nkind = \"memory\"\n\n[actions.good]\nparticipant = \"ok\"\nparams = {{ n = \"int\" }}\n\
         forward = {{ sql = \"do\", args = [\"n\"] }}\ncompensate = {{ sql = \"undo\", args = [\"n\"] }}\n",
        CONFIG.replace("[executor]\n", &format!("[executor]\nmax_in_flight = {PARKED}\n"))
    );
    let (dead, healthy) = (Memory::new("mem"), Memory::new("ok"));
    dead.set_down(true);
    let options = Options { sync: SyncPolicy::Never, ..Options::default() };
    let journal = Journal::open_dir(dir.path(), options).unwrap().journal;
    let mut participants: BTreeMap<String, Arc<dyn Participant>> = BTreeMap::new();
    participants.insert("mem".into(), Arc::new(dead.clone()));
    participants.insert("ok".into(), Arc::new(healthy.clone()));
    let exec = Executor::new(journal, Arc::new(Catalog::parse(&config).unwrap()), participants);

    let mut watches = Vec::new();
    for n in 0..PARKED {
        let id = format!("parked-{n}");
        exec.submit(saga(&id, 1)).await.unwrap();
        watches.push(exec.watch(&id).unwrap());
    }
    for watch in &mut watches {
        tokio::time::timeout(Duration::from_secs(20), watch.wait_for(|s| s.parked_on.is_some()))
            .await
            .expect("every saga on the dead participant parks")
            .unwrap();
    }
    let step = StepCall {
        action: "good".into(),
        params: BTreeMap::from([("n".to_string(), Value::Int(0))]),
        from: Default::default(),
    };
    exec.submit(SagaDefinition { id: "healthy".into(), steps: vec![step] }).await.unwrap();
    let snap = settled(&exec, "healthy").await;
    assert_eq!(snap.status, Status::Completed, "a healthy participant's saga waited behind parked ones");
    assert_eq!(healthy.effects("healthy"), vec![fwd(0)]);
    for n in 0..PARKED {
        let parked = exec.get(&format!("parked-{n}")).unwrap();
        assert_eq!(parked.parked_on.as_deref(), Some("mem"), "still parked while the participant is down");
    }

    dead.set_down(false);
    for n in 0..PARKED {
        let id = format!("parked-{n}");
        assert_eq!(settled(&exec, &id).await.status, Status::Completed, "{id}");
        assert_eq!(dead.effects(&id), vec![fwd(0)], "{id}");
    }
}
