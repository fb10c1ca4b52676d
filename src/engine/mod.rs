//! The saga engine: definitions, journal records, and the pure state machine.
//!
//! Nothing here does I/O or reads a clock. A saga's state changes only by [`Saga::apply`]ing a
//! journal [`Record`], and what to do next is only ever decided by [`Saga::next`]; the live
//! executor and crash recovery both go through these two functions, so recovery cannot drift
//! from normal operation.

#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod record;
pub mod saga;
pub mod value;

#[cfg(test)]
mod fuzz_stable;
#[cfg(test)]
mod golden;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use model::{Direction, OWN_OUTPUT_PREFIX, OutputRef, SagaDefinition, Scope, StepCall, StepKey, StepPolicy};
pub use record::{Outcome, Record, ResolveDecision};
pub use saga::{Next, Saga, Status, StepProgress};
pub use value::Value;
