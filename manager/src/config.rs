//! The manager's configuration (TOML, overridable by `ATLANTIS_MANAGER__<KEY>` variables).

use std::net::SocketAddr;
use std::path::PathBuf;

use atlantis_common::HostName;
use atlantis_common::zk::{RouterKind, ZkConfig};
use serde::Deserialize;

/// Everything the manager needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the API listens. Port 0 picks a free port (tests).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// This manager's name in ZooKeeper.
    pub host: HostName,
    /// The region's ZooKeeper ensemble.
    pub zookeeper: ZkConfig,
    /// History database URL: `sqlite://path` (default `sqlite://<data_dir>/history.db`) or
    /// `postgres://user@host/db`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Where the SQLite history lives by default.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// File holding the 32-byte AEAD key (64 hex digits) that encrypts dependency data at rest.
    pub secret_key_file: PathBuf,
    /// File holding the cluster token supervisors accept.
    pub supervisor_token_file: PathBuf,
    /// Where images are found.
    pub registry: RegistryConfig,
    /// How deployed apps are routed.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Deploy timings.
    #[serde(default)]
    pub deploy: DeployConfig,
    /// Largest accepted request body, bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// The leader's reconciliation (dead managers' tasks, dead hosts, lost containers).
    #[serde(default)]
    pub ha: HaConfig,
    /// Who may call the API (tokens, LDAP, admin token).
    #[serde(default)]
    pub auth: crate::auth::config::AuthConfig,
    /// HTTPS on the API (rustls); certificate files are reloaded when they change. Without it the API
    /// is plain HTTP: put it behind a TLS terminator, or keep it on loopback.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Mutual TLS to supervisors that serve `https://`: the cluster CA and this manager's client
    /// certificate.
    #[serde(default)]
    pub supervisor_tls: Option<ClientTlsConfig>,
}

/// The leader's reconciliation settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// Time between two passes.
    pub interval_ms: u64,
    /// How long a supervisor's registration (or a serving container on a live host) must be gone
    /// before its containers are placed again elsewhere.
    pub host_grace_ms: u64,
    /// At most this many containers are re-placed per pass.
    pub max_moves_per_pass: usize,
    /// An app.env whose containers were re-placed is left alone this long.
    pub cooldown_ms: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            interval_ms: 2_000,
            host_grace_ms: 30_000,
            max_moves_per_pass: 20,
            cooldown_ms: 10_000,
        }
    }
}

/// A server certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// How often the files are checked for a change, ms.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
}

/// A client identity and the CA it trusts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM CA certificates that sign the servers' certificates (the cluster CA).
    pub ca_file: PathBuf,
    /// PEM client certificate.
    pub cert_file: PathBuf,
    /// Its PEM private key.
    pub key_file: PathBuf,
}

fn default_reload_ms() -> u64 {
    10_000
}

/// How image references are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageRef {
    /// `<pull_host>/apps/<app>@sha256:<digest>`: what runs is exactly what was resolved (production).
    #[default]
    Digest,
    /// `<pull_host>/apps/<app>:<sha>` after checking that the tag exists (hosts that hold images
    /// preloaded under that tag, such as test hosts without a reachable registry).
    Tag,
}

/// The OCI registry the manager resolves `apps/<app>:<sha>` in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL the manager queries (`http://127.0.0.1:5000`).
    pub url: String,
    /// The registry host as supervisors pull from it (`registry.local:5000`); default: the URL's host.
    #[serde(default)]
    pub pull_host: Option<String>,
    /// Basic auth user for reads.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding that user's password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Reference form given to supervisors.
    #[serde(default)]
    pub image_ref: ImageRef,
}

/// Where apps are published on the routers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The router fleet of external apps.
    pub kind: RouterKind,
    /// The trie that host rules of deployed apps are appended to (ports point at it).
    pub trie: String,
    /// Apps answer at `<app>.<env>.<domain>`.
    pub domain: String,
    /// Lowest stable port of an internal app.env on the internal routers.
    pub internal_port_min: u16,
    /// Highest stable port.
    pub internal_port_max: u16,
    /// The routers' status token (their `status_token_file`), sent to every router status listener
    /// read after a switch. Needed when routers bind their status listener off loopback.
    pub router_status_token_file: Option<PathBuf>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            kind: RouterKind::External,
            trie: "apps".into(),
            domain: "apps.localhost".into(),
            internal_port_min: 49152,
            internal_port_max: 65535,
            router_status_token_file: None,
        }
    }
}

/// Deploy timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// After the switch, how long to wait at most for every router to see the new backends healthy.
    pub switch_wait_ms: u64,
    /// After a teardown removes an app.env's routing, how long in-flight requests get before its
    /// containers stop.
    pub drain_ms: u64,
    /// After old backends leave the pool, the longest wait for every router to report nothing open to
    /// them (requests, tunnels) before their containers stop. Routers close what is left at their own
    /// `limits.backend_drain_deadline_ms` (keep it at most this); the manager waits 3 s more for them
    /// to report it.
    pub drain_deadline_ms: u64,
    /// Timeout of one supervisor deploy call (pull + start + health).
    pub start_timeout_ms: u64,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            switch_wait_ms: 15_000,
            drain_ms: 5_000,
            drain_deadline_ms: 30_000,
            start_timeout_ms: 600_000,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7700))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/atlantis/manager")
}

fn default_max_body() -> usize {
    1024 * 1024
}

impl Config {
    /// The history database URL (the SQLite file under `data_dir` by default).
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("history.db").display()))
    }
}
