//! The archive of finished sagas and the checkpoint file, as recovery and status queries rely
//! on them: records survive a restart, listing is ordered and pages stably, retention removes
//! exactly what it should, and a damaged checkpoint is always an error.

use std::collections::BTreeMap;
use std::path::Path;

use sagalog::checkpoint::{self, Checkpoint};
use sagalog::engine::record::{Failed, Finished, Started, Submitted, Succeeded};
use sagalog::engine::{Outcome, Record, Saga, StepCall, StepPolicy};
use sagalog::index::{Error, Index, ListFilter, SagaRecord, StepRecord};
use sagalog::participant::Direction;

const POLICY: StepPolicy = StepPolicy { max_attempts: 2, compensate_max_attempts: 2 };

fn submitted(id: &str, steps: u32, at_ms: u64) -> Saga {
    Saga::submitted(&Submitted {
        saga: id.to_owned(),
        steps: (0..steps)
            .map(|i| StepCall { action: format!("act{i}"), params: BTreeMap::new(), from: Default::default() })
            .collect(),
        policies: vec![POLICY; steps as usize],
        digest: 0xfeed,
        at_ms,
        actions: Default::default(),
        scope: None,
    })
}

fn started(saga: &str, step: u32, direction: Direction, attempt: u32, at_ms: u64) -> Record {
    Record::StepStarted(Started { saga: saga.to_owned(), step, direction, attempt, at_ms, deadline_ms: None })
}

fn succeeded(saga: &str, step: u32, direction: Direction, by_marker: bool, at_ms: u64) -> Record {
    Record::StepSucceeded(Succeeded {
        saga: saga.to_owned(),
        step,
        direction,
        attempt: 1,
        by_marker,
        at_ms,
        outputs: Default::default(),
    })
}

fn failed(saga: &str, step: u32, direction: Direction, error: &str, retryable: bool, at_ms: u64) -> Record {
    Record::StepFailed(Failed {
        saga: saga.to_owned(),
        step,
        direction,
        attempt: 1,
        error: error.to_owned(),
        retryable,
        maybe_applied: retryable,
        at_ms,
    })
}

fn finished(saga: &str, outcome: Outcome, at_ms: u64) -> Record {
    Record::SagaFinished(Finished { saga: saga.to_owned(), outcome, at_ms })
}

/// A two-step saga that completed at `finished_at_ms`.
fn completed(id: &str, finished_at_ms: u64) -> SagaRecord {
    let mut saga = submitted(id, 2, 1);
    for step in 0..2 {
        saga.apply(&started(id, step, Direction::Forward, 1, 2));
        saga.apply(&succeeded(id, step, Direction::Forward, false, 3));
    }
    saga.apply(&finished(id, Outcome::Completed, finished_at_ms));
    SagaRecord::from_saga(&saga)
}

/// A two-step saga whose second step failed for good, so the first was compensated.
fn compensated(id: &str, finished_at_ms: u64) -> SagaRecord {
    let mut saga = submitted(id, 2, 1);
    saga.apply(&started(id, 0, Direction::Forward, 1, 2));
    saga.apply(&succeeded(id, 0, Direction::Forward, false, 3));
    saga.apply(&started(id, 1, Direction::Forward, 1, 4));
    saga.apply(&failed(id, 1, Direction::Forward, "constraint violated", false, 5));
    saga.apply(&started(id, 0, Direction::Compensate, 1, 6));
    saga.apply(&succeeded(id, 0, Direction::Compensate, false, 7));
    saga.apply(&finished(id, Outcome::Compensated, finished_at_ms));
    SagaRecord::from_saga(&saga)
}

fn ids(records: &[SagaRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn open(dir: &Path) -> Index {
    while_locked(|| Index::open(dir.join("index")))
}

/// `open()` again while sled still holds the directory's file lock: a dropped `sled::Db`
/// releases it from a background thread, a moment later on a loaded machine.
fn while_locked<T, E: std::fmt::Debug>(open: impl Fn() -> Result<T, E>) -> T {
    for _ in 0..250 {
        match open() {
            Ok(opened) => return opened,
            Err(e) if format!("{e:?}").contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    panic!("the index directory stayed locked for 5 s");
}

/// Lists every page of `filter`, `limit` records at a time.
fn list_all(index: &Index, filter: &ListFilter, limit: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let (page, next) = index.list(filter, token.as_deref(), limit).unwrap();
        assert!(page.len() <= limit);
        all.extend(page.into_iter().map(|r| r.id));
        match next {
            Some(next) => token = Some(next),
            None => return all,
        }
    }
}

/// A record built from a real saga keeps what a status query needs, and reads back equal.
#[test]
fn record_from_saga_round_trips() {
    let id = "s-retried";
    let mut saga = submitted(id, 2, 10);
    saga.note_recovery();
    saga.apply(&started(id, 0, Direction::Forward, 1, 11));
    saga.apply(&failed(id, 0, Direction::Forward, "timeout", true, 12));
    saga.apply(&started(id, 0, Direction::Forward, 2, 13));
    saga.apply(&succeeded(id, 0, Direction::Forward, true, 14));
    saga.apply(&started(id, 1, Direction::Forward, 1, 15));
    saga.apply(&failed(id, 1, Direction::Forward, "duplicate key", false, 16));
    saga.apply(&started(id, 0, Direction::Compensate, 1, 17));
    saga.apply(&succeeded(id, 0, Direction::Compensate, false, 18));
    saga.apply(&finished(id, Outcome::Compensated, 19));
    let record = SagaRecord::from_saga(&saga);
    assert_eq!(record.format_version, 1);
    assert_eq!(record.status, "COMPENSATED");
    assert_eq!((record.submitted_at_ms, record.finished_at_ms, record.recoveries), (10, 19, 1));
    assert_eq!(record.digest, 0xfeed);
    assert_eq!(record.compensation_reason.as_deref(), Some("step 1 failed: duplicate key"));
    assert_eq!(
        record.steps,
        vec![
            StepRecord {
                action: "act0".into(),
                forward_attempts: 2,
                forward_done: true,
                forward_by_marker: true,
                compensate_attempts: 1,
                compensated: true,
                last_error: Some("timeout".into()),
                outputs: Default::default(),
                // Archived sagas keep their step timings: first start, last finish.
                started_at_ms: Some(11),
                finished_at_ms: Some(18),
            },
            StepRecord {
                action: "act1".into(),
                forward_attempts: 1,
                forward_done: false,
                forward_by_marker: false,
                compensate_attempts: 0,
                compensated: false,
                last_error: Some("duplicate key".into()),
                outputs: Default::default(),
                // A forward attempt that failed for good has no finish, as in the live view.
                started_at_ms: Some(15),
                finished_at_ms: None,
            },
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    assert!(!index.contains(id).unwrap());
    assert_eq!(index.get(id).unwrap(), None);
    index.put(&record).unwrap();
    assert!(index.contains(id).unwrap());
    assert_eq!(index.get(id).unwrap(), Some(record));
    assert_eq!(index.len(), 1);
}

/// A saga that is not finished is refused with an error naming it: its journal must stay.
#[test]
fn unfinished_saga_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    let mut saga = submitted("s-running", 1, 1);
    saga.apply(&started("s-running", 0, Direction::Forward, 1, 2));
    let err = index.put(&SagaRecord::from_saga(&saga)).unwrap_err();
    assert!(err.to_string().contains("s-running") && err.to_string().contains("RUNNING"), "{err}");
    assert!(index.is_empty());
}

/// Putting a saga again replaces its record and moves it to its new finish time.
#[test]
fn re_put_replaces_record_and_finish_key() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    index.put(&completed("a", 100)).unwrap();
    index.put(&completed("b", 150)).unwrap();
    let again = compensated("a", 200);
    index.put(&again).unwrap();
    index.put(&again).unwrap();
    assert_eq!(index.get("a").unwrap(), Some(again));
    assert_eq!(index.len(), 2);
    assert_eq!(list_all(&index, &ListFilter::default(), 10), ["b", "a"]);
    let before_150 = ListFilter { finished_until_ms: Some(150), ..ListFilter::default() };
    assert!(list_all(&index, &before_150, 10).is_empty());
    drop(index);
    assert_eq!(raw_tree_lens(dir.path()), (2, 2));
}

/// Listing is by finish time ascending, ties by id, whatever the order of insertion.
#[test]
fn list_orders_by_finish_time() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    for (id, at) in [("d", 40), ("a", 30), ("c", 10), ("b", 30), ("e", 20)] {
        index.put(&completed(id, at)).unwrap();
    }
    let (page, next) = index.list(&ListFilter::default(), None, 100).unwrap();
    assert_eq!(ids(&page), ["c", "e", "a", "b", "d"]);
    assert_eq!(next, None);
}

/// The status filter returns only sagas with that status, in order.
#[test]
fn list_filters_by_status() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    for i in 0..10u64 {
        let id = format!("s{i}");
        let record = if i % 3 == 0 { compensated(&id, i) } else { completed(&id, i) };
        index.put(&record).unwrap();
    }
    let only = |status: &str| ListFilter { status: Some(status.into()), ..ListFilter::default() };
    assert_eq!(list_all(&index, &only("COMPENSATED"), 100), ["s0", "s3", "s6", "s9"]);
    assert_eq!(list_all(&index, &only("COMPENSATED"), 1), ["s0", "s3", "s6", "s9"]);
    assert_eq!(list_all(&index, &only("COMPLETED"), 2), ["s1", "s2", "s4", "s5", "s7", "s8"]);
    assert!(list_all(&index, &only("STUCK"), 3).is_empty());
}

/// The time range is half-open: since is included, until is not.
#[test]
fn list_filters_by_time_range() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    for at in [5u64, 10, 15, 20, 25] {
        index.put(&completed(&format!("t{at}"), at)).unwrap();
    }
    let range = |since, until| ListFilter { status: None, finished_since_ms: since, finished_until_ms: until };
    assert_eq!(list_all(&index, &range(Some(10), Some(20)), 10), ["t10", "t15"]);
    assert_eq!(list_all(&index, &range(Some(10), Some(20)), 1), ["t10", "t15"]);
    assert_eq!(list_all(&index, &range(Some(20), None), 10), ["t20", "t25"]);
    assert_eq!(list_all(&index, &range(None, Some(10)), 10), ["t5"]);
    assert!(list_all(&index, &range(Some(20), Some(20)), 10).is_empty());
    assert!(list_all(&index, &range(Some(30), Some(20)), 10).is_empty());
}

/// Pages of a listing cover every record once, in order, and the last page has no token.
#[test]
fn list_pages_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    let expected: Vec<String> = (0..25u64).map(|i| format!("p{i:02}")).collect();
    for (i, id) in expected.iter().enumerate().rev() {
        index.put(&completed(id, 1000 + i as u64)).unwrap();
    }
    let (first, token) = index.list(&ListFilter::default(), None, 10).unwrap();
    assert_eq!(ids(&first), expected[..10]);
    let (second, token) = index.list(&ListFilter::default(), token.as_deref(), 10).unwrap();
    assert_eq!(ids(&second), expected[10..20]);
    let (third, token) = index.list(&ListFilter::default(), token.as_deref(), 10).unwrap();
    assert_eq!(ids(&third), expected[20..]);
    assert_eq!(token, None);
    // A listing that ends exactly at a page boundary has no token on its last page.
    assert_eq!(list_all(&index, &ListFilter::default(), 5), expected);
    assert_eq!(list_all(&index, &ListFilter::default(), 25), expected);
}

/// Records put between two pages do not make the listing repeat or skip any record: later
/// ones appear on later pages, earlier ones are behind the reader.
#[test]
fn inserts_between_pages_do_not_break_the_listing() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    for i in 0..20u64 {
        index.put(&completed(&format!("o{i:02}"), 100 + 10 * i)).unwrap();
    }
    let (first, token) = index.list(&ListFilter::default(), None, 8).unwrap();
    assert_eq!(first.last().map(|r| r.finished_at_ms), Some(170));
    index.put(&completed("early", 105)).unwrap(); // behind the first page
    index.put(&completed("tie", 170)).unwrap(); // same time as the last listed, later id
    index.put(&completed("late", 1000)).unwrap();
    let mut seen = ids(&first).into_iter().map(str::to_owned).collect::<Vec<_>>();
    let mut token = token;
    while let Some(t) = token {
        let (page, next) = index.list(&ListFilter::default(), Some(&t), 8).unwrap();
        seen.extend(page.into_iter().map(|r| r.id));
        token = next;
    }
    let mut expected: Vec<String> = (0..20).map(|i| format!("o{i:02}")).collect();
    expected.insert(8, "tie".into());
    expected.push("late".into());
    assert_eq!(seen, expected);
}

/// A page token the index did not issue is an error, not a restart from the beginning.
#[test]
fn foreign_page_token_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    for token in ["", "xyz", "abc", "00ff"] {
        let err = index.list(&ListFilter::default(), Some(token), 10).unwrap_err();
        assert!(matches!(err, Error::BadPageToken { .. }), "{token:?}: {err}");
    }
}

/// Retention removes exactly the sagas that finished before the cutoff, from both trees.
#[test]
fn purge_removes_exactly_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    for i in 0..600u64 {
        index.put(&completed(&format!("r{i:03}"), i)).unwrap();
    }
    assert_eq!(index.purge_finished_before(300).unwrap(), 300);
    assert_eq!(index.purge_finished_before(300).unwrap(), 0);
    assert!(!index.contains("r299").unwrap());
    assert_eq!(index.get("r000").unwrap(), None);
    assert!(index.contains("r300").unwrap());
    assert_eq!(index.len(), 300);
    let listed = list_all(&index, &ListFilter::default(), 1000);
    assert_eq!(listed, (300..600).map(|i| format!("r{i:03}")).collect::<Vec<_>>());
    drop(index);
    assert_eq!(raw_tree_lens(dir.path()), (300, 300));
}

/// Retention by count (`[index] retention_sagas_max`): the sagas that finished first go until
/// at most the limit remain, from both trees, over several purge batches; the purged-through
/// mark says how far it went (the audit's line between purged sagas' markers and orphans), and
/// it survives a reopen.
#[test]
fn purge_beyond_count_keeps_the_newest_and_marks_how_far_it_went() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    assert_eq!(index.purged_through_ms().unwrap(), None);
    for i in 0..700u64 {
        index.put(&completed(&format!("c{i:03}"), 1000 + i)).unwrap();
    }
    assert_eq!(index.purge_beyond_count(1000).unwrap(), 0, "under the limit nothing goes");
    assert_eq!(index.purge_beyond_count(100).unwrap(), 600);
    assert_eq!(index.purge_beyond_count(100).unwrap(), 0);
    assert_eq!(index.purged_through_ms().unwrap(), Some(1599));
    assert!(!index.contains("c599").unwrap());
    assert!(index.contains("c600").unwrap());
    assert_eq!(index.archived_counts().values().sum::<u64>(), 100);
    let listed = list_all(&index, &ListFilter::default(), 1000);
    assert_eq!(listed, (600..700).map(|i| format!("c{i:03}")).collect::<Vec<_>>());
    // The age retention raises the same mark, never lowers it.
    assert_eq!(index.purge_finished_before(1650).unwrap(), 50);
    assert_eq!(index.purged_through_ms().unwrap(), Some(1649));
    assert_eq!(index.purge_finished_before(10).unwrap(), 0);
    assert_eq!(index.purged_through_ms().unwrap(), Some(1649));
    index.flush().unwrap();
    drop(index);
    assert_eq!(raw_tree_lens(dir.path()), (50, 50));
    assert_eq!(open(dir.path()).purged_through_ms().unwrap(), Some(1649));
}

/// Everything put and flushed is there after the index is dropped and opened again.
#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<SagaRecord> = (0..50u64)
        .map(|i| if i % 2 == 0 { completed(&format!("k{i:02}"), i) } else { compensated(&format!("k{i:02}"), i) })
        .collect();
    {
        let index = open(dir.path());
        for r in &records {
            index.put(r).unwrap();
        }
        index.flush().unwrap();
    }
    let index = open(dir.path());
    assert_eq!(index.len(), records.len());
    for r in &records {
        assert_eq!(index.get(&r.id).unwrap().as_ref(), Some(r));
    }
    let (page, _) = index.list(&ListFilter::default(), None, 1000).unwrap();
    assert_eq!(page, records);
}

/// A stored record that does not decode is an error naming the saga, from get and from list.
#[test]
fn undecodable_record_is_an_error_naming_the_saga() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = open(dir.path());
        index.put(&completed("good", 1)).unwrap();
        index.put(&completed("broken-saga", 2)).unwrap();
        index.flush().unwrap();
    }
    {
        let db = while_locked(|| sled::open(dir.path().join("index")));
        db.open_tree("sagas").unwrap().insert("broken-saga", &b"\xc1not msgpack"[..]).unwrap();
        db.flush().unwrap();
    }
    let index = open(dir.path());
    assert!(index.get("good").unwrap().is_some());
    let err = index.get("broken-saga").unwrap_err();
    assert!(err.to_string().contains("broken-saga"), "{err}");
    let err = index.list(&ListFilter::default(), None, 10).unwrap_err();
    assert!(err.to_string().contains("broken-saga"), "{err}");
}

/// (sagas, by_finish) entry counts, read straight from sled after the index is dropped.
fn raw_tree_lens(dir: &Path) -> (usize, usize) {
    let db = while_locked(|| sled::open(dir.join("index")));
    (db.open_tree("sagas").unwrap().len(), db.open_tree("by_finish").unwrap().len())
}

const CP: Checkpoint = Checkpoint {
    replay_from_lsn: 0x0102_0304_0506_0708,
    indexed_through_lsn: 77,
    written_at_ms: 1_700_000_000_000,
    journal_next_lsn: 0x0102_0304_0506_0709,
};

/// A checkpoint reads back as written, and a newer one replaces it.
#[test]
fn checkpoint_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    checkpoint::write(dir.path(), &CP).unwrap();
    assert_eq!(checkpoint::read(dir.path()).unwrap(), Some(CP));
    let newer = Checkpoint { replay_from_lsn: 900, indexed_through_lsn: 950, written_at_ms: 5, journal_next_lsn: 990 };
    checkpoint::write(dir.path(), &newer).unwrap();
    assert_eq!(checkpoint::read(dir.path()).unwrap(), Some(newer));
    assert_eq!(std::fs::read(dir.path().join("checkpoint")).unwrap().len(), checkpoint::FILE_BYTES);
    assert!(!dir.path().join("checkpoint.tmp").exists());
}

/// A version-1 checkpoint (38 bytes, written by earlier builds) still reads, with
/// `journal_next_lsn` 0 ("unknown").
#[test]
fn checkpoint_version_1_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let old = CP.encode_version_1();
    assert_eq!(old.len(), 38);
    std::fs::write(dir.path().join("checkpoint"), old).unwrap();
    assert_eq!(checkpoint::read(dir.path()).unwrap(), Some(Checkpoint { journal_next_lsn: 0, ..CP }));
}

/// A data directory without a checkpoint has none.
#[test]
fn missing_checkpoint_is_none() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(checkpoint::read(dir.path()).unwrap(), None);
}

/// Every change of a single byte, every truncation and a trailing byte are each refused, and
/// reported as an error naming the checkpoint file.
#[test]
fn every_single_byte_corruption_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    checkpoint::write(dir.path(), &CP).unwrap();
    let file = dir.path().join("checkpoint");
    let good = std::fs::read(&file).unwrap();
    let expect_error = |bytes: &[u8], what: &str| {
        std::fs::write(&file, bytes).unwrap();
        let err = checkpoint::read(dir.path()).unwrap_err();
        assert!(matches!(err, checkpoint::Error::Damaged { .. }), "{what}: {err}");
        assert!(err.to_string().contains(&file.display().to_string()), "{what}: {err}");
    };
    for at in 0..good.len() {
        // Every other value of the byte, in memory; through the file, a few per position
        // (a file write per value is slow on some filesystems and proves nothing more).
        for value in (0..=u8::MAX).filter(|v| *v != good[at]) {
            let mut bad = good.clone();
            bad[at] = value;
            assert!(Checkpoint::decode(&bad).is_err(), "byte {at} = {value:#04x}");
        }
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= flip;
            expect_error(&bad, &format!("byte {at} ^ {flip:#04x}"));
        }
    }
    for len in 0..good.len() {
        expect_error(&good[..len], &format!("truncated to {len}"));
    }
    let mut long = good.clone();
    long.push(0);
    expect_error(&long, "one byte too many");
}

/// A leftover checkpoint.tmp from a crashed write is never read, and the next write replaces it.
#[test]
fn leftover_tmp_does_not_confuse_read() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("checkpoint.tmp");
    std::fs::write(&tmp, b"SAGACKPT half-writ").unwrap();
    assert_eq!(checkpoint::read(dir.path()).unwrap(), None);
    checkpoint::write(dir.path(), &CP).unwrap();
    std::fs::write(&tmp, Checkpoint { replay_from_lsn: 1, ..CP }.encode()).unwrap();
    assert_eq!(checkpoint::read(dir.path()).unwrap(), Some(CP));
    let newer = Checkpoint { replay_from_lsn: 2, ..CP };
    checkpoint::write(dir.path(), &newer).unwrap();
    assert_eq!(checkpoint::read(dir.path()).unwrap(), Some(newer));
    assert!(!tmp.exists());
}

/// The archived counts by status (what `sagalog_sagas{status}` and `Admin.Stats` report) are
/// kept without a scan and always equal a full count: after puts, a put that replaces a record
/// with another status, a purge, and a reopen.
#[test]
fn archived_counts_are_kept_exact_through_puts_replacements_purges_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let index = Index::open(&path).unwrap();
    let agree = |index: &Index| {
        let kept = index.archived_counts();
        assert_eq!(
            kept.into_iter().filter(|(_, n)| *n > 0).collect::<BTreeMap<_, _>>(),
            index.count_by_status().unwrap()
        );
    };
    for n in 0..5 {
        index.put(&completed(&format!("c-{n}"), 100 + n)).unwrap();
    }
    index.put(&compensated("x-0", 150)).unwrap();
    agree(&index);
    assert_eq!(index.archived_counts().get("COMPLETED"), Some(&5));
    index.put(&compensated("c-4", 160)).unwrap();
    agree(&index);
    assert_eq!(index.archived_counts().get("COMPENSATED"), Some(&2));
    assert_eq!(index.purge_finished_before(103).unwrap(), 3);
    agree(&index);
    assert_eq!(index.archived_counts().get("COMPLETED"), Some(&1));
    drop(index);
    let index = Index::open(&path).unwrap();
    agree(&index);
    assert_eq!(index.archived_counts().get("COMPENSATED"), Some(&2));
}
