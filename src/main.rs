//! The `sagalog` binary: parses the command line and hands over to `sagalog::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sagalog::cli::Cli::parse();
    sagalog::cli::init_logging(cli.verbose, cli.log_format());
    match sagalog::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(sagalog::cli::EXIT_USAGE_OR_IO)
        }
    }
}
