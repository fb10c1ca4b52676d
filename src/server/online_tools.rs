//! The operator tools of a running server, on its HTTP port (admin role): `sagalog audit`,
//! `sagalog replay --dry-run` and `sagalog export --duckdb` while the server holds the data
//! directory (`GET /v1/admin/audit`, `/v1/admin/recovery-plan`, `/v1/admin/export`).
//!
//! Why inside the server, not beside it: the index (sled) and a DuckDB participant can be
//! opened by one process only, and the server holds both. So the tools read the server's own
//! index, look markers up through the server's own participant handles (read-only calls), and
//! read the journal's **durable prefix**: the records up to the acknowledged LSN, straight from
//! the segment files, never what the writer is appending (`ops::history::read_upto`). The
//! reports are the offline tools' own types, built by the same code (`ops::audit::audit_with`,
//! `ops::plan::dry_run_online`, `ops::export::export_online`), so the CLI prints them alike.
//!
//! Not disturbing the server: one such tool runs at a time (with the journal routes), and the
//! reads of the journal and the index run on a thread of their own at a lower CPU priority
//! ([`nice_thread`]), so under load the scheduler gives the sagas' threads the CPU first.
//!
//! Never does: write to the journal, the index or a participant.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
#[cfg(feature = "duckdb")]
use axum::http::header;
#[cfg(feature = "duckdb")]
use axum::response::IntoResponse;
use tonic::metadata::MetadataMap;

use super::http_api::{Answer, HttpApi, ok};
use crate::index::{Index, SagaRecord};
use crate::journal::Journal;
use crate::ops;
use crate::ops::history::{ConfigSource, Everything};

/// The niceness of the threads that read for the online tools (0 is the server's; 19 the
/// lowest priority). At 10 a busy core gives such a thread about a tenth of the time it gives
/// a thread at 0.
const READER_NICENESS: i32 = 10;

/// Runs `read` on a new thread whose CPU priority is lowered to [`READER_NICENESS`] (a
/// thread's own niceness on Linux; elsewhere it runs at the normal priority), and waits for it
/// without holding a runtime thread.
pub(super) async fn nice_thread<T: Send + 'static>(
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tonic::Status> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sagalog-online-read".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(read());
        })
        .map_err(|e| tonic::Status::resource_exhausted(format!("cannot start a reader thread: {e}")))?;
    rx.await.map_err(|_| tonic::Status::internal("the reader thread stopped without an answer"))
}

/// Blocking form of [`nice_thread`], for code already off the runtime (`spawn_blocking`).
fn nice_thread_blocking<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> Result<T, ops::Error> {
    let handle = std::thread::Builder::new()
        .name("sagalog-online-read".into())
        .spawn(move || {
            lower_priority();
            read()
        })
        .map_err(|e| ops::Error::Usage(format!("cannot start a reader thread: {e}")))?;
    handle.join().map_err(|_| ops::Error::Usage("the reader thread panicked".into()))
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid and setpriority only read and set the calling thread's scheduling
    // attributes; they take no pointers. On Linux, PRIO_PROCESS with a thread id applies to
    // that thread alone. A failure (a seccomp filter, say) leaves the normal priority: the
    // read still runs, only without the courtesy.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, READER_NICENESS);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// The running server's journal and index, as an audit reads them.
struct Live {
    journal: Journal,
    index: Index,
}

impl ops::audit::Sources for Live {
    fn archived(&self) -> Result<Vec<SagaRecord>, ops::Error> {
        let index = self.index.clone();
        nice_thread_blocking(move || ops::audit::archived(&index))?
    }
    fn acked_lsn(&self) -> Option<u64> {
        Some(self.journal.acked_lsn())
    }
    fn journal(&self, upto: Option<u64>) -> Result<Everything, ops::Error> {
        let dir = self.journal.dir().to_path_buf();
        nice_thread_blocking(move || ops::history::everything_upto(&dir, crate::wal_format::FIRST_LSN, upto))?
    }
    fn archived_one(&self, id: &str) -> Result<Option<SagaRecord>, ops::Error> {
        Ok(self.index.get(id)?)
    }
    fn purged_through_ms(&self) -> Result<Option<u64>, ops::Error> {
        Ok(self.index.purged_through_ms()?)
    }
    fn online(&self) -> bool {
        true
    }
}

/// The data directory: the journal's parent.
fn data_dir(journal: &Journal) -> PathBuf {
    journal.dir().parent().map_or_else(|| journal.dir().to_path_buf(), std::path::Path::to_path_buf)
}

/// A tool's error as a gRPC status: damage is DATA_LOSS; a segment a checkpoint removed
/// under the read (or any other I/O) is UNAVAILABLE, to be asked again.
fn status_of(e: ops::Error) -> tonic::Status {
    if e.is_corrupt() {
        tonic::Status::data_loss(e.to_string())
    } else {
        tonic::Status::unavailable(format!(
            "{e} (a checkpoint may have removed a journal segment under the read; ask again)"
        ))
    }
}

/// `GET /v1/admin/audit`: `sagalog audit --json` of the running server. Sagas finished after
/// the markers began to be read are skipped like unfinished ones (`judged_up_to_lsn`).
pub(super) async fn audit(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    s.admins.authorize(&MetadataMap::from_headers(headers))?;
    let _permit = s.read_permit().await?;
    let executor = &s.api.executor;
    let setup = ops::audit::Setup {
        data_dir: data_dir(executor.journal()),
        config: ConfigSource::Server,
        catalog: s.api.catalog.clone(),
        participants: executor.participants().clone(),
        notes: Vec::new(),
    };
    let live = Arc::new(Live { journal: executor.journal().clone(), index: s.api.index.clone() });
    let report = ops::audit::audit_with(setup, live).await.map_err(status_of)?;
    ok(serde_json::to_value(&report).map_err(|e| tonic::Status::internal(e.to_string()))?)
}

/// `GET /v1/admin/recovery-plan`: `sagalog replay --dry-run --json` of the running server, what
/// a restart at its acknowledged LSN would do (`read_up_to_lsn`).
pub(super) async fn recovery_plan(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    s.admins.authorize(&MetadataMap::from_headers(headers))?;
    let _permit = s.read_permit().await?;
    let executor = &s.api.executor;
    let journal = executor.journal();
    let plan = ops::plan::dry_run_online(
        data_dir(journal),
        journal.dir().to_path_buf(),
        journal.acked_lsn(),
        &s.api.catalog,
        executor.participants(),
    )
    .await
    .map_err(status_of)?;
    ok(serde_json::to_value(&plan).map_err(|e| tonic::Status::internal(e.to_string()))?)
}

/// `GET /v1/admin/export`: `sagalog export --duckdb` of the running server: the DuckDB file
/// (`application/vnd.duckdb`), built in a temporary directory from the durable prefix of the
/// journal and the index, then sent and removed. The counts are in `X-Sagalog-Export-Counts`.
#[cfg(feature = "duckdb")]
pub(super) async fn export(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    s.admins.authorize(&MetadataMap::from_headers(headers))?;
    let _permit = s.read_permit().await?;
    let journal = s.api.executor.journal().clone();
    let (index, catalog) = (s.api.index.clone(), s.api.catalog.clone());
    let upto = journal.acked_lsn();
    let built = nice_thread(move || -> Result<(Vec<u8>, ops::export::Counts), ops::Error> {
        let dir =
            std::env::temp_dir().join(format!("sagalog-export-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        let io = |what: &str, e: std::io::Error| ops::Error::Usage(format!("{what} {}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(|e| io("create", e))?;
        let built = (|| {
            let records = ops::audit::archived(&index)?;
            let target = dir.join("export.duckdb");
            let counts = ops::export::export_online(&catalog, journal.dir(), upto, &records, &target)?;
            let bytes = std::fs::read(&target).map_err(|e| io("read the export in", e))?;
            Ok((bytes, counts))
        })();
        let _ = std::fs::remove_dir_all(&dir);
        built
    })
    .await?
    .map_err(status_of)?;
    let (bytes, counts) = built;
    let counts = format!(
        "sagas={}, steps={}, attempts={}, recoveries={}",
        counts.sagas, counts.steps, counts.attempts, counts.recoveries
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.duckdb".to_owned()),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"sagalog-export.duckdb\"".to_owned()),
            (header::HeaderName::from_static("x-sagalog-export-counts"), counts),
            (header::HeaderName::from_static("x-sagalog-read-up-to-lsn"), upto.to_string()),
        ],
        bytes,
    )
        .into_response())
}

/// Without DuckDB support there is nothing to write the export with.
#[cfg(not(feature = "duckdb"))]
pub(super) async fn export(State(s): State<HttpApi>, headers: HeaderMap) -> Answer {
    s.admins.authorize(&MetadataMap::from_headers(headers))?;
    Err(tonic::Status::unimplemented(
        "this server was built without DuckDB support (the `duckdb` cargo feature): it cannot export",
    )
    .into())
}
