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

pub fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
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
