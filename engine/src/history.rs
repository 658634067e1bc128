//! Reading records back from the log: one entry at an offset, a saga record with its
//! link, and a saga's whole history, read backwards from its last record through each
//! record's [`Link`] (so no per-record index is written). The renderers, the service
//! and the offline tools all read through here.

use sagalog_storage::{Log, LogRecord};

use crate::error::{EngineError, Inconsistency, Result};
use crate::model::record::{Entry, Link, Record};

/// The entry `record` holds, decoded (damage names its offset).
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
        other => Err(Inconsistency::NotASagaRecord {
            offset,
            found: other.kind_name().to_string(),
        }
        .into()),
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
            let prev = offset.checked_sub(1).ok_or(Inconsistency::FirstFollows)?;
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
            return Err(Inconsistency::ChainCrosses {
                saga_id: saga_id.to_string(),
                offset,
                other: record.saga_id.to_string(),
            }
            .into());
        }
        next = match link {
            Link::Start => None,
            Link::Follows => Some(offset - 1),
            Link::After { prev, .. } => Some(prev),
        };
        history.push((offset, record));
        if history.len() > (u32::MAX as usize) {
            return Err(Inconsistency::ChainLoops {
                saga_id: saga_id.to_string(),
            }
            .into());
        }
    }
    history.reverse();
    Ok(history)
}
