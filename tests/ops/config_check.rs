//! `sagalog config check` (issue 11 item 7): each typical mistake is reported with the file,
//! the line and the key, and the exit code says whether all is well (0), something is wrong
//! (1), or there was nothing to check (2). Participants are opened read-only: the check
//! creates and changes nothing.

use std::path::Path;
use std::process::Command;

const GOOD: &str = r#"
[participants.ledger]
kind = "sqlite"
path = "ledger.sqlite"

[actions.record]
participant = "ledger"
params = { id = "text", rows = "int" }
forward = { sql = "INSERT INTO executions (id, rows) VALUES (?1, ?2)", args = ["id", "rows"] }
compensate = { sql = "DELETE FROM executions WHERE id = ?1", args = ["id"] }
"#;

fn check(dir: &Path, config: &str) -> (Option<i32>, serde_json::Value) {
    let path = dir.join("sagalog.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["config", "check", "--json", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), report)
}

fn ledger(dir: &Path) {
    let conn = rusqlite::Connection::open(dir.join("ledger.sqlite")).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS executions (id TEXT PRIMARY KEY, rows INTEGER NOT NULL)").unwrap();
}

/// A sound config over an existing database: exit 0, the participant reached, all three
/// statements prepared, and nothing written into the database.
#[test]
fn a_sound_config_passes_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    ledger(dir.path());
    let before = std::fs::read(dir.path().join("ledger.sqlite")).unwrap();
    let (code, report) = check(dir.path(), GOOD);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["participants_reachable"], serde_json::json!(["ledger"]));
    assert_eq!(report["statements_prepared"], 2);
    assert_eq!(std::fs::read(dir.path().join("ledger.sqlite")).unwrap(), before, "the check wrote to the database");
}

/// The demo notifier is served by `sagalog serve` itself: checking the config before the server
/// runs does not probe it (nothing listens yet) and reports it as served by the server, while
/// an `http` participant elsewhere that cannot be reached is still a problem.
#[test]
fn the_demo_notifier_is_not_probed_before_the_server_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    ledger(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let notifier = format!(
        "[server]\nmetrics_listen = \"127.0.0.1:{port}\"\ndemo_notifier = \"notifications.sqlite\"\n{GOOD}\n\
         [participants.notifier]\nkind = \"http\"\nbase_url = \"http://127.0.0.1:{port}\"\n"
    );
    let (code, report) = check(dir.path(), &notifier);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["participants_served_by_the_server"], serde_json::json!(["notifier"]), "{report:#}");
    assert_eq!(report["participants_reachable"], serde_json::json!(["ledger"]), "{report:#}");
    let elsewhere = notifier.replace("demo_notifier = \"notifications.sqlite\"\n", "");
    let (code, report) = check(dir.path(), &elsewhere);
    assert_eq!(code, Some(1), "without demo_notifier the URL is an ordinary service: {report:#}");
    assert!(report["problems"][0]["message"].as_str().unwrap().contains("cannot be reached"), "{report:#}");
}

/// Each typical mistake: exit 1 and one problem naming the file's line and the key.
#[test]
fn each_typical_mistake_names_the_file_line_and_key() {
    let cases: [(&str, &str, &str, usize, &str, &str); 6] = [
        ("a typo'd key", "forward = { sql =", "forward = { sqll =", 9, "actions.record.forward", "`sqll`"),
        (
            "a wrong type",
            "path = \"ledger.sqlite\"",
            "path = \"ledger.sqlite\"\npool_size = \"four\"",
            5,
            "participants.ledger.pool_size",
            "invalid type",
        ),
        (
            "an unknown participant",
            "participant = \"ledger\"",
            "participant = \"ledgr\"",
            6,
            "actions.record",
            "unknown participant \"ledgr\"",
        ),
        (
            "a statement that does not prepare",
            "INSERT INTO executions",
            "INSERT INTO executons",
            6,
            "actions.record.forward",
            "no such table: executons",
        ),
        (
            "a parameter count that disagrees",
            "args = [\"id\", \"rows\"] }",
            "args = [\"id\"] }",
            6,
            "actions.record.forward",
            "takes 2 parameters but `args` lists 1",
        ),
        (
            "an ignored key",
            "path = \"ledger.sqlite\"",
            "path = \"ledger.sqlite\"\nurl = \"host=x\"",
            2,
            "participants.ledger.url",
            "`url` is ignored by a sqlite participant",
        ),
    ];
    for (what, from, to, line, key, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        ledger(dir.path());
        let config = GOOD.replacen(from, to, 1);
        assert_ne!(config, GOOD, "{what}: the edit changed nothing");
        let (code, report) = check(dir.path(), &config);
        assert_eq!(code, Some(1), "{what}: {report:#}");
        let problems = report["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{what}: {report:#}");
        let p = &problems[0];
        let at = format!("{}:{line}", dir.path().join("sagalog.toml").display());
        assert_eq!(p["at"].as_str(), Some(at.as_str()), "{what}: {p:#}");
        assert_eq!(p["key"].as_str(), Some(key), "{what}: {p:#}");
        assert!(p["message"].as_str().unwrap().contains(message), "{what}: {p:#}");
    }
}

/// No config to check is a usage error.
#[test]
fn no_config_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["config", "check", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"), "{out:?}");
}
