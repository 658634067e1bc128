//! Rebuilding the engine on open, and the snapshots that make it fast:
//! - the indexes catch up from their watermark (or are rebuilt when out of step);
//! - the newest usable snapshot restores definitions, active sagas and counters as of
//!   its offset (a corrupt or unusable one falls back to an older one, then to the
//!   whole log);
//! - the log after it is folded in with the same `apply` the live path uses.
//!
//! Taking a snapshot is `capture`'s; the body it writes is defined here, beside
//! the reader.
//!
//! Snapshot body, format 4 (bincode, inside the storage crate's checksummed file):
//! `format u8 | offset u64 | definitions Vec<String> | counters | delivery | chunk*`
//! where `delivery` is what is paused and each chunk is a non-empty `Vec<SnapshotSaga>`
//! and an empty one ends the body. Older bodies are still read: format 3 is the same
//! without `delivery` (nothing paused), format 2 is format 3 with sagas that do not
//! count their results' bytes, format 1 (`format | offset | definitions | sagas |
//! counters`) keeps them in one list.

use std::collections::BTreeSet;
use std::sync::Arc;

use bincode::{Decode, Encode};
use sagalog_storage::index::catch_up;
use sagalog_storage::{IndexStore, Log, SnapshotInfo, SnapshotStore, StorageError};

use crate::error::{EngineError, Inconsistency, Result};
use crate::history::decode_at;
use crate::model::definition::{Definition, Registry};
use crate::model::delivery::{extend_after_resume, Delivery};
use crate::model::record::{Entry, Kind, Record};
use crate::model::state::{apply_mut, SagaState, StoredSaga};
use crate::service::active::{shard_index, Shard, Summary};
use crate::service::indexing::{Indexer, Keys};
use crate::service::projection::{Counters, Projections};
use crate::service::table::Slot;

/// The snapshot body this build writes; it reads [`SNAPSHOT_FORMAT_V1`],
/// [`SNAPSHOT_FORMAT_V2`] and [`SNAPSHOT_FORMAT_V3`] too.
pub(crate) const SNAPSHOT_FORMAT: u8 = 4;
const SNAPSHOT_FORMAT_V1: u8 = 1;
const SNAPSHOT_FORMAT_V2: u8 = 2;
const SNAPSHOT_FORMAT_V3: u8 = 3;
/// Sagas per chunk of a snapshot: also how many a capture copies per hold of a shard's
/// lock.
pub(crate) const SNAPSHOT_CHUNK_SAGAS: usize = 1024;
/// Most bytes one decoded part of a snapshot may claim: a damaged (or crafted) length
/// cannot make the decoder allocate more than this.
const MAX_DECODE_BYTES: usize = 1 << 30;

#[derive(Encode, Decode)]
pub(crate) struct SnapshotSaga {
    saga: StoredSaga,
    first_offset: u64,
    last_offset: u64,
    events: u64,
}

/// A saga in a format 1 or 2 body: [`StoredSaga`] before it counted its results'
/// bytes. Such a saga restores counting from zero: its earlier results do not count
/// toward the per-saga limit (the limit did not exist when they were accepted).
#[derive(Decode)]
struct SnapshotSagaV2 {
    saga: StoredSagaV2,
    first_offset: u64,
    last_offset: u64,
    events: u64,
}

#[derive(Decode)]
struct StoredSagaV2 {
    saga_id: String,
    saga_type: String,
    definition_version: u32,
    status: Option<crate::model::record::Status>,
    seq: u32,
    created_at_ms: u64,
    updated_at_ms: u64,
    steps: Vec<crate::model::state::StepState>,
    pending: Option<crate::model::state::Pending>,
    failure_reason: Option<String>,
    trace_id: String,
    request_hash: u64,
}

impl From<SnapshotSagaV2> for SnapshotSaga {
    fn from(old: SnapshotSagaV2) -> SnapshotSaga {
        let s = old.saga;
        SnapshotSaga {
            saga: StoredSaga {
                saga_id: s.saga_id,
                saga_type: s.saga_type,
                definition_version: s.definition_version,
                status: s.status,
                seq: s.seq,
                created_at_ms: s.created_at_ms,
                updated_at_ms: s.updated_at_ms,
                steps: s.steps,
                pending: s.pending,
                failure_reason: s.failure_reason,
                trace_id: s.trace_id,
                request_hash: s.request_hash,
                results_bytes: 0,
            },
            first_offset: old.first_offset,
            last_offset: old.last_offset,
            events: old.events,
        }
    }
}

impl SnapshotSaga {
    /// The saga as a snapshot keeps it, if it is active (finished ones are the index's).
    pub(crate) fn of(slot: &Slot) -> Option<SnapshotSaga> {
        let active = slot.state.status.is_some() && !slot.state.is_terminal();
        active.then(|| SnapshotSaga {
            saga: StoredSaga::from(&slot.state),
            first_offset: slot.first_offset,
            last_offset: slot.last_offset,
            events: slot.events,
        })
    }
}

fn bincode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
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
    /// What command delivery holds back (pauses and resumes folded in).
    pub delivery: Delivery,
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
            delivery: Delivery::default(),
            unindexed: Vec::new(),
            indexed_below: u64::MAX,
        }
    }

    fn shard(&self, saga_id: &str) -> &Shard {
        &self.shards[shard_index(saga_id, self.shards.len())]
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
    let newest = if use_snapshots {
        newest_usable(snapshots, shards, start..=head)?
    } else {
        None
    };
    let mut restored = match newest.map(|r| Restored { indexed_below, ..r }) {
        Some(r) => r,
        None if start == 0 => Restored {
            indexed_below,
            ..Restored::empty(shards)
        },
        None => return Err(Inconsistency::NoSnapshotBelowStart { start }.into()),
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
    restored.count_sagas();
    tracing::info!(
        snapshot_offset = from,
        replayed = restored.replayed,
        active = restored.active,
        "engine state rebuilt"
    );
    Ok(restored)
}

/// The newest snapshot that loads and lies within `within` (the log's offsets): older
/// ones stand in for one that is damaged or unusable; `None` when none does.
fn newest_usable(
    snapshots: &SnapshotStore,
    shards: usize,
    within: std::ops::RangeInclusive<u64>,
) -> Result<Option<Restored>> {
    for info in snapshots.list()? {
        if !within.contains(&info.offset) {
            tracing::warn!(
                snapshot = %info.path.display(), start = within.start(), head = within.end(),
                "snapshot offset is outside the log; skipping it"
            );
            continue;
        }
        match load_snapshot(snapshots, &info, shards) {
            Ok(r) => return Ok(Some(r)),
            Err(e) => tracing::warn!(
                snapshot = %info.path.display(), error = %e,
                "unusable snapshot; falling back to an older one or the whole log"
            ),
        }
    }
    Ok(None)
}

impl Restored {
    /// Timers and the active count from the sagas left, once, rather than per record.
    fn count_sagas(&mut self) {
        for shard in self.shards.iter() {
            for slot in shard.lock().values() {
                let summary = Summary::of(&slot.state);
                if let Some(due) = summary.due_ms {
                    self.timers.insert((due, slot.state.saga_id.clone()));
                }
                self.active += usize::from(summary.is_active());
            }
        }
    }
}

/// Whether a snapshot reads back whole and fits its definitions (`sagalog verify`).
pub(crate) fn check_snapshot(store: &SnapshotStore, info: &SnapshotInfo) -> Result<()> {
    load_snapshot(store, info, 1).map(|_| ())
}

/// Restores what the snapshot `info` holds, streaming it from its file; its checksum
/// is checked at the end, and nothing it read is used unless it passes. When the body
/// does not decode, the checksum says whether the file is damaged (the usual cause).
fn load_snapshot(store: &SnapshotStore, info: &SnapshotInfo, shards: usize) -> Result<Restored> {
    let mut reader = store.reader(info)?;
    match decode_snapshot(&mut reader, info, shards) {
        Ok(restored) => {
            reader.finish()?;
            Ok(restored)
        }
        Err(e) => {
            std::io::copy(&mut reader, &mut std::io::sink()).map_err(|io| {
                StorageError::Snapshot {
                    path: info.path.clone(),
                    reason: format!("short data: {io}"),
                }
            })?;
            reader.finish()?;
            Err(e)
        }
    }
}

fn decode_snapshot(
    reader: &mut sagalog_storage::snapshot::SnapshotReader,
    info: &SnapshotInfo,
    shards: usize,
) -> Result<Restored> {
    let offset = reader.offset();
    let bad = |reason: String| -> EngineError {
        Inconsistency::BadSnapshot {
            path: info.path.clone(),
            offset,
            reason,
        }
        .into()
    };
    let format: u8 = decode(reader, &bad)?;
    let body_offset: u64 = decode(reader, &bad)?;
    if body_offset != offset {
        return Err(bad(format!("its body says offset {body_offset}")));
    }
    let definitions: Vec<String> = decode(reader, &bad)?;
    let mut restored = Restored::empty(shards);
    for json in &definitions {
        let definition = Definition::from_json(json).map_err(|e| bad(e.to_string()))?;
        restored
            .registry
            .restore(definition)
            .map_err(|e| bad(e.to_string()))?;
    }
    let counters = match format {
        SNAPSHOT_FORMAT_V1 => {
            let sagas: Vec<SnapshotSagaV2> = decode(reader, &bad)?;
            restore_sagas(&restored, sagas.into_iter().map(Into::into), &bad)?;
            decode(reader, &bad)?
        }
        SNAPSHOT_FORMAT_V2 => {
            let counters: Counters = decode(reader, &bad)?;
            loop {
                let chunk: Vec<SnapshotSagaV2> = decode(reader, &bad)?;
                if chunk.is_empty() {
                    break;
                }
                restore_sagas(&restored, chunk.into_iter().map(Into::into), &bad)?;
            }
            counters
        }
        SNAPSHOT_FORMAT_V3 | SNAPSHOT_FORMAT => {
            let counters: Counters = decode(reader, &bad)?;
            if format == SNAPSHOT_FORMAT {
                restored.delivery = decode(reader, &bad)?;
            }
            loop {
                let chunk: Vec<SnapshotSaga> = decode(reader, &bad)?;
                if chunk.is_empty() {
                    break;
                }
                restore_sagas(&restored, chunk, &bad)?;
            }
            counters
        }
        other => return Err(bad(format!("format {other} is not one this build reads"))),
    };
    restored.projections = Projections::from_counters(counters);
    restored.snapshot_offset = offset;
    Ok(restored)
}

/// Decodes the next part of a snapshot body.
fn decode<T: Decode<()>>(
    reader: &mut impl std::io::Read,
    bad: &impl Fn(String) -> EngineError,
) -> Result<T> {
    bincode::decode_from_std_read(reader, bincode_config()).map_err(|e| bad(e.to_string()))
}

/// Puts snapshot sagas into the restored shards, on their definitions.
fn restore_sagas(
    restored: &Restored,
    sagas: impl IntoIterator<Item = SnapshotSaga>,
    bad: &impl Fn(String) -> EngineError,
) -> Result<()> {
    for SnapshotSaga {
        saga,
        first_offset,
        last_offset,
        events,
    } in sagas
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
        let mut sagas = restored.shard(&id).lock();
        if sagas.get(&id).is_some() {
            return Err(bad(format!("saga {id} is in it twice")));
        }
        sagas.insert(Slot {
            state,
            busy: false,
            epoch: 0,
            first_offset,
            last_offset,
            events,
        });
    }
    Ok(())
}

/// The new saga a `saga_started` record at `offset` begins, on the definition it names
/// (`None` for any other record).
fn started(registry: &Registry, r: &Record, offset: u64) -> Result<Option<Slot>> {
    let Kind::SagaStarted {
        saga_type,
        definition_version,
        ..
    } = &r.kind
    else {
        return Ok(None);
    };
    let definition = registry
        .get(saga_type, *definition_version)
        .cloned()
        .ok_or_else(|| Inconsistency::StartOnUnregistered {
            saga_id: r.saga_id.to_string(),
            offset,
            saga_type: saga_type.clone(),
            version: *definition_version,
        })?;
    Ok(Some(Slot {
        state: SagaState::new(r.saga_id.as_str(), definition),
        busy: false,
        epoch: 0,
        first_offset: offset,
        last_offset: offset,
        events: 0,
    }))
}

/// Folds one log record into the restored state.
fn fold(restored: &mut Restored, record: &sagalog_storage::LogRecord) -> Result<()> {
    let r = match decode_at(record)? {
        Entry::Saga { record: r, .. } => r,
        Entry::DefinitionRegistered { json } => {
            let definition =
                Definition::from_json(&json).map_err(|e| Inconsistency::BadDefinition {
                    offset: record.offset,
                    reason: e.to_string(),
                })?;
            restored.registry.restore(definition)?;
            return Ok(());
        }
        Entry::DeadLettered { .. } | Entry::DeadLetterReplayed { .. } => return Ok(()),
        Entry::DeliveryPaused { topics, .. } => {
            restored.delivery.pause(&topics);
            return Ok(());
        }
        Entry::DeliveryResumed { topics, at_ms } => {
            let before = restored.delivery.clone();
            restored.delivery.resume(&topics);
            // As the live resume does: the sagas waiting on a resumed topic get their
            // step's timeout again from the resume (timers are counted at the end).
            for shard in restored.shards.iter() {
                for slot in shard.lock().values_mut() {
                    extend_after_resume(&mut slot.state, &before, &restored.delivery, at_ms);
                }
            }
            return Ok(());
        }
    };
    let Restored {
        registry,
        shards,
        projections,
        unindexed,
        indexed_below,
        ..
    } = restored;
    let shard = &shards[shard_index(&r.saga_id, shards.len())];
    let mut sagas = shard.lock();
    if let Some(slot) = started(registry, &r, record.offset)? {
        sagas.insert(slot);
    }
    let Some(slot) = sagas.get_mut(&r.saga_id) else {
        return Err(Inconsistency::NotActive {
            saga_id: r.saga_id.to_string(),
            offset: record.offset,
        }
        .into());
    };
    let key = slot.state.saga_id.clone();
    if r.seq != slot.state.seq + 1 {
        return Err(Inconsistency::OutOfSequence {
            saga_id: r.saga_id.to_string(),
            offset: record.offset,
            seq: r.seq,
            after: slot.state.seq,
        }
        .into());
    }
    let before = Summary::of(&slot.state);
    apply_mut(&mut slot.state, &r);
    let records = std::slice::from_ref(&r);
    slot.recorded(records, &(record.offset..record.offset + 1));
    if before.place != Summary::of(&slot.state).place {
        projections.recorded(&slot.state.definition.name, before.place, records);
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

/// Rebuilds the indexes of the (closed) data directory `dir` from its log, from
/// nothing; returns how many records it read.
pub(crate) fn reindex(dir: &std::path::Path, config: &crate::config::EngineConfig) -> Result<u64> {
    let data = sagalog_storage::DataDir::open(dir)?;
    let (log, _) = data.open_log(config.log.clone())?;
    let index = data.open_index()?;
    index.clear()?;
    catch_up_index(&log, &index, &Keys::default(), config.index_batch_records)?;
    index.flush()?;
    Ok(log.next_offset() - log.start_offset())
}
