//! Recovery, one test per row of the decision table in docs/recovery.md: a journal that ends
//! in a given record, a participant whose marker is present or absent, and what a restart
//! does. Journals are written record by record as a crashed executor would have left them.

use crate::engine_support;

use std::path::Path;

use engine_support::{CONFIG, comp, fwd, saga, settled, start};
use sagalog::catalog::Catalog;
use sagalog::engine::record::{CancelRequested, Failed, Finished, Started, Submitted, Succeeded};
use sagalog::engine::{Outcome, Record, Status};
use sagalog::journal::{Journal, Options, SyncPolicy};
use sagalog::participant::memory::Memory;
use sagalog::participant::{Direction, Operation, Participant, StepKey};
use sagalog::recovery;

const ID: &str = "crashed";

fn submitted(steps: usize) -> Record {
    let def = saga(ID, steps);
    let policies = Catalog::parse(CONFIG).unwrap().validate(&def).unwrap();
    Record::SagaSubmitted(Submitted {
        saga: ID.into(),
        digest: def.digest(),
        steps: def.steps,
        policies,
        at_ms: 1,
        actions: Default::default(),
        scope: None,
    })
}

fn started(step: u32, direction: Direction, attempt: u32) -> Record {
    Record::StepStarted(Started { saga: ID.into(), step, direction, attempt, at_ms: 2, deadline_ms: None })
}

fn succeeded(step: u32, direction: Direction) -> Record {
    Record::StepSucceeded(Succeeded {
        saga: ID.into(),
        step,
        direction,
        attempt: 1,
        by_marker: false,
        at_ms: 3,
        outputs: Default::default(),
    })
}

fn failed(step: u32, direction: Direction, retryable: bool) -> Record {
    Record::StepFailed(Failed {
        saga: ID.into(),
        step,
        direction,
        attempt: 1,
        error: "boom".into(),
        retryable,
        maybe_applied: retryable,
        at_ms: 4,
    })
}

/// Writes the records a crashed executor left behind.
async fn crashed_journal(dir: &Path, records: &[Record]) {
    let opened = Journal::open_dir(dir, Options { sync: SyncPolicy::Never, ..Options::default() }).unwrap();
    for r in records {
        opened.journal.append(r.kind(), r.encode()).await.unwrap();
    }
    opened.journal.shutdown().await.unwrap();
}

/// Commits `step` in `direction` in the participant, as the crashed executor's call did.
async fn committed_before_crash(mem: &Memory, step: u32, direction: Direction) {
    let key = StepKey { saga_id: ID.into(), step, direction, scope: None };
    mem.apply(&key, 1, &Operation::Noop).await.unwrap();
}

/// Restarts: recovery, then waits for the saga to settle.
async fn restart(dir: &Path, mem: &Memory) -> sagalog::executor::Snapshot {
    let h = start(dir, mem, CONFIG);
    recovery::recover(&h.exec, 1).await.unwrap();
    settled(&h.exec, ID).await
}

/// Row 1: only `SagaSubmitted` → the saga runs from its first step.
#[tokio::test]
async fn submitted_only_runs_from_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    crashed_journal(dir.path(), &[submitted(2)]).await;
    let mem = Memory::new("mem");
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(mem.effects(ID), vec![fwd(0), fwd(1)]);
    assert_eq!(snap.saga.recoveries, 1);
}

/// Row 2: forward `StepStarted`, marker present → success recorded without re-running.
#[tokio::test]
async fn started_forward_with_marker_is_recorded_without_rerunning() {
    let dir = tempfile::tempdir().unwrap();
    crashed_journal(dir.path(), &[submitted(2), started(0, Direction::Forward, 1)]).await;
    let mem = Memory::new("mem");
    committed_before_crash(&mem, 0, Direction::Forward).await;
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(mem.effects(ID), vec![fwd(0), fwd(1)], "step 0 applied exactly once");
    assert!(snap.saga.steps[0].forward.by_marker);
    assert_eq!(mem.applies(), 2, "step 0 was not called again");
}

/// Row 3: forward `StepStarted`, marker absent → the step runs again.
#[tokio::test]
async fn started_forward_without_marker_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    crashed_journal(dir.path(), &[submitted(2), started(0, Direction::Forward, 1)]).await;
    let mem = Memory::new("mem");
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(mem.effects(ID), vec![fwd(0), fwd(1)]);
    assert_eq!(snap.saga.steps[0].forward.total_attempts, 2, "the interrupted attempt counts");
}

/// Row 4: forward `StepSucceeded` → continue with the next step.
#[tokio::test]
async fn succeeded_forward_continues_with_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    crashed_journal(dir.path(), &[submitted(2), started(0, Direction::Forward, 1), succeeded(0, Direction::Forward)])
        .await;
    let mem = Memory::new("mem");
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(mem.effects(ID), vec![fwd(1)], "step 0 is not run again");
}

/// Row 5: forward `StepFailed` retryable with budget left → retried.
#[tokio::test]
async fn retryable_failure_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    crashed_journal(
        dir.path(),
        &[submitted(1), started(0, Direction::Forward, 1), failed(0, Direction::Forward, true)],
    )
    .await;
    let mem = Memory::new("mem");
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(mem.effects(ID), vec![fwd(0)]);
}

/// Row 6: forward `StepFailed` permanent → compensation of the completed steps.
#[tokio::test]
async fn permanent_failure_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let records = [
        submitted(2),
        started(0, Direction::Forward, 1),
        succeeded(0, Direction::Forward),
        started(1, Direction::Forward, 1),
        failed(1, Direction::Forward, false),
    ];
    crashed_journal(dir.path(), &records).await;
    let mem = Memory::new("mem");
    committed_before_crash(&mem, 0, Direction::Forward).await;
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(mem.effects(ID), vec![fwd(0), comp(0)]);
}

/// Row 7: compensating `StepStarted`, marker present → recorded, compensation continues below.
#[tokio::test]
async fn started_compensation_with_marker_is_recorded_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let records = [
        submitted(3),
        started(0, Direction::Forward, 1),
        succeeded(0, Direction::Forward),
        started(1, Direction::Forward, 1),
        succeeded(1, Direction::Forward),
        started(2, Direction::Forward, 1),
        failed(2, Direction::Forward, false),
        started(1, Direction::Compensate, 1),
    ];
    crashed_journal(dir.path(), &records).await;
    let mem = Memory::new("mem");
    for (step, d) in [fwd(0), fwd(1), comp(1)] {
        committed_before_crash(&mem, step, d).await;
    }
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(mem.effects(ID), vec![fwd(0), fwd(1), comp(1), comp(0)], "compensation of step 1 applied once");
    assert!(snap.saga.steps[1].compensate.by_marker);
}

/// Row 8: compensating `StepStarted`, marker absent → the compensation runs again.
#[tokio::test]
async fn started_compensation_without_marker_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let records = [
        submitted(2),
        started(0, Direction::Forward, 1),
        succeeded(0, Direction::Forward),
        started(1, Direction::Forward, 1),
        failed(1, Direction::Forward, false),
        started(0, Direction::Compensate, 1),
    ];
    crashed_journal(dir.path(), &records).await;
    let mem = Memory::new("mem");
    committed_before_crash(&mem, 0, Direction::Forward).await;
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(mem.effects(ID), vec![fwd(0), comp(0)]);
}

/// Row 9: `CancelRequested` last → the completed steps are compensated.
#[tokio::test]
async fn cancel_requested_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let records = [
        submitted(3),
        started(0, Direction::Forward, 1),
        succeeded(0, Direction::Forward),
        Record::CancelRequested(CancelRequested { saga: ID.into(), at_ms: 5 }),
    ];
    crashed_journal(dir.path(), &records).await;
    let mem = Memory::new("mem");
    committed_before_crash(&mem, 0, Direction::Forward).await;
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(mem.effects(ID), vec![fwd(0), comp(0)]);
}

/// Row 10: `SagaFinished` → nothing runs; the status is served as journaled.
#[tokio::test]
async fn finished_saga_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let records = [
        submitted(1),
        started(0, Direction::Forward, 1),
        succeeded(0, Direction::Forward),
        Record::SagaFinished(Finished { saga: ID.into(), outcome: Outcome::Completed, at_ms: 6 }),
    ];
    crashed_journal(dir.path(), &records).await;
    let mem = Memory::new("mem");
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(mem.applies(), 0);
    assert_eq!(snap.saga.recoveries, 0, "a finished saga was not recovered");
}

/// Row 11: compensation budget exhausted (STUCK) → still STUCK after recovery, nothing runs.
#[tokio::test]
async fn stuck_saga_stays_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = vec![
        submitted(2),
        started(0, Direction::Forward, 1),
        succeeded(0, Direction::Forward),
        started(1, Direction::Forward, 1),
        failed(1, Direction::Forward, false),
    ];
    for attempt in 1..=3 {
        records.push(started(0, Direction::Compensate, attempt));
        let mut f = failed(0, Direction::Compensate, true);
        if let Record::StepFailed(f) = &mut f {
            f.maybe_applied = false;
        }
        records.push(f);
    }
    crashed_journal(dir.path(), &records).await;
    let mem = Memory::new("mem");
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Stuck);
    assert_eq!(mem.applies(), 0);
}

/// Recoveries are counted per saga, durably: two crashes → two recoveries.
#[tokio::test]
async fn recoveries_are_counted_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    crashed_journal(dir.path(), &[submitted(1), started(0, Direction::Forward, 1)]).await;
    {
        // First restart: recovery journals its checkpoint, then "crashes" before running anything.
        let h = start(dir.path(), &Memory::new("mem"), CONFIG);
        let rebuilt = recovery::rebuild(h.journal.dir(), 1).unwrap();
        assert_eq!(rebuilt.sagas[ID].recoveries, 0);
        let record = Record::RecoveryStarted(sagalog::engine::record::RecoveryStarted {
            reason: "recovery".into(),
            unfinished: 1,
            at_ms: 7,
        });
        h.journal.append(record.kind(), record.encode()).await.unwrap();
        h.journal.shutdown().await.unwrap();
    }
    let mem = Memory::new("mem");
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(snap.saga.recoveries, 2);
}

/// Row 13: a COMPLETED saga reopened by an operator (`Resolved { CompensateCompleted }`, what
/// `sagalog replay --compensate-since` journals) → every step is compensated, highest first,
/// and a stray reopen of a saga that is not COMPLETED changes nothing.
#[tokio::test]
async fn completed_saga_reopened_by_an_operator_is_compensated() {
    use sagalog::engine::ResolveDecision;
    use sagalog::engine::record::Resolved;
    let dir = tempfile::tempdir().unwrap();
    let reopen = Record::Resolved(Resolved {
        saga: ID.into(),
        decision: ResolveDecision::CompensateCompleted,
        by: "operator".into(),
        at_ms: 7,
    });
    let records = [
        submitted(2),
        reopen.clone(),
        started(0, Direction::Forward, 1),
        succeeded(0, Direction::Forward),
        started(1, Direction::Forward, 1),
        succeeded(1, Direction::Forward),
        Record::SagaFinished(Finished { saga: ID.into(), outcome: Outcome::Completed, at_ms: 6 }),
        reopen,
    ];
    crashed_journal(dir.path(), &records).await;
    let mem = Memory::new("mem");
    for step in [0, 1] {
        committed_before_crash(&mem, step, Direction::Forward).await;
    }
    let snap = restart(dir.path(), &mem).await;
    assert_eq!(snap.status, Status::Compensated);
    assert_eq!(mem.effects(ID), vec![fwd(0), fwd(1), comp(1), comp(0)], "compensated highest first");
    assert!(snap.saga.compensation_reason.as_deref().is_some_and(|r| r.contains("operator")));
}

/// Trust item A8: an on-demand recovery pass (`Admin.Recover`) reads the journal, then looks
/// at the registry. A saga that finished in between (its `SagaFinished` came after the read;
/// its task ended, and it is not archived yet, or cannot be: no index) must not be restarted
/// from the stale state the pass read. Modelled exactly: the journal holds the saga unfinished,
/// the executor holds it finished in memory (adopted finished with no index, as a task that
/// has just ended leaves it).
#[tokio::test]
async fn a_recovery_pass_never_restarts_a_saga_that_finished_after_its_read() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = [submitted(2), started(0, Direction::Forward, 1), succeeded(0, Direction::Forward)];
    crashed_journal(dir.path(), &on_disk).await;
    let mem = Memory::new("mem");
    committed_before_crash(&mem, 0, Direction::Forward).await;
    let h = start(dir.path(), &mem, CONFIG);
    let Record::SagaSubmitted(s) = &on_disk[0] else { unreachable!() };
    let mut finished = sagalog::engine::Saga::submitted(s);
    let later = [
        started(1, Direction::Forward, 1),
        succeeded(1, Direction::Forward),
        Record::SagaFinished(Finished { saga: ID.into(), outcome: Outcome::Completed, at_ms: 5 }),
    ];
    for r in on_disk[1..].iter().chain(&later) {
        finished.apply(r);
    }
    h.exec.adopt(finished, 1);
    assert_eq!(h.exec.get(ID).map(|s| s.status), Some(Status::Completed));

    let report = recovery::recover_missing(&h.exec).await.unwrap();
    assert_eq!(report.restarted, 0, "a finished saga was restarted from the journal's stale state");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(mem.effects(ID), vec![fwd(0)], "a stale restart ran the saga's steps again");
    assert_eq!(h.exec.get(ID).map(|s| s.status), Some(Status::Completed));
}

/// Trust item A9: a saga runs, after a restart, the action definitions it was submitted with,
/// not whatever the config says now. The first run journals the saga while its participant is
/// down; the restart's config no longer declares the action (renamed, or the data directory
/// served with another config). Before: the saga went STUCK ("action \"act\" is no longer
/// declared"). Now it completes with the journaled definition, and compensation would too.
#[tokio::test]
async fn a_saga_runs_the_definitions_it_was_submitted_with_after_the_config_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    mem.set_down(true);
    {
        let h = start(dir.path(), &mem, CONFIG);
        h.exec.submit(saga(ID, 2)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(mem.effects(ID), vec![], "nothing ran while the participant was down");
        h.exec.drain(std::time::Duration::from_secs(2)).await;
        h.journal.shutdown().await.unwrap();
    }
    mem.set_down(false);
    let renamed = CONFIG.replace("[actions.act]", "[actions.act_v2]");
    let h = start(dir.path(), &mem, &renamed);
    recovery::recover(&h.exec, 1).await.unwrap();
    let snap = settled(&h.exec, ID).await;
    assert_eq!(
        snap.status,
        Status::Completed,
        "reason: {:?}",
        snap.saga.steps.iter().map(|s| &s.forward.last_error).collect::<Vec<_>>()
    );
    assert_eq!(mem.effects(ID), vec![fwd(0), fwd(1)]);
}
