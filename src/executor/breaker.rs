//! A circuit breaker per participant: closed → open after N consecutive retryable failures →
//! half-open after a cool-down → closed after M successful trial calls (any failure while
//! half-open opens it again).
//!
//! While a breaker is open, sagas that need the participant are *parked*: they do not start an
//! attempt (so they burn no retries and journal nothing) and resume by themselves when the
//! cool-down ends. Only retryable failures count: a permanent error says the request was bad,
//! not that the participant is sick.
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
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { successes: u32 },
}

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
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker { config, state: Mutex::new(BreakerState::Closed { consecutive_failures: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // Every update is a single assignment, so a poisoned lock still holds a valid state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        *self.lock()
    }

    /// `Ok` if a call may go through now, else how long until the next trial.
    pub fn allow(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } | BreakerState::HalfOpen { .. } => Ok(()),
            BreakerState::Open { until } if now >= until => {
                *state = BreakerState::HalfOpen { successes: 0 };
                tracing::info!("circuit breaker half-open: letting trial calls through");
                Ok(())
            }
            BreakerState::Open { until } => Err(until - now),
        }
    }

    pub fn record_success(&self) {
        let mut state = self.lock();
        *state = match *state {
            BreakerState::HalfOpen { successes } if successes + 1 < self.config.successes_to_close => {
                BreakerState::HalfOpen { successes: successes + 1 }
            }
            BreakerState::Open { until } => BreakerState::Open { until },
            _ => BreakerState::Closed { consecutive_failures: 0 },
        };
    }

    /// Records a retryable failure; returns true if this call opened the breaker.
    pub fn record_failure(&self, now: Instant) -> bool {
        let mut state = self.lock();
        let open = BreakerState::Open { until: now + self.config.cooldown };
        let (next, opened) = match *state {
            BreakerState::Closed { consecutive_failures }
                if consecutive_failures + 1 >= self.config.failures_to_open =>
            {
                (open, true)
            }
            BreakerState::Closed { consecutive_failures } => {
                (BreakerState::Closed { consecutive_failures: consecutive_failures + 1 }, false)
            }
            BreakerState::HalfOpen { .. } => (open, true),
            BreakerState::Open { until } => (BreakerState::Open { until }, false),
        };
        *state = next;
        opened
    }

    /// An operator's reset: closed, failure count cleared.
    pub fn reset(&self) {
        *self.lock() = BreakerState::Closed { consecutive_failures: 0 };
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
        assert_eq!(b.allow(t + Duration::from_secs(10)), Err(Duration::from_secs(50)));
    }

    #[test]
    fn half_open_after_cooldown_closes_after_m_successes_or_reopens_on_failure() {
        let b = breaker();
        let t = Instant::now();
        (0..3).for_each(|_| {
            b.record_failure(t);
        });
        let later = t + Duration::from_secs(60);
        assert_eq!(b.allow(later), Ok(()));
        assert_eq!(b.state(), BreakerState::HalfOpen { successes: 0 });
        b.record_success();
        assert_eq!(b.state(), BreakerState::HalfOpen { successes: 1 });
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed { consecutive_failures: 0 });

        (0..3).for_each(|_| {
            b.record_failure(later);
        });
        let trial = later + Duration::from_secs(61);
        assert_eq!(b.allow(trial), Ok(()));
        assert!(b.record_failure(trial), "a failed trial opens it again");
        assert!(b.allow(trial).is_err());
    }
}
