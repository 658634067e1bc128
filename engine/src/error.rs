//! The engine's error type. Each variant maps to one HTTP status in the `http` crate;
//! [`EngineError::class`] says which kind of failure it is.

use sagalog_storage::StorageError;

use crate::model::decider::Rejection;
use crate::model::definition::RegistryError;
use crate::model::record::DecodeError;

/// How a caller should treat an error (the HTTP layer maps each to one status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed or breaks a limit (400).
    BadRequest,
    /// A part of the request is larger than its limit (413).
    TooLarge,
    /// The saga, step or definition does not exist (404).
    NotFound,
    /// The request does not fit the current state (409).
    Conflict,
    /// What was asked for existed, but retention removed its records (410).
    Gone,
    /// The engine cannot take writes right now: log not writable, a limit reached (503).
    Unavailable,
    /// A bug or damaged data (500).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("saga {saga_id} does not exist{}", removed_hint(*.log_start))]
    SagaNotFound {
        saga_id: String,
        /// Where the log starts, when retention removed records below it.
        log_start: u64,
    },
    #[error("no dead letter at log offset {offset}")]
    NoDeadLetter { offset: u64 },
    #[error("no definition named {name:?} is registered")]
    UnknownDefinition { name: String },
    #[error(transparent)]
    Definition(#[from] RegistryError),
    #[error("{field}: {message}")]
    InvalidRequest {
        field: &'static str,
        message: String,
    },
    #[error("{field} is {bytes} bytes as JSON, over the limit of {limit} bytes ({option})")]
    TooLarge {
        field: &'static str,
        bytes: usize,
        limit: usize,
        /// The option that sets the limit.
        option: &'static str,
    },
    #[error(
        "saga {saga_id} already exists with a different type or payload; \
         a repeated start must send the same body"
    )]
    StartConflict { saga_id: String },
    #[error("{what} reached its limit of {limit}; retry later")]
    AtLimit { what: &'static str, limit: usize },
    #[error("{what} reached its limit of {limit} ({option}); nothing was changed")]
    LimitReached {
        what: &'static str,
        limit: usize,
        option: &'static str,
    },
    #[error("the log cannot be written, nothing was changed: {0}")]
    Unavailable(StorageError),
    #[error("log offset {offset} was removed by retention (the log now starts at offset {start})")]
    Removed { offset: u64, start: u64 },
    #[error(
        "saga {saga_id} finished and its records were removed by retention \
         (the log now starts at offset {start})"
    )]
    SagaRemoved { saga_id: String, start: u64 },
    #[error(transparent)]
    Storage(StorageError),
    #[error("undecodable record at log offset {offset}: {source}")]
    Corrupt {
        offset: u64,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Inconsistent(#[from] Inconsistency),
    #[error("the engine is shutting down")]
    Closed,
    /// The data directory's partitions do not match what was asked for, or are damaged.
    #[error("{0}")]
    Partitions(String),
    /// The saga id belongs to another partition than the engine asked to start it.
    #[error("saga id {saga_id:?} belongs to partition {belongs} of {count}, not to partition {partition}")]
    WrongPartition {
        saga_id: String,
        belongs: u32,
        partition: u32,
        count: u32,
    },
    #[error("starting the {name} thread failed: {source}")]
    Thread {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::Rejected(Rejection::NotStarted { .. }) => ErrorClass::NotFound,
            EngineError::Rejected(_) => ErrorClass::Conflict,
            EngineError::SagaNotFound { .. }
            | EngineError::UnknownDefinition { .. }
            | EngineError::NoDeadLetter { .. } => ErrorClass::NotFound,
            EngineError::Definition(RegistryError::Invalid(_))
            | EngineError::InvalidRequest { .. } => ErrorClass::BadRequest,
            EngineError::TooLarge { .. }
            | EngineError::Unavailable(
                StorageError::RecordTooLarge { .. } | StorageError::AppendTooLarge { .. },
            ) => ErrorClass::TooLarge,
            EngineError::Definition(
                RegistryError::VersionConflict { .. } | RegistryError::BuiltinConflict { .. },
            )
            | EngineError::StartConflict { .. }
            | EngineError::LimitReached { .. } => ErrorClass::Conflict,
            EngineError::Removed { .. } | EngineError::SagaRemoved { .. } => ErrorClass::Gone,
            EngineError::AtLimit { .. } | EngineError::Unavailable(_) | EngineError::Closed => {
                ErrorClass::Unavailable
            }
            EngineError::Storage(_)
            | EngineError::Corrupt { .. }
            | EngineError::Inconsistent(_)
            | EngineError::Partitions(_)
            | EngineError::WrongPartition { .. }
            | EngineError::Thread { .. } => ErrorClass::Internal,
        }
    }
}

impl EngineError {
    /// Why a write is refused for now (the engine is sound, it cannot take this write
    /// yet), as a short stable name: the metrics' `reason` label. `None` for other errors.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            EngineError::AtLimit { what, .. } if *what == ACTIVE_SAGAS => Some("max_active_sagas"),
            EngineError::AtLimit { .. } => Some("indexer_backlog"),
            EngineError::Unavailable(
                StorageError::RecordTooLarge { .. } | StorageError::AppendTooLarge { .. },
            ) => None,
            EngineError::Unavailable(StorageError::Refusing { .. }) => Some("disk_watermark"),
            EngineError::Unavailable(StorageError::WriteFailed { .. }) => Some("write_failed"),
            EngineError::Unavailable(_) => Some("log_unwritable"),
            EngineError::Closed => Some("shutting_down"),
            _ => None,
        }
    }
}

/// The limit `max_active_sagas` as an [`EngineError::AtLimit`] names it.
pub(crate) const ACTIVE_SAGAS: &str = "active sagas";

impl From<StorageError> for EngineError {
    /// A read below the log's start asked for records retention removed: that is
    /// [`EngineError::Removed`], not a storage failure.
    fn from(e: StorageError) -> EngineError {
        match e {
            StorageError::OffsetOutOfRange { offset, start, .. } if offset < start => {
                EngineError::Removed { offset, start }
            }
            e => EngineError::Storage(e),
        }
    }
}

impl EngineError {
    /// Names the saga when its records were removed.
    pub(crate) fn for_saga(self, saga_id: &str) -> EngineError {
        match self {
            EngineError::Removed { start, .. } => EngineError::SagaRemoved {
                saga_id: saga_id.to_string(),
                start,
            },
            e => e,
        }
    }
}

fn removed_hint(log_start: u64) -> String {
    if log_start == 0 {
        String::new()
    } else {
        format!(
            " (or it finished and retention removed it: the log now starts at offset {log_start})"
        )
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What the log, the indexes or a snapshot hold that cannot be (damage the checksums did
/// not catch, or a bug), or an engine task that failed; each names where.
#[derive(Debug, thiserror::Error)]
pub enum Inconsistency {
    #[error("offset {offset} holds {found}, not a saga record")]
    NotASagaRecord { offset: u64, found: String },
    #[error("offset {offset} peeks as a saga record but decodes as another entry")]
    PeekMismatch { offset: u64 },
    #[error("offset {offset} should hold a saga's first record, not {found}")]
    NotAStart { offset: u64, found: &'static str },
    #[error("saga {saga_id}: offset {offset} is not its start")]
    WrongStart { saga_id: String, offset: u64 },
    #[error("saga {saga_id}: its history does not begin with its start")]
    HistoryWithoutStart { saga_id: String },
    #[error("saga {saga_id} runs on {saga_type} version {version}, which is not registered")]
    UnregisteredDefinition {
        saga_id: String,
        saga_type: String,
        version: u32,
    },
    #[error(
        "saga {saga_id} at offset {offset} starts on {saga_type} version {version}, which is not registered"
    )]
    StartOnUnregistered {
        saga_id: String,
        offset: u64,
        saga_type: String,
        version: u32,
    },
    #[error("command at offset {offset} names step {step} of {saga_type} version {version}, which has {steps}")]
    MissingStep {
        offset: u64,
        step: u16,
        saga_type: String,
        version: u32,
        steps: usize,
    },
    #[error("the log's first record follows nothing")]
    FirstFollows,
    #[error("saga {saga_id}: its chain reaches offset {offset}, a record of saga {other}")]
    ChainCrosses {
        saga_id: String,
        offset: u64,
        other: String,
    },
    #[error("saga {saga_id}: its chain loops")]
    ChainLoops { saga_id: String },
    #[error("record at offset {offset} is for saga {saga_id}, which is not active")]
    NotActive { saga_id: String, offset: u64 },
    #[error("saga {saga_id} record at offset {offset} has seq {seq} after {after}")]
    OutOfSequence {
        saga_id: String,
        offset: u64,
        seq: u32,
        after: u32,
    },
    #[error("definition at offset {offset}: {reason}")]
    BadDefinition { offset: u64, reason: String },
    #[error("unreadable {what} index entry {key}")]
    BadIndexEntry { what: &'static str, key: String },
    #[error("snapshot {path} (offset {offset}): {reason}")]
    BadSnapshot {
        path: std::path::PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "the log starts at offset {start} and no usable snapshot covers the records before it"
    )]
    NoSnapshotBelowStart { start: u64 },
    #[error("the indexer did not reach offset {offset} within {waited:?}")]
    IndexerBehind {
        offset: u64,
        waited: std::time::Duration,
    },
    #[error("the task {what} failed: {reason}")]
    TaskFailed { what: &'static str, reason: String },
    #[error(
        "segment {segment} does not follow the previous one; the log changed under the backup"
    )]
    LogChangedUnderBackup { segment: std::path::PathBuf },
    #[error("the snapshot copied does not fall within the log copied; run the backup again")]
    SnapshotOutsideBackup,
    #[error("the restored log ends at offset {ends_at} with {problems} problems; the backup says {expected}")]
    RestoreMismatch {
        ends_at: u64,
        problems: usize,
        expected: u64,
    },
}
