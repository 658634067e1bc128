//! The API's one error shape, `{"error": {"code", "message"}}` (http/openapi.yaml), and the one
//! place an engine error becomes an HTTP status.

use hyper::StatusCode;
use sagalog_engine::definition::RegistryError;
use sagalog_engine::{EngineError, ErrorClass, Rejection};

/// The error codes a caller branches on, named once: the mapping below, the parsers and
/// the forwarding of replies between pods use these.
pub mod code {
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const INVALID_JSON: &str = "invalid_json";
    pub const NOT_FOUND: &str = "not_found";
    pub const SAGA_NOT_FOUND: &str = "saga_not_found";
    pub const CONFLICT: &str = "conflict";
    pub const EVENT_ID_CONFLICT: &str = "event_id_conflict";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const REMOVED_BY_RETENTION: &str = "removed_by_retention";
}

/// The codes with which a saga's pod refuses a reply for what it is — malformed, of a
/// saga or step it does not have, conflicting with one taken, too large, of a saga
/// removed — so that the same reply sent again gets the same answer.
pub const REPLY_REFUSALS: &[&str] = &[
    code::INVALID_REQUEST,
    code::INVALID_JSON,
    code::SAGA_NOT_FOUND,
    code::NOT_FOUND,
    code::CONFLICT,
    code::EVENT_ID_CONFLICT,
    code::PAYLOAD_TOO_LARGE,
    code::REMOVED_BY_RETENTION,
];

/// Whether an answer of `status` with `code` to a reply refuses it for good (see
/// [`REPLY_REFUSALS`]): a client error, not a timeout. Anything else — a wrong secret,
/// a timeout, a pod that does not know the route yet, a 5xx — may go otherwise later.
pub fn refuses_reply_for_good(status: StatusCode, code: &str) -> bool {
    status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && REPLY_REFUSALS.contains(&code)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// snake_case, stable: clients branch on it.
    pub code: &'static str,
    pub message: String,
    /// The log or the indexes failed (`saga_storage_errors_total` counts these).
    pub storage: bool,
    /// Why a write is refused for now (`sagalog_requests_refused_total`'s `reason`);
    /// such an answer carries `Retry-After`.
    pub refusal: Option<&'static str>,
    /// The connection is closed after this answer (the request's body was not read).
    pub close: bool,
    /// The methods the path takes, for a `405` (its `Allow` header).
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            storage: false,
            refusal: None,
            close: false,
            allow: None,
        }
    }

    /// `503`: the server cannot take this now, for `reason` (a metric label); the client
    /// should retry after a second.
    pub fn refused(reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            refusal: Some(reason),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// Seconds a client should wait before it retries (`Retry-After`), for a refusal.
    pub fn retry_after_s(&self) -> Option<u32> {
        (self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }

    /// Whether the error is the server's (5xx): these are logged.
    pub fn is_server_error(&self) -> bool {
        self.status.is_server_error()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let message = e.to_string();
        let (status, code) = match (&e, e.class()) {
            (EngineError::SagaNotFound { .. }, _) => (StatusCode::NOT_FOUND, code::SAGA_NOT_FOUND),
            (EngineError::UnknownDefinition { .. }, _) => {
                (StatusCode::NOT_FOUND, "definition_not_found")
            }
            (_, ErrorClass::NotFound) => (StatusCode::NOT_FOUND, code::NOT_FOUND),
            (EngineError::Definition(RegistryError::Invalid(e)), _) if e.conflict => {
                (StatusCode::CONFLICT, "invalid_definition")
            }
            (EngineError::Definition(_), ErrorClass::BadRequest) => {
                (StatusCode::BAD_REQUEST, "invalid_definition")
            }
            (_, ErrorClass::BadRequest) => (StatusCode::BAD_REQUEST, code::INVALID_REQUEST),
            (_, ErrorClass::TooLarge) => (StatusCode::PAYLOAD_TOO_LARGE, code::PAYLOAD_TOO_LARGE),
            (EngineError::StartConflict { .. }, _) => (StatusCode::CONFLICT, "start_conflict"),
            (EngineError::Rejected(Rejection::EventConflict { .. }), _) => {
                (StatusCode::CONFLICT, code::EVENT_ID_CONFLICT)
            }
            (EngineError::LimitReached { .. }, _) => (StatusCode::CONFLICT, "limit_reached"),
            (EngineError::Definition(_), ErrorClass::Conflict) => {
                (StatusCode::CONFLICT, "version_conflict")
            }
            (_, ErrorClass::Conflict) => (StatusCode::CONFLICT, code::CONFLICT),
            (_, ErrorClass::Gone) => (StatusCode::GONE, code::REMOVED_BY_RETENTION),
            (_, ErrorClass::Unavailable) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            (_, ErrorClass::Internal) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError {
            storage: matches!(
                e,
                EngineError::Storage(_) | EngineError::Unavailable(_) | EngineError::Corrupt { .. }
            ),
            refusal: e.refusal(),
            ..ApiError::new(status, code, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_refused_for_what_it_is_is_final_and_one_refused_for_now_is_not() {
        let unknown = ApiError::from(EngineError::SagaNotFound {
            saga_id: "o-1".into(),
            log_start: 0,
        });
        assert!(refuses_reply_for_good(unknown.status, unknown.code));
        let malformed = crate::json::parse::<serde_json::Value>(b"{").unwrap_err();
        assert!(refuses_reply_for_good(malformed.status, malformed.code));
        let busy = ApiError::refused("writes_full", "try later");
        assert!(!refuses_reply_for_good(busy.status, busy.code));
        let closed = ApiError::from(EngineError::Closed);
        assert!(!refuses_reply_for_good(closed.status, closed.code));
        assert!(!refuses_reply_for_good(
            StatusCode::UNAUTHORIZED,
            "unauthorized"
        ));
        assert!(!refuses_reply_for_good(
            StatusCode::REQUEST_TIMEOUT,
            code::INVALID_REQUEST
        ));
        assert!(
            !refuses_reply_for_good(StatusCode::SERVICE_UNAVAILABLE, code::CONFLICT),
            "a 5xx is never final"
        );
    }
}
