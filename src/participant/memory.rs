//! An in-memory participant for tests and benchmarks: keeps markers and an effect log in a
//! map, and can be scripted to fail, hang or go down, so the executor's retry, breaker,
//! compensation and recovery paths can be driven deterministically.
//!
//! It keeps the participant contract exactly: an effect and its marker are recorded together
//! under one lock, and a second `apply` of the same key changes nothing. Fences too:
//! `settle_marker` reads the marker and records its fence under that lock, and a commit (also
//! one delayed by a [`Fault::Delay`]) checks the fence under it, so a fenced-off attempt never
//! commits.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Applied, BoxFuture, Direction, Error, Kind, MarkerEntry, Operation, Participant, StepKey, fenced_off};

/// A scripted outcome for the next `apply` calls matching a filter.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Fail with a retryable error.
    Retryable,
    /// Fail with a permanent error.
    Permanent,
    /// Sleep this long before applying (to trigger step timeouts).
    Delay(Duration),
    /// Commit the effect and marker, then report a retryable error (the reply was lost).
    CommitThenFail,
    /// Never answer, while the "transaction" commits this long after the call on a thread of
    /// its own, whatever happens to the call: a timed-out attempt whose transaction goes on.
    /// The commit checks the fence like any other, so a fenced-off attempt never lands.
    LateCommit(Duration),
}

#[derive(Debug, Default)]
struct State {
    markers: BTreeSet<StepKey>,
    /// The highest attempt of each key a fencing lookup fenced off.
    fences: BTreeMap<StepKey, u32>,
    /// Every committed effect, in order: (key, operation).
    effects: Vec<(StepKey, Operation)>,
    /// Scripted faults: (step filter, direction filter, fault), consumed in order.
    faults: VecDeque<(Option<u32>, Option<Direction>, Fault)>,
    /// While true, every call fails with a retryable "connection refused".
    down: bool,
    /// While true, every marker lookup fails with a permanent error (a restored database
    /// without the marker table, a permission error).
    markers_unreadable: bool,
    applies: u64,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Memory {
    name: String,
    state: Arc<Mutex<State>>,
}

impl Memory {
    pub fn new(name: &str) -> Memory {
        Memory { name: name.to_owned(), state: Arc::default() }
    }

    /// Queues a fault for the next `apply` of `step` (any step if `None`) in `direction`.
    pub fn inject(&self, step: Option<u32>, direction: Option<Direction>, fault: Fault) {
        self.lock().faults.push_back((step, direction, fault));
    }

    /// Takes the participant down (every call fails as if the connection were refused) or up.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Makes every marker lookup fail permanently (`true`) or work again (`false`).
    pub fn set_markers_unreadable(&self, unreadable: bool) {
        self.lock().markers_unreadable = unreadable;
    }

    /// Committed effects for a saga, in commit order.
    pub fn effects(&self, saga_id: &str) -> Vec<(u32, Direction)> {
        self.lock().effects.iter().filter(|(k, _)| k.saga_id == saga_id).map(|(k, _)| (k.step, k.direction)).collect()
    }

    /// Calls to `apply` so far (including failed ones).
    pub fn applies(&self) -> u64 {
        self.lock().applies
    }

    pub fn remove_marker(&self, key: &StepKey) -> bool {
        self.lock().markers.remove(key)
    }

    /// Adds a marker without an effect (for audit tests: a marker no saga explains).
    pub fn insert_marker(&self, key: StepKey) -> bool {
        self.lock().markers.insert(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a test thread panicked; the state itself is consistent
        // because every update is a single insert/push.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_fault(&self, key: &StepKey) -> Option<Fault> {
        let mut st = self.lock();
        let at = st
            .faults
            .iter()
            .position(|(step, dir, _)| step.is_none_or(|s| s == key.step) && dir.is_none_or(|d| d == key.direction))?;
        st.faults.remove(at).map(|f| f.2)
    }

    /// The highest attempt of `key` fenced off by a fencing lookup, if any.
    pub fn fenced_through(&self, key: &StepKey) -> Option<u32> {
        self.lock().fences.get(key).copied()
    }

    fn commit(&self, key: &StepKey, attempt: u32, op: &Operation) -> Result<Applied, Error> {
        let mut st = self.lock();
        if let Some(&through) = st.fences.get(key)
            && through >= attempt
        {
            return Err(fenced_off(&self.name, key, attempt, through));
        }
        if !st.markers.insert(key.clone()) {
            return Ok(Applied::AlreadyApplied);
        }
        st.effects.push((key.clone(), op.clone()));
        Ok(Applied::Applied)
    }
}

impl Participant for Memory {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> Kind {
        Kind::Memory
    }

    fn apply<'a>(&'a self, key: &'a StepKey, attempt: u32, op: &'a Operation) -> BoxFuture<'a, Result<Applied, Error>> {
        Box::pin(async move {
            {
                let mut st = self.lock();
                st.applies += 1;
                if st.down {
                    return Err(Error::retryable(&self.name, "connection refused (participant is down)"));
                }
            }
            match self.take_fault(key) {
                Some(Fault::Retryable) => {
                    return Err(Error::retryable(&self.name, format!("injected retryable failure at {key}")));
                }
                Some(Fault::Permanent) => {
                    return Err(Error::permanent(&self.name, format!("injected permanent failure at {key}")));
                }
                Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
                Some(Fault::CommitThenFail) => {
                    self.commit(key, attempt, op)?;
                    return Err(Error::retryable(&self.name, format!("injected lost reply at {key}")));
                }
                Some(Fault::LateCommit(after)) => {
                    let (late, key, op) = (self.clone(), key.clone(), op.clone());
                    std::thread::spawn(move || {
                        std::thread::sleep(after);
                        // Refused (nothing lands) if a fencing lookup fenced the attempt off.
                        let _ = late.commit(&key, attempt, &op);
                    });
                    return std::future::pending().await;
                }
                None => {}
            }
            self.commit(key, attempt, op)
        })
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let mut st = self.lock();
            if st.down {
                return Err(Error::retryable(&self.name, "connection refused (participant is down)"));
            }
            if st.markers_unreadable {
                return Err(Error::permanent(&self.name, "no such table: sagalog_markers"));
            }
            if st.markers.contains(key) {
                return Ok(true);
            }
            let through = st.fences.entry(key.clone()).or_insert(through_attempt);
            *through = (*through).max(through_attempt);
            Ok(false)
        })
    }

    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let st = self.lock();
            if st.down {
                return Err(Error::retryable(&self.name, "connection refused (participant is down)"));
            }
            if st.markers_unreadable {
                return Err(Error::permanent(&self.name, "no such table: sagalog_markers"));
            }
            Ok(st.markers.contains(key))
        })
    }

    fn markers<'a>(&'a self, saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>> {
        Box::pin(async move {
            let st = self.lock();
            Ok(st.markers.iter().filter(|k| k.saga_id == saga_id).map(|k| (k.step, k.direction)).collect())
        })
    }

    fn all_markers(&self) -> BoxFuture<'_, Result<Vec<MarkerEntry>, Error>> {
        Box::pin(async move {
            let st = self.lock();
            if st.down {
                return Err(Error::retryable(&self.name, "connection refused (participant is down)"));
            }
            Ok(st.markers.iter().map(|key| MarkerEntry { key: key.clone(), applied_at_ms: None }).collect())
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if self.lock().down {
                return Err(Error::retryable(&self.name, "connection refused (participant is down)"));
            }
            Ok(())
        })
    }
}

/// Per-saga effect counts across all sagas, for "never applied twice" checks.
pub fn effect_counts(m: &Memory) -> BTreeMap<StepKey, usize> {
    let mut counts = BTreeMap::new();
    for (k, _) in &m.lock().effects {
        *counts.entry(k.clone()).or_insert(0) += 1;
    }
    counts
}
