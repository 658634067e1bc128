//! The built-in order saga driven through `decide` and `apply`: the success path,
//! failure at each step, timeouts, retries, compensation failing and an operator retry.

use std::sync::Arc;

use sagalog_engine::decider::{backoff_ms, MAX_BACKOFF_MS};
use sagalog_engine::record::{Action, Kind, Record, Status};
use sagalog_engine::state::Wait;
use sagalog_engine::{
    apply, decide, Input, Outcome, Registry, Rejection, Reply, SagaState, StepStatus,
};

const T0: u64 = 1_700_000_000_000;

struct Saga {
    state: SagaState,
    now_ms: u64,
    log: Vec<Record>,
    events: u32,
}

impl Saga {
    fn start() -> Saga {
        let definition = Registry::with_builtin().latest("order").unwrap().clone();
        let mut saga = Saga {
            state: SagaState::new("order-1", definition),
            now_ms: T0,
            log: Vec::new(),
            events: 0,
        };
        saga.input(Input::Start {
            payload: r#"{"sku":"A-1","qty":2}"#.into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            request_hash: 7,
        })
        .unwrap();
        saga
    }

    fn input(&mut self, input: Input) -> Result<Vec<Record>, Rejection> {
        let records = decide(&self.state, input, self.now_ms)?;
        for record in &records {
            self.state = apply(self.state.clone(), record);
        }
        self.log.extend(records.iter().cloned());
        Ok(records)
    }

    fn reply(
        &mut self,
        step: &str,
        outcome: Outcome,
        attempt: u32,
    ) -> Result<Vec<Record>, Rejection> {
        self.events += 1;
        self.input(Input::Reply(Reply {
            event_id: format!("evt-{}", self.events),
            step: step.into(),
            outcome,
            attempt,
            data: String::new(),
            reason: format!("{step} said {}", outcome.as_str()),
        }))
    }

    /// Replies to the outstanding command with `outcome`.
    fn answer(&mut self, outcome: Outcome) -> Vec<Record> {
        let (step, _, attempt) = self.command();
        self.reply(&step, outcome, attempt).unwrap()
    }

    /// The outstanding command: step name, action, attempt.
    fn command(&self) -> (String, Action, u32) {
        let p = self.state.pending.expect("a pending command");
        assert!(
            matches!(p.wait, Wait::Reply { .. }),
            "waiting for a retry, not a reply: {p:?}"
        );
        let step = self.state.definition.steps[usize::from(p.step)]
            .name
            .clone();
        (step, p.action, p.attempt)
    }

    fn advance(&mut self, ms: u64) -> Vec<Record> {
        self.now_ms += ms;
        self.input(Input::Tick).unwrap()
    }

    fn status(&self) -> Status {
        self.state.status.unwrap()
    }

    /// Every `command_issued` so far as (step name, action, attempt).
    fn commands(&self) -> Vec<(String, Action, u32)> {
        self.log
            .iter()
            .filter_map(|r| match &r.kind {
                Kind::CommandIssued {
                    step,
                    action,
                    attempt,
                    ..
                } => Some((
                    self.state.definition.steps[usize::from(*step)].name.clone(),
                    *action,
                    *attempt,
                )),
                _ => None,
            })
            .collect()
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.log.iter().map(|r| r.kind.name()).collect()
    }

    /// Fails the outstanding command `times` times, waiting out each backoff.
    fn fail_attempts(&mut self, outcome: Outcome, times: u32) {
        for i in 0..times {
            self.answer(outcome);
            if i + 1 < times {
                self.advance(MAX_BACKOFF_MS);
            }
        }
    }
}

fn cmd(step: &str, action: Action, attempt: u32) -> (String, Action, u32) {
    (step.to_string(), action, attempt)
}

#[test]
fn success_path_completes_after_the_three_steps_in_order() {
    let mut saga = Saga::start();
    assert_eq!(saga.status(), Status::Started);
    saga.answer(Outcome::Succeeded);
    assert_eq!(saga.status(), Status::InProgress);
    saga.answer(Outcome::Succeeded);
    saga.answer(Outcome::Succeeded);
    assert_eq!(saga.status(), Status::Completed);
    assert!(saga.state.pending.is_none());
    assert_eq!(
        saga.commands(),
        [
            cmd("reserve_inventory", Action::Execute, 1),
            cmd("charge_payment", Action::Execute, 1),
            cmd("ship_order", Action::Execute, 1),
        ]
    );
    assert_eq!(
        saga.kinds(),
        [
            "saga_started",
            "command_issued",
            "step_succeeded",
            "command_issued",
            "step_succeeded",
            "command_issued",
            "step_succeeded",
            "saga_completed"
        ]
    );
    let seqs: Vec<u32> = saga.log.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert!(saga
        .state
        .steps
        .iter()
        .all(|s| s.status == StepStatus::Succeeded));
}

#[test]
fn first_step_failing_for_good_goes_failed_then_straight_to_compensated() {
    let mut saga = Saga::start();
    saga.fail_attempts(Outcome::Failed, 3);
    assert_eq!(saga.status(), Status::Compensated);
    let kinds = saga.kinds();
    assert_eq!(
        &kinds[kinds.len() - 3..],
        ["step_failed", "saga_failed", "saga_compensated"]
    );
    assert!(saga
        .commands()
        .iter()
        .all(|(_, action, _)| *action == Action::Execute));
}

#[test]
fn second_step_failing_compensates_the_first() {
    let mut saga = Saga::start();
    saga.answer(Outcome::Succeeded);
    saga.fail_attempts(Outcome::Failed, 3);
    assert_eq!(saga.status(), Status::Failed);
    assert_eq!(
        saga.command(),
        cmd("reserve_inventory", Action::Compensate, 1)
    );
    saga.answer(Outcome::Compensated);
    assert_eq!(saga.status(), Status::Compensated);
    assert_eq!(saga.state.steps[0].status, StepStatus::Compensated);
    assert_eq!(saga.state.steps[1].status, StepStatus::Failed);
}

#[test]
fn last_step_failing_compensates_the_compensable_steps_last_first() {
    let mut saga = Saga::start();
    saga.answer(Outcome::Succeeded);
    saga.answer(Outcome::Succeeded);
    saga.fail_attempts(Outcome::Failed, 5);
    assert_eq!(saga.status(), Status::Failed);
    assert!(saga
        .state
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("ship_order"));
    saga.answer(Outcome::Compensated);
    saga.answer(Outcome::Compensated);
    assert_eq!(saga.status(), Status::Compensated);
    let compensations: Vec<_> = saga
        .commands()
        .into_iter()
        .filter(|(_, action, _)| *action == Action::Compensate)
        .collect();
    assert_eq!(
        compensations,
        [
            cmd("charge_payment", Action::Compensate, 1),
            cmd("reserve_inventory", Action::Compensate, 1),
        ]
    );
}

#[test]
fn a_retry_succeeding_on_a_later_attempt_carries_on() {
    let mut saga = Saga::start();
    saga.answer(Outcome::Failed);
    assert_eq!(saga.status(), Status::Started);
    // Before the backoff nothing is issued, and a reply is not expected.
    assert!(saga.advance(backoff_ms(200, 1) - 1).is_empty());
    let err = saga
        .reply("reserve_inventory", Outcome::Succeeded, 2)
        .unwrap_err();
    assert!(err.to_string().contains("issued at"), "{err}");
    let issued = saga.advance(1);
    assert!(matches!(
        issued[..],
        [Record {
            kind: Kind::CommandIssued {
                step: 0,
                attempt: 2,
                ..
            },
            ..
        }]
    ));
    saga.answer(Outcome::Failed);
    // The second wait doubles.
    assert!(saga.advance(backoff_ms(200, 2) - 1).is_empty());
    assert_eq!(saga.advance(1).len(), 1);
    saga.answer(Outcome::Succeeded);
    assert_eq!(saga.command(), cmd("charge_payment", Action::Execute, 1));
    assert_eq!(saga.status(), Status::InProgress);
}

#[test]
fn a_timeout_counts_as_a_failed_attempt() {
    let mut saga = Saga::start();
    assert!(saga.advance(29_999).is_empty());
    let timed_out = saga.advance(1);
    assert!(matches!(
        timed_out[..],
        [Record {
            kind: Kind::StepTimedOut {
                step: 0,
                attempt: 1,
                retry_at_ms: Some(_),
                ..
            },
            ..
        }]
    ));
    // A late reply to the timed-out attempt is stale.
    let err = saga
        .reply("reserve_inventory", Outcome::Succeeded, 1)
        .unwrap_err();
    assert!(matches!(err, Rejection::Unexpected { .. }));
    // Time out every attempt: the third timeout fails the saga. The step may have
    // taken effect, and it is compensable: it is compensated.
    for _ in 0..2 {
        saga.advance(MAX_BACKOFF_MS);
        saga.advance(30_000);
    }
    assert_eq!(saga.status(), Status::Failed);
    assert!(saga
        .state
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("timed out"));
    assert_eq!(saga.commands().len(), 4);
    assert_eq!(
        saga.command(),
        cmd("reserve_inventory", Action::Compensate, 1)
    );
    // While it is undone, the step shows as compensating.
    assert_eq!(saga.state.steps[0].status.as_str(), "compensating");
    saga.answer(Outcome::Compensated);
    assert_eq!(saga.status(), Status::Compensated);
}

#[test]
fn a_last_attempt_timeout_of_a_step_that_cannot_be_compensated_compensates_the_others_only() {
    let mut saga = Saga::start();
    saga.answer(Outcome::Succeeded);
    saga.answer(Outcome::Succeeded);
    // ship_order (not compensable, 5 attempts) times out on every attempt.
    saga.advance(60_000);
    for _ in 0..4 {
        saga.advance(MAX_BACKOFF_MS);
        saga.advance(60_000);
    }
    assert_eq!(saga.status(), Status::Failed);
    assert_eq!(saga.state.steps[2].status.as_str(), "failed");
    assert_eq!(saga.command(), cmd("charge_payment", Action::Compensate, 1));
    saga.answer(Outcome::Compensated);
    assert_eq!(
        saga.command(),
        cmd("reserve_inventory", Action::Compensate, 1)
    );
    saga.answer(Outcome::Compensated);
    assert_eq!(saga.status(), Status::Compensated);
}

#[test]
fn compensation_failing_then_operator_retry_compensates() {
    let mut saga = Saga::start();
    saga.answer(Outcome::Succeeded);
    saga.fail_attempts(Outcome::Failed, 3);
    saga.fail_attempts(Outcome::CompensationFailed, 3);
    assert_eq!(saga.status(), Status::CompensationFailed);
    assert_eq!(saga.state.steps[0].status, StepStatus::CompensationFailed);
    assert!(saga.state.pending.is_none());
    // Nothing happens by itself while an operator is needed.
    assert!(saga.advance(MAX_BACKOFF_MS * 10).is_empty());

    saga.input(Input::Retry).unwrap();
    assert_eq!(saga.status(), Status::Failed);
    assert_eq!(
        saga.command(),
        cmd("reserve_inventory", Action::Compensate, 4)
    );
    // The fresh budget allows three more attempts.
    saga.fail_attempts(Outcome::CompensationFailed, 2);
    saga.advance(MAX_BACKOFF_MS);
    saga.answer(Outcome::Compensated);
    assert_eq!(saga.status(), Status::Compensated);
    let kinds = saga.kinds();
    assert!(kinds.contains(&"retry_requested"));
    assert!(kinds.contains(&"compensation_failed"));
}

#[test]
fn replies_that_do_not_fit_are_rejected_and_change_nothing() {
    let mut saga = Saga::start();
    let before = saga.state.clone();
    let wrong_step = saga
        .reply("charge_payment", Outcome::Succeeded, 1)
        .unwrap_err();
    assert!(
        wrong_step
            .to_string()
            .contains("reserve_inventory attempt 1"),
        "names the expected step and attempt: {wrong_step}"
    );
    let stale = saga
        .reply("reserve_inventory", Outcome::Succeeded, 2)
        .unwrap_err();
    assert!(matches!(stale, Rejection::Unexpected { attempt: 2, .. }));
    let wrong_action = saga
        .reply("reserve_inventory", Outcome::Compensated, 1)
        .unwrap_err();
    assert!(matches!(wrong_action, Rejection::Unexpected { .. }));
    let unknown = saga.reply("gift_wrap", Outcome::Succeeded, 1).unwrap_err();
    assert!(matches!(unknown, Rejection::UnknownStep { .. }));
    let again = saga
        .input(Input::Start {
            payload: "{}".into(),
            trace_id: String::new(),
            request_hash: 1,
        })
        .unwrap_err();
    assert!(matches!(again, Rejection::AlreadyStarted { .. }));
    assert_eq!(saga.state, before);

    saga.answer(Outcome::Succeeded);
    saga.answer(Outcome::Succeeded);
    saga.answer(Outcome::Succeeded);
    let finished = saga.reply("ship_order", Outcome::Succeeded, 1).unwrap_err();
    assert_eq!(
        finished.to_string(),
        "saga order-1 is COMPLETED: it accepts no more input"
    );
    assert!(saga.advance(MAX_BACKOFF_MS).is_empty());
    assert!(matches!(
        saga.input(Input::Retry),
        Err(Rejection::Finished { .. })
    ));
}

#[test]
fn inputs_to_a_saga_that_does_not_exist_are_rejected() {
    let definition = Registry::with_builtin().latest("order").unwrap().clone();
    let state = SagaState::new("nope", definition);
    for input in [Input::Tick, Input::Retry] {
        assert!(matches!(
            decide(&state, input, T0),
            Err(Rejection::NotStarted { .. })
        ));
    }
}

#[test]
fn operator_override_is_recorded_with_its_reason() {
    let mut saga = Saga::start();
    saga.answer(Outcome::Succeeded);
    saga.fail_attempts(Outcome::Failed, 3);
    saga.fail_attempts(Outcome::CompensationFailed, 3);
    let records = saga
        .input(Input::Override {
            to: Status::Compensated,
            reason: "Manual compensation".into(),
        })
        .unwrap();
    assert!(matches!(
        &records[..],
        [Record { kind: Kind::StatusOverridden { from: Status::CompensationFailed, to: Status::Compensated, reason }, .. }]
            if reason == "Manual compensation"
    ));
    assert_eq!(saga.status(), Status::Compensated);
    assert!(saga.state.pending.is_none());
}

#[test]
fn override_to_failed_compensates_only_the_steps_that_succeeded() {
    let mut saga = Saga::start();
    saga.answer(Outcome::Succeeded);
    // charge_payment is outstanding; its outcome is unknown.
    saga.input(Input::Override {
        to: Status::Failed,
        reason: "customer cancelled".into(),
    })
    .unwrap();
    assert_eq!(saga.status(), Status::Failed);
    assert_eq!(
        saga.command(),
        cmd("reserve_inventory", Action::Compensate, 1)
    );
    let bad = saga
        .input(Input::Override {
            to: Status::InProgress,
            reason: String::new(),
        })
        .unwrap_err();
    assert!(matches!(bad, Rejection::InvalidOverride { .. }));
    saga.answer(Outcome::Compensated);
    assert_eq!(saga.status(), Status::Compensated);
}

#[test]
fn backoff_doubles_per_attempt_and_is_capped() {
    assert_eq!(backoff_ms(200, 1), 200);
    assert_eq!(backoff_ms(200, 2), 400);
    assert_eq!(backoff_ms(200, 3), 800);
    assert_eq!(backoff_ms(200, 40), MAX_BACKOFF_MS);
    assert_eq!(backoff_ms(3_600_000, 1), MAX_BACKOFF_MS);
}

#[test]
fn a_saga_keeps_the_definition_version_it_started_with() {
    let mut registry = Registry::with_builtin();
    let saga = Saga::start();
    let mut v2 = (**registry.latest("order").unwrap()).clone();
    v2.version = 2;
    v2.steps.truncate(1);
    registry.register(v2).unwrap();
    assert_eq!(registry.latest("order").unwrap().version, 2);
    assert_eq!(saga.state.definition.version, 1);
    let replayed = saga.log.iter().fold(
        SagaState::new("order-1", Arc::clone(registry.get("order", 1).unwrap())),
        apply,
    );
    assert_eq!(replayed, saga.state);
}
