//! The reserve: a file of zeros that the data directory keeps beside the log, so that
//! a server stopped on a full disk can start again. Opening needs a little room (the
//! index store writes as it opens); on a disk with none, the engine releases the
//! reserve before it opens anything, serves reads, and the server refuses writes until
//! the reserve can be kept again — so the room it freed is never spent on records.
//! (CockroachDB's "ballast file" is the same idea, released by hand there.)
//!
//! The reserve is `DIR/reserve`, written as `reserve.tmp`, fsynced and renamed, so a
//! crash never leaves one of the wrong size.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};
use crate::files::{disk_space, sync_dir};

pub const RESERVE_FILE: &str = "reserve";
const RESERVE_TMP: &str = "reserve.tmp";

#[derive(Debug, Clone)]
pub struct Reserve {
    dir: PathBuf,
    bytes: u64,
}

impl Reserve {
    /// The reserve of `bytes` in the data directory `dir` (0: none is kept).
    pub fn new(dir: &Path, bytes: u64) -> Reserve {
        Reserve {
            dir: dir.to_path_buf(),
            bytes,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(RESERVE_FILE)
    }

    /// Whether the reserve is on disk, whole.
    pub fn is_kept(&self) -> bool {
        std::fs::metadata(self.path()).is_ok_and(|m| m.len() == self.bytes)
    }

    /// Removes the reserve (true when there was one), giving its room back.
    pub fn release(&self) -> Result<bool> {
        let _ = std::fs::remove_file(self.dir.join(RESERVE_TMP));
        let path = self.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir, &None)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io("remove the reserve", &path)(e)),
        }
    }

    /// Writes the reserve when it is not kept and the disk has room for it and as much
    /// again as `spare_bytes`; true when it is kept afterwards.
    pub fn keep(&self, spare_bytes: u64) -> Result<bool> {
        if self.bytes == 0 || self.is_kept() {
            return Ok(self.bytes > 0);
        }
        let (free, _) = disk_space(&self.dir)?;
        if free < self.bytes.saturating_add(spare_bytes) {
            return Ok(false);
        }
        let tmp = self.dir.join(RESERVE_TMP);
        let written = File::create(&tmp).and_then(|file| {
            crate::files::write_zeros(&file, 0, self.bytes, None)?;
            file.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(StorageError::io("write the reserve", &tmp)(e));
        }
        std::fs::rename(&tmp, self.path())
            .map_err(StorageError::io("put the reserve in place", &tmp))?;
        sync_dir(&self.dir, &None)?;
        Ok(true)
    }
}
