//! Atlantis router: the live, ZooKeeper-configured HTTP router (routing model: `docs/router.md`).
//!
//! Data flow: a [`source::RouteSource`] delivers configuration nodes; the [`table::Compiler`] turns them
//! into an immutable [`table::Table`] that is swapped in atomically (arc-swap), and the
//! [`listener::Listeners`] open and close ports to match. Each request is routed on the current table
//! ([`proxy`]), balanced over its pool's backends ([`pool`]) and streamed back ([`body`]). The status
//! listener ([`status`]) reports health, per-backend state, metrics and rule traces.
//!
//! Architecture invariant: the request path takes no lock except a backend's idle-connection list, and
//! never waits on the configuration source; while the source is away the last table keeps serving (at
//! start, the local [`snapshot`] of the last good configuration), and an invalid node never replaces a
//! valid one.

pub mod body;
pub mod config;
pub mod drain;
mod fast;
pub mod h2c;
pub mod health;
mod idle;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod table;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod workers;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use atlantis_common::routing::RouterAck;

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
    status_token: Option<[u8; 32]>,
    generation: watch::Sender<u64>,
    acks: watch::Sender<RouterAck>,
}

/// A handle to a running router (for tests and embedding).
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    generation: watch::Receiver<u64>,
    acks: watch::Receiver<RouterAck>,
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

    /// What the router reports to the manager: the configuration generation it serves and its draining
    /// backends (the document of its `router_acks` node).
    pub fn ack(&self) -> RouterAck {
        self.acks.borrow().clone()
    }

    /// The ports with an open listener.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.lock().clone()
    }

    /// Whether the configuration source is connected.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Relaxed)
    }

    /// Where the table in use came from: `none` (nothing yet), `snapshot` or `source`.
    pub fn config_origin(&self) -> &'static str {
        self.shared.origin()
    }
}

impl App {
    /// Checks the config, loads certificates and binds the status listener.
    pub async fn build(cfg: Config, source: Arc<dyn RouteSource>) -> Result<App, RouterError> {
        cfg.validate()?;
        let status_token = cfg.status_token()?.as_deref().map(status::token_digest);
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
            pool::IdleLimits {
                per_backend: cfg.limits.max_idle_per_backend,
                total: cfg.limits.max_idle_connections,
            },
            Duration::from_millis(cfg.limits.body_idle_timeout_ms),
            Duration::from_millis(cfg.limits.tunnel_idle_timeout_ms),
        ));
        let (generation, _) = watch::channel(0);
        let (acks, _) = watch::channel(RouterAck {
            version: 1,
            ..RouterAck::default()
        });
        Ok(App {
            cfg,
            status_addr,
            status_listener,
            shared,
            source,
            tls,
            status_token,
            generation,
            acks,
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
            acks: self.acks.subscribe(),
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
            status_token,
            generation,
            acks,
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
            token: status_token,
            acks: acks.subscribe(),
        });
        tokio::spawn(status::serve(
            status_listener,
            status_state,
            shutdown.clone(),
        ));
        let snapshot = cfg.snapshot_file().map(|path| (path, source.origin()));
        let mut compiler = Compiler::new(shared.metrics.clone());
        let mut logged: HashSet<table::Invalid> = HashSet::new();
        let mut drains =
            drain::Drains::new(Duration::from_millis(cfg.limits.backend_drain_deadline_ms));
        let mut install = |compiler: &mut Compiler,
                           listeners: &mut Listeners,
                           drains: &mut drain::Drains| {
            let before = drain::backends_of(&shared.table.load());
            let started = std::time::Instant::now();
            let mut table = compiler.compile();
            let g = table.generation;
            let took = started.elapsed();
            table.compile_ms = took.as_secs_f64() * 1000.0;
            let table = Arc::new(table);
            shared.table.store(table.clone());
            drains.swapped(before, &table);
            listeners.reconcile(&table);
            tracing::debug!(
                generation = g,
                rules = table.rule_count,
                ms = took.as_secs_f64() * 1000.0,
                "Routing table swapped."
            );
            // Each refusal is logged once, when it first appears (not on every rebuild).
            let now: HashSet<table::Invalid> = table.errors.iter().cloned().collect();
            for e in table.errors.iter().filter(|e| !logged.contains(*e)) {
                shared.metrics.invalid_logged.inc();
                tracing::warn!(node = %e.node, version = e.version, error = %e.error,
                    serving_version = ?e.serving_version, "Invalid router configuration node refused: {e}");
            }
            logged = now;
            *ports.lock() = listeners.ports();
            let _ = generation.send(g);
        };
        // Until the source answers, serve the last good configuration saved locally.
        if let Some((path, origin)) = &snapshot {
            match snapshot::load(path, origin) {
                Ok(loaded) => {
                    tracing::info!(path = %path.display(), nodes = loaded.nodes.len(), saved_unix_ms = loaded.saved_unix_ms,
                        "Serving the configuration snapshot until ZooKeeper answers.");
                    compiler.apply(SourceEvent::Reset(loaded.nodes));
                    install(&mut compiler, &mut listeners, &mut drains);
                    shared.set_origin(proxy::ORIGIN_SNAPSHOT);
                }
                Err(snapshot::SnapshotError::Missing(_)) => {
                    tracing::info!(path = %path.display(), "No configuration snapshot yet.");
                }
                Err(e) => tracing::warn!(error = %e, "Configuration snapshot not used."),
            }
        }
        source.report(acks.subscribe());
        let mut events = source.start(shutdown.clone());
        // While backends drain, their counts are read (and the deadline checked) every 200 ms.
        let mut drain_tick = tokio::time::interval(Duration::from_millis(200));
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The generation of the source's configuration (the data version of its `generation` node).
        let mut config_generation: Option<u64> = None;
        // Wakes the loop once a second: a snapshot write that had to wait, ports to open again.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen_reset = false;
        // The source's configuration changed since the snapshot was last written.
        let mut unsaved = false;
        let mut saving: Option<tokio::task::JoinHandle<()>> = None;
        let mut saved_at: Option<std::time::Instant> = None;
        let mut relisten_at = std::time::Instant::now();
        loop {
            let first = tokio::select! {
                ev = events.recv() => match ev { Some(ev) => Some(ev), None => { shutdown.cancelled().await; break } },
                _ = tick.tick() => None,
                _ = drain_tick.tick(), if !drains.is_empty() => None,
                _ = shutdown.cancelled() => break,
            };
            let mut changed = false;
            let mut batch = first.into_iter().collect::<Vec<_>>();
            while let Ok(ev) = events.try_recv() {
                batch.push(ev);
            }
            let mut reset = false;
            for ev in batch {
                match ev {
                    SourceEvent::Connected(c) => shared.connected.store(c, Relaxed),
                    ev => {
                        config_generation = generation_after(&ev, config_generation);
                        reset |= matches!(ev, SourceEvent::Reset(_));
                        changed |= compiler.apply(ev);
                    }
                }
            }
            if reset && !seen_reset {
                seen_reset = true;
                // The source's view replaces the snapshot's, even when they are the same.
                shared.set_origin(proxy::ORIGIN_SOURCE);
                unsaved = true;
            }
            if changed || (seen_reset && *generation.borrow() == 0) {
                install(&mut compiler, &mut listeners, &mut drains);
                shared.set_origin(proxy::ORIGIN_SOURCE);
                unsaved |= seen_reset;
            } else if !listeners.failed.lock().is_empty()
                && relisten_at.elapsed() >= Duration::from_secs(5)
            {
                // Ports that could not be opened are tried again every 5 s.
                relisten_at = std::time::Instant::now();
                listeners.reconcile(&shared.table.load());
                *ports.lock() = listeners.ports();
            }
            // What the manager reads: the generation now in use (only once the source's configuration
            // is), and what is still open to backends that left the pools.
            let served = if seen_reset { config_generation } else { None };
            let draining = drains.tick();
            acks.send_if_modified(|a| {
                let same = a.generation == served
                    && a.draining.len() == draining.len()
                    && a.draining.iter().zip(&draining).all(|(x, y)| {
                        (&x.pool, &x.backend, x.in_flight, x.tunnels, x.closing)
                            == (&y.pool, &y.backend, y.in_flight, y.tunnels, y.closing)
                    });
                if !same {
                    a.generation = served;
                    a.draining = draining;
                }
                !same
            });
            // At most one snapshot write at a time, and one a second while changes keep coming.
            if unsaved
                && saving.as_ref().is_none_or(|t| t.is_finished())
                && saved_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                && let Some((path, origin)) = &snapshot
            {
                unsaved = false;
                saved_at = Some(std::time::Instant::now());
                saving = Some(spawn_save(
                    path.clone(),
                    origin.clone(),
                    compiler.effective(),
                ));
            }
        }
        if let Some(t) = saving.take() {
            let _ = t.await;
        }
        if unsaved && let Some((path, origin)) = &snapshot {
            let _ = spawn_save(path.clone(), origin.clone(), compiler.effective()).await;
        }
        listeners.shutdown().await;
        workers.stop().await;
        tracing::info!("Router stopped.");
    }
}

/// The configuration generation after `ev`: the data version of the `generation` node (a path relative
/// to the router's subtree; see `atlantis_common::zk::layout::GENERATION_NODE`).
fn generation_after(ev: &SourceEvent, current: Option<u64>) -> Option<u64> {
    use atlantis_common::zk::layout::GENERATION_NODE;
    match ev {
        SourceEvent::Reset(map) => map.get(GENERATION_NODE).map(|n| n.version.max(0) as u64),
        SourceEvent::Upsert { path, node } if path == GENERATION_NODE => {
            Some(node.version.max(0) as u64)
        }
        SourceEvent::Remove { path } if path == GENERATION_NODE => None,
        _ => current,
    }
}

/// Writes the snapshot off the control thread; a failure is logged and the router goes on serving.
fn spawn_save(
    path: PathBuf,
    origin: String,
    nodes: BTreeMap<String, atlantis_common::zk::Node>,
) -> tokio::task::JoinHandle<()> {
    // A failure is a warning the first time, then quiet until a save succeeds again.
    static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    tokio::task::spawn_blocking(move || match snapshot::save(&path, &origin, &nodes) {
        Ok(bytes) => {
            if FAILING.swap(false, Relaxed) {
                tracing::info!(path = %path.display(), "Configuration snapshot saved again.");
            }
            tracing::debug!(path = %path.display(), nodes = nodes.len(), bytes, "Configuration snapshot saved.")
        }
        Err(e) if !FAILING.swap(true, Relaxed) => {
            tracing::warn!(error = %e, "Cannot save the configuration snapshot.")
        }
        Err(e) => tracing::debug!(error = %e, "Cannot save the configuration snapshot."),
    })
}
