//! The archive of finished sagas: status queries keep working after the journal segments
//! that held a saga's records are deleted.
//!
//! The index is a sled database at `<data-dir>/index` with two trees:
//! - `sagas`: saga id (UTF-8 bytes) → [`SagaRecord`] (a named MessagePack map, see
//!   [`record`]);
//! - `by_finish`: `finished_at_ms` (u64 big-endian, so byte order is time order) followed by
//!   the saga id bytes → the saga's status string. It orders the archive by finish time for
//!   listing and for retention.
//!
//! Invariants: a saga id is in `sagas` exactly when one `by_finish` key names it, and that
//! key carries the record's `finished_at_ms`. Every write changes both trees in one sled
//! transaction, so no reader and no crash sees one tree without the other. Only finished
//! sagas (`COMPLETED`, `COMPENSATED`) are accepted: a STUCK saga is not finished and its
//! journal records must stay.
//!
//! Durability: sled makes writes durable on its own schedule. A caller that is about to
//! delete journal segments calls [`Index::flush`] first, so that the index holds every saga
//! before the only other copy of its records is gone.
//!
//! Besides the two trees, sled's default tree holds one key, `indexed_through_lsn` (u64
//! big-endian): the checkpoint writer sets it before each flush, so startup can tell an index
//! that holds what the checkpoint promises from one that was replaced, damaged or restored
//! from an older copy ([`Index::indexed_through_lsn`]).
//!
//! A stored record that does not decode is an error naming the saga, never a panic and never
//! silently skipped. This module never touches the journal.

pub mod record;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, ConflictableTransactionResult, TransactionError};

pub use record::{FORMAT_VERSION, RecordError, SagaRecord, StepRecord};

/// The most records one [`Index::list`] call returns, whatever the caller asks for.
pub const LIST_LIMIT_MAX: usize = 1000;
/// How many records [`Index::purge_finished_before`] removes per transaction.
const PURGE_BATCH: usize = 256;
/// Length of the time prefix of a `by_finish` key.
const FINISH_PREFIX_BYTES: usize = size_of::<u64>();

const SAGAS_TREE: &str = "sagas";
/// Key, in sled's default tree, of the mark set by [`Index::mark_indexed_through`].
const INDEXED_THROUGH_KEY: &str = "indexed_through_lsn";
/// Meta key (default tree): the latest finish time of a purged saga, milliseconds, 8 bytes
/// big-endian ([`Index::purged_through_ms`]).
const PURGED_THROUGH_KEY: &str = "purged_through_ms";
const BY_FINISH_TREE: &str = "by_finish";

/// Why the index could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("index {}: {source}", path.display())]
    Storage {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("index {}: the record of saga {id} cannot be used: {source}", path.display())]
    Record {
        path: PathBuf,
        id: String,
        #[source]
        source: RecordError,
    },
    #[error("index {}: by_finish key {key_hex} is damaged (no time prefix or an id that is not UTF-8)", path.display())]
    BadFinishKey { path: PathBuf, key_hex: String },
    #[error("index {}: its {key} mark is {len} bytes long, not 8", path.display())]
    BadMark { path: PathBuf, key: &'static str, len: usize },
    #[error("index {}: page token {token:?} was not issued by this index", path.display())]
    BadPageToken { path: PathBuf, token: String },
}

/// Which archived sagas [`Index::list`] returns. Times are a half-open range:
/// `finished_since_ms <= finished_at_ms < finished_until_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only sagas with this status (`COMPLETED` or `COMPENSATED`).
    pub status: Option<String>,
    pub finished_since_ms: Option<u64>,
    pub finished_until_ms: Option<u64>,
}

/// A handle on the index; clones share the same database.
#[derive(Debug, Clone)]
pub struct Index {
    path: PathBuf,
    db: sled::Db,
    sagas: sled::Tree,
    by_finish: sled::Tree,
    /// Archived sagas by status, counted once at open and kept up to date by every `put` and
    /// purge after its transaction committed, so the `sagalog_sagas{status}` gauge needs no
    /// scan per scrape.
    counts: std::sync::Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
}

pub use crate::config::CACHE_BYTES_DEFAULT;

impl Index {
    /// Opens (or creates) the index at `path`, normally `<data-dir>/index`, with the default
    /// cache bound.
    pub fn open(path: impl AsRef<Path>) -> Result<Index, Error> {
        Index::open_with_cache(path, CACHE_BYTES_DEFAULT)
    }

    /// [`Index::open`] with the page cache bounded to `cache_bytes_max` bytes.
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes_max: u64) -> Result<Index, Error> {
        let path = path.as_ref().to_path_buf();
        let storage = |source| Error::Storage { path: path.clone(), source };
        let db = sled::Config::new().path(&path).cache_capacity(cache_bytes_max).open().map_err(storage)?;
        let sagas = db.open_tree(SAGAS_TREE).map_err(storage)?;
        let by_finish = db.open_tree(BY_FINISH_TREE).map_err(storage)?;
        let mut index = Index { path, db, sagas, by_finish, counts: Default::default() };
        index.counts = std::sync::Arc::new(std::sync::Mutex::new(index.count_by_status()?));
        Ok(index)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `record`, replacing any record of the same saga (and its old `by_finish` key).
    pub fn put(&self, record: &SagaRecord) -> Result<(), Error> {
        record.check().map_err(|source| self.record_error(&record.id, source))?;
        let bytes = record.encode();
        let id = record.id.as_str();
        let new_key = finish_key(record.finished_at_ms, id);
        let result = (&self.sagas, &self.by_finish).transaction(|(sagas, by_finish)| {
            let mut replaced = None;
            if let Some(old) = sagas.get(id.as_bytes())? {
                let old = SagaRecord::decode(id, &old).map_err(ConflictableTransactionError::Abort)?;
                by_finish.remove(finish_key(old.finished_at_ms, id))?;
                replaced = Some(old.status);
            }
            sagas.insert(id.as_bytes(), bytes.as_slice())?;
            by_finish.insert(new_key.as_slice(), record.status.as_bytes())?;
            Ok(replaced)
        });
        let replaced = result.map_err(|e| self.transaction_error(id, e))?;
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = replaced.and_then(|old| counts.get_mut(&old)) {
            *old = old.saturating_sub(1);
        }
        *counts.entry(record.status.clone()).or_insert(0) += 1;
        Ok(())
    }

    /// How many archived sagas have each status, as counted at open and kept since (no scan).
    pub fn archived_counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The record of saga `id`, if it is archived.
    pub fn get(&self, id: &str) -> Result<Option<SagaRecord>, Error> {
        let Some(bytes) = self.sagas.get(id.as_bytes()).map_err(|e| self.storage_error(e))? else {
            return Ok(None);
        };
        SagaRecord::decode(id, &bytes).map(Some).map_err(|source| self.record_error(id, source))
    }

    pub fn contains(&self, id: &str) -> Result<bool, Error> {
        self.sagas.contains_key(id.as_bytes()).map_err(|e| self.storage_error(e))
    }

    /// One page of archived sagas matching `filter`, by finish time ascending (ties by id),
    /// at most `limit` records (clamped to `1..=LIST_LIMIT_MAX`). The returned token, when
    /// there is one, continues right after the last record returned: records inserted
    /// meanwhile with a later finish time show up on later pages, and none already listed
    /// repeats.
    pub fn list(
        &self,
        filter: &ListFilter,
        page_token: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<SagaRecord>, Option<String>), Error> {
        let limit = limit.clamp(1, LIST_LIMIT_MAX);
        let since = filter.finished_since_ms.unwrap_or(0).to_be_bytes().to_vec();
        let lower = match page_token {
            Some(token) => {
                let after = self.decode_page_token(token)?;
                if after >= since { Bound::Excluded(after) } else { Bound::Included(since) }
            }
            None => Bound::Included(since),
        };
        let upper = match filter.finished_until_ms {
            Some(until) => Bound::Excluded(until.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        if range_is_empty(&lower, &upper) {
            return Ok((Vec::new(), None));
        }
        let mut page = Vec::new();
        let mut last_key: Option<sled::IVec> = None;
        for entry in self.by_finish.range::<Vec<u8>, _>((lower, upper)) {
            let (key, status) = entry.map_err(|e| self.storage_error(e))?;
            if filter.status.as_deref().is_some_and(|want| want.as_bytes() != status.as_ref()) {
                continue;
            }
            if page.len() == limit {
                // One more match exists: the listing goes on after the last record returned.
                return Ok((page, last_key.map(|k| hex_encode(&k))));
            }
            let (finished_at_ms, id) = self.split_finish_key(&key)?;
            // A record purged or re-put since the scan began is gone from here: skip it.
            let Some(record) = self.get(id)? else { continue };
            if record.finished_at_ms != finished_at_ms {
                continue;
            }
            page.push(record);
            last_key = Some(key);
        }
        Ok((page, None))
    }

    /// How many archived sagas have each status. Reads the small finish-order tree only (one
    /// key and a status per saga), not the records.
    pub fn count_by_status(&self) -> Result<BTreeMap<String, u64>, Error> {
        let mut counts = BTreeMap::new();
        for entry in self.by_finish.iter().values() {
            let status = entry.map_err(|e| self.storage_error(e))?;
            *counts.entry(String::from_utf8_lossy(&status).into_owned()).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Removes every saga that finished before `cutoff_ms` from both trees; returns how many.
    pub fn purge_finished_before(&self, cutoff_ms: u64) -> Result<u64, Error> {
        self.purge_oldest(Some(cutoff_ms), u64::MAX)
    }

    /// Removes the sagas that finished first until at most `keep` remain (config key
    /// `[index] retention_sagas_max`); returns how many it removed.
    pub fn purge_beyond_count(&self, keep: u64) -> Result<u64, Error> {
        let archived: u64 = self.archived_counts().values().sum();
        match archived.saturating_sub(keep) {
            0 => Ok(0),
            excess => self.purge_oldest(None, excess),
        }
    }

    /// The latest finish time of a saga purged from this index (by either retention), or
    /// `None` if none was: a marker of a saga the index does not know, applied no later than
    /// this, may be a purged saga's.
    pub fn purged_through_ms(&self) -> Result<Option<u64>, Error> {
        self.mark(PURGED_THROUGH_KEY)
    }

    /// Removes up to `most` sagas, first finished first, that finished before `cutoff_ms`
    /// (any, without one), and raises the purged-through mark over them.
    fn purge_oldest(&self, cutoff_ms: Option<u64>, most: u64) -> Result<u64, Error> {
        let end = cutoff_ms.map_or(Bound::Unbounded, |cutoff| Bound::Excluded(cutoff.to_be_bytes().to_vec()));
        // Keys scanned (the loop's bound: a saga re-put since its scan is not removed) and
        // sagas removed.
        let (mut scanned, mut purged) = (0u64, 0u64);
        while scanned < most {
            let take = usize::try_from(most - scanned).unwrap_or(usize::MAX).min(PURGE_BATCH);
            let keys: Vec<sled::IVec> = self
                .by_finish
                .range::<Vec<u8>, _>((Bound::Unbounded, end.clone()))
                .keys()
                .take(take)
                .collect::<Result<_, _>>()
                .map_err(|e| self.storage_error(e))?;
            let Some(last) = keys.last() else { break };
            let (through_ms, _) = self.split_finish_key(last)?;
            let mut batch = Vec::with_capacity(keys.len());
            for key in &keys {
                let (_, id) = self.split_finish_key(key)?;
                batch.push((key.clone(), id.to_owned()));
            }
            // The mark first: a crash between the two leaves a mark a little ahead of the
            // purge, which only makes the audit count a few more markers as purged sagas'.
            if self.purged_through_ms()?.is_none_or(|marked| marked < through_ms) {
                self.db.insert(PURGED_THROUGH_KEY, &through_ms.to_be_bytes()).map_err(|e| self.storage_error(e))?;
            }
            // Purging decodes nothing, so it never aborts.
            let result = (&self.sagas, &self.by_finish).transaction(
                |(sagas, by_finish)| -> ConflictableTransactionResult<Vec<sled::IVec>, Infallible> {
                    let mut removed = Vec::new();
                    for (key, id) in &batch {
                        // A saga re-put since the scan has a new key and stays.
                        if let Some(status) = by_finish.remove(key)? {
                            sagas.remove(id.as_bytes())?;
                            removed.push(status);
                        }
                    }
                    Ok(removed)
                },
            );
            scanned += keys.len() as u64;
            purged += match result {
                Ok(removed) => {
                    let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    for status in &removed {
                        if let Some(n) = counts.get_mut(String::from_utf8_lossy(status).as_ref()) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    removed.len() as u64
                }
                Err(TransactionError::Storage(source)) => return Err(self.storage_error(source)),
                Err(TransactionError::Abort(never)) => match never {},
            };
        }
        tracing::debug!(index = %self.path.display(), ?cutoff_ms, purged, "purged finished sagas");
        Ok(purged)
    }

    /// How many sagas are archived. Counts by scanning: meant for tests and operators.
    pub fn len(&self) -> usize {
        self.sagas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sagas.is_empty()
    }

    /// Makes every write so far durable (sled's `flush`: write out and fsync).
    pub fn flush(&self) -> Result<(), Error> {
        self.db.flush().map(|_bytes| ()).map_err(|e| self.storage_error(e))
    }

    /// Records that the index holds every saga finished at or below `lsn` (durable with the
    /// next [`Index::flush`]). The mark never goes down.
    pub fn mark_indexed_through(&self, lsn: u64) -> Result<(), Error> {
        if self.indexed_through_lsn()?.is_some_and(|marked| marked >= lsn) {
            return Ok(());
        }
        self.db.insert(INDEXED_THROUGH_KEY, &lsn.to_be_bytes()).map(|_old| ()).map_err(|e| self.storage_error(e))
    }

    /// The highest LSN passed to [`Index::mark_indexed_through`], or `None` if the index was
    /// never marked (new, written before the mark existed, or damaged).
    pub fn indexed_through_lsn(&self) -> Result<Option<u64>, Error> {
        self.mark(INDEXED_THROUGH_KEY)
    }

    /// The 8-byte big-endian number stored under meta key `key`, if any.
    fn mark(&self, key: &'static str) -> Result<Option<u64>, Error> {
        let Some(bytes) = self.db.get(key).map_err(|e| self.storage_error(e))? else {
            return Ok(None);
        };
        let mark = <[u8; 8]>::try_from(bytes.as_ref()).map_err(|_| Error::BadMark {
            path: self.path.clone(),
            key,
            len: bytes.len(),
        })?;
        Ok(Some(u64::from_be_bytes(mark)))
    }

    fn split_finish_key<'k>(&self, key: &'k [u8]) -> Result<(u64, &'k str), Error> {
        let bad = || Error::BadFinishKey { path: self.path.clone(), key_hex: hex_encode(key) };
        let (prefix, id) = key.split_first_chunk::<FINISH_PREFIX_BYTES>().ok_or_else(bad)?;
        let id = std::str::from_utf8(id).map_err(|_| bad())?;
        Ok((u64::from_be_bytes(*prefix), id))
    }

    fn decode_page_token(&self, token: &str) -> Result<Vec<u8>, Error> {
        let bad = || Error::BadPageToken { path: self.path.clone(), token: token.to_owned() };
        let key = hex_decode(token).ok_or_else(bad)?;
        self.split_finish_key(&key).map_err(|_| bad())?;
        Ok(key)
    }

    fn storage_error(&self, source: sled::Error) -> Error {
        Error::Storage { path: self.path.clone(), source }
    }

    fn record_error(&self, id: &str, source: RecordError) -> Error {
        Error::Record { path: self.path.clone(), id: id.to_owned(), source }
    }

    fn transaction_error(&self, id: &str, e: TransactionError<RecordError>) -> Error {
        match e {
            TransactionError::Abort(source) => self.record_error(id, source),
            TransactionError::Storage(source) => self.storage_error(source),
        }
    }
}

/// The `by_finish` key of a saga: big-endian time first, so keys sort by finish time.
fn finish_key(finished_at_ms: u64, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(FINISH_PREFIX_BYTES + id.len());
    key.extend_from_slice(&finished_at_ms.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

fn range_is_empty(lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
    match (lower, upper) {
        (Bound::Included(lo), Bound::Excluded(hi)) | (Bound::Excluded(lo), Bound::Excluded(hi)) => lo >= hi,
        _ => false,
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    text
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    text.as_bytes().chunks_exact(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page tokens are hex of a by_finish key and decode back to it.
    #[test]
    fn hex_round_trips() {
        let key = finish_key(0x0102_0304_0506_0708, "saga-ä");
        assert_eq!(hex_decode(&hex_encode(&key)), Some(key));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
