//! Router configuration CRUD: `router/<kind>/{ports,tries,rules,pools}/<name>`. Every document is
//! checked by the same parser the routers use before anything is written, so a rule a router could not
//! compile is refused here with the router's own message.

use atlantis_common::api::manager::ErrorBody;
use std::collections::BTreeMap;

use atlantis_common::routing::{self, Backend};
use atlantis_common::zk::{RouterKind, Section};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::JsonBody;
use crate::ctx::Ctx;
use crate::error::ApiError;

fn kind(raw: &str) -> Result<RouterKind, ApiError> {
    raw.parse()
        .map_err(|e: atlantis_common::NameError| ApiError::InvalidRequest(e.to_string()))
}

fn section(raw: &str) -> Result<Section, ApiError> {
    match raw {
        "ports" => Ok(Section::Ports),
        "tries" => Ok(Section::Tries),
        "rules" => Ok(Section::Rules),
        "pools" => Ok(Section::Pools),
        _ => Err(ApiError::InvalidRequest(format!(
            "section {raw:?} must be ports, tries, rules or pools"
        ))),
    }
}

fn check_name(s: Section, n: &str) -> Result<(), ApiError> {
    let what = match s {
        Section::Ports => "port",
        Section::Tries => "trie",
        Section::Rules => "rule",
        Section::Pools => "pool",
    };
    routing::check_name(what, n).map_err(|e| ApiError::InvalidConfig(e.to_string()))
}

/// Validates a document with the routing parser; returns it re-encoded in its canonical form.
fn validate(s: Section, n: &str, data: &[u8]) -> Result<serde_json::Value, ApiError> {
    let bad = |e: routing::ConfigError| ApiError::InvalidConfig(e.to_string());
    let v = match s {
        Section::Ports => serde_json::to_value(routing::parse_port(n, data).map_err(bad)?),
        Section::Tries => serde_json::to_value(routing::parse_trie(n, data).map_err(bad)?),
        Section::Rules => serde_json::to_value(routing::parse_rule(n, data).map_err(bad)?.0),
        Section::Pools => serde_json::to_value(routing::parse_pool(n, data).map_err(bad)?),
    };
    v.map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /v1/router-config/{kind}`: every document of the fleet, by section and name.
#[utoipa::path(get, path = "/v1/router-config/{kind}", tag = "router-config", params(("kind" = String, Path)), responses((status = 200, description = "Every section by name", body = Object), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn dump(
    State(ctx): State<Ctx>,
    Path(k): Path<String>,
) -> Result<Json<BTreeMap<String, BTreeMap<String, serde_json::Value>>>, ApiError> {
    let k = kind(&k)?;
    let mut out = BTreeMap::new();
    for s in Section::ALL {
        out.insert(s.as_str().to_owned(), read_section(&ctx, k, s).await?);
    }
    Ok(Json(out))
}

async fn read_section(
    ctx: &Ctx,
    k: RouterKind,
    s: Section,
) -> Result<BTreeMap<String, serde_json::Value>, ApiError> {
    let l = ctx.coord.layout();
    let mut out = BTreeMap::new();
    for n in ctx.coord.children(&l.router_section(k, s)).await? {
        if routing::check_name("node", &n).is_err() {
            continue;
        }
        let path = l.router_item(k, s, &n);
        if let Some((data, _)) = ctx.coord.get_raw(&path).await? {
            let mut v: serde_json::Value =
                serde_json::from_slice(&data).unwrap_or(serde_json::Value::Null);
            if s == Section::Pools {
                let backends = ctx.coord.children(&path).await?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("backends".into(), backends.into());
                }
            }
            out.insert(n, v);
        }
    }
    Ok(out)
}

/// `GET /v1/router-config/{kind}/{section}`
#[utoipa::path(get, path = "/v1/router-config/{kind}/{section}", tag = "router-config", params(("kind" = String, Path), ("section" = String, Path)), responses((status = 200, description = "Documents by name", body = Object), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn list(
    State(ctx): State<Ctx>,
    Path((k, s)): Path<(String, String)>,
) -> Result<Json<BTreeMap<String, serde_json::Value>>, ApiError> {
    Ok(Json(read_section(&ctx, kind(&k)?, section(&s)?).await?))
}

/// `GET /v1/router-config/{kind}/{section}/{name}`
#[utoipa::path(get, path = "/v1/router-config/{kind}/{section}/{name}", tag = "router-config", params(("kind" = String, Path), ("section" = String, Path), ("name" = String, Path)), responses((status = 200, description = "The document", body = Object), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn get_one(
    State(ctx): State<Ctx>,
    Path((k, s, n)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (k, s) = (kind(&k)?, section(&s)?);
    check_name(s, &n)?;
    let path = ctx.coord.layout().router_item(k, s, &n);
    let (data, _) = ctx
        .coord
        .get_raw(&path)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no {} {n}", s.as_str())))?;
    Ok(Json(
        serde_json::from_slice(&data).unwrap_or(serde_json::Value::Null),
    ))
}

/// `PUT /v1/router-config/{kind}/{section}/{name}`: creates or replaces a document after validating it.
#[utoipa::path(put, path = "/v1/router-config/{kind}/{section}/{name}", tag = "router-config", params(("kind" = String, Path), ("section" = String, Path), ("name" = String, Path)), request_body = Object, responses((status = 200, description = "Stored in canonical form", body = Object), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn put(
    State(ctx): State<Ctx>,
    Path((k, s, n)): Path<(String, String, String)>,
    JsonBody(doc): JsonBody<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (k, s) = (kind(&k)?, section(&s)?);
    check_name(s, &n)?;
    let data = serde_json::to_vec(&doc).map_err(|e| ApiError::Internal(e.to_string()))?;
    let canonical = validate(s, &n, &data)?;
    if s == Section::Ports {
        // Two port documents must not claim the same TCP port.
        let port = canonical["port"].as_u64();
        for (other, v) in read_section(&ctx, k, s).await? {
            if other != n && v["port"].as_u64() == port {
                return Err(ApiError::Exists(format!(
                    "port {} is already served by port document {other}",
                    port.unwrap_or(0)
                )));
            }
        }
    }
    let path = ctx.coord.layout().router_item(k, s, &n);
    ctx.coord.put(&path, &canonical).await?;
    Ok(Json(canonical))
}

/// `DELETE /v1/router-config/{kind}/{section}/{name}`: a pool with backends is refused (tear its app
/// down, or delete the backends first).
#[utoipa::path(delete, path = "/v1/router-config/{kind}/{section}/{name}", tag = "router-config", params(("kind" = String, Path), ("section" = String, Path), ("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<Ctx>,
    Path((k, s, n)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let (k, s) = (kind(&k)?, section(&s)?);
    check_name(s, &n)?;
    let path = ctx.coord.layout().router_item(k, s, &n);
    if s == Section::Pools && !ctx.coord.children(&path).await?.is_empty() {
        return Err(ApiError::InUse(format!("pool {n} still has backends")));
    }
    if ctx.coord.delete(&path, None).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no {} {n}", s.as_str())))
    }
}

/// Checks a backend node name (`host:port`, one spelling).
pub fn check_backend(b: &str) -> Result<Backend, ApiError> {
    b.parse()
        .map_err(|e: routing::ConfigError| ApiError::InvalidConfig(e.to_string()))
}
