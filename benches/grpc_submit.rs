//! Submit over gRPC on loopback: what a client waits for a durable acknowledgement, and how
//! many acknowledged submits 64 concurrent clients get per second, next to the references they
//! are judged against, measured in the same run.
//!
//! A real server (`sagalog::server::start` over a `Node`, `sync = "always"`) on 127.0.0.1 with
//! a token, sagas of 3 `noop` steps on a memory participant (the engine runs them after the
//! acknowledgement, in the same process, as in production). Rounds alternate, so load from
//! other processes hits every figure alike:
//! - `fdatasync`: one 1 KiB `write` + `fdatasync` on the data directory's file system;
//! - `grpc_rtt`: one unary `grpc.health.v1.Health/Check` on the same connection (loopback plus
//!   HTTP/2 and gRPC framing: what any call costs before doing anything);
//! - `submit_1`: one client, `Submit` after `Submit` (each returns once `SagaSubmitted` is
//!   durable);
//! - `in-process submit`: `Executor::submit` called in the server's process (no gRPC);
//! - `submit_64`: 64 clients (tasks sharing 4 HTTP/2 connections) submitting for a fixed time;
//!   acknowledged submits per second.
//!
//! Latencies are per-call samples; each round reports the p50. Targets (issue 4): `submit_1`
//! p50 ≤ 1.5 × (`fdatasync` p50 + `grpc_rtt` p50); `submit_64` ≥ 5,000/s.
//!
//! Knobs: `SAGALOG_BENCH_DIR` (scratch disk; never a tmpfs), `SAGALOG_BENCH_SECS` (duration of
//! each `submit_64` round, default 5). Without `--bench` (as under `cargo test --benches`) one
//! short round runs as a smoke test.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sagalog::api::pb;
use sagalog::api::pb::sagas_client::SagasClient;
use sagalog::node::Node;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

const TOKEN: &str = "bench-token-0123456789";
const CONFIG: &str = r#"
[journal]
sync = "always"

[executor]
max_in_flight = 256

[server]
listen = "127.0.0.1:0"
max_pending_submits = 4096

[[server.tokens]]
name = "bench"
token = "bench-token-0123456789"
role = "client"

[participants.mem]
kind = "memory"

[actions.noop]
participant = "mem"
forward = { noop = true }
compensate = { noop = true }
"#;

const CLIENTS: usize = 64;
const CONNECTIONS: usize = 4;

fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("SAGALOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    tempfile::tempdir_in(base).expect("scratch directory")
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn request(id: String) -> tonic::Request<pb::SubmitRequest> {
    let step = pb::Step { action: "noop".into(), params: Default::default() };
    let mut r = tonic::Request::new(pb::SubmitRequest { saga_id: id, steps: vec![step.clone(), step.clone(), step] });
    let token: MetadataValue<_> = format!("Bearer {TOKEN}").parse().expect("ascii token");
    r.metadata_mut().insert("authorization", token);
    r
}

fn raw_fdatasync(dir: &std::path::Path, n: usize) -> Duration {
    let mut f = File::create(dir.join("raw-fdatasync")).expect("scratch file");
    let block = vec![0x5a_u8; 1024];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        samples.push(t.elapsed());
    }
    p50(samples)
}

async fn grpc_rtt(channel: Channel, n: usize) -> Duration {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health");
        samples.push(t.elapsed());
    }
    p50(samples)
}

async fn submit_one_client(channel: Channel, round: usize, n: usize) -> Duration {
    let mut client = SagasClient::new(channel);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        client.submit(request(format!("one-{round}-{i}"))).await.expect("submit");
        samples.push(t.elapsed());
    }
    p50(samples)
}

/// `Executor::submit` in process, no gRPC: what the engine's durable acknowledgement costs.
async fn submit_direct(executor: &sagalog::executor::Executor, round: usize, n: usize) -> Duration {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let step =
            sagalog::engine::StepCall { action: "noop".into(), params: Default::default(), from: Default::default() };
        let definition = sagalog::engine::SagaDefinition {
            id: format!("direct-{round}-{i}"),
            steps: vec![step.clone(), step.clone(), step],
        };
        let t = Instant::now();
        executor.submit(definition).await.expect("submit");
        samples.push(t.elapsed());
    }
    p50(samples)
}

async fn submit_many_clients(channels: &[Channel], round: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = SagasClient::new(channels[c % channels.len()].clone());
        let (stop, acked) = (stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client.submit(request(format!("many-{round}-{c}-{i}"))).await.expect("submit");
                acked.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let counted = acked.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    counted as f64 / elapsed.as_secs_f64()
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (rounds, samples, secs) = if benchmarking {
        let secs = std::env::var("SAGALOG_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
        (5, 400, secs)
    } else {
        (1, 20, 0.3)
    };
    let dir = scratch();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let config = dir.path().join("bench.toml");
        std::fs::write(&config, CONFIG).expect("write config");
        let node = Node::start(&dir.path().join("data"), Some(&config)).await.expect("start node");
        let server_config = node.catalog.config.server.clone();
        let server = sagalog::server::start(node, &dir.path().join("data"), server_config).await.expect("start server");
        let endpoint = Endpoint::from_shared(format!("http://{}", server.addr)).expect("endpoint");
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            channels.push(endpoint.connect().await.expect("connect"));
        }
        let mut rows = Vec::new();
        for round in 0..rounds {
            let fsync = raw_fdatasync(&dir.path().join("data"), samples);
            let rtt = grpc_rtt(channels[0].clone(), samples).await;
            let one = submit_one_client(channels[0].clone(), round, samples).await;
            let direct = submit_direct(&server.node().executor, round, samples).await;
            let many = submit_many_clients(&channels, round, secs).await;
            let ratio = one.as_secs_f64() / (fsync + rtt).as_secs_f64();
            eprintln!(
                "round {round}: fdatasync p50 {:>7.1} µs | grpc_rtt p50 {:>6.1} µs | submit_1 p50 {:>7.1} µs \
                 = {ratio:.2}× (fdatasync + rtt) | in-process submit p50 {:>7.1} µs | submit_64 {many:>7.0}/s",
                fsync.as_secs_f64() * 1e6,
                rtt.as_secs_f64() * 1e6,
                one.as_secs_f64() * 1e6,
                direct.as_secs_f64() * 1e6,
            );
            rows.push((ratio, many));
        }
        let mut ratios: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let mut rates: Vec<f64> = rows.iter().map(|r| r.1).collect();
        ratios.sort_by(f64::total_cmp);
        rates.sort_by(f64::total_cmp);
        eprintln!(
            "grpc_submit: median over {rounds} rounds: submit_1 = {:.2}× (fdatasync + grpc_rtt) [target ≤ 1.5×]; \
             submit_64 = {:.0} acked/s [target ≥ 5000/s]",
            ratios[ratios.len() / 2],
            rates[rates.len() / 2]
        );
        server.shutdown().await.expect("shutdown");
    });
}
