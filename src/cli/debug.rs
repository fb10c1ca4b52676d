//! Hidden subcommands used by the test suite to drive a real process (crash tests kill it with
//! SIGKILL). Not part of the CLI contract; hidden from `--help`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Subcommand;

use crate::journal::{Journal, Options, SyncPolicy};
use crate::wal_format::RecordKind;

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Start a node (recovering first), then submit demo sagas forever from `concurrency`
    /// tasks, each waiting for its saga to settle before the next, printing
    /// `ack <saga-id> <expected-status>` once each submit is durable. Every 5th saga
    /// fails at step 1 and every 7th at step 0 (expected COMPENSATED).
    SagaLoad {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        concurrency: u64,
    },
    /// Start a node (recovering), wait until every saga is COMPLETED, COMPENSATED or STUCK,
    /// print `saga <id> <STATUS> <compensation reason or ->` for each, and exit.
    Settle {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Append records forever with `sync=always` from many tasks, printing `ack <lsn> <seed>` for
    /// each acknowledged append. The payload of a record is `crash_payload(seed, bytes)`.
    AppendLoop {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 8)]
        appenders: u64,
        #[arg(long, default_value_t = 200)]
        record_bytes: usize,
        #[arg(long, default_value_t = 64 * 1024)]
        segment_bytes: u64,
    },
}

/// The deterministic payload of the crash test's record number `seed`.
pub fn crash_payload(seed: u64, bytes: usize) -> Vec<u8> {
    seed.to_le_bytes().iter().copied().cycle().enumerate().map(|(i, b)| b ^ (i as u8)).take(bytes.max(8)).collect()
}

/// What the load generator's saga number `n` is expected to end as, and its row count.
pub fn load_plan(n: u64) -> (&'static str, i64) {
    if n.is_multiple_of(7) {
        ("COMPENSATED", -1)
    } else if n.is_multiple_of(5) {
        ("COMPENSATED", 2_000_000)
    } else {
        ("COMPLETED", n as i64)
    }
}

async fn saga_load(data_dir: PathBuf, config: Option<PathBuf>, concurrency: u64) -> anyhow::Result<()> {
    let mut node = crate::node::Node::start(&data_dir, config.as_deref()).await?;
    // The demo saga calls the notifier the server serves on its HTTP port: serve it here too.
    let bound = node.http_listener.take();
    let _http = crate::server::start_http(&node.executor, &data_dir, &node.catalog.config.server, bound).await?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let run = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let executor = node.executor.clone();
        let (out, run) = (out.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            for n in (task..).step_by(concurrency as usize) {
                let id = format!("load-{run}-{n}");
                let (expect, rows) = load_plan(n);
                executor.submit(crate::cli::demo::demo_saga(&id, &id, rows)).await?;
                {
                    let mut out = out.lock().map_err(|_| anyhow::anyhow!("stdout lock poisoned"))?;
                    writeln!(out, "ack {id} {expect}")?;
                    out.flush()?;
                }
                // Closed loop, like a client waiting for its saga: `concurrency` sagas in flight.
                executor.wait_settled(&id).await;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn settle(data_dir: PathBuf, config: Option<PathBuf>, timeout_secs: u64) -> anyhow::Result<ExitCode> {
    let mut node = crate::node::Node::start(&data_dir, config.as_deref()).await?;
    let bound = node.http_listener.take();
    let _http = crate::server::start_http(&node.executor, &data_dir, &node.catalog.config.server, bound).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
    loop {
        let all = node.executor.list();
        let settled = all.iter().all(|s| s.status.is_terminal() || s.status == crate::engine::Status::Stuck);
        if settled || tokio::time::Instant::now() >= deadline {
            for s in &all {
                let reason = s.saga.compensation_reason.as_deref().unwrap_or("-");
                println!("saga {} {} {reason}", s.saga.id, s.status.as_str());
            }
            let mut token: Option<String> = None;
            loop {
                let filter = crate::index::ListFilter::default();
                let (page, next) = node.index.list(&filter, token.as_deref(), 1000)?;
                for r in page {
                    println!("saga {} {} {}", r.id, r.status, r.compensation_reason.as_deref().unwrap_or("-"));
                }
                match next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            node.shutdown().await?;
            return Ok(if settled { ExitCode::SUCCESS } else { ExitCode::from(super::EXIT_CORRUPT) });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::SagaLoad { data_dir, config, concurrency } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(saga_load(data_dir, config, concurrency.max(1)))?;
            Ok(ExitCode::SUCCESS)
        }
        DebugCommand::Settle { data_dir, config, timeout_secs } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(settle(data_dir, config, timeout_secs))
        }
        DebugCommand::AppendLoop { data_dir, appenders, record_bytes, segment_bytes } => {
            let options = Options { segment_bytes_max: segment_bytes, sync: SyncPolicy::Always, ..Options::default() };
            let opened = Journal::open_dir(&data_dir, options)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build()?;
            let out = Arc::new(Mutex::new(std::io::stdout()));
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for task in 0..appenders {
                    let journal = opened.journal.clone();
                    let out = out.clone();
                    tasks.push(tokio::spawn(async move {
                        for n in 0.. {
                            let seed = (task << 40) | n;
                            let lsn =
                                journal.append(RecordKind::StepStarted, crash_payload(seed, record_bytes)).await?;
                            let mut out = out.lock().map_err(|_| anyhow::anyhow!("stdout lock poisoned"))?;
                            writeln!(out, "ack {lsn} {seed}")?;
                            out.flush()?;
                        }
                        anyhow::Ok(())
                    }));
                }
                for task in tasks {
                    task.await??;
                }
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
