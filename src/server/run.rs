//! Starting and stopping the server around a [`Node`].
//!
//! Shutdown order (SIGTERM, or [`Running::shutdown`]):
//! 1. health turns NOT_SERVING, new submits get UNAVAILABLE, open `Watch` streams end with
//!    UNAVAILABLE (clients reconnect elsewhere with their last version);
//! 2. the executor starts no new step and waits up to `shutdown_grace_ms` for the participant
//!    calls under way, journaling their outcomes;
//! 3. the gRPC server stops (calls in progress finish);
//! 4. the node flushes the index and syncs and closes the journal.
//!
//! While it serves, each participant's reachability is published in the health service as
//! `sagalog.participant.<name>` (`participant_health.rs`): one that cannot be reached makes the
//! server degraded, not down.
//!
//! Whatever is unfinished stays journaled; the next start's recovery resumes it.
//!
//! A poisoned journal (a write or fsync failed, a full disk is enough) never heals in process:
//! within moments health turns NOT_SERVING and open `Watch` streams end with UNAVAILABLE naming
//! the poisoning (a task started here watches for it), and `sagalog serve` then exits non-zero
//! through [`Running::stop_poisoned`] so that a supervisor restarts it: recovery from disk is
//! the cure. The server never sits refusing every submit while looking alive.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use super::auth::Auth;
use super::config::{Anonymous, Role, ServerConfig, parse_addr};
use super::error::Error;
use super::http_api::{HttpApi, Reachability};
use super::service::Api;
use crate::api::pb;
use crate::node::Node;

/// A server that is up.
pub struct Running {
    /// Where gRPC listens (the real port when the config said port 0).
    pub addr: SocketAddr,
    /// Where `/metrics` is served, if configured.
    pub metrics_addr: Option<SocketAddr>,
    node: Node,
    stopping: watch::Sender<bool>,
    health: tonic_health::server::HealthReporter,
    stop_grpc: Option<oneshot::Sender<()>>,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    metrics: Option<JoinHandle<()>>,
    /// Turns health NOT_SERVING and ends watches once the journal is poisoned.
    poison_watch: JoinHandle<()>,
    /// Publishes each participant's health (`participant_health.rs`).
    participant_health: JoinHandle<()>,
    grace: Duration,
}

/// Serves `node` with `config` (its `[server]` block, `listen` possibly overridden).
pub async fn start(node: Node, data_dir: &Path, config: ServerConfig) -> Result<Running, Error> {
    config.check().map_err(Error::Config)?;
    let listen = parse_addr("server.listen", &config.listen).map_err(Error::Config)?;
    match config.anonymous {
        Anonymous::Off => {}
        mode => tracing::warn!(
            role = mode.role().map_or("", Role::as_str),
            listen = %listen,
            "ANONYMOUS MODE: calls without a token are accepted (server.anonymous); add [[server.tokens]] and set anonymous = \"off\" for anything but a local demo"
        ),
    }
    let listener = TcpListener::bind(listen).await.map_err(|source| Error::Listen {
        addr: config.listen.clone(),
        what: "gRPC",
        source,
    })?;
    let addr =
        listener.local_addr().map_err(|source| Error::Listen { addr: config.listen.clone(), what: "gRPC", source })?;
    let (stopping, stopping_rx) = watch::channel(false);
    let api = Api {
        executor: node.executor.clone(),
        catalog: node.catalog.clone(),
        index: node.index.clone(),
        submits: Arc::new(Semaphore::new(config.max_pending_submits as usize)),
        max_pending_submits: config.max_pending_submits,
        max_message_bytes: config.max_message_bytes,
        stopping: stopping_rx,
        queues: super::workers::Queues::of(&node.executor, node.catalog.config.participants.keys().cloned()),
    };
    // The HTTP port before the probes: the demo notifier on it is a participant the first
    // health probe asks.
    let mut node = node;
    let bound = node.http_listener.take();
    let reachability = Reachability::default();
    let http_api = HttpApi::new(api.clone(), &config, reachability.clone());
    let (metrics_addr, metrics) =
        match start_http_port(&node.executor, data_dir, &config, bound, Some(http_api)).await? {
            Some((addr, task)) => (Some(addr), Some(task)),
            None => (None, None),
        };

    let workers_api = super::workers::WorkersApi { executor: node.executor.clone(), queues: api.queues.clone() };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::sagas_server::SagasServer<Api>>().await;
    health.set_serving::<pb::admin_server::AdminServer<Api>>().await;
    health.set_serving::<pb::workers_server::WorkersServer<super::workers::WorkersApi>>().await;
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let poison_watch = {
        let (journal, health, stopping) = (node.journal.clone(), health.clone(), stopping.clone());
        tokio::spawn(async move {
            let cause = journal.wait_poisoned().await;
            set_not_serving(&health).await;
            let _ = stopping.send(true);
            tracing::error!(error = %cause, "journal poisoned: health NOT_SERVING, watches ended; the server exits, a restart recovers from disk");
        })
    };
    let participant_health = super::participant_health::spawn(
        node.executor.clone(),
        node.catalog.config.participants.keys().cloned().collect(),
        health.clone(),
        reachability,
    );
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let sagas = pb::sagas_server::SagasServer::new(api.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    let admin = pb::admin_server::AdminServer::new(api).max_decoding_message_size(config.max_message_bytes);
    let workers = pb::workers_server::WorkersServer::new(workers_api)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(usize::MAX);

    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls_config(data_dir, &tls.cert, &tls.key)?)?;
    }
    let router = builder
        .layer(super::request_metrics::GrpcMetricsLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(sagas, Auth::new(&config, Role::Client)))
        .add_service(tonic::service::interceptor::InterceptedService::new(admin, Auth::new(&config, Role::Admin)))
        .add_service(tonic::service::interceptor::InterceptedService::new(workers, Auth::new(&config, Role::Worker)));
    let (stop_grpc, stop_rx) = oneshot::channel::<()>();
    // TCP_NODELAY on every accepted socket: without it Nagle's algorithm holds a response's
    // last small write until the client's delayed ACK, a ~40 ms stall per call.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let grpc = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    }));

    tracing::info!(%addr, tls = config.tls.is_some(), metrics = metrics_addr.map(|a| a.to_string()).unwrap_or_default(), "serving gRPC");
    Ok(Running {
        addr,
        metrics_addr,
        node,
        stopping,
        health,
        stop_grpc: Some(stop_grpc),
        grpc: Some(grpc),
        metrics,
        poison_watch,
        participant_health,
        grace: Duration::from_millis(config.shutdown_grace_ms),
    })
}

/// Serves the HTTP port (`[server] metrics_listen`: `/metrics`, and the demo notifier when
/// `[server] demo_notifier` names its database, relative to `data_dir`), if configured: on
/// `bound` (a node's [`Node::http_listener`]) when given, else on a listener bound here. The
/// offline tools serve it without the API (`replay` runs the demo notifier's steps).
pub async fn start_http(
    executor: &crate::executor::Executor,
    data_dir: &Path,
    config: &ServerConfig,
    bound: Option<TcpListener>,
) -> Result<Option<(std::net::SocketAddr, JoinHandle<()>)>, Error> {
    start_http_port(executor, data_dir, config, bound, None).await
}

async fn start_http_port(
    executor: &crate::executor::Executor,
    data_dir: &Path,
    config: &ServerConfig,
    bound: Option<TcpListener>,
    api: Option<HttpApi>,
) -> Result<Option<(std::net::SocketAddr, JoinHandle<()>)>, Error> {
    if config.metrics_listen.is_empty() {
        return Ok(None);
    }
    let notifier = if config.demo_notifier.is_empty() {
        None
    } else {
        let notifier =
            super::demo_notifier::Notifier::open(&data_dir.join(&config.demo_notifier)).map_err(Error::Config)?;
        Some(Arc::new(notifier))
    };
    super::metrics_http::start(&config.metrics_listen, bound, executor.clone(), notifier, api).await.map(Some)
}

async fn set_not_serving(health: &tonic_health::server::HealthReporter) {
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    health.set_not_serving::<pb::sagas_server::SagasServer<Api>>().await;
    health.set_not_serving::<pb::admin_server::AdminServer<Api>>().await;
    health.set_not_serving::<pb::workers_server::WorkersServer<super::workers::WorkersApi>>().await;
}

fn tls_config(data_dir: &Path, cert: &str, key: &str) -> Result<ServerTlsConfig, Error> {
    let read = |p: &str| {
        let path = data_dir.join(p);
        std::fs::read(&path).map_err(|source| Error::TlsFile { path, source })
    };
    let (cert, key) = (read(cert)?, read(key)?);
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}

impl Running {
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Resolves when the gRPC server task ended by itself (it failed).
    pub async fn failed(&mut self) -> Result<(), Error> {
        let Some(task) = self.grpc.as_mut() else { return std::future::pending().await };
        let ended = task.await;
        self.grpc = None;
        match ended {
            Ok(result) => result.map_err(Error::from),
            Err(e) => Err(Error::Config(format!("gRPC server task ended: {e}"))),
        }
    }

    /// The graceful shutdown described in the module docs. Returns the number of participant
    /// calls still running when the grace period ran out (0 normally).
    ///
    /// A journal poisoned before or during the shutdown is reported as the error.
    pub async fn shutdown(mut self) -> Result<usize, Error> {
        self.poison_watch.abort();
        self.participant_health.abort();
        let _ = self.stopping.send(true);
        set_not_serving(&self.health).await;
        let unfinished_calls = self.node.executor.drain(self.grace).await;
        if unfinished_calls > 0 {
            tracing::warn!(
                calls = unfinished_calls,
                "shutdown: participant calls still running after the grace period; recovery settles them by marker"
            );
        }
        if let Some(stop) = self.stop_grpc.take() {
            let _ = stop.send(());
        }
        if let Some(grpc) = self.grpc.take() {
            match tokio::time::timeout(Duration::from_secs(5), grpc).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
                Err(_) => tracing::warn!("gRPC calls still open after 5 s; closing"),
                _ => {}
            }
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.abort();
        }
        self.node.shutdown().await?;
        Ok(unfinished_calls)
    }

    /// Stops at once after the journal was poisoned (see the module docs): health is already
    /// NOT_SERVING and watches ended; the gRPC server gets a moment to deliver those endings,
    /// participant calls under way are not waited for (their outcomes could not be journaled;
    /// recovery settles them by marker), and the journal is closed, releasing the data
    /// directory. Returns the error to exit with, which names the poisoning.
    pub async fn stop_poisoned(mut self) -> Error {
        self.poison_watch.abort();
        self.participant_health.abort();
        let _ = self.stopping.send(true);
        set_not_serving(&self.health).await;
        if let Some(stop) = self.stop_grpc.take() {
            let _ = stop.send(());
        }
        if let Some(grpc) = self.grpc.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), grpc).await;
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.abort();
        }
        match self.node.shutdown().await {
            Err(e) => Error::Node(e),
            Ok(()) => Error::Node(crate::node::Error::Journal(crate::journal::Error::Poisoned {
                cause: self.node.journal.poisoned().unwrap_or("unknown").to_owned(),
            })),
        }
    }
}
