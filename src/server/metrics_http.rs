//! The Prometheus endpoint: `GET /metrics` on `[server] metrics_listen`, plain HTTP/1.1. The
//! same port serves the demo notifier (`/demo/notifications`, see `demo_notifier`) when
//! `[server] demo_notifier` configures one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::config::parse_addr;
use super::demo_notifier::Notifier;
use super::error::Error;
use crate::engine::Status;
use crate::executor::Executor;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the metrics (and the demo notifier, if given) on `bound`, or else on `listen` bound
/// here, until the task is aborted.
pub async fn start(
    listen: &str,
    bound: Option<TcpListener>,
    executor: Executor,
    notifier: Option<Arc<Notifier>>,
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
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    // No Nagle stall on a scrape's response (see the gRPC listener).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "metrics endpoint: cannot set TCP_NODELAY");
                    }
                    stream
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let executor = executor.clone();
            let notifier = notifier.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (executor, notifier) = (executor.clone(), notifier.clone());
                    async move {
                        let response = match notifier {
                            Some(notifier) if Notifier::owns(request.uri().path()) => notifier.respond(request).await,
                            _ => respond(&request, &executor),
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((local, task))
}

fn respond(request: &Request<Incoming>, executor: &Executor) -> Response<Full<Bytes>> {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not found: metrics are at GET /metrics\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    refresh_gauges(executor);
    let mut response = Response::new(Full::new(Bytes::from(crate::metrics::get().encode())));
    if let Ok(value) = CONTENT_TYPE.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
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
    for (participant, state) in executor.breakers() {
        let value = match state {
            "open" => 2,
            "half-open" => 1,
            _ => 0,
        };
        metrics.breaker_state.get_or_create(&vec![("participant".to_owned(), participant)]).set(value);
    }
}
