//! The `worker` participant: a named task queue served by the user's own processes, in any
//! language, over the `sagalog.v1.Workers` gRPC API (`Poll`, `Complete`, `Fail`, `Heartbeat`).
//!
//! Owns one in-memory [`Queue`] per worker participant: the tasks waiting for a worker, the
//! tasks handed out under a lease, the worker ids seen, and the task tokens. [`Worker::apply`]
//! (called by the executor once the step's `StepStarted` is durable) queues a task and waits for
//! its outcome; the executor's usual timeout, retry and breaker machinery then applies
//! unchanged: an expired lease is a retryable failure, `Fail { retryable: false }` a permanent
//! one, `Complete { output }` (checked against the action's `returns`) a success with outputs.
//!
//! Why the queue is in memory and keeps no marker: a worker step's effect lives in the user's
//! system, where sagalog cannot write a marker in the same transaction. So the participant
//! says so ([`Participant::has_markers`] is false): the executor never settles an in-doubt
//! worker step as "absent", it sends the task again with the same idempotency key
//! (`<saga>/<step>/<direction>`, the same on every attempt), and the worker deduplicates by
//! that key. Effects are at-least-once; after a crash nothing in this queue is needed,
//! because the journal's in-doubt steps are handed out again.
//!
//! Ordering: the task is handed out only after its `StepStarted` is durable (the executor
//! calls `apply` after it), and a `Complete`/`Fail` answers only once the outcome it carried
//! is durable in the journal (the executor calls [`Participant::outcome_durable`]; the RPC
//! waits for it, bounded by [`ACK_WAIT`]). The first outcome for a lease wins; a token whose
//! lease expired, whose task already has an outcome, or that another server run issued is
//! refused ([`TaskError::Stale`], FAILED_PRECONDITION).
//!
//! Limits, each named in its refusal: `tasks_waiting_max` tasks waiting per queue (one more
//! fails its attempt, retryable), `workers_max` worker ids tracked per queue (a poll from one
//! more is [`TaskError::Exhausted`]), [`POLL_TASKS_MAX`] tasks per poll, [`POLL_WAIT_MAX`] per
//! long poll.
//!
//! Never does: decide a step's fate (the executor journals what `apply` returned), keep
//! anything across restarts, or hold its lock across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::{Applied, BoxFuture, Direction, Error, Kind, Operation, Outputs, Participant, StepKey};
use crate::config::{ParamType, ParticipantConfig};
use crate::engine::value::Value;

/// The most tasks one `Poll` may ask for.
pub const POLL_TASKS_MAX: u32 = 100;
/// The longest one `Poll` may wait for a task.
pub const POLL_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a `Complete` or `Fail` waits for its outcome to be durable before it answers
/// UNAVAILABLE (the journal failed, or the server is stopping).
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// The longest worker id a poll may carry.
pub const WORKER_ID_BYTES_MAX: usize = 128;

/// A task as a worker receives it from `Poll`.
#[derive(Debug, Clone, PartialEq)]
pub struct HandedTask {
    pub token: String,
    pub saga_id: String,
    pub step: u32,
    pub direction: Direction,
    pub attempt: u32,
    pub task: String,
    pub params: BTreeMap<String, Value>,
    /// `<saga>/<step>/<direction>`: the same on every attempt of this step and direction.
    pub idempotency_key: String,
    /// When the lease ends unless heartbeated, in ms since the epoch.
    pub deadline_ms: u64,
    /// The lease's length.
    pub lease_ms: u64,
}

/// Why a worker's call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The token names no live lease: expired and handed out again, already answered, or
    /// issued by another server run (FAILED_PRECONDITION).
    #[error("{0}")]
    Stale(String),
    /// The request is malformed: bad token, output that does not match `returns`
    /// (INVALID_ARGUMENT; the lease is kept).
    #[error("{0}")]
    Invalid(String),
    /// A named limit was reached (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Exhausted(String),
    /// The outcome was taken but not confirmed durable in time: the journal failed or the
    /// server is stopping (UNAVAILABLE).
    #[error("{0}")]
    Unconfirmed(String),
    /// The attempt ended (the action's timeout) just as the outcome arrived: it did not count,
    /// and the task is handed out again (ABORTED).
    #[error("{0}")]
    Aborted(String),
}

/// What a `Heartbeat` learned: the lease's saga (the server asks the executor whether it was
/// cancelled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub saga_id: String,
    pub deadline_ms: u64,
}

/// One queue as `Admin.Queues` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueInfo {
    pub queue: String,
    pub participant: String,
    pub lease_ms: u64,
    /// Worker ids seen within three leases, with the ms since each was last seen.
    pub workers: Vec<(String, u64)>,
    pub tasks_waiting: usize,
    pub tasks_leased: usize,
    /// Age in ms of the task that has waited longest for a worker (0: none waits).
    pub oldest_waiting_ms: u64,
    /// Long polls open right now.
    pub polling: usize,
}

/// How a handed-out task ended, as the worker reported it.
#[derive(Debug)]
enum Reply {
    Completed(Outputs),
    Failed { error: String, retryable: bool },
}

#[derive(Debug)]
struct Lease {
    generation: u64,
    worker_id: String,
    deadline: Instant,
}

#[derive(Debug)]
struct Entry {
    key: StepKey,
    attempt: u32,
    task: String,
    params: BTreeMap<String, Value>,
    returns: BTreeMap<String, ParamType>,
    enqueued: Instant,
    lease: Option<Lease>,
    reply: Option<oneshot::Sender<Reply>>,
}

#[derive(Debug)]
struct State {
    /// Idempotency keys of the tasks no worker holds, oldest first (exact: a removed waiting
    /// task leaves it too).
    waiting: VecDeque<String>,
    /// Every task of the queue by idempotency key (one attempt per key at a time).
    tasks: HashMap<String, Entry>,
    /// Lease generation → idempotency key of the task it leases.
    leases: HashMap<u64, String>,
    /// Worker id → when it was last seen.
    workers: BTreeMap<String, Instant>,
    /// The last poll, heartbeat or outcome from any worker (the queue's creation at first).
    last_seen: Instant,
    /// Long polls waiting now.
    polling: usize,
    next_generation: u64,
    /// Outcomes handed to the executor, by (idempotency key, attempt): signalled once durable.
    acks: HashMap<(String, u32), oneshot::Sender<()>>,
}

/// A worker participant's task queue, shared by the participant (the executor's side) and the
/// `Workers` service (the workers' side).
#[derive(Debug)]
pub struct Queue {
    name: String,
    participant: String,
    lease: Duration,
    tasks_waiting_max: usize,
    workers_max: usize,
    /// Drawn per process: a token issued by another server run never matches.
    nonce: u64,
    state: Mutex<State>,
    /// Wakes long polls when a task is queued.
    queued: Notify,
}

/// The most characters of a worker's text an error repeats.
const ECHO_CHARS_MAX: usize = 64;

/// At most [`ECHO_CHARS_MAX`] characters of `text`, for an error message.
fn echo(text: &str) -> String {
    if text.chars().count() <= ECHO_CHARS_MAX {
        return text.to_owned();
    }
    let head: String = text.chars().take(ECHO_CHARS_MAX).collect();
    format!("{head}…({} bytes)", text.len())
}

/// Milliseconds since the epoch of a point `from_now` ahead.
fn epoch_ms_in(from_now: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from((now + from_now).as_millis()).unwrap_or(u64::MAX)
}

impl Queue {
    pub fn new(participant: &str, config: &ParticipantConfig) -> Queue {
        Queue {
            name: config.queue.clone().unwrap_or_else(|| participant.to_owned()),
            participant: participant.to_owned(),
            lease: Duration::from_millis(config.lease_ms()),
            tasks_waiting_max: config.tasks_waiting_max(),
            workers_max: config.workers_max(),
            nonce: rand::random::<u64>(),
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                tasks: HashMap::new(),
                leases: HashMap::new(),
                workers: BTreeMap::new(),
                last_seen: Instant::now(),
                polling: 0,
                next_generation: 1,
                acks: HashMap::new(),
            }),
            queued: Notify::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn participant(&self) -> &str {
        &self.participant
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update keeps the state consistent between statements that cannot panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long no sign of a worker opens the breaker: three leases.
    fn silence_limit(&self) -> Duration {
        self.lease.saturating_mul(3)
    }

    fn token(&self, generation: u64) -> String {
        format!("{:016x}{generation:016x}/{}", self.nonce, self.name)
    }

    /// The lease generation a token names, if this queue in this run issued it.
    fn generation_of(&self, token: &str) -> Result<u64, TaskError> {
        let stale = || {
            TaskError::Stale(format!(
                "task token {:?} was issued by another server run: the task is handed out again with the same \
                 idempotency key",
                echo(token)
            ))
        };
        let (ids, queue) =
            token.split_once('/').ok_or_else(|| TaskError::Invalid("malformed task token".to_owned()))?;
        if queue != self.name || ids.len() != 32 || !ids.is_ascii() {
            return Err(TaskError::Invalid("malformed task token".to_owned()));
        }
        let nonce =
            u64::from_str_radix(&ids[..16], 16).map_err(|_| TaskError::Invalid("malformed task token".into()))?;
        let generation =
            u64::from_str_radix(&ids[16..], 16).map_err(|_| TaskError::Invalid("malformed task token".into()))?;
        if nonce != self.nonce {
            return Err(stale());
        }
        Ok(generation)
    }

    /// Notes a sign of life from `worker_id`: a poll (refused beyond `workers_max` new ids),
    /// or a heartbeat or answer on one of its leases (never refused: its id is known).
    fn seen(&self, st: &mut State, worker_id: &str, poll: bool, now: Instant) -> Result<(), TaskError> {
        st.last_seen = now;
        let forget = self.silence_limit();
        st.workers.retain(|_, last| now.saturating_duration_since(*last) < forget);
        if !st.workers.contains_key(worker_id) && st.workers.len() >= self.workers_max {
            if !poll {
                return Ok(());
            }
            return Err(TaskError::Exhausted(format!(
                "queue {} tracks {} workers already (participants.{}.workers_max); retry later",
                self.name, self.workers_max, self.participant
            )));
        }
        st.workers.insert(worker_id.to_owned(), now);
        Ok(())
    }

    /// Whether a worker was seen lately: a poll open now, or any poll, heartbeat or outcome
    /// within three leases (the queue's creation counts as one, a grace for workers to
    /// reconnect after a restart).
    pub fn has_worker(&self) -> Result<(), String> {
        let st = self.lock();
        if st.polling > 0 || st.last_seen.elapsed() < self.silence_limit() {
            Ok(())
        } else {
            Err(format!("no worker polling queue {}", self.name))
        }
    }

    /// A long poll: up to `max_tasks` waiting tasks, each leased to `worker_id` for one lease,
    /// waiting up to `wait` for the first. An empty answer means none came in time.
    pub async fn poll(&self, worker_id: &str, max_tasks: u32, wait: Duration) -> Result<Vec<HandedTask>, TaskError> {
        if worker_id.is_empty() || worker_id.len() > WORKER_ID_BYTES_MAX {
            return Err(TaskError::Invalid(format!("worker_id must be 1..={WORKER_ID_BYTES_MAX} bytes")));
        }
        let max_tasks = match max_tasks {
            0 => 1,
            n if n <= POLL_TASKS_MAX => n,
            n => {
                return Err(TaskError::Exhausted(format!(
                    "max_tasks = {n}; a poll takes at most {POLL_TASKS_MAX} tasks (POLL_TASKS_MAX)"
                )));
            }
        } as usize;
        if wait > POLL_WAIT_MAX {
            return Err(TaskError::Invalid(format!(
                "wait_ms = {}; a poll waits at most {} ms",
                wait.as_millis(),
                POLL_WAIT_MAX.as_millis()
            )));
        }
        let until = Instant::now() + wait;
        loop {
            let notified = self.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                let now = Instant::now();
                self.seen(&mut st, worker_id, true, now)?;
                let handed = self.hand_out(&mut st, worker_id, max_tasks, now);
                if !handed.is_empty() {
                    return Ok(handed);
                }
                if now >= until {
                    return Ok(Vec::new());
                }
                st.polling += 1;
            }
            let _polling = Polling(self);
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn hand_out(&self, st: &mut State, worker_id: &str, max_tasks: usize, now: Instant) -> Vec<HandedTask> {
        let mut handed = Vec::new();
        while handed.len() < max_tasks {
            let Some(id) = st.waiting.pop_front() else { break };
            let generation = st.next_generation;
            let Some(entry) = st.tasks.get_mut(&id) else { continue };
            st.next_generation += 1;
            let deadline = now + self.lease;
            entry.lease = Some(Lease { generation, worker_id: worker_id.to_owned(), deadline });
            handed.push(HandedTask {
                token: self.token(generation),
                saga_id: entry.key.saga_id.clone(),
                step: entry.key.step,
                direction: entry.key.direction,
                attempt: entry.attempt,
                task: entry.task.clone(),
                params: entry.params.clone(),
                idempotency_key: id.clone(),
                deadline_ms: epoch_ms_in(self.lease),
                lease_ms: self.lease.as_millis() as u64,
            });
            st.leases.insert(generation, id);
        }
        handed
    }

    /// The live lease a token names, or why there is none.
    fn leased<'s>(&self, st: &'s mut State, generation: u64, now: Instant) -> Result<&'s mut Entry, TaskError> {
        let stale = |why: &str| {
            TaskError::Stale(format!(
                "the task token is stale: {why}; the first outcome wins, and a task whose lease expired is handed out \
                 again with the same idempotency key"
            ))
        };
        let Some(id) = st.leases.get(&generation).cloned() else {
            return Err(stale("its task already has an outcome or its lease expired"));
        };
        match st.tasks.get_mut(&id) {
            Some(entry) if entry.lease.as_ref().is_some_and(|l| l.generation == generation) => {
                if entry.lease.as_ref().is_some_and(|l| l.deadline <= now) {
                    return Err(stale("its lease expired"));
                }
                Ok(entry)
            }
            _ => Err(stale("its lease ended")),
        }
    }

    /// Extends a lease by one lease from now.
    pub fn heartbeat(&self, token: &str) -> Result<Beat, TaskError> {
        let generation = self.generation_of(token)?;
        let mut st = self.lock();
        let now = Instant::now();
        let entry = self.leased(&mut st, generation, now)?;
        let saga_id = entry.key.saga_id.clone();
        let mut holder = String::new();
        if let Some(lease) = entry.lease.as_mut() {
            lease.deadline = now + self.lease;
            holder.clone_from(&lease.worker_id);
        }
        self.seen(&mut st, &holder, false, now)?;
        Ok(Beat { saga_id, deadline_ms: epoch_ms_in(self.lease) })
    }

    /// The first outcome of a lease: hands it to the executor and waits until the journal holds
    /// it durably.
    async fn answer(&self, token: &str, reply: Reply) -> Result<(), TaskError> {
        let generation = self.generation_of(token)?;
        let (ack, acked) = oneshot::channel();
        let waiting = {
            let mut st = self.lock();
            let now = Instant::now();
            let entry = self.leased(&mut st, generation, now)?;
            if let Reply::Completed(outputs) = &reply {
                check_outputs(&entry.returns, outputs).map_err(TaskError::Invalid)?;
            }
            let Some(sender) = entry.reply.take() else {
                return Err(TaskError::Stale("the task already has an outcome; the first outcome wins".to_owned()));
            };
            let id = entry.key.to_string();
            let attempt = entry.attempt;
            let holder = entry.lease.as_ref().map(|l| l.worker_id.clone()).unwrap_or_default();
            st.tasks.remove(&id);
            st.leases.remove(&generation);
            self.seen(&mut st, &holder, false, now)?;
            st.acks.insert((id.clone(), attempt), ack);
            if sender.send(reply).is_err() {
                st.acks.remove(&(id, attempt));
                return Err(TaskError::Stale("the attempt already ended (it timed out)".to_owned()));
            }
            (id, attempt)
        };
        match tokio::time::timeout(ACK_WAIT, acked).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(TaskError::Aborted(
                "the outcome did not count: the attempt ended first (the action's timeout); the task will be handed \
                 out again with the same idempotency key"
                    .to_owned(),
            )),
            Err(_) => {
                self.lock().acks.remove(&waiting);
                Err(TaskError::Unconfirmed(format!(
                    "the outcome was not confirmed durable within {} s; if it was lost, the task is handed out again",
                    ACK_WAIT.as_secs()
                )))
            }
        }
    }

    /// `Complete`: `output` must hold exactly the action's `returns`, each of its type.
    pub async fn complete(&self, token: &str, output: Outputs) -> Result<(), TaskError> {
        self.answer(token, Reply::Completed(output)).await
    }

    /// `Fail`: retryable or not, the worker says.
    pub async fn fail(&self, token: &str, error: String, retryable: bool) -> Result<(), TaskError> {
        self.answer(token, Reply::Failed { error, retryable }).await
    }

    /// The worker holding the task of `key`, if one does.
    pub fn holder(&self, key: &str) -> Option<String> {
        self.lock().tasks.get(key).and_then(|e| e.lease.as_ref()).map(|l| l.worker_id.clone())
    }

    pub fn info(&self) -> QueueInfo {
        let st = self.lock();
        let now = Instant::now();
        let forget = self.silence_limit();
        let oldest = st.waiting.front().and_then(|id| st.tasks.get(id)).map(|e| now - e.enqueued);
        QueueInfo {
            queue: self.name.clone(),
            participant: self.participant.clone(),
            lease_ms: self.lease.as_millis() as u64,
            workers: st
                .workers
                .iter()
                .map(|(id, last)| (id.clone(), now.saturating_duration_since(*last)))
                .filter(|(_, ago)| *ago < forget)
                .map(|(id, ago)| (id, ago.as_millis() as u64))
                .collect(),
            tasks_waiting: st.waiting.len(),
            tasks_leased: st.leases.len(),
            oldest_waiting_ms: oldest.map_or(0, |d| d.as_millis() as u64),
            polling: st.polling,
        }
    }

    /// Queues attempt `attempt` of `key` and waits for its outcome (see the module docs).
    async fn run(
        &self,
        key: &StepKey,
        attempt: u32,
        task: &str,
        params: &BTreeMap<String, Value>,
        returns: &BTreeMap<String, ParamType>,
    ) -> Result<Outputs, Error> {
        let id = key.to_string();
        let (reply, mut replied) = oneshot::channel();
        {
            let mut st = self.lock();
            // An earlier attempt of the key whose call was dropped (a timeout) is superseded.
            remove_task(&mut st, &id);
            if st.waiting.len() >= self.tasks_waiting_max {
                return Err(Error::retryable(
                    &self.participant,
                    format!(
                        "queue {} has {} tasks waiting for a worker (participants.{}.tasks_waiting_max)",
                        self.name, self.tasks_waiting_max, self.participant
                    ),
                ));
            }
            st.tasks.insert(
                id.clone(),
                Entry {
                    key: key.clone(),
                    attempt,
                    task: task.to_owned(),
                    params: params.clone(),
                    returns: returns.clone(),
                    enqueued: Instant::now(),
                    lease: None,
                    reply: Some(reply),
                },
            );
            st.waiting.push_back(id.clone());
        }
        self.queued.notify_waiters();
        let mut pending = Pending { queue: self, id: id.clone(), attempt, armed: true };
        loop {
            // Deadlines only move later (heartbeats), so waking at the one seen now is never
            // too late; an unleased task is looked at again after one lease.
            let wake = {
                let st = self.lock();
                let lease = st.tasks.get(&id).and_then(|e| e.lease.as_ref());
                match lease {
                    Some(l) if l.deadline <= Instant::now() => {
                        let worker = l.worker_id.clone();
                        drop(st);
                        return Err(Error::retryable(
                            &self.participant,
                            format!(
                                "step {id}: the lease of worker {worker:?} expired ({} ms without a heartbeat or \
                                 outcome); the task is handed out again with the same idempotency key",
                                self.lease.as_millis()
                            ),
                        ));
                    }
                    Some(l) => l.deadline,
                    None => Instant::now() + self.lease,
                }
            };
            tokio::select! {
                answered = &mut replied => {
                    pending.armed = false;
                    return match answered {
                        Ok(Reply::Completed(outputs)) => Ok(outputs),
                        Ok(Reply::Failed { error, retryable: true }) => {
                            Err(Error::retryable(&self.participant, format!("step {id}: the worker failed: {error}")))
                        }
                        Ok(Reply::Failed { error, retryable: false }) => {
                            Err(Error::permanent(&self.participant, format!("step {id}: the worker failed: {error}")))
                        }
                        Err(_) => Err(Error::retryable(&self.participant, format!("step {id}: the task was dropped"))),
                    };
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// The executor made the outcome of `key`'s attempt durable: its `Complete`/`Fail` may
    /// answer.
    fn acked(&self, key: &StepKey, attempt: u32) {
        if let Some(ack) = self.lock().acks.remove(&(key.to_string(), attempt)) {
            let _ = ack.send(());
        }
    }
}

/// Removes a task (waiting or leased) from the queue.
fn remove_task(st: &mut State, id: &str) {
    if let Some(old) = st.tasks.remove(id) {
        match old.lease {
            Some(lease) => {
                st.leases.remove(&lease.generation);
            }
            None => st.waiting.retain(|w| w != id),
        }
    }
}

/// Counts a long poll while it waits.
struct Polling<'q>(&'q Queue);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.polling = st.polling.saturating_sub(1);
    }
}

/// Takes the task out of the queue when its attempt ends without an outcome (a lease expiry,
/// or the executor's timeout dropping the call); an outcome already handed over loses its
/// acknowledgement, so its `Complete` says it did not count.
struct Pending<'q> {
    queue: &'q Queue,
    id: String,
    attempt: u32,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.queue.lock();
        if st.tasks.get(&self.id).is_some_and(|e| e.attempt == self.attempt) {
            remove_task(&mut st, &self.id);
        }
        st.acks.remove(&(self.id.clone(), self.attempt));
    }
}

/// Why `outputs` do not match `returns`: every declared output present, non-null and of its
/// type (an int is taken for a float), and nothing undeclared.
pub fn check_outputs(returns: &BTreeMap<String, ParamType>, outputs: &Outputs) -> Result<(), String> {
    for (name, ty) in returns {
        match outputs.get(name) {
            None | Some(Value::Null) => return Err(format!("output {name:?} ({}) is missing", ty.name())),
            Some(Value::Int(_)) if *ty == ParamType::Float => {}
            Some(v) if v.type_name() != ty.name() => {
                return Err(format!("output {name:?} is {}, declared {}", v.type_name(), ty.name()));
            }
            Some(_) => {}
        }
    }
    if let Some(name) = outputs.keys().find(|n| !returns.contains_key(*n)) {
        let declared = returns.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        return Err(format!("output {name:?} is not declared in the action's returns (declared: {declared})"));
    }
    Ok(())
}

/// An int output where a float is declared becomes a float.
fn typed(returns: &BTreeMap<String, ParamType>, mut outputs: Outputs) -> Outputs {
    for (name, value) in outputs.iter_mut() {
        if let (Some(ParamType::Float), Value::Int(n)) = (returns.get(name), &*value) {
            *value = Value::Float(*n as f64);
        }
    }
    outputs
}

/// The participant: a name, and its queue.
pub struct Worker {
    name: String,
    queue: Arc<Queue>,
}

impl Worker {
    pub fn open(name: &str, config: &ParticipantConfig) -> Worker {
        Worker { name: name.to_owned(), queue: Arc::new(Queue::new(name, config)) }
    }

    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    fn no_markers(&self) -> Error {
        Error::permanent(
            &self.name,
            "a worker participant keeps no markers: an in-doubt step is sent again with the same idempotency key",
        )
    }
}

impl Participant for Worker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> Kind {
        Kind::Worker
    }

    fn has_markers(&self) -> bool {
        false
    }

    fn ready(&self) -> Result<(), Error> {
        self.queue.has_worker().map_err(|reason| Error::retryable(&self.name, reason))
    }

    fn outcome_durable(&self, key: &StepKey, attempt: u32) {
        self.queue.acked(key, attempt);
    }

    fn worker_queue(&self) -> Option<Arc<Queue>> {
        Some(self.queue.clone())
    }

    fn apply<'a>(&'a self, key: &'a StepKey, attempt: u32, op: &'a Operation) -> BoxFuture<'a, Result<Applied, Error>> {
        Box::pin(async move { self.apply_with_outputs(key, attempt, op).await.map(|(applied, _)| applied) })
    }

    fn apply_with_outputs<'a>(
        &'a self,
        key: &'a StepKey,
        attempt: u32,
        op: &'a Operation,
    ) -> BoxFuture<'a, Result<(Applied, Outputs), Error>> {
        Box::pin(async move {
            let Operation::Task { task, params, returns } = op else {
                return Err(Error::permanent(&self.name, "a worker participant runs worker tasks only"));
            };
            let outputs = self.queue.run(key, attempt, task, params, returns).await?;
            Ok((Applied::Applied, typed(returns, outputs)))
        })
    }

    fn lookup_marker<'a>(&'a self, _key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { Err(self.no_markers()) })
    }

    fn settle_marker<'a>(&'a self, _key: &'a StepKey, _through: u32) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { Err(self.no_markers()) })
    }

    fn markers<'a>(&'a self, _saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>> {
        Box::pin(async move { Ok(Vec::new()) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.ready() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(lease_ms: u64) -> Arc<Worker> {
        let config: ParticipantConfig =
            toml::from_str(&format!("kind = \"worker\"\nqueue = \"scans\"\nlease_ms = {lease_ms}\n")).unwrap();
        Arc::new(Worker::open("scanner", &config))
    }

    fn op(returns: &[(&str, ParamType)]) -> Operation {
        Operation::Task {
            task: "run_scan".into(),
            params: [("target".to_owned(), Value::Text("t".into()))].into(),
            returns: returns.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
        }
    }

    /// A polled task carries its key and params; Complete answers once the executor acks, a
    /// second Complete on the same token is stale, and the outputs reach `apply`.
    #[tokio::test]
    async fn complete_waits_for_the_ack_and_the_first_outcome_wins() {
        let w = queue(5000);
        let key = StepKey::new("s1", 1, Direction::Forward);
        let op = op(&[("report_id", ParamType::Text)]);
        let call = {
            let (w, key, op) = (w.clone(), key.clone(), op.clone());
            tokio::spawn(async move { w.apply_with_outputs(&key, 1, &op).await })
        };
        let tasks = w.queue().poll("w1", 1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].idempotency_key, "s1/1/forward");
        assert_eq!(tasks[0].params["target"], Value::Text("t".into()));
        let token = tasks[0].token.clone();
        let bad = w.queue().complete(&token, Outputs::new()).await.unwrap_err();
        assert!(matches!(bad, TaskError::Invalid(_)), "{bad:?}");
        let done = {
            let (w, token) = (w.clone(), token.clone());
            tokio::spawn(async move {
                w.queue().complete(&token, [("report_id".to_owned(), Value::Text("r".into()))].into()).await
            })
        };
        let (applied, outputs) = call.await.unwrap().unwrap();
        assert_eq!(applied, Applied::Applied);
        assert_eq!(outputs["report_id"], Value::Text("r".into()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!done.is_finished(), "Complete answered before the outcome was durable");
        w.outcome_durable(&key, 1);
        done.await.unwrap().unwrap();
        let again = w.queue().complete(&token, Outputs::new()).await.unwrap_err();
        assert!(matches!(again, TaskError::Stale(_)), "{again:?}");
    }

    /// A lease that is neither heartbeated nor answered fails the attempt as retryable, and its
    /// token is stale afterwards; a heartbeat keeps it alive past one lease.
    #[tokio::test]
    async fn an_expired_lease_is_a_retryable_failure_and_heartbeats_extend_it() {
        let w = queue(200);
        let key = StepKey::new("s2", 0, Direction::Forward);
        let op = op(&[]);
        let call = {
            let (w, key, op) = (w.clone(), key.clone(), op.clone());
            tokio::spawn(async move { w.apply(&key, 1, &op).await })
        };
        let tasks = w.queue().poll("w1", 1, Duration::from_secs(5)).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            w.queue().heartbeat(&tasks[0].token).unwrap();
        }
        assert!(!call.is_finished(), "a heartbeated lease expired");
        let error = call.await.unwrap().unwrap_err();
        assert!(error.is_retryable() && error.message.contains("expired"), "{error}");
        assert!(matches!(w.queue().heartbeat(&tasks[0].token), Err(TaskError::Stale(_))));
        assert!(matches!(w.queue().fail(&tasks[0].token, "late".into(), false).await, Err(TaskError::Stale(_))));
    }

    /// A queue nobody polled for three leases is not ready, with the reason the breaker shows;
    /// a poll makes it ready again.
    #[tokio::test]
    async fn no_poll_for_three_leases_is_not_ready() {
        let w = queue(30);
        assert!(w.ready().is_ok(), "the start is a grace period");
        tokio::time::sleep(Duration::from_millis(120)).await;
        let error = w.ready().unwrap_err();
        assert!(error.message.contains("no worker polling queue scans"), "{error}");
        assert!(w.queue().poll("w1", 1, Duration::ZERO).await.unwrap().is_empty());
        assert!(w.ready().is_ok());
    }

    /// A token from another run, a malformed one and too many workers are refused, each naming
    /// why.
    #[tokio::test]
    async fn foreign_tokens_and_too_many_workers_are_refused() {
        let config: ParticipantConfig =
            toml::from_str("kind = \"worker\"\nqueue = \"scans\"\nworkers_max = 1\n").unwrap();
        let w = Worker::open("scanner", &config);
        let foreign = format!("{:016x}{:016x}/scans", 1u64, 1u64);
        assert!(matches!(w.queue().heartbeat(&foreign), Err(TaskError::Stale(_))));
        assert!(matches!(w.queue().heartbeat("nonsense"), Err(TaskError::Invalid(_))));
        w.queue().poll("w1", 1, Duration::ZERO).await.unwrap();
        let refused = w.queue().poll("w2", 1, Duration::ZERO).await.unwrap_err();
        assert!(refused.to_string().contains("participants.scanner.workers_max"), "{refused}");
    }
}
