//! `sagalog serve [--config F] [--data-dir D]`: run the engine until SIGINT or SIGTERM.
//!
//! Starting recovers whatever a previous run left unfinished. The gRPC API that lets clients
//! submit sagas arrives with issue 4; until then sagas come from embedding applications (see
//! `sagalog::node::Node`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::node::Node;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (default: D/sagalog.toml, created from the embedded default).
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// Data directory: journal, index and (for the embedded default) the demo databases.
    #[arg(long, value_name = "D", default_value = "./sagalog-data")]
    data_dir: PathBuf,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut node = Node::start(&args.data_dir, args.config.as_deref()).await?;
        let r = &node.recovery;
        eprintln!(
            "sagalog serving {} (config {}): recovered {} sagas from {} journal records, {} unfinished resumed, in {} ms",
            args.data_dir.display(),
            node.config_path.display(),
            r.sagas,
            r.records,
            r.unfinished,
            r.duration.as_millis()
        );
        wait_for_signal().await?;
        eprintln!("sagalog: shutting down (syncing the journal)");
        node.shutdown().await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
