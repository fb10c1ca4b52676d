//! `sagalog export --data-dir D --duckdb FILE`: the saga history into DuckDB tables (see
//! `sagalog::ops::export` for the schema, `docs/operations.md` for ready-made queries).
//! Read-only on the data directory. Needs a build with the `duckdb` feature.
//!
//! Exit codes: 0 written, 1 the journal is corrupt, 2 usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The data directory whose history is exported.
    #[arg(long, value_name = "D")]
    data_dir: PathBuf,
    /// Configuration file (default: D/sagalog.toml, else the embedded default).
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// The DuckDB file to write (its sagalog tables are replaced).
    #[arg(long, value_name = "FILE")]
    duckdb: PathBuf,
}

#[cfg(feature = "duckdb")]
pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    use super::{EXIT_CORRUPT, EXIT_USAGE_OR_IO};
    match crate::ops::export::export(&args.data_dir, args.config.as_deref(), &args.duckdb) {
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
    eprintln!(
        "error: cannot export {} to {}: this sagalog was built without DuckDB support (the `duckdb` cargo feature); \
         rebuild with default features",
        args.data_dir.display(),
        args.duckdb.display()
    );
    let _ = args.config;
    Ok(ExitCode::from(super::EXIT_USAGE_OR_IO))
}
