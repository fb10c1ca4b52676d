//! The one JSON dialect of sagalog's API: what the HTTP API answers and the CLI's `--json`
//! prints, message by message. Field names are the proto's field names (the proto3 JSON
//! mapping with `preserving_proto_field_names`), statuses and states are their names
//! (`COMPLETED`, `APPLIED`), times are RFC 3339 in UTC with milliseconds or `null` for "not
//! yet", with the raw millisecond values beside them (`*_ms`), and values are plain JSON (the
//! saga-file encoding of `saga_file.rs` for bytes).
//!
//! These shapes are a contract with scripts (documented in `docs/api.md` and `docs/cli.md`):
//! fields may be added, never renamed. Owns no I/O.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value as Json, json};

use tonic::Code;

use super::pb;
use super::status_from_pb;
use crate::engine::Status;

/// The status of a saga message (UNSPECIFIED for a value this client does not know).
pub fn saga_status(saga: &pb::Saga) -> pb::SagaStatus {
    pb::SagaStatus::try_from(saga.status).unwrap_or(pb::SagaStatus::Unspecified)
}

/// COMPLETED or COMPENSATED: nothing will change any more.
pub fn is_terminal(saga: &pb::Saga) -> bool {
    matches!(saga_status(saga), pb::SagaStatus::Completed | pb::SagaStatus::Compensated)
}

/// Terminal, or STUCK (waiting for an operator).
pub fn is_settled(saga: &pb::Saga) -> bool {
    is_terminal(saga) || saga_status(saga) == pb::SagaStatus::Stuck
}

/// Every status name a client may use, in lifecycle order.
pub const STATUS_NAMES: [&str; 6] = ["PENDING", "RUNNING", "COMPLETED", "COMPENSATING", "COMPENSATED", "STUCK"];

/// The spelled name of a status (`PENDING` … `STUCK`, as [`Status::as_str`] spells it;
/// `UNSPECIFIED` for 0).
pub fn status_name(status: pb::SagaStatus) -> &'static str {
    status_from_pb(status).map_or("UNSPECIFIED", Status::as_str)
}

/// A status from its name, case-insensitively; `None` for anything but the six names.
pub fn parse_status(name: &str) -> Option<pb::SagaStatus> {
    let status = match name.trim().to_ascii_uppercase().as_str() {
        "PENDING" => pb::SagaStatus::Pending,
        "RUNNING" => pb::SagaStatus::Running,
        "COMPLETED" => pb::SagaStatus::Completed,
        "COMPENSATING" => pb::SagaStatus::Compensating,
        "COMPENSATED" => pb::SagaStatus::Compensated,
        "STUCK" => pb::SagaStatus::Stuck,
        _ => return None,
    };
    Some(status)
}

/// The state of a step as the CLI prints it (`PENDING JOURNALED APPLIED FAILED COMPENSATING
/// COMPENSATED`; `UNSPECIFIED` for 0 or a value this client does not know).
pub fn step_state_name(step: &pb::StepStatus) -> &'static str {
    match pb::StepState::try_from(step.state).unwrap_or(pb::StepState::Unspecified) {
        pb::StepState::Unspecified => "UNSPECIFIED",
        pb::StepState::StepPending => "PENDING",
        pb::StepState::StepJournaled => "JOURNALED",
        pb::StepState::StepApplied => "APPLIED",
        pb::StepState::StepFailed => "FAILED",
        pb::StepState::StepCompensating => "COMPENSATING",
        pb::StepState::StepCompensated => "COMPENSATED",
    }
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds; `None` for 0 ("not yet").
pub fn rfc3339_ms(ms: u64) -> Option<String> {
    (ms != 0).then(|| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
}

fn opt_text(s: &str) -> Json {
    if s.is_empty() { Json::Null } else { Json::String(s.to_owned()) }
}

/// A saga as `status --json` prints it.
pub fn saga_json(saga: &pb::Saga) -> Json {
    let steps: Vec<Json> = saga.steps.iter().map(step_json).collect();
    let errors: Vec<Json> = saga
        .steps
        .iter()
        .filter(|s| !s.last_error.is_empty())
        .map(|s| json!({ "step": s.index, "action": s.action, "error": s.last_error }))
        .collect();
    let duration_ms = (saga.finished_at_ms >= saga.submitted_at_ms && saga.finished_at_ms != 0)
        .then(|| saga.finished_at_ms - saga.submitted_at_ms);
    json!({
        "id": saga.saga_id,
        "saga_id": saga.saga_id,
        "status": status_name(saga_status(saga)),
        "version": saga.version,
        "submitted_at": rfc3339_ms(saga.submitted_at_ms),
        "finished_at": rfc3339_ms(saga.finished_at_ms),
        "submitted_at_ms": saga.submitted_at_ms,
        "finished_at_ms": saga.finished_at_ms,
        "duration_ms": duration_ms,
        "compensation_reason": opt_text(&saga.compensation_reason),
        "parked_on": opt_text(&saga.parked_on),
        "parked_reason": opt_text(&saga.parked_reason),
        "recovery_count": saga.recovery_count,
        "archived": saga.archived,
        "steps": steps,
        "errors": errors,
    })
}

fn step_json(step: &pb::StepStatus) -> Json {
    json!({
        "index": step.index,
        "action": step.action,
        "participant": opt_text(&step.participant),
        "state": step_state_name(step),
        "attempts": step.attempts,
        "compensate_attempts": step.compensate_attempts,
        "last_error": opt_text(&step.last_error),
        "applied_by_marker": step.applied_by_marker,
        "worker_id": opt_text(&step.worker_id),
        "started_at": rfc3339_ms(step.started_at_ms),
        "finished_at": rfc3339_ms(step.finished_at_ms),
        "started_at_ms": step.started_at_ms,
        "finished_at_ms": step.finished_at_ms,
        "deadline": rfc3339_ms(step.deadline_ms),
        "deadline_ms": step.deadline_ms,
        "outputs": step
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), crate::api::convert::value_from_pb(v).map_or(Json::Null, |v| v.to_json())))
            .collect::<serde_json::Map<_, _>>(),
    })
}

pub fn participant_json(p: &pb::Participant) -> Json {
    json!({
        "name": p.name,
        "kind": p.kind,
        "healthy": p.healthy,
        "probe_error": opt_text(&p.probe_error),
        "breaker_state": p.breaker_state,
        "calls_succeeded": p.calls_succeeded,
        "calls_failed": p.calls_failed,
    })
}

pub fn stats_json(s: &pb::StatsResponse) -> Json {
    let by_status: serde_json::Map<String, Json> = s
        .sagas_by_status
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let latency: Vec<Json> = s
        .step_latency
        .iter()
        .map(|l| json!({"participant": l.participant, "calls": l.calls, "p50_ms": l.p50_ms, "p90_ms": l.p90_ms, "p99_ms": l.p99_ms}))
        .collect();
    let limits = s.limits.as_ref().map(|l| {
        json!({
            "max_message_bytes": l.max_message_bytes,
            "max_steps": l.max_steps,
            "max_saga_bytes": l.max_saga_bytes,
            "max_pending_submits": l.max_pending_submits,
        })
    });
    json!({
        "sagas_by_status": by_status,
        "step_latency": latency,
        "journal_bytes": s.journal_bytes,
        "journal_lsn": s.journal_lsn,
        "recoveries": s.recoveries,
        "last_recovery_ms": s.last_recovery_ms,
        "limits": limits,
    })
}

/// The canonical name of a gRPC code, as in the proto's documentation (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A worker queue as `admin queues --json` prints it.
pub fn queue_json(q: &pb::QueueStatus) -> Json {
    json!({
        "queue": q.queue,
        "participant": q.participant,
        "lease_ms": q.lease_ms,
        "workers": q.workers.iter().map(|w| json!({"worker_id": w.worker_id, "last_seen_ms_ago": w.last_seen_ms_ago})).collect::<Vec<_>>(),
        "tasks_waiting": q.tasks_waiting,
        "tasks_in_flight": q.tasks_in_flight,
        "oldest_waiting_ms": q.oldest_waiting_ms,
        "breaker_state": q.breaker_state,
        "breaker_reason": q.breaker_reason,
        "polling": q.polling,
    })
}

/// Decodes a whole payload as one MessagePack value; trailing bytes are an error.
pub fn msgpack_json(payload: &[u8]) -> Result<Json, String> {
    let mut cursor = std::io::Cursor::new(payload);
    let value =
        serde::Deserialize::deserialize(&mut rmp_serde::Deserializer::new(&mut cursor)).map_err(|e| e.to_string())?;
    match payload.len() as u64 - cursor.position() {
        0 => Ok(value),
        n => Err(format!("{n} trailing bytes after the value")),
    }
}

/// A journal record as `wal dump` prints it and `GET /v1/sagas/{id}/history` lists it: its LSN,
/// kind and payload decoded from MessagePack (or the payload in hex with why it did not decode).
pub fn record_json(lsn: u64, kind: &str, payload: &[u8]) -> Json {
    let mut line = json!({ "lsn": lsn, "kind": kind });
    match msgpack_json(payload) {
        Ok(value) => line["payload"] = value,
        Err(e) => {
            line["payload_error"] = format!("payload is not MessagePack: {e}").into();
            line["payload_hex"] = payload.iter().map(|b| format!("{b:02x}")).collect::<String>().into();
        }
    }
    line
}

/// The journal check as `wal verify --json` prints it and `GET /v1/admin/journal/verify`
/// answers.
pub fn verify_json(summary: &crate::journal::LogSummary, seconds: f64) -> Json {
    let problem = summary.problem.as_ref().map(|p| {
        json!({
            "severity": match p.severity { crate::journal::Severity::Warning => "warning", crate::journal::Severity::Corrupt => "corrupt" },
            "path": p.path,
            "segment": p.error.segment,
            "offset": p.error.offset,
            "valid_data_at": p.error.valid_data_at,
            // A warning's kind of tail: "unsynced" (a hole in a never-synced last batch, format
            // version 2; valid frames follow at `unsynced_valid_at` and are dropped) or "torn".
            "tail": (p.severity == crate::journal::Severity::Warning).then(|| if p.unsynced_valid_at.is_some() { "unsynced" } else { "torn" }),
            "unsynced_valid_at": p.unsynced_valid_at,
            "message": p.error.kind.to_string(),
        })
    });
    let status = match &summary.problem {
        None => "ok",
        Some(p) if p.severity == crate::journal::Severity::Warning => "torn-tail",
        Some(_) => "corrupt",
    };
    json!({
        "status": status,
        "segments": summary.segments.len(),
        "records": summary.records,
        "first_lsn": summary.first_lsn,
        "last_lsn": summary.last_lsn,
        "epoch": summary.epoch.map(|e| format!("{e:#018x}")),
        "verified_bytes": summary.verified_bytes,
        "seconds": seconds,
        "stray_files": summary.strays,
        "problem": problem,
    })
}

/// RFC 3339 (or a bare date, midnight UTC), or a duration before `now_ms`; in ms since the epoch.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    let as_date = (s.len() == 10).then(|| format!("{s}T00:00:00Z"));
    if let Ok(t) = humantime::parse_rfc3339_weak(as_date.as_deref().unwrap_or(s)) {
        let since = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{s:?} is before 1970"))?;
        return Ok(since.as_millis() as u64);
    }
    match humantime::parse_duration(s) {
        Ok(ago) => Ok(now_ms.saturating_sub(ago.as_millis() as u64)),
        Err(_) => Err(format!(
            "{s:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z, 2026-01-31) nor a duration ago (1h, 30m, 2days)"
        )),
    }
}

/// An action of the catalog as `actions --json` prints it and `GET /v1/actions` lists it.
pub fn action_json(a: &pb::Action) -> Json {
    json!({
        "name": a.name,
        "participant": a.participant,
        "participant_kind": a.participant_kind,
        "params": a.params,
        "returns": a.returns,
    })
}
