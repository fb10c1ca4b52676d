//! `sagalog export --data-dir D --duckdb FILE`: the saga history into DuckDB tables (see
//! `sagalog::ops::export` for the schema, `docs/operations.md` for ready-made queries).
//! Read-only on the data directory. Needs a build with the `duckdb` feature.
//!
//! A data directory a running server holds (or `--http URL`) is exported online: the server
//! builds the tables from the durable prefix of its journal and its index and sends the DuckDB
//! file, whose tables are copied into FILE (`cli/online.rs`).
//!
//! Exit codes: 0 written, 1 the journal is corrupt, 2 usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::online::OnlineArgs;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The data directory whose history is exported (a running server's is exported online).
    #[arg(long, value_name = "D", required_unless_present = "http")]
    data_dir: Option<PathBuf>,
    /// Configuration file (default: D/sagalog.toml, else the embedded default).
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// The DuckDB file to write (its sagalog tables are replaced).
    #[arg(long, value_name = "FILE")]
    duckdb: PathBuf,
    #[command(flatten)]
    online: OnlineArgs,
}

#[cfg(feature = "duckdb")]
pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    use super::{EXIT_CORRUPT, EXIT_USAGE_OR_IO};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let exported = runtime.block_on(async {
        match super::online::choose(&args.online, args.data_dir.as_deref(), args.config.as_deref())? {
            Some(server) => {
                let download = std::path::PathBuf::from(format!(
                    "{}.sagalog-download-{:016x}",
                    args.duckdb.display(),
                    rand::random::<u64>()
                ));
                let fetched = server.download("/v1/admin/export", &download).await;
                let merged = fetched.and_then(|_| crate::ops::export::merge_export(&download, &args.duckdb));
                let _ = std::fs::remove_file(&download);
                let _ = std::fs::remove_file(format!("{}.wal", download.display()));
                merged
            }
            None => match args.data_dir.as_deref() {
                Some(dir) => crate::ops::export::export(dir, args.config.as_deref(), &args.duckdb),
                None => Err(crate::ops::Error::Usage("give --data-dir D or --http URL".into())),
            },
        }
    });
    match exported {
        Ok(counts) => {
            println!(
                "exported to {}: {} sagas, {} steps, {} attempts, {} recoveries",
                args.duckdb.display(),
                counts.sagas,
                counts.steps,
                counts.attempts,
                counts.recoveries
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(if e.is_corrupt() { EXIT_CORRUPT } else { EXIT_USAGE_OR_IO }))
        }
    }
}

#[cfg(not(feature = "duckdb"))]
pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let from = match (&args.data_dir, &args.online.http) {
        (_, Some(url)) => url.clone(),
        (Some(dir), None) => dir.display().to_string(),
        (None, None) => String::new(),
    };
    eprintln!(
        "error: cannot export {from} to {}: this sagalog was built without DuckDB support (the `duckdb` cargo feature); \
         rebuild with default features",
        args.duckdb.display()
    );
    let _ = (args.config, args.online.token);
    Ok(ExitCode::from(super::EXIT_USAGE_OR_IO))
}
