//! The invariants checked after every run, against the journal on disk (decoded record by
//! record), the engine's rebuilt state, the executor's view, and the participants' commit logs.

use std::collections::{BTreeMap, BTreeSet};

use sagalog::engine::{Direction, Next, Outcome, Record, Saga, Status};
use sagalog::executor::Snapshot;

use crate::participant::{Effect, Refusal};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub kind: &'static str,
    pub saga: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] saga {}: {}", self.kind, self.saga, self.detail)
    }
}

fn v(kind: &'static str, saga: &str, detail: impl Into<String>) -> Violation {
    Violation { kind, saga: saga.to_owned(), detail: detail.into() }
}

/// A STUCK saga must say why: the compensation reason and the failing step's last error (its
/// compensation's, or its marker lookup's).
pub fn stuck_has_reason(snap: &Snapshot) -> Option<Violation> {
    if snap.status != Status::Stuck {
        return None;
    }
    let saga = &snap.saga;
    let step_error = match saga.next() {
        // The compensation's last error, or, for a step whose marker could not be read, the
        // forward side's (where the lookup's error is kept; the API shows both).
        Next::Stuck { step } => {
            saga.steps.get(step as usize).and_then(|s| s.compensate.last_error.clone().or(s.forward.last_error.clone()))
        }
        _ => None,
    };
    match (&saga.compensation_reason, step_error) {
        (Some(_), Some(_)) => None,
        (reason, error) => {
            Some(v("stuck_without_reason", &saga.id, format!("compensation_reason {reason:?}, step error {error:?}")))
        }
    }
}

pub struct Inputs<'a> {
    /// Sagas whose submit returned `Accepted`.
    pub acked: &'a BTreeSet<String>,
    /// Sagas whose cancel returned `Ok`.
    pub acked_cancels: &'a BTreeSet<String>,
    /// Every record of the final journal, in LSN order.
    pub records: &'a [(u64, Record)],
    /// The sagas rebuilt from the final journal by `recovery::rebuild`.
    pub rebuilt: &'a BTreeMap<String, Saga>,
    /// The executor's view at the end.
    pub view: &'a BTreeMap<String, Snapshot>,
    /// Every committed effect of every participant, in commit order.
    pub effects: &'a [Effect],
    /// Every apply a participant refused because its attempt was fenced off.
    pub refusals: &'a [Refusal],
}

pub fn check(inp: &Inputs<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    // A fence refuses late commits of attempts the executor settled; the executor itself must
    // never start an attempt at or below one it settled (its numbering would be wrong).
    for r in inp.refusals.iter().filter(|r| !r.late) {
        out.push(v(
            "fenced_attempt_started",
            &r.key.saga_id,
            format!(
                "attempt {} of {} started after a lookup fenced off attempts through {}",
                r.attempt, r.key, r.through
            ),
        ));
    }
    for id in inp.acked {
        if !inp.rebuilt.contains_key(id) {
            out.push(v("acked_submit_lost", id, "submit was acknowledged but the journal has no such saga"));
        }
    }
    for (id, saga) in inp.rebuilt {
        let status = saga.status();
        if !status.is_terminal() {
            out.push(v("not_terminal_after_heal", id, format!("{} after every fault healed", status.as_str())));
        }
        match inp.view.get(id) {
            None => out.push(v("view_mismatch", id, "in the journal but unknown to the executor")),
            Some(snap) if snap.status != status => out.push(v(
                "view_mismatch",
                id,
                format!("executor says {}, journal says {}", snap.status.as_str(), status.as_str()),
            )),
            Some(_) => {}
        }
    }
    for id in inp.view.keys() {
        if !inp.rebuilt.contains_key(id) {
            out.push(v("view_mismatch", id, "known to the executor but not in the journal"));
        }
    }

    // Records per saga, for the cancel and runaway-journal checks.
    let mut per_saga: BTreeMap<&str, Vec<(u64, &Record)>> = BTreeMap::new();
    for (lsn, r) in inp.records {
        if let Some(id) = r.saga() {
            per_saga.entry(id).or_default().push((*lsn, r));
        }
    }
    for id in inp.acked_cancels {
        let recs = per_saga.get(id.as_str()).map(Vec::as_slice).unwrap_or_default();
        let Some(cancel_lsn) = recs.iter().find(|(_, r)| matches!(r, Record::CancelRequested(_))).map(|(l, _)| *l)
        else {
            out.push(v("acked_cancel_lost", id, "cancel was acknowledged but the journal has no CancelRequested"));
            continue;
        };
        let completed_after = recs
            .iter()
            .any(|(l, r)| *l > cancel_lsn && matches!(r, Record::SagaFinished(f) if f.outcome == Outcome::Completed));
        let finished_before = recs.iter().any(|(l, r)| *l < cancel_lsn && matches!(r, Record::SagaFinished(_)));
        if completed_after && !finished_before {
            out.push(v(
                "acked_cancel_dropped",
                id,
                format!(
                    "CancelRequested at lsn {cancel_lsn}, then SagaFinished(Completed); records: {}",
                    history(recs)
                ),
            ));
        }
    }
    for (id, recs) in &per_saga {
        let Some(saga) = inp.rebuilt.get(*id) else { continue };
        let resolves = recs.iter().filter(|(_, r)| matches!(r, Record::Resolved(_))).count() as u64;
        let bound = 16 + saga.steps.len() as u64 * 40 * (1 + u64::from(saga.recoveries) + resolves);
        if recs.len() as u64 > bound {
            // Mostly permanent failures of one step: the in-doubt loop on a marker that cannot
            // be read (a permanent lookup error leaves the step uncertain, and it is resolved
            // again at once).
            let mut permanent: BTreeMap<(u32, Direction), usize> = BTreeMap::new();
            for (_, r) in recs {
                if let Record::StepFailed(x) = r
                    && !x.retryable
                {
                    *permanent.entry((x.step, x.direction)).or_default() += 1;
                }
            }
            let worst = permanent.values().copied().max().unwrap_or(0);
            let kind = if worst * 2 > recs.len() { "permanent_lookup_loop" } else { "runaway_journal" };
            out.push(v(kind, id, format!("{} records (bound {bound}): {}", recs.len(), history(recs))));
        }
    }

    // Delay steps: the deadline is journaled once (a restart never starts the wait over), the
    // success comes no earlier than it (never shortened), and nothing compensates a delay.
    for (id, recs) in &per_saga {
        let mut deadlines: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (_, r) in recs {
            if let Record::StepStarted(s) = r
                && let Some(deadline) = s.deadline_ms
            {
                deadlines.entry(s.step).or_default().push(deadline);
            }
        }
        for (_, r) in recs {
            match r {
                Record::StepSucceeded(s) if s.direction == Direction::Forward => {
                    if let Some(deadline) = deadlines.get(&s.step).and_then(|d| d.last())
                        && s.at_ms < *deadline
                    {
                        out.push(v(
                            "delay_shortened",
                            id,
                            format!("step {} ended at {} < deadline {deadline}", s.step, s.at_ms),
                        ));
                    }
                }
                Record::StepStarted(s) if s.direction == Direction::Compensate && deadlines.contains_key(&s.step) => {
                    out.push(v("delay_compensated", id, format!("step {} is a delay: {}", s.step, history(recs))));
                }
                _ => {}
            }
        }
        for (step, d) in deadlines.iter().filter(|(_, d)| d.len() > 1) {
            out.push(v("delay_started_twice", id, format!("step {step}: deadlines {d:?}; {}", history(recs))));
        }
    }

    // Effects.
    let mut by_saga: BTreeMap<&str, Vec<&Effect>> = BTreeMap::new();
    for e in inp.effects {
        by_saga.entry(e.key.saga_id.as_str()).or_default().push(e);
    }
    for (id, effects) in &by_saga {
        let Some(saga) = inp.rebuilt.get(*id) else {
            out.push(v(
                "effect_without_saga",
                id,
                format!("{} effects of a saga the journal does not have", effects.len()),
            ));
            continue;
        };
        let mut counts: BTreeMap<(u32, Direction), usize> = BTreeMap::new();
        for e in effects {
            *counts.entry((e.key.step, e.key.direction)).or_default() += 1;
        }
        for ((step, dir), n) in counts.into_iter().filter(|(_, n)| *n > 1) {
            out.push(v("effect_applied_twice", id, format!("step {step} {dir:?} committed {n} times")));
        }
        let find = |step: u32, dir: Direction| effects.iter().find(|e| e.key.step == step && e.key.direction == dir);
        let reopened = per_saga
            .get(*id)
            .is_some_and(|rs| rs.iter().any(|(_, r)| matches!(r, Record::Resolved(x) if x.decision == sagalog::engine::ResolveDecision::MarkCompensated)));
        match saga.status() {
            Status::Completed => {
                for step in 0..saga.steps.len() as u32 {
                    if saga.steps[step as usize].is_delay() {
                        if find(step, Direction::Forward).is_some() {
                            out.push(v("delay_with_effect", id, format!("step {step} is a delay but committed")));
                        }
                        continue;
                    }
                    if find(step, Direction::Forward).is_none() {
                        out.push(v("completed_effect_missing", id, format!("step {step} forward never applied")));
                    }
                    if find(step, Direction::Compensate).is_some() {
                        out.push(v("completed_but_compensated", id, format!("step {step} compensated")));
                    }
                }
            }
            Status::Compensated if !reopened => {
                for step in 0..saga.steps.len() as u32 {
                    match (find(step, Direction::Forward), find(step, Direction::Compensate)) {
                        (Some(f), None) => {
                            // Did an attempt that may have applied get followed by a permanent
                            // failure, which the engine takes as "certainly not applied"?
                            let recs = per_saga.get(*id).map(Vec::as_slice).unwrap_or_default();
                            let mut maybe = false;
                            let mut forgotten = false;
                            for (_, r) in recs {
                                if let Record::StepFailed(x) = r
                                    && x.step == step
                                    && x.direction == Direction::Forward
                                {
                                    if x.maybe_applied {
                                        maybe = true;
                                    } else if maybe && !x.retryable {
                                        forgotten = true;
                                    }
                                }
                            }
                            // A forgotten maybe-applied comes first: compensation then never
                            // settles the step, so no fencing lookup could refuse a late commit.
                            if forgotten {
                                out.push(v(
                                    "maybe_applied_forgotten",
                                    id,
                                    format!("step {step} applied, never compensated"),
                                ))
                            } else if f.late {
                                out.push(v(
                                    "late_commit_uncompensated",
                                    id,
                                    format!("step {step}: a forward commit landed after its call was dropped, and was never compensated"),
                                ))
                            } else {
                                out.push(v(
                                    "applied_not_compensated",
                                    id,
                                    format!("step {step} applied, never compensated"),
                                ))
                            }
                        }
                        (None, Some(_)) => out.push(v(
                            "compensated_not_applied",
                            id,
                            format!("step {step} compensated but its forward effect never applied"),
                        )),
                        (Some(f), Some(c)) if c.stamp < f.stamp => {
                            out.push(v("compensated_before_applied", id, format!("step {step}")))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        let order = |dir: Direction| -> Vec<u32> {
            effects.iter().filter(|e| e.key.direction == dir && !e.late).map(|e| e.key.step).collect()
        };
        let fwd = order(Direction::Forward);
        if fwd.windows(2).any(|w| w[0] >= w[1]) {
            out.push(v("forward_out_of_order", id, format!("forward commits in step order {fwd:?}")));
        }
        let comp = order(Direction::Compensate);
        if comp.windows(2).any(|w| w[0] <= w[1]) {
            out.push(v("compensation_out_of_order", id, format!("compensation commits in step order {comp:?}")));
        }
    }
    // Effect violations carry the saga's records and commits, to read without a replay.
    for violation in out
        .iter_mut()
        .filter(|x| x.kind.contains("compensat") || x.kind.contains("order") || x.kind.contains("forgotten"))
    {
        let recs = per_saga.get(violation.saga.as_str()).map(Vec::as_slice).unwrap_or_default();
        let commits: Vec<String> = by_saga
            .get(violation.saga.as_str())
            .map(|es| {
                es.iter()
                    .map(|e| {
                        format!(
                            "#{}:{}{:?}{}",
                            e.stamp,
                            e.key.step,
                            e.key.direction,
                            if e.late { "(late)" } else { "" }
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        violation.detail = format!("{}; records: {}; commits: {}", violation.detail, history(recs), commits.join(" "));
    }
    out.sort();
    out.dedup();
    out
}

/// A saga's records, short: `lsn:Kind(step,dir)`.
fn history(recs: &[(u64, &Record)]) -> String {
    recs.iter()
        .map(|(lsn, r)| {
            let what = match r {
                Record::StepStarted(x) => format!("Started({},{:?},a{})", x.step, x.direction, x.attempt),
                Record::StepSucceeded(x) => format!("Succeeded({},{:?},marker={})", x.step, x.direction, x.by_marker),
                Record::StepFailed(x) => format!("Failed({},{:?},retryable={})", x.step, x.direction, x.retryable),
                Record::SagaFinished(x) => format!("Finished({:?})", x.outcome),
                Record::CancelRequested(_) => "Cancel".to_string(),
                Record::Resolved(x) => format!("Resolved({:?})", x.decision),
                Record::SagaSubmitted(_) => "Submitted".to_string(),
                Record::RecoveryStarted(_) => "Checkpoint".to_string(),
                Record::SagaSnapshot(x) => format!("Snapshot(v{})", x.saga.version),
            };
            format!("{lsn}:{what}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}
