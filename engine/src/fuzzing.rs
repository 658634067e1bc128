//! What the fuzz targets in `fuzz/` check, kept here so that their corpora (and every
//! crash found, saved there) run as ordinary tests on stable too
//! (`engine/tests/fuzz_corpus.rs`). Each function panics when an invariant breaks.

use std::sync::Arc;

use crate::model::decider::{decide_and_apply, Input, Outcome, Reply};
use crate::model::definition::Registry;
use crate::model::record::{peek, Entry, Status};
use crate::model::state::{apply, SagaState};

/// The record decoder: never panics; what decodes re-encodes to the same entry, and the
/// peek the indexer uses reads what the full decode reads.
pub fn record(bytes: &[u8]) {
    let peeked = peek(bytes);
    let Ok(entry) = Entry::decode(bytes) else {
        return;
    };
    assert_eq!(
        Entry::decode(&entry.encode()).ok().as_ref(),
        Some(&entry),
        "round trip"
    );
    match (&entry, peeked) {
        (Entry::Saga { link, record }, Ok(Some(p))) => {
            assert_eq!(
                (*link, &*record.saga_id, record.at_ms),
                (p.link, p.saga_id, p.at_ms)
            );
        }
        (Entry::Saga { .. }, other) => panic!("decodes as a saga record, peeks as {other:?}"),
        (_, Ok(None)) => {}
        (_, other) => panic!("decodes as another entry, peeks as {other:?}"),
    }
}

const OUTCOMES: [Outcome; 4] = [
    Outcome::Succeeded,
    Outcome::Failed,
    Outcome::Compensated,
    Outcome::CompensationFailed,
];

/// The decider driven by an arbitrary sequence of inputs (each from three bytes) on the
/// built-in `order` definition: never panics; the state it returns is the fold of the
/// records it emits; a finished saga takes no new record except an operator's.
pub fn decider(bytes: &[u8]) {
    let definition = Registry::with_builtin()
        .get("order", 1)
        .cloned()
        .expect("the built-in definition");
    let mut state = SagaState::new(Arc::<str>::from("fuzz"), definition.clone());
    let mut now_ms = 1_700_000_000_000u64;
    let start = Input::Start {
        payload: "{}".into(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        request_hash: 1,
    };
    state = decide_and_apply(&state, start, now_ms)
        .expect("a start is taken")
        .1;
    for (n, op) in bytes.chunks_exact(3).enumerate() {
        let (kind, a, b) = (op[0] % 6, op[1], op[2]);
        let input = match kind {
            0 | 1 => {
                // A reply: to the pending command when `kind` is 0, else to anything.
                let (step, attempt) = match (kind, state.pending) {
                    (0, Some(p)) => (usize::from(p.step), p.attempt),
                    _ => (usize::from(a % 4), u32::from(b % 4)),
                };
                let step = definition
                    .steps
                    .get(step)
                    .map_or_else(|| format!("step_{step}"), |s| s.name.clone());
                Input::Reply(Reply {
                    event_id: format!("e{}", usize::from(b) % (n + 1)),
                    step,
                    outcome: OUTCOMES[usize::from(a) % 4],
                    attempt,
                    data: String::new(),
                    reason: String::new(),
                })
            }
            2 => {
                now_ms += u64::from(a) * u64::from(b) * 100;
                Input::Tick
            }
            3 => Input::Retry,
            4 => Input::Override {
                to: Status::ALL[usize::from(a) % Status::ALL.len()],
                reason: "fuzz".into(),
            },
            _ => Input::Tick,
        };
        let overriding = matches!(input, Input::Override { .. } | Input::Retry);
        let finished = state.is_terminal();
        if let Ok((records, after)) = decide_and_apply(&state, input, now_ms) {
            assert!(
                !finished || records.is_empty() || overriding,
                "a finished saga took {records:?}"
            );
            let folded = records.iter().fold(state.clone(), apply);
            assert_eq!(
                folded, after,
                "the state returned is the fold of the records"
            );
            if let Some(first) = records.first() {
                assert_eq!(first.seq, state.seq + 1);
            }
            state = after;
        }
    }
}
