//! The table of sagas held in memory, one per shard: each saga boxed and keyed by the
//! id inside it, so the table itself costs one pointer per saga. Hashing is SipHash
//! with a per-table random key: saga ids come from clients, so a predictable hash
//! would let one flood a bucket.
//!
//! Snapshots copy on write. A snapshot's cut (taken with no write in flight) starts a
//! [`Capture`] in every table; from then on the table keeps the image of each saga as
//! it was at the cut before it first changes it or lets it go (`get_mut`, `remove`),
//! and marks it so that the image is taken once. The snapshot reads the sagas nobody
//! touched yet, a chunk at a time with the lock let go in between, marking each; what
//! was touched meanwhile it takes from the images. Sagas added after the cut are
//! marked at once and never captured. So the snapshot is exactly the state at the
//! cut, while writes go on.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use std::ops::Range;

use crate::model::record::{Kind, Record};
use crate::model::state::SagaState;

/// A saga in memory, with what the engine keeps beside its state.
#[derive(Clone)]
pub(crate) struct Slot {
    pub state: SagaState,
    pub busy: bool,
    /// The snapshot capture that last saw it (see `table`): 0 for none yet.
    pub epoch: u32,
    /// Offset of the saga's `saga_started` record (which holds the payload).
    pub first_offset: u64,
    /// Offset of the saga's latest record.
    pub last_offset: u64,
    /// A two-bit-per-id filter of the `event_id`s the saga has recorded: a reply whose
    /// bits are not all set is new without reading the log.
    pub events: u64,
}

impl Slot {
    /// Notes `records`, appended at `offsets`, as the saga's latest (its state holds them
    /// already): where its records start and end, and the event ids it has answered.
    /// The live install and replay both note records through here.
    pub fn recorded(&mut self, records: &[Record], offsets: &Range<u64>) {
        if matches!(
            records.first().map(|r| &r.kind),
            Some(Kind::SagaStarted { .. })
        ) {
            self.first_offset = offsets.start;
        }
        self.last_offset = offsets.end - 1;
        for record in records {
            if let Some((event_id, _)) = record.kind.reply() {
                self.events |= event_bits(event_id);
            }
        }
    }
}

/// The bits an `event_id` sets in [`Slot::events`].
/// Snapshots store these filters: changing this function needs a new snapshot format.
pub(crate) fn event_bits(event_id: &str) -> u64 {
    // FNV's low bits barely differ between ids that differ only at the end (`…/step`):
    // take the bit numbers from the top of a multiplicative mix instead.
    let hash = fnv1a(event_id.bytes()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (1 << (hash >> 58)) | (1 << ((hash >> 52) & 63))
}

/// FNV-1a: stable across builds and platforms (it is stored in the log), and cheap.
pub(crate) fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[derive(Default)]
pub(crate) struct SagaTable {
    table: HashTable<Box<Slot>>,
    hasher: RandomState,
    capture: Option<Box<Capture>>,
}

/// A snapshot being captured from this table.
struct Capture {
    /// Sagas marked with it are captured, or have their cut image in `images`, or were
    /// added after the cut.
    epoch: u32,
    /// Sagas as they were at the cut, taken before they first changed after it.
    images: Vec<Slot>,
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

    /// The saga, to change it (a capture in progress keeps its image first).
    pub fn get_mut(&mut self, saga_id: &str) -> Option<&mut Slot> {
        let hash = self.hash(saga_id);
        let slot = self
            .table
            .find_mut(hash, |slot| *slot.state.saga_id == *saga_id)?;
        if let Some(capture) = &mut self.capture {
            if slot.epoch != capture.epoch {
                slot.epoch = capture.epoch;
                capture.images.push((**slot).clone());
            }
        }
        Some(&mut **slot)
    }

    /// Adds a saga that is not in the table.
    pub fn insert(&mut self, mut slot: Slot) {
        let hash = self.hash(&slot.state.saga_id);
        debug_assert!(
            self.get(&slot.state.saga_id).is_none(),
            "a saga is inserted once"
        );
        if let Some(capture) = &self.capture {
            slot.epoch = capture.epoch;
        }
        let hasher = &self.hasher;
        self.table.insert_unique(hash, Box::new(slot), |slot| {
            hasher.hash_one(&*slot.state.saga_id)
        });
    }

    /// Lets the saga go (a capture in progress keeps its image).
    pub fn remove(&mut self, saga_id: &str) {
        let hash = self.hash(saga_id);
        let Ok(entry) = self
            .table
            .find_entry(hash, |slot| *slot.state.saga_id == *saga_id)
        else {
            return;
        };
        let slot = entry.remove().0;
        if let Some(capture) = &mut self.capture {
            if slot.epoch != capture.epoch {
                capture.images.push(*slot);
            }
        }
    }

    /// Starts a capture for the snapshot `epoch` (at its cut, with no write in flight).
    pub fn begin_capture(&mut self, epoch: u32) {
        assert!(self.capture.is_none(), "one snapshot captures at a time");
        self.capture = Some(Box::new(Capture {
            epoch,
            images: Vec::new(),
        }));
    }

    /// The ids of the sagas no one touched since the cut (the ones left to capture).
    pub fn untouched(&self) -> Vec<std::sync::Arc<str>> {
        let Some(capture) = &self.capture else {
            return Vec::new();
        };
        self.table
            .iter()
            .filter(|slot| slot.epoch != capture.epoch)
            .map(|slot| slot.state.saga_id.clone())
            .collect()
    }

    /// The saga `saga_id` as it was at the cut, marked captured, if no one touched it
    /// since (else its image is kept, or it came after the cut).
    pub fn capture(&mut self, saga_id: &str) -> Option<Slot> {
        let epoch = self.capture.as_ref()?.epoch;
        let hash = self.hash(saga_id);
        let slot = self
            .table
            .find_mut(hash, |slot| *slot.state.saga_id == *saga_id)?;
        if slot.epoch == epoch {
            return None;
        }
        slot.epoch = epoch;
        Some((**slot).clone())
    }

    /// Ends the capture: the images of the sagas touched since the cut.
    pub fn end_capture(&mut self) -> Vec<Slot> {
        self.capture.take().map(|c| c.images).unwrap_or_default()
    }

    pub fn values(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.table.iter().map(|slot| &**slot)
    }

    /// Every saga, to change it; only while no capture is in progress (replay), since
    /// a change must keep the capture's image first (see `get_mut`).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Slot> + '_ {
        assert!(
            self.capture.is_none(),
            "no capture while every saga is changed"
        );
        self.table.iter_mut().map(|slot| &mut **slot)
    }

    /// The ids of every saga.
    pub fn ids(&self) -> Vec<std::sync::Arc<str>> {
        self.table
            .iter()
            .map(|slot| slot.state.saga_id.clone())
            .collect()
    }
}
