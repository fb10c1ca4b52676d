//! Group commit for the PostgreSQL participant: the steps of many sagas in one transaction,
//! so that one `COMMIT` (one WAL flush in the server) answers them all.
//!
//! An `apply` queues its step ([`batch::Queue`], shared with SQLite's and DuckDB's group
//! commit) and spawns a committer. Up to [`committers`] committers run at once, each on a
//! pooled connection of its own; a committer takes up to `BATCH_MAX` queued steps and runs
//! them in one READ COMMITTED transaction, each under its own `SAVEPOINT`:
//!
//! - a step runs exactly as it would alone (`Inner::run_step`: the key's advisory lock, the
//!   fence check, the marker insert, its statements); its savepoint is released when it
//!   answers `Applied` and rolled back otherwise (`AlreadyApplied`, fenced off, or any error,
//!   which PostgreSQL confines to the savepoint), so a failing step fails alone and the
//!   transaction goes on;
//! - the savepoint commands travel pipelined with the next step's first round trip, so a step
//!   costs the round trips it would cost alone, less its `BEGIN` and `COMMIT`;
//! - one `COMMIT` ends the batch, and only then is any step answered "applied";
//! - a savepoint command that fails (the connection went, or a cancel request meant for a
//!   step landed on it) loses the transaction: it is never committed, the steps it kept and
//!   those not run yet are answered retryable, and their markers settle them;
//! - a `COMMIT` the server refuses (a deferred constraint or trigger of one of the steps) has
//!   rolled the whole transaction back: each step it kept runs again in a transaction of its
//!   own, so that only the step at fault fails. A `COMMIT` whose answer was lost (the
//!   connection closed) may have happened: its steps are answered retryable, in doubt, and the
//!   fencing lookup settles them.
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
//! silent `ROLLBACK`), or keep the work of a step that failed.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{Inner, begin, classify};
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

impl Inner {
    /// Runs `steps` in one transaction (see the module doc); answers each, in order.
    async fn run_batch(&self, steps: &[BatchStep]) -> Vec<Result<(Applied, Outputs), Error>> {
        let name = self.name.as_str();
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(e) => return vec![Err(e); steps.len()],
        };
        let tx = match begin(name, &mut client).await {
            Ok(tx) => tx,
            Err(e) => return vec![Err(e); steps.len()],
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
                self.run_step(&tx, &step.key, step.attempt, &step.statements),
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
            return results;
        }
        let Err(e) = tx.commit().await else { return results };
        if client.is_closed() || e.as_db_error().is_none() {
            // The answer was lost: the commit may have happened. Retryable, whatever the
            // failure: the next attempt's lookup or marker check settles each step.
            let e = classify(name, "commit (of a group commit)", &e);
            let e = Error::retryable(name, format!("{}; the commit may have happened", e.message));
            for &i in &kept {
                results[i] = Err(e.clone());
            }
            return results;
        }
        // The server refused the commit and rolled everything back: each step it held runs
        // again alone, so that the one at fault fails alone.
        drop(client);
        for &i in &kept {
            let step = &steps[i];
            results[i] = self.apply_sql(&step.key, step.attempt, &step.statements).await;
        }
        results
    }
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
