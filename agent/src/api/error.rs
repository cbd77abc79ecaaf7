//! The API's one error type and its mapping to HTTP: a real status and one JSON shape,
//! `{"error": {"code": "...", "message": "..."}}`, whose message says what to change.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::cluster::ClusterError;
use crate::domain::DomainError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(kind: &str, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{kind} '{id}' does not exist"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> ApiError {
        let status = match &e {
            DomainError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            DomainError::NotFound { .. } => StatusCode::NOT_FOUND,
            DomainError::InsufficientFilament { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            DomainError::DuplicateId { .. }
            | DomainError::InvalidTransition { .. }
            | DomainError::PrinterBusy { .. }
            | DomainError::FailedReservedForAgent
            | DomainError::StaleAttempt { .. }
            | DomainError::NotSupervisor { .. }
            | DomainError::PrinterNotMovable { .. } => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        let (status, code) = match &e {
            ClusterError::NoLeader { .. } | ClusterError::NotLeader => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_leader")
            }
            ClusterError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ClusterError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ClusterError::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            ClusterError::Refused(_) => (StatusCode::CONFLICT, "refused"),
            ClusterError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ClusterError::UnknownMember(_) => (StatusCode::NOT_FOUND, "unknown_member"),
        };
        ApiError::new(status, code, e.to_string())
    }
}
