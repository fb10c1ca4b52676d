//! The HTTP/JSON API and the Kubernetes probes on the server's HTTP port (`[server]
//! metrics_listen`, which also serves `/metrics` and, in the embedded default, the demo
//! notifier): `/v1/sagas…`, `/v1/admin/…`, `/v1/openapi.json`, `/healthz`, `/readyz`, and the
//! web console at `/` (`console/`).
//!
//! Every route is a thin translation: it authorises the `Authorization: Bearer` header with the
//! same [`Auth`] the gRPC services use (client routes need role `client`, admin routes
//! `admin`), builds the gRPC request, calls the same [`Api`] method the gRPC service runs, and
//! writes the answer in the one JSON dialect of `api::json`. So the HTTP API cannot drift from
//! the gRPC one: the same checks, the same messages, the same codes. A gRPC error becomes a JSON
//! body `{"error": {"code": 404, "status": "NOT_FOUND", "message": "…"}}` with the HTTP status
//! of Google's mapping (see [`http_status`]).
//!
//! Never does: saga logic, or any write but the ones the gRPC methods make.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::metadata::MetadataMap;

use super::auth::Auth;
use super::config::{Role, ServerConfig};
use super::service::Api;
use crate::api::json::{self as view, code_name};
use crate::api::pb;
use crate::api::pb::admin_server::Admin;
use crate::api::pb::sagas_server::Sagas;
use crate::api::saga_file;

/// The OpenAPI 3.1 description of this API, served at `GET /v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");
/// The web console (`console/`): static files compiled into the binary, served without a token
/// (they hold no data; every call they make carries the token typed into the page).
const CONSOLE: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", include_str!("console/index.html")),
    ("/console/console.js", "text/javascript; charset=utf-8", include_str!("console/console.js")),
    ("/console/console.css", "text/css; charset=utf-8", include_str!("console/console.css")),
];
/// The header that carries the saga id of a `POST /v1/sagas`, as in the HTTP participant.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How often an idle event stream sends a keep-alive comment.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// `history` and the online journal routes read the journal; one such read at a time.
const HISTORY_READS_MAX: usize = 1;
/// The most records one `GET /v1/admin/journal/records` answers.
const RECORDS_PAGE_MAX: usize = 10_000;

/// The last answer of each participant's health probe, kept by `participant_health.rs` and
/// read by `/readyz`. `None` until the first round of probes has ended.
#[derive(Clone, Default)]
pub struct Reachability(Arc<Mutex<Option<ProbeRound>>>);

/// One round of probes: each participant's answer (`Err` holds the probe's error).
pub type ProbeRound = BTreeMap<String, Result<(), String>>;

impl Reachability {
    pub fn set(&self, round: ProbeRound) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(round);
    }

    fn get(&self) -> Option<ProbeRound> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// What the routes share.
#[derive(Clone)]
pub struct HttpApi {
    pub(super) api: Api,
    clients: Auth,
    pub(super) admins: Auth,
    reachability: Reachability,
    history_reads: Arc<Semaphore>,
}

impl HttpApi {
    /// The one permit of the journal reads and online tools ([`HISTORY_READS_MAX`]).
    pub(super) async fn read_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, tonic::Status> {
        self.history_reads.clone().acquire_owned().await.map_err(|_| tonic::Status::unavailable("server shutting down"))
    }

    pub fn new(api: Api, config: &ServerConfig, reachability: Reachability) -> HttpApi {
        HttpApi {
            api,
            clients: Auth::new(config, Role::Client),
            admins: Auth::new(config, Role::Admin),
            reachability,
            history_reads: Arc::new(Semaphore::new(HISTORY_READS_MAX)),
        }
    }

    /// The routes, to be merged with the port's others (`metrics_http.rs`).
    pub fn router(self) -> Router {
        let body_limit = self.api.max_message_bytes;
        let mut router = Router::new();
        for (path, content_type, body) in CONSOLE {
            router = router.route(path, get(move || async move { ([(header::CONTENT_TYPE, content_type)], body) }));
        }
        router
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/v1/openapi.json", get(openapi))
            .route("/v1/actions", get(list_actions))
            .route("/v1/sagas", post(submit).get(list))
            .route("/v1/sagas/{id}", get(get_saga))
            .route("/v1/sagas/{id}/cancel", post(cancel))
            .route("/v1/sagas/{id}/events", get(events))
            .route("/v1/sagas/{id}/history", get(history))
            .route("/v1/sagas/{id}/resolve", post(resolve))
            .route("/v1/admin/participants", get(participants))
            .route("/v1/admin/participants/{name}/reset-breaker", post(reset_breaker))
            .route("/v1/admin/queues", get(queues))
            .route("/v1/admin/stats", get(stats))
            .route("/v1/admin/recover", post(recover))
            .route("/v1/admin/journal/verify", get(journal_verify))
            .route("/v1/admin/journal/records", get(journal_records))
            .route("/v1/admin/audit", get(super::online_tools::audit))
            .route("/v1/admin/recovery-plan", get(super::online_tools::recovery_plan))
            .route("/v1/admin/export", get(super::online_tools::export))
            .layer(DefaultBodyLimit::max(body_limit))
            .with_state(self)
    }
}

/// A gRPC status as an HTTP answer.
pub struct ApiError(tonic::Status);

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> ApiError {
        ApiError(status)
    }
}

/// The HTTP status of a gRPC code: Google's mapping (google.rpc.Code), as grpc-gateway uses.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON body of an error (also an SSE `error` event's data).
fn error_json(status: &tonic::Status) -> Json {
    let http = http_status(status.code());
    json!({ "error": { "code": http.as_u16(), "status": code_name(status.code()), "message": status.message() } })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (http_status(self.0.code()), axum::Json(error_json(&self.0))).into_response();
        if self.0.code() == Code::Unauthenticated {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub(super) type Answer = Result<Response, ApiError>;

/// A query string that does not parse (an unknown parameter, a number that is not one) is
/// INVALID_ARGUMENT, not axum's plain-text rejection.
fn query_of<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| tonic::Status::invalid_argument(format!("query: {}", e.body_text())).into())
}

pub(super) fn ok(body: Json) -> Answer {
    Ok(axum::Json(body).into_response())
}

/// A gRPC request carrying the caller `auth` lets through, or why it is refused.
fn authorized<T>(auth: &Auth, headers: &HeaderMap, message: T) -> Result<tonic::Request<T>, ApiError> {
    let caller = auth.authorize(&MetadataMap::from_headers(headers.clone()))?;
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(caller);
    Ok(request)
}

/// `/healthz`: the process answers and its journal can still take writes. A poisoned journal
/// is a server that must restart (it exits by itself moments later).
async fn healthz(State(s): State<HttpApi>) -> Response {
    match s.api.executor.journal().poisoned() {
        None => (StatusCode::OK, axum::Json(json!({"status": "live"}))).into_response(),
        Some(cause) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "journal poisoned", "journal": format!("poisoned: {cause}")})),
        )
            .into_response(),
    }
}

/// `/readyz`: recovery is done (this port serves the API only after it), the journal is not
/// poisoned, the server is not stopping, and every participant answered its last probe.
async fn readyz(State(s): State<HttpApi>) -> Response {
    let mut ready = true;
    let journal = match s.api.executor.journal().poisoned() {
        None => "ok".to_owned(),
        Some(cause) => {
            ready = false;
            format!("poisoned: {cause}")
        }
    };
    if *s.api.stopping.borrow() {
        ready = false;
    }
    let participants: Json = match s.reachability.get() {
        None => {
            ready = false;
            Json::String("not probed yet".into())
        }
        Some(round) => round
            .into_iter()
            .map(|(name, outcome)| {
                let said = match outcome {
                    Ok(()) => "reachable".to_owned(),
                    Err(e) => {
                        ready = false;
                        format!("unreachable: {e}")
                    }
                };
                (name, Json::String(said))
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "recovery": "done",
        "stopping": *s.api.stopping.borrow(),
        "journal": journal,
        "participants": participants,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list_actions(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    let request = authorized(&s.clients, &headers, pb::ListActionsRequest {})?;
    let actions = Sagas::list_actions(&s.api, request).await?.into_inner().actions;
    let actions: Vec<Json> = actions.iter().map(view::action_json).collect();
    ok(json!({ "actions": actions }))
}

/// `POST /v1/sagas`: a saga file in JSON. The id is the `Idempotency-Key` header or the body's
/// `saga_id` (or `id`); both may be given if they agree; with neither, one is generated.
/// 201 Created for a new saga, 200 for a resubmit of the same definition.
async fn submit(State(s): State<HttpApi>, headers: HeaderMap, body: Bytes) -> Answer {
    let caller = s.clients.authorize(&MetadataMap::from_headers(headers.clone()))?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| tonic::Status::invalid_argument(format!("request body: not UTF-8 ({e})")))?;
    let parsed =
        saga_file::parse_json(text, "request body").map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str().map_err(|_| tonic::Status::invalid_argument("Idempotency-Key: not visible ASCII"))?.to_owned(),
        ),
    };
    let id = match (key, parsed.id) {
        (Some(k), Some(b)) if k != b => {
            return Err(tonic::Status::invalid_argument(format!(
                "Idempotency-Key {k:?} and the body's saga_id {b:?} differ: give one of them"
            ))
            .into());
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => saga_file::generated_id("saga"),
    };
    let definition = crate::engine::SagaDefinition { id: id.clone(), steps: parsed.steps };
    let mut request = tonic::Request::new(crate::api::convert::submit_request(&definition));
    request.extensions_mut().insert(caller);
    let answer = Sagas::submit(&s.api, request).await?.into_inner();
    let saga = answer.saga.unwrap_or_default();
    let mut body = view::saga_json(&saga);
    body["created"] = answer.created.into();
    let code = if answer.created { StatusCode::CREATED } else { StatusCode::OK };
    let location = HeaderValue::from_str(&format!("/v1/sagas/{id}")).ok();
    let mut response = (code, axum::Json(body)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn get_saga(State(s): State<HttpApi>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let request = authorized(&s.clients, &headers, pb::GetRequest { saga_id: id })?;
    ok(view::saga_json(&Sagas::get(&s.api, request).await?.into_inner()))
}

/// The query of `GET /v1/sagas`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// One or more statuses, comma separated (`RUNNING,STUCK`).
    status: Option<String>,
    /// RFC 3339, or milliseconds since the epoch.
    since: Option<String>,
    until: Option<String>,
    page_size: Option<u32>,
    page_token: Option<String>,
}

/// Milliseconds since the epoch, or what `sagalog list --since` takes: RFC 3339
/// (`2026-12-05T10:00:00Z`), a bare date, or a duration ago (`1h`).
fn time_ms(name: &str, text: &str) -> Result<u64, ApiError> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    view::parse_time(text, crate::clock::now_ms()).map_err(|e| {
        tonic::Status::invalid_argument(format!("{name}={text:?}: {e}, or milliseconds since the epoch")).into()
    })
}

async fn list(State(s): State<HttpApi>, headers: HeaderMap, query: Result<Query<ListQuery>, QueryRejection>) -> Answer {
    let query = query_of(query)?;
    let mut status = Vec::new();
    for name in query.status.iter().flat_map(|s| s.split(',')).filter(|s| !s.trim().is_empty()) {
        let parsed = view::parse_status(name).ok_or_else(|| {
            tonic::Status::invalid_argument(format!("status={name:?}: one of {}", view::STATUS_NAMES.join(", ")))
        })?;
        status.push(parsed as i32);
    }
    let message = pb::ListRequest {
        status,
        since_ms: query.since.as_deref().map(|t| time_ms("since", t)).transpose()?.unwrap_or(0),
        until_ms: query.until.as_deref().map(|t| time_ms("until", t)).transpose()?.unwrap_or(0),
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let request = authorized(&s.clients, &headers, message)?;
    let page = Sagas::list(&s.api, request).await?.into_inner();
    let sagas: Vec<Json> = page.sagas.iter().map(view::saga_json).collect();
    let next = (!page.next_page_token.is_empty()).then_some(page.next_page_token);
    ok(json!({ "sagas": sagas, "next_page_token": next }))
}

async fn cancel(State(s): State<HttpApi>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let request = authorized(&s.clients, &headers, pb::CancelRequest { saga_id: id })?;
    ok(view::saga_json(&Sagas::cancel(&s.api, request).await?.into_inner()))
}

/// The query of `GET /v1/sagas/{id}/events`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Resume after this version (the `Last-Event-ID` header says the same and wins).
    after_version: Option<u64>,
}

/// `GET /v1/sagas/{id}/events`: Server-Sent Events, one `saga` event per new state with the
/// version as its id, so that a reconnect with `Last-Event-ID` resumes after it; an `end` event
/// when the saga is COMPLETED or COMPENSATED (a client then closes, instead of reconnecting);
/// an `error` event (the JSON error body) if the server stops or its journal is poisoned.
async fn events(
    State(s): State<HttpApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query_of(query)?;
    let last_event = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
            tonic::Status::invalid_argument("Last-Event-ID: expected a saga version (an unsigned integer)")
        })?),
    };
    let after_version = last_event.or(query.after_version).unwrap_or(0);
    let request = authorized(&s.clients, &headers, pb::WatchRequest { saga_id: id.clone(), after_version })?;
    let mut states = Sagas::watch(&s.api, request).await?.into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(16);
    let api = s.api.clone();
    tokio::spawn(async move {
        let saga_event = |saga: &pb::Saga| {
            Event::default().event("saga").id(saga.version.to_string()).data(view::saga_json(saga).to_string())
        };
        loop {
            // A client that went away is noticed at once, not at the saga's next change (a
            // STUCK saga may not change for days).
            let item = tokio::select! {
                item = states.next() => item,
                () = tx.closed() => return,
            };
            let Some(item) = item else { break };
            let event = match &item {
                Ok(saga) => saga_event(saga),
                Err(status) => Event::default().event("error").data(error_json(status).to_string()),
            };
            if tx.send(Ok(event)).await.is_err() || item.is_err() {
                return; // the client went away, or the server is stopping
            }
        }
        // The watch ends when the saga is terminal; it sends nothing to a client that resumes
        // after the last version. Either way the client learns the end, so it stops
        // reconnecting.
        let request = tonic::Request::new(pb::GetRequest { saga_id: id });
        if let Ok(saga) = Sagas::get(&api, request).await.map(tonic::Response::into_inner)
            && view::is_terminal(&saga)
        {
            let status = view::status_name(view::saga_status(&saga));
            let end = json!({"saga_id": saga.saga_id, "status": status, "version": saga.version});
            let _ = tx.send(Ok(Event::default().event("end").data(end.to_string()))).await;
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE)).into_response())
}

/// `GET /v1/sagas/{id}/history`: the saga's records in the journal as it is on disk, up to
/// the acknowledged LSN (what the writer appends meanwhile is not looked at), decoded as
/// `wal dump` prints them. Records before the last checkpoint may have been reclaimed with
/// their segments; `first_lsn` says where the journal starts.
async fn history(State(s): State<HttpApi>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    // The saga must exist (NOT_FOUND otherwise), and the caller may read it.
    let request = authorized(&s.clients, &headers, pb::GetRequest { saga_id: id.clone() })?;
    Sagas::get(&s.api, request).await?;
    let ((summary, records, undecodable), upto) = read_durable_prefix(&s, move |dir, upto| {
        let mut records = Vec::new();
        let mut undecodable = None;
        let summary = crate::journal::scan_upto(dir, 0, Some(upto), |r, _, _| {
            match crate::engine::Record::decode(r.kind, r.payload) {
                Ok(record) if record.saga() == Some(id.as_str()) => {
                    records.push(view::record_json(r.lsn, r.kind.name(), r.payload));
                }
                Ok(_) => {}
                Err(e) => undecodable = undecodable.take().or(Some(format!("record at LSN {}: {e}", r.lsn))),
            }
        })?;
        Ok((summary, records, undecodable))
    })
    .await?;
    if let Some(problem) = undecodable {
        return Err(tonic::Status::data_loss(problem).into());
    }
    ok(json!({
        "records": records,
        "first_lsn": summary.first_lsn,
        "read_up_to_lsn": upto,
    }))
}

/// The body of `POST /v1/sagas/{id}/resolve`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    /// `MARK_COMPENSATED` or `RETRY_COMPENSATION` (or their lower-case, dashed spellings).
    decision: String,
    #[serde(default)]
    operator: String,
}

async fn resolve(State(s): State<HttpApi>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Answer {
    let body: ResolveBody = serde_json::from_slice(&body).map_err(|e| {
        tonic::Status::invalid_argument(format!(
            "request body: {e} (expected {{\"decision\": \"MARK_COMPENSATED\" | \"RETRY_COMPENSATION\", \"operator\": \"…\"}})"
        ))
    })?;
    let decision = match body.decision.to_ascii_uppercase().replace('-', "_").as_str() {
        "MARK_COMPENSATED" => pb::ResolveDecision::MarkCompensated,
        "RETRY_COMPENSATION" => pb::ResolveDecision::RetryCompensation,
        other => {
            return Err(tonic::Status::invalid_argument(format!(
                "decision {other:?}: must be MARK_COMPENSATED or RETRY_COMPENSATION"
            ))
            .into());
        }
    };
    let message = pb::ResolveRequest { saga_id: id, decision: decision as i32, operator: body.operator };
    let request = authorized(&s.admins, &headers, message)?;
    ok(view::saga_json(&Admin::resolve(&s.api, request).await?.into_inner()))
}

async fn participants(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    let request = authorized(&s.admins, &headers, pb::ParticipantsRequest {})?;
    let answer = Admin::participants(&s.api, request).await?.into_inner();
    ok(json!({ "participants": answer.participants.iter().map(view::participant_json).collect::<Vec<_>>() }))
}

async fn reset_breaker(State(s): State<HttpApi>, headers: HeaderMap, Path(name): Path<String>) -> Answer {
    let request = authorized(&s.admins, &headers, pb::ResetBreakerRequest { participant: name.clone() })?;
    let answer = Admin::reset_breaker(&s.api, request).await?.into_inner();
    ok(json!({ "participant": name, "previous_state": answer.previous_state }))
}

async fn queues(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    let request = authorized(&s.admins, &headers, pb::QueuesRequest {})?;
    let answer = Admin::queues(&s.api, request).await?.into_inner();
    ok(json!({ "queues": answer.queues.iter().map(view::queue_json).collect::<Vec<_>>() }))
}

async fn stats(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    let request = authorized(&s.admins, &headers, pb::StatsRequest {})?;
    ok(view::stats_json(&Admin::stats(&s.api, request).await?.into_inner()))
}

async fn recover(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    let request = authorized(&s.admins, &headers, pb::RecoverRequest {})?;
    let r = Admin::recover(&s.api, request).await?.into_inner();
    ok(json!({ "unfinished": r.unfinished, "restarted": r.restarted, "duration_ms": r.duration_ms }))
}

/// Reads the journal's durable prefix (up to the acknowledged LSN, never what the writer is
/// appending) with `visit`, one read at a time. A checkpoint may delete a segment under the
/// read: that is UNAVAILABLE (ask again), not damage.
async fn read_durable_prefix<T: Send + 'static>(
    s: &HttpApi,
    read: impl FnOnce(&std::path::Path, u64) -> Result<T, crate::journal::Error> + Send + 'static,
) -> Result<(T, u64), ApiError> {
    let _permit = s.read_permit().await?;
    let journal = s.api.executor.journal();
    let (dir, upto) = (journal.dir().to_path_buf(), journal.acked_lsn());
    let answer = super::online_tools::nice_thread(move || read(&dir, upto)).await?.map_err(|e| {
        tonic::Status::unavailable(format!(
            "reading the journal: {e} (a checkpoint may have removed a segment under the read; ask again)"
        ))
    })?;
    Ok((answer, upto))
}

/// `GET /v1/admin/journal/verify`: `wal verify --json` of the running server's journal, over
/// its durable prefix: every record up to the acknowledged LSN is read and checked (checksums,
/// LSN and epoch chains); the record being appended is not judged. HTTP 200 whatever the
/// result; `status` says `ok` or `corrupt`.
async fn journal_verify(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    s.admins.authorize(&MetadataMap::from_headers(headers))?;
    let started = std::time::Instant::now();
    let (summary, upto) =
        read_durable_prefix(&s, |dir, upto| crate::journal::scan_upto(dir, 0, Some(upto), |_, _, _| {})).await?;
    let mut body = view::verify_json(&summary, started.elapsed().as_secs_f64());
    body["online"] = true.into();
    body["read_up_to_lsn"] = upto.into();
    ok(body)
}

/// The query of `GET /v1/admin/journal/records`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsQuery {
    /// The first LSN wanted (default: the start of the journal).
    from: Option<u64>,
    /// At most this many records (default and maximum [`RECORDS_PAGE_MAX`]).
    limit: Option<usize>,
}

/// `GET /v1/admin/journal/records?from=LSN&limit=N`: `wal dump` of the running server's
/// journal, over its durable prefix, as `{"records": [...], "next_from": LSN | null}`.
async fn journal_records(
    State(s): State<HttpApi>,
    headers: HeaderMap,
    query: Result<Query<RecordsQuery>, QueryRejection>,
) -> Answer {
    s.admins.authorize(&MetadataMap::from_headers(headers))?;
    let query = query_of(query)?;
    let limit = match query.limit {
        None => RECORDS_PAGE_MAX,
        Some(n) if (1..=RECORDS_PAGE_MAX).contains(&n) => n,
        Some(n) => {
            return Err(tonic::Status::invalid_argument(format!("limit={n}: 1 to {RECORDS_PAGE_MAX}")).into());
        }
    };
    let from = query.from.unwrap_or(0);
    let ((records, mut next, problem), _) = read_durable_prefix(&s, move |dir, upto| {
        let mut records = Vec::new();
        let mut next = None;
        let problem = crate::journal::scan_window(dir, from, Some(upto), |r, segment, offset| {
            if records.len() == limit {
                next = Some(r.lsn);
                return std::ops::ControlFlow::Break(());
            }
            let mut line = view::record_json(r.lsn, r.kind.name(), r.payload);
            line["segment"] = segment.into();
            line["offset"] = offset.into();
            records.push(line);
            std::ops::ControlFlow::Continue(())
        })?;
        Ok((records, next, problem))
    })
    .await?;
    // Damage inside the window: the records before it are answered, and the next page (which
    // starts at the damage) is DATA_LOSS naming it, so a dump never ends quietly short.
    if let Some(problem) = problem {
        match records.last().and_then(|r| r["lsn"].as_u64()) {
            Some(last) => next = Some(last + 1),
            None => return Err(tonic::Status::data_loss(format!("the journal is corrupt: {problem}")).into()),
        }
    }
    ok(json!({ "records": records, "next_from": next }))
}
