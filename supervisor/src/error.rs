//! Errors of the supervisor, by layer, and how the API shows them: an HTTP status plus a stable code.

use atlantis_common::api::supervisor::{ErrorBody, SpecError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::alloc::AllocError;
use crate::firewall::FirewallError;
use crate::runtime::RuntimeError;

/// What an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not the expected JSON (shape, types, names).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The spec parsed but is not acceptable.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// No or wrong token.
    #[error("missing or invalid cluster token")]
    Unauthorized,
    /// No such container here.
    #[error("container {0} not found on this supervisor")]
    NotFound(String),
    /// That container ID exists already.
    #[error("container {0} already exists on this supervisor")]
    Duplicate(String),
    /// The allocator refused.
    #[error("{0}")]
    NoCapacity(String),
    /// The image does not exist.
    #[error("{0}")]
    ImageNotFound(String),
    /// The container started but never became healthy, or exited.
    #[error("{0}")]
    Unhealthy(String),
    /// The body is too large.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The engine failed.
    #[error("container engine: {0}")]
    Runtime(RuntimeError),
    /// The firewall could not be changed.
    #[error("firewall: {0}")]
    Firewall(#[from] FirewallError),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<AllocError> for ApiError {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::Duplicate(id) => ApiError::Duplicate(id.to_string()),
            AllocError::TooManyPorts { .. } => ApiError::InvalidSpec(SpecError {
                field: "ports".into(),
                message: e.to_string(),
            }),
            other => ApiError::NoCapacity(other.to_string()),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::ImageNotFound { .. } => ApiError::ImageNotFound(e.to_string()),
            other => ApiError::Runtime(other),
        }
    }
}

impl ApiError {
    /// The HTTP status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::InvalidSpec(_) => (StatusCode::BAD_REQUEST, "invalid_spec"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Duplicate(_) => (StatusCode::CONFLICT, "duplicate"),
            ApiError::NoCapacity(_) => (StatusCode::CONFLICT, "no_capacity"),
            ApiError::ImageNotFound(_) => (StatusCode::UNPROCESSABLE_ENTITY, "image_not_found"),
            ApiError::Unhealthy(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unhealthy"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Runtime(_) => (StatusCode::BAD_GATEWAY, "engine_error"),
            ApiError::Firewall(_) => (StatusCode::INTERNAL_SERVER_ERROR, "firewall_error"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "Request failed.");
        } else {
            tracing::info!(code, error = %self, "Request refused.");
        }
        (
            status,
            axum::Json(ErrorBody {
                code: code.to_owned(),
                message: self.to_string(),
            }),
        )
            .into_response()
    }
}
