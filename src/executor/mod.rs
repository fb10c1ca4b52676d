//! The executor: runs sagas' steps against participants, journal first.
//!
//! Each saga is driven by one task that owns its [`Saga`](crate::engine::Saga) state. The task
//! asks the pure `Saga::next` what to do, journals the intent (`StepStarted`) **before**
//! touching the participant, journals the outcome after, and applies every record it journals
//! to its state with `Saga::apply`, the same function recovery replays the journal through.
//!
//! Around each call: exponential back-off with jitter between attempts, a per-step timeout,
//! and a circuit breaker per participant that parks sagas (no attempt, no journal record)
//! while the participant is sick. Concurrency is bounded by `max_in_flight`; a saga waiting
//! for a slot is already durable, and one waiting out a delay step holds none.
//!
//! The parts, one job each:
//! - `handle`: the [`Executor`] API (submit, adopt, cancel, an operator's `resolve`, drain,
//!   snapshots) and the state every task shares;
//! - `registry`: the id map, the index lookups, and the checkpoint LSN (the oldest journal
//!   record still needed, written to the checkpoint file);
//! - `slots`: the `max_in_flight` slots, the queue of sagas waiting for one, and the worker;
//! - `drain`: shutdown, waiting on the participant calls in flight;
//! - `task`: one saga's drive loop over `Next`, journaling, settling and publishing;
//! - `attempt`: one step attempt (back-off, jitter, breaker admission, timeout);
//! - `in_doubt`: settling an interrupted step by its participant's marker;
//! - `delay`: a delay step (deadline journaled at its start, waited out holding no slot);
//! - [`breaker`]: the circuit breaker.
//!
//! Never does: touch a participant before its `StepStarted` is durable, decide anything that
//! `Saga::next` did not say, or hold a std `Mutex` across an `.await`.

mod attempt;
pub mod breaker;
mod delay;
mod drain;
mod handle;
mod in_doubt;
mod registry;
mod slots;
mod task;

pub use handle::{CONTROL_QUEUE_MAX, Error, Executor, Snapshot, SubmitOutcome};
