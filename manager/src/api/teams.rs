//! Teams and their apps: an app belongs to the team named in its registration, and a superuser may
//! grant more teams access (`allow-app`) or take it back (`disallow-app`).

use std::collections::BTreeSet;

use atlantis_common::api::manager::ErrorBody;
use atlantis_common::{AppName, TeamName};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::name;
use crate::auth::{Auth, Principal};
use crate::error::ApiError;

/// Apps registered with a team, by team.
async fn owned(auth: &Auth) -> Result<Vec<(String, String)>, ApiError> {
    let apps = super::apps::list(State(auth.ctx.clone())).await?.0;
    Ok(apps
        .into_iter()
        .filter_map(|a| Some((a.spec.team?.to_string(), a.spec.name.to_string())))
        .collect())
}

/// `GET /v1/teams`: a superuser sees every team that owns or is granted an app; others their own.
#[utoipa::path(get, path = "/v1/teams", tag = "teams", responses((status = 200, description = "Team names", body = [String]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn list(
    State(auth): State<Auth>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<String>>, ApiError> {
    if !p.superuser {
        return Ok(Json(p.teams));
    }
    let mut all: BTreeSet<String> = auth.store().teams().await?.into_iter().collect();
    all.extend(owned(&auth).await?.into_iter().map(|(t, _)| t));
    all.extend(p.teams);
    Ok(Json(all.into_iter().collect()))
}

/// `GET /v1/teams/{team}/apps`: apps the team owns or is granted (members and superusers).
#[utoipa::path(get, path = "/v1/teams/{team}/apps", tag = "teams", params(("team" = String, Path)), responses((status = 200, description = "App names", body = [String]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn apps(
    State(auth): State<Auth>,
    Path(team): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    let team: TeamName = name(&team)?;
    let mut all: BTreeSet<String> = auth
        .store()
        .team_apps(team.as_str())
        .await?
        .into_iter()
        .collect();
    all.extend(
        owned(&auth)
            .await?
            .into_iter()
            .filter(|(t, _)| t == team.as_str())
            .map(|(_, a)| a),
    );
    Ok(Json(all.into_iter().collect()))
}

/// `PUT /v1/teams/{team}/apps/{app}`: grants the team access to the app (superusers).
#[utoipa::path(put, path = "/v1/teams/{team}/apps/{app}", tag = "teams", params(("team" = String, Path), ("app" = String, Path)), responses((status = 204, description = "Granted"), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn allow(
    State(auth): State<Auth>,
    Extension(p): Extension<Principal>,
    Path((team, app)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let team: TeamName = name(&team)?;
    let app: AppName = name(&app)?;
    auth.store()
        .allow(team.as_str(), app.as_str(), &p.user)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/teams/{team}/apps/{app}`: takes a grant back (superusers); 404 when there was none.
#[utoipa::path(delete, path = "/v1/teams/{team}/apps/{app}", tag = "teams", params(("team" = String, Path), ("app" = String, Path)), responses((status = 204, description = "Removed"), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn disallow(
    State(auth): State<Auth>,
    Path((team, app)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let team: TeamName = name(&team)?;
    let app: AppName = name(&app)?;
    if auth.store().disallow(team.as_str(), app.as_str()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "team {team} has no grant on app {app} (an owning team is changed in the app's registration)"
        )))
    }
}
