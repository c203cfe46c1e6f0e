//! The OpenAPI 3 document of the API, built from [`ROUTES`] (a test checks that every route listed here
//! answers something other than "no such route", and that the router serves nothing unlisted).

use axum::Json;

/// Every `/v1` route: method, path, summary, success status.
pub const ROUTES: &[(&str, &str, &str, u16)] = &[
    ("get", "/v1/apps", "List apps", 200),
    ("post", "/v1/apps", "Register an app (AppSpec)", 201),
    ("get", "/v1/apps/{app}", "One app", 200),
    (
        "put",
        "/v1/apps/{app}",
        "Replace an app's registration (AppSpec)",
        200,
    ),
    (
        "delete",
        "/v1/apps/{app}",
        "Unregister an app (refused while deployed)",
        204,
    ),
    ("get", "/v1/envs", "List envs", 200),
    ("post", "/v1/envs", "Create an env (EnvSpec)", 201),
    ("get", "/v1/envs/{env}", "One env", 200),
    (
        "delete",
        "/v1/envs/{env}",
        "Delete an env (refused while in use)",
        204,
    ),
    (
        "post",
        "/v1/apps/{app}/envs/{env}/deploy",
        "Deploy a sha (DeployRequest); a task",
        202,
    ),
    (
        "post",
        "/v1/apps/{app}/envs/{env}/rollback",
        "Roll back (RollbackRequest); a task",
        202,
    ),
    (
        "post",
        "/v1/apps/{app}/envs/{env}/scale",
        "Scale per zone (ScaleRequest); a task",
        202,
    ),
    (
        "post",
        "/v1/apps/{app}/envs/{env}/teardown",
        "Tear an app.env down; a task",
        202,
    ),
    (
        "post",
        "/v1/apps/{app}/teardown",
        "Tear every env of an app down; a task",
        202,
    ),
    (
        "get",
        "/v1/apps/{app}/envs/{env}/releases",
        "Release history, newest first",
        200,
    ),
    (
        "get",
        "/v1/apps/{app}/envs/{env}/containers",
        "Instances of an app.env",
        200,
    ),
    (
        "get",
        "/v1/dependencies",
        "List dependencies (variable names only)",
        200,
    ),
    (
        "get",
        "/v1/dependencies/{name}",
        "One dependency (variable names only)",
        200,
    ),
    (
        "put",
        "/v1/dependencies/{name}",
        "Create or replace a dependency (DependencySpec)",
        200,
    ),
    (
        "delete",
        "/v1/dependencies/{name}",
        "Delete a dependency (refused while used)",
        204,
    ),
    ("get", "/v1/tasks", "Finished tasks, newest first", 200),
    ("get", "/v1/tasks/{id}", "A task's status", 200),
    (
        "get",
        "/v1/tasks/{id}/stream",
        "A task's status as JSON lines until it ends",
        200,
    ),
    ("get", "/v1/containers/{id}", "One container", 200),
    (
        "post",
        "/v1/containers/{id}/teardown",
        "Tear one container down; a task",
        202,
    ),
    (
        "post",
        "/v1/containers/{id}/maintenance",
        "Maintenance on/off (MaintenanceRequest)",
        200,
    ),
    (
        "get",
        "/v1/containers/{id}/logs",
        "Container output (follow, tail)",
        200,
    ),
    ("get", "/v1/supervisors", "Registered supervisors", 200),
    ("get", "/v1/routers", "Registered routers", 200),
    (
        "get",
        "/v1/usage",
        "CPU and memory per host, app and team",
        200,
    ),
    (
        "get",
        "/v1/router-config/{kind}",
        "A fleet's whole router configuration",
        200,
    ),
    (
        "get",
        "/v1/router-config/{kind}/{section}",
        "One section",
        200,
    ),
    (
        "get",
        "/v1/router-config/{kind}/{section}/{name}",
        "One document",
        200,
    ),
    (
        "put",
        "/v1/router-config/{kind}/{section}/{name}",
        "Create or replace a validated document",
        200,
    ),
    (
        "delete",
        "/v1/router-config/{kind}/{section}/{name}",
        "Delete a document",
        204,
    ),
];

/// Builds the document.
pub fn build() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    let error = serde_json::json!({
        "description": "Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    for (method, path, summary, status) in ROUTES {
        let params: Vec<serde_json::Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| serde_json::json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let op = serde_json::json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                status.to_string(): {"description": "Success"},
                "default": error.clone(),
            }
        });
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| serde_json::json!({}));
        entry[*method] = op;
    }
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "Atlantis manager API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}
        }}}
    })
}

/// `GET /openapi.json`
pub async fn document() -> Json<serde_json::Value> {
    Json(build())
}
