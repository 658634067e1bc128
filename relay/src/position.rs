//! The relay's position: the first log offset whose command may not have reached
//! Kafka. Kept as the engine's durable cursor `relay`; every record below it was
//! published (or dead-lettered). Losing a recent update only republishes a little
//! (at-least-once); it never skips.

use sagalog_engine::{Cursor, Engine};

/// The cursor's name (its keyspace beside the indexes).
pub const CURSOR: &str = "relay";

pub fn cursor(engine: &Engine) -> Cursor {
    engine.cursor(CURSOR)
}
