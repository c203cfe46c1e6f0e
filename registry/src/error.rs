//! Registry errors: each carries an HTTP status and an OCI Distribution error code, and renders as the spec's
//! `{"errors":[{"code","message","detail"}]}` body. Storage failures are logged in full and reported to the
//! client without internal detail.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::digest::DigestError;
use crate::names::NameError;
use crate::storage::StorageError;

/// Everything a registry operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry: {0}")]
    BlobUploadUnknown(String),
    #[error("requested range not satisfiable: {0}")]
    RangeInvalid(String),
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references a manifest or blob unknown to registry: {0}")]
    ManifestBlobUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown to registry: {0}")]
    ManifestUnknown(String),
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    #[error("content too large: {0}")]
    TooLarge(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("requested access to the resource is denied")]
    Denied,
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
}

impl From<DigestError> for RegistryError {
    fn from(e: DigestError) -> Self {
        RegistryError::DigestInvalid(e.to_string())
    }
}

impl From<NameError> for RegistryError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Tag(_) | NameError::Reference(_) => RegistryError::TagInvalid(e.to_string()),
            NameError::Repository(_) => RegistryError::NameInvalid(e.to_string()),
        }
    }
}

impl RegistryError {
    /// The HTTP status and the spec's error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use RegistryError::*;
        match self {
            BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            BlobUploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            RangeInvalid(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            TagInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Denied => (StatusCode::FORBIDDEN, "DENIED"),
            Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Storage(StorageError::InvalidPath { .. }) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }

    fn client_message(&self) -> String {
        match self {
            RegistryError::Storage(_) => "internal storage error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The realm advertised in `WWW-Authenticate` challenges.
pub const REALM: &str = "atlantis-registry";

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "Request failed.");
        }
        let body = serde_json::json!({ "errors": [{ "code": code, "message": self.client_message(), "detail": null }] });
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if matches!(self, RegistryError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(concat!("Basic realm=\"", "atlantis-registry", "\"")),
            );
        }
        resp
    }
}

/// A shorthand.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
