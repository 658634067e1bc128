//! The engine's sled indexes, all derived from the log (SPEC §7):
//!
//! | keyspace | key | value | for |
//! | --- | --- | --- | --- |
//! | `history` | saga id, 0, seq (u32 BE) | offset (u64 BE) | a saga's records |
//! | `event` | event id | saga id, 0, offset (u64 BE), answered status | repeated replies |
//! | `saga_type` | saga id | saga type | the type of a finished saga |
//! | `finished` | status, updated_at (u64 BE), saga id | (empty) | listing finished sagas |
//!
//! Active sagas are all in memory and listed from there; only finished ones are listed
//! from `finished`, which each saga enters once. Index writes are made by one indexer
//! that follows the log tail, one sled batch (with the watermark) per batch of records
//! it reads; on open, [`catch_up`](sagalog_storage::index::catch_up) runs the same code
//! from the watermark, and `reindex` runs it from nothing.

use sagalog_storage::{IndexBatch, Keyspace, LogRecord};

use crate::error::{EngineError, Result};
use crate::record::{Entry, Kind, Status};

pub struct Keys {
    pub history: Keyspace,
    pub event: Keyspace,
    pub saga_type: Keyspace,
    pub finished: Keyspace,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            history: Keyspace::new("history"),
            event: Keyspace::new("event"),
            saga_type: Keyspace::new("saga_type"),
            finished: Keyspace::new("finished"),
        }
    }
}

pub fn history_prefix(saga_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(saga_id.len() + 5);
    key.extend_from_slice(saga_id.as_bytes());
    key.push(0);
    key
}

fn history_key(saga_id: &str, seq: u32) -> Vec<u8> {
    let mut key = history_prefix(saga_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
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

/// A repeated reply's answer as the `event` keyspace keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventAnswer {
    pub saga_id: String,
    pub offset: u64,
    pub status: Status,
}

impl EventAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(self.saga_id.len() + 10);
        value.extend_from_slice(self.saga_id.as_bytes());
        value.push(0);
        value.extend_from_slice(&self.offset.to_be_bytes());
        value.push(self.status.index() as u8);
        value
    }

    pub fn decode(value: &[u8]) -> Option<EventAnswer> {
        let zero = value.iter().position(|b| *b == 0)?;
        let rest = value.get(zero + 1..)?;
        if rest.len() != 9 {
            return None;
        }
        Some(EventAnswer {
            saga_id: std::str::from_utf8(&value[..zero]).ok()?.to_string(),
            offset: u64::from_be_bytes(rest[..8].try_into().ok()?),
            status: *Status::ALL.get(usize::from(rest[8]))?,
        })
    }
}

pub fn decode_at(record: &LogRecord) -> Result<Entry> {
    Entry::decode(&record.payload).map_err(|source| EngineError::Corrupt {
        offset: record.offset,
        source,
    })
}

/// The index writes for one log record.
pub fn add(keys: &Keys, record: &LogRecord, batch: &mut IndexBatch) -> Result<()> {
    let Entry::Saga(r) = decode_at(record)? else {
        return Ok(());
    };
    batch.put(
        &keys.history,
        &history_key(&r.saga_id, r.seq),
        &record.offset.to_be_bytes(),
    );
    if let Some((event_id, status)) = r.kind.reply() {
        let answer = EventAnswer {
            saga_id: r.saga_id.clone(),
            offset: record.offset,
            status,
        };
        batch.put(&keys.event, event_id.as_bytes(), &answer.encode());
    }
    let finished = match &r.kind {
        Kind::SagaStarted { saga_type, .. } => {
            batch.put(&keys.saga_type, r.saga_id.as_bytes(), saga_type.as_bytes());
            None
        }
        Kind::SagaCompleted => Some(Status::Completed),
        Kind::SagaCompensated => Some(Status::Compensated),
        Kind::StatusOverridden { to, .. } if to.is_terminal() => Some(*to),
        _ => None,
    };
    if let Some(status) = finished {
        batch.put(
            &keys.finished,
            &finished_key(status, r.at_ms, &r.saga_id),
            &[],
        );
    }
    Ok(())
}
