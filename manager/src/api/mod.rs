//! The HTTP/JSON API (axum). Errors are `{code, message}` with a stable code (see [`crate::error`]).
//! Every route is listed in `docs/api.md` and in the OpenAPI document at `/openapi.json`.

pub mod apps;
pub mod audit;
pub mod build_token;
pub mod cluster;
pub mod deps;
pub mod exec;
pub mod grants;
pub mod login;
pub mod openapi;
pub mod router_config;
pub mod tasks;
pub mod teams;

use axum::extract::{FromRequest, Request};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::ctx::Ctx;
use crate::error::ApiError;
use crate::release::EngineError;

/// The one mapping of engine errors to API errors (status and stable code).
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(m) => ApiError::NotFound(m),
            EngineError::InvalidField(f) => ApiError::InvalidField(f),
            EngineError::InvalidRequest(m) => ApiError::InvalidRequest(m),
            EngineError::ImageNotFound(m) => ApiError::ImageNotFound(m),
            EngineError::Registry(m) => ApiError::Unavailable(m),
            EngineError::NoCapacity(m) => ApiError::NoCapacity(m),
            EngineError::InUse(m) => ApiError::InUse(m),
            EngineError::DependencyNotGranted(m) => ApiError::DependencyNotGranted(m),
            EngineError::Lock(l) => l.into(),
            EngineError::Coord(c) => c.into(),
            EngineError::History(h) => h.into(),
            e @ (EngineError::Dependency(_)
            | EngineError::Internal(_)
            | EngineError::Crashed(_)) => ApiError::Internal(e.to_string()),
            e @ (EngineError::NotStarted(_) | EngineError::Switch(_) | EngineError::Task(_)) => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

/// The `/v1` routes.
pub fn router(ctx: Ctx) -> Router {
    let v1 = Router::new()
        .route("/apps", get(apps::list).post(apps::create))
        .route(
            "/apps/{app}",
            get(apps::get_one).put(apps::update).delete(apps::delete),
        )
        .route("/envs", get(apps::list_envs).post(apps::create_env))
        .route("/envs/{env}", get(apps::get_env).delete(apps::delete_env))
        .route("/apps/{app}/envs/{env}/deploy", post(apps::deploy))
        .route("/apps/{app}/envs/{env}/rollback", post(apps::rollback))
        .route("/apps/{app}/envs/{env}/scale", post(apps::scale))
        .route("/apps/{app}/envs/{env}/releases", get(apps::releases))
        .route("/apps/{app}/envs/{env}/containers", get(apps::containers))
        .route("/apps/{app}/envs/{env}/teardown", post(apps::teardown_env))
        .route("/apps/{app}/teardown", post(apps::teardown_app))
        .route("/dependencies", get(deps::list))
        .route(
            "/dependencies/{name}",
            get(deps::get_one).put(deps::put).delete(deps::delete),
        )
        .route("/tasks", get(tasks::list))
        .route("/tasks/{id}", get(tasks::get_one))
        .route("/tasks/{id}/stream", get(tasks::stream))
        .route("/containers/{id}", get(cluster::container))
        .route(
            "/containers/{id}/teardown",
            post(cluster::teardown_container),
        )
        .route("/containers/{id}/maintenance", post(cluster::maintenance))
        .route("/containers/{id}/logs", get(cluster::logs))
        .route("/containers/{id}/exec", post(exec::exec))
        .route("/supervisors", get(cluster::supervisors))
        .route("/routers", get(cluster::routers))
        .route("/usage", get(cluster::usage))
        .route("/router-config/{kind}", get(router_config::dump))
        .route("/router-config/{kind}/{section}", get(router_config::list))
        .route(
            "/router-config/{kind}/{section}/{name}",
            put(router_config::put)
                .get(router_config::get_one)
                .delete(router_config::delete),
        );
    Router::new()
        .nest("/v1", v1)
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(ctx)
}

/// A JSON body read with a size bound; refusals use our error body.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Ctx> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, ctx: &Ctx) -> Result<Self, ApiError> {
        let max = ctx.cfg.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), max)
            .await
            .map_err(|_| ApiError::TooLarge(max))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
    }
}

/// Parses a path segment into a validated name (400 with the reason otherwise).
pub fn name<T>(raw: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr<Err = atlantis_common::NameError>,
{
    raw.parse()
        .map_err(|e: atlantis_common::NameError| ApiError::InvalidRequest(e.to_string()))
}

/// `202 Accepted` with the task.
pub fn accepted(
    task_id: String,
) -> (
    axum::http::StatusCode,
    Json<atlantis_common::api::manager::TaskAccepted>,
) {
    (
        axum::http::StatusCode::ACCEPTED,
        Json(atlantis_common::api::manager::TaskAccepted {
            status_url: format!("/v1/tasks/{task_id}"),
            task_id,
        }),
    )
}
