//! What an installed transaction changes besides the saga itself: the projections
//! (status counts, listing order), the timers, the count of active sagas, what waits
//! for the indexer, the snapshot count, the observer's metrics and the logs.

use std::ops::Range;
use std::sync::Arc;

use crate::config::EngineObserver;
use crate::model::record::{Action, Kind, Record, Status};
use crate::model::state::SagaState;
use crate::service::active::Summary;
use crate::service::inner::Inner;
use crate::service::table::Slot;

impl Inner {
    /// Updates projections, timers and what waits for the indexer after `records`
    /// took a saga from `before` to `slot.state`.
    pub(crate) fn installed(
        &self,
        key: &Arc<str>,
        before: Summary,
        slot: &Slot,
        records: &[Record],
        offsets: &Range<u64>,
    ) {
        let after = Summary::of(&slot.state);
        self.note_change(key, &slot.state.definition.name, before, after, records);
        if let Some(observer) = &self.config.observer {
            observe(observer.as_ref(), before, &slot.state, records);
        }
        log_records(before, &slot.state, records, offsets);
        if slot.state.is_terminal() {
            self.progress.finished(offsets.end - 1, key.clone());
        }
        if self.snapshots.appended(records.len() as u64) {
            self.timers.wake();
        }
    }

    /// Projections, timers and the active count for a saga that `records` took from
    /// `before` to `after`. The projections count every status the records pass
    /// through (a first step failing for good goes FAILED, then COMPENSATED, in one
    /// transaction), record by record as replay does.
    pub(crate) fn note_change(
        &self,
        key: &Arc<str>,
        saga_type: &str,
        before: Summary,
        after: Summary,
        records: &[Record],
    ) {
        if before.place != after.place {
            let place = self
                .projections
                .lock()
                .recorded(saga_type, before.place, records);
            debug_assert_eq!(
                place.map(|p| p.status),
                after.place.map(|p| p.status),
                "the records' statuses end where the state does"
            );
        }
        self.timers.moved(key, before.due_ms, after.due_ms);
        self.sagas.moved(before, after);
    }
}

/// Logs each record with the saga's trace id (debug), and a saga that failed (info) or
/// whose compensation failed (warn), so one trace id finds a saga in the logs.
fn log_records(before: Summary, state: &SagaState, records: &[Record], offsets: &Range<u64>) {
    let status = state.status.expect("installed sagas started");
    let changed = before.place.map(|p| p.status) != Some(status);
    let failed = changed && matches!(status, Status::Failed | Status::CompensationFailed);
    if !failed && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let trace_id = crate::model::state::trace_id_hex(&state.trace_id);
    for (record, offset) in records.iter().zip(offsets.clone()) {
        tracing::debug!(saga_id = %state.saga_id, trace_id, offset, seq = record.seq, kind = record.kind.name(), "saga record");
    }
    let reason = state.failure_reason.as_deref().unwrap_or_default();
    match status {
        Status::Failed if failed => {
            tracing::info!(saga_id = %state.saga_id, trace_id, reason, "saga failed; compensating")
        }
        Status::CompensationFailed if failed => {
            tracing::warn!(saga_id = %state.saga_id, trace_id, reason, "compensation failed; an operator must retry or override")
        }
        _ => {}
    }
}

/// Reports what `records` did to the observer. A step's duration runs from the saga's
/// record before the outcome (the command's issue or re-issue) to the outcome.
fn observe(observer: &dyn EngineObserver, before: Summary, state: &SagaState, records: &[Record]) {
    let saga_type = state.definition.name.as_str();
    let step_name = |step: u16| state.definition.steps[usize::from(step)].name.as_str();
    let mut previous_at = before
        .place
        .map_or(state.created_at_ms, |p| p.updated_at_ms);
    for record in records {
        let took = record.at_ms.saturating_sub(previous_at);
        match &record.kind {
            Kind::StepSucceeded { step, .. } => observer.step_outcome(
                saga_type,
                step_name(*step),
                Action::Execute,
                "succeeded",
                took,
            ),
            Kind::StepCompensated { step, .. } => observer.step_outcome(
                saga_type,
                step_name(*step),
                Action::Compensate,
                "compensated",
                took,
            ),
            Kind::StepFailed { step, action, .. } => {
                let outcome = match action {
                    Action::Execute => "failed",
                    Action::Compensate => "compensation_failed",
                };
                observer.step_outcome(saga_type, step_name(*step), *action, outcome, took)
            }
            Kind::StepTimedOut { step, action, .. } => {
                observer.step_outcome(saga_type, step_name(*step), *action, "timed_out", took)
            }
            _ => {}
        }
        previous_at = record.at_ms;
    }
    let status = state.status.expect("installed sagas started");
    let changed = before.place.map(|p| p.status) != Some(status);
    let reportable =
        status.is_terminal() || matches!(status, Status::Failed | Status::CompensationFailed);
    if changed && reportable {
        observer.saga_status(
            saga_type,
            status,
            state.updated_at_ms.saturating_sub(state.created_at_ms),
        );
    }
}
