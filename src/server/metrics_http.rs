//! The server's HTTP port (`[server] metrics_listen`): `GET /metrics` (the Prometheus text
//! format 0.0.4, or OpenMetrics 1.0 when the scraper's `Accept` asks for it), the HTTP/JSON API
//! and probes of `http_api.rs` when a server runs, and the demo notifier (`/demo/notifications`,
//! see `demo_notifier`) when `[server] demo_notifier` configures one. HTTP/1.1, with
//! `TCP_NODELAY` on every connection.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::config::parse_addr;
use super::demo_notifier::Notifier;
use super::error::Error;
use super::http_api::HttpApi;
use crate::engine::Status;
use crate::executor::Executor;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the port on `bound`, or else on `listen` bound here, until the task is aborted:
/// `/metrics`, the API when `api` is given, the demo notifier when `notifier` is.
pub async fn start(
    listen: &str,
    bound: Option<TcpListener>,
    executor: Executor,
    notifier: Option<Arc<Notifier>>,
    api: Option<HttpApi>,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    let listen_error = |source| Error::Listen { addr: listen.to_owned(), what: "metrics", source };
    let listener = match bound {
        Some(listener) => listener,
        None => {
            let addr = parse_addr("server.metrics_listen", listen).map_err(Error::Config)?;
            TcpListener::bind(addr).await.map_err(listen_error)?
        }
    };
    let local = listener.local_addr().map_err(listen_error)?;
    let mut router =
        Router::new().route("/metrics", get(move |headers: HeaderMap| async move { metrics(&headers, &executor) }));
    if let Some(api) = api {
        router = router.merge(api.router());
    }
    let router = router.fallback(move |request: Request| {
        let notifier = notifier.clone();
        async move {
            match notifier {
                Some(notifier) if Notifier::owns(request.uri().path()) => {
                    notifier.respond(request).await.map(axum::body::Body::new).into_response()
                }
                _ => not_found(&request),
            }
        }
    });
    let router = router.layer(axum::middleware::from_fn(super::request_metrics::track_http));
    // No Nagle stall on a response's last small write (see the gRPC listener).
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "HTTP port: cannot set TCP_NODELAY");
        }
    });
    let task = tokio::spawn(async move {
        // axum's accept loop backs off on accept errors (out of file descriptors and the like).
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP port: the server ended");
        }
    });
    Ok((local, task))
}

fn not_found(request: &Request) -> Response {
    let message = format!(
        "no route {} {}: see GET /v1/openapi.json for the API; metrics are at GET /metrics",
        request.method(),
        request.uri().path()
    );
    super::http_api::ApiError::from(tonic::Status::not_found(message)).into_response()
}

/// `GET /metrics`: OpenMetrics when the `Accept` header names it, else text 0.0.4.
fn metrics(headers: &HeaderMap, executor: &Executor) -> Response {
    refresh_gauges(executor);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let metrics = crate::metrics::get();
    if accept.contains("application/openmetrics-text") {
        ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.encode()).into_response()
    } else {
        ([(header::CONTENT_TYPE, TEXT_004)], metrics.encode_text()).into_response()
    }
}

/// The gauges that describe current state, taken right before a scrape.
fn refresh_gauges(executor: &Executor) {
    let metrics = crate::metrics::get();
    let counts = executor.status_counts();
    let archived = executor.archived_counts();
    let all =
        [Status::Pending, Status::Running, Status::Completed, Status::Compensating, Status::Compensated, Status::Stuck];
    for status in all {
        // In memory (running, waiting, finished and not yet archived) plus archived.
        let n = counts.get(&status).copied().unwrap_or(0) + archived.get(status.as_str()).copied().unwrap_or(0);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        metrics.sagas.get_or_create(&vec![("status".to_owned(), status.as_str().to_owned())]).set(n);
    }
    for (name, participant) in executor.participants() {
        if let Some((commits, steps)) = participant.group_commits() {
            let labels = vec![("participant".to_owned(), name.clone())];
            metrics.group_commits.get_or_create(&labels).inner().store(commits, std::sync::atomic::Ordering::Relaxed);
            metrics
                .group_commit_steps
                .get_or_create(&labels)
                .inner()
                .store(steps, std::sync::atomic::Ordering::Relaxed);
        }
    }
    for (participant, state) in executor.breakers() {
        let value = match state {
            "open" => 2,
            "half-open" => 1,
            _ => 0,
        };
        metrics.breaker_state.get_or_create(&vec![("participant".to_owned(), participant.clone())]).set(value);
        for each in ["closed", "half-open", "open"] {
            let labels = vec![("participant".to_owned(), participant.clone()), ("state".to_owned(), each.to_owned())];
            metrics.circuit_breaker_state.get_or_create(&labels).set(i64::from(each == state));
        }
    }
}
