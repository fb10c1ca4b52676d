//! The registry: which sagas exist, in memory (the id map) or in the index (archived), and
//! the lowest journal LSN they still need (the checkpoint LSN: what the checkpoint *file*
//! records as `replay_from_lsn`; unrelated to the `Checkpoint` journal record, which means
//! "recovery started").
//!
//! Owns the id map (one [`Entry`] per saga in memory: its published snapshot, the LSN of its
//! `SagaSubmitted`, whether its submit is still being journaled, and the gate to its task),
//! and the index finished sagas move to.
//!
//! Never does: hold its lock across an `.await` or across an index (sled) lookup, journal
//! anything, or decide what a saga does next. Every update under the lock is a single insert,
//! removal or field assignment, so a poisoned lock still holds a valid map.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::handle::{Error, Snapshot, SubmitOutcome};
use super::task::Gate;
use crate::engine::{Saga, Status};
use crate::index::{Index, SagaRecord};

/// One saga in memory.
pub(super) struct Entry {
    pub(super) view: watch::Sender<Snapshot>,
    /// LSN of the saga's `SagaSubmitted`: the journal must keep everything from here on
    /// until the saga is finished and archived.
    pub(super) first_lsn: u64,
    /// True between reserving the id and the durable `SagaSubmitted`.
    pub(super) reserved: bool,
    /// The gate to the saga's task (control records go through it); `None` once the task
    /// has ended.
    pub(super) control: Option<Gate>,
    /// The checkpoint asked the task for a snapshot that has not landed yet: not asked again.
    pub(super) snapshot_asked: bool,
    /// A cancel was journaled (durable) through the API. Known here at once, while the task may
    /// still be waiting on a participant call and publish it only afterwards (a worker's
    /// heartbeat asks).
    pub(super) cancel_journaled: bool,
}

#[derive(Default)]
struct Map {
    entries: HashMap<String, Entry>,
    /// Ids a submit is looking up in the index right now (outside the lock): how many such
    /// lookups are running, and whether the saga was archived while they ran (then what they
    /// read may predate it, and they look again).
    lookups: HashMap<String, Lookup>,
}

#[derive(Default)]
struct Lookup {
    running: usize,
    archived: bool,
}

pub(super) struct Registry {
    map: Mutex<Map>,
    /// Where finished sagas go (and leave memory). Without one they stay in memory.
    index: Option<Index>,
}

impl Registry {
    pub(super) fn new(index: Option<Index>) -> Registry {
        Registry { map: Mutex::new(Map::default()), index }
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn index(&self) -> Option<&Index> {
        self.index.as_ref()
    }

    /// A finished saga from the index (`None` if absent or there is no index).
    pub(super) fn archived(&self, id: &str) -> Result<Option<SagaRecord>, Error> {
        match &self.index {
            Some(index) => Ok(index.get(id)?),
            None => Ok(None),
        }
    }

    /// Reserves `id` for a submit of a definition with `digest`, so that two concurrent
    /// submits cannot both win. `Ok(None)`: reserved, with `placeholder` published and
    /// `first_lsn()` (read under the lock) holding the checkpoint back. `Ok(Some(_))`: the same
    /// saga exists already, in memory or archived.
    ///
    /// The index lookup runs outside the lock; a saga archived while it ran (which can only be
    /// one that was in memory, or adopted finished, after the first look) sends it round again.
    ///
    /// A new id is refused with [`Error::TooManyLive`] when `live_max` sagas are in memory
    /// already (a resubmit of one of them is still answered).
    pub(super) fn reserve(
        &self,
        id: &str,
        digest: u32,
        placeholder: Snapshot,
        first_lsn: impl Fn() -> u64,
        live_max: usize,
    ) -> Result<Option<SubmitOutcome>, Error> {
        loop {
            {
                let mut map = self.lock();
                if let Some(entry) = map.entries.get(id) {
                    return existing(id, entry, digest).map(Some);
                }
                map.lookups.entry(id.to_owned()).or_default().running += 1;
            }
            let found = self.archived(id);
            let mut map = self.lock();
            let raced = match map.lookups.get_mut(id) {
                Some(lookup) => {
                    lookup.running -= 1;
                    let raced = lookup.archived;
                    if lookup.running == 0 {
                        map.lookups.remove(id);
                    }
                    raced
                }
                None => false,
            };
            if let Some(archived) = found? {
                return if archived.digest == digest {
                    Ok(Some(SubmitOutcome::AlreadyExists(archived_status(&archived))))
                } else {
                    Err(Error::Conflict { id: id.to_owned() })
                };
            }
            if let Some(entry) = map.entries.get(id) {
                return existing(id, entry, digest).map(Some);
            }
            if raced {
                continue;
            }
            if map.entries.len() >= live_max {
                return Err(Error::TooManyLive { max: live_max });
            }
            // Its `SagaSubmitted` will get an LSN above everything acknowledged so far: the
            // checkpoint must not pass that point while the submit is in flight.
            let first_lsn = first_lsn();
            let entry = Entry {
                view: watch::channel(placeholder).0,
                first_lsn,
                reserved: true,
                control: None,
                snapshot_asked: false,
                cancel_journaled: false,
            };
            map.entries.insert(id.to_owned(), entry);
            return Ok(None);
        }
    }

    /// The submit's `SagaSubmitted` is durable at `lsn`: the id is no longer reserved.
    pub(super) fn confirm(&self, id: &str, lsn: u64) {
        if let Some(entry) = self.lock().entries.get_mut(id) {
            entry.first_lsn = lsn;
            entry.reserved = false;
        }
    }

    /// Forgets a saga whose submit failed.
    pub(super) fn remove(&self, id: &str) {
        self.lock().entries.remove(id);
    }

    pub(super) fn first_lsn(&self, id: &str) -> Option<u64> {
        self.lock().entries.get(id).map(|e| e.first_lsn)
    }

    /// Registers (or updates) a saga about to be driven, publishes `snapshot`, and hands its
    /// task's sender (`None` for a finished saga, which has no task). Returns the view the task
    /// publishes to.
    pub(super) fn register(
        &self,
        snapshot: Snapshot,
        first_lsn: u64,
        reserved: bool,
        control: Option<Gate>,
    ) -> watch::Sender<Snapshot> {
        let mut map = self.lock();
        let entry = map.entries.entry(snapshot.saga.id.clone()).or_insert_with(|| Entry {
            view: watch::channel(snapshot.clone()).0,
            first_lsn,
            reserved,
            control: None,
            snapshot_asked: false,
            cancel_journaled: false,
        });
        entry.reserved = reserved;
        entry.first_lsn = first_lsn;
        entry.view.send_replace(snapshot);
        if control.is_some() {
            entry.control = control;
        }
        entry.view.clone()
    }

    /// The saga's task has ended: nobody can send it control records any more.
    pub(super) fn task_ended(&self, id: &str) {
        if let Some(entry) = self.lock().entries.get_mut(id) {
            entry.control = None;
        }
    }

    /// Puts a finished saga into the index and forgets it. Returns false (and keeps it in
    /// memory, which keeps its journal records too) if there is no index or it failed.
    pub(super) fn archive(&self, saga: &Saga) -> bool {
        let Some(index) = &self.index else { return false };
        match index.put(&SagaRecord::from_saga(saga)) {
            Ok(()) => {
                let mut map = self.lock();
                map.entries.remove(&saga.id);
                if let Some(lookup) = map.lookups.get_mut(&saga.id) {
                    lookup.archived = true;
                }
                true
            }
            Err(e) => {
                tracing::error!(saga_id = %saga.id, error = %e, "cannot archive a finished saga; keeping it in memory");
                false
            }
        }
    }

    /// Whether a task is driving (or queued to drive) the saga now, or its submit is still
    /// being journaled.
    pub(super) fn is_live(&self, id: &str) -> bool {
        self.lock().entries.get(id).is_some_and(|e| e.control.is_some() || e.reserved)
    }

    /// What the registry knows of `id` for a recovery pass: `None` if nothing; otherwise
    /// whether a task drives it (or its submit is being journaled) and its published state.
    pub(super) fn known(&self, id: &str) -> Option<(bool, Saga)> {
        let map = self.lock();
        let entry = map.entries.get(id)?;
        Some((entry.control.is_some() || entry.reserved, entry.view.borrow().saga.clone()))
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.lock().entries.contains_key(id)
    }

    /// The saga's published status and its task's gate (`None` if its task has ended).
    /// Notes that a cancel of `id` is durable.
    pub(super) fn note_cancel(&self, id: &str) {
        if let Some(entry) = self.lock().entries.get_mut(id) {
            entry.cancel_journaled = true;
        }
    }

    /// Whether a cancel of `id` is journaled: noted by the API, or in the published state
    /// (recovery replayed one).
    pub(super) fn cancel_requested(&self, id: &str) -> bool {
        self.lock().entries.get(id).is_some_and(|e| e.cancel_journaled || e.view.borrow().saga.cancel_requested)
    }

    pub(super) fn control_target(&self, id: &str) -> Option<(Status, Option<Gate>)> {
        self.lock().entries.get(id).map(|e| (e.view.borrow().status, e.control.clone()))
    }

    /// The lowest LSN the journal must keep: the `SagaSubmitted` of the oldest saga not yet
    /// archived, or `after_all()` (one past the last acknowledged record) if every saga is.
    pub(super) fn checkpoint_lsn(&self, after_all: impl FnOnce() -> u64) -> u64 {
        // Under the lock, `after_all` included: a submit cannot reserve its id between the
        // look at the map and the read of the acknowledged LSN (trust item 7).
        let map = self.lock();
        map.entries.values().map(|e| e.first_lsn).min().unwrap_or_else(after_all)
    }

    /// The gates of the sagas with a task whose oldest needed record lies below `below` and
    /// that were not asked yet, marked as asked (the checkpoint sends them
    /// [`super::task::Control::Snapshot`]).
    pub(super) fn ask_snapshots(&self, below: u64) -> Vec<(String, Gate)> {
        let mut map = self.lock();
        let mut asked = Vec::new();
        for (id, entry) in map.entries.iter_mut() {
            if entry.first_lsn < below
                && !entry.snapshot_asked
                && !entry.reserved
                && let Some(gate) = &entry.control
            {
                entry.snapshot_asked = true;
                asked.push((id.clone(), Arc::clone(gate)));
            }
        }
        asked
    }

    /// The saga's `SagaSnapshot` at `lsn` is durable: nothing of it below `lsn` is needed.
    pub(super) fn snapshotted(&self, id: &str, lsn: u64) {
        if let Some(entry) = self.lock().entries.get_mut(id) {
            entry.first_lsn = entry.first_lsn.max(lsn);
            entry.snapshot_asked = false;
        }
    }

    /// A snapshot request could not be delivered (the task's queue was full or it ended):
    /// the next checkpoint asks again.
    pub(super) fn snapshot_not_asked(&self, id: &str) {
        if let Some(entry) = self.lock().entries.get_mut(id) {
            entry.snapshot_asked = false;
        }
    }

    pub(super) fn get(&self, id: &str) -> Option<Snapshot> {
        self.lock().entries.get(id).map(|e| e.view.borrow().clone())
    }

    pub(super) fn list(&self) -> Vec<Snapshot> {
        self.lock().entries.values().map(|e| e.view.borrow().clone()).collect()
    }

    /// Up to `limit` snapshots of the sagas with ids above `after` that `wanted` keeps, in id
    /// order, and whether more follow. Only the page is copied: the lock is held for one pass
    /// over the ids and statuses, not for a copy of every live saga.
    pub(super) fn page(&self, after: &str, limit: usize, wanted: impl Fn(&Snapshot) -> bool) -> (Vec<Snapshot>, bool) {
        let map = self.lock();
        let mut ids: Vec<&String> = map
            .entries
            .iter()
            .filter(|(id, e)| id.as_str() > after && wanted(&e.view.borrow()))
            .map(|(id, _)| id)
            .collect();
        let more = ids.len() > limit;
        if more {
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        (ids.into_iter().filter_map(|id| map.entries.get(id).map(|e| e.view.borrow().clone())).collect(), more)
    }

    pub(super) fn status_counts(&self) -> BTreeMap<Status, u64> {
        let mut counts = BTreeMap::new();
        for entry in self.lock().entries.values() {
            *counts.entry(entry.view.borrow().status).or_default() += 1;
        }
        counts
    }

    pub(super) fn watch(&self, id: &str) -> Option<watch::Receiver<Snapshot>> {
        self.lock().entries.get(id).map(|e| e.view.subscribe())
    }

    /// How many receivers watch the saga now (the registry's own not counted).
    pub(super) fn watchers(&self, id: &str) -> Option<usize> {
        self.lock().entries.get(id).map(|e| e.view.receiver_count())
    }
}

/// The answer to a submit of an id already in memory.
fn existing(id: &str, entry: &Entry, digest: u32) -> Result<SubmitOutcome, Error> {
    if entry.reserved {
        return Err(Error::SubmitInProgress { id: id.to_owned() });
    }
    let existing = entry.view.borrow();
    if existing.saga.digest == digest {
        Ok(SubmitOutcome::AlreadyExists(existing.status))
    } else {
        Err(Error::Conflict { id: id.to_owned() })
    }
}

pub(super) fn archived_status(record: &SagaRecord) -> Status {
    match record.status.as_str() {
        "COMPLETED" => Status::Completed,
        _ => Status::Compensated,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::engine::record::Submitted;

    fn placeholder(id: &str) -> Snapshot {
        let submitted = Submitted {
            saga: id.into(),
            steps: Vec::new(),
            policies: Vec::new(),
            digest: 7,
            at_ms: 0,
            actions: Default::default(),
            scope: None,
        };
        Snapshot { saga: Saga::submitted(&submitted), status: Status::Pending, parked_on: None, parked_reason: None }
    }

    /// Trust item 7: the checkpoint LSN is read under the registry lock, so a submit cannot
    /// reserve its id (and have its `SagaSubmitted` and more acknowledged) between the look at
    /// the map and the read of the acknowledged LSN. The test forces exactly that interleaving:
    /// `after_all` (the acknowledged-LSN read) starts the submit and lets it run to the end
    /// before it reads. Were the read outside the lock, the submit would finish first and the
    /// checkpoint would pass its `SagaSubmitted`; under the lock the submit waits for the read
    /// (the bounded wait only ends the attempt, it decides nothing).
    #[test]
    fn a_submit_racing_the_checkpoint_read_keeps_its_submitted_record() {
        let registry = Arc::new(Registry::new(None));
        let acked = Arc::new(AtomicU64::new(10));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut submitter = None;
        let checkpoint = registry.checkpoint_lsn(|| {
            let (registry, shared) = (Arc::clone(&registry), Arc::clone(&acked));
            submitter = Some(std::thread::spawn(move || {
                let reserved =
                    registry.reserve("s", 7, placeholder("s"), || shared.load(Ordering::SeqCst) + 1, usize::MAX);
                assert!(matches!(reserved, Ok(None)), "the id was free");
                let submitted_lsn = shared.fetch_add(1, Ordering::SeqCst) + 1; // `SagaSubmitted`
                registry.confirm("s", submitted_lsn);
                shared.fetch_add(4, Ordering::SeqCst); // its steps' records
                let _ = done_tx.send(());
                submitted_lsn
            }));
            let _ = done_rx.recv_timeout(Duration::from_millis(300));
            acked.load(Ordering::SeqCst) + 1
        });
        let submitted_lsn = submitter.map(|t| t.join().expect("submitter")).expect("after_all ran");
        assert!(
            checkpoint <= submitted_lsn,
            "checkpoint {checkpoint} passed the racing submit's SagaSubmitted at {submitted_lsn}: its segment could be deleted"
        );
        assert_eq!(registry.checkpoint_lsn(|| u64::MAX), submitted_lsn, "the saga now holds the checkpoint");
    }
}
