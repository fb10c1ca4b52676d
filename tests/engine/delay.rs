//! Delay steps (issue 11 item 5) through the real executor, journal and recovery: a delay
//! waits its whole time and no more than it must, survives a restart without starting over or
//! being shortened (its deadline is journaled once, in its `StepStarted`), a cancel during it
//! compensates the earlier steps at once, a drain ends the wait at once, and a waiting saga
//! holds no `in_flight_max` slot.
//!
//! Timing assertions are lower bounds, or upper bounds with a margin of seconds (the machine
//! is shared and loaded); what the delay did is read from the journal, not inferred from
//! elapsed time alone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sagalog::engine::record::{Started, Succeeded};
use sagalog::engine::{Record, SagaDefinition, Status, StepCall, Value};
use sagalog::executor::Executor;
use sagalog::journal;
use sagalog::participant::memory::Memory;
use sagalog::recovery;

use crate::engine_support::{CONFIG, comp, fwd, settled, start};

/// The harness's config with a fixed delay `wait` and a delay `pause` that takes its
/// parameter, and `extra` in the `[executor]` block.
fn config(wait_ms: u64, extra: &str) -> String {
    let config = CONFIG.replace("[executor]\n", &format!("[executor]\n{extra}\n"));
    format!(
        "{config}\n[actions.wait]\ndelay_ms = {wait_ms}\n\n[actions.pause]\ndelay_ms = \"param\"\nparams = {{ delay_ms = \"int\" }}\n"
    )
}

fn act(n: i64) -> StepCall {
    StepCall { action: "act".into(), params: BTreeMap::from([("n".into(), Value::Int(n))]), from: Default::default() }
}

fn wait() -> StepCall {
    StepCall { action: "wait".into(), params: BTreeMap::new(), from: Default::default() }
}

fn pause(delay_ms: i64) -> StepCall {
    StepCall {
        action: "pause".into(),
        params: BTreeMap::from([("delay_ms".into(), Value::Int(delay_ms))]),
        from: Default::default(),
    }
}

fn saga(id: &str, steps: Vec<StepCall>) -> SagaDefinition {
    SagaDefinition { id: id.into(), steps }
}

fn now_ms() -> u64 {
    sagalog::clock::now_ms()
}

/// Waits (bounded) until step `step` of `id` has published its journaled deadline.
async fn deadline_of(exec: &Executor, id: &str, step: usize) -> u64 {
    let limit = Instant::now() + Duration::from_secs(10);
    loop {
        let deadline = exec.get(id).and_then(|s| s.saga.steps.get(step).and_then(|s| s.forward.deadline_ms));
        if let Some(deadline) = deadline {
            return deadline;
        }
        assert!(Instant::now() < limit, "delay step {step} of {id} never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The starts and successes the journal in `dir` holds for step `step` of `id`, forward.
fn journaled(dir: &Path, id: &str, step: u32) -> (Vec<Started>, Vec<Succeeded>) {
    let (mut starts, mut successes) = (Vec::new(), Vec::new());
    journal::scan(dir, |r, _, _| match Record::decode(r.kind, r.payload).expect("decode") {
        Record::StepStarted(s) if s.saga == id && s.step == step => starts.push(s),
        Record::StepSucceeded(s) if s.saga == id && s.step == step => successes.push(s),
        _ => {}
    })
    .expect("scan the journal");
    (starts, successes)
}

/// A delay step between two participant steps waits its whole delay (the step after it starts
/// no earlier than the journaled deadline), journals one start with the deadline and one
/// success, and the saga completes.
#[tokio::test]
async fn a_delay_step_completes_after_its_delay_and_the_saga_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    let h = start(dir.path(), &mem, &config(600, ""));
    let began = now_ms();
    h.exec.submit(saga("d", vec![act(0), wait(), act(1)])).await.unwrap();
    let snap = settled(&h.exec, "d").await;
    assert_eq!(snap.status, Status::Completed);
    assert!(now_ms() >= began + 600, "the saga finished before its delay was over");
    assert_eq!(mem.effects("d"), vec![fwd(0), fwd(2)], "the delay touched no participant");
    h.journal.sync().await.unwrap();
    let (starts, successes) = journaled(h.journal.dir(), "d", 1);
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(successes.len(), 1, "{successes:?}");
    let deadline = starts[0].deadline_ms.expect("the delay's start journals its deadline");
    assert_eq!(deadline, starts[0].at_ms + 600);
    assert!(successes[0].at_ms >= deadline, "the wait was shortened: {} < {deadline}", successes[0].at_ms);
    let (next_starts, _) = journaled(h.journal.dir(), "d", 2);
    assert!(next_starts[0].at_ms >= deadline, "step 2 started before the delay's deadline");
    assert_eq!(snap.saga.steps[1].forward.deadline_ms, Some(deadline), "Get shows the deadline");
}

/// A restart in the middle of a delay resumes what is left of it: the drain ends the wait at
/// once (before the deadline), the restarted saga waits for the deadline journaled the first
/// time, and finishes near it, neither earlier (shortened) nor a whole delay later (started
/// over). The journal holds one start and one success for the step.
#[tokio::test]
async fn a_restart_mid_delay_resumes_the_remaining_time() {
    const DELAY_MS: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    let cfg = config(600, "");
    let deadline = {
        let h = start(dir.path(), &mem, &cfg);
        h.exec.submit(saga("r", vec![act(0), pause(DELAY_MS as i64), act(1)])).await.unwrap();
        let deadline = deadline_of(&h.exec, "r", 1).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(h.exec.drain(Duration::from_secs(5)).await, 0, "a delay is no call in flight");
        let limit = Instant::now() + Duration::from_secs(5);
        while h.exec.is_live("r") {
            assert!(Instant::now() < limit, "the drain did not end the delay's wait");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(now_ms() < deadline, "the wait ended only at its deadline, not at the drain");
        h.journal.shutdown().await.unwrap();
        deadline
    };
    assert_eq!(mem.effects("r"), vec![fwd(0)]);
    let h = start(dir.path(), &mem, &cfg);
    recovery::recover(&h.exec, 1).await.unwrap();
    let snap = settled(&h.exec, "r").await;
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(mem.effects("r"), vec![fwd(0), fwd(2)]);
    h.journal.sync().await.unwrap();
    let (starts, successes) = journaled(h.journal.dir(), "r", 1);
    assert_eq!(starts.len(), 1, "the delay was started again: {starts:?}");
    assert_eq!(starts[0].deadline_ms, Some(deadline));
    assert_eq!(deadline, starts[0].at_ms + DELAY_MS);
    assert_eq!(successes.len(), 1, "{successes:?}");
    let ended = successes[0].at_ms;
    assert!(ended >= deadline, "shortened: ended at {ended}, deadline {deadline}");
    // Started over, it would end 1.5 s (the time waited before the restart) after the deadline.
    assert!(ended < deadline + 1_000, "started over: ended {} ms after the deadline", ended - deadline);
}

/// A delay whose deadline passed while the server was down ends at once on restart, with no
/// second start.
#[tokio::test]
async fn a_delay_whose_deadline_passed_during_the_downtime_ends_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    let cfg = config(600, "");
    let deadline = {
        let h = start(dir.path(), &mem, &cfg);
        h.exec.submit(saga("p", vec![pause(300), act(1)])).await.unwrap();
        let deadline = deadline_of(&h.exec, "p", 0).await;
        h.exec.drain(Duration::from_secs(5)).await;
        h.journal.shutdown().await.unwrap();
        deadline
    };
    while now_ms() < deadline + 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = start(dir.path(), &mem, &cfg);
    recovery::recover(&h.exec, 1).await.unwrap();
    assert_eq!(settled(&h.exec, "p").await.status, Status::Completed);
    h.journal.sync().await.unwrap();
    let (starts, successes) = journaled(h.journal.dir(), "p", 0);
    assert_eq!((starts.len(), successes.len()), (1, 1), "{starts:?} {successes:?}");
}

/// A cancel during a long delay compensates the steps before it at once (well before the
/// deadline): the delay journals no success and no compensation, step 0 is undone.
#[tokio::test]
async fn cancel_during_a_delay_compensates_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    let h = start(dir.path(), &mem, &config(60_000, ""));
    h.exec.submit(saga("c", vec![act(0), wait(), act(2)])).await.unwrap();
    let deadline = deadline_of(&h.exec, "c", 1).await;
    h.exec.cancel("c").await.unwrap();
    let snap = settled(&h.exec, "c").await;
    assert_eq!(snap.status, Status::Compensated);
    assert!(now_ms() + 30_000 < deadline, "the cancel waited for the delay");
    assert_eq!(snap.saga.compensation_reason.as_deref(), Some("cancelled"));
    assert_eq!(mem.effects("c"), vec![fwd(0), comp(0)]);
    h.journal.sync().await.unwrap();
    let (starts, successes) = journaled(h.journal.dir(), "c", 1);
    assert_eq!(starts.len(), 1, "a delay is never compensated: {starts:?}");
    assert!(successes.is_empty(), "{successes:?}");
}

/// With one slot (`in_flight_max = 1`) and a saga waiting in a long delay, another saga still
/// runs to completion: the waiting saga holds no slot. It then still compensates on cancel.
#[tokio::test]
async fn a_waiting_delay_holds_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    let h = start(dir.path(), &mem, &config(60_000, "in_flight_max = 1"));
    h.exec.submit(saga("waiting", vec![act(0), wait()])).await.unwrap();
    deadline_of(&h.exec, "waiting", 1).await;
    h.exec.submit(saga("other", vec![act(0), act(1)])).await.unwrap();
    assert_eq!(settled(&h.exec, "other").await.status, Status::Completed);
    assert_eq!(mem.effects("other"), vec![fwd(0), fwd(1)]);
    assert_eq!(h.exec.get("waiting").map(|s| s.status), Some(Status::Running), "the delay is still waiting");
    h.exec.cancel("waiting").await.unwrap();
    assert_eq!(settled(&h.exec, "waiting").await.status, Status::Compensated);
    assert_eq!(mem.effects("waiting"), vec![fwd(0), comp(0)]);
}
