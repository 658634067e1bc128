//! The storage crate's one error type. Every variant names the file, segment or offset it
//! is about, so an operator reading it knows where to look.

use std::path::PathBuf;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("data directory {dir} is in use by another process ({holder}); stop it or use another directory")]
    Locked { dir: PathBuf, holder: String },

    #[error(
        "corrupt record in segment {segment} at offset {offset} (byte {position}): {reason}; \
         the records after it are intact, so this is not a torn tail: run `sagalog recover`"
    )]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        position: u64,
        reason: String,
    },

    #[error(
        "segment {segment} has format version {version}, this build reads version {supported}"
    )]
    UnsupportedFormat {
        segment: PathBuf,
        version: u32,
        supported: u32,
    },

    #[error(
        "log segments are not contiguous: {segment} starts at offset {found} and holds \
         {records} records, but the log before it ends at offset {expected}, so records \
         {expected}..{found} are missing; nothing was changed. Restore the data directory \
         from a backup (RUNBOOKS.md, \"Restore\")"
    )]
    SegmentGap {
        segment: PathBuf,
        expected: u64,
        found: u64,
        records: u64,
    },

    #[error(
        "sagalog recover does not repair this: {problem}. The segments from there on hold \
         acknowledged records, and cutting the log there would drop them; nothing was \
         changed. Restore the data directory from a backup (RUNBOOKS.md, \"Restore\")"
    )]
    NotRepairable { problem: String },

    #[error("the log directory {dir} holds no segment")]
    NoSegments { dir: PathBuf },

    #[error("offset {offset} is not in the log (it holds offsets {start}..{next})")]
    OffsetOutOfRange { offset: u64, start: u64, next: u64 },

    #[error("record of {bytes} bytes exceeds max_record_bytes {max}")]
    RecordTooLarge { bytes: usize, max: u32 },

    #[error("empty records cannot be appended")]
    EmptyRecord,

    #[error("append of {records} records / {bytes} bytes exceeds one batch (max_batch_records {max_records}, max_batch_bytes {max_bytes}); split it")]
    AppendTooLarge {
        records: usize,
        bytes: usize,
        max_records: usize,
        max_bytes: usize,
    },

    #[error("write to {segment} failed, nothing of this append was kept: {reason}")]
    WriteFailed { segment: PathBuf, reason: String },

    #[error(
        "the log takes no writes until it has reopened itself from disk (it retries by \
         itself): {reason}"
    )]
    Poisoned { reason: String },

    #[error("the log was opened read-only, for inspection")]
    ReadOnly,

    #[error(
        "a roll to segment {segment} failed ({cause}) and the file could not be removed \
         ({reason}); the log takes no writes until it is"
    )]
    LeftoverSegment {
        segment: PathBuf,
        cause: String,
        reason: String,
    },

    #[error(
        "the log refuses writes while {reason}; it takes them again by itself once that clears"
    )]
    Refusing { reason: String },

    #[error("the log is closed")]
    Closed,

    #[error("invalid storage configuration: {0}")]
    InvalidConfig(String),

    #[error("index store {path}: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },

    #[error("index watermark {watermark} is {problem} (log holds offsets {start}..{next}); rebuild the index")]
    IndexOutOfStep {
        watermark: u64,
        start: u64,
        next: u64,
        problem: &'static str,
    },

    #[error("snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
}

/// errno values of a disk that cannot take writes now: out of space or quota, an I/O
/// error, a read-only filesystem.
const DISK_FAILURES: [i32; 4] = [28, 122, 5, 30];

impl StorageError {
    /// Whether the error is the disk refusing a write (full, failing or read-only), as
    /// opposed to damage in the data or a mistake of the caller.
    pub fn is_disk_failure(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => source
                .raw_os_error()
                .is_some_and(|errno| DISK_FAILURES.contains(&errno)),
            StorageError::Index {
                source: sled::Error::Io(source),
                ..
            } => source
                .raw_os_error()
                .is_some_and(|errno| DISK_FAILURES.contains(&errno)),
            StorageError::LeftoverSegment { .. } => true,
            _ => false,
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io { op, path, source }
    }
}
