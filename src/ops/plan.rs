//! The recovery plan: what the next start (or `sagalog replay`) will do with every unfinished
//! saga, saga by saga and step by step, computed without changing anything.
//!
//! The plan runs the engine's own decisions on a copy of each saga: [`Saga::next`] says what
//! recovery does next; a `Resolve` (an in-doubt step) is answered by the step's participant
//! marker, looked up read-only, exactly as the executor would journal it; a `Run` is assumed
//! to succeed (a failure cannot be foreseen: it would switch a forward saga to compensation).
//! A participant without markers (`http`, `worker`) is never asked: its in-doubt step is
//! planned as a re-send with its idempotency key, assumed to succeed like a run. A `Wait` (a
//! delay step in flight) waits until the deadline its `StepStarted` journaled, then succeeds,
//! and asks no participant.
//! Marker lookups are batched per participant, one round per resolve depth, so a log with
//! many in-doubt steps costs one pass per participant rather than one call per step.
//!
//! Never does: write to a participant, the journal, the index, the checkpoint or the config.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Error;
use super::history::{self, ConfigSource, LogFacts, Unfinished};
use crate::catalog::Catalog;
use crate::data_dir::Access;
use crate::engine::record::{Failed, Started, Succeeded};
use crate::engine::{Next, Outcome, Record, Saga, Status, StepProgress};
use crate::participant::{Direction, Participant, StepKey};

/// What the journal says about one direction of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Journaled {
    NotStarted,
    /// Succeeded (`by_marker`: established from the marker after a crash or a lost reply).
    Done {
        by_marker: bool,
    },
    /// Started, no outcome journaled: the participant may or may not have committed.
    InDoubt,
    /// A delay step started, waiting until its journaled deadline (ms since the epoch).
    Waiting {
        until_ms: u64,
    },
    /// The last attempt failed; `maybe_applied` after a retryable error or a timeout.
    Failed {
        retryable: bool,
        maybe_applied: bool,
    },
}

/// What the participant's marker says, when the plan had to ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerAnswer {
    Present,
    Absent,
    /// The lookup failed (participant unreachable, …); recovery retries it until it answers.
    Unknown {
        error: String,
    },
    /// The participant keeps no markers (`http`, `worker`): recovery re-sends the step with its
    /// idempotency key instead of looking anything up.
    NoMarkers,
}

/// What recovery will do with one direction of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing: already settled, or not needed.
    Nothing,
    /// In doubt, marker present: journaled as succeeded without running it again.
    RecordByMarker,
    /// Uncertain, marker absent: it did not apply; journaled as not applied.
    RecordNotApplied,
    /// Runs for the first time.
    Run,
    /// Runs again (in doubt without a marker, or after a retryable failure).
    Rerun,
    /// The compensation failed for good: the saga is STUCK and waits for an operator.
    Stuck,
    /// Waits for a marker lookup that failed here; recovery retries it.
    Blocked,
    /// A delay step: waits for what is left until its journaled deadline (nothing if it has
    /// passed), then is recorded as done.
    Wait,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionPlan {
    pub journaled: Journaled,
    /// Attempts started so far, in all.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub marker: Option<MarkerAnswer>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPlan {
    pub step: u32,
    pub action: String,
    /// `None` when the action is no longer declared (recovery then fails the step for good),
    /// or is a delay.
    pub participant: Option<String>,
    /// A delay step (no participant; it waits, and is never compensated).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay: bool,
    pub forward: DirectionPlan,
    pub compensate: DirectionPlan,
}

/// How the saga is expected to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// Every step applied (assuming the steps still to run succeed).
    Completed,
    /// Every applied step undone.
    Compensated,
    /// Waits for an operator at this step (`sagalog status`, then resolve).
    Stuck { step: u32, error: Option<String> },
    /// Waits for a participant that did not answer a marker lookup here.
    Blocked { step: u32, error: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaPlan {
    pub id: String,
    /// The status as journaled.
    pub status: String,
    pub recoveries: u32,
    pub first_lsn: u64,
    pub compensation_reason: Option<String>,
    pub expected: Expected,
    pub steps: Vec<StepPlan>,
}

/// Totals over a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub unfinished: usize,
    pub will_complete: usize,
    pub will_compensate: usize,
    pub stuck: usize,
    pub blocked: usize,
    pub in_doubt: usize,
    pub settled_by_marker: usize,
    pub to_rerun: usize,
    pub to_run: usize,
}

/// Plans every saga of `sagas` (unfinished ones; finished ones plan to nothing).
pub async fn plan(
    sagas: BTreeMap<String, Saga>,
    first_lsn: &BTreeMap<String, u64>,
    catalog: &Catalog,
    participants: &BTreeMap<String, Arc<dyn Participant>>,
) -> Vec<SagaPlan> {
    let mut work: Vec<Work> = sagas
        .into_values()
        .filter(|s| !s.is_finished())
        .map(|s| {
            let lsn = first_lsn.get(&s.id).copied().unwrap_or(0);
            Work::new(s, lsn, catalog)
        })
        .collect();
    // Each round advances every saga until it needs a marker, then asks each participant for
    // all the markers it owes at once. A saga needs at most a few rounds (one per uncertain
    // step), so the loop is short; the bound only guards against a bug.
    for _ in 0..ROUNDS_MAX {
        let mut asks: BTreeMap<String, Vec<(usize, StepKey)>> = BTreeMap::new();
        for (i, w) in work.iter_mut().enumerate() {
            if let Some((participant, key)) = w.advance() {
                asks.entry(participant).or_default().push((i, key));
            }
        }
        if asks.is_empty() {
            break;
        }
        for (name, wanted) in asks {
            let keys: Vec<StepKey> = wanted.iter().map(|(_, k)| k.clone()).collect();
            let answers: Vec<MarkerAnswer> = match participants.get(&name) {
                None => {
                    vec![MarkerAnswer::Unknown { error: format!("participant {name:?} is not configured") }; keys.len()]
                }
                Some(p) if !p.has_markers() => vec![MarkerAnswer::NoMarkers; keys.len()],
                Some(p) => match p.lookup_markers(&keys).await {
                    Ok(found) => found
                        .into_iter()
                        .map(|f| if f { MarkerAnswer::Present } else { MarkerAnswer::Absent })
                        .collect(),
                    Err(e) => vec![MarkerAnswer::Unknown { error: e.to_string() }; keys.len()],
                },
            };
            for ((i, key), answer) in wanted.into_iter().zip(answers) {
                work[i].answer(&key, answer);
            }
        }
    }
    work.into_iter().map(Work::finish).collect()
}

/// Rounds of marker lookups at most: a saga has at most one forward step and one
/// compensation in doubt at a time, plus steps failed with `maybe_applied`.
const ROUNDS_MAX: usize = 1024;

pub fn totals(plans: &[SagaPlan]) -> Totals {
    let mut t = Totals { unfinished: plans.len(), ..Totals::default() };
    for p in plans {
        match p.expected {
            Expected::Completed => t.will_complete += 1,
            Expected::Compensated => t.will_compensate += 1,
            Expected::Stuck { .. } => t.stuck += 1,
            Expected::Blocked { .. } => t.blocked += 1,
        }
        for d in p.steps.iter().flat_map(|s| [&s.forward, &s.compensate]) {
            t.in_doubt += usize::from(d.journaled == Journaled::InDoubt);
            t.settled_by_marker += usize::from(d.action == Action::RecordByMarker);
            t.to_rerun += usize::from(d.action == Action::Rerun);
            t.to_run += usize::from(d.action == Action::Run);
        }
    }
    t
}

/// One saga being planned: the journaled state, a copy the plan drives, and what it found.
struct Work {
    journaled: Saga,
    sim: Saga,
    first_lsn: u64,
    participants: Vec<Option<String>>,
    /// Per step: whether its action is a delay.
    delays: Vec<bool>,
    /// Per step: (forward, compensate) marker answers and actions.
    markers: Vec<[Option<MarkerAnswer>; 2]>,
    actions: Vec<[Action; 2]>,
    expected: Option<Expected>,
    /// The lookup this saga waits for.
    pending: Option<StepKey>,
}

fn slot(direction: Direction) -> usize {
    match direction {
        Direction::Forward => 0,
        Direction::Compensate => 1,
    }
}

impl Work {
    fn new(mut saga: Saga, first_lsn: u64, catalog: &Catalog) -> Work {
        // The participant the executor will call: the journaled definition's, else today's
        // config's (a saga journaled before definitions were).
        let action_of = |s: &crate::engine::saga::StepState| {
            saga.actions.get(&s.call.action).or_else(|| catalog.action(&s.call.action)).cloned()
        };
        let actions: Vec<_> = saga.steps.iter().map(action_of).collect();
        let delays: Vec<bool> = actions.iter().map(|a| a.as_ref().is_some_and(|a| a.is_delay())).collect();
        let participants: Vec<Option<String>> =
            actions.into_iter().map(|a| a.filter(|a| !a.is_delay()).map(|a| a.participant)).collect();
        // The plan needs each step's action name and participant, never its parameters or
        // definitions: they are dropped, so that planning 100,000 sagas holds two light copies
        // of each.
        for step in &mut saga.steps {
            step.call.params.clear();
        }
        saga.actions = Default::default();
        let steps = participants.len();
        Work {
            sim: saga.clone(),
            journaled: saga,
            first_lsn,
            participants,
            delays,
            markers: vec![[None, None]; steps],
            actions: vec![[Action::Nothing; 2]; steps],
            expected: None,
            pending: None,
        }
    }

    /// Drives the copy until it needs a marker (returned: participant and key) or ends.
    fn advance(&mut self) -> Option<(String, StepKey)> {
        if self.expected.is_some() || self.pending.is_some() {
            return None;
        }
        // Each step of the loop journals at least one record on the copy; a saga needs at
        // most a handful per step, so this bound only stops a bug from spinning forever.
        for _ in 0..(self.sim.steps.len() * 16 + 16) {
            match self.sim.next() {
                Next::Done => {
                    self.expected = Some(Expected::Completed);
                    return None;
                }
                Next::Finish(outcome) => {
                    self.expected = Some(match outcome {
                        Outcome::Completed => Expected::Completed,
                        Outcome::Compensated => Expected::Compensated,
                    });
                    return None;
                }
                Next::Stuck { step } => {
                    let error = self.sim.steps.get(step as usize).and_then(|s| s.compensate.last_error.clone());
                    self.set_action(step, Direction::Compensate, Action::Stuck);
                    self.expected = Some(Expected::Stuck { step, error });
                    return None;
                }
                Next::Resolve { step, direction } => {
                    let key = StepKey { saga_id: self.sim.id.clone(), step, direction, scope: self.sim.scope.clone() };
                    match self.participant_of(step) {
                        Some(name) => {
                            self.pending = Some(key.clone());
                            return Some((name, key));
                        }
                        // Recovery fails a step it cannot resolve for good (the executor's
                        // `fail_for_good`): the same record here.
                        None => self.journal_failure(step, direction, false, false),
                    }
                }
                // A delay: waits out the rest of its journaled deadline, then succeeds.
                Next::Wait { step, .. } => {
                    self.set_action(step, Direction::Forward, Action::Wait);
                    let attempt = self.sim.steps.get(step as usize).map_or(0, |s| s.forward.total_attempts);
                    self.sim.apply(&Record::StepSucceeded(Succeeded {
                        saga: self.sim.id.clone(),
                        step,
                        direction: Direction::Forward,
                        attempt,
                        by_marker: false,
                        at_ms: 0,
                        outputs: Default::default(),
                    }));
                }
                Next::Run { step, direction, attempt, .. } => {
                    let delay = self.delays.get(step as usize).copied().unwrap_or(false);
                    if self.participant_of(step).is_none() && !delay {
                        self.journal_failure(step, direction, false, false);
                        continue;
                    }
                    // Tried before the crash (in doubt without a marker, or failed retryably):
                    // this is a re-run; otherwise the step runs for the first time.
                    let tried = self
                        .journaled
                        .steps
                        .get(step as usize)
                        .is_some_and(|s| s.progress_of(direction).total_attempts > 0);
                    self.set_action(step, direction, if tried { Action::Rerun } else { Action::Run });
                    // A delay starting now journals its deadline; the plan only needs to know
                    // it is one.
                    self.simulate_success(step, direction, attempt, delay.then_some(0));
                }
            }
        }
        self.expected = Some(Expected::Blocked { step: 0, error: "bug: the plan did not converge".into() });
        None
    }

    /// The participant a step runs on, if its action is still declared (both directions of
    /// an action run on its one participant).
    fn participant_of(&self, step: u32) -> Option<String> {
        self.participants.get(step as usize).cloned().flatten()
    }

    fn answer(&mut self, key: &StepKey, answer: MarkerAnswer) {
        self.pending = None;
        let (step, direction) = (key.step, key.direction);
        if let Some(m) = self.markers.get_mut(step as usize) {
            m[slot(direction)] = Some(answer.clone());
        }
        let saga = self.sim.id.clone();
        let attempt = self.sim.steps.get(step as usize).map_or(0, |s| s.progress_of(direction).total_attempts);
        match answer {
            MarkerAnswer::Present => {
                self.set_action(step, direction, Action::RecordByMarker);
                self.sim.apply(&Record::StepSucceeded(Succeeded {
                    saga,
                    step,
                    direction,
                    attempt,
                    by_marker: true,
                    at_ms: 0,
                    outputs: Default::default(),
                }));
            }
            MarkerAnswer::Absent => {
                self.set_action(step, direction, Action::RecordNotApplied);
                self.sim.apply(&Record::StepFailed(Failed {
                    saga,
                    step,
                    direction,
                    attempt,
                    error: "not applied: no marker after an interrupted attempt".into(),
                    retryable: true,
                    maybe_applied: false,
                    at_ms: 0,
                }));
            }
            MarkerAnswer::Unknown { error } => {
                self.set_action(step, direction, Action::Blocked);
                self.expected = Some(Expected::Blocked { step, error });
            }
            // Re-sent as the next attempt, assumed to succeed like any run.
            MarkerAnswer::NoMarkers => {
                self.set_action(step, direction, Action::Rerun);
                self.simulate_success(step, direction, attempt + 1, None);
            }
        }
    }

    /// Applies to the simulated saga an attempt that starts and succeeds (a run or a re-send
    /// the plan assumes to succeed).
    fn simulate_success(&mut self, step: u32, direction: Direction, attempt: u32, deadline_ms: Option<u64>) {
        let saga = self.sim.id.clone();
        self.sim.apply(&Record::StepStarted(Started {
            saga: saga.clone(),
            step,
            direction,
            attempt,
            at_ms: 0,
            deadline_ms,
        }));
        self.sim.apply(&Record::StepSucceeded(Succeeded {
            saga,
            step,
            direction,
            attempt,
            by_marker: false,
            at_ms: 0,
            outputs: Default::default(),
        }));
    }

    fn journal_failure(&mut self, step: u32, direction: Direction, retryable: bool, maybe_applied: bool) {
        let attempt = self.sim.steps.get(step as usize).map_or(0, |s| s.progress_of(direction).total_attempts);
        self.sim.apply(&Record::StepFailed(Failed {
            saga: self.sim.id.clone(),
            step,
            direction,
            attempt,
            error: "its action is no longer declared".into(),
            retryable,
            maybe_applied,
            at_ms: 0,
        }));
    }

    fn set_action(&mut self, step: u32, direction: Direction, action: Action) {
        if let Some(a) = self.actions.get_mut(step as usize) {
            a[slot(direction)] = action;
        }
    }

    fn finish(self) -> SagaPlan {
        let steps = self
            .journaled
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let direction = |p: &StepProgress, d: usize| DirectionPlan {
                    journaled: journaled(p),
                    attempts: p.total_attempts,
                    last_error: p.last_error.clone(),
                    marker: self.markers[i][d].clone(),
                    action: self.actions[i][d],
                };
                StepPlan {
                    step: i as u32,
                    action: s.call.action.clone(),
                    participant: self.participants[i].clone(),
                    delay: self.delays[i],
                    forward: direction(&s.forward, 0),
                    compensate: direction(&s.compensate, 1),
                }
            })
            .collect();
        SagaPlan {
            id: self.journaled.id.clone(),
            status: self.journaled.status().as_str().to_owned(),
            recoveries: self.journaled.recoveries,
            first_lsn: self.first_lsn,
            compensation_reason: self.sim.compensation_reason.clone(),
            expected: self.expected.unwrap_or(Expected::Blocked { step: 0, error: "no marker answer".into() }),
            steps,
        }
    }
}

fn journaled(p: &StepProgress) -> Journaled {
    if p.done {
        Journaled::Done { by_marker: p.by_marker }
    } else if let (true, Some(until_ms)) = (p.in_flight, p.deadline_ms) {
        Journaled::Waiting { until_ms }
    } else if p.in_flight {
        Journaled::InDoubt
    } else if p.total_attempts > 0 && p.last_error.is_some() {
        Journaled::Failed { retryable: !p.failed_permanently, maybe_applied: p.maybe_applied }
    } else {
        Journaled::NotStarted
    }
}

/// The status a plan expects a saga to reach, as clients see it.
pub fn expected_status(expected: &Expected) -> Status {
    match expected {
        Expected::Completed => Status::Completed,
        Expected::Compensated => Status::Compensated,
        Expected::Stuck { .. } | Expected::Blocked { .. } => Status::Stuck,
    }
}

/// Everything `sagalog replay --dry-run` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DryRun {
    pub data_dir: std::path::PathBuf,
    pub config: ConfigSource,
    /// Where recovery starts reading (the checkpoint's LSN, or 1).
    pub replay_from_lsn: u64,
    pub log: LogFacts,
    /// Sagas finished in the replayed range: recovery only archives them.
    pub finished_to_archive: u64,
    /// Participants that stand in as empty (a database file that does not exist, …).
    pub notes: Vec<String>,
    pub totals: Totals,
    /// Time spent reading and replaying the journal, and planning (marker lookups included).
    pub read_ms: u64,
    pub plan_ms: u64,
    /// Online (the server runs): the journal was read up to this LSN, its acknowledged LSN
    /// when the plan began; the plan is what a restart at that point would do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_up_to_lsn: Option<u64>,
    pub sagas: Vec<SagaPlan>,
}

/// Computes the recovery plan of the data directory `data_dir` without changing anything: the
/// directory is held under its shared lock (refused while a server holds it), the journal is
/// verified and replayed, and markers are read from participants opened read-only.
pub async fn dry_run(data_dir: &std::path::Path, config: Option<&std::path::Path>) -> Result<DryRun, Error> {
    let (root, config_path) = (data_dir.to_path_buf(), config.map(std::path::Path::to_path_buf));
    let started = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let dir = history::open_data_dir(&root, Access::Shared)?;
        let (catalog, source) = history::load_catalog(dir.root(), config_path.as_deref())?;
        let from = history::replay_from(dir.root())?;
        let unfinished = history::unfinished(&dir.journal_dir(), from)?;
        let participants = crate::participant::open_all_read_only(&catalog.config.participants, dir.root())?;
        Ok((dir, catalog, source, from, unfinished, participants))
    })
    .await
    .map_err(|e| Error::Usage(format!("the journal reader stopped: {e}")))??;
    let (dir, catalog, source, from, unfinished, participants) = loaded;
    let read_ms = started.elapsed().as_millis() as u64;
    let Unfinished { sagas, first_lsn, finished, log } = unfinished;
    let sagas = plan(sagas, &first_lsn, &catalog, &participants.participants).await;
    let plan_ms = started.elapsed().as_millis() as u64 - read_ms;
    let notes = participants.notes;
    // The participants (their read-only connections) close before the lock is released.
    drop(participants.participants);
    drop(dir);
    Ok(DryRun {
        data_dir: data_dir.to_path_buf(),
        config: source,
        replay_from_lsn: from,
        log,
        finished_to_archive: finished,
        notes,
        totals: totals(&sagas),
        read_ms,
        plan_ms,
        read_up_to_lsn: None,
        sagas,
    })
}

/// The recovery plan of a running server (`GET /v1/admin/recovery-plan`, `sagalog replay
/// --dry-run` against a held data directory): what a restart would do if the server stopped
/// now. The journal is read up to `upto_lsn` (its acknowledged LSN), from the checkpoint's
/// LSN; markers are looked up read-only through `participants` (the server's own). The sagas
/// planned are running meanwhile: the plan is a picture of one moment.
pub async fn dry_run_online(
    data_dir: std::path::PathBuf,
    journal_dir: std::path::PathBuf,
    upto_lsn: u64,
    catalog: &Catalog,
    participants: &BTreeMap<String, Arc<dyn Participant>>,
) -> Result<DryRun, Error> {
    let started = std::time::Instant::now();
    let root = data_dir.clone();
    let (from, unfinished) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let from = history::replay_from(&root)?;
        Ok((from, history::unfinished_upto(&journal_dir, from, Some(upto_lsn))?))
    })
    .await
    .map_err(|e| Error::Usage(format!("the journal reader stopped: {e}")))??;
    let read_ms = started.elapsed().as_millis() as u64;
    let Unfinished { sagas, first_lsn, finished, log } = unfinished;
    let sagas = plan(sagas, &first_lsn, catalog, participants).await;
    let plan_ms = started.elapsed().as_millis() as u64 - read_ms;
    Ok(DryRun {
        data_dir,
        config: history::ConfigSource::Server,
        replay_from_lsn: from,
        log,
        finished_to_archive: finished,
        notes: Vec::new(),
        totals: totals(&sagas),
        read_ms,
        plan_ms,
        read_up_to_lsn: Some(upto_lsn),
        sagas,
    })
}

#[cfg(test)]
mod delay_tests {
    use super::*;
    use crate::engine::record::Submitted;
    use crate::engine::{SagaDefinition, StepCall};

    const CONFIG: &str = r#"
[participants.mem]
kind = "memory"
[actions.act]
participant = "mem"
forward = { noop = true }
compensate = { noop = true }
[actions.wait]
delay_ms = 60000
"#;

    fn saga(records: &[Record]) -> (Saga, Catalog) {
        let catalog = Catalog::parse(CONFIG).unwrap();
        let call =
            |action: &str| StepCall { action: action.into(), params: Default::default(), from: Default::default() };
        let definition = SagaDefinition { id: "s".into(), steps: vec![call("act"), call("wait"), call("act")] };
        let policies = catalog.validate(&definition).unwrap();
        let mut saga = Saga::submitted(&Submitted {
            saga: "s".into(),
            digest: definition.digest(),
            actions: catalog.resolved_actions(&definition),
            steps: definition.steps,
            policies,
            at_ms: 1,
            scope: None,
        });
        for r in records {
            saga.apply(r);
        }
        (saga, catalog)
    }

    fn started(step: u32, deadline_ms: Option<u64>) -> Record {
        Record::StepStarted(Started {
            saga: "s".into(),
            step,
            direction: Direction::Forward,
            attempt: 1,
            at_ms: 2,
            deadline_ms,
        })
    }

    fn succeeded(step: u32) -> Record {
        Record::StepSucceeded(Succeeded {
            saga: "s".into(),
            step,
            direction: Direction::Forward,
            attempt: 1,
            by_marker: false,
            at_ms: 3,
            outputs: Default::default(),
        })
    }

    /// `replay --dry-run` shows a delay in flight as waiting until its journaled deadline, plans
    /// to wait out the rest (asking no participant), and one not started yet as a step to run.
    #[tokio::test]
    async fn a_delay_in_flight_plans_a_wait_for_its_journaled_deadline() {
        let (s, catalog) = saga(&[started(0, None), succeeded(0), started(1, Some(5_000))]);
        let plans = plan(BTreeMap::from([("s".into(), s)]), &BTreeMap::new(), &catalog, &BTreeMap::new()).await;
        let p = &plans[0];
        assert_eq!(p.expected, Expected::Completed);
        let delay = &p.steps[1];
        assert!(delay.delay && delay.participant.is_none(), "{delay:?}");
        assert_eq!(delay.forward.journaled, Journaled::Waiting { until_ms: 5_000 });
        assert_eq!((delay.forward.action, delay.forward.marker.clone()), (Action::Wait, None));
        assert_eq!(p.steps[2].forward.action, Action::Run);

        let (s, catalog) = saga(&[started(0, None), succeeded(0)]);
        let plans = plan(BTreeMap::from([("s".into(), s)]), &BTreeMap::new(), &catalog, &BTreeMap::new()).await;
        assert_eq!((plans[0].steps[1].forward.action, plans[0].expected.clone()), (Action::Run, Expected::Completed));
    }
}
