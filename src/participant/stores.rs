//! Which participant stores this data directory created, so that a store that goes missing
//! later is never silently created again.
//!
//! A SQLite or DuckDB file or an `fs` root can be missing because a volume is not mounted or a
//! path has a typo. Creating it empty would make every marker lookup answer "not applied":
//! recovery would run forward steps a second time into the new store, or skip compensations,
//! and when the real volume returns the effects exist twice. So the first time a participant's
//! store is opened, it is created and recorded in `D/stores.json` (written atomically); from
//! then on a missing store is an error that names the file, and the participant stands in
//! [`Parked`]: every call fails (retryably) with that reason, a marker lookup never answers
//! "absent", and the circuit breaker opens. Once the store is back (the volume mounted), the
//! next call opens it and the participant works again.
//!
//! A participant whose configured path changed to one that does not exist is parked too (a
//! typo must not create a new, empty store); a path changed to an existing store is adopted.
//! A data directory from before this file existed gets it on its first start, recording the
//! stores that exist then (the one start at which a missing store is still created; see
//! `docs/recovery.md`).
//!
//! Never deletes a store; never creates one that was recorded before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::{Applied, BoxFuture, Direction, Error, Kind, MarkerEntry, Operation, Participant, StepKey};
use crate::engine::value::Value;

/// The manifest's file name inside the data directory.
pub const STORES_FILE: &str = "stores.json";

/// One created store, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    pub kind: Kind,
    /// The path as the config spelled it (relative to the data directory unless absolute).
    pub path: String,
}

/// `D/stores.json`: participant name → the store created for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub stores: BTreeMap<String, Store>,
}

impl Manifest {
    /// Reads the manifest of `data_dir`; an absent file is an empty manifest. A file that
    /// does not parse is an error naming it (never "nothing was created").
    pub fn read(data_dir: &Path) -> Result<Manifest, Error> {
        let path = data_dir.join(STORES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Manifest { version: 1, ..Manifest::default() });
            }
            Err(e) => return Err(Error::permanent("stores", format!("cannot read {}: {e}", path.display()))),
        };
        serde_json::from_str(&text).map_err(|e| {
            Error::permanent(
                "stores",
                format!(
                    "{} is damaged ({e}); restore it or remove it to record the stores that exist now",
                    path.display()
                ),
            )
        })
    }

    /// Writes the manifest atomically: temporary file, fsync, rename, directory fsync.
    pub fn write(&self, data_dir: &Path) -> Result<(), Error> {
        let path = data_dir.join(STORES_FILE);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::permanent("stores", format!("cannot encode {}: {e}", path.display())))?;
        write_atomically(&path, &text)
            .map_err(|e| Error::permanent("stores", format!("cannot write {}: {e}", path.display())))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What opening a file-backed store should do, given the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The store exists: open it.
    Open,
    /// Never created before: create it, then record it.
    Create,
    /// It was created before (or its path changed to a missing one): park, with this reason.
    Park(String),
}

/// The decision for participant `name` whose store (`configured` in the config, resolved to
/// `resolved`) exists or not.
pub fn decide(manifest: &Manifest, name: &str, kind: Kind, configured: &str, resolved: &Path) -> Decision {
    if resolved.exists() {
        return Decision::Open;
    }
    match manifest.stores.get(name) {
        None => Decision::Create,
        Some(store) if store.path == configured && store.kind == kind => Decision::Park(format!(
            "its store {} is missing, though this data directory created it; sagalog does not create it again (an empty store would answer \"not applied\" for every step): mount or restore it",
            resolved.display()
        )),
        Some(store) => Decision::Park(format!(
            "its store was created at {:?} ({}); the config now says {:?}, and {} does not exist: fix the path, or move the store there",
            store.path,
            store.kind.as_str(),
            configured,
            resolved.display()
        )),
    }
}

/// Opens the real participant once its store exists again.
pub type Reopen = Box<dyn Fn() -> Result<Arc<dyn Participant>, Error> + Send + Sync>;

/// A participant whose store is missing: every call fails with the reason until the store is
/// back, then delegates to the participant opened on it.
pub struct Parked {
    name: String,
    kind: Kind,
    store: PathBuf,
    reason: String,
    reopen: Reopen,
    opened: Mutex<Option<Arc<dyn Participant>>>,
}

impl Parked {
    pub fn new(name: &str, kind: Kind, store: PathBuf, reason: String, reopen: Reopen) -> Parked {
        tracing::error!(participant = name, store = %store.display(), "participant parked: {reason}");
        Parked { name: name.to_owned(), kind, store, reason, reopen, opened: Mutex::new(None) }
    }

    /// The participant on the store, if the store is back (opened at most once).
    fn current(&self) -> Result<Arc<dyn Participant>, Error> {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = opened.as_ref() {
            return Ok(p.clone());
        }
        if !self.store.exists() {
            return Err(Error::retryable(&self.name, format!("parked: {}", self.reason)));
        }
        let participant = (self.reopen)()?;
        tracing::info!(participant = %self.name, store = %self.store.display(), "store is back; participant unparked");
        *opened = Some(participant.clone());
        Ok(participant)
    }
}

impl Participant for Parked {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> Kind {
        self.kind
    }

    fn apply<'a>(&'a self, key: &'a StepKey, attempt: u32, op: &'a Operation) -> BoxFuture<'a, Result<Applied, Error>> {
        Box::pin(async move { self.current()?.apply(key, attempt, op).await })
    }

    fn apply_with_outputs<'a>(
        &'a self,
        key: &'a StepKey,
        attempt: u32,
        op: &'a Operation,
    ) -> BoxFuture<'a, Result<(Applied, super::Outputs), Error>> {
        Box::pin(async move { self.current()?.apply_with_outputs(key, attempt, op).await })
    }

    fn marker_outputs<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<super::Outputs, Error>> {
        Box::pin(async move { self.current()?.marker_outputs(key).await })
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { self.current()?.settle_marker(key, through_attempt).await })
    }

    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { self.current()?.lookup_marker(key).await })
    }

    fn markers<'a>(&'a self, saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>> {
        Box::pin(async move { self.current()?.markers(saga_id).await })
    }

    fn all_markers(&self) -> BoxFuture<'_, Result<Vec<MarkerEntry>, Error>> {
        Box::pin(async move { self.current()?.all_markers().await })
    }

    fn lookup_markers<'a>(&'a self, keys: &'a [StepKey]) -> BoxFuture<'a, Result<Vec<bool>, Error>> {
        Box::pin(async move { self.current()?.lookup_markers(keys).await })
    }

    fn count<'a>(&'a self, sql: &'a str, args: &'a [Value]) -> BoxFuture<'a, Result<i64, Error>> {
        Box::pin(async move { self.current()?.count(sql, args).await })
    }

    fn prepare_check<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Option<usize>, Error>> {
        Box::pin(async move { self.current()?.prepare_check(sql).await })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.current()?.probe().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ParticipantConfig;

    fn configs() -> BTreeMap<String, ParticipantConfig> {
        let text = r#"
            [ledger]
            kind = "sqlite"
            path = "vol/ledger.sqlite"
            init = ["CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY)"]
            [files]
            kind = "fs"
            path = "vol/files"
        "#;
        toml::from_str(text).unwrap()
    }

    fn key(saga: &str) -> StepKey {
        StepKey { saga_id: saga.into(), step: 0, direction: Direction::Forward, scope: None }
    }

    /// A store this data directory created is never created again when it goes missing (an
    /// unmounted volume): the participant is parked, its marker lookup is an error naming the
    /// file (never "not applied"), and once the store is back it works again with its markers.
    /// Before, `open_all` recreated both stores empty and the lookup answered "absent" (issue
    /// 10, item 2).
    #[tokio::test]
    async fn a_missing_store_that_was_created_before_is_parked_not_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let configs = configs();
        let open = super::super::open_all(&configs, dir.path()).unwrap();
        let sql = Operation::Sql { sql: "INSERT INTO t (id) VALUES ('a')".into(), args: vec![], rows: None };
        assert_eq!(open["ledger"].apply(&key("s"), 1, &sql).await.unwrap(), Applied::Applied);
        let put = Operation::FilePut { path: "a.txt".into(), contents: b"x".to_vec() };
        assert_eq!(open["files"].apply(&key("s"), 1, &put).await.unwrap(), Applied::Applied);
        drop(open);
        let manifest = Manifest::read(dir.path()).unwrap();
        assert_eq!(manifest.stores.keys().collect::<Vec<_>>(), ["files", "ledger"]);

        // The volume goes away.
        std::fs::rename(dir.path().join("vol"), dir.path().join("vol-unmounted")).unwrap();
        let parked = super::super::open_all(&configs, dir.path()).unwrap();
        for name in ["ledger", "files"] {
            let e = parked[name].lookup_marker(&key("s")).await.unwrap_err();
            assert!(e.is_retryable(), "{e}");
            assert!(e.message.contains("vol/") && e.message.contains("missing"), "{e}");
            assert!(parked[name].probe().await.is_err());
            assert!(parked[name].apply(&key("t"), 1, &Operation::Noop).await.is_err());
        }
        assert!(!dir.path().join("vol").exists(), "nothing was created");

        // The volume is back: the same participants answer from the real stores.
        std::fs::rename(dir.path().join("vol-unmounted"), dir.path().join("vol")).unwrap();
        for name in ["ledger", "files"] {
            assert!(parked[name].lookup_marker(&key("s")).await.unwrap(), "{name} kept its marker");
            parked[name].probe().await.unwrap();
        }
    }

    /// A path changed in the config to one that does not exist (a typo) parks the participant
    /// and names both paths; a path changed to an existing store is adopted and recorded.
    #[tokio::test]
    async fn a_changed_path_is_parked_when_missing_and_adopted_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let mut configs = configs();
        super::super::open_all(&configs, dir.path()).unwrap();
        configs.get_mut("ledger").unwrap().path = Some("vol/ledgr.sqlite".into());
        let opened = super::super::open_all(&configs, dir.path()).unwrap();
        let e = opened["ledger"].lookup_marker(&key("s")).await.unwrap_err();
        assert!(e.message.contains("\"vol/ledger.sqlite\"") && e.message.contains("\"vol/ledgr.sqlite\""), "{e}");
        assert!(!dir.path().join("vol/ledgr.sqlite").exists());
        drop(opened);

        std::fs::rename(dir.path().join("vol/ledger.sqlite"), dir.path().join("vol/ledgr.sqlite")).unwrap();
        let opened = super::super::open_all(&configs, dir.path()).unwrap();
        assert!(!opened["ledger"].lookup_marker(&key("s")).await.unwrap());
        assert_eq!(Manifest::read(dir.path()).unwrap().stores["ledger"].path, "vol/ledgr.sqlite");
    }

    /// A damaged manifest stops the start with its name, rather than reading as "nothing
    /// was ever created".
    #[test]
    fn a_damaged_manifest_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STORES_FILE), b"{\"version\":1,\"sto").unwrap();
        let e = super::super::open_all(&configs(), dir.path()).map(|_| ()).unwrap_err();
        assert!(e.message.contains(STORES_FILE) && e.message.contains("damaged"), "{e}");
    }
}
