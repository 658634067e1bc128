//! Rebuilding the engine on open, and the snapshots that make it fast:
//! - the indexes catch up from their watermark (or are rebuilt when out of step);
//! - the newest usable snapshot restores definitions, active sagas and counters as of
//!   its offset (a corrupt or unusable one falls back to an older one, then to the
//!   whole log);
//! - the log after it is folded in with the same `apply` the live path uses.

use std::collections::BTreeSet;
use std::sync::Arc;

use bincode::{Decode, Encode};
use sagalog_storage::index::catch_up;
use sagalog_storage::{IndexStore, Log, SnapshotStore, StorageError};

use crate::definition::{Definition, Registry};
use crate::engine::{Inner, Shard, Slot, Summary};
use crate::error::{EngineError, Result};
use crate::indexing::{decode_at, Indexer, Keys};
use crate::projection::{Counters, Projections};
use crate::record::{Entry, Kind};
use crate::state::{apply_mut, SagaState, StoredSaga};

/// The version of the snapshot body below.
const SNAPSHOT_FORMAT: u8 = 1;

#[derive(Encode, Decode)]
struct SnapshotBody {
    format: u8,
    /// The log offset the snapshot reflects everything below.
    offset: u64,
    /// Every registered definition, as JSON.
    definitions: Vec<String>,
    sagas: Vec<SnapshotSaga>,
    counters: Counters,
}

#[derive(Encode, Decode)]
struct SnapshotSaga {
    saga: StoredSaga,
    first_offset: u64,
    last_offset: u64,
    events: u64,
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Brings the indexes up to the log's head; rebuilds them from nothing when their
/// watermark is out of step with the log (a cut tail, or retention past it).
pub(crate) fn catch_up_index(
    log: &Log,
    index: &IndexStore,
    keys: &Keys,
    chunk: usize,
) -> Result<()> {
    let run = || catch_up(log, index, chunk, Indexer::new(keys, log));
    let applied = match run() {
        Err(EngineError::Storage(e @ StorageError::IndexOutOfStep { .. })) => {
            tracing::warn!(error = %e, "rebuilding the indexes from the log");
            index.clear()?;
            run()?
        }
        other => other?,
    };
    if applied > 0 {
        tracing::info!(records = applied, "indexes caught up with the log");
    }
    Ok(())
}

/// What open rebuilds before the engine serves.
pub(crate) struct Restored {
    pub registry: Registry,
    pub shards: Box<[Shard]>,
    pub projections: Projections,
    pub timers: BTreeSet<(u64, Arc<str>)>,
    pub active: usize,
    /// Records folded in after the snapshot.
    pub replayed: u64,
    pub snapshot_offset: u64,
    /// Finished sagas kept in memory because the indexes do not hold them yet (they
    /// could not catch up on open), by the offset of their last record.
    pub unindexed: Vec<(u64, Arc<str>)>,
    /// Finished sagas at or past this offset stay in memory (see `unindexed`).
    indexed_below: u64,
}

impl Restored {
    fn empty(shards: usize) -> Restored {
        Restored {
            registry: Registry::with_builtin(),
            shards: (0..shards).map(|_| Shard::default()).collect(),
            projections: Projections::default(),
            timers: BTreeSet::new(),
            active: 0,
            replayed: 0,
            snapshot_offset: 0,
            unindexed: Vec::new(),
            indexed_below: u64::MAX,
        }
    }

    fn shard(&self, saga_id: &str) -> &Shard {
        &self.shards[crate::engine::shard_index(saga_id, self.shards.len())]
    }
}

/// Restores from the newest usable snapshot and replays the log after it. Sagas that
/// finished at or past `indexed_below` (the indexes' watermark) stay in memory until the
/// indexer has them.
pub(crate) fn restore(
    log: &Log,
    snapshots: &SnapshotStore,
    shards: usize,
    indexed_below: u64,
) -> Result<Restored> {
    let mut restored = restore_to(log, snapshots, shards, true, None, indexed_below)?;
    restored.unindexed.sort_unstable();
    Ok(restored)
}

/// [`restore`] with a choice: without snapshots (the whole log), and only up to
/// `to_offset` (exclusive) — `sagalog replay`.
pub(crate) fn restore_to(
    log: &Log,
    snapshots: &SnapshotStore,
    shards: usize,
    use_snapshots: bool,
    to_offset: Option<u64>,
    indexed_below: u64,
) -> Result<Restored> {
    let start = log.start_offset();
    let head = to_offset.map_or(log.next_offset(), |to| to.min(log.next_offset()));
    let mut restored = None;
    let listed = if use_snapshots {
        snapshots.list()?
    } else {
        Vec::new()
    };
    for info in listed {
        if info.offset < start || info.offset > head {
            tracing::warn!(
                snapshot = %info.path.display(), start, head,
                "snapshot offset is outside the log; skipping it"
            );
            continue;
        }
        let loaded = snapshots
            .load(&info)
            .map_err(EngineError::from)
            .and_then(|snapshot| from_snapshot(&snapshot.data, snapshot.offset, shards));
        let loaded = loaded.map(|mut r| {
            r.indexed_below = indexed_below;
            r
        });
        match loaded {
            Ok(r) => {
                restored = Some(r);
                break;
            }
            Err(e) => tracing::warn!(
                snapshot = %info.path.display(), error = %e,
                "unusable snapshot; falling back to an older one or the whole log"
            ),
        }
    }
    let mut restored = match restored {
        Some(r) => r,
        None if start == 0 => Restored {
            indexed_below,
            ..Restored::empty(shards)
        },
        None => {
            return Err(EngineError::Inconsistent(format!(
            "the log starts at offset {start} and no usable snapshot covers the records before it"
        )))
        }
    };
    let from = restored.snapshot_offset;
    for record in log.iter_from(from) {
        let record = record?;
        if record.offset >= head {
            break;
        }
        fold(&mut restored, &record)?;
        restored.replayed += 1;
    }
    // Timers and the active count from the sagas left, once, rather than per record.
    for shard in restored.shards.iter() {
        for slot in shard.sagas.lock().values() {
            let summary = Summary::of(&slot.state);
            if let Some(due) = summary.due_ms {
                restored.timers.insert((due, slot.state.saga_id.clone()));
            }
            restored.active += usize::from(summary.is_active());
        }
    }
    tracing::info!(
        snapshot_offset = from,
        replayed = restored.replayed,
        active = restored.active,
        "engine state rebuilt"
    );
    Ok(restored)
}

/// Whether a snapshot body decodes and fits its definitions (`sagalog verify`).
pub(crate) fn check_snapshot(data: &[u8], offset: u64) -> Result<()> {
    from_snapshot(data, offset, 1).map(|_| ())
}

fn from_snapshot(data: &[u8], offset: u64, shards: usize) -> Result<Restored> {
    let bad = |reason: String| {
        EngineError::Inconsistent(format!("snapshot at offset {offset}: {reason}"))
    };
    let (body, used): (SnapshotBody, usize) =
        bincode::decode_from_slice(data, bincode_config()).map_err(|e| bad(e.to_string()))?;
    if used != data.len() || body.format != SNAPSHOT_FORMAT || body.offset != offset {
        return Err(bad(format!(
            "format {} at offset {} with {} trailing bytes",
            body.format,
            body.offset,
            data.len() - used
        )));
    }
    let mut restored = Restored::empty(shards);
    for json in &body.definitions {
        let definition = Definition::from_json(json).map_err(|e| bad(e.to_string()))?;
        restored
            .registry
            .register(definition)
            .map_err(|e| bad(e.to_string()))?;
    }
    restored.projections = Projections::from_counters(body.counters);
    for SnapshotSaga {
        saga,
        first_offset,
        last_offset,
        events,
    } in body.sagas
    {
        let definition = restored
            .registry
            .get(&saga.saga_type, saga.definition_version)
            .cloned()
            .ok_or_else(|| bad(format!("saga {} names an unknown definition", saga.saga_id)))?;
        let id = saga.saga_id.clone();
        let state = saga
            .into_state(definition)
            .ok_or_else(|| bad(format!("saga {id} does not fit its definition")))?;
        restored.shard(&id).sagas.lock().insert(Slot {
            state,
            busy: false,
            first_offset,
            last_offset,
            events,
        });
    }
    restored.snapshot_offset = offset;
    Ok(restored)
}

/// Folds one log record into the restored state.
fn fold(restored: &mut Restored, record: &sagalog_storage::LogRecord) -> Result<()> {
    let r = match decode_at(record)? {
        Entry::Saga { record: r, .. } => r,
        Entry::DefinitionRegistered { json } => {
            let definition = Definition::from_json(&json).map_err(|e| {
                EngineError::Inconsistent(format!("definition at offset {}: {e}", record.offset))
            })?;
            restored.registry.register(definition)?;
            return Ok(());
        }
        Entry::DeadLettered { .. } | Entry::DeadLetterReplayed { .. } => return Ok(()),
    };
    let Restored {
        registry,
        shards,
        projections,
        unindexed,
        indexed_below,
        ..
    } = restored;
    let shard = &shards[crate::engine::shard_index(&r.saga_id, shards.len())];
    let mut sagas = shard.sagas.lock();
    if let Kind::SagaStarted {
        saga_type,
        definition_version,
        ..
    } = &r.kind
    {
        let definition = registry.get(saga_type, *definition_version).cloned().ok_or_else(|| {
            EngineError::Inconsistent(format!(
                "saga {} at offset {} starts on {saga_type} version {definition_version}, which is not registered",
                r.saga_id, record.offset
            ))
        })?;
        sagas.insert(Slot {
            state: SagaState::new(r.saga_id.as_str(), definition),
            busy: false,
            first_offset: record.offset,
            last_offset: record.offset,
            events: 0,
        });
    }
    let Some(slot) = sagas.get_mut(&r.saga_id) else {
        return Err(EngineError::Inconsistent(format!(
            "record at offset {} is for saga {}, which is not active",
            record.offset, r.saga_id
        )));
    };
    let key = slot.state.saga_id.clone();
    if r.seq != slot.state.seq + 1 {
        return Err(EngineError::Inconsistent(format!(
            "saga {} record at offset {} has seq {} after {}",
            r.saga_id, record.offset, r.seq, slot.state.seq
        )));
    }
    let before = Summary::of(&slot.state);
    apply_mut(&mut slot.state, &r);
    if let Some((event_id, _)) = r.kind.reply() {
        slot.events |= crate::engine::event_bits(event_id);
    }
    slot.last_offset = record.offset;
    let after = Summary::of(&slot.state);
    if before.place != after.place {
        projections.moved(&slot.state.definition.name, before.place, after.place);
    }
    if slot.state.is_terminal() {
        if record.offset < *indexed_below {
            // Finished sagas are served from the indexes, which caught up before replay.
            sagas.remove(&key);
        } else {
            unindexed.push((record.offset, key));
        }
    }
    Ok(())
}

/// The snapshot body for the state as of `offset` (the caller holds the gate, so no
/// write is in flight).
pub(crate) fn capture(inner: &Inner, offset: u64) -> Vec<u8> {
    let definitions = inner
        .registry
        .read()
        .all()
        .iter()
        .map(|d| d.to_json())
        .collect();
    let mut sagas = Vec::new();
    for shard in inner.shards.iter() {
        for slot in shard.sagas.lock().values() {
            debug_assert!(!slot.busy, "no write is in flight under the gate");
            if slot.state.status.is_some() && !slot.state.is_terminal() {
                sagas.push(SnapshotSaga {
                    saga: StoredSaga::from(&slot.state),
                    first_offset: slot.first_offset,
                    last_offset: slot.last_offset,
                    events: slot.events,
                });
            }
        }
    }
    let body = SnapshotBody {
        format: SNAPSHOT_FORMAT,
        offset,
        definitions,
        sagas,
        counters: inner.projections.lock().counters.clone(),
    };
    bincode::encode_to_vec(&body, bincode_config()).expect("encoding to a Vec")
}
