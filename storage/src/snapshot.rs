//! The snapshot store: opaque blobs, each taken at a log offset, saved atomically and
//! checked on load. A snapshot "at offset N" reflects every record below N, so replay
//! resumes at N.
//!
//! File `snapshots/{N:020}.snap`: magic "SGLGSNAP" | version u32 LE | offset u64 LE |
//! length u64 LE | crc32 u32 LE (over version, offset, length and data) | data.
//! Saving writes a temporary file, fsyncs it, renames it into place and fsyncs the
//! directory, so a crash leaves either the old set of snapshots or the new one. A
//! snapshot is written and read as a stream ([`SnapshotWriter`], [`SnapshotReader`]):
//! neither side holds the whole body in memory, and the checksum is computed on the way
//! (the header, which covers the length, is written last).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::faults::{self, FaultPoint, SharedFaults};
use crate::files::{sync_dir, DirLock};

const MAGIC: [u8; 8] = *b"SGLGSNAP";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;
const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";
/// A snapshot being written is made durable every this many bytes.
const SYNC_EVERY_BYTES: u64 = 1 << 20;

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
    faults: SharedFaults,
    _lock: Arc<DirLock>,
}

impl SnapshotStore {
    pub(crate) fn open(
        dir: PathBuf,
        config: SnapshotConfig,
        lock: Arc<DirLock>,
        faults: SharedFaults,
    ) -> Result<SnapshotStore> {
        let store = SnapshotStore::open_inspect(dir, config, lock)?;
        for entry in std::fs::read_dir(&store.dir).map_err(StorageError::io("list", &store.dir))? {
            let path = entry.map_err(StorageError::io("list", &store.dir))?.path();
            if path.to_string_lossy().ends_with(TMP_SUFFIX) {
                std::fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
            }
        }
        Ok(SnapshotStore { faults, ..store })
    }

    /// The store, to read only: leftover temporary files stay.
    pub(crate) fn open_inspect(
        dir: PathBuf,
        config: SnapshotConfig,
        lock: Arc<DirLock>,
    ) -> Result<SnapshotStore> {
        if config.keep == 0 {
            return Err(StorageError::InvalidConfig(
                "snapshot keep must be at least 1".into(),
            ));
        }
        Ok(SnapshotStore {
            dir,
            config,
            corrupt_skipped: AtomicU64::new(0),
            faults: None,
            _lock: lock,
        })
    }

    /// Saves `data` as the snapshot at `offset` (replacing one at the same offset), then
    /// removes all but the newest `keep`.
    pub fn save(&self, offset: u64, data: &[u8]) -> Result<SnapshotInfo> {
        let mut writer = self.create(offset)?;
        writer
            .write_all(data)
            .map_err(StorageError::io("write snapshot", writer.tmp.clone()))?;
        writer.finish()
    }

    /// Starts the snapshot at `offset`: write its body into the [`SnapshotWriter`], then
    /// [`SnapshotWriter::finish`] puts it in place. Dropped unfinished, it leaves nothing.
    pub fn create(&self, offset: u64) -> Result<SnapshotWriter<'_>> {
        let tmp = self.dir.join(format!("{offset:020}{TMP_SUFFIX}"));
        let file = faults::check(&self.faults, FaultPoint::SnapshotCreate, &tmp)
            .and_then(|()| File::create(&tmp))
            .map_err(StorageError::io("create snapshot", &tmp))?;
        let mut writer = SnapshotWriter {
            store: self,
            offset,
            tmp: tmp.clone(),
            body: None,
        };
        // Room for the header, written last.
        faults::check(&self.faults, FaultPoint::SnapshotWrite, &tmp)
            .and_then(|()| (&file).write_all(&[0u8; HEADER_BYTES]))
            .map_err(StorageError::io("write snapshot", &tmp))?;
        writer.body = Some(BufWriter::with_capacity(
            1 << 20,
            Hashing {
                file,
                hasher: crc32fast::Hasher::new(),
                bytes: 0,
                unsynced: 0,
                max_bytes: self.config.max_snapshot_bytes,
                faults: self.faults.clone(),
                path: tmp,
            },
        ));
        Ok(writer)
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
        let mut reader = self.reader(info)?;
        let mut data = Vec::with_capacity(usize::try_from(reader.len).unwrap_or(0));
        reader
            .read_to_end(&mut data)
            .map_err(|e| reader.bad(format!("short data: {e}")))?;
        let offset = reader.finish()?;
        Ok(Snapshot { offset, data })
    }

    /// Opens one snapshot to read its body as a stream; its header is checked now, its
    /// checksum by [`SnapshotReader::finish`] once the body is read (what was read
    /// before is only to be trusted then).
    pub fn reader(&self, info: &SnapshotInfo) -> Result<SnapshotReader> {
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
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[8..28]);
        Ok(SnapshotReader {
            file: BufReader::with_capacity(1 << 20, file).take(len),
            hasher,
            len,
            crc,
            offset,
            path: info.path.clone(),
        })
    }

    /// Corrupt snapshots skipped by [`SnapshotStore::load_latest`] since open.
    pub fn corrupt_skipped(&self) -> u64 {
        self.corrupt_skipped.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The header of a snapshot of `len` bytes at `offset`, whose data hashed to `data`.
fn encode_header(offset: u64, len: u64, data: &crc32fast::Hasher) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&offset.to_le_bytes());
    header[20..28].copy_from_slice(&len.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..28]);
    hasher.combine(data);
    header[28..32].copy_from_slice(&hasher.finalize().to_le_bytes());
    header
}

/// The file under a [`SnapshotWriter`]: counts and hashes what passes, within the size
/// limit, asking the injector before each write.
struct Hashing {
    file: File,
    hasher: crc32fast::Hasher,
    bytes: u64,
    /// Bytes written since the file was last made durable.
    unsynced: u64,
    max_bytes: u64,
    faults: SharedFaults,
    path: PathBuf,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes + buf.len() as u64 > self.max_bytes {
            return Err(std::io::Error::other(format!(
                "the snapshot passes max_snapshot_bytes {}",
                self.max_bytes
            )));
        }
        faults::check(&self.faults, FaultPoint::SnapshotWrite, &self.path)?;
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            // A little at a time: one flush of the whole file at the end would hold the
            // disk (and the log's fsyncs behind it) for as long as it takes.
            faults::check(&self.faults, FaultPoint::SnapshotSync, &self.path)?;
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A snapshot being written: its body goes through [`Write`]; [`SnapshotWriter::finish`]
/// writes the header, fsyncs, renames it into place and prunes old snapshots. Dropped
/// before that, the temporary file is removed.
pub struct SnapshotWriter<'a> {
    store: &'a SnapshotStore,
    offset: u64,
    tmp: PathBuf,
    body: Option<BufWriter<Hashing>>,
}

impl SnapshotWriter<'_> {
    /// Bytes of body written so far.
    pub fn bytes(&self) -> u64 {
        self.body
            .as_ref()
            .map_or(0, |b| b.get_ref().bytes + b.buffer().len() as u64)
    }

    pub fn finish(mut self) -> Result<SnapshotInfo> {
        let store = self.store;
        let body = self.body.take().expect("set until finished");
        let tmp = self.tmp.clone();
        let io = |op| StorageError::io(op, &tmp);
        let hashing = body
            .into_inner()
            .map_err(|e| StorageError::io("write snapshot", &tmp)(e.into_error()))?;
        let header = encode_header(self.offset, hashing.bytes, &hashing.hasher);
        faults::check(&store.faults, FaultPoint::SnapshotWrite, &tmp)
            .and_then(|()| hashing.file.write_all_at(&header, 0))
            .map_err(io("write snapshot"))?;
        faults::check(&store.faults, FaultPoint::SnapshotSync, &tmp)
            .and_then(|()| hashing.file.sync_all())
            .map_err(io("fsync snapshot"))?;
        let path = store.dir.join(format!("{:020}{SUFFIX}", self.offset));
        faults::check(&store.faults, FaultPoint::SnapshotRename, &path)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(StorageError::io("rename snapshot", &path))?;
        sync_dir(&store.dir, &store.faults)?;
        for old in store.list()?.into_iter().skip(store.config.keep) {
            std::fs::remove_file(&old.path)
                .map_err(StorageError::io("remove old snapshot", &old.path))?;
        }
        sync_dir(&store.dir, &store.faults)?;
        Ok(SnapshotInfo {
            offset: self.offset,
            path,
            bytes: HEADER_BYTES as u64 + hashing.bytes,
        })
    }

    fn body_mut(&mut self) -> &mut BufWriter<Hashing> {
        self.body.as_mut().expect("set until finished")
    }
}

impl Write for SnapshotWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.body_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.body_mut().flush()
    }
}

impl Drop for SnapshotWriter<'_> {
    fn drop(&mut self) {
        // Renamed away when finished; otherwise what was written goes.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// A snapshot's body as a stream, hashed as it is read.
pub struct SnapshotReader {
    file: std::io::Take<BufReader<File>>,
    hasher: crc32fast::Hasher,
    len: u64,
    crc: u32,
    offset: u64,
    path: PathBuf,
}

impl SnapshotReader {
    /// The offset the snapshot was taken at.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of body the snapshot holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bad(&self, reason: String) -> StorageError {
        StorageError::Snapshot {
            path: self.path.clone(),
            reason,
        }
    }

    /// Checks that the whole body was read and matches its checksum; returns the offset.
    pub fn finish(mut self) -> Result<u64> {
        let mut rest = Vec::new();
        let left = self
            .read_to_end(&mut rest)
            .map_err(|e| self.bad(format!("short data: {e}")))?;
        if left > 0 {
            return Err(self.bad(format!("{left} bytes after the body were not read")));
        }
        if self
            .file
            .get_ref()
            .get_ref()
            .metadata()
            .map(|m| m.len())
            .ok()
            != Some(HEADER_BYTES as u64 + self.len)
        {
            return Err(self.bad("the file changed while it was read".into()));
        }
        if self.hasher.clone().finalize() != self.crc {
            return Err(self.bad("checksum mismatch".into()));
        }
        Ok(self.offset)
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 && self.file.limit() > 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the snapshot file ends before its body",
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The snapshots in the snapshot directory `dir`, newest first (unchecked), without
/// holding the data directory (`sagalog backup` reads them beside a running server).
pub fn list_in(dir: &Path) -> Result<Vec<SnapshotInfo>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        // A data directory that was never served has none (inspection creates nothing).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        other => other.map_err(StorageError::io("list", dir))?,
    };
    for entry in entries {
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
