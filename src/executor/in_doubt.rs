//! In-doubt steps: an attempt whose `StepStarted` is journaled but whose outcome is not (a
//! crash, a timeout, a lost answer) is settled by the participant's marker: present means the
//! step committed, absent means it did not.
//!
//! Owns the marker lookup loop: lookups are retried (with back-off, parked behind the
//! participant's breaker like any call) while the participant is unreachable. Every lookup is
//! the participant's fencing lookup ([`Participant::settle_marker`]) through the step's
//! attempts so far (`total_attempts` of the direction): once it answers "absent", no attempt
//! up to that one can commit any more (a timed-out attempt still running in the database, or
//! one of a crashed process), so "not applied" stays true; the next attempt, numbered above
//! it, may still apply.
//!
//! [`Participant::settle_marker`]: crate::participant::Participant::settle_marker
//!
//! A participant **without markers** ([`Participant::has_markers`] false: `http`, `worker`,
//! whose effects live in another system) has nothing to look up. Its in-doubt step is never
//! settled as "absent": it is sent again, as the step's next journaled attempt with the same
//! idempotency key (the receiver deduplicates by it), and the receiver's answer settles it
//! ([`SagaTask::resend_in_doubt`], the one re-send path: the attempt in `attempt.rs`, checked
//! as [`Check::Resend`]; the participant contract, "Participants without markers"). That also
//! holds when the saga compensates: a forward step that may have been sent is re-sent, then
//! compensated with that answer's outputs; it is never skipped while it may have applied.
//! While it goes unanswered the step stays uncertain.
//!
//! [`Participant::has_markers`]: crate::participant::Participant::has_markers
//!
//! Never does: re-run a step *that keeps markers* to find out (that could apply it twice), or
//! record a commit or an absence the marker did not show: an unreachable participant is asked
//! again. Not to be confused with an operator's `resolve` of a STUCK saga, which arrives as a
//! journaled `Resolved` record.

use super::attempt::jittered;
use super::handle::now_ms;
use super::task::{Check, SagaTask};
use crate::engine::Record;
use crate::engine::record::{Failed, Succeeded};
use crate::journal;
use crate::participant::Direction;

impl SagaTask {
    /// Settles an uncertain step by its participant's marker, retrying lookups while the
    /// participant is unreachable (parked behind its breaker like any call).
    pub(super) async fn settle_by_marker(&mut self, step: u32, direction: Direction) -> Result<(), journal::Error> {
        let saga = self.saga.id.clone();
        let Some(call) = self.saga.steps.get(step as usize).map(|s| s.call.clone()) else { return Ok(()) };
        let (name, participant) = match self.participant_of(&call) {
            Ok(found) => found,
            Err(error) => {
                // The journaled wording predates the rename; the bytes on disk stay. The step's
                // fate is unknown, not "not applied": the record counts as a marker that cannot
                // be read, so compensation asks again within its budget, then the saga is STUCK.
                return self.fail_for_good(step, direction, 0, format!("cannot resolve step: {error}"), true).await;
            }
        };
        if !participant.has_markers() {
            return self.resend_in_doubt(step, direction, &name).await;
        }
        let (retry, timeout) = self.retry_config(step, direction);
        let key = self.key(step, direction);
        let attempt = self.saga.steps[step as usize].progress_of(direction).total_attempts;
        let mut lookups = 0u32;
        loop {
            if !self.wait_for_breaker(&name).await? {
                return Ok(());
            }
            // A forward step that returns outputs takes them from its marker: the marker and
            // its outputs committed together.
            let wants_outputs = direction == Direction::Forward && self.returns_outputs(&call);
            let settled = async {
                let found = participant.settle_marker(&key, attempt).await?;
                let outputs =
                    if found && wants_outputs { participant.marker_outputs(&key).await? } else { Default::default() };
                Ok::<_, crate::participant::Error>((found, outputs))
            };
            let (found, outputs) = match tokio::time::timeout(timeout, settled).await {
                Ok(Ok((found, outputs))) => (Some(found), outputs),
                Ok(Err(e)) if !e.is_retryable() => {
                    if let Some(b) = self.exec.inner.breakers.get(&name) {
                        b.record_success();
                    }
                    return self
                        .fail_for_good(step, direction, attempt, format!("cannot read marker: {e}"), true)
                        .await;
                }
                Ok(Err(_)) | Err(_) => (None, Default::default()),
            };
            if let (Some(_), Some(b)) = (found, self.exec.inner.breakers.get(&name)) {
                b.record_success();
            }
            let at_ms = now_ms();
            match found {
                Some(true) => {
                    tracing::info!(saga_id = %saga, step, direction = direction.as_str(), "in-doubt step committed (marker present): recorded as succeeded");
                    return self
                        .journal(Record::StepSucceeded(Succeeded {
                            saga,
                            step,
                            direction,
                            attempt,
                            by_marker: true,
                            at_ms,
                            outputs,
                        }))
                        .await;
                }
                Some(false) => {
                    let error = "not applied: no marker after an interrupted attempt".to_owned();
                    let record =
                        Failed { saga, step, direction, attempt, error, retryable: true, maybe_applied: false, at_ms };
                    return self.journal(Record::StepFailed(record)).await;
                }
                None => {
                    if let Some(b) = self.exec.inner.breakers.get(&name) {
                        b.record_failure(tokio::time::Instant::now());
                    }
                    lookups += 1;
                    let version = self.saga.version;
                    self.pause(jittered(retry.backoff_ms(lookups + 1), retry.jitter)).await?;
                    if self.saga.version != version {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Settles an in-doubt step of a participant without markers (`http`, `worker`) by sending
    /// it again: the step's next attempt, journaled (`StepStarted`) before it is sent, with the
    /// same idempotency key. After an interrupted attempt (a crash) it goes at once; after a
    /// failure that may have applied it, after the usual back-off (and at least the receiver's
    /// `Retry-After`). Its outcome is journaled like any attempt's: a success settles the step
    /// as applied (with its outputs), a retryable failure leaves it uncertain (sent again
    /// later: it never reads as "not applied"); a permanent one is decided by the participant's
    /// error ([`crate::participant::Error::maybe_applied`], see `attempt.rs`).
    pub(super) async fn resend_in_doubt(
        &mut self,
        step: u32,
        direction: Direction,
        participant: &str,
    ) -> Result<(), journal::Error> {
        let progress = self.saga.steps[step as usize].progress_of(direction);
        let (attempt, after_failure) = (progress.total_attempts + 1, !progress.in_flight);
        tracing::info!(saga_id = %self.saga.id, step, direction = direction.as_str(), attempt, participant,
            "in-doubt step of a participant without markers: re-sent with its idempotency key");
        self.run_attempt(step, direction, attempt, after_failure, Check::Resend).await
    }
}
