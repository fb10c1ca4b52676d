//! The `[actions.NAME]` blocks: the typed actions clients may call, their SQL, file or HTTP
//! operations, retry policies and timeouts. Schema and defaults only; `catalog` validates
//! them against the participants and binds a saga's values to them.
//!
//! Two shapes of action share [`ActionConfig`]: a *participant action* (`participant`,
//! `forward`, `compensate`, and the optional keys) and a *delay action* (`delay_ms = N`, or
//! `delay_ms = "param"` with `params = { delay_ms = "int" }`, and nothing else), which waits
//! durably and touches no participant. A block is read as one or the other by its keys
//! ([`ActionFields`]): a delay with a participant's keys, or a participant action without
//! `forward`, is refused by name. The encoding (also journaled in `SagaSubmitted`) writes a
//! participant action exactly as before delays existed, and a delay action as `{params,
//! delay_ms}` only, so a build that predates delays refuses to decode it (no `participant`)
//! instead of running it as something else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// The name a config spells it with.
    pub fn name(self) -> &'static str {
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
///
/// Serialized untagged (the fields alone, as a config writes them); deserialized by the key
/// that names the kind (`sql`, `put`, `delete`, `copy`, `noop`, `http`, `task`), so that a
/// mistake is named ("unknown key `sqll`", "a `put` operation: missing field `contents`")
/// instead of serde's "did not match any variant". Journaled definitions decode the same way.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OperationConfig {
    Sql {
        sql: String,
        #[serde(default)]
        args: Vec<String>,
        /// A business rule on the rows the statement affects (`rows = 1`, `rows = "1+"`):
        /// fewer is a permanent failure, `guard failed: expected …, got …`, rolled back with
        /// the marker, and the saga compensates.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<RowsGuard>,
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
    /// Several statements run in order in the one local transaction that also writes the
    /// step's marker: `sql = ["…", "…"]`, `args` a list of lists (one per statement, or left
    /// out when none takes parameters), `rows` one guard for every statement or a list of one
    /// per statement. Declared last, so a record journaled before it decodes as before.
    Statements {
        sql: Vec<String>,
        #[serde(default)]
        args: Vec<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<RowsSpec>,
    },
    /// One request to an `http` participant: `http = "POST /charges/{id}"` (a method and a
    /// path appended to the participant's `base_url`), an optional `json` body, and for a
    /// forward operation the `output` JSON Pointers its `returns` are read from
    /// (`output = { charge_id = "/id" }`). `{param}` and `{output.name}` in the path and in
    /// the body's strings are filled from the step's values (see `catalog`). Declared last, so
    /// a record journaled before it decodes as before.
    Http {
        http: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        output: BTreeMap<String, String>,
    },
    /// A task handed to a `worker` participant's queue: `task` names it for the worker,
    /// `args` the parameters it receives by name (`output.name` for a compensation's own
    /// forward outputs); left out, every parameter of the step (and, for a compensation, every
    /// `output.name`). Declared last, so a record journaled before it decodes as before.
    Task {
        task: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
    },
}

impl<'de> Deserialize<'de> for OperationConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        use serde_json::Value as J;
        let map = serde_json::Map::<String, J>::deserialize(d)?;
        let kinds: [(&str, &[&str]); 7] = [
            ("sql", &["sql", "args", "rows"]),
            ("put", &["put", "contents"]),
            ("delete", &["delete"]),
            ("copy", &["copy", "to"]),
            ("noop", &["noop"]),
            ("http", &["http", "json", "output"]),
            ("task", &["task", "args"]),
        ];
        let found = || map.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        let Some((kind, allowed)) = kinds.iter().find(|(kind, _)| map.contains_key(*kind)) else {
            return Err(D::Error::custom(format!(
                "an operation needs one of `sql`, `put`, `delete`, `copy`, `noop`, `http` or `task`; found {}",
                if map.is_empty() { "no key".to_owned() } else { found() }
            )));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            let expected = allowed.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            return Err(D::Error::custom(format!(
                "unknown key `{unknown}` in a `{kind}` operation (expected {expected})"
            )));
        }
        let invalid = |e: serde_json::Error| D::Error::custom(format!("a `{kind}` operation: {e}"));
        #[derive(Deserialize)]
        struct Sql {
            sql: String,
            #[serde(default)]
            args: Vec<String>,
            #[serde(default)]
            rows: Option<RowsGuard>,
        }
        #[derive(Deserialize)]
        struct Statements {
            sql: Vec<String>,
            #[serde(default)]
            args: Vec<Vec<String>>,
            #[serde(default)]
            rows: Option<RowsSpec>,
        }
        #[derive(Deserialize)]
        struct Put {
            put: String,
            contents: String,
        }
        #[derive(Deserialize)]
        struct Delete {
            delete: String,
        }
        #[derive(Deserialize)]
        struct Copy {
            copy: String,
            to: String,
        }
        #[derive(Deserialize)]
        struct Noop {
            noop: bool,
        }
        #[derive(Deserialize)]
        struct Http {
            http: String,
            #[serde(default)]
            json: Option<J>,
            #[serde(default)]
            output: BTreeMap<String, String>,
        }
        #[derive(Deserialize)]
        struct Task {
            task: String,
            #[serde(default)]
            args: Vec<String>,
        }
        let value = J::Object(map);
        Ok(match *kind {
            "sql" if value["sql"].is_array() => {
                let Statements { sql, args, rows } = serde_json::from_value(value).map_err(invalid)?;
                OperationConfig::Statements { sql, args, rows }
            }
            "sql" => {
                let Sql { sql, args, rows } = serde_json::from_value(value).map_err(invalid)?;
                OperationConfig::Sql { sql, args, rows }
            }
            "put" => {
                let Put { put, contents } = serde_json::from_value(value).map_err(invalid)?;
                OperationConfig::Put { put, contents }
            }
            "delete" => {
                OperationConfig::Delete { delete: serde_json::from_value::<Delete>(value).map_err(invalid)?.delete }
            }
            "copy" => {
                let Copy { copy, to } = serde_json::from_value(value).map_err(invalid)?;
                OperationConfig::Copy { copy, to }
            }
            "http" => {
                let Http { http, json, output } = serde_json::from_value(value).map_err(invalid)?;
                OperationConfig::Http { http, json, output }
            }
            "task" => {
                let Task { task, args } = serde_json::from_value(value).map_err(invalid)?;
                OperationConfig::Task { task, args }
            }
            _ => OperationConfig::Noop { noop: serde_json::from_value::<Noop>(value).map_err(invalid)?.noop },
        })
    }
}

/// The guards of a multi-statement step: one for every statement, or one per statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RowsSpec {
    Each(Vec<RowsGuard>),
    All(RowsGuard),
}

impl RowsSpec {
    /// The guard of statement `i` (from 0).
    pub fn of(&self, i: usize) -> Option<RowsGuard> {
        match self {
            RowsSpec::All(guard) => Some(*guard),
            RowsSpec::Each(guards) => guards.get(i).copied(),
        }
    }
}

/// How many rows a guarded SQL statement must affect: `rows = N` (exactly N) or
/// `rows = "N+"` (at least N). Rows a `… RETURNING` or `SELECT` statement returns count as
/// affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsGuard {
    Exactly(u64),
    AtLeast(u64),
}

impl RowsGuard {
    /// `Err` with the failure message when `affected` breaks the guard.
    pub fn check(self, affected: u64) -> Result<(), String> {
        let (ok, expected) = match self {
            RowsGuard::Exactly(n) => (affected == n, format!("exactly {n}")),
            RowsGuard::AtLeast(n) => (affected >= n, format!("at least {n}")),
        };
        if ok { Ok(()) } else { Err(format!("guard failed: expected {expected} rows affected, got {affected}")) }
    }
}

impl Serialize for RowsGuard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RowsGuard::Exactly(n) => s.serialize_u64(*n),
            RowsGuard::AtLeast(n) => s.serialize_str(&format!("{n}+")),
        }
    }
}

impl<'de> Deserialize<'de> for RowsGuard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RowsGuard;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a row count N (exactly N rows) or a string \"N+\" (at least N rows)")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RowsGuard, E> {
                Ok(RowsGuard::Exactly(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RowsGuard, E> {
                u64::try_from(n)
                    .map(RowsGuard::Exactly)
                    .map_err(|_| E::custom(format!("rows = {n}: a row count cannot be negative")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RowsGuard, E> {
                let bad = || E::custom(format!("rows = {s:?}: expected a count N or \"N+\" (at least N)"));
                match s.strip_suffix('+') {
                    Some(n) => n.parse().map(RowsGuard::AtLeast).map_err(|_| bad()),
                    None => s.parse().map(RowsGuard::Exactly).map_err(|_| bad()),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
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

/// One `[actions.NAME]` block, checked into one shape (see the module doc). For a delay action
/// (`delay_ms` is `Some`), `participant` is empty, `forward` and `compensate` are no-ops and
/// the retry policy allows one attempt: none of them is ever used, nor encoded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ActionFields<'static>")]
pub struct ActionConfig {
    pub participant: String,
    pub params: BTreeMap<String, ParamType>,
    pub forward: OperationConfig,
    pub compensate: OperationConfig,
    pub retry: RetryConfig,
    pub compensate_retry: RetryConfig,
    pub timeout_ms: u64,
    /// For SQL participants, optional: a read-only statement returning one count that is
    /// positive exactly when the forward effect of a step exists (`SELECT count(*) FROM t
    /// WHERE id = ?1`). `sagalog audit` runs it to find effects without markers and markers
    /// without effects; nothing else uses it.
    pub check: Option<CheckConfig>,
    /// What the forward step returns (`returns = { id = "int" }`, the types of `params`): for
    /// SQL, the columns of the single row its statement returns (`… RETURNING`, `SELECT`); for
    /// HTTP, the values at the forward operation's `output` JSON Pointers in the response.
    /// Journaled with the step's success and stored with its marker, so a step settled by its
    /// marker after a crash recovers them too. Later steps take them as parameters
    /// (`{"from": "steps.N.name"}`), the action's compensation as `args = ["output.name"]`.
    pub returns: BTreeMap<String, ParamType>,
    /// A delay action: how long its step waits, durably (the deadline is journaled with the
    /// step's start, a restart waits only for what is left, a cancel compensates at once, and
    /// the wait holds no `in_flight_max` slot). `None` for a participant action.
    pub delay_ms: Option<DelayMs>,
}

impl ActionConfig {
    /// Whether this is a delay action (no participant).
    pub fn is_delay(&self) -> bool {
        self.delay_ms.is_some()
    }

    /// A delay action, as its block (`delay_ms`, `params`) reads.
    pub fn delay(delay_ms: DelayMs, params: BTreeMap<String, ParamType>) -> ActionConfig {
        ActionConfig {
            participant: String::new(),
            params,
            forward: OperationConfig::Noop { noop: true },
            compensate: OperationConfig::Noop { noop: true },
            retry: RetryConfig { max_attempts: 1, ..RetryConfig::default() },
            compensate_retry: default_compensate_retry(),
            timeout_ms: default_timeout_ms(),
            check: None,
            returns: BTreeMap::new(),
            delay_ms: Some(delay_ms),
        }
    }
}

/// How long a delay action waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayMs {
    /// `delay_ms = 60000`: the same for every step that calls the action.
    Fixed(u64),
    /// `delay_ms = "param"`: the step's own `int` parameter `delay_ms`, which the action
    /// declares (`params = { delay_ms = "int" }`) and submit checks against
    /// `executor.delay_ms_max`.
    Param,
}

/// The parameter a `delay_ms = "param"` action takes its delay from.
pub const DELAY_PARAM: &str = "delay_ms";

impl Serialize for DelayMs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DelayMs::Fixed(ms) => s.serialize_u64(*ms),
            DelayMs::Param => s.serialize_str("param"),
        }
    }
}

impl<'de> Deserialize<'de> for DelayMs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DelayMs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a delay in milliseconds, or \"param\" (the step's `delay_ms` parameter)")
            }
            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<DelayMs, E> {
                Ok(DelayMs::Fixed(ms))
            }
            fn visit_i64<E: serde::de::Error>(self, ms: i64) -> Result<DelayMs, E> {
                u64::try_from(ms)
                    .map(DelayMs::Fixed)
                    .map_err(|_| E::custom(format!("delay_ms = {ms}: a delay cannot be negative")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DelayMs, E> {
                match s {
                    "param" => Ok(DelayMs::Param),
                    _ => Err(E::custom(format!(
                        "delay_ms = {s:?}: expected milliseconds or \"param\" (the step's `delay_ms` parameter)"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// An `[actions.NAME]` block as written, every key optional: [`ActionConfig`] is read through
/// it, so that the keys decide the shape and a missing or misplaced key is named.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ActionFields<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    participant: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    params: std::borrow::Cow<'a, BTreeMap<String, ParamType>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forward: Option<std::borrow::Cow<'a, OperationConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compensate: Option<std::borrow::Cow<'a, OperationConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<RetryConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compensate_retry: Option<RetryConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    /// Written as nil when absent for a participant action (as before delays existed), left
    /// out for a delay.
    #[serde(default, skip_serializing_if = "Skippable::skipped")]
    check: Skippable<std::borrow::Cow<'a, CheckConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    returns: Option<std::borrow::Cow<'a, BTreeMap<String, ParamType>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delay_ms: Option<DelayMs>,
}

/// An optional value that is either left out of the encoding, or written (nil when `None`):
/// what `check` needs to keep a participant action's bytes (`check: nil`) while a delay
/// action writes no `check` at all.
struct Skippable<T> {
    value: Option<T>,
    skip: bool,
}

impl<T> Default for Skippable<T> {
    fn default() -> Self {
        Skippable { value: None, skip: false }
    }
}

impl<T> Skippable<T> {
    fn skipped(&self) -> bool {
        self.skip
    }
}

impl<T: Serialize> Serialize for Skippable<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Skippable<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Skippable { value: Option::<T>::deserialize(d)?, skip: false })
    }
}

impl Serialize for ActionConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::borrow::Cow::Borrowed;
        let fields = if self.is_delay() {
            ActionFields {
                participant: None,
                params: Borrowed(&self.params),
                forward: None,
                compensate: None,
                retry: None,
                compensate_retry: None,
                timeout_ms: None,
                check: Skippable { value: None, skip: true },
                returns: None,
                delay_ms: self.delay_ms,
            }
        } else {
            ActionFields {
                participant: Some(Borrowed(&self.participant)),
                params: Borrowed(&self.params),
                forward: Some(Borrowed(&self.forward)),
                compensate: Some(Borrowed(&self.compensate)),
                retry: Some(self.retry),
                compensate_retry: Some(self.compensate_retry),
                timeout_ms: Some(self.timeout_ms),
                check: Skippable { value: self.check.as_ref().map(Borrowed), skip: false },
                returns: (!self.returns.is_empty()).then_some(Borrowed(&self.returns)),
                delay_ms: None,
            }
        };
        fields.serialize(s)
    }
}

impl TryFrom<ActionFields<'_>> for ActionConfig {
    type Error = String;

    fn try_from(f: ActionFields<'_>) -> Result<ActionConfig, String> {
        let params = f.params.into_owned();
        if let Some(delay_ms) = f.delay_ms {
            let given = [
                ("participant", f.participant.is_some()),
                ("forward", f.forward.is_some()),
                ("compensate", f.compensate.is_some()),
                ("retry", f.retry.is_some()),
                ("compensate_retry", f.compensate_retry.is_some()),
                ("timeout_ms", f.timeout_ms.is_some()),
                ("check", f.check.value.is_some()),
                ("returns", f.returns.is_some()),
            ];
            if let Some((key, _)) = given.iter().find(|(_, given)| *given) {
                return Err(format!(
                    "a delay action (`delay_ms`) takes only `delay_ms` and `params`; found `{key}`, which is for participant actions"
                ));
            }
            return Ok(ActionConfig::delay(delay_ms, params));
        }
        let missing = |key: &str| format!("missing field `{key}` (or `delay_ms`, for a delay action)");
        Ok(ActionConfig {
            participant: f.participant.ok_or_else(|| missing("participant"))?.into_owned(),
            params,
            forward: f.forward.ok_or_else(|| missing("forward"))?.into_owned(),
            compensate: f.compensate.ok_or_else(|| missing("compensate"))?.into_owned(),
            retry: f.retry.unwrap_or_default(),
            compensate_retry: f.compensate_retry.unwrap_or_else(default_compensate_retry),
            timeout_ms: f.timeout_ms.unwrap_or_else(default_timeout_ms),
            check: f.check.value.map(std::borrow::Cow::into_owned),
            returns: f.returns.map(std::borrow::Cow::into_owned).unwrap_or_default(),
            delay_ms: None,
        })
    }
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
