//! Durable append throughput and latency of the journal, each figure next to the physical limit
//! of the same disk, measured in the same run.
//!
//! For every payload size and number of concurrent appenders there are two benchmarks, run back
//! to back so that both see the same machine load:
//! - `journal/<c>`: `c` tokio tasks each doing sequential `append(..).await` under
//!   `SyncPolicy::Always`, the appends of a sample spread evenly across the tasks;
//! - `raw/<c>`: the ideal group commit on the same file system: a plain loop that writes `c`
//!   records' worth of frame bytes with one `write` and makes them durable with **one**
//!   `fdatasync`. No journal can beat it, so `raw / journal` is the share of the disk's limit the
//!   journal reaches.
//!
//! Every sample starts from a fresh data directory (created, opened and removed outside the
//! timed region), so the log never grows past what one sample writes and the disk never fills.
//! The ratio table printed at the end is computed from the very samples criterion analysed;
//! with `--bench` the run then adds an interleaved A/B cross-check of the two targets that are
//! most sensitive to load from other processes. Set `SAGALOG_BENCH_DIR` to measure a disk other
//! than the one holding the system temporary directory (it must not be a tmpfs to mean anything).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use sagalog::journal::{Journal, Options, SyncPolicy};
use sagalog::wal_format::{FIRST_LSN, RecordKind, SegmentHeader, frame, frame_bytes, segment_file_name};
use tempfile::TempDir;
use tokio::runtime::Runtime;

const PAYLOAD_SIZES: [usize; 3] = [128, 1024, 16 * 1024];
const APPENDERS: [usize; 3] = [1, 8, 64];
const SAMPLE_SIZE: usize = 10;
/// The record kind every benchmark appends; the kind does not change the cost.
const KIND: RecordKind = RecordKind::StepStarted;
/// Epoch of the raw loop's segment header and frames (any value; nothing reads them back).
const RAW_EPOCH: u64 = 0x5a6a_1065_bec4_0001;

/// Every `(iterations, elapsed)` criterion asked for, per benchmark id, warm-up included. In
/// flat sampling mode the last `SAMPLE_SIZE` calls are exactly the samples criterion analyses.
static SAMPLES: Mutex<BTreeMap<String, Vec<(u64, Duration)>>> = Mutex::new(BTreeMap::new());

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .nresamples(10_000)
        .configure_from_args();
    // Without `--bench` (as under `cargo test --benches`) criterion runs each routine once;
    // with `--profile-time` it runs without analysis, for a profiler to watch.
    let args: Vec<String> = std::env::args().collect();
    let profiling = args.iter().any(|a| a == "--profile-time");
    let benchmarking = args.iter().any(|a| a == "--bench") && !profiling;
    eprintln!("wal_append: scratch directories under {}", scratch_base().display());
    let rt = runtime();
    // A quick A/B of the two load-sensitive targets only, for iterating on the writer.
    if std::env::var_os("SAGALOG_BENCH_CROSS_ONLY").is_some() {
        cross_check_throughput(&rt, 1024, 64, 6);
        cross_check_latency(&rt, 1024, 6, 150);
        return;
    }
    for payload_bytes in PAYLOAD_SIZES {
        bench_payload_size(&mut criterion, &rt, payload_bytes);
    }
    criterion.final_summary();
    if profiling {
        print_totals();
    }
    if benchmarking {
        print_ratio_table();
        cross_check_throughput(&rt, 1024, 64, 6);
        for payload_bytes in PAYLOAD_SIZES {
            cross_check_latency(&rt, payload_bytes, 6, 150);
        }
    }
}

fn bench_payload_size(criterion: &mut Criterion, rt: &Runtime, payload_bytes: usize) {
    let mut group = criterion.benchmark_group(format!("wal_append/{}", size_name(payload_bytes)));
    // Flat sampling gives every sample the same number of appends, so the median sample is a
    // fair per-append figure and the samples can be recovered for the ratio table.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(1));
    for appenders in APPENDERS {
        let journal_id = format!("{}/journal/{appenders}", group_name(payload_bytes));
        group.bench_function(BenchmarkId::new("journal", appenders), |b| {
            b.iter_custom(|iters| record(&journal_id, iters, journal_appends(rt, payload_bytes, appenders, iters)))
        });
        let raw_id = format!("{}/raw/{appenders}", group_name(payload_bytes));
        group.bench_function(BenchmarkId::new("raw", appenders), |b| {
            b.iter_custom(|iters| record(&raw_id, iters, raw_appends(payload_bytes, appenders, iters)))
        });
    }
    group.finish();
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("build the tokio runtime")
}

/// `iters` durable appends from `appenders` concurrent tasks into a fresh journal; returns the
/// wall time from the first append sent to the last one acknowledged.
fn journal_appends(rt: &Runtime, payload_bytes: usize, appenders: usize, iters: u64) -> Duration {
    let dir = scratch();
    let options = Options { sync: SyncPolicy::Always, ..Options::default() };
    let journal = Journal::open_dir(dir.path(), options).expect("open the journal").journal;
    let payload = payload(payload_bytes);
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|task| {
                let (journal, payload) = (journal.clone(), payload.clone());
                let count = share(iters, appenders, task);
                tokio::spawn(async move {
                    for _ in 0..count {
                        black_box(journal.append(KIND, payload.clone()).await.expect("append"));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("an appender task panicked");
        }
        start.elapsed()
    });
    rt.block_on(journal.shutdown()).expect("shut the journal down");
    elapsed
}

/// The ideal group commit: `iters` records' frames written `appenders` at a time, one `write`
/// and one `fdatasync` per group, into a fresh segment-like file on the same file system.
fn raw_appends(payload_bytes: usize, appenders: usize, iters: u64) -> Duration {
    let dir = scratch();
    let mut file = raw_segment(dir.path());
    let group = frames(payload_bytes, appenders);
    let frame_len = frame_bytes(payload_bytes);
    let start = Instant::now();
    let mut left = iters as usize;
    while left > 0 {
        let records = left.min(appenders);
        file.write_all(&group[..records * frame_len]).expect("raw write");
        file.sync_data().expect("raw fdatasync");
        left -= records;
    }
    start.elapsed()
}

/// A segment file created the way the journal creates its first one (header written and
/// synced, directory synced), open for appending like the journal's active segment.
fn raw_segment(root: &Path) -> File {
    let path = root.join(segment_file_name(1));
    let header = SegmentHeader { segment_id: 1, first_lsn: FIRST_LSN, epoch: RAW_EPOCH };
    let mut file = File::create(&path).expect("create the raw segment");
    file.write_all(&header.encode()).expect("write the raw segment header");
    file.sync_all().expect("sync the raw segment");
    File::open(root).and_then(|d| d.sync_all()).expect("sync the scratch directory");
    OpenOptions::new().append(true).open(&path).expect("open the raw segment for appending")
}

/// `records` real frames back to back, as the journal would encode them.
fn frames(payload_bytes: usize, records: usize) -> Vec<u8> {
    let payload = payload(payload_bytes);
    let mut out = Vec::with_capacity(records * frame_bytes(payload_bytes));
    for lsn in FIRST_LSN..FIRST_LSN + records as u64 {
        frame::encode(&mut out, RAW_EPOCH, lsn, KIND, &payload).expect("encode a frame");
    }
    out
}

/// A payload that is not all zeros, so no layer can cheat by recognising it.
fn payload(payload_bytes: usize) -> Vec<u8> {
    (0..payload_bytes).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect()
}

/// How many of `iters` appends task `task` of `tasks` does; the shares add up to `iters`.
fn share(iters: u64, tasks: usize, task: usize) -> u64 {
    let tasks = tasks as u64;
    iters / tasks + u64::from((task as u64) < iters % tasks)
}

fn scratch_base() -> PathBuf {
    std::env::var_os("SAGALOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A fresh directory that is removed (with everything written into it) when dropped.
fn scratch() -> TempDir {
    tempfile::Builder::new().prefix("sagalog-bench-").tempdir_in(scratch_base()).expect("create a scratch directory")
}

fn size_name(payload_bytes: usize) -> String {
    match payload_bytes {
        b if b >= 1024 && b.is_multiple_of(1024) => format!("{}KiB", b / 1024),
        b => format!("{b}B"),
    }
}

fn group_name(payload_bytes: usize) -> String {
    format!("wal_append/{}", size_name(payload_bytes))
}

fn record(id: &str, iters: u64, elapsed: Duration) -> Duration {
    SAMPLES.lock().expect("samples lock").entry(id.to_owned()).or_default().push((iters, elapsed));
    elapsed
}

/// The median time per append over the samples criterion analysed for `id`, if it ran.
fn median_per_append(id: &str) -> Option<Duration> {
    let samples = SAMPLES.lock().expect("samples lock");
    let all = samples.get(id)?;
    let analysed = all.get(all.len().checked_sub(SAMPLE_SIZE)?..)?;
    let per_append: Vec<Duration> = analysed.iter().map(|(n, t)| t.div_f64(*n as f64)).collect();
    Some(median(per_append))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2 } else { values[mid] }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

/// Appends and time per benchmark over every call, for relating a profile to appends.
fn print_totals() {
    for (id, calls) in SAMPLES.lock().expect("samples lock").iter() {
        let appends: u64 = calls.iter().map(|(n, _)| n).sum();
        let elapsed: Duration = calls.iter().map(|(_, t)| *t).sum();
        eprintln!("{id}: {appends} appends in {:.3} s", elapsed.as_secs_f64());
    }
}

fn print_ratio_table() {
    eprintln!();
    eprintln!("wal_append: journal vs raw (median per-append time of the analysed samples)");
    eprintln!(
        "{:>8} {:>4} {:>14} {:>14} {:>14} {:>14} {:>8}",
        "payload", "c", "journal/s", "raw/s", "journal us", "raw us", "j/raw"
    );
    for payload_bytes in PAYLOAD_SIZES {
        for appenders in APPENDERS {
            let prefix = group_name(payload_bytes);
            let journal = median_per_append(&format!("{prefix}/journal/{appenders}"));
            let raw = median_per_append(&format!("{prefix}/raw/{appenders}"));
            let (Some(journal), Some(raw)) = (journal, raw) else { continue };
            eprintln!(
                "{:>8} {:>4} {:>14.0} {:>14.0} {:>14.2} {:>14.2} {:>7.1}%",
                size_name(payload_bytes),
                appenders,
                1.0 / journal.as_secs_f64(),
                1.0 / raw.as_secs_f64(),
                journal.as_secs_f64() * 1e6,
                raw.as_secs_f64() * 1e6,
                100.0 * raw.as_secs_f64() / journal.as_secs_f64(),
            );
        }
    }
    eprintln!("(j/raw = journal throughput / raw throughput; for c = 1 the per-append times are the latency p50s)");
}

/// Target (a) measured again with journal and raw rounds alternating, so that a burst of load
/// from another process hits both sides alike.
fn cross_check_throughput(rt: &Runtime, payload_bytes: usize, appenders: usize, rounds: usize) {
    let appends = appenders as u64 * 200;
    let mut ratios = Vec::with_capacity(rounds);
    let (mut journal_times, mut raw_times) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let journal = journal_appends(rt, payload_bytes, appenders, appends);
        let raw = raw_appends(payload_bytes, appenders, appends);
        ratios.push(raw.as_secs_f64() / journal.as_secs_f64());
        journal_times.push(journal);
        raw_times.push(raw);
    }
    ratios.sort_by(f64::total_cmp);
    let per_second = |t: Duration| appends as f64 / t.as_secs_f64();
    eprintln!();
    eprintln!(
        "cross-check {} x {appenders} appenders, {rounds} alternating rounds of {appends} appends: \
         journal {:.0}/s, raw {:.0}/s (medians); journal/raw per round min {:.1}% median {:.1}% max {:.1}%",
        size_name(payload_bytes),
        per_second(median(journal_times)),
        per_second(median(raw_times)),
        100.0 * ratios[0],
        100.0 * ratios[ratios.len() / 2],
        100.0 * ratios[ratios.len() - 1],
    );
}

/// Target (b) from individually timed appends: one appender on the journal, alternating in
/// rounds with single-record `write` + `fdatasync` on a raw file.
fn cross_check_latency(rt: &Runtime, payload_bytes: usize, rounds: usize, per_round: usize) {
    let (mut journal, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        journal.extend(journal_latencies(rt, payload_bytes, per_round));
        raw.extend(raw_latencies(payload_bytes, per_round));
    }
    journal.sort();
    raw.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let line = |name: &str, v: &[Duration]| {
        format!(
            "{name} p50 {:.1} us p90 {:.1} us p99 {:.1} us",
            us(percentile(v, 0.5)),
            us(percentile(v, 0.9)),
            us(percentile(v, 0.99))
        )
    };
    eprintln!(
        "cross-check latency {}, 1 appender, {} appends each: {}; {}; p50 ratio {:.2}x",
        size_name(payload_bytes),
        journal.len(),
        line("journal", &journal),
        line("raw", &raw),
        percentile(&journal, 0.5).as_secs_f64() / percentile(&raw, 0.5).as_secs_f64(),
    );
}

fn journal_latencies(rt: &Runtime, payload_bytes: usize, appends: usize) -> Vec<Duration> {
    let dir = scratch();
    let journal = Journal::open_dir(dir.path(), Options::default()).expect("open the journal").journal;
    let payload = payload(payload_bytes);
    let task = journal.clone();
    let latencies = rt
        .block_on(rt.spawn(async move {
            let mut latencies = Vec::with_capacity(appends);
            for _ in 0..appends {
                let start = Instant::now();
                black_box(task.append(KIND, payload.clone()).await.expect("append"));
                latencies.push(start.elapsed());
            }
            latencies
        }))
        .expect("the appender task panicked");
    rt.block_on(journal.shutdown()).expect("shut the journal down");
    latencies
}

fn raw_latencies(payload_bytes: usize, appends: usize) -> Vec<Duration> {
    let dir = scratch();
    let mut file = raw_segment(dir.path());
    let one = frames(payload_bytes, 1);
    (0..appends)
        .map(|_| {
            let start = Instant::now();
            file.write_all(&one).expect("raw write");
            file.sync_data().expect("raw fdatasync");
            start.elapsed()
        })
        .collect()
}
