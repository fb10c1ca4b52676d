//! Process-wide metrics: what the Prometheus endpoint exposes and what `Admin.Stats` reports.
//!
//! The executor, the journal writer and recovery record into one global [`Metrics`]; the server
//! encodes it in the Prometheus text format at `/metrics` on `[server] metrics_listen`. Gauges
//! that describe current state (sagas by status, breaker states) are filled in by the server
//! right before each scrape.
//!
//! Exposed families (all prefixed `sagalog_`):
//! - `sagas_submitted_total`, `sagas_finished_total{outcome}`, `sagas{status}` (gauge; the sagas
//!   the server knows, in memory and archived, by status);
//! - `step_duration_seconds{participant,direction}` (histogram of participant calls),
//!   `step_attempts_total{participant,direction,result}` with `result` one of `ok`,
//!   `retryable`, `permanent` (retries are the `retryable` ones);
//! - `breaker_state{participant}` (0 closed, 1 half-open, 2 open), and the same as one series
//!   per state, `circuit_breaker_state{participant,state}` (1 for the current state, else 0);
//! - `participant_group_commits_total{participant}` and
//!   `participant_group_commit_steps_total{participant}`: a SQL participant's group commits
//!   (batches) and the steps they held; their ratio is the steps that shared one commit
//!   (SQLite, DuckDB, and PostgreSQL with `group_commit` on);
//! - `journal_fsync_seconds` (histogram), `journal_batch_records` (histogram of records per
//!   group commit), `journal_lsn` (gauge), `journal_poisoned` (gauge: 1 once a write or fsync
//!   failure poisoned the journal);
//! - `recoveries_total`, `recovery_duration_seconds` (gauge: the last pass);
//! - `build_info{version,features}` (always 1);
//! - `grpc_requests_total{method,code}`, `grpc_request_duration_seconds{method}`,
//!   `http_requests_total{route,method,code}`, `http_request_duration_seconds{route,method}`
//!   (`server::request_metrics`; unknown methods and routes share one label value).
//!
//! Beside them, unprefixed, the standard `process_*` metrics of the Prometheus client
//! libraries (CPU seconds, resident and virtual memory, open and maximum file descriptors,
//! start time), read from `/proc/self` at each scrape.
//!
//! [`Metrics::encode`] writes OpenMetrics 1.0; [`Metrics::encode_text`] the Prometheus text
//! format 0.0.4 that a scraper gets when it does not ask for OpenMetrics.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~52 s, doubling.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 21))
}

/// Every metric the process records.
pub struct Metrics {
    registry: Registry,
    pub sagas_submitted: Counter,
    pub sagas_finished: Family<Labels, Counter>,
    pub sagas: Family<Labels, Gauge>,
    pub step_duration: HistogramFamily,
    pub step_attempts: Family<Labels, Counter>,
    pub breaker_state: Family<Labels, Gauge>,
    pub circuit_breaker_state: Family<Labels, Gauge>,
    /// Set from the participants' own counts right before a scrape.
    pub group_commits: Family<Labels, Counter>,
    pub group_commit_steps: Family<Labels, Counter>,
    pub journal_fsync: Histogram,
    pub journal_batch_records: Histogram,
    pub journal_lsn: Gauge,
    pub journal_poisoned: Gauge,
    pub recoveries: Counter,
    pub recovery_duration: Gauge<f64, AtomicU64>,
    pub grpc_requests: Family<Labels, Counter>,
    pub grpc_duration: HistogramFamily,
    pub http_requests: Family<Labels, Counter>,
    pub http_duration: HistogramFamily,
    /// Per-participant latency sketches for `Admin.Stats` percentiles.
    latencies: Mutex<BTreeMap<String, LatencySketch>>,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sagalog");
        let sagas_submitted = Counter::default();
        registry.register("sagas_submitted", "Sagas journaled by Submit", sagas_submitted.clone());
        let sagas_finished = Family::<Labels, Counter>::default();
        registry.register("sagas_finished", "Sagas that reached a terminal state, by outcome", sagas_finished.clone());
        let sagas = Family::<Labels, Gauge>::default();
        registry.register("sagas", "Sagas the server knows (in memory and archived), by status", sagas.clone());
        let step_duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "step_duration_seconds",
            "Duration of participant calls (one step attempt), by participant and direction",
            step_duration.clone(),
        );
        let grpc_requests = Family::<Labels, Counter>::default();
        registry.register("grpc_requests", "gRPC calls answered, by method and gRPC code", grpc_requests.clone());
        let grpc_duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_request_duration_seconds",
            "Time from a gRPC call's arrival to its response headers (a stream's start), by method",
            grpc_duration.clone(),
        );
        let http_requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered on the HTTP port, by route, method and status code",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from an HTTP request's arrival to its response headers (an event stream's start), by route and method",
            http_duration.clone(),
        );
        let step_attempts = Family::<Labels, Counter>::default();
        registry.register(
            "step_attempts",
            "Step attempts by participant, direction and result (ok, retryable, permanent)",
            step_attempts.clone(),
        );
        let breaker_state = Family::<Labels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state per participant: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let circuit_breaker_state = Family::<Labels, Gauge>::default();
        registry.register(
            "circuit_breaker_state",
            "Circuit breaker state per participant, one series per state (closed, half-open, open): 1 for the current state",
            circuit_breaker_state.clone(),
        );
        let group_commits = Family::<Labels, Counter>::default();
        registry.register(
            "participant_group_commits",
            "Group commits (batches of steps in one transaction) per SQL participant",
            group_commits.clone(),
        );
        let group_commit_steps = Family::<Labels, Counter>::default();
        registry.register(
            "participant_group_commit_steps",
            "Steps run in group commits per SQL participant (divided by the group commits: steps per commit)",
            group_commit_steps.clone(),
        );
        let features: &str = if cfg!(feature = "duckdb") { "duckdb" } else { "" };
        registry.register(
            "build",
            "The sagalog build: version and cargo features",
            prometheus_client::metrics::info::Info::new(vec![
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                ("features".to_owned(), features.to_owned()),
            ]),
        );
        let journal_fsync = latency_histogram();
        registry.register("journal_fsync_seconds", "Duration of the journal's fdatasync calls", journal_fsync.clone());
        let journal_batch_records = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "journal_batch_records",
            "Records written per journal group commit",
            journal_batch_records.clone(),
        );
        let journal_lsn = Gauge::default();
        registry.register("journal_lsn", "Highest acknowledged journal LSN", journal_lsn.clone());
        let journal_poisoned = Gauge::default();
        registry.register(
            "journal_poisoned",
            "1 once a write or fsync failure poisoned the journal (the server then exits; a restart recovers)",
            journal_poisoned.clone(),
        );
        let recoveries = Counter::default();
        registry.register("recoveries", "Recovery passes run (at start and by Admin.Recover)", recoveries.clone());
        let recovery_duration = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "recovery_duration_seconds",
            "Duration of the last recovery pass (journal read and sagas rebuilt)",
            recovery_duration.clone(),
        );
        Metrics {
            registry,
            sagas_submitted,
            sagas_finished,
            sagas,
            step_duration,
            step_attempts,
            breaker_state,
            circuit_breaker_state,
            group_commits,
            group_commit_steps,
            grpc_requests,
            grpc_duration,
            http_requests,
            http_duration,
            journal_fsync,
            journal_batch_records,
            journal_lsn,
            journal_poisoned,
            recoveries,
            recovery_duration,
            latencies: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one participant call.
    pub fn step_attempt(&self, participant: &str, direction: &str, result: &str, took: Duration) {
        let labels =
            vec![("participant".to_owned(), participant.to_owned()), ("direction".to_owned(), direction.to_owned())];
        self.step_duration.get_or_create(&labels).observe(took.as_secs_f64());
        let mut with_result = labels;
        with_result.push(("result".to_owned(), result.to_owned()));
        self.step_attempts.get_or_create(&with_result).inc();
        let mut sketches = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        sketches.entry(participant.to_owned()).or_default().record(took, result == "ok");
    }

    pub fn saga_finished(&self, outcome: &str) {
        self.sagas_finished.get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())]).inc();
    }

    pub fn recovery(&self, took: Duration) {
        self.recoveries.inc();
        self.recovery_duration.set(took.as_secs_f64());
    }

    /// Per participant: calls, succeeded, failed and the p50/p90/p99 latencies (milliseconds).
    pub fn latency_summary(&self) -> Vec<LatencySummary> {
        let sketches = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        sketches
            .iter()
            .map(|(participant, s)| LatencySummary {
                participant: participant.clone(),
                calls: s.count,
                succeeded: s.succeeded,
                p50_ms: s.quantile(0.50),
                p90_ms: s.quantile(0.90),
                p99_ms: s.quantile(0.99),
            })
            .collect()
    }

    /// The Prometheus text exposition of everything recorded.
    /// OpenMetrics 1.0 text: the registry, then the `process_*` metrics, then `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out.push_str(&process_metrics());
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }

    /// The Prometheus text format 0.0.4 (what a scraper gets unless it asks for OpenMetrics).
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }
}

/// `process_*` in OpenMetrics text, from `/proc/self` (nothing where it cannot be read).
fn process_metrics() -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, unit: &str, help: &str, value: f64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        if !unit.is_empty() {
            out.push_str(&format!("# UNIT {name} {unit}\n"));
        }
        let sample = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
        out.push_str(&format!("{sample} {value}\n"));
    };
    let ticks = 100.0; // USER_HZ: 100 on every Linux ABI Rust targets
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            metric(
                "process_cpu_seconds",
                "counter",
                "seconds",
                "Total user and system CPU time spent in seconds.",
                (utime + stime) / ticks,
            );
        }
        if let (Some(start), Ok(uptime)) = (field(22), std::fs::read_to_string("/proc/uptime")) {
            let boot_ago = uptime.split_whitespace().next().and_then(|v| v.parse::<f64>().ok());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64());
            if let (Some(up), Ok(now)) = (boot_ago, now) {
                metric(
                    "process_start_time_seconds",
                    "gauge",
                    "seconds",
                    "Start time of the process since unix epoch in seconds.",
                    (now - up + start / ticks).round(),
                );
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // `VmSize:   123456 kB`
        let kib = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<f64>().ok())
        };
        if let Some(v) = kib("VmSize:") {
            metric("process_virtual_memory_bytes", "gauge", "bytes", "Virtual memory size in bytes.", v * 1024.0);
        }
        if let Some(v) = kib("VmRSS:") {
            metric("process_resident_memory_bytes", "gauge", "bytes", "Resident memory size in bytes.", v * 1024.0);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric("process_open_fds", "gauge", "", "Number of open file descriptors.", fds.count() as f64);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        let max = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok());
        if let Some(max) = max {
            metric("process_max_fds", "gauge", "", "Maximum number of open file descriptors.", max);
        }
    }
    out
}

/// OpenMetrics text as the Prometheus text format 0.0.4: no `# EOF` and `# UNIT`, a counter's
/// family named as its `_total` sample, an info family as a gauge named `_info`, `_created`
/// samples dropped, and the types 0.0.4 lacks as `untyped`.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    let mut counter: Option<String> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            counter = (kind == "counter").then(|| name.trim_end_matches("_total").to_owned() + "_created");
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(created) = &counter
            && line.starts_with(created.as_str())
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct LatencySummary {
    pub participant: String,
    pub calls: u64,
    pub succeeded: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// Bucket boundaries grow by this factor: a quantile is exact to within ±12%.
const SKETCH_FACTOR: f64 = 1.25;
/// The first bucket's upper bound, in microseconds.
const SKETCH_FIRST_US: f64 = 10.0;
const SKETCH_BUCKETS: usize = 80; // 10 µs × 1.25^79 ≈ 4.5 hours: every realistic call

/// A log-bucketed latency histogram that can answer quantiles (prometheus-client's histogram
/// cannot be read back).
#[derive(Debug, Clone)]
struct LatencySketch {
    buckets: [u64; SKETCH_BUCKETS],
    count: u64,
    succeeded: u64,
}

impl Default for LatencySketch {
    fn default() -> Self {
        LatencySketch { buckets: [0; SKETCH_BUCKETS], count: 0, succeeded: 0 }
    }
}

impl LatencySketch {
    fn record(&mut self, took: Duration, ok: bool) {
        let us = took.as_secs_f64() * 1e6;
        let bucket =
            if us <= SKETCH_FIRST_US { 0 } else { ((us / SKETCH_FIRST_US).ln() / SKETCH_FACTOR.ln()).ceil() as usize };
        self.buckets[bucket.min(SKETCH_BUCKETS - 1)] += 1;
        self.count += 1;
        self.succeeded += u64::from(ok);
    }

    /// The upper bound of the bucket holding the `q` quantile, in milliseconds (0 if empty).
    fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return SKETCH_FIRST_US * SKETCH_FACTOR.powi(i as i32) / 1000.0;
            }
        }
        SKETCH_FIRST_US * SKETCH_FACTOR.powi(SKETCH_BUCKETS as i32 - 1) / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketch_quantiles_are_within_one_bucket() {
        let mut s = LatencySketch::default();
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms), true);
        }
        for (q, exact) in [(0.5, 50.0), (0.9, 90.0), (0.99, 99.0)] {
            let got = s.quantile(q);
            assert!(got >= exact && got <= exact * SKETCH_FACTOR, "q{q}: {got} vs {exact}");
        }
        assert_eq!(LatencySketch::default().quantile(0.5), 0.0);
    }

    #[test]
    fn exposition_names_the_families() {
        let m = Metrics::new();
        m.step_attempt("ledger", "forward", "ok", Duration::from_millis(3));
        m.saga_finished("COMPLETED");
        let text = m.encode();
        for name in [
            "sagalog_step_duration_seconds_bucket",
            "sagalog_step_attempts_total{participant=\"ledger\",direction=\"forward\",result=\"ok\"} 1",
            "sagalog_sagas_finished_total{outcome=\"COMPLETED\"} 1",
            "sagalog_journal_fsync_seconds_count",
            "sagalog_journal_poisoned 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
