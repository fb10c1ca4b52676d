//! One step attempt: back-off with jitter after a failure, admission through the participant's
//! circuit breaker (parking the saga while it is open, with jittered wake-ups so parked sagas
//! do not all resume at the same instant), `StepStarted` made durable, the call
//! under its timeout, and the outcome journaled.
//!
//! Owns the mapping from a call's result to the journaled outcome (retryable, permanent,
//! maybe applied) and what the breaker is told about it. A permanent failure is maybe applied
//! when the participant's error says so ([`Error::maybe_applied`]): an `http` participant sets
//! it after an attempt that may have been sent, so the step stays uncertain (re-sent, counted
//! against the compensation budget, STUCK for an operator), never skipped. The same attempt
//! also serves as the one re-send of an in-doubt step of a participant without markers
//! ([`Check::Resend`], from `in_doubt.rs`): journaled as the step's next attempt, with the
//! same idempotency key; during compensation, a permanent failure the receiver answers for a
//! forward step without `maybe_applied` (a `worker`'s `Fail { retryable: false }`) is its
//! verdict "not applied" (it deduplicates by the key, so an applied key would have answered
//! success), and the step is skipped. A retryable error's `Retry-After` hint
//! ([`Error::retry_after_ms`]) is the least back-off before the next attempt.
//!
//! [`Error::maybe_applied`]: crate::participant::Error::maybe_applied
//! [`Error::retry_after_ms`]: crate::participant::Error::retry_after_ms
//!
//! Before each attempt is journaled, the participant is asked whether it can serve a call now
//! ([`Participant::ready`]); one that cannot (a worker queue nobody polls) opens its breaker at
//! once with the reason, so the saga parks without spending an attempt.
//!
//! [`Participant::ready`]: crate::participant::Participant::ready
//!
//! Never does: call the participant before its `StepStarted` is durable, decide whether to
//! retry (`Saga::next` does, from the journaled outcome), or hold a std `Mutex` across an
//! `.await`.

use std::time::Duration;

use super::breaker::Admission;
use super::handle::now_ms;
use super::task::{Check, SagaTask};
use crate::catalog::RetryConfig;
use crate::engine::record::{Failed, Started, Succeeded};
use crate::engine::{Record, Status};
use crate::journal;
use crate::participant::{Applied, Direction};

/// How long a circuit breaker's health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a saga that was parked waits, at random, before its first call once the
/// breaker lets calls through: sagas parked together do not all hit the participant at once.
const RESUME_SPREAD: Duration = Duration::from_millis(200);

/// The longest a participant's `Retry-After` hint is honoured: a saga waits in its slot.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);

/// How a step attempt ended, before it is journaled.
enum Attempt {
    Succeeded { by_marker: bool, outputs: crate::participant::Outputs },
    Failed { error: String, retryable: bool, maybe_applied: bool },
}

impl SagaTask {
    pub(super) async fn run_step(
        &mut self,
        step: u32,
        direction: Direction,
        attempt: u32,
        after_failure: bool,
    ) -> Result<(), journal::Error> {
        self.run_attempt(step, direction, attempt, after_failure, Check::Planned).await
    }

    /// One attempt; `check` is [`Check::Planned`] for a step `Saga::next` says to run, and
    /// [`Check::Resend`] for the re-send of an in-doubt step of a participant without markers.
    pub(super) async fn run_attempt(
        &mut self,
        step: u32,
        direction: Direction,
        attempt: u32,
        after_failure: bool,
        check: Check,
    ) -> Result<(), journal::Error> {
        let saga = self.saga.id.clone();
        if self.saga.steps.get(step as usize).is_none() {
            return Ok(());
        }
        if direction == Direction::Forward
            && let Some(delay) = self.delay_of(step)
        {
            return self.start_delay(step, attempt, delay).await;
        }
        let (participant_name, participant, op) = match self.participant_for(step, direction) {
            Ok(found) => found,
            // The action or participant vanished from the config since submission: no attempt
            // can succeed. Journaled as a permanent failure of this attempt.
            Err(error) => {
                return self.fail_for_good(step, direction, attempt, format!("cannot run step: {error}"), false).await;
            }
        };
        let (retry, timeout) = self.retry_config(step, direction);
        // The receiver's `Retry-After`, if the last failed attempt was told one: the least
        // back-off.
        let hinted = self.retry_after.take().unwrap_or_default().min(RETRY_AFTER_MAX);
        if after_failure {
            let version = self.saga.version;
            let failures = self.saga.steps[step as usize].progress_of(direction).attempts;
            self.pause(jittered(retry.backoff_ms(failures + 1), retry.jitter).max(hinted)).await?;
            if self.saga.version != version {
                return Ok(()); // a cancel or resolution arrived: re-plan
            }
        }
        if !self.wait_for_breaker(&participant_name).await? {
            return Ok(());
        }
        let exec = self.exec.clone();
        let started = Record::StepStarted(Started {
            saga: saga.clone(),
            step,
            direction,
            attempt,
            at_ms: now_ms(),
            deadline_ms: None,
        });
        // Not admitted once a drain has begun, or if a control record changed the plan.
        let Some(mut in_flight) = self.journal_start(&exec.inner.drain, started, check).await? else { return Ok(()) };
        tracing::debug!(saga_id = %saga, step, direction = direction.as_str(), attempt, participant = %participant_name, "step started (journaled)");
        let key = self.key(step, direction);
        let began = std::time::Instant::now();
        // A forward re-send during compensation asks the receiver about the key: a permanent
        // failure that does not say it may have applied ([`Error::maybe_applied`]) is its
        // verdict that it holds no effect for it (see the module docs).
        let verdict = check == Check::Resend
            && direction == Direction::Forward
            && matches!(self.saga.status(), Status::Compensating | Status::Stuck);
        // The attempt number lets the participant refuse an attempt that a fencing lookup
        // fenced off (`in_doubt.rs`); such a refusal is permanent and applied nothing.
        let call = tokio::time::timeout(timeout, participant.apply_with_outputs(&key, attempt, &op));
        let (answer, interrupted) = self.call_interruptible(call, &*participant, &key, attempt).await;
        let outcome = match answer {
            // A cancel interrupted the call: whatever it answered, the marker settles the step
            // (`in_doubt.rs`), as after any attempt whose outcome is uncertain.
            Ok(Err(e)) if interrupted => Attempt::Failed {
                error: format!("interrupted because the saga was cancelled: {e}"),
                retryable: true,
                maybe_applied: true,
            },
            Ok(Ok((applied, outputs))) => Attempt::Succeeded { by_marker: applied == Applied::AlreadyApplied, outputs },
            Ok(Err(e)) if verdict && !e.is_retryable() && !e.maybe_applied => Attempt::Failed {
                error: format!("not applied: the receiver refused the step's idempotency key: {e}"),
                retryable: true,
                maybe_applied: false,
            },
            Ok(Err(e)) => {
                self.retry_after = e.retry_after_ms.map(Duration::from_millis);
                // The participant's error says whether a permanent failure may have applied
                // (an `http` step after an attempt that may have been sent keeps its doubt).
                let maybe_applied = e.is_retryable() || e.maybe_applied;
                Attempt::Failed { error: e.to_string(), retryable: e.is_retryable(), maybe_applied }
            }
            Err(_) => Attempt::Failed {
                error: format!("{participant_name}: timed out after {} ms", timeout.as_millis()),
                retryable: true,
                maybe_applied: true,
            },
        };
        in_flight.returned();
        let result = match &outcome {
            Attempt::Succeeded { .. } => "ok",
            Attempt::Failed { retryable: true, .. } => "retryable",
            Attempt::Failed { .. } => "permanent",
        };
        crate::metrics::get().step_attempt(&participant_name, direction.as_str(), result, began.elapsed());
        self.record_breaker(&participant_name, &outcome);
        let at_ms = now_ms();
        let record = match outcome {
            Attempt::Succeeded { by_marker, outputs } => {
                Record::StepSucceeded(Succeeded { saga, step, direction, attempt, by_marker, at_ms, outputs })
            }
            Attempt::Failed { error, retryable, maybe_applied } => {
                tracing::warn!(saga_id = %self.saga.id, step, direction = direction.as_str(), attempt, participant = %participant_name, retryable, %error, "step attempt failed");
                Record::StepFailed(Failed { saga, step, direction, attempt, error, retryable, maybe_applied, at_ms })
            }
        };
        self.journal_answer(record, participant, key, attempt).await?;
        if exec.draining() {
            // A drain waits for this outcome; the drive loop would settle it next anyway.
            self.settle().await?;
        }
        drop(in_flight);
        Ok(())
    }

    /// Awaits a forward step's call, applying the control records that arrive meanwhile: a
    /// cancel (journaled and durable already) asks the participant to interrupt the call
    /// ([`Participant::interrupt`]), so the saga compensates without waiting for a long
    /// statement. Answers the call's result and whether it was interrupted. A compensation is
    /// never interrupted (a cancel does not change it), and a snapshot asked meanwhile waits
    /// for the next idle point.
    ///
    /// [`Participant::interrupt`]: crate::participant::Participant::interrupt
    async fn call_interruptible<T>(
        &mut self,
        call: impl std::future::Future<Output = T>,
        participant: &dyn crate::participant::Participant,
        key: &crate::participant::StepKey,
        attempt: u32,
    ) -> (T, bool) {
        tokio::pin!(call);
        let (mut asked, mut interrupted) = (false, false);
        loop {
            tokio::select! {
                answer = &mut call => return (answer, interrupted),
                Some(message) = self.control.recv(), if key.direction == Direction::Forward && !asked => {
                    match message {
                        super::task::Control::Apply(record) => self.apply(&record),
                        super::task::Control::Snapshot => self.snapshot_wanted = true,
                    }
                    if self.saga.cancel_requested {
                        interrupted = participant.interrupt(key, attempt);
                        tracing::info!(
                            saga_id = %key.saga_id, step = key.step, attempt, interrupted,
                            "cancel during a running step: interrupting its statement"
                        );
                        // Asked once. A participant that cannot interrupt lets the call finish;
                        // later control records wait for the next idle point.
                        asked = true;
                    }
                }
            }
        }
    }

    /// The step's retry policy and per-call timeout (defaults if its action vanished from the
    /// config).
    pub(super) fn retry_config(&self, step: u32, direction: Direction) -> (RetryConfig, Duration) {
        let configured = self.saga.steps.get(step as usize).and_then(|s| {
            let action =
                self.saga.actions.get(&s.call.action).or_else(|| self.exec.inner.catalog.action(&s.call.action))?;
            let retry = match direction {
                Direction::Forward => action.retry,
                Direction::Compensate => action.compensate_retry,
            };
            Some((retry, Duration::from_millis(action.timeout_ms)))
        });
        configured.unwrap_or((RetryConfig::default(), Duration::from_secs(30)))
    }

    /// Waits while the participant's breaker is open, running its health probe when handed the
    /// probe slot. Returns false if a control record arrived (the caller re-plans).
    pub(super) async fn wait_for_breaker(&mut self, participant: &str) -> Result<bool, journal::Error> {
        let exec = self.exec.clone();
        let Some(breaker) = exec.inner.breakers.get(participant) else { return Ok(true) };
        let mut spread = false;
        loop {
            match breaker.allow(tokio::time::Instant::now()) {
                Admission::Probe => {
                    let error = match exec.inner.participants.get(participant) {
                        Some(p) => match tokio::time::timeout(PROBE_TIMEOUT, p.probe()).await {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e.message),
                            Err(_) => Some(format!("health probe timed out after {} s", PROBE_TIMEOUT.as_secs())),
                        },
                        None => Some("participant is not configured".to_owned()),
                    };
                    tracing::info!(participant, healthy = error.is_none(), "circuit breaker health probe");
                    breaker.record_probe_error(error, tokio::time::Instant::now());
                    if self.parked_on.is_some() {
                        self.publish(); // the reason may have changed
                    }
                }
                Admission::Go => {
                    let unready = exec.inner.participants.get(participant).and_then(|p| p.ready().err());
                    if let Some(reason) = unready {
                        tracing::warn!(participant, reason = %reason.message, "participant cannot serve calls now: breaker opened");
                        breaker.trip(tokio::time::Instant::now(), reason.message);
                        continue;
                    }
                    if self.parked_on.is_some() && !spread {
                        spread = true;
                        let version = self.saga.version;
                        self.pause(resume_delay()).await?;
                        if self.saga.version != version {
                            return Ok(false);
                        }
                        continue; // ask again: the breaker may have opened meanwhile
                    }
                    if self.parked_on.take().is_some() {
                        tracing::info!(saga_id = %self.saga.id, participant, "resuming: breaker let calls through");
                        self.publish();
                    }
                    return Ok(true);
                }
                Admission::Wait(wait) => {
                    if self.parked_on.is_none() {
                        tracing::warn!(saga_id = %self.saga.id, participant, "parked: circuit breaker is open");
                        self.parked_on = Some(participant.to_owned());
                        self.publish();
                    }
                    if self.holds_slot {
                        // Wait outside the slots (`SagaTask::wait_while_parked`).
                        self.leave_slot = true;
                        return Ok(false);
                    }
                    let version = self.saga.version;
                    // Up to a quarter longer, at random: parked sagas drift apart.
                    self.pause(wait + wait.mul_f64(rand::random_range(0.0..=0.25))).await?;
                    if self.saga.version != version {
                        return Ok(false);
                    }
                }
            }
        }
    }

    fn record_breaker(&self, participant: &str, outcome: &Attempt) {
        let Some(breaker) = self.exec.inner.breakers.get(participant) else { return };
        match outcome {
            Attempt::Failed { retryable: true, .. } => {
                if breaker.record_failure(tokio::time::Instant::now()) {
                    tracing::warn!(participant, "circuit breaker opened after consecutive failures");
                }
            }
            _ => breaker.record_success(),
        }
    }
}

/// A random delay in `0..=RESUME_SPREAD`.
fn resume_delay() -> Duration {
    RESUME_SPREAD.mul_f64(rand::random_range(0.0..=1.0))
}

/// `ms` with up to `jitter` of it randomised (±), so retries of many sagas spread out.
pub(super) fn jittered(ms: u64, jitter: f64) -> Duration {
    let spread = (ms as f64 * jitter.clamp(0.0, 1.0)) as u64;
    let ms = if spread == 0 { ms } else { ms - spread + rand::random_range(0..=2 * spread) };
    Duration::from_millis(ms)
}
