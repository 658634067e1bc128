//! Dead letters: commands the relay could not publish (docs/server.md#kafka). Each is an entry in
//! the log; the indexer lists them by offset in the `dead_letters` keyspace, and a
//! replay is another entry, which puts the command back into the command feed.

use sagalog_storage::{IndexStore, Log, LogRecord};

use crate::error::{EngineError, Inconsistency, Result};
use crate::history::decode_at;
use crate::model::definition::Registry;
use crate::model::record::Entry;
use crate::render::command::{render, Command};
use crate::render::filter::CommandFilter;
use crate::service::indexing::Keys;

/// A dead-lettered command.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The offset of the `dead_lettered` entry.
    pub offset: u64,
    pub saga_id: String,
    pub command_offset: u64,
    pub reason: String,
    /// The offset of its latest replay, if it was replayed.
    pub replayed_at: Option<u64>,
    /// The command as participants see it.
    pub command: Option<Command>,
}

/// Dead letters after `after` (all when `None`), oldest first, at most `limit`.
pub(crate) fn list(
    log: &Log,
    index: &IndexStore,
    keys: &Keys,
    registry: &parking_lot::RwLock<Registry>,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<DeadLetter>> {
    // Retention prunes the entries below the log's start; this skips any left.
    let from = after
        .map_or(0, |a| a.saturating_add(1))
        .max(log.start_offset())
        .to_be_bytes();
    let mut out = Vec::new();
    for entry in index
        .range(&keys.dead_letters, from.as_slice()..)
        .take(limit)
    {
        let (key, value) = entry?;
        let offset = u64::from_be_bytes(key.as_slice().try_into().map_err(|_| {
            Inconsistency::BadIndexEntry {
                what: "dead-letter",
                key: format!("{key:?}"),
            }
        })?);
        let replayed_at = <[u8; 8]>::try_from(value.as_slice())
            .ok()
            .map(u64::from_be_bytes);
        let (saga_id, command_offset, reason) = read(log, offset)?;
        // The command's saga may have been removed by retention since.
        let command = match log
            .read_batch(command_offset, 1, 0)
            .map_err(EngineError::from)
        {
            Ok(records) => match render(log, registry, &records, &CommandFilter::all()) {
                Ok(mut commands) => commands.pop(),
                Err(EngineError::Removed { .. }) => None,
                Err(e) => return Err(e),
            },
            Err(EngineError::Removed { .. }) => None,
            Err(e) => return Err(e),
        };
        out.push(DeadLetter {
            offset,
            saga_id,
            command_offset,
            reason,
            replayed_at,
            command,
        });
    }
    Ok(out)
}

/// How many dead letters there are, and how many of them were never replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeadLetterCounts {
    pub total: u64,
    pub waiting: u64,
    /// True when the count stopped at its bound: there are more.
    pub more: bool,
}

/// Counts the indexed dead letters, reading at most `bound` index entries (no log reads).
pub(crate) fn count(
    log: &Log,
    index: &IndexStore,
    keys: &Keys,
    bound: usize,
) -> Result<DeadLetterCounts> {
    let from = log.start_offset().to_be_bytes();
    let mut counts = DeadLetterCounts::default();
    for entry in index.range(&keys.dead_letters, from.as_slice()..) {
        if counts.total as usize == bound {
            counts.more = true;
            break;
        }
        let (_, value) = entry?;
        counts.total += 1;
        if value.len() != 8 {
            counts.waiting += 1;
        }
    }
    Ok(counts)
}

/// The dead letter at `offset`: saga id, command offset, reason.
pub(crate) fn read(log: &Log, offset: u64) -> Result<(String, u64, String)> {
    let not_one = || EngineError::NoDeadLetter { offset };
    let start = log.start_offset();
    if offset < start {
        return Err(EngineError::Removed { offset, start });
    }
    if offset >= log.next_offset() {
        return Err(not_one());
    }
    let payload = log.read(offset)?;
    match decode_at(&LogRecord { offset, payload })? {
        Entry::DeadLettered {
            saga_id,
            command_offset,
            reason,
        } => Ok((saga_id, command_offset, reason)),
        _ => Err(not_one()),
    }
}
