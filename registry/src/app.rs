//! Assembling the server: `App::build(config)` binds the listener (so tests can use port 0 and read the
//! bound address) and `App::serve(token)` runs until the token is cancelled, then drains.

use std::net::SocketAddr;
use std::sync::Arc;

use atlantis_common::shutdown::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::{Auth, AuthConfigError};
use crate::config::Config;
use crate::metrics::RegistryMetrics;
use crate::registry::Registry;
use crate::storage::StorageError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "refusing to listen on {0} without [auth]: configure users or tokens, or listen on a loopback address"
    )]
    PublicWithoutAuth(SocketAddr),
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// A built, bound server.
pub struct App {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: AppState,
}

impl App {
    /// Validates the config, opens storage and binds the listener.
    pub async fn build(config: Config) -> Result<App, AppError> {
        if config.auth.is_none() && !config.listen.ip().is_loopback() {
            return Err(AppError::PublicWithoutAuth(config.listen));
        }
        let auth = config
            .auth
            .as_ref()
            .map(Auth::new)
            .transpose()?
            .map(Arc::new);
        let driver = config.storage.driver()?;
        let registry = Arc::new(Registry::new(driver, config.limits.clone()));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| AppError::Bind {
            addr: config.listen,
            source,
        })?;
        let state = AppState {
            registry,
            auth,
            metrics: RegistryMetrics::new(),
            delete_enabled: config.delete_enabled,
        };
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

    /// The shared registry (for tests and tools).
    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry.clone()
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in flight.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), AppError> {
        tracing::info!(addr = %self.addr, storage = self.state.registry.driver().name(), auth = self.state.auth.is_some(), "Registry listening.");
        let drain = self.state.registry.limits().drain_timeout;
        let router = api::router(self.state);
        let stop = shutdown.clone();
        let server = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        tokio::select! {
            r = server => r.map_err(AppError::Serve),
            _ = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
                tracing::warn!(?drain, "Requests still running after the drain timeout; stopping anyway.");
                Ok(())
            }
        }
    }
}
