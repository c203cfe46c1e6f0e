//! Logins, `whoami` and CI tokens (state: [`Auth`]), and the router of every authentication route.

use atlantis_common::AppName;
use atlantis_common::api::manager::ErrorBody;
use atlantis_common::api::registry_token::{Access, PULL, PUSH, REPOSITORY};
use axum::extract::{Request, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::ldap::{LoginError, check_user_name};
use crate::auth::middleware::source;
use crate::auth::store::AuditEntry;
use crate::auth::{Auth, Claims, Principal, Scope};
use crate::error::ApiError;
use crate::tasks::now_ms;

/// Largest login or token request body.
const MAX_BODY: usize = 16 * 1024;

/// The routes of logins, teams, tokens and audit.
pub fn router(auth: Auth) -> Router {
    Router::new()
        .route("/v1/login", post(login))
        .route("/v1/whoami", get(whoami))
        .route("/v1/tokens", post(create_token))
        .route("/v1/teams", get(super::teams::list))
        .route("/v1/teams/{team}/apps", get(super::teams::apps))
        .route(
            "/v1/teams/{team}/apps/{app}",
            put(super::teams::allow).delete(super::teams::disallow),
        )
        .route("/v1/audit", get(super::audit::list))
        .route("/v1/registry/token", get(registry_token))
        .route(
            "/v1/apps/{app}/build-token",
            post(super::build_token::issue),
        )
        .with_state(auth)
}

/// Reads a bounded JSON body.
pub async fn read_json<T: DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
}

/// `POST /v1/login` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    /// User name.
    pub user: String,
    /// Password (never logged, never echoed).
    pub password: String,
}

/// A session.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Bearer token for `Authorization: Bearer <token>`.
    pub token: String,
    /// User name.
    pub user: String,
    /// Teams (LDAP groups).
    pub teams: Vec<String>,
    /// Member of the superuser group.
    pub superuser: bool,
    /// When the token expires, ms since the epoch.
    pub expires_ms: u64,
}

/// `POST /v1/login`: binds to LDAP as the user; 401 on wrong credentials, 503 when LDAP is down.
#[utoipa::path(post, path = "/v1/login", tag = "auth", request_body = LoginRequest, responses((status = 200, description = "A session token", body = LoginResponse), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn login(State(auth): State<Auth>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut rec = AuditEntry {
        at_ms: now_ms() as i64,
        user: "-".into(),
        action: "login".into(),
        target: "/v1/login".into(),
        source: source(&parts.extensions),
        ..AuditEntry::default()
    };
    let result = async {
        let r: LoginRequest = read_json(body).await?;
        if check_user_name(&r.user).is_ok() {
            rec.user.clone_from(&r.user);
        }
        let Some(dir) = auth.directory() else {
            return Err(ApiError::InvalidRequest(
                "this manager has no LDAP directory: use the admin token from its admin_token_file"
                    .into(),
            ));
        };
        let id = dir.login(&r.user, &r.password).await.map_err(|e| match e {
            LoginError::BadName => ApiError::InvalidRequest(e.to_string()),
            LoginError::Invalid => ApiError::Unauthorized(e.to_string()),
            LoginError::Unavailable(_) => {
                tracing::warn!(error = %e, "LDAP login failed.");
                ApiError::Unavailable(e.to_string())
            }
        })?;
        let now = now_ms();
        let exp = now + auth.cfg().session_ttl_s * 1000;
        let token = auth.sign(&Claims {
            sub: id.user.clone(),
            teams: id.teams.clone(),
            su: id.superuser,
            iat: now,
            exp,
            apps: None,
            scope: None,
            aud: None,
        });
        Ok(LoginResponse {
            token,
            user: id.user,
            teams: id.teams,
            superuser: id.superuser,
            expires_ms: exp,
        })
    }
    .await;
    let resp = match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    };
    rec.status = resp.status().as_u16();
    rec.result = match rec.status {
        200 => "ok",
        400 | 401 | 403 => "denied",
        _ => "failed",
    }
    .into();
    // No token leaves without its audit entry.
    match auth.store().audit(rec).await {
        Ok(()) => resp,
        Err(e) => crate::auth::middleware::audit_failed(&e),
    }
}

/// Who the token says the caller is.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// User name.
    pub user: String,
    /// Teams.
    pub teams: Vec<String>,
    /// Superuser.
    pub superuser: bool,
}

/// `GET /v1/whoami`
#[utoipa::path(get, path = "/v1/whoami", tag = "auth", responses((status = 200, description = "The caller", body = WhoAmI), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn whoami(axum::Extension(p): axum::Extension<Principal>) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: p.user,
        teams: p.teams,
        superuser: p.superuser,
    })
}

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// A name for the audit log (`<user>/<name>` acts).
    pub name: String,
    /// The apps it may act on (each one the caller may act on).
    pub apps: Vec<String>,
    /// `read` or `deploy`.
    pub scope: Scope,
    /// Lifetime, seconds (at most `auth.max_token_ttl_s`).
    pub ttl_s: u64,
}

/// A CI token.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// Bearer token.
    pub token: String,
    /// Expiry, ms since the epoch.
    pub expires_ms: u64,
}

/// `POST /v1/tokens`: a non-interactive token for CI, limited to apps and a scope.
#[utoipa::path(post, path = "/v1/tokens", tag = "auth", request_body = TokenRequest, responses((status = 200, description = "The token", body = TokenResponse), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn create_token(
    State(auth): State<Auth>,
    axum::Extension(p): axum::Extension<Principal>,
    body: axum::body::Body,
) -> Result<Json<TokenResponse>, ApiError> {
    let r: TokenRequest = read_json(body).await?;
    check_user_name(&r.name).map_err(|_| {
        ApiError::InvalidRequest("token names are 1 to 64 letters, digits, '.', '_' or '-'".into())
    })?;
    if r.apps.is_empty() || r.apps.len() > 100 {
        return Err(ApiError::InvalidRequest(
            "a token names 1 to 100 apps".into(),
        ));
    }
    let max = auth.cfg().max_token_ttl_s;
    if r.ttl_s == 0 || r.ttl_s > max {
        return Err(ApiError::InvalidRequest(format!(
            "ttl_s must be between 1 and {max}"
        )));
    }
    for a in &r.apps {
        let _: AppName = super::name(a)?;
        if !auth.may_access(&p, a).await? {
            return Err(ApiError::Forbidden(format!(
                "{} may not act on app {a}",
                p.user
            )));
        }
    }
    let now = now_ms();
    let exp = now + r.ttl_s * 1000;
    let token = auth.sign(&Claims {
        sub: format!("{}/{}", p.user, r.name),
        teams: p.teams.clone(),
        su: p.superuser,
        iat: now,
        exp,
        apps: Some(r.apps),
        scope: Some(r.scope),
        aud: None,
    });
    Ok(Json(TokenResponse {
        token,
        expires_ms: exp,
    }))
}

/// A registry token (Docker token authentication).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistryToken {
    /// The bearer token for the registry.
    pub token: String,
    /// The same (OAuth2 clients read this one).
    pub access_token: String,
    /// Lifetime, seconds.
    pub expires_in: u64,
}

/// Who asks for a registry token.
enum RegistryCaller {
    /// A user or CI token.
    Api(Principal),
    /// A supervisor presenting the cluster token: pulls only.
    Supervisor,
}

fn registry_caller(
    auth: &Auth,
    headers: &axum::http::HeaderMap,
) -> Result<RegistryCaller, ApiError> {
    use base64::Engine as _;
    let raw = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "send Basic credentials (password: an Atlantis token) or a bearer token".into(),
            )
        })?;
    let (scheme, rest) = raw
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let secret = if scheme.eq_ignore_ascii_case("basic") {
        let text = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::Unauthorized("malformed Basic credentials".into()))?;
        let (_, password) = text
            .split_once(':')
            .ok_or_else(|| ApiError::Unauthorized("malformed Basic credentials".into()))?;
        password.to_owned()
    } else if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_owned()
    } else {
        return Err(ApiError::Unauthorized(
            "unsupported authorization scheme".into(),
        ));
    };
    let cluster = auth.ctx.token.as_bytes();
    let same = secret.len() == cluster.len()
        && secret
            .as_bytes()
            .iter()
            .zip(cluster)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        return Ok(RegistryCaller::Supervisor);
    }
    auth.verify(&secret).map(RegistryCaller::Api)
}

/// `GET /v1/registry/token?service=&scope=repository:<name>:<actions>`: Docker token authentication.
/// Basic credentials whose password is an Atlantis token (or the cluster token, for supervisors' pulls);
/// the token grants the asked actions that the caller is allowed, possibly none.
#[utoipa::path(get, path = "/v1/registry/token", tag = "auth", params(("service" = Option<String>, Query), ("scope" = Option<String>, Query)), responses((status = 200, description = "A registry token", body = RegistryToken), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn registry_token(State(auth): State<Auth>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let q: Vec<(String, String)> = axum::extract::Query::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let asked: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut rec = AuditEntry {
        at_ms: now_ms() as i64,
        user: "-".into(),
        action: "GET /v1/registry/token".into(),
        target: "/v1/registry/token".into(),
        source: source(&parts.extensions),
        ..AuditEntry::default()
    };
    let result = issue_registry_token(&auth, &parts.headers, &q, &mut rec.user).await;
    let granted = match &result {
        Ok((_, access)) => access
            .iter()
            .map(|g| format!("repository:{}:{}", g.name, g.actions.join(",")))
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => String::new(),
    };
    let resp = match result {
        Ok((t, _)) => Json(t).into_response(),
        Err(e) => e.into_response(),
    };
    rec.status = resp.status().as_u16();
    rec.result = match rec.status {
        200 => "ok",
        400 | 401 | 403 => "denied",
        _ => "failed",
    }
    .into();
    let mut detail = format!("asked: {}; granted: {granted}", asked.join(" "));
    if detail.len() > 2000 {
        let mut cut = 2000;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    rec.detail = detail;
    // The token is handed out only once its issue is in the audit log.
    match auth.store().audit(rec).await {
        Ok(()) => resp,
        Err(e) => crate::auth::middleware::audit_failed(&e),
    }
}

/// Decides and signs; sets `user` to the caller once known.
async fn issue_registry_token(
    auth: &Auth,
    headers: &axum::http::HeaderMap,
    q: &[(String, String)],
    user: &mut String,
) -> Result<(RegistryToken, Vec<Access>), ApiError> {
    use crate::auth::registry::parse_scope;
    let caller = registry_caller(auth, headers)?;
    *user = match &caller {
        RegistryCaller::Supervisor => "supervisor".to_owned(),
        RegistryCaller::Api(p) => p.user.clone(),
    };
    let signer = auth.registry().ok_or_else(|| {
        ApiError::NotFound("registry token authentication is not configured".into())
    })?;
    if let Some((_, s)) = q.iter().find(|(k, _)| k == "service")
        && s != &signer.cfg().service
    {
        return Err(ApiError::InvalidRequest(format!("unknown service {s:?}")));
    }
    let scopes: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .filter(|s| !s.is_empty())
        .take(20)
        .collect();
    let mut access = Vec::new();
    for s in scopes {
        let Some((name, wanted)) = parse_scope(s) else {
            continue;
        };
        let (pull, push) = match &caller {
            RegistryCaller::Supervisor => (true, false),
            RegistryCaller::Api(p) if p.superuser && !p.is_ci() => (true, true),
            RegistryCaller::Api(p) => match name.strip_prefix("apps/") {
                Some(app) if auth.may_access(p, app).await? => (true, p.scope != Some(Scope::Read)),
                Some(_) => (false, false),
                None => (!p.is_ci(), false),
            },
        };
        let actions: Vec<String> = wanted
            .into_iter()
            .filter(|a| (a == PULL && pull) || (a == PUSH && push))
            .collect();
        if !actions.is_empty() {
            access.push(Access {
                kind: REPOSITORY.into(),
                name,
                actions,
            });
        }
    }
    let sub = match &caller {
        RegistryCaller::Supervisor => "supervisor".to_owned(),
        RegistryCaller::Api(p) => p.user.clone(),
    };
    let (token, expires_in) = signer.sign(&sub, &access);
    Ok((
        RegistryToken {
            access_token: token.clone(),
            token,
            expires_in,
        },
        access,
    ))
}
