//! A filter of the ids of finished sagas (those that may have left memory), so that a
//! start with a new client-given id, or an input for an unknown saga, need not ask sled
//! whether a finished saga has that id: ~1.2 bytes per finished saga, about 1% false
//! positives (which only cost the sled lookup it saves otherwise).
//!
//! Invariant: every id the `saga` index holds is in the filter once it is `ready`;
//! until then it answers "maybe" for every id. The indexer thread rebuilds it from the
//! index after open (off the start-up path) and adds each id before it commits the
//! saga's entry, so before the saga can leave memory.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Ids the first filter is sized for; each further one holds twice the previous.
const FIRST_CAPACITY: usize = 1 << 16;
/// Bits per id and probes per id for ~1% false positives.
const BITS_PER_ID: usize = 10;
const PROBES: u64 = 7;

struct Filter {
    bits: Vec<u64>,
    capacity: usize,
    len: usize,
}

impl Filter {
    fn new(capacity: usize) -> Filter {
        Filter {
            bits: vec![0; (capacity * BITS_PER_ID).div_ceil(64)],
            capacity,
            len: 0,
        }
    }

    fn positions(&self, (h1, h2): (u64, u64)) -> impl Iterator<Item = usize> + '_ {
        let bits = (self.bits.len() * 64) as u64;
        (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize)
    }
}

pub(crate) struct FinishedIds {
    filters: Vec<Filter>,
    hasher: RandomState,
    ready: bool,
}

impl Default for FinishedIds {
    fn default() -> FinishedIds {
        FinishedIds {
            filters: vec![Filter::new(FIRST_CAPACITY)],
            hasher: RandomState::new(),
            ready: false,
        }
    }
}

impl FinishedIds {
    fn hashes(&self, id: &str) -> (u64, u64) {
        let h1 = self.hasher.hash_one(id);
        // An odd step, so the probes differ.
        (h1, h1.rotate_left(32) | 1)
    }

    pub fn insert(&mut self, id: &str) {
        let hashes = self.hashes(id);
        if self.filters.last().is_some_and(|f| f.len >= f.capacity) {
            let capacity = self
                .filters
                .last()
                .map_or(FIRST_CAPACITY, |f| f.capacity * 2);
            self.filters.push(Filter::new(capacity));
        }
        let filter = self.filters.last_mut().expect("one at least");
        let positions: Vec<usize> = filter.positions(hashes).collect();
        for at in positions {
            filter.bits[at / 64] |= 1 << (at % 64);
        }
        filter.len += 1;
    }

    /// Every id of the index is in: answers may be "no" from now on.
    pub fn set_ready(&mut self) {
        self.ready = true;
    }

    /// False only when `id` is in no finished saga's index entry.
    pub fn may_contain(&self, id: &str) -> bool {
        if !self.ready {
            return true;
        }
        let hashes = self.hashes(id);
        self.filters.iter().any(|filter| {
            filter
                .positions(hashes)
                .all(|at| filter.bits[at / 64] & (1 << (at % 64)) != 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_ids_are_always_found_and_others_rarely() {
        let mut ids = FinishedIds::default();
        assert!(
            ids.may_contain("anything"),
            "not ready: every id may be there"
        );
        ids.set_ready();
        let n = FIRST_CAPACITY * 3;
        for i in 0..n {
            ids.insert(&format!("saga-{i}"));
        }
        assert!(ids.filters.len() >= 2, "it grew past its first filter");
        assert!((0..n).all(|i| ids.may_contain(&format!("saga-{i}"))));
        let false_positives = (0..100_000)
            .filter(|i| ids.may_contain(&format!("other-{i}")))
            .count();
        assert!(
            false_positives < 3_000,
            "{false_positives} false positives in 100k"
        );
    }
}
