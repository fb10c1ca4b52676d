//! The catalog: the checked configuration, and what it lets clients do. The file's schema
//! and defaults live in [`crate::config`]; this module checks actions against their
//! participants, validates submitted sagas, and binds their values to operations.
//!
//! Actions are declared here, never sent by clients: a client's saga names actions and passes
//! typed parameter values, which are bound as statement parameters (or substituted into file
//! paths after checking they are plain names, or into an HTTP request's path, percent-encoded,
//! and its JSON body as JSON values). No client can run arbitrary SQL or pick another URL.
//!
//! Validation errors name the step, the action and the parameter, because the person reading
//! them is a client developer who needs to fix one field.
//!
//! A delay action (`delay_ms`) has no participant and no operation: it is checked for its
//! delay alone (positive and within `executor.delay_ms_max` when fixed; a declared `int`
//! parameter `delay_ms` when `"param"`, whose submitted value is checked at submit), and
//! [`delay_of`] gives a step's delay where [`bind`] gives a participant step's operation.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Kind;
pub use crate::config::{
    ActionConfig, CheckConfig, Config, ConfigError, DELAY_PARAM, DelayMs, EMBEDDED_DEFAULT, ExecutorConfig,
    IndexConfig, JournalConfig, OperationConfig, ParamType, ParticipantConfig, RetryConfig, RowsGuard, RowsSpec,
};
use crate::engine::{Direction, OWN_OUTPUT_PREFIX, OutputRef, SagaDefinition, StepCall, StepPolicy, Value};
use crate::participant::{Operation, Statement};

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
    #[error("step {step}: unknown action {action:?}{}", did_you_mean(suggestion))]
    UnknownAction { step: usize, action: String, suggestion: Option<String> },
    #[error("step {step} ({action}): missing parameter {param:?} ({expected})")]
    MissingParam { step: usize, action: String, param: String, expected: &'static str },
    #[error("step {step} ({action}): unexpected parameter {param:?}{}", did_you_mean(suggestion))]
    ExtraParam { step: usize, action: String, param: String, suggestion: Option<String> },
    #[error("step {step} ({action}): parameter {param:?} must be {expected}, got {found}")]
    WrongType { step: usize, action: String, param: String, expected: &'static str, found: &'static str },
    #[error(
        "step {step} ({action}): parameter {param:?} is used in a file path and must be a plain name ([A-Za-z0-9._-], not . or ..)"
    )]
    BadPathParam { step: usize, action: String, param: String },
    #[error("step {step} ({action}): parameter {param:?} takes {reference:?}: {reason}")]
    BadReference { step: usize, action: String, param: String, reference: String, reason: String },
    #[error(
        "step {step} ({action}): parameter {param:?} must be a delay from 0 to {max} ms (executor.delay_ms_max), got {value}"
    )]
    BadDelay { step: usize, action: String, param: String, value: i64, max: u64 },
    /// More than one problem: each of them, in step order.
    #[error("{}", many(.0))]
    Many(Vec<ValidationError>),
}

/// The most problems one error lists; the rest are counted.
pub const PROBLEMS_LISTED_MAX: usize = 20;

fn many(problems: &[ValidationError]) -> String {
    let listed: Vec<String> = problems.iter().take(PROBLEMS_LISTED_MAX).map(ToString::to_string).collect();
    let more = problems.len().saturating_sub(PROBLEMS_LISTED_MAX);
    let tail = if more > 0 { format!("; and {more} more") } else { String::new() };
    format!("{} problems: {}{tail}", problems.len(), listed.join("; "))
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default()
}

/// The candidate closest to `word` by edit distance, if one is close enough to be a likely
/// typo: at most a third of the word's length, and at least 1 (ties: the first in order).
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates.map(|c| (edit_distance(word, c), c)).filter(|(d, _)| *d <= limit).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}

/// Edit distance over chars, counting an adjacent transposition ("nmae" for "name") as one
/// edit (optimal string alignment). Both inputs are cut to 256 chars: they are names a
/// client or a config wrote, and a longer one is no typo of a declared name.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().take(256).collect(), b.chars().take(256).collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
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
        Catalog::new(Config::read(path)?)
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Catalog, ConfigError> {
        Catalog::new(Config::parse(text)?)
    }

    /// Checks a config: every action names a declared participant of a kind that can run its
    /// operations, every argument and placeholder names a declared parameter.
    pub fn new(config: Config) -> Result<Catalog, ConfigError> {
        crate::journal::SyncPolicy::parse(&config.journal.sync).map_err(ConfigError::Invalid)?;
        check_limits(&config).map_err(ConfigError::Invalid)?;
        for (name, p) in &config.participants {
            let needs = match p.kind {
                Kind::Postgres => p.url.is_none().then_some("url"),
                Kind::Sqlite | Kind::Duckdb | Kind::Fs => p.path.is_none().then_some("path"),
                Kind::Http => p.base_url.is_none().then_some("base_url"),
                Kind::Worker => p.queue.is_none().then_some("queue"),
                Kind::Memory | Kind::Null => None,
            };
            if let Some(field) = needs {
                return Err(ConfigError::Invalid(format!("participant {name:?} ({:?}) needs `{field}`", p.kind)));
            }
            check_http_participant(p).map_err(|m| ConfigError::Invalid(format!("participant {name:?}: {m}")))?;
            if p.pool_size == 0 {
                return Err(ConfigError::Invalid(format!("participant {name:?}: pool_size must be at least 1")));
            }
            for (key, table) in [("marker_table", &p.marker_table), ("fence_table", &p.fence_table)] {
                let Some(table) = table else { continue };
                if !matches!(p.kind, Kind::Postgres | Kind::Sqlite | Kind::Duckdb) {
                    return Err(ConfigError::Invalid(format!(
                        "participant {name:?} ({}): `{key}` is for SQL participants only",
                        p.kind.as_str()
                    )));
                }
                if let Some(problem) = crate::config::table_name_problem(table) {
                    return Err(ConfigError::Invalid(format!("participant {name:?}: `{key}` {problem}")));
                }
            }
            if p.group_commit.is_some() && p.kind != Kind::Postgres {
                return Err(ConfigError::Invalid(format!(
                    "participant {name:?} ({}): `group_commit` is for postgres participants only (SQLite and DuckDB \
                     always group-commit)",
                    p.kind.as_str()
                )));
            }
            check_worker_keys(name, p, &config.participants).map_err(ConfigError::Invalid)?;
            if p.marker_table() == p.fence_table() {
                return Err(ConfigError::Invalid(format!(
                    "participant {name:?}: `marker_table` and `fence_table` are both {:?}",
                    p.marker_table()
                )));
            }
        }
        for (name, action) in &config.actions {
            let invalid = |m: String| ConfigError::Invalid(format!("action {name:?}: {m}"));
            if let Some(delay) = action.delay_ms {
                check_delay(action, delay, config.executor.delay_ms_max).map_err(invalid)?;
                continue;
            }
            let Some(participant) = config.participants.get(&action.participant) else {
                return Err(invalid(format!("unknown participant {:?}", action.participant)));
            };
            if let Some(name) = action.params.keys().find(|n| n.starts_with(OWN_OUTPUT_PREFIX)) {
                return Err(invalid(format!(
                    "parameter {name:?}: names starting with {OWN_OUTPUT_PREFIX:?} are reserved"
                )));
            }
            let returning_kind =
                matches!(participant.kind, Kind::Postgres | Kind::Sqlite | Kind::Duckdb | Kind::Http | Kind::Worker);
            if !action.returns.is_empty() && !returning_kind {
                return Err(invalid(format!(
                    "returns: a {} participant returns no outputs (SQL participants return a row's columns, HTTP ones \
                     values of the JSON answer, workers the output of their task)",
                    participant.kind.as_str()
                )));
            }
            if participant.kind == Kind::Http {
                check_http_outputs(action).map_err(invalid)?;
            } else if !action.returns.is_empty() && participant.kind != Kind::Worker && !returns_a_row(&action.forward)
            {
                return Err(invalid(
                    "returns: the forward operation must be SQL whose (last) statement returns the row".into(),
                ));
            }
            for (direction, op) in [("forward", &action.forward), ("compensate", &action.compensate)] {
                // A compensation may take its own step's forward outputs (`output.name`).
                let mut known = action.params.clone();
                if direction == "compensate" {
                    known.extend(action.returns.iter().map(|(k, t)| (format!("{OWN_OUTPUT_PREFIX}{k}"), *t)));
                }
                check_operation(op, participant.kind, &known).map_err(|m| invalid(format!("{direction}: {m}")))?;
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
        // Every problem of every step, not only the first.
        let mut problems = Vec::new();
        let mut policies = Vec::with_capacity(saga.steps.len());
        for (i, call) in saga.steps.iter().enumerate() {
            if let Some(policy) = self.validate_step(i, call, &saga.steps[..i], &mut problems) {
                policies.push(policy);
            }
        }
        match problems.len() {
            0 => Ok(policies),
            1 => Err(problems.remove(0)),
            _ => Err(ValidationError::Many(problems)),
        }
    }

    /// The retry budgets of one step, or `None` after pushing its every problem.
    fn validate_step(
        &self,
        step: usize,
        call: &StepCall,
        earlier: &[StepCall],
        problems: &mut Vec<ValidationError>,
    ) -> Option<StepPolicy> {
        let Some(action) = self.action(&call.action) else {
            let suggestion = closest(&call.action, self.config.actions.keys().map(String::as_str)).map(str::to_owned);
            problems.push(ValidationError::UnknownAction { step, action: echo(&call.action), suggestion });
            return None;
        };
        let before = problems.len();
        let named = |param: &str| (step, echo(&call.action), echo(param));
        let extra = |param: &str| {
            let suggestion = closest(param, action.params.keys().map(String::as_str)).map(str::to_owned);
            let (step, action, param) = named(param);
            ValidationError::ExtraParam { step, action, param, suggestion }
        };
        for (name, reference) in &call.from {
            let (step, action_name, param) = named(name);
            let bad = |reason: String| ValidationError::BadReference {
                step,
                action: action_name.clone(),
                param: param.clone(),
                reference: echo(reference),
                reason,
            };
            let Some(ty) = action.params.get(name) else {
                problems.push(extra(name));
                continue;
            };
            if call.params.contains_key(name) {
                problems.push(bad("the parameter also has a value; give one or the other".into()));
                continue;
            }
            let Some(target) = OutputRef::parse(reference) else {
                problems.push(bad("a reference has the form steps.N.name".into()));
                continue;
            };
            let Some(source) = earlier.get(target.step as usize) else {
                problems.push(bad(format!("step {} is not an earlier step", target.step)));
                continue;
            };
            match self.action(&source.action).and_then(|a| a.returns.get(&target.output)) {
                None => problems.push(bad(format!(
                    "step {} ({}) returns no output {:?}",
                    target.step,
                    echo(&source.action),
                    echo(&target.output)
                ))),
                Some(out) if !(out == ty || (*ty == ParamType::Float && *out == ParamType::Int)) => {
                    problems.push(bad(format!("that output is {}, the parameter {}", out.name(), ty.name())));
                }
                Some(_) => {}
            }
        }
        for (name, ty) in &action.params {
            let (step, action, param) = named(name);
            match call.params.get(name) {
                None if call.from.contains_key(name) => {}
                None => problems.push(ValidationError::MissingParam { step, action, param, expected: ty.name() }),
                Some(v) if !accepts(*ty, v) => problems.push(ValidationError::WrongType {
                    step,
                    action,
                    param,
                    expected: ty.name(),
                    found: v.type_name(),
                }),
                Some(_) => {}
            }
        }
        for name in call.params.keys().filter(|k| !action.params.contains_key(*k)) {
            problems.push(extra(name));
        }
        if action.delay_ms == Some(DelayMs::Param) {
            let max = self.config.executor.delay_ms_max;
            let (step, action_name, param) = named(DELAY_PARAM);
            if let Some(reference) = call.from.get(DELAY_PARAM) {
                problems.push(ValidationError::BadReference {
                    step,
                    action: action_name,
                    param,
                    reference: echo(reference),
                    reason: "a delay takes a value, checked at submit, not an earlier step's output".into(),
                });
            } else if let Some(Value::Int(value)) = call.params.get(DELAY_PARAM)
                && u64::try_from(*value).map_or(true, |ms| ms > max)
            {
                problems.push(ValidationError::BadDelay { step, action: action_name, param, value: *value, max });
            }
        }
        let mut path_params_seen = std::collections::BTreeSet::new();
        for op in [&action.forward, &action.compensate] {
            for param in path_params(op) {
                let ok = matches!(call.params.get(&param), Some(Value::Text(t)) if is_plain_name(t));
                if !ok && path_params_seen.insert(param.clone()) {
                    let (step, action, param) = named(&param);
                    problems.push(ValidationError::BadPathParam { step, action, param });
                }
            }
        }
        (problems.len() == before).then_some(StepPolicy {
            max_attempts: action.retry.max_attempts,
            compensate_max_attempts: action.compensate_retry.max_attempts,
        })
    }

    /// The concrete operation for a validated step, and the participant that runs it, from
    /// today's config. A saga runs the definitions journaled with it ([`bind`]); this is for
    /// sagas journaled before definitions were.
    pub fn operation(&self, call: &StepCall, direction: Direction) -> Result<(String, Operation), String> {
        let action =
            self.action(&call.action).ok_or_else(|| format!("action {:?} is no longer declared", call.action))?;
        bind(action, call, direction)
    }

    /// The definitions of the actions `saga` calls, as declared now: journaled with its
    /// `SagaSubmitted`, so that the saga runs them whatever the config says later. Actions
    /// the catalog does not declare are left out (validation refuses such a saga first).
    pub fn resolved_actions(&self, saga: &SagaDefinition) -> BTreeMap<String, ActionConfig> {
        saga.steps.iter().filter_map(|s| self.action(&s.action).map(|a| (s.action.clone(), a.clone()))).collect()
    }
}

/// How long the step `call` of a delay action waits, in milliseconds: `None` for a
/// participant action, an error for a `delay_ms` parameter that is missing, not an `int` or
/// outside `0..=delay_ms_max` (submit refuses such a step; this is for a journaled one).
pub fn delay_of(action: &ActionConfig, call: &StepCall, delay_ms_max: u64) -> Option<Result<u64, String>> {
    Some(match action.delay_ms? {
        DelayMs::Fixed(ms) => Ok(ms),
        DelayMs::Param => match call.params.get(DELAY_PARAM) {
            Some(Value::Int(ms)) => u64::try_from(*ms)
                .ok()
                .filter(|ms| *ms <= delay_ms_max)
                .ok_or_else(|| format!("parameter {DELAY_PARAM:?} = {ms} is not a delay from 0 to {delay_ms_max} ms")),
            Some(other) => Err(format!("parameter {DELAY_PARAM:?} is {}, not int", other.type_name())),
            None => Err(format!("parameter {DELAY_PARAM:?} is missing")),
        },
    })
}

/// A delay action's checks at load: a fixed delay is positive, within `delay_ms_max`, and takes
/// no parameters; `"param"` declares exactly the `int` parameter `delay_ms`.
fn check_delay(action: &ActionConfig, delay: DelayMs, delay_ms_max: u64) -> Result<(), String> {
    match delay {
        DelayMs::Fixed(0) => Err("delay_ms must be positive".into()),
        DelayMs::Fixed(ms) if ms > delay_ms_max => {
            Err(format!("delay_ms = {ms} is above executor.delay_ms_max ({delay_ms_max})"))
        }
        DelayMs::Fixed(_) if !action.params.is_empty() => Err(format!(
            "a fixed delay takes no parameters (for a delay chosen per step, write delay_ms = \"param\" and params = {{ {DELAY_PARAM} = \"int\" }})"
        )),
        DelayMs::Fixed(_) => Ok(()),
        DelayMs::Param => {
            let declared: Vec<(&str, ParamType)> = action.params.iter().map(|(k, t)| (k.as_str(), *t)).collect();
            if declared != [(DELAY_PARAM, ParamType::Int)] {
                return Err(format!(
                    "delay_ms = \"param\" takes the delay from the step's parameter: declare exactly params = {{ {DELAY_PARAM} = \"int\" }}"
                ));
            }
            Ok(())
        }
    }
}

/// The concrete operation of `call` in `direction` under `action`'s definition, and the
/// participant that runs it: the saga's values bound as parameters, file path placeholders
/// filled with plain names.
pub fn bind(action: &ActionConfig, call: &StepCall, direction: Direction) -> Result<(String, Operation), String> {
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
        OperationConfig::Sql { sql, args, rows } => Operation::Sql {
            sql: sql.clone(),
            args: args.iter().map(|a| arg(a)).collect::<Result<_, _>>()?,
            rows: *rows,
        },
        OperationConfig::Put { put, contents } => {
            Operation::FilePut { path: fill_path(put, &call.params)?, contents: text(contents)? }
        }
        OperationConfig::Delete { delete } => Operation::FileDelete { path: fill_path(delete, &call.params)? },
        OperationConfig::Copy { copy, to } => {
            Operation::FileCopy { from: fill_path(copy, &call.params)?, to: fill_path(to, &call.params)? }
        }
        OperationConfig::Noop { .. } => Operation::Noop,
        OperationConfig::Http { http, json, output } => {
            let (method, path) = crate::participant::http::request_line(http)?;
            let outputs = match direction {
                Direction::Forward => output
                    .iter()
                    .map(|(name, pointer)| {
                        let ty = action.returns.get(name).copied().unwrap_or(ParamType::Text);
                        (name.clone(), (pointer.clone(), ty))
                    })
                    .collect(),
                Direction::Compensate => BTreeMap::new(),
            };
            Operation::Http {
                method: method.to_owned(),
                path: fill_http_path(path, &call.params)?,
                body: json.as_ref().map(|body| fill_json(body, &call.params)).transpose()?,
                outputs,
            }
        }
        OperationConfig::Task { task, args } => {
            let params = if args.is_empty() {
                call.params.clone()
            } else {
                args.iter().map(|a| Ok((a.clone(), arg(a)?))).collect::<Result<_, String>>()?
            };
            let returns = if direction == Direction::Forward { action.returns.clone() } else { BTreeMap::new() };
            Operation::Task { task: task.clone(), params, returns }
        }
        OperationConfig::Statements { sql, args, rows } => Operation::Statements(
            sql.iter()
                .enumerate()
                .map(|(i, sql)| {
                    let names = args.get(i).map(Vec::as_slice).unwrap_or_default();
                    Ok(Statement {
                        sql: sql.clone(),
                        args: names.iter().map(|a| arg(a)).collect::<Result<_, String>>()?,
                        rows: rows.as_ref().and_then(|r| r.of(i)),
                        returns: BTreeMap::new(),
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
    };
    // A forward step that declares outputs: its (last) statement returns the row they are
    // read from.
    let operation = match operation {
        operation if direction == Direction::Compensate || action.returns.is_empty() => operation,
        Operation::Sql { sql, args, rows } => {
            Operation::Statements(vec![Statement { sql, args, rows, returns: action.returns.clone() }])
        }
        Operation::Statements(mut statements) => {
            if let Some(last) = statements.last_mut() {
                last.returns = action.returns.clone();
            }
            Operation::Statements(statements)
        }
        other => other,
    };
    Ok((action.participant.clone(), operation))
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

/// Room a `SagaSubmitted` record needs beside the encoded definition: its other fields, and
/// each step's policy.
const SUBMIT_RECORD_OVERHEAD_BYTES: usize = 4096;
const STEP_POLICY_BYTES_MAX: usize = 64;

/// Limits where zero (or too much) makes no sense are refused when the config loads, never
/// clamped later; each message names the key.
fn check_limits(config: &Config) -> Result<(), String> {
    let e = &config.executor;
    let positive = [
        ("executor.in_flight_max", e.max_in_flight as u64),
        ("executor.breaker_failures", u64::from(e.breaker_failures)),
        ("executor.breaker_successes", u64::from(e.breaker_successes)),
        ("executor.steps_max", e.max_steps as u64),
        ("executor.saga_bytes_max", e.max_saga_bytes as u64),
        ("executor.live_sagas_max", e.live_sagas_max as u64),
        ("executor.delay_ms_max", e.delay_ms_max),
        ("index.checkpoint_interval_ms", config.index.checkpoint_interval_ms),
        ("index.snapshot_lag_records", config.index.snapshot_lag_records),
    ];
    if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(format!("{key} must be at least 1"));
    }
    // A submitted saga is one journal record: it must fit the frame's payload limit, with the
    // definitions of the actions it calls (at most all of them) journaled beside it.
    let payload_max = crate::wal_format::frame::PAYLOAD_BYTES_MAX as usize;
    let actions_bytes: usize = config
        .actions
        .iter()
        .map(|(name, action)| {
            name.len().saturating_add(rmp_serde::to_vec_named(action).map_or(usize::MAX, |b| b.len()))
        })
        .fold(0, usize::saturating_add);
    let needed = e
        .max_saga_bytes
        .saturating_add(e.max_steps.saturating_mul(STEP_POLICY_BYTES_MAX))
        .saturating_add(actions_bytes)
        .saturating_add(SUBMIT_RECORD_OVERHEAD_BYTES);
    if needed > payload_max {
        return Err(format!(
            "executor.saga_bytes_max = {} with executor.steps_max = {} and {} bytes of action definitions needs journal records of up to {needed} bytes; a record holds at most {payload_max}",
            e.max_saga_bytes, e.max_steps, actions_bytes
        ));
    }
    Ok(())
}

/// Whether a parameter of type `ty` accepts `value` (an int is a valid float).
fn accepts(ty: ParamType, value: &Value) -> bool {
    matches!(
        (ty, value),
        (ParamType::Bool, Value::Bool(_))
            | (ParamType::Int, Value::Int(_))
            | (ParamType::Float, Value::Float(_) | Value::Int(_))
            | (ParamType::Text, Value::Text(_))
            | (ParamType::Bytes, Value::Bytes(_))
    )
}

/// Saga ids are chosen by clients and end up in file names and marker keys. The one rule,
/// checked at submit and on every call that names an id: 1–128 bytes of printable ASCII
/// without spaces (`!` to `~`), which every participant kind can store.
pub fn validate_saga_id(id: &str) -> Result<(), ValidationError> {
    let bad = |reason| Err(ValidationError::BadSagaId { id: echo(id), reason });
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > SAGA_ID_BYTES_MAX {
        return bad("it is longer than 128 bytes");
    }
    if id.bytes().any(|b| b.is_ascii_control()) {
        return bad("it contains control characters");
    }
    if !id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return bad("it may hold only printable ASCII without spaces (! to ~)");
    }
    Ok(())
}

/// The most characters of a client's text an error message repeats.
pub const ECHO_CHARS_MAX: usize = 64;

/// `text` as an error repeats it: at most [`ECHO_CHARS_MAX`] characters, then `…` and the
/// full length, so a megabyte of name never comes back in an error.
pub fn echo(text: &str) -> String {
    if text.chars().count() <= ECHO_CHARS_MAX {
        return text.to_owned();
    }
    let head: String = text.chars().take(ECHO_CHARS_MAX).collect();
    format!("{head}…({} bytes)", text.len())
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Every SQL statement of `action` with the number of `args` it binds: `(direction, sql,
/// args)` for its forward and compensate operations and its effect check. What `config
/// check` and a start prepare against the database.
pub fn statements(action: &ActionConfig) -> Vec<(&'static str, &str, usize)> {
    let mut out: Vec<(&'static str, &str, usize)> = Vec::new();
    for (direction, op) in [("forward", &action.forward), ("compensate", &action.compensate)] {
        match op {
            OperationConfig::Sql { sql, args, .. } => out.push((direction, sql, args.len())),
            OperationConfig::Statements { sql, args, .. } => {
                for (i, sql) in sql.iter().enumerate() {
                    out.push((direction, sql, args.get(i).map_or(0, Vec::len)));
                }
            }
            _ => {}
        }
    }
    if let Some(c) = &action.check {
        out.push(("check", &c.sql, c.args.len()));
    }
    out
}

/// `{name}` placeholders in a path template.
fn placeholders(template: &str) -> Vec<String> {
    template.split('{').skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned())).collect()
}

/// Whether `op` is SQL whose (last) statement can return the row a step's outputs come from.
fn returns_a_row(op: &OperationConfig) -> bool {
    matches!(op, OperationConfig::Sql { .. } | OperationConfig::Statements { .. })
}

fn path_params(op: &OperationConfig) -> Vec<String> {
    match op {
        OperationConfig::Put { put, .. } => placeholders(put),
        OperationConfig::Delete { delete } => placeholders(delete),
        OperationConfig::Copy { copy, to } => [placeholders(copy), placeholders(to)].concat(),
        OperationConfig::Sql { .. }
        | OperationConfig::Statements { .. }
        | OperationConfig::Noop { .. }
        | OperationConfig::Http { .. }
        | OperationConfig::Task { .. } => Vec::new(),
    }
}

/// The `{name}` placeholders of an HTTP template (a path or a JSON string): `{` then a name of
/// `[A-Za-z0-9_.]` then `}`; any other brace is literal text.
fn template_names(template: &str) -> Vec<&str> {
    template_parts(template).into_iter().filter_map(|part| part.err()).collect()
}

/// An HTTP template cut into literal text (`Ok`) and placeholder names (`Err`), in order.
fn template_parts(template: &str) -> Vec<Result<&str, &str>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let name_len = after.bytes().take_while(|b| b.is_ascii_alphanumeric() || b"_.".contains(b)).count();
        if name_len > 0 && after.as_bytes().get(name_len) == Some(&b'}') {
            if open > 0 {
                parts.push(Ok(&rest[..open]));
            }
            parts.push(Err(&after[..name_len]));
            rest = &after[name_len + 1..];
        } else {
            parts.push(Ok(&rest[..=open]));
            rest = after;
        }
    }
    if !rest.is_empty() {
        parts.push(Ok(rest));
    }
    parts
}

/// A value as text in an HTTP template: text as itself, numbers and booleans as JSON writes
/// them, bytes as lowercase hex.
fn template_text(name: &str, params: &BTreeMap<String, Value>) -> Result<String, String> {
    match params.get(name) {
        Some(Value::Text(t)) => Ok(t.clone()),
        Some(Value::Bytes(b)) => Ok(b.iter().map(|byte| format!("{byte:02x}")).collect()),
        Some(Value::Null) | None => Err(format!("template value {name:?} is missing")),
        Some(other) => Ok(other.to_json().to_string()),
    }
}

/// An HTTP path template filled: each value percent-encoded (every byte but the unreserved
/// `A-Za-z0-9-._~`), so a value is always one path segment, never a `/`, `?` or `..` step.
fn fill_http_path(template: &str, params: &BTreeMap<String, Value>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for part in template_parts(template) {
        match part {
            Ok(text) => out.push_str(text),
            Err(name) => {
                let value = template_text(name, params)?;
                if value.is_empty() || value == "." || value == ".." {
                    return Err(format!("path value {name:?} is {value:?}, which is no path segment"));
                }
                for byte in value.bytes() {
                    if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                        out.push(byte as char);
                    } else {
                        out.push_str(&format!("%{byte:02X}"));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A JSON body template filled: a string that is one placeholder alone becomes the value
/// with its JSON type (`"{amount_cents}"` → `250`); a string mixing text and placeholders
/// stays a string. Object keys are literal.
fn fill_json(template: &serde_json::Value, params: &BTreeMap<String, Value>) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match template {
        J::String(s) => match template_parts(s).as_slice() {
            [Err(name)] => match params.get(*name) {
                Some(Value::Null) | None => return Err(format!("template value {name:?} is missing")),
                Some(value) => value.to_json(),
            },
            parts => {
                let mut out = String::with_capacity(s.len());
                for part in parts {
                    match part {
                        Ok(text) => out.push_str(text),
                        Err(name) => out.push_str(&template_text(name, params)?),
                    }
                }
                J::String(out)
            }
        },
        J::Array(items) => J::Array(items.iter().map(|item| fill_json(item, params)).collect::<Result<_, _>>()?),
        J::Object(map) => {
            J::Object(map.iter().map(|(k, v)| Ok((k.clone(), fill_json(v, params)?))).collect::<Result<_, String>>()?)
        }
        other => other.clone(),
    })
}

/// Every placeholder of a JSON body template, with the JSON Pointer of the string it is in.
fn json_template_names(value: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    use serde_json::Value as J;
    match value {
        J::String(s) => out.extend(template_names(s).into_iter().map(|n| (at.to_owned(), n.to_owned()))),
        J::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                json_template_names(item, &format!("{at}/{i}"), out);
            }
        }
        J::Object(map) => {
            for (k, v) in map {
                json_template_names(v, &format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        _ => {}
    }
}

/// The keys only an `http` participant reads, refused on any other kind; and an `http`
/// participant's base URL, timeout and health check.
fn check_http_participant(p: &ParticipantConfig) -> Result<(), String> {
    if p.kind != Kind::Http {
        let set = [
            ("base_url", p.base_url.is_some()),
            ("headers", !p.headers.is_empty()),
            ("timeout_ms", p.timeout_ms.is_some()),
            ("health", p.health.is_some()),
        ];
        return match set.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(format!("`{key}` is for http participants only ({} participant)", p.kind.as_str())),
            None => Ok(()),
        };
    }
    if let Some(problem) = p.base_url.as_deref().and_then(crate::participant::http::base_url_problem) {
        return Err(format!("`base_url` {problem}"));
    }
    if p.timeout_ms == Some(0) {
        return Err("`timeout_ms` must be positive".into());
    }
    if let Some(health) = &p.health {
        crate::participant::http::request_line(health).map_err(|e| format!("`health`: {e}"))?;
    }
    for header in p.headers.keys() {
        if header.is_empty() || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
            return Err(format!("`headers`: {header:?} is not a header name"));
        }
    }
    Ok(())
}

/// An HTTP action's outputs: only the forward operation reads any, every declared `returns`
/// has a JSON Pointer in its `output` and every `output` is declared in `returns`.
fn check_http_outputs(action: &ActionConfig) -> Result<(), String> {
    if let OperationConfig::Http { output, .. } = &action.compensate
        && !output.is_empty()
    {
        return Err("compensate: `output` is for the forward operation only (a compensation returns nothing)".into());
    }
    let output = match &action.forward {
        OperationConfig::Http { output, .. } => output.clone(),
        _ if action.returns.is_empty() => return Ok(()),
        _ => return Err("returns: the forward operation must be an `http` request whose `output` reads them".into()),
    };
    for (name, pointer) in &output {
        if !action.returns.contains_key(name) {
            return Err(format!("forward: `output.{name}` is not declared in `returns`"));
        }
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(format!("forward: `output.{name}` = {pointer:?} is not a JSON Pointer (it starts with /)"));
        }
    }
    if let Some(name) = action.returns.keys().find(|n| !output.contains_key(*n)) {
        return Err(format!("returns: {name:?} has no JSON Pointer in the forward operation's `output`"));
    }
    Ok(())
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

/// The keys of a `worker` participant (`queue`, `lease_ms`, `tasks_waiting_max`,
/// `workers_max`): set on workers only, positive, and no two participants share a queue.
fn check_worker_keys(
    name: &str,
    p: &crate::config::ParticipantConfig,
    all: &BTreeMap<String, crate::config::ParticipantConfig>,
) -> Result<(), String> {
    let keys = [
        ("queue", p.queue.is_some()),
        ("lease_ms", p.lease_ms.is_some()),
        ("tasks_waiting_max", p.tasks_waiting_max.is_some()),
        ("workers_max", p.workers_max.is_some()),
    ];
    if p.kind != Kind::Worker {
        return match keys.iter().find(|(_, set)| *set) {
            Some((key, _)) => {
                Err(format!("participant {name:?} ({}): `{key}` is for worker participants only", p.kind.as_str()))
            }
            None => Ok(()),
        };
    }
    let queue = p.queue.as_deref().unwrap_or_default();
    if queue.is_empty() || queue.len() > 128 || !queue.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(format!(
            "participant {name:?}: `queue` {queue:?} must be 1..=128 printable ASCII bytes without spaces or `/`"
        ));
    }
    for (key, value) in [
        ("lease_ms", p.lease_ms() as usize),
        ("tasks_waiting_max", p.tasks_waiting_max()),
        ("workers_max", p.workers_max()),
    ] {
        if value == 0 {
            return Err(format!("participant {name:?}: `{key}` must be positive"));
        }
    }
    if let Some(other) = all.iter().find(|(n, o)| n.as_str() != name && o.queue.as_deref() == Some(queue)) {
        return Err(format!(
            "participants {name:?} and {:?} both serve queue {queue:?}: a queue has one participant",
            other.0
        ));
    }
    Ok(())
}

fn check_operation(op: &OperationConfig, kind: Kind, params: &BTreeMap<String, ParamType>) -> Result<(), String> {
    let sql_kind = matches!(kind, Kind::Postgres | Kind::Sqlite | Kind::Duckdb | Kind::Memory);
    let fs_kind = matches!(kind, Kind::Fs | Kind::Memory);
    let declared = |name: &String| {
        if params.contains_key(name) { Ok(()) } else { Err(format!("uses undeclared parameter {name:?}")) }
    };
    match op {
        OperationConfig::Task { task, args } if kind == Kind::Worker => {
            if task.trim().is_empty() {
                return Err("`task` is empty".to_owned());
            }
            args.iter().try_for_each(declared)
        }
        OperationConfig::Task { .. } => Err(format!("a {kind:?} participant cannot run worker tasks")),
        _ if kind == Kind::Worker => Err("a worker participant runs `task` operations only".to_owned()),
        OperationConfig::Sql { args, .. } if sql_kind => args.iter().try_for_each(declared),
        OperationConfig::Statements { sql, args, rows } if sql_kind => {
            if sql.is_empty() {
                return Err("`sql` lists no statement".to_owned());
            }
            if !args.is_empty() && args.len() != sql.len() {
                return Err(format!(
                    "`sql` lists {} statements but `args` {} lists of arguments (one per statement)",
                    sql.len(),
                    args.len()
                ));
            }
            if let Some(RowsSpec::Each(guards)) = rows
                && guards.len() != sql.len()
            {
                return Err(format!(
                    "`sql` lists {} statements but `rows` {} guards (one per statement, or one for all)",
                    sql.len(),
                    guards.len()
                ));
            }
            args.iter().flatten().try_for_each(declared)
        }
        OperationConfig::Sql { .. } | OperationConfig::Statements { .. } => {
            Err(format!("a {kind:?} participant cannot run SQL"))
        }
        OperationConfig::Noop { .. } => Ok(()),
        OperationConfig::Http { http, json, .. } if kind == Kind::Http => {
            let (_, path) = crate::participant::http::request_line(http).map_err(|e| format!("`http`: {e}"))?;
            let mut names: Vec<(String, String)> =
                template_names(path).into_iter().map(|n| ("`http`".to_owned(), n.to_owned())).collect();
            if let Some(json) = json {
                let mut found = Vec::new();
                json_template_names(json, "", &mut found);
                names.extend(
                    found
                        .into_iter()
                        .map(|(at, n)| (format!("`json` at {:?}", if at.is_empty() { "/" } else { &at }), n)),
                );
            }
            for (at, name) in names {
                if params.contains_key(&name) {
                    continue;
                }
                let (what, known): (&str, Vec<&str>) = match name.strip_prefix(OWN_OUTPUT_PREFIX) {
                    Some(_) => (
                        "an undeclared output",
                        params.keys().filter(|k| k.starts_with(OWN_OUTPUT_PREFIX)).map(String::as_str).collect(),
                    ),
                    None => (
                        "an undeclared parameter",
                        params.keys().filter(|k| !k.starts_with(OWN_OUTPUT_PREFIX)).map(String::as_str).collect(),
                    ),
                };
                return Err(format!("{at}: template {{{name}}} names {what} (declared: {})", known.join(", ")));
            }
            Ok(())
        }
        OperationConfig::Http { .. } => Err(format!("a {kind:?} participant cannot send HTTP requests")),
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
        OperationConfig::Put { .. } | OperationConfig::Delete { .. } | OperationConfig::Copy { .. } => {
            Err(format!("a {kind:?} participant cannot run file operations"))
        }
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
        StepCall {
            action: action.into(),
            params: params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            from: Default::default(),
        }
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
            Operation::Sql {
                sql: "DELETE FROM t WHERE id = ?1".into(),
                args: vec![Value::Text("a".into())],
                rows: None
            }
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

    /// The documented id rule, once: 1–128 bytes of printable ASCII without spaces. Spaces,
    /// unicode and control characters were accepted before (issue 10, item 18).
    #[test]
    fn saga_ids_are_printable_ascii_without_spaces() {
        for good in ["a", "order-17", "x/y:z@w", &"~".repeat(128), "!\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~"] {
            assert_eq!(validate_saga_id(good), Ok(()), "{good:?}");
        }
        for bad in ["", "has space", "tab\there", "caf\u{e9}", "\u{1f600}", "nul\0", &"a".repeat(129)] {
            assert!(matches!(validate_saga_id(bad), Err(ValidationError::BadSagaId { .. })), "{bad:?}");
        }
    }

    /// A client's huge parameter name, action name or id is not echoed back whole (a name up
    /// to the saga size limit was repeated in full before).
    #[test]
    fn errors_echo_at_most_a_bounded_prefix_of_client_text() {
        let c = Catalog::parse(CONFIG).unwrap();
        let huge = "p".repeat(512 * 1024);
        let mut call = StepCall { action: "insert".into(), params: BTreeMap::new(), from: Default::default() };
        call.params.insert("id".into(), Value::Text("a".into()));
        call.params.insert("n".into(), Value::Int(1));
        call.params.insert(huge.clone(), Value::Int(1));
        let saga = SagaDefinition { id: "s".into(), steps: vec![call] };
        let message = c.validate(&saga).unwrap_err().to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains(&format!("({} bytes)", huge.len())), "{message}");
        let unknown = SagaDefinition {
            id: "s".into(),
            steps: vec![StepCall { action: huge.clone(), params: BTreeMap::new(), from: Default::default() }],
        };
        assert!(c.validate(&unknown).unwrap_err().to_string().len() < 300);
        assert!(validate_saga_id(&huge).unwrap_err().to_string().len() < 300);
    }

    /// The limits' old spellings (`max_in_flight`, …) still load, into the same fields.
    #[test]
    fn old_limit_spellings_are_still_read() {
        let old = Catalog::parse("[executor]\nmax_in_flight = 7\nmax_steps = 9\nmax_saga_bytes = 4096\n[server]\nmax_message_bytes = 2048\nmax_pending_submits = 3").unwrap();
        let new = Catalog::parse("[executor]\nin_flight_max = 7\nsteps_max = 9\nsaga_bytes_max = 4096\n[server]\nmessage_bytes_max = 2048\npending_submits_max = 3").unwrap();
        assert_eq!(old.config, new.config);
        assert_eq!((old.config.executor.max_in_flight, old.config.executor.max_steps), (7, 9));
        assert_eq!(old.config.server.max_pending_submits, 3);
    }

    /// A worker participant needs its queue; its keys belong to workers only; two participants
    /// cannot share a queue; a worker runs `task` operations only (with `returns` allowed), and
    /// only a worker runs them; a task's `args` name declared parameters.
    #[test]
    fn worker_participants_and_task_actions_are_checked() {
        let worker = "[participants.w]\nkind = \"worker\"\nqueue = \"scans\"\n";
        let action = |forward: &str, compensate: &str| {
            format!(
                "{worker}[actions.a]\nparticipant = \"w\"\nparams = {{ t = \"text\" }}\nreturns = {{ id = \"text\" }}\n\
                 forward = {forward}\ncompensate = {compensate}\n"
            )
        };
        let ok = Catalog::parse(&action("{ task = \"run\" }", "{ task = \"undo\", args = [\"output.id\"] }")).unwrap();
        let call = StepCall {
            action: "a".into(),
            params: [("t".to_owned(), Value::Text("x".into()))].into(),
            from: Default::default(),
        };
        let (participant, op) = ok.operation(&call, Direction::Forward).unwrap();
        assert_eq!(participant, "w");
        assert!(matches!(op, Operation::Task { ref task, ref params, ref returns }
            if task == "run" && params.contains_key("t") && returns.contains_key("id")));
        let cases = [
            ("[participants.w]\nkind = \"worker\"".to_owned(), "needs `queue`"),
            ("[participants.x]\nkind = \"sqlite\"\npath = \"a\"\nqueue = \"q\"".to_owned(), "`queue` is for worker participants only"),
            (format!("{worker}lease_ms = 0"), "`lease_ms` must be positive"),
            (format!("{worker}[participants.v]\nkind = \"worker\"\nqueue = \"scans\""), "both serve queue \"scans\""),
            ("[participants.w]\nkind = \"worker\"\nqueue = \"a b\"".to_owned(), "printable ASCII bytes without spaces"),
            (action("{ sql = \"SELECT 1\" }", "{ task = \"undo\" }"), "runs `task` operations only"),
            (action("{ task = \"run\" }", "{ task = \"undo\", args = [\"nope\"] }"), "undeclared parameter \"nope\""),
            (
                "[participants.x]\nkind = \"sqlite\"\npath = \"a\"\n[actions.a]\nparticipant = \"x\"\nforward = { task = \"t\" }\ncompensate = { noop = true }".to_owned(),
                "cannot run worker tasks",
            ),
        ];
        for (config, message) in cases {
            let err = Catalog::parse(&config).unwrap_err().to_string();
            assert!(err.contains(message), "{config}: {err}");
        }
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            ("[participants.x]\nkind = \"sqlite\"", "needs `path`"),
            ("[participants.x]\nkind = \"oracle\"\npath = \"a\"", "unknown variant"),
            (
                "[participants.x]\nkind = \"sqlite\"\npath = \"a\"\nmarker_table = \"m; DROP TABLE t\"",
                "participant \"x\": `marker_table` \"m; DROP TABLE t\" is not a plain SQL identifier",
            ),
            (
                "[participants.x]\nkind = \"fs\"\npath = \"a\"\nmarker_table = \"m\"",
                "`marker_table` is for SQL participants only",
            ),
            (
                "[participants.x]\nkind = \"sqlite\"\npath = \"a\"\ngroup_commit = false",
                "`group_commit` is for postgres participants only",
            ),
            (
                "[participants.x]\nkind = \"sqlite\"\npath = \"a\"\nfence_table = \"sagalog_markers\"",
                "`marker_table` and `fence_table` are both \"sagalog_markers\"",
            ),
            ("[journal]\nsync = \"sometimes\"", "unknown sync policy"),
            ("[executor]\nin_flight_max = 0", "executor.in_flight_max must be at least 1"),
            ("[executor]\nmax_in_flight = 0", "executor.in_flight_max must be at least 1"),
            ("[executor]\nbreaker_failures = 0", "executor.breaker_failures must be at least 1"),
            ("[executor]\nbreaker_successes = 0", "executor.breaker_successes must be at least 1"),
            ("[executor]\nsteps_max = 0", "executor.steps_max must be at least 1"),
            ("[index]\ncheckpoint_interval_ms = 0", "index.checkpoint_interval_ms must be at least 1"),
            ("[executor]\nsaga_bytes_max = 16777216", "executor.saga_bytes_max = 16777216"),
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
        c.validate(&crate::cli::demo::demo_saga("demo-1", "run-1", 10)).unwrap();
        Catalog::parse(include_str!("../docs/example-config.toml")).unwrap();
    }
}

#[cfg(test)]
mod output_tests {
    use super::*;

    const CONFIG: &str = r#"
[participants.db]
kind = "sqlite"
path = "db"
[participants.files]
kind = "fs"
path = "files"
[actions.create]
participant = "db"
params = { name = "text" }
returns = { id = "int", label = "text" }
forward = { sql = "INSERT INTO t (name) VALUES (?1) RETURNING id, name AS label", args = ["name"] }
compensate = { sql = "DELETE FROM t WHERE id = ?1", args = ["output.id"] }
[actions.use_id]
participant = "db"
params = { id = "int", ratio = "float", note = "text" }
forward = { sql = "INSERT INTO u (id, ratio, note) VALUES (?1, ?2, ?3)", args = ["id", "ratio", "note"] }
compensate = { sql = "DELETE FROM u WHERE id = ?1", args = ["id"] }
[actions.file]
participant = "files"
params = { name = "text" }
forward = { put = "{name}.txt", contents = "name" }
compensate = { delete = "{name}.txt" }
"#;

    fn step(action: &str, params: &[(&str, Value)], from: &[(&str, &str)]) -> StepCall {
        StepCall {
            action: action.into(),
            params: params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            from: from.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn create() -> StepCall {
        step("create", &[("name", Value::Text("n".into()))], &[])
    }

    fn saga(steps: Vec<StepCall>) -> SagaDefinition {
        SagaDefinition { id: "s".into(), steps }
    }

    /// Issue 11 item 6: an unknown action or parameter names the closest known one, and a
    /// saga with several problems gets every one of them, in step order.
    #[test]
    fn every_problem_is_reported_with_the_closest_known_names() {
        let catalog = Catalog::parse(CONFIG).unwrap();
        let err = catalog.validate(&saga(vec![step("creat", &[], &[])])).unwrap_err().to_string();
        assert_eq!(err, "step 0: unknown action \"creat\" (did you mean \"create\"?)");
        let err = catalog.validate(&saga(vec![step("zzzzzz", &[], &[])])).unwrap_err().to_string();
        assert_eq!(err, "step 0: unknown action \"zzzzzz\"", "nothing close: no suggestion");
        let typo = step("create", &[("nmae", Value::Text("n".into()))], &[]);
        let problems = match catalog.validate(&saga(vec![typo, step("use_idd", &[], &[]), create()])) {
            Err(ValidationError::Many(problems)) => problems,
            other => panic!("{other:?}"),
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "step 0 (create): missing parameter \"name\" (text)",
                "step 0 (create): unexpected parameter \"nmae\" (did you mean \"name\"?)",
                "step 1: unknown action \"use_idd\" (did you mean \"use_id\"?)",
            ]
        );
        let whole = ValidationError::Many(problems).to_string();
        assert!(whole.starts_with("3 problems: step 0 (create): missing parameter"), "{whole}");
    }

    /// Issue 11 item 1: a reference to an earlier step's declared output of the parameter's
    /// type is accepted (an int output for a float parameter too); every other reference is
    /// refused at submit, naming the step, the parameter and what is wrong.
    #[test]
    fn references_are_checked_at_submit() {
        let catalog = Catalog::parse(CONFIG).unwrap();
        let note = ("note", Value::Text("x".into()));
        let ok = step("use_id", std::slice::from_ref(&note), &[("id", "steps.0.id"), ("ratio", "steps.0.id")]);
        catalog.validate(&saga(vec![create(), ok])).unwrap();
        for (from, expected) in [
            (vec![("id", "steps.1.id")], "step 1 is not an earlier step"),
            (vec![("id", "steps.0.nope")], "step 0 (create) returns no output \"nope\""),
            (vec![("id", "steps.0.label")], "that output is text, the parameter int"),
            (vec![("id", "output.id")], "a reference has the form steps.N.name"),
            (vec![("nope", "steps.0.id")], "unexpected parameter \"nope\""),
        ] {
            let mut from = from.clone();
            from.push(("ratio", "steps.0.id"));
            let bad = step("use_id", std::slice::from_ref(&note), &from);
            let err = catalog.validate(&saga(vec![create(), bad])).unwrap_err().to_string();
            assert!(err.contains("step 1 (use_id): "), "{err}");
            assert!(err.contains(expected), "{from:?}: {err}");
        }
        let both = step(
            "use_id",
            &[note.clone(), ("id", Value::Int(1)), ("ratio", Value::Float(1.0))],
            &[("id", "steps.0.id")],
        );
        let err = catalog.validate(&saga(vec![create(), both])).unwrap_err().to_string();
        assert!(err.contains("also has a value"), "{err}");
        let missing = step("use_id", &[note], &[("id", "steps.0.id")]);
        assert!(matches!(catalog.validate(&saga(vec![create(), missing])), Err(ValidationError::MissingParam { .. })));
        // A file path parameter must be a literal plain name, never a reference.
        let path = step("file", &[], &[("name", "steps.0.label")]);
        assert!(matches!(catalog.validate(&saga(vec![create(), path])), Err(ValidationError::BadPathParam { .. })));
    }

    /// The compensation binds its own forward outputs (`output.name`); outputs are declared
    /// only where a SQL statement can return them, and `output.` names only declared outputs.
    #[test]
    fn a_compensation_binds_its_own_outputs_and_bad_declarations_are_refused() {
        let catalog = Catalog::parse(CONFIG).unwrap();
        let mut call = create();
        call.params.insert("output.id".into(), Value::Int(42));
        let (_, op) = catalog.operation(&call, Direction::Compensate).unwrap();
        assert!(matches!(op, Operation::Sql { ref args, .. } if args == &vec![Value::Int(42)]), "{op:?}");
        let (_, forward) = catalog.operation(&call, Direction::Forward).unwrap();
        let Operation::Statements(statements) = forward else { panic!("{forward:?}") };
        assert_eq!(statements[0].returns.keys().collect::<Vec<_>>(), ["id", "label"]);

        for (edit, expected) in [
            (
                ("args = [\"output.id\"]", "args = [\"output.nope\"]"),
                "compensate: uses undeclared parameter \"output.nope\"",
            ),
            (("args = [\"name\"] }", "args = [\"output.id\"] }"), "forward: uses undeclared parameter \"output.id\""),
            (
                (
                    "params = { name = \"text\" }\nforward = { put",
                    "params = { name = \"text\" }\nreturns = { x = \"int\" }\nforward = { put",
                ),
                "a fs participant returns no outputs",
            ),
        ] {
            let text = CONFIG.replacen(edit.0, edit.1, 1);
            assert_ne!(text, CONFIG, "{edit:?} changed nothing");
            let err = Catalog::parse(&text).err().unwrap_or_else(|| panic!("{edit:?} was accepted")).to_string();
            assert!(err.contains(expected), "{edit:?}: {err}");
        }
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    fn action(forward: &str) -> Result<Catalog, ConfigError> {
        Catalog::parse(&format!(
            "[participants.d]\nkind = \"sqlite\"\npath = \"d\"\n[actions.a]\nparticipant = \"d\"\nparams = {{ id = \"int\" }}\nforward = {forward}\ncompensate = {{ noop = true }}"
        ))
    }

    /// `rows = N` is exactly N, `rows = "N+"` at least N; the guard reaches the bound
    /// operation, and an action without one binds none.
    #[test]
    fn guards_parse_and_reach_the_operation() {
        for (text, guard) in [
            ("1", Some(RowsGuard::Exactly(1))),
            ("\"1+\"", Some(RowsGuard::AtLeast(1))),
            ("\"0\"", Some(RowsGuard::Exactly(0))),
        ] {
            let catalog = action(&format!(
                "{{ sql = \"UPDATE t SET n = n - 1 WHERE id = ?1\", args = [\"id\"], rows = {text} }}"
            ))
            .unwrap_or_else(|e| panic!("rows = {text}: {e}"));
            let call = StepCall {
                action: "a".into(),
                params: BTreeMap::from([("id".into(), Value::Int(7))]),
                from: Default::default(),
            };
            let (_, op) = catalog.operation(&call, Direction::Forward).unwrap();
            assert!(matches!(op, Operation::Sql { rows, .. } if rows == guard), "rows = {text}");
        }
        let catalog = action("{ sql = \"SELECT 1\" }").unwrap();
        let call = StepCall {
            action: "a".into(),
            params: BTreeMap::from([("id".into(), Value::Int(7))]),
            from: Default::default(),
        };
        assert!(matches!(catalog.operation(&call, Direction::Forward).unwrap().1, Operation::Sql { rows: None, .. }));
    }

    /// Issue 11 item 3: `sql = ["…", "…"]` binds every statement with its own `args` list,
    /// in order; `rows` as one value guards every statement, as a list each its own.
    #[test]
    fn several_statements_bind_in_order_with_their_own_args_and_guards() {
        let call = StepCall {
            action: "a".into(),
            params: BTreeMap::from([("id".into(), Value::Int(7)), ("n".into(), Value::Int(3))]),
            from: Default::default(),
        };
        let catalog = Catalog::parse(
            "[participants.d]\nkind = \"sqlite\"\npath = \"d\"\n[actions.a]\nparticipant = \"d\"\n\
             params = { id = \"int\", n = \"int\" }\n\
             forward = { sql = [\"UPDATE t SET n = n - ?1 WHERE id = ?2\", \"INSERT INTO log (id) VALUES (?1)\"], \
             args = [[\"n\", \"id\"], [\"id\"]], rows = [1, \"0+\"] }\n\
             compensate = { sql = [\"DELETE FROM log WHERE id = ?1\", \"SELECT 1\"], args = [[\"id\"], []], rows = 1 }",
        )
        .unwrap();
        let (_, forward) = catalog.operation(&call, Direction::Forward).unwrap();
        let Operation::Statements(statements) = forward else { panic!("{forward:?}") };
        let bound: Vec<_> = statements.iter().map(|s| (s.args.clone(), s.rows)).collect();
        assert_eq!(
            bound,
            vec![
                (vec![Value::Int(3), Value::Int(7)], Some(RowsGuard::Exactly(1))),
                (vec![Value::Int(7)], Some(RowsGuard::AtLeast(0)))
            ]
        );
        assert!(statements[1].sql.starts_with("INSERT INTO log"));
        let (_, compensate) = catalog.operation(&call, Direction::Compensate).unwrap();
        let Operation::Statements(statements) = compensate else { panic!("{compensate:?}") };
        assert!(statements.iter().all(|s| s.rows == Some(RowsGuard::Exactly(1))), "one guard for every statement");
        assert_eq!(statements[1].args, Vec::<Value>::new());
    }

    /// A multi-statement action journaled with its saga (`SagaSubmitted.actions`) decodes to
    /// the same definition after a restart, and every earlier operation shape still decodes as
    /// itself (the new variant is tried last).
    #[test]
    fn a_journaled_multi_statement_action_decodes_as_written() {
        use crate::engine::record::{Record, Submitted};
        let catalog = Catalog::parse(include_str!("../docs/example-config.toml")).unwrap();
        let actions = catalog.config.actions.clone();
        assert!(matches!(actions["transfer"].forward, OperationConfig::Statements { .. }));
        let record = Record::SagaSubmitted(Submitted {
            saga: "s".into(),
            steps: Vec::new(),
            policies: Vec::new(),
            digest: 1,
            at_ms: 2,
            actions,
            scope: None,
        });
        let decoded = Record::decode(record.kind(), &record.encode()).unwrap();
        assert_eq!(decoded, record);
    }

    /// A multi-statement step whose lists disagree, or that names an undeclared parameter,
    /// is refused when the config loads, saying what disagrees.
    #[test]
    fn several_statements_with_mismatched_lists_are_refused() {
        for (forward, expected) in [
            ("{ sql = [\"SELECT 1\", \"SELECT 2\"], args = [[\"id\"]] }", "`sql` lists 2 statements but `args` 1"),
            ("{ sql = [\"SELECT 1\", \"SELECT 2\"], rows = [1] }", "`sql` lists 2 statements but `rows` 1 guards"),
            ("{ sql = [\"SELECT ?1\"], args = [[\"nope\"]] }", "uses undeclared parameter \"nope\""),
            ("{ sql = [] }", "`sql` lists no statement"),
        ] {
            let err = action(forward).err().unwrap_or_else(|| panic!("{forward} was accepted")).to_string();
            assert!(err.contains(expected), "{forward}: {err}");
        }
    }

    /// A guard that is not a count is refused when the config loads.
    #[test]
    fn bad_guards_are_refused() {
        for text in ["-1", "\"x\"", "\"1-\"", "1.5"] {
            let refused = action(&format!("{{ sql = \"SELECT 1\", rows = {text} }}"));
            assert!(refused.is_err(), "rows = {text} was accepted");
        }
    }

    #[test]
    fn the_guard_message_says_what_was_expected_and_what_happened() {
        assert_eq!(RowsGuard::Exactly(1).check(1), Ok(()));
        assert_eq!(RowsGuard::AtLeast(1).check(3), Ok(()));
        assert_eq!(
            RowsGuard::Exactly(1).check(0),
            Err("guard failed: expected exactly 1 rows affected, got 0".to_owned())
        );
        assert_eq!(
            RowsGuard::AtLeast(2).check(1),
            Err("guard failed: expected at least 2 rows affected, got 1".to_owned())
        );
    }
}

#[cfg(test)]
mod http_tests {
    use super::*;

    /// The issue's example, verbatim.
    const CONFIG: &str = r#"
[participants.billing]
kind = "http"
base_url = "http://127.0.0.1:8081"
headers = { authorization = "env:BILLING_TOKEN" }   # values may come from the environment
timeout_ms = 5000
[actions.charge]
participant = "billing"
params = { order_id = "text", amount_cents = "int" }
returns = { charge_id = "text" }
forward = { http = "POST /charges", json = { order = "{order_id}", amount = "{amount_cents}" }, output = { charge_id = "/id" } }
compensate = { http = "POST /charges/{output.charge_id}/refund" }
"#;

    fn charge(order: &str) -> StepCall {
        StepCall {
            action: "charge".into(),
            params: BTreeMap::from([
                ("order_id".into(), Value::Text(order.into())),
                ("amount_cents".into(), Value::Int(250)),
            ]),
            from: Default::default(),
        }
    }

    /// A lone placeholder keeps its value's JSON type, mixed text stays a string, outputs get
    /// their pointer and declared type, and a compensation's `{output.name}` is filled from
    /// the step's own outputs, percent-encoded as one path segment.
    #[test]
    fn templates_bind_with_types_and_encoded_path_segments() {
        let catalog = Catalog::parse(CONFIG).unwrap();
        let mut call = charge("o/17 x");
        let (participant, forward) = catalog.operation(&call, Direction::Forward).unwrap();
        assert_eq!(participant, "billing");
        let Operation::Http { method, path, body, outputs } = forward else { panic!("{forward:?}") };
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/charges"));
        assert_eq!(body, Some(serde_json::json!({ "order": "o/17 x", "amount": 250 })));
        assert_eq!(outputs, BTreeMap::from([("charge_id".into(), ("/id".into(), ParamType::Text))]));
        call.params.insert("output.charge_id".into(), Value::Text("ch/1 ?".into()));
        let (_, compensate) = catalog.operation(&call, Direction::Compensate).unwrap();
        let Operation::Http { path, body, outputs, .. } = compensate else { panic!("{compensate:?}") };
        assert_eq!(path, "/charges/ch%2F1%20%3F/refund");
        assert_eq!((body, outputs.len()), (None, 0));

        let mixed = serde_json::json!({ "note": "order {order_id}: {amount_cents} cents", "list": ["{amount_cents}", "{x"], "n": 3 });
        let filled = fill_json(&mixed, &call.params).unwrap();
        assert_eq!(filled, serde_json::json!({ "note": "order o/17 x: 250 cents", "list": [250, "{x"], "n": 3 }));
        assert!(
            fill_http_path("/a/{order_id}", &BTreeMap::from([("order_id".into(), Value::Text("..".into()))])).is_err()
        );
    }

    /// Config errors name the action and the key: an unknown parameter or output in a
    /// template, an unknown method, a path not starting with `/`, outputs without pointers,
    /// http keys on another kind.
    #[test]
    fn bad_http_configs_are_refused_naming_the_action_and_key() {
        for (edit, expected) in [
            (
                ("order = \"{order_id}\"", "order = \"{order}\""),
                "action \"charge\": forward: `json` at \"/order\": template {order} names an undeclared parameter (declared: amount_cents, order_id)",
            ),
            (
                ("{output.charge_id}/refund", "{output.refund_id}/refund"),
                "action \"charge\": compensate: `http`: template {output.refund_id} names an undeclared output (declared: output.charge_id)",
            ),
            (
                ("POST /charges\"", "POST /charges/{nope}\""),
                "forward: `http`: template {nope} names an undeclared parameter",
            ),
            (
                ("\"POST /charges\"", "\"FETCH /charges\""),
                "action \"charge\": forward: `http`: unknown method \"FETCH\"",
            ),
            (("\"POST /charges\"", "\"POST charges\""), "forward: `http`: the path \"charges\" does not start with /"),
            (("charge_id = \"/id\"", "charge_id = \"id\""), "`output.charge_id` = \"id\" is not a JSON Pointer"),
            (("output = { charge_id = \"/id\" }", "output = {}"), "returns: \"charge_id\" has no JSON Pointer"),
            (
                ("refund\" }", "refund\", output = { x = \"/x\" } }"),
                "compensate: `output` is for the forward operation only",
            ),
            (("base_url = \"http://127.0.0.1:8081\"", ""), "participant \"billing\" (Http) needs `base_url`"),
            (
                ("base_url = \"http://127.0.0.1:8081\"", "base_url = \"127.0.0.1:8081\""),
                "participant \"billing\": `base_url`",
            ),
            (
                ("timeout_ms = 5000", "timeout_ms = 5000\nhealth = \"PING /\""),
                "participant \"billing\": `health`: unknown method",
            ),
            (("kind = \"http\"", "kind = \"sqlite\"\npath = \"b\""), "`base_url` is for http participants only"),
        ] {
            let text = CONFIG.replacen(edit.0, edit.1, 1);
            assert_ne!(text, CONFIG, "{edit:?} changed nothing");
            let err = Catalog::parse(&text).err().unwrap_or_else(|| panic!("{edit:?} was accepted")).to_string();
            assert!(err.contains(expected), "{edit:?}: {err}");
        }
    }

    /// A saga calling an HTTP action validates like any other, and a later step may take
    /// its output.
    #[test]
    fn a_saga_with_an_http_step_and_a_reference_to_its_output_validates() {
        let text = format!(
            "{CONFIG}\n[actions.ship]\nparticipant = \"billing\"\nparams = {{ charge_id = \"text\" }}\n\
             forward = {{ http = \"PUT /shipments/{{charge_id}}\" }}\ncompensate = {{ http = \"DELETE /shipments/{{charge_id}}\" }}\n"
        );
        let catalog = Catalog::parse(&text).unwrap();
        let ship = StepCall {
            action: "ship".into(),
            params: BTreeMap::new(),
            from: BTreeMap::from([("charge_id".into(), "steps.0.charge_id".into())]),
        };
        let saga = SagaDefinition { id: "s".into(), steps: vec![charge("o1"), ship] };
        catalog.validate(&saga).unwrap();
    }
}

#[cfg(test)]
mod delay_tests {
    use super::*;

    const CONFIG: &str = r#"
[executor]
delay_ms_max = 10000
[participants.db]
kind = "sqlite"
path = "db"
[actions.insert]
participant = "db"
params = { n = "int" }
forward = { sql = "INSERT INTO t (n) VALUES (?1)", args = ["n"] }
compensate = { sql = "DELETE FROM t WHERE n = ?1", args = ["n"] }
[actions.wait_for_settlement]
delay_ms = 6000
[actions.pause]
delay_ms = "param"
params = { delay_ms = "int" }
"#;

    fn step(action: &str, params: &[(&str, Value)]) -> StepCall {
        StepCall {
            action: action.into(),
            params: params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            from: Default::default(),
        }
    }

    fn saga(steps: Vec<StepCall>) -> SagaDefinition {
        SagaDefinition { id: "s".into(), steps }
    }

    /// Both spellings load as delay actions with no participant, and give each step its delay:
    /// the fixed one, or the step's own `delay_ms` parameter.
    #[test]
    fn both_delay_spellings_load_and_give_each_step_its_delay() {
        let c = Catalog::parse(CONFIG).unwrap();
        let fixed = c.action("wait_for_settlement").unwrap();
        assert_eq!((fixed.delay_ms, fixed.participant.as_str()), (Some(DelayMs::Fixed(6000)), ""));
        let by_param = c.action("pause").unwrap();
        assert_eq!(by_param.delay_ms, Some(DelayMs::Param));
        assert!(!c.action("insert").unwrap().is_delay());
        let s = saga(vec![step("wait_for_settlement", &[]), step("pause", &[("delay_ms", Value::Int(250))])]);
        let policies = c.validate(&s).unwrap();
        assert_eq!(policies[0].max_attempts, 1, "a delay runs once");
        assert_eq!(delay_of(fixed, &s.steps[0], 10_000), Some(Ok(6000)));
        assert_eq!(delay_of(by_param, &s.steps[1], 10_000), Some(Ok(250)));
        assert_eq!(delay_of(c.action("insert").unwrap(), &s.steps[0], 10_000), None);
        assert!(delay_of(by_param, &step("pause", &[("delay_ms", Value::Int(-1))]), 10_000).unwrap().is_err());
        assert!(statements(fixed).is_empty(), "a delay prepares no statement");
    }

    /// A delay action's definition is journaled as `{params, delay_ms}` only and decodes back
    /// to the same action; a participant action's encoding is unchanged (the golden vectors
    /// pin both).
    #[test]
    fn a_delay_action_encodes_as_its_two_keys_and_decodes_back() {
        let c = Catalog::parse(CONFIG).unwrap();
        for name in ["wait_for_settlement", "pause", "insert"] {
            let action = c.action(name).unwrap();
            let bytes = rmp_serde::to_vec_named(action).unwrap();
            let back: ActionConfig = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(&back, action, "{name}");
        }
        let json = serde_json::to_value(c.action("pause").unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"params": {"delay_ms": "int"}, "delay_ms": "param"}));
        let json = serde_json::to_value(c.action("wait_for_settlement").unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"params": {}, "delay_ms": 6000}));
    }

    /// Config load refuses a delay that is zero, negative, above `executor.delay_ms_max`, mixed
    /// with a participant's keys, or whose parameter is not declared as `delay_ms = "int"`,
    /// each with a message naming the action and the key.
    #[test]
    fn bad_delay_actions_are_refused_naming_the_action_and_key() {
        let cases = [
            ("delay_ms = 0", "action \"w\": delay_ms must be positive"),
            ("delay_ms = -5", "delay_ms = -5: a delay cannot be negative"),
            ("delay_ms = 10001", "action \"w\": delay_ms = 10001 is above executor.delay_ms_max (10000)"),
            ("delay_ms = \"soon\"", "delay_ms = \"soon\": expected milliseconds or \"param\""),
            (
                "delay_ms = 5\nparticipant = \"db\"",
                "a delay action (`delay_ms`) takes only `delay_ms` and `params`; found `participant`",
            ),
            ("delay_ms = 5\nforward = { noop = true }", "found `forward`"),
            ("delay_ms = 5\nretry = { max_attempts = 3 }", "found `retry`"),
            ("delay_ms = 5\nparams = { n = \"int\" }", "action \"w\": a fixed delay takes no parameters"),
            ("delay_ms = \"param\"", "action \"w\": delay_ms = \"param\" takes the delay from the step's parameter"),
            (
                "delay_ms = \"param\"\nparams = { delay_ms = \"text\" }",
                "declare exactly params = { delay_ms = \"int\" }",
            ),
            (
                "participant = \"db\"\ncompensate = { noop = true }",
                "missing field `forward` (or `delay_ms`, for a delay action)",
            ),
        ];
        for (block, needle) in cases {
            let text = format!(
                "[executor]\ndelay_ms_max = 10000\n[participants.db]\nkind = \"sqlite\"\npath = \"db\"\n[actions.w]\n{block}\n"
            );
            let err = Catalog::parse(&text).err().unwrap_or_else(|| panic!("{block:?} was accepted")).to_string();
            assert!(err.contains(needle), "{block:?}: {err}");
        }
        let err = Catalog::parse("[executor]\ndelay_ms_max = 0").unwrap_err().to_string();
        assert!(err.contains("executor.delay_ms_max must be at least 1"), "{err}");
    }

    /// Submit refuses a `delay_ms` parameter that is negative or above `executor.delay_ms_max`
    /// (INVALID_ARGUMENT over the API), or taken from an earlier step's output, naming the step
    /// and the parameter; 0 and the maximum are accepted.
    #[test]
    fn a_bad_delay_parameter_is_refused_at_submit_naming_step_and_parameter() {
        let c = Catalog::parse(CONFIG).unwrap();
        let insert = step("insert", &[("n", Value::Int(1))]);
        for ok in [0, 10_000] {
            c.validate(&saga(vec![insert.clone(), step("pause", &[("delay_ms", Value::Int(ok))])])).unwrap();
        }
        let cases = [
            (
                Value::Int(-1),
                "step 1 (pause): parameter \"delay_ms\" must be a delay from 0 to 10000 ms (executor.delay_ms_max), got -1",
            ),
            (Value::Int(10_001), "step 1 (pause): parameter \"delay_ms\" must be a delay from 0 to 10000 ms"),
            (Value::Text("1s".into()), "step 1 (pause): parameter \"delay_ms\" must be int, got text"),
        ];
        for (value, message) in cases {
            let err =
                c.validate(&saga(vec![insert.clone(), step("pause", &[("delay_ms", value.clone())])])).unwrap_err();
            assert!(err.to_string().starts_with(message), "{value:?}: {err}");
        }
        let mut from = step("pause", &[]);
        from.from.insert("delay_ms".into(), "steps.0.n".into());
        let err = c.validate(&saga(vec![insert, from])).unwrap_err().to_string();
        assert!(err.contains("parameter \"delay_ms\" takes \"steps.0.n\""), "{err}");
        let err = c.validate(&saga(vec![step("pause", &[])])).unwrap_err().to_string();
        assert!(err.starts_with("step 0 (pause): missing parameter \"delay_ms\" (int)"), "{err}");
    }
}
