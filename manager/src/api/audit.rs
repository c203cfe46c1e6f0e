//! `GET /v1/audit`: the audit log, newest first.

use atlantis_common::api::manager::ErrorBody;
use axum::Json;
use axum::extract::{Query, State};

use crate::auth::Auth;
use crate::auth::store::{AuditEntry, AuditQuery};
use crate::error::ApiError;

/// `GET /v1/audit?app=&user=&action=&since_ms=&limit=`: superusers see everything; others must name an
/// app they may act on.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery), responses((status = 200, description = "Entries, newest first", body = [AuditEntry]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn list(
    State(auth): State<Auth>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    Ok(Json(auth.store().audit_log(&q).await?))
}
