//! Apps, envs, and the task-starting routes of an app/env (deploy, rollback, scale, teardown).

use atlantis_common::api::manager::{
    AppRecord, AppSpec, DeployRequest, EnvRecord, EnvSpec, InstanceRecord, Release,
    RollbackRequest, ScaleRequest,
};
use atlantis_common::api::manager::{ErrorBody, TaskAccepted};
use atlantis_common::zk::CoordError;
use atlantis_common::{AppName, EnvName};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::{JsonBody, accepted, name};
use crate::ctx::Ctx;
use crate::error::ApiError;
use crate::state;
use crate::tasks::now_ms;

/// `GET /v1/apps`
#[utoipa::path(get, path = "/v1/apps", tag = "apps", responses((status = 200, description = "Registered apps", body = [AppRecord]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn list(State(ctx): State<Ctx>) -> Result<Json<Vec<AppRecord>>, ApiError> {
    let l = ctx.coord.layout();
    let mut out = Vec::new();
    for a in ctx.coord.children(&l.apps()).await? {
        let Ok(app) = a.parse::<AppName>() else {
            continue;
        };
        if let Some(v) = ctx.coord.get::<AppRecord>(&l.app(&app)).await? {
            out.push(v.value);
        }
    }
    Ok(Json(out))
}

/// Every dependency exists (a registered one or an internal app) and is granted to the app
/// (403 `dependency_not_granted` otherwise, see `crate::grants`).
async fn check_deps(ctx: &Ctx, rec: &AppRecord) -> Result<(), ApiError> {
    for d in &rec.spec.dependencies {
        crate::grants::owner(&ctx.coord, d).await?;
    }
    crate::grants::check_declared(&ctx.coord, rec).await
}

/// `POST /v1/apps`: registers an app (409 if it exists).
#[utoipa::path(post, path = "/v1/apps", tag = "apps", request_body = AppSpec, responses((status = 201, description = "Registered", body = AppRecord), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<Ctx>,
    JsonBody(spec): JsonBody<AppSpec>,
) -> Result<impl IntoResponse, ApiError> {
    spec.validate()?;
    let rec = AppRecord {
        version: 1,
        spec,
        created_ms: now_ms(),
    };
    check_deps(&ctx, &rec).await?;
    match ctx
        .coord
        .create(&ctx.coord.layout().app(&rec.spec.name), &rec)
        .await
    {
        Ok(_) => Ok((StatusCode::CREATED, Json(rec))),
        Err(CoordError::Exists { .. }) => Err(ApiError::Exists(format!(
            "app {} is registered already",
            rec.spec.name
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/apps/{app}`
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps", params(("app" = String, Path)), responses((status = 200, description = "The app", body = AppRecord), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn get_one(
    State(ctx): State<Ctx>,
    Path(app): Path<String>,
) -> Result<Json<AppRecord>, ApiError> {
    Ok(Json(ctx.app(&name(&app)?).await?.value))
}

/// `PUT /v1/apps/{app}`: replaces the app's registration (name must match).
#[utoipa::path(put, path = "/v1/apps/{app}", tag = "apps", params(("app" = String, Path)), request_body = AppSpec, responses((status = 200, description = "Updated", body = AppRecord), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn update(
    State(ctx): State<Ctx>,
    Path(app): Path<String>,
    JsonBody(spec): JsonBody<AppSpec>,
) -> Result<Json<AppRecord>, ApiError> {
    let app: AppName = name(&app)?;
    if spec.name != app {
        return Err(ApiError::InvalidRequest(format!(
            "body names app {}, the path {app}",
            spec.name
        )));
    }
    spec.validate()?;
    let cur = ctx.app(&app).await?;
    let rec = AppRecord {
        version: 1,
        spec,
        created_ms: cur.value.created_ms,
    };
    check_deps(&ctx, &rec).await?;
    ctx.coord
        .set(&ctx.coord.layout().app(&app), &rec, Some(cur.version))
        .await
        .map_err(|e| match e {
            CoordError::Conflict { .. } => {
                ApiError::Exists(format!("app {app} changed concurrently; read it again"))
            }
            e => e.into(),
        })?;
    Ok(Json(rec))
}

/// `DELETE /v1/apps/{app}`: refused while anything of it is deployed. Its team grants, dependency
/// grants and pending requests (as depender and, for an internal app, as dependency) go with it, so a
/// new app of the same name inherits none.
#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "apps", params(("app" = String, Path)), responses((status = 204, description = "Unregistered"), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<Ctx>,
    Path(app): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app: AppName = name(&app)?;
    let cur = ctx.app(&app).await?;
    let envs = state::app_envs(&ctx.coord, &app).await?;
    if !envs.is_empty() {
        return Err(ApiError::InUse(format!(
            "app {app} is deployed in {}; tear it down first",
            envs.iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let teams = crate::auth::store::Store::new(ctx.history.pool().clone());
    teams.forget_app(app.as_str()).await?;
    crate::grants::purge_app(&ctx.coord, &app, cur.version).await?;
    crate::routing::release_stable_ports(&ctx.coord, &app).await?;
    // Again after the app is gone: a team grant written meanwhile does not survive it.
    teams.forget_app(app.as_str()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/envs`
#[utoipa::path(get, path = "/v1/envs", tag = "envs", responses((status = 200, description = "Envs", body = [EnvRecord]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn list_envs(State(ctx): State<Ctx>) -> Result<Json<Vec<EnvRecord>>, ApiError> {
    let l = ctx.coord.layout();
    let mut out = Vec::new();
    for e in ctx.coord.children(&l.envs()).await? {
        let Ok(env) = e.parse::<EnvName>() else {
            continue;
        };
        if let Some(v) = ctx.coord.get::<EnvRecord>(&l.env(&env)).await? {
            out.push(v.value);
        }
    }
    Ok(Json(out))
}

/// `POST /v1/envs`
#[utoipa::path(post, path = "/v1/envs", tag = "envs", request_body = EnvSpec, responses((status = 201, description = "Created", body = EnvRecord), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn create_env(
    State(ctx): State<Ctx>,
    JsonBody(spec): JsonBody<EnvSpec>,
) -> Result<impl IntoResponse, ApiError> {
    spec.validate()?;
    let rec = EnvRecord {
        version: 1,
        spec,
        created_ms: now_ms(),
    };
    match ctx
        .coord
        .create(&ctx.coord.layout().env(&rec.spec.name), &rec)
        .await
    {
        Ok(_) => Ok((StatusCode::CREATED, Json(rec))),
        Err(CoordError::Exists { .. }) => Err(ApiError::Exists(format!(
            "env {} exists already",
            rec.spec.name
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/envs/{env}`
#[utoipa::path(get, path = "/v1/envs/{env}", tag = "envs", params(("env" = String, Path)), responses((status = 200, description = "The env", body = EnvRecord), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn get_env(
    State(ctx): State<Ctx>,
    Path(env): Path<String>,
) -> Result<Json<EnvRecord>, ApiError> {
    Ok(Json(ctx.env(&name(&env)?).await?))
}

/// `DELETE /v1/envs/{env}`: refused while an app is deployed in it.
#[utoipa::path(delete, path = "/v1/envs/{env}", tag = "envs", params(("env" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn delete_env(
    State(ctx): State<Ctx>,
    Path(env): Path<String>,
) -> Result<StatusCode, ApiError> {
    let env: EnvName = name(&env)?;
    ctx.env(&env).await?;
    let l = ctx.coord.layout();
    for a in ctx.coord.children(&l.all_instances()).await? {
        if let Ok(app) = a.parse::<AppName>()
            && state::app_envs(&ctx.coord, &app).await?.contains(&env)
        {
            return Err(ApiError::InUse(format!("env {env} is in use by app {app}")));
        }
    }
    ctx.coord.delete(&l.env(&env), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/apps/{app}/envs/{env}/deploy` → 202 with the task.
#[utoipa::path(post, path = "/v1/apps/{app}/envs/{env}/deploy", tag = "releases", params(("app" = String, Path), ("env" = String, Path)), request_body = DeployRequest, responses((status = 202, description = "Deploy task started", body = TaskAccepted), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn deploy(
    State(ctx): State<Ctx>,
    Path((app, env)): Path<(String, String)>,
    JsonBody(req): JsonBody<DeployRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let id = ctx
        .deploy(name(&app)?, name(&env)?, req.sha, req.overrides)
        .await?;
    Ok(accepted(id))
}

/// `POST /v1/apps/{app}/envs/{env}/rollback` → 202.
#[utoipa::path(post, path = "/v1/apps/{app}/envs/{env}/rollback", tag = "releases", params(("app" = String, Path), ("env" = String, Path)), request_body = RollbackRequest, responses((status = 202, description = "Rollback task started", body = TaskAccepted), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn rollback(
    State(ctx): State<Ctx>,
    Path((app, env)): Path<(String, String)>,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let id = ctx.rollback(name(&app)?, name(&env)?, req.to).await?;
    Ok(accepted(id))
}

/// `POST /v1/apps/{app}/envs/{env}/scale` → 202.
#[utoipa::path(post, path = "/v1/apps/{app}/envs/{env}/scale", tag = "releases", params(("app" = String, Path), ("env" = String, Path)), request_body = ScaleRequest, responses((status = 202, description = "Scale task started", body = TaskAccepted), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn scale(
    State(ctx): State<Ctx>,
    Path((app, env)): Path<(String, String)>,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let id = ctx.scale(name(&app)?, name(&env)?, req.instances).await?;
    Ok(accepted(id))
}

/// `POST /v1/apps/{app}/envs/{env}/teardown` → 202.
#[utoipa::path(post, path = "/v1/apps/{app}/envs/{env}/teardown", tag = "releases", params(("app" = String, Path), ("env" = String, Path)), responses((status = 202, description = "Teardown task started", body = TaskAccepted), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn teardown_env(
    State(ctx): State<Ctx>,
    Path((app, env)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let id = ctx.teardown(name(&app)?, Some(name(&env)?), None).await?;
    Ok(accepted(id))
}

/// `POST /v1/apps/{app}/teardown` → 202.
#[utoipa::path(post, path = "/v1/apps/{app}/teardown", tag = "releases", params(("app" = String, Path)), responses((status = 202, description = "Teardown task started", body = TaskAccepted), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn teardown_app(
    State(ctx): State<Ctx>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = ctx.teardown(name(&app)?, None, None).await?;
    Ok(accepted(id))
}

/// `GET /v1/apps/{app}/envs/{env}/releases`: newest first.
#[utoipa::path(get, path = "/v1/apps/{app}/envs/{env}/releases", tag = "releases", params(("app" = String, Path), ("env" = String, Path)), responses((status = 200, description = "Releases, newest first", body = [Release]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn releases(
    State(ctx): State<Ctx>,
    Path((app, env)): Path<(String, String)>,
) -> Result<Json<Vec<Release>>, ApiError> {
    let app: AppName = name(&app)?;
    let env: EnvName = name(&env)?;
    ctx.app(&app).await?;
    Ok(Json(
        ctx.history
            .releases(app.as_str(), env.as_str(), 100)
            .await?,
    ))
}

/// `GET /v1/apps/{app}/envs/{env}/containers`
#[utoipa::path(get, path = "/v1/apps/{app}/envs/{env}/containers", tag = "releases", params(("app" = String, Path), ("env" = String, Path)), responses((status = 200, description = "Instances", body = [InstanceRecord]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn containers(
    State(ctx): State<Ctx>,
    Path((app, env)): Path<(String, String)>,
) -> Result<Json<Vec<InstanceRecord>>, ApiError> {
    let app: AppName = name(&app)?;
    let env: EnvName = name(&env)?;
    ctx.app(&app).await?;
    Ok(Json(
        state::instances(&ctx.coord, &app, &env)
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect(),
    ))
}
