//! Atlantis router: the live, ZooKeeper-configured HTTP router (DESIGN.md section 6).
//!
//! Data flow: a [`source::RouteSource`] delivers configuration nodes; the [`table::Compiler`] turns them
//! into an immutable [`table::Table`] that is swapped in atomically (arc-swap), and the
//! [`listener::Listeners`] open and close ports to match. Each request is routed on the current table
//! ([`proxy`]), balanced over its pool's backends ([`pool`]) and streamed back ([`body`]). The status
//! listener ([`status`]) reports health, per-backend state, metrics and rule traces.
//!
//! Architecture invariant: the request path takes no lock except a backend's idle-connection list, and
//! never waits on the configuration source; while the source is away the last table keeps serving.

pub mod body;
pub mod config;
mod fast;
pub mod h2c;
pub mod health;
mod idle;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod source;
pub mod status;
pub mod table;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::listener::Listeners;
use crate::metrics::RouterMetrics;
use crate::proxy::Shared;
use crate::source::{RouteSource, SourceEvent};
use crate::table::Compiler;

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A built router, not yet running.
pub struct App {
    cfg: Config,
    status_addr: SocketAddr,
    status_listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    source: Arc<dyn RouteSource>,
    tls: Option<Arc<tls::Tls>>,
    generation: watch::Sender<u64>,
}

/// A handle to a running router (for tests and embedding).
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    generation: watch::Receiver<u64>,
    ports: Arc<parking_lot::Mutex<Vec<u16>>>,
}

impl Handle {
    /// The generation of the table in use.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Waits until a table newer than `after` is in use.
    pub async fn wait_generation(&mut self, after: u64) -> u64 {
        let _ = self.generation.wait_for(|g| *g > after).await;
        *self.generation.borrow()
    }

    /// The ports with an open listener.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.lock().clone()
    }

    /// Whether the configuration source is connected.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Relaxed)
    }
}

impl App {
    /// Checks the config, loads certificates and binds the status listener.
    pub async fn build(cfg: Config, source: Arc<dyn RouteSource>) -> Result<App, RouterError> {
        cfg.validate()?;
        let tls = tls::Tls::load(&cfg.tls)?.map(Arc::new);
        let status_listener =
            status::bind(cfg.status_addr)
                .await
                .map_err(|source| RouterError::Bind {
                    addr: cfg.status_addr,
                    source,
                })?;
        let status_addr = status_listener
            .local_addr()
            .map_err(|source| RouterError::Bind {
                addr: cfg.status_addr,
                source,
            })?;
        let not_found = StatusCode::from_u16(cfg.not_found_status).unwrap_or(StatusCode::NOT_FOUND);
        let shared = Arc::new(Shared::new(
            RouterMetrics::new(),
            cfg.access_log,
            not_found,
            cfg.limits.max_idle_per_backend,
            Duration::from_millis(cfg.limits.body_idle_timeout_ms),
            Duration::from_millis(cfg.limits.tunnel_idle_timeout_ms),
        ));
        let (generation, _) = watch::channel(0);
        Ok(App {
            cfg,
            status_addr,
            status_listener,
            shared,
            source,
            tls,
            generation,
        })
    }

    /// The bound status address.
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// Runs until `shutdown`, then closes listeners and drains connections.
    pub fn spawn(self, shutdown: CancellationToken) -> (Handle, tokio::task::JoinHandle<()>) {
        let ports = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let handle = Handle {
            shared: self.shared.clone(),
            generation: self.generation.subscribe(),
            ports: ports.clone(),
        };
        let task = tokio::spawn(self.run(shutdown, ports));
        (handle, task)
    }

    async fn run(self, shutdown: CancellationToken, ports: Arc<parking_lot::Mutex<Vec<u16>>>) {
        let App {
            cfg,
            status_listener,
            shared,
            source,
            tls,
            generation,
            ..
        } = self;
        if let Some(t) = &tls {
            t.spawn_reloader(cfg.tls.clone(), shutdown.clone());
        }
        let n = if cfg.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cfg.workers
        };
        let workers = match workers::Workers::start(n) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "Cannot start worker threads.");
                return;
            }
        };
        let mut listeners = Listeners::new(
            cfg.listen_ip,
            cfg.limits.clone(),
            shared.clone(),
            tls,
            workers.handles().to_vec(),
        );
        let status_state = Arc::new(status::StatusState {
            shared: shared.clone(),
            failed: listeners.failed.clone(),
        });
        tokio::spawn(status::serve(
            status_listener,
            status_state,
            shutdown.clone(),
        ));
        let mut events = source.start(shutdown.clone());
        let mut compiler = Compiler::new(shared.metrics.clone());
        let mut retry = tokio::time::interval(Duration::from_secs(5));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen_reset = false;
        loop {
            let first = tokio::select! {
                ev = events.recv() => match ev { Some(ev) => Some(ev), None => { shutdown.cancelled().await; break } },
                _ = retry.tick() => None,
                _ = shutdown.cancelled() => break,
            };
            let mut changed = false;
            let mut batch = first.into_iter().collect::<Vec<_>>();
            while let Ok(ev) = events.try_recv() {
                batch.push(ev);
            }
            for ev in batch {
                match ev {
                    SourceEvent::Connected(c) => shared.connected.store(c, Relaxed),
                    ev => {
                        seen_reset |= matches!(ev, SourceEvent::Reset(_));
                        changed |= compiler.apply(ev);
                    }
                }
            }
            if changed || (seen_reset && *generation.borrow() == 0) {
                let started = std::time::Instant::now();
                let mut table = compiler.compile();
                let g = table.generation;
                let took = started.elapsed();
                table.compile_ms = took.as_secs_f64() * 1000.0;
                let table = Arc::new(table);
                shared.table.store(table.clone());
                listeners.reconcile(&table);
                tracing::debug!(
                    generation = g,
                    rules = table.rule_count,
                    ms = took.as_secs_f64() * 1000.0,
                    "Routing table swapped."
                );
                for e in &table.errors {
                    tracing::warn!(error = %e, "Invalid router configuration node ignored.");
                }
                *ports.lock() = listeners.ports();
                let _ = generation.send(g);
            } else if !listeners.failed.lock().is_empty() {
                listeners.reconcile(&shared.table.load());
                *ports.lock() = listeners.ports();
            }
        }
        listeners.shutdown().await;
        workers.stop().await;
        tracing::info!("Router stopped.");
    }
}
