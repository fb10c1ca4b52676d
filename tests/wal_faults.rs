//! Injected I/O failures: a failed fsync or write poisons the journal. Nothing after it is
//! acknowledged, the sync is never retried, and reopening sees exactly the acknowledged records.

mod common;

use std::sync::Arc;

use common::{payload, read_all};
use sagalog::journal::{Error, IoFaults, Journal, Options, SyncPolicy};
use sagalog::wal_format::RecordKind;

fn options(faults: &Arc<IoFaults>) -> Options {
    Options { segment_bytes_max: 8192, sync: SyncPolicy::Always, faults: Some(faults.clone()), ..Options::default() }
}

/// Runs `failing_batch` concurrent appends after `acked` good ones with the given fault armed,
/// and checks the poisoning contract. Returns the acknowledged payloads.
async fn poisoned_by(arm: impl FnOnce(&IoFaults)) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(IoFaults::new());
    let opened = Journal::open_dir(dir.path(), options(&faults)).unwrap();
    let journal = opened.journal;
    let mut acked = Vec::new();
    for i in 0..30 {
        let p = payload(i, 200);
        acked.push((journal.append(RecordKind::StepStarted, p.clone()).await.unwrap(), p));
    }
    arm(&faults);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let journal = journal.clone();
            tokio::spawn(async move { journal.append(RecordKind::StepFailed, payload(100 + i, 300)).await })
        })
        .collect();
    for t in tasks {
        let result = t.await.unwrap();
        assert!(
            matches!(result, Err(Error::Poisoned { .. })),
            "no append of the failed batch is acknowledged: {result:?}"
        );
    }
    let syncs_after_failure = faults.syncs();
    let later = journal.append(RecordKind::StepStarted, b"later".to_vec()).await.unwrap_err();
    assert!(later.to_string().contains("poisoned") && later.to_string().contains("injected"), "{later}");
    assert!(journal.poisoned().is_some());
    let _ = journal.sync().await;
    let _ = journal.shutdown().await;
    assert_eq!(faults.syncs(), syncs_after_failure, "a failed fsync is never retried");

    let reopened = Journal::open_dir(dir.path(), Options::default()).unwrap();
    reopened.journal.shutdown().await.unwrap();
    let (records, summary) = read_all(dir.path());
    assert!(summary.problem.is_none(), "{:?}", summary.problem);
    assert_eq!(records.into_iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(), acked, "exactly the acknowledged records");
}

/// An fdatasync failure poisons the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failure_poisons_and_reopen_sees_exactly_the_acknowledged() {
    poisoned_by(|f| f.fail_sync_in(1)).await;
}

/// A write that fails half way (a short write then an error) poisons the journal too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failure_poisons_and_reopen_sees_exactly_the_acknowledged() {
    poisoned_by(|f| f.fail_write_in(1)).await;
}

/// A failure of the sync that seals a segment before rotation poisons the journal as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failure_at_rotation_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(IoFaults::new());
    let opts = Options { sync: SyncPolicy::Never, ..options(&faults) };
    let opened = Journal::open_dir(dir.path(), opts).unwrap();
    let mut acked =
        vec![(opened.journal.append(RecordKind::StepStarted, payload(0, 100)).await.unwrap(), payload(0, 100))];
    faults.fail_sync_in(1);
    let mut saw_poison = false;
    for i in 0..100 {
        match opened.journal.append(RecordKind::StepStarted, payload(i, 500)).await {
            Ok(lsn) => acked.push((lsn, payload(i, 500))),
            Err(Error::Poisoned { .. }) => {
                saw_poison = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(saw_poison, "rotation syncs the sealed segment even under sync=never, and its failure poisons");
    let _ = opened.journal.shutdown().await;
    Journal::open_dir(dir.path(), Options::default()).unwrap().journal.shutdown().await.unwrap();
    let (records, _) = read_all(dir.path());
    assert_eq!(
        records.into_iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
        acked,
        "the rollback never removes an acknowledged record, even under sync=never"
    );
}

/// `interval` acknowledges without waiting for a sync but syncs by itself within its interval;
/// `never` does not sync until shutdown (both documented as not crash-safe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_policy_syncs_by_itself_and_never_policy_does_not() {
    for (sync, expect_background_sync) in
        [(SyncPolicy::Interval(std::time::Duration::from_millis(20)), true), (SyncPolicy::Never, false)]
    {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(IoFaults::new());
        let opened = Journal::open_dir(dir.path(), Options { sync, ..options(&faults) }).unwrap();
        opened.journal.append(RecordKind::StepStarted, payload(1, 10)).await.unwrap();
        assert_eq!(faults.syncs(), 0, "{sync:?}: the append was acknowledged before any sync");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(faults.syncs() > 0, expect_background_sync, "{sync:?}");
        opened.journal.shutdown().await.unwrap();
        assert!(faults.syncs() > 0, "{sync:?}: a clean shutdown makes everything durable");
    }
}
