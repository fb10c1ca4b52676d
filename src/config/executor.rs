//! The `[executor]` block: concurrency, circuit-breaker thresholds and per-saga limits (the
//! longest delay among them).
//! Schema and defaults only; the executor and the catalog read them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Sagas running at once; further submits wait in line (they are already durable).
    /// Spelled `in_flight_max` (`max_in_flight` is still read).
    #[serde(rename = "in_flight_max", alias = "max_in_flight")]
    pub max_in_flight: usize,
    /// Consecutive retryable failures that open a participant's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before letting a trial call through.
    pub breaker_cooldown_ms: u64,
    /// Successful trial calls that close a half-open breaker.
    pub breaker_successes: u32,
    /// The most steps a saga may have. Spelled `steps_max` (`max_steps` is still read).
    #[serde(rename = "steps_max", alias = "max_steps")]
    pub max_steps: usize,
    /// The largest encoded saga definition accepted, in bytes. Spelled `saga_bytes_max`
    /// (`max_saga_bytes` is still read).
    #[serde(rename = "saga_bytes_max", alias = "max_saga_bytes")]
    pub max_saga_bytes: usize,
    /// The most unfinished sagas held in memory (running, waiting for a slot, parked, STUCK,
    /// or finished and not archived yet). A submit beyond it is refused with
    /// RESOURCE_EXHAUSTED naming this key, before anything is journaled, so that sustained
    /// overload ends in back-pressure, not in OOM. Recovery adopts every acknowledged saga
    /// whatever the count.
    pub live_sagas_max: usize,
    /// The longest wait a delay action may ask for, in milliseconds (default a week): a fixed
    /// `delay_ms` above it is refused when the config loads, a `delay_ms` parameter above it
    /// when the saga is submitted (INVALID_ARGUMENT naming the step and the parameter).
    pub delay_ms_max: u64,
}

/// One week in milliseconds: the default `executor.delay_ms_max`.
pub const DELAY_MS_MAX_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_in_flight: 256,
            breaker_failures: 5,
            breaker_cooldown_ms: 60_000,
            breaker_successes: 3,
            max_steps: 64,
            max_saga_bytes: 1024 * 1024,
            live_sagas_max: 100_000,
            delay_ms_max: DELAY_MS_MAX_DEFAULT,
        }
    }
}
