//! The data directory: `log/`, `index/`, `snapshots/` and the `LOCK` file that keeps two
//! processes from opening one directory. Everything opened from a [`DataDir`] holds the
//! lock until it is dropped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, StorageError};
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
    _file: File,
    dir: PathBuf,
}

impl DirLock {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    lock: Arc<DirLock>,
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
        let lock = lock_dir(&root)?;
        Ok(DataDir {
            root,
            lock: Arc::new(lock),
        })
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

    pub fn open_log(&self, config: LogConfig) -> Result<(Log, OpenReport)> {
        Log::open(self.log_dir(), config, self.lock.clone())
    }

    pub fn open_index(&self) -> Result<IndexStore> {
        IndexStore::open(self.index_dir(), self.lock.clone())
    }

    pub fn open_snapshots(&self, config: SnapshotConfig) -> Result<SnapshotStore> {
        SnapshotStore::open(self.snapshot_dir(), config, self.lock.clone())
    }
}

fn lock_dir(root: &Path) -> Result<DirLock> {
    let path = root.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StorageError::io("open lock file", &path))?;
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
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(pid.as_bytes()))
        .map_err(StorageError::io("write pid to lock file", &path))?;
    Ok(DirLock {
        _file: file,
        dir: root.to_path_buf(),
    })
}

/// `fsync` of a directory, so a created, renamed or removed entry survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("fsync directory", dir))
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
