//! The data directory: `log/`, `index/`, `snapshots/` and the `LOCK` file that keeps two
//! processes from opening one directory. Everything opened from a [`DataDir`] holds the
//! lock until it is dropped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::faults::{self, FaultPoint, SharedFaults};
use crate::index::IndexStore;
use crate::log::{Log, OpenReport};
use crate::snapshot::{SnapshotConfig, SnapshotStore};
use crate::LogConfig;

pub const LOCK_FILE: &str = "LOCK";
pub const LOG_DIR: &str = "log";
pub const INDEX_DIR: &str = "index";
pub const SNAPSHOT_DIR: &str = "snapshots";

/// An exclusive `flock` on `DIR/LOCK`, released when the last holder drops it.
#[derive(Debug)]
pub struct DirLock {
    /// `None` for a directory inspected that has no lock file (nothing ever opened it
    /// for writing, so nothing can hold it).
    _file: Option<File>,
    dir: PathBuf,
}

impl DirLock {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

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

/// Takes the `flock` on `root/LOCK`; with `write`, creates the file and writes this
/// process's pid into it (best effort: a full disk must not keep the server from
/// starting read-only). A read-only filesystem, or `write` false, locks without writing.
fn lock_dir(root: &Path, write: bool) -> Result<DirLock> {
    let path = root.join(LOCK_FILE);
    let opened = if write {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
        {
            Err(e) if e.raw_os_error() == Some(30) => File::open(&path).map(|f| (f, false)),
            other => other.map(|f| (f, true)),
        }
    } else {
        match File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DirLock {
                    _file: None,
                    dir: root.to_path_buf(),
                })
            }
            other => other.map(|f| (f, false)),
        }
    };
    let (mut file, writable) = opened.map_err(StorageError::io("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the holder writes its pid after locking.
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "pid unknown".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(StorageError::Locked {
                dir: root.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StorageError::io("lock", &path)(e));
        }
    }
    if writable {
        let pid = std::process::id().to_string();
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "could not write the pid into the lock file");
        }
    }
    Ok(DirLock {
        _file: Some(file),
        dir: root.to_path_buf(),
    })
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

/// `fsync` of a directory, so a created, renamed or removed entry survives a crash.
pub(crate) fn sync_dir(dir: &Path, faults: &SharedFaults) -> Result<()> {
    faults::check(faults, FaultPoint::DirSync, dir)
        .and_then(|()| File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("fsync directory", dir))
}

/// `fsync` of a directory, for tools that create or rename entries outside the log
/// (backup, restore).
pub fn fsync_dir(dir: &Path) -> Result<()> {
    sync_dir(dir, &None)
}

/// Free and total bytes of the filesystem that holds `path` (`statvfs`; free is what an
/// unprivileged writer may use).
pub fn disk_space(path: &Path) -> Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path)
        .map_err(|e| StorageError::io("statvfs", path)(std::io::Error::from(e)))?;
    Ok((
        stat.f_bavail.saturating_mul(stat.f_frsize),
        stat.f_blocks.saturating_mul(stat.f_frsize),
    ))
}
