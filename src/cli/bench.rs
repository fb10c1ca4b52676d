//! `sagalog bench`: a closed-loop load generator against a running server, in the spirit of
//! `pgbench`, `redis-benchmark` and `nats bench`.
//!
//! N clients, each on its own connection, submit a saga of `--steps` calls of `--action`
//! (default: the embedded default's `noop`), wait for it as chosen (`--watch`: a Watch stream
//! until COMPLETED or COMPENSATED, the default; `--poll`: Get until then; `--ack-only`: the
//! Submit's answer), and submit the next one at once. The run stops after `--duration` or once
//! `--sagas` sagas were submitted, whichever comes first. It prints completed sagas/s, the
//! latency of each saga from the Submit call to the end it waited for (p50/p90/p99/max), errors
//! by gRPC code and, with `--metrics URL`, the server's own figures over the run scraped from
//! its Prometheus endpoint (fsyncs/s, records per fsync); with `--server-pid PID` (a server on
//! this machine), the server's CPU time per completed saga read from `/proc`.
//!
//! Saga ids are `bench-<run>-<client>-<n>`, `<run>` drawn per run, so runs never collide. A
//! `--param name=value` fills a parameter of the action (typed by the server's catalog, from
//! `ListActions`); `{n}` in a text value becomes a number unique in the run.
//!
//! Never does: retry a failed call (an error is counted and the client goes on with its next
//! saga), or hide a refused saga: every error is counted by its code.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::client::Connection;
use crate::api::pb;
use crate::client::{Client, WatchRetry, code_name, saga_status};
use crate::engine::SagaDefinition;
use crate::engine::model::StepCall;
use crate::engine::value::Value;

/// Steps of a benchmark saga at most (the server's default `steps_max`).
pub const STEPS_MAX: u32 = 64;
/// Concurrent clients at most.
pub const CLIENTS_MAX: u32 = 4096;
/// Latency samples kept at most (one per saga); past it the run stops submitting.
pub const SAMPLES_MAX: u64 = 10_000_000;

/// How a client waits for each saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitMode {
    Watch,
    Poll,
    AckOnly,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients, each on its own connection, each with one saga in flight.
    #[arg(long, value_name = "N", default_value_t = 1)]
    clients: u32,
    /// How long to run (e.g. 20s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after submitting this many sagas (with --duration, whichever comes first).
    #[arg(long, value_name = "K")]
    sagas: Option<u64>,
    /// Steps per saga, each a call of --action.
    #[arg(long, value_name = "N", default_value_t = 3)]
    steps: u32,
    /// The action every step calls (the embedded default's `noop` does nothing but its marker).
    #[arg(long, value_name = "NAME", default_value = "noop")]
    action: String,
    /// A parameter of the action, `name=value`, typed as the server declares it; `{n}` in a
    /// text value becomes a number unique in the run (repeat for several).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Wait for each saga with a Watch stream until it is finished (the default).
    #[arg(long, conflicts_with_all = ["poll", "ack_only"])]
    watch: bool,
    /// Wait for each saga by polling Get until it is finished.
    #[arg(long, conflicts_with = "ack_only")]
    poll: bool,
    /// Count a saga done when its Submit is acknowledged (durable), without waiting for it.
    #[arg(long)]
    ack_only: bool,
    /// The server's Prometheus endpoint (e.g. http://127.0.0.1:9464/metrics): its fsync
    /// figures over the run are printed too.
    #[arg(long, value_name = "URL")]
    metrics: Option<String>,
    /// The server's process id on this machine: its CPU time per completed saga is printed.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    #[command(flatten)]
    conn: Connection,
}

impl BenchArgs {
    fn mode(&self) -> WaitMode {
        if self.ack_only {
            WaitMode::AckOnly
        } else if self.poll {
            WaitMode::Poll
        } else {
            WaitMode::Watch
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Microseconds from Submit to the end waited for, per finished saga.
    latencies_us: Vec<u64>,
    completed: u64,
    compensated: u64,
    /// Failed calls by gRPC code name.
    errors: BTreeMap<String, u64>,
}

/// `sagalog bench`: the run on a runtime of its own (two worker threads, so that the clients
/// are not serialized behind one thread).
pub fn main(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(args))
}

/// Runs the benchmark; exit 0 when every saga finished as it should (COMPLETED, or acked with
/// --ack-only), 1 when any call failed or a saga ended otherwise.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        bail!("--clients must be 1..={CLIENTS_MAX}, got {}", args.clients);
    }
    if args.steps == 0 || args.steps > STEPS_MAX {
        bail!("--steps must be 1..={STEPS_MAX}, got {}", args.steps);
    }
    if args.duration.is_zero() {
        bail!("--duration must be above zero");
    }
    let options = args.conn.options();
    let first = Client::connect(options.clone()).await.context("connect")?;
    let params = action_params(&first, &args.action, &args.params).await?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let mode = args.mode();
    let sagas_max = args.sagas.unwrap_or(SAMPLES_MAX).min(SAMPLES_MAX);
    let submitted = Arc::new(AtomicU64::new(0));
    let before = Figures::take(args.metrics.as_deref(), args.server_pid).await?;
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let client = Client::connect(options.clone()).await.with_context(|| format!("connect client {c}"))?;
        let (submitted, params, action, run_id) =
            (submitted.clone(), params.clone(), args.action.clone(), run_id.clone());
        let steps = args.steps;
        clients.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let n = submitted.fetch_add(1, Ordering::Relaxed);
                if n >= sagas_max || Instant::now() >= deadline {
                    break;
                }
                let saga = definition(&format!("bench-{run_id}-{c}-{n}"), &action, steps, &params, n);
                one_saga(&client, &saga, mode, &mut tally).await;
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for client in clients {
        let tally = client.await.context("a bench client panicked")?;
        total.latencies_us.extend(tally.latencies_us);
        total.completed += tally.completed;
        total.compensated += tally.compensated;
        for (code, n) in tally.errors {
            *total.errors.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    let after = Figures::take(args.metrics.as_deref(), args.server_pid).await?;
    let report = Report::new(&args, mode, elapsed, total, before.zip(after));
    if args.conn.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print();
    }
    let clean = report.errors.is_empty() && report.compensated == 0;
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Submits `saga` and waits for it as `mode` says, counting what happened in `tally`.
async fn one_saga(client: &Client, saga: &SagaDefinition, mode: WaitMode, tally: &mut Tally) {
    let began = Instant::now();
    let mut error = |e: crate::client::Error| {
        let code = e.code().map_or("UNREACHABLE", code_name);
        *tally.errors.entry(code.to_owned()).or_default() += 1;
    };
    let state = match client.submit(saga).await {
        Ok((_, state)) => state,
        Err(e) => return error(e),
    };
    let end = match mode {
        WaitMode::AckOnly => Ok(None),
        // A saga can finish before its Submit is answered: the answer is then its final
        // state, and a watch after that version would wait for a change that never comes.
        WaitMode::Watch if crate::client::is_terminal(&state) => Ok(Some(state)),
        WaitMode::Watch => {
            client.watch_until_terminal(&saga.id, state.version, WatchRetry::default(), |_| {}).await.map(Some)
        }
        WaitMode::Poll => poll(client, &saga.id, state).await.map(Some),
    };
    match end {
        Ok(end) => {
            tally.latencies_us.push(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX));
            match end.map(|s| saga_status(&s)) {
                None | Some(pb::SagaStatus::Completed) => tally.completed += 1,
                Some(_) => tally.compensated += 1,
            }
        }
        Err(e) => error(e),
    }
}

/// Polls Get until the saga is finished, starting from the Submit's answer.
async fn poll(client: &Client, id: &str, mut state: pb::Saga) -> Result<pb::Saga, crate::client::Error> {
    while !crate::client::is_terminal(&state) {
        tokio::time::sleep(Duration::from_micros(500)).await;
        state = client.get(id).await?;
    }
    Ok(state)
}

/// A saga of `steps` calls of `action` with `params` (`{n}` in text replaced by `n`).
fn definition(id: &str, action: &str, steps: u32, params: &BTreeMap<String, Value>, n: u64) -> SagaDefinition {
    let params: BTreeMap<String, Value> = params
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Text(t) => Value::Text(t.replace("{n}", &n.to_string())),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    let call = StepCall { action: action.to_owned(), params, from: BTreeMap::new() };
    SagaDefinition { id: id.to_owned(), steps: (0..steps).map(|_| call.clone()).collect() }
}

/// The action's parameters from `--param name=value`, typed by the server's catalog; every
/// declared parameter must be given, and no other.
async fn action_params(client: &Client, action: &str, given: &[String]) -> anyhow::Result<BTreeMap<String, Value>> {
    let actions = client.list_actions().await.context("ListActions")?;
    let Some(declared) = actions.iter().find(|a| a.name == action) else {
        let known: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
        bail!("the server has no action {action:?} (it has: {})", known.join(", "));
    };
    let mut params = BTreeMap::new();
    for pair in given {
        let Some((name, text)) = pair.split_once('=') else {
            bail!("--param {pair:?}: expected NAME=VALUE");
        };
        let Some(ty) = declared.params.get(name) else {
            bail!("--param {name}: action {action:?} has no such parameter (it has: {:?})", declared.params.keys());
        };
        params.insert(name.to_owned(), typed(name, ty, text)?);
    }
    if let Some(missing) = declared.params.keys().find(|k| !params.contains_key(*k)) {
        bail!("action {action:?} needs parameter {missing:?} ({}): add --param {missing}=…", declared.params[missing]);
    }
    Ok(params)
}

/// `text` as a value of the declared type `ty`.
fn typed(name: &str, ty: &str, text: &str) -> anyhow::Result<Value> {
    let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("--param {name}: {text:?} is not of type {ty}: {e}");
    Ok(match ty {
        "int" => Value::Int(text.parse().map_err(|e| bad(&e))?),
        "float" => Value::Float(text.parse().map_err(|e| bad(&e))?),
        "bool" => Value::Bool(text.parse().map_err(|e| bad(&e))?),
        "bytes" => Value::Bytes(text.as_bytes().to_vec()),
        _ => Value::Text(text.to_owned()),
    })
}

/// The server's counters at one moment: what its metrics and `/proc` say.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    fsyncs: Option<f64>,
    /// Records journaled (the sum of the batch-size histogram).
    records: Option<f64>,
    /// The server process's user + system CPU time.
    cpu: Option<Duration>,
}

impl Figures {
    async fn take(metrics: Option<&str>, pid: Option<u32>) -> anyhow::Result<Option<Figures>> {
        if metrics.is_none() && pid.is_none() {
            return Ok(None);
        }
        let mut figures = Figures::default();
        if let Some(url) = metrics {
            let text = scrape(url).await.with_context(|| format!("scrape {url}"))?;
            figures.fsyncs = sample(&text, "sagalog_journal_fsync_seconds_count");
            figures.records = sample(&text, "sagalog_journal_batch_records_sum");
        }
        if let Some(pid) = pid {
            figures.cpu = Some(process_cpu(pid).with_context(|| format!("read the CPU time of process {pid}"))?);
        }
        Ok(Some(figures))
    }
}

/// The value of the first sample named exactly `name` (no labels) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// GETs `url` (plain `http://host:port/path`) over one HTTP/1.1 connection.
async fn scrape(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("only http:// metrics URLs are supported")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/metrics".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .context("timed out")??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut body)).await.context("timed out")??;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("answered {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// User + system CPU time of process `pid` (Linux `/proc/<pid>/stat`, fields 14 and 15).
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("unexpected /proc stat format")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("unexpected /proc stat format");
    // Fields 14 and 15 of the whole line are 12 and 13 after the name (field 3 is index 0).
    let total = ticks(11)? + ticks(12)?;
    // /proc reports CPU times in USER_HZ ticks, which Linux fixes at 100 per second for user
    // space on every architecture it supports (whatever the kernel's own HZ).
    Ok(Duration::from_millis(total * 10))
}

/// What a run measured.
struct Report {
    clients: u32,
    steps: u32,
    action: String,
    mode: WaitMode,
    elapsed: Duration,
    sagas: u64,
    compensated: u64,
    errors: BTreeMap<String, u64>,
    /// p50, p90, p99, max (µs).
    percentiles_us: Option<[u64; 4]>,
    server: Option<(Figures, Figures)>,
}

impl Report {
    fn new(
        args: &BenchArgs,
        mode: WaitMode,
        elapsed: Duration,
        mut tally: Tally,
        server: Option<(Figures, Figures)>,
    ) -> Report {
        tally.latencies_us.sort_unstable();
        let at = |q: f64| {
            let v = &tally.latencies_us;
            v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
        };
        let percentiles_us = (!tally.latencies_us.is_empty())
            .then(|| [at(0.50), at(0.90), at(0.99), *tally.latencies_us.last().unwrap_or(&0)]);
        Report {
            clients: args.clients,
            steps: args.steps,
            action: args.action.clone(),
            mode,
            elapsed,
            sagas: tally.completed,
            compensated: tally.compensated,
            errors: tally.errors,
            percentiles_us,
            server,
        }
    }

    fn per_second(&self, n: f64) -> f64 {
        n / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server figures over the run: fsyncs/s, records per fsync, CPU µs per finished saga.
    fn server_figures(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        let Some((before, after)) = self.server else { return (None, None, None) };
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let fsyncs = delta(before.fsyncs, after.fsyncs);
        let records = delta(before.records, after.records);
        let per_fsync = match (records, fsyncs) {
            (Some(r), Some(f)) if f > 0.0 => Some(r / f),
            _ => None,
        };
        let finished = (self.sagas + self.compensated) as f64;
        let cpu = match (before.cpu, after.cpu) {
            (Some(b), Some(a)) if finished > 0.0 => Some(a.saturating_sub(b).as_micros() as f64 / finished),
            _ => None,
        };
        (fsyncs.map(|f| self.per_second(f)), per_fsync, cpu)
    }

    /// The report for scripts. Field names are snake_case, as in every other `--json` of
    /// sagalog; the first camelCase spellings (`sagasPerSecond`, `latencyMs`, `fsyncsPerSecond`,
    /// `recordsPerFsync`, `cpuMicrosPerSaga`) stay beside them for the scripts that read them.
    fn json(&self) -> serde_json::Value {
        let ms = |us: u64| us as f64 / 1000.0;
        let (fsyncs_per_s, records_per_fsync, cpu_us) = self.server_figures();
        let latency = self.percentiles_us.map(|[p50, p90, p99, max]| {
            serde_json::json!({ "p50": ms(p50), "p90": ms(p90), "p99": ms(p99), "max": ms(max) })
        });
        let per_second = self.per_second(self.sagas as f64);
        serde_json::json!({
            "clients": self.clients,
            "steps": self.steps,
            "action": self.action,
            "wait": self.mode.to_possible_value().map(|v| v.get_name().to_owned()),
            "seconds": self.elapsed.as_secs_f64(),
            "sagas": self.sagas,
            "compensated": self.compensated,
            "sagas_per_second": per_second,
            "latency_ms": latency,
            "errors": self.errors,
            "server": {
                "fsyncs_per_second": fsyncs_per_s,
                "records_per_fsync": records_per_fsync,
                "cpu_micros_per_saga": cpu_us,
                "fsyncsPerSecond": fsyncs_per_s,
                "recordsPerFsync": records_per_fsync,
                "cpuMicrosPerSaga": cpu_us,
            },
            "sagasPerSecond": per_second,
            "latencyMs": latency,
        })
    }

    fn print(&self) {
        let ms = |us: u64| us as f64 / 1000.0;
        let wait = match self.mode {
            WaitMode::Watch => "watched to the end",
            WaitMode::Poll => "polled to the end",
            WaitMode::AckOnly => "acknowledged",
        };
        println!(
            "{} clients, {} × {} per saga, {:.1} s: {} sagas {wait}, {:.0} sagas/s",
            self.clients,
            self.steps,
            self.action,
            self.elapsed.as_secs_f64(),
            self.sagas,
            self.per_second(self.sagas as f64)
        );
        if let Some([p50, p90, p99, max]) = self.percentiles_us {
            println!("latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}", ms(p50), ms(p90), ms(p99), ms(max));
        }
        if self.compensated > 0 {
            println!("compensated: {} (expected none)", self.compensated);
        }
        for (code, n) in &self.errors {
            println!("errors {code}: {n}");
        }
        let (fsyncs_per_s, per_fsync, cpu_us) = self.server_figures();
        if let Some(f) = fsyncs_per_s {
            println!("server: {f:.0} fsyncs/s, {:.1} records per fsync", per_fsync.unwrap_or(0.0));
        }
        if let Some(cpu) = cpu_us {
            println!("server CPU: {cpu:.1} µs per saga");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample is found by its exact name, not by a longer name it prefixes or a labelled one.
    #[test]
    fn samples_are_read_by_exact_name() {
        let text = "# HELP x\nsagalog_journal_fsync_seconds_bucket{le=\"0.1\"} 3\nsagalog_journal_fsync_seconds_count 42\nsagalog_journal_fsync_seconds_count_total 7\n";
        assert_eq!(sample(text, "sagalog_journal_fsync_seconds_count"), Some(42.0));
        assert_eq!(sample(text, "sagalog_journal_fsync_seconds"), None);
    }

    /// `{n}` in text parameters makes every saga's values unique; other types are kept.
    #[test]
    fn text_parameters_number_each_saga() {
        let params = BTreeMap::from([("run".to_owned(), Value::Text("r-{n}".into())), ("k".to_owned(), Value::Int(3))]);
        let saga = definition("bench-x-0-7", "record", 2, &params, 7);
        assert_eq!(saga.steps.len(), 2);
        assert_eq!(saga.steps[1].params["run"], Value::Text("r-7".into()));
        assert_eq!(saga.steps[1].params["k"], Value::Int(3));
    }

    /// This process's CPU time reads from /proc and does not go backwards.
    #[test]
    fn the_cpu_time_of_a_process_reads_from_proc() {
        let pid = std::process::id();
        let a = process_cpu(pid).unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu(pid).unwrap() >= a);
    }
}
