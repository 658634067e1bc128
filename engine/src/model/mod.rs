//! The pure core: definitions, records, state and decisions, and where a saga lives. Nothing here does I/O or
//! reads a clock; the service and replay call it, and so do the tests and fuzz targets.

pub mod decider;
pub mod definition;
pub mod delivery;
pub mod placement;
pub mod record;
pub mod state;
