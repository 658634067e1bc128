//! Projections: what the engine derives from the log besides the sagas themselves —
//! status counts (the gauges), per-type counters, and the sagas in memory ordered by
//! status and `updated_at` (for listing and for the oldest saga per status).
//!
//! Invariant: the projections equal a fold of the log through the offset the engine's
//! in-memory state reflects; snapshots store them with that offset, and replay goes on
//! from there, so after a restart every gauge equals its value before the stop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::record::Status;

/// A saga's place in the projections: its status and when it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub status: Status,
    pub updated_at_ms: u64,
}

/// Counters kept per saga type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct TypeCounters {
    /// Sagas that entered each status (indexed by `Status::index`).
    pub entered: [u64; 6],
}

/// The parts of the projections a snapshot stores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct Counters {
    /// Sagas now in each status (indexed by `Status::index`); terminal statuses count
    /// every saga that ever ended there.
    pub status_counts: [u64; 6],
    pub by_type: BTreeMap<String, TypeCounters>,
    /// Unix ms of the latest saga that failed (`saga_last_failed_timestamp`), 0 if none.
    pub last_failed_at_ms: u64,
}

#[derive(Debug, Default)]
pub struct Projections {
    pub counters: Counters,
    /// The sagas held in memory, per status, ordered by (`updated_at_ms`, id).
    by_status: [BTreeSet<(u64, Arc<str>)>; 6],
}

impl Projections {
    pub fn from_counters(counters: Counters) -> Projections {
        Projections {
            counters,
            by_status: Default::default(),
        }
    }

    /// Moves a saga from `before` to `after` (either `None` when it enters or leaves
    /// memory) and counts a status change.
    pub fn moved(
        &mut self,
        id: &Arc<str>,
        saga_type: &str,
        before: Option<Place>,
        after: Option<Place>,
    ) {
        if let Some(b) = before {
            self.by_status[b.status.index()].remove(&(b.updated_at_ms, id.clone()));
        }
        if let Some(a) = after {
            self.by_status[a.status.index()].insert((a.updated_at_ms, id.clone()));
        }
        self.count(
            saga_type,
            before.map(|b| b.status),
            after.map(|a| a.status),
            after,
        );
    }

    /// Takes a saga out of memory without changing any count (it stays in the index).
    pub fn evicted(&mut self, id: &Arc<str>, place: Place) {
        self.by_status[place.status.index()].remove(&(place.updated_at_ms, id.clone()));
    }

    /// Puts a saga restored from a snapshot back into the ordered sets (its counts are
    /// in the snapshot's counters already).
    pub fn restored(&mut self, id: &Arc<str>, place: Place) {
        self.by_status[place.status.index()].insert((place.updated_at_ms, id.clone()));
    }

    fn count(
        &mut self,
        saga_type: &str,
        from: Option<Status>,
        to: Option<Status>,
        after: Option<Place>,
    ) {
        let Some(to) = to else { return };
        if from == Some(to) {
            return;
        }
        if let Some(from) = from {
            let count = &mut self.counters.status_counts[from.index()];
            *count = count.saturating_sub(1);
        }
        self.counters.status_counts[to.index()] += 1;
        let by_type = match self.counters.by_type.get_mut(saga_type) {
            Some(c) => c,
            None => self
                .counters
                .by_type
                .entry(saga_type.to_string())
                .or_default(),
        };
        by_type.entered[to.index()] += 1;
        if to == Status::Failed || to == Status::CompensationFailed {
            let at = after.map_or(0, |a| a.updated_at_ms);
            self.counters.last_failed_at_ms = self.counters.last_failed_at_ms.max(at);
        }
    }

    /// The in-memory sagas of `status`, newest first, strictly below `before` (an
    /// `(updated_at_ms, id)` cursor) and within `[from_ms, to_ms]`.
    pub fn newest(
        &self,
        status: Status,
        before: Option<&(u64, Arc<str>)>,
        from_ms: u64,
        to_ms: u64,
    ) -> impl Iterator<Item = &(u64, Arc<str>)> + '_ {
        use std::ops::Bound;
        let empty: Arc<str> = Arc::from("");
        let past_to = (to_ms.saturating_add(1), empty.clone());
        let upper = match before {
            Some(cursor) if *cursor < past_to => cursor.clone(),
            _ => past_to,
        };
        let lower = (from_ms, empty);
        let range = if lower < upper {
            Some(
                self.by_status[status.index()]
                    .range((Bound::Included(lower), Bound::Excluded(upper))),
            )
        } else {
            None
        };
        range.into_iter().flat_map(|r| r.rev())
    }

    /// The `updated_at_ms` of the saga that has been longest in `status`, among those
    /// in memory (every active saga is).
    pub fn oldest_updated_ms(&self, status: Status) -> Option<u64> {
        self.by_status[status.index()].first().map(|(at, _)| *at)
    }

    /// Sagas in memory per status.
    pub fn in_memory(&self, status: Status) -> usize {
        self.by_status[status.index()].len()
    }
}
