//! Helpers shared by the journal test suites.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sagalog::journal::{self, Journal, LogSummary, Options, SyncPolicy};
use sagalog::wal_format::RecordKind;

/// A record as read back from disk.
pub type Owned = (u64, RecordKind, Vec<u8>);

/// Every valid record of the journal in `data_dir`, and the scan summary.
pub fn read_all(data_dir: &Path) -> (Vec<Owned>, LogSummary) {
    let mut out = Vec::new();
    let summary = journal::scan(&data_dir.join("journal"), |r, _, _| out.push((r.lsn, r.kind, r.payload.to_vec())))
        .expect("scan the journal");
    (out, summary)
}

/// Options for tests: small segments, no fsync unless asked for.
pub fn fast(segment_bytes_max: u64) -> Options {
    Options { segment_bytes_max, sync: SyncPolicy::Never, ..Options::default() }
}

/// Options for corruption tests: every append is synced before the next is written, so each
/// record's sync watermark covers the record before it, and damage followed by a later record
/// is provably damage to synced data (under `fast`, nothing is synced before shutdown, and
/// such damage reads as a never-synced tail).
pub fn synced(segment_bytes_max: u64) -> Options {
    Options { segment_bytes_max, sync: SyncPolicy::Always, ..Options::default() }
}

/// Opens, appends `payloads` one by one, shuts down; returns the LSNs handed out.
pub fn append_all(data_dir: &Path, options: Options, payloads: &[(RecordKind, Vec<u8>)]) -> Vec<u64> {
    let opened = Journal::open_dir(data_dir, options).expect("open journal");
    let lsns =
        payloads.iter().map(|(kind, p)| opened.journal.append_blocking(*kind, p.clone()).expect("append")).collect();
    opened.journal.shutdown_blocking().expect("shutdown");
    lsns
}

/// The segment files of a data directory, in id order.
pub fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// A payload that differs per index, of varying length.
pub fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// Copies a data directory's journal into a fresh temporary data directory.
pub fn copy_data_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(to.path().join("journal")).unwrap();
    for seg in segments(from) {
        std::fs::copy(&seg, to.path().join("journal").join(seg.file_name().unwrap())).unwrap();
    }
    to
}

pub fn sagalog_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sagalog")
}
