//! How fast `journal::verify` checks a large log, next to the physical limit of the same work,
//! and how much memory the writer needs to build that log.
//!
//! The log (`SAGALOG_BENCH_LOG_BYTES`, default 1 GiB, of 1 KiB records) is built once under
//! `SyncPolicy::Never`, outside any measurement, in a scratch directory removed at the end. While
//! it grows, the process's `VmHWM` / `VmRSS` are printed to stderr at doubling sizes: the writer
//! holds at most one channel's and one batch's worth of records, so neither may grow with the
//! log. Then, each over the same segment files and with the same byte count as throughput:
//! - `verify`: `sagalog::journal::verify`, which maps every segment and checks every frame;
//! - `raw_crc_mmap`: map every segment and run one `crc32fast::hash` over all of its bytes,
//!   the least work any checksum-verifying reader over maps can do;
//! - `raw_crc_mapped`: the same hash over segments mapped once up front (no page-fault cost).
//!
//! The page cache holds the log (it was just written), so these are CPU figures, not disk reads.

use std::collections::BTreeMap;
use std::fs::File;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use memmap2::Mmap;
use sagalog::journal::{Journal, Options, SyncPolicy, verify};
use sagalog::wal_format::{RecordKind, SEGMENT_FILE_SUFFIX, frame_bytes};
use tempfile::TempDir;

const SAMPLE_SIZE: usize = 10;
const PAYLOAD_BYTES: usize = 1024;
const LOG_BYTES_DEFAULT: u64 = 1 << 30;
/// Memory is reported once the log reaches this size, then at every doubling.
const FIRST_REPORT_BYTES: u64 = 128 << 20;
/// Concurrent appenders building the log; enough that the writer sees real batches.
const BUILDERS: usize = 64;

/// Every `(iterations, elapsed)` criterion asked for, per benchmark; in flat sampling mode the
/// last `SAMPLE_SIZE` calls are exactly the samples criterion analyses.
static SAMPLES: Mutex<BTreeMap<&'static str, Vec<(u64, Duration)>>> = Mutex::new(BTreeMap::new());

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .nresamples(10_000)
        .configure_from_args();
    let benchmarking = std::env::args().any(|a| a == "--bench");
    // Outside `--bench` (as under `cargo test --benches`) a small log is enough to run once.
    let log_bytes = match std::env::var("SAGALOG_BENCH_LOG_BYTES") {
        Ok(text) => text.parse().expect("SAGALOG_BENCH_LOG_BYTES must be a number of bytes"),
        Err(_) if benchmarking => LOG_BYTES_DEFAULT,
        Err(_) => FIRST_REPORT_BYTES,
    };
    let root = tempfile::Builder::new()
        .prefix("sagalog-bench-")
        .tempdir_in(std::env::var_os("SAGALOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from))
        .expect("create a scratch directory");
    build_log(&root, log_bytes);
    let journal_dir = root.path().join("journal");
    let summary = verify(&journal_dir).expect("verify the log");
    assert!(summary.problem.is_none(), "the benchmark log is damaged: {:?}", summary.problem);
    let segments = segment_paths(&journal_dir);
    let file_bytes: u64 = segments.iter().map(|p| p.metadata().expect("stat a segment").len()).sum();
    assert_eq!(file_bytes, summary.verified_bytes, "verify must cover every byte of a clean log");
    eprintln!(
        "wal_verify: log of {} records, {} segments, {} bytes in {}",
        summary.records,
        segments.len(),
        summary.verified_bytes,
        journal_dir.display()
    );

    let mut group = criterion.benchmark_group("wal_verify");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(summary.verified_bytes));
    group.bench_function("verify", |b| {
        b.iter_custom(|iters| {
            record("verify", iters, timed(iters, || black_box(verify(&journal_dir).expect("verify")).records))
        })
    });
    group.bench_function("raw_crc_mmap", |b| {
        b.iter_custom(|iters| {
            record("raw_crc_mmap", iters, timed(iters, || segments.iter().map(|p| crc_of(&map(p))).sum()))
        })
    });
    let maps: Vec<Mmap> = segments.iter().map(|p| map(p)).collect();
    group.bench_function("raw_crc_mapped", |b| {
        b.iter_custom(|iters| record("raw_crc_mapped", iters, timed(iters, || maps.iter().map(|m| crc_of(m)).sum())))
    });
    group.finish();
    drop(maps);
    criterion.final_summary();
    if benchmarking {
        print_ratio_table(summary.verified_bytes);
    }
}

/// Appends 1 KiB records under `SyncPolicy::Never` until the log holds `log_bytes` bytes of
/// frames, printing the process's memory before, at doubling sizes, and after shutdown.
fn build_log(root: &TempDir, log_bytes: u64) {
    let frame_len = frame_bytes(PAYLOAD_BYTES) as u64;
    let records_total = log_bytes.div_ceil(frame_len);
    print_memory("before opening the journal", 0);
    let options = Options { sync: SyncPolicy::Never, ..Options::default() };
    let journal = Journal::open_dir(root.path(), options).expect("open the journal").journal;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("build the tokio runtime");
    let started = Instant::now();
    let mut records_done = 0;
    let mut report_at = FIRST_REPORT_BYTES.min(log_bytes);
    while records_done < records_total {
        let records_goal = report_at.div_ceil(frame_len).min(records_total);
        rt.block_on(append_concurrently(&journal, records_goal - records_done));
        records_done = records_goal;
        print_memory("after appending", records_done * frame_len);
        report_at = (report_at * 2).min(log_bytes);
    }
    rt.block_on(journal.shutdown()).expect("shut the journal down");
    print_memory("after shutdown", records_done * frame_len);
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "wal_verify: built {records_done} records in {elapsed:.1} s ({:.0} MB/s with SyncPolicy::Never)",
        (records_done * frame_len) as f64 / elapsed / 1e6
    );
}

async fn append_concurrently(journal: &Journal, records: u64) {
    let payload: Vec<u8> = (0..PAYLOAD_BYTES).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect();
    let tasks: Vec<_> = (0..BUILDERS as u64)
        .map(|task| {
            let (journal, payload) = (journal.clone(), payload.clone());
            let count = records / BUILDERS as u64 + u64::from(task < records % BUILDERS as u64);
            tokio::spawn(async move {
                for _ in 0..count {
                    journal.append(RecordKind::StepStarted, payload.clone()).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a builder task panicked");
    }
}

/// Prints `VmHWM` (peak resident memory so far) and `VmRSS` of this process.
fn print_memory(when: &str, log_bytes: u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or_else(|| "n/a".to_owned(), |v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    eprintln!(
        "wal_verify memory: {when:<27} log {:>6} MiB  VmHWM {:>10}  VmRSS {:>10}",
        log_bytes >> 20,
        field("VmHWM:"),
        field("VmRSS:")
    );
}

fn segment_paths(journal_dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(journal_dir)
        .expect("list the journal directory")
        .map(|e| e.expect("read the journal directory").path())
        .filter(|p| p.to_string_lossy().ends_with(SEGMENT_FILE_SUFFIX))
        .collect();
    paths.sort();
    paths
}

fn map(path: &Path) -> Mmap {
    let file = File::open(path).expect("open a segment");
    // SAFETY: the segment belongs to this benchmark's scratch directory and nothing writes,
    // truncates or removes it while the map is alive (the journal was shut down).
    unsafe { Mmap::map(&file) }.expect("map a segment")
}

fn crc_of(bytes: &[u8]) -> u64 {
    u64::from(crc32fast::hash(black_box(bytes)))
}

/// Runs `work` `iters` times and returns the elapsed time; what `work` returns is kept alive
/// so that it cannot be optimised away.
fn timed(iters: u64, mut work: impl FnMut() -> u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(work());
    }
    start.elapsed()
}

fn record(id: &'static str, iters: u64, elapsed: Duration) -> Duration {
    SAMPLES.lock().expect("samples lock").entry(id).or_default().push((iters, elapsed));
    elapsed
}

/// The median time per pass over the samples criterion analysed for `id`, if it ran.
fn median_per_pass(id: &str) -> Option<Duration> {
    let samples = SAMPLES.lock().expect("samples lock");
    let all = samples.get(id)?;
    let analysed = all.get(all.len().checked_sub(SAMPLE_SIZE)?..)?;
    let mut per_pass: Vec<Duration> = analysed.iter().map(|(n, t)| t.div_f64(*n as f64)).collect();
    per_pass.sort();
    let mid = per_pass.len() / 2;
    Some(if per_pass.len().is_multiple_of(2) { (per_pass[mid - 1] + per_pass[mid]) / 2 } else { per_pass[mid] })
}

fn print_ratio_table(bytes: u64) {
    let Some(verify) = median_per_pass("verify") else { return };
    eprintln!();
    eprintln!("wal_verify: {bytes} bytes per pass (median of the analysed samples)");
    eprintln!("{:>15} {:>10} {:>10} {:>15}", "", "ms/pass", "GB/s", "verify/this");
    for id in ["verify", "raw_crc_mmap", "raw_crc_mapped"] {
        let Some(pass) = median_per_pass(id) else { continue };
        eprintln!(
            "{id:>15} {:>10.1} {:>10.2} {:>14.1}%",
            pass.as_secs_f64() * 1e3,
            bytes as f64 / pass.as_secs_f64() / 1e9,
            100.0 * pass.as_secs_f64() / verify.as_secs_f64()
        );
    }
    eprintln!("(GB = 10^9 bytes; verify/this = verify's throughput as a share of this line's)");
}
