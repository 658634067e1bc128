//! sagalog-engine: sagas on top of the durable log.
//!
//! - [`definition`]: saga definitions, their validation, and the registry of versions.
//! - [`record`]: the log records (every saga transition) and their versioned encoding.
//! - [`state`] and [`decider`]: the pure core — `decide(&state, input, now_ms)` gives
//!   the records an input adds, `apply(state, &record)` folds a record into the state.
//!   No I/O, no clock: the same two functions serve the live path, replay and tests.
//! - [`api`] and [`config`]: what callers hand the engine and get back, the rules its
//!   inputs are checked by, and how it is set up.
//! - [`Engine`]: the service over a data directory — start, reply, override, retry,
//!   get, list, history, definitions, snapshots — with the indexer and timer threads.
//! - [`command`]: issued commands as participants see them (the outbox and the relay).
//! - [`wire`]: a participant's reply as JSON, read alike from HTTP and Kafka.
//! - [`projection`]: status counts, per-type counters, sagas ordered for listing.
//! - [`indexing`]: the sled indexes derived from the log.
//! - [`offline`]: verify, recover, replay, inspect, backup and restore of a data directory.
//! - retention ([`Engine::apply_retention`]): deleting the log segments nothing needs.

pub mod api;
mod bloom;
pub mod command;
pub mod config;
pub mod dead_letters;
pub mod decider;
pub mod definition;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod indexing;
pub mod offline;
pub mod projection;
pub mod record;
mod service;
pub mod shutdown;
pub mod state;
pub mod throttle;
pub mod view;
pub mod wire;

pub use api::{
    is_valid_saga_id, is_valid_trace_id, EngineStats, HistoryItem, ListPage, ListQuery,
    ReplyAnswer, StartAnswer, StartRequest, MAX_LIST_LIMIT,
};
pub use command::{Command, StoredJson};
pub use config::{Clock, EngineConfig, EngineObserver, SystemClock};
pub use dead_letters::DeadLetter;
pub use decider::{decide, Input, Outcome, Rejection, Reply};
pub use definition::{Definition, Registry, StepDefinition};
pub use error::{EngineError, ErrorClass, Inconsistency};
pub use record::{Action, Entry, Kind, Record, Status};
/// The log's own types an adapter meets: its figures, its observer and a failing write.
pub use sagalog_storage::{FsyncPolicy, LogObserver, LogStats, WriteFailure};
pub use service::engine::Engine;
pub use service::feed::{CommandFeed, Cursor, FeedBatch, LogHealth};
pub use service::retention::RetentionReport;
pub use shutdown::{Shutdown, Stop};
pub use state::{apply, SagaState, StepStatus};
pub use view::{SagaView, StepView};
