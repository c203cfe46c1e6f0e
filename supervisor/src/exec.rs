//! `POST /v1/containers/{id}/exec`: runs a command in one of this supervisor's containers and streams the
//! result as `application/x-ndjson` [`ExecEvent`]s (output as it comes, then `exit` or `error`). The argv
//! goes to Docker exec as a vector, never through a shell; the run time is bounded
//! ([`ExecRequest::timeout_ms`], at most an hour) and the process is killed when the caller hangs up.

use std::time::Duration;

use atlantis_common::api::exec::{ExecEvent, ExecRequest};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;

use crate::api::{ApiState, JsonBody};
use crate::error::ApiError;

/// The handler.
pub async fn exec(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExecRequest>,
) -> Result<Response, ApiError> {
    let id: atlantis_common::ContainerId = id
        .parse()
        .map_err(|e: atlantis_common::NameError| ApiError::InvalidRequest(e.to_string()))?;
    req.validate()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let docker_id = st
        .supervisor
        .docker_id(&id)
        .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    tracing::info!(container = %id, command = %req.command_line(), "Exec.");
    let timeout = Duration::from_millis(req.timeout_ms());
    let events = st
        .supervisor
        .runtime
        .exec(&docker_id, req.argv, timeout)
        .await?;
    let lines = events.map(|ev: ExecEvent| {
        let mut v = serde_json::to_vec(&ev).unwrap_or_default();
        v.push(b'\n');
        Ok::<_, std::io::Error>(v)
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}
