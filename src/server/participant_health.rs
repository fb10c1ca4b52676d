//! Participant health in the standard health service: a server that serves while one of its
//! participants cannot be reached is *degraded*, not down.
//!
//! One task probes every configured participant right after the start and then every
//! [`PROBE_INTERVAL`], each probe bounded by [`PROBE_TIMEOUT`], and publishes the answer as the
//! health of the service name `sagalog.participant.<name>` (SERVING or NOT_SERVING) of
//! `grpc.health.v1.Health`. The whole server's status (service `""`) does not follow: sagas
//! that need other participants still run, and those that need the missing one park behind
//! its breaker. A change is logged once, the failure with its root cause (the probe's error),
//! so an operator sees an unreachable participant at start, not at the first saga that needs
//! it.
//!
//! Never does: close or open a breaker (the executor's breakers keep their own probes), or
//! change the whole server's status (only the journal's state does that, `run.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::executor::Executor;

/// How often every participant is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one probe may take before it counts as a failure.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The prefix of a participant's service name in the health service.
pub const SERVICE_PREFIX: &str = "sagalog.participant.";

/// The health service name of participant `name`.
pub fn service_name(name: &str) -> String {
    format!("{SERVICE_PREFIX}{name}")
}

/// Starts the probing task; abort the handle to stop it. Each round's answers also go to
/// `reachability` (for `/readyz`).
pub fn spawn(
    executor: Executor,
    names: Vec<String>,
    health: HealthReporter,
    reachability: super::http_api::Reachability,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: BTreeMap<String, bool> = BTreeMap::new();
        let mut ticks = tokio::time::interval(PROBE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut round = BTreeMap::new();
            for name in &names {
                let outcome = match executor.participant(name) {
                    Some(p) => match tokio::time::timeout(PROBE_TIMEOUT, p.probe()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer to its probe within {} s", PROBE_TIMEOUT.as_secs())),
                    },
                    None => Err("not opened".to_owned()),
                };
                round.insert(name.clone(), outcome.clone());
                let up = outcome.is_ok();
                let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
                health.set_service_status(service_name(name), status).await;
                let first = !last.contains_key(name);
                match (&outcome, last.insert(name.clone(), up)) {
                    (Err(cause), Some(true) | None) => tracing::warn!(
                        participant = %name,
                        error = %cause,
                        at_start = first,
                        "participant cannot be reached: the server is degraded (health sagalog.participant.{name} NOT_SERVING); sagas that need it wait behind its breaker"
                    ),
                    (Ok(()), Some(false)) => tracing::info!(participant = %name, "participant reachable again"),
                    _ => {}
                }
            }
            reachability.set(round);
        }
    })
}
