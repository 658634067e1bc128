//! The offline commands (docs/recovery.md) over a data directory no server holds (except
//! [`backup`], which reads beside a running server): verify, recover, replay, inspect,
//! backup and restore. `snapshot` and `reindex` are
//! [`Engine::snapshot`](crate::Engine::snapshot) on an opened engine and
//! [`Engine::reindex`](crate::Engine::reindex).
//!
//! Each returns a report the binary prints for a person or as JSON; none prints itself.
//! `verify` checks, `recover` repairs, `replay` and `inspect` read, `backup` and
//! `restore` copy; none parses the log's bytes itself (the storage crate's checker,
//! segment names and frame reader do).

use std::path::Path;

use sagalog_storage::LOG_DIR;

use crate::error::{EngineError, Result};

mod backup;
mod recover;
mod verify;

pub use backup::{backup, restore, Manifest, RestoreReport};
pub use recover::{inspect, recover, replay, RecoverReport, ReplaySummary};
pub use verify::{verify, IndexCheck, SnapshotCheck, VerifyReport};

/// Reports progress of long steps (the binary draws bars; tests pass [`NoProgress`]).
pub trait Progress {
    /// A step of `total` units (bytes or items) begins.
    fn begin(&self, _step: &str, _total: u64) {}
    fn advance(&self, _units: u64) {}
    fn end(&self) {}
}

pub struct NoProgress;

impl Progress for NoProgress {}

/// `dir` must be a data directory already: offline commands never make one.
pub fn require_data_dir(dir: &Path) -> Result<()> {
    if dir.join(LOG_DIR).is_dir() {
        Ok(())
    } else {
        Err(EngineError::InvalidRequest {
            field: "data_dir",
            message: format!(
                "{} is not a sagalog data directory (it has no log/)",
                dir.display()
            ),
        })
    }
}

/// An I/O error on `path` while doing `op`, as the engine reports it.
pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_path_buf();
    move |e| EngineError::Storage(sagalog_storage::StorageError::io(op, path)(e))
}
