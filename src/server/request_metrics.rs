//! Request counters and latencies for both ports: a tower layer around the gRPC services and
//! an axum middleware on the HTTP port, recording into `crate::metrics`.
//!
//! Labels stay bounded whatever clients send: a gRPC method outside sagalog's and the standard
//! services is counted as `unknown`, an HTTP path no route matches as `unmatched`. Latency is
//! the time to the response headers, which for a `Watch` stream or an event stream is the
//! time to its start, not its life.
//!
//! Never does: look at or change a request or response beyond its headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// gRPC method paths counted under their own name; others are `unknown`.
const GRPC_PREFIXES: [&str; 3] = ["/sagalog.v1.", "/grpc.health.v1.", "/grpc.reflection."];

/// The gRPC code of a response: a trailers-only answer (every error tonic returns before a
/// body) carries `grpc-status` in its headers; a response with a body ends with it in its
/// trailers, which for sagalog's unary calls means OK, and for a stream means it started.
fn grpc_code(headers: &axum::http::HeaderMap) -> &'static str {
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
    match code {
        None | Some(0) => "OK",
        Some(n) => crate::api::json::code_name(tonic::Code::from_i32(n)),
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> <Self as tower::Service<axum::http::Request<B>>>::Future {
        let path = request.uri().path();
        let method = if GRPC_PREFIXES.iter().any(|p| path.starts_with(p)) { path.to_owned() } else { "unknown".into() };
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let answer = future.await;
            let code = match &answer {
                Ok(response) => grpc_code(response.headers()),
                Err(_) => "UNAVAILABLE",
            };
            let metrics = crate::metrics::get();
            metrics
                .grpc_requests
                .get_or_create(&vec![("method".into(), method.clone()), ("code".into(), code.into())])
                .inc();
            metrics
                .grpc_duration
                .get_or_create(&vec![("method".into(), method)])
                .observe(started.elapsed().as_secs_f64());
            answer
        })
    }
}

/// The HTTP port's middleware (`axum::middleware::from_fn(track_http)`).
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = crate::metrics::get();
    let code = response.status().as_u16().to_string();
    metrics
        .http_requests
        .get_or_create(&vec![("route".into(), route.clone()), ("method".into(), method.clone()), ("code".into(), code)])
        .inc();
    metrics
        .http_duration
        .get_or_create(&vec![("route".into(), route), ("method".into(), method)])
        .observe(started.elapsed().as_secs_f64());
    response
}
