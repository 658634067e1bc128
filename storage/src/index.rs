//! Derived indexes on sled: ordered keys in named keyspaces, prefix and range scans,
//! batched writes, and a watermark saying how much of the log the indexes reflect.
//!
//! Invariant: the indexes reflect exactly the log records below the watermark (the next
//! log offset they have not seen). All keyspaces live in one sled tree so that one
//! `sled::Batch` carries a whole group commit's index writes *and* the new watermark
//! atomically: after a crash sled recovers a prefix of batches, so the watermark never
//! claims writes that were lost. Owners call [`catch_up`] on open to replay the log
//! from the watermark, and rebuild from nothing with [`IndexStore::clear`] when the
//! watermark is ahead of the log (a tail was cut) or behind its retention.

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::faults::{self, FaultPoint, SharedFaults};
use crate::files::DirLock;
use crate::log::Log;
use crate::shared::LogRecord;

const WATERMARK_KEY: &[u8] = b"\xffmeta\0watermark";

/// A named group of keys. Names are short ASCII words; keys of different keyspaces never
/// collide because each is prefixed with its keyspace's name and a zero byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: Vec<u8>,
}

impl Keyspace {
    /// # Panics
    /// When `name` is empty or not `[a-z0-9_]`: keyspaces are fixed in code.
    pub fn new(name: &str) -> Keyspace {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "keyspace name {name:?} must be [a-z0-9_]+"
        );
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        Keyspace { prefix }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        full
    }
}

/// Index writes to apply together, with the watermark, in [`IndexStore::commit`].
#[derive(Default)]
pub struct IndexBatch {
    batch: sled::Batch,
    writes: usize,
}

impl IndexBatch {
    pub fn put(&mut self, space: &Keyspace, key: &[u8], value: &[u8]) {
        self.batch.insert(space.key(key), value);
        self.writes += 1;
    }

    pub fn delete(&mut self, space: &Keyspace, key: &[u8]) {
        self.batch.remove(space.key(key));
        self.writes += 1;
    }

    pub fn len(&self) -> usize {
        self.writes
    }

    pub fn is_empty(&self) -> bool {
        self.writes == 0
    }
}

/// A key and value read back, the key without its keyspace prefix.
pub type Entry = (Vec<u8>, Vec<u8>);

pub struct IndexStore {
    db: sled::Db,
    path: PathBuf,
    faults: SharedFaults,
    _lock: Arc<DirLock>,
}

impl IndexStore {
    pub(crate) fn open(
        path: PathBuf,
        lock: Arc<DirLock>,
        faults: SharedFaults,
    ) -> Result<IndexStore> {
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|source| StorageError::Index {
                path: path.clone(),
                source,
            })?;
        Ok(IndexStore {
            db,
            path,
            faults,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(sled::Error) -> StorageError + '_ {
        |source| StorageError::Index {
            path: self.path.clone(),
            source,
        }
    }

    /// The next log offset the indexes have not seen (0 for a new store).
    pub fn watermark(&self) -> Result<u64> {
        let value = self.db.get(WATERMARK_KEY).map_err(self.err())?;
        Ok(value.map_or(0, |v| {
            u64::from_be_bytes(v.as_ref().try_into().expect("8-byte watermark"))
        }))
    }

    /// Applies `batch` and moves the watermark to `next_offset`, atomically.
    /// The watermark never moves back; asking it to is a bug in the caller.
    pub fn commit(&self, mut batch: IndexBatch, next_offset: u64) -> Result<()> {
        let current = self.watermark()?;
        assert!(
            next_offset >= current,
            "index watermark would move back from {current} to {next_offset}"
        );
        batch
            .batch
            .insert(WATERMARK_KEY, &next_offset.to_be_bytes());
        faults::check(&self.faults, FaultPoint::IndexCommit, &self.path)
            .map_err(|e| self.err()(sled::Error::Io(e)))?;
        self.db.apply_batch(batch.batch).map_err(self.err())
    }

    /// Writes one entry outside the watermarked batches: for state that is not derived
    /// from the log's records alone, such as the relay's position (sled makes it
    /// durable within its flush interval; [`IndexStore::flush`] forces it).
    pub fn put(&self, space: &Keyspace, key: &[u8], value: &[u8]) -> Result<()> {
        self.db
            .insert(space.key(key), value)
            .map(|_| ())
            .map_err(self.err())
    }

    /// Applies `batch` atomically without moving the watermark: for pruning entries of
    /// records that retention removed (the watermark is already past them).
    pub fn apply(&self, batch: IndexBatch) -> Result<()> {
        self.db.apply_batch(batch.batch).map_err(self.err())
    }

    pub fn get(&self, space: &Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get(space.key(key))
            .map_err(self.err())?
            .map(|v| v.to_vec()))
    }

    /// Every entry whose key starts with `prefix`, in key order (`.rev()` for newest first).
    pub fn scan_prefix(
        &self,
        space: &Keyspace,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<Entry>> + '_ {
        let strip = space.prefix.len();
        self.db.scan_prefix(space.key(prefix)).map(move |item| {
            item.map(|(k, v)| (k[strip..].to_vec(), v.to_vec()))
                .map_err(self.err())
        })
    }

    /// Every entry whose key (without the keyspace prefix) lies in `range`, in key order.
    pub fn range<'a, R: RangeBounds<&'a [u8]>>(
        &self,
        space: &Keyspace,
        range: R,
    ) -> impl DoubleEndedIterator<Item = Result<Entry>> + '_ {
        let strip = space.prefix.len();
        let start = match range.start_bound() {
            Bound::Included(k) => Bound::Included(space.key(k)),
            Bound::Excluded(k) => Bound::Excluded(space.key(k)),
            Bound::Unbounded => Bound::Included(space.prefix.clone()),
        };
        let end = match range.end_bound() {
            Bound::Included(k) => Bound::Included(space.key(k)),
            Bound::Excluded(k) => Bound::Excluded(space.key(k)),
            Bound::Unbounded => {
                let mut past = space.prefix.clone();
                *past.last_mut().expect("prefix ends in a zero byte") = 1;
                Bound::Excluded(past)
            }
        };
        self.db.range((start, end)).map(move |item| {
            item.map(|(k, v)| (k[strip..].to_vec(), v.to_vec()))
                .map_err(self.err())
        })
    }

    /// Drops every index entry and the watermark, for a rebuild from the log.
    pub fn clear(&self) -> Result<()> {
        self.db.clear().map_err(self.err())?;
        self.flush()
    }

    /// Makes everything committed so far durable (sled otherwise flushes in the background).
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(self.err())
    }
}

/// Big-endian encoding, so that numeric keys sort in numeric order.
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// What turns log records into index writes for [`catch_up`]: a closure over each
/// record, or a type that also writes something per chunk (index entries gathered
/// over many records).
pub trait IndexWriter<E> {
    fn add(&mut self, record: &LogRecord, batch: &mut IndexBatch) -> Result<(), E>;

    /// Called after the chunk's records, before the chunk is committed.
    fn end_chunk(&mut self, _batch: &mut IndexBatch) -> Result<(), E> {
        Ok(())
    }
}

impl<E, F: FnMut(&LogRecord, &mut IndexBatch) -> Result<(), E>> IndexWriter<E> for F {
    fn add(&mut self, record: &LogRecord, batch: &mut IndexBatch) -> Result<(), E> {
        self(record, batch)
    }
}

/// Brings `index` up to the log's head: reads the records from the watermark on in
/// chunks of `chunk_records`, lets `writer` turn each into index writes, and commits
/// each chunk with its watermark. Returns how many records were applied.
///
/// Fails with [`StorageError::IndexOutOfStep`] when the watermark is past the log's head
/// (a cut tail took records the index had seen) or below its start (retention removed
/// records the index never saw): the owner must then clear and rebuild.
pub fn catch_up<E: From<StorageError>>(
    log: &Log,
    index: &IndexStore,
    chunk_records: usize,
    mut writer: impl IndexWriter<E>,
) -> Result<u64, E> {
    let watermark = index.watermark()?;
    let (start, next) = (log.start_offset(), log.next_offset());
    let problem = if watermark > next {
        Some("ahead of the log's head")
    } else if watermark < start {
        Some("below the oldest record the log still holds")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(StorageError::IndexOutOfStep {
            watermark,
            start,
            next,
            problem,
        }
        .into());
    }
    let mut applied = 0u64;
    let mut from = watermark;
    while from < next {
        let records = log.read_batch(from, chunk_records.max(1), usize::MAX)?;
        let mut batch = IndexBatch::default();
        for record in &records {
            writer.add(record, &mut batch)?;
        }
        writer.end_chunk(&mut batch)?;
        let last = records
            .last()
            .expect("offsets below the head are readable")
            .offset;
        index.commit(batch, last + 1)?;
        applied += records.len() as u64;
        from = last + 1;
    }
    Ok(applied)
}
