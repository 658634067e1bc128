//! The decider driven by arbitrary input sequences.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sagalog_engine::fuzzing::decider(data));
