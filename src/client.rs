//! The Rust client of sagalog's gRPC API (`proto/sagalog/v1/`), used by the `sagalog` command
//! line and the end-to-end tests.
//!
//! It owns the connection (plain `http://` or TLS `https://` with a CA file), the bearer token
//! on every call, the conversions between the engine's types and the protobuf messages, and
//! the one piece of client-side logic the API asks for: a watch that reconnects with the last
//! seen `version` after a broken stream, with a bounded number of attempts. The `Workers`
//! calls (`poll`, `complete`, `fail`, `heartbeat`) are here too, for workers written in Rust
//! (`examples/worker.rs`).
//!
//! It never retries a call that changes state (`Submit`, `Cancel`, `Resolve`, ...): a caller
//! that wants to resubmit relies on the saga id being the idempotency key. Errors keep the
//! gRPC code and message as the server sent them.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::api::pb;
use crate::api::pb::admin_client::AdminClient;
use crate::api::pb::sagas_client::SagasClient;
use crate::api::pb::workers_client::WorkersClient;
pub use crate::api::{status_from_pb, status_to_pb};
use crate::engine::SagaDefinition;

/// The server a client talks to when nothing else is said (`$SAGALOG_SERVER` overrides it in
/// the command line).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
/// How long connecting may take by default.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// How long a client waits before it tries again to reach a server that refused the connection
/// (still starting), within its connect timeout.
pub const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Pages `list_all` fetches at most: a guard against a server that keeps handing out tokens.
pub const LIST_PAGES_MAX: usize = 100_000;

/// Everything [`Client::connect`] needs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `http://host:port` (plain) or `https://host:port` (TLS).
    pub server: String,
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (required for `https://`: this
    /// build compiles in no system trust store).
    pub ca_cert: Option<PathBuf>,
    pub connect_timeout: Duration,
}

impl ClientOptions {
    /// Options for `server` with no token, no CA file and the default connect timeout.
    pub fn new(server: impl Into<String>) -> ClientOptions {
        ClientOptions { server: server.into(), token: None, ca_cert: None, connect_timeout: CONNECT_TIMEOUT_DEFAULT }
    }
}

/// How a watch reconnects after its stream broke or the server was unavailable.
#[derive(Debug, Clone, Copy)]
pub struct WatchRetry {
    /// Consecutive failed (re)connects before giving up; a received state resets the count.
    pub attempts_max: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for WatchRetry {
    /// About 40 s of trying in all: enough for a server restart.
    fn default() -> Self {
        WatchRetry {
            attempts_max: 12,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl WatchRetry {
    /// The wait before reconnect `attempt` (1-based): doubling from the initial back-off.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_initial.saturating_mul(factor).min(self.backoff_max)
    }
}

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached (or the address is not usable).
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot read CA certificate {}: {source}", path.display())]
    CaCert { path: PathBuf, source: std::io::Error },
    #[error("the token cannot be sent in a header: {0}")]
    BadToken(String),
    /// The server answered with a gRPC error: its code and message, unchanged.
    #[error("{}: {message}", code_name(*code))]
    Status { code: Code, message: String },
    /// The server answered something the API does not allow (a bug on one side).
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// A watch lost its stream and could not get it back.
    #[error("watch of saga {saga_id} gave up after {attempts} attempts to reconnect to {url}: {last}")]
    WatchGaveUp { saga_id: String, url: String, attempts: u32, last: Box<Error> },
}

impl Error {
    /// The gRPC code, when the server answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the server itself refused the call (as opposed to not being reachable).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Status { .. })
    }

    /// Errors after which a watch may reconnect and resume: the server went away (or is
    /// shutting down), or the stream broke.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Status { code: Code::Unavailable | Code::Unknown | Code::Cancelled, .. }
        )
    }
}

/// tonic reports a connection that cannot be (re-)established as an UNAVAILABLE status too;
/// its messages for those say so. A server's own UNAVAILABLE (journal poisoned, shutting
/// down) reads differently and stays a refusal.
fn is_transport_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("error trying to connect")
        || m.contains("transport error")
        || m.contains("tcp connect error")
        || m.contains("h2 protocol error")
}

/// A failed call's status as an [`Error`]: a lost connection names the server's URL.
fn status_error(url: &str, status: tonic::Status) -> Error {
    // A plaintext client on a TLS port sees the bytes of a TLS alert as HTTP/2: tonic reports
    // that as an INTERNAL "h2 protocol error", which is the connection's fault, not the server's.
    if matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal)
        && is_transport_message(status.message())
    {
        let mut reason = status.message().to_owned();
        // The usual cause of a bare transport error on a fresh connection: plaintext against a
        // TLS port.
        if url.starts_with("http://") && (reason == "transport error" || reason.contains("h2 protocol error")) {
            reason.push_str(" (if the server uses TLS, use https:// and --ca-cert)");
        }
        return Error::Connect { url: url.to_owned(), reason };
    }
    Error::from(status)
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status { code: status.code(), message: status.message().to_owned() }
    }
}

pub use crate::api::json::code_name;

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// A connection to one server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    url: String,
    sagas: SagasClient<Authed>,
    admin: AdminClient<Authed>,
    workers: WorkersClient<Authed>,
}

/// Filter and page size of a `List` call.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only these statuses (empty: all).
    pub statuses: Vec<pb::SagaStatus>,
    /// Lower bound in ms since the epoch (0: none).
    pub since_ms: u64,
    /// Upper bound in ms since the epoch (0: none).
    pub until_ms: u64,
    /// 0: the server's default (100).
    pub page_size: u32,
}

/// A stream of saga states.
pub type SagaStream = Pin<Box<dyn Stream<Item = Result<pb::Saga, Error>> + Send>>;

impl Client {
    /// Connects now (so an unreachable server is reported here, naming its URL).
    pub async fn connect(options: ClientOptions) -> Result<Client, Error> {
        // `host:port` alone means plain HTTP, as `--server 127.0.0.1:50051` is commonly typed.
        let url = match options.server.trim() {
            bare if !bare.contains("://") => format!("http://{bare}"),
            url => url.to_owned(),
        };
        let connect_error = |reason: String| Error::Connect { url: url.clone(), reason };
        let bearer = match &options.token {
            Some(token) => {
                let bad = || Error::BadToken("it must be printable ASCII without spaces".into());
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad());
                }
                let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| bad())?;
                value.set_sensitive(true);
                Bearer(Some(value))
            }
            None => Bearer(None),
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| connect_error(format!("not a valid URL ({e})")))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let Some(path) = &options.ca_cert else {
                return Err(connect_error("https:// needs a CA certificate (--ca-cert or $SAGALOG_CA_CERT)".into()));
            };
            let pem = std::fs::read(path).map_err(|source| Error::CaCert { path: path.clone(), source })?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).with_enabled_roots();
            endpoint = endpoint.tls_config(tls).map_err(|e| connect_error(format!("TLS setup failed: {e}")))?;
        } else if !url.starts_with("http://") {
            return Err(connect_error("the URL must start with http:// or https://".into()));
        }
        // A server that is still starting refuses connections for a moment: try again until
        // the connect timeout, so that a script may start the server and call it right away.
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) if tokio::time::Instant::now() < deadline && is_refused(&e) => {
                    tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
                }
                Err(e) => return Err(connect_error(error_chain(&e))),
            }
        };
        Ok(Client {
            sagas: SagasClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminClient::with_interceptor(channel.clone(), bearer.clone()),
            workers: WorkersClient::with_interceptor(channel, bearer),
            url,
        })
    }

    /// The server's URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn call_error(&self, status: tonic::Status) -> Error {
        status_error(&self.url, status)
    }

    /// Submits a saga; returns whether this call created it, and its state.
    pub async fn submit(&self, saga: &SagaDefinition) -> Result<(bool, pb::Saga), Error> {
        let response =
            self.sagas.clone().submit(submit_request(saga)).await.map_err(|e| self.call_error(e))?.into_inner();
        let state = response.saga.ok_or_else(|| Error::Protocol("Submit answered without a saga".into()))?;
        Ok((response.created, state))
    }

    pub async fn get(&self, saga_id: &str) -> Result<pb::Saga, Error> {
        Ok(self
            .sagas
            .clone()
            .get(pb::GetRequest { saga_id: saga_id.to_owned() })
            .await
            .map_err(|e| self.call_error(e))?
            .into_inner())
    }

    /// One `Watch` stream: states with a version above `after_version`, ending after the
    /// first terminal one (or when the connection breaks: see [`Client::watch_until_terminal`]).
    pub async fn watch(&self, saga_id: &str, after_version: u64) -> Result<SagaStream, Error> {
        let request = pb::WatchRequest { saga_id: saga_id.to_owned(), after_version };
        let stream = self.sagas.clone().watch(request).await.map_err(|e| self.call_error(e))?.into_inner();
        let url = self.url.clone();
        Ok(Box::pin(stream.map(move |item| item.map_err(|status| status_error(&url, status)))))
    }

    /// Follows a saga until it is COMPLETED or COMPENSATED, calling `on_state` for every
    /// state seen (in version order, each once). Reconnects after a broken stream or an
    /// UNAVAILABLE answer, resuming after the last seen version, so no change is missed.
    ///
    /// `after_version` is the version of the last state the caller saw; if that state was
    /// terminal already (a Submit answered after the saga finished), there is nothing left to
    /// watch: check it first ([`is_terminal`]), or the watch waits for a change that never
    /// comes and gives up after its retries.
    pub async fn watch_until_terminal(
        &self,
        saga_id: &str,
        after_version: u64,
        retry: WatchRetry,
        on_state: impl FnMut(&pb::Saga),
    ) -> Result<pb::Saga, Error> {
        self.watch_until(saga_id, after_version, retry, is_terminal, on_state).await
    }

    /// Like [`Client::watch_until_terminal`], but also stops at STUCK (a saga that waits for
    /// an operator, which may take any time).
    pub async fn watch_until_settled(
        &self,
        saga_id: &str,
        after_version: u64,
        retry: WatchRetry,
        on_state: impl FnMut(&pb::Saga),
    ) -> Result<pb::Saga, Error> {
        self.watch_until(saga_id, after_version, retry, is_settled, on_state).await
    }

    async fn watch_until(
        &self,
        saga_id: &str,
        after_version: u64,
        retry: WatchRetry,
        stop: fn(&pb::Saga) -> bool,
        mut on_state: impl FnMut(&pb::Saga),
    ) -> Result<pb::Saga, Error> {
        let mut last_version = after_version;
        let mut seen_any = false;
        let mut failures = 0u32;
        loop {
            let broken = match self.watch(saga_id, last_version).await {
                Ok(mut stream) => loop {
                    match stream.next().await {
                        Some(Ok(state)) => {
                            // The server only sends higher versions; skip anything else rather
                            // than report a change twice (and do not count it as progress).
                            if seen_any && state.version <= last_version {
                                continue;
                            }
                            failures = 0;
                            seen_any = true;
                            last_version = state.version;
                            on_state(&state);
                            if stop(&state) {
                                return Ok(state);
                            }
                        }
                        Some(Err(e)) => break e,
                        None => break Error::Status { code: Code::Unavailable, message: "stream ended early".into() },
                    }
                },
                Err(e) => e,
            };
            if !broken.is_retryable() {
                return Err(broken);
            }
            failures += 1;
            if failures > retry.attempts_max {
                return Err(Error::WatchGaveUp {
                    saga_id: saga_id.to_owned(),
                    url: self.url.clone(),
                    attempts: retry.attempts_max,
                    last: Box::new(broken),
                });
            }
            tracing::debug!(saga_id, last_version, failures, error = %broken, "watch: reconnecting");
            tokio::time::sleep(retry.backoff(failures)).await;
        }
    }

    /// One page of sagas and the token of the next one (empty: last page).
    pub async fn list(&self, filter: &ListFilter, page_token: &str) -> Result<(Vec<pb::Saga>, String), Error> {
        let request = pb::ListRequest {
            status: filter.statuses.iter().map(|s| *s as i32).collect(),
            since_ms: filter.since_ms,
            until_ms: filter.until_ms,
            page_size: filter.page_size,
            page_token: page_token.to_owned(),
        };
        let response = self.sagas.clone().list(request).await.map_err(|e| self.call_error(e))?.into_inner();
        Ok((response.sagas, response.next_page_token))
    }

    /// Every saga matching `filter`, all pages.
    pub async fn list_all(&self, filter: &ListFilter) -> Result<Vec<pb::Saga>, Error> {
        let mut all = Vec::new();
        let mut token = String::new();
        for _ in 0..LIST_PAGES_MAX {
            let (page, next) = self.list(filter, &token).await?;
            all.extend(page);
            if next.is_empty() {
                return Ok(all);
            }
            if next == token {
                return Err(Error::Protocol(format!("List handed out the same page token twice ({next:?})")));
            }
            token = next;
        }
        Err(Error::Protocol(format!("List did not end after {LIST_PAGES_MAX} pages")))
    }

    /// The server's action catalog (`Sagas.ListActions`), sorted by name.
    pub async fn list_actions(&self) -> Result<Vec<pb::Action>, Error> {
        let reply = self.sagas.clone().list_actions(pb::ListActionsRequest {}).await.map_err(|e| self.call_error(e))?;
        Ok(reply.into_inner().actions)
    }

    pub async fn cancel(&self, saga_id: &str) -> Result<pb::Saga, Error> {
        Ok(self
            .sagas
            .clone()
            .cancel(pb::CancelRequest { saga_id: saga_id.to_owned() })
            .await
            .map_err(|e| self.call_error(e))?
            .into_inner())
    }

    pub async fn recover(&self) -> Result<pb::RecoverResponse, Error> {
        Ok(self.admin.clone().recover(pb::RecoverRequest {}).await.map_err(|e| self.call_error(e))?.into_inner())
    }

    pub async fn reset_breaker(&self, participant: &str) -> Result<pb::ResetBreakerResponse, Error> {
        let request = pb::ResetBreakerRequest { participant: participant.to_owned() };
        Ok(self.admin.clone().reset_breaker(request).await.map_err(|e| self.call_error(e))?.into_inner())
    }

    pub async fn participants(&self) -> Result<Vec<pb::Participant>, Error> {
        Ok(self
            .admin
            .clone()
            .participants(pb::ParticipantsRequest {})
            .await
            .map_err(|e| self.call_error(e))?
            .into_inner()
            .participants)
    }

    /// Every worker queue: workers seen, tasks waiting and in flight, breaker state.
    pub async fn queues(&self) -> Result<Vec<pb::QueueStatus>, Error> {
        Ok(self.admin.clone().queues(pb::QueuesRequest {}).await.map_err(|e| self.call_error(e))?.into_inner().queues)
    }

    /// `Workers.Poll`: up to `max_tasks` tasks of `queue`, waiting up to `wait` for the first.
    pub async fn poll(
        &self,
        queue: &str,
        worker_id: &str,
        max_tasks: u32,
        wait: Duration,
    ) -> Result<Vec<pb::Task>, Error> {
        let request = pb::PollRequest {
            queue: queue.to_owned(),
            worker_id: worker_id.to_owned(),
            max_tasks,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        Ok(self.workers.clone().poll(request).await.map_err(|e| self.call_error(e))?.into_inner().tasks)
    }

    /// `Workers.Complete`: returns once the step's success is durable.
    pub async fn complete(
        &self,
        task_token: &str,
        output: std::collections::HashMap<String, pb::Value>,
    ) -> Result<(), Error> {
        let request = pb::CompleteRequest { task_token: task_token.to_owned(), output };
        self.workers.clone().complete(request).await.map_err(|e| self.call_error(e))?;
        Ok(())
    }

    /// `Workers.Fail`: returns once the failure is durable.
    pub async fn fail(&self, task_token: &str, error: &str, retryable: bool) -> Result<(), Error> {
        let request = pb::FailRequest { task_token: task_token.to_owned(), error: error.to_owned(), retryable };
        self.workers.clone().fail(request).await.map_err(|e| self.call_error(e))?;
        Ok(())
    }

    /// `Workers.Heartbeat`: extends the lease; true when the saga was cancelled.
    pub async fn heartbeat(&self, task_token: &str) -> Result<bool, Error> {
        let request = pb::HeartbeatRequest { task_token: task_token.to_owned() };
        Ok(self.workers.clone().heartbeat(request).await.map_err(|e| self.call_error(e))?.into_inner().cancel_requested)
    }

    pub async fn stats(&self) -> Result<pb::StatsResponse, Error> {
        Ok(self.admin.clone().stats(pb::StatsRequest {}).await.map_err(|e| self.call_error(e))?.into_inner())
    }

    /// An operator's decision on a STUCK saga; `operator` empty means the token's name.
    pub async fn resolve(
        &self,
        saga_id: &str,
        decision: pb::ResolveDecision,
        operator: Option<&str>,
    ) -> Result<pb::Saga, Error> {
        let request = pb::ResolveRequest {
            saga_id: saga_id.to_owned(),
            decision: decision as i32,
            operator: operator.unwrap_or_default().to_owned(),
        };
        Ok(self.admin.clone().resolve(request).await.map_err(|e| self.call_error(e))?.into_inner())
    }
}

/// A transport error with its causes ("tcp connect error: Connection refused").
/// Whether a connect failed because nothing listens yet (connection refused), somewhere in its
/// chain of causes.
fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        cause = e.source();
    }
    false
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Conversions. Free functions rather than `From` impls, so that the server's own conversions in
// `api/` can never collide with these.

pub use crate::api::json::{
    STATUS_NAMES, is_settled, is_terminal, parse_status, rfc3339_ms, saga_status, status_name, step_state_name,
};

pub use crate::api::convert::{step_from_pb, step_to_pb, submit_request, value_from_pb, value_to_pb};

/// `Err` names the step and parameter that has no value.
pub fn saga_from_request(request: &pb::SubmitRequest) -> Result<SagaDefinition, String> {
    let steps = request
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| step_from_pb(step).map_err(|e| format!("step {i}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(SagaDefinition { id: request.saga_id.clone(), steps })
}

pub use crate::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Value;

    fn sample() -> SagaDefinition {
        crate::cli::demo::demo_saga("s-1", "r-1", 42)
    }

    /// A saga survives the trip to the protobuf request and back, every value kind included.
    #[test]
    fn saga_round_trips_through_the_request() {
        let mut saga = sample();
        let params = &mut saga.steps[0].params;
        params.insert("n".into(), Value::Null);
        params.insert("b".into(), Value::Bool(true));
        params.insert("f".into(), Value::Float(1.5));
        params.insert("x".into(), Value::Bytes(vec![0, 255]));
        let request = submit_request(&saga);
        assert_eq!(request.saga_id, "s-1");
        assert_eq!(request.steps.len(), 4);
        assert_eq!(saga_from_request(&request).unwrap(), saga);
    }

    /// A parameter without a kind is named in the error.
    #[test]
    fn value_without_kind_is_refused_with_its_name() {
        let mut request = submit_request(&sample());
        request.steps[1].params.insert("rows".into(), pb::Value { kind: None });
        assert_eq!(saga_from_request(&request).unwrap_err(), "step 1: parameter \"rows\" has no value");
    }

    /// Status names round-trip, case-insensitively; anything else is refused.
    #[test]
    fn status_names_round_trip() {
        for name in STATUS_NAMES {
            let status = parse_status(name).unwrap();
            assert_eq!(status_name(status), name);
            assert_eq!(status.as_str_name(), name, "the proto spells them the same");
            assert_eq!(status_from_pb(status).unwrap().as_str(), name);
            assert_eq!(status_to_pb(status_from_pb(status).unwrap()), status);
        }
        assert_eq!(parse_status(" compensated "), Some(pb::SagaStatus::Compensated));
        assert_eq!(parse_status("DONE"), None);
        assert_eq!(parse_status("SAGA_STATUS_UNSPECIFIED"), None);
        assert_eq!(status_from_pb(pb::SagaStatus::Unspecified), None);
    }

    /// Terminal means COMPLETED or COMPENSATED; settled adds STUCK.
    #[test]
    fn terminal_and_settled() {
        let saga = |s: pb::SagaStatus| pb::Saga { status: s as i32, ..Default::default() };
        assert!(is_terminal(&saga(pb::SagaStatus::Completed)) && is_terminal(&saga(pb::SagaStatus::Compensated)));
        assert!(!is_terminal(&saga(pb::SagaStatus::Stuck)) && is_settled(&saga(pb::SagaStatus::Stuck)));
        assert!(!is_settled(&saga(pb::SagaStatus::Running)) && !is_settled(&saga(pb::SagaStatus::Compensating)));
        assert_eq!(saga_status(&pb::Saga { status: 99, ..Default::default() }), pb::SagaStatus::Unspecified);
    }

    /// Back-off doubles from the initial value up to the cap, without overflowing.
    #[test]
    fn watch_backoff_doubles_and_caps() {
        let r = WatchRetry::default();
        assert_eq!(r.backoff(1), Duration::from_millis(100));
        assert_eq!(r.backoff(2), Duration::from_millis(200));
        assert_eq!(r.backoff(4), Duration::from_millis(800));
        assert_eq!(r.backoff(10), Duration::from_secs(5));
        assert_eq!(r.backoff(200), Duration::from_secs(5));
    }

    /// Errors keep the code and message; transport failures are not refusals.
    #[test]
    fn errors_keep_code_and_message() {
        let e = Error::from(tonic::Status::not_found("no saga \"x\""));
        assert_eq!(e.to_string(), "NOT_FOUND: no saga \"x\"");
        assert_eq!(e.code(), Some(Code::NotFound));
        assert!(e.is_refusal());
        assert!(is_transport_message("error trying to connect: tcp connect error: Connection refused"));
        assert!(!is_transport_message("the journal is poisoned"));
        let shutting_down = Error::from(tonic::Status::unavailable("the server is shutting down"));
        assert!(shutting_down.is_refusal() && shutting_down.is_retryable());
        let c = Error::Connect { url: "http://127.0.0.1:1".into(), reason: "refused".into() };
        assert_eq!(c.to_string(), "cannot connect to http://127.0.0.1:1: refused");
        assert!(!c.is_refusal());
    }

    /// A call that fails in the transport is a connection problem naming the URL (with a
    /// hint for plaintext against a TLS port); the server's own errors stay refusals.
    #[test]
    fn transport_failures_on_calls_name_the_url() {
        let plain = status_error("http://h:1", tonic::Status::unknown("transport error"));
        assert_eq!(
            plain.to_string(),
            "cannot connect to http://h:1: transport error (if the server uses TLS, use https:// and --ca-cert)"
        );
        let gone =
            status_error("https://h:1", tonic::Status::unavailable("error trying to connect: tcp connect error"));
        assert!(matches!(&gone, Error::Connect { url, .. } if url == "https://h:1") && gone.is_retryable());
        let own = status_error("http://h:1", tonic::Status::unknown("something else"));
        assert!(own.is_refusal());
    }

    /// Bad addresses are refused before any network traffic, naming the URL.
    #[tokio::test]
    async fn bad_urls_name_the_url() {
        // `host:port` alone means http:// (issue 14); another scheme is refused, named.
        let e = Client::connect(ClientOptions::new("ftp://127.0.0.1:50051")).await.err().unwrap();
        assert!(e.to_string().starts_with("cannot connect to ftp://127.0.0.1:50051:"), "{e}");
        let e = Client::connect(ClientOptions::new("https://127.0.0.1:50051")).await.err().unwrap();
        assert!(e.to_string().contains("needs a CA certificate"), "{e}");
        let mut options = ClientOptions::new("https://127.0.0.1:50051");
        options.ca_cert = Some("/nonexistent/ca.pem".into());
        let e = Client::connect(options).await.err().unwrap();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let mut options = ClientOptions::new("http://127.0.0.1:1");
        options.token = Some("caf\u{e9}".into());
        assert!(matches!(Client::connect(options).await, Err(Error::BadToken(_))));
    }

    /// An unreachable server is reported at connect, naming the URL.
    #[tokio::test]
    async fn unreachable_server_names_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let e = Client::connect(ClientOptions::new(url.clone())).await.err().unwrap();
        assert!(matches!(&e, Error::Connect { url: u, .. } if *u == url), "{e}");
        assert!(e.to_string().contains(&url), "{e}");
    }

    /// Times print as RFC 3339 with milliseconds; 0 is "not yet".
    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339_ms(0), None);
        assert_eq!(rfc3339_ms(1_700_000_000_123).as_deref(), Some("2023-11-14T22:13:20.123Z"));
    }
}
