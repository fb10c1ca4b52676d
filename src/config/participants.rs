//! The `[participants.NAME]` blocks: which databases, file trees and HTTP services steps act
//! on, and the participant kinds a config can declare. Schema and defaults only;
//! `participant::open_all` opens them (and reads the `env:` header values).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    pub kind: Kind,
    /// File or directory for `sqlite`, `duckdb` and `fs`, relative to the data directory
    /// unless absolute.
    #[serde(default)]
    pub path: Option<String>,
    /// libpq connection string for `postgres`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Statements run once when the participant is opened (for example
    /// `CREATE TABLE IF NOT EXISTS …`), for SQLite and DuckDB participants.
    #[serde(default)]
    pub init: Vec<String>,
    /// The marker table of a SQL participant (`postgres`, `sqlite`, `duckdb`); default
    /// `sagalog_markers`. Two sagalog instances sharing one database may each keep their own
    /// (their markers never vouch for each other's sagas either way: every marker carries its
    /// instance's id in its scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker_table: Option<String>,
    /// The fence table of a SQL participant; default `sagalog_fences`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_table: Option<String>,
    /// Whether a `postgres` participant runs the steps that arrive together in one
    /// transaction, each under its own savepoint, with one commit for all (default true; see
    /// `participant/postgres/group.rs`). `false`: every step commits a transaction of its own.
    /// SQLite and DuckDB participants always group-commit (one writer at a time anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_commit: Option<bool>,
    /// The service an `http` participant calls (`http://host:port`, optionally with a path
    /// prefix); every action's path is appended to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Headers every request of an `http` participant carries; a value `env:NAME` is read
    /// from the environment variable `NAME` when the participant is opened.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// How long one request of an `http` participant may take, connect included; default
    /// [`HTTP_TIMEOUT_MS_DEFAULT`]. The action's own `timeout_ms` bounds the step as for
    /// every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The health probe of an `http` participant (`"GET /healthz"`: a 2xx answer is
    /// healthy); without it the probe only opens a TCP connection to the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The task queue a `worker` participant hands its steps to (required for `worker`, and
    /// for `worker` only; unique across participants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// How long a worker holds a task it polled without completing or heartbeating it; then
    /// the attempt fails (retryable) and the task is handed out again (`worker` only; default
    /// 30000). A queue no worker has polled for three leases opens the participant's breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// The most tasks of a `worker` queue waiting for a worker at once; one more fails its
    /// attempt (retryable) naming this key (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_waiting_max: Option<usize>,
    /// The most worker ids a `worker` queue keeps track of; a poll from one more answers
    /// RESOURCE_EXHAUSTED naming this key (default 1000). A worker unseen for three leases is
    /// forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_max: Option<usize>,
}

fn default_pool_size() -> usize {
    4
}

/// The default marker table name.
pub const MARKER_TABLE_DEFAULT: &str = "sagalog_markers";
/// The default fence table name.
pub const FENCE_TABLE_DEFAULT: &str = "sagalog_fences";
/// The default per-request timeout of an `http` participant.
pub const HTTP_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// A worker queue's default lease (`lease_ms`).
pub const LEASE_MS_DEFAULT: u64 = 30_000;
/// A worker queue's default `tasks_waiting_max`.
pub const TASKS_WAITING_MAX_DEFAULT: usize = 10_000;
/// A worker queue's default `workers_max`.
pub const WORKERS_MAX_DEFAULT: usize = 1000;

impl ParticipantConfig {
    /// The marker table this participant uses.
    pub fn marker_table(&self) -> &str {
        self.marker_table.as_deref().unwrap_or(MARKER_TABLE_DEFAULT)
    }

    /// The fence table this participant uses.
    pub fn fence_table(&self) -> &str {
        self.fence_table.as_deref().unwrap_or(FENCE_TABLE_DEFAULT)
    }

    /// Whether a `postgres` participant group-commits its steps.
    pub fn group_commit(&self) -> bool {
        self.group_commit.unwrap_or(true)
    }

    /// The per-request timeout of an `http` participant.
    pub fn http_timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(HTTP_TIMEOUT_MS_DEFAULT)
    }

    /// A worker participant's lease in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms.unwrap_or(LEASE_MS_DEFAULT)
    }

    /// A worker participant's `tasks_waiting_max`.
    pub fn tasks_waiting_max(&self) -> usize {
        self.tasks_waiting_max.unwrap_or(TASKS_WAITING_MAX_DEFAULT)
    }

    /// A worker participant's `workers_max`.
    pub fn workers_max(&self) -> usize {
        self.workers_max.unwrap_or(WORKERS_MAX_DEFAULT)
    }
}

/// Why `name` cannot be a marker or fence table's name, if it cannot: the name is pasted into
/// statements, so it must be a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`, at most 63
/// bytes, PostgreSQL's limit), which needs no quoting in any of the three dialects.
pub fn table_name_problem(name: &str) -> Option<String> {
    let plain = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !plain {
        Some(format!("{name:?} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*)"))
    } else if name.len() > 63 {
        Some(format!("{name:?} is longer than 63 bytes"))
    } else {
        None
    }
}

/// The kinds of participant a config can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
    Sqlite,
    Duckdb,
    Fs,
    /// In-memory, for tests and benchmarks only.
    Memory,
    /// Runs `noop` steps and keeps nothing (no markers): for load tests and demos, whose
    /// memory must not grow with the steps run (`participant/null.rs`).
    Null,
    /// An HTTP service: no local transaction and no marker; each request carries an
    /// `Idempotency-Key` the receiver deduplicates by (at-least-once).
    Http,
    /// A task queue served by the user's own worker processes over the `Workers` API. Keeps
    /// no markers: effects are at-least-once, deduplicated by the worker with the step's
    /// idempotency key.
    Worker,
}

impl Kind {
    /// The name a config spells it with.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Sqlite => "sqlite",
            Kind::Duckdb => "duckdb",
            Kind::Fs => "fs",
            Kind::Memory => "memory",
            Kind::Null => "null",
            Kind::Http => "http",
            Kind::Worker => "worker",
        }
    }
}
