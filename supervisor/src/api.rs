//! The HTTP/JSON API (axum). Only managers (and operators) call it; every `/v1` route and `/metrics` need
//! the cluster token.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/containers` | deploy a [`ContainerSpec`]; answers 201 once healthy |
//! | GET | `/v1/containers` | list |
//! | GET | `/v1/containers/{id}` | one container |
//! | DELETE | `/v1/containers/{id}` | teardown of one container |
//! | POST | `/v1/teardown` | teardown by IDs, or of an app (and env) |
//! | GET | `/v1/containers/{id}/logs?follow=true&tail=100` | output, streamed while it runs with `follow` |
//! | PUT | `/v1/containers/{id}/dependencies` | replace a running container's dependencies ([`crate::dependencies`]): rules re-rendered, refused connections cut, kept across restarts |
//! | POST | `/v1/containers/{id}/exec` | run a command (argv, bounded time), ndjson output and exit code ([`crate::exec`]) |
//! | GET | `/v1/health` | capacity, free, version |
//! | GET | `/metrics` | Prometheus metrics; needs the token too (they tell what runs here and how much is free) |
//! | GET | `/healthz`, `/openapi.json` | liveness (`ok`, nothing else), this API's OpenAPI 3 document; no token |
//!
//! Deploys and teardowns run in their own task: a client that hangs up does not cancel them halfway.

use std::sync::Arc;

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::{ContainerSpec, DependenciesRequest, TeardownRequest};
use atlantis_common::telemetry::METRICS_CONTENT_TYPE;
use axum::body::Body;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::service::Supervisor;

/// The OpenAPI 3 document of this API (kept in sync with the router by the integration tests).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The service.
    pub supervisor: Arc<Supervisor>,
    /// The cluster token.
    pub token: Arc<String>,
    /// Largest accepted body.
    pub max_body: usize,
    /// Callers were authenticated by a client certificate of the cluster CA (mutual TLS): the token
    /// is not needed.
    pub mtls: bool,
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/containers", post(deploy).get(list))
        .route("/containers/{id}", get(get_one).delete(delete_one))
        .route("/containers/{id}/logs", get(logs))
        .route("/containers/{id}/dependencies", put(replace_dependencies))
        .route("/containers/{id}/exec", post(crate::exec::exec))
        .route("/teardown", post(teardown))
        .route("/health", get(health))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(metrics).route_layer(axum::middleware::from_fn_with_state(state.clone(), auth)),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

/// Compares in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(
    State(st): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if st.mtls {
        // The TLS handshake required a client certificate signed by the cluster CA.
        return next.run(req).await;
    }
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), st.token.as_bytes()) => next.run(req).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// A JSON body read with a size bound, refused with our error body (never axum's plain text).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &ApiState) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(req.into_body(), st.max_body)
            .await
            .map_err(|_| ApiError::TooLarge(st.max_body))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidRequest(e.to_string()))
    }
}

fn parse_id(raw: &str) -> Result<ContainerId, ApiError> {
    raw.parse()
        .map_err(|e: atlantis_common::NameError| ApiError::InvalidRequest(e.to_string()))
}

async fn deploy(
    State(st): State<ApiState>,
    JsonBody(spec): JsonBody<ContainerSpec>,
) -> Result<Response, ApiError> {
    let sup = st.supervisor.clone();
    let info = tokio::spawn(async move { sup.deploy(spec).await })
        .await
        .map_err(|e| ApiError::Internal(format!("deploy task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list(State(st): State<ApiState>) -> Response {
    Json(st.supervisor.list()).into_response()
}

async fn get_one(State(st): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let info = st
        .supervisor
        .info(&id)
        .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    Ok(Json(info).into_response())
}

async fn delete_one(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let sup = st.supervisor.clone();
    let req = TeardownRequest {
        container_ids: vec![id.clone()],
        ..Default::default()
    };
    let resp = tokio::spawn(async move { sup.teardown(req).await })
        .await
        .map_err(|e| ApiError::Internal(format!("teardown task failed: {e}")))??;
    if resp.removed.is_empty() {
        return Err(ApiError::NotFound(id.to_string()));
    }
    Ok(Json(resp).into_response())
}

async fn replace_dependencies(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<DependenciesRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let sup = st.supervisor.clone();
    // In its own task: a client that hangs up does not leave the rules half-changed.
    let info = tokio::spawn(async move { sup.replace_dependencies(&id, req).await })
        .await
        .map_err(|e| ApiError::Internal(format!("dependencies task failed: {e}")))??;
    Ok(Json(info).into_response())
}

async fn teardown(
    State(st): State<ApiState>,
    JsonBody(req): JsonBody<TeardownRequest>,
) -> Result<Response, ApiError> {
    let sup = st.supervisor.clone();
    let resp = tokio::spawn(async move { sup.teardown(req).await })
        .await
        .map_err(|e| ApiError::Internal(format!("teardown task failed: {e}")))??;
    Ok(Json(resp).into_response())
}

async fn health(State(st): State<ApiState>) -> Response {
    Json(st.supervisor.health()).into_response()
}

async fn metrics(State(st): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        st.supervisor.metrics.registry.render(),
    )
        .into_response()
}

/// Query of the logs route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Keep streaming while the container runs.
    #[serde(default)]
    follow: bool,
    /// Lines of history first (at most 10000).
    #[serde(default = "default_tail")]
    tail: u32,
}

fn default_tail() -> u32 {
    100
}

async fn logs(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let id = parse_id(&id)?;
    if q.tail > 10_000 {
        return Err(ApiError::InvalidRequest(
            "tail must be at most 10000".into(),
        ));
    }
    let docker_id = st
        .supervisor
        .docker_id(&id)
        .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    let stream = st
        .supervisor
        .runtime
        .logs(&docker_id, q.follow, q.tail)
        .map(|r| r.map_err(std::io::Error::other));
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_every_error_code() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let codes: Vec<&str> =
            doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
        let spec_error = atlantis_common::api::supervisor::SpecError {
            field: "f".into(),
            message: "m".into(),
        };
        let all = [
            ApiError::InvalidRequest(String::new()),
            ApiError::InvalidSpec(spec_error),
            ApiError::Unauthorized,
            ApiError::NotFound(String::new()),
            ApiError::Duplicate(String::new()),
            ApiError::NoCapacity(String::new()),
            ApiError::ImageNotFound(String::new()),
            ApiError::Unhealthy(String::new()),
            ApiError::TooLarge(0),
            ApiError::Runtime(crate::runtime::RuntimeError::Engine(String::new())),
            ApiError::Firewall(crate::firewall::FirewallError::Failed {
                program: String::new(),
                stderr: String::new(),
            }),
            ApiError::Internal(String::new()),
        ];
        let mut ours: Vec<&str> = all.iter().map(|e| e.status_and_code().1).collect();
        ours.sort();
        let mut theirs = codes.clone();
        theirs.sort();
        assert_eq!(ours, theirs);
    }
}
