//! What the API returns for a saga (the saga of http/openapi.yaml, before JSON).

use crate::model::record::Status;
use crate::model::state::{SagaState, StepStatus};
use crate::render::results::StepResults;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepView {
    pub name: String,
    pub status: StepStatus,
    /// The number of the latest attempt of the step's current action.
    pub attempts: u32,
    /// The data it succeeded with, as JSON text (`None` until it succeeded).
    pub result: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaView {
    pub saga_id: String,
    pub saga_type: String,
    pub definition_version: u32,
    pub status: Status,
    pub current_step: Option<String>,
    pub steps: Vec<StepView>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub failure_reason: Option<String>,
    pub trace_id: String,
    /// The start payload, as JSON text.
    pub payload: String,
    /// The step whose failure made the saga compensate (`None` when it never failed,
    /// or an operator failed it).
    pub failed_step: Option<String>,
    /// When the saga failed — its step failed for good, or an operator set FAILED — in
    /// unix ms (`None` when it never did; a retry of its compensation does not move it).
    pub failed_at_ms: Option<u64>,
}

/// When and where a saga failed, as its records say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failure {
    /// The step that failed for good; `None` for an operator's override to FAILED.
    pub step: Option<u16>,
    pub at_ms: u64,
}

impl Failure {
    /// The failure a saga's next record records, if it records one.
    pub fn of(record: &crate::model::record::Record) -> Option<Failure> {
        use crate::model::record::Kind;
        match &record.kind {
            Kind::SagaFailed { step, .. } => Some(Failure {
                step: Some(*step),
                at_ms: record.at_ms,
            }),
            Kind::StatusOverridden {
                to: Status::Failed, ..
            } => Some(Failure {
                step: None,
                at_ms: record.at_ms,
            }),
            _ => None,
        }
    }
}

/// The view of `state`, whose records hold `payload`, `results` and its latest
/// `failure`.
pub fn saga_view(
    state: &SagaState,
    payload: String,
    results: &StepResults,
    failure: Option<Failure>,
) -> SagaView {
    SagaView {
        saga_id: state.saga_id.to_string(),
        saga_type: state.definition.name.clone(),
        definition_version: state.definition.version,
        status: state.status.expect("a viewed saga has started"),
        current_step: state.current_step().map(str::to_string),
        steps: state
            .definition
            .steps
            .iter()
            .zip(&state.steps)
            .enumerate()
            .map(|(i, (def, s))| StepView {
                name: def.name.clone(),
                status: s.status,
                attempts: s.attempt,
                result: results.result(i as u16).map(str::to_string),
            })
            .collect(),
        created_at_ms: state.created_at_ms,
        updated_at_ms: state.updated_at_ms,
        failure_reason: state.failure_reason.as_deref().map(str::to_string),
        trace_id: crate::model::state::trace_id_hex(&state.trace_id),
        payload,
        failed_step: failure
            .and_then(|f| f.step)
            .and_then(|step| state.definition.steps.get(usize::from(step)))
            .map(|def| def.name.clone()),
        failed_at_ms: failure.map(|f| f.at_ms),
    }
}
