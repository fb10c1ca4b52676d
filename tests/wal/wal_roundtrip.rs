//! Appending and reading back: what goes in comes out, with the same LSNs, across segment
//! rotations, reopens and checkpoint truncation.

use crate::common;

use common::{append_all, fast, payload, read_all, segments};
use proptest::prelude::*;
use sagalog::journal::{Journal, Options, SyncPolicy};
use sagalog::wal_format::RecordKind;

fn kinds() -> impl Strategy<Value = RecordKind> {
    (1u8..=8).prop_map(|t| RecordKind::from_u8(t).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any sequence of appends, split over any number of sessions, with any segment size:
    /// reopening yields exactly the appended records with exactly the LSNs that were returned.
    #[test]
    fn any_appends_any_segment_size_reopen_identical(
        segment_bytes in 4096u64..32 * 1024,
        sessions in proptest::collection::vec(
            proptest::collection::vec((kinds(), proptest::collection::vec(any::<u8>(), 0..3000)), 0..40),
            1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        for session in &sessions {
            let lsns = append_all(dir.path(), fast(segment_bytes), session);
            for ((kind, p), lsn) in session.iter().zip(lsns) {
                expected.push((lsn, *kind, p.clone()));
            }
        }
        let (records, summary) = read_all(dir.path());
        prop_assert!(summary.problem.is_none(), "{:?}", summary.problem);
        let lsns: Vec<u64> = expected.iter().map(|r| r.0).collect();
        prop_assert_eq!(lsns, (1..=expected.len() as u64).collect::<Vec<_>>(), "LSNs are dense from 1");
        prop_assert_eq!(records, expected);
    }
}

/// A record larger than the segment size gets a segment of its own instead of failing.
#[test]
fn oversized_record_gets_its_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let big = payload(1, 20_000);
    let input = vec![
        (RecordKind::SagaSubmitted, payload(0, 10)),
        (RecordKind::SagaSubmitted, big),
        (RecordKind::Checkpoint, vec![]),
    ];
    assert_eq!(append_all(dir.path(), fast(4096), &input), vec![1, 2, 3]);
    assert_eq!(segments(dir.path()).len(), 3);
    let (records, _) = read_all(dir.path());
    assert_eq!(
        records.into_iter().map(|r| r.2).collect::<Vec<_>>(),
        input.into_iter().map(|r| r.1).collect::<Vec<_>>()
    );
}

/// A payload over the format's maximum is refused with a clear error, and the journal stays usable.
#[test]
fn payload_over_the_maximum_is_refused_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap();
    let too_big = vec![0u8; sagalog::wal_format::PAYLOAD_BYTES_MAX as usize + 1];
    let err = opened.journal.append_blocking(RecordKind::StepSucceeded, too_big).unwrap_err();
    assert!(err.to_string().contains("exceeds the maximum"), "{err}");
    assert_eq!(opened.journal.append_blocking(RecordKind::StepSucceeded, vec![1]).unwrap(), 1);
    opened.journal.shutdown_blocking().unwrap();
}

/// Many concurrent appenders with sync=always: every append gets a distinct LSN, LSNs are dense,
/// and each LSN holds the payload of the append it was returned to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_distinct_dense_lsns() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes_max: 16 * 1024, sync: SyncPolicy::Always, ..Options::default() };
    let opened = Journal::open_dir(dir.path(), options).unwrap();
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let journal = opened.journal.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25 {
                let p = payload(t * 1000 + i, 50 + i);
                mine.push((journal.append(RecordKind::StepStarted, p.clone()).await.unwrap(), p));
            }
            mine
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    opened.journal.shutdown().await.unwrap();
    acked.sort();
    assert_eq!(acked.iter().map(|a| a.0).collect::<Vec<_>>(), (1..=400).collect::<Vec<_>>());
    let (records, _) = read_all(dir.path());
    assert_eq!(records.into_iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(), acked);
}

/// truncate_before deletes exactly the sealed segments whose records are all below the LSN,
/// never the active one, and the log still opens and reads from its new first record.
#[tokio::test]
async fn truncate_before_deletes_only_fully_covered_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Journal::open_dir(dir.path(), fast(4096)).unwrap();
    for i in 0..100 {
        opened.journal.append(RecordKind::StepStarted, payload(i, 200)).await.unwrap();
    }
    let (before, _) = read_all(dir.path());
    let segs_before = segments(dir.path()).len();
    assert!(segs_before > 3);
    let deleted = opened.journal.truncate_before(50).await.unwrap();
    let (after, summary) = read_all(dir.path());
    assert!(deleted > 0 && segments(dir.path()).len() == segs_before - deleted);
    let first = after[0].0;
    assert!(first <= 50, "record 50 must survive, first is {first}");
    assert!(first > 1);
    assert_eq!(after.as_slice(), &before[(first - 1) as usize..]);
    assert!(summary.problem.is_none());
    // Deleting everything below a huge LSN keeps the active segment.
    opened.journal.truncate_before(u64::MAX).await.unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    opened.journal.shutdown().await.unwrap();
    let reopened = Journal::open_dir(dir.path(), fast(4096)).unwrap();
    assert_eq!(reopened.journal.append(RecordKind::Checkpoint, vec![]).await.unwrap(), 101);
    reopened.journal.shutdown().await.unwrap();
}

/// Two processes cannot write the same data directory: the second open names the holder.
#[test]
fn second_writer_is_refused_while_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap();
    let err = Journal::open_dir(dir.path(), fast(1 << 20)).unwrap_err();
    assert!(err.to_string().contains("in use by another sagalog process"), "{err}");
    opened.journal.shutdown_blocking().unwrap();
    Journal::open_dir(dir.path(), fast(1 << 20)).unwrap().journal.shutdown_blocking().unwrap();
}

/// Reading from any LSN across segments delivers exactly the records from that LSN on, in order.
#[test]
fn scan_from_any_lsn_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let input: Vec<_> = (0..50).map(|i| (RecordKind::StepStarted, payload(i, 250))).collect();
    append_all(dir.path(), fast(4096), &input);
    assert!(segments(dir.path()).len() > 3);
    for from in [1u64, 2, 17, 49, 50, 51, 1000] {
        let mut got = Vec::new();
        sagalog::journal::scan_from(&dir.path().join("journal"), from, |r, _, _| got.push((r.lsn, r.payload.to_vec())))
            .unwrap();
        let expected: Vec<_> =
            input.iter().enumerate().map(|(i, r)| (i as u64 + 1, r.1.clone())).filter(|r| r.0 >= from).collect();
        assert_eq!(got, expected, "from {from}");
    }
}
