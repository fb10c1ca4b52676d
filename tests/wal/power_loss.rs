//! Power loss during a group commit (issue 10, B16): a simulated disk keeps only the synced
//! bytes of the journal plus a random subset of the unsynced 4 KiB pages, and the journal must
//! open unattended with every synced record and nothing after the first damaged unsynced byte;
//! damage to synced data must still be refused, naming the segment and the offset.
//!
//! The bytes come from the real writer: records are appended through `Journal` (group commit,
//! rotation, the real encoder), the writer is held inside its next `fdatasync` (or, under
//! `sync = never`, simply not asked to sync), and the segment files are read as the page cache
//! holds them. The disk model then builds what a power loss may leave:
//! - bytes an `fdatasync` covered, and every sealed segment (synced before its successor was
//!   created), survive exactly;
//! - each unsynced 4 KiB page (file offsets, the first one partial) is written whole, written
//!   in part (torn at a 512-byte sector), or not written at all, independently, so any subset
//!   in any order; a page not written holds zeros, stale garbage, or a block of an older
//!   segment of the same log (valid frames of this epoch with older LSNs);
//! - the file length is the written length or shorter (whole pages cut off the end).
//!
//! No test here writes outside its temporary directories.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{payload, segments};
use sagalog::journal::{self, Error, IoFaults, Journal, Options, SyncPolicy};
use sagalog::wal_format::{ErrorKind, RecordKind, SEGMENT_HEADER_BYTES, frame_bytes};

const PAGE: usize = 4096;
const SECTOR: usize = 512;

/// xorshift64*: a failing case names its seed, and `SAGALOG_POWER_LOSS_SEED` replays it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One record as the writer laid it out.
#[derive(Debug, Clone)]
struct Frame {
    lsn: u64,
    segment: String,
    offset: usize,
    len: usize,
    payload: Vec<u8>,
    synced_lsn: Option<u64>,
}

/// The journal as the page cache held it at the moment of the power loss, and how much of
/// each segment was durable.
struct Written {
    /// Segment file name -> bytes, in id order.
    files: BTreeMap<String, Vec<u8>>,
    /// Segment file name -> bytes an `fdatasync` covered (the whole file for sealed segments).
    synced: BTreeMap<String, usize>,
    frames: Vec<Frame>,
}

impl Written {
    fn last_segment(&self) -> &str {
        self.files.keys().next_back().map(String::as_str).unwrap_or_default()
    }

    /// The highest LSN whose frame lies wholly in synced bytes.
    fn synced_lsn(&self) -> u64 {
        let synced = |f: &Frame| f.offset + f.len <= self.synced[&f.segment];
        self.frames.iter().take_while(|f| synced(f)).last().map_or(0, |f| f.lsn)
    }
}

fn read_files(journal_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(journal_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".wal") {
            out.insert(name, std::fs::read(&path).unwrap());
        }
    }
    out
}

fn frames_of(journal_dir: &Path) -> Vec<Frame> {
    let mut names = BTreeMap::new();
    for path in segments(journal_dir.parent().unwrap()) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        names.insert(sagalog::wal_format::parse_segment_file_name(&name).unwrap(), name);
    }
    let mut frames = Vec::new();
    journal::scan(journal_dir, |r, seg, offset| {
        frames.push(Frame {
            lsn: r.lsn,
            segment: names[&seg].clone(),
            offset: offset as usize,
            len: frame_bytes(r.payload.len()),
            payload: r.payload.to_vec(),
            synced_lsn: r.synced_lsn,
        })
    })
    .unwrap();
    frames
}

/// Appends `n` records of up to `len_max` bytes from `threads` threads at once, so the writer
/// group-commits them.
fn append_concurrently(journal: &Journal, rng: &mut Rng, n: usize, threads: usize, len_max: usize) {
    let per: Vec<Vec<Vec<u8>>> = (0..threads)
        .map(|t| (0..n.div_ceil(threads)).map(|i| payload(t * 1000 + i, 1 + rng.below(len_max))).collect())
        .collect();
    std::thread::scope(|s| {
        for payloads in per {
            let journal = journal.clone();
            s.spawn(move || {
                for p in payloads {
                    // Appends of the batch the power loss interrupts fail or are answered
                    // after the snapshot; either way the image decides what survives.
                    let _ = journal.append_blocking(RecordKind::StepSucceeded, p);
                }
            });
        }
    });
}

fn wait_for(what: &str, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !done() {
        if Instant::now() > deadline {
            eprintln!("power_loss: {what} did not happen within 2 s");
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Runs the real writer on `root` and returns the bytes a power loss interrupts.
///
/// `sync_always`: synced batches, then one batch made of every append that queued up while
/// the writer synced the batch before, written and held inside its `fdatasync`. Otherwise
/// (`sync = never`): synced batches (an explicit sync), then several batches written and
/// never synced, as the non-default policies leave them.
fn write_log(root: &Path, rng: &mut Rng, sync_always: bool) -> Written {
    let faults = Arc::new(IoFaults::new());
    let segment_bytes_max = [8 * 1024, 16 * 1024, 1 << 20][rng.below(3)];
    let sync = if sync_always { SyncPolicy::Always } else { SyncPolicy::Never };
    let options = Options { segment_bytes_max, sync, faults: Some(faults.clone()), ..Options::default() };
    let opened = Journal::open_dir(root, options).unwrap();
    let journal = opened.journal.clone();
    drop(opened);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for _ in 0..1 + rng.below(4) {
        let n = 1 + rng.below(12);
        let threads = 1 + rng.below(4);
        append_concurrently(&journal, rng, n, threads, 700);
    }
    rt.block_on(journal.sync()).unwrap();
    let journal_dir = root.join("journal");
    let (before, written) = if sync_always {
        faults.hold_syncs();
        let (n, threads) = (2 + rng.below(24), 2 + rng.below(10));
        let appender = {
            let journal = journal.clone();
            let mut rng = Rng(rng.next() | 1);
            std::thread::spawn(move || append_concurrently(&journal, &mut rng, n, threads, 2500))
        };
        // The first batch waits in its sync while the other appenders queue up behind it.
        wait_for("the first held sync", || faults.sync_waiting());
        std::thread::sleep(Duration::from_millis(20));
        let syncs = faults.syncs();
        // What the sync about to run covers: everything written so far.
        let before = read_files(&journal_dir);
        faults.let_syncs_through(1);
        // The next batch is written and held in its sync (unless nothing was queued).
        if wait_for("the second held sync", || faults.syncs() > syncs && faults.sync_waiting()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let files = read_files(&journal_dir);
        faults.release_syncs();
        appender.join().unwrap();
        (before, files)
    } else {
        let before = read_files(&journal_dir);
        for _ in 0..1 + rng.below(4) {
            let n = 1 + rng.below(10);
            let threads = 1 + rng.below(3);
            append_concurrently(&journal, rng, n, threads, 1500);
        }
        (before, read_files(&journal_dir))
    };
    journal.shutdown_blocking().unwrap();
    // A sealed segment was synced whole before its successor was created; of the last one,
    // what the last sync covered, or its header if it was created since.
    let last = written.keys().next_back().cloned().unwrap_or_default();
    let synced = written
        .iter()
        .map(|(name, bytes)| {
            let n = if *name != last {
                bytes.len()
            } else {
                before.get(name).map_or(SEGMENT_HEADER_BYTES, Vec::len).max(SEGMENT_HEADER_BYTES)
            };
            (name.clone(), n)
        })
        .collect();
    // The frames as written: scan a copy holding exactly the written bytes.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("journal")).unwrap();
    for (name, bytes) in &written {
        std::fs::write(scratch.path().join("journal").join(name), bytes).unwrap();
    }
    let frames = frames_of(&scratch.path().join("journal"));
    Written { files: written, synced, frames }
}

/// What the unwritten bytes `at..end` of a page hold after the power loss: zeros, garbage, or
/// the same bytes of a file-system block that held an older segment of the same log (a 4 KiB
/// block of valid frames of this epoch, with older LSNs, at their old places in the block).
fn unwritten(rng: &mut Rng, at: usize, end: usize, stale: &[&[u8]], coverage: &mut Coverage) -> Vec<u8> {
    let in_page = at % PAGE..at % PAGE + (end - at);
    match rng.below(3) {
        0 => vec![0; end - at],
        1 => rng.bytes(end - at),
        _ if !stale.is_empty() => {
            coverage.stale_blocks += 1;
            stale[rng.below(stale.len())][in_page].to_vec()
        }
        _ => vec![0; end - at],
    }
}

/// The disk after the power loss: synced bytes exact, each unsynced page written, torn or not.
fn power_loss_image(rng: &mut Rng, w: &Written, coverage: &mut Coverage) -> BTreeMap<String, Vec<u8>> {
    // Blocks that held older segments of this log: the whole pages of the synced bytes.
    let stale: Vec<&[u8]> =
        w.files.iter().flat_map(|(name, b)| b[..w.synced[name] / PAGE * PAGE].chunks_exact(PAGE)).collect();
    let mut image = BTreeMap::new();
    for (name, bytes) in &w.files {
        let synced = w.synced[name];
        let mut out = bytes[..synced].to_vec();
        let mut at = synced;
        let mut page_ends = vec![synced];
        while at < bytes.len() {
            let end = ((at / PAGE + 1) * PAGE).min(bytes.len());
            match rng.below(4) {
                0 | 1 => out.extend_from_slice(&bytes[at..end]),
                2 => {
                    // Torn: the sectors up to a random sector boundary were written.
                    let cut = (((at / SECTOR) + 1 + rng.below(PAGE / SECTOR)) * SECTOR).clamp(at, end);
                    out.extend_from_slice(&bytes[at..cut]);
                    out.extend(unwritten(rng, cut, end, &stale, coverage));
                }
                _ => out.extend(unwritten(rng, at, end, &stale, coverage)),
            }
            at = end;
            page_ends.push(end);
        }
        // The file size may not have reached the disk either: whole pages cut off the end.
        if rng.below(4) == 0 {
            out.truncate(page_ends[rng.below(page_ends.len())]);
        }
        image.insert(name.clone(), out);
    }
    image
}

fn write_image(root: &Path, image: &BTreeMap<String, Vec<u8>>) -> PathBuf {
    let dir = root.join("journal");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in image {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

/// The records a correct open keeps: every frame of a sealed segment, and of the last segment
/// the frames that end before the first byte the power loss changed.
fn expected_kept(w: &Written, image: &BTreeMap<String, Vec<u8>>) -> Vec<(u64, Vec<u8>)> {
    let last = w.last_segment();
    let (written, kept) = (&w.files[last], &image[last]);
    let first_changed =
        written.iter().zip(kept.iter()).position(|(a, b)| a != b).unwrap_or(written.len().min(kept.len()));
    w.frames
        .iter()
        .filter(|f| f.segment != last || f.offset + f.len <= first_changed)
        .map(|f| (f.lsn, f.payload.clone()))
        .collect()
}

/// What the cases of a run reached, so a run that tested nothing interesting fails.
#[derive(Debug, Default)]
struct Coverage {
    cases: u64,
    /// The open cut an unsynced tail: valid frames followed the damage (the case that used to
    /// be refused).
    unsynced_tails: u64,
    /// ... whose damage was a valid frame of an older segment of the log (a stale block).
    stale_frames: u64,
    /// Unwritten byte ranges filled from a block of an older segment of the log.
    stale_blocks: u64,
    torn_or_zeroed_tails: u64,
    /// The unsynced bytes spanned more than one page.
    multi_page: u64,
    /// The log had more than one segment.
    rotated: u64,
}

fn opens_unattended(seed: u64, sync_always: bool, coverage: &mut Coverage) {
    let mut rng = Rng(seed | 1);
    let base = tempfile::tempdir().unwrap();
    let w = write_log(base.path(), &mut rng, sync_always);
    let image = power_loss_image(&mut rng, &w, coverage);
    let after = tempfile::tempdir().unwrap();
    write_image(after.path(), &image);
    let opened = Journal::open_dir(after.path(), Options::default())
        .unwrap_or_else(|e| panic!("seed {seed}: the journal refused to open: {e}"));
    coverage.cases += 1;
    let last = w.last_segment();
    coverage.multi_page += u64::from(w.files[last].len() / PAGE > w.synced[last] / PAGE);
    coverage.rotated += u64::from(w.files.len() > 1);
    match &opened.summary.problem {
        Some(p) if p.unsynced_valid_at.is_some() => {
            coverage.unsynced_tails += 1;
            coverage.stale_frames += u64::from(matches!(p.error.kind, ErrorKind::LsnGap { .. }));
        }
        Some(_) => coverage.torn_or_zeroed_tails += 1,
        None => {}
    }
    let next = opened.journal.append_blocking(RecordKind::Checkpoint, b"after".to_vec());
    opened.journal.shutdown_blocking().unwrap();
    let (records, summary) = common::read_all(after.path());
    assert!(summary.problem.is_none(), "seed {seed}: after open: {:?}", summary.problem);
    let mut got: Vec<(u64, Vec<u8>)> = records.iter().map(|(l, _, p)| (*l, p.clone())).collect();
    assert_eq!(got.pop().map(|r| r.1), Some(b"after".to_vec()), "seed {seed}: the append after open");
    let synced_lsn = w.synced_lsn();
    for f in w.frames.iter().take_while(|f| f.lsn <= synced_lsn) {
        assert!(got.contains(&(f.lsn, f.payload.clone())), "seed {seed}: synced record {} is missing", f.lsn);
    }
    let expected = expected_kept(&w, &image);
    assert_eq!(got, expected, "seed {seed}: the kept records are not the undamaged prefix");
    assert_eq!(next.ok(), Some(expected.last().map_or(1, |r| r.0 + 1)), "seed {seed}: the next append's lsn");
}

/// Damages a synced frame that a later synced frame's watermark covers: open must refuse,
/// naming the segment file and the damaged frame's offset, whatever the unsynced pages hold.
/// Returns whether the log had such a frame.
fn synced_damage_is_refused(seed: u64) -> bool {
    let mut rng = Rng(seed | 1);
    let base = tempfile::tempdir().unwrap();
    let w = write_log(base.path(), &mut rng, true);
    let last = w.last_segment().to_owned();
    let synced_end = w.synced[&last];
    let synced: Vec<&Frame> = w.frames.iter().filter(|f| f.segment == last && f.offset + f.len <= synced_end).collect();
    // A frame whose LSN a later synced frame's watermark reaches was provably synced.
    let provable: Vec<&Frame> = synced
        .iter()
        .filter(|f| synced.iter().any(|g| g.offset > f.offset && g.synced_lsn.is_some_and(|s| s >= f.lsn)))
        .copied()
        .collect();
    if provable.is_empty() {
        return false;
    }
    let victim = provable[rng.below(provable.len())];
    let mut image = power_loss_image(&mut rng, &w, &mut Coverage::default());
    let bytes = image.get_mut(&last).unwrap();
    let at = victim.offset + rng.below(victim.len);
    match rng.below(2) {
        0 => bytes[at] ^= 1 << rng.below(8),
        _ => {
            // A lost sector of synced data (a failing disk): zeros.
            let sector = at / SECTOR * SECTOR;
            let end = (sector + SECTOR).min(victim.offset + victim.len);
            bytes[sector.max(victim.offset)..end].fill(0);
        }
    }
    let after = tempfile::tempdir().unwrap();
    let journal_dir = write_image(after.path(), &image);
    match Journal::open_dir(after.path(), Options::default()) {
        Ok(_) => panic!("seed {seed}: damage to synced lsn {} at offset {} was not refused", victim.lsn, victim.offset),
        Err(Error::Corrupt { path, source }) => {
            assert_eq!(path, journal_dir.join(&last), "seed {seed}");
            assert_eq!(source.offset, victim.offset as u64, "seed {seed}: {source}");
            assert!(source.to_string().contains("synced data"), "seed {seed}: {source}");
        }
        Err(e) => panic!("seed {seed}: unexpected error {e}"),
    }
    true
}

/// Seeds of one run: `SAGALOG_POWER_LOSS_SEED=S` replays one, as a failure message says.
fn seeds(base: u64, cases: u64) -> Vec<u64> {
    match std::env::var("SAGALOG_POWER_LOSS_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (base..base + cases).collect(),
    }
}

/// `sync = always`: whatever subset of the held batch's pages reached the disk, in any order,
/// torn, zero, stale or from an older segment of the log, open succeeds with every synced
/// record and nothing after the first damaged unsynced byte.
#[test]
fn power_loss_in_a_group_commit_opens_unattended() {
    let mut coverage = Coverage::default();
    for seed in seeds(16_000, 40) {
        opens_unattended(seed, true, &mut coverage);
    }
    eprintln!("power_loss (sync = always): {coverage:?}");
    if coverage.cases > 1 {
        assert!(coverage.unsynced_tails >= 3 && coverage.multi_page >= 10, "the cases tested little: {coverage:?}");
        assert!(coverage.torn_or_zeroed_tails >= 3 && coverage.rotated >= 3, "{coverage:?}");
    }
}

/// The same with several unsynced batches in flight (`sync = never`): the watermark is what
/// was synced, not what was written or acknowledged.
#[test]
fn power_loss_with_several_unsynced_batches_opens_unattended() {
    let mut coverage = Coverage::default();
    for seed in seeds(26_000, 30) {
        opens_unattended(seed, false, &mut coverage);
    }
    eprintln!("power_loss (sync = never): {coverage:?}");
    if coverage.cases > 1 {
        assert!(coverage.unsynced_tails >= 3 && coverage.stale_blocks >= 1, "the cases tested little: {coverage:?}");
    }
}

/// Damage to synced data is refused with segment and offset, never cut as a tail.
#[test]
fn power_loss_never_hides_damage_to_synced_data() {
    let all = seeds(36_000, 30);
    let tested = all.iter().filter(|seed| synced_damage_is_refused(**seed)).count();
    assert!(all.len() == 1 || tested >= 10, "only {tested} logs had a provably synced frame to damage");
}

/// The shape of seed 7000004 of the simulator, by hand: the last batch holds a record that
/// fills its first unsynced page and one in the next page; the first page was lost (zeros),
/// the next one reached the disk. Open keeps exactly the synced records and cuts at the hole.
#[test]
fn hole_in_the_last_batch_is_cut_at_the_hole() {
    let base = tempfile::tempdir().unwrap();
    let faults = Arc::new(IoFaults::new());
    let options = Options { faults: Some(faults.clone()), ..Options::default() };
    let opened = Journal::open_dir(base.path(), options).unwrap();
    let journal = opened.journal.clone();
    drop(opened);
    for i in 0..3 {
        journal.append_blocking(RecordKind::StepStarted, payload(i, 100)).unwrap();
    }
    faults.hold_syncs();
    let append = |i: usize, len: usize| {
        let journal = journal.clone();
        std::thread::spawn(move || journal.append_blocking(RecordKind::StepSucceeded, payload(i, len)))
    };
    let first = append(3, 100);
    assert!(wait_for("the held sync", || faults.sync_waiting()));
    let (big, small) = (append(4, PAGE), append(5, 100));
    std::thread::sleep(Duration::from_millis(50));
    let seg = segments(base.path()).pop().unwrap();
    let synced = std::fs::read(&seg).unwrap().len();
    let syncs = faults.syncs();
    faults.let_syncs_through(1);
    assert!(wait_for("the second held sync", || faults.syncs() > syncs && faults.sync_waiting()));
    let mut written = std::fs::read(&seg).unwrap();
    assert_eq!(written.len(), synced + frame_bytes(PAGE) + frame_bytes(100), "both records in the held batch");
    faults.release_syncs();
    for t in [first, big, small] {
        t.join().unwrap().unwrap();
    }
    journal.shutdown_blocking().unwrap();
    let hole_end = (synced / PAGE + 1) * PAGE;
    written[synced..hole_end].fill(0);
    std::fs::write(&seg, &written).unwrap();

    let opened = Journal::open_dir(base.path(), Options::default()).unwrap_or_else(|e| panic!("refused: {e}"));
    assert_eq!(opened.summary.records, 4, "the synced records");
    let (_, at, bytes) = opened.truncated_tail.clone().expect("the unsynced tail is cut");
    assert_eq!((at, bytes), (synced as u64, (written.len() - synced) as u64));
    opened.journal.shutdown_blocking().unwrap();
    let (records, summary) = common::read_all(base.path());
    assert!(summary.problem.is_none());
    assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
}

/// A config for `sagalog serve` with one `fs` participant (no DuckDB needed) and anonymous
/// admin calls on the loopback address.
const SERVE_CONFIG: &str = r#"
[journal]
sync = "always"

[server]
listen = "127.0.0.1:0"
anonymous = "admin"

[participants.artifacts]
kind = "fs"
path = "artifacts"

[actions.write_artifact]
participant = "artifacts"
params = { run_id = "text", report = "text" }
forward = { put = "runs/{run_id}.json", contents = "report" }
compensate = { delete = "runs/{run_id}.json" }
"#;

/// A `sagalog serve` child; killed (SIGKILL, a crash) when dropped.
struct Serve {
    child: std::process::Child,
    url: String,
}

impl Serve {
    fn start(data_dir: &Path, config: &Path) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = std::process::Command::new(common::sagalog_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut serve = Serve { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = serve.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                panic!("sagalog serve exited during start ({status}); log:\n{log}");
            }
            if serve.run(&["admin", "stats", "--connect-timeout", "500ms"]).status.success() {
                return serve;
            }
            assert!(Instant::now() < deadline, "sagalog serve did not answer within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(common::sagalog_bin())
            .env_remove("SAGALOG_SERVER")
            .env_remove("SAGALOG_TOKEN")
            .args(args)
            .args(["--server", &self.url])
            .output()
            .unwrap()
    }

    fn status(&self, id: &str) -> (Option<i32>, String) {
        let out = self.run(&["status", "--json", id]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wal_verify_json(data_dir: &Path) -> (Option<i32>, serde_json::Value) {
    let out = std::process::Command::new(common::sagalog_bin())
        .args(["wal", "verify", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("wal verify --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    });
    (out.status.code(), json)
}

/// The power loss on real files, end to end: a real server journals three sagas (synced and
/// acknowledged) and is killed; then a last batch of never-acknowledged frames, as the writer
/// encodes them (the format's encoder, with the writer's sync watermark), is laid over the
/// real segment the way the simulated disk keeps it: (1) its first page lost, the later pages
/// on disk; (2) its first page torn at a sector, the second holding a stale block of the same
/// segment, the third on disk. `sagalog wal verify` reports an unsynced tail (exit 0) and
/// `sagalog serve` starts unattended and serves the acknowledged sagas.
#[test]
fn power_loss_on_real_files_serve_and_verify_start_unattended() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("sagalog.toml");
    std::fs::write(&config, SERVE_CONFIG).unwrap();
    let data = tmp.path().join("data");
    let ids = ["ok-1", "ok-2", "ok-3"];
    {
        let serve = Serve::start(&data, &config);
        for id in ids {
            let saga = tmp.path().join(format!("{id}.json"));
            let body = format!(
                r#"{{"id": "{id}", "steps": [{{"action": "write_artifact", "params": {{"run_id": "{id}", "report": "{{}}"}}}}]}}"#
            );
            std::fs::write(&saga, body).unwrap();
            let out = serve.run(&["submit", saga.to_str().unwrap(), "--wait"]);
            assert_eq!(out.status.code(), Some(0), "submit {id}: {}", String::from_utf8_lossy(&out.stderr));
        }
    } // SIGKILL: everything acknowledged was synced (sync = "always").
    let journal_dir = data.join("journal");
    let seg = segments(&data).pop().unwrap();
    let synced = std::fs::read(&seg).unwrap();
    let mut submitted = None;
    let summary = journal::scan(&journal_dir, |r, _, _| {
        if r.kind == RecordKind::SagaSubmitted {
            submitted.get_or_insert_with(|| r.payload.to_vec());
        }
    })
    .unwrap();
    assert!(summary.problem.is_none(), "{:?}", summary.problem);
    let (epoch, last_lsn) = (summary.epoch.unwrap(), summary.last_lsn.unwrap());
    let records = summary.records;
    // The last batch: a dozen records (copies of a SagaSubmitted payload: never acknowledged,
    // they must all be dropped, whatever they say), each carrying the watermark `last_lsn`.
    let mut batch = Vec::new();
    let payload = submitted.unwrap();
    let mut lsn = last_lsn + 1;
    while batch.len() < 3 * PAGE {
        sagalog::wal_format::frame::encode_v2(&mut batch, epoch, lsn, RecordKind::SagaSubmitted, &payload, last_lsn)
            .unwrap();
        lsn += 1;
    }
    let written = [&synced[..], &batch[..]].concat();
    let page = |i: usize| {
        let start = if i == 0 { synced.len() } else { (synced.len() / PAGE + i) * PAGE };
        start.min(written.len())..((synced.len() / PAGE + i + 1) * PAGE).min(written.len())
    };
    let mut first_lost = written.clone();
    first_lost[page(0)].fill(0);
    let mut torn_and_stale = written.clone();
    let first = page(0);
    let torn_at = (first.start / SECTOR + 1) * SECTOR;
    torn_and_stale[torn_at.max(first.start + 8)..first.end].fill(0);
    let stale_block = synced[..PAGE.min(synced.len())].to_vec();
    let second = page(1);
    let stale = &stale_block[second.start % PAGE..(second.start % PAGE + second.len()).min(stale_block.len())];
    torn_and_stale[second.start..second.start + stale.len()].copy_from_slice(stale);

    for (i, (shape, image)) in [("first page lost", first_lost), ("torn first page, stale second page", torn_and_stale)]
        .into_iter()
        .enumerate()
    {
        // Each shape on its own copy of the data directory as the killed server left it.
        let data = tmp.path().join(format!("shape-{i}"));
        copy_dir(&tmp.path().join("data"), &data);
        let seg = data.join("journal").join(seg.file_name().unwrap());
        std::fs::write(&seg, &image).unwrap();
        let (code, json) = wal_verify_json(&data);
        assert_eq!(code, Some(0), "{shape}: {json}");
        assert_eq!(json["status"], "torn-tail", "{shape}: {json}");
        assert_eq!(json["problem"]["tail"], "unsynced", "{shape}: {json}");
        assert!(json["problem"]["unsynced_valid_at"].is_u64(), "{shape}: {json}");
        assert_eq!(json["records"], records, "{shape}: only the synced records verify: {json}");
        assert_eq!(json["problem"]["offset"], synced.len(), "{shape}: {json}");
        let text = std::process::Command::new(common::sagalog_bin())
            .args(["wal", "verify", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        assert!(text.contains("warning:   unsynced tail"), "{shape}: {text}");

        let serve = Serve::start(&data, &config);
        for id in ids {
            let (code, out) = serve.status(id);
            assert_eq!(code, Some(0), "{shape}: status {id}: {out}");
            assert!(out.contains("COMPLETED"), "{shape}: status {id}: {out}");
        }
        drop(serve);
        let (code, json) = wal_verify_json(&data);
        assert_eq!((code, &json["status"]), (Some(0), &serde_json::json!("ok")), "{shape}: after serve: {json}");
        assert!(json["records"].as_u64().unwrap() >= records, "{shape}: {json}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A log written by a version 1 build: opening it for writing syncs and seals its last segment
/// (version 1) untouched and continues in a version 2 segment, whose frames carry watermarks;
/// both verify, each by its own version's rules.
#[test]
fn a_version_1_log_continues_in_a_version_2_segment() {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir_all(&journal_dir).unwrap();
    let vector = Path::new(env!("CARGO_MANIFEST_DIR")).join("wal-format/vectors/v1-valid.wal");
    let v1 = std::fs::read(&vector).unwrap();
    std::fs::write(journal_dir.join(sagalog::wal_format::segment_file_name(1)), &v1).unwrap();
    let opened = Journal::open_dir(dir.path(), Options::default()).unwrap();
    let lsns: Vec<u64> =
        (0..2).map(|i| opened.journal.append_blocking(RecordKind::StepStarted, payload(i, 10)).unwrap()).collect();
    opened.journal.shutdown_blocking().unwrap();
    assert_eq!(lsns, vec![6, 7]);
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert_eq!(std::fs::read(&segs[0]).unwrap(), v1, "the version 1 segment is sealed as it was");
    let summary = journal::verify(&journal_dir).unwrap();
    assert!(summary.problem.is_none(), "{:?}", summary.problem);
    let versions: Vec<u16> = summary.segments.iter().map(|s| s.format_version).collect();
    assert_eq!(versions, vec![1, 2]);
    let frames = frames_of(&journal_dir);
    let watermarks: Vec<(u64, Option<u64>)> = frames.iter().map(|f| (f.lsn, f.synced_lsn)).collect();
    assert_eq!(watermarks, vec![(1, None), (2, None), (3, None), (4, None), (5, None), (6, Some(5)), (7, Some(6))]);
}
