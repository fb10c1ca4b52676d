//! Worker steps end to end: a `worker` participant's queue served by the Python example worker
//! (`docs/examples/python/worker.py`, a real process) or by a worker written here with
//! `sagalog::client`, against a real server.
//!
//! The Python tests need python3 with grpcio and grpcio-tools: `$SAGALOG_PYTHON` names an
//! interpreter that has them (`.ci/run` makes one); without it the tests make a venv under
//! `$HOME/.cache/sagalog/pyenv`. Without python3 they are skipped loudly, or fail where
//! `SAGALOG_REQUIRE_SYSTEM_TESTS=1`.

use crate::api_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use api_support::{ADMIN_TOKEN, CLIENT_TOKEN, skip_or_fail, status, text, write_config};
use sagalog::api::pb;
use sagalog::client::{Client, ClientOptions};

pub const WORKER_TOKEN: &str = "worker-token-for-tests-0001";

/// SQL → worker → SQL: record a run, scan its target, record the scan's report id (an output
/// of the worker step, `from`). `lease_ms` is filled in per test.
const CONFIG: &str = r#"
[journal]
sync = "always"

[executor]
max_in_flight = 64
breaker_failures = 3
breaker_cooldown_ms = 200
breaker_successes = 1

[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 1000

[[server.tokens]]
name = "app"
token = "client-token-for-tests-0001"
role = "client"

[[server.tokens]]
name = "ops"
token = "admin-token-for-tests-0001"
role = "admin"

[[server.tokens]]
name = "scanner-pool"
token = "worker-token-for-tests-0001"
role = "worker"

[participants.ledger]
kind = "sqlite"
path = "ledger.sqlite"
init = ["CREATE TABLE IF NOT EXISTS executions (run_id TEXT PRIMARY KEY)", "CREATE TABLE IF NOT EXISTS scans (run_id TEXT PRIMARY KEY, report_id TEXT NOT NULL)"]

[participants.scanner]
kind = "worker"
queue = "scans"
lease_ms = LEASE_MS

[actions.record_execution]
participant = "ledger"
params = { run_id = "text" }
forward = { sql = "INSERT INTO executions (run_id) VALUES (?1)", args = ["run_id"] }
compensate = { sql = "DELETE FROM executions WHERE run_id = ?1", args = ["run_id"] }
retry = { max_attempts = 5, initial_backoff_ms = 20, max_backoff_ms = 200, jitter = 0.1 }

[actions.run_scan]
participant = "scanner"
params = { target = "text" }
returns = { report_id = "text" }
forward = { task = "run_scan" }
compensate = { task = "delete_scan", args = ["output.report_id"] }
retry = { max_attempts = 10, initial_backoff_ms = 20, max_backoff_ms = 200, jitter = 0.1 }
timeout_ms = 60000

[actions.record_scan]
participant = "ledger"
params = { run_id = "text", report_id = "text" }
forward = { sql = "INSERT INTO scans (run_id, report_id) VALUES (?1, ?2)", args = ["run_id", "report_id"] }
compensate = { sql = "DELETE FROM scans WHERE run_id = ?1", args = ["run_id"] }
"#;

fn config(lease_ms: u64) -> String {
    CONFIG.replace("LEASE_MS", &lease_ms.to_string())
}

/// The three-step saga: `target` "fail-me" makes the Python worker fail for good.
fn scan_saga(id: &str, target: &str) -> pb::SubmitRequest {
    let step = |action: &str, params: Vec<(&str, pb::Value)>| pb::Step {
        action: action.into(),
        params: params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    };
    let from = pb::Value { kind: Some(pb::value::Kind::From("steps.1.report_id".into())) };
    pb::SubmitRequest {
        saga_id: id.into(),
        steps: vec![
            step("record_execution", vec![("run_id", text(id))]),
            step("run_scan", vec![("target", text(target))]),
            step("record_scan", vec![("run_id", text(id)), ("report_id", from)]),
        ],
    }
}

async fn client(addr: &str, token: &str) -> Client {
    let mut options = ClientOptions::new(format!("http://{addr}"));
    options.token = Some(token.to_owned());
    Client::connect(options).await.expect("connect")
}

/// Polls `Get` until `done` holds for the saga (bounded by `within`).
async fn wait_for(client: &Client, id: &str, within: Duration, done: impl Fn(&pb::Saga) -> bool) -> pb::Saga {
    let deadline = Instant::now() + within;
    loop {
        let saga = client.get(id).await.expect("get");
        if done(&saga) {
            return saga;
        }
        assert!(Instant::now() < deadline, "saga {id} did not reach the expected state in {within:?}: {saga:#?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn settled(saga: &pb::Saga) -> bool {
    matches!(status(saga), pb::SagaStatus::Completed | pb::SagaStatus::Compensated)
}

fn ledger_count(dir: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(dir.join("data/ledger.sqlite")).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The Python worker.

/// The folder of the Python example.
fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/python")
}

/// An interpreter with grpcio and grpcio-tools, and a folder of stubs generated from `proto/`
/// by the example's `gen_stubs.py`; `None` (after a loud skip) without python3.
fn python() -> Option<&'static (PathBuf, PathBuf)> {
    static PYTHON: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let interpreter = match std::env::var_os("SAGALOG_PYTHON") {
            Some(p) => PathBuf::from(p),
            None => {
                if Command::new("python3").arg("--version").output().is_err() {
                    return None;
                }
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
                let venv = home.join(".cache/sagalog/pyenv");
                let interpreter = venv.join("bin/python");
                let ready = Command::new(&interpreter)
                    .args(["-c", "import grpc, grpc_tools"])
                    .status()
                    .is_ok_and(|s| s.success());
                if !ready {
                    let made =
                        Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 -m venv");
                    assert!(made.success(), "python3 -m venv {} failed", venv.display());
                    let pip = Command::new(&interpreter)
                        .args(["-m", "pip", "install", "-q", "grpcio", "grpcio-tools"])
                        .status()
                        .expect("pip install");
                    assert!(pip.success(), "pip install grpcio grpcio-tools failed");
                }
                interpreter
            }
        };
        let stubs = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sagalog-stubs-{}", std::process::id()));
        let generated = Command::new(&interpreter)
            .arg(python_dir().join("gen_stubs.py"))
            .arg("--out")
            .arg(&stubs)
            .status()
            .expect("run gen_stubs.py");
        assert!(generated.success(), "gen_stubs.py failed with {}", interpreter.display());
        Some((interpreter, stubs))
    });
    if found.is_none() {
        skip_or_fail("python3 is not installed: the Python worker tests need it");
    }
    found.as_ref()
}

/// A worker process that is killed (SIGKILL) when dropped unless it ended.
struct PythonWorker(Child);

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `worker.py` against `addr` with its reports database `db`.
fn python_worker(addr: &str, db: &Path, id: &str, env: &[(&str, &str)]) -> Option<PythonWorker> {
    let (interpreter, stubs) = python()?;
    let mut command = Command::new(interpreter);
    command
        .arg(python_dir().join("worker.py"))
        .args(["--server", addr, "--token", WORKER_TOKEN, "--worker-id", id, "--db"])
        .arg(db)
        .env("SAGALOG_STUBS_DIR", stubs)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    Some(PythonWorker(command.spawn().expect("spawn worker.py")))
}

fn reports(db: &Path, saga: &str) -> i64 {
    let db = rusqlite::Connection::open(db).unwrap();
    db.query_row("SELECT count(*) FROM reports WHERE saga_id = ?1", [saga], |r| r.get(0)).unwrap()
}

/// The Python example worker runs the middle step of SQL → worker → SQL: the saga completes,
/// the worker's output reaches the last step, and the worker's effect exists once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_runs_the_worker_step_between_two_sql_steps() {
    let dir = tempfile::tempdir().unwrap();
    let server = api_support::start(dir.path(), &config(2000)).await;
    let addr = server.addr.to_string();
    let db = dir.path().join("reports.sqlite");
    let Some(_worker) = python_worker(&addr, &db, "py-1", &[]) else { return };
    let app = client(&addr, CLIENT_TOKEN).await;
    app.submit(&sagalog::client::saga_from_request(&scan_saga("scan-1", "example.org")).unwrap()).await.unwrap();
    let saga = wait_for(&app, "scan-1", Duration::from_secs(30), settled).await;
    assert_eq!(status(&saga), pb::SagaStatus::Completed, "{saga:#?}");
    assert_eq!(saga.steps[1].outputs["report_id"], text("report-scan-1"));
    assert_eq!(ledger_count(dir.path(), "SELECT count(*) FROM scans WHERE report_id = 'report-scan-1'"), 1);
    assert_eq!(reports(&db, "scan-1"), 1);
    server.shutdown().await.unwrap();
}

/// A worker's failure with retryable = false fails the step for good: the first SQL step is
/// compensated and the worker step, which left no effect, is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_worker_failure_compensates_the_first_sql_step() {
    let dir = tempfile::tempdir().unwrap();
    let server = api_support::start(dir.path(), &config(2000)).await;
    let addr = server.addr.to_string();
    let db = dir.path().join("reports.sqlite");
    let Some(_worker) = python_worker(&addr, &db, "py-1", &[]) else { return };
    let app = client(&addr, CLIENT_TOKEN).await;
    app.submit(&sagalog::client::saga_from_request(&scan_saga("scan-fail", "fail-me")).unwrap()).await.unwrap();
    let saga = wait_for(&app, "scan-fail", Duration::from_secs(30), settled).await;
    assert_eq!(status(&saga), pb::SagaStatus::Compensated, "{saga:#?}");
    assert!(saga.compensation_reason.contains("refused the scan"), "{}", saga.compensation_reason);
    assert_eq!(saga.steps[1].attempts, 1, "a permanent failure is not retried");
    assert_eq!(saga.steps[1].compensate_attempts, 0, "a step that failed for good is not compensated");
    assert_eq!(ledger_count(dir.path(), "SELECT count(*) FROM executions WHERE run_id = 'scan-fail'"), 0);
    server.shutdown().await.unwrap();
}

/// A worker killed with SIGKILL mid-task stops heartbeating: its lease expires, the attempt
/// fails (retryable) and the task is handed out again with the same idempotency key to the
/// next worker; the saga completes and the worker-side effect exists once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_has_its_task_handed_out_again_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = api_support::start(dir.path(), &config(1000)).await;
    let addr = server.addr.to_string();
    let db = dir.path().join("reports.sqlite");
    let Some(mut doomed) = python_worker(&addr, &db, "doomed", &[("SCAN_SECONDS", "30")]) else { return };
    let app = client(&addr, CLIENT_TOKEN).await;
    app.submit(&sagalog::client::saga_from_request(&scan_saga("scan-kill", "example.org")).unwrap()).await.unwrap();
    let held = wait_for(&app, "scan-kill", Duration::from_secs(30), |s| s.steps[1].worker_id == "doomed").await;
    assert_eq!(held.steps[1].attempts, 1);
    // Heartbeats keep the lease past one lease_ms while the scan runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.get("scan-kill").await.unwrap().steps[1].worker_id, "doomed", "a heartbeated lease expired");
    doomed.0.kill().unwrap(); // SIGKILL mid-task
    doomed.0.wait().unwrap();
    let Some(_next) = python_worker(&addr, &db, "next", &[]) else { return };
    let saga = wait_for(&app, "scan-kill", Duration::from_secs(30), settled).await;
    assert_eq!(status(&saga), pb::SagaStatus::Completed, "{saga:#?}");
    assert!(saga.steps[1].attempts >= 2, "the task was handed out again: {saga:#?}");
    assert!(saga.steps[1].last_error.contains("expired"), "{}", saga.steps[1].last_error);
    assert_eq!(reports(&db, "scan-kill"), 1, "the worker-side effect exists once");
    let done: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM done WHERE key = 'scan-kill/1/forward'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(done, 1, "every attempt carried the key <saga>/<step>/<direction>");
    server.shutdown().await.unwrap();
}

/// A cancel reaches a worker that heartbeats: the Python worker's scan stops (Cancelled), it
/// fails the task for good, and the saga ends COMPENSATED without the scan's effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_heartbeating_worker() {
    let dir = tempfile::tempdir().unwrap();
    let server = api_support::start(dir.path(), &config(600)).await;
    let addr = server.addr.to_string();
    let db = dir.path().join("reports.sqlite");
    let Some(_worker) = python_worker(&addr, &db, "py-1", &[("SCAN_SECONDS", "60")]) else { return };
    let app = client(&addr, CLIENT_TOKEN).await;
    app.submit(&sagalog::client::saga_from_request(&scan_saga("scan-cancel", "example.org")).unwrap()).await.unwrap();
    wait_for(&app, "scan-cancel", Duration::from_secs(30), |s| s.steps[1].worker_id == "py-1").await;
    app.cancel("scan-cancel").await.unwrap();
    let saga = wait_for(&app, "scan-cancel", Duration::from_secs(15), settled).await;
    assert_eq!(status(&saga), pb::SagaStatus::Compensated, "{saga:#?}");
    assert!(saga.steps[1].last_error.contains("cancelled"), "{}", saga.steps[1].last_error);
    let cancelled: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM cancelled WHERE key = 'scan-cancel/1/forward'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cancelled, 1, "the worker saw the cancel");
    assert_eq!(reports(&db, "scan-cancel"), 0);
    assert_eq!(ledger_count(dir.path(), "SELECT count(*) FROM executions WHERE run_id = 'scan-cancel'"), 0);
    server.shutdown().await.unwrap();
}

/// With no worker polling a queue for three leases, the participant's breaker opens: sagas
/// park (holding no slot) with the reason "no worker polling queue scans", shown by Get and
/// `Admin.Queues`, and finish once a worker starts polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_worker_sagas_park_with_the_reason_and_resume_when_a_worker_starts() {
    let dir = tempfile::tempdir().unwrap();
    let server = api_support::start(dir.path(), &config(200)).await;
    let addr = server.addr.to_string();
    tokio::time::sleep(Duration::from_millis(800)).await; // three leases without a poll
    let app = client(&addr, CLIENT_TOKEN).await;
    for i in 0..3 {
        let id = format!("parked-{i}");
        app.submit(&sagalog::client::saga_from_request(&scan_saga(&id, "example.org")).unwrap()).await.unwrap();
    }
    let parked = wait_for(&app, "parked-0", Duration::from_secs(10), |s| !s.parked_on.is_empty()).await;
    assert_eq!(parked.parked_on, "scanner");
    assert_eq!(parked.parked_reason, "no worker polling queue scans");
    assert_eq!(parked.steps[1].attempts, 0, "a parked saga spends no attempt");
    let ops = client(&addr, ADMIN_TOKEN).await;
    let queues = ops.queues().await.unwrap();
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0].queue, "scans");
    assert_ne!(queues[0].breaker_state, "closed");
    assert_eq!(queues[0].breaker_reason, "no worker polling queue scans");
    assert!(queues[0].workers.is_empty());

    let db = dir.path().join("reports.sqlite");
    let Some(_worker) = python_worker(&addr, &db, "late-starter", &[]) else { return };
    for i in 0..3 {
        let saga = wait_for(&app, &format!("parked-{i}"), Duration::from_secs(30), settled).await;
        assert_eq!(status(&saga), pb::SagaStatus::Completed, "{saga:#?}");
        assert!(saga.parked_on.is_empty());
    }
    let queues = ops.queues().await.unwrap();
    assert_eq!(queues[0].breaker_state, "closed");
    assert_eq!(queues[0].workers[0].worker_id, "late-starter");
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// A worker written here with sagalog::client.

/// Polls `queue` until a task comes (bounded).
async fn poll_one(worker: &Client, id: &str) -> pb::Task {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut tasks = worker.poll("scans", id, 1, Duration::from_millis(500)).await.expect("poll");
        if let Some(task) = tasks.pop() {
            return task;
        }
        assert!(Instant::now() < deadline, "no task handed out within 20 s");
    }
}

fn report(id: &str) -> HashMap<String, pb::Value> {
    [("report_id".to_owned(), text(id))].into()
}

/// Late, duplicate and stale-token answers are FAILED_PRECONDITION and the first outcome
/// wins; a malformed token or an output that does not match `returns` is INVALID_ARGUMENT and
/// keeps the lease; the roles keep `Workers` and `Sagas` apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_duplicate_and_stale_answers_are_refused_and_the_first_outcome_wins() {
    let dir = tempfile::tempdir().unwrap();
    let server = api_support::start(dir.path(), &config(500)).await;
    let addr = server.addr.to_string();
    let worker = client(&addr, WORKER_TOKEN).await;
    let app = client(&addr, CLIENT_TOKEN).await;
    let code = |r: Result<(), sagalog::client::Error>| r.unwrap_err().code().unwrap();

    app.submit(&sagalog::client::saga_from_request(&scan_saga("answers", "example.org")).unwrap()).await.unwrap();
    let first = poll_one(&worker, "w1").await;
    assert_eq!(first.idempotency_key, "answers/1/forward");
    assert_eq!(
        (first.step, first.direction.as_str(), first.attempt, first.task.as_str()),
        (1, "forward", 1, "run_scan")
    );
    assert_eq!(first.params["target"], text("example.org"));
    assert_eq!(first.lease_ms, 500);
    // The lease expires: the task is handed out again, same key, next attempt.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = poll_one(&worker, "w2").await;
    assert_eq!(second.idempotency_key, first.idempotency_key);
    assert!(second.attempt > first.attempt);
    assert_eq!(code(worker.complete(&first.task_token, report("late")).await), tonic::Code::FailedPrecondition);
    assert_eq!(code(worker.fail(&first.task_token, "late", false).await), tonic::Code::FailedPrecondition);
    assert_eq!(code(worker.heartbeat(&first.task_token).await.map(drop)), tonic::Code::FailedPrecondition);
    // A bad output keeps the lease; the right one completes.
    assert_eq!(code(worker.complete(&second.task_token, HashMap::new()).await), tonic::Code::InvalidArgument);
    let wrong_type = [("report_id".to_owned(), api_support::int(7))].into();
    assert_eq!(code(worker.complete(&second.task_token, wrong_type).await), tonic::Code::InvalidArgument);
    assert_eq!(code(worker.complete("garbage/scans", report("x")).await), tonic::Code::InvalidArgument);
    assert_eq!(code(worker.complete("00/nope", report("x")).await), tonic::Code::NotFound);
    worker.complete(&second.task_token, report("r-answers")).await.unwrap();
    // The outcome was durable before Complete returned; a duplicate is refused.
    let saga = app.get("answers").await.unwrap();
    assert_eq!(saga.steps[1].outputs["report_id"], text("r-answers"));
    assert_eq!(code(worker.complete(&second.task_token, report("again")).await), tonic::Code::FailedPrecondition);
    assert_eq!(code(worker.fail(&second.task_token, "again", true).await), tonic::Code::FailedPrecondition);
    let saga = wait_for(&app, "answers", Duration::from_secs(10), settled).await;
    assert_eq!(status(&saga), pb::SagaStatus::Completed);
    assert_eq!(saga.steps[1].outputs["report_id"], text("r-answers"), "the first outcome won");

    // Roles: a worker token cannot call Sagas, a client token cannot call Workers.
    let denied = worker.get("answers").await.unwrap_err();
    assert_eq!(denied.code(), Some(tonic::Code::PermissionDenied));
    let denied = app.poll("scans", "w3", 1, Duration::ZERO).await.unwrap_err();
    assert_eq!(denied.code(), Some(tonic::Code::PermissionDenied));
    // Limits are named.
    let too_many = worker.poll("scans", "w1", 1000, Duration::ZERO).await.unwrap_err();
    assert_eq!(too_many.code(), Some(tonic::Code::ResourceExhausted));
    server.shutdown().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(dir: &Path, port: u16) -> Child {
    let config = write_config(dir, &config(1000));
    Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["serve", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sagalog serve")
}

async fn connect(port: u16, token: &str) -> Client {
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "server did not listen on {addr} within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client(&addr, token).await
}

/// `sagalog serve` killed with SIGKILL while a worker holds a task: after the restart the
/// in-doubt step is not settled "absent" but handed out again with the same idempotency key
/// (a later attempt); the old token is refused (FAILED_PRECONDITION); no saga is lost and the
/// saga completes with the re-sent task's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_task_hands_the_task_out_again_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = serve(dir.path(), port);
    let app = connect(port, CLIENT_TOKEN).await;
    let worker = connect(port, WORKER_TOKEN).await;
    app.submit(&sagalog::client::saga_from_request(&scan_saga("restart", "example.org")).unwrap()).await.unwrap();
    let before = poll_one(&worker, "w1").await;
    server.kill().unwrap(); // SIGKILL: StepStarted is durable, no outcome
    server.wait().unwrap();

    let port = free_port();
    let mut server = serve(dir.path(), port);
    let app = connect(port, CLIENT_TOKEN).await;
    let worker = connect(port, WORKER_TOKEN).await;
    let stale = worker.complete(&before.task_token, report("from-before")).await.unwrap_err();
    assert_eq!(stale.code(), Some(tonic::Code::FailedPrecondition), "{stale}");
    let after = poll_one(&worker, "w1").await;
    assert_eq!(after.idempotency_key, before.idempotency_key, "handed out again with the same key");
    assert!(after.attempt > before.attempt, "as a new journaled attempt");
    worker.complete(&after.task_token, report("r-restart")).await.unwrap();
    let saga = wait_for(&app, "restart", Duration::from_secs(20), settled).await;
    assert_eq!(status(&saga), pb::SagaStatus::Completed, "{saga:#?}");
    assert!(saga.recovery_count >= 1);
    assert_eq!(saga.steps[1].outputs["report_id"], text("r-restart"));
    assert!(!saga.steps[1].applied_by_marker, "a worker step is never settled by a marker");
    assert_eq!(ledger_count(dir.path(), "SELECT count(*) FROM scans WHERE report_id = 'r-restart'"), 1);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// During compensation, an in-doubt worker step (its lease expired: it may have been applied)
/// is never skipped: it is sent again with the same key, and once the worker answers with its
/// output the step is compensated with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_resends_an_in_doubt_worker_step_before_compensating_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(300).replace("max_attempts = 10", "max_attempts = 1");
    let server = api_support::start(dir.path(), &config).await;
    let addr = server.addr.to_string();
    let worker = client(&addr, WORKER_TOKEN).await;
    let app = client(&addr, CLIENT_TOKEN).await;
    app.submit(&sagalog::client::saga_from_request(&scan_saga("in-doubt", "example.org")).unwrap()).await.unwrap();
    let first = poll_one(&worker, "w1").await;
    // The worker applies its effect but its lease expires before it answers: the only attempt
    // of the budget failed in doubt, so the saga compensates.
    let resent = poll_one(&worker, "w1").await;
    assert_eq!(resent.idempotency_key, first.idempotency_key);
    assert_eq!(resent.direction, "forward", "the forward step is sent again, not skipped");
    assert_eq!(status(&app.get("in-doubt").await.unwrap()), pb::SagaStatus::Compensating);
    worker.complete(&resent.task_token, report("r-doubt")).await.unwrap();
    let undo = poll_one(&worker, "w1").await;
    assert_eq!((undo.direction.as_str(), undo.task.as_str()), ("compensate", "delete_scan"));
    assert_eq!(undo.idempotency_key, "in-doubt/1/compensate");
    assert_eq!(undo.params["output.report_id"], text("r-doubt"));
    worker.complete(&undo.task_token, HashMap::new()).await.unwrap();
    let saga = wait_for(&app, "in-doubt", Duration::from_secs(10), settled).await;
    assert_eq!(status(&saga), pb::SagaStatus::Compensated, "{saga:#?}");
    assert_eq!(ledger_count(dir.path(), "SELECT count(*) FROM executions WHERE run_id = 'in-doubt'"), 0);
    server.shutdown().await.unwrap();
}

/// The walk-through of `docs/examples/python/README.md`: its config, its saga file submitted
/// with `sagalog submit --wait`, and `worker.py` with no token (anonymous on loopback) give a
/// COMPLETED saga whose middle step ran the Python function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_readme_walk_through_completes_a_saga() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(python_dir().join("scanner.toml"))
        .unwrap()
        .replace("listen = \"127.0.0.1:50051\"", "listen = \"127.0.0.1:0\"");
    let server = api_support::start(dir.path(), &config).await;
    let addr = server.addr.to_string();
    let db = dir.path().join("data/reports.sqlite");
    let Some((interpreter, stubs)) = python() else { return };
    let _worker = PythonWorker(
        Command::new(interpreter)
            .arg(python_dir().join("worker.py"))
            .args(["--server", &addr, "--db"])
            .arg(&db)
            .env("SAGALOG_STUBS_DIR", stubs)
            .env_remove("SAGALOG_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker.py"),
    );
    let submitted = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_sagalog"))
                .args(["submit"])
                .arg(python_dir().join("scan-saga.json"))
                .args(["--id", "scan-1", "--wait", "--server", &format!("http://{addr}")])
                .env_remove("SAGALOG_TOKEN")
                .output()
                .expect("run sagalog submit")
        }
    })
    .await
    .unwrap();
    assert!(submitted.status.success(), "{}", String::from_utf8_lossy(&submitted.stderr));
    let app = Client::connect(ClientOptions::new(format!("http://{addr}"))).await.unwrap(); // anonymous
    let saga = app.get("scan-1").await.unwrap();
    assert_eq!(status(&saga), pb::SagaStatus::Completed);
    assert_eq!(saga.steps[1].outputs["report_id"], text("report-scan-1"));
    assert_eq!(reports(&db, "scan-1"), 1);
    server.shutdown().await.unwrap();
}

/// The benchmark of `docs/performance.md` ("Worker steps"): the latency a one-step saga adds
/// when its step is a worker task answered by a Rust worker over gRPC (a loop like
/// `examples/worker.rs`), against a no-op SQL step, at 1 saga in flight; and worker steps per
/// second at 64 in flight. Ignored (it measures, it proves nothing):
/// `cargo test --release --no-default-features --test api bench_worker_step_overhead -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark; run it by name with --ignored --nocapture"]
async fn bench_worker_step_overhead() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(10_000)
        + r#"
[actions.sql_noop]
participant = "ledger"
forward = { noop = true }
compensate = { noop = true }

[actions.worker_noop]
participant = "scanner"
forward = { task = "noop" }
compensate = { task = "noop" }
"#;
    let config = config.replace("max_in_flight = 64", "max_in_flight = 256");
    let server = api_support::start(dir.path(), &config).await;
    let addr = server.addr.to_string();
    let executor = server.node().executor.clone();
    // The worker: polls up to 64 tasks and completes each at once, concurrently.
    let worker = client(&addr, WORKER_TOKEN).await;
    let serving = tokio::spawn(async move {
        loop {
            let Ok(tasks) = worker.poll("scans", "bench", 64, Duration::from_secs(1)).await else { return };
            for task in tasks {
                let worker = worker.clone();
                tokio::spawn(async move { worker.complete(&task.task_token, HashMap::new()).await });
            }
        }
    });
    fn one(id: String, action: &str) -> sagalog::engine::SagaDefinition {
        sagalog::client::saga_from_request(&pb::SubmitRequest {
            saga_id: id,
            steps: vec![pb::Step { action: action.into(), params: HashMap::new() }],
        })
        .unwrap()
    }
    let run = move |id: String, action: &'static str| {
        let executor = executor.clone();
        let saga = one(id.clone(), action);
        async move {
            let began = Instant::now();
            executor.submit(saga).await.unwrap();
            let status = match executor.wait_settled(&id).await {
                Some(done) => done.status.as_str().to_owned(),
                None => executor.archived(&id).unwrap().expect("archived").status, // already archived
            };
            assert_eq!(status, "COMPLETED");
            began.elapsed()
        }
    };
    let p50 = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    for warm in 0..20 {
        run(format!("warm-{warm}"), "worker_noop").await;
    }
    let rounds = 300;
    let mut sql = Vec::new();
    let mut worker_steps = Vec::new();
    for i in 0..rounds {
        sql.push(run(format!("sql-{i}"), "sql_noop").await);
        worker_steps.push(run(format!("worker-{i}"), "worker_noop").await);
    }
    let (sql, work) = (p50(sql), p50(worker_steps));
    println!(
        "1 in flight: p50 saga latency, no-op SQL step {:.2} ms, worker step {:.2} ms: the worker step adds {:.2} ms",
        sql.as_secs_f64() * 1e3,
        work.as_secs_f64() * 1e3,
        (work.saturating_sub(sql)).as_secs_f64() * 1e3
    );
    for (label, action) in [("no-op SQL", "sql_noop"), ("worker", "worker_noop")] {
        let total = 3200;
        let began = Instant::now();
        let lanes: Vec<_> = (0..64)
            .map(|lane| {
                let run = run.clone();
                tokio::spawn(async move {
                    for i in 0..total / 64 {
                        run(format!("{action}-64-{lane}-{i}"), action).await;
                    }
                })
            })
            .collect();
        for lane in lanes {
            lane.await.unwrap();
        }
        let rate = total as f64 / began.elapsed().as_secs_f64();
        println!("64 in flight: {rate:.0} {label} steps/s ({total} one-step sagas)");
    }
    serving.abort();
    server.shutdown().await.unwrap();
}

/// During compensation, a re-sent in-doubt worker step that the worker refuses for good is
/// the worker's verdict "not applied" (it deduplicates by key: an applied key would have
/// answered its output): the step is skipped, not compensated, and the saga ends COMPENSATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_in_doubt_step_refused_for_good_is_not_applied_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(300).replace("max_attempts = 10", "max_attempts = 1");
    let server = api_support::start(dir.path(), &config).await;
    let addr = server.addr.to_string();
    let worker = client(&addr, WORKER_TOKEN).await;
    let app = client(&addr, CLIENT_TOKEN).await;
    app.submit(&sagalog::client::saga_from_request(&scan_saga("refused", "example.org")).unwrap()).await.unwrap();
    let first = poll_one(&worker, "w1").await; // its lease expires unanswered
    let resent = poll_one(&worker, "w1").await;
    assert_eq!((resent.idempotency_key.as_str(), resent.direction.as_str()), ("refused/1/forward", "forward"));
    assert!(resent.attempt > first.attempt);
    worker.fail(&resent.task_token, "no such scan", false).await.unwrap();
    let saga = wait_for(&app, "refused", Duration::from_secs(10), settled).await;
    assert_eq!(status(&saga), pb::SagaStatus::Compensated, "{saga:#?}");
    assert_eq!(saga.steps[1].compensate_attempts, 0, "a step the worker says it never applied is skipped");
    assert!(saga.steps[1].last_error.contains("not applied"), "{}", saga.steps[1].last_error);
    assert_eq!(saga.steps[0].compensate_attempts, 1);
    assert_eq!(ledger_count(dir.path(), "SELECT count(*) FROM executions WHERE run_id = 'refused'"), 0);
    server.shutdown().await.unwrap();
}
