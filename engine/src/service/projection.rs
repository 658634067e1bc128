//! Projections: what the engine derives from the log besides the sagas themselves —
//! status counts (the gauges) and per-type counters. (Listing and the oldest saga per
//! status scan the sagas in memory instead of keeping them ordered: an ordered set
//! would cost every active saga ~40 bytes more, for queries that are rare.)
//!
//! Invariant: the projections equal a fold of the log through the offset the engine's
//! in-memory state reflects; snapshots store them with that offset, and replay goes on
//! from there, so after a restart every gauge equals its value before the stop.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};

use crate::model::record::{Record, Status};

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

impl Counters {
    /// Sagas of every type that ever entered `status`.
    pub fn entered(&self, status: Status) -> u64 {
        self.by_type
            .values()
            .map(|t| t.entered[status.index()])
            .sum()
    }
}

#[derive(Debug, Default)]
pub struct Projections {
    pub counters: Counters,
}

impl Projections {
    /// Counts the statuses `records` take a saga of `saga_type` through from `before`,
    /// record by record (a first step failing for good goes FAILED, then COMPENSATED, in
    /// one transaction); returns where it ends. The live install and replay both count
    /// through here.
    pub fn recorded(
        &mut self,
        saga_type: &str,
        before: Option<Place>,
        records: &[Record],
    ) -> Option<Place> {
        let mut place = before;
        for record in records {
            let status = crate::model::state::status_after(place.map(|p| p.status), &record.kind);
            let next = status.map(|status| Place {
                status,
                updated_at_ms: record.at_ms,
            });
            self.moved(saga_type, place, next);
            place = next;
        }
        place
    }

    pub fn from_counters(counters: Counters) -> Projections {
        Projections { counters }
    }

    /// Counts a saga moving from `before` to `after` (`None` before it starts).
    pub fn moved(&mut self, saga_type: &str, before: Option<Place>, after: Option<Place>) {
        let (from, Some(to)) = (before.map(|b| b.status), after.map(|a| a.status)) else {
            return;
        };
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
}
