//! The record (bincode) decoder and the indexer's peek.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sagalog_engine::fuzzing::record(data));
