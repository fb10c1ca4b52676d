//! `sagalog serve [--config F] [--data-dir D] [--listen ADDR]`: recover, then serve the gRPC
//! API until SIGINT or SIGTERM.
//!
//! The first signal shuts down gracefully (see `server::run`): no new submits, running steps
//! get `[server] shutdown_grace_ms` to finish, the journal is synced, exit 0. A second signal
//! exits at once with status 1; the next start's recovery finishes what was running.
//!
//! A poisoned journal (a write or fsync failed; a full disk is enough) makes `serve` exit at
//! once with status 2 and a message naming the poisoning, so that a supervisor restarts it:
//! recovery from disk is the cure (see `server::run`). A shutdown that finds the journal
//! poisoned exits 2 the same way.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::node::Node;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (default: D/sagalog.toml, created from the embedded default).
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// Data directory: journal, index and (for the embedded default) the demo databases.
    #[arg(long, value_name = "D", default_value = "./sagalog-data")]
    data_dir: PathBuf,
    /// gRPC listen address [default: the config's `server.listen`, else 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// HTTP listen address: the HTTP/JSON API, the web console, /metrics and the probes
    /// [default: the config's `server.http_listen` (also spelled `metrics_listen`); the
    /// embedded default uses 127.0.0.1:50052].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
}

/// The `server.log_format` of the config `serve` will load (`--config`, else the data
/// directory's `sagalog.toml`), read before logging starts; `None` when there is none or the
/// file does not parse (the real load reports that).
pub fn configured_log_format(args: &ServeArgs) -> Option<crate::config::LogFormat> {
    let path = args.config.clone().unwrap_or_else(|| args.data_dir.join("sagalog.toml"));
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let value = table.get("server")?.get("log_format")?.clone();
    value.try_into().ok()
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let node = Node::start(&args.data_dir, args.config.as_deref()).await?;
        let r = node.recovery.clone();
        let config_path = node.config_path.clone();
        let mut config = node.catalog.config.server.clone();
        if let Some(listen) = args.listen {
            config.listen = listen;
        }
        let mut node = node;
        if let Some(http) = args.http_listen
            && http != config.metrics_listen
        {
            // The port the config named was bound before recovery; serve the one asked for.
            node.http_listener = None;
            config.metrics_listen = http;
        }
        let mut running = crate::server::start(node, &args.data_dir, config).await?;
        eprintln!(
            "sagalog: serving gRPC on {}{} (data {}, config {}); recovered {} sagas from {} journal records, {} unfinished resumed, in {} ms",
            running.addr,
            running.metrics_addr.map(|a| format!(", console, HTTP API and metrics on http://{a}/")).unwrap_or_default(),
            args.data_dir.display(),
            config_path.display(),
            r.sagas,
            r.records,
            r.unfinished,
            r.duration.as_millis()
        );
        let journal = running.node().journal.clone();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            cause = journal.wait_poisoned() => {
                eprintln!("sagalog: the journal is poisoned ({cause}); exiting now: a restart recovers from disk");
                return Err(running.stop_poisoned().await.into());
            }
            failed = running.failed() => {
                failed?;
                anyhow::bail!("the gRPC server stopped unexpectedly");
            }
        }
        eprintln!("sagalog: shutting down: no new sagas; letting running steps finish (a second signal exits at once)");
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("sagalog: second signal: exiting now; the next start's recovery finishes running sagas");
            std::process::exit(1);
        });
        let unfinished = running.shutdown().await?;
        eprintln!("sagalog: stopped cleanly ({unfinished} participant calls left to recovery); journal synced");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
