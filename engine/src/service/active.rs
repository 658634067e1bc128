//! The sagas in memory: every active saga, and finished ones until the indexer lets
//! them go. They live in shards, each a `parking_lot` mutex over a [`SagaTable`], with
//! the shard's wake-up for inputs waiting on a busy saga and its count of sagas that
//! left memory. This module owns the shards and the count of active sagas; the scans
//! that read every saga in memory (stats, retention's floor, snapshots, listing) go
//! through [`ActiveSagas::shards`], one shard's lock at a time.
//!
//! Lock order: under a shard's lock only the projections (`installed`), the timers'
//! set, the progress maps and the registry are taken, each briefly — and the storage
//! crate's locks by the last-resort read under it (see `transaction`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::model::definition::Definition;
use crate::model::record::Status;
use crate::model::state::SagaState;
use crate::service::projection::Place;
use crate::service::table::{fnv1a, SagaTable};

/// One shard of the sagas in memory.
#[derive(Default)]
pub(crate) struct Shard {
    sagas: Mutex<SagaTable>,
    idle: Notify,
    /// Sagas that left memory (finished and indexed); changed only under `sagas`' lock.
    /// A decision that read the index without the lock re-checks it (see `transaction`).
    left: AtomicU64,
}

impl Shard {
    /// The shard's table, locked (for microseconds: never across I/O).
    pub fn lock(&self) -> MutexGuard<'_, SagaTable> {
        self.sagas.lock()
    }

    /// Resolves once a busy saga of the shard is released (enable it before checking).
    pub fn idle(&self) -> Notified<'_> {
        self.idle.notified()
    }

    /// Wakes the inputs waiting for a busy saga of the shard.
    pub fn wake_idle(&self) {
        self.idle.notify_waiters();
    }

    /// How many sagas left the shard's memory so far.
    pub fn left(&self) -> u64 {
        self.left.load(Ordering::Relaxed)
    }
}

/// The shards and the count of active sagas.
pub(crate) struct ActiveSagas {
    shards: Box<[Shard]>,
    /// Sagas started and not yet in a final status (`max_active_sagas` bounds it): this
    /// engine's, or those of every partition of the process when they share the count.
    active: Arc<AtomicUsize>,
}

impl ActiveSagas {
    /// With `shared`, the count is that of several engines together, each adding its
    /// own.
    pub fn new(
        shards: Box<[Shard]>,
        active: usize,
        shared: Option<Arc<AtomicUsize>>,
    ) -> ActiveSagas {
        let count = shared.unwrap_or_default();
        count.fetch_add(active, Ordering::Relaxed);
        ActiveSagas {
            shards,
            active: count,
        }
    }

    /// The shard that holds `saga_id`.
    pub fn shard(&self, saga_id: &str) -> &Shard {
        &self.shards[shard_index(saga_id, self.shards.len())]
    }

    /// Every shard, for the scans over all sagas in memory.
    pub fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter()
    }

    /// Sagas started and not yet in a final status.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a saga that went from `before` to `after`.
    pub fn moved(&self, before: Summary, after: Summary) {
        match (before.is_active(), after.is_active()) {
            (false, true) => {
                self.active.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.active.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The type of a saga in memory.
    pub fn saga_type(&self, saga_id: &str) -> Option<String> {
        let sagas = self.shard(saga_id).lock();
        sagas
            .get(saga_id)
            .map(|slot| slot.state.definition.name.clone())
    }

    /// A started saga in memory: its state and the offset of its last record.
    pub fn state(&self, saga_id: &str) -> Option<(SagaState, u64)> {
        let sagas = self.shard(saga_id).lock();
        sagas
            .get(saga_id)
            .filter(|slot| slot.state.status.is_some())
            .map(|slot| (slot.state.clone(), slot.last_offset))
    }

    /// Where a started saga in memory has its records: (first, last) offset.
    pub fn offsets(&self, saga_id: &str) -> Option<(u64, u64)> {
        let sagas = self.shard(saga_id).lock();
        sagas
            .get(saga_id)
            .filter(|slot| slot.state.status.is_some())
            .map(|slot| (slot.first_offset, slot.last_offset))
    }

    /// Lets the finished saga `key` leave memory when the indexes hold all its records
    /// (they are below `watermark`) and no input is being decided for it.
    pub fn leave_if_indexed(&self, key: &str, watermark: u64) {
        let shard = self.shard(key);
        let mut sagas = shard.lock();
        let leave = sagas.get(key).is_some_and(|slot| {
            !slot.busy && slot.state.is_terminal() && slot.last_offset < watermark
        });
        if leave {
            sagas.remove(key);
            shard.left.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// In one pass over the sagas in memory, one shard's lock at a time: for each status
    /// that is not final, when its least recently updated saga was updated (unix ms),
    /// indexed by [`Status::index`](crate::model::record::Status::index); and the active
    /// saga updated least recently of all, the one waiting longest.
    pub fn oldest(&self) -> ([Option<u64>; 6], Option<OldestActive>) {
        let mut by_status: [Option<u64>; 6] = [None; 6];
        let mut oldest: Option<(u64, Arc<str>, Arc<Definition>, Status)> = None;
        for shard in self.shards() {
            for slot in shard.lock().values() {
                let state = &slot.state;
                let Some(status) = state.status.filter(|s| !s.is_terminal()) else {
                    continue;
                };
                let at = state.updated_at_ms;
                let of_status = &mut by_status[status.index()];
                *of_status = Some(of_status.map_or(at, |o| o.min(at)));
                let older = oldest
                    .as_ref()
                    .is_none_or(|(o_at, o_id, ..)| (at, &*state.saga_id) < (*o_at, &**o_id));
                if older {
                    let (id, definition) = (state.saga_id.clone(), state.definition.clone());
                    oldest = Some((at, id, definition, status));
                }
            }
        }
        let oldest = oldest.map(
            |(updated_at_ms, saga_id, definition, status)| OldestActive {
                saga_id: saga_id.to_string(),
                saga_type: definition.name.clone(),
                status,
                updated_at_ms,
            },
        );
        (by_status, oldest)
    }
}

/// The active saga that has waited longest since its last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldestActive {
    pub saga_id: String,
    pub saga_type: String,
    pub status: Status,
    pub updated_at_ms: u64,
}

/// The parts of a saga the projections and timers track.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub place: Option<Place>,
    pub due_ms: Option<u64>,
}

impl Summary {
    pub fn of(state: &SagaState) -> Summary {
        Summary {
            place: state.status.map(|status| Place {
                status,
                updated_at_ms: state.updated_at_ms,
            }),
            due_ms: state.pending.map(|p| p.due_ms()),
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.place.is_some_and(|p| !p.status.is_terminal())
    }
}

/// The shard of `saga_id` among `shards`.
pub(crate) fn shard_index(saga_id: &str, shards: usize) -> usize {
    (fnv1a(saga_id.bytes()) % shards as u64) as usize
}
