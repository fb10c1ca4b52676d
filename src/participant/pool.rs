//! The connection pool of the embedded databases (SQLite, DuckDB): connections used only
//! from blocking threads, so database work never blocks the async runtime. Owns connections
//! and permits; never decides what runs on them.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Semaphore;

use super::Error;

/// A fixed-size pool of connections used only from blocking threads: SQLite's and DuckDB's.
///
/// A permit from the semaphore is the right to hold one connection. The permit and the
/// connection travel into the blocking task together and come back to the pool when that task
/// ends, even if the future that started it was dropped (a step timeout): the work always runs
/// to its commit or rollback, and no connection is returned in the middle of a transaction.
pub(crate) struct BlockingPool<C> {
    participant: String,
    idle: Arc<Mutex<Vec<C>>>,
    permits: Arc<Semaphore>,
    connect: Arc<dyn Fn() -> Result<C, Error> + Send + Sync>,
    /// Whether a connection may go back to the pool after use (no transaction left open).
    reusable: fn(&C) -> bool,
}

impl<C: Send + 'static> BlockingPool<C> {
    /// A pool of up to `size` connections, starting with `first`; more are opened on demand with
    /// `connect`, also after a connection was dropped as unusable.
    pub(crate) fn new(
        participant: &str,
        size: usize,
        first: C,
        connect: impl Fn() -> Result<C, Error> + Send + Sync + 'static,
        reusable: fn(&C) -> bool,
    ) -> BlockingPool<C> {
        BlockingPool {
            participant: participant.to_owned(),
            idle: Arc::new(Mutex::new(vec![first])),
            permits: Arc::new(Semaphore::new(size)),
            connect: Arc::new(connect),
            reusable,
        }
    }

    /// Runs `work` with a connection on a blocking thread.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut C) -> Result<T, Error> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::retryable(&self.participant, "connection pool is closed"))?;
        let idle = Arc::clone(&self.idle);
        let connect = Arc::clone(&self.connect);
        let reusable = self.reusable;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = lock(&idle).pop();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => connect()?,
            };
            let result = work(&mut conn);
            if reusable(&conn) {
                lock(&idle).push(conn);
            }
            result
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                Err(Error::permanent(&self.participant, format!("bug: database task panicked: {e}")))
            }
            Err(e) => Err(Error::retryable(&self.participant, format!("database task was cancelled: {e}"))),
        }
    }
}

fn lock<C>(idle: &Mutex<Vec<C>>) -> MutexGuard<'_, Vec<C>> {
    // A poisoned lock only means a thread panicked while pushing or popping; the vector of idle
    // connections is still a valid vector.
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}
