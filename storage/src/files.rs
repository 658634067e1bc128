//! The files under the data directory, below any format: the directory lock, fsync of
//! a directory, free space, the segment files' names, and writing zeros. Every other
//! module of the crate builds on these; this one uses none of them but the errors and
//! the fault points.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, StorageError};
use crate::faults::{self, FaultPoint, SharedFaults};

pub const LOCK_FILE: &str = "LOCK";

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

/// Takes the `flock` on `root/LOCK`; with `write`, creates the file and writes this
/// process's pid into it (best effort: a full disk must not keep the server from
/// starting read-only). A read-only filesystem, or `write` false, locks without writing.
pub(crate) fn lock_dir(root: &Path, write: bool) -> Result<DirLock> {
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

pub const SEGMENT_SUFFIX: &str = ".log";
pub(crate) const PREALLOC_SUFFIX: &str = ".prealloc";

/// The file of the segment starting at offset `base` in the log directory `dir`.
pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SEGMENT_SUFFIX}"))
}

/// The base offset a segment file name (`{base:020}.log`) gives.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(SEGMENT_SUFFIX)
        .filter(|digits| digits.len() == 20)
        .and_then(|digits| digits.parse::<u64>().ok())
}

/// Writes zeros over `[from, to)` in 1 MiB writes, giving up early when `stop` is set.
pub(crate) fn write_zeros(
    file: &File,
    from: u64,
    to: u64,
    stop: Option<&AtomicBool>,
) -> std::io::Result<()> {
    static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
    let mut pos = from;
    while pos < to {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "stopped",
            ));
        }
        let n = (to - pos).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}
