//! The relay's position: the first log offset whose command may not have reached
//! Kafka. Kept in the index store under its own keyspace; every record below it was
//! published (or dead-lettered). Losing a recent update only republishes a little
//! (at-least-once); it never skips.

use sagalog_storage::{IndexStore, Keyspace};

use crate::Result;

const KEY: &[u8] = b"position";

fn space() -> Keyspace {
    Keyspace::new("relay")
}

/// The stored position, 0 when the relay never ran.
pub fn load(index: &IndexStore) -> Result<u64> {
    Ok(index
        .get(&space(), KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

pub fn store(index: &IndexStore, position: u64) -> Result<()> {
    index.put(&space(), KEY, &position.to_be_bytes())?;
    Ok(())
}

/// Stores and flushes, for a clean stop.
pub fn store_durably(index: &IndexStore, position: u64) -> Result<()> {
    store(index, position)?;
    index.flush()?;
    Ok(())
}
