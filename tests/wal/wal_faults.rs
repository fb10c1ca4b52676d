//! Injected I/O failures: a failed fsync or write poisons the journal. Nothing after it is
//! acknowledged, the sync is never retried, and reopening sees exactly the acknowledged records.

use crate::common;

use std::sync::Arc;

use common::{payload, read_all};
use sagalog::journal::{CreateStep, Error, IoFaults, Journal, Options, SyncPolicy};
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

/// A segment creation that fails at any step (before or after the new segment's rename)
/// poisons the journal without cutting a byte that a sync made durable: the records of the
/// failed batch that rotation had already synced into the sealed segment stay, so the next open
/// finds a contiguous log (the new segment's header names the LSN after them) and keeps them.
/// The rotation is made to happen inside a batch: the writer is held in the sync of a batch of
/// one record while the next forty are queued, so they all form the next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_creation_failure_at_any_step_never_cuts_synced_records() {
    for step in CreateStep::ALL {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(IoFaults::new());
        let opened = Journal::open_dir(dir.path(), options(&faults)).unwrap();
        let journal = opened.journal;
        let mut written = Vec::new();
        for i in 0..3 {
            let p = payload(i, 200);
            written.push((journal.append(RecordKind::StepStarted, p.clone()).await.unwrap(), p));
        }
        let creates = faults.creates();
        faults.fail_create_in(1, step);
        faults.hold_syncs();
        let single = {
            let journal = journal.clone();
            tokio::spawn(async move { journal.append(RecordKind::StepStarted, payload(3, 200)).await })
        };
        while !faults.sync_waiting() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut queued = Vec::new();
        for i in 4..44 {
            queued.push(journal.append_queued(RecordKind::StepStarted, payload(i, 200)).await.unwrap());
        }
        faults.release_syncs();
        written.push((single.await.unwrap().unwrap(), payload(3, 200)));
        let acked = written.len();
        for q in queued {
            let result = q.durable().await;
            assert!(matches!(result, Err(Error::Poisoned { .. })), "{step:?}: {result:?}");
        }
        assert_eq!(faults.creates(), creates + 1, "{step:?}: the batch rotated once");
        let _ = journal.shutdown().await;

        let reopened = Journal::open_dir(dir.path(), Options::default())
            .unwrap_or_else(|e| panic!("{step:?}: a failed rotation must not make the log unopenable: {e}"));
        let next = reopened.journal.append(RecordKind::StepStarted, b"after".to_vec()).await.unwrap();
        reopened.journal.shutdown().await.unwrap();
        let (records, summary) = read_all(dir.path());
        assert!(summary.problem.is_none(), "{step:?}: {:?}", summary.problem);
        let records: Vec<_> = records.into_iter().map(|r| (r.0, r.2)).collect();
        let expected: Vec<_> = (0..44).map(|i| (i as u64 + 1, payload(i, 200))).collect();
        let kept = records.len() - 1;
        assert_eq!(records[..kept], expected[..kept], "{step:?}: the log is a prefix of what was appended");
        assert_eq!(records[kept], (next, b"after".to_vec()), "{step:?}");
        assert!(
            kept > acked + 1,
            "{step:?}: the failed batch's records synced by the rotation are kept (kept {kept}, acknowledged {acked})"
        );
        assert!(kept < expected.len(), "{step:?}: nothing was written past the failed rotation");
    }
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

/// A segment shortened while a scan is reading it (a poisoned writer's rollback under a live
/// `Admin.Recover`) ends that scan normally; with a memory map, the next page read was a SIGBUS
/// that killed the whole process (issue 10, item 17).
#[test]
fn a_segment_shortened_during_a_scan_is_no_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<_> = (0..64).map(|i| (RecordKind::StepStarted, payload(i, 4000))).collect();
    common::append_all(dir.path(), common::fast(1 << 20), &payloads);
    let segment = common::segments(dir.path()).pop().unwrap();
    let mut visited = 0;
    let summary = sagalog::journal::scan(&dir.path().join("journal"), |_, _, _| {
        if visited == 0 {
            std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(64).unwrap();
        }
        visited += 1;
    })
    .unwrap();
    assert_eq!(visited, 64, "the scan read the bytes it had, not the shortened file");
    assert!(summary.problem.is_none(), "{:?}", summary.problem);
}

/// A bounded scan of a live journal hands out only acknowledged records (up to the bound) and
/// ignores segments created after it.
#[test]
fn a_scan_bounded_by_the_acknowledged_lsn_reads_nothing_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<_> = (0..40).map(|i| (RecordKind::StepStarted, payload(i, 500))).collect();
    let lsns = common::append_all(dir.path(), common::fast(4096), &payloads);
    assert!(common::segments(dir.path()).len() > 3);
    let upto = lsns[17];
    let mut seen = Vec::new();
    let summary =
        sagalog::journal::scan_upto(&dir.path().join("journal"), lsns[3], Some(upto), |r, _, _| seen.push(r.lsn))
            .unwrap();
    assert_eq!(seen, lsns[3..=17].to_vec());
    assert!(summary.problem.is_none(), "{:?}", summary.problem);
}

/// Paging a dump of a live journal (`GET /v1/admin/journal/records`): each page reads from the
/// segment that holds its first LSN, never the segments before it (they were the earlier
/// pages'), so a dump of N pages reads the log once, not N times. Shown by damaging the first
/// segment: a full scan stops there, a window past it does not read it. Pages stop where the
/// visitor says, and together give every record once, in order.
#[test]
fn a_window_scan_reads_from_the_segment_of_its_first_lsn_and_stops_when_told() {
    use std::ops::ControlFlow;
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<_> = (0..40).map(|i| (RecordKind::StepStarted, payload(i, 500))).collect();
    let lsns = common::append_all(dir.path(), common::fast(4096), &payloads);
    let segments = common::segments(dir.path());
    assert!(segments.len() > 3, "{} segments", segments.len());
    let journal = dir.path().join("journal");
    let upto = *lsns.last().unwrap();

    // Pages of 7 cover every record once.
    let mut all = Vec::new();
    let mut from = lsns[0];
    loop {
        let mut page = Vec::new();
        let mut next = None;
        let problem = sagalog::journal::scan_window(&journal, from, Some(upto), |r, _, _| {
            if page.len() == 7 {
                next = Some(r.lsn);
                return ControlFlow::Break(());
            }
            page.push(r.lsn);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(problem.is_none(), "{problem:?}");
        all.extend(page);
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(all, lsns);

    // Damage in the middle of the first segment: the full scan reports it, the window that
    // starts in the last segment never reads it.
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&segments[0], &bytes).unwrap();
    let full = sagalog::journal::scan_upto(&journal, 0, Some(upto), |_, _, _| {}).unwrap();
    assert!(full.problem.is_some(), "the full scan finds the damage");
    let from = lsns[36];
    let mut seen = Vec::new();
    let problem = sagalog::journal::scan_window(&journal, from, Some(upto), |r, _, _| {
        seen.push(r.lsn);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(problem.is_none(), "{problem:?}");
    assert_eq!(seen, lsns[36..].to_vec());
    // A window that starts in the damaged segment reports the damage.
    let problem =
        sagalog::journal::scan_window(&journal, lsns[0], Some(upto), |_, _, _| ControlFlow::Continue(())).unwrap();
    assert!(problem.is_some(), "the damage inside the window is reported");
}
