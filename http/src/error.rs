//! The API's one error shape, `{"error": {"code", "message"}}` (http/openapi.yaml), and the one
//! place an engine error becomes an HTTP status.

use hyper::StatusCode;
use sagalog_engine::definition::RegistryError;
use sagalog_engine::{EngineError, ErrorClass, Rejection};

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
            (EngineError::SagaNotFound { .. }, _) => (StatusCode::NOT_FOUND, "saga_not_found"),
            (EngineError::UnknownDefinition { .. }, _) => {
                (StatusCode::NOT_FOUND, "definition_not_found")
            }
            (_, ErrorClass::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
            (EngineError::Definition(RegistryError::Invalid(e)), _) if e.conflict => {
                (StatusCode::CONFLICT, "invalid_definition")
            }
            (EngineError::Definition(_), ErrorClass::BadRequest) => {
                (StatusCode::BAD_REQUEST, "invalid_definition")
            }
            (_, ErrorClass::BadRequest) => (StatusCode::BAD_REQUEST, "invalid_request"),
            (_, ErrorClass::TooLarge) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            (EngineError::StartConflict { .. }, _) => (StatusCode::CONFLICT, "start_conflict"),
            (EngineError::Rejected(Rejection::EventConflict { .. }), _) => {
                (StatusCode::CONFLICT, "event_id_conflict")
            }
            (EngineError::LimitReached { .. }, _) => (StatusCode::CONFLICT, "limit_reached"),
            (EngineError::Definition(_), ErrorClass::Conflict) => {
                (StatusCode::CONFLICT, "version_conflict")
            }
            (_, ErrorClass::Conflict) => (StatusCode::CONFLICT, "conflict"),
            (_, ErrorClass::Gone) => (StatusCode::GONE, "removed_by_retention"),
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
