//! The layer in front of every route: authenticate (bearer token), authorise ([`super::policy`]), and
//! audit every mutating call with its result.

use std::collections::HashMap;
use std::net::SocketAddr;

use atlantis_common::ContainerId;
use axum::body::Body;
use axum::extract::{
    ConnectInfo, FromRequestParts as _, MatchedPath, RawPathParams, Request, State,
};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use super::policy::{self, Need};
use super::store::AuditEntry;
use super::{Auth, Principal, Scope};
use crate::error::ApiError;
use crate::tasks::now_ms;

/// Largest error body read back to note its code in the audit log.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest audit detail kept.
const MAX_DETAIL: usize = 2000;

/// The bearer token of a request: 401 when missing or not a bearer.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let v = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <token>".into()))?;
    let v = v
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, token) = v
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("malformed Authorization header".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    Ok(token.trim())
}

/// The peer address of a request, `-` when unknown.
pub fn source(ext: &axum::http::Extensions) -> String {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |c| c.0.to_string())
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The middleware (see the module docs).
pub async fn check(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if policy::exempt(&path) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let template = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let params: HashMap<String, String> = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let audited = policy::mutating(&method);
    let mut rec = AuditEntry {
        at_ms: now_ms() as i64,
        user: "-".into(),
        action: format!("{method} {}", template.as_deref().unwrap_or(&path)),
        app: params.get("app").cloned().unwrap_or_default(),
        env: params.get("env").cloned().unwrap_or_default(),
        target: path.clone(),
        source: source(&parts.extensions),
        ..AuditEntry::default()
    };
    let principal = match bearer(&parts.headers).and_then(|t| auth.verify(t)) {
        Ok(p) => p,
        Err(e) => return finish(&auth, audited.then_some(rec), e.into_response()).await,
    };
    rec.user.clone_from(&principal.user);
    // Bodies read to decide (the team of a registration) or to audit (the command of an exec).
    let wants_body = audited
        && (matches!(template.as_deref(), Some("/v1/apps" | "/v1/apps/{app}"))
            || template.as_deref().is_some_and(|t| t.ends_with("/exec")));
    let (body, json) = if wants_body {
        let max = auth.ctx.cfg.max_body_bytes;
        match axum::body::to_bytes(body, max).await {
            Ok(b) => {
                let json = serde_json::from_slice::<serde_json::Value>(&b).ok();
                (Body::from(b), json)
            }
            Err(_) => {
                return finish(&auth, Some(rec), ApiError::TooLarge(max).into_response()).await;
            }
        }
    } else {
        (body, None)
    };
    if let Some(j) = &json
        && template.as_deref().is_some_and(|t| t.ends_with("/exec"))
    {
        let cmd = j.get("argv").unwrap_or(j).to_string();
        rec.detail = truncate(format!("command: {cmd}"));
    }
    if let Some(dep) = params.get("name")
        && template
            .as_deref()
            .is_some_and(|t| t.starts_with("/v1/dependencies/"))
    {
        rec.detail = truncate(format!("dependency: {dep}"));
    }
    let need = policy::classify(&method, template.as_deref(), &params);
    match authorize(
        &auth,
        &principal,
        &method,
        template.as_deref(),
        need,
        &parts.uri,
        json.as_ref(),
    )
    .await
    {
        Ok(Some(app)) => rec.app = app,
        Ok(None) => {}
        Err(e) => return finish(&auth, audited.then_some(rec), e.into_response()).await,
    }
    // The entry is written before the call runs: a call that cannot be audited is not carried out.
    let begun = if audited {
        match auth.store().audit_begin(rec.clone()).await {
            Ok(id) => Some(id),
            Err(e) => return audit_failed(&e),
        }
    } else {
        None
    };
    parts.extensions.insert(principal);
    parts.extensions.insert(auth.clone());
    let resp = next.run(Request::from_parts(parts, body)).await;
    match begun {
        Some(id) => complete(&auth, &id, rec, resp).await,
        None => resp,
    }
}

/// 503 `audit_unavailable`: the audit log refused a write, so the call was not carried out.
pub fn audit_failed(e: &crate::history::HistoryError) -> Response {
    tracing::error!(error = %e, "Audit entry not recorded: call refused.");
    ApiError::AuditUnavailable(format!(
        "the audit log cannot be written ({e}); nothing was done, try again later"
    ))
    .into_response()
}

/// Records the entry of a call refused before it ran (when there is one); 503 when that fails.
async fn finish(auth: &Auth, rec: Option<AuditEntry>, resp: Response) -> Response {
    let Some(rec) = rec else {
        return resp;
    };
    let (rec, resp) = outcome(rec, resp).await;
    match auth.store().audit(rec).await {
        Ok(()) => resp,
        Err(e) => audit_failed(&e),
    }
}

/// Completes the entry `id` of a call that ran. The call is done by now: a failure is logged.
async fn complete(auth: &Auth, id: &str, rec: AuditEntry, resp: Response) -> Response {
    let (rec, resp) = outcome(rec, resp).await;
    if let Err(e) = auth
        .store()
        .audit_end(id, &rec.result, rec.status, &rec.detail)
        .await
    {
        tracing::error!(error = %e, audit = id, status = rec.status, "Audit entry not completed (it says started).");
    }
    resp
}

/// The entry with the response's status, result and error code.
async fn outcome(mut rec: AuditEntry, resp: Response) -> (AuditEntry, Response) {
    let status = resp.status();
    rec.status = status.as_u16();
    rec.result = match status.as_u16() {
        401 | 403 => "denied",
        s if s >= 400 => "failed",
        _ => "ok",
    }
    .into();
    let resp = if status.is_client_error() || status.is_server_error() {
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(code) = v.get("code").and_then(|c| c.as_str())
        {
            let sep = if rec.detail.is_empty() { "" } else { "; " };
            rec.detail = truncate(format!("{}{sep}error: {code}", rec.detail));
        }
        Response::from_parts(parts, Body::from(bytes))
    } else {
        resp
    };
    (rec, resp)
}

/// Decides; returns the app the call concerns when it was looked up (tasks, containers).
async fn authorize(
    auth: &Auth,
    p: &Principal,
    method: &Method,
    template: Option<&str>,
    need: Need,
    uri: &axum::http::Uri,
    body: Option<&serde_json::Value>,
) -> Result<Option<String>, ApiError> {
    let forbid = |m: String| Err(ApiError::Forbidden(m));
    if let Some(scope) = p.scope {
        let ok = match scope {
            Scope::Read => !policy::mutating(method),
            Scope::Deploy => policy::ci_deploy_allowed(method, template),
        };
        if !ok {
            return forbid(
                format!("this token's scope ({scope:?}) does not allow that call").to_lowercase(),
            );
        }
    }
    let app = match need {
        Need::Token => return Ok(None),
        Need::Session if p.is_ci() => return forbid("CI tokens cannot do that".into()),
        Need::Session => return Ok(None),
        Need::Superuser if p.superuser && !p.is_ci() => return Ok(None),
        Need::Superuser => return forbid("only superusers may do that".into()),
        Need::Team(team) => {
            if p.superuser || p.teams.contains(&team) {
                return Ok(None);
            }
            return forbid(format!("you are not a member of team {team}"));
        }
        Need::CreateApp => {
            if p.is_ci() {
                return forbid("CI tokens cannot register apps".into());
            }
            let team = body.and_then(|b| b.get("team")).and_then(|t| t.as_str());
            if p.superuser || team.is_some_and(|t| p.teams.iter().any(|m| m == t)) || body.is_none()
            {
                // An unreadable body is refused by the handler with 400.
                return Ok(None);
            }
            return forbid(match team {
                Some(t) => format!("you are not a member of team {t}"),
                None => "name one of your teams as the app's team".into(),
            });
        }
        Need::ListByApp => {
            let q = axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
                .map(|q| q.0)
                .unwrap_or_default();
            match q.get("app") {
                None if p.superuser && !p.is_ci() => return Ok(None),
                None => return forbid("give ?app= (only superusers list everything)".into()),
                Some(a) => a.clone(),
            }
        }
        Need::App { app, .. } => {
            // Moving an app to another team: the new team must be the caller's too.
            if *method == Method::PUT
                && template == Some("/v1/apps/{app}")
                && !p.superuser
                && let Some(t) = body.and_then(|b| b.get("team")).and_then(|t| t.as_str())
                && !p.teams.iter().any(|m| m == t)
            {
                return forbid(format!("you are not a member of team {t}"));
            }
            app
        }
        Need::DependencyOwner(dep) => {
            return owner_decides(auth, p, &dep).await;
        }
        Need::DependencyParty { dependency, app } => {
            if owner_decides(auth, p, &dependency).await.is_ok() {
                return Ok(None);
            }
            app
        }
        Need::Task(id) => {
            let app = match auth.ctx.tasks.get(&id).await {
                Some(t) => Some(t.app),
                None => auth.ctx.history.task(&id).await?.map(|t| t.app),
            };
            match app {
                Some(a) => a,
                None if p.superuser => return Ok(None),
                None => return Err(ApiError::NotFound(format!("no task {id}"))),
            }
        }
        Need::Container(id) => {
            let Ok(cid) = id.parse::<ContainerId>() else {
                return Ok(None); // the handler answers 400
            };
            match crate::state::find_instance(&auth.ctx.coord, &cid).await? {
                Some(rec) => rec.app.to_string(),
                None if p.superuser => return Ok(None),
                None => return Err(ApiError::NotFound(format!("no container {id}"))),
            }
        }
    };
    if auth.may_access(p, &app).await? {
        Ok(Some(app))
    } else {
        forbid(format!("{} may not act on app {app}", p.user))
    }
}

/// Passes a member of `dep`'s owning team or a superuser (sessions only); 404 for an unknown dependency.
async fn owner_decides(auth: &Auth, p: &Principal, dep: &str) -> Result<Option<String>, ApiError> {
    if p.is_ci() {
        return Err(ApiError::Forbidden(
            "CI tokens cannot decide about dependencies".into(),
        ));
    }
    if p.superuser {
        return Ok(None);
    }
    let Ok(name) = dep.parse::<atlantis_common::AppName>() else {
        return Ok(None); // the handler answers 400
    };
    match crate::grants::deciding_team(&auth.ctx.coord, &name).await? {
        Some(t) if p.teams.contains(&t) => Ok(None),
        Some(t) => Err(ApiError::Forbidden(format!(
            "only members of team {t}, which owns dependency {dep}, or a superuser may do that"
        ))),
        None => Err(ApiError::Forbidden(format!(
            "dependency {dep} has no team: only superusers may do that"
        ))),
    }
}
