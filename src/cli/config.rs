//! `sagalog config check [--config F] [--data-dir D] [--json]`: everything a start would trip
//! over, found before it: the file parses (errors name the file, the line and the key), the
//! catalog is consistent, no key is set where it is ignored, every participant answers, and
//! every SQL statement prepares against its database with as many parameters as its `args`.
//! Opens the participants read-only: nothing is created or written.
//!
//! Exit codes: 0 all is well, 1 something is wrong (each problem printed), 2 usage or I/O
//! error (no config to check).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{EXIT_CORRUPT, EXIT_USAGE_OR_IO};
use crate::catalog::Catalog;
use crate::config::Kind;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a config: syntax and keys, the catalog, participants reachable, statements prepare.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config to check (default: D/sagalog.toml).
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// The data directory relative participant paths are under (default: the config's folder).
    #[arg(long, value_name = "D")]
    data_dir: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// One thing wrong, with where it is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// `FILE:LINE` when the line is known, else the file.
    pub at: String,
    /// The key or participant/action it is about (`actions.charge.forward`, `participants.db`).
    pub key: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub config: PathBuf,
    pub participants_reachable: Vec<String>,
    /// Participants the server itself serves (the demo notifier on `metrics_listen`): not
    /// probed, since nothing listens there until `sagalog serve` runs.
    pub participants_served_by_the_server: Vec<String>,
    pub statements_prepared: usize,
    pub problems: Vec<Problem>,
}

pub fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Check(args) = command;
    let Some(path) = args.config.clone().or_else(|| args.data_dir.as_ref().map(|d| d.join(crate::node::CONFIG_FILE)))
    else {
        eprintln!("error: give --config F or --data-dir D (whose sagalog.toml is checked)");
        return Ok(ExitCode::from(EXIT_USAGE_OR_IO));
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return Ok(ExitCode::from(EXIT_USAGE_OR_IO));
        }
    };
    let data_dir = args.data_dir.clone().unwrap_or_else(|| path.parent().map_or_else(PathBuf::new, Path::to_path_buf));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(check(&path, &text, &data_dir));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            println!("error: {}: {}: {}", p.at, p.key, p.message);
        }
        println!(
            "{}: {} problems; participants reachable: {}{}; {} statements prepared",
            report.config.display(),
            report.problems.len(),
            if report.participants_reachable.is_empty() {
                "none".into()
            } else {
                report.participants_reachable.join(", ")
            },
            if report.participants_served_by_the_server.is_empty() {
                String::new()
            } else {
                format!(
                    " (served by sagalog serve itself, not probed: {})",
                    report.participants_served_by_the_server.join(", ")
                )
            },
            report.statements_prepared
        );
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_CORRUPT) })
}

/// Whether `p` is an `http` participant calling the demo notifier that this config's server
/// serves itself (`[server] demo_notifier` on `metrics_listen`).
fn served_by_the_server(config: &crate::config::Config, p: &crate::config::ParticipantConfig) -> bool {
    let server = &config.server;
    if p.kind != Kind::Http || server.demo_notifier.is_empty() || server.metrics_listen.is_empty() {
        return false;
    }
    let Some(url) = p.base_url.as_deref().and_then(|u| reqwest::Url::parse(u).ok()) else { return false };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return false };
    format!("{host}:{port}") == server.metrics_listen
}

/// Checks the config `text` read from `path`, with relative participant paths under
/// `data_dir`.
pub async fn check(path: &Path, text: &str, data_dir: &Path) -> Report {
    let mut report = Report {
        config: path.to_path_buf(),
        participants_reachable: Vec::new(),
        participants_served_by_the_server: Vec::new(),
        statements_prepared: 0,
        problems: Vec::new(),
    };
    let file = path.display().to_string();
    let catalog = match Catalog::parse(text) {
        Ok(catalog) => catalog,
        Err(e) => {
            let message = match e {
                crate::catalog::ConfigError::Parse { message, .. } => message,
                other => other.to_string(),
            };
            // A parse error carries its own line ("TOML parse error at line 12, column 3"); a
            // catalog error names the block, whose header line is looked up.
            let (at, key) = match parse_error_line(&message) {
                Some(line) => (format!("{file}:{line}"), key_at_line(text, line)),
                None => locate(text, &message)
                    .map_or((file.clone(), String::new()), |(line, key)| (format!("{file}:{line}"), key)),
            };
            report.problems.push(Problem { at, key, message: message.replace('\n', " ").trim().to_owned() });
            return report;
        }
    };
    let config = &catalog.config;
    // Keys that are set where nothing reads them.
    for (name, p) in &config.participants {
        let ignored: &[(&str, bool)] = &[
            (
                "init",
                !p.init.is_empty()
                    && matches!(p.kind, Kind::Postgres | Kind::Fs | Kind::Memory | Kind::Http | Kind::Worker),
            ),
            ("url", p.url.is_some() && p.kind != Kind::Postgres),
            ("path", p.path.is_some() && matches!(p.kind, Kind::Postgres | Kind::Memory | Kind::Http | Kind::Worker)),
        ];
        for (key, set) in ignored {
            if *set {
                report.problems.push(Problem {
                    at: at_block(&file, text, "participants", name),
                    key: format!("participants.{name}.{key}"),
                    message: format!("`{key}` is ignored by a {} participant", p.kind.as_str()),
                });
            }
        }
    }
    let opened = match crate::participant::open_all_read_only(&config.participants, data_dir) {
        Ok(set) => set,
        Err(e) => {
            report.problems.push(Problem {
                at: file.clone(),
                key: format!("participants.{}", e.participant),
                message: e.to_string(),
            });
            return report;
        }
    };
    for note in &opened.notes {
        report.problems.push(Problem { at: file.clone(), key: "participants".into(), message: note.clone() });
    }
    for (name, participant) in &opened.participants {
        if config.participants.get(name).is_some_and(|p| served_by_the_server(config, p)) {
            report.participants_served_by_the_server.push(name.clone());
            continue;
        }
        match participant.probe().await {
            Ok(()) => report.participants_reachable.push(name.clone()),
            Err(e) => report.problems.push(Problem {
                at: at_block(&file, text, "participants", name),
                key: format!("participants.{name}"),
                message: format!("cannot be reached: {e}"),
            }),
        }
    }
    for (name, action) in &config.actions {
        let Some(participant) = opened.participants.get(&action.participant) else { continue };
        if !report.participants_reachable.contains(&action.participant) {
            continue;
        }
        let statements = crate::catalog::statements(action);
        for (direction, sql, args) in statements {
            let key = format!("actions.{name}.{direction}");
            match participant.prepare_check(sql).await {
                Ok(Some(params)) if params != args => report.problems.push(Problem {
                    at: at_block(&file, text, "actions", name),
                    key,
                    message: format!("the statement takes {params} parameters but `args` lists {args}: {sql}"),
                }),
                Ok(Some(_)) => report.statements_prepared += 1,
                Ok(None) => {}
                Err(e) => report.problems.push(Problem {
                    at: at_block(&file, text, "actions", name),
                    key,
                    message: format!("{}: {sql}", e.message),
                }),
            }
        }
    }
    report
}

/// The line a TOML parse error names.
fn parse_error_line(message: &str) -> Option<usize> {
    let rest = &message[message.find("at line ")? + "at line ".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The dotted key of the table whose header is at or above `line` (1-based), e.g.
/// `actions.charge`.
fn key_at_line(text: &str, line: usize) -> String {
    let table = text
        .lines()
        .take(line)
        .filter_map(|l| l.trim().strip_prefix('[').and_then(|l| l.trim_start_matches('[').split(']').next()))
        .last()
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    // The key the line itself sets, if it sets one (`forward = { … }`).
    let own = text.lines().nth(line.saturating_sub(1)).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim());
    match own.filter(|k| !k.is_empty() && !k.starts_with('[') && !k.contains(' ')) {
        Some(key) if table.is_empty() => key.to_owned(),
        Some(key) => format!("{table}.{key}"),
        None => table,
    }
}

/// `FILE:LINE` of the `[block.name]` header, or the file.
fn at_block(file: &str, text: &str, block: &str, name: &str) -> String {
    header_line(text, block, name).map_or_else(|| file.to_owned(), |line| format!("{file}:{line}"))
}

fn header_line(text: &str, block: &str, name: &str) -> Option<usize> {
    let header = format!("[{block}.{name}]");
    text.lines().position(|l| l.trim() == header).map(|i| i + 1)
}

/// The line and key a catalog error is about: it names `action "x"` or `participant "x"`.
fn locate(text: &str, message: &str) -> Option<(usize, String)> {
    for (word, block) in [("action ", "actions"), ("participant ", "participants")] {
        if let Some(start) = message.find(&format!("{word}\""))
            && let Some(name) = message[start + word.len() + 1..].split('"').next()
            && let Some(line) = header_line(text, block, name)
        {
            return Some((line, format!("{block}.{name}")));
        }
    }
    None
}
