//! Containers, supervisors, routers and usage.

use atlantis_common::api::manager::{ErrorBody, TaskAccepted};
use std::collections::BTreeMap;

use atlantis_common::ContainerId;
use atlantis_common::api::manager::{InstanceRecord, MaintenanceRequest, RouterView};
use atlantis_common::api::supervisor::SupervisorRecord;
use atlantis_common::zk::RouterKind;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::{JsonBody, accepted, name};
use crate::ctx::Ctx;
use crate::error::ApiError;
use crate::state;

async fn instance(ctx: &Ctx, id: &str) -> Result<InstanceRecord, ApiError> {
    let id: ContainerId = name(id)?;
    state::find_instance(&ctx.coord, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no container {id}")))
}

/// `GET /v1/containers/{id}`
#[utoipa::path(get, path = "/v1/containers/{id}", tag = "containers", params(("id" = String, Path)), responses((status = 200, description = "The container", body = InstanceRecord), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn container(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<Json<InstanceRecord>, ApiError> {
    Ok(Json(instance(&ctx, &id).await?))
}

/// `POST /v1/containers/{id}/teardown` → 202.
#[utoipa::path(post, path = "/v1/containers/{id}/teardown", tag = "containers", params(("id" = String, Path)), responses((status = 202, description = "Teardown task started", body = TaskAccepted), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn teardown_container(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let rec = instance(&ctx, &id).await?;
    let t = ctx
        .teardown(rec.app, Some(rec.env), Some(rec.container_id))
        .await?;
    Ok(accepted(t))
}

/// `POST /v1/containers/{id}/maintenance` `{"on": true}`: out of (or back into) its pool.
#[utoipa::path(post, path = "/v1/containers/{id}/maintenance", tag = "containers", params(("id" = String, Path)), request_body = MaintenanceRequest, responses((status = 200, description = "New state", body = InstanceRecord), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn maintenance(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<MaintenanceRequest>,
) -> Result<Json<InstanceRecord>, ApiError> {
    let id: ContainerId = name(&id)?;
    Ok(Json(ctx.maintenance(id, req.on).await?))
}

/// Query of the logs route.
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    /// Keep streaming while the container runs.
    #[serde(default)]
    pub follow: bool,
    /// Lines from the end (default 100, at most 10000).
    pub tail: Option<u32>,
}

/// `GET /v1/containers/{id}/logs?follow=&tail=`: proxied from the container's supervisor.
#[utoipa::path(get, path = "/v1/containers/{id}/logs", tag = "containers", params(("id" = String, Path), ("follow" = Option<bool>, Query), ("tail" = Option<u32>, Query)), responses((status = 200, description = "Output, streamed with follow", content_type = "text/plain", body = String), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn logs(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let rec = instance(&ctx, &id).await?;
    let sup = state::supervisor(&ctx.coord, &rec.host)
        .await?
        .ok_or_else(|| {
            ApiError::Unavailable(format!("supervisor {} is not registered", rec.host))
        })?;
    let client = ctx
        .client(&sup)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let stream = client
        .logs(
            &rec.container_id,
            q.follow,
            q.tail.unwrap_or(100).min(10_000),
        )
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let body = Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// `GET /v1/supervisors`
#[utoipa::path(get, path = "/v1/supervisors", tag = "cluster", responses((status = 200, description = "Registered supervisors", body = [SupervisorRecord]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn supervisors(State(ctx): State<Ctx>) -> Result<Json<Vec<SupervisorRecord>>, ApiError> {
    Ok(Json(state::supervisors(&ctx.coord).await?))
}

/// `GET /v1/routers`
#[utoipa::path(get, path = "/v1/routers", tag = "cluster", responses((status = 200, description = "Registered routers", body = [RouterView]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn routers(State(ctx): State<Ctx>) -> Result<Json<Vec<RouterView>>, ApiError> {
    let mut out = Vec::new();
    for k in RouterKind::ALL {
        out.extend(state::routers(&ctx.coord, k).await?);
    }
    Ok(Json(out))
}

/// CPU and memory reserved, per host, app and team.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Per supervisor host: capacity and free now.
    #[schema(value_type = Object)]
    pub hosts: BTreeMap<String, serde_json::Value>,
    /// Per app: containers, millicores, MiB.
    pub apps: BTreeMap<String, Amount>,
    /// Per team (apps without a team under `-`).
    pub teams: BTreeMap<String, Amount>,
}

/// Reserved resources.
#[derive(Debug, Default, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Amount {
    /// Containers.
    pub containers: u32,
    /// CPU, millicores.
    pub cpu_millis: u64,
    /// Memory, MiB.
    pub memory_mb: u64,
}

/// `GET /v1/usage`
#[utoipa::path(get, path = "/v1/usage", tag = "cluster", responses((status = 200, description = "CPU and memory per host, app and team", body = Usage), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn usage(State(ctx): State<Ctx>) -> Result<Json<Usage>, ApiError> {
    let mut u = Usage::default();
    for s in state::supervisors(&ctx.coord).await? {
        u.hosts.insert(
            s.host.to_string(),
            serde_json::json!({"zone": s.zone, "capacity": s.capacity, "free": s.free}),
        );
    }
    let apps = super::apps::list(State(ctx.clone())).await?.0;
    for a in apps {
        let team = a
            .spec
            .team
            .as_ref()
            .map_or("-".to_owned(), |t| t.to_string());
        for env in state::app_envs(&ctx.coord, &a.spec.name).await? {
            for i in state::instances(&ctx.coord, &a.spec.name, &env).await? {
                for bucket in [
                    u.apps.entry(a.spec.name.to_string()).or_default(),
                    u.teams.entry(team.clone()).or_default(),
                ] {
                    bucket.containers += 1;
                    bucket.cpu_millis += u64::from(i.value.cpu_millis);
                    bucket.memory_mb += i.value.memory_mb;
                }
            }
        }
    }
    Ok(Json(u))
}
