//! sagalog-engine: sagas on top of the durable log. Its folders are its layers, each
//! using only those before it:
//!
//! - `model`: the pure core — [`definition`]s and their registry, the log [`record`]s
//!   (every saga transition, versioned), the saga [`state`] and the [`decider`]:
//!   `decide(&state, input, now_ms)` gives the records an input adds, `apply(state,
//!   &record)` folds a record into the state. No I/O, no clock: the same two functions
//!   serve the live path, replay and tests. Beside them the [`placement`]: which
//!   partition a saga belongs to and which pod holds it.
//! - `history`: reading a saga's records back from the log by their links.
//! - `render`: what the outside reads — issued [`command`]s as participants see them,
//!   a saga's [`view`] as the API returns it, and a participant's reply on the [`wire`]
//!   (JSON, read alike from HTTP and Kafka).
//! - `service`: the [`Engine`] over a data directory — start, reply, override, retry,
//!   get, list, history, definitions, snapshots, retention — with its indexes,
//!   projections and threads, and what adapters read besides the API
//!   ([`CommandFeed`], [`Cursor`], [`LogHealth`]).
//! - [`offline`]: verify, recover, replay, inspect, backup and restore of a data
//!   directory no server holds.
//!
//! Beside them: [`api`] and [`config`] (what callers hand the engine and get back, the
//! rules inputs are checked by, how it is set up), [`error`], [`shutdown`] and
//! [`throttle`].

pub mod api;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod history;
mod model;
pub mod offline;
pub mod partitions;
mod render;
mod service;
pub mod shutdown;
pub mod throttle;

pub use model::{decider, definition, delivery, placement, record, state};
pub use render::{command, filter, results, stored, view, wire};

pub use api::{
    is_valid_saga_id, is_valid_trace_id, EngineStats, HistoryItem, ListPage, ListQuery, Operation,
    PayloadMatch, ReplyAnswer, StartAnswer, StartRequest, MAX_LIST_LIMIT, MAX_PAYLOAD_FILTERS,
    MAX_REASON_CHARS,
};
pub use command::{Command, Undo};
pub use config::{Clock, EngineConfig, EngineObserver, SystemClock};
pub use decider::{decide, Input, Outcome, Rejection, Reply};
pub use definition::{Definition, Registry, StepDefinition};
pub use delivery::Delivery;
pub use error::{EngineError, ErrorClass, Inconsistency};
pub use filter::{member_of, CommandFilter, FilterError};
pub use partitions::{Partitions, Routed};
pub use placement::{partition_of, PartitionOf, Placement, MAX_NODES, MAX_PARTITIONS};
pub use record::{Action, Entry, Kind, Record, Status};
/// The log's own types an adapter meets: its figures, its observer and a failing write.
pub use sagalog_storage::{FsyncPolicy, LogObserver, LogStats, WriteFailure};
pub use service::active::OldestActive;
pub use service::dead_letters::{DeadLetter, DeadLetterCounts};
pub use service::delivery::DeliveryChange;
pub use service::engine::Engine;
pub use service::feed::{CommandFeed, Cursor, FeedBatch, LogHealth};
pub use service::projection::{Counters, TypeCounters};
pub use service::retention::RetentionReport;
pub use shutdown::{Shutdown, Stop};
pub use state::{apply, SagaState, StepStatus};
pub use stored::StoredJson;
pub use view::{SagaView, StepView};
