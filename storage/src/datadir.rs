//! The data directory: `log/`, `index/`, `snapshots/` and the `LOCK` file that keeps two
//! processes from opening one directory. Everything opened from a [`DataDir`] holds the
//! lock until it is dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::faults::SharedFaults;
use crate::files::{lock_dir, DirLock};
use crate::index::IndexStore;
use crate::log::{Log, OpenReport};
use crate::snapshot::{SnapshotConfig, SnapshotStore};
use crate::LogConfig;

pub const LOG_DIR: &str = "log";
pub const INDEX_DIR: &str = "index";
pub const SNAPSHOT_DIR: &str = "snapshots";

#[derive(Clone)]
pub struct DataDir {
    root: PathBuf,
    lock: Arc<DirLock>,
    faults: SharedFaults,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("root", &self.root)
            .field("faults", &self.faults.is_some())
            .finish()
    }
}

impl DataDir {
    /// Creates the directory layout if missing and takes the lock, failing with
    /// [`StorageError::Locked`] (naming the holder's pid) when another process has it.
    pub fn open(root: impl AsRef<Path>) -> Result<DataDir> {
        let root = root.as_ref().to_path_buf();
        for sub in [LOG_DIR, INDEX_DIR, SNAPSHOT_DIR] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(StorageError::io("create directory", &dir))?;
        }
        let lock = lock_dir(&root, true)?;
        Ok(DataDir {
            root,
            lock: Arc::new(lock),
            faults: None,
        })
    }

    /// Takes the lock of an existing data directory without writing anything in it (no
    /// directory is created, the lock file keeps the pid it has): for the commands that
    /// only read — `verify`, `inspect`, `replay`.
    pub fn open_inspect(root: impl AsRef<Path>) -> Result<DataDir> {
        let root = root.as_ref().to_path_buf();
        let lock = lock_dir(&root, false)?;
        Ok(DataDir {
            root,
            lock: Arc::new(lock),
            faults: None,
        })
    }

    /// Makes every write step of what is opened from here ask `faults` first (tests).
    pub fn with_faults(mut self, faults: SharedFaults) -> DataDir {
        self.faults = faults;
        self
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn log_dir(&self) -> PathBuf {
        self.root.join(LOG_DIR)
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join(INDEX_DIR)
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join(SNAPSHOT_DIR)
    }

    /// Opens the log for appends (read-only, healing by itself, when the disk does not
    /// let it be made writable).
    pub fn open_log(&self, config: LogConfig) -> Result<(Log, OpenReport)> {
        Log::open(
            self.log_dir(),
            config,
            self.lock.clone(),
            self.faults.clone(),
        )
    }

    /// Opens the log to read it, changing nothing on disk.
    pub fn open_log_inspect(&self, config: LogConfig) -> Result<(Log, OpenReport)> {
        Log::open_inspect(self.log_dir(), config, self.lock.clone())
    }

    pub fn open_index(&self) -> Result<IndexStore> {
        IndexStore::open(self.index_dir(), self.lock.clone(), self.faults.clone())
    }

    /// A copy of the index store in `scratch` (an empty directory outside the data
    /// directory), opened there: sled writes even when only read, and the commands that
    /// inspect must change nothing in the data directory.
    pub fn open_index_copy(&self, scratch: &Path) -> Result<IndexStore> {
        let copy = scratch.join(INDEX_DIR);
        copy_tree(&self.index_dir(), &copy)?;
        IndexStore::open(copy, self.lock.clone(), None)
    }

    pub fn open_snapshots(&self, config: SnapshotConfig) -> Result<SnapshotStore> {
        SnapshotStore::open(
            self.snapshot_dir(),
            config,
            self.lock.clone(),
            self.faults.clone(),
        )
    }

    /// The snapshot store, to read only (leftover temporary files stay).
    pub fn open_snapshots_inspect(&self, config: SnapshotConfig) -> Result<SnapshotStore> {
        SnapshotStore::open_inspect(self.snapshot_dir(), config, self.lock.clone())
    }
}

/// Copies the files under `from` into `to` (created), keeping the layout.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(StorageError::io("create directory", to))?;
    for entry in std::fs::read_dir(from).map_err(StorageError::io("list", from))? {
        let path = entry.map_err(StorageError::io("list", from))?.path();
        let target = to.join(path.file_name().expect("a listed entry has a name"));
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).map_err(StorageError::io("copy", &path))?;
        }
    }
    Ok(())
}
