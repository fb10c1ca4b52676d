//! Why the server cannot start or stopped: one error type shared by the gRPC listener
//! (`run`) and the metrics endpoint (`metrics_http`), so neither imports the other.

use std::path::PathBuf;

use crate::node;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Node(#[from] node::Error),
    #[error("config: {0}")]
    Config(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen { addr: String, what: &'static str, source: std::io::Error },
    #[error("TLS: cannot read {path}: {source}")]
    TlsFile { path: PathBuf, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}
