//! The [`Executor`] handle: the API the server, recovery and tools call (submit, adopt, cancel,
//! an operator's `resolve`, drain, snapshots, breakers), and the shared state behind it.
//!
//! Owns the answers to the API's callers ([`Snapshot`], [`SubmitOutcome`], [`Error`]) and the
//! order of a submit: reserve the id, queue `SagaSubmitted`, start the saga's task (whose first
//! `StepStarted` shares that fdatasync), and acknowledge only once `SagaSubmitted` is durable.
//! Everything after the reservation runs in a spawned task the caller awaits, so a dropped
//! submit (a client deadline, a stream reset) still finishes or undoes its reservation.
//!
//! Never does: touch a participant (only a saga's task does, after its `StepStarted` is
//! durable), or hold a std `Mutex` across an `.await` (the registry and slot locks are taken
//! inside synchronous calls only).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::breaker::{Breaker, BreakerConfig};
use super::drain::Drain;
use super::registry::{Registry, archived_status};
use super::slots::Slots;
use super::task::{self, Control, SagaTask};
use crate::catalog::{Catalog, ValidationError};
use crate::engine::record::{CancelRequested, Resolved, Submitted};
use crate::engine::{Record, ResolveDecision, Saga, SagaDefinition, Scope, Status};
use crate::index::{Index, SagaRecord};
use crate::journal::{self, Journal};
use crate::participant::Participant;

/// What a saga looks like from outside: its state, plus whether it is parked.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub saga: Saga,
    pub status: Status,
    /// The participant whose open breaker this saga is waiting on.
    pub parked_on: Option<String>,
    /// Why that breaker is open, when the participant said so (e.g. "no worker polling queue
    /// scans").
    pub parked_reason: Option<String>,
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
    #[error("saga {id:?} has {max} control requests waiting to be applied already (the limit); retry later")]
    ControlQueueFull { id: String, max: usize },
    #[error("{max} sagas are unfinished in memory already (executor.live_sagas_max); retry with back-off")]
    TooManyLive { max: usize },
}

/// The most control records (cancel, resolve) queued to one saga's task and not yet applied;
/// one more is refused with [`Error::ControlQueueFull`] before anything is journaled.
pub const CONTROL_QUEUE_MAX: usize = 16;

/// What every handle and saga task shares.
pub(super) struct Inner {
    pub(super) journal: Journal,
    pub(super) catalog: Arc<Catalog>,
    pub(super) participants: BTreeMap<String, Arc<dyn Participant>>,
    pub(super) breakers: BTreeMap<String, Breaker>,
    pub(super) registry: Registry,
    pub(super) slots: Slots,
    pub(super) drain: Drain,
    /// The instance id every new saga's marker scope starts with.
    pub(super) instance: String,
}

/// A cheap, cloneable handle to the executor.
#[derive(Clone)]
pub struct Executor {
    pub(super) inner: Arc<Inner>,
}

pub(super) use crate::clock::now_ms;

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
        Executor::on_instance(journal, catalog, participants, index, Scope::draw_instance())
    }

    /// [`Executor::with_index`] for the instance `instance` (the data directory's id, 16 hex
    /// digits): the marker scope of every saga it accepts starts with it, so two instances
    /// sharing a participant database never vouch for each other's sagas. Without one (the
    /// other constructors), each executor draws its own.
    pub fn on_instance(
        journal: Journal,
        catalog: Arc<Catalog>,
        participants: BTreeMap<String, Arc<dyn Participant>>,
        index: Option<Index>,
        instance: String,
    ) -> Self {
        let cfg = &catalog.config.executor;
        let breaker_config = BreakerConfig {
            failures_to_open: cfg.breaker_failures,
            cooldown: Duration::from_millis(cfg.breaker_cooldown_ms),
            successes_to_close: cfg.breaker_successes,
        };
        let breakers = participants.keys().map(|name| (name.clone(), Breaker::new(breaker_config))).collect();
        let slots = Slots::new(cfg.max_in_flight);
        Executor {
            inner: Arc::new(Inner {
                journal,
                catalog,
                participants,
                breakers,
                registry: Registry::new(index),
                slots,
                drain: Drain::default(),
                instance,
            }),
        }
    }

    /// Validates and durably journals a saga, then starts it. Returns once `SagaSubmitted` is
    /// durable. Idempotent by saga id.
    pub async fn submit(&self, definition: SagaDefinition) -> Result<SubmitOutcome, Error> {
        if self.draining() {
            return Err(Error::ShuttingDown);
        }
        let policies = self.inner.catalog.validate(&definition)?;
        let digest = definition.digest();
        let placeholder = Snapshot {
            saga: Saga::submitted(&Submitted {
                saga: definition.id.clone(),
                steps: Vec::new(),
                policies: Vec::new(),
                digest,
                at_ms: 0,
                actions: Default::default(),
                scope: None,
            }),
            status: Status::Pending,
            parked_on: None,
            parked_reason: None,
        };
        let registry = &self.inner.registry;
        if let Some(outcome) = registry.reserve(
            &definition.id,
            digest,
            placeholder,
            || self.inner.journal.acked_lsn() + 1,
            self.inner.catalog.config.executor.live_sagas_max,
        )? {
            return Ok(outcome);
        }
        // The id is reserved: from here on the work runs in a task of its own, so a caller that
        // goes away (a client deadline, a stream reset dropping this future) cannot leave the
        // id reserved, and the checkpoint held, by a submit that never finishes.
        let this = self.clone();
        match tokio::spawn(async move { this.journal_submit(definition, policies, digest).await }).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::ShuttingDown), // the runtime is shutting down
        }
    }

    /// The journaling half of [`Executor::submit`], once the id is reserved: queues
    /// `SagaSubmitted`, starts the saga and waits until the record is durable. Runs to the end
    /// even if the submit's caller is gone.
    async fn journal_submit(
        &self,
        definition: SagaDefinition,
        policies: Vec<crate::engine::StepPolicy>,
        digest: u32,
    ) -> Result<SubmitOutcome, Error> {
        let registry = &self.inner.registry;
        let actions = self.inner.catalog.resolved_actions(&definition);
        let record = Record::SagaSubmitted(Submitted {
            actions,
            saga: definition.id.clone(),
            steps: definition.steps,
            policies,
            digest,
            at_ms: now_ms(),
            // A new incarnation: markers left by an earlier saga with this id (one the index
            // has forgotten) or by another instance do not vouch for this one's steps.
            scope: Some(Scope::draw(&self.inner.instance)),
        });
        let queued = match self.inner.journal.append_queued(record.kind(), record.encode()).await {
            Ok(queued) => queued,
            Err(e) => {
                registry.remove(&definition.id);
                return Err(e.into());
            }
        };
        // Start the saga before `SagaSubmitted` is durable, so that its first `StepStarted`
        // shares that fdatasync. Nothing is touched before: the task waits for its
        // `StepStarted`, which the writer makes durable after (and only with) this record.
        let Record::SagaSubmitted(submitted) = &record else { unreachable!("built just above") };
        let first_lsn = registry.first_lsn(&definition.id).unwrap_or(0);
        self.start(Saga::submitted(submitted), first_lsn, true);
        match queued.durable().await {
            Ok(lsn) => registry.confirm(&definition.id, lsn),
            Err(e) => {
                // The journal is poisoned or closed: the task's own append fails the same way
                // and it stops before touching anything.
                registry.remove(&definition.id);
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
        if saga.is_finished() && self.inner.registry.archive(&saga) {
            return;
        }
        let snapshot = Snapshot { status: saga.status(), saga: saga.clone(), parked_on: None, parked_reason: None };
        if saga.is_finished() {
            self.inner.registry.register(snapshot, first_lsn, reserved, None);
            return;
        }
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_MAX);
        let gate = task::gate(saga.status(), control_tx);
        let view = self.inner.registry.register(snapshot, first_lsn, reserved, Some(Arc::clone(&gate)));
        self.inner.slots.dispatch(SagaTask::new(self.clone(), saga, view, control_rx, gate));
    }

    /// Stops taking submits and starting steps, then waits up to `grace` for the participant
    /// calls under way to return and their outcomes to be journaled. Returns the number of
    /// calls still running at the deadline (recovery settles those by their markers).
    /// Sagas stay as journaled; the next start resumes them.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.inner.drain.start(grace).await
    }

    pub fn draining(&self) -> bool {
        self.inner.drain.is_draining()
    }

    /// Whether a task is driving (or queued to drive) the saga now, or its submit is still
    /// being journaled (its task starts when that returns).
    pub fn is_live(&self, id: &str) -> bool {
        self.inner.registry.is_live(id)
    }

    /// Asks every unfinished saga whose oldest needed record lies below `below` to re-journal
    /// its whole state (a `SagaSnapshot`), so that the checkpoint can pass its older records.
    /// Returns how many were asked; each answers at its next idle point (STUCK, parked,
    /// backing off). Never waits.
    pub fn ask_snapshots(&self, below: u64) -> usize {
        let registry = &self.inner.registry;
        let mut asked = 0;
        for (id, gate) in registry.ask_snapshots(below) {
            let sent = match gate.try_lock() {
                Ok(state) => state.control.as_ref().is_some_and(|tx| tx.try_send(Control::Snapshot).is_ok()),
                Err(_) => false,
            };
            if sent {
                asked += 1;
            } else {
                registry.snapshot_not_asked(&id);
            }
        }
        asked
    }

    /// What a recovery pass must know of a saga it found unfinished in the journal: `None` if
    /// the executor holds nothing for it; otherwise whether a task drives it now, and the
    /// state it last published (which may be ahead of a journal read made earlier).
    pub fn known(&self, id: &str) -> Option<(bool, Saga)> {
        self.inner.registry.known(id)
    }

    /// A finished saga from the index (`None` if absent or there is no index).
    pub fn archived(&self, id: &str) -> Result<Option<SagaRecord>, Error> {
        self.inner.registry.archived(id)
    }

    pub fn index(&self) -> Option<&Index> {
        self.inner.registry.index()
    }

    /// The lowest LSN the journal must keep (what the checkpoint file records as
    /// `replay_from_lsn`): the `SagaSubmitted` of the oldest saga not yet archived, or one past
    /// the last acknowledged record if every saga is archived.
    pub fn checkpoint_lsn(&self) -> u64 {
        self.inner.registry.checkpoint_lsn(|| self.inner.journal.acked_lsn() + 1)
    }

    /// The saga's current snapshot.
    pub fn get(&self, id: &str) -> Option<Snapshot> {
        self.inner.registry.get(id)
    }

    /// Snapshots of every saga this executor knows.
    pub fn list(&self) -> Vec<Snapshot> {
        self.inner.registry.list()
    }

    /// One page of the sagas in memory: up to `limit` with ids above `after` that `wanted`
    /// keeps, in id order, and whether more follow. Copies only the page (unlike
    /// [`Executor::list`]).
    pub fn list_page(&self, after: &str, limit: usize, wanted: impl Fn(&Snapshot) -> bool) -> (Vec<Snapshot>, bool) {
        self.inner.registry.page(after, limit, wanted)
    }

    /// How many sagas in memory have each status (without copying their states, unlike
    /// [`Executor::list`]).
    pub fn status_counts(&self) -> BTreeMap<Status, u64> {
        self.inner.registry.status_counts()
    }

    /// Archived sagas by status (`COMPLETED`, `COMPENSATED`), kept by the index without a scan;
    /// empty without an index.
    pub fn archived_counts(&self) -> BTreeMap<String, u64> {
        self.inner.registry.index().map(Index::archived_counts).unwrap_or_default()
    }

    /// A receiver that sees every new snapshot of the saga.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<Snapshot>> {
        self.inner.registry.watch(id)
    }

    /// How many watches (gRPC `Watch` streams, HTTP event streams, waiters) follow a saga in
    /// memory now; `None` when it is not in memory. A watch whose client went away must not
    /// stay counted.
    pub fn watchers(&self, id: &str) -> Option<usize> {
        self.inner.registry.watchers(id)
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
        self.control(id, record, |s| (!s.is_terminal()).then_some(())).await?;
        self.inner.registry.note_cancel(id);
        Ok(())
    }

    /// Whether a cancel of the saga is journaled (durable), also while its task still waits on
    /// a participant call and has not published it (a worker's `Heartbeat` asks).
    pub fn cancel_requested(&self, id: &str) -> bool {
        self.inner.registry.cancel_requested(id)
    }

    /// An operator's decision for a STUCK saga (gRPC `Admin.Resolve`). Not to be confused with
    /// settling an in-doubt step by its marker, which a saga's task does on its own.
    pub async fn resolve(&self, id: &str, decision: ResolveDecision, by: &str) -> Result<(), Error> {
        let record = Record::Resolved(Resolved { saga: id.to_owned(), decision, by: by.to_owned(), at_ms: now_ms() });
        self.control(id, record, |s| (s == Status::Stuck).then_some(())).await
    }

    async fn control(&self, id: &str, record: Record, allowed: impl Fn(Status) -> Option<()>) -> Result<(), Error> {
        let registry = &self.inner.registry;
        if !registry.contains(id)
            && let Some(archived) = registry.archived(id)?
        {
            let status = archived_status(&archived).as_str();
            return Err(Error::WrongState { id: id.to_owned(), status, what: "it has already finished" });
        }
        let (status, gate) = registry.control_target(id).ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let refused = |status: Status| {
            let what = match record {
                Record::Resolved(_) => "only a STUCK saga can be resolved",
                _ => "it has already finished",
            };
            Error::WrongState { id: id.to_owned(), status: status.as_str(), what }
        };
        let Some(gate) = gate else { return Err(refused(status)) };
        // Under the saga's gate, checked against the status after the task's last append, the
        // record is handed to the writer and to the task with no `.await` in between: the task
        // applies it before its next append, so in journal order, even if this future is
        // dropped while the record becomes durable.
        let queued = {
            let gate = gate.lock().await;
            let (Some(()), Some(sender)) = (allowed(gate.status), gate.control.as_ref()) else {
                return Err(refused(gate.status));
            };
            // Only holders of the gate send, so the room seen here is still there below: a
            // journaled record is always handed to the task.
            if sender.capacity() == 0 {
                return Err(Error::ControlQueueFull { id: id.to_owned(), max: CONTROL_QUEUE_MAX });
            }
            let queued = self.inner.journal.append_queued(record.kind(), record.encode()).await?;
            let _ = sender.try_send(Control::Apply(record.clone()));
            queued
        };
        queued.durable().await?;
        Ok(())
    }

    /// Why a participant's breaker is open, when the participant said so.
    pub fn breaker_reason(&self, participant: &str) -> Option<String> {
        self.inner.breakers.get(participant).and_then(Breaker::reason)
    }

    /// Circuit breaker state per participant (for status APIs).
    pub fn breakers(&self) -> Vec<(String, &'static str)> {
        self.inner.breakers.iter().map(|(n, b)| (n.clone(), b.state().name())).collect()
    }

    /// Every participant, by name (the online audit and recovery plan read markers through
    /// them, read-only).
    pub fn participants(&self) -> &BTreeMap<String, Arc<dyn Participant>> {
        &self.inner.participants
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
