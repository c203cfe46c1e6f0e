//! The HTTP API: the OCI Distribution v1.1 endpoints under `/v2/`, plus `/metrics` (a known user only, when
//! auth is on) and `/healthz` (open: it says nothing but "ok").
//!
//! One axum fallback handler parses the path ([`route`]), authenticates and authorises the caller
//! ([`crate::auth`]), then dispatches to the blob/upload ([`blobs`]) or manifest/listing ([`manifests`])
//! handlers. Every error is a [`RegistryError`] rendered with its status and OCI code; a middleware counts
//! and logs each request.

pub mod blobs;
pub mod manifests;
pub mod route;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::{Action, Auth, Principal};
use crate::error::RegistryError;
use crate::metrics::{RegistryMetrics, RequestLabels, RouteLabels};
use crate::registry::Registry;
use route::Route;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub auth: Option<Arc<Auth>>,
    pub metrics: RegistryMetrics,
    pub delete_enabled: bool,
}

/// The API version header every `/v2/` answer carries.
pub const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// Builds the router.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Metrics are for operators: with auth configured, only a known user (any of them) may read them.
async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    match principal(&st, &headers) {
        Ok(Principal::User(_)) => {}
        // Pull/push tokens are for images, not for operators.
        Ok(Principal::Anonymous | Principal::Token { .. }) => {
            return RegistryError::Unauthorized.into_response();
        }
        Err(e) => return e.into_response(),
    }
    (
        [(
            header::CONTENT_TYPE,
            atlantis_common::telemetry::METRICS_CONTENT_TYPE,
        )],
        st.metrics.registry.render(),
    )
        .into_response()
}

/// Counts, times and logs every request.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route_label = match path.as_str() {
        "/metrics" => "metrics",
        "/healthz" => "healthz",
        p => route::parse(p).map(|r| r.label()).unwrap_or("other"),
    };
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    st.metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.to_string(),
            route: route_label,
            status,
        })
        .inc();
    st.metrics
        .duration
        .get_or_create(&RouteLabels { route: route_label })
        .observe(elapsed.as_secs_f64());
    if route_label != "metrics" && route_label != "healthz" {
        tracing::info!(method = %method, path = %path.chars().take(300).collect::<String>(), status, ms = elapsed.as_millis() as u64, "Request served.");
    }
    if path.starts_with("/v2") {
        resp.headers_mut()
            .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    }
    resp
}

async fn dispatch(State(st): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let action = if req.method() == Method::GET || req.method() == Method::HEAD {
        Action::Pull
    } else {
        Action::Push
    };
    match handle(&st, req).await {
        Ok(r) => r,
        Err(e) => {
            let unauthorized = matches!(e, RegistryError::Unauthorized);
            let mut resp = e.into_response();
            if unauthorized && let Some(a) = &st.auth {
                let route = route::parse(&path).ok();
                let repo = route
                    .as_ref()
                    .and_then(|r| r.repo())
                    .map(|r| r.as_str().to_owned());
                if let Some(c) = a.challenge(repo.as_deref(), action)
                    && let Ok(v) = HeaderValue::from_str(&c)
                {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            resp
        }
    }
}

fn principal(st: &AppState, headers: &HeaderMap) -> Result<Principal, RegistryError> {
    match &st.auth {
        Some(a) => a.authenticate(headers),
        None => Ok(Principal::User("local".into())),
    }
}

pub(crate) fn authorize(
    st: &AppState,
    who: &Principal,
    repo: &str,
    action: Action,
) -> Result<(), RegistryError> {
    match &st.auth {
        Some(a) => a.check(who, repo, action),
        None => Ok(()),
    }
}

async fn handle(st: &AppState, req: Request) -> Result<Response, RegistryError> {
    let route = route::parse(req.uri().path())?;
    let who = principal(st, req.headers())?;
    let method = req.method().clone();
    if let Some(repo) = route.repo() {
        let action = if method == Method::GET || method == Method::HEAD {
            Action::Pull
        } else {
            Action::Push
        };
        authorize(st, &who, repo.as_str(), action)?;
    }
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => {
            if st.auth.is_some() && who == Principal::Anonymous {
                return Err(RegistryError::Unauthorized);
            }
            Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        (Route::Catalog, Method::GET) => manifests::catalog(st, &who, req.uri()).await,
        (Route::Tags(repo), Method::GET) => manifests::tags(st, &repo, req.uri()).await,
        (Route::Referrers(repo, d), Method::GET) => {
            manifests::referrers(st, &repo, &d, req.uri()).await
        }
        (Route::Manifest(repo, r), m @ (Method::GET | Method::HEAD)) => {
            manifests::get(st, &repo, &r, m == Method::HEAD).await
        }
        (Route::Manifest(repo, r), Method::PUT) => manifests::put(st, &repo, &r, req).await,
        (Route::Manifest(repo, r), Method::DELETE) => manifests::delete(st, &repo, &r).await,
        (Route::Blob(repo, d), m @ (Method::GET | Method::HEAD)) => {
            blobs::get(st, &repo, &d, req.headers(), m == Method::HEAD).await
        }
        (Route::Blob(repo, d), Method::DELETE) => blobs::delete(st, &repo, &d).await,
        (Route::UploadStart(repo), Method::POST) => blobs::start(st, &who, &repo, req).await,
        (Route::Upload(repo, id), Method::GET) => blobs::status(st, &repo, &id).await,
        (Route::Upload(repo, id), Method::PATCH) => blobs::patch(st, &repo, &id, req).await,
        (Route::Upload(repo, id), Method::PUT) => blobs::finish(st, &repo, &id, req).await,
        (Route::Upload(repo, id), Method::DELETE) => blobs::cancel(st, &repo, &id).await,
        _ => Err(RegistryError::MethodNotAllowed),
    }
}

/// The query parameters of a request (later duplicates win).
pub(crate) fn query(uri: &axum::http::Uri) -> std::collections::HashMap<String, String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0.into_iter().collect())
        .unwrap_or_default()
}

/// A header as a string, if present and valid.
pub(crate) fn header_str(
    headers: &HeaderMap,
    name: impl axum::http::header::AsHeaderName,
) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Content-Length` as a number; present but invalid is an error.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, RegistryError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| RegistryError::SizeInvalid("invalid Content-Length".into())),
    }
}

/// An empty response with a status and headers.
pub(crate) fn empty(
    status: StatusCode,
    headers: Vec<(header::HeaderName, String)>,
) -> Result<Response, RegistryError> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(k, v);
    }
    b.body(Body::empty())
        .map_err(|e| RegistryError::BadRequest(format!("cannot build a response: {e}")))
}
