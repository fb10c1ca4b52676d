//! The one conversion between the API's messages and the engine's definitions, used by the
//! server (requests in) and by the client library (requests out, replies in). Pure; never
//! validates beyond what the wire type cannot say (a value with no kind).

use super::pb;
use crate::engine::{SagaDefinition, StepCall, Value};

/// An engine value as the API's.
pub fn value_to_pb(value: &Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match value {
        Value::Null => Kind::Null(true),
        Value::Bool(b) => Kind::Bool(*b),
        Value::Int(i) => Kind::Int(*i),
        Value::Float(f) => Kind::Float(*f),
        Value::Text(s) => Kind::Text(s.clone()),
        Value::Bytes(b) => Kind::Bytes(b.clone()),
    };
    pb::Value { kind: Some(kind) }
}

/// `None` when the value has no kind set (not a valid parameter).
pub fn value_from_pb(value: &pb::Value) -> Option<Value> {
    use pb::value::Kind;
    Some(match value.kind.as_ref()? {
        Kind::Null(_) => Value::Null,
        Kind::Bool(b) => Value::Bool(*b),
        Kind::Int(i) => Value::Int(*i),
        Kind::Float(f) => Value::Float(*f),
        Kind::Text(s) => Value::Text(s.clone()),
        Kind::Bytes(b) => Value::Bytes(b.clone()),
        Kind::From(_) => return None,
    })
}

pub fn step_to_pb(step: &StepCall) -> pb::Step {
    let from = step
        .from
        .iter()
        .map(|(name, reference)| (name.clone(), pb::Value { kind: Some(pb::value::Kind::From(reference.clone())) }));
    pb::Step {
        action: step.action.clone(),
        params: step.params.iter().map(|(name, value)| (name.clone(), value_to_pb(value))).chain(from).collect(),
    }
}

/// `Err` names the parameter whose value has no kind. A `from` value goes to
/// [`StepCall::from`].
pub fn step_from_pb(step: &pb::Step) -> Result<StepCall, String> {
    let (mut params, mut from) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    for (name, value) in &step.params {
        if let Some(pb::value::Kind::From(reference)) = &value.kind {
            from.insert(name.clone(), reference.clone());
            continue;
        }
        let value = value_from_pb(value).ok_or_else(|| format!("parameter {name:?} has no value"))?;
        params.insert(name.clone(), value);
    }
    Ok(StepCall { action: step.action.clone(), params, from })
}

pub fn submit_request(saga: &SagaDefinition) -> pb::SubmitRequest {
    pb::SubmitRequest { saga_id: saga.id.clone(), steps: saga.steps.iter().map(step_to_pb).collect() }
}
