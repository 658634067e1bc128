//! The engine's sled indexes, derived from the log (SPEC §7). Active sagas are all in
//! memory (restored by snapshot plus replay), so the indexes only need to find the
//! sagas that finished and left memory:
//!
//! | keyspace | key | value |
//! | --- | --- | --- |
//! | `saga` | saga id | [`SagaMeta`]: first and last record offsets, status, `updated_at` |
//! | `finished` | status, `updated_at` (u64 BE), saga id | (empty): listing, newest first |
//!
//! A saga's history is read backwards from its last record through each record's
//! [`Link`], so no per-record index is written: each saga costs two index writes, when
//! it finishes. The indexer follows the log tail and commits one sled batch (with the
//! watermark) per batch of records it reads; on open the same code catches up from the
//! watermark, and `reindex` runs it from nothing.

use sagalog_storage::{IndexBatch, Keyspace, Log, LogRecord};

use crate::error::{EngineError, Result};
use crate::record::{peek, Entry, Link, Record, Status};

pub struct Keys {
    pub saga: Keyspace,
    pub finished: Keyspace,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            saga: Keyspace::new("saga"),
            finished: Keyspace::new("finished"),
        }
    }
}

pub fn finished_key(status: Status, updated_at_ms: u64, saga_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(saga_id.len() + 9);
    key.push(status.index() as u8);
    key.extend_from_slice(&updated_at_ms.to_be_bytes());
    key.extend_from_slice(saga_id.as_bytes());
    key
}

/// Splits a `finished` key into (status, updated_at_ms, saga id).
pub fn parse_finished_key(key: &[u8]) -> Option<(Status, u64, String)> {
    let status = *Status::ALL.get(usize::from(*key.first()?))?;
    let at = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let id = std::str::from_utf8(key.get(9..)?).ok()?.to_string();
    Some((status, at, id))
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

pub fn decode_at(record: &LogRecord) -> Result<Entry> {
    Entry::decode(&record.payload).map_err(|source| EngineError::Corrupt {
        offset: record.offset,
        source,
    })
}

/// The saga record at `offset`, with its link.
pub fn read_saga_record(log: &Log, offset: u64) -> Result<(Link, Record)> {
    let payload = log.read(offset)?;
    match decode_at(&LogRecord { offset, payload })? {
        Entry::Saga { link, record } => Ok((link, record)),
        other => Err(EngineError::Inconsistent(format!(
            "offset {offset} holds {other:?}, not a saga record"
        ))),
    }
}

/// Offsets of a saga's previous and first records, given one record's link.
/// `Follows` needs the record before it, read from the log (records of one append are
/// contiguous, so this is at most a few reads).
pub fn predecessors(log: &Log, offset: u64, link: Link) -> Result<(Option<u64>, u64)> {
    match link {
        Link::Start => Ok((None, offset)),
        Link::After { prev, first } => Ok((Some(prev), first)),
        Link::Follows => {
            let prev = offset.checked_sub(1).ok_or_else(|| {
                EngineError::Inconsistent("the log's first record follows nothing".into())
            })?;
            let (prev_link, _) = read_saga_record(log, prev)?;
            let (_, first) = predecessors(log, prev, prev_link)?;
            Ok((Some(prev), first))
        }
    }
}

/// Every record of a saga, oldest first, read backwards from its last one.
pub fn saga_history(log: &Log, saga_id: &str, last_offset: u64) -> Result<Vec<(u64, Record)>> {
    let mut history = Vec::new();
    let mut next = Some(last_offset);
    while let Some(offset) = next {
        let (link, record) = read_saga_record(log, offset)?;
        if record.saga_id != saga_id {
            return Err(EngineError::Inconsistent(format!(
                "saga {saga_id}: its chain reaches offset {offset}, a record of saga {}",
                record.saga_id
            )));
        }
        next = match link {
            Link::Start => None,
            Link::Follows => Some(offset - 1),
            Link::After { prev, .. } => Some(prev),
        };
        history.push((offset, record));
        if history.len() > (u32::MAX as usize) {
            return Err(EngineError::Inconsistent(format!(
                "saga {saga_id}: its chain loops"
            )));
        }
    }
    history.reverse();
    Ok(history)
}

/// Turns log records into index writes. It remembers the previous record's saga and
/// first offset to resolve `Follows` links without reading the log.
pub struct Indexer<'a> {
    keys: &'a Keys,
    log: &'a Log,
    previous: Option<(u64, String, u64)>,
}

impl<'a> Indexer<'a> {
    pub fn new(keys: &'a Keys, log: &'a Log) -> Indexer<'a> {
        Indexer {
            keys,
            log,
            previous: None,
        }
    }

    /// The index writes for one log record (records must come in log order).
    pub fn add(&mut self, record: &LogRecord, batch: &mut IndexBatch) -> Result<()> {
        let peeked = peek(&record.payload).map_err(|source| EngineError::Corrupt {
            offset: record.offset,
            source,
        })?;
        let Some(p) = peeked else {
            self.previous = None;
            return Ok(());
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
            batch.put(
                &self.keys.finished,
                &finished_key(status, p.at_ms, p.saga_id),
                &[],
            );
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
