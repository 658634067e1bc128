//! The decider: given a saga's state, an input and the time, the records to append — or
//! why the input does not fit. Pure: no I/O, no clock (time is an argument), no locks.
//! Replay, projections, the HTTP path and the tests all use `decide` and
//! [`apply`](crate::model::state::apply).

use crate::model::definition::Definition;
use crate::model::record::{Action, Kind, Record, Status};
use crate::model::state::{apply_mut, SagaState, StepStatus, Wait};

/// Longest wait between attempts, whatever `backoff_ms × 2^(attempt-1)` says.
pub const MAX_BACKOFF_MS: u64 = 5 * 60 * 1000;

/// A participant's reply outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Compensated,
    CompensationFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Compensated => "compensated",
            Outcome::CompensationFailed => "compensation_failed",
        }
    }

    /// The action of the command this outcome answers.
    pub fn action(self) -> Action {
        match self {
            Outcome::Succeeded | Outcome::Failed => Action::Execute,
            Outcome::Compensated | Outcome::CompensationFailed => Action::Compensate,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub event_id: String,
    pub step: String,
    pub outcome: Outcome,
    pub attempt: u32,
    /// JSON text, empty when none.
    pub data: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Start {
        /// JSON text.
        payload: String,
        trace_id: String,
        request_hash: u64,
    },
    Reply(Reply),
    /// The timer: time has passed; fire a due timeout or retry.
    Tick,
    /// An operator sets the status (`COMPLETED`, `COMPENSATED`, or `FAILED` to start
    /// compensation), with a reason that is recorded.
    Override {
        to: Status,
        reason: String,
    },
    /// An operator re-issues the pending command with a fresh attempt budget.
    Retry,
}

/// Why an input does not fit the saga. The HTTP layer answers 404 for `NotStarted`, 409
/// for the others, with the `Display` text. A reply naming a step the saga does not have
/// is 409 like any reply to a step other than the current one: the saga exists, and the
/// message says what it expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("saga {saga_id} does not exist")]
    NotStarted { saga_id: String },
    #[error("saga {saga_id} already exists")]
    AlreadyStarted { saga_id: String },
    #[error("saga {saga_id} is {status}: it accepts no more input")]
    Finished { saga_id: String, status: Status },
    #[error("saga {saga_id} ({saga_type}) has no step {step:?}; it expects {expected}")]
    UnknownStep {
        saga_id: String,
        saga_type: String,
        step: String,
        expected: String,
    },
    #[error(
        "saga {saga_id} expects {expected}, got a {outcome} reply to step {step} attempt {attempt}"
    )]
    Unexpected {
        saga_id: String,
        expected: String,
        step: String,
        outcome: &'static str,
        attempt: u32,
    },
    #[error("saga {saga_id} cannot be set from {from} to {to}: {why}")]
    InvalidOverride {
        saga_id: String,
        from: Status,
        to: Status,
        why: &'static str,
    },
    #[error("saga {saga_id} ({status}) has no pending command to retry")]
    NothingToRetry { saga_id: String, status: Status },
    /// An operation meant for the saga as it was at `as_of_ms` (a bulk action's moment)
    /// found it changed since: not acted on (a repeated bulk call's saga, done already).
    #[error("saga {saga_id} changed after the moment acted on (its last record at unix ms {updated_at_ms}, after {as_of_ms}): not acted on again")]
    ChangedSince {
        saga_id: String,
        updated_at_ms: u64,
        as_of_ms: u64,
    },
    #[error(
        "saga {saga_id}: event_id {event_id:?} was answered at offset {offset} by another reply \
         (its step, outcome, attempt, data or reason differ): a repeated reply must be the \
         same, and a new reply needs an event_id of its own"
    )]
    EventConflict {
        saga_id: String,
        event_id: String,
        offset: u64,
    },
}

/// What the saga waits for, in words, for `Rejection::Unexpected`.
fn expectation(state: &SagaState) -> String {
    match state.pending {
        Some(p) => {
            let step = &state.definition.steps[usize::from(p.step)].name;
            match p.wait {
                Wait::Reply { .. } => format!(
                    "a reply to {} of step {step} attempt {}",
                    p.action.as_str(),
                    p.attempt
                ),
                Wait::Retry { due_ms } => format!(
                    "no reply: {} of step {step} attempt {} is issued at {due_ms} ms",
                    p.action.as_str(),
                    p.attempt
                ),
            }
        }
        None => "no reply: it waits for an operator".into(),
    }
}

/// Accumulates the records of one decision, applying each so the next is decided on
/// the state it leaves.
struct Decision {
    state: SagaState,
    records: Vec<Record>,
    now_ms: u64,
}

impl Decision {
    fn new(state: &SagaState, now_ms: u64) -> Decision {
        Decision {
            state: state.clone(),
            records: Vec::with_capacity(3),
            now_ms,
        }
    }

    fn push(&mut self, kind: Kind) {
        let record = Record {
            saga_id: self.state.saga_id.to_string(),
            seq: self.state.seq + 1,
            at_ms: self.now_ms,
            kind,
        };
        apply_mut(&mut self.state, &record);
        self.records.push(record);
    }

    fn definition(&self) -> &Definition {
        &self.state.definition
    }

    fn issue(&mut self, step: u16, action: Action, attempt: u32) {
        let timeout_ms = self.definition().steps[usize::from(step)].timeout_ms;
        self.push(Kind::CommandIssued {
            step,
            action,
            attempt,
            deadline_ms: self.now_ms.saturating_add(timeout_ms),
        });
    }

    /// Issues the next compensation, or ends the saga compensated when none is left.
    fn compensate_next(&mut self) {
        match self.state.next_compensation() {
            Some(step) => self.issue(step, Action::Compensate, 1),
            None => self.push(Kind::SagaCompensated),
        }
    }

    /// When the attempt after a failed one is due, or `None` when the budget is spent.
    fn retry_at(&self, step: u16) -> Option<u64> {
        let s = &self.state.steps[usize::from(step)];
        let def = &self.definition().steps[usize::from(step)];
        let used = s.attempts_used();
        (used < def.max_attempts)
            .then(|| self.now_ms.saturating_add(backoff_ms(def.backoff_ms, used)))
    }

    /// After a failed attempt was recorded with no retry: the step failed for good.
    fn gave_up(&mut self, step: u16, action: Action, reason: String) {
        match action {
            Action::Execute => {
                self.push(Kind::SagaFailed { step, reason });
                self.compensate_next();
            }
            Action::Compensate => self.push(Kind::CompensationFailed { step, reason }),
        }
    }
}

/// `backoff_ms × 2^(attempt-1)`, capped at [`MAX_BACKOFF_MS`].
pub fn backoff_ms(base_ms: u64, attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(32);
    base_ms
        .saturating_mul(1u64 << doublings)
        .min(MAX_BACKOFF_MS)
}

/// The records `input` adds to the saga at `now_ms`, or why it does not fit.
/// An input that changes nothing (a tick with nothing due) gives no records.
pub fn decide(state: &SagaState, input: Input, now_ms: u64) -> Result<Vec<Record>, Rejection> {
    decide_and_apply(state, input, now_ms).map(|(records, _)| records)
}

/// [`decide`], also giving the state the records leave (the fold of `state` and the
/// records, which deciding computes anyway).
pub fn decide_and_apply(
    state: &SagaState,
    input: Input,
    now_ms: u64,
) -> Result<(Vec<Record>, SagaState), Rejection> {
    let saga_id = || state.saga_id.to_string();
    let status = match (state.status, &input) {
        (None, Input::Start { .. }) => None,
        (None, _) => return Err(Rejection::NotStarted { saga_id: saga_id() }),
        (Some(_), Input::Start { .. }) => {
            return Err(Rejection::AlreadyStarted { saga_id: saga_id() })
        }
        (Some(status), Input::Tick) if status.is_terminal() => {
            return Ok((Vec::new(), state.clone()))
        }
        (Some(status), _) if status.is_terminal() => {
            return Err(Rejection::Finished {
                saga_id: saga_id(),
                status,
            })
        }
        (Some(status), _) => Some(status),
    };
    let mut d = Decision::new(state, now_ms);
    match input {
        Input::Start {
            payload,
            trace_id,
            request_hash,
        } => {
            d.push(Kind::SagaStarted {
                saga_type: state.definition.name.clone(),
                definition_version: state.definition.version,
                payload,
                trace_id,
                request_hash,
            });
            d.issue(0, Action::Execute, 1);
        }
        Input::Reply(reply) => decide_reply(&mut d, reply)?,
        Input::Tick => decide_tick(&mut d),
        Input::Override { to, reason } => {
            let from = status.expect("started");
            decide_override(&mut d, from, to, reason)?
        }
        Input::Retry => {
            let status = status.expect("started");
            let (step, action) = match (status, state.pending) {
                (_, Some(p)) => (p.step, p.action),
                (Status::CompensationFailed, None) => {
                    let step = state
                        .steps
                        .iter()
                        .position(|s| s.status == StepStatus::CompensationFailed)
                        .expect("a COMPENSATION_FAILED saga has its failed step");
                    (step as u16, Action::Compensate)
                }
                (status, None) => {
                    return Err(Rejection::NothingToRetry {
                        saga_id: saga_id(),
                        status,
                    })
                }
            };
            let attempt = state.steps[usize::from(step)].attempt;
            d.push(Kind::RetryRequested { step, action });
            d.issue(step, action, attempt + 1);
        }
    }
    Ok((d.records, d.state))
}

fn decide_reply(d: &mut Decision, reply: Reply) -> Result<(), Rejection> {
    let step = fitting_step(&d.state, &reply)?;
    let attempt = reply.attempt;
    match reply.outcome {
        Outcome::Succeeded => {
            d.push(Kind::StepSucceeded {
                step,
                attempt,
                event_id: reply.event_id,
                data: reply.data,
                answer: Status::Started,
            });
            if usize::from(step) + 1 < d.definition().steps.len() {
                d.issue(step + 1, Action::Execute, 1);
            } else {
                d.push(Kind::SagaCompleted);
            }
        }
        Outcome::Compensated => {
            d.push(Kind::StepCompensated {
                step,
                attempt,
                event_id: reply.event_id,
                data: reply.data,
                answer: Status::Started,
            });
            d.compensate_next();
        }
        Outcome::Failed | Outcome::CompensationFailed => {
            let action = reply.outcome.action();
            let retry_at_ms = d.retry_at(step);
            let reason = if reply.reason.is_empty() {
                default_reason(&reply.step, reply.outcome)
            } else {
                reply.reason
            };
            d.push(Kind::StepFailed {
                step,
                action,
                attempt,
                event_id: reply.event_id,
                reason: reason.clone(),
                retry_at_ms,
                answer: Status::Started,
            });
            if retry_at_ms.is_none() {
                d.gave_up(step, action, reason);
            }
        }
    }
    // The reply record carries the status its decision left, for repeated replies.
    let status = d.state.status.expect("started");
    match &mut d.records[0].kind {
        Kind::StepSucceeded { answer, .. }
        | Kind::StepFailed { answer, .. }
        | Kind::StepCompensated { answer, .. } => *answer = status,
        other => unreachable!("a reply decision starts with its reply record, not {other:?}"),
    }
    Ok(())
}

/// The reason a failure reply with none is recorded with.
fn default_reason(step: &str, outcome: Outcome) -> String {
    format!("step {step} reported {}", outcome.as_str())
}

/// Whether `reply` is the one `kind` recorded, for a saga on `definition` (a repeated
/// delivery of it, which gets the first answer): the same step, outcome and attempt,
/// and the same data (as JSON) for a success or the same reason for a failure — an empty
/// reason is the one the engine recorded for it. What a record does not keep (a
/// success's reason, a failure's data) is not compared.
pub fn same_reply(definition: &Definition, kind: &Kind, reply: &Reply) -> bool {
    let named = |step: u16| {
        definition
            .steps
            .get(usize::from(step))
            .is_some_and(|s| s.name == reply.step)
    };
    match (kind, reply.outcome) {
        (
            Kind::StepSucceeded {
                step,
                attempt,
                data,
                ..
            },
            Outcome::Succeeded,
        )
        | (
            Kind::StepCompensated {
                step,
                attempt,
                data,
                ..
            },
            Outcome::Compensated,
        ) => named(*step) && *attempt == reply.attempt && same_json(data, &reply.data),
        (
            Kind::StepFailed {
                step,
                action,
                attempt,
                reason,
                ..
            },
            Outcome::Failed | Outcome::CompensationFailed,
        ) => {
            let same_reason = *reason == reply.reason
                || (reply.reason.is_empty()
                    && *reason == default_reason(&reply.step, reply.outcome));
            named(*step)
                && *action == reply.outcome.action()
                && *attempt == reply.attempt
                && same_reason
        }
        _ => false,
    }
}

/// Two JSON texts with the same value (an empty text is `null`).
fn same_json(a: &str, b: &str) -> bool {
    let value = |text: &str| -> Option<serde_json::Value> {
        if text.is_empty() {
            Some(serde_json::Value::Null)
        } else {
            serde_json::from_str(text).ok()
        }
    };
    a == b || value(a).is_some_and(|a| value(b) == Some(a))
}

/// The step `reply` answers, if it answers the command the saga waits on (that step,
/// attempt and action); else why it does not fit.
fn fitting_step(state: &SagaState, reply: &Reply) -> Result<u16, Rejection> {
    let Some(step) = state.definition.step_index(&reply.step) else {
        return Err(Rejection::UnknownStep {
            saga_id: state.saga_id.to_string(),
            saga_type: state.definition.name.clone(),
            step: reply.step.clone(),
            expected: expectation(state),
        });
    };
    let step = step as u16;
    let fits = state.pending.is_some_and(|p| {
        matches!(p.wait, Wait::Reply { .. })
            && p.step == step
            && p.attempt == reply.attempt
            && p.action == reply.outcome.action()
    });
    if !fits {
        return Err(Rejection::Unexpected {
            saga_id: state.saga_id.to_string(),
            expected: expectation(state),
            step: reply.step.clone(),
            outcome: reply.outcome.as_str(),
            attempt: reply.attempt,
        });
    }
    Ok(step)
}

fn decide_tick(d: &mut Decision) {
    let Some(p) = d.state.pending else { return };
    match p.wait {
        Wait::Reply { deadline_ms } if deadline_ms <= d.now_ms => {
            let retry_at_ms = d.retry_at(p.step);
            d.push(Kind::StepTimedOut {
                step: p.step,
                action: p.action,
                attempt: p.attempt,
                retry_at_ms,
            });
            if retry_at_ms.is_none() {
                let reason = d
                    .state
                    .failure_reason
                    .as_deref()
                    .unwrap_or_default()
                    .to_string();
                d.gave_up(p.step, p.action, reason);
            }
        }
        Wait::Retry { due_ms } if due_ms <= d.now_ms => d.issue(p.step, p.action, p.attempt),
        _ => {}
    }
}

fn decide_override(
    d: &mut Decision,
    from: Status,
    to: Status,
    reason: String,
) -> Result<(), Rejection> {
    let invalid = |why| {
        Err(Rejection::InvalidOverride {
            saga_id: d.state.saga_id.to_string(),
            from,
            to,
            why,
        })
    };
    match to {
        Status::Completed | Status::Compensated => {
            d.push(Kind::StatusOverridden { from, to, reason })
        }
        Status::Failed if matches!(from, Status::Started | Status::InProgress) => {
            // The outstanding command's outcome is unknown; only steps that reported
            // success are compensated.
            d.push(Kind::StatusOverridden { from, to, reason });
            d.compensate_next();
        }
        Status::Failed => {
            return invalid("only a running saga can be failed; it is compensating already")
        }
        _ => return invalid("an operator may set COMPLETED, COMPENSATED or FAILED"),
    }
    Ok(())
}
