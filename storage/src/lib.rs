//! sagalog-storage: the durable log under sagalog, and the stores derived from it.
//!
//! It stores opaque records at dense `u64` offsets and knows nothing of sagas:
//! - [`Log`]: segmented, CRC-framed, group-committed appends; reads by offset; tail
//!   subscriptions ([`Tail`]) woken by each commit; torn-tail recovery on open; retention.
//! - [`IndexStore`]: sled keyspaces for derived indexes, written in one batch per group
//!   commit together with a watermark, caught up from the log by [`index::catch_up`].
//! - [`SnapshotStore`]: atomically saved, checksummed blobs taken at a log offset.
//! - [`DataDir`]: the directory that holds all three, and the lock that keeps it to one
//!   process.
//!
//! The log is the only source of truth: indexes and snapshots are caches of it that
//! know the offset they reflect.

mod alloc;
pub mod check;
mod config;
mod datadir;
mod error;
pub mod faults;
mod files;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
mod heal;
pub mod index;
mod log;
pub mod reserve;
mod scan;
mod segments;
mod shared;
pub mod snapshot;
mod tail;
#[doc(hidden)]
pub mod testing;
mod writer;

pub use config::{FsyncPolicy, LogConfig, LogObserver};
pub use datadir::{DataDir, INDEX_DIR, LOG_DIR, SNAPSHOT_DIR};
pub use error::{Result, StorageError};
pub use faults::{FaultInjector, FaultPoint, Faults, SharedFaults};
pub use files::{disk_space, fsync_dir, segment_path, DirLock, LOCK_FILE, SEGMENT_SUFFIX};
pub use index::{IndexBatch, IndexStore, Keyspace};
pub use log::{Appending, Log, OpenReport, RetentionReport, SealedSegment};
pub use reserve::Reserve;
pub use segments::TailCut;
pub use shared::{LogRecord, LogStats, WriteFailure};
pub use snapshot::{Snapshot, SnapshotConfig, SnapshotInfo, SnapshotStore};
pub use tail::Tail;
