//! The file-tree participant: puts, deletes and copies files under one root directory.
//!
//! A file system has no transactions, so this participant keeps the contract with a redo
//! record, the *intent*: "no intent and no marker" must mean "the target was never touched",
//! since that answer lets compensation skip the step. Each operation runs in this order:
//!
//! 1. Prepare without touching the target: a put's contents (a copy's, read from its source)
//!    go to `<target>.sagalog-tmp-<random>` in the target's directory; that file and the
//!    directory are fsynced. A delete prepares nothing (a missing target needs no intent:
//!    only the marker is written).
//! 2. Write the intent `<root>/.sagalog-markers/<saga>/<step>.<direction>.intent` (for a
//!    scoped saga in `<saga>/@<scope>/`, so another incarnation's markers never answer for it;
//!    JSON,
//!    version 1, naming what is to happen: "rename T over X", "delete X via T"), atomically:
//!    temporary file, fsync, rename, directory fsync. This is the commit point. If it fails
//!    (a full or read-only marker directory), nothing happened: the temporary file is removed
//!    and the error is returned (permanent or retryable as the I/O error says).
//! 3. The effect, one rename: `T` over `X` for a put or copy; `X` aside to `T` for a delete.
//!    Then the directory is fsynced. A rename that fails withdraws the intent (nothing
//!    happened); a failed directory fsync leaves the step committed and reports it retryable.
//! 4. Rename the intent into the marker `<step>.<direction>`, and unlink a delete's `T`. A
//!    failure here is only logged: the durable intent already records the step. The saga
//!    directory is fsynced after this rename for a delete only (a lost rename after a put
//!    brings back an intent that reads the same), so a put costs one fsync more than before
//!    intents (6 with a new saga directory, was 5) and a delete one more (4, was 3).
//!
//! `apply` and `lookup_marker` (and `lookup_markers`) that meet an intent roll it forward
//! first, under the key's lock: redo the rename unless it already happened, then step 4, then
//! answer "present" (`apply`: `AlreadyApplied`). Whether the rename happened is read from the
//! temporary file, never from the target: a put's `T` is gone only once renamed (it was fsynced
//! into its directory before the intent), a delete's `T` exists only once the deletion
//! happened. So a target changed by someone after the effect is never clobbered. A rename that
//! fails while rolling forward changed nothing (a rename is atomic): the intent is withdrawn,
//! as `apply` does, and the step is "absent" (`apply` then runs it afresh). That is how a
//! target that became a directory after the intent ends, instead of failing every lookup with
//! EISDIR. Any other failure to roll forward (reading the intent, the directory fsync, a
//! withdrawal that fails) makes `apply` fail retryably (in doubt) and `lookup_marker` fail as
//! the I/O error says: a step with an intent is never answered "absent" while the rename may
//! have happened. Compensations are operations
//! too and take the same path with direction `compensate`. A participant opened read-only
//! answers "present" for an intent and changes nothing.
//!
//! [`Fs::open`] (not [`Fs::open_read_only`]) removes the `*.sagalog-tmp-*` files no intent
//! refers to, anywhere under the root, marker directory included: leftovers of writes a crash
//! interrupted. It visits at most [`LEFTOVER_SCAN_MAX`] directory entries, does not follow
//! symbolic links, removes nothing when an intent cannot be read, logs how many it removed and
//! never fails the open. [`leftovers`] lists the same things read-only, for `sagalog audit`.
//! `Fs::open` does not roll intents forward: only a lookup or an apply, which the executor
//! makes while it still wants the step, does (a step an operator marked compensated must not
//! gain its effect at the next start).
//!
//! A root is used by one `Fs` at a time (one process, one participant): a second one opening
//! it could remove the temporary file of a write in progress.
//!
//! Markers written before intents existed (contents: the key) read the same; a marker made
//! from an intent holds the intent's JSON, and nothing reads a marker's contents. A build
//! without intents ignores an intent (and so reads such a step as "absent").
//!
//! Every path in an operation is relative to the root and is checked before anything happens:
//! no absolute paths, no `..`, no `.`, no empty path; the marker directory is off limits.
//! Symbolic links inside the root are followed; whoever can create them inside the root is
//! trusted. Concurrent applies and lookups of one key in this process are serialized (striped
//! locks), so exactly one apply reports `Applied`. All file I/O runs on blocking threads.
//!
//! [`Fs::crash_next_apply`] is a test-only injection point ([`CrashPoint`]): the next apply
//! stops there as a crash would. Nothing in production sets it.
//!
//! Never does: touch a target before its intent is durable, or answer "absent" for a step whose
//! intent is still in place.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::{Applied, BoxFuture, Direction, Error, Kind, MarkerEntry, Operation, Participant, StepKey};

/// The directory under the root that holds the markers.
pub const MARKER_DIR: &str = ".sagalog-markers";
/// The health probe's file, directly in the marker directory. The `%` prefix marks a
/// hex-encoded saga directory, and this name is not valid hex, so it never names a saga.
pub const PROBE_FILE: &str = "%sagalog-probe";
/// What a temporary file's name has between the target's name and its random suffix.
pub const TMP_INFIX: &str = ".sagalog-tmp-";
/// What an intent's file name has after the marker's: `<step>.<direction>.intent`.
pub const INTENT_SUFFIX: &str = ".intent";
/// Operations running on blocking threads at once, per participant.
pub const CONCURRENCY_MAX: usize = 16;
/// Longest saga id kept as a plain directory name; others are hex-encoded.
pub const SAGA_DIR_PLAIN_MAX: usize = 128;
/// Longest saga id that is hex-encoded into one directory name (255 bytes on most systems);
/// longer ones with special characters are base64url-encoded behind `~` (up to 190 bytes).
pub const SAGA_ID_ENCODED_MAX: usize = 127;
/// Longest saga id of any kind a file participant can store (`~` + base64url fits 255 bytes).
pub const SAGA_ID_BASE64_MAX: usize = 190;
/// Directory entries the start-up cleanup and [`leftovers`] visit at most, per root.
pub const LEFTOVER_SCAN_MAX: usize = 100_000;
/// Striped locks that serialize applies of the same key.
const KEY_LOCKS: usize = 64;

/// A directory tree acting as a saga participant. Cheap to share behind an `Arc`.
pub struct Fs {
    name: String,
    root: PathBuf,
    key_locks: Arc<Vec<Mutex<()>>>,
    permits: Arc<Semaphore>,
    /// Opened by [`Fs::open_read_only`]: `apply` fails, nothing is ever created.
    read_only: bool,
    /// A test's injected crash, taken by the next apply that reaches its point.
    crash: Arc<Mutex<Option<CrashPoint>>>,
    /// Attempts a fencing lookup ([`Participant::settle_marker`]) found not applied, per key:
    /// an apply of one of them that reaches the key's lock afterwards refuses to run. In
    /// memory is enough: a file apply runs only in this process, and a crash ends it.
    fences: Arc<Mutex<HashMap<StepKey, u32>>>,
}

/// Where a test makes the next `apply` stop as a crash would ([`Fs::crash_next_apply`]):
/// nothing after the point runs, nothing is cleaned up, and `apply` returns a retryable error.
/// Never set in production.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after the intent is durable, before the effect.
    BeforeEffect,
    /// Right after the operation's effect became visible (the rename or the unlink), before
    /// anything records it.
    AfterEffect,
}

impl Fs {
    /// Uses the existing directory `root`, creates its marker directory and removes the stale
    /// temporary files a crash left (see the module doc).
    ///
    /// This does blocking file I/O: call it at startup, or from a blocking thread.
    pub fn open(name: &str, root: PathBuf) -> Result<Fs, Error> {
        let meta = fs::metadata(&root).map_err(|e| classify(name, &format!("root {}", root.display()), &e))?;
        if !meta.is_dir() {
            return Err(Error::permanent(name, format!("root {} is not a directory", root.display())));
        }
        create_dirs(&root, Path::new(MARKER_DIR)).map_err(|e| classify(name, "create marker directory", &e))?;
        clean_leftovers(name, &root);
        Ok(Fs {
            name: name.to_owned(),
            root,
            key_locks: Arc::new((0..KEY_LOCKS).map(|_| Mutex::new(())).collect()),
            fences: Arc::default(),
            permits: Arc::new(Semaphore::new(CONCURRENCY_MAX)),
            read_only: false,
            crash: Arc::default(),
        })
    }

    /// Uses the existing directory `root` read-only, for the offline tools: the marker
    /// directory is not created (a root without one holds no markers) and `apply` fails.
    pub fn open_read_only(name: &str, root: PathBuf) -> Result<Fs, Error> {
        let meta = fs::metadata(&root).map_err(|e| classify(name, &format!("root {}", root.display()), &e))?;
        if !meta.is_dir() {
            return Err(Error::permanent(name, format!("root {} is not a directory", root.display())));
        }
        Ok(Fs {
            name: name.to_owned(),
            root,
            key_locks: Arc::new((0..KEY_LOCKS).map(|_| Mutex::new(())).collect()),
            fences: Arc::default(),
            permits: Arc::new(Semaphore::new(CONCURRENCY_MAX)),
            read_only: true,
            crash: Arc::default(),
        })
    }

    /// Test-only: the next `apply` that reaches `point` stops there as a crash would.
    #[doc(hidden)]
    pub fn crash_next_apply(&self, point: CrashPoint) {
        *self.crash.lock().unwrap_or_else(PoisonError::into_inner) = Some(point);
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `work` on a blocking thread, at most [`CONCURRENCY_MAX`] at once.
    async fn run<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, Error> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::retryable(&self.name, "file participant is shut down"))?;
        // The permit travels with the work, so a dropped future does not free it early.
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(Error::permanent(&self.name, format!("bug: file task panicked: {e}"))),
            Err(e) => Err(Error::retryable(&self.name, format!("file task was cancelled: {e}"))),
        }
    }

    /// Checks the operation's paths before any I/O.
    fn plan(&self, op: &Operation) -> Result<Plan, Error> {
        let name = self.name.as_str();
        Ok(match op {
            Operation::FilePut { path, contents } => Plan::Put(resolve(name, path)?, contents.clone()),
            Operation::FileDelete { path } => Plan::Delete(resolve(name, path)?),
            Operation::FileCopy { from, to } => Plan::Copy(resolve(name, from)?, resolve(name, to)?),
            Operation::Noop => Plan::Noop,
            Operation::Sql { .. } | Operation::Statements(_) => {
                return Err(Error::permanent(name, "fs participant cannot run a SQL statement"));
            }
            Operation::Task { .. } => {
                return Err(Error::permanent(name, "fs participant cannot run a worker task"));
            }
            Operation::Http { .. } => {
                return Err(Error::permanent(name, "fs participant cannot send an HTTP request"));
            }
        })
    }

    /// The marker directory entries of one step.
    fn step_files(&self, key: &StepKey) -> Result<StepFiles, Error> {
        let mut saga_dir = self.saga_dir(&key.saga_id)?;
        if let Some(scope) = &key.scope {
            // A scoped saga's markers live in a directory of their own inside the saga's, so
            // another incarnation's (or instance's) markers for the same id never answer for it.
            saga_dir.push(format!("{SCOPE_PREFIX}{scope}"));
        }
        let marker_name = format!("{}.{}", key.step, key.direction.as_str());
        let intent = saga_dir.join(format!("{marker_name}{INTENT_SUFFIX}"));
        Ok(StepFiles { marker: saga_dir.join(marker_name), intent, saga_dir })
    }

    /// The directory of a saga id's markers, relative to the root (a scoped incarnation's are
    /// in its `@<scope>` directory inside it).
    fn saga_dir(&self, saga_id: &str) -> Result<PathBuf, Error> {
        Ok(Path::new(MARKER_DIR).join(saga_dir_name(&self.name, saga_id)?))
    }
}

/// Where one step's marker and intent live, relative to the root.
struct StepFiles {
    saga_dir: PathBuf,
    marker: PathBuf,
    intent: PathBuf,
}

/// An operation with its paths checked; paths are relative to the root.
enum Plan {
    Put(PathBuf, Vec<u8>),
    Delete(PathBuf),
    /// From, to.
    Copy(PathBuf, PathBuf),
    Noop,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs").field("name", &self.name).field("root", &self.root).finish_non_exhaustive()
    }
}

impl Participant for Fs {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> Kind {
        Kind::Fs
    }

    fn apply<'a>(&'a self, key: &'a StepKey, attempt: u32, op: &'a Operation) -> BoxFuture<'a, Result<Applied, Error>> {
        Box::pin(async move {
            if self.read_only {
                return Err(Error::permanent(&self.name, "opened read-only: it cannot apply a step"));
            }
            let plan = self.plan(op)?;
            let step = self.step_files(key)?;
            let (name, root, key) = (self.name.clone(), self.root.clone(), key.clone());
            let key_locks = Arc::clone(&self.key_locks);
            let crash = Arc::clone(&self.crash);
            let fences = Arc::clone(&self.fences);
            self.run(move || {
                // The lock guards no data, only the check-then-write sequence below.
                let _key_lock = key_locks[lock_index(&key)].lock().unwrap_or_else(PoisonError::into_inner);
                let fenced = fences.lock().unwrap_or_else(PoisonError::into_inner).get(&key).copied();
                if let Some(through) = fenced.filter(|through| attempt <= *through) {
                    return Err(Error::permanent(
                        &name,
                        format!("attempt {attempt} was fenced off by a marker lookup (through attempt {through}); nothing was applied"),
                    ));
                }
                let crash =
                    |point| crash.lock().unwrap_or_else(PoisonError::into_inner).take_if(|p| *p == point).is_some();
                let applied = apply_locked(&name, &root, &key, &step, plan, &crash)?;
                // The step is marked now: later attempts answer from the marker, so its fence
                // can go (the map holds only steps still in doubt, not every one ever settled).
                fences.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                Ok(applied)
            })
            .await
        })
    }

    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let step = self.step_files(key)?;
            let (name, root, read_only, key) = (self.name.clone(), self.root.clone(), self.read_only, key.clone());
            let key_locks = Arc::clone(&self.key_locks);
            self.run(move || {
                let _key_lock = key_locks[lock_index(&key)].lock().unwrap_or_else(PoisonError::into_inner);
                settle(&name, &root, &step, read_only)
            })
            .await
        })
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            if self.read_only {
                return Err(Error::permanent(&self.name, "opened read-only: it cannot fence a step's attempts"));
            }
            let step = self.step_files(key)?;
            let (name, root, key) = (self.name.clone(), self.root.clone(), key.clone());
            let key_locks = Arc::clone(&self.key_locks);
            let fences = Arc::clone(&self.fences);
            self.run(move || {
                // The key's lock: an apply of this key that is running in this process ends
                // (its intent finished, or withdrawn) before the step is read; one that takes
                // the lock later finds the fence and refuses.
                let _key_lock = key_locks[lock_index(&key)].lock().unwrap_or_else(PoisonError::into_inner);
                let present = settle(&name, &root, &step, false)?;
                if !present {
                    let mut fences = fences.lock().unwrap_or_else(PoisonError::into_inner);
                    let through = fences.entry(key).or_default();
                    *through = (*through).max(through_attempt);
                }
                Ok(present)
            })
            .await
        })
    }

    fn lookup_markers<'a>(&'a self, keys: &'a [StepKey]) -> BoxFuture<'a, Result<Vec<bool>, Error>> {
        Box::pin(async move {
            let steps =
                keys.iter().map(|k| self.step_files(k).map(|s| (k.clone(), s))).collect::<Result<Vec<_>, _>>()?;
            let (name, root, read_only) = (self.name.clone(), self.root.clone(), self.read_only);
            let key_locks = Arc::clone(&self.key_locks);
            self.run(move || {
                steps
                    .iter()
                    .map(|(key, step)| {
                        let _key_lock = key_locks[lock_index(key)].lock().unwrap_or_else(PoisonError::into_inner);
                        settle(&name, &root, step, read_only)
                    })
                    .collect()
            })
            .await
        })
    }

    fn markers<'a>(&'a self, saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>> {
        Box::pin(async move {
            let dir = self.root.join(self.saga_dir(saga_id)?);
            let name = self.name.clone();
            self.run(move || list_markers(&name, &dir)).await
        })
    }

    fn all_markers(&self) -> BoxFuture<'_, Result<Vec<MarkerEntry>, Error>> {
        Box::pin(async move {
            let dir = self.root.join(MARKER_DIR);
            let name = self.name.clone();
            self.run(move || list_all_markers(&name, &dir)).await
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let markers = self.root.join(MARKER_DIR);
            let (name, read_only) = (self.name.clone(), self.read_only);
            self.run(move || match fs::metadata(&markers) {
                Ok(meta) if meta.is_dir() && read_only => Ok(()),
                Ok(meta) if meta.is_dir() => write_probe(&markers.join(PROBE_FILE))
                    .map_err(|e| classify(&name, &format!("probe write in {}", markers.display()), &e)),
                Ok(_) => Err(Error::permanent(&name, format!("{} is not a directory", markers.display()))),
                Err(e) => Err(classify(&name, &format!("probe {}", markers.display()), &e)),
            })
            .await
        })
    }
}

/// The write path a marker takes, minus the rename: create, write, fsync, remove. A
/// participant that can list its markers but not write them (disk full, a read-only
/// remount, lost permissions) fails here instead of passing as healthy.
fn write_probe(path: &Path) -> io::Result<()> {
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(b"sagalog health probe\n").and_then(|()| file.sync_all()));
    let removed = match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    written.and(removed)
}

/// The redo record a step writes (and fsyncs) before its effect becomes visible; see the
/// module doc. Renamed into the step's marker once the effect is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Intent {
    /// Format version ([`INTENT_VERSION`]).
    intent: u32,
    /// The step, for people reading the file.
    key: String,
    #[serde(flatten)]
    action: IntentAction,
}

/// What an intent commits to; paths are relative to the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum IntentAction {
    /// Rename the fsynced temporary file `tmp` over `target` (a put or a copy).
    Rename { tmp: PathBuf, target: PathBuf },
    /// Rename `target` aside to `trash` (the deletion itself), and unlink `trash` once the
    /// marker is written.
    Delete { target: PathBuf, trash: PathBuf },
}

impl IntentAction {
    /// The temporary file the intent refers to.
    fn temp_file(&self) -> &Path {
        match self {
            IntentAction::Rename { tmp, .. } => tmp,
            IntentAction::Delete { trash, .. } => trash,
        }
    }

    fn describe(&self) -> String {
        match self {
            IntentAction::Rename { tmp, target } => format!("rename {} to {}", tmp.display(), target.display()),
            IntentAction::Delete { target, trash } => format!("delete {} (via {})", target.display(), trash.display()),
        }
    }
}

/// The one version of the intent record.
const INTENT_VERSION: u32 = 1;

/// `apply` under the key's lock: marker, then intent, then a fresh run of the operation.
fn apply_locked(
    name: &str,
    root: &Path,
    key: &StepKey,
    step: &StepFiles,
    plan: Plan,
    crash: &dyn Fn(CrashPoint) -> bool,
) -> Result<Applied, Error> {
    // Until the marker and the intent are known to be absent, an earlier attempt may have
    // committed the step: every failure is in doubt (retryable), never "not applied".
    let in_doubt = |e: Error| Error::retryable(name, e.message);
    if exists(&root.join(&step.marker)).map_err(|e| in_doubt(classify(name, "look up marker", &e)))? {
        return Ok(Applied::AlreadyApplied);
    }
    if let Some(intent) = read_intent(name, &root.join(&step.intent)).map_err(in_doubt)? {
        // An earlier attempt committed the step: finish what it started. When its rename
        // cannot happen, nothing was applied and this attempt runs afresh.
        match roll_forward(name, root, step, &intent).map_err(in_doubt)? {
            Rolled::Forward => return Ok(Applied::AlreadyApplied),
            Rolled::Withdrawn => {}
        }
    }
    let parent_of = |path: &Path| path.parent().map(Path::to_path_buf).unwrap_or_default();
    let action = match plan {
        Plan::Noop => {
            record_marker(name, root, key, step)?;
            return Ok(Applied::Applied);
        }
        Plan::Put(target, contents) => {
            let tmp = temp_sibling(&target);
            create_dirs(root, &parent_of(&target))
                .and_then(|()| write_temp(&root.join(&tmp), |file| file.write_all(&contents)))
                .map_err(|e| classify(name, &format!("write {}", target.display()), &e))?;
            IntentAction::Rename { tmp, target }
        }
        Plan::Copy(source, target) => {
            let mut input = match File::open(root.join(&source)) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::permanent(name, format!("copy source {} does not exist", source.display())));
                }
                Err(e) => return Err(classify(name, &format!("open {}", source.display()), &e)),
            };
            let tmp = temp_sibling(&target);
            create_dirs(root, &parent_of(&target))
                .and_then(|()| write_temp(&root.join(&tmp), |file| io::copy(&mut input, file).map(drop)))
                .map_err(|e| classify(name, &format!("copy to {}", target.display()), &e))?;
            IntentAction::Rename { tmp, target }
        }
        Plan::Delete(target) => match fs::symlink_metadata(root.join(&target)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Nothing to delete. An older build may have unlinked it without reaching the
                // directory fsync: sync the directory, if it exists.
                match root.join(&target).parent().map(sync_dir) {
                    Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(classify(name, &format!("delete {}", target.display()), &e));
                    }
                    _ => {}
                }
                record_marker(name, root, key, step)?;
                return Ok(Applied::Applied);
            }
            Err(e) => return Err(classify(name, &format!("delete {}", target.display()), &e)),
            Ok(meta) if meta.is_dir() => {
                return Err(Error::permanent(name, format!("delete {}: it is a directory", target.display())));
            }
            Ok(_) => IntentAction::Delete { trash: temp_sibling(&target), target },
        },
    };
    let intent = Intent { intent: INTENT_VERSION, key: key.to_string(), action };
    commit_intent(name, root, step, &intent)?;
    if crash(CrashPoint::BeforeEffect) {
        return Err(Error::retryable(name, "injected crash before the effect"));
    }
    match effect(root, &intent.action) {
        Ok(()) => {}
        Err(Effect::NotDone(e)) => {
            let what = intent.action.describe();
            // Nothing happened: withdraw the intent, so "no intent, no marker" stays true.
            return match withdraw(root, step, &intent) {
                // The file went away since it was looked at: a delete of nothing.
                Ok(())
                    if matches!(intent.action, IntentAction::Delete { .. }) && e.kind() == io::ErrorKind::NotFound =>
                {
                    record_marker(name, root, key, step).map(|()| Applied::Applied)
                }
                Ok(()) => Err(classify(name, &what, &e)),
                Err(w) => Err(Error::retryable(
                    name,
                    format!("{what}: {e}; withdrawing its intent failed too ({w}): the next lookup completes it"),
                )),
            };
        }
        Err(Effect::Unsynced(e)) => {
            let what = intent.action.describe();
            return Err(Error::retryable(name, format!("{what}: directory fsync failed: {e}; the step is in doubt")));
        }
    }
    if crash(CrashPoint::AfterEffect) {
        return Err(Error::retryable(name, "injected crash after the effect"));
    }
    finish(name, root, step, &intent);
    Ok(Applied::Applied)
}

/// The marker lookup: the marker, or an intent (rolled forward first unless read-only).
fn settle(name: &str, root: &Path, step: &StepFiles, read_only: bool) -> Result<bool, Error> {
    if exists(&root.join(&step.marker)).map_err(|e| classify(name, "look up marker", &e))? {
        return Ok(true);
    }
    match read_intent(name, &root.join(&step.intent))? {
        None => Ok(false),
        Some(_) if read_only => Ok(true),
        Some(intent) => roll_forward(name, root, step, &intent).map(|rolled| rolled == Rolled::Forward),
    }
}

/// Reads a step's intent; `None` when there is none.
fn read_intent(name: &str, path: &Path) -> Result<Option<Intent>, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(classify(name, &format!("read intent {}", path.display()), &e)),
    };
    parse_intent(&bytes).map(Some).map_err(|why| Error::permanent(name, format!("intent {}: {why}", path.display())))
}

fn parse_intent(bytes: &[u8]) -> Result<Intent, String> {
    let intent: Intent = serde_json::from_slice(bytes).map_err(|e| format!("damaged: {e}"))?;
    if intent.intent != INTENT_VERSION {
        return Err(format!("version {} is not known to this build (it knows {INTENT_VERSION})", intent.intent));
    }
    Ok(intent)
}

/// Writes the intent durably. On failure nothing happened: the intent and the temporary file
/// are removed (when the intent cannot be removed, the temporary file stays for it).
fn commit_intent(name: &str, root: &Path, step: &StepFiles, intent: &Intent) -> Result<(), Error> {
    let mut body = serde_json::to_vec_pretty(intent)
        .map_err(|e| Error::permanent(name, format!("bug: intent does not serialize: {e}")))?;
    body.push(b'\n');
    let path = root.join(&step.intent);
    let written =
        create_dirs(root, &step.saga_dir).and_then(|()| write_atomically(&path, |file| file.write_all(&body)));
    let Err(e) = written else { return Ok(()) };
    match withdraw(root, step, intent) {
        Ok(()) => Err(classify(name, &format!("write intent {}", step.intent.display()), &e)),
        Err(w) => Err(Error::retryable(
            name,
            format!("write intent {}: {e}; removing it failed too ({w}): the step is in doubt", step.intent.display()),
        )),
    }
}

/// Removes an intent whose effect did not happen, then its temporary file. For a delete the
/// "temporary file" is the trash name, which does not exist yet: nothing to remove.
fn withdraw(root: &Path, step: &StepFiles, intent: &Intent) -> io::Result<()> {
    remove(&root.join(&step.intent))?;
    if let IntentAction::Rename { tmp, .. } = &intent.action {
        let _ = fs::remove_file(root.join(tmp));
    }
    Ok(())
}

/// How an effect failed: before anything changed, or after, at the directory fsync.
enum Effect {
    NotDone(io::Error),
    Unsynced(io::Error),
}

/// The one rename that makes an intent's effect visible, and the fsync of its directory.
fn effect(root: &Path, action: &IntentAction) -> Result<(), Effect> {
    let (from, to) = match action {
        IntentAction::Rename { tmp, target } => (tmp, target),
        IntentAction::Delete { target, trash } => (target, trash),
    };
    let to = root.join(to);
    fs::rename(root.join(from), &to).map_err(Effect::NotDone)?;
    to.parent().map_or(Ok(()), sync_dir).map_err(Effect::Unsynced)
}

/// What rolling an intent forward did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rolled {
    /// The effect is in place and the step is recorded: "applied".
    Forward,
    /// The rename failed, so the effect never happened, and the intent is withdrawn: "not
    /// applied". A rename is atomic, so a failed one changed nothing; this is how a target
    /// that became a directory after the intent was written (EISDIR for ever) ends.
    Withdrawn,
}

/// Finishes a committed step from its intent: performs the rename unless it already happened
/// (never clobbering a target changed since), then turns the intent into the marker. A rename
/// that fails withdraws the intent, as in `apply`: nothing happened.
fn roll_forward(name: &str, root: &Path, step: &StepFiles, intent: &Intent) -> Result<Rolled, Error> {
    let what = intent.action.describe();
    let fail = |e: io::Error| classify(name, &format!("complete intent {} ({what})", step.intent.display()), &e);
    let done = match &intent.action {
        // The temporary file is gone only once renamed: it was fsynced into its directory
        // before the intent was written, and the start-up cleanup keeps it.
        IntentAction::Rename { tmp, .. } => !exists(&root.join(tmp)).map_err(fail)?,
        // The trash exists only once the deletion happened; the target may have been created
        // again since, and is then not touched.
        IntentAction::Delete { target, trash } => {
            exists(&root.join(trash)).map_err(fail)? || !exists(&root.join(target)).map_err(fail)?
        }
    };
    if done {
        // An earlier attempt may have renamed without reaching the directory fsync.
        let target = match &intent.action {
            IntentAction::Rename { target, .. } | IntentAction::Delete { target, .. } => root.join(target),
        };
        match target.parent().map(sync_dir) {
            Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
    } else {
        match effect(root, &intent.action) {
            Ok(()) => {}
            Err(Effect::NotDone(e)) => {
                return match withdraw(root, step, intent) {
                    Ok(()) => {
                        tracing::warn!(participant = name, intent = %step.intent.display(), what, error = %e, "an interrupted file step cannot be completed; its intent is withdrawn and the step was not applied");
                        Ok(Rolled::Withdrawn)
                    }
                    Err(w) => Err(Error::retryable(
                        name,
                        format!(
                            "complete intent {} ({what}): {e}; withdrawing it failed too ({w}): the step is in doubt",
                            step.intent.display()
                        ),
                    )),
                };
            }
            Err(Effect::Unsynced(e)) => return Err(fail(e)),
        }
    }
    tracing::info!(participant = name, intent = %step.intent.display(), what, "completed an interrupted file step from its intent");
    finish(name, root, step, intent);
    Ok(Rolled::Forward)
}

/// Turns the intent into the marker (one rename) and removes a delete's trash. A failure here
/// is only logged: the durable intent already records the step, and the next lookup, apply or
/// start finishes the job.
///
/// After a rename the saga directory is not fsynced: losing that rename in a power cut brings
/// the intent back, which answers "present" just the same and rolls forward to a no-op. After
/// a delete it is, before the trash goes: an intent back without its trash would take a file
/// created at the target since for one still to delete.
fn finish(name: &str, root: &Path, step: &StepFiles, intent: &Intent) {
    let saga_dir = root.join(&step.saga_dir);
    let renamed = fs::rename(root.join(&step.intent), root.join(&step.marker));
    let durable = match &intent.action {
        IntentAction::Rename { .. } => renamed,
        IntentAction::Delete { .. } => renamed.and_then(|()| sync_dir(&saga_dir)),
    };
    if let Err(e) = durable {
        tracing::warn!(participant = name, intent = %step.intent.display(), error = %e, "the step is recorded by its intent; turning it into a marker failed");
        return;
    }
    // The trash is garbage now; losing its unlink in a power cut only leaves it to the start.
    if let IntentAction::Delete { trash, .. } = &intent.action
        && let Err(e) = fs::remove_file(root.join(trash))
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(participant = name, trash = %trash.display(), error = %e, "a deleted file's trash stays until the next start");
    }
}

/// Records the marker of a step that has no effect (a no-op, a delete of nothing).
fn record_marker(name: &str, root: &Path, key: &StepKey, step: &StepFiles) -> Result<(), Error> {
    create_dirs(root, &step.saga_dir)
        .and_then(|()| write_atomically(&root.join(&step.marker), |file| file.write_all(format!("{key}\n").as_bytes())))
        .map_err(|e| classify(name, "write marker", &e))
}

/// `<path>.sagalog-tmp-<random>`, next to `path`.
fn temp_sibling(path: &Path) -> PathBuf {
    let mut tmp_name = path.file_name().map(OsString::from).unwrap_or_default();
    tmp_name.push(format!("{TMP_INFIX}{:016x}", rand::random::<u64>()));
    path.with_file_name(tmp_name)
}

/// Creates `tmp`, fills it, fsyncs it and its directory entry (an intent will rely on both).
fn write_temp(tmp: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(tmp)?;
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        tmp.parent().map_or(Ok(()), sync_dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Checks that `relative` names something strictly inside the root, outside the marker
/// directory, and returns it as a relative path.
fn resolve(name: &str, relative: &str) -> Result<PathBuf, Error> {
    let refuse = |why: &str| Error::permanent(name, format!("path {relative:?} refused: {why}"));
    if relative.is_empty() {
        return Err(refuse("it is empty"));
    }
    if relative.contains('\0') {
        return Err(refuse("it contains a NUL byte"));
    }
    let mut resolved = PathBuf::new();
    for (i, component) in Path::new(relative).components().enumerate() {
        match component {
            Component::Normal(part) if i == 0 && part == MARKER_DIR => {
                return Err(refuse("the marker directory is reserved"));
            }
            Component::Normal(part) => resolved.push(part),
            Component::ParentDir => return Err(refuse("it contains `..`")),
            Component::CurDir => return Err(refuse("it contains `.`")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("it is absolute")),
        }
    }
    if resolved.as_os_str().is_empty() {
        return Err(refuse("it names the root itself"));
    }
    Ok(resolved)
}

/// A saga id as one safe directory name: kept as is when it is plain
/// (`[A-Za-z0-9._-]{1,128}`, not `.` or `..`); else `%` and its bytes in hex when that fits
/// (up to 127 bytes, the original encoding); else `~` and its bytes in base64url (longer ids
/// with special characters, which the hex form cannot hold). `%` and `~` never occur in a
/// plain name and the three forms have distinct first characters, so two ids never share a
/// directory.
fn saga_dir_name(name: &str, saga_id: &str) -> Result<String, Error> {
    let plain = (1..=SAGA_DIR_PLAIN_MAX).contains(&saga_id.len())
        && saga_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && saga_id != "."
        && saga_id != "..";
    if plain {
        return Ok(saga_id.to_owned());
    }
    if saga_id.len() <= SAGA_ID_ENCODED_MAX {
        let mut encoded = String::with_capacity(1 + 2 * saga_id.len());
        encoded.push('%');
        for byte in saga_id.bytes() {
            encoded.push_str(&format!("{byte:02x}"));
        }
        return Ok(encoded);
    }
    if saga_id.len() > SAGA_ID_BASE64_MAX {
        return Err(Error::permanent(
            name,
            format!("saga id of {} bytes with special characters is too long for a file participant", saga_id.len()),
        ));
    }
    Ok(format!("~{}", base64url_encode(saga_id.as_bytes())))
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url (RFC 4648 §5): every output character is a plain-name character.
fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(BASE64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| BASE64URL.iter().position(|x| *x == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let n = chunk.iter().enumerate().try_fold(0u32, |n, (i, c)| Some(n | (sextet(*c)? << (18 - 6 * i))))?;
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Every marker of one saga id, of every incarnation (the id's directory and its scope
/// directories).
fn list_markers(name: &str, dir: &Path) -> Result<Vec<(u32, Direction)>, Error> {
    let mut out = Vec::new();
    for (_, scope_dir) in incarnation_dirs(name, dir)? {
        out.extend(list_marker_files(name, &scope_dir)?.into_iter().map(|(marker, _)| marker));
    }
    out.sort();
    Ok(out)
}

/// Prefix of a scope directory's name inside a saga's marker directory; `@` never occurs in
/// a marker, intent or temporary file's name.
const SCOPE_PREFIX: &str = "@";

/// The incarnation directories of one saga id's marker directory `dir`: `dir` itself (the
/// unscoped markers, of sagas journaled before scopes) and each `@<scope>` directory in it.
fn incarnation_dirs(name: &str, dir: &Path) -> Result<Vec<(Option<String>, PathBuf)>, Error> {
    let mut out = vec![(None, dir.to_path_buf())];
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(classify(name, &format!("list {}", dir.display()), &e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| classify(name, &format!("list {}", dir.display()), &e))?;
        let file_name = entry.file_name();
        let Some(scope) = file_name.to_str().and_then(|n| n.strip_prefix(SCOPE_PREFIX)) else { continue };
        if crate::engine::Scope::is_valid(scope) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push((Some(scope.to_owned()), entry.path()));
        } else {
            tracing::warn!(participant = name, dir = %entry.path().display(), "ignoring an entry that names no saga incarnation");
        }
    }
    out.sort();
    Ok(out)
}

/// A step's marker as `(step, direction)` and the file that records it.
type MarkerFile = ((u32, Direction), PathBuf);

/// The markers in one saga's directory with the file that records each: the marker, or the
/// intent of a step committed but not finished (a marker wins over an intent).
fn list_marker_files(name: &str, dir: &Path) -> Result<Vec<MarkerFile>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(classify(name, &format!("list {}", dir.display()), &e)),
    };
    let mut markers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| classify(name, &format!("list {}", dir.display()), &e))?;
        let file_name = entry.file_name();
        if file_name.to_string_lossy().starts_with(SCOPE_PREFIX) {
            continue; // an incarnation's directory (see `incarnation_dirs`)
        }
        let Some(parsed) = file_name.to_str().and_then(parse_marker_name) else {
            // Leftover temporary files of an interrupted marker write, or files put there by
            // someone else: neither is a marker.
            if !file_name.to_string_lossy().contains(TMP_INFIX) {
                tracing::warn!(participant = name, file = %entry.path().display(), "ignoring a stray file among the markers");
            }
            continue;
        };
        let is_intent = file_name.to_string_lossy().ends_with(INTENT_SUFFIX);
        markers.push((parsed, is_intent, entry.path()));
    }
    markers.sort();
    markers.dedup_by_key(|(parsed, _, _)| *parsed);
    Ok(markers.into_iter().map(|(parsed, _, path)| (parsed, path)).collect())
}

/// Every marker under the marker directory `dir`, with the marker file's modification time.
fn list_all_markers(name: &str, dir: &Path) -> Result<Vec<MarkerEntry>, Error> {
    let sagas = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(classify(name, &format!("list {}", dir.display()), &e)),
    };
    let mut out = Vec::new();
    for saga in sagas {
        let saga = saga.map_err(|e| classify(name, &format!("list {}", dir.display()), &e))?;
        if saga.file_name() == PROBE_FILE {
            continue; // a health probe's file, there for a moment
        }
        let Some(saga_id) = saga.file_name().to_str().and_then(saga_id_of_dir_name) else {
            tracing::warn!(participant = name, dir = %saga.path().display(), "ignoring a marker directory that names no saga");
            continue;
        };
        for (scope, scope_dir) in incarnation_dirs(name, &saga.path())? {
            for ((step, direction), file) in list_marker_files(name, &scope_dir)? {
                let key = StepKey { saga_id: saga_id.clone(), step, direction, scope: scope.clone() };
                let applied_at_ms = fs::metadata(&file)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .and_then(|d| u64::try_from(d.as_millis()).ok());
                out.push(MarkerEntry { key, applied_at_ms });
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What interrupted writes left in a root, as [`leftovers`] finds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Temporary files (`*.sagalog-tmp-*`) that no intent refers to, relative to the root.
    pub stale_temp_files: Vec<PathBuf>,
    /// Intents not yet turned into markers.
    pub intents: Vec<PendingIntent>,
    /// The walk stopped after [`LEFTOVER_SCAN_MAX`] directory entries; more may remain.
    pub truncated: bool,
}

/// An intent left by an interrupted step: the step is committed, its effect may be pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingIntent {
    /// The step, from the intent's place in the marker directory (`None` if it names none).
    pub key: Option<StepKey>,
    /// The intent file, relative to the root.
    pub path: PathBuf,
    /// What it commits to ("rename A to B", "delete A (via T)"), or why it cannot be read.
    pub detail: String,
    /// False when the file does not parse: the start-up cleanup then removes nothing.
    pub readable: bool,
}

/// Finds, read-only, the temporary files and unfinished intents under `root` (for `audit`).
/// Visits at most [`LEFTOVER_SCAN_MAX`] entries and does not follow symbolic links.
pub fn leftovers(root: &Path) -> io::Result<Leftovers> {
    let mut found = Leftovers::default();
    let mut referenced = std::collections::BTreeSet::new();
    let markers = root.join(MARKER_DIR);
    let sagas = match fs::read_dir(&markers) {
        Ok(entries) => Some(entries),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    for saga in sagas.into_iter().flatten() {
        let saga = saga?;
        if !saga.file_type()?.is_dir() {
            continue;
        }
        let saga_id = saga.file_name().to_str().and_then(saga_id_of_dir_name);
        let mut dirs = vec![(None, PathBuf::from(saga.file_name()))];
        for entry in fs::read_dir(saga.path())? {
            let entry = entry?;
            let file_name = entry.file_name();
            let scope = file_name.to_str().and_then(|n| n.strip_prefix(SCOPE_PREFIX));
            if let Some(scope) = scope.filter(|_| entry.file_type().is_ok_and(|t| t.is_dir())) {
                dirs.push((Some(scope.to_owned()), Path::new(&saga.file_name()).join(&file_name)));
            }
        }
        for (scope, relative) in dirs {
            for entry in fs::read_dir(markers.join(&relative))? {
                let entry = entry?;
                let file_name = entry.file_name();
                let Some(file_name) = file_name.to_str().filter(|n| n.ends_with(INTENT_SUFFIX)) else { continue };
                let key = saga_id
                    .clone()
                    .zip(parse_marker_name(file_name))
                    .map(|(saga_id, (step, direction))| StepKey { saga_id, step, direction, scope: scope.clone() });
                let path = Path::new(MARKER_DIR).join(&relative).join(file_name);
                let (detail, readable) =
                    match fs::read(entry.path()).map_err(|e| e.to_string()).and_then(|b| parse_intent(&b)) {
                        Ok(intent) => {
                            referenced.insert(intent.action.temp_file().to_path_buf());
                            (intent.action.describe(), true)
                        }
                        Err(why) => (why, false),
                    };
                found.intents.push(PendingIntent { key, path, detail, readable });
            }
        }
    }
    let mut visited = 0usize;
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        for entry in fs::read_dir(root.join(&relative))? {
            visited += 1;
            if visited > LEFTOVER_SCAN_MAX {
                found.truncated = true;
                stack.clear();
                break;
            }
            let entry = entry?;
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if entry.file_name().to_string_lossy().contains(TMP_INFIX) && !referenced.contains(&path) {
                found.stale_temp_files.push(path);
            }
        }
    }
    found.stale_temp_files.sort();
    Ok(found)
}

/// The start-up cleanup: removes the temporary files no intent refers to (none at all when an
/// intent cannot be read, since it might refer to any of them). Logs what it did; a failure
/// is logged too and never stops the start (`audit` reports what remains).
fn clean_leftovers(name: &str, root: &Path) {
    let found = match leftovers(root) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(participant = name, root = %root.display(), error = %e, "could not look for stale temporary files");
            return;
        }
    };
    if found.truncated {
        tracing::warn!(participant = name, root = %root.display(), max = LEFTOVER_SCAN_MAX, "the stale temporary file scan stopped at its bound; `sagalog audit` lists what remains");
    }
    if let Some(bad) = found.intents.iter().find(|i| !i.readable) {
        tracing::warn!(participant = name, intent = %root.join(&bad.path).display(), detail = %bad.detail, "an unreadable intent: no temporary file is removed");
        return;
    }
    let mut removed = 0usize;
    for relative in &found.stale_temp_files {
        match fs::remove_file(root.join(relative)) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(participant = name, file = %root.join(relative).display(), error = %e, "could not remove a stale temporary file");
            }
        }
    }
    if removed > 0 {
        tracing::info!(participant = name, root = %root.display(), removed, "removed stale temporary files left by interrupted writes");
    }
}

/// The saga id a marker directory name stands for: the inverse of [`saga_dir_name`].
fn saga_id_of_dir_name(dir_name: &str) -> Option<String> {
    if let Some(encoded) = dir_name.strip_prefix('~') {
        return String::from_utf8(base64url_decode(encoded)?).ok();
    }
    let Some(hex) = dir_name.strip_prefix('%') else {
        return Some(dir_name.to_owned());
    };
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// `<step>.<direction>`, or an intent's `<step>.<direction>.intent` (a committed step).
fn parse_marker_name(file_name: &str) -> Option<(u32, Direction)> {
    let file_name = file_name.strip_suffix(INTENT_SUFFIX).unwrap_or(file_name);
    let (step, direction) = file_name.split_once('.')?;
    let direction = match direction {
        "forward" => Direction::Forward,
        "compensate" => Direction::Compensate,
        _ => return None,
    };
    Some((step.parse().ok()?, direction))
}

fn lock_index(key: &StepKey) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    // The modulo keeps the value below KEY_LOCKS, so the cast cannot truncate.
    (hasher.finish() % KEY_LOCKS as u64) as usize
}

fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes a file through a temporary sibling: fill, fsync, rename over `target`, fsync the
/// directory. A reader sees the old contents or the new ones, never a mix.
fn write_atomically(target: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let (Some(dir), Some(file_name)) = (target.parent(), target.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "target has no parent directory"));
    };
    let mut tmp_name = OsString::from(file_name);
    tmp_name.push(format!("{TMP_INFIX}{:016x}", rand::random::<u64>()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: after a failed rename the temporary file is garbage; after a successful
        // one it is already gone and this fails harmlessly.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Deletes `target`, treating absence as success, and makes the deletion durable.
fn remove(target: &Path) -> io::Result<()> {
    match fs::remove_file(target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Even when the file was already gone, an earlier attempt may have unlinked it without
    // reaching this fsync: sync the directory every time, if it exists.
    match target.parent().map(sync_dir) {
        Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates each missing directory of `relative` under `base`, fsyncing the parent of each one
/// it creates.
fn create_dirs(base: &Path, relative: &Path) -> io::Result<()> {
    let mut dir = base.to_path_buf();
    for part in relative.components() {
        dir.push(part);
        if !dir.is_dir() {
            make_dir(&dir)?;
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => dir.parent().map_or(Ok(()), sync_dir),
        // Created meanwhile by a concurrent apply, which fsyncs the parent itself.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Says whether retrying can help: a missing or forbidden path, a read-only file system or a
/// path of the wrong kind stays that way; a full disk, an interrupted call or a device error
/// may pass.
fn classify(name: &str, context: &str, error: &io::Error) -> Error {
    use io::ErrorKind as K;
    let message = format!("{context}: {error}");
    let permanent = matches!(
        error.kind(),
        K::NotFound
            | K::PermissionDenied
            | K::ReadOnlyFilesystem
            | K::IsADirectory
            | K::NotADirectory
            | K::DirectoryNotEmpty
            | K::InvalidInput
            | K::InvalidFilename
            | K::InvalidData
            | K::FileTooLarge
            | K::CrossesDevices
            | K::Unsupported
            | K::AlreadyExists
            | K::TooManyLinks
    );
    if permanent { Error::permanent(name, message) } else { Error::retryable(name, message) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every saga id the catalog accepts (1–128 bytes of printable ASCII without spaces) has a
    /// directory name of at most 255 bytes that reads back to the same id, and distinct ids get
    /// distinct names. Before, a 128-byte id with a special character was refused (issue 10,
    /// item 18).
    #[test]
    fn every_accepted_saga_id_has_a_directory_name_that_reads_back() {
        let printable: Vec<u8> = (0x21u8..=0x7e).collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut ids = vec!["a".to_owned(), "%".to_owned(), "~".to_owned(), ".".to_owned(), "..".to_owned()];
        for len in [1usize, 2, 3, 64, 126, 127, 128] {
            for offset in 0..printable.len() {
                ids.push((0..len).map(|i| char::from(printable[(offset + i * 7) % printable.len()])).collect());
            }
        }
        ids.push("/".repeat(128));
        ids.push(format!("{}~", "a".repeat(127)));
        let ids: std::collections::BTreeSet<String> = ids.into_iter().collect();
        assert!(ids.len() > 500);
        for id in ids {
            let dir = saga_dir_name("f", &id).unwrap_or_else(|e| panic!("{id:?}: {e}"));
            assert!(dir.len() <= 255, "{id:?} → {} bytes", dir.len());
            assert!(!dir.contains('/') && dir != "." && dir != "..", "{id:?} → {dir:?}");
            assert_eq!(saga_id_of_dir_name(&dir).as_deref(), Some(id.as_str()), "{dir:?}");
            assert!(seen.insert(dir.clone()), "two ids share {dir:?}");
        }
    }

    fn key(saga: &str, step: u32, direction: Direction) -> StepKey {
        StepKey { saga_id: saga.to_owned(), step, direction, scope: None }
    }

    fn put(path: &str, contents: &str) -> Operation {
        Operation::FilePut { path: path.to_owned(), contents: contents.as_bytes().to_vec() }
    }

    /// Issue 10 item A5: a crash right after the rename (or the unlink), before anything
    /// recorded it. The effect exists, so neither the same participant nor one reopened after
    /// the "crash" may answer "absent" (that answer lets compensation skip the step); after the
    /// answer the effect is still the operation's. Before the intent records, the lookup said
    /// "absent" with the file in place.
    #[tokio::test]
    async fn a_crash_between_the_effect_and_its_marker_is_never_read_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::write(root.join("source"), "copied").unwrap();
        fs::write(root.join("doomed"), "old").unwrap();
        let cases = [
            (put("out/put.txt", "new"), "out/put.txt", Some("new")),
            (Operation::FileCopy { from: "source".into(), to: "out/copy.txt".into() }, "out/copy.txt", Some("copied")),
            (Operation::FileDelete { path: "doomed".into() }, "doomed", None),
        ];
        for (step, (op, path, expected)) in (0u32..).zip(cases) {
            let fs = Fs::open("fs", root.clone()).unwrap();
            let key = key("crash", step, Direction::Forward);
            fs.crash_next_apply(CrashPoint::AfterEffect);
            let error = fs.apply(&key, 1, &op).await.unwrap_err();
            assert!(error.is_retryable(), "{error}");
            let read = || fs::read_to_string(root.join(path)).ok();
            assert_eq!(read().as_deref(), expected, "step {step}: the effect is visible");
            assert!(fs.lookup_marker(&key).await.unwrap(), "step {step}: the same participant says absent");
            let reopened = Fs::open("fs", root.clone()).unwrap();
            assert!(reopened.lookup_marker(&key).await.unwrap(), "step {step}: a reopened participant says absent");
            assert_eq!(reopened.markers("crash").await.unwrap().len(), step as usize + 1);
            assert_eq!(reopened.apply(&key, 1, &op).await.unwrap(), Applied::AlreadyApplied);
            assert_eq!(read().as_deref(), expected, "step {step}: the effect is the operation's");
        }
    }

    fn temp_files(root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.to_string_lossy().contains(TMP_INFIX) {
                    found.push(path);
                }
            }
        }
        found
    }

    /// A crash after the intent is durable but before the effect: the step is committed.
    /// The lookup (or the next apply) performs the effect, then answers "present"; nothing
    /// temporary is left.
    #[tokio::test]
    async fn a_crash_before_the_effect_is_rolled_forward_by_the_lookup_or_the_next_apply() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::write(root.join("source"), "copied").unwrap();
        fs::write(root.join("doomed"), "old").unwrap();
        fs::write(root.join("doomed2"), "old").unwrap();
        let cases = [
            (put("out/put.txt", "new"), "out/put.txt", Some("new")),
            (Operation::FileCopy { from: "source".into(), to: "out/copy.txt".into() }, "out/copy.txt", Some("copied")),
            (Operation::FileDelete { path: "doomed".into() }, "doomed", None),
        ];
        for (step, (op, path, expected)) in (0u32..).zip(cases) {
            let fs = Fs::open("fs", root.clone()).unwrap();
            let key = key("before", step, Direction::Compensate);
            fs.crash_next_apply(CrashPoint::BeforeEffect);
            assert!(fs.apply(&key, 1, &op).await.unwrap_err().is_retryable());
            assert_ne!(fs::read_to_string(root.join(path)).ok().as_deref(), expected, "step {step}: not yet visible");
            let reopened = Fs::open("fs", root.clone()).unwrap();
            assert!(reopened.lookup_marker(&key).await.unwrap(), "step {step}");
            assert_eq!(fs::read_to_string(root.join(path)).ok().as_deref(), expected, "step {step}: rolled forward");
            assert!(root.join(MARKER_DIR).join("before").join(format!("{step}.compensate")).exists());
            assert!(temp_files(&root).is_empty(), "step {step}: {:?}", temp_files(&root));
        }
        let fs = Fs::open("fs", root.clone()).unwrap();
        let key = key("before", 9, Direction::Forward);
        fs.crash_next_apply(CrashPoint::BeforeEffect);
        let delete = Operation::FileDelete { path: "doomed2".into() };
        assert!(fs.apply(&key, 1, &delete).await.is_err());
        assert!(root.join("doomed2").exists());
        assert_eq!(fs.apply(&key, 1, &delete).await.unwrap(), Applied::AlreadyApplied);
        assert!(!root.join("doomed2").exists());
        assert!(temp_files(&root).is_empty(), "{:?}", temp_files(&root));
    }

    /// The release kill -9 soak's finding (docs/recovery.md, saga `crash-5591`): a crash after
    /// the intent is durable but before the rename, and then the target is a directory (the
    /// torture's way to fail a step). The rename can never happen, so rolling forward failed
    /// with EISDIR at every lookup and the saga ended STUCK. Nothing was applied: the lookup
    /// withdraws the intent and answers "absent", and the next apply fails permanently (the
    /// step fails, and the saga compensates) instead of in doubt.
    #[tokio::test]
    async fn an_intent_whose_rename_cannot_happen_is_withdrawn_and_read_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for (step, lookup_first) in [(0u32, true), (1, false)] {
            let target = format!("runs/{step}.json");
            let fs = Fs::open("fs", root.clone()).unwrap();
            let key = key("blocked", step, Direction::Forward);
            fs.crash_next_apply(CrashPoint::BeforeEffect);
            assert!(fs.apply(&key, 1, &put(&target, "new")).await.unwrap_err().is_retryable());
            fs::create_dir(root.join(&target)).unwrap();
            let reopened = Fs::open("fs", root.clone()).unwrap();
            if lookup_first {
                assert!(!reopened.lookup_marker(&key).await.unwrap(), "step {step}: nothing was applied");
                assert!(!reopened.lookup_marker(&key).await.unwrap(), "step {step}: asked again");
            }
            let error = reopened.apply(&key, 2, &put(&target, "new")).await.unwrap_err();
            assert!(!error.is_retryable(), "step {step}: {error}");
            assert!(!reopened.lookup_marker(&key).await.unwrap(), "step {step}");
            assert!(reopened.markers("blocked").await.unwrap().is_empty());
            assert!(root.join(&target).is_dir());
            assert!(temp_files(&root).is_empty(), "step {step}: {:?}", temp_files(&root));
        }
    }

    /// After a crash right after the effect, someone changes the target before the lookup:
    /// rolling forward must not redo the rename (which would put the old contents back) or the
    /// deletion (which would delete the new file).
    #[tokio::test]
    async fn rolling_forward_never_clobbers_a_target_changed_since_the_effect() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let fs = Fs::open("fs", root.clone()).unwrap();
        fs.crash_next_apply(CrashPoint::AfterEffect);
        assert!(fs.apply(&key("changed", 0, Direction::Forward), 1, &put("f", "ours")).await.is_err());
        fs::write(root.join("f"), "changed since").unwrap();
        assert!(fs.lookup_marker(&key("changed", 0, Direction::Forward)).await.unwrap());
        assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "changed since");

        fs.crash_next_apply(CrashPoint::AfterEffect);
        let delete = Operation::FileDelete { path: "f".into() };
        assert!(fs.apply(&key("changed", 0, Direction::Compensate), 1, &delete).await.is_err());
        assert!(!root.join("f").exists());
        fs::write(root.join("f"), "created again").unwrap();
        let reopened = Fs::open("fs", root.clone()).unwrap();
        assert!(reopened.lookup_marker(&key("changed", 0, Direction::Compensate)).await.unwrap());
        assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "created again");
        assert!(temp_files(&root).is_empty(), "{:?}", temp_files(&root));
    }

    /// `Fs::open` removes the temporary files a crash left (beside targets and among the
    /// markers) but keeps the one an unfinished intent still needs, which the lookup then
    /// renames into place. `open_read_only` removes nothing; `leftovers` lists both kinds.
    #[tokio::test]
    async fn the_start_removes_stale_temporary_files_but_keeps_those_an_intent_needs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let fs = Fs::open("fs", root.clone()).unwrap();
        fs.crash_next_apply(CrashPoint::BeforeEffect);
        let key = key("kept", 0, Direction::Forward);
        assert!(fs.apply(&key, 1, &put("a/kept.txt", "needed")).await.is_err());
        let needed = temp_files(&root);
        assert_eq!(needed.len(), 1, "{needed:?}");
        fs::create_dir_all(root.join("b/c")).unwrap();
        let stale = [
            root.join(format!("b/c/x{TMP_INFIX}0123456789abcdef")),
            root.join(format!("a/kept.txt{TMP_INFIX}00000000000000aa")),
            root.join(MARKER_DIR).join("kept").join(format!("1.forward{TMP_INFIX}1111111111111111")),
        ];
        for path in &stale {
            fs::write(path, "partial").unwrap();
        }
        let read_only = Fs::open_read_only("fs", root.clone()).unwrap();
        drop(read_only);
        assert_eq!(temp_files(&root).len(), 4, "open_read_only removed something");
        let found = leftovers(&root).unwrap();
        assert_eq!(found.stale_temp_files.len(), 3, "{found:?}");
        assert_eq!(found.intents.len(), 1, "{found:?}");
        assert_eq!(found.intents[0].key.as_ref(), Some(&key));
        assert!(found.intents[0].detail.contains("a/kept.txt"), "{found:?}");

        let reopened = Fs::open("fs", root.clone()).unwrap();
        assert_eq!(temp_files(&root), needed, "stale files removed, the needed one kept");
        assert!(reopened.lookup_marker(&key).await.unwrap());
        assert_eq!(fs::read_to_string(root.join("a/kept.txt")).unwrap(), "needed");
        assert_eq!(leftovers(&root).unwrap(), Leftovers::default());
    }

    /// An intent that cannot be read (damaged, or from a newer build) may stand for a committed
    /// step: `apply` fails retryably (in doubt, so compensation settles the step by its marker
    /// instead of skipping it), the lookup fails permanently (an operator must look: STUCK),
    /// and neither answers "absent" nor touches the target.
    #[tokio::test]
    async fn an_unreadable_intent_is_in_doubt_never_absent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let fs = Fs::open("fs", root.clone()).unwrap();
        let saga_dir = root.join(MARKER_DIR).join("damaged");
        fs::create_dir_all(&saga_dir).unwrap();
        for (step, body) in
            [(0u32, "{\"intent\": 1, \"op\""), (1, "{\"intent\": 2, \"key\": \"k\", \"op\": \"future\"}")]
        {
            fs::write(saga_dir.join(format!("{step}.forward{INTENT_SUFFIX}")), body).unwrap();
            let key = key("damaged", step, Direction::Forward);
            let error = fs.apply(&key, 1, &put("f", "x")).await.unwrap_err();
            assert!(error.is_retryable() && error.message.contains(".intent"), "step {step}: {error}");
            let error = fs.lookup_marker(&key).await.unwrap_err();
            assert!(!error.is_retryable() && error.message.contains(".intent"), "step {step}: {error}");
            assert!(!root.join("f").exists());
        }
    }

    /// The hex form of the first version still reads back (existing marker trees keep working).
    #[test]
    fn hex_encoded_directory_names_still_read_back() {
        assert_eq!(saga_id_of_dir_name("%612f62").as_deref(), Some("a/b"));
        assert_eq!(saga_dir_name("f", "a/b").unwrap(), "%612f62");
    }

    #[test]
    fn base64url_round_trips_every_length() {
        for len in 0..40usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64url_encode(&bytes);
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(base64url_decode(&text), Some(bytes));
        }
        assert_eq!(base64url_encode(b"foob"), "Zm9vYg");
    }
}
