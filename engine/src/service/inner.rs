//! What the engine's parts share: one `Inner` behind an `Arc`, held by the façade
//! (`Engine`), its two threads and the tasks they spawn. Each field is a component that
//! owns its own state and locks (the sagas in memory, the timers, the indexer's
//! progress, the snapshots' bookkeeping) or a handle that is safe to share (the log,
//! the index store). The operations over several of them live in the modules that
//! `impl Inner`: `transaction`, `effects`, `finished`, `capture`, `retention`, `list`,
//! `feed` and `background`.
//!
//! Owners: `registry` changes only once a definition's record is durable (the façade's
//! `register_definition`); `sagas`' slots only in `transaction` (decide, install,
//! release) and `background` (finished sagas leaving memory); `projections` only in
//! `effects` (and `replay` before anything runs); the timers' set in `effects` and
//! `background` (due ones taken, a failed tick put back); `retained_from` only in
//! `retention`.
//!
//! Lock order (ARCHITECTURE.md has the whole map): the retention turn and the snapshot
//! turn come before the snapshot `gate` (a tokio `RwLock`, shared by every write across
//! its durable wait, exclusive for a snapshot's cut and for retention's); then at most
//! one shard lock; then the projections, the timers' set, the progress maps or the
//! registry, each a leaf, and the storage crate's locks.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sagalog_storage::{IndexStore, Log};

use crate::config::{Clock, EngineConfig};
use crate::error::{EngineError, Inconsistency, Result};
use crate::model::definition::Registry;
use crate::model::record::Entry;
use crate::service::active::{ActiveSagas, Shard};
use crate::service::indexing::Keys;
use crate::service::progress::Progress;
use crate::service::projection::Projections;
use crate::service::snapshots::Snapshots;
use crate::service::timers::Timers;
use crate::shutdown::Stop;

/// List calls that scan at once; more wait for a turn.
pub const MAX_CONCURRENT_SCANS: usize = 4;

pub(crate) struct Inner {
    pub config: EngineConfig,
    pub clock: Arc<dyn Clock>,
    pub log: Log,
    pub index: IndexStore,
    pub keys: Keys,
    pub registry: RwLock<Registry>,
    pub sagas: ActiveSagas,
    pub projections: Mutex<Projections>,
    /// The due times of the sagas in memory, and the timer thread's wake-ups.
    pub timers: Timers,
    /// The indexer's progress: its watermark, the finished sagas waiting for it, the
    /// filter of finished ids.
    pub progress: Progress,
    pub snapshots: Snapshots,
    /// The snapshot gate (see the lock order above).
    pub gate: Arc<tokio::sync::RwLock<()>>,
    /// Turns for list scans.
    pub scans: Arc<tokio::sync::Semaphore>,
    /// Records replayed at open.
    pub replayed: u64,
    pub stop: Stop,
    pub ids: Ids,
    /// One retention pass at a time.
    pub retention: Mutex<()>,
    /// Sagas that started below this offset are removed (retention chose to delete
    /// their records; the files may still be there).
    pub retained_from: AtomicU64,
    /// The reserve was released at open: the disk was full.
    pub reserve_released: bool,
    /// What command delivery holds back; changes only once its entry is durable
    /// (`delivery`), and is followed by the relay and the outbox.
    pub delivery: tokio::sync::watch::Sender<crate::model::delivery::Delivery>,
}

impl Inner {
    pub fn shard(&self, saga_id: &str) -> &Shard {
        self.sagas.shard(saga_id)
    }

    /// Appends one log entry that is not a saga record (a definition, a dead letter, a
    /// replay of one); its offset once durable.
    pub async fn append_entry(&self, entry: Entry) -> Result<u64> {
        self.log
            .append(entry.encode())
            .await
            .map_err(EngineError::Unavailable)
    }

    /// Refuses saga `saga_id`, whose first record is at `first_offset`, when retention
    /// removed it (it started below the retained start).
    pub fn check_retained(&self, saga_id: &str, first_offset: u64) -> Result<()> {
        let start = self.retained_from.load(Ordering::SeqCst);
        if first_offset < start {
            return Err(EngineError::SagaRemoved {
                saga_id: saga_id.to_string(),
                start,
            });
        }
        Ok(())
    }

    pub fn not_found(&self, saga_id: &str) -> EngineError {
        EngineError::SagaNotFound {
            saga_id: saga_id.to_string(),
            log_start: self.log.start_offset(),
        }
    }
}

/// Ids and trace ids for the sagas whose caller did not give one.
#[derive(Default)]
pub(crate) struct Ids {
    hasher: std::collections::hash_map::RandomState,
    counter: AtomicU64,
}

impl Ids {
    /// A random (version 4) UUID: SipHash with a random per-process key over a counter
    /// — unpredictable and unique, without a system call per id.
    pub fn random_uuid(&self) -> uuid::Uuid {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let high = self.hasher.hash_one((n, 0u8));
        let low = self.hasher.hash_one((n, 1u8));
        let bytes = (u128::from(high) << 64 | u128::from(low)).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// An engine task that panicked or was cancelled (`what` it was doing).
pub(crate) fn task_failed(what: &'static str, e: tokio::task::JoinError) -> EngineError {
    Inconsistency::TaskFailed {
        what,
        reason: e.to_string(),
    }
    .into()
}
