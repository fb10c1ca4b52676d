//! How the client commands print what the server answers: one JSON shape per message for
//! `--json`, compact text and tables for people, and the progress lines of `--wait` / `watch`.
//!
//! The JSON shapes are a contract with scripts (documented in `docs/cli.md`): fields may be
//! added, never renamed. Times are RFC 3339 in UTC with milliseconds, or `null` for "not yet";
//! the raw millisecond values are kept beside them (`*_ms`).

use crate::api::pb;
use crate::client::{rfc3339_ms, saga_status, status_name, step_state_name};

pub use crate::api::json::{participant_json, saga_json, stats_json};

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            if i + 1 < widths.len() {
                out.extend(std::iter::repeat_n(' ', widths[i].saturating_sub(cell.chars().count())));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

/// `status` without `--json`: a few header lines and a table of steps.
pub fn saga_text(saga: &pb::Saga) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<12}{value}\n"));
    field("saga", saga.saga_id.clone());
    field("status", status_name(saga_status(saga)).to_owned());
    field("version", saga.version.to_string());
    field("submitted", or_dash(rfc3339_ms(saga.submitted_at_ms)));
    if let Some(finished) = rfc3339_ms(saga.finished_at_ms) {
        let took = saga.finished_at_ms.saturating_sub(saga.submitted_at_ms);
        field("finished", format!("{finished} (after {took} ms)"));
    }
    if !saga.compensation_reason.is_empty() {
        field("reason", saga.compensation_reason.clone());
    }
    if !saga.parked_on.is_empty() {
        let why = if saga.parked_reason.is_empty() { String::new() } else { format!(": {}", saga.parked_reason) };
        field("parked on", format!("{} (its circuit breaker is open{why})", saga.parked_on));
    }
    if saga.recovery_count > 0 {
        field("recoveries", saga.recovery_count.to_string());
    }
    if saga.archived {
        field("archived", "yes (read from the index of finished sagas)".into());
    }
    let rows: Vec<Vec<String>> = saga
        .steps
        .iter()
        .map(|s| {
            let attempts = if s.compensate_attempts > 0 {
                format!("{}+{}c", s.attempts, s.compensate_attempts)
            } else {
                s.attempts.to_string()
            };
            let state = if s.applied_by_marker {
                format!("{} (marker)", step_state_name(s))
            } else if s.deadline_ms != 0 && s.state == pb::StepState::StepJournaled as i32 {
                format!("waiting until {}", rfc3339_ms(s.deadline_ms).unwrap_or_default())
            } else if !s.worker_id.is_empty() {
                format!("{} (worker {})", step_state_name(s), s.worker_id)
            } else {
                step_state_name(s).into()
            };
            vec![
                s.index.to_string(),
                s.action.clone(),
                or_dash(opt(&s.participant)),
                state,
                attempts,
                one_line(&s.last_error),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["STEP", "ACTION", "PARTICIPANT", "STATE", "ATTEMPTS", "LAST ERROR"], &rows));
    out
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// `list` without `--json`.
pub fn list_text(sagas: &[pb::Saga]) -> String {
    let rows: Vec<Vec<String>> = sagas
        .iter()
        .map(|s| {
            vec![
                s.saga_id.clone(),
                status_name(saga_status(s)).to_owned(),
                steps_summary(s),
                or_dash(rfc3339_ms(s.submitted_at_ms)),
                or_dash(rfc3339_ms(s.finished_at_ms)),
            ]
        })
        .collect();
    let mut out = table(&["ID", "STATUS", "STEPS", "SUBMITTED", "FINISHED"], &rows);
    out.push_str(&format!("{} saga{}\n", sagas.len(), if sagas.len() == 1 { "" } else { "s" }));
    out
}

/// "2/3 applied", "1/3 compensated".
fn steps_summary(saga: &pb::Saga) -> String {
    let count = |state: pb::StepState| saga.steps.iter().filter(|s| s.state == state as i32).count();
    let total = saga.steps.len();
    let compensated = count(pb::StepState::StepCompensated);
    if compensated > 0 {
        format!("{compensated}/{total} compensated")
    } else {
        format!("{}/{total} applied", count(pb::StepState::StepApplied))
    }
}

/// What changed from `before` to `after`, one line each, for `--wait` and `watch`.
pub fn progress_lines(before: Option<&pb::Saga>, after: &pb::Saga) -> Vec<String> {
    let mut lines = Vec::new();
    let status_line =
        format!("saga {}: {} (version {})", after.saga_id, status_name(saga_status(after)), after.version);
    // The first state opens with the status; later ones say what happened to the steps first
    // (step 2 applied, then COMPLETED; step 1 failed, then COMPENSATING).
    if before.is_none() {
        lines.push(status_line.clone());
    }
    for step in &after.steps {
        let old = before.and_then(|b| b.steps.iter().find(|s| s.index == step.index));
        if let Some(line) = step_change(old, step) {
            lines.push(line);
        }
    }
    if !after.parked_on.is_empty() && before.is_none_or(|b| b.parked_on != after.parked_on) {
        let why = if after.parked_reason.is_empty() { String::new() } else { format!(" ({})", after.parked_reason) };
        lines.push(format!("  parked: participant {} has an open circuit breaker{why}; waiting", after.parked_on));
    }
    if before.is_some_and(|b| !b.parked_on.is_empty()) && after.parked_on.is_empty() {
        lines.push("  unparked: resuming".into());
    }
    if !after.compensation_reason.is_empty() && before.is_none_or(|b| b.compensation_reason.is_empty()) {
        lines.push(format!("  compensating because: {}", one_line(&after.compensation_reason)));
    }
    if before.is_some_and(|b| b.status != after.status) {
        lines.push(status_line);
    }
    lines
}

fn step_change(old: Option<&pb::StepStatus>, new: &pb::StepStatus) -> Option<String> {
    let name = match new.participant.as_str() {
        "" => format!("step {} {}", new.index, new.action),
        participant => format!("step {} {} ({participant})", new.index, new.action),
    };
    let state = pb::StepState::try_from(new.state).unwrap_or(pb::StepState::Unspecified);
    let state_changed = old.is_none_or(|o| o.state != new.state);
    let retried = old.is_some_and(|o| o.attempts < new.attempts || o.compensate_attempts < new.compensate_attempts);
    let error = one_line(&new.last_error);
    let same_error = old.is_some_and(|o| one_line(&o.last_error) == error);
    match state {
        // A step that has not started yet is news only when the status started out PENDING.
        pb::StepState::StepPending | pb::StepState::Unspecified => None,
        pb::StepState::StepApplied if state_changed => {
            let by_marker = if new.applied_by_marker { " (established from its marker)" } else { "" };
            Some(format!("  {name}: applied{by_marker}"))
        }
        pb::StepState::StepFailed if state_changed => Some(format!("  {name}: failed: {error}")),
        pb::StepState::StepCompensated if state_changed => Some(format!("  {name}: compensated")),
        // A retry after the same error as the one before says so instead of repeating it.
        pb::StepState::StepJournaled if retried && !error.is_empty() && same_error => {
            Some(format!("  {name}: attempt {} (same error)", new.attempts))
        }
        pb::StepState::StepJournaled if retried && !error.is_empty() => {
            Some(format!("  {name}: attempt {} (after: {error})", new.attempts))
        }
        pb::StepState::StepCompensating if retried && !error.is_empty() && same_error => {
            Some(format!("  {name}: compensation attempt {} (same error)", new.compensate_attempts))
        }
        pb::StepState::StepJournaled if state_changed => Some(format!("  {name}: running (attempt {})", new.attempts)),
        pb::StepState::StepCompensating if retried && !error.is_empty() => {
            Some(format!("  {name}: compensation attempt {} (after: {error})", new.compensate_attempts))
        }
        pb::StepState::StepCompensating if state_changed => Some(format!("  {name}: compensating")),
        _ => None,
    }
}

/// The closing line of `--wait` / `watch`.
pub fn final_line(saga: &pb::Saga) -> String {
    let took = saga.finished_at_ms.saturating_sub(saga.submitted_at_ms);
    match saga_status(saga) {
        pb::SagaStatus::Completed => format!("saga {} COMPLETED in {took} ms", saga.saga_id),
        pb::SagaStatus::Compensated => {
            format!("saga {} COMPENSATED in {took} ms: {}", saga.saga_id, one_line(&saga.compensation_reason))
        }
        pb::SagaStatus::Stuck => format!(
            "saga {} is STUCK: a compensation failed for good and waits for an operator \
             (`sagalog admin resolve {} --decision mark-compensated|retry-compensation`)",
            saga.saga_id, saga.saga_id
        ),
        other => format!("saga {} is {}", saga.saga_id, status_name(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as Json, json};

    fn step(index: u32, state: pb::StepState, attempts: u32, error: &str) -> pb::StepStatus {
        pb::StepStatus {
            index,
            action: format!("a{index}"),
            participant: "ledger".into(),
            state: state as i32,
            attempts,
            last_error: error.into(),
            ..Default::default()
        }
    }

    fn saga(status: pb::SagaStatus, version: u64, steps: Vec<pb::StepStatus>) -> pb::Saga {
        pb::Saga {
            saga_id: "s1".into(),
            status: status as i32,
            version,
            steps,
            submitted_at_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    /// The JSON of a saga has the documented field names and spelled states.
    #[test]
    fn saga_json_spells_statuses_and_states() {
        let mut s = saga(
            pb::SagaStatus::Compensated,
            9,
            vec![step(0, pb::StepState::StepCompensated, 1, ""), step(1, pb::StepState::StepFailed, 1, "CHECK failed")],
        );
        s.finished_at_ms = s.submitted_at_ms + 250;
        s.compensation_reason = "step 1 failed".into();
        let j = saga_json(&s);
        assert_eq!(j["id"], "s1");
        assert_eq!(j["status"], "COMPENSATED");
        assert_eq!(j["version"], 9);
        assert_eq!(j["duration_ms"], 250);
        assert_eq!(j["submitted_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(j["steps"][0]["state"], "COMPENSATED");
        assert_eq!(j["steps"][1]["state"], "FAILED");
        assert_eq!(j["steps"][0]["last_error"], Json::Null);
        assert_eq!(j["errors"], json!([{"step": 1, "action": "a1", "error": "CHECK failed"}]));
        assert_eq!(j["parked_on"], Json::Null);
    }

    /// Progress says each step's change once: applied, retried, failed, compensated.
    #[test]
    fn progress_reports_each_change_once() {
        let a = saga(
            pb::SagaStatus::Running,
            3,
            vec![step(0, pb::StepState::StepJournaled, 1, ""), step(1, pb::StepState::StepPending, 0, "")],
        );
        assert_eq!(
            progress_lines(None, &a),
            vec!["saga s1: RUNNING (version 3)", "  step 0 a0 (ledger): running (attempt 1)"]
        );
        let b = saga(
            pb::SagaStatus::Running,
            5,
            vec![step(0, pb::StepState::StepApplied, 1, ""), step(1, pb::StepState::StepJournaled, 1, "")],
        );
        assert_eq!(
            progress_lines(Some(&a), &b),
            vec!["  step 0 a0 (ledger): applied", "  step 1 a1 (ledger): running (attempt 1)"]
        );
        let c = saga(
            pb::SagaStatus::Running,
            6,
            vec![step(0, pb::StepState::StepApplied, 1, ""), step(1, pb::StepState::StepJournaled, 2, "busy")],
        );
        assert_eq!(progress_lines(Some(&b), &c), vec!["  step 1 a1 (ledger): attempt 2 (after: busy)"]);
        // The same error again is not printed again.
        let mut c3 = c.clone();
        c3.version = 7;
        c3.steps[1].attempts = 3;
        assert_eq!(progress_lines(Some(&c), &c3), vec!["  step 1 a1 (ledger): attempt 3 (same error)"]);
        c3.steps[1].last_error = "locked".into();
        assert_eq!(progress_lines(Some(&c), &c3), vec!["  step 1 a1 (ledger): attempt 3 (after: locked)"]);
        let mut d = saga(
            pb::SagaStatus::Compensating,
            8,
            vec![step(0, pb::StepState::StepApplied, 1, ""), step(1, pb::StepState::StepFailed, 2, "CHECK")],
        );
        d.compensation_reason = "step 1 failed: CHECK".into();
        assert_eq!(
            progress_lines(Some(&c), &d),
            vec![
                "  step 1 a1 (ledger): failed: CHECK",
                "  compensating because: step 1 failed: CHECK",
                "saga s1: COMPENSATING (version 8)",
            ]
        );
        assert!(progress_lines(Some(&d), &d).is_empty(), "no change, no line");
    }

    /// Tables pad every column but the last.
    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["ID", "STATUS", "X"],
            &[vec!["long-id".into(), "OK".into(), "".into()], vec!["a".into(), "RUNNING".into(), "z".into()]],
        );
        assert_eq!(t, "ID       STATUS   X\nlong-id  OK\na        RUNNING  z\n");
    }
}
