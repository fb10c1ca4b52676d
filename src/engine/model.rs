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
}

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

/// The idempotency key of one step in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    pub saga_id: String,
    pub step: u32,
    pub direction: Direction,
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.saga_id, self.step, self.direction.as_str())
    }
}
