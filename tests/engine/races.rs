//! Races between the API and a saga's task (issue 10 "trust", items 1 and 13): a cancel or an
//! operator's resolution journaled while a step runs or while its `control()` future is
//! dropped, a drain while a step waits in back-off, and a submit dropped while journaling.
//! Each interleaving is forced with a participant that blocks until released or a journal
//! whose syncs are held, and each test checks the live outcome against a replay of the
//! saga's journal through `Saga::apply`.
//!
//! Never does: rely on a sleep to order events (sleeps only bound waits for a condition), or
//! touch the executor's internals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sagalog::catalog::Catalog;
use sagalog::engine::{Next, Record, ResolveDecision, Saga, Status};
use sagalog::executor::{Error, Executor, SubmitOutcome};
use sagalog::index::Index;
use sagalog::journal::{self, IoFaults, Journal, Options, SyncPolicy};
use sagalog::participant::memory::{Fault, Memory};
use sagalog::participant::{Applied, BoxFuture, Direction, Kind, MarkerEntry, Operation, Participant, StepKey};
use tokio::sync::{Notify, Semaphore};

use crate::engine_support::{CONFIG, saga};

/// A [`Memory`] participant whose `apply` of one step blocks until the test releases it, and
/// that counts and reports every `apply`.
#[derive(Clone)]
struct Gated {
    mem: Memory,
    gate: Option<(u32, Direction)>,
    entered: Arc<Notify>,
    release: Arc<Semaphore>,
    returned: Arc<Notify>,
    calls: Arc<AtomicU64>,
}

impl Gated {
    fn new(gate: Option<(u32, Direction)>) -> Gated {
        Gated {
            mem: Memory::new("mem"),
            gate,
            entered: Arc::new(Notify::new()),
            release: Arc::new(Semaphore::new(0)),
            returned: Arc::new(Notify::new()),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Participant for Gated {
    fn name(&self) -> &str {
        self.mem.name()
    }
    fn kind(&self) -> Kind {
        self.mem.kind()
    }
    fn apply<'a>(
        &'a self,
        key: &'a StepKey,
        attempt: u32,
        op: &'a Operation,
    ) -> BoxFuture<'a, Result<Applied, sagalog::participant::Error>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.gate == Some((key.step, key.direction)) {
                self.entered.notify_one();
                self.release.acquire().await.expect("gate open").forget();
            }
            let result = self.mem.apply(key, attempt, op).await;
            self.returned.notify_one();
            result
        })
    }
    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, sagalog::participant::Error>> {
        self.mem.lookup_marker(key)
    }
    fn settle_marker<'a>(
        &'a self,
        key: &'a StepKey,
        through_attempt: u32,
    ) -> BoxFuture<'a, Result<bool, sagalog::participant::Error>> {
        self.mem.settle_marker(key, through_attempt)
    }
    fn markers<'a>(
        &'a self,
        saga_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, sagalog::participant::Error>> {
        self.mem.markers(saga_id)
    }
    fn all_markers(&self) -> BoxFuture<'_, Result<Vec<MarkerEntry>, sagalog::participant::Error>> {
        self.mem.all_markers()
    }
    fn probe(&self) -> BoxFuture<'_, Result<(), sagalog::participant::Error>> {
        self.mem.probe()
    }
}

struct Rig {
    exec: Executor,
    journal: Journal,
    faults: Arc<IoFaults>,
    _dir: tempfile::TempDir,
}

/// An executor over `participant`, on a journal that syncs every append (so holding syncs
/// holds every acknowledgement), optionally with an index.
fn rig(participant: &Gated, config: &str, index: bool) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(IoFaults::new());
    let options = Options {
        sync: SyncPolicy::Always,
        faults: Some(Arc::clone(&faults)),
        channel_capacity: 1,
        ..Options::default()
    };
    let journal = Journal::open_dir(dir.path(), options).expect("open journal").journal;
    let catalog = Arc::new(Catalog::parse(config).expect("catalog"));
    let mut participants: BTreeMap<String, Arc<dyn Participant>> = BTreeMap::new();
    participants.insert("mem".into(), Arc::new(participant.clone()));
    let index = index.then(|| Index::open(dir.path().join("index")).expect("index"));
    let exec = Executor::with_index(journal.clone(), catalog, participants, index);
    Rig { exec, journal, faults, _dir: dir }
}

/// Waits (bounded) for `cond`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits (bounded) until the saga is COMPLETED or COMPENSATED.
async fn terminal(exec: &Executor, id: &str) -> Status {
    let mut status = Status::Pending;
    until(&format!("saga {id} to finish"), || {
        status = exec.get(id).map_or(Status::Pending, |s| s.status);
        status.is_terminal()
    })
    .await;
    status
}

/// Replays the saga's journal records through `Saga::apply`, checking that every decision the
/// task journaled (`StepStarted`, `SagaFinished`) is the one `Saga::next` gives at that point
/// of the journal. Returns the replayed state.
async fn replay(journal: &Journal, id: &str) -> Saga {
    journal.sync().await.expect("sync");
    let mut records = Vec::new();
    journal::scan(journal.dir(), |r, _, _| records.push(Record::decode(r.kind, r.payload).expect("decode")))
        .expect("scan");
    let mut saga: Option<Saga> = None;
    for record in records.iter().filter(|r| r.saga() == Some(id)) {
        let Some(state) = saga.as_mut() else {
            let Record::SagaSubmitted(submitted) = record else { panic!("{id} starts with {record:?}") };
            saga = Some(Saga::submitted(submitted));
            continue;
        };
        match (record, state.next()) {
            (Record::StepStarted(r), Next::Run { step, direction, attempt, .. }) => assert_eq!(
                (r.step, r.direction, r.attempt),
                (step, direction, attempt),
                "{id}: StepStarted the journal does not plan; records {records:#?}"
            ),
            (Record::StepStarted(r), next) => {
                panic!("{id}: StepStarted {r:?} where replay says {next:?}")
            }
            (Record::SagaFinished(r), next) => assert_eq!(
                next,
                Next::Finish(r.outcome),
                "{id}: SagaFinished {:?} where replay says {next:?}; records {records:#?}",
                r.outcome
            ),
            _ => {}
        }
        state.apply(record);
    }
    saga.unwrap_or_else(|| panic!("{id} is not in the journal"))
}

/// Trust item 1: a cancel acknowledged while the last step runs compensates the saga, live and
/// in replay.
#[tokio::test]
async fn cancel_while_the_last_step_runs_compensates_like_replay() {
    let gated = Gated::new(Some((1, Direction::Forward)));
    let rig = rig(&gated, CONFIG, false);
    rig.exec.submit(saga("c", 2)).await.unwrap();
    gated.entered.notified().await;
    rig.exec.cancel("c").await.unwrap();
    gated.release.add_permits(1);
    assert_eq!(terminal(&rig.exec, "c").await, Status::Compensated);
    let replayed = replay(&rig.journal, "c").await;
    assert_eq!(replayed.status(), Status::Compensated);
    assert_eq!(rig.exec.get("c").unwrap().saga, replayed, "live state differs from the replayed journal");
}

/// Trust item 1: a `cancel()` whose `CancelRequested` reached the journal but whose future was
/// dropped before the acknowledgement (a client gone) still cancels the live saga, as replay
/// does. (Before the fix the task never heard of it and journaled `SagaFinished(Completed)`
/// after the `CancelRequested`.)
#[tokio::test]
async fn a_dropped_cancel_after_its_append_still_compensates_like_replay() {
    let gated = Gated::new(Some((1, Direction::Forward)));
    let rig = rig(&gated, CONFIG, false);
    rig.exec.submit(saga("d", 2)).await.unwrap();
    gated.entered.notified().await;
    rig.faults.hold_syncs();
    {
        let cancel = rig.exec.cancel("d");
        tokio::pin!(cancel);
        tokio::select! {
            r = &mut cancel => panic!("cancel acknowledged while syncs are held: {r:?}"),
            () = until("the CancelRequested to reach the writer", || rig.faults.sync_waiting()) => {}
        }
    } // dropped after its append
    rig.faults.release_syncs();
    gated.release.add_permits(1);
    assert_eq!(terminal(&rig.exec, "d").await, Status::Compensated);
    let replayed = replay(&rig.journal, "d").await;
    assert_eq!(replayed.status(), Status::Compensated);
    assert_eq!(rig.exec.get("d").unwrap().saga, replayed, "live state differs from the replayed journal");
}

/// Trust item 1: an operator's `Resolved` journaled for a STUCK saga, its `resolve()` future
/// dropped before the acknowledgement, is applied live as replay applies it.
#[tokio::test]
async fn a_dropped_resolve_after_its_append_is_applied_like_replay() {
    let gated = Gated::new(None);
    let rig = rig(&gated, &CONFIG.replace("breaker_failures = 3", "breaker_failures = 100"), false);
    gated.mem.inject(Some(1), Some(Direction::Forward), Fault::Permanent);
    gated.mem.inject(Some(0), Some(Direction::Compensate), Fault::Permanent);
    rig.exec.submit(saga("r", 2)).await.unwrap();
    until("the saga to be STUCK", || rig.exec.get("r").is_some_and(|s| s.status == Status::Stuck)).await;
    rig.faults.hold_syncs();
    {
        let resolve = rig.exec.resolve("r", ResolveDecision::MarkCompensated, "op");
        tokio::pin!(resolve);
        tokio::select! {
            r = &mut resolve => panic!("resolve acknowledged while syncs are held: {r:?}"),
            () = until("the Resolved to reach the writer", || rig.faults.sync_waiting()) => {}
        }
    }
    rig.faults.release_syncs();
    assert_eq!(terminal(&rig.exec, "r").await, Status::Compensated);
    let replayed = replay(&rig.journal, "r").await;
    assert_eq!(replayed.status(), Status::Compensated);
    assert_eq!(rig.exec.get("r").unwrap().saga, replayed, "live state differs from the replayed journal");
}

/// Trust item 1 (drain): a step waiting in back-off when `drain()` returns never starts, even
/// once its back-off ends.
#[tokio::test]
async fn a_step_in_back_off_when_drain_returns_never_starts() {
    let gated = Gated::new(None);
    let config =
        CONFIG.replace("initial_backoff_ms = 5, max_backoff_ms = 20", "initial_backoff_ms = 400, max_backoff_ms = 400");
    let rig = rig(&gated, &config, false);
    gated.mem.inject(Some(0), Some(Direction::Forward), Fault::Retryable);
    rig.exec.submit(saga("b", 2)).await.unwrap();
    // The failure is published only by the `settle` right before the back-off's sleep.
    until("the failed attempt to be published", || {
        rig.exec.get("b").is_some_and(|s| s.saga.steps[0].forward.last_error.is_some())
    })
    .await;
    assert_eq!(rig.exec.drain(Duration::from_secs(5)).await, 0);
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1, "the back-off ended before drain returned: inconclusive");
    until("the saga's task to stop", || !rig.exec.is_live("b")).await;
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1, "a step started after drain() returned");
    let replayed = replay(&rig.journal, "b").await;
    assert_eq!(replayed.steps[0].forward.total_attempts, 1, "a StepStarted was journaled after drain() returned");
}

/// Trust item 13: a submit dropped while its `SagaSubmitted` waits to be handed to the journal
/// (a client deadline, a stream reset) neither pins its id nor the checkpoint: the same id
/// submitted again is accepted (or found), the saga finishes, and the checkpoint LSN moves
/// past it.
#[tokio::test]
async fn a_submit_dropped_while_journaling_pins_neither_its_id_nor_the_checkpoint() {
    let gated = Gated::new(None);
    let rig = rig(&gated, CONFIG, true);
    let filler = |n: u32| {
        let record =
            Record::CancelRequested(sagalog::engine::record::CancelRequested { saga: format!("nobody-{n}"), at_ms: 0 });
        (record.kind(), record.encode())
    };
    rig.faults.hold_syncs();
    // The writer takes one record and waits in its sync; the next fills the channel (capacity
    // 1), so the submit's `SagaSubmitted` cannot be handed over until syncs are released.
    let (kind, payload) = filler(0);
    let first = rig.journal.append_queued(kind, payload).await.unwrap();
    until("the writer to sync", || rig.faults.sync_waiting()).await;
    let (kind, payload) = filler(1);
    let second = rig.journal.append_queued(kind, payload).await.unwrap();
    {
        let submit = rig.exec.submit(saga("p", 2));
        tokio::pin!(submit);
        let early = tokio::time::timeout(Duration::from_millis(100), &mut submit).await;
        assert!(early.is_err(), "submit answered while syncs are held: {early:?}");
    } // dropped while journaling
    rig.faults.release_syncs();
    first.durable().await.unwrap();
    second.durable().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        match rig.exec.submit(saga("p", 2)).await {
            Err(Error::SubmitInProgress { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => break other,
        }
    };
    assert!(matches!(again, Ok(SubmitOutcome::Accepted | SubmitOutcome::AlreadyExists(_))), "{again:?}");
    until("the saga to be archived", || rig.exec.get("p").is_none()).await;
    assert_eq!(rig.exec.archived("p").unwrap().map(|r| r.status), Some("COMPLETED".to_owned()));
    assert_eq!(gated.mem.effects("p").len(), 2, "each step applied once");
    assert_eq!(rig.exec.checkpoint_lsn(), rig.journal.acked_lsn() + 1, "the checkpoint is pinned");
}

/// Issue 9 item 4: a saga's control queue is bounded. While its task is busy in a step, at
/// most `CONTROL_QUEUE_MAX` cancels wait for it; one more is refused before anything is
/// journaled, and the saga still ends as its journal says.
#[tokio::test]
async fn a_full_control_queue_refuses_more_before_journaling() {
    let gated = Gated::new(Some((0, Direction::Forward)));
    let rig = rig(&gated, CONFIG, false);
    rig.exec.submit(saga("q", 2)).await.unwrap();
    gated.entered.notified().await;
    // The task takes the first cancel while its step runs (to interrupt the step), then no
    // more until the step ends: the queue holds the rest.
    rig.exec.cancel("q").await.unwrap();
    until("the running step's task to take the cancel", || rig.exec.get("q").is_some_and(|s| s.saga.cancel_requested))
        .await;
    for _ in 0..sagalog::executor::CONTROL_QUEUE_MAX {
        rig.exec.cancel("q").await.unwrap();
    }
    let before = rig.journal.acked_lsn();
    let refused = rig.exec.cancel("q").await.unwrap_err();
    assert!(matches!(refused, sagalog::executor::Error::ControlQueueFull { .. }), "{refused}");
    assert_eq!(rig.journal.acked_lsn(), before, "nothing was journaled for the refused cancel");
    gated.release.add_permits(1);
    assert_eq!(terminal(&rig.exec, "q").await, Status::Compensated);
    assert_eq!(replay(&rig.journal, "q").await.status(), Status::Compensated);
}
