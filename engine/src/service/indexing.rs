//! The engine's sled indexes, derived from the log (docs/storage.md). Active sagas are all in
//! memory (restored by snapshot plus replay), so the indexes only need to find the
//! sagas that finished and left memory:
//!
//! | keyspace | key | value |
//! | --- | --- | --- |
//! | `saga` | saga id | [`SagaMeta`]: first and last record offsets, status, `updated_at` |
//! | `finished` | status, newest `updated_at` (u64 BE), first offset of the batch, part | a [`Bucket`] of (`updated_at`, saga id) |
//! | `dead_letters` | offset of a `dead_lettered` entry (u64 BE) | empty, or the offset of its latest replay |
//!
//! A saga's history is read backwards from its last record through each record's
//! `Link` (see `history`), so no per-record index is written. Sagas that finish in one indexer batch
//! share one `finished` bucket per status (sled inserts are the indexer's cost: one per
//! saga for `saga`, one per batch for listing); a bucket spans at most
//! [`MAX_BUCKET_SPAN_MS`] of `updated_at`, which lets listing start its scan near a
//! cursor and merge buckets newest first. The indexer follows the log tail and commits
//! one sled batch (with the watermark) per batch of records it reads; on open the same
//! code catches up from the watermark, and `reindex` runs it from nothing.

use parking_lot::RwLock;
use sagalog_storage::index::IndexWriter;
use sagalog_storage::{IndexBatch, Keyspace, Log, LogRecord};

use crate::error::{EngineError, Result};
use crate::history::{decode_at, predecessors};
use crate::model::record::{peek, Entry, Link, Status};
use crate::service::bloom::FinishedIds;

pub struct Keys {
    pub saga: Keyspace,
    pub finished: Keyspace,
    /// Dead-letter entry offset → empty, or the offset of its latest replay.
    pub dead_letters: Keyspace,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            saga: Keyspace::new("saga"),
            finished: Keyspace::new("finished"),
            dead_letters: Keyspace::new("dead_letters"),
        }
    }
}

/// Widest range of `updated_at` one `finished` bucket covers.
pub const MAX_BUCKET_SPAN_MS: u64 = 60_000;

/// The first key of the `finished` buckets of `status` whose newest entry is at
/// `updated_at_ms` or later.
pub fn bucket_key_from(status: Status, updated_at_ms: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(19);
    key.push(status.index() as u8);
    key.extend_from_slice(&updated_at_ms.to_be_bytes());
    key
}

fn bucket_key(status: Status, newest_ms: u64, batch_offset: u64, part: u16) -> Vec<u8> {
    let mut key = bucket_key_from(status, newest_ms);
    key.extend_from_slice(&batch_offset.to_be_bytes());
    key.extend_from_slice(&part.to_be_bytes());
    key
}

/// The sagas that finished in one status within one indexer batch (and one span):
/// (`updated_at_ms`, saga id), oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bucket {
    pub entries: Vec<(u64, String)>,
}

impl Bucket {
    pub fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(self.entries.len() * 24);
        for (at, id) in &self.entries {
            value.extend_from_slice(&at.to_be_bytes());
            value.push(u8::try_from(id.len()).expect("saga ids are at most 128 bytes"));
            value.extend_from_slice(id.as_bytes());
        }
        value
    }

    pub fn decode(mut value: &[u8]) -> Option<Bucket> {
        let mut entries = Vec::new();
        while !value.is_empty() {
            let at = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
            let len = usize::from(*value.get(8)?);
            let id = std::str::from_utf8(value.get(9..9 + len)?)
                .ok()?
                .to_string();
            entries.push((at, id));
            value = &value[9 + len..];
        }
        Some(Bucket { entries })
    }
}

/// Splits one batch's finished sagas of one status into buckets of at most
/// [`MAX_BUCKET_SPAN_MS`]: (key, bucket).
pub fn buckets(
    status: Status,
    batch_offset: u64,
    mut entries: Vec<(u64, String)>,
) -> Vec<(Vec<u8>, Bucket)> {
    entries.sort();
    let mut out: Vec<(Vec<u8>, Bucket)> = Vec::new();
    let mut current = Bucket::default();
    for entry in entries {
        let too_wide = current
            .entries
            .first()
            .is_some_and(|(oldest, _)| entry.0 - oldest > MAX_BUCKET_SPAN_MS);
        if too_wide {
            let full = std::mem::take(&mut current);
            let newest = full.entries.last().expect("not empty").0;
            out.push((
                bucket_key(status, newest, batch_offset, out.len() as u16),
                full,
            ));
        }
        current.entries.push(entry);
    }
    if let Some((newest, _)) = current.entries.last() {
        let key = bucket_key(status, *newest, batch_offset, out.len() as u16);
        out.push((key, current));
    }
    out
}

/// The newest `updated_at` in a bucket, from its key.
pub fn bucket_newest_ms(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// What the `saga` keyspace keeps of a finished saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaMeta {
    pub first_offset: u64,
    pub last_offset: u64,
    pub status: Status,
    pub updated_at_ms: u64,
}

impl SagaMeta {
    pub fn encode(&self) -> [u8; 25] {
        let mut value = [0u8; 25];
        value[..8].copy_from_slice(&self.first_offset.to_be_bytes());
        value[8..16].copy_from_slice(&self.last_offset.to_be_bytes());
        value[16] = self.status.index() as u8;
        value[17..].copy_from_slice(&self.updated_at_ms.to_be_bytes());
        value
    }

    pub fn decode(value: &[u8]) -> Option<SagaMeta> {
        let u64_at = |at: usize| {
            value
                .get(at..at + 8)?
                .try_into()
                .ok()
                .map(u64::from_be_bytes)
        };
        (value.len() == 25).then_some(())?;
        Some(SagaMeta {
            first_offset: u64_at(0)?,
            last_offset: u64_at(8)?,
            status: *Status::ALL.get(usize::from(value[16]))?,
            updated_at_ms: u64_at(17)?,
        })
    }
}

/// Turns log records into index writes. It remembers the previous record's saga and
/// first offset to resolve `Follows` links without reading the log.
pub struct Indexer<'a> {
    keys: &'a Keys,
    log: &'a Log,
    previous: Option<(u64, String, u64)>,
    /// Sagas finished in the current batch, per status: (`updated_at_ms`, id).
    finished: [Vec<(u64, String)>; 6],
    /// The offset of the current batch's first record.
    batch_offset: Option<u64>,
    /// The engine's filter of finished ids, told of each finished saga before its
    /// entry is committed.
    finished_ids: Option<&'a RwLock<FinishedIds>>,
}

impl<'a> Indexer<'a> {
    pub fn new(keys: &'a Keys, log: &'a Log) -> Indexer<'a> {
        Indexer {
            keys,
            log,
            previous: None,
            finished: Default::default(),
            batch_offset: None,
            finished_ids: None,
        }
    }

    pub(crate) fn with_filter(mut self, finished_ids: &'a RwLock<FinishedIds>) -> Indexer<'a> {
        self.finished_ids = Some(finished_ids);
        self
    }

    /// The index writes for one log record (records must come in log order); the
    /// listing buckets are written by [`IndexWriter::end_chunk`].
    pub fn add(&mut self, record: &LogRecord, batch: &mut IndexBatch) -> Result<()> {
        self.batch_offset.get_or_insert(record.offset);
        let peeked = peek(&record.payload).map_err(|source| EngineError::Corrupt {
            offset: record.offset,
            source,
        })?;
        let Some(p) = peeked else {
            self.previous = None;
            return self.add_other(record, batch);
        };
        let first = match (p.link, &self.previous) {
            (Link::Start, _) => record.offset,
            (Link::After { first, .. }, _) => first,
            (Link::Follows, Some((offset, saga_id, first)))
                if *offset + 1 == record.offset && saga_id == p.saga_id =>
            {
                *first
            }
            (Link::Follows, _) => predecessors(self.log, record.offset, p.link)?.1,
        };
        if let Some(status) = p.finished {
            let meta = SagaMeta {
                first_offset: first,
                last_offset: record.offset,
                status,
                updated_at_ms: p.at_ms,
            };
            batch.put(&self.keys.saga, p.saga_id.as_bytes(), &meta.encode());
            if let Some(ids) = self.finished_ids {
                ids.write().insert(p.saga_id);
            }
            self.finished[status.index()].push((p.at_ms, p.saga_id.to_string()));
        }
        match &mut self.previous {
            Some((offset, saga_id, prev_first)) => {
                *offset = record.offset;
                saga_id.clear();
                saga_id.push_str(p.saga_id);
                *prev_first = first;
            }
            None => self.previous = Some((record.offset, p.saga_id.to_string(), first)),
        }
        Ok(())
    }
}

impl Indexer<'_> {
    /// The entries that are not saga records: dead letters are listed by offset, and
    /// a replay marks its dead letter with the replay's offset.
    fn add_other(&mut self, record: &LogRecord, batch: &mut IndexBatch) -> Result<()> {
        match decode_at(record)? {
            Entry::DeadLettered { .. } => {
                batch.put(&self.keys.dead_letters, &record.offset.to_be_bytes(), &[]);
            }
            Entry::DeadLetterReplayed {
                dead_letter_offset, ..
            } => batch.put(
                &self.keys.dead_letters,
                &dead_letter_offset.to_be_bytes(),
                &record.offset.to_be_bytes(),
            ),
            Entry::Saga { .. }
            | Entry::DefinitionRegistered { .. }
            | Entry::DeliveryPaused { .. }
            | Entry::DeliveryResumed { .. } => {}
        }
        Ok(())
    }
}

impl IndexWriter<EngineError> for Indexer<'_> {
    fn add(&mut self, record: &LogRecord, batch: &mut IndexBatch) -> Result<()> {
        Indexer::add(self, record, batch)
    }

    /// Writes the batch's listing buckets.
    fn end_chunk(&mut self, batch: &mut IndexBatch) -> Result<()> {
        let Some(batch_offset) = self.batch_offset.take() else {
            return Ok(());
        };
        for status in Status::ALL {
            let entries = std::mem::take(&mut self.finished[status.index()]);
            for (key, bucket) in buckets(status, batch_offset, entries) {
                batch.put(&self.keys.finished, &key, &bucket.encode());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_at_their_span_and_round_trip() {
        let at = |ms| (1_000_000 + ms, format!("s-{ms}"));
        let entries = vec![
            at(5),
            at(0),
            at(MAX_BUCKET_SPAN_MS),
            at(MAX_BUCKET_SPAN_MS + 1),
            at(3 * MAX_BUCKET_SPAN_MS),
        ];
        let out = buckets(Status::Completed, 77, entries);
        let spans: Vec<Vec<u64>> = out
            .iter()
            .map(|(_, b)| b.entries.iter().map(|(ms, _)| ms - 1_000_000).collect())
            .collect();
        assert_eq!(
            spans,
            [
                vec![0, 5, MAX_BUCKET_SPAN_MS],
                vec![MAX_BUCKET_SPAN_MS + 1],
                vec![3 * MAX_BUCKET_SPAN_MS]
            ]
        );
        for (key, bucket) in &out {
            assert_eq!(Bucket::decode(&bucket.encode()).as_ref(), Some(bucket));
            assert_eq!(
                bucket_newest_ms(key),
                bucket.entries.last().map(|(ms, _)| *ms)
            );
        }
        let keys: Vec<_> = out.iter().map(|(k, _)| k.clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "buckets sort by their newest entry");
        assert!(Bucket::decode(&[0, 1, 2]).is_none());
    }
}
