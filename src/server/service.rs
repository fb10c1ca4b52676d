//! The `Sagas` and `Admin` services over the executor (`workers.rs` has the `Workers` service).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::convert;
use crate::api::pb;
use crate::catalog::Catalog;
use crate::engine::{ResolveDecision, Status as SagaStatus};
use crate::executor::{Executor, SubmitOutcome};
use crate::index::{Index, ListFilter};
use crate::recovery;

/// The most sagas one `List` page may hold, and the default.
pub const PAGE_SIZE_MAX: u32 = 1000;
pub const PAGE_SIZE_DEFAULT: u32 = 100;
/// How long `Admin.Participants` waits for each health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by both services.
#[derive(Clone)]
pub struct Api {
    pub executor: Executor,
    pub catalog: Arc<Catalog>,
    pub index: Index,
    /// Submits being journaled now; beyond `max_pending_submits` a submit is refused.
    pub submits: Arc<Semaphore>,
    pub max_pending_submits: u32,
    pub max_message_bytes: usize,
    /// Becomes true when the server starts shutting down or the journal is poisoned: watch
    /// streams end with UNAVAILABLE.
    pub stopping: watch::Receiver<bool>,
    /// The worker participants' queues (`Admin.Queues`, a running step's `worker_id`).
    pub queues: super::workers::Queues,
}

/// How long `Admin.Resolve` waits for the saga's task to apply the journaled decision before
/// it answers.
const RESOLVE_APPLIED_WAIT: Duration = Duration::from_secs(5);

fn check_id(id: &str) -> Result<(), Status> {
    // The one id rule, the catalog's: a Get or Cancel of an id no submit could have used is
    // INVALID_ARGUMENT, not NOT_FOUND.
    crate::catalog::validate_saga_id(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl Api {
    /// The saga's state: live from the executor, or archived from the index.
    fn lookup(&self, id: &str) -> Result<pb::Saga, Status> {
        if let Some(snapshot) = self.executor.get(id) {
            return Ok(self.live(&snapshot));
        }
        match self.executor.archived(id) {
            Ok(Some(record)) => Ok(convert::archived(&record, &self.catalog)),
            Ok(None) => Err(Status::not_found(format!("saga {id:?} not found"))),
            Err(e) => Err(convert::error(e)),
        }
    }
}

impl Api {
    /// A live saga on the wire, with the worker holding each running worker step's task.
    fn live(&self, snapshot: &crate::executor::Snapshot) -> pb::Saga {
        let mut saga = convert::saga(snapshot, &self.catalog);
        self.queues.fill_holders(&mut saga);
        saga
    }
}

type SagaStream = Pin<Box<dyn Stream<Item = Result<pb::Saga, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::sagas_server::Sagas for Api {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let Ok(_permit) = self.submits.try_acquire() else {
            return Err(Status::resource_exhausted(format!(
                "{} submits are being journaled already (server.max_pending_submits); retry with back-off",
                self.max_pending_submits
            )));
        };
        let caller = request.extensions().get::<Caller>().map(|c| c.name.clone()).unwrap_or_default();
        let definition = convert::definition(request.into_inner())?;
        let id = definition.id.clone();
        let steps = definition.steps.len();
        let outcome = self.executor.submit(definition).await.map_err(|e| {
            tracing::info!(saga_id = %id, caller, error = %e, "submit refused");
            convert::error(e)
        })?;
        let created = outcome == SubmitOutcome::Accepted;
        if created {
            tracing::info!(saga_id = %id, caller, steps, "saga submitted (journaled)");
        } else {
            tracing::debug!(saga_id = %id, caller, steps, "submit of a saga already there: nothing new");
        }
        Ok(Response::new(pb::SubmitResponse { created, saga: Some(self.lookup(&id)?) }))
    }

    async fn list_actions(
        &self,
        _request: Request<pb::ListActionsRequest>,
    ) -> Result<Response<pb::ListActionsResponse>, Status> {
        let config = &self.catalog.config;
        let types = |m: &std::collections::BTreeMap<String, crate::config::ParamType>| {
            m.iter().map(|(k, t)| (k.clone(), t.name().to_owned())).collect()
        };
        let actions = config
            .actions
            .iter()
            .map(|(name, a)| pb::Action {
                name: name.clone(),
                participant: a.participant.clone(),
                participant_kind: match a.is_delay() {
                    true => "delay".to_owned(),
                    false => {
                        config.participants.get(&a.participant).map(|p| p.kind.as_str().to_owned()).unwrap_or_default()
                    }
                },
                params: types(&a.params),
                returns: types(&a.returns),
            })
            .collect();
        Ok(Response::new(pb::ListActionsResponse { actions }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Saga>, Status> {
        let id = request.into_inner().saga_id;
        check_id(&id)?;
        self.lookup(&id).map(Response::new)
    }

    type WatchStream = SagaStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<SagaStream>, Status> {
        let pb::WatchRequest { saga_id: id, after_version } = request.into_inner();
        check_id(&id)?;
        let (tx, rx) = mpsc::channel(16);
        let Some(mut view) = self.executor.watch(&id) else {
            // Finished and archived (or unknown): at most one state to send.
            let saga = self.lookup(&id)?;
            if saga.version > after_version || after_version == 0 {
                let _ = tx.send(Ok(saga)).await;
            }
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        };
        let api = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut last = after_version;
            loop {
                let snapshot = view.borrow_and_update().clone();
                if snapshot.saga.version > last || (last == 0 && snapshot.saga.version == 0) {
                    last = snapshot.saga.version.max(1);
                    if tx.send(Ok(api.live(&snapshot))).await.is_err() {
                        return; // the client went away
                    }
                }
                if snapshot.status.is_terminal() {
                    return;
                }
                tokio::select! {
                    changed = view.changed() => {
                        if changed.is_err() {
                            // The saga left memory: it finished and went to the index.
                            if let Ok(saga) = api.lookup(&id)
                                && saga.version > last
                            {
                                let _ = tx.send(Ok(saga)).await;
                            }
                            return;
                        }
                    }
                    () = async { drop(stopping.wait_for(|s| *s).await) } => {
                        let message = match api.executor.journal().poisoned() {
                            Some(cause) => format!(
                                "the journal is poisoned ({cause}); the server exits and a restart recovers; reconnect with after_version = {last}"
                            ),
                            None => format!("server shutting down; reconnect with after_version = {last}"),
                        };
                        let _ = tx.send(Err(Status::unavailable(message))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => PAGE_SIZE_DEFAULT,
            n if n <= PAGE_SIZE_MAX => n,
            n => {
                return Err(Status::invalid_argument(format!("page_size = {n}; the limit is {PAGE_SIZE_MAX}")));
            }
        } as usize;
        let mut statuses = BTreeSet::new();
        for s in &req.status {
            let status = pb::SagaStatus::try_from(*s)
                .ok()
                .and_then(crate::api::status_from_pb)
                .ok_or_else(|| Status::invalid_argument(format!("status {s} is not a saga status")))?;
            statuses.insert(status);
        }
        let wanted = |s: SagaStatus| statuses.is_empty() || statuses.contains(&s);
        let in_range = |t: u64| t >= req.since_ms && (req.until_ms == 0 || t < req.until_ms);
        let token = req.page_token.as_str();
        let (live_after, index_token) = if token.is_empty() {
            (Some(String::new()), None)
        } else if let Some(id) = token.strip_prefix("live:") {
            (Some(id.to_owned()), None)
        } else if let Some(t) = token.strip_prefix("done:") {
            (None, Some(t.to_owned()))
        } else {
            return Err(Status::invalid_argument("page_token was not issued by this server"));
        };

        let mut sagas = Vec::new();
        if let Some(after) = live_after {
            // Only the page is copied out of the registry, not every live saga.
            let (live, more) =
                self.executor.list_page(&after, page_size, |s| wanted(s.status) && in_range(s.saga.submitted_at_ms));
            if more {
                let next = format!("live:{}", live[page_size - 1].saga.id);
                let sagas = live.iter().map(|s| convert::saga(s, &self.catalog)).collect();
                return Ok(Response::new(pb::ListResponse { sagas, next_page_token: next }));
            }
            sagas.extend(live.iter().map(|s| convert::saga(s, &self.catalog)));
        }
        // Finished sagas from the index.
        let finished: Vec<SagaStatus> =
            [SagaStatus::Completed, SagaStatus::Compensated].into_iter().filter(|s| wanted(*s)).collect();
        let room = page_size - sagas.len();
        if finished.is_empty() || room == 0 {
            let next = if room == 0 && !finished.is_empty() { "done:".to_owned() } else { String::new() };
            return Ok(Response::new(pb::ListResponse { sagas, next_page_token: next }));
        }
        let filter = ListFilter {
            status: (finished.len() == 1).then(|| finished[0].as_str().to_owned()),
            finished_since_ms: (req.since_ms > 0).then_some(req.since_ms),
            finished_until_ms: (req.until_ms > 0).then_some(req.until_ms),
        };
        let index_token = index_token.filter(|t| !t.is_empty());
        let (records, next) = self.index.list(&filter, index_token.as_deref(), room).map_err(|e| match e {
            crate::index::Error::BadPageToken { .. } => Status::invalid_argument(e.to_string()),
            other => Status::internal(other.to_string()),
        })?;
        // A saga archived while this page was assembled may be in both lists: keep one.
        let seen: BTreeSet<String> = sagas.iter().map(|s: &pb::Saga| s.saga_id.clone()).collect();
        sagas.extend(records.iter().filter(|r| !seen.contains(&r.id)).map(|r| convert::archived(r, &self.catalog)));
        let next_page_token = next.map(|t| format!("done:{t}")).unwrap_or_default();
        Ok(Response::new(pb::ListResponse { sagas, next_page_token }))
    }

    async fn cancel(&self, request: Request<pb::CancelRequest>) -> Result<Response<pb::Saga>, Status> {
        let id = request.into_inner().saga_id;
        check_id(&id)?;
        self.executor.cancel(&id).await.map_err(convert::error)?;
        tracing::info!(saga_id = %id, "cancel requested");
        self.lookup(&id).map(Response::new)
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Api {
    async fn recover(&self, _: Request<pb::RecoverRequest>) -> Result<Response<pb::RecoverResponse>, Status> {
        let report = recovery::recover_missing(&self.executor).await.map_err(|e| match e {
            recovery::Error::Journal(j) => Status::unavailable(j.to_string()),
            other => Status::internal(other.to_string()),
        })?;
        tracing::info!(unfinished = report.unfinished, restarted = report.restarted, "admin: recovery pass");
        Ok(Response::new(pb::RecoverResponse {
            unfinished: report.unfinished as u32,
            restarted: report.restarted as u32,
            duration_ms: report.duration.as_millis() as u64,
        }))
    }

    async fn reset_breaker(
        &self,
        request: Request<pb::ResetBreakerRequest>,
    ) -> Result<Response<pb::ResetBreakerResponse>, Status> {
        let name = request.into_inner().participant;
        let previous = self.executor.breakers().into_iter().find(|(n, _)| *n == name).map(|(_, state)| state);
        let Some(previous) = previous else {
            return Err(Status::not_found(format!("participant {name:?} is not configured")));
        };
        self.executor.reset_breaker(&name);
        tracing::info!(participant = %name, previous, "admin: circuit breaker reset");
        Ok(Response::new(pb::ResetBreakerResponse { previous_state: previous.to_owned() }))
    }

    async fn participants(
        &self,
        _: Request<pb::ParticipantsRequest>,
    ) -> Result<Response<pb::ParticipantsResponse>, Status> {
        let breakers: BTreeMap<String, &str> = self.executor.breakers().into_iter().collect();
        let calls: BTreeMap<String, (u64, u64)> = crate::metrics::get()
            .latency_summary()
            .into_iter()
            .map(|l| (l.participant, (l.succeeded, l.calls - l.succeeded)))
            .collect();
        let mut participants = Vec::new();
        for (name, config) in &self.catalog.config.participants {
            let probe = match self.executor.participant(name) {
                Some(p) => match tokio::time::timeout(PROBE_TIMEOUT, p.probe()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("probe timed out after {} s", PROBE_TIMEOUT.as_secs())),
                },
                None => Err("not opened".to_owned()),
            };
            let (ok, failed) = calls.get(name).copied().unwrap_or_default();
            participants.push(pb::Participant {
                name: name.clone(),
                kind: config.kind.as_str().to_owned(),
                healthy: probe.is_ok(),
                probe_error: probe.err().unwrap_or_default(),
                breaker_state: breakers.get(name).copied().unwrap_or("closed").to_owned(),
                calls_succeeded: ok,
                calls_failed: failed,
            });
        }
        Ok(Response::new(pb::ParticipantsResponse { participants }))
    }

    async fn stats(&self, _: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let mut sagas_by_status: BTreeMap<String, u64> = BTreeMap::new();
        for (status, n) in self.executor.status_counts() {
            *sagas_by_status.entry(status.as_str().to_owned()).or_default() += n;
        }
        for (status, n) in self.index.archived_counts() {
            *sagas_by_status.entry(status).or_default() += n;
        }
        let metrics = crate::metrics::get();
        let step_latency = metrics
            .latency_summary()
            .into_iter()
            .map(|l| pb::StepLatency {
                participant: l.participant,
                calls: l.calls,
                p50_ms: l.p50_ms,
                p90_ms: l.p90_ms,
                p99_ms: l.p99_ms,
            })
            .collect();
        let journal = self.executor.journal();
        let journal_bytes = std::fs::read_dir(journal.dir())
            .map(|entries| entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        let cfg = &self.catalog.config.executor;
        Ok(Response::new(pb::StatsResponse {
            sagas_by_status: sagas_by_status.into_iter().collect(),
            step_latency,
            journal_bytes,
            journal_lsn: journal.acked_lsn(),
            recoveries: metrics.recoveries.get(),
            last_recovery_ms: (metrics.recovery_duration.get() * 1000.0) as u64,
            limits: Some(pb::Limits {
                max_message_bytes: self.max_message_bytes as u64,
                max_steps: cfg.max_steps as u32,
                max_saga_bytes: cfg.max_saga_bytes as u64,
                max_pending_submits: self.max_pending_submits,
                live_sagas_max: cfg.live_sagas_max as u64,
            }),
        }))
    }

    async fn queues(&self, _: Request<pb::QueuesRequest>) -> Result<Response<pb::QueuesResponse>, Status> {
        Ok(Response::new(pb::QueuesResponse { queues: self.queues.status(&self.executor) }))
    }

    async fn resolve(&self, request: Request<pb::ResolveRequest>) -> Result<Response<pb::Saga>, Status> {
        let caller = request.extensions().get::<Caller>().map(|c| c.name.clone()).unwrap_or_default();
        let req = request.into_inner();
        check_id(&req.saga_id)?;
        let decision = match pb::ResolveDecision::try_from(req.decision) {
            Ok(pb::ResolveDecision::MarkCompensated) => ResolveDecision::MarkCompensated,
            Ok(pb::ResolveDecision::RetryCompensation) => ResolveDecision::RetryCompensation,
            _ => {
                return Err(Status::invalid_argument(
                    "decision must be MARK_COMPENSATED or RETRY_COMPENSATION".to_owned(),
                ));
            }
        };
        let operator = if req.operator.is_empty() { caller } else { req.operator };
        let before = self.executor.get(&req.saga_id).map(|s| s.saga.version);
        self.executor.resolve(&req.saga_id, decision, &operator).await.map_err(convert::error)?;
        tracing::warn!(saga_id = %req.saga_id, decision = decision.as_str(), operator, "admin: STUCK saga resolved by an operator");
        // The answer shows the decision applied: the saga's task applies it a moment after it
        // is journaled, and until then the saga still reads STUCK (a console showed "resolved:
        // now STUCK"). Bounded: a task that is slow to take it leaves the answer as it is.
        if let (Some(before), Some(mut view)) = (before, self.executor.watch(&req.saga_id)) {
            let applied = view.wait_for(|s| s.saga.version > before);
            let _ = tokio::time::timeout(RESOLVE_APPLIED_WAIT, applied).await;
        }
        self.lookup(&req.saga_id).map(Response::new)
    }
}
