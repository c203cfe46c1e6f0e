//! Dependency grants over HTTP (model and checks: [`crate::grants`]). Who may call what is decided by
//! the auth policy from the route template (`crate::auth::policy`): a request is made by the depender
//! app's team, a grant or revoke by the dependency's owning team or a superuser. No route here returns
//! a dependency's data or endpoints: names, owners and grants only.

use atlantis_common::AppName;
use atlantis_common::api::grants::{DependencyGrant, DependencyRequest, RequestBody, Revoked};
use atlantis_common::api::manager::ErrorBody;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};

use super::name;
use crate::auth::{Auth, Principal};
use crate::error::ApiError;
use crate::grants;
use crate::release::{cut, replace};

/// The routes of grants and requests.
pub fn router(auth: Auth) -> Router {
    Router::new()
        .route("/v1/dependencies/{name}/grants", get(list_grants))
        .route(
            "/v1/dependencies/{name}/grants/{app}",
            put(grant).delete(revoke),
        )
        .route(
            "/v1/dependencies/{name}/requests/{app}",
            put(request).delete(drop_request),
        )
        .route("/v1/dependency-requests", get(list_requests))
        .with_state(auth)
}

/// True when `p` may see `dep`'s variable names and endpoints: a superuser, a member of its owning team,
/// or someone who may act on an app it is granted to.
pub async fn may_see(auth: &Auth, p: &Principal, dep: &AppName) -> Result<bool, ApiError> {
    if p.superuser && !p.is_ci() {
        return Ok(true);
    }
    let owner = grants::owner(&auth.ctx.coord, dep).await?;
    if owner
        .team
        .as_ref()
        .is_some_and(|t| p.teams.iter().any(|m| m == t.as_str()))
    {
        return Ok(true);
    }
    for g in grants::grants_of(&auth.ctx.coord, dep).await? {
        if auth.may_access(p, g.app.as_str()).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `PUT /v1/dependencies/{name}/requests/{app}`: the app's team asks the dependency's owner for it.
#[utoipa::path(put, path = "/v1/dependencies/{name}/requests/{app}", tag = "dependencies", params(("name" = String, Path), ("app" = String, Path)), request_body(content = Option<RequestBody>, description = "Optional reason"), responses((status = 201, description = "Request recorded", body = DependencyRequest), (status = 200, description = "Already pending", body = DependencyRequest), (status = "default", description = "Error: {code, message} (409 exists when granted already)", body = ErrorBody)))]
pub async fn request(
    State(auth): State<Auth>,
    Extension(p): Extension<Principal>,
    Path((dep, app)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<impl IntoResponse, ApiError> {
    let dep: AppName = name(&dep)?;
    let app: AppName = name(&app)?;
    let bytes = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map_err(|_| ApiError::TooLarge(16 * 1024))?;
    let b: RequestBody = if bytes.is_empty() {
        RequestBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))?
    };
    let (new, r) = grants::request(&auth.ctx.coord, &dep, &app, &p.user, b.reason).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(r)))
}

/// `DELETE /v1/dependencies/{name}/requests/{app}`: the owner declines, or the depender withdraws.
#[utoipa::path(delete, path = "/v1/dependencies/{name}/requests/{app}", tag = "dependencies", params(("name" = String, Path), ("app" = String, Path)), responses((status = 204, description = "Request dropped"), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn drop_request(
    State(auth): State<Auth>,
    Path((dep, app)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let dep: AppName = name(&dep)?;
    let app: AppName = name(&app)?;
    if grants::drop_request(&auth.ctx.coord, &dep, &app).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "app {app} has no pending request for {dep}"
        )))
    }
}

/// `GET /v1/dependency-requests`: pending requests asked of the caller's teams and made by apps the
/// caller may act on (superusers: all).
#[utoipa::path(get, path = "/v1/dependency-requests", tag = "dependencies", responses((status = 200, description = "Pending requests", body = [DependencyRequest]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn list_requests(
    State(auth): State<Auth>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<DependencyRequest>>, ApiError> {
    let mut out = Vec::new();
    for r in grants::all_requests(&auth.ctx.coord).await? {
        let asked_of_me = r
            .owner
            .as_ref()
            .is_some_and(|t| p.teams.iter().any(|m| m == t.as_str()))
            && !p.is_ci();
        if (p.superuser && !p.is_ci()) || asked_of_me || auth.may_access(&p, r.app.as_str()).await?
        {
            out.push(r);
        }
    }
    Ok(Json(out))
}

/// `GET /v1/dependencies/{name}/grants`: the apps it is granted to (names only).
#[utoipa::path(get, path = "/v1/dependencies/{name}/grants", tag = "dependencies", params(("name" = String, Path)), responses((status = 200, description = "Grants", body = [DependencyGrant]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn list_grants(
    State(auth): State<Auth>,
    Path(dep): Path<String>,
) -> Result<Json<Vec<DependencyGrant>>, ApiError> {
    let dep: AppName = name(&dep)?;
    grants::owner(&auth.ctx.coord, &dep).await?;
    Ok(Json(grants::grants_of(&auth.ctx.coord, &dep).await?))
}

/// `PUT /v1/dependencies/{name}/grants/{app}`: the owning team (or a superuser) grants it.
#[utoipa::path(put, path = "/v1/dependencies/{name}/grants/{app}", tag = "dependencies", params(("name" = String, Path), ("app" = String, Path)), responses((status = 200, description = "Granted", body = DependencyGrant), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn grant(
    State(auth): State<Auth>,
    Extension(p): Extension<Principal>,
    Path((dep, app)): Path<(String, String)>,
) -> Result<Json<DependencyGrant>, ApiError> {
    let dep: AppName = name(&dep)?;
    let app: AppName = name(&app)?;
    Ok(Json(
        grants::grant(&auth.ctx.coord, &dep, &app, &p.user).await?,
    ))
}

/// `DELETE /v1/dependencies/{name}/grants/{app}`: the owning team (or a superuser) takes it back; the
/// app's running containers are replaced without it by the task the answer names.
#[utoipa::path(delete, path = "/v1/dependencies/{name}/grants/{app}", tag = "dependencies", params(("name" = String, Path), ("app" = String, Path)), responses((status = 200, description = "Revoked", body = Revoked), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn revoke(
    State(auth): State<Auth>,
    Path((dep, app)): Path<(String, String)>,
) -> Result<Json<Revoked>, ApiError> {
    let dep: AppName = name(&dep)?;
    let app: AppName = name(&app)?;
    if !grants::revoke(&auth.ctx.coord, &dep, &app).await? {
        return Err(ApiError::NotFound(format!(
            "app {app} has no grant of {dep} (apps of the owning team need none)"
        )));
    }
    // The firewall grant goes at once; the data goes with the replacement below.
    let cut = cut::cut(&auth.ctx, &app, &dep).await;
    for f in &cut.failures {
        tracing::warn!(%app, %dep, failure = %f, "Revoke: a host did not narrow its firewall.");
    }
    let (task_id, message) = match replace::start(&auth.ctx, &app).await {
        Ok(replace::Started::NotRunning) => (None, format!("nothing of {app} runs")),
        Ok(replace::Started::Task(id)) => (
            Some(id),
            format!("{app}'s containers are being replaced without {dep}"),
        ),
        Ok(replace::Started::Waiting(m)) => (None, m),
        Err(e) => (
            None,
            format!(
                "revoked, but {app}'s containers could not be replaced ({e}): they keep {dep}'s data \
                 until the app is redeployed without it"
            ),
        ),
    };
    let message = match (cut.containers, cut.failures.len()) {
        (0, 0) => message,
        (n, 0) => format!("{message}; firewall narrowed at once on {n} container(s)"),
        (n, f) => format!(
            "{message}; firewall narrowed at once on {n} container(s), {f} host(s) could not be asked"
        ),
    };
    Ok(Json(Revoked {
        dependency: dep,
        app,
        task_id,
        message,
        firewall_cut: cut.containers as u32,
    }))
}
