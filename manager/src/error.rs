//! API errors: each maps to an HTTP status and a stable code, shown as `{code, message}`.

use atlantis_common::api::manager::{ErrorBody, FieldError};
use atlantis_common::zk::{CoordError, LockError};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::history::HistoryError;

/// What an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a path segment is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// A field is not acceptable.
    #[error("{0}")]
    InvalidField(#[from] FieldError),
    /// Router configuration refused by the routing parser.
    #[error("{0}")]
    InvalidConfig(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The commit has no image in the registry.
    #[error("{0}")]
    ImageNotFound(String),
    /// It exists already.
    #[error("{0}")]
    Exists(String),
    /// Refused while something depends on it (a deployed app, an env in use).
    #[error("{0}")]
    InUse(String),
    /// Another task holds a conflicting lock.
    #[error("{message}")]
    Locked {
        /// Human message naming the task.
        message: String,
    },
    /// Some zone lacks room for the containers asked for.
    #[error("{0}")]
    NoCapacity(String),
    /// The body is too large.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// A dependency (ZooKeeper, registry, database) failed.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
    /// No valid token: missing, malformed, tampered, expired or signed with an unknown key.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The app declares a dependency its owning team has not granted it.
    #[error("{0}")]
    DependencyNotGranted(String),
    /// The audit log could not be written, so the call was not carried out.
    #[error("{0}")]
    AuditUnavailable(String),
}

impl ApiError {
    /// Status and stable code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::InvalidField(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
            ApiError::InvalidConfig(_) => (StatusCode::BAD_REQUEST, "invalid_router_config"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::ImageNotFound(_) => (StatusCode::NOT_FOUND, "image_not_found"),
            ApiError::Exists(_) => (StatusCode::CONFLICT, "exists"),
            ApiError::InUse(_) => (StatusCode::CONFLICT, "in_use"),
            ApiError::Locked { .. } => (StatusCode::CONFLICT, "locked"),
            ApiError::NoCapacity(_) => (StatusCode::UNPROCESSABLE_ENTITY, "no_capacity"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::DependencyNotGranted(_) => (StatusCode::FORBIDDEN, "dependency_not_granted"),
            ApiError::AuditUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "API call failed.");
        }
        let body = ErrorBody {
            code: code.to_owned(),
            message: self.to_string(),
        };
        if status == StatusCode::UNAUTHORIZED {
            let challenge = [(
                axum::http::header::WWW_AUTHENTICATE,
                "Bearer realm=\"atlantis\"",
            )];
            return (status, challenge, Json(body)).into_response();
        }
        (status, Json(body)).into_response()
    }
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        if e.is_transient() {
            ApiError::Unavailable(format!("ZooKeeper: {e}"))
        } else {
            ApiError::Internal(format!("ZooKeeper: {e}"))
        }
    }
}

impl From<LockError> for ApiError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Conflict {
                wanted,
                held,
                holder,
            } => ApiError::Locked {
                message: format!(
                    "{wanted} is locked by task {} ({held}, manager {})",
                    holder.purpose, holder.owner
                ),
            },
            LockError::Coord(c) => c.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        ApiError::Unavailable(format!("history database: {e}"))
    }
}
