//! The `Workers` service (`Poll`, `Complete`, `Fail`, `Heartbeat`) over the worker
//! participants' task queues, and what the other services show of those queues
//! (`Admin.Queues`, the worker holding a running step's task).
//!
//! Owns the wire side only: requests are checked and converted, the queue
//! ([`crate::participant::worker::Queue`]) decides, and its refusals map to gRPC codes
//! (stale → FAILED_PRECONDITION, malformed → INVALID_ARGUMENT, a limit → RESOURCE_EXHAUSTED,
//! an outcome not confirmed durable → UNAVAILABLE). A heartbeat's `cancel_requested` comes
//! from the executor's view of the saga.
//!
//! Never does: journal anything itself (the executor journals a task's outcome; `Complete`
//! waits for it), or panic on a worker's input.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::api::pb;
use crate::executor::Executor;
use crate::participant::worker::{HandedTask, Queue, TaskError};

/// The most bytes of a worker's `Fail.error` kept (it is journaled with the step).
pub const FAIL_ERROR_BYTES_MAX: usize = 4096;

/// The worker queues of a server: by queue name and by participant name.
#[derive(Clone, Default)]
pub struct Queues {
    by_queue: Arc<BTreeMap<String, Arc<Queue>>>,
    by_participant: Arc<BTreeMap<String, Arc<Queue>>>,
}

impl Queues {
    /// The queues of every `worker` participant the executor runs.
    pub fn of(executor: &Executor, participants: impl IntoIterator<Item = String>) -> Queues {
        let mut by_queue = BTreeMap::new();
        let mut by_participant = BTreeMap::new();
        for name in participants {
            if let Some(queue) = executor.participant(&name).and_then(|p| p.worker_queue()) {
                by_queue.insert(queue.name().to_owned(), queue.clone());
                by_participant.insert(name, queue);
            }
        }
        Queues { by_queue: Arc::new(by_queue), by_participant: Arc::new(by_participant) }
    }

    fn queue(&self, name: &str) -> Result<&Arc<Queue>, Status> {
        self.by_queue.get(name).ok_or_else(|| {
            let known = self.by_queue.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
            Status::not_found(format!(
                "no worker queue {:?} (queues: {})",
                crate::catalog::echo(name),
                if known.is_empty() { "none" } else { &known }
            ))
        })
    }

    /// The queue a task token names (the token ends with `/<queue>`).
    fn queue_of_token(&self, token: &str) -> Result<&Arc<Queue>, Status> {
        let (_, queue) = token.split_once('/').ok_or_else(|| Status::invalid_argument("malformed task token"))?;
        self.queue(queue)
    }

    /// Fills `worker_id` of every step of `saga` whose task a worker holds now.
    pub fn fill_holders(&self, saga: &mut pb::Saga) {
        if self.by_participant.is_empty() {
            return;
        }
        for step in &mut saga.steps {
            let Some(queue) = self.by_participant.get(&step.participant) else { continue };
            let direction = match pb::StepState::try_from(step.state) {
                Ok(pb::StepState::StepJournaled) => "forward",
                Ok(pb::StepState::StepCompensating) => "compensate",
                _ => continue,
            };
            let key = format!("{}/{}/{direction}", saga.saga_id, step.index);
            step.worker_id = queue.holder(&key).unwrap_or_default();
        }
    }

    /// Every queue as `Admin.Queues` shows it, with its participant's breaker.
    pub fn status(&self, executor: &Executor) -> Vec<pb::QueueStatus> {
        let breakers: BTreeMap<String, &str> = executor.breakers().into_iter().collect();
        self.by_queue
            .values()
            .map(|queue| {
                let info = queue.info();
                pb::QueueStatus {
                    queue: info.queue,
                    participant: info.participant.clone(),
                    lease_ms: info.lease_ms,
                    workers: info
                        .workers
                        .into_iter()
                        .map(|(worker_id, last_seen_ms_ago)| pb::QueueWorker { worker_id, last_seen_ms_ago })
                        .collect(),
                    tasks_waiting: info.tasks_waiting as u32,
                    tasks_in_flight: info.tasks_leased as u32,
                    oldest_waiting_ms: info.oldest_waiting_ms,
                    breaker_state: breakers.get(&info.participant).copied().unwrap_or("closed").to_owned(),
                    breaker_reason: executor.breaker_reason(&info.participant).unwrap_or_default(),
                    polling: info.polling as u32,
                }
            })
            .collect()
    }
}

/// The `Workers` service.
#[derive(Clone)]
pub struct WorkersApi {
    pub executor: Executor,
    pub queues: Queues,
}

fn status_of(error: TaskError) -> Status {
    match error {
        TaskError::Stale(m) => Status::failed_precondition(m),
        TaskError::Invalid(m) => Status::invalid_argument(m),
        TaskError::Exhausted(m) => Status::resource_exhausted(m),
        TaskError::Aborted(m) => Status::aborted(m),
        TaskError::Unconfirmed(m) => Status::unavailable(m),
    }
}

fn task_to_pb(task: HandedTask) -> pb::Task {
    pb::Task {
        task_token: task.token,
        saga_id: task.saga_id,
        step: task.step,
        direction: task.direction.as_str().to_owned(),
        attempt: task.attempt,
        task: task.task,
        params: task.params.iter().map(|(k, v)| (k.clone(), crate::api::convert::value_to_pb(v))).collect(),
        idempotency_key: task.idempotency_key,
        deadline_ms: task.deadline_ms,
        lease_ms: task.lease_ms,
    }
}

/// A worker's output, converted: a value that cannot be an output (`from`, no kind) is named.
fn outputs_from_pb(
    output: std::collections::HashMap<String, pb::Value>,
) -> Result<crate::participant::Outputs, Status> {
    let mut outputs = crate::participant::Outputs::new();
    for (name, value) in output {
        let Some(value) = crate::api::convert::value_from_pb(&value) else {
            return Err(Status::invalid_argument(format!(
                "output {:?} must be a value (bool, int, float, text, bytes)",
                crate::catalog::echo(&name)
            )));
        };
        outputs.insert(name, value);
    }
    Ok(outputs)
}

#[tonic::async_trait]
impl pb::workers_server::Workers for WorkersApi {
    async fn poll(&self, request: Request<pb::PollRequest>) -> Result<Response<pb::PollResponse>, Status> {
        let req = request.into_inner();
        let queue = self.queues.queue(&req.queue)?;
        let wait = Duration::from_millis(u64::from(req.wait_ms));
        let tasks = queue.poll(&req.worker_id, req.max_tasks, wait).await.map_err(status_of)?;
        for task in &tasks {
            tracing::debug!(queue = %req.queue, worker_id = %req.worker_id, key = %task.idempotency_key, attempt = task.attempt, "task handed out");
        }
        Ok(Response::new(pb::PollResponse { tasks: tasks.into_iter().map(task_to_pb).collect() }))
    }

    async fn complete(&self, request: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteResponse>, Status> {
        let req = request.into_inner();
        let queue = self.queues.queue_of_token(&req.task_token)?;
        let output = outputs_from_pb(req.output)?;
        queue.complete(&req.task_token, output).await.map_err(status_of)?;
        Ok(Response::new(pb::CompleteResponse {}))
    }

    async fn fail(&self, request: Request<pb::FailRequest>) -> Result<Response<pb::FailResponse>, Status> {
        let mut req = request.into_inner();
        let queue = self.queues.queue_of_token(&req.task_token)?;
        if req.error.len() > FAIL_ERROR_BYTES_MAX {
            let mut end = FAIL_ERROR_BYTES_MAX;
            while !req.error.is_char_boundary(end) {
                end -= 1;
            }
            req.error.truncate(end);
        }
        let error = if req.error.is_empty() { "no reason given".to_owned() } else { req.error };
        queue.fail(&req.task_token, error, req.retryable).await.map_err(status_of)?;
        Ok(Response::new(pb::FailResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let queue = self.queues.queue_of_token(&req.task_token)?;
        let beat = queue.heartbeat(&req.task_token).map_err(status_of)?;
        let cancel_requested = self.executor.cancel_requested(&beat.saga_id);
        Ok(Response::new(pb::HeartbeatResponse { cancel_requested, deadline_ms: beat.deadline_ms }))
    }
}
