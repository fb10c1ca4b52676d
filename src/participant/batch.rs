//! Group commit for the embedded databases (SQLite, DuckDB): many sagas' steps in one local
//! transaction, so that one commit (one fsync) answers them all.
//!
//! An `apply` queues its step and spawns one committer; a committer takes the participant's
//! write lock, drains up to [`BATCH_MAX`] queued steps and runs them on a pooled connection on a
//! blocking thread, in passes ([`run_passes`]):
//!
//! - a pass opens a transaction and runs the steps in order, each as the database's
//!   [`Batching::step`] says (SQLite: under its own `SAVEPOINT`, so a failing step rolls back
//!   alone and the transaction goes on);
//! - when a step fails and the transaction cannot go on (DuckDB after any error; SQLite after
//!   an error that made it roll the whole transaction back, such as `SQLITE_FULL`), that step
//!   gets its error, the transaction is rolled back, and the steps applied before it (void now)
//!   and those after it run again in the next pass. Every pass answers at least one step for
//!   good, so a step that fails fails alone; after two passes that ended early the rest of the
//!   batch runs one step per transaction, so many failing steps cost passes, not a quadratic
//!   number of statements;
//! - one `COMMIT` ends the last pass, and only then is any step answered "applied"; a commit
//!   that fails answers each step it held with the commit's error (classified by the
//!   database, in doubt where the commit may have happened).
//!
//! One committer is spawned per queued step, so every queued step is taken by some committer;
//! a committer that finds the queue empty (an earlier one took its step) ends at once. The
//! committer is a task of its own: dropping an `apply` future (a step timeout) neither strands
//! its step in the queue nor cuts a transaction short, and a fencing lookup, which takes the
//! same write lock, waits for the batch that holds the step.
//!
//! Never does: answer "applied" before the commit, or keep the work of a step that failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::pool::BlockingPool;
use super::{Applied, Error, Outputs, Statement, StepKey};

/// The most steps one group commit runs in one transaction.
pub const BATCH_MAX: usize = 128;

/// One step of a group commit.
pub(crate) struct BatchStep {
    pub key: StepKey,
    pub attempt: u32,
    pub statements: Vec<Statement>,
}

/// What one step's run left: its answer, and whether the transaction can go on.
pub(crate) struct StepRun {
    pub result: Result<(Applied, Outputs), Error>,
    /// False when the transaction is unusable after this step (its error aborted it, or the
    /// database rolled it back): the pass ends there.
    pub usable: bool,
}

/// What a database gives the group commit, on a connection of type `C`, on a blocking thread.
pub(crate) trait Batching<C>: Send + Sync + 'static {
    /// Readies a connection taken from the pool (a busy timeout, say).
    fn prepare(&self, _name: &str, _conn: &mut C) -> Result<(), Error> {
        Ok(())
    }
    fn begin(&self, name: &str, conn: &mut C) -> Result<(), Error>;
    /// Runs one step inside the open transaction; its work is kept only if it answers
    /// `Applied`.
    fn step(&self, name: &str, conn: &mut C, step: &BatchStep) -> StepRun;
    /// Ends the transaction without keeping anything; errors are ignored (the pool drops a
    /// connection left inside a transaction).
    fn rollback(&self, name: &str, conn: &mut C);
    fn commit(&self, name: &str, conn: &mut C) -> Result<(), Error>;
    /// Called for each step answered "applied", after its commit.
    fn committed(&self, _step: &BatchStep) {}
}

/// How many group commits (batches, each one or more passes) ran so far, and the steps they held.
#[derive(Default)]
pub(crate) struct BatchCounts {
    transactions: AtomicU64,
    steps: AtomicU64,
}

impl BatchCounts {
    /// Counts one batch of `steps` steps.
    pub(crate) fn add(&self, steps: usize) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.steps.fetch_add(steps as u64, Ordering::Relaxed);
    }

    /// Batches run so far, and the steps they held: their ratio is the steps that shared one
    /// batch (one commit when no step ended a pass early).
    pub(crate) fn get(&self) -> (u64, u64) {
        (self.transactions.load(Ordering::Relaxed), self.steps.load(Ordering::Relaxed))
    }
}

/// Where one queued step's answer goes.
pub(crate) type Answer = oneshot::Sender<Result<(Applied, Outputs), Error>>;

/// The steps waiting for a group commit (any database's), in arrival order.
#[derive(Default)]
pub(crate) struct Queue(Mutex<Vec<Pending>>);

impl Queue {
    /// Queues `step`; the receiver gets its answer ([`answered`]).
    pub(crate) fn push(&self, step: BatchStep) -> oneshot::Receiver<Result<(Applied, Outputs), Error>> {
        let (answer, answered) = oneshot::channel();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(Pending { step, answer });
        answered
    }

    /// Takes up to [`BATCH_MAX`] queued steps, oldest first (none if an earlier committer
    /// took them all).
    pub(crate) fn take(&self) -> (Vec<BatchStep>, Vec<Answer>) {
        let mut queue = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = queue.len().min(BATCH_MAX);
        queue.drain(..n).map(|p| (p.step, p.answer)).unzip()
    }
}

/// The answer a queued step (`key` on participant `name`) receives; a committer that ended
/// without sending one (its task was cancelled: the runtime shut down) leaves the step
/// retryable, and its marker settles it.
pub(crate) async fn answered(
    name: &str,
    key: &StepKey,
    answer: oneshot::Receiver<Result<(Applied, Outputs), Error>>,
) -> Result<(Applied, Outputs), Error> {
    answer.await.unwrap_or_else(|_| {
        Err(Error::retryable(name, format!("step {key}: the group commit ended without an answer")))
    })
}

/// Sends each step its result, in order; a step whose caller went away (its timeout) is
/// skipped.
pub(crate) fn answer_all(answers: Vec<Answer>, results: Vec<Result<(Applied, Outputs), Error>>) {
    for (answer, result) in answers.into_iter().zip(results) {
        let _ = answer.send(result);
    }
}

/// An apply waiting for a group commit, and where its answer goes.
struct Pending {
    step: BatchStep,
    answer: Answer,
}

/// A participant's group commit: its queue, and what a committer needs.
pub(crate) struct GroupCommit<C: Send + 'static> {
    name: String,
    queue: Arc<Queue>,
    write_lock: Arc<tokio::sync::Mutex<()>>,
    pool: Arc<BlockingPool<C>>,
    db: Arc<dyn Batching<C>>,
    counts: Arc<BatchCounts>,
}

impl<C: Send + 'static> Clone for GroupCommit<C> {
    fn clone(&self) -> Self {
        GroupCommit {
            name: self.name.clone(),
            queue: Arc::clone(&self.queue),
            write_lock: Arc::clone(&self.write_lock),
            pool: Arc::clone(&self.pool),
            db: Arc::clone(&self.db),
            counts: Arc::clone(&self.counts),
        }
    }
}

impl<C: Send + 'static> GroupCommit<C> {
    /// `write_lock` is the participant's own: whatever else takes it (the fencing lookup, the
    /// write probe) runs between batches.
    pub(crate) fn new(
        name: &str,
        pool: Arc<BlockingPool<C>>,
        write_lock: Arc<tokio::sync::Mutex<()>>,
        db: Arc<dyn Batching<C>>,
    ) -> GroupCommit<C> {
        GroupCommit { name: name.to_owned(), queue: Arc::default(), write_lock, pool, db, counts: Arc::default() }
    }

    /// Queues `step` for the next group commit and waits for its answer.
    pub(crate) async fn apply(&self, step: BatchStep) -> Result<(Applied, Outputs), Error> {
        let key = step.key.clone();
        let answer = self.queue.push(step);
        tokio::spawn(self.clone().commit_once());
        answered(&self.name, &key, answer).await
    }

    /// Group commits (batches) run so far, and the steps they held: their ratio is the steps
    /// that shared one batch (one commit when no step ended a pass early).
    pub(crate) fn counts(&self) -> (u64, u64) {
        self.counts.get()
    }

    /// One committer: the write lock, then what is queued (nothing if an earlier committer took
    /// it all).
    async fn commit_once(self) {
        let writer = Arc::clone(&self.write_lock).lock_owned().await;
        let (steps, answers) = self.queue.take();
        if steps.is_empty() {
            return;
        }
        let (db, name, counts) = (Arc::clone(&self.db), self.name.clone(), Arc::clone(&self.counts));
        // The guard moves into the blocking task: the lock is released when the transaction
        // ends, whatever happens to this task.
        let results = self
            .pool
            .run(move |conn| {
                let _writer = writer;
                db.prepare(&name, conn)?;
                let results = run_passes(&name, conn, db.as_ref(), &steps);
                counts.add(steps.len());
                for (step, result) in steps.iter().zip(&results) {
                    if matches!(result, Ok((Applied::Applied, _))) {
                        db.committed(step);
                    }
                }
                Ok(results)
            })
            .await;
        match results {
            Ok(results) => answer_all(answers, results),
            // No connection (the pool closed, or opening one failed): nothing ran.
            Err(e) => {
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Passes that ended early after which the rest of a batch runs one step per transaction.
const EARLY_ENDS_MAX: usize = 2;

/// The passes of one group commit (see the module doc). Answers every step, in order.
pub(crate) fn run_passes<C: 'static>(
    name: &str,
    conn: &mut C,
    db: &dyn Batching<C>,
    steps: &[BatchStep],
) -> Vec<Result<(Applied, Outputs), Error>> {
    let mut results: Vec<Option<Result<(Applied, Outputs), Error>>> = vec![None; steps.len()];
    let mut todo: Vec<usize> = (0..steps.len()).collect();
    let mut early_ends = 0;
    while !todo.is_empty() {
        // Without savepoints (DuckDB) every failing step costs a pass that runs the rest again:
        // after a few, the rest of the batch goes one step per transaction, so a batch with
        // many failing steps costs at most a few passes more than its steps.
        let take = if early_ends >= EARLY_ENDS_MAX { 1 } else { todo.len() };
        let later = todo.split_off(take);
        let pass = std::mem::take(&mut todo);
        if let Err(e) = db.begin(name, conn) {
            // Whatever state the connection is in, it leaves no transaction behind.
            db.rollback(name, conn);
            for &i in pass.iter().chain(&later) {
                results[i] = Some(Err(e.clone()));
            }
            break;
        }
        // Steps applied in this pass, answered once it commits.
        let mut kept: Vec<usize> = Vec::new();
        let mut again: Option<Vec<usize>> = None;
        for (position, &i) in pass.iter().enumerate() {
            let StepRun { result, usable } = db.step(name, conn, &steps[i]);
            if !usable {
                // The step failed and took the transaction with it: it gets its error, the rest
                // run again.
                results[i] = Some(result);
                again = Some(kept.iter().chain(&pass[position + 1..]).copied().collect());
                break;
            }
            if matches!(result, Ok((Applied::Applied, _))) {
                kept.push(i);
            }
            results[i] = Some(result);
        }
        if let Some(again) = again {
            db.rollback(name, conn);
            early_ends += 1;
            todo = again.into_iter().chain(later).collect();
            continue;
        }
        if let Err(e) = db.commit(name, conn) {
            db.rollback(name, conn);
            for &i in &kept {
                results[i] = Some(Err(e.clone()));
            }
        }
        todo = later;
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::retryable(name, "bug: a group commit left a step unanswered"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::participant::Direction;

    /// A database in memory: what a pass keeps, what commits, what each step cost.
    #[derive(Default)]
    struct Conn {
        pending: Vec<u32>,
        committed: Vec<u32>,
        statements: usize,
    }

    /// Steps in `fail` fail; `savepoints` says whether the transaction survives that (SQLite)
    /// or not (DuckDB); with `commit_fails` every commit fails.
    struct Fake {
        fail: BTreeSet<u32>,
        savepoints: bool,
        commit_fails: bool,
    }

    impl Batching<Conn> for Fake {
        fn begin(&self, _name: &str, conn: &mut Conn) -> Result<(), Error> {
            conn.pending.clear();
            Ok(())
        }
        fn step(&self, name: &str, conn: &mut Conn, step: &BatchStep) -> StepRun {
            conn.statements += 1;
            if self.fail.contains(&step.key.step) {
                return StepRun { result: Err(Error::permanent(name, "constraint")), usable: self.savepoints };
            }
            conn.pending.push(step.key.step);
            StepRun { result: Ok((Applied::Applied, Outputs::new())), usable: true }
        }
        fn rollback(&self, _name: &str, conn: &mut Conn) {
            conn.pending.clear();
        }
        fn commit(&self, name: &str, conn: &mut Conn) -> Result<(), Error> {
            if self.commit_fails {
                return Err(Error::retryable(name, "commit failed"));
            }
            let pending = std::mem::take(&mut conn.pending);
            conn.committed.extend(pending);
            Ok(())
        }
    }

    fn steps(n: u32) -> Vec<BatchStep> {
        (0..n)
            .map(|step| BatchStep {
                key: StepKey { saga_id: "s".into(), step, direction: Direction::Forward, scope: None },
                attempt: 1,
                statements: Vec::new(),
            })
            .collect()
    }

    proptest! {
        /// Whatever steps fail, with or without savepoints, and whether the commit fails: a
        /// step is answered "applied" exactly when its work committed, once; a failing step
        /// gets its own error; every other step is applied unless the commit failed; and the
        /// work done stays linear in the batch (no quadratic re-runs).
        #[test]
        fn a_step_is_answered_applied_exactly_when_it_committed(
            n in 1u32..160,
            fail in proptest::collection::btree_set(0u32..160, 0..40),
            savepoints in any::<bool>(),
            commit_fails in any::<bool>(),
        ) {
            let fake = Fake { fail: fail.clone(), savepoints, commit_fails };
            let mut conn = Conn::default();
            let results = run_passes("db", &mut conn, &fake, &steps(n));
            prop_assert_eq!(results.len(), n as usize);
            let committed: BTreeSet<u32> = conn.committed.iter().copied().collect();
            prop_assert_eq!(committed.len(), conn.committed.len(), "a step committed twice");
            for (step, result) in (0u32..).zip(&results) {
                let applied = matches!(result, Ok((Applied::Applied, _)));
                prop_assert_eq!(applied, committed.contains(&step), "step {}: {:?}", step, result);
                if fail.contains(&step) {
                    prop_assert!(matches!(result, Err(e) if e.message == "constraint"), "step {}: {:?}", step, result);
                } else if !commit_fails {
                    prop_assert!(applied, "step {}: {:?}", step, result);
                }
            }
            let bound = (n as usize) * (EARLY_ENDS_MAX + 1);
            prop_assert!(conn.statements <= bound, "{} step runs for {} steps", conn.statements, n);
        }
    }
}
