//! The embedded default: the config a data directory gets when `serve` starts without
//! `--config`. Text only; `cli::demo` holds the demo saga that runs on it.

/// The configuration a data directory gets when `serve` is started without `--config`: demo
/// participants that need nothing installed (SQLite, DuckDB, files, and an HTTP notifier the
/// server itself serves on its metrics port, `server::demo_notifier`) and a demo catalog
/// modelled on a real cross-database job: record a pipeline execution in SQLite, which returns
/// the execution's id as a step output; store its results in DuckDB under that id; tell the
/// notifier service (an HTTP call deduplicated by its idempotency key); and write an artefact
/// file, each with its compensation. CHECK constraints let a client make a step fail
/// permanently on purpose (see `cli::demo::demo_saga`).
///
/// A data directory keeps the `sagalog.toml` it was created with: a change here reaches new
/// data directories only.
pub const EMBEDDED_DEFAULT: &str = r#"# sagalog configuration generated for this data directory (the embedded default).
# Edit it, or start `sagalog serve --config FILE` with your own; docs/example-config.toml has a
# PostgreSQL participant.

[journal]
sync = "always"

[executor]
in_flight_max = 256

# Anonymous mode: calls without a token get the admin role. Fine on a loopback-only demo; for
# anything else delete this line and add tokens:
#   [[server.tokens]]
#   name = "my-app"
#   token = "a-long-random-secret"   # at least 16 characters
#   role = "client"                  # "admin" may also call the Admin service
[server]
listen = "127.0.0.1:50051"
anonymous = "admin"
# Prometheus metrics at http://127.0.0.1:50052/metrics. The same port serves the demo's
# notifier, the HTTP service the demo saga calls (GET /demo/notifications lists what it got);
# it keeps its data in demo/notifications.sqlite. Delete both lines you do not want.
metrics_listen = "127.0.0.1:50052"
demo_notifier = "demo/notifications.sqlite"

[participants.ledger]
kind = "sqlite"
path = "demo/ledger.sqlite"
pool_size = 4
init = [
  "CREATE TABLE IF NOT EXISTS executions (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE, job TEXT NOT NULL, rows INTEGER NOT NULL CHECK (rows >= 0))",
]

[participants.warehouse]
kind = "duckdb"
path = "demo/warehouse.duckdb"
pool_size = 2
init = [
  "CREATE TABLE IF NOT EXISTS results (execution_id BIGINT PRIMARY KEY, run_id VARCHAR NOT NULL, job VARCHAR NOT NULL, rows BIGINT NOT NULL CHECK (rows <= 1000000))",
]

[participants.artifacts]
kind = "fs"
path = "demo/artifacts"

# The notifier the server serves on its metrics port (see [server] above). Each request carries
# `Idempotency-Key: <saga>/<step>/<direction>`; the notifier records one notification per key.
[participants.notifier]
kind = "http"
base_url = "http://127.0.0.1:50052"
timeout_ms = 5000

# For `sagalog bench` only: a participant that runs `noop` steps and keeps nothing, so a long
# benchmark does not grow the server's memory. A step of it in doubt is sent again, which is
# harmless: its action does nothing. (Data directories from before keep `kind = "memory"`.)
[participants.null]
kind = "null"

# Returns the new execution's id: later steps take it with {"from": "steps.0.execution_id"},
# and the compensation deletes by it.
[actions.record_execution]
participant = "ledger"
params = { run_id = "text", job = "text", rows = "int" }
returns = { execution_id = "int" }
forward = { sql = "INSERT INTO executions (run_id, job, rows) VALUES (?1, ?2, ?3) RETURNING id AS execution_id", args = ["run_id", "job", "rows"] }
compensate = { sql = "DELETE FROM executions WHERE id = ?1", args = ["output.execution_id"] }
check = { sql = "SELECT count(*) FROM executions WHERE run_id = ?1", args = ["run_id"] }
retry = { max_attempts = 10, initial_backoff_ms = 100, max_backoff_ms = 5000, jitter = 0.2 }
timeout_ms = 30000

[actions.store_results]
participant = "warehouse"
params = { execution_id = "int", run_id = "text", job = "text", rows = "int" }
forward = { sql = "INSERT INTO results (execution_id, run_id, job, rows) VALUES (?1, ?2, ?3, ?4)", args = ["execution_id", "run_id", "job", "rows"] }
compensate = { sql = "DELETE FROM results WHERE execution_id = ?1", args = ["execution_id"] }
check = { sql = "SELECT count(*) FROM results WHERE execution_id = ?1", args = ["execution_id"] }
retry = { max_attempts = 10, initial_backoff_ms = 100, max_backoff_ms = 5000, jitter = 0.2 }
timeout_ms = 30000

# An HTTP step: at-least-once, deduplicated by the receiver's idempotency key. The notifier's
# answer carries the notification's id, which the compensation (a retraction) needs.
[actions.notify]
participant = "notifier"
params = { run_id = "text", execution_id = "int" }
returns = { notification_id = "text" }
forward = { http = "POST /demo/notifications", json = { run_id = "{run_id}", execution_id = "{execution_id}" }, output = { notification_id = "/id" } }
compensate = { http = "POST /demo/notifications/{output.notification_id}/retract" }
retry = { max_attempts = 10, initial_backoff_ms = 100, max_backoff_ms = 5000, jitter = 0.2 }
timeout_ms = 10000

# A durable pause: the demo saga (`submit --demo`) waits here for a couple of seconds, long
# enough to kill the server mid-flight and watch recovery finish it.
[actions.pause]
delay_ms = "param"
params = { delay_ms = "int" }

[actions.noop]
participant = "null"
forward = { noop = true }
compensate = { noop = true }

[actions.write_artifact]
participant = "artifacts"
params = { run_id = "text", report = "text" }
forward = { put = "runs/{run_id}.json", contents = "report" }
compensate = { delete = "runs/{run_id}.json" }
retry = { max_attempts = 10, initial_backoff_ms = 100, max_backoff_ms = 5000, jitter = 0.2 }
timeout_ms = 30000
"#;

/// Where the embedded default serves its HTTP port (metrics and the demo notifier), which its
/// notifier participant calls.
pub const EMBEDDED_HTTP_LISTEN: &str = "127.0.0.1:50052";

/// The embedded default with its HTTP port (`metrics_listen`, and the notifier participant's
/// `base_url` that points at it) moved to `http_listen`: for running several demo servers on
/// one host, as the tests do (`serve --listen` moves the gRPC port only).
pub fn embedded_default_with_http(http_listen: &str) -> String {
    EMBEDDED_DEFAULT.replace(EMBEDDED_HTTP_LISTEN, http_listen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HTTP address appears exactly where the metrics port, the comment that points at it
    /// and the notifier's URL are, so moving it moves them all.
    #[test]
    fn moving_the_http_port_moves_the_metrics_port_and_the_notifier_url() {
        assert_eq!(EMBEDDED_DEFAULT.matches(EMBEDDED_HTTP_LISTEN).count(), 3);
        let moved = embedded_default_with_http("127.0.0.1:1234");
        assert!(moved.contains("metrics_listen = \"127.0.0.1:1234\""));
        assert!(moved.contains("base_url = \"http://127.0.0.1:1234\""));
        assert!(!moved.contains(EMBEDDED_HTTP_LISTEN));
    }
}
