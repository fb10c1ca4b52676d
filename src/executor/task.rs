//! The per-saga task: the drive loop over [`Saga::next`], journaling, settling and publishing.
//!
//! A task owns its saga's [`Saga`] state. It asks the pure `Saga::next` what to do, journals
//! each record and applies it with [`Saga::apply`] (the same function recovery replays the
//! journal through), and publishes the state to the saga's watchers. Control records (a
//! cancel, an operator's resolution) are handed to the journal writer by the handle under the
//! saga's [`Gate`], and sent to the task in the same critical section; the task takes the
//! gate for each of its own appends and first applies every control record that arrived. So
//! the task applies its saga's records in journal order, exactly as replay does, and a
//! decision (`StepStarted`, `SagaFinished`) a control record made stale is dropped, not
//! journaled: the live outcome is always the replayed one.
//! A step's attempt is in `attempt.rs`, settling an in-doubt step by its marker in
//! `in_doubt.rs`, a delay step in `delay.rs`.
//!
//! Never does: touch a participant before its `StepStarted` is durable, decide anything that
//! `Saga::next` did not say, publish an outcome a crash could take back, append to the journal
//! outside the gate, start a step once a drain has begun, or hold a std `Mutex` across an
//! `.await` (the gate is a tokio mutex, held only while a record is handed to the writer).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::drain::{CallInFlight, Drain};
use super::handle::{Executor, Snapshot, now_ms};
use crate::engine::record::{Failed, Finished, Snapshotted};
use crate::engine::{Next, Record, Saga, Status, StepCall};
use crate::journal;
use crate::participant::{Direction, Operation, Participant, StepKey};

/// Messages from the API to a running saga task.
pub(super) enum Control {
    /// A journaled record the task must apply (cancel, operator resolution).
    Apply(Record),
    /// Re-journal the saga's whole state at the next idle point (the checkpoint asks a
    /// long-lived saga, so that its older records can leave the journal).
    Snapshot,
}

/// A saga's journal gate: whoever appends one of the saga's records (its task, or the handle
/// journaling a control record) holds it while the record is handed to the journal writer.
pub(super) type Gate = Arc<tokio::sync::Mutex<GateState>>;

pub(super) struct GateState {
    /// The task's sender; `None` once the task has ended (a control record is then refused).
    pub(super) control: Option<mpsc::Sender<Control>>,
    /// The saga's status after the task's last append: what a control record is checked
    /// against.
    pub(super) status: Status,
}

/// A gate for a saga whose task is about to start.
pub(super) fn gate(status: Status, control: mpsc::Sender<Control>) -> Gate {
    Arc::new(tokio::sync::Mutex::new(GateState { control: Some(control), status }))
}

/// The task that drives one saga.
pub(super) struct SagaTask {
    pub(super) exec: Executor,
    pub(super) saga: Saga,
    view: watch::Sender<Snapshot>,
    pub(super) control: mpsc::Receiver<Control>,
    gate: Gate,
    pub(super) parked_on: Option<String>,
    /// Set by the breaker admission instead of waiting in a slot: the drive loop returns and the
    /// worker hands the slot on (a parked saga must not starve healthy participants' sagas).
    pub(super) leave_slot: bool,
    /// False while the task waits outside the slots: breaker waits then sleep in place.
    pub(super) holds_slot: bool,
    /// A step outcome handed to the journal but not yet known durable. The next awaited
    /// append covers it (the writer keeps queue order); [`SagaTask::settle`] waits for it
    /// where no append follows soon.
    queued: Option<journal::Queued>,
    /// The checkpoint asked for a snapshot ([`Control::Snapshot`]); taken at the next idle
    /// point ([`SagaTask::pause`], a STUCK wait).
    pub(super) snapshot_wanted: bool,
    /// The participant whose outcome is [`SagaTask::queued`], told once it is durable
    /// ([`Participant::outcome_durable`]: a worker's `Complete` answers then).
    unacked: Option<(Arc<dyn Participant>, StepKey, u32)>,
    /// The least wait before the next attempt that the last failed one was told (an HTTP
    /// `Retry-After`); not journaled: a hint, lost with a crash.
    pub(super) retry_after: Option<std::time::Duration>,
}

/// What [`SagaTask::append`] checks before journaling a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// A fact: always journaled.
    Fact,
    /// A decision (`StepStarted`, `SagaFinished`, a delay step's `StepSucceeded`): only while
    /// `Saga::next` still says so.
    Planned,
    /// The `StepStarted` that sends an in-doubt step of a participant without markers again:
    /// only while `Saga::next` still says to settle that step (`in_doubt.rs`).
    Resend,
}

impl SagaTask {
    pub(super) fn new(
        exec: Executor,
        saga: Saga,
        view: watch::Sender<Snapshot>,
        control: mpsc::Receiver<Control>,
        gate: Gate,
    ) -> SagaTask {
        SagaTask {
            exec,
            saga,
            view,
            control,
            gate,
            parked_on: None,
            leave_slot: false,
            holds_slot: true,
            queued: None,
            snapshot_wanted: false,
            unacked: None,
            retry_after: None,
        }
    }

    /// Drives the saga until it ends (`None`) or is STUCK waiting for an operator
    /// (`Some(self)`).
    pub(super) async fn run(mut self) -> Option<SagaTask> {
        match self.drive().await {
            Ok(true) => return Some(self),
            Ok(false) => {}
            Err(e) => {
                // The journal is poisoned or closed: stop touching participants. The saga stays
                // as journaled; the next start's recovery finishes it.
                tracing::error!(saga_id = %self.saga.id, error = %e, "saga task stopped: journal unavailable");
            }
        }
        self.end().await;
        None
    }

    /// The task is over: the API can no longer send it control records, and a finished saga
    /// moves to the index. A control record journaled before the gate closed is in the
    /// journal; recovery applies it like any other.
    pub(super) async fn end(&self) {
        {
            let mut gate = self.gate.lock().await;
            gate.control = None;
            gate.status = self.saga.status();
        }
        let registry = &self.exec.inner.registry;
        registry.task_ended(&self.saga.id);
        if self.saga.is_finished() {
            registry.archive(&self.saga);
        }
    }

    /// Waits, holding no slot, for an operator's decision on a STUCK saga, then queues it to
    /// run again.
    pub(super) async fn wait_for_operator(mut self) {
        loop {
            match self.control.recv().await {
                Some(Control::Apply(record)) => {
                    self.apply(&record);
                    self.gate.lock().await.status = self.saga.status();
                    let exec = self.exec.clone();
                    exec.inner.slots.dispatch(self);
                    return;
                }
                Some(Control::Snapshot) => {
                    if let Err(e) = self.journal_snapshot().await {
                        tracing::error!(saga_id = %self.saga.id, error = %e, "saga task stopped: journal unavailable");
                        return self.end().await;
                    }
                    // A decision journaled before the snapshot was applied under the gate.
                    if self.saga.status() != Status::Stuck {
                        let exec = self.exec.clone();
                        exec.inner.slots.dispatch(self);
                        return;
                    }
                }
                None => return self.end().await,
            }
        }
    }

    /// Waits, holding no slot, while the breaker of the participant it is parked on stays open
    /// (running the health probe when handed it), or until its delay step's deadline, then
    /// queues the saga to run again.
    pub(super) async fn wait_while_parked(mut self) {
        if matches!(self.saga.next(), Next::Wait { .. }) {
            return self.wait_out_delay().await;
        }
        let Some(participant) = self.parked_on.clone() else { return self.redispatch() };
        self.holds_slot = false;
        let waited = self.wait_for_breaker(&participant).await;
        self.holds_slot = true;
        match waited {
            Ok(_) => self.redispatch(),
            Err(e) => {
                tracing::error!(saga_id = %self.saga.id, error = %e, "saga task stopped: journal unavailable");
                self.end().await;
            }
        }
    }

    pub(super) fn redispatch(mut self) {
        self.leave_slot = false;
        let exec = self.exec.clone();
        exec.inner.slots.dispatch(self);
    }

    /// Whether the task left its slot parked behind a breaker or to wait out a delay (else it
    /// is STUCK).
    pub(super) fn is_parked(&self) -> bool {
        self.leave_slot
    }

    /// Drives the saga; `Ok(true)` means it is STUCK and waits for an operator, or is parked
    /// behind a breaker or waits out a delay, outside the slots.
    async fn drive(&mut self) -> Result<bool, journal::Error> {
        loop {
            if self.exec.draining() {
                self.settle().await?;
                return Ok(false);
            }
            self.apply_pending_control();
            match self.saga.next() {
                Next::Done => return self.settle().await.map(|()| false),
                Next::Finish(outcome) => {
                    let saga = self.saga.id.clone();
                    let finished = Record::SagaFinished(Finished { saga, outcome, at_ms: now_ms() });
                    if !self.journal_if_planned(finished).await? {
                        continue; // a control record arrived first: re-plan
                    }
                    crate::metrics::get().saga_finished(self.saga.status().as_str());
                    tracing::info!(saga_id = %self.saga.id, outcome = outcome.as_str(), "saga finished");
                    return Ok(false);
                }
                Next::Stuck { step } => {
                    let s = &self.saga.steps[step as usize];
                    let reason = s.compensate.last_error.as_ref().or(s.forward.last_error.as_ref());
                    tracing::error!(saga_id = %self.saga.id, step, reason = reason.map_or("", String::as_str),
                        "saga is STUCK: a compensation or a marker lookup failed for good; an operator must resolve it");
                    self.settle().await?;
                    self.publish();
                    // A decision that already arrived is applied by the next
                    // `apply_pending_control`.
                    if self.control.is_empty() {
                        return Ok(true);
                    }
                }
                // The engine's "resolve" here is an in-doubt step to settle by its marker, not
                // an operator's resolution.
                Next::Resolve { step, direction } => self.settle_by_marker(step, direction).await?,
                Next::Wait { step, until_ms } => self.wait_delay(step, until_ms).await?,
                Next::Run { step, direction, attempt, after_failure } => {
                    self.run_step(step, direction, attempt, after_failure).await?
                }
            }
            if self.leave_slot {
                self.settle().await?;
                return Ok(true);
            }
        }
    }

    /// Applies every control record that has arrived.
    fn apply_pending_control(&mut self) {
        while let Ok(message) = self.control.try_recv() {
            match message {
                Control::Apply(record) => self.apply(&record),
                Control::Snapshot => self.snapshot_wanted = true,
            }
        }
    }

    /// Journals the saga's whole state (`SagaSnapshot`), exactly as the records before it
    /// built it: under the gate, after applying every control record journaled first. Once it
    /// is durable the registry moves the saga's oldest needed LSN up to it, and the
    /// checkpoint may pass the saga's older records.
    pub(super) async fn journal_snapshot(&mut self) -> Result<(), journal::Error> {
        self.snapshot_wanted = false;
        self.settle().await?;
        let queued = {
            let gate = Arc::clone(&self.gate);
            let mut gate = gate.lock().await;
            while let Ok(message) = self.control.try_recv() {
                match message {
                    Control::Apply(record) => self.apply_own(&record),
                    Control::Snapshot => {}
                }
            }
            let record = Record::SagaSnapshot(Snapshotted { saga: Box::new(self.saga.clone()), at_ms: now_ms() });
            let queued = self.exec.inner.journal.append_queued(record.kind(), record.encode()).await?;
            self.apply_own(&record);
            gate.status = self.saga.status();
            queued
        };
        let lsn = queued.durable().await?;
        self.publish();
        self.exec.inner.registry.snapshotted(&self.saga.id, lsn);
        tracing::info!(saga_id = %self.saga.id, lsn, "long-lived saga re-journaled as a snapshot; its older records can go");
        Ok(())
    }

    pub(super) fn apply(&mut self, record: &Record) {
        self.apply_own(record);
        self.publish();
    }

    /// Applies one of this saga's records, checking what live running promises and replay
    /// tolerates: the record is the saga's own and raises its version by exactly one (replay
    /// ignores a stray record; live, one is a bug, and the saga must not go on from it).
    fn apply_own(&mut self, record: &Record) {
        let before = self.saga.version;
        assert_eq!(
            record.saga(),
            Some(self.saga.id.as_str()),
            "{:?} record applied to saga {:?}",
            record.kind(),
            self.saga.id
        );
        self.saga.apply(record);
        assert_eq!(
            self.saga.version,
            before + 1,
            "{:?} record did not raise saga {:?}'s version by one",
            record.kind(),
            self.saga.id
        );
    }

    pub(super) fn publish(&self) {
        if self.queued.is_some() {
            return; // see `journal_outcome`; `settle` publishes
        }
        let status = self.saga.status();
        let parked_reason = self.parked_on.as_ref().and_then(|p| self.exec.inner.breakers.get(p)?.reason());
        self.view.send_replace(Snapshot {
            saga: self.saga.clone(),
            status,
            parked_on: self.parked_on.clone(),
            parked_reason,
        });
    }

    /// Under the saga's gate: applies the control records journaled before this point, then,
    /// unless `check` finds that they made `record` stale (see [`SagaTask::planned`],
    /// [`SagaTask::resend_planned`]), hands `record` to the journal writer and applies it.
    /// `None`: not journaled, re-plan.
    async fn append(&mut self, record: &Record, check: Check) -> Result<Option<journal::Queued>, journal::Error> {
        let gate = Arc::clone(&self.gate);
        let mut gate = gate.lock().await;
        // Not published here: `record`, queued after them, is durable only once they are.
        while let Ok(message) = self.control.try_recv() {
            match message {
                Control::Apply(control) => self.apply_own(&control),
                Control::Snapshot => self.snapshot_wanted = true,
            }
        }
        let stale = match check {
            Check::Fact => false,
            Check::Planned => !self.planned(record),
            Check::Resend => !self.resend_planned(record),
        };
        if stale {
            gate.status = self.saga.status();
            return Ok(None);
        }
        let queued = self.exec.inner.journal.append_queued(record.kind(), record.encode()).await?;
        self.apply_own(record);
        gate.status = self.saga.status();
        Ok(Some(queued))
    }

    /// Whether `record`, a decision (`StepStarted`, `SagaFinished`, a delay step's
    /// `StepSucceeded`), is still what `Saga::next` says; any other record is a fact and always
    /// journaled.
    fn planned(&self, record: &Record) -> bool {
        match (record, self.saga.next()) {
            (Record::StepSucceeded(r), next)
                if r.direction == Direction::Forward
                    && self.saga.steps.get(r.step as usize).is_some_and(|s| s.is_delay()) =>
            {
                matches!(next, Next::Wait { step, .. } if step == r.step)
            }
            (Record::StepStarted(r), Next::Run { step, direction, attempt, .. }) => {
                (r.step, r.direction, r.attempt) == (step, direction, attempt)
            }
            (Record::SagaFinished(r), Next::Finish(outcome)) => r.outcome == outcome,
            (Record::StepStarted(_) | Record::SagaFinished(_), _) => false,
            _ => true,
        }
    }

    /// Whether `record` is the `StepStarted` of a re-send `Saga::next` still asks for: the step
    /// is still to be settled, as the next attempt.
    fn resend_planned(&self, record: &Record) -> bool {
        match (record, self.saga.next()) {
            (Record::StepStarted(r), Next::Resolve { step, direction }) => {
                let next_attempt =
                    self.saga.steps.get(step as usize).map(|s| s.progress_of(direction).total_attempts + 1);
                (r.step, r.direction, Some(r.attempt)) == (step, direction, next_attempt)
            }
            _ => false,
        }
    }

    /// Tells the participant of the last queued outcome that it is durable now.
    fn ack_outcome(&mut self) {
        if let Some((participant, key, attempt)) = self.unacked.take() {
            participant.outcome_durable(&key, attempt);
        }
    }

    /// Waits until `queued` (and any outcome queued before it) is durable, then publishes.
    async fn durable(&mut self, queued: journal::Queued) -> Result<(), journal::Error> {
        queued.durable().await?;
        self.queued = None;
        self.publish();
        // After the publish: a worker whose `Complete` returns sees its outcome in `Get`.
        self.ack_outcome();
        Ok(())
    }

    /// Journals `record` (a fact: always journaled), waits until it and any queued outcome
    /// before it are durable, and publishes the state.
    pub(super) async fn journal(&mut self, record: Record) -> Result<(), journal::Error> {
        if let Some(queued) = self.append(&record, Check::Fact).await? {
            self.durable(queued).await?;
        }
        Ok(())
    }

    /// [`SagaTask::journal`] for a decision: false (nothing journaled) if a control record
    /// journaled before it made it stale.
    pub(super) async fn journal_if_planned(&mut self, record: Record) -> Result<bool, journal::Error> {
        self.journal_checked(record, Check::Planned).await
    }

    /// Journals `record` unless `check` finds it stale (false, nothing journaled); waits until
    /// it is durable.
    pub(super) async fn journal_checked(&mut self, record: Record, check: Check) -> Result<bool, journal::Error> {
        match self.append(&record, check).await? {
            Some(queued) => self.durable(queued).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Journals a step's `StepStarted` and counts its call in flight, unless a drain has begun
    /// (then nothing is journaled) or a control record made the attempt stale. `None`: do not
    /// call the participant.
    pub(super) async fn journal_start<'d>(
        &mut self,
        drain: &'d Drain,
        started: Record,
        check: Check,
    ) -> Result<Option<CallInFlight<'d>>, journal::Error> {
        let Some(call) = drain.admit() else { return Ok(None) };
        Ok(self.journal_checked(started, check).await?.then_some(call))
    }

    /// Journals a step's outcome without waiting for the sync: the saga's next record
    /// (`StepStarted`, `SagaFinished`) is appended after it and waited for, so both share one
    /// `fdatasync`. Applied to the state now (so `next` can plan) but published only once
    /// durable: nobody outside sees an outcome a crash could take back.
    pub(super) async fn journal_outcome(&mut self, record: Record) -> Result<(), journal::Error> {
        if let Some(queued) = self.append(&record, Check::Fact).await? {
            self.queued = Some(queued);
        }
        Ok(())
    }

    /// [`SagaTask::journal_outcome`] of a participant's answer: the participant is told once it
    /// is durable ([`Participant::outcome_durable`]).
    pub(super) async fn journal_answer(
        &mut self,
        record: Record,
        participant: Arc<dyn Participant>,
        key: StepKey,
        attempt: u32,
    ) -> Result<(), journal::Error> {
        self.journal_outcome(record).await?;
        self.unacked = Some((participant, key, attempt));
        Ok(())
    }

    /// Waits for a queued outcome to be durable, then publishes the state.
    pub(super) async fn settle(&mut self) -> Result<(), journal::Error> {
        if let Some(queued) = self.queued.take() {
            queued.durable().await?;
            self.publish();
            self.ack_outcome();
        }
        Ok(())
    }

    /// Sleeps, waking early to apply a control record (a cancel must not wait for a back-off).
    /// A queued outcome is made durable (and visible) first.
    pub(super) async fn pause(&mut self, duration: std::time::Duration) -> Result<(), journal::Error> {
        self.settle().await?;
        if self.snapshot_wanted {
            self.journal_snapshot().await?;
        }
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            Some(message) = self.control.recv() => match message {
                Control::Apply(record) => self.apply(&record),
                Control::Snapshot => self.journal_snapshot().await?,
            },
        }
        Ok(())
    }

    pub(super) fn key(&self, step: u32, direction: Direction) -> StepKey {
        StepKey { saga_id: self.saga.id.clone(), step, direction, scope: self.saga.scope.clone() }
    }

    /// The participant and concrete operation of step `step`, its values resolved (`from`
    /// references and its own forward outputs, see [`Saga::resolved_call`]), or why there is
    /// none.
    pub(super) fn participant_for(
        &self,
        step: u32,
        direction: Direction,
    ) -> Result<(String, Arc<dyn Participant>, Operation), String> {
        let call = self.saga.resolved_call(step)?;
        // The definition journaled with the saga; a saga journaled before definitions were
        // follows today's config.
        let (name, op) = match self.saga.actions.get(&call.action) {
            Some(action) => crate::catalog::bind(action, &call, direction)?,
            None => self.exec.inner.catalog.operation(&call, direction)?,
        };
        let participant = self.exec.inner.participants.get(&name).cloned();
        participant.map(|p| (name.clone(), p, op)).ok_or_else(|| format!("participant {name:?} is not configured"))
    }

    /// The participant of a step's action, without binding its values (a marker lookup needs
    /// none), or why there is none.
    pub(super) fn participant_of(&self, call: &StepCall) -> Result<(String, Arc<dyn Participant>), String> {
        let name = match self.saga.actions.get(&call.action) {
            Some(action) => action.participant.clone(),
            None => self
                .exec
                .inner
                .catalog
                .action(&call.action)
                .map(|a| a.participant.clone())
                .ok_or_else(|| format!("action {:?} is no longer declared", call.action))?,
        };
        let participant = self.exec.inner.participants.get(&name).cloned();
        participant.map(|p| (name.clone(), p)).ok_or_else(|| format!("participant {name:?} is not configured"))
    }

    /// Whether step `step`'s forward action declares outputs (its marker then holds them).
    pub(super) fn returns_outputs(&self, call: &StepCall) -> bool {
        match self.saga.actions.get(&call.action) {
            Some(action) => !action.returns.is_empty(),
            None => self.exec.inner.catalog.action(&call.action).is_some_and(|a| !a.returns.is_empty()),
        }
    }

    /// Journals a failure that no retry can fix (the saga compensates, or is STUCK if this was
    /// a compensation).
    pub(super) async fn fail_for_good(
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
}
