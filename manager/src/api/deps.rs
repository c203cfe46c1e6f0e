//! Dependencies: named secret data plus reachable endpoints. The data is sealed with the operator's key
//! before it reaches ZooKeeper, and the API never returns its values (only the variable names, and
//! those and the endpoints only to its owning team, the teams of apps granted it, and superusers).

use atlantis_common::AppName;
use atlantis_common::api::manager::ErrorBody;
use atlantis_common::api::manager::{DependencySpec, DependencyView};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::{JsonBody, name};
use crate::auth::{Auth, Principal};
use crate::ctx::Ctx;
use crate::error::ApiError;

pub use crate::deps::DependencyRecord;

/// Reads a dependency's record.
async fn load(ctx: &Ctx, n: &AppName) -> Result<Option<DependencyRecord>, ApiError> {
    Ok(crate::deps::load(&ctx.coord, n).await?)
}

fn view(n: AppName, rec: DependencyRecord) -> DependencyView {
    DependencyView {
        name: n,
        team: rec.team,
        data_keys: rec.data_keys,
        endpoints: rec.endpoints,
        restricted: false,
    }
}

/// The view `p` may have: its name and owner only unless `p` may see it
/// ([`super::grants::may_see`]).
async fn view_for(
    auth: &Auth,
    p: &Principal,
    n: AppName,
    rec: DependencyRecord,
) -> Result<DependencyView, ApiError> {
    if super::grants::may_see(auth, p, &n).await? {
        return Ok(view(n, rec));
    }
    Ok(DependencyView {
        name: n,
        team: rec.team,
        data_keys: Vec::new(),
        endpoints: Vec::new(),
        restricted: true,
    })
}

/// `GET /v1/dependencies`
#[utoipa::path(get, path = "/v1/dependencies", tag = "dependencies", responses((status = 200, description = "Dependencies (variable names only)", body = [DependencyView]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn list(
    State(ctx): State<Ctx>,
    Extension(auth): Extension<Auth>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<DependencyView>>, ApiError> {
    let mut out = Vec::new();
    for d in ctx
        .coord
        .children(&ctx.coord.layout().dependencies())
        .await?
    {
        let Ok(n) = d.parse::<AppName>() else {
            continue;
        };
        if let Some(r) = load(&ctx, &n).await? {
            out.push(view_for(&auth, &p, n, r).await?);
        }
    }
    Ok(Json(out))
}

/// `GET /v1/dependencies/{name}`: names of the variables, never their values.
#[utoipa::path(get, path = "/v1/dependencies/{name}", tag = "dependencies", params(("name" = String, Path)), responses((status = 200, description = "The dependency (variable names only)", body = DependencyView), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn get_one(
    State(ctx): State<Ctx>,
    Extension(auth): Extension<Auth>,
    Extension(p): Extension<Principal>,
    Path(n): Path<String>,
) -> Result<Json<DependencyView>, ApiError> {
    let n: AppName = name(&n)?;
    let r = load(&ctx, &n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dependency {n}")))?;
    Ok(Json(view_for(&auth, &p, n, r).await?))
}

/// `PUT /v1/dependencies/{name}`: creates or replaces it (takes effect at the users' next deploy).
#[utoipa::path(put, path = "/v1/dependencies/{name}", tag = "dependencies", params(("name" = String, Path)), request_body = DependencySpec, responses((status = 200, description = "Stored (data sealed)", body = DependencyView), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn put(
    State(ctx): State<Ctx>,
    Path(n): Path<String>,
    JsonBody(spec): JsonBody<DependencySpec>,
) -> Result<Json<DependencyView>, ApiError> {
    let n: AppName = name(&n)?;
    spec.validate()?;
    let plain = serde_json::to_vec(&spec.data).map_err(|e| ApiError::Internal(e.to_string()))?;
    let rec = DependencyRecord {
        version: 1,
        team: spec.team.clone(),
        data_keys: spec.data.keys().cloned().collect(),
        sealed_data: ctx.sealer.seal(n.as_str(), &plain),
        endpoints: spec.endpoints.clone(),
    };
    ctx.coord
        .put(&ctx.coord.layout().dependency(&n), &rec)
        .await?;
    Ok(Json(view(n, rec)))
}

/// `DELETE /v1/dependencies/{name}`: refused while an app declares it.
#[utoipa::path(delete, path = "/v1/dependencies/{name}", tag = "dependencies", params(("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn delete(State(ctx): State<Ctx>, Path(n): Path<String>) -> Result<StatusCode, ApiError> {
    let n: AppName = name(&n)?;
    if load(&ctx, &n).await?.is_none() {
        return Err(ApiError::NotFound(format!("no dependency {n}")));
    }
    let apps = super::apps::list(State(ctx.clone())).await?.0;
    if let Some(a) = apps.iter().find(|a| a.spec.dependencies.contains(&n)) {
        return Err(ApiError::InUse(format!(
            "app {} depends on {n}",
            a.spec.name
        )));
    }
    let l = ctx.coord.layout();
    ctx.coord.delete(&l.dependency(&n), None).await?;
    // Its grants and requests go with it: a new dependency of the same name inherits none.
    ctx.coord
        .delete_recursive(&l.dependency_grants_of(&n))
        .await?;
    ctx.coord
        .delete_recursive(&l.dependency_requests_of(&n))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
