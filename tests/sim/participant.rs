//! A simulated participant with real transaction semantics: an effect and its marker commit
//! together under one lock (a second commit of the same key changes nothing), and seeded
//! faults around that commit: retryable and permanent errors, lost replies, hangs past the
//! step timeout, late commits (the apply future is dropped by the timeout, but the commit lands
//! later, on its own thread, even across a simulated crash), failing lookups, outages,
//! read-only phases, and a store that vanishes and comes back.
//!
//! Fences, as the SQL participants keep them: `settle_marker` (the executor's in-doubt lookup)
//! reads the marker and, when it is absent, records a fence through the attempt it settles,
//! under the same lock as every commit; a commit (a late one included) of a fenced-off attempt
//! is refused. `lookup_marker` stays a plain read that fences nothing, so an executor that
//! settled with it would let late commits land after "absent" (`late_commit_uncompensated`).
//! An apply the executor *starts* for a fenced-off attempt is recorded as a refusal: it means
//! the executor numbered an attempt at or below one it had settled (`fenced_attempt_started`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagalog::participant::{
    Applied, BoxFuture, Direction, Error, Kind, MarkerEntry, Operation, Participant, StepKey, fenced_off,
};

use crate::world::{Rates, Rng};

/// What the participant's store is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Every call fails as if the connection were refused (retryable).
    Down,
    /// Reads work, writes fail retryably (a replica promoted late, a read-only transaction).
    ReadOnly,
    /// The store is gone (its file was deleted): every call fails with a permanent error until
    /// it comes back, markers intact.
    Vanished,
}

/// An apply refused because a fencing lookup had fenced off its attempt.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub key: StepKey,
    pub attempt: u32,
    pub through: u32,
    /// A late commit (the call had been dropped): what fences are for. A refusal that is not
    /// late is an apply the executor started for an attempt it had settled already.
    pub late: bool,
}

/// One committed effect.
#[derive(Debug, Clone)]
pub struct Effect {
    /// Global commit order across all participants of a run.
    pub stamp: u64,
    pub key: StepKey,
    /// Landed after the apply call that sent it had been dropped.
    pub late: bool,
}

struct State {
    markers: BTreeSet<StepKey>,
    /// The highest attempt of each key a fencing lookup fenced off.
    fences: BTreeMap<StepKey, u32>,
    refusals: Vec<Refusal>,
    log: Vec<Effect>,
    mode: Mode,
    rng: Rng,
    rates: Rates,
    /// Forward steps scripted to fail permanently: (saga, step).
    failing: BTreeSet<(String, u32)>,
    late_pending: u64,
    calls: u64,
}

#[derive(Clone)]
pub struct Sim {
    name: String,
    state: Arc<Mutex<State>>,
    clock: Arc<AtomicU64>,
}

impl Sim {
    pub fn new(name: &str, rng: Rng, rates: Rates, clock: Arc<AtomicU64>) -> Sim {
        let state = State {
            markers: BTreeSet::new(),
            fences: BTreeMap::new(),
            refusals: Vec::new(),
            log: Vec::new(),
            mode: Mode::Up,
            rng,
            rates,
            failing: BTreeSet::new(),
            late_pending: 0,
            calls: 0,
        };
        Sim { name: name.to_owned(), state: Arc::new(Mutex::new(state)), clock }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// Heals the participant: up, and no more injected faults (late commits already sent
    /// still land).
    pub fn heal(&self) {
        let mut st = self.lock();
        st.mode = Mode::Up;
        st.rates = Rates::default();
    }

    pub fn fail_forward(&self, saga: &str, step: u32) {
        self.lock().failing.insert((saga.to_owned(), step));
    }

    pub fn late_pending(&self) -> u64 {
        self.lock().late_pending
    }

    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    pub fn effects(&self) -> Vec<Effect> {
        self.lock().log.clone()
    }

    pub fn refusals(&self) -> Vec<Refusal> {
        self.lock().refusals.clone()
    }

    /// The transaction's commit point: the fence check, the marker and the effect under one
    /// lock. `Err(through)` when a fencing lookup fenced this attempt off (nothing changes).
    fn commit(
        state: &Mutex<State>,
        clock: &AtomicU64,
        key: &StepKey,
        attempt: u32,
        late: bool,
    ) -> Result<Applied, u32> {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&through) = st.fences.get(key)
            && through >= attempt
        {
            st.refusals.push(Refusal { key: key.clone(), attempt, through, late });
            return Err(through);
        }
        if !st.markers.insert(key.clone()) {
            return Ok(Applied::AlreadyApplied);
        }
        let stamp = clock.fetch_add(1, Ordering::SeqCst);
        st.log.push(Effect { stamp, key: key.clone(), late });
        Ok(Applied::Applied)
    }

    fn mode_error(&self, mode: Mode, write: bool) -> Option<Error> {
        match mode {
            Mode::Up => None,
            Mode::Down => Some(Error::retryable(&self.name, "connection refused (simulated outage)")),
            Mode::ReadOnly if write => {
                Some(Error::retryable(&self.name, "cannot execute in a read-only transaction (simulated)"))
            }
            Mode::ReadOnly => None,
            Mode::Vanished => Some(Error::permanent(&self.name, "store file is missing (simulated)")),
        }
    }
}

enum Plan {
    Fail(Error),
    LostReply,
    Late(Duration),
    Hang,
    Commit,
}

impl Participant for Sim {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> Kind {
        Kind::Memory
    }

    fn apply<'a>(
        &'a self,
        key: &'a StepKey,
        attempt: u32,
        _op: &'a Operation,
    ) -> BoxFuture<'a, Result<Applied, Error>> {
        Box::pin(async move {
            let plan = {
                let mut st = self.lock();
                st.calls += 1;
                let r = st.rates;
                if let Some(e) = self.mode_error(st.mode, true) {
                    Plan::Fail(e)
                } else if key.direction == Direction::Forward
                    && st.failing.contains(&(key.saga_id.clone(), key.step))
                    && !st.markers.contains(key)
                {
                    Plan::Fail(Error::permanent(&self.name, format!("scripted permanent failure at {key}")))
                } else if st.rng.chance(r.apply_retryable) {
                    Plan::Fail(Error::retryable(&self.name, format!("simulated serialization failure at {key}")))
                } else if key.direction == Direction::Compensate && st.rng.chance(r.compensate_permanent) {
                    Plan::Fail(Error::permanent(&self.name, format!("simulated constraint violation at {key}")))
                } else if st.rng.chance(r.lost_reply) {
                    Plan::LostReply
                } else if st.rng.chance(r.late_commit) {
                    Plan::Late(Duration::from_millis(st.rng.range(20, 150)))
                } else if st.rng.chance(r.hang) {
                    Plan::Hang
                } else {
                    Plan::Commit
                }
            };
            match plan {
                Plan::Fail(e) => Err(e),
                Plan::LostReply => {
                    if let Err(through) = Sim::commit(&self.state, &self.clock, key, attempt, false) {
                        return Err(fenced_off(&self.name, key, attempt, through));
                    }
                    Err(Error::retryable(&self.name, format!("connection reset after commit at {key} (simulated)")))
                }
                Plan::Late(after) => {
                    // The transaction is on its way: it commits after `after`, whatever happens
                    // to this call (the executor's timeout drops it, or the process "crashes").
                    self.lock().late_pending += 1;
                    let (state, clock, key) = (self.state.clone(), self.clock.clone(), key.clone());
                    std::thread::spawn(move || {
                        std::thread::sleep(after);
                        // A fenced-off late commit is refused (recorded), as the database would.
                        let _ = Sim::commit(&state, &clock, &key, attempt, true);
                        state.lock().unwrap_or_else(|p| p.into_inner()).late_pending -= 1;
                    });
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(Error::retryable(&self.name, "unreachable: the step timeout drops this call"))
                }
                Plan::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(Error::retryable(&self.name, "unreachable: the step timeout drops this call"))
                }
                Plan::Commit => Sim::commit(&self.state, &self.clock, key, attempt, false)
                    .map_err(|through| fenced_off(&self.name, key, attempt, through)),
            }
        })
    }

    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let mut st = self.lock();
            st.calls += 1;
            let r = st.rates;
            if let Some(e) = self.mode_error(st.mode, false) {
                return Err(e);
            }
            if st.rng.chance(r.lookup_retryable) {
                return Err(Error::retryable(&self.name, format!("simulated timeout looking up {key}")));
            }
            if st.rng.chance(r.lookup_permanent) {
                return Err(Error::permanent(&self.name, format!("simulated permission denied looking up {key}")));
            }
            Ok(st.markers.contains(key))
        })
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let mut st = self.lock();
            st.calls += 1;
            let r = st.rates;
            if let Some(e) = self.mode_error(st.mode, false) {
                return Err(e);
            }
            if st.rng.chance(r.lookup_retryable) {
                return Err(Error::retryable(&self.name, format!("simulated timeout looking up {key}")));
            }
            if st.rng.chance(r.lookup_permanent) {
                return Err(Error::permanent(&self.name, format!("simulated permission denied looking up {key}")));
            }
            if st.markers.contains(key) {
                return Ok(true);
            }
            // Writing the fence is a write: a read-only store cannot answer "absent".
            if let Some(e) = self.mode_error(st.mode, true) {
                return Err(e);
            }
            let through = st.fences.entry(key.clone()).or_insert(through_attempt);
            *through = (*through).max(through_attempt);
            Ok(false)
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
            Ok(st.markers.iter().map(|key| MarkerEntry { key: key.clone(), applied_at_ms: None }).collect())
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let st = self.lock();
            match self.mode_error(st.mode, false) {
                Some(e) => Err(Error::retryable(&self.name, e.message)),
                None => Ok(()),
            }
        })
    }
}
