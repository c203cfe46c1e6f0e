//! The router's own configuration (TOML file plus `ATLANTIS_ROUTER__...` overrides).
//!
//! The routing table itself is not here: it comes from ZooKeeper (`router/<kind>/...`). This file says
//! where to find ZooKeeper, where the status listener binds, which certificates to serve, and the limits
//! that protect the router from slow or oversized clients.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use atlantis_common::zk::{RouterKind, ZkConfig};
use serde::Deserialize;

/// Router configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Status listener (`/healthz`, `/statusz.json`, `/metrics`, `/trace`); default `127.0.0.1:8080`.
    #[serde(default = "default_status_addr")]
    pub status_addr: SocketAddr,
    /// File holding the bearer token every status path but `/healthz` requires (mode 0600 or
    /// stricter). Required when `status_addr` is not a loopback address.
    #[serde(default)]
    pub status_token_file: Option<PathBuf>,
    /// Address the routed ports bind on.
    #[serde(default = "default_listen_ip")]
    pub listen_ip: IpAddr,
    /// The IPv4 address registered as where this router's routed ports are reachable (what the
    /// manager hands to containers as `ATLANTIS_DEP_<APP>` for internal apps). Default: `listen_ip`
    /// when it is a specific IPv4 address. Internal routers need one.
    #[serde(default)]
    pub advertise_ip: Option<Ipv4Addr>,
    /// Which fleet this router belongs to: `internal` or `external`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Zone of this router (for its registration).
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Host name used in the registration (default: the machine's host name).
    #[serde(default)]
    pub host: Option<String>,
    /// Tokio worker threads (0: one per core).
    #[serde(default)]
    pub workers: usize,
    /// Log one structured line per request (target `atlantis_router::access`).
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Status of the answer when no rule matches.
    #[serde(default = "default_not_found")]
    pub not_found_status: u16,
    /// Where the routing table comes from.
    pub zookeeper: Option<ZkConfig>,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// Certificates for TLS ports.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Where the last good configuration is saved, to be served at start while ZooKeeper is away
    /// (default `/var/lib/atlantis/router-<kind>.snapshot.json`; an empty path turns snapshots off).
    #[serde(default)]
    pub snapshot_path: Option<PathBuf>,
}

/// Bounds that keep a slow or hostile client from pinning the router.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line plus headers), HTTP/1 read buffer and HTTP/2 header list.
    pub max_header_bytes: usize,
    /// Time allowed to send a complete request head, the idle time allowed between requests on a
    /// keep-alive connection, and the time an HTTP/2 connection may stay with no stream open.
    pub header_read_timeout_ms: u64,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout_ms: u64,
    /// How long a closing listener (or a stopping router) waits for open connections.
    pub drain_timeout_ms: u64,
    /// Idle connections kept per backend and worker; 0 (the default): as many as the peak concurrency
    /// used, within `max_idle_connections`.
    pub max_idle_per_backend: usize,
    /// Idle backend connections kept by the whole router (the memory bound of the idle pools).
    pub max_idle_connections: usize,
    /// Concurrent HTTP/2 streams per client connection.
    pub h2_max_streams: u32,
    /// Open client connections per listener and worker (WebSocket tunnels included); beyond it new
    /// connections wait to be accepted.
    pub max_connections: usize,
    /// Time a response may go without progress once its head is sent (a backend that stops sending
    /// mid-body, a client that stops reading) before both connections are closed.
    pub body_idle_timeout_ms: u64,
    /// Time an upgraded connection (WebSocket) may go without a byte either way before it is closed.
    pub tunnel_idle_timeout_ms: u64,
    /// Time a backend that left every pool keeps what is open to it (requests in flight, WebSocket and
    /// other tunnels, streamed answers); then tunnels get a close (1001 going away) and streamed bodies
    /// end cleanly. Keep it at most the managers' `deploy.drain_deadline_ms`, which stop the container.
    pub backend_drain_deadline_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            header_read_timeout_ms: 15_000,
            tls_handshake_timeout_ms: 10_000,
            drain_timeout_ms: 15_000,
            max_idle_per_backend: 0,
            max_idle_connections: 32_768,
            h2_max_streams: 256,
            max_connections: 50_000,
            body_idle_timeout_ms: 60_000,
            tunnel_idle_timeout_ms: 3_600_000,
            backend_drain_deadline_ms: 30_000,
        }
    }
}

/// TLS certificates, chosen by SNI.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates; the first is the default for clients that send no (or an unknown) server name.
    #[serde(default)]
    pub certs: Vec<CertConfig>,
    /// How often the files are checked for changes.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
}

/// One certificate chain and key, and the server names it answers for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// Server names (exact, or `*.example.com` for one level of subdomain).
    pub names: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

fn default_status_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)
}
fn default_listen_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn default_kind() -> String {
    "external".into()
}
fn default_zone() -> String {
    "default".into()
}
fn yes() -> bool {
    true
}
fn default_not_found() -> u16 {
    404
}
fn default_reload_ms() -> u64 {
    5_000
}

fn usable_advertise(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
}

fn read_token(path: &Path) -> Result<String, ConfigError> {
    atlantis_common::secret_file::read_token(path)
        .map_err(|e| ConfigError::Invalid(format!("status_token_file {e}")))
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has a bad value.
    #[error("invalid router config: {0}")]
    Invalid(String),
}

impl Config {
    /// A config with every default, for tests and embedding.
    pub fn for_tests() -> Config {
        Config {
            status_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            status_token_file: None,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise_ip: None,
            kind: default_kind(),
            zone: default_zone(),
            host: Some("test-router".into()),
            workers: 0,
            access_log: false,
            not_found_status: 404,
            zookeeper: None,
            limits: Limits::default(),
            tls: TlsConfig::default(),
            snapshot_path: Some(PathBuf::new()),
        }
    }

    /// The snapshot file, `None` when snapshots are off.
    pub fn snapshot_file(&self) -> Option<PathBuf> {
        match &self.snapshot_path {
            None => Some(PathBuf::from(format!(
                "/var/lib/atlantis/router-{}.snapshot.json",
                self.kind
            ))),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
        }
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.router_kind()?;
        self.zone
            .parse::<atlantis_common::ZoneName>()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if !(400..=599).contains(&self.not_found_status) {
            return Err(ConfigError::Invalid(
                "not_found_status must be 400-599".into(),
            ));
        }
        let l = &self.limits;
        if l.max_header_bytes < 8192 || l.max_header_bytes > 1 << 24 {
            return Err(ConfigError::Invalid(
                "limits.max_header_bytes must be 8192 to 16777216".into(),
            ));
        }
        if l.header_read_timeout_ms == 0
            || l.tls_handshake_timeout_ms == 0
            || l.body_idle_timeout_ms == 0
            || l.tunnel_idle_timeout_ms == 0
            || l.max_connections == 0
        {
            return Err(ConfigError::Invalid(
                "limits: timeouts and max_connections must be positive".into(),
            ));
        }
        if l.backend_drain_deadline_ms > 86_400_000 {
            return Err(ConfigError::Invalid(
                "limits.backend_drain_deadline_ms must be at most 86400000 (a day)".into(),
            ));
        }
        for c in &self.tls.certs {
            if c.names.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "tls cert {} names no server",
                    c.cert.display()
                )));
            }
        }
        if !self.status_addr.ip().is_loopback() && self.status_token_file.is_none() {
            return Err(ConfigError::Invalid(format!(
                "status_addr {} is not a loopback address, so its pages (backends, rules, metrics) \
                 need a token: set status_token_file to a file of mode 0600 holding it, or bind \
                 status_addr to 127.0.0.1",
                self.status_addr
            )));
        }
        if let Some(ip) = self.advertise_ip
            && !usable_advertise(ip)
        {
            return Err(ConfigError::Invalid(format!(
                "advertise_ip {ip} is not an address other hosts or containers can reach \
                 (unspecified, loopback, multicast or broadcast)"
            )));
        }
        if self.router_kind()? == RouterKind::Internal && self.advertised_ip().is_none() {
            return Err(ConfigError::Invalid(format!(
                "an internal router registers the address where the zone's containers reach it, and \
                 listen_ip {} is not one: set listen_ip to that IPv4 address of this host, or set \
                 advertise_ip",
                self.listen_ip
            )));
        }
        Ok(())
    }

    /// The address this router registers as where its routed ports are reachable: `advertise_ip`,
    /// else `listen_ip` when it is a specific, non-loopback IPv4 address.
    pub fn advertised_ip(&self) -> Option<Ipv4Addr> {
        if let Some(ip) = self.advertise_ip {
            return usable_advertise(ip).then_some(ip);
        }
        match self.listen_ip {
            IpAddr::V4(ip) if usable_advertise(ip) => Some(ip),
            _ => None,
        }
    }

    /// The registration document (`routers/<kind>/<zone>/<host>`): host, zone, the status address
    /// and, when there is one, the `address` containers and clients reach the routed ports on.
    pub fn registration(&self, host: &str, zone: &str, status: SocketAddr) -> serde_json::Value {
        let mut r = serde_json::json!({
            "version": 1, "host": host, "zone": zone, "status_addr": status.to_string(),
            "status_token": self.status_token_file.is_some(),
            "router_version": env!("CARGO_PKG_VERSION"),
        });
        if let Some(ip) = self.advertised_ip() {
            r["address"] = serde_json::Value::String(ip.to_string());
        }
        r
    }

    /// Reads and checks the status token: the file must not be readable by group or others, and
    /// the token is at least 16 bytes once trimmed. `None` when no file is configured.
    pub fn status_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.status_token_file else {
            return Ok(None);
        };
        read_token(path).map(Some)
    }

    /// The fleet kind.
    pub fn router_kind(&self) -> Result<RouterKind, ConfigError> {
        self.kind
            .parse()
            .map_err(|e: atlantis_common::NameError| ConfigError::Invalid(e.to_string()))
    }

    /// The registration host name.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "localhost".into())
        })
    }
}
