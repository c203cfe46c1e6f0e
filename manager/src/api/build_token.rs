//! `POST /v1/apps/{app}/build-token`: a registry token for one build of the app, scoped to pull and
//! push `apps/<app>` and nothing else. The caller passes it to the builder with the build request
//! (`registry_token`), so the builder holds no push credential of its own and a build of one app can
//! never push another.
//!
//! Who may: whoever may deploy the app (the policy's `{app}` rule: its team, a team granted it, a
//! superuser; CI tokens of scope deploy for their apps). Audited like every write, never with the
//! token.

use atlantis_common::AppName;
use atlantis_common::api::manager::{AppRecord, ErrorBody};
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, Principal};
use crate::error::ApiError;
use atlantis_common::api::registry_token::{Access, PULL, PUSH};

/// A build token.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildToken {
    /// The bearer token for the registry (pass it as the builder's `registry_token`).
    pub token: String,
    /// The one repository it grants (`apps/<app>`, pull and push).
    pub repository: String,
    /// Lifetime, seconds.
    pub expires_in: u64,
}

/// `POST /v1/apps/{app}/build-token`.
#[utoipa::path(post, path = "/v1/apps/{app}/build-token", tag = "auth", params(("app" = String, Path)), responses((status = 200, description = "A registry token scoped to apps/<app>", body = BuildToken), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn issue(
    State(auth): State<Auth>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(app): Path<String>,
) -> Result<Json<BuildToken>, ApiError> {
    let app: AppName = super::name(&app)?;
    let signer = auth.registry().ok_or_else(|| {
        ApiError::NotFound(
            "registry token authentication is not configured ([auth.registry])".into(),
        )
    })?;
    let layout = auth.ctx.coord.layout();
    if auth
        .ctx
        .coord
        .get::<AppRecord>(&layout.app(&app))
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no app {app}")));
    }
    let repository = format!("apps/{app}");
    let access = [Access::repository(repository.clone(), &[PULL, PUSH])];
    let ttl = signer.cfg().build_ttl_s;
    let token = signer.sign_for(&format!("build:{}", p.user), &access, ttl);
    Ok(Json(BuildToken {
        token,
        repository,
        expires_in: ttl,
    }))
}
