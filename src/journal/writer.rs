//! The journal writer: one thread owns the active segment; everyone else holds a [`Journal`].
//!
//! Appenders send a record over a bounded channel and wait for its LSN. The writer takes
//! whatever is waiting (up to the batch limits), encodes it into one buffer, writes it with one
//! `write`, makes it durable with **one** `fdatasync` (group commit), and only then answers
//! every appender in the batch. While it syncs, new appends queue up and form the next batch.
//!
//! Invariants:
//! - with `SyncPolicy::Always`, no LSN is handed out before an `fdatasync` covering it returned;
//! - a failed write, `fdatasync` or segment creation poisons the journal for good: nothing
//!   retries the sync (the kernel may have dropped the dirty pages and would report success
//!   next time), every waiting and later append fails, and the active segment is cut back to
//!   the end of its last acknowledged or synced record, whichever is further, so the bytes of
//!   unacknowledged records do not linger; the next open recovers from what is on disk;
//! - no error path cuts a byte that an `fdatasync` covered: rotation syncs records of the
//!   batch under way into the segment it seals, and the next segment's header (possibly
//!   already renamed into place when creation fails) names the LSN after them;
//! - a segment is synced before its successor is created, so only the last segment can end in
//!   a torn record;
//! - every frame carries the writer's *sync watermark* (format version 2): the highest LSN an
//!   `fdatasync` had made durable when the frame was encoded, never more. Records found on
//!   disk at open count as durable only after open has synced the last segment. This is what
//!   lets the next open tell a hole in a never-synced last batch (cut it) from damage to
//!   synced data (refuse); see `wal-format/README.md`, Crash analysis;
//! - new segments are written in format version 2; a log whose last segment is version 1 gets
//!   a fresh version 2 segment at open, and the version 1 segment is sealed untouched.
//!
//! The writer is a plain OS thread rather than an async task because `write` and `fdatasync`
//! block; running them on the async runtime would stall unrelated work.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use sagalog_wal_format::{FIRST_LSN, PAYLOAD_BYTES_MAX, RecordKind, SegmentHeader, frame, frame_bytes};
use tokio::sync::{mpsc, oneshot, watch};

use super::faults::IoFaults;
use super::scan::{LogSummary, Severity, scan};
use super::segment::{self, create, fsync_dir, open_append, remove_leftovers};
use super::{Error, Options, SyncPolicy};
use crate::data_dir::{Access, DataDir};

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// The longest a batch waits for appenders of the previous batch to come back.
const GATHER_WAIT_MAX: Duration = Duration::from_micros(250);

enum Command {
    Append {
        kind: RecordKind,
        payload: Vec<u8>,
        reply: Reply<u64>,
    },
    /// Make everything written durable; `None` is the interval ticker, which wants no answer.
    Sync {
        reply: Option<Reply<()>>,
    },
    TruncateBefore {
        lsn: u64,
        reply: Reply<usize>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// State shared between the handle and the writer thread.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    epoch: u64,
    /// The cause of the failure that poisoned the journal, once it happened.
    poisoned: OnceLock<String>,
    /// Turns true right after `poisoned` is set, to wake [`Journal::wait_poisoned`].
    poisoned_signal: watch::Sender<bool>,
    /// Highest LSN acknowledged to an appender (0 before the first).
    acked_lsn: AtomicU64,
}

/// A cheap, cloneable handle to an open journal. The writer thread ends when
/// [`Journal::shutdown`] is called or the last handle is dropped; either way it syncs first.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// An opened journal and what opening it found.
#[derive(Debug)]
pub struct Opened {
    pub journal: Journal,
    /// The scan of the log as it was on disk before opening changed anything.
    pub summary: LogSummary,
    /// A torn or zero-filled tail that was truncated: (segment file, offset cut at, bytes cut).
    pub truncated_tail: Option<(PathBuf, u64, u64)>,
}

impl Journal {
    /// Locks the data directory at `root` exclusively and opens its journal.
    pub fn open_dir(root: impl AsRef<Path>, options: Options) -> Result<Opened, Error> {
        let data_dir = DataDir::open(root, Access::Exclusive)?;
        Journal::open(Arc::new(data_dir), options)
    }

    /// Opens (or creates) the journal of a data directory held exclusively, recovering a torn
    /// tail and refusing a corrupt log. The writer keeps `data_dir` (and so its lock) alive.
    pub fn open(data_dir: Arc<DataDir>, options: Options) -> Result<Opened, Error> {
        Journal::open_checked(data_dir, options, |_| Ok(()))
    }

    /// [`Journal::open`], first handing the scan of the log to `check`, which cross-checks it
    /// against the rest of the data directory: when it returns a message, opening stops with
    /// [`Error::Inconsistent`] before anything on disk changed (no torn tail cut, no first
    /// segment created).
    pub fn open_checked(
        data_dir: Arc<DataDir>,
        options: Options,
        check: impl FnOnce(&LogSummary) -> Result<(), String>,
    ) -> Result<Opened, Error> {
        options.validate().map_err(Error::Options)?;
        if data_dir.access() != Access::Exclusive {
            return Err(Error::Options("the journal needs the data directory locked exclusively".into()));
        }
        let dir = data_dir.journal_dir();
        let summary = scan(&dir, |_, _, _| {})?;
        if let Some(problem) = summary.problem.as_ref().filter(|p| p.severity == Severity::Corrupt) {
            return Err(Error::Corrupt { path: problem.path.clone(), source: problem.error.clone() });
        }
        check(&summary).map_err(|message| Error::Inconsistent { message })?;
        remove_leftovers(&dir, &summary.leftovers)?;
        for stray in &summary.strays {
            tracing::warn!(path = %stray.display(), "ignoring a file in the journal directory that is not a segment");
        }
        let mut truncated_tail = None;
        if let (Some(problem), Some(last)) = (&summary.problem, summary.segments.last()) {
            let cut = last.bytes - last.valid_end;
            tracing::warn!(segment = %last.path.display(), offset = last.valid_end, bytes = cut, error = %problem.error,
                "truncating the torn tail of the journal (it was never acknowledged)");
            segment::truncate(&last.path, last.valid_end)?;
            truncated_tail = Some((last.path.clone(), last.valid_end, cut));
        }
        let (epoch, active, sealed) = match summary.segments.split_last() {
            Some((last, rest)) => {
                let epoch = summary.epoch.unwrap_or_default();
                let file = open_append(&last.path)?;
                // What is found on disk may only be in the page cache (a process crash between a
                // write and its fdatasync): make it durable before any frame's sync watermark
                // claims it. Sealed segments were synced before their successors existed.
                file.sync_data().map_err(Error::io("fdatasync", &last.path))?;
                let active = Active {
                    id: last.id,
                    path: last.path.clone(),
                    file,
                    len: last.valid_end,
                    acked_len: last.valid_end,
                    synced_len: last.valid_end,
                    records: last.records,
                };
                let sealed = rest.iter().map(|s| (s.id, s.first_lsn, s.path.clone())).collect();
                (epoch, active, sealed)
            }
            None => {
                let epoch = rand::random::<u64>();
                let header = SegmentHeader { segment_id: 1, first_lsn: FIRST_LSN, epoch };
                let (path, file) = create(&dir, &header, options.faults.as_deref())?;
                let len = sagalog_wal_format::SEGMENT_HEADER_BYTES as u64;
                tracing::info!(dir = %dir.display(), epoch = format_args!("{epoch:#018x}"), "created a new journal");
                (epoch, Active { id: 1, path, file, len, acked_len: len, synced_len: len, records: 0 }, VecDeque::new())
            }
        };
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            epoch,
            poisoned: OnceLock::new(),
            poisoned_signal: watch::Sender::new(false),
            acked_lsn: AtomicU64::new(summary.last_lsn.unwrap_or(0)),
        });
        let (tx, rx) = mpsc::channel(options.channel_capacity);
        if let SyncPolicy::Interval(every) = options.sync {
            spawn_ticker(tx.downgrade(), every)?;
        }
        let upgrade = summary.segments.last().is_some_and(|s| s.format_version < sagalog_wal_format::FORMAT_VERSION);
        let mut writer = Writer {
            dir,
            epoch,
            next_lsn: summary.next_lsn,
            synced_lsn: summary.next_lsn - 1,
            active,
            sealed,
            buf: Vec::new(),
            dirty_since: None,
            last_batch_records: 0,
            last_sync: Duration::ZERO,
            faults: options.faults.clone(),
            options,
            shared: shared.clone(),
            _data_dir: data_dir,
        };
        if upgrade {
            // A version 1 segment holds version 1 frames only: seal it as it is (synced above)
            // and append to a version 2 segment, whose frames carry sync watermarks.
            writer.rotate()?;
            tracing::info!(
                segment = writer.active.id,
                "started a format version 2 journal segment after a version 1 one"
            );
        }
        thread::Builder::new()
            .name("sagalog-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(Error::io("spawn writer thread", &shared.dir))?;
        Ok(Opened { journal: Journal { tx, shared }, summary, truncated_tail })
    }

    /// Appends one record and returns its LSN once it is durable (under `SyncPolicy::Always`).
    pub async fn append(&self, kind: RecordKind, payload: Vec<u8>) -> Result<u64, Error> {
        self.check_append(&payload)?;
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Append { kind, payload, reply }).await.map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Hands a record to the writer without waiting for it to be durable; await the returned
    /// [`Queued`] for its LSN once it is.
    ///
    /// The writer takes records in the order they were queued, writes them in that order and
    /// poisons itself on the first failure, so when a record queued later by the same task is
    /// acknowledged, this one is durable too. The executor relies on that to let a step's
    /// outcome share an `fdatasync` with the next step's `StepStarted`.
    pub async fn append_queued(&self, kind: RecordKind, payload: Vec<u8>) -> Result<Queued, Error> {
        self.check_append(&payload)?;
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Append { kind, payload, reply }).await.map_err(|_| self.closed())?;
        Ok(Queued { rx, journal: self.clone() })
    }

    /// [`Journal::append`] for threads outside the async runtime (tools, tests).
    ///
    /// # Panics
    /// When called from a thread that drives an async runtime (tokio refuses to block one);
    /// use [`Journal::append`] there.
    pub fn append_blocking(&self, kind: RecordKind, payload: Vec<u8>) -> Result<u64, Error> {
        self.check_append(&payload)?;
        let (reply, rx) = oneshot::channel();
        self.tx.blocking_send(Command::Append { kind, payload, reply }).map_err(|_| self.closed())?;
        rx.blocking_recv().map_err(|_| self.closed())?
    }

    /// Makes everything appended so far durable (useful under the non-default sync policies).
    pub async fn sync(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Sync { reply: Some(reply) }).await.map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Deletes sealed segments that hold only records below `lsn`; returns how many. The
    /// active segment is never deleted. Used once a checkpoint covers those records.
    pub async fn truncate_before(&self, lsn: u64) -> Result<usize, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::TruncateBefore { lsn, reply }).await.map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Syncs, stops the writer and releases its files and lock. Appends after this fail.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Shutdown { reply }).await.map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// [`Journal::shutdown`] for threads outside the async runtime (panics inside one, like
    /// [`Journal::append_blocking`]).
    pub fn shutdown_blocking(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.blocking_send(Command::Shutdown { reply }).map_err(|_| self.closed())?;
        rx.blocking_recv().map_err(|_| self.closed())?
    }

    /// The highest LSN acknowledged so far (0 if none).
    pub fn acked_lsn(&self) -> u64 {
        self.shared.acked_lsn.load(Ordering::Acquire)
    }

    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Why the journal refuses appends, if it does.
    pub fn poisoned(&self) -> Option<&str> {
        self.shared.poisoned.get().map(String::as_str)
    }

    /// Resolves, with the cause, once the journal is poisoned (at once if it already is). The
    /// server selects on it to stop serving and exit: a poisoned journal never heals in
    /// process, recovery from disk at the next start is the cure.
    pub async fn wait_poisoned(&self) -> String {
        let mut signal = self.shared.poisoned_signal.subscribe();
        if signal.wait_for(|poisoned| *poisoned).await.is_err() {
            // Unreachable: `self` keeps the sender alive.
            std::future::pending::<()>().await;
        }
        self.poisoned().unwrap_or_default().to_owned()
    }

    fn check_append(&self, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > PAYLOAD_BYTES_MAX as usize {
            return Err(Error::RecordTooLarge { len: payload.len(), max: PAYLOAD_BYTES_MAX });
        }
        match self.poisoned() {
            Some(cause) => Err(Error::Poisoned { cause: cause.to_owned() }),
            None => Ok(()),
        }
    }

    fn closed(&self) -> Error {
        match self.poisoned() {
            Some(cause) => Error::Poisoned { cause: cause.to_owned() },
            None => Error::Closed,
        }
    }
}

/// A record handed to the writer by [`Journal::append_queued`].
#[derive(Debug)]
pub struct Queued {
    rx: oneshot::Receiver<Result<u64, Error>>,
    journal: Journal,
}

impl Queued {
    /// Waits until the record is durable (under `SyncPolicy::Always`) and returns its LSN.
    pub async fn durable(self) -> Result<u64, Error> {
        self.rx.await.map_err(|_| self.journal.closed())?
    }
}

/// Sends a sync request every `every` while the journal is open.
fn spawn_ticker(tx: mpsc::WeakSender<Command>, every: std::time::Duration) -> Result<(), Error> {
    thread::Builder::new()
        .name("sagalog-journal-sync".into())
        .spawn(move || {
            loop {
                thread::sleep(every);
                let Some(tx) = tx.upgrade() else { return };
                // A full channel means the writer is busy and will sync soon anyway.
                let _ = tx.try_send(Command::Sync { reply: None });
            }
        })
        .map(drop)
        .map_err(Error::io("spawn sync ticker thread", "journal"))
}

/// The segment being appended to.
struct Active {
    id: u64,
    path: PathBuf,
    file: File,
    /// Bytes written (header included).
    len: u64,
    /// Bytes holding acknowledged records (durable ones under `SyncPolicy::Always`); a rollback
    /// after a failure cuts back to this or `synced_len`, whichever is further.
    acked_len: u64,
    /// Bytes covered by the last successful `fdatasync` (or found on disk at open). A rollback
    /// never cuts below this: rotation syncs records that are not acknowledged yet, and the
    /// next segment's header already counts them.
    synced_len: u64,
    records: u64,
}

struct Pending {
    lsn: u64,
    reply: Reply<u64>,
}

struct Writer {
    dir: PathBuf,
    epoch: u64,
    next_lsn: u64,
    /// The sync watermark: the highest LSN an `fdatasync` has made durable (0 when none). Every
    /// frame encoded carries it; it must never run ahead of what is durable.
    synced_lsn: u64,
    active: Active,
    /// Sealed segments, oldest first: (id, first LSN, path).
    sealed: VecDeque<(u64, u64, PathBuf)>,
    /// Frames encoded but not yet written to the active segment.
    buf: Vec<u8>,
    /// When bytes were first written after the last sync (for the interval policy).
    dirty_since: Option<Instant>,
    /// Records in the last batch, and how long the last `fdatasync` took: what the next batch
    /// may wait for (see `gather_wait`).
    last_batch_records: usize,
    last_sync: Duration,
    faults: Option<Arc<IoFaults>>,
    options: Options,
    shared: Arc<Shared>,
    /// Holds the data-directory lock for as long as the writer runs.
    _data_dir: Arc<DataDir>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch: Vec<(RecordKind, Vec<u8>, Reply<u64>)> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut control = None;
            match first {
                Command::Append { kind, payload, reply } => batch.push((kind, payload, reply)),
                other => control = Some(other),
            }
            // Group commit: everything already waiting joins this batch. If fewer appenders
            // are waiting than the last batch had, the others are most likely between their
            // acknowledgement and their next append: wait a bounded moment for them, since one
            // fdatasync for all of them is far cheaper than one each. With a single appender
            // the last batch had one record, so this never waits.
            let mut bytes = batch.iter().map(|(_, p, _)| frame_bytes(p.len())).sum::<usize>();
            let gather_until = Instant::now() + self.gather_wait();
            while control.is_none()
                && batch.len() < self.options.batch_records_max
                && bytes < self.options.batch_bytes_max
            {
                match rx.try_recv() {
                    Ok(Command::Append { kind, payload, reply }) => {
                        bytes += frame_bytes(payload.len());
                        batch.push((kind, payload, reply));
                    }
                    Ok(other) => control = Some(other),
                    Err(mpsc::error::TryRecvError::Empty)
                        if batch.len() < self.last_batch_records && Instant::now() < gather_until =>
                    {
                        thread::yield_now();
                    }
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.last_batch_records = batch.len();
                crate::metrics::get().journal_batch_records.observe(batch.len() as f64);
                self.write_batch(std::mem::take(&mut batch));
            }
            match control {
                None | Some(Command::Append { .. }) => {}
                Some(Command::Sync { reply }) => {
                    let result = self.refuse_if_poisoned().and_then(|()| self.sync_if_dirty());
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Some(Command::TruncateBefore { lsn, reply }) => {
                    let _ = reply.send(self.refuse_if_poisoned().and_then(|()| self.truncate_before(lsn)));
                }
                Some(Command::Shutdown { reply }) => {
                    // A poisoned journal still releases its files and lock, but says it failed.
                    let result = self.refuse_if_poisoned().and_then(|()| self.sync_if_dirty());
                    // Release files and the directory lock before answering, so that whoever
                    // asked can reopen at once.
                    drop(self);
                    let _ = reply.send(result);
                    return;
                }
            }
        }
        let _ = self.sync_if_dirty();
    }

    /// `Err(Poisoned)` once the journal is poisoned: a sync or a shutdown after that must not
    /// look successful (the records of the failed batch are not durable and never will be).
    fn refuse_if_poisoned(&self) -> Result<(), Error> {
        match self.shared.poisoned.get() {
            Some(cause) => Err(Error::Poisoned { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// Writes and (by policy) syncs one batch, then answers its appenders.
    fn write_batch(&mut self, batch: Vec<(RecordKind, Vec<u8>, Reply<u64>)>) {
        if let Some(cause) = self.shared.poisoned.get() {
            for (_, _, reply) in batch {
                let _ = reply.send(Err(Error::Poisoned { cause: cause.clone() }));
            }
            return;
        }
        let mut pending = Vec::with_capacity(batch.len());
        // Appends not encoded because an earlier one in the batch failed (rotation failure).
        let mut unwritten = Vec::new();
        let mut result = Ok(());
        for (kind, payload, reply) in batch {
            if result.is_ok() {
                match self.encode(kind, &payload) {
                    Ok(lsn) => pending.push(Pending { lsn, reply }),
                    Err(e) => {
                        result = Err(e);
                        unwritten.push(reply);
                    }
                }
            } else {
                unwritten.push(reply);
            }
        }
        let result = result.and_then(|()| self.flush_buf()).and_then(|()| match self.options.sync {
            SyncPolicy::Always => self.sync_if_dirty(),
            SyncPolicy::Interval(every) if self.dirty_since.is_some_and(|t| t.elapsed() >= every) => {
                self.sync_if_dirty()
            }
            SyncPolicy::Interval(_) | SyncPolicy::Never => Ok(()),
        });
        match result {
            Ok(()) => {
                self.active.acked_len = self.active.len;
                // The LSNs handed out are dense and above everything acknowledged before: a
                // gap or a repeat would be a writer bug that recovery could not tell from loss.
                let acked = self.shared.acked_lsn.load(Ordering::Acquire);
                assert!(
                    pending.first().is_none_or(|p| p.lsn > acked)
                        && pending.windows(2).all(|w| w[1].lsn == w[0].lsn + 1),
                    "journal writer bug: batch LSNs {:?} after acknowledged LSN {acked}",
                    pending.iter().map(|p| p.lsn).collect::<Vec<_>>()
                );
                if let Some(last) = pending.last() {
                    self.shared.acked_lsn.store(last.lsn, Ordering::Release);
                    crate::metrics::get().journal_lsn.set(last.lsn as i64);
                }
                for p in pending {
                    let _ = p.reply.send(Ok(p.lsn));
                }
            }
            Err(error) => {
                let cause = self.poison(error);
                for reply in pending.into_iter().map(|p| p.reply).chain(unwritten) {
                    let _ = reply.send(Err(Error::Poisoned { cause: cause.clone() }));
                }
            }
        }
    }

    /// Encodes one record into the buffer, rotating first if it would overflow the segment.
    fn encode(&mut self, kind: RecordKind, payload: &[u8]) -> Result<u64, Error> {
        let frame_len = frame_bytes(payload.len()) as u64;
        let buffered = self.buf.len() as u64;
        let has_records = self.active.records > 0 || buffered > 0;
        if has_records && self.active.len + buffered + frame_len > self.options.segment_bytes_max {
            self.flush_buf()?;
            self.rotate()?;
        }
        let lsn = self.next_lsn;
        frame::encode_v2(&mut self.buf, self.epoch, lsn, kind, payload, self.synced_lsn)
            .map_err(|e| Error::Options(format!("cannot encode record {lsn}: {e}")))?;
        self.next_lsn += 1;
        self.active.records += 1;
        Ok(lsn)
    }

    /// Writes the buffered frames to the active segment with one write.
    fn flush_buf(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = &self.active.path;
        if let Some(k) = self.faults.as_ref().and_then(|f| f.on_write(self.buf.len())) {
            let _ = self.active.file.write_all(&self.buf[..k]);
            return Err(Error::Io {
                op: "write",
                path: path.clone(),
                source: std::io::Error::other("injected write failure"),
            });
        }
        self.active.file.write_all(&self.buf).map_err(Error::io("write", path))?;
        self.active.len += self.buf.len() as u64;
        self.buf.clear();
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// How long a batch may wait for appenders that were in the last batch: a fraction of what
    /// the last `fdatasync` took (waiting longer than a sync costs more than it saves), capped.
    /// Zero unless every append waits for a sync anyway.
    fn gather_wait(&self) -> Duration {
        match self.options.sync {
            SyncPolicy::Always => (self.last_sync / 2).min(GATHER_WAIT_MAX),
            SyncPolicy::Interval(_) | SyncPolicy::Never => Duration::ZERO,
        }
    }

    fn sync_if_dirty(&mut self) -> Result<(), Error> {
        if self.dirty_since.is_none() {
            return Ok(());
        }
        if let Some(faults) = &self.faults {
            faults.on_sync().map_err(Error::io("fdatasync", &self.active.path))?;
        }
        let started = Instant::now();
        self.active.file.sync_data().map_err(Error::io("fdatasync", &self.active.path))?;
        self.last_sync = started.elapsed();
        self.active.synced_len = self.active.len;
        // Every record encoded so far has been written (syncs only run with an empty buffer),
        // so this sync covered all of them.
        debug_assert!(self.buf.is_empty(), "sync with frames still buffered");
        self.synced_lsn = self.next_lsn - 1;
        crate::metrics::get().journal_fsync.observe(self.last_sync.as_secs_f64());
        self.dirty_since = None;
        Ok(())
    }

    /// Seals the active segment (synced under every policy, so that only the last segment can
    /// ever end torn) and starts the next one.
    fn rotate(&mut self) -> Result<(), Error> {
        self.sync_if_dirty()?;
        let header = SegmentHeader { segment_id: self.active.id + 1, first_lsn: self.next_lsn, epoch: self.epoch };
        let (path, file) = create(&self.dir, &header, self.faults.as_deref())?;
        let len = sagalog_wal_format::SEGMENT_HEADER_BYTES as u64;
        let old_first_lsn = self.active_first_lsn();
        let old = std::mem::replace(
            &mut self.active,
            Active { id: header.segment_id, path, file, len, acked_len: len, synced_len: len, records: 0 },
        );
        self.sealed.push_back((old.id, old_first_lsn, old.path));
        tracing::debug!(segment = header.segment_id, first_lsn = header.first_lsn, "started a new journal segment");
        Ok(())
    }

    fn truncate_before(&mut self, lsn: u64) -> Result<usize, Error> {
        let mut deleted = 0;
        // A sealed segment holds records below the first LSN of its successor.
        while self.sealed.len() > deleted {
            let next_first = self.sealed.get(deleted + 1).map_or(self.active_first_lsn(), |s| s.1);
            if next_first > lsn {
                break;
            }
            deleted += 1;
        }
        for _ in 0..deleted {
            let Some((id, _, path)) = self.sealed.pop_front() else { break };
            std::fs::remove_file(&path).map_err(Error::io("remove", &path))?;
            // One directory sync per unlink keeps the surviving segments a contiguous suffix
            // whatever a crash persists.
            fsync_dir(&self.dir)?;
            tracing::info!(segment = id, "deleted a journal segment below the checkpoint");
        }
        Ok(deleted)
    }

    fn active_first_lsn(&self) -> u64 {
        self.next_lsn - self.active.records
    }

    /// Poisons the journal and cuts the active segment back to its acknowledged or synced length
    /// (whichever is further), best effort, so the bytes of records nobody was told about and
    /// no sync covered do not linger; the sync that failed is never retried. Synced bytes are
    /// never cut: after a failed rotation the next segment may already exist and start at the
    /// LSN after them, and cutting them would leave a gap the next open refuses.
    fn poison(&mut self, error: Error) -> String {
        let cause = error.to_string();
        tracing::error!(error = %cause, "journal write failed; refusing all further appends until restart");
        let _ = self.shared.poisoned.set(cause.clone());
        self.shared.poisoned_signal.send_replace(true);
        crate::metrics::get().journal_poisoned.set(1);
        let _ = self.active.file.set_len(self.active.acked_len.max(self.active.synced_len));
        self.buf.clear();
        self.dirty_since = None;
        cause
    }
}
