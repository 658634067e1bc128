//! Retention: deleting sealed log segments nothing needs any more (docs/storage.md#retention).
//!
//! The log may start at offset `e` (everything below deleted) only when:
//! - `e` is at or below the *floor*: the oldest kept snapshot (so every snapshot stays
//!   usable, and a corrupt newest one can still fall back), the index watermark, the
//!   first record of every saga in memory (active sagas, and finished ones the indexer
//!   has not let go yet), and the caller's hold (the relay's position);
//! - every record at or past the hold refers to sagas starting at or past `e`: the
//!   commands the relay has yet to publish carry their saga's start payload;
//! - every deleted segment's newest record is older than the configured age.
//!
//! So only finished sagas lose records. One that began below `e` is *removed*, even if
//! its last records are kept: reads, writes and dead-letter replays name it removed
//! (the cut is chosen under the snapshot gate, with no write in flight, and applies at
//! once), listing skips it, and the HTTP outbox skips its kept commands. Then the index
//! entries of the sagas that lie wholly below `e` (`saga` metadata, listing buckets,
//! dead letters) are pruned and the segments deleted; a crash in between leaves
//! segments or entries that a later pass removes.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use sagalog_storage::{IndexBatch, Log, LogRecord, SealedSegment};

use crate::error::{EngineError, Result};
use crate::history::{decode_at, predecessors, read_saga_record};
use crate::model::record::{peek, Entry, Link};
use crate::service::indexing::{Bucket, SagaMeta};
use crate::service::inner::Inner;

/// Records, and bytes of them, retention reads from the log at a time while it looks
/// for the sagas a cut would remove.
const READ_RECORDS: usize = 4096;
const READ_BYTES: usize = 1 << 20;

/// Most records past the hold one pass reads; with a longer backlog (the relay far
/// behind) the pass deletes nothing.
const SCAN_BUDGET: usize = 4_000_000;
/// Index deletions applied per sled batch while pruning.
const PRUNE_BATCH: usize = 10_000;

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Where the log starts after the pass.
    pub start_offset: u64,
    /// The highest offset the log could have started at (see the module comment).
    pub floor: u64,
    pub removed_segments: usize,
    pub removed_bytes: u64,
    /// Finished sagas whose index entries were pruned.
    pub removed_sagas: u64,
    /// The pass deleted nothing: the backlog past the hold was longer than it reads.
    pub incomplete: bool,
}

/// The first offset of the saga a record belongs to, if it refers to one.
fn saga_start(log: &Log, record: &LogRecord, previous: Option<(u64, u64)>) -> Result<Option<u64>> {
    let corrupt = |source| EngineError::Corrupt {
        offset: record.offset,
        source,
    };
    let Some(peeked) = peek(&record.payload).map_err(corrupt)? else {
        // A replayed dead letter puts an older command back into the feed.
        return match decode_at(record)? {
            Entry::DeadLetterReplayed { command_offset, .. } => {
                let (link, _) = read_saga_record(log, command_offset)?;
                Ok(Some(predecessors(log, command_offset, link)?.1))
            }
            _ => Ok(None),
        };
    };
    Ok(Some(match (peeked.link, previous) {
        (Link::Start, _) => record.offset,
        (Link::After { first, .. }, _) => first,
        (Link::Follows, Some((prev, first))) if prev + 1 == record.offset => first,
        (Link::Follows, _) => predecessors(log, record.offset, peeked.link)?.1,
    }))
}

/// The lowest saga start the records in `[from, to)` refer to (`u64::MAX` for none),
/// reading at most `budget` records; `None` when the budget ran out first.
fn lowest_start(log: &Log, from: u64, to: u64, budget: &mut usize) -> Result<Option<u64>> {
    let (mut next, mut low, mut previous) = (from, u64::MAX, None);
    while next < to {
        if *budget == 0 {
            return Ok(None);
        }
        let batch = log.read_batch(next, (*budget).min(READ_RECORDS), READ_BYTES)?;
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        *budget = budget.saturating_sub(batch.len());
        for record in batch.iter().take_while(|r| r.offset < to) {
            previous = saga_start(log, record, previous)?.map(|first| (record.offset, first));
            if let Some((_, first)) = previous {
                low = low.min(first);
            }
        }
    }
    Ok(Some(low))
}

/// The highest segment boundary at or below `floor` such that every segment below it
/// was last written before `older_than`; `start` when none.
fn choose(start: u64, sealed: &[SealedSegment], floor: u64, older_than: SystemTime) -> u64 {
    sealed
        .iter()
        .take_while(|s| s.modified <= older_than && s.next_offset <= floor)
        .last()
        .map_or(start, |s| s.next_offset)
}

impl Inner {
    /// The floor of the module comment, without the relay's backlog.
    fn retention_floor(&self, hold: Option<u64>) -> Result<u64> {
        // Snapshots are listed newest first; none kept means nothing can go yet.
        let oldest_snapshot = self
            .snapshots
            .store()
            .list()?
            .last()
            .map_or(0, |s| s.offset);
        let mut floor = oldest_snapshot
            .min(self.progress.watermark())
            .min(hold.unwrap_or(u64::MAX));
        for shard in self.sagas.shards() {
            for slot in shard.lock().values() {
                if slot.state.status.is_some() {
                    floor = floor.min(slot.first_offset);
                }
            }
        }
        Ok(floor)
    }

    pub(crate) fn apply_retention(
        &self,
        min_age: Duration,
        hold: Option<u64>,
    ) -> Result<RetentionReport> {
        let _one_pass = self.retention.lock();
        let log = &self.log;
        let mut report = RetentionReport {
            start_offset: log.start_offset(),
            ..RetentionReport::default()
        };
        // What the holder still reads must render: the sagas it refers to stay whole.
        // Most of it is read here, with writes going on...
        let mut budget = SCAN_BUDGET;
        let scanned_to = log.next_offset();
        let mut held_low = match hold {
            Some(hold) => match lowest_start(log, hold, scanned_to, &mut budget)? {
                Some(low) => low,
                None => {
                    report.incomplete = true;
                    return Ok(report);
                }
            },
            None => u64::MAX,
        };
        let older_than = SystemTime::now()
            .checked_sub(min_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let (start, cut) = {
            // ...and what was appended meanwhile with no write in flight.
            let _gate = self.gate.blocking_write();
            if let Some(hold) = hold {
                let from = hold.max(scanned_to);
                match lowest_start(log, from, log.next_offset(), &mut budget)? {
                    Some(low) => held_low = held_low.min(low),
                    None => {
                        report.incomplete = true;
                        return Ok(report);
                    }
                }
            }
            report.floor = self.retention_floor(hold)?.min(held_low);
            let start = log.start_offset();
            let cut = choose(start, &log.sealed_segments()?, report.floor, older_than);
            self.retained_from.fetch_max(cut, Ordering::SeqCst);
            (start, cut)
        };
        if cut > start {
            report.removed_sagas = self.prune_index(start, cut)?;
            let removed = log.remove_segments_below(cut)?;
            report.removed_segments = removed.removed_segments;
            report.removed_bytes = removed.removed_bytes;
            report.start_offset = removed.start_offset;
            tracing::info!(
                start_offset = report.start_offset,
                floor = report.floor,
                segments = report.removed_segments,
                bytes = report.removed_bytes,
                sagas = report.removed_sagas,
                "retention removed the log below the start offset"
            );
        }
        Ok(report)
    }

    /// Removes the index entries of the sagas whose records all lie in `[start, cut)`,
    /// and the dead letters there; returns how many sagas.
    fn prune_index(&self, start: u64, cut: u64) -> Result<u64> {
        let mut batch = IndexBatch::default();
        let removed = self.prune_sagas(start, cut, &mut batch)?;
        for entry in self
            .index
            .range(&self.keys.dead_letters, ..cut.to_be_bytes().as_slice())
        {
            batch.delete(&self.keys.dead_letters, &entry?.0);
        }
        self.flush(&mut batch)?;
        self.prune_buckets(start, cut, &mut batch)?;
        self.flush(&mut batch)?;
        Ok(removed)
    }

    /// Deletes the `saga` entries of the sagas that finished below `cut` (read from the
    /// log from `start`); how many.
    fn prune_sagas(&self, start: u64, cut: u64, batch: &mut IndexBatch) -> Result<u64> {
        let keys = &self.keys;
        let mut removed = 0u64;
        for record in self.log.iter_from(start) {
            let record = record?;
            if record.offset >= cut {
                break;
            }
            let peeked = peek(&record.payload).map_err(|source| EngineError::Corrupt {
                offset: record.offset,
                source,
            })?;
            if let Some(p) = peeked.filter(|p| p.finished.is_some()) {
                let meta = self.index.get(&keys.saga, p.saga_id.as_bytes())?;
                if meta
                    .and_then(|m| SagaMeta::decode(&m))
                    .is_some_and(|m| m.last_offset < cut)
                {
                    batch.delete(&keys.saga, p.saga_id.as_bytes());
                    removed += 1;
                }
            }
            if batch.len() >= PRUNE_BATCH {
                self.flush(batch)?;
            }
        }
        Ok(removed)
    }

    /// Listing buckets of indexer batches that began below the cut (one batch can reach
    /// past the previous cut, hence the margin): keeps the entries whose saga is still
    /// indexed.
    fn prune_buckets(&self, start: u64, cut: u64, batch: &mut IndexBatch) -> Result<()> {
        let keys = &self.keys;
        let since = start.saturating_sub(self.config.index_batch_records as u64);
        for entry in self.index.range(&keys.finished, ..) {
            let (key, value) = entry?;
            let batch_offset = key
                .get(9..17)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            if !batch_offset.is_some_and(|o| (since..cut).contains(&o)) {
                continue;
            }
            let Some(bucket) = Bucket::decode(&value) else {
                continue;
            };
            let mut kept = Bucket::default();
            for (at, id) in bucket.entries {
                if self.index.get(&keys.saga, id.as_bytes())?.is_some() {
                    kept.entries.push((at, id));
                }
            }
            if kept.entries.is_empty() {
                batch.delete(&keys.finished, &key);
            } else {
                batch.put(&keys.finished, &key, &kept.encode());
            }
            if batch.len() >= PRUNE_BATCH {
                self.flush(batch)?;
            }
        }
        Ok(())
    }

    /// Applies what `batch` holds, leaving it empty.
    fn flush(&self, batch: &mut IndexBatch) -> Result<()> {
        if !batch.is_empty() {
            self.index.apply(std::mem::take(batch))?;
        }
        Ok(())
    }
}
