//! The HTTP API: start a build, read its status (digest and app config when done), stream its log.
//!
//! - `POST /v1/builds` `{"source": {"dir": PATH} | {"git": {"repo", "sha", "root"}}, "push"?: REF,
//!   "app"?: NAME, "sha"?: SHA, "registry_token"?: TOKEN}` answers 202 with the build's `id` at once.
//!   The image goes to `<registry>/apps/<app>:<sha>` of the configured registry; `push` may only name
//!   that registry and `apps/<app>` (400 otherwise), and the app's `atlantis.toml` must name the same
//!   app. `registry_token` is the manager's token for this app (`POST /v1/apps/{app}/build-token`):
//!   it must grant push on `apps/<app>` and nothing else, is sent to the configured registry only,
//!   and is never logged nor shown in the status. Without it the build is refused (400
//!   `registry_token_required`) when the registry asks for credentials.
//! - `GET /v1/builds/{id}`: state (`queued`, `running`, `succeeded`, `failed`), and when done the image
//!   reference, digest, app config and push counts, or the error code and message.
//! - `GET /v1/builds/{id}/log`: the log as plain text, streamed until the build ends.
//! - `GET /healthz`.
//!
//! Every route but `/healthz` needs `Authorization: Bearer <api_token>` when a token is configured; a
//! builder without a token only listens on loopback. Directory and local git sources (paths and
//! `file:///` URLs) must lie under `allowed_dirs`; remote git sources are `https://` or `ssh://` URLs
//! ([`crate::git::classify`]). Requests are bounded (64 KiB bodies), builds run a bounded number at once, at most
//! [`MAX_JOBS`] builds are remembered and [`MAX_LOG_LINES`] lines per build kept.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use atlantis_common::names::{AppName, Sha};
use atlantis_common::shutdown::CancellationToken;
use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use crate::Config;
use crate::build::{BuildRequest, Builder, Source};
use crate::error::BuildError;
use crate::push::{Credentials, ImageRef, PushStats, Secret};

/// Builds remembered; the oldest finished ones are forgotten first.
pub const MAX_JOBS: usize = 1000;
/// Log lines kept per build.
pub const MAX_LOG_LINES: usize = 10_000;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No token, and a non-loopback address.
    #[error(
        "refusing to listen on {0} without api_token: set one, or listen on a loopback address"
    )]
    PublicWithoutToken(SocketAddr),
    /// The listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The server failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// A build request as the API takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBuild {
    /// The input.
    pub source: Source,
    /// Where to push (`REGISTRY/apps/NAME:SHA`).
    #[serde(default)]
    pub push: Option<String>,
    /// The app, for the default push reference.
    #[serde(default)]
    pub app: Option<AppName>,
    /// The commit (taken from a git source when absent).
    #[serde(default)]
    pub sha: Option<Sha>,
    /// The manager-issued registry token scoped to `apps/<app>` (never logged, never echoed).
    #[serde(default)]
    pub registry_token: Option<Secret>,
}

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    /// Waiting for a free slot.
    Queued,
    /// Running.
    Running,
    /// Done; the image is pushed.
    Succeeded,
    /// Done; see the error.
    Failed,
}

/// `GET /v1/builds/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildStatus {
    /// The build's id.
    pub id: String,
    /// Where it is.
    pub state: BuildState,
    /// The image reference pushed to.
    pub image: String,
    /// The manifest digest, when succeeded.
    pub digest: Option<String>,
    /// The app config (JSON form of `atlantis.toml`), when succeeded.
    pub app_config: Option<serde_json::Value>,
    /// What the push sent, when succeeded.
    pub push: Option<serde_json::Value>,
    /// The error, when failed.
    pub error: Option<ErrorBody>,
}

/// The body of every error answer and of a failed build's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code (`invalid_config`, `invalid_input`, `push_failed`, `not_found`...).
    pub code: String,
    /// For humans.
    pub message: String,
}

struct Job {
    inner: std::sync::Mutex<JobInner>,
    changed: watch::Sender<u64>,
}

struct JobInner {
    status: BuildStatus,
    log: Vec<String>,
    dropped: usize,
}

impl Job {
    fn update(&self, f: impl FnOnce(&mut JobInner)) {
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    fn append(&self, line: String) {
        self.update(|j| {
            if j.log.len() < MAX_LOG_LINES {
                j.log.push(line);
            } else {
                j.dropped += 1;
            }
        });
    }
}

/// Builds by id, and their ids oldest first.
type Jobs = (HashMap<String, Arc<Job>>, VecDeque<String>);

struct AppState {
    builder: Builder,
    config: Config,
    allowed: Vec<PathBuf>,
    jobs: std::sync::Mutex<Jobs>,
    slots: Semaphore,
}

/// A built, bound API server.
pub struct App {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
}

impl App {
    /// Checks the config, binds the listener.
    pub async fn build(config: Config, builder: Builder) -> Result<App, ServeError> {
        if config.api_token.is_none() && !config.listen.ip().is_loopback() {
            return Err(ServeError::PublicWithoutToken(config.listen));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
        let allowed = config
            .allowed_dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .collect();
        let state = Arc::new(AppState {
            builder,
            slots: Semaphore::new(config.max_concurrent_builds.max(1)),
            config,
            allowed,
            jobs: std::sync::Mutex::new((HashMap::new(), VecDeque::new())),
        });
        Ok(App {
            listener,
            addr,
            state,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        tracing::info!(addr = %self.addr, "Builder API listening.");
        let router = router(self.state);
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(ServeError::Serve)
    }
}

fn router(state: Arc<AppState>) -> axum::Router {
    let api = axum::Router::new()
        .route("/v1/builds", post(start))
        .route("/v1/builds/{id}", get(status))
        .route("/v1/builds/{id}/log", get(log))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorise,
        ));
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            code: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

async fn authorise(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.config.api_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <api token>",
            );
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest as _;
    let (x, y) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Checks that a local path lies under one of the allowed directories; returns it with its symlinks
/// resolved, which is what the build then reads (a symlink swapped later cannot lead elsewhere).
fn check_allowed(allowed: &[PathBuf], p: &Path) -> Result<PathBuf, BuildError> {
    let real = std::fs::canonicalize(p)
        .map_err(|e| BuildError::Request(format!("cannot use {}: {e}", p.display())))?;
    if allowed.iter().any(|a| real.starts_with(a)) {
        Ok(real)
    } else {
        Err(BuildError::Request(format!(
            "{} is not under the builder's allowed_dirs",
            p.display()
        )))
    }
}

/// A checked request: what to build, and the credentials of its push.
struct Checked {
    req: BuildRequest,
    credentials: Option<Credentials>,
}

fn to_request(st: &AppState, mut body: StartBuild) -> Result<Checked, BuildError> {
    match &mut body.source {
        Source::Dir(d) => *d = check_allowed(&st.allowed, d)?,
        Source::Git(g) => {
            if let crate::git::Repo::Local(p) = crate::git::classify(&g.repo)? {
                let real = check_allowed(&st.allowed, &p)?;
                g.repo = real
                    .to_str()
                    .ok_or_else(|| BuildError::Request("the repository path is not UTF-8".into()))?
                    .to_owned();
            }
            crate::git::check_root(&g.root)?;
        }
    }
    let sha = match (&body.sha, &body.source) {
        (Some(s), _) => Some(s.clone()),
        (None, Source::Git(g)) => Some(g.sha.clone()),
        (None, Source::Dir(_)) => None,
    };
    let push: ImageRef = match (&body.push, &body.app, &sha) {
        (Some(p), _, _) => p.parse()?,
        (None, Some(app), Some(sha)) => {
            format!("{}/apps/{app}:{sha}", st.config.registry).parse()?
        }
        _ => {
            return Err(BuildError::Request(
                "give app and sha (or push: REGISTRY/apps/NAME:SHA)".into(),
            ));
        }
    };
    check_target(&st.config.registry, body.app.as_ref(), &push)?;
    let credentials = match &body.registry_token {
        Some(t) => {
            crate::push::check_scoped_token(t.expose(), &push.repository)?;
            Some(Credentials::Bearer(t.expose().to_owned()))
        }
        None => None,
    };
    Ok(Checked {
        req: BuildRequest {
            source: body.source,
            sha,
            push: Some(push),
        },
        credentials,
    })
}

/// A build pushes only to the configured registry, and only `apps/<app>` of the app it builds.
fn check_target(registry: &str, app: Option<&AppName>, push: &ImageRef) -> Result<(), BuildError> {
    if !push.registry.eq_ignore_ascii_case(registry) {
        return Err(BuildError::Request(format!(
            "push host {} is not this builder's registry {registry}: builds push only to the configured registry",
            push.registry
        )));
    }
    let name = push
        .repository
        .strip_prefix("apps/")
        .and_then(|n| n.parse::<AppName>().ok());
    let Some(name) = name else {
        return Err(BuildError::Request(format!(
            "push repository {} is not apps/<app>: builds push only their app's repository",
            push.repository
        )));
    };
    if let Some(app) = app
        && *app != name
    {
        return Err(BuildError::Request(format!(
            "the build of app {app} may push only apps/{app}, not {}",
            push.repository
        )));
    }
    Ok(())
}

async fn start(State(st): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let body: StartBuild = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    };
    let Checked { req, credentials } = match to_request(&st, body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    };
    if credentials.is_none() && crate::push::requires_auth(&st.config.registry, "http").await {
        return error(
            StatusCode::BAD_REQUEST,
            "registry_token_required",
            format!(
                "the registry {} needs credentials: pass registry_token, the manager's token for this app \
                 (POST /v1/apps/{{app}}/build-token); the builder has none of its own",
                st.config.registry
            ),
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    let image = req
        .push
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let job = Arc::new(Job {
        inner: std::sync::Mutex::new(JobInner {
            status: BuildStatus {
                id: id.clone(),
                state: BuildState::Queued,
                image,
                digest: None,
                app_config: None,
                push: None,
                error: None,
            },
            log: Vec::new(),
            dropped: 0,
        }),
        changed: watch::channel(0).0,
    });
    {
        let mut g = st.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *g;
        if map.len() >= MAX_JOBS {
            // Forget the oldest finished build; refuse when every remembered build is still going.
            let pos = order.iter().position(|k| {
                map.get(k).is_some_and(|j| {
                    let s = j
                        .inner
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .status
                        .state;
                    matches!(s, BuildState::Succeeded | BuildState::Failed)
                })
            });
            match pos {
                Some(i) => {
                    if let Some(k) = order.remove(i) {
                        map.remove(&k);
                    }
                }
                None => {
                    return error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_builds",
                        format!("{MAX_JOBS} builds are queued or running"),
                    );
                }
            }
        }
        map.insert(id.clone(), job.clone());
        order.push_back(id.clone());
    }
    let st2 = st.clone();
    tokio::spawn(async move {
        let _permit = st2.slots.acquire().await;
        job.update(|j| j.status.state = BuildState::Running);
        let j2 = job.clone();
        let log: crate::build::Log = Arc::new(move |line: String| j2.append(line));
        let result = st2.builder.build_as(req, credentials, log.clone()).await;
        match result {
            Ok(out) => job.update(|j| {
                j.status.state = BuildState::Succeeded;
                j.status.digest = Some(out.image.digest.clone());
                j.status.app_config = serde_json::to_value(&out.app).ok();
                j.status.push = out
                    .pushed
                    .as_ref()
                    .and_then(|(_, s): &(ImageRef, PushStats)| serde_json::to_value(s).ok());
            }),
            Err(e) => {
                log(format!("error: {e}"));
                job.update(|j| {
                    j.status.state = BuildState::Failed;
                    j.status.error = Some(ErrorBody {
                        code: e.code().into(),
                        message: e.to_string(),
                    });
                });
            }
        }
    });
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/builds/{id}"))],
        Json(serde_json::json!({ "id": id, "state": "queued" })),
    )
        .into_response()
}

fn find(st: &AppState, id: &str) -> Option<Arc<Job>> {
    st.jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .0
        .get(id)
        .cloned()
}

async fn status(State(st): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Response {
    match find(&st, &id) {
        Some(job) => {
            let s = job
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .status
                .clone();
            Json(s).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no build {id:?}"),
        ),
    }
}

async fn log(State(st): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(job) = find(&st, &id) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no build {id:?}"),
        );
    };
    let stream = futures::stream::unfold((job, 0usize, false), |(job, next, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let mut rx = job.changed.subscribe();
            let (chunk, done, dropped) = {
                let g = job.inner.lock().unwrap_or_else(|p| p.into_inner());
                let done = matches!(g.status.state, BuildState::Succeeded | BuildState::Failed);
                let lines: String = g.log[next.min(g.log.len())..]
                    .iter()
                    .map(|l| format!("{l}\n"))
                    .collect();
                (lines, done, g.dropped)
            };
            if !chunk.is_empty() {
                let n = chunk.matches('\n').count();
                return Some((Ok::<_, std::io::Error>(chunk), (job, next + n, false)));
            }
            if done {
                if dropped > 0 {
                    return Some((
                        Ok(format!("({dropped} more lines were not kept)\n")),
                        (job, next, true),
                    ));
                }
                return None;
            }
            let _ = rx.changed().await;
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "response"))
}
