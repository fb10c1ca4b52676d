//! The server's configuration: participants and the named actions clients may use.
//!
//! Actions are declared here, never sent by clients: a client's saga names actions and passes
//! typed parameter values, which are bound as statement parameters (or substituted into file
//! paths after checking they are plain names). No client can run arbitrary SQL.
//!
//! Validation errors name the step, the action and the parameter, because the person reading
//! them is a client developer who needs to fix one field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::{SagaDefinition, StepCall, StepPolicy, Value};
use crate::participant::{Direction, Kind, Operation};

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub index: IndexConfig,
    #[serde(default)]
    pub participants: BTreeMap<String, ParticipantConfig>,
    #[serde(default)]
    pub actions: BTreeMap<String, ActionConfig>,
    /// The gRPC server (only `serve` reads it).
    #[serde(default)]
    pub server: crate::server::config::ServerConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// `always` (default, crash-safe), `interval:<ms>` or `never` (not crash-safe).
    pub sync: String,
    pub segment_bytes_max: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig { sync: "always".into(), segment_bytes_max: 64 * 1024 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Sagas running at once; further submits wait in line (they are already durable).
    pub max_in_flight: usize,
    /// Consecutive retryable failures that open a participant's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before letting a trial call through.
    pub breaker_cooldown_ms: u64,
    /// Successful trial calls that close a half-open breaker.
    pub breaker_successes: u32,
    /// The most steps a saga may have.
    pub max_steps: usize,
    /// The largest encoded saga definition accepted, in bytes.
    pub max_saga_bytes: usize,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_in_flight: 256,
            breaker_failures: 5,
            breaker_cooldown_ms: 60_000,
            breaker_successes: 3,
            max_steps: 64,
            max_saga_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Finished sagas older than this are purged from the index (0 keeps them forever).
    pub retention_hours: u64,
    /// How often finished sagas are checkpointed so the journal can drop old segments.
    pub checkpoint_interval_ms: u64,
    /// The most memory the index's page cache may use, in bytes. The index holds every
    /// finished saga; this bound is what keeps the server's memory flat as they accumulate.
    pub cache_bytes_max: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            retention_hours: 30 * 24,
            checkpoint_interval_ms: 5_000,
            cache_bytes_max: crate::index::CACHE_BYTES_DEFAULT,
        }
    }
}

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
}

fn default_pool_size() -> usize {
    4
}

/// Parameter types an action may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Bool,
    Int,
    Float,
    Text,
    Bytes,
}

impl ParamType {
    fn accepts(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (ParamType::Bool, Value::Bool(_))
                | (ParamType::Int, Value::Int(_))
                | (ParamType::Float, Value::Float(_) | Value::Int(_))
                | (ParamType::Text, Value::Text(_))
                | (ParamType::Bytes, Value::Bytes(_))
        )
    }

    fn name(self) -> &'static str {
        match self {
            ParamType::Bool => "bool",
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::Text => "text",
            ParamType::Bytes => "bytes",
        }
    }
}

/// One direction of an action: a SQL statement with its argument order, or a file operation
/// whose `{name}` placeholders are filled with plain-name parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum OperationConfig {
    Sql {
        sql: String,
        #[serde(default)]
        args: Vec<String>,
    },
    Put {
        put: String,
        contents: String,
    },
    Delete {
        delete: String,
    },
    Copy {
        copy: String,
        to: String,
    },
    Noop {
        noop: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Fraction (0..=1) of each back-off that is randomised, so retries spread out.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { max_attempts: 5, initial_backoff_ms: 50, max_backoff_ms: 10_000, jitter: 0.2 }
    }
}

impl RetryConfig {
    /// The back-off before attempt `attempt` (2 = the first retry), without jitter applied.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(2).min(32);
        self.initial_backoff_ms.saturating_mul(1u64 << doublings).min(self.max_backoff_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    pub participant: String,
    #[serde(default)]
    pub params: BTreeMap<String, ParamType>,
    pub forward: OperationConfig,
    pub compensate: OperationConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default = "default_compensate_retry")]
    pub compensate_retry: RetryConfig,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// For SQL participants, optional: a read-only statement returning one count that is
    /// positive exactly when the forward effect of a step exists (`SELECT count(*) FROM t
    /// WHERE id = ?1`). `sagalog audit` runs it to find effects without markers and markers
    /// without effects; nothing else uses it.
    #[serde(default)]
    pub check: Option<CheckConfig>,
}

/// A read-only statement that counts a step's forward effect (see [`ActionConfig::check`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub sql: String,
    #[serde(default)]
    pub args: Vec<String>,
}

fn default_compensate_retry() -> RetryConfig {
    RetryConfig { max_attempts: 10, ..RetryConfig::default() }
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// Why a config file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// Why a saga is refused. Every variant names where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("saga id {id:?} is invalid: {reason}")]
    BadSagaId { id: String, reason: &'static str },
    #[error("saga has no steps")]
    NoSteps,
    #[error("saga has {count} steps; the limit is {max}")]
    TooManySteps { count: usize, max: usize },
    #[error("saga definition is {bytes} bytes; the limit is {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("step {step}: unknown action {action:?}")]
    UnknownAction { step: usize, action: String },
    #[error("step {step} ({action}): missing parameter {param:?} ({expected})")]
    MissingParam { step: usize, action: String, param: String, expected: &'static str },
    #[error("step {step} ({action}): unexpected parameter {param:?}")]
    ExtraParam { step: usize, action: String, param: String },
    #[error("step {step} ({action}): parameter {param:?} must be {expected}, got {found}")]
    WrongType { step: usize, action: String, param: String, expected: &'static str, found: &'static str },
    #[error(
        "step {step} ({action}): parameter {param:?} is used in a file path and must be a plain name ([A-Za-z0-9._-], not . or ..)"
    )]
    BadPathParam { step: usize, action: String, param: String },
}

/// The configuration a data directory gets when `serve` is started without `--config`: demo
/// participants that need nothing installed (SQLite, DuckDB, files) and a demo catalog modelled
/// on a real cross-database job: record a pipeline execution in SQLite, store its results in
/// DuckDB, and write an artefact file, each with its compensation. CHECK constraints let a
/// client make a step fail permanently on purpose (see [`demo_saga`]).
pub const EMBEDDED_DEFAULT: &str = r#"# sagalog configuration generated for this data directory (the embedded default).
# Edit it, or start `sagalog serve --config FILE` with your own; docs/example-config.toml has a
# PostgreSQL participant.

[journal]
sync = "always"

[executor]
max_in_flight = 256

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

[actions.write_artifact]
participant = "artifacts"
params = { run_id = "text", report = "text" }
forward = { put = "runs/{run_id}.json", contents = "report" }
compensate = { delete = "runs/{run_id}.json" }
retry = { max_attempts = 10, initial_backoff_ms = 100, max_backoff_ms = 5000, jitter = 0.2 }
timeout_ms = 30000
"#;

/// The demo saga of the embedded default, for run `run_id`. Two values of `rows` fail on
/// purpose, to exercise compensation: a negative count is refused by the ledger (step 0 fails,
/// nothing to undo), more than 1,000,000 by the warehouse (step 1 fails, step 0 is undone).
pub fn demo_saga(saga_id: &str, run_id: &str, rows: i64) -> SagaDefinition {
    let text = |s: &str| Value::Text(s.to_owned());
    let report = format!("{{\"run_id\":\"{run_id}\",\"rows\":{rows}}}");
    let step = |action: &str, params: Vec<(&str, Value)>| StepCall {
        action: action.to_owned(),
        params: params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    };
    SagaDefinition {
        id: saga_id.to_owned(),
        steps: vec![
            step(
                "record_execution",
                vec![("run_id", text(run_id)), ("job", text("nightly-etl")), ("rows", Value::Int(rows))],
            ),
            step(
                "store_results",
                vec![("run_id", text(run_id)), ("job", text("nightly-etl")), ("rows", Value::Int(rows))],
            ),
            step("write_artifact", vec![("run_id", text(run_id)), ("report", text(&report))]),
        ],
    }
}

/// Longest saga id accepted.
pub const SAGA_ID_BYTES_MAX: usize = 128;

/// The loaded, checked configuration.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub config: Config,
}

impl Catalog {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Catalog, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Catalog::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.display().to_string(), message },
            other => other,
        })
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Catalog, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: "<text>".into(), message: e.to_string() })?;
        Catalog::new(config)
    }

    /// Checks a config: every action names a declared participant of a kind that can run its
    /// operations, every argument and placeholder names a declared parameter.
    pub fn new(config: Config) -> Result<Catalog, ConfigError> {
        crate::journal::SyncPolicy::parse(&config.journal.sync).map_err(ConfigError::Invalid)?;
        for (name, p) in &config.participants {
            let needs = match p.kind {
                Kind::Postgres => p.url.is_none().then_some("url"),
                Kind::Sqlite | Kind::Duckdb | Kind::Fs => p.path.is_none().then_some("path"),
                Kind::Memory => None,
            };
            if let Some(field) = needs {
                return Err(ConfigError::Invalid(format!("participant {name:?} ({:?}) needs `{field}`", p.kind)));
            }
            if p.pool_size == 0 {
                return Err(ConfigError::Invalid(format!("participant {name:?}: pool_size must be at least 1")));
            }
        }
        for (name, action) in &config.actions {
            let invalid = |m: String| ConfigError::Invalid(format!("action {name:?}: {m}"));
            let Some(participant) = config.participants.get(&action.participant) else {
                return Err(invalid(format!("unknown participant {:?}", action.participant)));
            };
            for (direction, op) in [("forward", &action.forward), ("compensate", &action.compensate)] {
                check_operation(op, participant.kind, &action.params)
                    .map_err(|m| invalid(format!("{direction}: {m}")))?;
            }
            for (what, r) in [("retry", &action.retry), ("compensate_retry", &action.compensate_retry)] {
                if r.max_attempts == 0 || !(0.0..=1.0).contains(&r.jitter) {
                    return Err(invalid(format!("{what}: max_attempts must be ≥ 1 and jitter within 0..=1")));
                }
            }
            if action.timeout_ms == 0 {
                return Err(invalid("timeout_ms must be positive".into()));
            }
            if let Some(check) = &action.check {
                if !matches!(participant.kind, Kind::Postgres | Kind::Sqlite | Kind::Duckdb) {
                    return Err(invalid(format!("check: a {:?} participant cannot run SQL", participant.kind)));
                }
                if let Some(arg) = check.args.iter().find(|a| !action.params.contains_key(*a)) {
                    return Err(invalid(format!("check: uses undeclared parameter {arg:?}")));
                }
            }
        }
        Ok(Catalog { config })
    }

    pub fn action(&self, name: &str) -> Option<&ActionConfig> {
        self.config.actions.get(name)
    }

    /// Checks a saga against the catalog and returns each step's retry budgets.
    pub fn validate(&self, saga: &SagaDefinition) -> Result<Vec<StepPolicy>, ValidationError> {
        validate_saga_id(&saga.id)?;
        let limits = &self.config.executor;
        if saga.steps.is_empty() {
            return Err(ValidationError::NoSteps);
        }
        if saga.steps.len() > limits.max_steps {
            return Err(ValidationError::TooManySteps { count: saga.steps.len(), max: limits.max_steps });
        }
        let bytes = rmp_serde::to_vec_named(saga).map_or(usize::MAX, |b| b.len());
        if bytes > limits.max_saga_bytes {
            return Err(ValidationError::TooLarge { bytes, max: limits.max_saga_bytes });
        }
        saga.steps.iter().enumerate().map(|(i, call)| self.validate_step(i, call)).collect()
    }

    fn validate_step(&self, step: usize, call: &StepCall) -> Result<StepPolicy, ValidationError> {
        let Some(action) = self.action(&call.action) else {
            return Err(ValidationError::UnknownAction { step, action: call.action.clone() });
        };
        let named = |param: &str| (step, call.action.clone(), param.to_owned());
        for (param, ty) in &action.params {
            let (step, action, param) = named(param);
            match call.params.get(&param) {
                None => return Err(ValidationError::MissingParam { step, action, param, expected: ty.name() }),
                Some(v) if !ty.accepts(v) => {
                    return Err(ValidationError::WrongType {
                        step,
                        action,
                        param,
                        expected: ty.name(),
                        found: v.type_name(),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = call.params.keys().find(|k| !action.params.contains_key(*k)) {
            let (step, action, param) = named(extra);
            return Err(ValidationError::ExtraParam { step, action, param });
        }
        for op in [&action.forward, &action.compensate] {
            for param in path_params(op) {
                let ok = matches!(call.params.get(&param), Some(Value::Text(t)) if is_plain_name(t));
                if !ok {
                    let (step, action, param) = named(&param);
                    return Err(ValidationError::BadPathParam { step, action, param });
                }
            }
        }
        Ok(StepPolicy {
            max_attempts: action.retry.max_attempts,
            compensate_max_attempts: action.compensate_retry.max_attempts,
        })
    }

    /// The concrete operation for a validated step, and the participant that runs it.
    pub fn operation(&self, call: &StepCall, direction: Direction) -> Result<(String, Operation), String> {
        let action =
            self.action(&call.action).ok_or_else(|| format!("action {:?} is no longer declared", call.action))?;
        let op = match direction {
            Direction::Forward => &action.forward,
            Direction::Compensate => &action.compensate,
        };
        let arg = |name: &str| call.params.get(name).cloned().ok_or_else(|| format!("parameter {name:?} is missing"));
        let text = |name: &str| match call.params.get(name) {
            Some(Value::Text(t)) => Ok(t.as_bytes().to_vec()),
            Some(Value::Bytes(b)) => Ok(b.clone()),
            Some(other) => Err(format!("parameter {name:?} is {}, not text or bytes", other.type_name())),
            None => Err(format!("parameter {name:?} is missing")),
        };
        let operation = match op {
            OperationConfig::Sql { sql, args } => {
                Operation::Sql { sql: sql.clone(), args: args.iter().map(|a| arg(a)).collect::<Result<_, _>>()? }
            }
            OperationConfig::Put { put, contents } => {
                Operation::FilePut { path: fill_path(put, &call.params)?, contents: text(contents)? }
            }
            OperationConfig::Delete { delete } => Operation::FileDelete { path: fill_path(delete, &call.params)? },
            OperationConfig::Copy { copy, to } => {
                Operation::FileCopy { from: fill_path(copy, &call.params)?, to: fill_path(to, &call.params)? }
            }
            OperationConfig::Noop { .. } => Operation::Noop,
        };
        Ok((action.participant.clone(), operation))
    }
}

impl Catalog {
    /// The effect check of a step (see [`ActionConfig::check`]): its participant, statement and
    /// bound arguments; `None` when the action declares none (or is no longer declared).
    pub fn check(&self, call: &StepCall) -> Option<(String, String, Vec<Value>)> {
        let action = self.action(&call.action)?;
        let check = action.check.as_ref()?;
        let args = check.args.iter().map(|a| call.params.get(a).cloned()).collect::<Option<Vec<_>>>()?;
        Some((action.participant.clone(), check.sql.clone(), args))
    }
}

/// Saga ids are chosen by clients and end up in file names and marker keys.
pub fn validate_saga_id(id: &str) -> Result<(), ValidationError> {
    let bad = |reason| Err(ValidationError::BadSagaId { id: id.chars().take(200).collect(), reason });
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > SAGA_ID_BYTES_MAX {
        return bad("it is longer than 128 bytes");
    }
    if id.chars().any(|c| c.is_control()) {
        return bad("it contains control characters");
    }
    Ok(())
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `{name}` placeholders in a path template.
fn placeholders(template: &str) -> Vec<String> {
    template.split('{').skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned())).collect()
}

fn path_params(op: &OperationConfig) -> Vec<String> {
    match op {
        OperationConfig::Put { put, .. } => placeholders(put),
        OperationConfig::Delete { delete } => placeholders(delete),
        OperationConfig::Copy { copy, to } => [placeholders(copy), placeholders(to)].concat(),
        OperationConfig::Sql { .. } | OperationConfig::Noop { .. } => Vec::new(),
    }
}

fn fill_path(template: &str, params: &BTreeMap<String, Value>) -> Result<String, String> {
    let mut out = template.to_owned();
    for name in placeholders(template) {
        match params.get(&name) {
            Some(Value::Text(t)) if is_plain_name(t) => out = out.replace(&format!("{{{name}}}"), t),
            _ => return Err(format!("path parameter {name:?} is missing or not a plain name")),
        }
    }
    Ok(out)
}

fn check_operation(op: &OperationConfig, kind: Kind, params: &BTreeMap<String, ParamType>) -> Result<(), String> {
    let sql_kind = matches!(kind, Kind::Postgres | Kind::Sqlite | Kind::Duckdb | Kind::Memory);
    let fs_kind = matches!(kind, Kind::Fs | Kind::Memory);
    let declared = |name: &String| {
        if params.contains_key(name) { Ok(()) } else { Err(format!("uses undeclared parameter {name:?}")) }
    };
    match op {
        OperationConfig::Sql { args, .. } if sql_kind => args.iter().try_for_each(declared),
        OperationConfig::Sql { .. } => Err(format!("a {kind:?} participant cannot run SQL")),
        OperationConfig::Noop { .. } => Ok(()),
        other if fs_kind => {
            if let OperationConfig::Put { contents, .. } = other {
                declared(contents)?;
            }
            for name in path_params(other) {
                declared(&name)?;
                if params.get(&name) != Some(&ParamType::Text) {
                    return Err(format!("path parameter {name:?} must be declared as text"));
                }
            }
            Ok(())
        }
        _ => Err(format!("a {kind:?} participant cannot run file operations")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [participants.db]
        kind = "sqlite"
        path = "db.sqlite"
        [participants.files]
        kind = "fs"
        path = "files"
        [actions.insert]
        participant = "db"
        params = { id = "text", n = "int" }
        forward = { sql = "INSERT INTO t(id, n) VALUES (?1, ?2)", args = ["id", "n"] }
        compensate = { sql = "DELETE FROM t WHERE id = ?1", args = ["id"] }
        retry = { max_attempts = 3 }
        [actions.artifact]
        participant = "files"
        params = { id = "text", body = "text" }
        forward = { put = "out/{id}.json", contents = "body" }
        compensate = { delete = "out/{id}.json" }
    "#;

    fn saga(steps: Vec<StepCall>) -> SagaDefinition {
        SagaDefinition { id: "s-1".into(), steps }
    }

    fn call(action: &str, params: &[(&str, Value)]) -> StepCall {
        StepCall { action: action.into(), params: params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    #[test]
    fn valid_saga_gets_its_policies_and_operations() {
        let c = Catalog::parse(CONFIG).unwrap();
        let s = saga(vec![
            call("insert", &[("id", Value::Text("a".into())), ("n", Value::Int(1))]),
            call("artifact", &[("id", Value::Text("a".into())), ("body", Value::Text("{}".into()))]),
        ]);
        let policies = c.validate(&s).unwrap();
        assert_eq!(policies[0], StepPolicy { max_attempts: 3, compensate_max_attempts: 10 });
        let (p, op) = c.operation(&s.steps[1], Direction::Forward).unwrap();
        assert_eq!(p, "files");
        assert_eq!(op, Operation::FilePut { path: "out/a.json".into(), contents: b"{}".to_vec() });
        let (_, op) = c.operation(&s.steps[0], Direction::Compensate).unwrap();
        assert_eq!(
            op,
            Operation::Sql { sql: "DELETE FROM t WHERE id = ?1".into(), args: vec![Value::Text("a".into())] }
        );
    }

    #[test]
    fn validation_errors_name_the_step_and_parameter() {
        let c = Catalog::parse(CONFIG).unwrap();
        let ok = call("insert", &[("id", Value::Text("a".into())), ("n", Value::Int(1))]);
        let cases = [
            (call("nope", &[]), "step 1: unknown action \"nope\""),
            (call("insert", &[("id", Value::Text("a".into()))]), "step 1 (insert): missing parameter \"n\" (int)"),
            (
                call("insert", &[("id", Value::Text("a".into())), ("n", Value::Text("x".into()))]),
                "step 1 (insert): parameter \"n\" must be int, got text",
            ),
            (
                call("insert", &[("id", Value::Text("a".into())), ("n", Value::Int(1)), ("z", Value::Null)]),
                "step 1 (insert): unexpected parameter \"z\"",
            ),
            (
                call("artifact", &[("id", Value::Text("../etc".into())), ("body", Value::Text("x".into()))]),
                "step 1 (artifact): parameter \"id\" is used in a file path",
            ),
        ];
        for (bad, message) in cases {
            let err = c.validate(&saga(vec![ok.clone(), bad])).unwrap_err().to_string();
            assert!(err.starts_with(message), "{err}");
        }
        assert_eq!(c.validate(&saga(vec![])).unwrap_err(), ValidationError::NoSteps);
        let many = saga(vec![ok.clone(); 65]);
        assert!(matches!(c.validate(&many), Err(ValidationError::TooManySteps { count: 65, max: 64 })));
        let bad_id = SagaDefinition { id: String::new(), steps: vec![ok] };
        assert!(matches!(c.validate(&bad_id), Err(ValidationError::BadSagaId { .. })));
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            ("[participants.x]\nkind = \"sqlite\"", "needs `path`"),
            ("[participants.x]\nkind = \"oracle\"\npath = \"a\"", "unknown variant"),
            ("[journal]\nsync = \"sometimes\"", "unknown sync policy"),
            (
                "[participants.f]\nkind = \"fs\"\npath = \"f\"\n[actions.a]\nparticipant = \"f\"\nforward = { sql = \"x\" }\ncompensate = { noop = true }",
                "cannot run SQL",
            ),
            (
                "[participants.d]\nkind = \"sqlite\"\npath = \"d\"\n[actions.a]\nparticipant = \"d\"\nforward = { sql = \"x\", args = [\"id\"] }\ncompensate = { noop = true }",
                "undeclared parameter \"id\"",
            ),
            (
                "[actions.a]\nparticipant = \"ghost\"\nforward = { noop = true }\ncompensate = { noop = true }",
                "unknown participant",
            ),
            (
                "[participants.f]\nkind = \"fs\"\npath = \"f\"\n[actions.a]\nparticipant = \"f\"\nforward = { noop = true }\ncompensate = { noop = true }\ncheck = { sql = \"SELECT 1\" }",
                "check: a Fs participant cannot run SQL",
            ),
            (
                "[participants.d]\nkind = \"sqlite\"\npath = \"d\"\n[actions.a]\nparticipant = \"d\"\nforward = { noop = true }\ncompensate = { noop = true }\ncheck = { sql = \"SELECT 1\", args = [\"id\"] }",
                "check: uses undeclared parameter \"id\"",
            ),
        ];
        for (text, needle) in cases {
            let err = Catalog::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryConfig { max_attempts: 10, initial_backoff_ms: 100, max_backoff_ms: 1000, jitter: 0.0 };
        assert_eq!([2, 3, 4, 5, 6, 40].map(|a| r.backoff_ms(a)), [100, 200, 400, 800, 1000, 1000]);
    }
}

#[cfg(test)]
mod shipped_configs {
    use super::*;

    /// The embedded default and the documented example config both load.
    #[test]
    fn embedded_default_and_example_config_are_valid() {
        let c = Catalog::parse(EMBEDDED_DEFAULT).unwrap();
        c.validate(&demo_saga("demo-1", "run-1", 10)).unwrap();
        Catalog::parse(include_str!("../docs/example-config.toml")).unwrap();
    }
}
