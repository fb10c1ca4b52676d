//! What a client submits: a saga id chosen by the client (the idempotency key) and ordered
//! steps, each naming a declared action with typed parameter values; and the step identity
//! every layer shares ([`Direction`], [`StepKey`], the idempotency key of one step).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::value::Value;

/// One step as the client wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCall {
    pub action: String,
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// Parameters taken from an earlier step's outputs: parameter name → `steps.N.output`
    /// (`{"from": "steps.0.id"}` in a saga file or the API). Checked at submit (the step is
    /// earlier, declares that output, of the parameter's type) and resolved when the step
    /// runs. Left out of the encoding when empty, so earlier definitions keep their bytes and
    /// their digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub from: BTreeMap<String, String>,
}

/// A `from` reference, `steps.N.name`: the output `name` of step `N` (from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRef {
    pub step: u32,
    pub output: String,
}

impl OutputRef {
    /// Parses `steps.N.name`; `None` for anything else.
    pub fn parse(text: &str) -> Option<OutputRef> {
        let rest = text.strip_prefix("steps.")?;
        let (step, output) = rest.split_once('.')?;
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !step.bytes().all(|b| b.is_ascii_digit()) || !plain(output) {
            return None;
        }
        Some(OutputRef { step: step.parse().ok()?, output: output.to_owned() })
    }
}

/// The prefix a compensation's `args` use to name its own step's forward outputs.
pub const OWN_OUTPUT_PREFIX: &str = "output.";

/// A saga as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaDefinition {
    pub id: String,
    pub steps: Vec<StepCall>,
}

/// The retry budgets of one step, fixed when the saga is submitted and journaled with it, so
/// recovery applies the budgets the saga started with even if the config changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPolicy {
    /// Attempts of the forward action before the saga compensates (at least 1).
    pub max_attempts: u32,
    /// Attempts of the compensating action before the saga is STUCK (at least 1).
    pub compensate_max_attempts: u32,
}

impl SagaDefinition {
    /// A stable digest of the definition: the same id with a different digest is a conflicting
    /// resubmission. Computed over the canonical MessagePack encoding (maps are ordered).
    pub fn digest(&self) -> u32 {
        match rmp_serde::to_vec_named(self) {
            Ok(bytes) => crc32fast::hash(&bytes),
            // Serializing plain data into a Vec cannot fail; a zero digest would only make two
            // definitions compare equal on their other fields, which callers also check.
            Err(_) => 0,
        }
    }
}

/// Which way a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    Forward,
    Compensate,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Compensate => "compensate",
        }
    }
}

/// The idempotency key of one step in one direction, in one saga incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    pub saga_id: String,
    pub step: u32,
    pub direction: Direction,
    /// The saga's marker scope (see [`Scope`]): `None` for sagas journaled before scopes,
    /// whose markers carry the saga id alone.
    pub scope: Option<String>,
}

impl StepKey {
    /// An unscoped key (a saga journaled before marker scopes, or a test).
    pub fn new(saga_id: impl Into<String>, step: u32, direction: Direction) -> StepKey {
        StepKey { saga_id: saga_id.into(), step, direction, scope: None }
    }

    /// The key in the saga incarnation `scope`.
    pub fn scoped(mut self, scope: Option<String>) -> StepKey {
        self.scope = scope;
        self
    }

    /// What a SQL participant stores in its marker and fence tables' `saga_id` column: the saga
    /// id, then, for a scoped saga, one space and the scope. A valid saga id holds no space,
    /// so a scoped marker never reads as another saga's, and an unscoped one is stored exactly
    /// as earlier builds stored it.
    pub fn marker_id(&self) -> std::borrow::Cow<'_, str> {
        match &self.scope {
            None => std::borrow::Cow::Borrowed(&self.saga_id),
            Some(scope) => std::borrow::Cow::Owned(format!("{} {scope}", self.saga_id)),
        }
    }

    /// The inverse of [`StepKey::marker_id`]: `(saga id, scope)`.
    pub fn split_marker_id(stored: &str) -> (String, Option<String>) {
        match stored.split_once(' ') {
            Some((id, scope)) if Scope::is_valid(scope) => (id.to_owned(), Some(scope.to_owned())),
            _ => (stored.to_owned(), None),
        }
    }
}

/// A saga incarnation's marker scope, `<instance>.<incarnation>`: the data directory's
/// instance id and a nonce drawn at submit, 16 lowercase hex digits each. It is journaled in
/// `SagaSubmitted` and stored with every marker and fence of the saga, so that
///
/// - a saga submitted again under an id the index has forgotten (retention) is a new
///   incarnation: the old incarnation's markers do not vouch for its steps;
/// - two sagalog instances sharing a participant database never read each other's markers,
///   even for equal saga ids.
pub struct Scope;

impl Scope {
    /// Length of a scope: two 16-digit hex numbers and a dot.
    pub const LEN: usize = 33;

    /// A new scope for a saga submitted on instance `instance` (16 hex digits).
    pub fn draw(instance: &str) -> String {
        format!("{instance}.{:016x}", rand::random::<u64>())
    }

    /// A new instance id, for a data directory that has none.
    pub fn draw_instance() -> String {
        format!("{:016x}", rand::random::<u64>())
    }

    /// Whether `text` is an instance id: 16 lowercase hex digits.
    pub fn is_instance(text: &str) -> bool {
        text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// Whether `text` has the shape of a scope.
    pub fn is_valid(text: &str) -> bool {
        text.len() == Scope::LEN
            && text.split_once('.').is_some_and(|(a, b)| Scope::is_instance(a) && Scope::is_instance(b))
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.saga_id, self.step, self.direction.as_str())
    }
}
