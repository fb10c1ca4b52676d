//! The `[actions.NAME]` blocks: the typed actions clients may call, their SQL or file
//! operations, retry policies and timeouts. Schema and defaults only; `catalog` validates
//! them against the participants and binds a saga's values to them.

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
