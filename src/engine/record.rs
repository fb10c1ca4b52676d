//! Journal records of the saga protocol and their payload encoding.
//!
//! Each record is one frame of the write-ahead log: its [`RecordKind`] tag plus a MessagePack
//! map (field names included, so a later version can add fields and `sagalog wal dump` shows
//! readable documents). Decoding checks the payload against the tag; a record that does not
//! decode is an error naming its LSN, never skipped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::Direction;
use super::model::{StepCall, StepPolicy};
use super::saga::Saga;
use super::value::Value;
use crate::config::ActionConfig;
use crate::wal_format::RecordKind;

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Completed,
    Compensated,
}

impl Outcome {
    /// The name logs and tools print (the saga status it ends in).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "COMPLETED",
            Outcome::Compensated => "COMPENSATED",
        }
    }
}

/// What an operator decided for a saga.
///
/// Encoded as its variant name inside the `Resolved` payload. A build that predates a variant
/// fails to decode a record carrying it, and recovery stops at that LSN instead of misreading
/// it (the same rule as for any record it cannot read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResolveDecision {
    /// For a STUCK saga: the operator undid the remaining effects by hand; record the saga as
    /// compensated.
    MarkCompensated,
    /// For a STUCK saga: try the failing compensation again with a fresh budget.
    RetryCompensation,
    /// For a COMPLETED saga: undo it. The saga goes back to compensating and every applied
    /// step is compensated in reverse order, journaled like any compensation (the undo button
    /// of `sagalog replay --compensate-since`). Ignored for a saga in any other state.
    CompensateCompleted,
}

impl ResolveDecision {
    /// The name logs print: the spelling of `sagalog admin resolve --decision`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolveDecision::MarkCompensated => "mark-compensated",
            ResolveDecision::RetryCompensation => "retry-compensation",
            ResolveDecision::CompensateCompleted => "compensate-completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub saga: String,
    pub steps: Vec<StepCall>,
    pub policies: Vec<StepPolicy>,
    pub digest: u32,
    pub at_ms: u64,
    /// The resolved definition of every action the steps call (participant, operations,
    /// retry policies, timeout), as the config declared it at submit. The saga runs and
    /// compensates with these for its whole life, whatever the config says later.
    ///
    /// Added in record version 2 of `SagaSubmitted` (a field, so the frame's kind and version
    /// stay): records written before it have none (the map is left out when empty, so their
    /// bytes and the golden vectors are unchanged), and their steps follow the config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actions: BTreeMap<String, ActionConfig>,
    /// The saga incarnation's marker scope ([`crate::engine::Scope`]): every marker and fence
    /// of this saga carries it, so neither an earlier saga that had the same id nor another
    /// instance's saga can vouch for its steps.
    ///
    /// Added in record version 3 of `SagaSubmitted` (a field, like `actions`): records written
    /// before it have none, and their markers carry the saga id alone, as they were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub saga: String,
    pub step: u32,
    pub direction: Direction,
    pub attempt: u32,
    pub at_ms: u64,
    /// For a delay step (an action with `delay_ms`, no participant): when its wait ends, in
    /// wall-clock milliseconds since the epoch, fixed once when the step starts. A restart
    /// waits only for what is left of it, and never computes it again; a deadline already
    /// passed ends the wait at once.
    ///
    /// Added in record version 2 of `StepStarted` (a field, left out when absent: earlier
    /// records and vectors are unchanged). A build that predates it cannot run a delay step
    /// anyway: the saga's journaled `SagaSubmitted` holds a delay action, whose definition
    /// such a build refuses to decode, so recovery stops there instead of misreading the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Succeeded {
    pub saga: String,
    pub step: u32,
    pub direction: Direction,
    pub attempt: u32,
    /// True when the success was established from the participant's marker (after a crash or
    /// a lost reply) rather than from the participant's answer.
    pub by_marker: bool,
    pub at_ms: u64,
    /// What the forward step returned (its action's `returns`), from the participant's answer
    /// or, settled by marker, from the marker. Added in record version 2 of `StepSucceeded` (a
    /// field, left out when empty: earlier records and vectors are unchanged).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub saga: String,
    pub step: u32,
    pub direction: Direction,
    pub attempt: u32,
    pub error: String,
    /// Whether trying again can help. False only for permanent errors (constraint violation,
    /// bad parameter): the saga then compensates at once.
    pub retryable: bool,
    /// Whether the effect may have been applied despite the failure: true after a retryable
    /// error or a timeout (the transaction's fate is unknown), false after a permanent error
    /// (rolled back) or when the participant's marker showed it was not applied.
    pub maybe_applied: bool,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub saga: String,
    pub outcome: Outcome,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequested {
    pub saga: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub saga: String,
    pub decision: ResolveDecision,
    pub by: String,
    pub at_ms: u64,
}

/// A global record: recovery started (every unfinished saga counts one more recovery).
///
/// Its on-disk kind is [`RecordKind::Checkpoint`] (tag and `wal dump` spelling kept for the
/// journals and scripts that have it); in code it is named for what it means, so that it is
/// never confused with the checkpoint *file* ([`crate::checkpoint::Checkpoint`]), which says
/// where replay starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStarted {
    pub reason: String,
    pub unfinished: u64,
    pub at_ms: u64,
}

/// A saga's whole state as its records before this one left it, re-journaled by its task
/// while it waits (STUCK, parked behind a breaker) so that the checkpoint can pass the saga's
/// older records: replay replaces the saga's state with this one, and recovery need not read
/// anything of the saga before it (issue 10, B19).
///
/// The payload is the serde shape of [`Saga`] (every field by name), so from this record on
/// that shape is part of the journal format: a field is only ever added, with
/// `#[serde(default)]`, never renamed or removed (`src/engine/vectors/v2-saga-snapshot.msgpack`
/// pins it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshotted {
    pub saga: Box<Saga>,
    pub at_ms: u64,
}

/// One record of the saga protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    SagaSubmitted(Submitted),
    StepStarted(Started),
    StepSucceeded(Succeeded),
    StepFailed(Failed),
    SagaFinished(Finished),
    CancelRequested(CancelRequested),
    Resolved(Resolved),
    RecoveryStarted(RecoveryStarted),
    SagaSnapshot(Snapshotted),
}

/// A payload that does not match its record kind.
#[derive(Debug, thiserror::Error)]
#[error("record {kind:?} has a payload that does not decode: {source}")]
pub struct DecodeError {
    pub kind: RecordKind,
    #[source]
    pub source: rmp_serde::decode::Error,
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::SagaSubmitted(_) => RecordKind::SagaSubmitted,
            Record::StepStarted(_) => RecordKind::StepStarted,
            Record::StepSucceeded(_) => RecordKind::StepSucceeded,
            Record::StepFailed(_) => RecordKind::StepFailed,
            Record::SagaFinished(_) => RecordKind::SagaFinished,
            Record::CancelRequested(_) => RecordKind::CancelRequested,
            Record::Resolved(_) => RecordKind::Resolved,
            Record::RecoveryStarted(_) => RecordKind::Checkpoint,
            Record::SagaSnapshot(_) => RecordKind::SagaSnapshot,
        }
    }

    /// The saga this record belongs to (`None` for global records).
    pub fn saga(&self) -> Option<&str> {
        match self {
            Record::SagaSubmitted(r) => Some(&r.saga),
            Record::StepStarted(r) => Some(&r.saga),
            Record::StepSucceeded(r) => Some(&r.saga),
            Record::StepFailed(r) => Some(&r.saga),
            Record::SagaFinished(r) => Some(&r.saga),
            Record::CancelRequested(r) => Some(&r.saga),
            Record::Resolved(r) => Some(&r.saga),
            Record::RecoveryStarted(_) => None,
            Record::SagaSnapshot(r) => Some(&r.saga.id),
        }
    }

    /// The payload bytes (a MessagePack map).
    ///
    /// Panics on a `SagaSubmitted` whose policies do not match its steps one for one: every
    /// writer builds them together (`Catalog::validate`), so a mismatch is a bug, and the
    /// decoder would refuse the record.
    pub fn encode(&self) -> Vec<u8> {
        if let Record::SagaSubmitted(s) = self {
            assert_eq!(s.steps.len(), s.policies.len(), "SagaSubmitted of {:?}: one policy per step", s.saga);
        }
        let bytes = match self {
            Record::SagaSubmitted(r) => rmp_serde::to_vec_named(r),
            Record::StepStarted(r) => rmp_serde::to_vec_named(r),
            Record::StepSucceeded(r) => rmp_serde::to_vec_named(r),
            Record::StepFailed(r) => rmp_serde::to_vec_named(r),
            Record::SagaFinished(r) => rmp_serde::to_vec_named(r),
            Record::CancelRequested(r) => rmp_serde::to_vec_named(r),
            Record::Resolved(r) => rmp_serde::to_vec_named(r),
            Record::RecoveryStarted(r) => rmp_serde::to_vec_named(r),
            Record::SagaSnapshot(r) => rmp_serde::to_vec_named(r),
        };
        // Encoding plain owned data into a Vec has no failure mode; a failure is a bug.
        bytes.unwrap_or_else(|e| panic!("encoding a {:?} record cannot fail: {e}", self.kind()))
    }

    /// Decodes a payload of `kind`. A `SagaSubmitted` whose policies do not match its steps
    /// one for one is refused: no writer journals one, so it is damage, not a saga.
    pub fn decode(kind: RecordKind, payload: &[u8]) -> Result<Record, DecodeError> {
        let record = Record::decode_payload(kind, payload)?;
        if let Record::SagaSubmitted(s) = &record
            && s.steps.len() != s.policies.len()
        {
            let message = format!("{} steps but {} retry policies", s.steps.len(), s.policies.len());
            return Err(DecodeError { kind, source: rmp_serde::decode::Error::Syntax(message) });
        }
        Ok(record)
    }

    fn decode_payload(kind: RecordKind, payload: &[u8]) -> Result<Record, DecodeError> {
        let err = |source| DecodeError { kind, source };
        Ok(match kind {
            RecordKind::SagaSubmitted => Record::SagaSubmitted(rmp_serde::from_slice(payload).map_err(err)?),
            RecordKind::StepStarted => Record::StepStarted(rmp_serde::from_slice(payload).map_err(err)?),
            RecordKind::StepSucceeded => Record::StepSucceeded(rmp_serde::from_slice(payload).map_err(err)?),
            RecordKind::StepFailed => Record::StepFailed(rmp_serde::from_slice(payload).map_err(err)?),
            RecordKind::SagaFinished => Record::SagaFinished(rmp_serde::from_slice(payload).map_err(err)?),
            RecordKind::CancelRequested => Record::CancelRequested(rmp_serde::from_slice(payload).map_err(err)?),
            RecordKind::Resolved => Record::Resolved(rmp_serde::from_slice(payload).map_err(err)?),
            RecordKind::Checkpoint => Record::RecoveryStarted(rmp_serde::from_slice(payload).map_err(err)?),
            RecordKind::SagaSnapshot => Record::SagaSnapshot(rmp_serde::from_slice(payload).map_err(err)?),
        })
    }
}
