//! The state of one saga and `apply`, the fold of its records into it. `apply` is pure
//! and total over the records `decide` emits; a record that does not fit the state
//! (a gap in `seq`, a step the definition does not have) is a bug or a foreign log, and
//! it panics rather than build a wrong state.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::definition::Definition;
use crate::model::record::{Action, Kind, Record, Status};

/// Where one step is (the step statuses of http/openapi.yaml).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Compensating,
    Compensated,
    CompensationFailed,
    /// The last attempt got no reply by its deadline: it failed for good, but its
    /// effect is unknown, so a compensable step is compensated (shown as `failed`).
    TimedOut,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Compensating => "compensating",
            StepStatus::Compensated => "compensated",
            StepStatus::CompensationFailed => "compensation_failed",
            StepStatus::TimedOut => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct StepState {
    pub status: StepStatus,
    /// The number of the latest attempt of the step's current action (execute, then
    /// compensate from 1 again).
    pub attempt: u32,
    /// Attempts up to this one were spent before the latest operator retry: the budget
    /// `max_attempts` counts from here.
    pub budget_base: u32,
}

impl StepState {
    const NEW: StepState = StepState {
        status: StepStatus::Pending,
        attempt: 0,
        budget_base: 0,
    };

    /// Attempts of the current action spent against the current budget.
    pub fn attempts_used(&self) -> u32 {
        self.attempt - self.budget_base
    }
}

/// The one command a saga waits on, or the retry it waits to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Pending {
    pub step: u16,
    pub action: Action,
    pub attempt: u32,
    pub wait: Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Wait {
    /// The command is out; without a reply by `deadline_ms` the attempt times out.
    Reply { deadline_ms: u64 },
    /// The previous attempt failed; attempt `attempt` is issued at `due_ms`.
    Retry { due_ms: u64 },
}

impl Pending {
    /// When the timer has to look at this saga next.
    pub fn due_ms(&self) -> u64 {
        match self.wait {
            Wait::Reply { deadline_ms } => deadline_ms,
            Wait::Retry { due_ms } => due_ms,
        }
    }
}

/// A saga as its records left it. The payload stays in the log (the `saga_started`
/// record); only what deciding needs is kept here.
/// Kept compact (shared id, binary trace id, boxed slices): the engine holds one per
/// active saga, within a budget of 300 bytes each.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaState {
    pub saga_id: Arc<str>,
    pub definition: Arc<Definition>,
    /// `None` until the `saga_started` record is applied.
    pub status: Option<Status>,
    /// The `seq` of the last record applied (0 before any).
    pub seq: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub steps: Box<[StepState]>,
    pub pending: Option<Pending>,
    pub failure_reason: Option<Box<str>>,
    /// The W3C trace id (16 bytes; all zero when the start gave none that parses).
    pub trace_id: [u8; 16],
    pub request_hash: u64,
    /// Bytes of `data` in the saga's `step_succeeded` records: what its commands carry
    /// as `results`, held to a limit per saga.
    pub results_bytes: u64,
}

/// A trace id's 32 hex digits as 16 bytes; `None` unless it is exactly that.
pub fn parse_trace_id(hex: &str) -> Option<[u8; 16]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// 16 bytes as 32 lowercase hex digits.
pub fn trace_id_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl SagaState {
    /// A saga not started yet, to run on `definition`.
    pub fn new(saga_id: impl Into<Arc<str>>, definition: Arc<Definition>) -> SagaState {
        SagaState {
            saga_id: saga_id.into(),
            steps: vec![StepState::NEW; definition.steps.len()].into_boxed_slice(),
            definition,
            status: None,
            seq: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            pending: None,
            failure_reason: None,
            trace_id: [0; 16],
            request_hash: 0,
            results_bytes: 0,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_some_and(Status::is_terminal)
    }

    /// The step the saga is at: the pending command's step, else none.
    pub fn current_step(&self) -> Option<&str> {
        self.pending
            .map(|p| self.definition.steps[usize::from(p.step)].name.as_str())
    }

    /// The compensable step to compensate next: the latest one still `succeeded`, or
    /// timed out on its last attempt (its effect is unknown; it is the latest, so it
    /// goes first). Compensation runs last completed first.
    pub fn next_compensation(&self) -> Option<u16> {
        (0..self.steps.len())
            .rev()
            .find(|&i| {
                matches!(
                    self.steps[i].status,
                    StepStatus::Succeeded | StepStatus::TimedOut
                ) && self.definition.steps[i].compensable
            })
            .map(|i| i as u16)
    }
}

/// Folds one record into the state.
pub fn apply(mut state: SagaState, record: &Record) -> SagaState {
    apply_mut(&mut state, record);
    state
}

/// [`apply`] in place.
pub fn apply_mut(state: &mut SagaState, record: &Record) {
    assert_eq!(*record.saga_id, *state.saga_id, "a record of another saga");
    assert_eq!(
        record.seq,
        state.seq + 1,
        "saga {}: record seq {} after {}",
        state.saga_id,
        record.seq,
        state.seq
    );
    state.seq = record.seq;
    state.updated_at_ms = record.at_ms;
    let status = status_after(state.status, &record.kind);
    apply_fields(state, record);
    state.status = status;
}

/// The status a saga in `status` has after a record of `kind`: the one rule, which
/// `apply_mut` and the live projections' per-record accounting both use.
pub fn status_after(status: Option<Status>, kind: &Kind) -> Option<Status> {
    match kind {
        Kind::SagaStarted { .. } => Some(Status::Started),
        Kind::StepSucceeded { .. } => Some(Status::InProgress),
        Kind::CompensationFailed { .. } => Some(Status::CompensationFailed),
        Kind::SagaCompleted => Some(Status::Completed),
        Kind::SagaFailed { .. } => Some(Status::Failed),
        Kind::SagaCompensated => Some(Status::Compensated),
        Kind::StatusOverridden { to, .. } => Some(*to),
        Kind::RetryRequested { .. } if status == Some(Status::CompensationFailed) => {
            Some(Status::Failed)
        }
        _ => status,
    }
}

/// Everything `record` changes but the status.
fn apply_fields(state: &mut SagaState, record: &Record) {
    match &record.kind {
        Kind::SagaStarted {
            saga_type,
            definition_version,
            trace_id,
            request_hash,
            ..
        } => {
            assert!(
                state.status.is_none(),
                "saga {} started twice",
                state.saga_id
            );
            assert_eq!(
                (saga_type.as_str(), *definition_version),
                (state.definition.name.as_str(), state.definition.version),
                "saga {} started on another definition than its state holds",
                state.saga_id
            );
            state.created_at_ms = record.at_ms;
            state.trace_id = parse_trace_id(trace_id).unwrap_or_default();
            state.request_hash = *request_hash;
        }
        Kind::CommandIssued {
            step,
            action,
            attempt,
            deadline_ms,
        } => {
            let s = step_mut(state, *step);
            s.status = match action {
                Action::Execute => StepStatus::Running,
                Action::Compensate => StepStatus::Compensating,
            };
            if *attempt == 1 {
                s.budget_base = 0;
            }
            s.attempt = *attempt;
            state.pending = Some(Pending {
                step: *step,
                action: *action,
                attempt: *attempt,
                wait: Wait::Reply {
                    deadline_ms: *deadline_ms,
                },
            });
        }
        Kind::StepSucceeded { step, data, .. } => {
            step_mut(state, *step).status = StepStatus::Succeeded;
            state.pending = None;
            state.results_bytes += data.len() as u64;
        }
        Kind::StepCompensated { step, .. } => {
            step_mut(state, *step).status = StepStatus::Compensated;
            state.pending = None;
        }
        Kind::StepFailed {
            step,
            action,
            attempt,
            retry_at_ms,
            reason,
            ..
        } => {
            failed_attempt(state, (*step, *action, *attempt), *retry_at_ms, false);
            state.failure_reason = Some(reason.as_str().into());
        }
        Kind::StepTimedOut {
            step,
            action,
            attempt,
            retry_at_ms,
        } => {
            failed_attempt(state, (*step, *action, *attempt), *retry_at_ms, true);
            state.failure_reason = Some(
                format!(
                    "{} of step {} timed out (attempt {attempt})",
                    action.as_str(),
                    state.definition.steps[usize::from(*step)].name
                )
                .into(),
            );
        }
        Kind::CompensationFailed { step, reason } => {
            step_mut(state, *step).status = StepStatus::CompensationFailed;
            state.failure_reason = Some(reason.as_str().into());
            state.pending = None;
        }
        Kind::SagaCompleted => {
            state.pending = None;
        }
        Kind::SagaFailed { reason, .. } => {
            state.failure_reason = Some(reason.as_str().into());
            state.pending = None;
        }
        Kind::SagaCompensated => {
            state.pending = None;
        }
        Kind::StatusOverridden { to, .. } => {
            if to.is_terminal() || *to == Status::Failed {
                state.pending = None;
            }
            if *to == Status::Failed {
                // The running step's outcome is unknown: it is not compensated.
                for s in &mut state.steps {
                    if s.status == StepStatus::Running {
                        s.status = StepStatus::Failed;
                    }
                }
            }
        }
        Kind::RetryRequested { step, .. } => {
            let s = step_mut(state, *step);
            s.budget_base = s.attempt;
            state.pending = None;
        }
    }
}

fn step_mut(state: &mut SagaState, step: u16) -> &mut StepState {
    let (id, count) = (&state.saga_id, state.steps.len());
    match state.steps.get_mut(usize::from(step)) {
        Some(s) => s,
        None => panic!("saga {id}: record names step {step}, the definition has {count}"),
    }
}

/// A failed attempt of `(step, action, attempt)`: the next one is due at `retry_at_ms`,
/// or (`None`) the step gave up — `timed_out` when the last attempt got no reply.
fn failed_attempt(
    state: &mut SagaState,
    (step, action, attempt): (u16, Action, u32),
    retry_at_ms: Option<u64>,
    timed_out: bool,
) {
    state.pending = retry_at_ms.map(|due_ms| Pending {
        step,
        action,
        attempt: attempt + 1,
        wait: Wait::Retry { due_ms },
    });
    if retry_at_ms.is_none() && action == Action::Execute {
        state.steps[usize::from(step)].status = if timed_out {
            StepStatus::TimedOut
        } else {
            StepStatus::Failed
        };
    }
}

/// A saga's state as snapshots store it: everything but the definition, which is named
/// by type and version and looked up again on load.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct StoredSaga {
    pub saga_id: String,
    pub saga_type: String,
    pub definition_version: u32,
    pub status: Option<Status>,
    pub seq: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub steps: Vec<StepState>,
    pub pending: Option<Pending>,
    pub failure_reason: Option<String>,
    pub trace_id: String,
    pub request_hash: u64,
    pub results_bytes: u64,
}

impl From<&SagaState> for StoredSaga {
    fn from(state: &SagaState) -> StoredSaga {
        StoredSaga {
            saga_id: state.saga_id.to_string(),
            saga_type: state.definition.name.clone(),
            definition_version: state.definition.version,
            status: state.status,
            seq: state.seq,
            created_at_ms: state.created_at_ms,
            updated_at_ms: state.updated_at_ms,
            steps: state.steps.to_vec(),
            pending: state.pending,
            failure_reason: state.failure_reason.as_deref().map(str::to_string),
            trace_id: trace_id_hex(&state.trace_id),
            request_hash: state.request_hash,
            results_bytes: state.results_bytes,
        }
    }
}

impl StoredSaga {
    /// The live state again, on `definition` (the one named by type and version).
    /// `None` when the definition does not fit what was stored.
    pub fn into_state(self, definition: Arc<Definition>) -> Option<SagaState> {
        let fits = definition.name == self.saga_type
            && definition.version == self.definition_version
            && definition.steps.len() == self.steps.len();
        fits.then_some(SagaState {
            saga_id: self.saga_id.into(),
            definition,
            status: self.status,
            seq: self.seq,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            steps: self.steps.into_boxed_slice(),
            pending: self.pending,
            failure_reason: self.failure_reason.map(String::into_boxed_str),
            trace_id: parse_trace_id(&self.trace_id).unwrap_or_default(),
            request_hash: self.request_hash,
            results_bytes: self.results_bytes,
        })
    }
}
