//! sagalog-engine: sagas on top of the durable log.
//!
//! - [`definition`]: saga definitions, their validation, and the registry of versions.
//! - [`record`]: the log records (every saga transition) and their versioned encoding.
//! - [`state`] and [`decider`]: the pure core — `decide(&state, input, now_ms)` gives
//!   the records an input adds, `apply(state, &record)` folds a record into the state.
//!   No I/O, no clock: the same two functions serve the live path, replay and tests.

pub mod decider;
pub mod definition;
pub mod record;
pub mod state;

pub use decider::{decide, Input, Outcome, Rejection, Reply};
pub use definition::{Definition, Registry, StepDefinition};
pub use record::{Action, Entry, Kind, Record, Status};
pub use state::{apply, SagaState, StepStatus};
