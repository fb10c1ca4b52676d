//! Group commit for the PostgreSQL participant: the steps of many sagas in one transaction,
//! so that one `COMMIT` (one WAL flush in the server) answers them all.
//!
//! An `apply` queues its step ([`batch::Queue`], shared with SQLite's and DuckDB's group
//! commit) and spawns a committer. Up to [`committers`] committers run at once, each on a
//! pooled connection of its own; a committer takes up to `BATCH_MAX` queued steps and runs
//! them in one READ COMMITTED transaction, in at most two passes:
//!
//! - **the pipelined pass**: the advisory locks of every step's key in one statement (sorted,
//!   so that two batches take shared keys in the same order), then every step at once, each as
//!   it would run alone after its lock (`Inner::run_step`: the claim, which checks the fence and
//!   inserts the marker, then its statements), all in flight together on the one connection,
//!   no savepoints.
//!   Steps that all succeed (applied, or already applied: that inserts nothing) end with one
//!   `COMMIT`, and only then is any step answered "applied". A batch costs about the round
//!   trips of one step, and the transaction holds no subtransaction;
//! - **the savepoint pass**, when a step of the first failed: that transaction is rolled back
//!   (PostgreSQL aborts a transaction at its first error) and every step runs again, one after
//!   the other, each under its own `SAVEPOINT`: released when the step answers `Applied`,
//!   rolled back otherwise (already applied, fenced off, or any error, which PostgreSQL
//!   confines to the savepoint), so a failing step fails alone and the others commit. The
//!   savepoint commands travel pipelined with the next step's first round trip. A step
//!   interrupted by a cancel in the first pass keeps that answer and does not run again;
//! - a savepoint command that fails (the connection went, or a cancel request meant for a
//!   step landed on it) loses the transaction: it is never committed, the steps it kept and
//!   those not run yet are answered retryable, and their markers settle them;
//! - a `COMMIT` the server refuses with an ERROR (a deferred constraint or trigger of one of
//!   the steps) has rolled the whole transaction back: each step it held runs again in a
//!   transaction of its own, so that only the step at fault fails. A `COMMIT` whose answer was
//!   lost (the connection closed, or a FATAL) may have happened: its steps are answered
//!   retryable, in doubt, and the fencing lookup settles them.
//!
//! The committer is a task of its own: dropping an `apply` future (a step timeout) neither
//! strands its step in the queue nor cuts a transaction short, and the fencing lookup, which
//! takes the key's advisory lock, waits for the batch that holds it.
//!
//! What a batch costs the steps in it: the row locks a step takes are held until its batch
//! commits, so a step that waits for a lock (a row another transaction holds) holds up the
//! steps after it in its batch; the other committers go on meanwhile. Concurrent batches that
//! lock rows in opposite orders deadlock where single steps might not; PostgreSQL detects it
//! after `deadlock_timeout` and fails one statement (40P01, retryable), whose step alone is
//! rolled back and retried.
//!
//! Never does: answer "applied" before the commit, commit a transaction in which any command
//! failed outside a rolled-back savepoint (PostgreSQL would answer such a `COMMIT` with a
//! silent `ROLLBACK`: the pipelined pass commits only when every step succeeded, the savepoint
//! pass only when every savepoint command did), or keep the work of a step that failed.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{Inner, LOCK_MANY_SQL, Locked, begin, classify, key_lock_id};
use crate::participant::batch::{self, Answer, BatchCounts, BatchStep, Queue};
use crate::participant::{Applied, Error, Outputs};

/// The most batches of one participant that run at once.
pub const COMMITTERS_MAX: usize = 4;

/// How many batches run at once on a pool of `pool_size` connections: half the pool (at
/// least one, at most [`COMMITTERS_MAX`]), so that lookups and fences find a connection while
/// batches run.
pub fn committers(pool_size: usize) -> usize {
    (pool_size / 2).clamp(1, COMMITTERS_MAX)
}

/// Ends the previous step's savepoint, keeping its work.
const RELEASE: &str = "RELEASE SAVEPOINT sagalog_step";
/// Ends the previous step's savepoint, undoing its work.
const UNDO: &str = "ROLLBACK TO SAVEPOINT sagalog_step; RELEASE SAVEPOINT sagalog_step";
/// Starts a step's savepoint.
const SAVEPOINT: &str = "SAVEPOINT sagalog_step";

/// A PostgreSQL participant's group commit: its queue and its committers.
#[derive(Clone)]
pub(super) struct Group {
    queue: Arc<Queue>,
    committers: Arc<Semaphore>,
    counts: Arc<BatchCounts>,
}

impl Group {
    pub(super) fn new(pool_size: usize) -> Group {
        Group {
            queue: Arc::default(),
            committers: Arc::new(Semaphore::new(committers(pool_size))),
            counts: Arc::default(),
        }
    }

    /// Queues `step` for the next batch and waits for its answer.
    pub(super) async fn apply(&self, inner: &Arc<Inner>, step: BatchStep) -> Result<(Applied, Outputs), Error> {
        let key = step.key.clone();
        let answer = self.queue.push(step);
        tokio::spawn(self.clone().commit_once(Arc::clone(inner)));
        batch::answered(&inner.name, &key, answer).await
    }

    pub(super) fn counts(&self) -> (u64, u64) {
        self.counts.get()
    }

    /// One committer: a turn among the committers, then what is queued (nothing if an earlier
    /// committer took it all).
    async fn commit_once(self, inner: Arc<Inner>) {
        // The semaphore is never closed.
        let Ok(_turn) = self.committers.acquire().await else { return };
        let (steps, answers): (Vec<BatchStep>, Vec<Answer>) = self.queue.take();
        if steps.is_empty() {
            return;
        }
        let results = inner.run_batch(&steps).await;
        self.counts.add(steps.len());
        batch::answer_all(answers, results);
    }
}

/// Answers, one per step, in order.
type Answers = Vec<Result<(Applied, Outputs), Error>>;

/// How a pass that ran to its `COMMIT` ended: every step's answer, and the positions of the
/// steps the pass applied whose `COMMIT` the server refused (it rolled everything back): those
/// run again, each alone. Empty when the commit went through (or its answer was lost).
type Ended = (Answers, Vec<usize>);

/// A first pass in which a step failed and took the transaction with it: nothing committed;
/// the steps answered here (interrupted ones) must not run again.
type Failed = Vec<Option<Result<(Applied, Outputs), Error>>>;

impl Inner {
    /// Runs `steps` in one transaction (see the module doc); answers each, in order.
    async fn run_batch(&self, steps: &[BatchStep]) -> Answers {
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(e) => return vec![Err(e); steps.len()],
        };
        let all: Vec<&BatchStep> = steps.iter().collect();
        let (mut results, again) = match self.pipelined_pass(&mut client, &all).await {
            Ok(ended) => ended,
            Err(mut earlier) => {
                // Every step runs again under a savepoint of its own, but an interrupted one
                // (its saga was cancelled).
                let rerun: Vec<usize> = (0..steps.len()).filter(|&i| earlier[i].is_none()).collect();
                let subset: Vec<&BatchStep> = rerun.iter().map(|&i| &steps[i]).collect();
                let (results, again) = self.savepoint_pass(&mut client, &subset).await;
                let again = again.into_iter().map(|j| rerun[j]).collect();
                for (&i, result) in rerun.iter().zip(results) {
                    earlier[i] = Some(result);
                }
                let bug = || Err(Error::retryable(&self.name, "bug: a group commit left a step unanswered"));
                (earlier.into_iter().map(|r| r.unwrap_or_else(bug)).collect(), again)
            }
        };
        // The refused commit: each step it held runs again alone, on a connection of its own
        // (this one goes back first: a pool of one would otherwise wait for itself).
        drop(client);
        for i in again {
            let step = &steps[i];
            results[i] = self.apply_sql(&step.key, step.attempt, &step.statements).await;
        }
        results
    }

    /// The first pass: every step at once, pipelined on the connection (their statements in
    /// flight together; PostgreSQL runs them in arrival order), in one transaction without
    /// savepoints, then `COMMIT`. A step that fails rolls the transaction back.
    async fn pipelined_pass(
        &self,
        client: &mut deadpool_postgres::Object,
        steps: &[&BatchStep],
    ) -> Result<Ended, Failed> {
        let name = self.name.as_str();
        let tx = match begin(name, client).await {
            Ok(tx) => tx,
            Err(e) => return Ok((vec![Err(e); steps.len()], Vec::new())),
        };
        // Every key's lock in one statement, then every step, pipelined behind it: the lock is
        // prepared first, so that its request is surely sent before any step's claim (whose
        // snapshot must see what committed while the locks were awaited; see `LOCK_SQL`).
        let mut ids: Vec<i64> = steps.iter().map(|step| key_lock_id(&step.key)).collect();
        ids.sort_unstable();
        ids.dedup();
        let lock = match tx.prepare_cached(LOCK_MANY_SQL).await {
            Ok(lock) => lock,
            Err(_) => return Err(vec![None; steps.len()]),
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
        let (locked, results) = tokio::join!(
            biased;
            tx.execute(&lock, &params),
            futures_util::future::join_all(
                steps.iter().map(|step| self.run_step(&tx, &step.key, step.attempt, &step.statements, Locked::Already)),
            ),
        );
        if locked.is_err() || results.iter().any(Result::is_err) {
            // Dropping the transaction rolls it back before the connection runs anything else.
            drop(tx);
            return Err(results.into_iter().map(|r| r.err().filter(super::is_interrupted).map(Err)).collect());
        }
        let kept: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Ok((Applied::Applied, _))))
            .map(|(i, _)| i)
            .collect();
        Ok(commit(name, tx, results, kept).await)
    }

    /// The fallback pass: the steps one after the other, each under its own savepoint, in
    /// one transaction (see the module doc).
    async fn savepoint_pass(&self, client: &mut deadpool_postgres::Object, steps: &[&BatchStep]) -> Ended {
        let name = self.name.as_str();
        let tx = match begin(name, client).await {
            Ok(tx) => tx,
            Err(e) => return (vec![Err(e); steps.len()], Vec::new()),
        };
        let mut results = Vec::with_capacity(steps.len());
        // The steps whose work the transaction holds, answered once it commits.
        let mut kept = Vec::new();
        // Set once a savepoint command failed: the transaction is lost.
        let mut lost: Option<Error> = None;
        // What ends the previous step's savepoint before the next one starts.
        let mut end_previous: Option<&str> = None;
        for (i, step) in steps.iter().enumerate() {
            if let Some(e) = &lost {
                results.push(Err(e.clone()));
                continue;
            }
            let prelude = match end_previous {
                Some(end) => format!("{end}; {SAVEPOINT}"),
                None => SAVEPOINT.to_owned(),
            };
            // Pipelined: the savepoint commands are sent first, the step's first round trip
            // right behind them.
            let (started, result) = tokio::join!(
                biased;
                tx.batch_execute(&prelude),
                self.run_step(&tx, &step.key, step.attempt, &step.statements, Locked::No),
            );
            if let Err(e) = started {
                // The step ran, if at all, outside a savepoint of its own: nothing of this
                // transaction may commit.
                let e = transaction_lost(name, &e);
                results.push(Err(e.clone()));
                lost = Some(e);
                continue;
            }
            let applied = matches!(result, Ok((Applied::Applied, _)));
            end_previous = Some(if applied { RELEASE } else { UNDO });
            if applied {
                kept.push(i);
            }
            results.push(result);
        }
        if lost.is_none()
            && end_previous == Some(UNDO)
            && let Err(e) = tx.batch_execute(UNDO).await
        {
            lost = Some(transaction_lost(name, &e));
        }
        if let Some(e) = lost {
            // Dropping the transaction rolls it back.
            drop(tx);
            for &i in &kept {
                results[i] = Err(e.clone());
            }
            return (results, Vec::new());
        }
        commit(name, tx, results, kept).await
    }
}

/// Commits a pass whose steps all ran: the steps in `kept` (applied) are answered by the
/// commit; the others keep their answers. A commit whose answer was lost may have happened:
/// its steps are answered retryable (the next attempt's marker check settles each). A commit
/// the server refused rolled everything back: `kept` is answered, to run again alone.
async fn commit(name: &str, tx: deadpool_postgres::Transaction<'_>, mut results: Answers, kept: Vec<usize>) -> Ended {
    let Err(e) = tx.commit().await else { return (results, Vec::new()) };
    // Only an ERROR answered to the COMMIT (not FATAL: the session ends with it) rolled back
    // for sure.
    let refused =
        e.as_db_error().is_some_and(|db| db.parsed_severity() == Some(tokio_postgres::error::Severity::Error));
    if !refused || e.is_closed() {
        let e = classify(name, "commit (of a group commit)", &e);
        let e = Error::retryable(name, format!("{}; the commit may have happened", e.message));
        for &i in &kept {
            results[i] = Err(e.clone());
        }
        return (results, Vec::new());
    }
    (results, kept)
}

/// The error of every step of a transaction lost to a failed savepoint command: retryable
/// (nothing of it committed; the marker settles each step anyway).
fn transaction_lost(name: &str, error: &tokio_postgres::Error) -> Error {
    let e = classify(name, "a savepoint of the group commit", error);
    Error::retryable(name, format!("{}; the batch's transaction was rolled back", e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_pool_commits_at_most_four_batches_at_once() {
        assert_eq!(committers(1), 1);
        assert_eq!(committers(4), 2);
        assert_eq!(committers(16), COMMITTERS_MAX);
        assert_eq!(committers(256), COMMITTERS_MAX);
    }
}
