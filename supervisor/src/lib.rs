//! Atlantis supervisor: runs app containers on one host for the managers.
//!
//! One supervisor runs per host. Managers call its HTTP/JSON API ([`api`]) to deploy container specs and
//! tear them down; the supervisor runs them on the Docker Engine ([`runtime`]) with limits and hardening,
//! accounts slots, ports, CPU and memory ([`alloc`]), isolates their egress with iptables ([`firewall`]),
//! tracks each container's lifecycle ([`service`]), registers itself in ZooKeeper and follows the intent
//! there ([`cluster`]), and converges after restarts ([`reconcile`]). Its state is always rebuilt from
//! Docker labels ([`labels`]) plus ZooKeeper, never from a private file.
//!
//! [`App::build`] wires the real parts from a [`Config`]; [`App::build_with`] takes the seams explicitly.
//! The typed client managers use is `atlantis_common::supervisor_client` (feature `client`).

pub mod alloc;
pub mod api;
pub mod cluster;
pub mod config;
pub mod conntrack;
pub mod control_plane;
pub mod dependencies;
pub mod error;
pub mod exec;
pub mod firewall;
pub mod health;
pub mod labels;
pub mod metrics;
pub mod reconcile;
pub mod runtime;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atlantis_common::zk::Coord;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use service::Supervisor;

use crate::cluster::{Cluster, Standalone, ZkCluster};
use crate::control_plane::ControlPlane;
use crate::firewall::{Firewall, Grant, Iptables, IptablesOptions, NoFirewall, Policy};
use crate::runtime::ContainerRuntime;
use crate::runtime::docker::DockerRuntime;

/// Why the supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] config::ConfigCheckError),
    /// The token file is missing or too weak.
    #[error("token file {path}: {message}")]
    Token { path: String, message: String },
    /// The cluster token file is not private or holds no usable token.
    #[error("token file {0}")]
    TokenFile(atlantis_common::secret_file::SecretFileError),
    /// The engine is unreachable.
    #[error("docker engine: {0}")]
    Runtime(#[from] runtime::RuntimeError),
    /// ZooKeeper is unreachable.
    #[error("zookeeper: {0}")]
    Zk(#[from] atlantis_common::zk::CoordError),
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Rebuilding state failed.
    #[error("cannot rebuild state: {0}")]
    Rebuild(#[from] error::ApiError),
}

/// A running supervisor.
pub struct App {
    /// The API's bound address.
    pub addr: SocketAddr,
    /// The service (tests inspect it).
    pub supervisor: Arc<Supervisor>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    coord: Option<Coord>,
}

/// Reads and checks the cluster token (private file, one token: `atlantis_common::secret_file`).
pub fn read_token(path: &std::path::Path) -> Result<String, BuildError> {
    atlantis_common::secret_file::read_token(path).map_err(BuildError::TokenFile)
}

/// The firewall settings of a (checked) configuration: the policy refuses the always-refused networks,
/// the configured cluster networks and the container network.
pub fn iptables_options(cfg: &Config) -> IptablesOptions {
    let f = &cfg.firewall;
    let mut nets: Vec<_> = f
        .cluster_networks
        .iter()
        .map(|n| config::parse_cidr(n).expect("checked"))
        .collect();
    nets.push((cfg.docker.subnet, cfg.docker.prefix_len));
    let grants: Vec<Grant> = f
        .allow
        .iter()
        .map(|g| g.parse().expect("checked"))
        .collect();
    IptablesOptions {
        iptables: f.iptables.clone(),
        restore: f.iptables_restore.clone(),
        conntrack: f.conntrack.clone(),
        ip: f.ip.clone(),
        netns: f.netns.clone(),
        forward_chain: f.forward_chain.clone(),
        policy: Policy::new(&nets, f.egress == config::Egress::Deny, grants),
    }
}

/// The longest a start waits for the control-plane addresses before installing rules (the rest follow
/// as soon as they are known).
const CONTROL_PLANE_START_WAIT: Duration = Duration::from_secs(10);

/// The control-plane hosts the configuration names: the ZooKeeper servers, the registry of
/// `docker.registry_auth`, and `firewall.control_plane`.
pub fn control_plane_targets(cfg: &Config) -> Vec<control_plane::Target> {
    let mut out = Vec::new();
    if let Some(zk) = &cfg.zookeeper {
        out.extend(control_plane::zk_server_targets(&zk.servers));
    }
    let names = cfg
        .docker
        .registry_auth
        .iter()
        .map(|a| &a.server)
        .chain(&cfg.firewall.control_plane);
    out.extend(names.filter_map(|h| control_plane::string_target(&format!("x://{h}"))));
    out
}

/// Applies every change of the control-plane addresses to the firewall at once (the reconcile loop
/// retries a failed sync with the new addresses already in place).
async fn follow_control_plane(
    mut rx: tokio::sync::watch::Receiver<Option<std::collections::BTreeSet<std::net::Ipv4Addr>>>,
    supervisor: Arc<Supervisor>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let Some(set) = rx.borrow_and_update().clone() else {
            continue;
        };
        let set: Vec<_> = set.into_iter().collect();
        if supervisor.firewall.set_control_plane(&set)
            && let Err(e) = supervisor.sync_firewall().await
        {
            tracing::error!(error = %e, "Cannot install the new control-plane refusals; the reconcile loop retries.");
        }
    }
}

impl App {
    /// Connects to Docker (and ZooKeeper when configured), rebuilds state, binds the API and starts the
    /// background loops.
    pub async fn build(cfg: Config) -> Result<App, BuildError> {
        cfg.check()?;
        let token = read_token(&cfg.token_file)?;
        let runtime = DockerRuntime::connect(
            &cfg.docker.socket,
            Duration::from_millis(cfg.docker.api_timeout_ms),
            Duration::from_millis(cfg.docker.pull_timeout_ms),
        )
        .await?;
        let runtime = match &cfg.docker.registry_auth {
            Some(a) => {
                let password =
                    std::fs::read_to_string(&a.password_file).map_err(|e| BuildError::Token {
                        path: a.password_file.display().to_string(),
                        message: format!("registry password: {e}"),
                    })?;
                runtime.with_registry_auth(&a.server, &a.username, password.trim())
            }
            None => runtime,
        };
        let firewall: Arc<dyn Firewall> = if cfg.firewall.enabled {
            let opts = iptables_options(&cfg);
            let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            for ns in firewall::refused_resolvers(&opts.policy, &resolv) {
                tracing::warn!(
                    %ns,
                    "Containers' DNS lookups through this nameserver of the host will be refused: add \"{ns}:53/udp\" and \"{ns}:53/tcp\" to firewall.allow."
                );
            }
            Arc::new(Iptables::new(opts))
        } else {
            tracing::warn!("Firewall disabled: containers are NOT isolated.");
            Arc::new(NoFirewall)
        };
        let (cluster, coord): (Arc<dyn Cluster>, Option<Coord>) = match &cfg.zookeeper {
            Some(zk) => {
                let coord = Coord::connect(zk.clone()).await?;
                (
                    Arc::new(ZkCluster::new(coord.clone(), cfg.host.clone())),
                    Some(coord),
                )
            }
            None => {
                tracing::warn!(
                    "No ZooKeeper configured: running standalone (no registration, no intent)."
                );
                (Arc::new(Standalone), None)
            }
        };
        let zk = coord.clone();
        let mut app =
            App::build_inner(cfg, token, Arc::new(runtime), firewall, cluster, zk).await?;
        app.coord = coord;
        Ok(app)
    }

    /// As [`App::build`], with the seams given (the control plane is then only what the config names).
    pub async fn build_with(
        cfg: Config,
        token: String,
        runtime: Arc<dyn ContainerRuntime>,
        firewall: Arc<dyn Firewall>,
        cluster: Arc<dyn Cluster>,
    ) -> Result<App, BuildError> {
        App::build_inner(cfg, token, runtime, firewall, cluster, None).await
    }

    async fn build_inner(
        cfg: Config,
        token: String,
        runtime: Arc<dyn ContainerRuntime>,
        firewall: Arc<dyn Firewall>,
        cluster: Arc<dyn Cluster>,
        coord: Option<Coord>,
    ) -> Result<App, BuildError> {
        cfg.check()?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| BuildError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| BuildError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let max_body = cfg.max_body_bytes;
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let advertise = cfg
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        let stop = CancellationToken::new();
        let tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let cert = atlantis_common::tls::ReloadingCert::load(&t.cert_file, &t.key_file)
                    .map_err(|e| BuildError::Tls(e.to_string()))?;
                cert.watch(Duration::from_millis(t.reload_interval_ms), stop.clone());
                Some(
                    atlantis_common::tls::server_config(cert, Some(&t.client_ca_file))
                        .map_err(|e| BuildError::Tls(e.to_string()))?,
                )
            }
        };
        let supervisor = Arc::new(Supervisor::new(
            Arc::new(cfg),
            runtime,
            firewall,
            cluster,
            metrics::SupervisorMetrics::new(),
        ));
        *supervisor
            .advertise_url
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = advertise;
        let mut tasks = Vec::new();
        if supervisor.cfg.firewall.enabled {
            let cp = ControlPlane::start(
                coord,
                control_plane_targets(&supervisor.cfg),
                supervisor.registries(),
                stop.clone(),
            );
            let first: Vec<_> = cp
                .ready(CONTROL_PLANE_START_WAIT)
                .await
                .into_iter()
                .collect();
            tracing::info!(addresses = ?first, "Control-plane addresses refused to containers.");
            supervisor.firewall.set_control_plane(&first);
            tasks.push(tokio::spawn(follow_control_plane(
                cp.subscribe(),
                supervisor.clone(),
                stop.clone(),
            )));
        }
        supervisor.rebuild().await?;
        supervisor.refresh_registration().await;

        let router = api::router(api::ApiState {
            supervisor: supervisor.clone(),
            token: Arc::new(token),
            max_body,
            mtls: tls.is_some(),
        });
        let server_stop = stop.clone();
        let server = tokio::spawn(async move {
            if let Some(tls) = tls {
                atlantis_common::tls::serve(listener, tls, router, server_stop).await;
                return;
            }
            let shutdown = async move { server_stop.cancelled().await };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "API server failed.");
            }
        });
        let loops = tokio::spawn(supervisor.clone().run_loops(stop.clone()));
        tracing::info!(%addr, host = %supervisor.cfg.host, zone = %supervisor.cfg.zone, "Supervisor ready.");
        tasks.extend([server, loops]);
        Ok(App {
            addr,
            supervisor,
            stop,
            tasks,
            coord: None,
        })
    }

    /// The ZooKeeper client, when one is configured (tests expire its session).
    pub fn coord(&self) -> Option<&Coord> {
        self.coord.as_ref()
    }

    /// Stops serving and deregisters; containers keep running (a restarted supervisor adopts them).
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            // Streaming log responses may keep the server open; bound the wait.
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.supervisor.cluster.deregister().await;
        if let Some(c) = self.coord {
            c.close();
        }
        tracing::info!("Supervisor stopped.");
    }
}
