//! The executor: runs sagas' steps against participants, journal first.
//!
//! Each saga is driven by one task that owns its [`Saga`] state. The task asks the pure
//! [`Saga::next`] what to do, journals the intent (`StepStarted`) **before** touching the
//! participant, journals the outcome after, and applies every record it journals to its state
//! with [`Saga::apply`], the same function recovery replays the journal through.
//!
//! Around each call: exponential back-off with jitter between attempts, a per-step timeout,
//! and a circuit breaker per participant that parks sagas (no attempt, no journal record)
//! while the participant is sick. Concurrency is bounded by `max_in_flight`; a saga waiting
//! for a slot is already durable.
//!
//! Never does: touch a participant before its `StepStarted` is durable, decide anything that
//! `Saga::next` did not say, or hold a lock across an `.await`.

pub mod breaker;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::catalog::{Catalog, RetryConfig, ValidationError};
use crate::engine::record::{CancelRequested, Failed, Finished, Resolved, Started, Submitted, Succeeded};
use crate::engine::{Next, Record, ResolveDecision, Saga, SagaDefinition, Status, StepCall};
use crate::index::{Index, SagaRecord};
use crate::journal::{self, Journal};
use crate::participant::{Applied, Direction, Operation, Participant, StepKey};
use breaker::{Admission, Breaker, BreakerConfig};

/// How long a circuit breaker's health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a saga looks like from outside: its state, plus whether it is parked.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub saga: Saga,
    pub status: Status,
    /// The participant whose open breaker this saga is waiting on.
    pub parked_on: Option<String>,
}

/// The answer to a submit.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// Journaled durably now.
    Accepted,
    /// The same id with the same definition was submitted before: nothing new was journaled.
    AlreadyExists(Status),
}

/// Why a submit, cancel or resolve was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("saga {id:?} already exists with a different definition")]
    Conflict { id: String },
    #[error("a submit of saga {id:?} is still being journaled; retry")]
    SubmitInProgress { id: String },
    #[error("saga {id:?} not found")]
    NotFound { id: String },
    #[error("saga {id:?} is {status}: {what}")]
    WrongState { id: String, status: &'static str, what: &'static str },
    #[error("journal unavailable: {0}")]
    Journal(#[from] journal::Error),
    #[error("index unavailable: {0}")]
    Index(#[from] crate::index::Error),
    #[error("the server is shutting down and takes no new sagas")]
    ShuttingDown,
}

/// Messages from the API to a running saga task.
enum Control {
    /// A journaled record the task must apply (cancel, operator resolution).
    Apply(Record),
}

struct Entry {
    view: watch::Sender<Snapshot>,
    /// LSN of the saga's `SagaSubmitted`: the journal must keep everything from here on
    /// until the saga is finished and archived.
    first_lsn: u64,
    /// True between reserving the id and the durable `SagaSubmitted`.
    reserved: bool,
    /// `None` once the saga's task has ended.
    control: Option<mpsc::UnboundedSender<Control>>,
}

struct Inner {
    journal: Journal,
    catalog: Arc<Catalog>,
    participants: BTreeMap<String, Arc<dyn Participant>>,
    breakers: BTreeMap<String, Breaker>,
    sagas: Mutex<HashMap<String, Entry>>,
    slots: Arc<Semaphore>,
    /// Sagas waiting for a slot, oldest first. A queued saga costs its state only, not a task:
    /// recovery may adopt a hundred thousand at once. Guarded together with slot hand-over
    /// (see [`Executor::dispatch`]).
    waiting: Mutex<VecDeque<SagaTask>>,
    /// Set by [`Executor::drain`]: no new saga, no new step.
    draining: AtomicBool,
    /// Participant calls running now, and a wake-up for when that reaches zero.
    calls: AtomicUsize,
    calls_idle: Notify,
    /// Where finished sagas go (and leave memory). Without one they stay in memory.
    index: Option<Index>,
}

/// A cheap, cloneable handle to the executor.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Executor {
    pub fn new(journal: Journal, catalog: Arc<Catalog>, participants: BTreeMap<String, Arc<dyn Participant>>) -> Self {
        Executor::with_index(journal, catalog, participants, None)
    }

    /// An executor that archives finished sagas into `index` and forgets them, so its memory
    /// does not grow with the number of finished sagas.
    pub fn with_index(
        journal: Journal,
        catalog: Arc<Catalog>,
        participants: BTreeMap<String, Arc<dyn Participant>>,
        index: Option<Index>,
    ) -> Self {
        let cfg = &catalog.config.executor;
        let breaker_config = BreakerConfig {
            failures_to_open: cfg.breaker_failures.max(1),
            cooldown: Duration::from_millis(cfg.breaker_cooldown_ms),
            successes_to_close: cfg.breaker_successes.max(1),
        };
        let breakers = participants.keys().map(|name| (name.clone(), Breaker::new(breaker_config))).collect();
        let slots = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
        Executor {
            inner: Arc::new(Inner {
                journal,
                catalog,
                participants,
                breakers,
                sagas: Mutex::new(HashMap::new()),
                slots,
                waiting: Mutex::new(VecDeque::new()),
                draining: AtomicBool::new(false),
                calls: AtomicUsize::new(0),
                calls_idle: Notify::new(),
                index,
            }),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Registry updates are single inserts/removals; a poisoned lock still holds a valid map.
        self.inner.sagas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates and durably journals a saga, then starts it. Returns once `SagaSubmitted` is
    /// durable. Idempotent by saga id.
    pub async fn submit(&self, definition: SagaDefinition) -> Result<SubmitOutcome, Error> {
        if self.draining() {
            return Err(Error::ShuttingDown);
        }
        let policies = self.inner.catalog.validate(&definition)?;
        let digest = definition.digest();
        let (tx, _) = watch::channel(Snapshot {
            saga: Saga::submitted(&Submitted {
                saga: definition.id.clone(),
                steps: Vec::new(),
                policies: Vec::new(),
                digest,
                at_ms: 0,
            }),
            status: Status::Pending,
            parked_on: None,
        });
        {
            // Reserve the id before journaling, so two concurrent submits cannot both win.
            let mut sagas = self.registry();
            if let Some(archived) = self.archived(&definition.id)? {
                return if archived.digest == digest {
                    Ok(SubmitOutcome::AlreadyExists(archived_status(&archived)))
                } else {
                    Err(Error::Conflict { id: definition.id })
                };
            }
            if let Some(entry) = sagas.get(&definition.id) {
                if entry.reserved {
                    return Err(Error::SubmitInProgress { id: definition.id });
                }
                let existing = entry.view.borrow();
                return if existing.saga.digest == digest {
                    Ok(SubmitOutcome::AlreadyExists(existing.status))
                } else {
                    Err(Error::Conflict { id: definition.id })
                };
            }
            // Its `SagaSubmitted` will get an LSN above everything acknowledged so far: the
            // checkpoint must not pass that point while the submit is in flight.
            let first_lsn = self.inner.journal.acked_lsn() + 1;
            sagas.insert(definition.id.clone(), Entry { view: tx, first_lsn, reserved: true, control: None });
        }
        let record = Record::SagaSubmitted(Submitted {
            saga: definition.id.clone(),
            steps: definition.steps,
            policies,
            digest,
            at_ms: now_ms(),
        });
        let queued = match self.inner.journal.append_queued(record.kind(), record.encode()).await {
            Ok(queued) => queued,
            Err(e) => {
                self.registry().remove(&definition.id);
                return Err(e.into());
            }
        };
        // Start the saga before `SagaSubmitted` is durable, so that its first `StepStarted`
        // shares that fdatasync. Nothing is touched before: the task waits for its
        // `StepStarted`, which the writer makes durable after (and only with) this record.
        let Record::SagaSubmitted(submitted) = &record else { unreachable!("built just above") };
        let first_lsn = self.registry().get(&definition.id).map_or(0, |e| e.first_lsn);
        self.start(Saga::submitted(submitted), first_lsn, true);
        match queued.durable().await {
            Ok(lsn) => {
                if let Some(entry) = self.registry().get_mut(&definition.id) {
                    entry.first_lsn = lsn;
                    entry.reserved = false;
                }
            }
            Err(e) => {
                // The journal is poisoned or closed: the task's own append fails the same way
                // and it stops before touching anything.
                self.registry().remove(&definition.id);
                return Err(e.into());
            }
        }
        crate::metrics::get().sagas_submitted.inc();
        Ok(SubmitOutcome::Accepted)
    }

    /// Registers a saga rebuilt from the journal (or just submitted; `first_lsn` is the LSN of
    /// its `SagaSubmitted`) and, unless it is finished, starts its task. A finished saga goes
    /// straight to the index when there is one.
    pub fn adopt(&self, saga: Saga, first_lsn: u64) {
        self.start(saga, first_lsn, false);
    }

    /// [`Executor::adopt`]; `reserved` keeps the id reserved (its submit is not durable yet).
    fn start(&self, saga: Saga, first_lsn: u64, reserved: bool) {
        if saga.is_finished() && self.archive(&saga) {
            return;
        }
        let snapshot = Snapshot { status: saga.status(), saga: saga.clone(), parked_on: None };
        let id = saga.id.clone();
        let finished = saga.is_finished();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let view = {
            let mut sagas = self.registry();
            let entry = sagas.entry(id).or_insert_with(|| Entry {
                view: watch::channel(snapshot.clone()).0,
                first_lsn,
                reserved,
                control: None,
            });
            entry.reserved = reserved;
            entry.first_lsn = first_lsn;
            entry.view.send_replace(snapshot);
            if !finished {
                entry.control = Some(control_tx);
            }
            entry.view.clone()
        };
        if !finished {
            let task = SagaTask { exec: self.clone(), saga, view, control: control_rx, parked_on: None, queued: None };
            self.dispatch(task);
        }
    }

    /// Stops taking submits and starting steps, then waits up to `grace` for the participant
    /// calls under way to return and their outcomes to be journaled. Returns the number of
    /// calls still running at the deadline (recovery settles those by their markers).
    /// Sagas stay as journaled; the next start resumes them.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.inner.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.inner.calls_idle.notified();
            let running = self.inner.calls.load(Ordering::SeqCst);
            if running == 0 {
                // Let the tasks journal the outcomes they just got.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return self.inner.calls.load(Ordering::SeqCst);
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.inner.calls.load(Ordering::SeqCst);
            }
        }
    }

    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Whether a task is driving (or queued to drive) the saga now, or its submit is still
    /// being journaled (its task starts when that returns).
    pub fn is_live(&self, id: &str) -> bool {
        self.registry().get(id).is_some_and(|e| e.control.is_some() || e.reserved)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<SagaTask>> {
        self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `task` in a free slot, or queues it for the next slot to free up. Taking a slot and
    /// queueing happen under the queue's lock, and so does a worker's "queue empty, release my
    /// slot": a task can never be queued while every slot's worker is leaving.
    fn dispatch(&self, task: SagaTask) {
        let mut waiting = self.waiting();
        match self.inner.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                drop(waiting);
                tokio::spawn(worker(slot, task));
            }
            Err(_) => waiting.push_back(task),
        }
    }

    /// Puts a finished saga into the index and forgets it. Returns false (and keeps it in
    /// memory, which keeps its journal records too) if there is no index or it failed.
    fn archive(&self, saga: &Saga) -> bool {
        let Some(index) = &self.inner.index else { return false };
        match index.put(&SagaRecord::from_saga(saga)) {
            Ok(()) => {
                self.registry().remove(&saga.id);
                true
            }
            Err(e) => {
                tracing::error!(saga = %saga.id, error = %e, "cannot archive a finished saga; keeping it in memory");
                false
            }
        }
    }

    /// A finished saga from the index (`None` if absent or there is no index).
    pub fn archived(&self, id: &str) -> Result<Option<SagaRecord>, Error> {
        match &self.inner.index {
            Some(index) => Ok(index.get(id)?),
            None => Ok(None),
        }
    }

    pub fn index(&self) -> Option<&Index> {
        self.inner.index.as_ref()
    }

    /// The lowest LSN the journal must keep: the `SagaSubmitted` of the oldest saga not yet
    /// archived, or one past the last acknowledged record if every saga is archived.
    pub fn checkpoint_lsn(&self) -> u64 {
        let oldest = self.registry().values().map(|e| e.first_lsn).min();
        oldest.unwrap_or_else(|| self.inner.journal.acked_lsn() + 1)
    }

    /// The saga's current snapshot.
    pub fn get(&self, id: &str) -> Option<Snapshot> {
        self.registry().get(id).map(|e| e.view.borrow().clone())
    }

    /// Snapshots of every saga this executor knows.
    pub fn list(&self) -> Vec<Snapshot> {
        self.registry().values().map(|e| e.view.borrow().clone()).collect()
    }

    /// How many sagas in memory have each status (without copying their states, unlike
    /// [`Executor::list`]).
    pub fn status_counts(&self) -> BTreeMap<Status, u64> {
        let mut counts = BTreeMap::new();
        for entry in self.registry().values() {
            *counts.entry(entry.view.borrow().status).or_default() += 1;
        }
        counts
    }

    /// A receiver that sees every new snapshot of the saga.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<Snapshot>> {
        self.registry().get(id).map(|e| e.view.subscribe())
    }

    /// Waits until the saga is terminal or STUCK and returns its snapshot.
    pub async fn wait_settled(&self, id: &str) -> Option<Snapshot> {
        let mut rx = self.watch(id)?;
        loop {
            let snap = rx.borrow_and_update().clone();
            if snap.status.is_terminal() || snap.status == Status::Stuck {
                return Some(snap);
            }
            if rx.changed().await.is_err() {
                return Some(snap);
            }
        }
    }

    /// Journals a cancel and hands it to the saga's task: completed steps are compensated in
    /// reverse order.
    pub async fn cancel(&self, id: &str) -> Result<(), Error> {
        let record = Record::CancelRequested(CancelRequested { saga: id.to_owned(), at_ms: now_ms() });
        self.control(id, record, |s| (!s.is_terminal()).then_some(())).await
    }

    /// An operator's decision for a STUCK saga.
    pub async fn resolve(&self, id: &str, decision: ResolveDecision, by: &str) -> Result<(), Error> {
        let record = Record::Resolved(Resolved { saga: id.to_owned(), decision, by: by.to_owned(), at_ms: now_ms() });
        self.control(id, record, |s| (s == Status::Stuck).then_some(())).await
    }

    async fn control(&self, id: &str, record: Record, allowed: impl Fn(Status) -> Option<()>) -> Result<(), Error> {
        if !self.registry().contains_key(id)
            && let Some(archived) = self.archived(id)?
        {
            let status = archived_status(&archived).as_str();
            return Err(Error::WrongState { id: id.to_owned(), status, what: "it has already finished" });
        }
        let (status, sender) = {
            let sagas = self.registry();
            let entry = sagas.get(id).ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
            let status = entry.view.borrow().status;
            (status, entry.control.clone())
        };
        let (Some(()), Some(sender)) = (allowed(status), sender) else {
            let what = match record {
                Record::Resolved(_) => "only a STUCK saga can be resolved",
                _ => "it has already finished",
            };
            return Err(Error::WrongState { id: id.to_owned(), status: status.as_str(), what });
        };
        self.inner.journal.append(record.kind(), record.encode()).await?;
        // The task may have ended in the meantime; then the record is in the journal and
        // recovery applies it like any other.
        let _ = sender.send(Control::Apply(record));
        Ok(())
    }

    /// Circuit breaker state per participant (for status APIs).
    pub fn breakers(&self) -> Vec<(String, &'static str)> {
        self.inner.breakers.iter().map(|(n, b)| (n.clone(), b.state().name())).collect()
    }

    /// A configured participant by name.
    pub fn participant(&self, name: &str) -> Option<Arc<dyn Participant>> {
        self.inner.participants.get(name).cloned()
    }

    pub fn reset_breaker(&self, participant: &str) -> bool {
        self.inner.breakers.get(participant).map(Breaker::reset).is_some()
    }

    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }
}

/// The task that drives one saga.
struct SagaTask {
    exec: Executor,
    saga: Saga,
    view: watch::Sender<Snapshot>,
    control: mpsc::UnboundedReceiver<Control>,
    parked_on: Option<String>,
    /// A step outcome handed to the journal but not yet known durable. The next awaited
    /// append covers it (the writer keeps queue order); [`SagaTask::settle`] waits for it
    /// where no append follows soon.
    queued: Option<journal::Queued>,
}

/// How a step attempt ended, before it is journaled.
enum Attempt {
    Succeeded { by_marker: bool },
    Failed { error: String, retryable: bool, maybe_applied: bool },
}

/// Counts a participant call in progress (see [`Executor::drain`]).
struct CallGuard<'a>(&'a Inner);

impl<'a> CallGuard<'a> {
    fn enter(inner: &'a Inner) -> Self {
        inner.calls.fetch_add(1, Ordering::SeqCst);
        CallGuard(inner)
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.calls_idle.notify_waiters();
        }
    }
}

/// Holds one of `max_in_flight` slots: drives a saga until it ends or needs an operator, then
/// takes the next waiting saga, until none is left.
async fn worker(slot: tokio::sync::OwnedSemaphorePermit, mut task: SagaTask) {
    let exec = task.exec.clone();
    loop {
        if let Some(stuck) = task.run().await {
            // A STUCK saga waits for an operator outside the slots: it must not starve others.
            tokio::spawn(stuck.wait_for_operator());
        }
        let mut waiting = exec.waiting();
        // Draining: queued sagas stay queued (journaled; the next start resumes them).
        let next = if exec.draining() { None } else { waiting.pop_front() };
        match next {
            Some(next) => task = next,
            None => {
                drop(slot);
                return;
            }
        }
    }
}

impl SagaTask {
    /// Drives the saga until it ends (`None`) or is STUCK waiting for an operator
    /// (`Some(self)`).
    async fn run(mut self) -> Option<SagaTask> {
        match self.drive().await {
            Ok(true) => return Some(self),
            Ok(false) => {}
            Err(e) => {
                // The journal is poisoned or closed: stop touching participants. The saga stays
                // as journaled; the next start's recovery finishes it.
                tracing::error!(saga = %self.saga.id, error = %e, "saga task stopped: journal unavailable");
            }
        }
        self.end();
        None
    }

    /// The task is over: the API can no longer send it control records, and a finished saga
    /// moves to the index.
    fn end(&self) {
        if let Some(entry) = self.exec.registry().get_mut(&self.saga.id) {
            entry.control = None;
        }
        if self.saga.is_finished() {
            self.exec.archive(&self.saga);
        }
    }

    /// Waits, holding no slot, for an operator's decision on a STUCK saga, then queues it to
    /// run again.
    async fn wait_for_operator(mut self) {
        match self.control.recv().await {
            Some(Control::Apply(record)) => {
                self.apply(&record);
                let exec = self.exec.clone();
                exec.dispatch(self);
            }
            None => self.end(),
        }
    }

    /// Drives the saga; `Ok(true)` means it is STUCK and waits for an operator.
    async fn drive(&mut self) -> Result<bool, journal::Error> {
        loop {
            if self.exec.draining() {
                self.settle().await?;
                return Ok(false);
            }
            self.drain_control();
            match self.saga.next() {
                Next::Done => return self.settle().await.map(|()| false),
                Next::Finish(outcome) => {
                    let saga = self.saga.id.clone();
                    self.journal(Record::SagaFinished(Finished { saga, outcome, at_ms: now_ms() })).await?;
                    crate::metrics::get().saga_finished(self.saga.status().as_str());
                    tracing::info!(saga = %self.saga.id, outcome = ?outcome, "saga finished");
                    return Ok(false);
                }
                Next::Stuck { step } => {
                    tracing::error!(saga = %self.saga.id, step, reason = ?self.saga.steps[step as usize].compensate.last_error,
                        "saga is STUCK: a compensation failed for good; an operator must resolve it");
                    self.settle().await?;
                    self.publish();
                    // A decision that already arrived is applied by the next `drain_control`.
                    if self.control.is_empty() {
                        return Ok(true);
                    }
                }
                Next::Resolve { step, direction } => self.resolve(step, direction).await?,
                Next::Run { step, direction, attempt, after_failure } => {
                    self.run_step(step, direction, attempt, after_failure).await?
                }
            }
        }
    }

    fn drain_control(&mut self) {
        while let Ok(Control::Apply(record)) = self.control.try_recv() {
            self.apply(&record);
        }
    }

    fn apply(&mut self, record: &Record) {
        self.saga.apply(record);
        self.publish();
    }

    fn publish(&self) {
        if self.queued.is_some() {
            return; // see `journal_outcome`; `settle` publishes
        }
        let status = self.saga.status();
        self.view.send_replace(Snapshot { saga: self.saga.clone(), status, parked_on: self.parked_on.clone() });
    }

    /// Journals `record`, waits until it (and any queued outcome before it) is durable, and
    /// applies it.
    async fn journal(&mut self, record: Record) -> Result<(), journal::Error> {
        self.exec.inner.journal.append(record.kind(), record.encode()).await?;
        self.queued = None;
        self.apply(&record);
        Ok(())
    }

    /// Journals a step's outcome without waiting for the sync: the saga's next record
    /// (`StepStarted`, `SagaFinished`) is appended after it and waited for, so both share one
    /// `fdatasync`. Applied to the state now (so `next` can plan) but published only once
    /// durable: nobody outside sees an outcome a crash could take back.
    async fn journal_outcome(&mut self, record: Record) -> Result<(), journal::Error> {
        self.queued = Some(self.exec.inner.journal.append_queued(record.kind(), record.encode()).await?);
        self.saga.apply(&record);
        Ok(())
    }

    /// Waits for a queued outcome to be durable, then publishes the state.
    async fn settle(&mut self) -> Result<(), journal::Error> {
        if let Some(queued) = self.queued.take() {
            queued.durable().await?;
            self.publish();
        }
        Ok(())
    }

    fn key(&self, step: u32, direction: Direction) -> StepKey {
        StepKey { saga_id: self.saga.id.clone(), step, direction }
    }

    fn retry_config(&self, step: u32, direction: Direction) -> Option<(RetryConfig, Duration)> {
        let call = &self.saga.steps.get(step as usize)?.call;
        let action = self.exec.inner.catalog.action(&call.action)?;
        let retry = match direction {
            Direction::Forward => action.retry,
            Direction::Compensate => action.compensate_retry,
        };
        Some((retry, Duration::from_millis(action.timeout_ms)))
    }

    /// Sleeps, waking early to apply a control record (a cancel must not wait for a back-off).
    /// A queued outcome is made durable (and visible) first.
    async fn pause(&mut self, duration: Duration) -> Result<(), journal::Error> {
        self.settle().await?;
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            Some(Control::Apply(record)) = self.control.recv() => self.apply(&record),
        }
        Ok(())
    }

    /// Waits while the participant's breaker is open, running its health probe when handed the
    /// probe slot. Returns false if a control record arrived (the caller re-plans).
    async fn wait_for_breaker(&mut self, participant: &str) -> Result<bool, journal::Error> {
        let exec = self.exec.clone();
        let Some(breaker) = exec.inner.breakers.get(participant) else { return Ok(true) };
        loop {
            match breaker.allow(tokio::time::Instant::now()) {
                Admission::Probe => {
                    let healthy = match exec.inner.participants.get(participant) {
                        Some(p) => matches!(tokio::time::timeout(PROBE_TIMEOUT, p.probe()).await, Ok(Ok(()))),
                        None => false,
                    };
                    tracing::info!(participant, healthy, "circuit breaker health probe");
                    breaker.record_probe(healthy, tokio::time::Instant::now());
                }
                Admission::Go => {
                    if self.parked_on.take().is_some() {
                        tracing::info!(saga = %self.saga.id, participant, "resuming: breaker let calls through");
                        self.publish();
                    }
                    return Ok(true);
                }
                Admission::Wait(wait) => {
                    if self.parked_on.is_none() {
                        tracing::warn!(saga = %self.saga.id, participant, "parked: circuit breaker is open");
                        self.parked_on = Some(participant.to_owned());
                        self.publish();
                    }
                    let version = self.saga.version;
                    self.pause(wait).await?;
                    if self.saga.version != version {
                        return Ok(false);
                    }
                }
            }
        }
    }

    async fn run_step(
        &mut self,
        step: u32,
        direction: Direction,
        attempt: u32,
        after_failure: bool,
    ) -> Result<(), journal::Error> {
        let saga = self.saga.id.clone();
        let Some(call) = self.saga.steps.get(step as usize).map(|s| s.call.clone()) else { return Ok(()) };
        let (participant_name, participant, op) = match self.participant_for(&call, direction) {
            Ok(found) => found,
            // The action or participant vanished from the config since submission: no attempt
            // can succeed. Journaled as a permanent failure of this attempt.
            Err(error) => {
                return self.fail_for_good(step, direction, attempt, format!("cannot run step: {error}"), false).await;
            }
        };
        let (retry, timeout) =
            self.retry_config(step, direction).unwrap_or((RetryConfig::default(), Duration::from_secs(30)));
        if after_failure {
            let version = self.saga.version;
            let failures = self.saga.steps[step as usize].progress_of(direction).attempts;
            self.pause(jittered(retry.backoff_ms(failures + 1), retry.jitter)).await?;
            if self.saga.version != version {
                return Ok(()); // a cancel or resolution arrived: re-plan
            }
        }
        if !self.wait_for_breaker(&participant_name).await? {
            return Ok(());
        }
        self.journal(Record::StepStarted(Started { saga: saga.clone(), step, direction, attempt, at_ms: now_ms() }))
            .await?;
        tracing::debug!(saga = %saga, step, ?direction, attempt, participant = %participant_name, "step started (journaled)");
        let key = self.key(step, direction);
        let began = std::time::Instant::now();
        let calls = CallGuard::enter(&self.exec.inner);
        let outcome = match tokio::time::timeout(timeout, participant.apply(&key, &op)).await {
            Ok(Ok(applied)) => Attempt::Succeeded { by_marker: applied == Applied::AlreadyApplied },
            Ok(Err(e)) => {
                Attempt::Failed { error: e.to_string(), retryable: e.is_retryable(), maybe_applied: e.is_retryable() }
            }
            Err(_) => Attempt::Failed {
                error: format!("{participant_name}: timed out after {} ms", timeout.as_millis()),
                retryable: true,
                maybe_applied: true,
            },
        };
        drop(calls);
        let result = match &outcome {
            Attempt::Succeeded { .. } => "ok",
            Attempt::Failed { retryable: true, .. } => "retryable",
            Attempt::Failed { .. } => "permanent",
        };
        crate::metrics::get().step_attempt(&participant_name, direction.as_str(), result, began.elapsed());
        self.record_breaker(&participant_name, &outcome);
        let at_ms = now_ms();
        let record = match outcome {
            Attempt::Succeeded { by_marker } => {
                Record::StepSucceeded(Succeeded { saga, step, direction, attempt, by_marker, at_ms })
            }
            Attempt::Failed { error, retryable, maybe_applied } => {
                tracing::warn!(saga = %self.saga.id, step, ?direction, attempt, retryable, %error, "step attempt failed");
                Record::StepFailed(Failed { saga, step, direction, attempt, error, retryable, maybe_applied, at_ms })
            }
        };
        self.journal_outcome(record).await
    }

    /// The participant and concrete operation of a step, or why there is none.
    fn participant_for(
        &self,
        call: &StepCall,
        direction: Direction,
    ) -> Result<(String, Arc<dyn Participant>, Operation), String> {
        let (name, op) = self.exec.inner.catalog.operation(call, direction)?;
        let participant = self.exec.inner.participants.get(&name).cloned();
        participant.map(|p| (name.clone(), p, op)).ok_or_else(|| format!("participant {name:?} is not configured"))
    }

    /// Journals a failure that no retry can fix (the saga compensates, or is STUCK if this was
    /// a compensation).
    async fn fail_for_good(
        &mut self,
        step: u32,
        direction: Direction,
        attempt: u32,
        error: String,
        maybe_applied: bool,
    ) -> Result<(), journal::Error> {
        let saga = self.saga.id.clone();
        let record = Failed { saga, step, direction, attempt, error, retryable: false, maybe_applied, at_ms: now_ms() };
        self.journal(Record::StepFailed(record)).await
    }

    fn record_breaker(&self, participant: &str, outcome: &Attempt) {
        let Some(breaker) = self.exec.inner.breakers.get(participant) else { return };
        match outcome {
            Attempt::Failed { retryable: true, .. } => {
                if breaker.record_failure(tokio::time::Instant::now()) {
                    tracing::warn!(participant, "circuit breaker opened after consecutive failures");
                }
            }
            _ => breaker.record_success(),
        }
    }

    /// Settles an uncertain step by its participant's marker, retrying lookups while the
    /// participant is unreachable (parked behind its breaker like any call).
    async fn resolve(&mut self, step: u32, direction: Direction) -> Result<(), journal::Error> {
        let saga = self.saga.id.clone();
        let Some(call) = self.saga.steps.get(step as usize).map(|s| s.call.clone()) else { return Ok(()) };
        let (name, participant, _) = match self.participant_for(&call, direction) {
            Ok(found) => found,
            Err(error) => {
                return self.fail_for_good(step, direction, 0, format!("cannot resolve step: {error}"), false).await;
            }
        };
        let (retry, timeout) =
            self.retry_config(step, direction).unwrap_or((RetryConfig::default(), Duration::from_secs(30)));
        let key = self.key(step, direction);
        let attempt = self.saga.steps[step as usize].progress_of(direction).total_attempts;
        let mut lookups = 0u32;
        loop {
            if !self.wait_for_breaker(&name).await? {
                return Ok(());
            }
            let found = match tokio::time::timeout(timeout, participant.lookup_marker(&key)).await {
                Ok(Ok(found)) => Some(found),
                Ok(Err(e)) if !e.is_retryable() => {
                    if let Some(b) = self.exec.inner.breakers.get(&name) {
                        b.record_success();
                    }
                    return self
                        .fail_for_good(step, direction, attempt, format!("cannot read marker: {e}"), true)
                        .await;
                }
                Ok(Err(_)) | Err(_) => None,
            };
            if let (Some(_), Some(b)) = (found, self.exec.inner.breakers.get(&name)) {
                b.record_success();
            }
            let at_ms = now_ms();
            match found {
                Some(true) => {
                    tracing::info!(saga = %saga, step, ?direction, "in-doubt step committed (marker present): recorded as succeeded");
                    return self
                        .journal(Record::StepSucceeded(Succeeded {
                            saga,
                            step,
                            direction,
                            attempt,
                            by_marker: true,
                            at_ms,
                        }))
                        .await;
                }
                Some(false) => {
                    let error = "not applied: no marker after an interrupted attempt".to_owned();
                    let record =
                        Failed { saga, step, direction, attempt, error, retryable: true, maybe_applied: false, at_ms };
                    return self.journal(Record::StepFailed(record)).await;
                }
                None => {
                    if let Some(b) = self.exec.inner.breakers.get(&name) {
                        b.record_failure(tokio::time::Instant::now());
                    }
                    lookups += 1;
                    let version = self.saga.version;
                    self.pause(jittered(retry.backoff_ms(lookups + 1), retry.jitter)).await?;
                    if self.saga.version != version {
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn archived_status(record: &SagaRecord) -> Status {
    match record.status.as_str() {
        "COMPLETED" => Status::Completed,
        _ => Status::Compensated,
    }
}

/// `ms` with up to `jitter` of it randomised (±), so retries of many sagas spread out.
fn jittered(ms: u64, jitter: f64) -> Duration {
    let spread = (ms as f64 * jitter.clamp(0.0, 1.0)) as u64;
    let ms = if spread == 0 { ms } else { ms - spread + rand::random_range(0..=2 * spread) };
    Duration::from_millis(ms)
}
