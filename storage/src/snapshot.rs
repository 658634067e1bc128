//! The snapshot store: opaque blobs, each taken at a log offset, saved atomically and
//! checked on load. A snapshot "at offset N" reflects every record below N, so replay
//! resumes at N.
//!
//! File `snapshots/{N:020}.snap`: magic "SGLGSNAP" | version u32 LE | offset u64 LE |
//! length u64 LE | crc32 u32 LE (over version, offset, length and data) | data.
//! Saving writes a temporary file, fsyncs it, renames it into place and fsyncs the
//! directory, so a crash leaves either the old set of snapshots or the new one.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::datadir::{sync_dir, DirLock};
use crate::error::{Result, StorageError};

const MAGIC: [u8; 8] = *b"SGLGSNAP";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;
const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";

#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// How many of the newest snapshots to keep.
    pub keep: usize,
    /// Largest snapshot accepted on save and load.
    pub max_snapshot_bytes: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            keep: 3,
            max_snapshot_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub offset: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub offset: u64,
    pub path: PathBuf,
    pub bytes: u64,
}

pub struct SnapshotStore {
    dir: PathBuf,
    config: SnapshotConfig,
    corrupt_skipped: AtomicU64,
    _lock: Arc<DirLock>,
}

impl SnapshotStore {
    pub(crate) fn open(
        dir: PathBuf,
        config: SnapshotConfig,
        lock: Arc<DirLock>,
    ) -> Result<SnapshotStore> {
        if config.keep == 0 {
            return Err(StorageError::InvalidConfig(
                "snapshot keep must be at least 1".into(),
            ));
        }
        for entry in std::fs::read_dir(&dir).map_err(StorageError::io("list", &dir))? {
            let path = entry.map_err(StorageError::io("list", &dir))?.path();
            if path.to_string_lossy().ends_with(TMP_SUFFIX) {
                std::fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
            }
        }
        Ok(SnapshotStore {
            dir,
            config,
            corrupt_skipped: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// Saves `data` as the snapshot at `offset` (replacing one at the same offset), then
    /// removes all but the newest `keep`.
    pub fn save(&self, offset: u64, data: &[u8]) -> Result<SnapshotInfo> {
        let path = self.dir.join(format!("{offset:020}{SUFFIX}"));
        if data.len() as u64 > self.config.max_snapshot_bytes {
            return Err(StorageError::Snapshot {
                path,
                reason: format!(
                    "{} bytes exceeds max_snapshot_bytes {}",
                    data.len(),
                    self.config.max_snapshot_bytes
                ),
            });
        }
        let tmp = self.dir.join(format!("{offset:020}{TMP_SUFFIX}"));
        let mut file = File::create(&tmp).map_err(StorageError::io("create snapshot", &tmp))?;
        file.write_all(&encode_header(offset, data))
            .and_then(|()| file.write_all(data))
            .and_then(|()| file.sync_all())
            .map_err(StorageError::io("write snapshot", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(StorageError::io("rename snapshot", &path))?;
        sync_dir(&self.dir)?;
        for old in self.list()?.into_iter().skip(self.config.keep) {
            std::fs::remove_file(&old.path)
                .map_err(StorageError::io("remove old snapshot", &old.path))?;
        }
        sync_dir(&self.dir)?;
        Ok(SnapshotInfo {
            offset,
            path,
            bytes: (HEADER_BYTES + data.len()) as u64,
        })
    }

    /// Snapshots on disk, newest first (unchecked).
    pub fn list(&self) -> Result<Vec<SnapshotInfo>> {
        list_in(&self.dir)
    }

    /// The newest snapshot that passes its checks; corrupt ones are skipped with a
    /// warning (and counted), falling back to older ones. `None` when none is usable.
    pub fn load_latest(&self) -> Result<Option<Snapshot>> {
        for info in self.list()? {
            match self.load(&info) {
                Ok(snapshot) => return Ok(Some(snapshot)),
                Err(e) => {
                    self.corrupt_skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "skipping unusable snapshot, falling back to an older one");
                }
            }
        }
        Ok(None)
    }

    /// Loads and checks one snapshot.
    pub fn load(&self, info: &SnapshotInfo) -> Result<Snapshot> {
        let bad = |reason: String| StorageError::Snapshot {
            path: info.path.clone(),
            reason,
        };
        let mut file =
            File::open(&info.path).map_err(StorageError::io("open snapshot", &info.path))?;
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact(&mut header)
            .map_err(|e| bad(format!("short header: {e}")))?;
        if header[0..8] != MAGIC {
            return Err(bad("bad magic".into()));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads {VERSION}"
            )));
        }
        let offset = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(header[20..28].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(header[28..32].try_into().expect("4 bytes"));
        if offset != info.offset {
            return Err(bad(format!(
                "header says offset {offset}, file name says {}",
                info.offset
            )));
        }
        if len > self.config.max_snapshot_bytes || len + HEADER_BYTES as u64 != info.bytes {
            return Err(bad(format!(
                "header says {len} bytes of data, file holds {}",
                info.bytes.saturating_sub(HEADER_BYTES as u64)
            )));
        }
        let mut data = vec![0u8; len as usize];
        file.read_exact(&mut data)
            .map_err(|e| bad(format!("short data: {e}")))?;
        if checksum(&header[8..28], &data) != crc {
            return Err(bad("checksum mismatch".into()));
        }
        Ok(Snapshot { offset, data })
    }

    /// Corrupt snapshots skipped by [`SnapshotStore::load_latest`] since open.
    pub fn corrupt_skipped(&self) -> u64 {
        self.corrupt_skipped.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn checksum(header_fields: &[u8], data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header_fields);
    hasher.update(data);
    hasher.finalize()
}

fn encode_header(offset: u64, data: &[u8]) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&offset.to_le_bytes());
    header[20..28].copy_from_slice(&(data.len() as u64).to_le_bytes());
    let crc = checksum(&header[8..28], data);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The snapshots in the snapshot directory `dir`, newest first (unchecked), without
/// holding the data directory (`sagalog backup` reads them beside a running server).
pub fn list_in(dir: &Path) -> Result<Vec<SnapshotInfo>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StorageError::io("list", dir))? {
        let entry = entry.map_err(StorageError::io("list", dir))?;
        let name = entry.file_name();
        let Some(offset) = name
            .to_string_lossy()
            .strip_suffix(SUFFIX)
            .filter(|d| d.len() == 20)
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = entry
            .metadata()
            .map_err(StorageError::io("stat", entry.path()))?
            .len();
        found.push(SnapshotInfo {
            offset,
            path: entry.path(),
            bytes,
        });
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.offset));
    Ok(found)
}
