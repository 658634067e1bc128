//! The indexer's progress, as the rest of the engine sees it: how far the indexes
//! reflect the log (the watermark), the finished sagas waiting for it before they may
//! leave memory, and the filter of ids that are in the `saga` index. The indexer thread
//! moves it on; transactions wait on it (for room, or for a saga to be indexed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sagalog_storage::{IndexStore, Keyspace};
use tokio::sync::watch;

use crate::error::{EngineError, Inconsistency, Result};
use crate::service::bloom::FinishedIds;

/// Longest a caller waits for the indexer (a bounded wait, then an error).
pub(crate) const INDEX_WAIT: Duration = Duration::from_secs(10);
/// Ids read from sled between two holds of the filter's write lock while it fills.
const FILL_CHUNK_IDS: usize = 4096;

pub(crate) struct Progress {
    /// Finished sagas waiting for the indexer, by the offset of their last record.
    unindexed: Mutex<Unindexed>,
    /// Most finished sagas that may wait; writes wait beyond it.
    max_unindexed: usize,
    /// Ids of the sagas in the `saga` index: a new id needs no sled lookup.
    finished_ids: RwLock<FinishedIds>,
    /// Everything below it is indexed.
    indexed: watch::Sender<u64>,
}

#[derive(Default)]
struct Unindexed {
    by_offset: BTreeMap<u64, Vec<Arc<str>>>,
    len: usize,
}

impl Progress {
    /// At `watermark`, with `unindexed` (finished sagas replay found past it, by the
    /// offset of their last record) waiting.
    pub fn new(watermark: u64, unindexed: Vec<(u64, Arc<str>)>, max_unindexed: usize) -> Progress {
        let mut waiting = Unindexed::default();
        for (offset, key) in unindexed {
            waiting.by_offset.entry(offset).or_default().push(key);
            waiting.len += 1;
        }
        Progress {
            unindexed: Mutex::new(waiting),
            max_unindexed,
            finished_ids: RwLock::new(FinishedIds::default()),
            indexed: watch::channel(watermark).0,
        }
    }

    /// Everything below it is indexed.
    pub fn watermark(&self) -> u64 {
        *self.indexed.borrow()
    }

    /// False only when no finished saga in the index has the id `saga_id`.
    pub fn may_have_finished(&self, saga_id: &str) -> bool {
        self.finished_ids.read().may_contain(saga_id)
    }

    /// The filter the indexer adds the ids it indexes to.
    pub fn finished_ids(&self) -> &RwLock<FinishedIds> {
        &self.finished_ids
    }

    /// Saga `key` finished with its record at `last_offset`: it waits for the indexer.
    pub fn finished(&self, last_offset: u64, key: Arc<str>) {
        let mut unindexed = self.unindexed.lock();
        unindexed
            .by_offset
            .entry(last_offset)
            .or_default()
            .push(key);
        unindexed.len += 1;
    }

    /// The indexer committed everything below `watermark`: the finished sagas it
    /// covers, which may leave memory now. [`Progress::publish`] then tells the waiters.
    pub fn take_indexed(&self, watermark: u64) -> Vec<Arc<str>> {
        let mut finished = Vec::new();
        let mut unindexed = self.unindexed.lock();
        while let Some(entry) = unindexed.by_offset.first_entry() {
            if *entry.key() >= watermark {
                break;
            }
            let keys = entry.remove();
            unindexed.len -= keys.len();
            finished.extend(keys);
        }
        finished
    }

    /// Moves the watermark to `watermark`, waking who waits on it.
    pub fn publish(&self, watermark: u64) {
        self.indexed.send_replace(watermark);
    }

    /// Writes wait while too much is waiting for the indexer (it bounds memory), for
    /// [`INDEX_WAIT`] at most.
    pub async fn wait_for_room(&self) -> Result<()> {
        if self.unindexed.lock().len < self.max_unindexed {
            return Ok(());
        }
        let mut indexed = self.indexed.subscribe();
        let wait = async {
            while self.unindexed.lock().len >= self.max_unindexed {
                if indexed.changed().await.is_err() {
                    return Err(EngineError::Closed);
                }
            }
            Ok(())
        };
        tokio::time::timeout(INDEX_WAIT, wait)
            .await
            .map_err(|_| EngineError::AtLimit {
                what: "records waiting for the indexer",
                limit: self.max_unindexed,
            })?
    }

    /// Waits until the indexes reflect the log below `offset`, for [`INDEX_WAIT`] at most.
    pub async fn wait_indexed(&self, offset: u64) -> Result<()> {
        let mut indexed = self.indexed.subscribe();
        let reached = tokio::time::timeout(INDEX_WAIT, indexed.wait_for(|w| *w >= offset)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(EngineError::Closed),
            Err(_) => Err(Inconsistency::IndexerBehind {
                offset,
                waited: INDEX_WAIT,
            }
            .into()),
        }
    }

    /// Puts the ids of the `saga` keyspace of `index` into the filter, a chunk per
    /// hold of its write lock (read from sled first: deciding takes the read lock
    /// under a shard lock), then lets it answer "no". Stops early when `stopping`.
    pub fn fill_finished_ids(
        &self,
        index: &IndexStore,
        sagas: &Keyspace,
        stopping: impl Fn() -> bool,
    ) -> Result<()> {
        let mut ids = index.scan_prefix(sagas, b"").peekable();
        while ids.peek().is_some() {
            if stopping() {
                return Ok(());
            }
            let chunk = ids
                .by_ref()
                .take(FILL_CHUNK_IDS)
                .map(|entry| entry.map(|(id, _)| id))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut filter = self.finished_ids.write();
            for id in chunk {
                filter.insert(&String::from_utf8_lossy(&id));
            }
        }
        self.finished_ids.write().set_ready();
        Ok(())
    }
}
