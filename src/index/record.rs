//! The archived form of a finished saga: what a status query can still answer after the
//! saga's journal segments are deleted.
//!
//! A [`SagaRecord`] is stored as a named MessagePack map (field names included), so a later
//! format version can add fields: a reader ignores fields it does not know, and a new field
//! must carry `#[serde(default)]` so records written before it stay decodable. The
//! `format_version` field says which version wrote a record; this version writes
//! [`FORMAT_VERSION`] and refuses records from a newer one rather than misreading them.
//!
//! This module never does I/O. It checks a record when it is encoded ([`SagaRecord::check`])
//! and again when it is decoded ([`SagaRecord::decode`]).

use serde::{Deserialize, Serialize};

use crate::engine::{Saga, Status, StepProgress};

/// The format version this build writes. Every version ever written stays decodable.
pub const FORMAT_VERSION: u8 = 1;

/// A finished saga as the index keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRecord {
    pub format_version: u8,
    pub id: String,
    /// The client-visible status, as [`Status::as_str`] spells it: `COMPLETED` or
    /// `COMPENSATED` for every record the index accepts.
    pub status: String,
    /// The digest of the submitted definition, so a resubmission of an archived id can still
    /// be told apart from a conflicting one.
    pub digest: u32,
    pub submitted_at_ms: u64,
    pub finished_at_ms: u64,
    pub recoveries: u32,
    pub compensation_reason: Option<String>,
    pub steps: Vec<StepRecord>,
    /// The saga's version when it finished (what a watcher saw last). Records written before
    /// this field existed read as 0.
    #[serde(default)]
    pub version: u64,
    /// The saga's marker scope (see [`crate::engine::Scope`]), so an audit finds its markers.
    /// Records of unscoped sagas, and records written before this field existed, have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// One step of an archived saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub action: String,
    /// Forward attempts started in all (across retry budgets reset by an operator).
    pub forward_attempts: u32,
    pub forward_done: bool,
    /// The forward success was established from the participant's marker.
    pub forward_by_marker: bool,
    /// Compensation attempts started in all.
    pub compensate_attempts: u32,
    pub compensated: bool,
    /// The most recent error of the step: the compensation's if it has one (compensation
    /// always runs after the forward direction), else the forward direction's.
    pub last_error: Option<String>,
    /// What the forward step returned; records of steps without outputs (and records written
    /// before outputs existed) have none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub outputs: std::collections::BTreeMap<String, crate::engine::Value>,
    /// When the step's first forward attempt started, and when it last finished (its
    /// compensation's end if it was compensated), in ms since the epoch, as a live saga shows
    /// them. Records written before these fields existed, and steps that never ran, have none
    /// (fields of a named MessagePack map: older sagalogs skip them, this one defaults them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

/// Why a record cannot be stored or read back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("it does not decode: {0}")]
    Decode(#[source] rmp_serde::decode::Error),
    #[error("it has format version {0}, which this sagalog does not read (it reads 1 to {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("it is stored under saga {key:?} but names saga {id:?}")]
    WrongId { key: String, id: String },
    #[error("it is {0}, not finished: only COMPLETED and COMPENSATED sagas are archived")]
    NotFinished(String),
    #[error("its id is empty")]
    EmptyId,
}

impl SagaRecord {
    /// The record of `saga`. A saga that is not finished yields a record with its current
    /// status and `finished_at_ms` 0, which [`crate::index::Index::put`] refuses: only a
    /// finished saga may leave the journal.
    pub fn from_saga(saga: &Saga) -> SagaRecord {
        SagaRecord {
            format_version: FORMAT_VERSION,
            id: saga.id.clone(),
            status: saga.status().as_str().to_owned(),
            digest: saga.digest,
            submitted_at_ms: saga.submitted_at_ms,
            finished_at_ms: saga.finished_at_ms.unwrap_or(0),
            recoveries: saga.recoveries,
            compensation_reason: saga.compensation_reason.clone(),
            steps: saga
                .steps
                .iter()
                .map(|s| StepRecord {
                    action: s.call.action.clone(),
                    forward_attempts: s.forward.total_attempts,
                    forward_done: s.forward.done,
                    forward_by_marker: s.forward.by_marker,
                    compensate_attempts: s.compensate.total_attempts,
                    compensated: s.compensate.done,
                    last_error: latest_error(&s.forward, &s.compensate),
                    outputs: s.forward.outputs.clone(),
                    started_at_ms: s.forward.first_started_at_ms,
                    finished_at_ms: s.compensate.finished_at_ms.or(s.forward.finished_at_ms),
                })
                .collect(),
            version: saga.version,
            scope: saga.scope.clone(),
        }
    }

    /// Whether this record may be stored: a known version, an id, a finished status.
    pub fn check(&self) -> Result<(), RecordError> {
        if self.format_version == 0 || self.format_version > FORMAT_VERSION {
            return Err(RecordError::UnknownVersion(self.format_version));
        }
        if self.id.is_empty() {
            return Err(RecordError::EmptyId);
        }
        let finished = [Status::Completed.as_str(), Status::Compensated.as_str()];
        if !finished.contains(&self.status.as_str()) {
            return Err(RecordError::NotFinished(self.status.clone()));
        }
        Ok(())
    }

    /// The stored bytes: a named MessagePack map.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain owned data into a Vec has no failure mode; a failure is a bug.
        rmp_serde::to_vec_named(self)
            .unwrap_or_else(|e| panic!("encoding the record of saga {} cannot fail: {e}", self.id))
    }

    /// Decodes the bytes stored under the saga id `key`, checking them as [`Self::check`]
    /// does and that they name the saga they are stored under.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<SagaRecord, RecordError> {
        let record: SagaRecord = rmp_serde::from_slice(bytes).map_err(RecordError::Decode)?;
        if record.id != key {
            return Err(RecordError::WrongId { key: key.to_owned(), id: record.id });
        }
        record.check()?;
        Ok(record)
    }
}

fn latest_error(forward: &StepProgress, compensate: &StepProgress) -> Option<String> {
    compensate.last_error.clone().or_else(|| forward.last_error.clone())
}
