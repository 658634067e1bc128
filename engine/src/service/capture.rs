//! Taking a snapshot. Writes stop only for its *cut*: with the gate held exclusively
//! (no write in flight), it notes the log offset, the definitions and the counters, and
//! starts a copy-on-write capture in every shard's table (see `table`). Writes then go
//! on while the sagas are read a chunk at a time, each shard lock held for one chunk,
//! and streamed to the snapshot file; memory holds a chunk, one shard's ids and the
//! images of the sagas changed meanwhile, never a copy of the whole state. The body's
//! format is `replay`'s, which reads it back.

use std::io::Write;
use std::sync::Arc;

use bincode::Encode;
use sagalog_storage::{SnapshotInfo, StorageError};

use crate::error::{EngineError, Result};
use crate::service::inner::{task_failed, Inner};
use crate::service::projection::Counters;
use crate::service::replay::{SnapshotSaga, SNAPSHOT_CHUNK_SAGAS, SNAPSHOT_FORMAT};
use crate::service::table::Slot;

impl Inner {
    /// Takes a snapshot: writes stop only for its cut, then it is captured and written
    /// off the runtime while they go on. One at a time: the blocking task that captures
    /// and writes holds the turn, so even a dropped caller cannot let a second capture
    /// begin while the first runs.
    pub(crate) async fn snapshot(self: &Arc<Self>) -> Result<SnapshotInfo> {
        let one = self.snapshots.turn().await;
        let started = std::time::Instant::now();
        let cut = {
            let _gate = self.gate.write().await;
            cut(self, self.snapshots.next_epoch())
        };
        let paused_ms = started.elapsed().as_millis() as u64;
        let offset = cut.offset;
        let inner = self.clone();
        // The turn goes with the blocking task, and comes back to be held until the
        // offsets below are stored: a later snapshot's cannot be overwritten by these.
        let (_one, written) = tokio::task::spawn_blocking(move || {
            let written = write_snapshot(&inner, &cut);
            (one, written)
        })
        .await
        .map_err(|e| task_failed("writing the snapshot", e))?;
        let info = written?;
        self.snapshots
            .taken(offset, &info, || self.log.next_offset());
        tracing::info!(
            offset,
            bytes = info.bytes,
            writes_paused_ms = paused_ms,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(info)
    }
}

/// What a snapshot's cut fixed: taken with the gate held exclusively, so the state in
/// memory then reflected exactly the log below `offset`.
struct Cut {
    pub offset: u64,
    pub definitions: Vec<String>,
    pub counters: Counters,
    pub delivery: crate::model::delivery::Delivery,
}

/// Takes the cut of snapshot `epoch` (the caller holds the gate exclusively).
fn cut(inner: &Inner, epoch: u32) -> Cut {
    let cut = Cut {
        offset: inner.log.next_offset(),
        definitions: inner
            .registry
            .read()
            .all()
            .iter()
            .map(|d| d.to_json())
            .collect(),
        counters: inner.projections.lock().counters.clone(),
        delivery: inner.delivery.borrow().clone(),
    };
    for shard in inner.sagas.shards() {
        shard.lock().begin_capture(epoch);
    }
    cut
}

/// Ends the capture in every shard, however writing the snapshot ends (a shard whose
/// capture already ended is left as it is).
struct EndCaptures<'a>(&'a Inner);

impl Drop for EndCaptures<'_> {
    fn drop(&mut self) {
        for shard in self.0.sagas.shards() {
            shard.lock().end_capture();
        }
    }
}

/// Writes the snapshot of `cut` while writes go on: shard by shard, the sagas no one
/// touched since the cut a chunk at a time, then the cut images of those touched.
/// Blocking (shard locks and file I/O): run it off the async runtime.
fn write_snapshot(inner: &Inner, cut: &Cut) -> Result<SnapshotInfo> {
    let _end = EndCaptures(inner);
    let mut file = inner.snapshots.store().create(cut.offset)?;
    let out = &mut file;
    let dir = inner.snapshots.store().dir();
    put(out, &SNAPSHOT_FORMAT, dir)?;
    put(out, &cut.offset, dir)?;
    put(out, &cut.definitions, dir)?;
    put(out, &cut.counters, dir)?;
    put(out, &cut.delivery, dir)?;
    for shard in inner.sagas.shards() {
        let untouched = shard.lock().untouched();
        for ids in untouched.chunks(SNAPSHOT_CHUNK_SAGAS) {
            let slots: Vec<Slot> = {
                let mut sagas = shard.lock();
                ids.iter().filter_map(|id| sagas.capture(id)).collect()
            };
            put_chunk(out, slots.iter(), dir)?;
        }
        let images = shard.lock().end_capture();
        for slots in images.chunks(SNAPSHOT_CHUNK_SAGAS) {
            put_chunk(out, slots.iter(), dir)?;
        }
    }
    put(out, &Vec::<SnapshotSaga>::new(), dir)?;
    Ok(file.finish()?)
}

/// Encodes one part of a snapshot body onto `out`.
fn put<T: Encode>(out: &mut impl Write, value: &T, dir: &std::path::Path) -> Result<()> {
    bincode::encode_into_std_write(value, out, bincode::config::standard())
        .map(|_| ())
        .map_err(|e| {
            let e = match e {
                bincode::error::EncodeError::Io { inner, .. } => inner,
                other => std::io::Error::other(other),
            };
            EngineError::Storage(StorageError::io("write snapshot in", dir)(e))
        })
}

/// Encodes the active ones of `slots` as a chunk (nothing when none is active: an empty
/// chunk ends the body).
fn put_chunk<'a>(
    out: &mut impl Write,
    slots: impl Iterator<Item = &'a Slot>,
    dir: &std::path::Path,
) -> Result<()> {
    let chunk: Vec<SnapshotSaga> = slots.filter_map(SnapshotSaga::of).collect();
    if chunk.is_empty() {
        return Ok(());
    }
    put(out, &chunk, dir)
}
