//! A worker written in Rust with `sagalog::client`: it polls a worker queue, runs each task
//! (`run_scan` / `delete_scan` of the scanner example in `docs/example-config.toml`, and a
//! no-op `noop` for benchmarks), heartbeats while it works, and answers `Complete` or `Fail`.
//!
//! It shows the contract a worker keeps: effects are at-least-once, so a task whose
//! idempotency key was completed before answers the same output again without redoing the
//! work (here the done keys live in memory; a real worker keeps them with its effect, in the
//! same transaction when it can). A cancelled saga is seen in a heartbeat's answer.
//!
//! ```sh
//! cargo run --example worker -- --server http://127.0.0.1:50051 --queue scans
//! ```
//!
//! Never does: retry a `Complete` after FAILED_PRECONDITION (the lease ended: the task is or
//! will be handed out again, and the first outcome won).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use sagalog::api::pb;
use sagalog::client::{Client, ClientOptions};

#[derive(Debug, Parser)]
struct Args {
    /// The server's URL.
    #[arg(long, default_value = sagalog::client::DEFAULT_SERVER)]
    server: String,
    /// The queue to serve.
    #[arg(long, default_value = "scans")]
    queue: String,
    /// A token of role `worker` (or `admin`); also read from $SAGALOG_TOKEN.
    #[arg(long)]
    token: Option<String>,
    /// This worker's id, as `admin queues` shows it.
    #[arg(long, default_value = "rust-worker")]
    worker_id: String,
    /// Tasks run at once (and taken per poll).
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
}

/// Outputs of the tasks done so far, by idempotency key.
type Done = Arc<Mutex<HashMap<String, HashMap<String, pb::Value>>>>;

fn text(s: &str) -> pb::Value {
    pb::Value { kind: Some(pb::value::Kind::Text(s.to_owned())) }
}

/// The user's code: what each task does. Errors are permanent failures.
async fn run(task: &pb::Task) -> Result<HashMap<String, pb::Value>, String> {
    match task.task.as_str() {
        "run_scan" => {
            let target = match task.params.get("target").and_then(|v| v.kind.clone()) {
                Some(pb::value::Kind::Text(t)) => t,
                _ => return Err("parameter target (text) is missing".to_owned()),
            };
            tokio::time::sleep(Duration::from_millis(10)).await; // the scan
            let report_id = format!("report-{}-{}", target, task.saga_id);
            Ok([("report_id".to_owned(), text(&report_id))].into())
        }
        "delete_scan" | "noop" => Ok(HashMap::new()),
        other => Err(format!("this worker does not know task {other:?}")),
    }
}

async fn handle(client: Client, task: pb::Task, done: Done) {
    let key = task.idempotency_key.clone();
    let known = done.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
    let outcome = match known {
        Some(output) => Ok(output), // at-least-once: answer again, do not redo
        None => {
            // Heartbeats while the user's code runs.
            let beat = {
                let (client, token) = (client.clone(), task.task_token.clone());
                // A third of the lease: two heartbeats may be lost before it expires.
                let every = Duration::from_millis((task.lease_ms / 3).max(50));
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        match client.heartbeat(&token).await {
                            Ok(true) => eprintln!("task {token}: the saga was cancelled; finishing anyway"),
                            Ok(false) => {}
                            Err(_) => return, // the lease ended
                        }
                    }
                })
            };
            let outcome = run(&task).await;
            beat.abort();
            if let Ok(output) = &outcome {
                done.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), output.clone());
            }
            outcome
        }
    };
    let answered = match outcome {
        Ok(output) => client.complete(&task.task_token, output).await,
        Err(error) => client.fail(&task.task_token, &error, false).await,
    };
    if let Err(e) = answered {
        eprintln!("task {key} (attempt {}): the answer did not count: {e}", task.attempt);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut options = ClientOptions::new(args.server.clone());
    options.token = args.token.clone().or_else(|| std::env::var("SAGALOG_TOKEN").ok());
    let client = Client::connect(options).await?;
    let done: Done = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1) as usize));
    eprintln!("worker {} serving queue {} on {}", args.worker_id, args.queue, args.server);
    loop {
        let free = slots.available_permits().max(1) as u32;
        let tasks = tokio::select! {
            polled = client.poll(&args.queue, &args.worker_id, free, Duration::from_secs(20)) => polled,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let tasks = match tasks {
            Ok(tasks) => tasks,
            Err(e) => {
                eprintln!("poll failed: {e}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for task in tasks {
            let permit = slots.clone().acquire_owned().await?;
            let (client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                handle(client, task, done).await;
                drop(permit);
            });
        }
    }
}
