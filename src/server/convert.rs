//! Between the wire types (`api::pb`) and the engine's, and from errors to gRPC statuses.

use std::collections::BTreeMap;

use tonic::{Code, Status};

use crate::api::pb;
use crate::catalog::Catalog;
use crate::engine::saga::StepState;
use crate::engine::{Saga, SagaDefinition, Status as SagaStatus, StepCall};
use crate::executor::{self, Snapshot};
use crate::index::SagaRecord;

/// A submit request as an engine definition. Only the wire-level checks live here (a value
/// with no type); the catalog validates the rest and names step and parameter itself.
pub fn definition(req: pb::SubmitRequest) -> Result<SagaDefinition, Status> {
    let mut steps = Vec::with_capacity(req.steps.len());
    for (n, step) in req.steps.into_iter().enumerate() {
        let (mut params, mut from) = (BTreeMap::new(), BTreeMap::new());
        for (name, value) in step.params {
            // An earlier step's output: the catalog checks the reference.
            if let Some(pb::value::Kind::From(reference)) = value.kind {
                from.insert(name, reference);
                continue;
            }
            let value = crate::api::convert::value_from_pb(&value).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "step {n} ({}): parameter {:?} has no value (set one of null, bool, int, float, text, bytes, from)",
                    crate::catalog::echo(&step.action),
                    crate::catalog::echo(&name)
                ))
            })?;
            params.insert(name, value);
        }
        steps.push(StepCall { action: step.action, params, from });
    }
    Ok(SagaDefinition { id: req.saga_id, steps })
}

fn step_state(step: &StepState, saga_status: SagaStatus) -> pb::StepState {
    let (fwd, comp) = (&step.forward, &step.compensate);
    if comp.done {
        pb::StepState::StepCompensated
    } else if comp.total_attempts > 0 {
        pb::StepState::StepCompensating
    } else if fwd.done {
        pb::StepState::StepApplied
    } else if fwd.total_attempts == 0 {
        pb::StepState::StepPending
    } else if fwd.failed_permanently
        || (!fwd.uncertain() && matches!(saga_status, SagaStatus::Compensating | SagaStatus::Compensated))
    {
        pb::StepState::StepFailed
    } else {
        pb::StepState::StepJournaled
    }
}

/// A live saga on the wire.
pub fn saga(snapshot: &Snapshot, catalog: &Catalog) -> pb::Saga {
    let s: &Saga = &snapshot.saga;
    let steps = s
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let last_error = st.compensate.last_error.as_ref().or(st.forward.last_error.as_ref());
            pb::StepStatus {
                index: i as u32,
                action: st.call.action.clone(),
                participant: match s.actions.get(&st.call.action) {
                    Some(journaled) => journaled.participant.clone(),
                    None => participant_of(catalog, &st.call.action),
                },
                state: step_state(st, snapshot.status) as i32,
                attempts: st.forward.total_attempts,
                compensate_attempts: st.compensate.total_attempts,
                last_error: last_error.cloned().unwrap_or_default(),
                applied_by_marker: st.forward.by_marker,
                started_at_ms: st.forward.first_started_at_ms.unwrap_or(0),
                finished_at_ms: st.compensate.finished_at_ms.or(st.forward.finished_at_ms).unwrap_or(0),
                deadline_ms: st.forward.deadline_ms.unwrap_or(0),
                outputs: st
                    .forward
                    .outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), crate::api::convert::value_to_pb(v)))
                    .collect(),
                worker_id: String::new(),
            }
        })
        .collect();
    pb::Saga {
        saga_id: s.id.clone(),
        status: crate::api::status_to_pb(snapshot.status) as i32,
        version: s.version,
        steps,
        compensation_reason: s.compensation_reason.clone().unwrap_or_default(),
        recovery_count: s.recoveries,
        submitted_at_ms: s.submitted_at_ms,
        finished_at_ms: s.finished_at_ms.unwrap_or(0),
        parked_on: snapshot.parked_on.clone().unwrap_or_default(),
        archived: false,
        parked_reason: snapshot.parked_reason.clone().unwrap_or_default(),
    }
}

/// A saga from the index of finished sagas on the wire.
pub fn archived(r: &SagaRecord, catalog: &Catalog) -> pb::Saga {
    let status = match r.status.as_str() {
        "COMPENSATED" => pb::SagaStatus::Compensated,
        _ => pb::SagaStatus::Completed,
    };
    let steps = r
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let state = if st.compensated {
                pb::StepState::StepCompensated
            } else if st.forward_done {
                pb::StepState::StepApplied
            } else if st.forward_attempts > 0 {
                pb::StepState::StepFailed
            } else {
                pb::StepState::StepPending
            };
            pb::StepStatus {
                index: i as u32,
                action: st.action.clone(),
                participant: participant_of(catalog, &st.action),
                state: state as i32,
                attempts: st.forward_attempts,
                compensate_attempts: st.compensate_attempts,
                last_error: st.last_error.clone().unwrap_or_default(),
                applied_by_marker: st.forward_by_marker,
                started_at_ms: st.started_at_ms.unwrap_or(0),
                finished_at_ms: st.finished_at_ms.unwrap_or(0),
                // The index keeps no deadline.
                deadline_ms: 0,
                outputs: st.outputs.iter().map(|(k, v)| (k.clone(), crate::api::convert::value_to_pb(v))).collect(),
                worker_id: String::new(),
            }
        })
        .collect();
    pb::Saga {
        saga_id: r.id.clone(),
        status: status as i32,
        version: r.version,
        steps,
        compensation_reason: r.compensation_reason.clone().unwrap_or_default(),
        recovery_count: r.recoveries,
        submitted_at_ms: r.submitted_at_ms,
        finished_at_ms: r.finished_at_ms,
        parked_on: String::new(),
        archived: true,
        parked_reason: String::new(),
    }
}

fn participant_of(catalog: &Catalog, action: &str) -> String {
    catalog.action(action).map(|a| a.participant.clone()).unwrap_or_default()
}

/// The gRPC status for an executor error.
pub fn error(e: executor::Error) -> Status {
    use executor::Error as E;
    let message = e.to_string();
    let code = match e {
        E::Invalid(_) => Code::InvalidArgument,
        E::Conflict { .. } => Code::AlreadyExists,
        E::SubmitInProgress { .. } => Code::Aborted,
        E::NotFound { .. } => Code::NotFound,
        E::WrongState { .. } => Code::FailedPrecondition,
        E::Journal(_) | E::ShuttingDown => Code::Unavailable,
        E::Index(_) => Code::Internal,
        E::ControlQueueFull { .. } | E::TooManyLive { .. } => Code::ResourceExhausted,
    };
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every limit an executor refuses with is RESOURCE_EXHAUSTED, and names its key.
    #[test]
    fn executor_limits_are_resource_exhausted_naming_the_limit() {
        let live = error(executor::Error::TooManyLive { max: 3 });
        assert_eq!(live.code(), Code::ResourceExhausted);
        assert!(live.message().contains("executor.live_sagas_max"), "{}", live.message());
        let control = error(executor::Error::ControlQueueFull { id: "s".into(), max: 16 });
        assert_eq!(control.code(), Code::ResourceExhausted);
    }
}
