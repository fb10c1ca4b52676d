//! The `sagalog` command line: one file per subcommand. `anyhow` is used only here and in
//! `main.rs`; the library modules return typed errors.
//!
//! Exit codes shared by the offline tools: 0 = fine, 1 = the data is damaged (details printed),
//! 2 = usage or I/O error. The client commands add theirs (see `client.rs` and `docs/cli.md`).

mod audit;
mod bench;
mod client;
mod completions;
pub mod config;
mod debug;
pub mod demo;
mod export;
mod online;
mod replay;
mod saga_view;
mod serve;
mod wal;

pub use debug::{crash_payload, load_plan};

/// Saga files are read by the server's HTTP API too; they live in `api`.
use crate::api::saga_file;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for "the data is damaged".
pub const EXIT_CORRUPT: u8 = 1;
/// Exit code for usage errors and I/O failures.
pub const EXIT_USAGE_OR_IO: u8 = 2;

/// sagalog: a durable saga engine that finishes or undoes multi-database operations.
#[derive(Debug, Parser)]
#[command(name = "sagalog", version, about, max_term_width = 100)]
pub struct Cli {
    /// Log more (-v: debug, -vv: trace). `RUST_LOG` overrides this.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as text, or as one JSON object per line [default: $SAGALOG_LOG_FORMAT, then
    /// the config's `server.log_format` for `serve`, then text].
    #[arg(long, value_name = "FORMAT", global = true)]
    pub log_format: Option<crate::config::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine on a data directory until SIGINT/SIGTERM, recovering unfinished sagas first.
    Serve(serve::ServeArgs),
    /// Inspect and mend the write-ahead log of a data directory (offline).
    #[command(subcommand)]
    Wal(wal::WalCommand),
    /// Recover a data directory offline: --dry-run prints the plan; --compensate-since undoes
    /// sagas completed after a point.
    Replay(replay::ReplayArgs),
    /// Cross-check the journal and the index against every participant's markers (read-only).
    Audit(audit::AuditArgs),
    /// Write the saga history into a DuckDB file for SQL analytics.
    Export(export::ExportArgs),
    /// Check a config before serving it: syntax, keys, participants, statements.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    #[command(subcommand, hide = true)]
    Debug(debug::DebugCommand),
    /// Submit a saga (JSON or TOML file, `-` for standard input, or --demo) to a server.
    Submit(client::SubmitArgs),
    /// Print a saga's state; the exit code says its outcome (0 completed, 3 compensated, 4 stuck, 5 running).
    Status(client::StatusArgs),
    /// Follow a saga's changes until it is COMPLETED, COMPENSATED or STUCK.
    Watch(client::WatchArgs),
    /// Ask a running saga to stop: its completed steps are compensated.
    Cancel(client::CancelArgs),
    /// List sagas, filtered by status and time.
    List(client::ListArgs),
    /// List the server's actions: participant, parameters and outputs with their types.
    Actions(client::ActionsArgs),
    /// Operator calls: recover, reset-breaker, participants, stats, resolve (admin token).
    Admin(client::AdminArgs),
    /// Drive a running server with closed-loop clients; print sagas/s and latency percentiles.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page of sagalog and its subcommands (roff).
    Man(completions::ManArgs),
}

/// Logs go to stderr so that stdout stays machine-readable (`wal dump`, `--json`).
///
/// `-v` adds sagalog's debug lines and `-vv` its trace lines; the transport and storage crates
/// (h2, hyper, tonic, tower, sled) stay at warnings and information so that they do not drown
/// them. `RUST_LOG` overrides the filter.
pub fn init_logging(verbose: u8, format: crate::config::LogFormat) {
    const QUIET_DEPENDENCIES: &str = "h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=info,sled=warn,reqwest=info";
    let default = match verbose {
        0 => "warn,sagalog=info".to_owned(),
        1 => format!("info,sagalog=debug,{QUIET_DEPENDENCIES}"),
        _ => format!("debug,sagalog=trace,{QUIET_DEPENDENCIES}"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init()
        }
        crate::config::LogFormat::Text => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init()
        }
    };
}

impl Cli {
    /// The log format in force: `--log-format`, then `$SAGALOG_LOG_FORMAT`, then (for `serve`)
    /// the config's `server.log_format`, then text. An unknown value in the environment is
    /// ignored here (clap checks the flag).
    pub fn log_format(&self) -> crate::config::LogFormat {
        use clap::ValueEnum;
        if let Some(format) = self.log_format {
            return format;
        }
        let env = std::env::var("SAGALOG_LOG_FORMAT").ok();
        if let Some(format) = env.and_then(|v| crate::config::LogFormat::from_str(&v, true).ok()) {
            return format;
        }
        match &self.command {
            Command::Serve(args) => serve::configured_log_format(args).unwrap_or_default(),
            _ => crate::config::LogFormat::Text,
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Wal(cmd) => wal::run(cmd),
        Command::Replay(args) => replay::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Export(args) => export::run(args),
        Command::Config(cmd) => config::run(cmd),
        Command::Debug(cmd) => debug::run(cmd),
        Command::Submit(args) => client::submit(args),
        Command::Status(args) => client::status(args),
        Command::Watch(args) => client::watch(args),
        Command::Cancel(args) => client::cancel(args),
        Command::List(args) => client::list(args),
        Command::Actions(args) => client::actions(args),
        Command::Admin(args) => client::admin(args),
        Command::Bench(args) => bench::main(args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}
