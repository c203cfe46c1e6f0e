//! The HTTP server, its registration in ZooKeeper and its leadership campaign.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atlantis_common::shutdown::CancellationToken;
use atlantis_common::telemetry::{METRICS_CONTENT_TYPE, Metrics};
use atlantis_common::zk::{Coord, CoordError, Registration};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::Config;
use crate::auth::Auth;
use crate::ctx::Ctx;
use crate::fleet::hosts::Supervisors;
use crate::history::{History, HistoryError};
use crate::images::Images;
use crate::release::Engine;
use crate::secrets::{Sealer, SecretError};
use crate::tasks::Tasks;

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// ZooKeeper is unreachable or refused a write.
    #[error("ZooKeeper: {0}")]
    Coord(#[from] CoordError),
    /// The history database could not be opened.
    #[error("history database: {0}")]
    History(#[from] HistoryError),
    /// The secret key could not be loaded.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A file or setting is unusable.
    #[error("{0}")]
    Setup(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct Shared {
    coord: Coord,
    leader: Arc<AtomicBool>,
    metrics: Metrics,
    host: String,
}

/// What a manager registers in ZooKeeper.
#[derive(Debug, Serialize)]
struct ManagerRecord<'a> {
    version: u32,
    addr: String,
    software: &'a str,
}

/// The client that reads router status listeners: it sends the routers' status token when one is
/// configured (a file of mode 0600 or stricter).
pub fn router_status_client(cfg: &Config) -> Result<reqwest::Client, StartError> {
    let mut b = reqwest::Client::builder().no_proxy();
    if let Some(path) = &cfg.routing.router_status_token_file {
        let bad = |e: String| {
            StartError::Setup(format!(
                "routing.router_status_token_file {}: {e}",
                path.display()
            ))
        };
        let token = atlantis_common::secret_file::read_token(path)
            .map_err(|e| StartError::Setup(format!("routing.router_status_token_file {e}")))?;
        let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| bad("not a valid token".into()))?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        b = b.default_headers(headers);
    }
    b.build().map_err(|e| StartError::Setup(e.to_string()))
}

/// A running manager.
pub struct App {
    /// The bound API address.
    pub addr: SocketAddr,
    /// With no LDAP configured: the file holding the admin token.
    pub admin_token_file: Option<std::path::PathBuf>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _registration: Registration,
}

impl App {
    /// Connects, registers, binds and starts serving.
    pub async fn build(cfg: Config) -> Result<App, StartError> {
        let sealer = Sealer::from_file(&cfg.secret_key_file)?;
        let token = atlantis_common::secret_file::read_token(&cfg.supervisor_token_file)
            .map_err(|e| StartError::Setup(format!("supervisor_token_file {e}")))?;
        let images = Images::new(cfg.registry.clone())
            .map_err(|e| StartError::Setup(format!("registry: {e}")))?;
        if cfg.database_url.is_none() {
            std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
                StartError::Setup(format!("data dir {}: {e}", cfg.data_dir.display()))
            })?;
        }
        let supervisor_tls = cfg
            .supervisor_tls
            .as_ref()
            .map(|t| {
                atlantis_common::tls::client_config(&t.ca_file, Some((&t.cert_file, &t.key_file)))
                    .map(Arc::new)
                    .map_err(|e| StartError::Setup(format!("supervisor_tls: {e}")))
            })
            .transpose()?;
        let stop = CancellationToken::new();
        let api_tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let cert = atlantis_common::tls::ReloadingCert::load(&t.cert_file, &t.key_file)
                    .map_err(|e| StartError::Setup(format!("tls: {e}")))?;
                cert.watch(
                    std::time::Duration::from_millis(t.reload_interval_ms),
                    stop.clone(),
                );
                Some(
                    atlantis_common::tls::server_config(cert, None)
                        .map_err(|e| StartError::Setup(format!("tls: {e}")))?,
                )
            }
        };
        let history = History::open(&cfg.database_url()).await?;
        let coord = Coord::connect(cfg.zookeeper.clone()).await?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let record = ManagerRecord {
            version: 1,
            addr: addr.to_string(),
            software: env!("CARGO_PKG_VERSION"),
        };
        let registration = coord
            .register_ephemeral(&coord.layout().manager(&cfg.host), &record)
            .await?;
        let shared = Shared {
            coord: coord.clone(),
            leader: Arc::new(AtomicBool::new(false)),
            metrics: Metrics::new("atlantis_manager"),
            host: cfg.host.to_string(),
        };
        let http = router_status_client(&cfg)?;
        let token = Arc::new(token);
        let supervisors = Arc::new(Supervisors::new(
            token.clone(),
            supervisor_tls,
            std::time::Duration::from_millis(cfg.deploy.start_timeout_ms),
        ));
        let engine = Engine::new(
            coord.clone(),
            history.clone(),
            Tasks::new(coord.clone(), history, cfg.host.as_str()),
            sealer,
            images,
            supervisors.clone(),
            Arc::new(cfg.clone()),
            http,
        );
        let ctx = Ctx {
            engine: engine.clone(),
            supervisors,
            token,
        };
        let (auth, admin_token_file) = Auth::setup(ctx.clone()).map_err(StartError::Setup)?;
        // Every route but /healthz, /openapi.json and the login goes through the auth layer.
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .with_state(shared.clone())
            .merge(crate::api::router(ctx.clone()))
            .merge(crate::api::login::router(auth.clone()))
            .merge(crate::api::grants::router(auth.clone()))
            .layer(axum::middleware::from_fn_with_state(
                auth,
                crate::auth::middleware::check,
            ));
        let serve_stop = stop.clone();
        let serve = tokio::spawn(async move {
            if let Some(tls) = api_tls {
                atlantis_common::tls::serve(listener, tls, router, serve_stop).await;
                return;
            }
            let r = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(serve_stop.cancelled_owned())
            .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "Manager API server failed.");
            }
        });
        let campaign = tokio::spawn(lead(shared, engine, stop.clone()));
        tracing::info!(%addr, host = %cfg.host, "Manager serving.");
        Ok(App {
            addr,
            admin_token_file,
            stop,
            tasks: vec![serve, campaign],
            _registration: registration,
        })
    }

    /// Stops serving and leaves ZooKeeper.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Campaigns for leadership again and again; reconciliation runs while leading.
async fn lead(shared: Shared, engine: Engine, stop: CancellationToken) {
    let path = shared.coord.layout().manager_leader();
    loop {
        let won = tokio::select! {
            r = shared.coord.campaign(&path, &shared.host) => r,
            _ = stop.cancelled() => return,
        };
        match won {
            Ok(leadership) => {
                shared.leader.store(true, Ordering::SeqCst);
                tokio::select! {
                    _ = leadership.lost() => tracing::warn!("Leadership lost."),
                    _ = crate::reconcile::run(engine.clone()) => {}
                    _ = stop.cancelled() => {
                        let _ = leadership.resign().await;
                        shared.leader.store(false, Ordering::SeqCst);
                        return;
                    }
                }
                shared.leader.store(false, Ordering::SeqCst);
            }
            Err(CoordError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "Leader campaign failed, retrying.");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    zookeeper_connected: bool,
    leader: bool,
}

async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    let connected = s.coord.status().borrow().connected;
    let body = Health {
        status: if connected { "OK" } else { "DEGRADED" },
        zookeeper_connected: connected,
        leader: s.leader.load(Ordering::SeqCst),
    };
    let code = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [("Server-Status", body.status)], axum::Json(body))
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        s.metrics.render(),
    )
}
