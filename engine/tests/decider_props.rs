//! Properties of the decider over random definitions and random input sequences:
//! every state reached is legal; compensations run exactly for the compensable steps
//! that completed or timed out on their last attempt, last first (a timed-out one
//! first); nothing is issued after a terminal status; folding
//! the emitted records from scratch gives the live state; snapshot plus replay equals a
//! full replay.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use sagalog_engine::definition::StepDefinition;
use sagalog_engine::record::{Action, Kind, Record, Status};
use sagalog_engine::state::StoredSaga;
use sagalog_engine::{apply, decide, Definition, Input, Outcome, Reply, SagaState, StepStatus};

const OUTCOMES: [Outcome; 4] = [
    Outcome::Succeeded,
    Outcome::Failed,
    Outcome::Compensated,
    Outcome::CompensationFailed,
];

#[derive(Debug, Clone)]
enum Op {
    /// Reply to the outstanding command: with its own action's outcome (success or
    /// failure) when `fitting`, else with any outcome.
    ReplyPending {
        fitting: bool,
        success: bool,
        outcome: usize,
    },
    /// A reply that may name any step and attempt.
    ReplyAny {
        step: usize,
        outcome: usize,
        attempt: u32,
    },
    Advance {
        ms: u64,
    },
    Override {
        status: usize,
    },
    Retry,
}

fn definition() -> impl Strategy<Value = Definition> {
    let step = (any::<bool>(), 1u32..=3, 1u64..=1_000, 1u64..=100);
    prop::collection::vec(step, 1..=5).prop_map(|steps| Definition {
        name: "prop".into(),
        version: 1,
        steps: steps
            .into_iter()
            .enumerate()
            .map(
                |(i, (compensable, max_attempts, timeout_ms, backoff_ms))| StepDefinition {
                    name: format!("step_{i}"),
                    topic: format!("step_{i}.commands"),
                    compensable,
                    timeout_ms,
                    max_attempts,
                    backoff_ms,
                },
            )
            .collect(),
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), any::<bool>(), 0usize..4)
            .prop_map(|(f, success, outcome)| Op::ReplyPending { fitting: f, success, outcome }),
        1 => (0usize..6, 0usize..4, 0u32..5)
            .prop_map(|(step, outcome, attempt)| Op::ReplyAny { step, outcome, attempt }),
        3 => prop_oneof![0u64..50, 0u64..400_000].prop_map(|ms| Op::Advance { ms }),
        1 => (0usize..6).prop_map(|status| Op::Override { status }),
        1 => Just(Op::Retry),
    ]
}

fn to_input(state: &SagaState, op: &Op, event: usize) -> Input {
    let reply = |step: String, outcome, attempt| {
        Input::Reply(Reply {
            event_id: format!("e{event}"),
            step,
            outcome,
            attempt,
            data: String::new(),
            reason: String::new(),
        })
    };
    match *op {
        Op::ReplyPending {
            fitting,
            success,
            outcome,
        } => match state.pending {
            Some(p) => {
                let outcome = match (fitting, p.action, success) {
                    (true, Action::Execute, true) => Outcome::Succeeded,
                    (true, Action::Execute, false) => Outcome::Failed,
                    (true, Action::Compensate, true) => Outcome::Compensated,
                    (true, Action::Compensate, false) => Outcome::CompensationFailed,
                    (false, ..) => OUTCOMES[outcome],
                };
                let step = state.definition.steps[usize::from(p.step)].name.clone();
                reply(step, outcome, p.attempt)
            }
            None => Input::Tick,
        },
        Op::ReplyAny {
            step,
            outcome,
            attempt,
        } => reply(format!("step_{step}"), OUTCOMES[outcome], attempt),
        Op::Advance { .. } => Input::Tick,
        Op::Override { status } => Input::Override {
            to: Status::ALL[status],
            reason: "operator".into(),
        },
        Op::Retry => Input::Retry,
    }
}

/// Checks what must hold of every state a saga can reach.
fn assert_legal(state: &SagaState, overridden: bool) {
    let status = state.status.expect("started");
    let defs = &state.definition.steps;
    let active: Vec<usize> = (0..state.steps.len())
        .filter(|&i| {
            matches!(
                state.steps[i].status,
                StepStatus::Running | StepStatus::Compensating
            )
        })
        .collect();
    for (i, s) in state.steps.iter().enumerate() {
        assert!(
            s.attempts_used() <= defs[i].max_attempts,
            "step {i} used {} of {} attempts",
            s.attempts_used(),
            defs[i].max_attempts
        );
    }
    match state.pending {
        Some(p) => {
            let expected = match status {
                Status::Started | Status::InProgress => Action::Execute,
                Status::Failed => Action::Compensate,
                other => panic!("{other} saga with a pending command {p:?}"),
            };
            assert_eq!(p.action, expected, "pending action in {status}");
            // Waiting for a reply or for the retry of a failed attempt, the step runs.
            assert_eq!(
                active,
                [usize::from(p.step)],
                "only the pending step is running"
            );
            if p.action == Action::Execute {
                for (i, s) in state.steps.iter().enumerate() {
                    let want = match i.cmp(&usize::from(p.step)) {
                        std::cmp::Ordering::Less => StepStatus::Succeeded,
                        std::cmp::Ordering::Equal => s.status,
                        std::cmp::Ordering::Greater => StepStatus::Pending,
                    };
                    assert_eq!(s.status, want, "step {i} while step {} executes", p.step);
                }
            }
        }
        None => {
            assert!(
                active.is_empty() || overridden,
                "running steps {active:?} with nothing pending"
            );
            assert!(
                matches!(
                    status,
                    Status::Completed | Status::Compensated | Status::CompensationFailed
                ),
                "a {status} saga must wait on a command or a retry"
            );
        }
    }
    if status == Status::Completed && !overridden {
        assert!(state
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded));
    }
}

fn is_terminal_record(kind: &Kind) -> bool {
    match kind {
        Kind::SagaCompleted | Kind::SagaCompensated => true,
        Kind::StatusOverridden { to, .. } => to.is_terminal(),
        _ => false,
    }
}

fn replay(definition: &Arc<Definition>, records: &[Record]) -> SagaState {
    records
        .iter()
        .fold(SagaState::new("p-1", definition.clone()), apply)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_inputs_keep_every_saga_legal(
        definition in definition(),
        ops in prop::collection::vec(op(), 0..80),
        cut in any::<prop::sample::Index>(),
    ) {
        let definition = Arc::new(definition);
        let mut now_ms = 1_000u64;
        let mut state = SagaState::new("p-1", definition.clone());
        let mut log = decide(
            &state,
            Input::Start { payload: "{}".into(), trace_id: "t".into(), request_hash: 1 },
            now_ms,
        )
        .unwrap();
        state = replay(&definition, &log);
        let mut overridden = false;
        for (event, op) in ops.iter().enumerate() {
            if let Op::Advance { ms } = op {
                now_ms += ms;
            }
            let input = to_input(&state, op, event);
            let was_terminal = state.is_terminal();
            match decide(&state, input.clone(), now_ms) {
                Ok(records) => {
                    prop_assert!(!was_terminal || records.is_empty(),
                        "records after a terminal status: {records:?}");
                    for record in &records {
                        overridden |= matches!(record.kind, Kind::StatusOverridden { .. });
                        state = apply(state, record);
                    }
                    if let Some((_, answer)) = records.first().and_then(|r| r.kind.reply()) {
                        prop_assert_eq!(Some(answer), state.status, "a reply records its answer");
                    }
                    log.extend(records);
                }
                Err(rejection) => prop_assert!(!rejection.to_string().is_empty()),
            }
            assert_legal(&state, overridden);
        }

        // Nothing follows a terminal record.
        if let Some(end) = log.iter().position(|r| is_terminal_record(&r.kind)) {
            prop_assert_eq!(end, log.len() - 1, "records after the terminal one");
        }

        // Compensations: first issues are for the compensable steps that succeeded or
        // timed out on their last attempt (their effect is unknown), last first.
        let succeeded: BTreeSet<u16> = log.iter().filter_map(|r| match r.kind {
            Kind::StepSucceeded { step, .. } => Some(step),
            _ => None,
        }).collect();
        let timed_out: BTreeSet<u16> = log.iter().filter_map(|r| match r.kind {
            Kind::StepTimedOut { step, action: Action::Execute, retry_at_ms: None, .. } => Some(step),
            _ => None,
        }).collect();
        let owed: BTreeSet<u16> = succeeded.union(&timed_out).copied()
            .filter(|s| definition.steps[usize::from(*s)].compensable).collect();
        let compensations: Vec<u16> = log.iter().filter_map(|r| match r.kind {
            Kind::CommandIssued { step, action: Action::Compensate, attempt: 1, .. } => Some(step),
            _ => None,
        }).collect();
        prop_assert!(compensations.windows(2).all(|w| w[0] > w[1]),
            "compensations not last-first: {compensations:?}");
        for step in &compensations {
            prop_assert!(owed.contains(step), "step {} compensated, owed {:?}", step, owed);
        }
        // A compensable step that timed out on its last attempt is compensated first.
        for (i, r) in log.iter().enumerate() {
            if let Kind::StepTimedOut { step, action: Action::Execute, retry_at_ms: None, .. } = r.kind {
                if definition.steps[usize::from(step)].compensable {
                    let next = log[i + 1..].iter().find_map(|r| match r.kind {
                        Kind::CommandIssued { step, action, .. } => Some((step, action)),
                        _ => None,
                    });
                    prop_assert_eq!(next, Some((step, Action::Compensate)),
                        "a timed-out step is compensated first");
                }
            }
        }
        if matches!(log.last().map(|r| &r.kind), Some(Kind::SagaCompensated)) {
            let compensated: BTreeSet<u16> = log.iter().filter_map(|r| match r.kind {
                Kind::StepCompensated { step, .. } => Some(step),
                _ => None,
            }).collect();
            prop_assert_eq!(compensated, owed);
        }

        // Folding the records from scratch gives the live state.
        prop_assert_eq!(&replay(&definition, &log), &state);

        // Snapshot at any record, stored and loaded, plus the rest equals the full fold.
        let at = cut.index(log.len() + 1);
        let snapshot = StoredSaga::from(&replay(&definition, &log[..at]));
        let bytes = bincode::encode_to_vec(&snapshot, bincode::config::standard()).unwrap();
        let (loaded, _): (StoredSaga, usize) =
            bincode::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        let resumed = loaded.into_state(definition.clone()).unwrap();
        prop_assert_eq!(&log[at..].iter().fold(resumed, apply), &state);
    }
}
