//! The snapshots' bookkeeping: the store of snapshot files, how many records were
//! written since the last one (the timer thread takes one every
//! `snapshot_every_records`), the capture epochs, the one-at-a-time turn, and the
//! offset and time of the latest (for stats and retention). Taking one is `capture`'s.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use sagalog_storage::{SnapshotInfo, SnapshotStore};

pub(crate) struct Snapshots {
    store: SnapshotStore,
    every_records: u64,
    /// Records appended since the latest cut (and replayed at open).
    since: AtomicU64,
    /// The capture epoch of the latest snapshot (see `table`).
    epoch: AtomicU32,
    /// Held while a snapshot is taken: one at a time.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// A periodic snapshot is being taken (beside the timers).
    periodic: AtomicBool,
    /// The latest snapshot's offset (0: none) and its file's time in unix ms.
    offset: AtomicU64,
    at_ms: AtomicU64,
}

impl Snapshots {
    /// `replayed` records count towards the next snapshot: a long replay is followed
    /// by a snapshot soon, so the next start is short.
    pub fn new(store: SnapshotStore, every_records: u64, offset: u64, replayed: u64) -> Snapshots {
        let at_ms = written_at_ms(&store, offset);
        Snapshots {
            store,
            every_records,
            since: AtomicU64::new(replayed),
            epoch: AtomicU32::new(0),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            periodic: AtomicBool::new(false),
            offset: AtomicU64::new(offset),
            at_ms: AtomicU64::new(at_ms),
        }
    }

    pub fn store(&self) -> &SnapshotStore {
        &self.store
    }

    /// Counts `records` appended; true when a snapshot falls due with them.
    pub fn appended(&self, records: u64) -> bool {
        let before = self.since.fetch_add(records, Ordering::Relaxed);
        self.every_records > 0 && before + records >= self.every_records
    }

    /// Whether a periodic snapshot is due and none is being taken; if so, it is from
    /// now on until [`Snapshots::periodic_done`].
    pub fn begin_periodic(&self) -> bool {
        let due =
            self.every_records > 0 && self.since.load(Ordering::Relaxed) >= self.every_records;
        due && !self.periodic.swap(true, Ordering::AcqRel)
    }

    /// The periodic snapshot ended; a failed one is tried again after as many records.
    pub fn periodic_done(&self, failed: bool) {
        if failed {
            self.since.store(0, Ordering::Relaxed);
        }
        self.periodic.store(false, Ordering::Release);
    }

    /// Waits for the turn to take a snapshot.
    pub async fn turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.turn.clone().lock_owned().await
    }

    /// The epoch of the next capture.
    pub fn next_epoch(&self) -> u32 {
        self.epoch.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The snapshot of the cut at `offset` is written as `info`; `head` reads the log's
    /// head, last (the records past the cut count towards the next one).
    pub fn taken(&self, offset: u64, info: &SnapshotInfo, head: impl FnOnce() -> u64) {
        self.offset.store(offset, Ordering::Relaxed);
        // The file's own time, as a restart reads it: the gauge keeps its value.
        self.at_ms.store(modified_ms(&info.path), Ordering::Relaxed);
        self.since
            .store(head().saturating_sub(offset), Ordering::Relaxed);
    }

    /// The latest snapshot's offset (0: none).
    pub fn offset(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// When the latest snapshot was written, in unix ms (0: none, or unknown).
    pub fn at_ms(&self) -> u64 {
        self.at_ms.load(Ordering::Relaxed)
    }
}

/// When the snapshot at `offset` was written: its file's modification time in unix ms,
/// or 0 when there is no such snapshot (offset 0 is "none") or the time is unreadable.
fn written_at_ms(snapshots: &SnapshotStore, offset: u64) -> u64 {
    if offset == 0 {
        return 0;
    }
    let Ok(list) = snapshots.list() else { return 0 };
    list.iter()
        .find(|info| info.offset == offset)
        .map_or(0, |info| modified_ms(&info.path))
}

/// A file's modification time in unix ms, 0 when it cannot be read.
fn modified_ms(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}
