//! The client commands: `submit`, `status`, `watch`, `list`, `cancel` and `admin …`, each a
//! thin layer over [`crate::client::Client`].
//!
//! Exit codes (documented in `docs/cli.md`; scripts rely on them):
//! 0 success, or the saga is COMPLETED; 1 the server refused the call (its gRPC code and
//! message are printed); 2 usage error, bad saga file, or the server cannot be reached;
//! 3 the saga is COMPENSATED; 4 the saga is STUCK; 5 the saga is not finished yet (`status`).
//! Codes 3 to 5 come only from commands that report a saga's outcome (`submit --wait`,
//! `status`, `watch`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::saga_file::{self, SAGA_FILE_BYTES_MAX};
use super::saga_view::{self, final_line, progress_lines, saga_json};
use crate::api::pb;
use crate::client::{self, Client, ClientOptions, ListFilter, WatchRetry, code_name, saga_status};
use crate::engine::SagaDefinition;

/// The saga is COMPLETED, or the command succeeded.
pub const EXIT_OK: u8 = 0;
/// The server refused the call (a gRPC error).
pub const EXIT_REFUSED: u8 = 1;
/// Usage error, bad saga file, or the server cannot be reached.
pub const EXIT_USAGE: u8 = 2;
// `main` exits with the shared usage/I/O code for every error it prints; it must be this one.
const _: () = assert!(EXIT_USAGE == super::EXIT_USAGE_OR_IO);
/// The saga is COMPENSATED.
pub const EXIT_COMPENSATED: u8 = 3;
/// The saga is STUCK (waits for an operator).
pub const EXIT_STUCK: u8 = 4;
/// The saga is not finished yet (PENDING, RUNNING or COMPENSATING).
pub const EXIT_NOT_FINISHED: u8 = 5;

/// Rows of the demo saga when `--rows` is not given.
const DEMO_ROWS_DEFAULT: i64 = 1000;
/// The demo saga's pause before it notifies: long enough to `kill -9` the server mid-flight.
const DEMO_PAUSE_MS_DEFAULT: i64 = 2000;

/// How to reach the server; every client command takes these.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Server URL, http:// or https:// [default: $SAGALOG_SERVER, then http://127.0.0.1:50051]
    #[arg(long, value_name = "URL", global = true)]
    server: Option<String>,
    /// Bearer token sent with every call [default: $SAGALOG_TOKEN]
    #[arg(long, value_name = "TOKEN", global = true)]
    token: Option<String>,
    /// PEM file of the CA that signed the server's TLS certificate [default: $SAGALOG_CA_CERT]
    #[arg(long, value_name = "FILE", global = true)]
    ca_cert: Option<PathBuf>,
    /// How long connecting may take (e.g. 500ms, 10s).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    connect_timeout: Duration,
    /// Print JSON for scripts instead of text.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

impl Connection {
    pub(super) fn options(&self) -> ClientOptions {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        ClientOptions {
            server: self
                .server
                .clone()
                .or_else(|| env("SAGALOG_SERVER"))
                .unwrap_or_else(|| client::DEFAULT_SERVER.into()),
            token: self.token.clone().or_else(|| env("SAGALOG_TOKEN")),
            ca_cert: self.ca_cert.clone().or_else(|| env("SAGALOG_CA_CERT").map(PathBuf::from)),
            connect_timeout: self.connect_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Saga file in JSON or TOML (`-`: read standard input); see docs/cli.md for the format.
    #[arg(value_name = "FILE", required_unless_present = "demo", conflicts_with = "demo")]
    file: Option<String>,
    /// Submit the embedded default's demo saga (SQLite, DuckDB, a pause, HTTP, a file).
    #[arg(long)]
    demo: bool,
    /// Rows of the demo saga: below 0 fails step 0, above 1000000 fails step 1 (compensation).
    #[arg(long, value_name = "N", conflicts_with = "file", allow_negative_numbers = true)]
    rows: Option<i64>,
    /// Run id of the demo saga (default: generated).
    #[arg(long, value_name = "RUN", conflicts_with = "file")]
    run_id: Option<String>,
    /// The demo saga's durable pause before it notifies, in milliseconds (0: none). Skipped
    /// with a note when the server's catalog has no `pause` action (a data directory
    /// initialised before it existed).
    #[arg(long, value_name = "MS", conflicts_with = "file", default_value_t = DEMO_PAUSE_MS_DEFAULT)]
    demo_pause_ms: i64,
    /// Saga id (the idempotency key); overrides the file's. Generated and printed if neither has one.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Print progress until the saga is COMPLETED, COMPENSATED or STUCK; exit with its outcome.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Saga id.
    id: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Saga id.
    id: String,
    /// Start after this version (0: print the current state first).
    #[arg(long, value_name = "VERSION", default_value_t = 0)]
    after_version: u64,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Saga id.
    id: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sagas in these states (repeat or separate with commas):
    /// PENDING RUNNING COMPLETED COMPENSATING COMPENSATED STUCK.
    #[arg(long, value_name = "S", value_delimiter = ',', value_parser = parse_status_arg)]
    status: Vec<pb::SagaStatus>,
    /// Only sagas since T: RFC 3339 (2026-01-31T12:00:00Z, or a date 2026-01-31) or a duration ago (1h, 30m, 2days).
    #[arg(long, value_name = "T", value_parser = parse_time_arg)]
    since: Option<u64>,
    /// Only sagas before T (same forms as --since).
    #[arg(long, value_name = "T", value_parser = parse_time_arg)]
    until: Option<u64>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct ActionsArgs {
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Run a recovery pass now (restarts unfinished sagas that have no running task).
    Recover,
    /// Close a participant's circuit breaker now, so parked sagas retry at once.
    ResetBreaker {
        /// Participant name, as in the server's config.
        participant: String,
    },
    /// Every participant: health probe, breaker state, call counts.
    Participants,
    /// Every worker queue: workers seen, tasks in flight, oldest waiting task, breaker state.
    Queues,
    /// Sagas by status, step latencies, journal size and position, limits.
    Stats,
    /// Decide a STUCK saga.
    Resolve {
        /// Saga id.
        id: String,
        #[arg(long, value_enum)]
        decision: Decision,
        /// Who decided (journaled; default: the token's name).
        #[arg(long, value_name = "NAME")]
        operator: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Decision {
    /// The stuck step's effect was undone by hand: record it compensated and go on.
    MarkCompensated,
    /// The cause is fixed: run the compensation again with a fresh retry budget.
    RetryCompensation,
}

fn parse_status_arg(s: &str) -> Result<pb::SagaStatus, String> {
    client::parse_status(s)
        .ok_or_else(|| format!("unknown status {s:?}: expected one of {}", client::STATUS_NAMES.join(", ")))
}

fn parse_time_arg(s: &str) -> Result<u64, String> {
    parse_time(s, client::now_ms())
}

pub use crate::api::json::parse_time;

/// Runs one client command on a small runtime of its own and turns the outcome into an exit
/// code. A refusal by the server is reported here (exit 1); anything else that fails is
/// returned for `main` to print (exit 2).
fn run_command<F>(json: bool, command: F) -> anyhow::Result<ExitCode>
where
    F: std::future::Future<Output = anyhow::Result<u8>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(command) {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(error) => match error.downcast_ref::<client::Error>() {
            Some(refusal @ client::Error::Status { code, message }) if refusal.is_refusal() => {
                if json {
                    let body = serde_json::json!({"error": {"code": code_name(*code), "message": message}});
                    println!("{body}");
                }
                eprintln!("error: the server refused: {code_name}: {message}", code_name = code_name(*code));
                Ok(ExitCode::from(EXIT_REFUSED))
            }
            _ => Err(error),
        },
    }
}

async fn connect(conn: &Connection) -> anyhow::Result<Client> {
    Ok(Client::connect(conn.options()).await?)
}

/// The exit code that reports a saga's status.
pub fn saga_exit_code(saga: &pb::Saga) -> u8 {
    match saga_status(saga) {
        pb::SagaStatus::Completed => EXIT_OK,
        pb::SagaStatus::Compensated => EXIT_COMPENSATED,
        pb::SagaStatus::Stuck => EXIT_STUCK,
        _ => EXIT_NOT_FINISHED,
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

use crate::api::saga_file::generated_id;

/// The saga `submit` sends, from a file, standard input or `--demo`.
fn saga_to_submit(args: &SubmitArgs) -> anyhow::Result<(SagaDefinition, bool)> {
    if args.demo {
        let generated = args.id.is_none();
        let id = args.id.clone().unwrap_or_else(|| generated_id("demo"));
        let run_id = args.run_id.clone().unwrap_or_else(|| generated_id("run"));
        let rows = args.rows.unwrap_or(DEMO_ROWS_DEFAULT);
        let saga = match args.demo_pause_ms {
            0 => crate::cli::demo::demo_saga(&id, &run_id, rows),
            pause => crate::cli::demo::demo_saga_with_pause(&id, &run_id, rows, pause),
        };
        return Ok((saga, generated));
    }
    let Some(file) = &args.file else { anyhow::bail!("give a saga FILE, `-` for standard input, or --demo") };
    let (text, source_name) = read_saga_text(file)?;
    let parsed = saga_file::parse(&text, &source_name)?;
    let (id, generated) = match (args.id.clone(), parsed.id) {
        (Some(id), _) | (None, Some(id)) => (id, false),
        (None, None) => (generated_id("saga"), true),
    };
    Ok((SagaDefinition { id, steps: parsed.steps }, generated))
}

fn read_saga_text(file: &str) -> anyhow::Result<(String, String)> {
    let (reader, name): (Box<dyn Read>, String) = if file == "-" {
        (Box::new(std::io::stdin()), "<stdin>".into())
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot open saga file {file}"))?;
        (Box::new(f), file.to_owned())
    };
    let mut bytes = Vec::new();
    reader.take(SAGA_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {name}"))?;
    anyhow::ensure!(bytes.len() as u64 <= SAGA_FILE_BYTES_MAX, "{name}: larger than {SAGA_FILE_BYTES_MAX} bytes");
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{name}: not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))?;
    Ok((text, name))
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    // The saga is read and checked before connecting: a bad file is a usage error (exit 2)
    // whether or not a server is up.
    let (mut saga, generated) = saga_to_submit(&args)?;
    let json = args.conn.json;
    run_command(json, async move {
        let client = connect(&args.conn).await?;
        if args.demo && saga.steps.iter().any(|s| s.action == "pause") {
            let actions = client.list_actions().await?;
            if !actions.iter().any(|a| a.name == "pause") {
                eprintln!(
                    "note: the server's catalog has no `pause` action (a data directory from before it); the demo saga runs without its pause"
                );
                saga.steps.retain(|s| s.action != "pause");
            }
        }
        let (created, state) = client.submit(&saga).await?;
        let verb = if created { "submitted" } else { "already submitted (same definition)" };
        let id_note = if generated { " (generated id)" } else { "" };
        if !args.wait {
            if json {
                let mut body = saga_json(&state);
                body["created"] = created.into();
                print_json(&body)?;
            } else {
                println!("saga {}{id_note}: {verb}, {}", saga.id, client::status_name(saga_status(&state)));
            }
            return Ok(EXIT_OK);
        }
        // With --json the progress goes to stderr, so that stdout holds one object: the end state.
        let mut say = |line: &str| {
            if json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        };
        say(&format!("saga {}{id_note}: {verb}", saga.id));
        let end = follow(&client, &state, &mut say).await?;
        if json {
            let mut body = saga_json(&end);
            body["created"] = created.into();
            print_json(&body)?;
        }
        Ok(saga_exit_code(&end))
    })
}

/// Prints `first` and every later change until the saga is settled; returns the last state.
async fn follow(client: &Client, first: &pb::Saga, say: &mut impl FnMut(&str)) -> anyhow::Result<pb::Saga> {
    for line in progress_lines(None, first) {
        say(&line);
    }
    let mut last = first.clone();
    if !client::is_settled(first) {
        last = client
            .watch_until_settled(&first.saga_id, first.version, WatchRetry::default(), |state| {
                for line in progress_lines(Some(&last), state) {
                    say(&line);
                }
                last = state.clone();
            })
            .await?;
    }
    say(&final_line(&last));
    Ok(last)
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let json = args.conn.json;
    run_command(json, async move {
        let client = connect(&args.conn).await?;
        let saga = client.get(&args.id).await?;
        if json {
            print_json(&saga_json(&saga))?;
        } else {
            print!("{}", saga_view::saga_text(&saga));
        }
        Ok(saga_exit_code(&saga))
    })
}

pub fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let json = args.conn.json;
    run_command(json, async move {
        let client = connect(&args.conn).await?;
        let mut last: Option<pb::Saga> = None;
        let mut failure: Option<anyhow::Error> = None;
        let end = client
            .watch_until_settled(&args.id, args.after_version, WatchRetry::default(), |state| {
                if json {
                    // One object per state (JSON lines); a broken stdout ends the watch.
                    if failure.is_none() {
                        failure = print_json(&saga_json(state)).err();
                    }
                } else {
                    for line in progress_lines(last.as_ref(), state) {
                        println!("{line}");
                    }
                }
                last = Some(state.clone());
            })
            .await?;
        if let Some(e) = failure {
            return Err(e);
        }
        if !json {
            println!("{}", final_line(&end));
        }
        Ok(saga_exit_code(&end))
    })
}

pub fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let json = args.conn.json;
    run_command(json, async move {
        let client = connect(&args.conn).await?;
        let saga = client.cancel(&args.id).await?;
        if json {
            print_json(&saga_json(&saga))?;
        } else {
            println!("saga {}: cancel journaled, now {}", saga.saga_id, client::status_name(saga_status(&saga)));
        }
        Ok(EXIT_OK)
    })
}

pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let json = args.conn.json;
    let filter = ListFilter {
        statuses: args.status.clone(),
        since_ms: args.since.unwrap_or(0),
        until_ms: args.until.unwrap_or(0),
        page_size: 0,
    };
    run_command(json, async move {
        let client = connect(&args.conn).await?;
        let sagas = client.list_all(&filter).await?;
        if json {
            print_json(&serde_json::Value::Array(sagas.iter().map(saga_json).collect()))?;
        } else {
            print!("{}", saga_view::list_text(&sagas));
        }
        Ok(EXIT_OK)
    })
}

pub fn actions(args: ActionsArgs) -> anyhow::Result<ExitCode> {
    let json = args.conn.json;
    run_command(json, async move {
        let client = connect(&args.conn).await?;
        let actions = client.list_actions().await?;
        if json {
            print_json(&serde_json::Value::Array(actions.iter().map(crate::api::json::action_json).collect()))?;
        } else {
            let typed = |m: &std::collections::HashMap<String, String>| {
                let mut pairs: Vec<_> = m.iter().map(|(k, t)| format!("{k}: {t}")).collect();
                pairs.sort();
                pairs.join(", ")
            };
            for a in &actions {
                let returns =
                    if a.returns.is_empty() { String::new() } else { format!(" -> {{{}}}", typed(&a.returns)) };
                // A delay action has a kind (`delay`) and no participant.
                let on = [a.participant_kind.as_str(), a.participant.as_str()].join(" ");
                println!("{} ({}): {{{}}}{returns}", a.name, on.trim_end(), typed(&a.params));
            }
        }
        Ok(EXIT_OK)
    })
}

pub fn admin(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let json = args.conn.json;
    run_command(json, async move {
        let client = connect(&args.conn).await?;
        match args.command {
            AdminCommand::Recover => {
                let r = client.recover().await?;
                if json {
                    let body = serde_json::json!({"unfinished": r.unfinished, "restarted": r.restarted, "duration_ms": r.duration_ms});
                    print_json(&body)?;
                } else {
                    println!(
                        "recovery pass: {} unfinished sagas, {} restarted, in {} ms",
                        r.unfinished, r.restarted, r.duration_ms
                    );
                }
            }
            AdminCommand::ResetBreaker { participant } => {
                let r = client.reset_breaker(&participant).await?;
                if json {
                    print_json(&serde_json::json!({"participant": participant, "previous_state": r.previous_state}))?;
                } else {
                    println!("breaker of {participant} closed (it was {})", r.previous_state);
                }
            }
            AdminCommand::Participants => {
                let participants = client.participants().await?;
                if json {
                    print_json(&serde_json::Value::Array(
                        participants.iter().map(saga_view::participant_json).collect(),
                    ))?;
                } else {
                    print!("{}", participants_text(&participants));
                }
            }
            AdminCommand::Queues => {
                let queues = client.queues().await?;
                if json {
                    print_json(&serde_json::Value::Array(queues.iter().map(crate::api::json::queue_json).collect()))?;
                } else {
                    print!("{}", queues_text(&queues));
                }
            }
            AdminCommand::Stats => {
                let stats = client.stats().await?;
                if json {
                    print_json(&saga_view::stats_json(&stats))?;
                } else {
                    print!("{}", stats_text(&stats));
                }
            }
            AdminCommand::Resolve { id, decision, operator } => {
                let decision = match decision {
                    Decision::MarkCompensated => pb::ResolveDecision::MarkCompensated,
                    Decision::RetryCompensation => pb::ResolveDecision::RetryCompensation,
                };
                let journaled = client.resolve(&id, decision, operator.as_deref()).await?;
                if !json {
                    println!("saga {id}: decision journaled, now {}", client::status_name(saga_status(&journaled)));
                }
                // The state the saga settles in (COMPENSATED, or STUCK again if a retried
                // compensation fails for good), not the one right after the decision.
                let saga = if client::is_settled(&journaled) {
                    journaled
                } else {
                    client.watch_until_settled(&id, journaled.version, WatchRetry::default(), |_| {}).await?
                };
                if json {
                    print_json(&saga_json(&saga))?;
                } else {
                    println!("saga {id}: {}", client::status_name(saga_status(&saga)));
                }
            }
        }
        Ok(EXIT_OK)
    })
}

fn queues_text(queues: &[pb::QueueStatus]) -> String {
    if queues.is_empty() {
        return "no worker queues (no participant of kind \"worker\")\n".to_owned();
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let workers = if q.workers.is_empty() {
                "none".to_owned()
            } else {
                q.workers.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>().join(",")
            };
            let oldest = if q.tasks_waiting == 0 { "-".to_owned() } else { format!("{} ms", q.oldest_waiting_ms) };
            let breaker = if q.breaker_reason.is_empty() || q.breaker_state == "closed" {
                q.breaker_state.clone()
            } else {
                format!("{} ({})", q.breaker_state, q.breaker_reason)
            };
            vec![
                q.queue.clone(),
                q.participant.clone(),
                workers,
                q.tasks_in_flight.to_string(),
                q.tasks_waiting.to_string(),
                oldest,
                breaker,
            ]
        })
        .collect();
    saga_view::table(&["QUEUE", "PARTICIPANT", "WORKERS", "IN FLIGHT", "WAITING", "OLDEST WAITING", "BREAKER"], &rows)
}

fn participants_text(participants: &[pb::Participant]) -> String {
    let rows: Vec<Vec<String>> = participants
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.kind.clone(),
                if p.healthy { "yes".into() } else { "NO".into() },
                p.breaker_state.clone(),
                p.calls_succeeded.to_string(),
                p.calls_failed.to_string(),
                p.probe_error.replace('\n', " "),
            ]
        })
        .collect();
    saga_view::table(&["NAME", "KIND", "HEALTHY", "BREAKER", "SUCCEEDED", "FAILED", "PROBE ERROR"], &rows)
}

fn stats_text(s: &pb::StatsResponse) -> String {
    let mut out = String::new();
    let count = |name: &str| s.sagas_by_status.get(name).copied().unwrap_or(0);
    let by_status: Vec<String> = client::STATUS_NAMES.iter().map(|n| format!("{n} {}", count(n))).collect();
    out.push_str(&format!("sagas       {}\n", by_status.join(", ")));
    out.push_str(&format!("journal     {} bytes, lsn {}\n", s.journal_bytes, s.journal_lsn));
    out.push_str(&format!("recoveries  {} (last took {} ms)\n", s.recoveries, s.last_recovery_ms));
    if let Some(l) = &s.limits {
        out.push_str(&format!(
            "limits      message {} bytes, {} steps, saga {} bytes, {} pending submits\n",
            l.max_message_bytes, l.max_steps, l.max_saga_bytes, l.max_pending_submits
        ));
    }
    let rows: Vec<Vec<String>> = s
        .step_latency
        .iter()
        .map(|l| {
            vec![
                l.participant.clone(),
                l.calls.to_string(),
                format!("{:.1}", l.p50_ms),
                format!("{:.1}", l.p90_ms),
                format!("{:.1}", l.p99_ms),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&saga_view::table(&["PARTICIPANT", "CALLS", "P50 MS", "P90 MS", "P99 MS"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// --since takes RFC 3339, a bare date, or a duration ago; anything else says what it takes.
    #[test]
    fn since_takes_times_dates_and_durations() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20.5Z", now), Ok(1_700_000_000_500));
        assert_eq!(parse_time("2023-11-14", now), Ok(1_699_920_000_000));
        assert_eq!(parse_time("1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_time("30m", now), Ok(now - 1_800_000));
        let e = parse_time("yesterday", now).unwrap_err();
        assert!(e.contains("\"yesterday\" is neither an RFC 3339 time"), "{e}");
    }

    /// Statuses are validated with the list of valid names.
    #[test]
    fn status_argument_is_validated() {
        assert_eq!(parse_status_arg("stuck"), Ok(pb::SagaStatus::Stuck));
        assert_eq!(
            parse_status_arg("DONE").unwrap_err(),
            "unknown status \"DONE\": expected one of PENDING, RUNNING, COMPLETED, COMPENSATING, COMPENSATED, STUCK"
        );
    }

    /// Saga outcomes map to the documented exit codes.
    #[test]
    fn exit_codes_follow_the_saga() {
        let saga = |s: pb::SagaStatus| pb::Saga { status: s as i32, ..Default::default() };
        assert_eq!(saga_exit_code(&saga(pb::SagaStatus::Completed)), 0);
        assert_eq!(saga_exit_code(&saga(pb::SagaStatus::Compensated)), 3);
        assert_eq!(saga_exit_code(&saga(pb::SagaStatus::Stuck)), 4);
        for s in [pb::SagaStatus::Pending, pb::SagaStatus::Running, pb::SagaStatus::Compensating] {
            assert_eq!(saga_exit_code(&saga(s)), 5);
        }
    }

    fn parse(args: &[&str]) -> Result<crate::cli::Cli, clap::Error> {
        use clap::Parser;
        crate::cli::Cli::try_parse_from(std::iter::once("sagalog").chain(args.iter().copied()))
    }

    /// The spellings scripts rely on parse (the contract of issue 4), and clap's own
    /// consistency checks pass.
    #[test]
    fn contract_spellings_parse() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
        let ok = [
            &["submit", "saga.json"][..],
            &["submit", "-", "--id", "x", "--wait", "--json", "--server", "http://h:1"],
            &["submit", "--demo", "--rows", "-5", "--run-id", "r", "--token", "t", "--ca-cert", "ca.pem"],
            &["status", "--server", "http://h:1", "--json", "ID"],
            &["watch", "ID", "--after-version", "3"],
            &["cancel", "--server", "http://h:1", "ID"],
            &[
                "list",
                "--status",
                "RUNNING,stuck",
                "--status",
                "COMPLETED",
                "--since",
                "1h",
                "--until",
                "2026-01-31",
                "--json",
            ],
            &["admin", "recover"],
            &["admin", "--server", "http://h:1", "stats", "--json"],
            &["admin", "reset-breaker", "ledger", "--token", "t"],
            &["admin", "participants", "--connect-timeout", "250ms"],
            &["admin", "resolve", "ID", "--decision", "mark-compensated", "--operator", "ana"],
            &["admin", "resolve", "ID", "--decision", "retry-compensation"],
        ];
        for args in ok {
            if let Err(e) = parse(args) {
                panic!("{args:?}: {e}");
            }
        }
        let refused = [
            &["submit"][..],
            &["submit", "saga.json", "--demo"],
            &["submit", "saga.json", "--rows", "3"],
            &["list", "--status", "DONE"],
            &["list", "--since", "soon"],
            &["admin", "resolve", "ID", "--decision", "forget-it"],
            &["status"],
        ];
        for args in refused {
            let e = parse(args).err().unwrap_or_else(|| panic!("{args:?} must be refused"));
            assert_eq!(e.exit_code(), 2, "{args:?}: usage errors exit 2");
        }
    }

    /// Generated ids are valid saga ids and plain file names, and differ.
    #[test]
    fn generated_ids_are_plain_and_distinct() {
        let (a, b) = (generated_id("demo"), generated_id("demo"));
        assert_ne!(a, b);
        assert!(a.starts_with("demo-") && a.len() == "demo-20261124T032204-9f3a1c07".len(), "{a}");
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'), "{a}");
        crate::catalog::validate_saga_id(&a).unwrap();
    }
}
