//! Saga throughput: what the engine costs per saga, each figure next to the reference it is
//! judged against, measured in the same run.
//!
//! Two groups, run back to back so that both sides of each comparison see the same machine load:
//! - `saga_throughput/noop`: 3-step sagas whose actions are `noop` on the in-memory participant,
//!   64 closed-loop clients (each submits a saga, waits until it settles, submits the next), the
//!   journal under `SyncPolicy::Always`. `engine` archives finished sagas into a sled index as
//!   `Node` does; `engine_no_index` keeps them in memory; `raw_fdatasync` is the disk's durable
//!   write rate: one 1 KiB `write` + `fdatasync` per iteration on the same file system. Their
//!   ratio says how many sagas one `fdatasync` has to carry.
//! - `saga_throughput/sqlite`: the same shape on the SQLite participant (WAL,
//!   `synchronous=FULL`, a pool of 4 connections), each step one `INSERT`. `engine` runs them
//!   through sagalog; `direct` runs the very same statements and marker inserts without sagalog:
//!   64 workers, and per step one `BEGIN IMMEDIATE` transaction holding the `INSERT` and the
//!   marker `INSERT`, over a pool of the same size.
//!
//! Every sample starts from a fresh data directory (created and removed outside the timed
//! region). With `--bench` the run ends with a summary table computed from the samples criterion
//! analysed, and an interleaved A/B cross-check of both ratios (rounds alternate, so a burst of
//! load from another process hits both sides alike).
//!
//! `SAGALOG_BENCH_MEMORY=1` runs only the memory curve instead: finished no-op sagas through an
//! executor with an index (journal `SyncPolicy::Never`, to get far in little time), a checkpoint
//! pass every second so the journal is truncated, and the process's `VmRSS` printed at 100k,
//! 250k, 500k and 1M sagas or when the time budget (`SAGALOG_BENCH_MEMORY_SECS`, default 270)
//! runs out. `SAGALOG_BENCH_MEMORY=index` is its control: the same finished-saga records put
//! straight into an index, with no executor and no journal, up to 250k.
//! `SAGALOG_BENCH_DIR` moves the scratch directories (never onto a tmpfs).
//!
//! `SAGALOG_BENCH_POSTGRES=1` runs only the PostgreSQL A/B instead (issue 13, item 7): the same
//! 3-step sagas on a PostgreSQL participant (`SAGALOG_TEST_POSTGRES`, default the local `test`
//! database) against `direct`, 64 workers each running per step one transaction with the
//! `INSERT` and the marker `INSERT` over a pool of the same size, alternating rounds on fresh
//! tables.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use rusqlite::{Connection, TransactionBehavior, params};
use sagalog::catalog::Catalog;
use sagalog::engine::record::{Finished, Started, Submitted, Succeeded};
use sagalog::engine::{Outcome, Record, Saga, SagaDefinition, Status, StepCall, Value};
use sagalog::executor::{Executor, SubmitOutcome};
use sagalog::index::{Index, SagaRecord};
use sagalog::journal::{Journal, Options, SyncPolicy};
use sagalog::participant::memory::Memory;
use sagalog::participant::sqlite::Sqlite;
use sagalog::participant::{Applied, BoxFuture, Direction, Error, Kind, Operation, Participant, StepKey};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

/// Sagas in flight: closed-loop clients, each with one saga at a time.
const CLIENTS: usize = 64;
const STEPS: usize = 3;
const SAMPLE_SIZE: usize = 10;
/// Connections of the SQLite participant, and of the direct baseline's pool.
const POOL_SIZE: usize = 4;
/// Bytes of the raw loop's record: about one journal batch's worth of small records.
const RAW_RECORD_BYTES: usize = 1024;
/// The text column every SQLite step inserts.
const ROW_PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

const NOOP_CONFIG: &str = r#"
[participants.mem]
kind = "memory"

[actions.noop]
participant = "mem"
forward = { noop = true }
compensate = { noop = true }
"#;

const SQLITE_CONFIG: &str = r#"
[participants.db]
kind = "sqlite"
path = "db.sqlite"
pool_size = 4

[actions.insert]
participant = "db"
params = { saga = "text", step = "int", payload = "text" }
forward = { sql = "INSERT INTO items (saga, step, payload) VALUES (?1, ?2, ?3)", args = ["saga", "step", "payload"] }
compensate = { sql = "DELETE FROM items WHERE saga = ?1 AND step = ?2", args = ["saga", "step"] }
"#;

const ITEMS_TABLE: &str = "CREATE TABLE IF NOT EXISTS items (saga TEXT NOT NULL, step INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (saga, step))";
/// The participant's marker table, the same DDL as `src/participant/sqlite.rs`.
const MARKER_TABLE: &str = "CREATE TABLE IF NOT EXISTS sagalog_markers (saga_id TEXT NOT NULL, step INTEGER NOT NULL,
    direction TEXT NOT NULL, applied_at_ms INTEGER NOT NULL, PRIMARY KEY (saga_id, step, direction))";
const INSERT_ITEM: &str = "INSERT INTO items (saga, step, payload) VALUES (?1, ?2, ?3)";
const INSERT_MARKER: &str =
    "INSERT INTO sagalog_markers (saga_id, step, direction, applied_at_ms) VALUES (?1, ?2, ?3, ?4)";

/// Every `(iterations, elapsed)` criterion asked for, per benchmark id, warm-up included. In
/// flat sampling mode the last `SAMPLE_SIZE` calls are exactly the samples criterion analyses.
static SAMPLES: Mutex<BTreeMap<String, Vec<(u64, Duration)>>> = Mutex::new(BTreeMap::new());
/// Sagas run and journal records appended per benchmark id, over every call.
static RECORDS: Mutex<BTreeMap<String, (u64, u64)>> = Mutex::new(BTreeMap::new());

/// What the sagas' steps act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Noop,
    Sqlite,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let profiling = args.iter().any(|a| a == "--profile-time");
    let benchmarking = args.iter().any(|a| a == "--bench") && !profiling;
    eprintln!("saga_throughput: scratch directories under {}", scratch_base().display());
    let rt = runtime();
    if std::env::var_os("SAGALOG_BENCH_POSTGRES").is_some() {
        cross_check_postgres(&rt, if benchmarking { 9 } else { 1 });
        return;
    }
    if std::env::var_os("SAGALOG_BENCH_MEMORY").is_some() {
        let budget = std::env::var("SAGALOG_BENCH_MEMORY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(270);
        // Without `--bench` (as under `cargo test --benches`) only a token run.
        let total = if benchmarking { 1_000_000 } else { 2_000 };
        if std::env::var_os("SAGALOG_BENCH_MEMORY").is_some_and(|v| v == "index") {
            index_only_curve(total.min(250_000));
        } else {
            memory_curve(&rt, total, Duration::from_secs(budget));
        }
        return;
    }
    let mut criterion = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .nresamples(10_000)
        .configure_from_args();
    bench_noop(&mut criterion, &rt);
    bench_sqlite(&mut criterion, &rt);
    criterion.final_summary();
    if profiling {
        print_totals();
    }
    if benchmarking {
        print_summary();
        cross_check_noop(&rt, 7);
        cross_check_sqlite(&rt, 9);
    }
}

fn bench_noop(criterion: &mut Criterion, rt: &Runtime) {
    let mut group = criterion.benchmark_group("saga_throughput/noop");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("engine", CLIENTS), |b| {
        b.iter_custom(|iters| sample("noop/engine", iters, engine_sagas(rt, Workload::Noop, true, iters)))
    });
    group.bench_function(BenchmarkId::new("engine_no_index", CLIENTS), |b| {
        b.iter_custom(|iters| sample("noop/engine_no_index", iters, engine_sagas(rt, Workload::Noop, false, iters)))
    });
    group.bench_function("raw_fdatasync", |b| {
        b.iter_custom(|iters| sample("noop/raw_fdatasync", iters, raw_fdatasyncs(iters)))
    });
    group.finish();
}

fn bench_sqlite(criterion: &mut Criterion, rt: &Runtime) {
    let mut group = criterion.benchmark_group("saga_throughput/sqlite");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("engine", CLIENTS), |b| {
        b.iter_custom(|iters| sample("sqlite/engine", iters, engine_sagas(rt, Workload::Sqlite, true, iters)))
    });
    group.bench_function(BenchmarkId::new("direct", CLIENTS), |b| {
        b.iter_custom(|iters| sample("sqlite/direct", iters, direct_sagas(rt, iters)))
    });
    group.finish();
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("build the tokio runtime")
}

/// An executor over a fresh data directory, assembled as `Node::start` does it.
struct Engine {
    exec: Executor,
    journal: Journal,
    index: Option<Index>,
    /// Removed (with the journal, the index and the database) when dropped.
    _dir: TempDir,
}

fn engine(workload: Workload, with_index: bool, sync: SyncPolicy, segment_bytes_max: u64) -> Engine {
    let dir = scratch();
    let options = Options { sync, segment_bytes_max, ..Options::default() };
    let journal = Journal::open_dir(dir.path(), options).expect("open the journal").journal;
    let (config, participant): (&str, Arc<dyn Participant>) = match workload {
        Workload::Noop => (NOOP_CONFIG, Arc::new(Memory::new("mem"))),
        Workload::Sqlite => {
            let path = dir.path().join("db.sqlite");
            Connection::open(&path).and_then(|c| c.execute_batch(ITEMS_TABLE)).expect("create the items table");
            (SQLITE_CONFIG, Arc::new(Sqlite::open("db", path, POOL_SIZE).expect("open the sqlite participant")))
        }
    };
    let catalog = Arc::new(Catalog::parse(config).expect("the bench config is valid"));
    let participants = BTreeMap::from([(participant.name().to_owned(), participant)]);
    let index = with_index.then(|| Index::open(dir.path().join("index")).expect("open the index"));
    let exec = Executor::with_index(journal.clone(), catalog, participants, index.clone());
    Engine { exec, journal, index, _dir: dir }
}

/// A 3-step saga of `workload`'s action.
fn saga(workload: Workload, id: &str) -> SagaDefinition {
    let steps = (0..STEPS)
        .map(|step| match workload {
            Workload::Noop => StepCall { action: "noop".into(), params: BTreeMap::new(), from: Default::default() },
            Workload::Sqlite => StepCall {
                action: "insert".into(),
                params: BTreeMap::from([
                    ("saga".to_owned(), Value::Text(id.to_owned())),
                    ("step".to_owned(), Value::Int(step as i64)),
                    ("payload".to_owned(), Value::Text(ROW_PAYLOAD.to_owned())),
                ]),
                from: Default::default(),
            },
        })
        .collect();
    SagaDefinition { id: id.to_owned(), steps }
}

/// `sagas` sagas through a fresh executor by `CLIENTS` closed-loop clients; returns the wall
/// time from the first submit to the last saga settled.
fn engine_sagas(rt: &Runtime, workload: Workload, with_index: bool, sagas: u64) -> Duration {
    let engine = engine(workload, with_index, SyncPolicy::Always, Options::default().segment_bytes_max);
    let elapsed = rt.block_on(closed_loop(&engine.exec, workload, sagas));
    check_completed(&engine, sagas);
    let id = format!("{}/engine{}", name(workload), if with_index { "" } else { "_no_index" });
    let mut records = RECORDS.lock().expect("records lock");
    let entry = records.entry(id).or_default();
    entry.0 += sagas;
    entry.1 += engine.journal.acked_lsn();
    drop(records);
    rt.block_on(engine.journal.shutdown()).expect("shut the journal down");
    elapsed
}

async fn closed_loop(exec: &Executor, workload: Workload, sagas: u64) -> Duration {
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let exec = exec.clone();
            let count = share(sagas, CLIENTS, client);
            tokio::spawn(async move {
                for i in 0..count {
                    let id = format!("c{client}-{i}");
                    let outcome = exec.submit(saga(workload, &id)).await.expect("submit");
                    assert_eq!(outcome, SubmitOutcome::Accepted);
                    // `None`: the saga already finished and left memory for the index.
                    if let Some(snapshot) = exec.wait_settled(&id).await {
                        assert!(snapshot.status.is_terminal(), "saga {id} is {:?}", snapshot.status);
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("a client task panicked");
    }
    start.elapsed()
}

/// Every saga of the sample completed (checked outside the timed region).
fn check_completed(engine: &Engine, sagas: u64) {
    let in_memory = engine.exec.list();
    let completed_in_memory = in_memory.iter().filter(|s| s.status == Status::Completed).count();
    let archived = engine.index.as_ref().map_or(0, |index| index.len());
    // A saga whose task is archiving it right now is briefly in both places.
    assert!(
        (completed_in_memory + archived) as u64 >= sagas,
        "only {completed_in_memory} + {archived} of {sagas} sagas completed"
    );
}

/// The direct baseline: a pool of `POOL_SIZE` SQLite connections configured like the
/// participant's (WAL, `synchronous=FULL`, 5 s busy timeout), used from blocking threads.
struct Direct {
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
    _dir: TempDir,
}

fn direct() -> Direct {
    let dir = scratch();
    let path = dir.path().join("db.sqlite");
    let connections = (0..POOL_SIZE)
        .map(|_| {
            let conn = Connection::open(&path).expect("open the direct database");
            conn.busy_timeout(Duration::from_secs(5)).expect("set the busy timeout");
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0)).expect("enable WAL");
            assert!(mode.eq_ignore_ascii_case("wal"), "journal mode is {mode}");
            conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;").expect("set pragmas");
            conn.execute_batch(ITEMS_TABLE).and_then(|()| conn.execute_batch(MARKER_TABLE)).expect("create tables");
            conn
        })
        .collect();
    Direct { idle: Arc::new(Mutex::new(connections)), permits: Arc::new(Semaphore::new(POOL_SIZE)), _dir: dir }
}

/// `sagas` × `STEPS` step transactions by `CLIENTS` workers, each worker running its "sagas"'
/// steps one after the other, with no journal.
fn direct_sagas(rt: &Runtime, sagas: u64) -> Duration {
    let direct = direct();
    rt.block_on(async {
        let start = Instant::now();
        let workers: Vec<_> = (0..CLIENTS)
            .map(|worker| {
                let (idle, permits) = (direct.idle.clone(), direct.permits.clone());
                let count = share(sagas, CLIENTS, worker);
                tokio::spawn(async move {
                    for i in 0..count {
                        let id = format!("c{worker}-{i}");
                        for step in 0..STEPS as i64 {
                            direct_step(&idle, &permits, id.clone(), step).await;
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("a direct worker panicked");
        }
        start.elapsed()
    })
}

/// One step without sagalog: `BEGIN IMMEDIATE`, the statement, the marker insert, `COMMIT`.
async fn direct_step(idle: &Arc<Mutex<Vec<Connection>>>, permits: &Arc<Semaphore>, saga: String, step: i64) {
    let permit = permits.clone().acquire_owned().await.expect("the pool is never closed");
    let idle = idle.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut conn = idle.lock().expect("pool lock").pop().expect("a permit guarantees a connection");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
        tx.prepare_cached(INSERT_ITEM).and_then(|mut s| s.execute(params![saga, step, ROW_PAYLOAD])).expect("insert");
        tx.prepare_cached(INSERT_MARKER)
            .and_then(|mut s| s.execute(params![saga, step, "forward", now_ms()]))
            .expect("insert marker");
        tx.commit().expect("commit");
        idle.lock().expect("pool lock").push(conn);
    })
    .await
    .expect("a direct step panicked");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `iters` single-record durable writes: a 1 KiB `write` + `fdatasync` each, into a fresh file
/// on the scratch file system. The disk's rate for the journal's kind of write.
fn raw_fdatasyncs(iters: u64) -> Duration {
    raw_fdatasync_latencies(iters).iter().sum()
}

/// The time of each of `iters` single-record durable writes (see [`raw_fdatasyncs`]).
fn raw_fdatasync_latencies(iters: u64) -> Vec<Duration> {
    let dir = scratch();
    let mut file = File::create(dir.path().join("raw.wal")).expect("create the raw file");
    file.sync_all().expect("sync the raw file");
    File::open(dir.path()).and_then(|d| d.sync_all()).expect("sync the scratch directory");
    let record: Vec<u8> = (0..RAW_RECORD_BYTES).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect();
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            file.write_all(&record).expect("raw write");
            file.sync_data().expect("raw fdatasync");
            start.elapsed()
        })
        .collect()
}

/// How many of `total` items worker `worker` of `workers` takes; the shares add up to `total`.
fn share(total: u64, workers: usize, worker: usize) -> u64 {
    let workers = workers as u64;
    total / workers + u64::from((worker as u64) < total % workers)
}

fn name(workload: Workload) -> &'static str {
    match workload {
        Workload::Noop => "noop",
        Workload::Sqlite => "sqlite",
    }
}

fn scratch_base() -> PathBuf {
    std::env::var_os("SAGALOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A fresh directory that is removed (with everything written into it) when dropped.
fn scratch() -> TempDir {
    tempfile::Builder::new().prefix("sagalog-bench-").tempdir_in(scratch_base()).expect("create a scratch directory")
}

fn sample(id: &str, iters: u64, elapsed: Duration) -> Duration {
    SAMPLES.lock().expect("samples lock").entry(id.to_owned()).or_default().push((iters, elapsed));
    elapsed
}

/// Median operations per second over the samples criterion analysed for `id`, if it ran.
fn median_rate(id: &str) -> Option<f64> {
    let samples = SAMPLES.lock().expect("samples lock");
    let all = samples.get(id)?;
    let analysed = all.get(all.len().checked_sub(SAMPLE_SIZE)?..)?;
    Some(median(analysed.iter().map(|(n, t)| *n as f64 / t.as_secs_f64()).collect()))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] }
}

fn records_per_saga(id: &str) -> Option<f64> {
    let records = RECORDS.lock().expect("records lock");
    let (sagas, appended) = records.get(id)?;
    Some(*appended as f64 / *sagas as f64)
}

/// Operations and time per benchmark over every call, for relating a profile to sagas.
fn print_totals() {
    for (id, calls) in SAMPLES.lock().expect("samples lock").iter() {
        let operations: u64 = calls.iter().map(|(n, _)| n).sum();
        let elapsed: Duration = calls.iter().map(|(_, t)| *t).sum();
        eprintln!("{id}: {operations} operations in {:.3} s", elapsed.as_secs_f64());
    }
}

fn print_summary() {
    eprintln!();
    eprintln!("saga_throughput: medians of the analysed samples ({CLIENTS} clients, {STEPS}-step sagas)");
    for id in ["noop/engine", "noop/engine_no_index", "noop/raw_fdatasync", "sqlite/engine", "sqlite/direct"] {
        let Some(rate) = median_rate(id) else { continue };
        let records = records_per_saga(id).map_or(String::new(), |r| format!(", {r:.2} journal records per saga"));
        let unit = if id.ends_with("raw_fdatasync") { "fdatasyncs/s" } else { "sagas/s" };
        eprintln!("  {id:<22} {rate:>10.0} {unit}{records}");
    }
    if let (Some(engine), Some(raw)) = (median_rate("noop/engine"), median_rate("noop/raw_fdatasync")) {
        eprintln!("  noop: {:.1} sagas per single-record fdatasync time (engine / raw)", engine / raw);
    }
    if let (Some(engine), Some(direct)) = (median_rate("sqlite/engine"), median_rate("sqlite/direct")) {
        eprintln!("  sqlite: engine / direct = {:.1}%", 100.0 * engine / direct);
    }
}

/// Target 1 again with engine and raw rounds alternating.
fn cross_check_noop(rt: &Runtime, rounds: usize) {
    let (sagas, syncs) = (CLIENTS as u64 * 60, 500);
    let (mut engine_rates, mut raw_rates, mut ratios, mut latencies) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let engine = sagas as f64 / engine_sagas(rt, Workload::Noop, true, sagas).as_secs_f64();
        let round = raw_fdatasync_latencies(syncs);
        let raw = syncs as f64 / round.iter().sum::<Duration>().as_secs_f64();
        latencies.extend(round);
        engine_rates.push(engine);
        raw_rates.push(raw);
        ratios.push(engine / raw);
    }
    ratios.sort_by(f64::total_cmp);
    latencies.sort();
    let us = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6;
    eprintln!();
    eprintln!(
        "cross-check noop, {rounds} alternating rounds of {sagas} sagas / {syncs} fdatasyncs: engine {:.0} sagas/s, \
         raw {:.0} fdatasyncs/s (medians; raw fdatasync p50 {:.0} us, p90 {:.0} us, p99 {:.0} us); \
         sagas per fdatasync time min {:.1} median {:.1} max {:.1}",
        median(engine_rates),
        median(raw_rates),
        us(0.5),
        us(0.9),
        us(0.99),
        ratios[0],
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1],
    );
}

/// Target 2 again with engine and direct rounds alternating.
fn cross_check_sqlite(rt: &Runtime, rounds: usize) {
    let sagas = CLIENTS as u64 * 8;
    cross_check(
        "sqlite",
        rounds,
        sagas,
        || engine_sagas(rt, Workload::Sqlite, true, sagas),
        || direct_sagas(rt, sagas),
    );
}

/// `rounds` rounds of `engine` then `direct` (each the wall time of `sagas` sagas), and the
/// medians and the spread of their ratio.
fn cross_check(
    name: &str,
    rounds: usize,
    sagas: u64,
    mut engine: impl FnMut() -> Duration,
    mut direct: impl FnMut() -> Duration,
) {
    let (mut engine_rates, mut direct_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let engine = sagas as f64 / engine().as_secs_f64();
        let direct = sagas as f64 / direct().as_secs_f64();
        engine_rates.push(engine);
        direct_rates.push(direct);
        ratios.push(engine / direct);
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "cross-check {name}, {rounds} alternating rounds of {sagas} sagas: engine {:.0} sagas/s, direct {:.0} sagas/s \
         (medians); engine/direct min {:.1}% median {:.1}% max {:.1}%",
        median(engine_rates),
        median(direct_rates),
        100.0 * ratios[0],
        100.0 * ratios[ratios.len() / 2],
        100.0 * ratios[ratios.len() - 1],
    );
}

/// A participant that does nothing and keeps nothing, so that the memory curve measures the
/// executor, the journal and the index rather than the in-memory participant's growing maps.
struct Null;

impl Participant for Null {
    fn name(&self) -> &str {
        "mem"
    }

    fn kind(&self) -> Kind {
        Kind::Memory
    }

    fn apply<'a>(
        &'a self,
        _key: &'a StepKey,
        _attempt: u32,
        _op: &'a Operation,
    ) -> BoxFuture<'a, Result<Applied, Error>> {
        Box::pin(async { Ok(Applied::Applied) })
    }

    fn lookup_marker<'a>(&'a self, _key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async { Ok(false) })
    }

    fn settle_marker<'a>(&'a self, _key: &'a StepKey, _through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async { Ok(false) })
    }

    fn markers<'a>(&'a self, _saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// Target 4: finished sagas through an executor with an index; prints memory at milestones.
fn memory_curve(rt: &Runtime, total: u64, budget: Duration) {
    let dir = scratch();
    let options = Options { sync: SyncPolicy::Never, segment_bytes_max: 8 * 1024 * 1024, ..Options::default() };
    let journal = Journal::open_dir(dir.path(), options).expect("open the journal").journal;
    let index = Index::open(dir.path().join("index")).expect("open the index");
    let catalog = Arc::new(Catalog::parse(NOOP_CONFIG).expect("the bench config is valid"));
    let participants = BTreeMap::from([("mem".to_owned(), Arc::new(Null) as Arc<dyn Participant>)]);
    let exec = Executor::with_index(journal.clone(), catalog, participants, Some(index.clone()));
    let milestones: Vec<u64> =
        [10_000, 100_000, 250_000, 500_000, 1_000_000].into_iter().filter(|m| *m < total).collect();
    eprintln!("memory curve: up to {total} sagas, budget {} s; journal sync never, 8 MiB segments", budget.as_secs());
    eprintln!(
        "{:>9} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10}",
        "sagas", "secs", "sagas/s", "VmRSS kB", "VmHWM kB", "in memory", "segments", "journal kB", "index kB"
    );
    print_memory_line(0, Duration::ZERO, &exec, dir.path());
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    rt.block_on(async {
        let archiver = {
            let (exec, journal, index, root) = (exec.clone(), journal.clone(), index.clone(), dir.path().to_owned());
            tokio::spawn(async move {
                let (mut last, no_retention) =
                    (0, sagalog::config::IndexConfig { retention_hours: 0, ..Default::default() });
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match sagalog::node::archive_pass(&exec, &journal, &index, &root, &no_retention, last).await {
                        Ok(lsn) => last = lsn,
                        Err(e) => panic!("checkpoint pass failed: {e}"),
                    }
                }
            })
        };
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (exec, issued, done, stop) = (exec.clone(), issued.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = issued.fetch_add(1, Ordering::Relaxed);
                        if n >= total {
                            return;
                        }
                        let id = format!("m{n}");
                        exec.submit(saga(Workload::Noop, &id)).await.expect("submit");
                        exec.wait_settled(&id).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let start = Instant::now();
        let mut next = milestones.iter().copied().peekable();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let finished = done.load(Ordering::Relaxed);
            if finished >= total || start.elapsed() > budget {
                stop.store(true, Ordering::Relaxed);
                break;
            }
            if next.peek().is_some_and(|m| finished >= *m) {
                next.next();
                print_memory_line(finished, start.elapsed(), &exec, dir.path());
            }
        }
        for client in clients {
            client.await.expect("a client task panicked");
        }
        // One last checkpoint pass so the final line shows the journal truncated too.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        print_memory_line(done.load(Ordering::Relaxed), start.elapsed(), &exec, dir.path());
        archiver.abort();
    });
    rt.block_on(journal.shutdown()).expect("shut the journal down");
}

fn print_memory_line(sagas: u64, elapsed: Duration, exec: &Executor, root: &Path) {
    let (rss, hwm) = (status_kb("VmRSS"), status_kb("VmHWM"));
    let (segments, journal_bytes) = dir_size(&root.join("journal"));
    let (_, index_bytes) = dir_size(&root.join("index"));
    let rate = if elapsed.is_zero() { 0.0 } else { sagas as f64 / elapsed.as_secs_f64() };
    eprintln!(
        "{sagas:>9} {:>8.1} {rate:>9.0} {rss:>10} {hwm:>10} {:>9} {segments:>9} {:>10} {:>10}",
        elapsed.as_secs_f64(),
        exec.list().len(),
        journal_bytes / 1024,
        index_bytes / 1024,
    );
}

/// Files and bytes under `dir`, recursively.
fn dir_size(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    let mut total = (0, 0);
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let (files, bytes) = if meta.is_dir() { dir_size(&entry.path()) } else { (1, meta.len()) };
        total = (total.0 + files, total.1 + bytes);
    }
    total
}

/// A `kB` line of `/proc/self/status` (0 where there is no such file).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// The control for the memory curve: the index alone, fed the records of finished 3-step sagas.
fn index_only_curve(total: u64) {
    let dir = scratch();
    let index = Index::open(dir.path().join("index")).expect("open the index");
    let catalog = Catalog::parse(NOOP_CONFIG).expect("the bench config is valid");
    eprintln!("index-only control: {total} finished sagas put into a sled index, no executor, no journal");
    eprintln!("{:>9} {:>8} {:>10} {:>10} {:>10}", "sagas", "secs", "VmRSS kB", "VmHWM kB", "index kB");
    let line = |sagas: u64, elapsed: Duration| {
        let (_, index_bytes) = dir_size(&dir.path().join("index"));
        eprintln!(
            "{sagas:>9} {:>8.1} {:>10} {:>10} {:>10}",
            elapsed.as_secs_f64(),
            status_kb("VmRSS"),
            status_kb("VmHWM"),
            index_bytes / 1024
        );
    };
    line(0, Duration::ZERO);
    let start = Instant::now();
    for n in 0..total {
        let definition = saga(Workload::Noop, &format!("m{n}"));
        let policies = catalog.validate(&definition).expect("the bench saga is valid");
        let mut state = Saga::submitted(&Submitted {
            saga: definition.id.clone(),
            digest: definition.digest(),
            steps: definition.steps,
            policies,
            at_ms: now_ms() as u64,
            actions: Default::default(),
            scope: None,
        });
        for step in 0..STEPS as u32 {
            let (saga, direction, attempt, at_ms) = (definition.id.clone(), Direction::Forward, 1, now_ms() as u64);
            state.apply(&Record::StepStarted(Started {
                saga: saga.clone(),
                step,
                direction,
                attempt,
                at_ms,
                deadline_ms: None,
            }));
            let by_marker = false;
            state.apply(&Record::StepSucceeded(Succeeded {
                saga,
                step,
                direction,
                attempt,
                by_marker,
                at_ms,
                outputs: Default::default(),
            }));
        }
        let outcome = Outcome::Completed;
        state.apply(&Record::SagaFinished(Finished { saga: definition.id, outcome, at_ms: now_ms() as u64 }));
        index.put(&SagaRecord::from_saga(&state)).expect("put into the index");
        if [10_000, 100_000, 250_000].contains(&(n + 1)) {
            line(n + 1, start.elapsed());
        }
    }
}

/// Connections of the PostgreSQL participant, and of the direct baseline's pool.
const PG_POOL_SIZE: usize = 16;

fn pg_conninfo() -> String {
    std::env::var("SAGALOG_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

async fn pg_client(conninfo: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Fresh table names for one round: items, markers, fences.
fn pg_tables() -> (String, String, String) {
    let run = format!("{:016x}", rand::random::<u64>());
    (format!("bench_items_{run}"), format!("bench_markers_{run}"), format!("bench_fences_{run}"))
}

/// `sagas` 3-step sagas through sagalog on a PostgreSQL participant, 64 closed-loop clients,
/// with the participant's group commit on or off.
fn pg_engine_sagas(rt: &Runtime, sagas: u64, group_commit: bool) -> Duration {
    let conninfo = pg_conninfo();
    let (items, markers, fences) = pg_tables();
    let admin = rt.block_on(pg_client(&conninfo));
    rt.block_on(admin.batch_execute(&format!(
        "CREATE TABLE {items} (saga text NOT NULL, step bigint NOT NULL, payload text NOT NULL, PRIMARY KEY (saga, step))"
    )))
    .expect("create the items table");
    let config = format!(
        r#"
[participants.pg]
kind = "postgres"
url = "{conninfo}"
pool_size = {PG_POOL_SIZE}
group_commit = {group_commit}
marker_table = "{markers}"
fence_table = "{fences}"

[actions.insert]
participant = "pg"
params = {{ saga = "text", step = "int", payload = "text" }}
forward = {{ sql = "INSERT INTO {items} (saga, step, payload) VALUES ($1, $2, $3)", args = ["saga", "step", "payload"] }}
compensate = {{ sql = "DELETE FROM {items} WHERE saga = $1 AND step = $2", args = ["saga", "step"] }}
"#
    );
    let dir = scratch();
    let journal = Journal::open_dir(dir.path(), Options { sync: SyncPolicy::Always, ..Options::default() })
        .expect("open the journal")
        .journal;
    let catalog = Catalog::parse(&config).expect("the bench config is valid");
    let participants =
        sagalog::participant::open_all(&catalog.config.participants, dir.path()).expect("open the participant");
    let index = Index::open(dir.path().join("index")).expect("open the index");
    let exec = Executor::with_index(journal.clone(), Arc::new(catalog), participants, Some(index));
    let elapsed = rt.block_on(closed_loop(&exec, Workload::Sqlite, sagas));
    let rows: i64 =
        rt.block_on(admin.query_one(&format!("SELECT count(*) FROM {items}"), &[])).expect("count the rows").get(0);
    assert_eq!(rows as u64, sagas * STEPS as u64, "every step applied once");
    rt.block_on(journal.shutdown()).expect("shut the journal down");
    drop(exec);
    rt.block_on(
        admin.batch_execute(&format!("DROP TABLE {items}; DROP TABLE {markers}; DROP TABLE IF EXISTS {fences}")),
    )
    .expect("drop the tables");
    elapsed
}

/// The direct baseline on PostgreSQL: per step `BEGIN`, the `INSERT`, the marker `INSERT`,
/// `COMMIT`, by 64 workers over a pool of `PG_POOL_SIZE` connections.
fn pg_direct_sagas(rt: &Runtime, sagas: u64) -> Duration {
    let conninfo = pg_conninfo();
    let (items, markers, _) = pg_tables();
    rt.block_on(async {
        let admin = pg_client(&conninfo).await;
        admin
            .batch_execute(&format!(
                "CREATE TABLE {items} (saga text NOT NULL, step bigint NOT NULL, payload text NOT NULL, PRIMARY KEY (saga, step));
                 CREATE TABLE {markers} (saga_id text NOT NULL, step integer NOT NULL, direction text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (saga_id, step, direction))"
            ))
            .await
            .expect("create the tables");
        let mut pool = Vec::new();
        for _ in 0..PG_POOL_SIZE {
            pool.push(pg_client(&conninfo).await);
        }
        let idle = Arc::new(tokio::sync::Mutex::new(pool));
        let permits = Arc::new(Semaphore::new(PG_POOL_SIZE));
        let (insert_item, insert_marker) = (
            Arc::new(format!("INSERT INTO {items} (saga, step, payload) VALUES ($1, $2, $3)")),
            Arc::new(format!("INSERT INTO {markers} (saga_id, step, direction) VALUES ($1, $2, 'forward')")),
        );
        let start = Instant::now();
        let workers: Vec<_> = (0..CLIENTS)
            .map(|worker| {
                let (idle, permits) = (idle.clone(), permits.clone());
                let (insert_item, insert_marker) = (insert_item.clone(), insert_marker.clone());
                let count = share(sagas, CLIENTS, worker);
                tokio::spawn(async move {
                    for i in 0..count {
                        let id = format!("c{worker}-{i}");
                        for step in 0..STEPS as i64 {
                            let _permit = permits.acquire().await.expect("the pool is never closed");
                            let mut client = idle.lock().await.pop().expect("a permit guarantees a connection");
                            let tx = client.transaction().await.expect("begin");
                            tx.execute(insert_item.as_str(), &[&id, &step, &ROW_PAYLOAD]).await.expect("insert");
                            tx.execute(insert_marker.as_str(), &[&id, &(step as i32)]).await.expect("insert marker");
                            tx.commit().await.expect("commit");
                            idle.lock().await.push(client);
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("a direct worker panicked");
        }
        let elapsed = start.elapsed();
        admin.batch_execute(&format!("DROP TABLE {items}; DROP TABLE {markers}")).await.expect("drop the tables");
        elapsed
    })
}

/// Issue 13 item 7 on PostgreSQL: engine and direct rounds alternating, with the group commit
/// on (the default), then off.
fn cross_check_postgres(rt: &Runtime, rounds: usize) {
    let sagas = CLIENTS as u64 * 16;
    cross_check("postgres", rounds, sagas, || pg_engine_sagas(rt, sagas, true), || pg_direct_sagas(rt, sagas));
    cross_check(
        "postgres, group_commit = false",
        rounds,
        sagas,
        || pg_engine_sagas(rt, sagas, false),
        || pg_direct_sagas(rt, sagas),
    );
}
