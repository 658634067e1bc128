//! The table of sagas held in memory, one per shard: each saga boxed and keyed by the
//! id inside it, so the table itself costs one pointer per saga. Hashing is SipHash
//! with a per-table random key: saga ids come from clients, so a predictable hash
//! would let one flood a bucket.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::engine::Slot;

#[derive(Default)]
pub(crate) struct SagaTable {
    table: HashTable<Box<Slot>>,
    hasher: RandomState,
}

impl SagaTable {
    fn hash(&self, saga_id: &str) -> u64 {
        self.hasher.hash_one(saga_id)
    }

    pub fn get(&self, saga_id: &str) -> Option<&Slot> {
        let hash = self.hash(saga_id);
        self.table
            .find(hash, |slot| *slot.state.saga_id == *saga_id)
            .map(|slot| &**slot)
    }

    pub fn get_mut(&mut self, saga_id: &str) -> Option<&mut Slot> {
        let hash = self.hash(saga_id);
        self.table
            .find_mut(hash, |slot| *slot.state.saga_id == *saga_id)
            .map(|slot| &mut **slot)
    }

    /// Adds a saga that is not in the table.
    pub fn insert(&mut self, slot: Slot) {
        let hash = self.hash(&slot.state.saga_id);
        debug_assert!(
            self.get(&slot.state.saga_id).is_none(),
            "a saga is inserted once"
        );
        let hasher = &self.hasher;
        self.table.insert_unique(hash, Box::new(slot), |slot| {
            hasher.hash_one(&*slot.state.saga_id)
        });
    }

    pub fn remove(&mut self, saga_id: &str) -> Option<Box<Slot>> {
        let hash = self.hash(saga_id);
        self.table
            .find_entry(hash, |slot| *slot.state.saga_id == *saga_id)
            .ok()
            .map(|entry| entry.remove().0)
    }

    pub fn values(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.table.iter().map(|slot| &**slot)
    }
}
