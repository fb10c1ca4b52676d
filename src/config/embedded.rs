//! The embedded default: the config a data directory gets when `serve` starts without
//! `--config`. Text only; `cli::demo` holds the demo saga that runs on it.

/// The configuration a data directory gets when `serve` is started without `--config`: demo
/// participants that need nothing installed (SQLite, DuckDB, files) and a demo catalog modelled
/// on a real cross-database job: record a pipeline execution in SQLite, store its results in
/// DuckDB, and write an artefact file, each with its compensation. CHECK constraints let a
/// client make a step fail permanently on purpose (see `cli::demo::demo_saga`).
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

[participants.ledger]
kind = "sqlite"
path = "demo/ledger.sqlite"
pool_size = 4
init = [
  "CREATE TABLE IF NOT EXISTS executions (run_id TEXT PRIMARY KEY, job TEXT NOT NULL, rows INTEGER NOT NULL CHECK (rows >= 0))",
]

[participants.warehouse]
kind = "duckdb"
path = "demo/warehouse.duckdb"
pool_size = 2
init = [
  "CREATE TABLE IF NOT EXISTS results (run_id VARCHAR PRIMARY KEY, job VARCHAR NOT NULL, rows BIGINT NOT NULL CHECK (rows <= 1000000))",
]

[participants.artifacts]
kind = "fs"
path = "demo/artifacts"

# For `sagalog bench` only: a participant that keeps its markers in memory. After a restart an
# interrupted step of it runs again, which is harmless: its action does nothing.
[participants.null]
kind = "memory"

[actions.record_execution]
participant = "ledger"
params = { run_id = "text", job = "text", rows = "int" }
forward = { sql = "INSERT INTO executions (run_id, job, rows) VALUES (?1, ?2, ?3)", args = ["run_id", "job", "rows"] }
compensate = { sql = "DELETE FROM executions WHERE run_id = ?1", args = ["run_id"] }
check = { sql = "SELECT count(*) FROM executions WHERE run_id = ?1", args = ["run_id"] }
retry = { max_attempts = 10, initial_backoff_ms = 100, max_backoff_ms = 5000, jitter = 0.2 }
timeout_ms = 30000

[actions.store_results]
participant = "warehouse"
params = { run_id = "text", job = "text", rows = "int" }
forward = { sql = "INSERT INTO results (run_id, job, rows) VALUES (?1, ?2, ?3)", args = ["run_id", "job", "rows"] }
compensate = { sql = "DELETE FROM results WHERE run_id = ?1", args = ["run_id"] }
check = { sql = "SELECT count(*) FROM results WHERE run_id = ?1", args = ["run_id"] }
retry = { max_attempts = 10, initial_backoff_ms = 100, max_backoff_ms = 5000, jitter = 0.2 }
timeout_ms = 30000

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
