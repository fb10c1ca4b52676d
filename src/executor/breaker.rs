//! A circuit breaker per participant: closed → open after N consecutive retryable failures →
//! half-open after a cool-down → closed after M successful health probes in a row (a failed
//! probe opens it again).
//!
//! While a breaker is open or half-open, sagas that need the participant are *parked*: they do
//! not start an attempt (so they burn no retries and journal nothing). In half-open, exactly
//! one waiter at a time is handed the [`Admission::Probe`] slot and runs the participant's
//! health probe; saga steps go through again only once the probes closed the breaker. Only
//! retryable failures count: a permanent error says the request was bad, not that the
//! participant is sick.
//!
//! The clock is passed in, so the transitions are tested without waiting.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures_to_open: u32,
    pub cooldown: Duration,
    pub successes_to_close: u32,
}

/// What a breaker is doing, as reported by the status API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probing`: a waiter holds the probe slot.
    HalfOpen {
        successes: u32,
        probing: bool,
    },
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Make the call.
    Go,
    /// Stay parked this long, then ask again.
    Wait(Duration),
    /// Run the participant's health probe and report it with [`Breaker::record_probe`].
    Probe,
}

/// How often a parked caller asks again while another one probes.
const PROBE_POLL: Duration = Duration::from_millis(50);

impl BreakerState {
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half-open",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<BreakerState>,
    /// Why the breaker is open, when a participant said so ([`Breaker::trip`], a failed
    /// probe); cleared when it closes.
    reason: Mutex<Option<String>>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(BreakerState::Closed { consecutive_failures: 0 }),
            reason: Mutex::new(None),
        }
    }

    /// Why the breaker is open, if a participant said so.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_reason(&self, reason: Option<String>) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// Opens a closed breaker at once, with the reason: the participant said it cannot serve a
    /// call now (`Participant::ready`), so no attempt is spent finding out. The usual
    /// cool-down and probes close it again.
    pub fn trip(&self, now: Instant, reason: String) {
        let mut state = self.lock();
        if let BreakerState::Closed { .. } = *state {
            *state = BreakerState::Open { until: now + self.config.cooldown };
        }
        drop(state);
        self.set_reason(Some(reason));
    }

    /// [`Breaker::record_probe`] with the failed probe's error as the reason.
    pub fn record_probe_error(&self, error: Option<String>, now: Instant) {
        let healthy = error.is_none();
        if let Some(reason) = error {
            self.set_reason(Some(reason));
        }
        self.record_probe(healthy, now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // Every update is a single assignment, so a poisoned lock still holds a valid state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        *self.lock()
    }

    /// Whether a call may go through now.
    pub fn allow(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => Admission::Go,
            BreakerState::Open { until } if now < until => Admission::Wait(until - now),
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: false, .. } => {
                let successes = match *state {
                    BreakerState::HalfOpen { successes, .. } => successes,
                    _ => 0,
                };
                *state = BreakerState::HalfOpen { successes, probing: true };
                Admission::Probe
            }
            BreakerState::HalfOpen { probing: true, .. } => Admission::Wait(PROBE_POLL),
        }
    }

    /// Reports the health probe of the caller that was handed [`Admission::Probe`].
    pub fn record_probe(&self, healthy: bool, now: Instant) {
        let mut state = self.lock();
        let BreakerState::HalfOpen { successes, .. } = *state else { return };
        *state = if !healthy {
            BreakerState::Open { until: now + self.config.cooldown }
        } else if successes + 1 >= self.config.successes_to_close {
            tracing::info!("circuit breaker closed: health probes succeeded");
            self.set_reason(None);
            BreakerState::Closed { consecutive_failures: 0 }
        } else {
            BreakerState::HalfOpen { successes: successes + 1, probing: false }
        };
    }

    /// Reports a call that the participant answered (success, or a permanent error).
    pub fn record_success(&self) {
        let mut state = self.lock();
        if let BreakerState::Closed { .. } = *state {
            *state = BreakerState::Closed { consecutive_failures: 0 };
        }
    }

    /// Records a retryable failure of a call; returns true if this call opened the breaker.
    /// Failures of calls admitted before the breaker opened change nothing more.
    pub fn record_failure(&self, now: Instant) -> bool {
        let mut state = self.lock();
        let BreakerState::Closed { consecutive_failures } = *state else { return false };
        if consecutive_failures + 1 >= self.config.failures_to_open {
            *state = BreakerState::Open { until: now + self.config.cooldown };
            true
        } else {
            *state = BreakerState::Closed { consecutive_failures: consecutive_failures + 1 };
            false
        }
    }

    /// An operator's reset: closed, failure count cleared.
    pub fn reset(&self) {
        *self.lock() = BreakerState::Closed { consecutive_failures: 0 };
        self.set_reason(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig { failures_to_open: 3, cooldown: Duration::from_secs(60), successes_to_close: 2 })
    }

    #[test]
    fn opens_after_n_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker();
        let t = Instant::now();
        assert!(!b.record_failure(t));
        b.record_success();
        assert!(!b.record_failure(t));
        assert!(!b.record_failure(t));
        assert!(b.record_failure(t), "the third consecutive failure opens it");
        assert_eq!(b.allow(t + Duration::from_secs(10)), Admission::Wait(Duration::from_secs(50)));
    }

    #[test]
    fn half_open_hands_out_one_probe_at_a_time_and_closes_after_m_healthy_probes() {
        let b = breaker();
        let t = Instant::now();
        (0..3).for_each(|_| {
            b.record_failure(t);
        });
        let later = t + Duration::from_secs(60);
        assert_eq!(b.allow(later), Admission::Probe, "the first caller after the cool-down probes");
        assert_eq!(b.allow(later), Admission::Wait(PROBE_POLL), "everyone else stays parked");
        b.record_probe(true, later);
        assert_eq!(b.state(), BreakerState::HalfOpen { successes: 1, probing: false });
        assert_eq!(b.allow(later), Admission::Probe);
        b.record_probe(true, later);
        assert_eq!(b.state(), BreakerState::Closed { consecutive_failures: 0 });
        assert_eq!(b.allow(later), Admission::Go);
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_late_failures_do_not_extend_it() {
        let b = breaker();
        let t = Instant::now();
        (0..3).for_each(|_| {
            b.record_failure(t);
        });
        assert!(!b.record_failure(t + Duration::from_secs(1)), "a call admitted earlier failing changes nothing");
        let trial = t + Duration::from_secs(61);
        assert_eq!(b.allow(trial), Admission::Probe);
        b.record_probe(false, trial);
        assert_eq!(b.allow(trial), Admission::Wait(Duration::from_secs(60)));
    }
}
