//! Damaged or missing side files: a start on durable state whose checkpoint, journal and
//! index disagree is refused, naming what disagrees and what to run, instead of dropping
//! acknowledged sagas (issue 10 items 2 and 3); `wal repair --truncate-corrupt` refuses to cut
//! below the checkpoint. Each test damages a healthy data directory built by [`healthy`].
//! These tests only read and damage files in their own temporary directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sagalog::checkpoint::{self, Checkpoint};
use sagalog::engine::{SagaDefinition, StepCall, Value};
use sagalog::node::{Node, archive_pass};

const CONFIG: &str = r#"
[journal]
segment_bytes_max = 4096

[index]
checkpoint_interval_ms = 86400000

[participants.mem]
kind = "memory"

[actions.act]
participant = "mem"
params = { n = "int" }
forward = { sql = "do", args = ["n"] }
compensate = { sql = "undo", args = ["n"] }
"#;

fn saga(id: &str) -> SagaDefinition {
    let steps = (0..3)
        .map(|n| StepCall {
            action: "act".into(),
            params: [("n".to_string(), Value::Int(n))].into(),
            from: Default::default(),
        })
        .collect();
    SagaDefinition { id: id.into(), steps }
}

/// The segment files, lowest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    found.sort();
    found
}

async fn run_sagas(node: &Node, prefix: &str) {
    for i in 0..100 {
        node.executor.submit(saga(&format!("{prefix}{i}"))).await.unwrap();
    }
    for i in 0..100 {
        let snap = tokio::time::timeout(Duration::from_secs(20), node.executor.wait_settled(&format!("{prefix}{i}")))
            .await
            .expect("saga settles");
        drop(snap);
    }
}

/// No purge by age or count.
fn no_retention() -> sagalog::config::IndexConfig {
    sagalog::config::IndexConfig { retention_hours: 0, ..Default::default() }
}

/// A data directory as a server leaves it: sagas `a*` finished and covered by a checkpoint
/// (whose segments were deleted), then sagas `b*` finished after it, spread over at least
/// three segments, and a clean shutdown. Returns the config path.
async fn healthy(dir: &Path) -> PathBuf {
    let config = dir.join("sagalog.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut node = Node::start(dir, Some(&config)).await.unwrap();
    run_sagas(&node, "a").await;
    archive_pass(&node.executor, &node.journal, &node.index, dir, &no_retention(), 0).await.unwrap();
    run_sagas(&node, "b").await;
    node.shutdown().await.unwrap();
    drop(node);
    let segs = segments(dir);
    assert!(!segs[0].ends_with("00000000000000000001.wal"), "the checkpoint deleted the first segments: {segs:?}");
    assert!(segs.len() >= 3, "the test needs three segments after the checkpoint, got {segs:?}");
    assert!(checkpoint::read(dir).unwrap().is_some());
    config
}

/// Starts, checks an archived and a recent saga, and shuts down.
async fn starts_and_knows_its_sagas(dir: &Path, config: &Path) {
    let mut node = Node::start(dir, Some(config)).await.unwrap();
    assert_eq!(node.executor.archived("a0").unwrap().map(|r| r.status), Some("COMPLETED".into()));
    assert!(node.executor.archived("b99").unwrap().is_some() || node.executor.get("b99").is_some());
    node.shutdown().await.unwrap();
}

/// `Node::start` refuses; the message names `names` and the commands to run.
async fn refused(dir: &Path, config: &Path, names: &Path) -> String {
    let message = match Node::start(dir, Some(config)).await {
        Ok(_) => panic!("the server started on inconsistent state (expected a refusal naming {})", names.display()),
        Err(e) => e.to_string(),
    };
    eprintln!("refused: {message}");
    assert!(message.contains(&names.display().to_string()), "names {}: {message}", names.display());
    assert!(message.contains("wal verify --data-dir"), "says what to run: {message}");
    assert!(message.contains("replay --data-dir") && message.contains("--dry-run"), "says what to run: {message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_restart_still_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = healthy(dir.path()).await;
    starts_and_knows_its_sagas(dir.path(), &config).await;
    starts_and_knows_its_sagas(dir.path(), &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_index_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = healthy(dir.path()).await;
    let index = dir.path().join("index");
    std::fs::remove_dir_all(&index).unwrap();
    let message = refused(dir.path(), &config, &index).await;
    assert!(message.contains("missing"), "{message}");
    assert!(!index.exists(), "no empty index was created in its place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scribbled_index_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = healthy(dir.path()).await;
    let index = dir.path().join("index");
    let mut stack = vec![index.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let len = std::fs::metadata(&path).unwrap().len() as usize;
                std::fs::write(&path, vec![0xa5u8; len]).unwrap();
            }
        }
    }
    refused(dir.path(), &config, &index).await;
}

/// An index replaced by an empty one (restored from nothing, or recreated by hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptied_index_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = healthy(dir.path()).await;
    let index = dir.path().join("index");
    std::fs::remove_dir_all(&index).unwrap();
    drop(sagalog::index::Index::open(&index).unwrap());
    let message = refused(dir.path(), &config, &index).await;
    assert!(message.contains("no indexed_through_lsn mark"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_journal_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = healthy(dir.path()).await;
    let journal = dir.path().join("journal");
    std::fs::remove_dir_all(&journal).unwrap();
    refused(dir.path(), &config, &journal).await;
    assert!(!journal.exists(), "no empty journal was created in its place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_lowest_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = healthy(dir.path()).await;
    let segs = segments(dir.path());
    // The lowest segment recovery needs: the last one starting at or below `replay_from_lsn`
    // (a clean shutdown may have moved the checkpoint past `segs[0]`, which may then go).
    let replay_from = checkpoint::read(dir.path()).unwrap().unwrap().replay_from_lsn;
    let first_lsn =
        |p: &PathBuf| sagalog::wal_format::SegmentHeader::decode(&std::fs::read(p).unwrap()).unwrap().first_lsn;
    let needed = segs.iter().rposition(|p| first_lsn(p) <= replay_from).unwrap();
    assert!(needed + 1 < segs.len(), "a segment must follow the one deleted: {segs:?}");
    for seg in &segs[..=needed] {
        std::fs::remove_file(seg).unwrap();
    }
    let message = refused(dir.path(), &config, &segs[needed + 1]).await;
    assert!(message.contains("lowest segment"), "{message}");
    assert_eq!(segments(dir.path()), segs[needed + 1..].to_vec(), "nothing on disk changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_last_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = healthy(dir.path()).await;
    let segs = segments(dir.path());
    let last = segs.last().unwrap();
    std::fs::remove_file(last).unwrap();
    let message = refused(dir.path(), &config, &checkpoint::path(dir.path())).await;
    assert!(message.contains("last segments are missing"), "{message}");
    assert_eq!(segments(dir.path()), segs[..segs.len() - 1].to_vec(), "nothing on disk changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_past_the_log_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = healthy(dir.path()).await;
    let next = sagalog::journal::verify(&dir.path().join("journal")).unwrap().next_lsn;
    let cp = checkpoint::read(dir.path()).unwrap().unwrap();
    let past = Checkpoint { replay_from_lsn: next + 1000, indexed_through_lsn: next + 999, ..cp };
    checkpoint::write(dir.path(), &past).unwrap();
    let message = refused(dir.path(), &config, &checkpoint::path(dir.path())).await;
    assert!(message.contains("past the end of the journal"), "{message}");
}

/// `wal repair --truncate-corrupt` refuses a cut below the checkpoint's `replay_from_lsn`,
/// and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_refuses_to_cut_below_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    healthy(dir.path()).await;
    let summary = sagalog::journal::verify(&dir.path().join("journal")).unwrap();
    let n = summary.segments.len();
    // Recovery replays from the last segment; the damage is in the one before.
    let cp = checkpoint::read(dir.path()).unwrap().unwrap();
    let later = Checkpoint { replay_from_lsn: summary.segments[n - 1].first_lsn, ..cp };
    checkpoint::write(dir.path(), &later).unwrap();
    let damaged = &summary.segments[n - 2].path;
    let mut bytes = std::fs::read(damaged).unwrap();
    let at = sagalog::wal_format::SEGMENT_HEADER_BYTES + 12;
    bytes[at] ^= 0xff;
    std::fs::write(damaged, &bytes).unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> =
        segments(dir.path()).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();

    let err = sagalog::journal::repair(dir.path(), sagalog::journal::RepairMode::TruncateCorrupt)
        .expect_err("a cut below the checkpoint is refused");
    let message = err.to_string();
    assert!(message.contains("refusing to cut"), "{message}");
    assert!(message.contains(&checkpoint::path(dir.path()).display().to_string()), "{message}");
    assert!(message.contains("wal verify") && message.contains("--dry-run"), "{message}");
    let after: Vec<(PathBuf, Vec<u8>)> =
        segments(dir.path()).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    assert_eq!(after, before, "nothing was changed");
    assert!(!dir.path().join("wal-backup").exists());
}

/// A cut above the checkpoint's `replay_from_lsn` but below the journal end it recorded goes
/// ahead, says which acknowledged records left the log, and records the new end, so that the
/// next start accepts the repaired log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_above_the_checkpoint_records_the_new_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = healthy(dir.path()).await;
    let summary = sagalog::journal::verify(&dir.path().join("journal")).unwrap();
    let n = summary.segments.len();
    let cp = checkpoint::read(dir.path()).unwrap().unwrap();
    let damaged = &summary.segments[n - 2];
    assert!(damaged.first_lsn > cp.replay_from_lsn, "the damage lies above the checkpoint");
    let mut bytes = std::fs::read(&damaged.path).unwrap();
    bytes[sagalog::wal_format::SEGMENT_HEADER_BYTES + 12] ^= 0xff;
    std::fs::write(&damaged.path, &bytes).unwrap();

    let report = sagalog::journal::repair(dir.path(), sagalog::journal::RepairMode::TruncateCorrupt).unwrap();
    assert_eq!(report.checkpoint_end_lowered, Some((cp.journal_next_lsn, damaged.first_lsn)));
    let after = checkpoint::read(dir.path()).unwrap().unwrap();
    assert_eq!(after, Checkpoint { journal_next_lsn: damaged.first_lsn, ..cp });
    let mut node = Node::start(dir.path(), Some(&config)).await.unwrap();
    assert_eq!(node.executor.archived("a0").unwrap().map(|r| r.status), Some("COMPLETED".into()));
    node.shutdown().await.unwrap();
}

/// `serve` without `--config` on a data directory that was served with one refuses, naming
/// that config; with it, or with another `--config` on purpose, it starts (issue 10, item 9:
/// before, the data directory silently fell back to the demo catalog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_config_after_one_with_a_config_refuses_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("mine.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut node = Node::start(&data, Some(&config)).await.unwrap();
    node.shutdown().await.unwrap();
    drop(node);

    let message = match Node::start(&data, None).await {
        Ok(_) => panic!("started on the embedded default after being served with {}", config.display()),
        Err(e) => e.to_string(),
    };
    let named = std::fs::canonicalize(&config).unwrap();
    assert!(message.contains(&format!("--config {}", named.display())), "{message}");
    assert!(!data.join("sagalog.toml").exists(), "the embedded default was not written");

    let mut node = Node::start(&data, Some(&config)).await.unwrap();
    node.shutdown().await.unwrap();
}

/// A data directory served with its generated default keeps starting without `--config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_default_keeps_serving_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("sagalog.toml"), CONFIG).unwrap();
    for _ in 0..2 {
        let mut node = Node::start(&data, None).await.unwrap();
        node.shutdown().await.unwrap();
    }
}
