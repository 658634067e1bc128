//! `POST /internal/v1/sagas/bulk/{retry|override}`: an operator action on every saga a
//! list filter matches, done by the server a page at a time.
//!
//! - **Bounded**: one request acts on at most [`MAX_BULK_SAGAS`] sagas (its `limit`),
//!   the sagas of one list page, and answers each saga's outcome and the cursor of the
//!   next page. A caller (the console) follows the cursor, which is its progress.
//! - **Idempotent**: `toDate` is required and must be in the past, so a request
//!   picks the sagas as they were at that moment. Acting on a saga records something
//!   new, which moves its `updated_at` past `toDate`: no request with that `toDate` —
//!   the next page, or any request repeated — finds it again. A repeated request acts
//!   only on matching sagas not acted on yet, so a run repeated from any point still
//!   acts on each saga once.
//!   Each action also checks, under the saga's lock, that the saga is still as it was at
//!   `toDate`: two calls running at once over the same sagas act on each once (the
//!   other reports it `skipped`).
//! - The actions run concurrently (they share the log's group commit), each exactly as
//!   its single-saga route would; a saga the action does not fit (a retry of a
//!   finished saga) is `rejected` with the error that route would give, the others go on.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use sagalog_engine::{EngineError, Operation, Partitions, Rejection};

use crate::error::ApiError;
use crate::json::{self, rfc3339};
use crate::query::list_query;

/// Most sagas one bulk request acts on (its `limit`, which is also the default).
pub const MAX_BULK_SAGAS: usize = 100;

/// A bulk retry's body: nothing (or `{}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {}

/// The operation of `POST …/bulk/retry` from its body.
pub fn retry(body: &[u8]) -> Result<Operation, ApiError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        json::parse::<RetryBody>(body)?;
    }
    Ok(Operation::Retry)
}

/// The operation of `POST …/bulk/override` from its body, checked once for all sagas (so
/// that a filter matching nothing refuses a bad one as well).
pub fn override_status(body: &[u8]) -> Result<Operation, ApiError> {
    let body: json::OverrideBody = json::parse(body)?;
    let to = body
        .status
        .parse()
        .map_err(|e: String| ApiError::bad_request("invalid_request", format!("status: {e}")))?;
    let operation = Operation::Override {
        to,
        reason: body.reason,
    };
    operation.check()?;
    Ok(operation)
}

/// What a saga's outcome is called when `operation` was done to it.
fn done(operation: &Operation) -> &'static str {
    match operation {
        Operation::Retry => "retried",
        Operation::Override { .. } => "overridden",
    }
}

/// Acts on one page of the sagas `query` (a list query string) matches; the answer's
/// body.
pub async fn run(
    partitions: &Arc<Partitions>,
    operation: Operation,
    query: &str,
    now_ms: u64,
) -> Result<Value, ApiError> {
    let list = list_query(query, MAX_BULK_SAGAS)?;
    if list.limit > MAX_BULK_SAGAS {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("limit: a bulk request acts on at most {MAX_BULK_SAGAS} sagas; follow next_cursor for more"),
        ));
    }
    let Some(as_of) = list.to_ms else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "toDate: required for a bulk action — the moment whose sagas it acts on, so that a repeated request never acts twice",
        ));
    };
    if as_of >= now_ms {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "toDate: {} is not in the past (the server's time is {}); a bulk action acts on sagas as they were at a moment already past",
                rfc3339(as_of),
                rfc3339(now_ms)
            ),
        ));
    }
    let page = partitions.list(&list).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, saga) in page.items.iter().enumerate() {
        let (partitions, operation, saga_id) =
            (partitions.clone(), operation.clone(), saga.saga_id.clone());
        tasks.spawn(async move {
            // Only if unchanged since `as_of`, checked under the saga's lock: a saga
            // that a call running at the same time (the same page twice) acted on is
            // skipped, not acted on again.
            let result = match partitions.owner(&saga_id) {
                Ok(engine) => engine.operate(&saga_id, operation, Some(as_of)).await,
                Err(p) => Err(EngineError::Partitions(format!(
                    "partition {p} of this saga is not held by this server"
                ))),
            };
            (index, saga_id, result)
        });
    }
    let mut outcomes: Vec<(usize, Value)> = Vec::with_capacity(page.items.len());
    while let Some(joined) = tasks.join_next().await {
        let (index, saga_id, result) = joined.map_err(|e| {
            ApiError::new(
                hyper::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("a bulk action's task failed: {e}"),
            )
        })?;
        let outcome = match result {
            Ok(view) => json!({
                "saga_id": saga_id, "outcome": done(&operation),
                "status": view.status.as_str(), "error": null,
            }),
            Err(EngineError::Rejected(Rejection::ChangedSince { .. })) => json!({
                "saga_id": saga_id, "outcome": "skipped",
                "status": page.items[index].status.as_str(), "error": null,
            }),
            Err(e) => {
                let status = page.items[index].status.as_str();
                let e = ApiError::from(e);
                let outcome = if e.is_server_error() {
                    "failed"
                } else {
                    "rejected"
                };
                json!({
                    "saga_id": saga_id, "outcome": outcome, "status": status,
                    "error": {"code": e.code, "message": e.message},
                })
            }
        };
        outcomes.push((index, outcome));
    }
    outcomes.sort_by_key(|(index, _)| *index);
    Ok(json!({
        "items": outcomes.into_iter().map(|(_, o)| o).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
        "as_of": rfc3339(as_of),
    }))
}
