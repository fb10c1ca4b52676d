//! The client commands as scripts use them, against the real binary and a real server:
//! `sagalog serve` on a loopback port, then `submit`, `status`, `watch`, `list`, `cancel` and
//! `admin` as child processes, checking their output and documented exit codes
//! (0 completed/ok, 1 refused, 2 usage/file/connect, 3 compensated, 4 stuck, 5 not finished).
//!
//! With the `duckdb` feature (the default) the main test runs on the embedded default config,
//! exactly as the README has a newcomer do; without it, on the same config with the DuckDB
//! warehouse swapped for SQLite (same actions, same CHECK constraints).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// How long a server may take to answer after it was started (DuckDB's first open is slow).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);

fn sagalog() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sagalog"));
    // The environment must not point the client elsewhere.
    c.env_remove("SAGALOG_SERVER").env_remove("SAGALOG_TOKEN").env_remove("SAGALOG_CA_CERT");
    c
}

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn json_of(o: &Output) -> Json {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{}", text(o)))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The embedded default with its DuckDB participant replaced by SQLite, plus a `slow_count`
/// action whose step takes seconds (a recursive count), for tests that need a saga in flight.
/// Its HTTP port (metrics and the demo notifier) is a free one, so that tests run side by side.
fn sqlite_config() -> String {
    let duckdb = "kind = \"duckdb\"\npath = \"demo/warehouse.duckdb\"";
    let mut config = sagalog::config::embedded::embedded_default_with_http(&format!("127.0.0.1:{}", free_port()));
    assert!(config.contains(duckdb), "the embedded default changed: update this test's replacement");
    config = config.replace(duckdb, "kind = \"sqlite\"\npath = \"demo/warehouse.sqlite\"").replace(
        "execution_id BIGINT PRIMARY KEY, run_id VARCHAR NOT NULL, job VARCHAR NOT NULL, rows BIGINT",
        "execution_id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, job TEXT NOT NULL, rows INTEGER",
    );
    config.push_str(
        r#"
[participants.slow]
kind = "sqlite"
path = "demo/slow.sqlite"
init = ["CREATE TABLE IF NOT EXISTS burns (run_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"]

[actions.slow_count]
participant = "slow"
params = { run_id = "text", n = "int" }
forward = { sql = "INSERT INTO burns (run_id, n) SELECT ?1, count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?2) SELECT x FROM c)", args = ["run_id", "n"] }
compensate = { sql = "DELETE FROM burns WHERE run_id = ?1", args = ["run_id"] }
timeout_ms = 300000
"#,
    );
    config
}

/// A `sagalog serve` child on a loopback port; killed when dropped.
struct Server {
    child: Child,
    url: String,
    port: u16,
    data_dir: PathBuf,
    config: Option<PathBuf>,
}

impl Server {
    /// Starts a server on `data_dir`: on `config` if given (written to a file beside it),
    /// else on the embedded default.
    fn start(data_dir: &Path, config: Option<&str>) -> Server {
        let config = config.map(|text| {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let port = free_port();
        Server::start_on(data_dir, config, port)
    }

    fn start_on(data_dir: &Path, config: Option<PathBuf>, port: u16) -> Server {
        let mut server = Server::spawn(data_dir, config, port);
        server.wait_until_answering(&[]);
        server
    }

    /// The child process only; see [`Server::wait_until_answering`].
    /// Without `config`, a new data directory gets the embedded default with its HTTP port
    /// (metrics and the demo notifier) moved to a free one, so that tests run side by side.
    fn spawn(data_dir: &Path, config: Option<PathBuf>, port: u16) -> Server {
        let default = data_dir.join("sagalog.toml");
        if config.is_none() && !default.exists() {
            std::fs::create_dir_all(data_dir).unwrap();
            let http = format!("127.0.0.1:{}", free_port());
            std::fs::write(default, sagalog::config::embedded::embedded_default_with_http(&http)).unwrap();
        }
        let mut cmd = sagalog();
        cmd.arg("serve").arg("--data-dir").arg(data_dir).arg("--listen").arg(format!("127.0.0.1:{port}"));
        if let Some(path) = &config {
            cmd.arg("--config").arg(path);
        }
        let log = std::fs::File::create(data_dir.with_extension(format!("{port}.log"))).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Server { child, url: format!("http://127.0.0.1:{port}"), port, data_dir: data_dir.to_owned(), config }
    }

    /// Polls `admin stats` (with `client_args`) until the server answers, bounded; fails early
    /// if the child died.
    fn wait_until_answering(&mut self, client_args: &[&str]) {
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited during start ({status}); log:\n{}", self.log());
            }
            let mut probe = sagalog();
            probe.args(["admin", "stats", "--connect-timeout", "500ms", "--server", &self.url]).args(client_args);
            let probe = probe.output().unwrap();
            if probe.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer in {SERVER_START_TIMEOUT:?}: {}\nlog:\n{}",
                text(&probe),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension(format!("{}.log", self.port))).unwrap_or_default()
    }

    /// Runs a client command against this server.
    fn run(&self, args: &[&str]) -> Output {
        sagalog().args(args).args(["--server", &self.url]).output().unwrap()
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new server process on the same port, data directory and config.
    fn restart(mut self) -> Server {
        self.kill();
        Server::start_on(&self.data_dir.clone(), self.config.clone(), self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn main_server(dir: &Path) -> Server {
    if cfg!(feature = "duckdb") {
        Server::start(&dir.join("data"), None)
    } else {
        Server::start(&dir.join("data"), Some(&sqlite_config()))
    }
}

/// `submit --demo` pauses durably before it notifies (issue 14 item 6: the README's `kill -9`
/// catches a saga mid-flight); against a data directory whose catalog predates the `pause`
/// action it submits the saga without it and says so.
#[test]
fn the_demo_pauses_and_runs_without_its_pause_on_an_older_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let pause = "[actions.pause]\ndelay_ms = \"param\"\nparams = { delay_ms = \"int\" }\n";
    let config = sqlite_config();
    assert!(config.contains(pause), "the embedded default changed: update this test");
    let data_dir = dir.path().join("data");
    std::fs::write(data_dir.with_extension("toml"), config.replace(pause, "")).unwrap();
    let mut server = Server::spawn(&data_dir, Some(data_dir.with_extension("toml")), free_port());
    server.wait_until_answering(&[]);
    let out = server.run(&["submit", "--demo", "--wait", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let done = json_of(&out);
    assert_eq!(done["steps"].as_array().unwrap().len(), 4, "{done}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no `pause` action"), "{}", text(&out));
}

/// Issue 11 item 6: `sagalog actions` lists the server's catalog, in text and in JSON.
#[test]
fn actions_lists_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let server = main_server(dir.path());
    let out = server.run(&["actions", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let actions = json_of(&out);
    let record = actions.as_array().unwrap().iter().find(|a| a["name"] == "record_execution").expect("listed");
    assert_eq!(record["participant"], "ledger", "{record}");
    assert_eq!((record["params"]["run_id"].as_str(), record["params"]["rows"].as_str()), (Some("text"), Some("int")));
    let out = server.run(&["actions"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("record_execution (sqlite ledger): {"), "{listing}");
    assert!(listing.contains("rows: int"), "{listing}");
}

/// The life of sagas through the CLI: the demo saga completes (exit 0), a failing one is
/// compensated (exit 3), status/list/watch report them in JSON and text, cancelling a finished
/// saga is refused (exit 1), and submitting the same id again is idempotent.
#[test]
fn demo_sagas_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = main_server(dir.path());

    // submit --demo --wait --json: one JSON object, the final state; progress on stderr.
    let out = server.run(&["submit", "--demo", "--wait", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let done = json_of(&out);
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["created"], true);
    let id = done["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("demo-"), "{id}");
    assert!(done["steps"].as_array().unwrap().iter().all(|s| s["state"] == "APPLIED"), "{done}");
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(progress.contains("(generated id)") && progress.contains("step 4 write_artifact"), "{progress}");
    // The demo pauses durably for a couple of seconds before it notifies (step 2).
    assert_eq!(done["steps"][2]["action"], "pause", "{done}");
    // The chain: the ledger's execution id flows to the warehouse and the notifier (outputs).
    let execution_id = &done["steps"][0]["outputs"]["execution_id"];
    assert!(execution_id.is_string() || execution_id.is_i64(), "step 0 returns the execution id: {done}");
    assert!(done["steps"][3]["outputs"]["notification_id"].is_string(), "the notifier answers an id: {done}");
    assert!(progress.contains(&format!("saga {id} COMPLETED in")), "{progress}");

    // status --json: COMPLETED, exit 0, with the documented fields.
    let out = server.run(&["status", "--json", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status = json_of(&out);
    assert_eq!((status["id"].as_str(), status["status"].as_str()), (Some(id.as_str()), Some("COMPLETED")));
    assert!(status["version"].as_u64().unwrap() > 0 && status["steps"].as_array().unwrap().len() == 5, "{status}");
    assert!(status["submitted_at"].as_str().unwrap().ends_with('Z') && status["finished_at"].is_string(), "{status}");
    assert_eq!(status["errors"], Json::Array(vec![]));

    // status in text: a table with the steps.
    let out = server.run(&["status", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("COMPLETED") && t.contains("record_execution") && t.contains("APPLIED"), "{t}");

    // rows < 0 fails step 0 for good: COMPENSATED, exit 3, the reason names the constraint.
    let out = server.run(&["submit", "--demo", "--rows", "-1", "--id", "fails-1", "--wait"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("saga fails-1 COMPENSATED") && t.contains("step 0 record_execution (ledger): failed"), "{t}");
    let out = server.run(&["status", "--json", "fails-1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let failed = json_of(&out);
    assert_eq!(failed["status"], "COMPENSATED");
    assert_eq!(failed["steps"][0]["state"], "FAILED");
    assert!(failed["errors"][0]["error"].as_str().unwrap().contains("CHECK"), "{failed}");

    // rows > 1,000,000 fails step 1: step 0 is undone.
    let out = server.run(&["submit", "--demo", "--rows", "2000000", "--id", "fails-2", "--wait", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let undone = json_of(&out);
    assert_eq!(
        (undone["steps"][0]["state"].as_str(), undone["steps"][1]["state"].as_str()),
        (Some("COMPENSATED"), Some("FAILED"))
    );

    // The same id and definition again: accepted, not created; a different definition: refused.
    let out = server.run(&["submit", "--demo", "--rows", "-1", "--id", "fails-1", "--run-id", "x", "--json"]);
    assert_eq!(out.status.code(), Some(1), "a different run id is a different definition: {}", text(&out));
    assert_eq!(json_of(&out)["error"]["code"], "ALREADY_EXISTS");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ALREADY_EXISTS"), "{}", text(&out));

    // list --json: all three; --status filters, comma-separated or repeated.
    let out = server.run(&["list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = json_of(&out);
    let ids: Vec<&str> = all.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    for want in [id.as_str(), "fails-1", "fails-2"] {
        assert!(ids.contains(&want), "{want} missing from {ids:?}");
    }
    let out = server.run(&["list", "--json", "--status", "compensated,STUCK", "--since", "1h"]);
    let compensated = json_of(&out);
    assert_eq!(compensated.as_array().unwrap().len(), 2, "{compensated}");
    assert!(compensated.as_array().unwrap().iter().all(|s| s["status"] == "COMPENSATED"));
    let out = server.run(&["list", "--status", "COMPLETED", "--status", "PENDING"]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains(&id) && !t.contains("fails-1") && t.contains("1 saga\n"), "{t}");
    let out = server.run(&["list", "--status", "DONE"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown status \"DONE\""), "{}", text(&out));

    // cancel of a finished saga: the server refuses (FAILED_PRECONDITION), exit 1.
    let out = server.run(&["cancel", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAILED_PRECONDITION"), "{}", text(&out));
    // status of an unknown saga: NOT_FOUND, exit 1.
    let out = server.run(&["status", "no-such-saga"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"), "{}", text(&out));

    // watch of a finished saga: its state, then the end; the exit code is its outcome.
    let out = server.run(&["watch", "fails-2"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("saga fails-2 COMPENSATED"), "{}", text(&out));
    let out = server.run(&["watch", "--json", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let last = String::from_utf8_lossy(&out.stdout).lines().last().map(|l| serde_json::from_str::<Json>(l).unwrap());
    assert_eq!(last.unwrap()["status"], "COMPLETED");

    // admin: participants and stats answer (anonymous admin in the embedded default).
    let out = server.run(&["admin", "participants", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let participants = json_of(&out);
    let kind_of =
        |name: &str| participants.as_array().unwrap().iter().find(|p| p["name"] == name).map(|p| p["kind"].clone());
    assert_eq!(kind_of("ledger"), Some(Json::from("sqlite")), "{participants}");
    // With the duckdb feature this is the embedded default itself, DuckDB warehouse included.
    let warehouse = if cfg!(feature = "duckdb") { "duckdb" } else { "sqlite" };
    assert_eq!(kind_of("warehouse"), Some(Json::from(warehouse)), "{participants}");
    let out = server.run(&["admin", "stats", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stats = json_of(&out);
    assert_eq!(stats["sagas_by_status"]["COMPENSATED"], 2, "{stats}");
    let out = server.run(&["admin", "resolve", "fails-1", "--decision", "retry-compensation"]);
    assert_eq!(out.status.code(), Some(1), "fails-1 is not STUCK: {}", text(&out));
}

/// Saga files: JSON from a file, TOML from standard input, `--id` overriding the file's id.
#[test]
fn saga_files_in_json_and_toml() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(&sqlite_config()));
    let file = dir.path().join("saga.json");
    std::fs::write(
        &file,
        r#"{"id": "from-file", "steps": [
             {"action": "record_execution", "params": {"run_id": "rf1", "job": "j", "rows": 5}},
             {"action": "write_artifact", "params": {"run_id": "rf1", "report": "{}"}}]}"#,
    )
    .unwrap();
    let out = server.run(&["submit", file.to_str().unwrap(), "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("saga from-file COMPLETED"), "{}", text(&out));

    let toml = "[[steps]]\naction = \"record_execution\"\nparams = { run_id = \"rt1\", job = \"j\", rows = 7 }\n";
    let mut child = sagalog()
        .args(["submit", "-", "--id", "from-stdin", "--wait", "--json", "--server", &server.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(toml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        (json_of(&out)["id"].as_str(), json_of(&out)["status"].as_str()),
        (Some("from-stdin"), Some("COMPLETED"))
    );

    // A well-formed file the catalog refuses (a parameter of the wrong type): the server's
    // INVALID_ARGUMENT names step and parameter; exit 1.
    std::fs::write(
        &file,
        r#"{"steps": [{"action": "record_execution", "params": {"run_id": "r", "job": "j", "rows": "many"}}]}"#,
    )
    .unwrap();
    let out = server.run(&["submit", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INVALID_ARGUMENT") && err.contains("rows"), "{err}");
}

/// A bad saga file is a usage error (exit 2) whose message names the file and the path of the
/// problem inside it, and nothing is sent (no server is needed to find out).
#[test]
fn bad_saga_file_exits_2_naming_file_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.json");
    std::fs::write(&file, r#"{"steps": [{"action": "a"}, {"action": "b", "params": {"rows": [1, 2]}}]}"#).unwrap();
    let out = sagalog().args(["submit", file.to_str().unwrap(), "--server", "http://127.0.0.1:9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}: steps[1].params.rows: an array is not a parameter type", file.display())),
        "{err}"
    );

    std::fs::write(&file, "{\"steps\": [\n  {\"action\": \"a\"\n]}").unwrap();
    let out = sagalog().args(["submit", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid JSON at line 3"), "{}", text(&out));

    let out = sagalog().args(["submit", dir.path().join("missing.toml").to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"), "{}", text(&out));

    let out = sagalog().args(["submit"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "FILE or --demo is required: {}", text(&out));
}

/// No server listening: exit 2 and the message names the URL; `$SAGALOG_SERVER` is the default.
#[test]
fn unreachable_server_exits_2_naming_the_url() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = sagalog().args(["status", "some-saga", "--server", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot connect to {url}")), "{}", text(&out));

    let out = sagalog().args(["submit", "--demo", "--wait"]).env("SAGALOG_SERVER", &url).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&url), "{}", text(&out));
}

/// Tokens: without one the server refuses (UNAUTHENTICATED, exit 1); `$SAGALOG_TOKEN` and
/// `--token` are sent; a client token may not call Admin (PERMISSION_DENIED).
#[test]
fn tokens_from_flag_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config().replace("anonymous = \"admin\"", "anonymous = \"off\"")
        + "\n[[server.tokens]]\nname = \"app\"\ntoken = \"client-token-0123456789\"\nrole = \"client\"\n\
           \n[[server.tokens]]\nname = \"ops\"\ntoken = \"admin-token-0123456789\"\nrole = \"admin\"\n";
    assert!(config.contains("anonymous = \"off\""), "the embedded default changed: update this test");
    let data_dir = dir.path().join("data");
    std::fs::write(data_dir.with_extension("toml"), config).unwrap();
    let mut server = Server::spawn(&data_dir, Some(data_dir.with_extension("toml")), free_port());
    server.wait_until_answering(&["--token", "admin-token-0123456789"]);

    let out = server.run(&["submit", "--demo"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"), "{}", text(&out));

    let out = sagalog()
        .args(["submit", "--demo", "--id", "with-token", "--wait", "--server", &server.url])
        .env("SAGALOG_TOKEN", "client-token-0123456789")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = server.run(&["admin", "stats", "--token", "client-token-0123456789"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"), "{}", text(&out));

    let out = server.run(&["admin", "stats", "--json", "--token", "admin-token-0123456789"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json_of(&out)["sagas_by_status"]["COMPLETED"], 1);
}

/// `watch` outlives the server: killed (SIGKILL) while a step runs and restarted on the same
/// port, the server recovers the saga, and the watch reconnects with its last version and
/// reports it COMPLETED (exit 0), every state once, versions increasing.
#[test]
fn watch_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(&sqlite_config()));
    let file = dir.path().join("slow.json");
    // About 4 s per attempt in a debug build: long enough to kill the server mid-step.
    std::fs::write(
        &file,
        r#"{"id": "slow-1", "steps": [{"action": "slow_count", "params": {"run_id": "s1", "n": 20000000}}]}"#,
    )
    .unwrap();
    let out = server.run(&["submit", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Wait until the step is journaled and running.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = json_of(&server.run(&["status", "--json", "slow-1"]));
        if status["steps"][0]["state"] == "JOURNALED" {
            break;
        }
        assert_ne!(status["status"], "COMPLETED", "the slow step finished before the test could kill the server");
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut watch = sagalog()
        .args(["watch", "--json", "slow-1", "--server", &server.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first: Json = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["status"], "RUNNING", "{first}");

    let mut server = server;
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    assert!(watch.try_wait().unwrap().is_none(), "watch must keep trying while the server is down");
    let _server = server.restart();

    let states: Vec<Json> = lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    let status = watch.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{states:?}\n{stderr}");
    let end = states.last().unwrap();
    assert_eq!(end["status"], "COMPLETED", "{states:?}");
    let mut version = first["version"].as_u64().unwrap();
    for s in &states {
        let v = s["version"].as_u64().unwrap();
        assert!(v > version, "versions must only grow: {states:?}");
        version = v;
    }
}

/// The test-only TLS material shared with `tests/grpc_tls.rs` (see its README).
fn tls_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

/// TLS: an `https://` server is reached with `--ca-cert` or `$SAGALOG_CA_CERT`; without a CA
/// file, or with a certificate that is not the signing CA, the client exits 2 naming the URL.
#[test]
fn tls_with_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (tls_fixture("server.pem"), tls_fixture("server.key"), tls_fixture("ca.pem"));
    let config = format!(
        "{}\n[server.tls]\ncert = {:?}\nkey = {:?}\n",
        sqlite_config(),
        cert.display().to_string(),
        key.display().to_string()
    );
    let data_dir = dir.path().join("data");
    std::fs::write(data_dir.with_extension("toml"), config).unwrap();
    let port = free_port();
    let mut server = Server::spawn(&data_dir, Some(data_dir.with_extension("toml")), port);
    server.url = format!("https://127.0.0.1:{port}");
    let ca = ca.to_str().unwrap();
    server.wait_until_answering(&["--ca-cert", ca]);

    let out = server.run(&["status", "no-such-saga", "--ca-cert", ca]);
    assert_eq!(out.status.code(), Some(1), "TLS works, the server answers NOT_FOUND: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"), "{}", text(&out));

    let out = sagalog()
        .args(["submit", "--demo", "--wait", "--json", "--server", &server.url])
        .env("SAGALOG_CA_CERT", ca)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json_of(&out)["status"], "COMPLETED");

    let out = server.run(&["status", "no-such-saga"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a CA certificate"), "{}", text(&out));

    // Plaintext against the TLS port: a connection problem (exit 2), not a refusal.
    let plain_url = server.url.replace("https://", "http://");
    let out = sagalog().args(["status", "no-such-saga", "--server", &plain_url]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot connect to {plain_url}")), "{}", text(&out));

    // The server's own certificate is not the CA that signed it: nothing to trust.
    let out = server.run(&["status", "no-such-saga", "--ca-cert", cert.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("cannot connect to {}", server.url)),
        "{}",
        text(&out)
    );
}

/// The library itself (`sagalog::client`) against the real server: idempotent resubmit,
/// `list_all` across many small pages, `watch_until_terminal` from version 0, typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_library_pages_watches_and_keeps_error_codes() {
    use sagalog::client::{Client, ClientOptions, Error, ListFilter, WatchRetry};
    use sagalog::engine::{SagaDefinition, StepCall, Value};

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = tokio::task::spawn_blocking(move || Server::start(&data_dir, Some(&sqlite_config()))).await.unwrap();
    let client = Client::connect(ClientOptions::new(server.url.clone())).await.unwrap();

    let saga = |i: usize| SagaDefinition {
        id: format!("lib-{i:03}"),
        steps: vec![StepCall {
            action: "record_execution".into(),
            params: [
                ("run_id".to_string(), Value::Text(format!("lib-run-{i}"))),
                ("job".to_string(), Value::Text("lib".into())),
                ("rows".to_string(), Value::Int(i as i64)),
            ]
            .into_iter()
            .collect(),
            from: Default::default(),
        }],
    };
    const SAGAS: usize = 45;
    for i in 0..SAGAS {
        let (created, state) = client.submit(&saga(i)).await.unwrap();
        assert!(created && state.saga_id == format!("lib-{i:03}"));
    }
    let (created, _) = client.submit(&saga(0)).await.unwrap();
    assert!(!created, "the same id and steps again is accepted, not created");
    let mut conflicting = saga(0);
    conflicting.steps[0].params.insert("rows".into(), Value::Int(999));
    let e = client.submit(&conflicting).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::AlreadyExists), "{e}");

    let mut seen = Vec::new();
    let end = client.watch_until_terminal("lib-044", 0, WatchRetry::default(), |s| seen.push(s.version)).await.unwrap();
    assert_eq!(sagalog::client::saga_status(&end), sagalog::api::pb::SagaStatus::Completed);
    assert!(seen.windows(2).all(|w| w[0] < w[1]) && !seen.is_empty(), "{seen:?}");

    // Every saga once, across pages of 7.
    let filter = ListFilter { page_size: 7, ..ListFilter::default() };
    let (first_page, token) = client.list(&filter, "").await.unwrap();
    assert_eq!(first_page.len(), 7);
    assert!(!token.is_empty());
    let mut ids: Vec<String> = client.list_all(&filter).await.unwrap().into_iter().map(|s| s.saga_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), SAGAS, "{ids:?}");

    let e = client.get("lib-nope").await.unwrap_err();
    assert!(
        matches!(&e, Error::Status { code: tonic::Code::NotFound, message } if message.contains("lib-nope")),
        "{e}"
    );
    tokio::task::spawn_blocking(move || drop(server)).await.unwrap();
}

/// `sagalog bench` drives a real server with closed-loop clients on the embedded default's
/// `noop` action and reports in JSON what scripts read: every saga it counts finished
/// (COMPLETED) and is really there, latency percentiles in order, no errors; a parameterized
/// action gets its typed `--param` values with `{n}` unique per saga; an unknown action or a
/// missing parameter is a usage error naming it.
#[test]
fn bench_drives_a_server_and_reports_what_it_measured() {
    let dir = tempfile::tempdir().unwrap();
    let server = main_server(dir.path());
    let out = server.run(&["bench", "--clients", "3", "--sagas", "30", "--steps", "2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_of(&out);
    assert_eq!(report["sagas"], 30, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!((report["wait"].as_str(), report["action"].as_str()), (Some("watch"), Some("noop")), "{report}");
    let latency = &report["latency_ms"];
    let p = |q: &str| latency[q].as_f64().unwrap_or_else(|| panic!("no {q} in {report}"));
    // snake_case like every other --json; the first camelCase names stay beside them.
    assert_eq!(report["latencyMs"], report["latency_ms"], "{report}");
    assert!(report["sagas_per_second"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    assert_eq!(report["sagasPerSecond"], report["sagas_per_second"], "{report}");
    for (snake, camel) in [
        ("fsyncs_per_second", "fsyncsPerSecond"),
        ("records_per_fsync", "recordsPerFsync"),
        ("cpu_micros_per_saga", "cpuMicrosPerSaga"),
    ] {
        let server = &report["server"];
        assert!(server.get(snake).is_some() && server[snake] == server[camel], "{report}");
    }
    assert!(0.0 < p("p50") && p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max"), "{report}");
    // The sagas it counted exist on the server and are COMPLETED.
    let listed = server.run(&["list", "--status", "COMPLETED", "--json"]);
    let ids: Vec<String> = json_of(&listed)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .filter(|id| id.starts_with("bench-"))
        .collect();
    assert_eq!(ids.len(), 30, "{}", text(&listed));

    let out = server.run(&[
        "bench",
        "--sagas",
        "4",
        "--steps",
        "1",
        "--action",
        "record_execution",
        "--param",
        "run_id=bench-run-{n}",
        "--param",
        "job=bench",
        "--param",
        "rows=5",
        "--poll",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Four sagas inserting the same run_id would collide on its primary key and compensate:
    // none did, so every saga had its own.
    assert_eq!((json_of(&out)["sagas"].as_u64(), json_of(&out)["compensated"].as_u64()), (Some(4), Some(0)));
    let out = server.run(&["bench", "--sagas", "1", "--action", "record_executoin"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no action \"record_executoin\""), "{}", text(&out));
    let out = server.run(&["bench", "--sagas", "1", "--action", "record_execution", "--param", "rows=x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--param rows: \"x\" is not of type int"), "{}", text(&out));
}

/// A client command started before its server waits for it within `--connect-timeout`
/// (retrying the refused connection), so a script may start the server and call it at once;
/// `--server host:port` means `http://host:port`; nothing listening is still a clear exit 2
/// once the timeout ran out.
#[test]
fn a_client_waits_for_a_starting_server_and_takes_host_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let early = sagalog()
        .args(["admin", "stats", "--json", "--connect-timeout", "60s", "--server", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let config = if cfg!(feature = "duckdb") { None } else { Some(sqlite_config()) };
    let config = config.map(|text| {
        let path = dir.path().join("data.toml");
        std::fs::write(&path, text).unwrap();
        path
    });
    let _server = Server::start_on(&dir.path().join("data"), config, port);
    let out = early.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    json_of(&out);

    let nobody = free_port();
    let began = Instant::now();
    let out = sagalog()
        .args(["admin", "stats", "--connect-timeout", "600ms", "--server", &format!("127.0.0.1:{nobody}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(&format!("http://127.0.0.1:{nobody}")), "{}", text(&out));
    assert!(began.elapsed() >= Duration::from_millis(500), "gave up before its timeout: {:?}", began.elapsed());
}

/// `sagalog completions SHELL` prints a completion script that knows the subcommands, and
/// `sagalog man` a man page for sagalog and each subcommand; an unknown shell is a usage error.
#[test]
fn completions_and_man_page_come_from_the_command_line_definition() {
    for (shell, marker) in [("bash", "_sagalog()"), ("zsh", "#compdef sagalog"), ("fish", "complete -c sagalog")] {
        let out = sagalog().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("submit") && script.contains("bench"), "{shell} lacks subcommands");
    }
    let out = sagalog().args(["man"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    for title in [".TH sagalog 1", ".TH sagalog-submit 1", ".TH sagalog-replay 1"] {
        assert!(page.contains(title), "no {title:?} in the man page");
    }
    let out = sagalog().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// `serve --log-format json` writes one JSON object per line on stderr: every line parses, a
/// submit, a step failure and a finish each have their line with `saga_id` (and the failure
/// its `step`, `attempt`, `participant` and `error`) as plain fields, and no value is in
/// Rust's debug notation.
#[test]
fn json_logs_are_one_object_per_line_with_plain_fields() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("data.toml");
    std::fs::write(&config, sqlite_config()).unwrap();
    let port = free_port();
    let log_path = dir.path().join("serve.log");
    let mut child = sagalog()
        .args(["--log-format", "json", "serve", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let out = sagalog()
        .args(["submit", "--demo", "--id", "json-logs-1", "--rows", "-1", "--wait", "--connect-timeout", "60s"])
        .args(["--server", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Json> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_saga = |message: &str| {
        lines
            .iter()
            .find(|l| l["saga_id"] == "json-logs-1" && l["message"].as_str().is_some_and(|m| m.starts_with(message)))
            .unwrap_or_else(|| panic!("no {message:?} line for the saga in:\n{log}"))
            .clone()
    };
    of_saga("saga submitted");
    let failed = of_saga("step attempt failed");
    assert_eq!((failed["step"].as_u64(), failed["attempt"].as_u64()), (Some(0), Some(1)), "{failed}");
    assert_eq!(failed["participant"], "ledger", "{failed}");
    assert_eq!(failed["direction"], "forward", "{failed}");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("CHECK")), "{failed}");
    assert_eq!(of_saga("saga finished")["outcome"], "COMPENSATED");
    for banned in ["Some(", "Forward", "Compensate,", "None"] {
        assert!(!log.contains(banned), "debug notation {banned:?} in the log:\n{log}");
    }
}
