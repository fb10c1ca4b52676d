//! The file-tree participant: puts, deletes and copies files under one root directory.
//!
//! A file system has no transactions, so this participant keeps the contract the other way
//! round: every operation is idempotent, and the marker is a file written *after* the
//! operation. A crash between the two leaves no marker, and the retry simply re-runs an
//! operation whose second run changes nothing. `apply` checks the marker first and, when it
//! exists, touches nothing.
//!
//! Writes are atomic and durable: the contents go to `<target>.sagalog-tmp-<random>` in the
//! same directory, that file is fsynced and renamed over the target, and the directory is
//! fsynced. Markers live in `<root>/.sagalog-markers/<saga>/<step>.<direction>`, written the
//! same way; that directory is off limits to operations.
//!
//! Every path in an operation is relative to the root and is checked before anything happens:
//! no absolute paths, no `..`, no `.`, no empty path. Symbolic links inside the root are
//! followed; whoever can create them inside the root is trusted. Concurrent applies of one key
//! in this process are serialized (striped locks), so exactly one of them reports `Applied`.
//! All file I/O runs on blocking threads.

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

use super::{Applied, BoxFuture, Direction, Error, Kind, MarkerEntry, Operation, Participant, StepKey};

/// The directory under the root that holds the markers.
pub const MARKER_DIR: &str = ".sagalog-markers";
/// The health probe's file, directly in the marker directory. The `%` prefix marks a
/// hex-encoded saga directory, and this name is not valid hex, so it never names a saga.
pub const PROBE_FILE: &str = "%sagalog-probe";
/// What a temporary file's name has between the target's name and its random suffix.
pub const TMP_INFIX: &str = ".sagalog-tmp-";
/// Operations running on blocking threads at once, per participant.
pub const CONCURRENCY_MAX: usize = 16;
/// Longest saga id kept as a plain directory name; others are hex-encoded.
pub const SAGA_DIR_PLAIN_MAX: usize = 128;
/// Longest saga id that is hex-encoded into one directory name (255 bytes on most systems);
/// longer ones with special characters are base64url-encoded behind `~` (up to 190 bytes).
pub const SAGA_ID_ENCODED_MAX: usize = 127;
/// Longest saga id of any kind a file participant can store (`~` + base64url fits 255 bytes).
pub const SAGA_ID_BASE64_MAX: usize = 190;
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
}

impl Fs {
    /// Uses the existing directory `root` and creates its marker directory.
    ///
    /// This does blocking file I/O: call it at startup, or from a blocking thread.
    pub fn open(name: &str, root: PathBuf) -> Result<Fs, Error> {
        let meta = fs::metadata(&root).map_err(|e| classify(name, &format!("root {}", root.display()), &e))?;
        if !meta.is_dir() {
            return Err(Error::permanent(name, format!("root {} is not a directory", root.display())));
        }
        create_dirs(&root, Path::new(MARKER_DIR)).map_err(|e| classify(name, "create marker directory", &e))?;
        Ok(Fs {
            name: name.to_owned(),
            root,
            key_locks: Arc::new((0..KEY_LOCKS).map(|_| Mutex::new(())).collect()),
            permits: Arc::new(Semaphore::new(CONCURRENCY_MAX)),
            read_only: false,
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
            permits: Arc::new(Semaphore::new(CONCURRENCY_MAX)),
            read_only: true,
        })
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
            Operation::Sql { .. } => return Err(Error::permanent(name, "fs participant cannot run a SQL statement")),
        })
    }

    /// The marker's path relative to the root.
    fn marker_path(&self, key: &StepKey) -> Result<PathBuf, Error> {
        Ok(self.saga_dir(&key.saga_id)?.join(format!("{}.{}", key.step, key.direction.as_str())))
    }

    /// The directory of a saga's markers, relative to the root.
    fn saga_dir(&self, saga_id: &str) -> Result<PathBuf, Error> {
        Ok(Path::new(MARKER_DIR).join(saga_dir_name(&self.name, saga_id)?))
    }
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
        // Fencing by attempt is not implemented for files yet (no fence file): `settle_marker`
        // only waits for an apply of the key that is running. See docs/recovery.md.
        let _ = attempt;
        Box::pin(async move {
            if self.read_only {
                return Err(Error::permanent(&self.name, "opened read-only: it cannot apply a step"));
            }
            let plan = self.plan(op)?;
            let saga_dir = self.saga_dir(&key.saga_id)?;
            let marker = self.root.join(self.marker_path(key)?);
            let (name, root, key) = (self.name.clone(), self.root.clone(), key.clone());
            let key_locks = Arc::clone(&self.key_locks);
            self.run(move || {
                // The lock guards no data, only the check-then-write sequence below.
                let _key_lock = key_locks[lock_index(&key)].lock().unwrap_or_else(PoisonError::into_inner);
                if exists(&marker).map_err(|e| classify(&name, "look up marker", &e))? {
                    return Ok(Applied::AlreadyApplied);
                }
                perform(&name, &root, plan)?;
                create_dirs(&root, &saga_dir).map_err(|e| classify(&name, "create marker directory", &e))?;
                write_atomically(&marker, |file| file.write_all(format!("{key}\n").as_bytes()))
                    .map_err(|e| classify(&name, "write marker", &e))?;
                Ok(Applied::Applied)
            })
            .await
        })
    }

    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let marker = self.root.join(self.marker_path(key)?);
            let name = self.name.clone();
            self.run(move || exists(&marker).map_err(|e| classify(&name, "look up marker", &e))).await
        })
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        let _ = through_attempt;
        Box::pin(async move {
            if self.read_only {
                return Err(Error::permanent(&self.name, "opened read-only: it cannot fence a step's attempts"));
            }
            let marker = self.root.join(self.marker_path(key)?);
            let (name, key) = (self.name.clone(), key.clone());
            let key_locks = Arc::clone(&self.key_locks);
            self.run(move || {
                // The key's lock: an apply of this key that is running in this process ends
                // (writes its marker or fails) before the marker is read.
                let _key_lock = key_locks[lock_index(&key)].lock().unwrap_or_else(PoisonError::into_inner);
                exists(&marker).map_err(|e| classify(&name, "look up marker", &e))
            })
            .await
        })
    }

    fn lookup_markers<'a>(&'a self, keys: &'a [StepKey]) -> BoxFuture<'a, Result<Vec<bool>, Error>> {
        Box::pin(async move {
            let markers =
                keys.iter().map(|k| self.marker_path(k).map(|p| self.root.join(p))).collect::<Result<Vec<_>, _>>()?;
            let name = self.name.clone();
            self.run(move || {
                markers.iter().map(|m| exists(m).map_err(|e| classify(&name, "look up marker", &e))).collect()
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

/// Runs one planned operation; each is idempotent. Messages name paths relative to the root.
fn perform(name: &str, root: &Path, plan: Plan) -> Result<(), Error> {
    let parent_of = |path: &Path| path.parent().map(Path::to_path_buf).unwrap_or_default();
    match plan {
        Plan::Put(target, contents) => create_dirs(root, &parent_of(&target))
            .and_then(|()| write_atomically(&root.join(&target), |file| file.write_all(&contents)))
            .map_err(|e| classify(name, &format!("write {}", target.display()), &e)),
        Plan::Delete(target) => {
            remove(&root.join(&target)).map_err(|e| classify(name, &format!("delete {}", target.display()), &e))
        }
        Plan::Copy(source, target) => {
            let mut input = match File::open(root.join(&source)) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::permanent(name, format!("copy source {} does not exist", source.display())));
                }
                Err(e) => return Err(classify(name, &format!("open {}", source.display()), &e)),
            };
            create_dirs(root, &parent_of(&target))
                .and_then(|()| write_atomically(&root.join(&target), |file| io::copy(&mut input, file).map(drop)))
                .map_err(|e| classify(name, &format!("copy to {}", target.display()), &e))
        }
        Plan::Noop => Ok(()),
    }
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

fn list_markers(name: &str, dir: &Path) -> Result<Vec<(u32, Direction)>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(classify(name, &format!("list {}", dir.display()), &e)),
    };
    let mut markers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| classify(name, &format!("list {}", dir.display()), &e))?;
        let file_name = entry.file_name();
        let Some(parsed) = file_name.to_str().and_then(parse_marker_name) else {
            // Leftover temporary files of an interrupted marker write, or files put there by
            // someone else: neither is a marker.
            if !file_name.to_string_lossy().contains(TMP_INFIX) {
                tracing::warn!(participant = name, file = ?entry.path(), "ignoring a stray file among the markers");
            }
            continue;
        };
        markers.push(parsed);
    }
    markers.sort();
    Ok(markers)
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
            tracing::warn!(participant = name, dir = ?saga.path(), "ignoring a marker directory that names no saga");
            continue;
        };
        let saga_dir = saga.path();
        for (step, direction) in list_markers(name, &saga_dir)? {
            let key = StepKey { saga_id: saga_id.clone(), step, direction };
            let file = saga_dir.join(format!("{step}.{}", direction.as_str()));
            let applied_at_ms = fs::metadata(&file)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| u64::try_from(d.as_millis()).ok());
            out.push(MarkerEntry { key, applied_at_ms });
        }
    }
    out.sort();
    Ok(out)
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

fn parse_marker_name(file_name: &str) -> Option<(u32, Direction)> {
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
