//! Crash torture on PostgreSQL: the real `sagalog serve` process, configured with a single
//! PostgreSQL participant (fresh tables per run), is fed over gRPC by 8 concurrent clients
//! submitting 3- and 4-step sagas that insert one row per step, and is killed with SIGKILL at
//! random moments, round after round; a final run recovers and settles everything, and the
//! test reads every saga's status back through the API. Then, for every saga whose submit was
//! acknowledged, it checks the database with SQL: a completed saga's rows exist exactly once
//! (counted, not just marked; the items table has no unique key, so an effect applied twice
//! would show) with a forward marker for every step and no compensation marker; a compensated
//! saga left no row, and every forward marker it has is matched by a compensation marker. No
//! row belongs to a saga that is not completed.
//!
//! About one saga in five fails on purpose at a step after the first (its payload violates a
//! CHECK constraint, a permanent error) and must end COMPENSATED, its earlier steps undone.
//! About one in six is cancelled right after its acknowledgement: a cancel answered OK must
//! compensate, one answered with an error (finished already, or the kill) promises nothing. A
//! saga whose submit got no answer is resubmitted in the next round (and in the final run), so
//! in the end every saga ever submitted is acknowledged and checked.
//!
//! PostgreSQL: `SAGALOG_TEST_POSTGRES` (libpq conninfo, default
//! `host=127.0.0.1 port=5432 user=postgres dbname=test`). Without a server the test prints
//! `SKIPPED` and passes, unless `SAGALOG_REQUIRE_POSTGRES=1`. It needs no DuckDB, so it runs in
//! `--no-default-features` builds too. `SAGALOG_CRASH_SEED` replays a run (the seed is printed);
//! `SAGALOG_CRASH_PG_SERVER_LOG=FILE` appends every server's log to FILE.
//!
//! CI runs a bounded number of rounds. The soak:
//! `SAGALOG_REQUIRE_POSTGRES=1 SAGALOG_CRASH_PG_ROUNDS=1000 SAGALOG_CRASH_PG_BUDGET_S=36000 cargo test --release --no-default-features --test crash_postgres -- --nocapture`.

#[path = "wal/common.rs"]
mod common;
#[path = "support/postgres.rs"]
mod pg_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sagalog_bin;
use rand::{Rng, SeedableRng};
use sagalog::api::pb;
use sagalog::api::pb::sagas_client::SagasClient;
use sagalog::engine::{SagaDefinition, StepCall, Value};

const TIME_BUDGET: Duration = Duration::from_secs(40);
const ROUNDS_MAX: usize = 40;
/// One in this many acknowledged sagas is cancelled right after its acknowledgement.
const CANCEL_ONE_IN: u64 = 6;
/// One in this many sagas fails on purpose at a step after the first.
const FAIL_ONE_IN: u64 = 5;
const CLIENTS: usize = 8;
/// Submits per client per round.
const SUBMITS_PER_CLIENT: usize = 6;
/// The payload the items table's CHECK constraint refuses: the step fails for good.
const FAIL_PAYLOAD: &str = "fail";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// This run's tables: the items the sagas insert, and the participant's marker and fence
/// tables. Dropped when this is dropped, also when the test panics.
struct Tables {
    items: String,
    markers: String,
    fences: String,
}

impl Tables {
    fn fresh() -> Tables {
        let run = format!("{:016x}", rand::random::<u64>());
        Tables {
            items: format!("crash_items_{run}"),
            markers: format!("crash_markers_{run}"),
            fences: format!("crash_fences_{run}"),
        }
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS {}, {}, {}", self.items, self.markers, self.fences);
        // Its own thread and runtime: this may run inside the test's runtime, or unwinding.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&pg_support::conninfo(), tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute(&sql).await
            })
            .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test tables {}, {}, {}: {dropped:?}", self.items, self.markers, self.fences);
        }
    }
}

/// The server's config: anonymous on loopback, no HTTP port, a synced journal, and one
/// PostgreSQL participant whose `insert` action writes one item row per step.
fn server_config(conninfo: &str, tables: &Tables) -> String {
    let Tables { items, markers, fences } = tables;
    format!(
        r#"# sagalog configuration of the PostgreSQL crash test (tests/crash_postgres.rs).
[journal]
sync = "always"

[server]
listen = "127.0.0.1:50051"
anonymous = "admin"

[participants.pg]
kind = "postgres"
url = {conninfo:?}
pool_size = 4
marker_table = "{markers}"
fence_table = "{fences}"

[actions.insert]
participant = "pg"
params = {{ saga = "text", step = "int", payload = "text" }}
forward = {{ sql = "INSERT INTO {items} (saga, step, payload) VALUES ($1, $2, $3)", args = ["saga", "step", "payload"] }}
compensate = {{ sql = "DELETE FROM {items} WHERE saga = $1 AND step = $2", args = ["saga", "step"] }}
"#
    )
}

/// A saga's plan, fixed by its number: how many steps it has, and the step (never the first)
/// whose payload the CHECK constraint refuses, if any.
fn plan(n: u64) -> (usize, Option<usize>) {
    // splitmix64: the number's bits, mixed, so that length, failure and cancel do not correlate.
    let mut h = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let steps = 3 + (h & 1) as usize;
    let fail = (h >> 8).is_multiple_of(FAIL_ONE_IN).then(|| 1 + ((h >> 16) % (steps as u64 - 1)) as usize);
    (steps, fail)
}

fn saga_id(n: u64) -> String {
    format!("crash-pg-{n}")
}

fn expected(n: u64) -> &'static str {
    if plan(n).1.is_some() { "COMPENSATED" } else { "COMPLETED" }
}

fn saga(n: u64) -> pb::SubmitRequest {
    let id = saga_id(n);
    let (steps, fail) = plan(n);
    let steps = (0..steps)
        .map(|step| {
            let payload = if fail == Some(step) { FAIL_PAYLOAD.to_owned() } else { format!("{id}/{step}") };
            StepCall {
                action: "insert".to_owned(),
                params: BTreeMap::from([
                    ("saga".to_owned(), Value::Text(id.clone())),
                    ("step".to_owned(), Value::Int(step as i64)),
                    ("payload".to_owned(), Value::Text(payload)),
                ]),
                from: Default::default(),
            }
        })
        .collect();
    sagalog::api::convert::submit_request(&SagaDefinition { id, steps })
}

/// What one round learnt: acknowledged saga numbers, and those whose submit got no answer
/// (resubmitted next round).
#[derive(Default)]
struct Round {
    acked: Vec<u64>,
    lost: Vec<u64>,
    /// Cancels answered OK: these sagas must end COMPENSATED.
    cancelled: Vec<u64>,
    /// Cancels answered with an error (the saga had finished, or the kill cut the call): the
    /// saga ends as planned or COMPENSATED.
    maybe_cancelled: Vec<u64>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `sagalog serve`, SIGKILLed if the test panics while it runs.
struct Server(Option<Child>);

impl Server {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and the exit status of the graceful shutdown.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("the server runs");
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `sagalog serve` on the data directory (its `sagalog.toml`), listening on `port`.
/// With `SAGALOG_CRASH_PG_SERVER_LOG=FILE`, every server's log is appended to FILE.
fn spawn_server(dir: &Path, port: u16) -> Server {
    let log = std::env::var_os("SAGALOG_CRASH_PG_SERVER_LOG")
        .map(|path| std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the server log"));
    let child = Command::new(sagalog_bin())
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(log.map_or_else(Stdio::null, Stdio::from))
        .spawn()
        .unwrap();
    Server(Some(child))
}

/// A server on the data directory, and a client once it answers.
async fn serve(dir: &Path) -> (Server, SagasClient<tonic::transport::Channel>) {
    let port = free_port();
    let mut server = spawn_server(dir, port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = SagasClient::connect(format!("http://127.0.0.1:{port}")).await {
            return (server, client);
        }
        if let Some(status) = server.0.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("sagalog serve exited before answering ({status}); SAGALOG_CRASH_PG_SERVER_LOG=FILE keeps its log");
        }
        assert!(Instant::now() < deadline, "sagalog serve did not answer within 60 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Starts a server, submits from `CLIENTS` clients (first resubmitting `lost`, whose submits
/// got no answer last round), cancels some acknowledged sagas at once, and SIGKILLs the server
/// after `after`.
async fn load_round(dir: &Path, after: Duration, next: &Arc<AtomicU64>, lost: Vec<u64>) -> Round {
    let (mut server, client) = serve(dir).await;
    let round = Arc::new(Mutex::new(Round::default()));
    let lost = Arc::new(Mutex::new(lost));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (mut client, round, next, lost) = (client.clone(), round.clone(), next.clone(), lost.clone());
        tasks.push(tokio::spawn(async move {
            let mut submits = 0;
            while submits < SUBMITS_PER_CLIENT {
                let resubmit = lost.lock().unwrap().pop();
                let n = match resubmit {
                    Some(n) => n,
                    None => {
                        submits += 1;
                        next.fetch_add(1, Ordering::SeqCst)
                    }
                };
                // Only an Ok reply is an acknowledgement; after the kill every call fails, and
                // the saga is resubmitted next round.
                match client.submit(saga(n)).await {
                    Ok(_) => round.lock().unwrap().acked.push(n),
                    Err(_) => {
                        round.lock().unwrap().lost.push(n);
                        return;
                    }
                }
                if n.is_multiple_of(CANCEL_ONE_IN) {
                    // Ok means CancelRequested is durable and the saga was not finished: it
                    // must compensate. An error (finished already, or the kill) promises nothing.
                    match client.cancel(pb::CancelRequest { saga_id: saga_id(n) }).await {
                        Ok(_) => round.lock().unwrap().cancelled.push(n),
                        Err(_) => round.lock().unwrap().maybe_cancelled.push(n),
                    }
                }
            }
        }));
    }
    tokio::time::sleep(after).await;
    server.kill();
    for task in tasks {
        task.await.unwrap();
    }
    let mut round = std::mem::take(&mut *round.lock().unwrap());
    // Resubmits no client got to before the kill stay lost for the next round.
    round.lost.extend(std::mem::take(&mut *lost.lock().unwrap()));
    round
}

/// A marker row's saga id: the stored id without the incarnation's scope (`"<id> <scope>"`).
fn saga_of(stored: String) -> String {
    match stored.split_once(' ') {
        Some((id, _scope)) => id.to_owned(),
        None => stored,
    }
}

/// Every acknowledged saga is finished as expected, exactly once in PostgreSQL, after many
/// SIGKILLs of the server spread over many rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_torture_on_postgres_every_acknowledged_saga_finishes_exactly_once() {
    let Some(admin) = pg_support::client("PostgreSQL crash test").await else { return };
    let conninfo = pg_support::conninfo();
    let tables = Tables::fresh();
    admin
        .batch_execute(&format!(
            "CREATE TABLE {items} (id bigserial PRIMARY KEY, saga text NOT NULL, step bigint NOT NULL,
               payload text NOT NULL CHECK (payload <> '{FAIL_PAYLOAD}'));
             CREATE INDEX ON {items} (saga, step)",
            items = tables.items
        ))
        .await
        .expect("create the items table");

    let seed: u64 = std::env::var("SAGALOG_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!(
        "saga crash test on PostgreSQL: seed {seed} (set SAGALOG_CRASH_SEED to replay), tables {}, {}, {}",
        tables.items, tables.markers, tables.fences
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sagalog.toml"), server_config(&conninfo, &tables)).unwrap();
    let next = Arc::new(AtomicU64::new(1));
    // Acknowledged sagas by number, with the status each must end in.
    let mut acked: BTreeMap<u64, &'static str> = BTreeMap::new();
    let (mut lost, mut cancels, mut resubmitted) = (Vec::new(), 0usize, 0usize);
    let mut maybe_cancelled = BTreeSet::new();
    let started = Instant::now();
    let rounds_max = env_or("SAGALOG_CRASH_PG_ROUNDS", ROUNDS_MAX);
    let budget = Duration::from_secs(env_or("SAGALOG_CRASH_PG_BUDGET_S", TIME_BUDGET.as_secs()));
    let mut rounds = 0;
    while rounds < rounds_max && started.elapsed() < budget {
        rounds += 1;
        let resubmits: BTreeSet<u64> = lost.iter().copied().collect();
        // The round's 48 submits are answered soon after the server is up, so a kill in the
        // first 150 ms (one round in ten) lands among them: their answers are lost and the
        // next round resubmits them. The others land among the steps and the compensations.
        let after = if rng.random_range(0..10) == 0 { rng.random_range(5..150) } else { rng.random_range(150..1500) };
        let round = load_round(dir.path(), Duration::from_millis(after), &next, lost).await;
        eprintln!(
            "round {rounds}: killed after {after} ms: {} acks, {} cancels, {} lost",
            round.acked.len(),
            round.cancelled.len(),
            round.lost.len()
        );
        resubmitted += round.acked.iter().filter(|n| resubmits.contains(n)).count();
        for n in round.acked {
            // A resubmit after an acknowledged cancel keeps the cancel's outcome.
            if acked.get(&n).is_none_or(|previous| *previous != "COMPENSATED") {
                acked.insert(n, expected(n));
            }
        }
        for n in round.cancelled {
            cancels += 1;
            acked.insert(n, "COMPENSATED");
        }
        maybe_cancelled.extend(round.maybe_cancelled);
        lost = round.lost;
    }
    assert!(acked.len() > 50, "too few sagas acknowledged ({}) for the test to mean anything", acked.len());

    // The final run: recovery settles everything, the last round's lost submits are sent again
    // (so every saga ever submitted is acknowledged), and statuses come back through the API.
    let (mut server, mut client) = serve(dir.path()).await;
    for n in std::mem::take(&mut lost) {
        client.submit(saga(n)).await.unwrap_or_else(|e| panic!("resubmitting {} in the final run: {e}", saga_id(n)));
        resubmitted += 1;
        acked.entry(n).or_insert(expected(n));
    }
    let submitted = next.load(Ordering::SeqCst) - 1;
    assert_eq!(acked.len() as u64, submitted, "every saga submitted is acknowledged in the end");
    let mut statuses: BTreeMap<u64, String> = BTreeMap::new();
    let mut reasons: BTreeMap<u64, String> = BTreeMap::new();
    // Sagas some restart found unfinished: those the kills caught mid-flight.
    let mut recovered = 0usize;
    // 180 s for each saga in turn, not for all of them: a soak's final run settles a backlog of
    // thousands of sagas (the bound is on progress, not on the whole wait).
    let mut deadline = Instant::now() + Duration::from_secs(180);
    for &n in acked.keys() {
        let id = saga_id(n);
        loop {
            let saga = client
                .get(pb::GetRequest { saga_id: id.clone() })
                .await
                .unwrap_or_else(|e| panic!("acknowledged saga {id} is unknown after recovery: {e}"))
                .into_inner();
            let status = pb::SagaStatus::try_from(saga.status).unwrap();
            if matches!(status, pb::SagaStatus::Completed | pb::SagaStatus::Compensated | pb::SagaStatus::Stuck) {
                statuses.insert(n, status.as_str_name().to_owned());
                reasons.insert(n, saga.compensation_reason);
                recovered += usize::from(saga.recovery_count > 0);
                deadline = Instant::now() + Duration::from_secs(180);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "saga {id} still {} after waiting 180 s for it: parked on {:?}, steps {:?}",
                status.as_str_name(),
                saga.parked_on,
                saga.steps.iter().map(|s| (s.state, s.attempts, s.last_error.clone())).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(server.stop().success(), "graceful shutdown exits 0");

    // The database: item rows counted per (saga, step), and markers per saga.
    let mut rows: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for row in admin
        .query(&format!("SELECT saga, step, count(*) FROM {} GROUP BY saga, step", tables.items), &[])
        .await
        .expect("count the item rows")
    {
        rows.insert((row.get(0), row.get(1)), row.get(2));
    }
    let mut markers: BTreeSet<(String, i64, String)> = BTreeSet::new();
    for row in admin
        .query(&format!("SELECT saga_id, step, direction FROM {}", tables.markers), &[])
        .await
        .expect("read the markers")
    {
        markers.insert((saga_of(row.get(0)), i64::from(row.get::<_, i32>(1)), row.get(2)));
    }

    let mut failures = Vec::new();
    let (mut completed, mut compensated, mut failed_on_purpose) = (0usize, 0usize, 0usize);
    for (&n, &expect) in &acked {
        let id = saga_id(n);
        let (steps, fail) = plan(n);
        let status = statuses[&n].as_str();
        // A cancel that got no answer may or may not have been journaled.
        let expect = if maybe_cancelled.contains(&n) && status == "COMPENSATED" { status } else { expect };
        if status != expect {
            failures.push(format!(
                "saga {id} ({steps} steps, failing at {fail:?}, cancel {}) is {status}, expected {expect} (compensation reason: {:?})",
                if maybe_cancelled.contains(&n) { "unanswered" } else { "answered or none" },
                reasons.get(&n)
            ));
            continue;
        }
        let forward = |step: usize| markers.contains(&(id.clone(), step as i64, "forward".to_owned()));
        let compensation = |step: usize| markers.contains(&(id.clone(), step as i64, "compensate".to_owned()));
        match status {
            "COMPLETED" => {
                completed += 1;
                for step in 0..steps {
                    let count = rows.get(&(id.clone(), step as i64)).copied().unwrap_or(0);
                    if count != 1 {
                        failures.push(format!("{id} COMPLETED: step {step} has {count} item rows, not 1"));
                    }
                    if !forward(step) {
                        failures.push(format!("{id} COMPLETED: step {step} has no forward marker"));
                    }
                    if compensation(step) {
                        failures.push(format!("{id} COMPLETED: step {step} has a compensation marker"));
                    }
                }
            }
            _ => {
                compensated += 1;
                failed_on_purpose += usize::from(fail.is_some());
                for step in 0..steps {
                    let count = rows.get(&(id.clone(), step as i64)).copied().unwrap_or(0);
                    if count != 0 {
                        failures.push(format!("{id} COMPENSATED: step {step} left {count} item rows"));
                    }
                    if forward(step) && !compensation(step) {
                        failures
                            .push(format!("{id} COMPENSATED: step {step} has a forward marker without compensation"));
                    }
                }
                if let Some(step) = fail
                    && forward(step)
                {
                    failures.push(format!("{id} COMPENSATED: the refused step {step} has a forward marker"));
                }
            }
        }
    }
    // No row of a saga that is not completed, nor of one nobody submitted.
    let known: BTreeMap<String, (u64, usize)> = acked.keys().map(|&n| (saga_id(n), (n, plan(n).0))).collect();
    for ((saga, step), count) in &rows {
        match known.get(saga) {
            Some((n, steps)) if statuses[n] == "COMPLETED" && (*step as usize) < *steps => {}
            _ => failures.push(format!("stray item rows: {count} of saga {saga} step {step}")),
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures after {rounds} rounds:\n{}",
        failures.len(),
        failures.iter().take(50).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "{rounds} rounds in {:.1} s, {} acknowledged sagas ({completed} completed, {compensated} compensated of which {failed_on_purpose} failed on purpose, {cancels} cancelled right after the ack, {resubmitted} acknowledged on a resubmit after a lost ack, {recovered} caught unfinished by a kill and recovered), {submitted} submitted in all: 0 lost, 0 doubled, 0 left, 0 acknowledged requests ignored",
        started.elapsed().as_secs_f64(),
        acked.len()
    );
    drop(tables);
}
