//! The supervisor's configuration: a TOML file plus `ATLANTIS_SUPERVISOR__...` environment overrides.
//!
//! Everything has a default except the host's identity (`host`, `zone`, `region`) and the token file.
//! [`Config::check`] refuses combinations that cannot work (a port range past 65535, a container network
//! too small for the slots) at start, with a message naming the key.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use atlantis_common::api::supervisor::Resources;
use atlantis_common::zk::ZkConfig;
use atlantis_common::{HostName, RegionName, ZoneName};
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the API listens (`127.0.0.1:0` in tests).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The API's base URL as managers reach it; default `http://<bound address>`.
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// This host's name, as registered in ZooKeeper.
    pub host: HostName,
    /// This host's zone.
    pub zone: ZoneName,
    /// The region.
    pub region: RegionName,
    /// File holding the cluster token managers present as `Authorization: Bearer <token>`.
    pub token_file: PathBuf,
    /// Where per-container config files are written (bind-mounted read-only into containers).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Docker Engine settings.
    #[serde(default)]
    pub docker: DockerConfig,
    /// Total capacity offered to containers.
    #[serde(default)]
    pub capacity: CapacityConfig,
    /// Host ports.
    #[serde(default)]
    pub ports: PortsConfig,
    /// Egress isolation.
    #[serde(default)]
    pub firewall: FirewallConfig,
    /// Container limits and hardening.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// ZooKeeper; without it the supervisor runs standalone (no registration, every Atlantis container
    /// on the host is wanted). Production always sets it.
    #[serde(default)]
    pub zookeeper: Option<ZkConfig>,
    /// How long a container that ZooKeeper no longer wants may live before it is removed.
    #[serde(default = "default_orphan_grace_ms")]
    pub orphan_grace_ms: u64,
    /// Period of the reconcile loop (orphans, firewall, registration).
    #[serde(default = "default_reconcile_ms")]
    pub reconcile_interval_ms: u64,
    /// Largest accepted request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Mutual TLS on the API: only clients (managers) with a certificate of the cluster CA get in, and
    /// the cluster token is then not needed. Without it the API is plain HTTP guarded by the token.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// The API's TLS files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of this supervisor.
    pub cert_file: PathBuf,
    /// Its PEM private key.
    pub key_file: PathBuf,
    /// PEM CA certificates that sign the managers' client certificates (the cluster CA).
    pub client_ca_file: PathBuf,
    /// How often the certificate files are checked for a change, ms.
    #[serde(default = "default_tls_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_tls_reload_ms() -> u64 {
    10_000
}

/// Docker Engine settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// The engine's unix socket.
    pub socket: PathBuf,
    /// The bridge network containers join (created when missing).
    pub network: String,
    /// Its IPv4 subnet; slot `i` gets address `.2 + i`, the gateway is `.1`.
    pub subnet: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// Longest time allowed for an image pull.
    pub pull_timeout_ms: u64,
    /// Timeout of one Docker API call.
    pub api_timeout_ms: u64,
    /// Credentials for pulls from our registry (basic auth), when it requires them.
    pub registry_auth: Option<RegistryAuth>,
}

/// Basic-auth credentials for one registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// The registry host as it appears in image references (`registry.example:5000`).
    pub server: String,
    /// User name.
    pub username: String,
    /// File holding the password (trimmed).
    pub password_file: PathBuf,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: PathBuf::from("/var/run/docker.sock"),
            network: "atlantis".into(),
            subnet: Ipv4Addr::new(172, 30, 0, 0),
            prefix_len: 16,
            pull_timeout_ms: 300_000,
            api_timeout_ms: 120_000,
            registry_auth: None,
        }
    }
}

/// Total capacity offered to containers.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Container slots.
    pub slots: u32,
    /// CPU in thousandths of a core.
    pub cpu_millis: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            slots: 20,
            cpu_millis: 4000,
            memory_mb: 4096,
        }
    }
}

impl From<CapacityConfig> for Resources {
    fn from(c: CapacityConfig) -> Resources {
        Resources {
            slots: c.slots,
            cpu_millis: c.cpu_millis,
            memory_mb: c.memory_mb,
        }
    }
}

/// Host ports: slot `i` owns `min_port + i * per_slot ..` (`per_slot` ports).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortsConfig {
    /// First host port.
    pub min_port: u16,
    /// Host ports per slot (the most ports one container may publish).
    pub per_slot: u16,
    /// Address host ports are published on.
    pub publish_ip: Ipv4Addr,
    /// Address the supervisor uses to health-check published ports; default `publish_ip`, or
    /// 127.0.0.1 when that is 0.0.0.0.
    pub health_ip: Option<Ipv4Addr>,
}

impl Default for PortsConfig {
    fn default() -> Self {
        PortsConfig {
            min_port: 61000,
            per_slot: 8,
            publish_ip: Ipv4Addr::UNSPECIFIED,
            health_ip: None,
        }
    }
}

impl PortsConfig {
    /// The address health checks connect to.
    pub fn health_ip(&self) -> Ipv4Addr {
        self.health_ip
            .unwrap_or(if self.publish_ip.is_unspecified() {
                Ipv4Addr::LOCALHOST
            } else {
                self.publish_ip
            })
    }
}

/// Egress isolation with iptables (docs/supervisor.md, "Isolation model").
///
/// Whatever is set here, a container is refused every address of the host itself, the RFC 1918
/// networks, 100.64.0.0/10, 169.254.0.0/16, the container network and any published port, unless a
/// declared dependency (or an entry of `allow`) opens an address and port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// Turn isolation off (development only).
    pub enabled: bool,
    /// More address groups (CIDRs such as `203.0.113.0/24`) refused as well: public addresses of other
    /// hosts and infrastructure (ZooKeeper, managers, registries). Private ones are refused anyway.
    pub cluster_networks: Vec<String>,
    /// More control-plane hosts refused to containers whatever their range, as names or addresses
    /// (optionally `:port`; the whole address is refused): a registry or manager behind a load balancer.
    /// The ZooKeeper servers, every registered supervisor, manager and router, and the registry of
    /// `docker.registry_auth` and of every image run here are refused anyway (`crate::control_plane`).
    pub control_plane: Vec<String>,
    /// Public egress: `open` (default) or `deny` (containers reach only what they declared).
    pub egress: Egress,
    /// Addresses and ports every container may reach, as `ADDRESS:PORT/tcp` or `ADDRESS:PORT/udp`: for
    /// example the DNS resolver the engine forwards containers' lookups to when it is a private address.
    pub allow: Vec<String>,
    /// The `iptables-restore` program (Debian's default is the nft backend).
    pub iptables_restore: PathBuf,
    /// The `iptables` program.
    pub iptables: PathBuf,
    /// The `conntrack` program (Debian package `conntrack`): cuts connections the rules refuse.
    pub conntrack: PathBuf,
    /// The `ip` program (lists the host's addresses for the connection cut).
    pub ip: PathBuf,
    /// Run iptables in this network namespace (`/run/netns/NAME`) instead of our own: for an engine that
    /// lives in a namespace of its own (tests, nested setups).
    pub netns: Option<PathBuf>,
    /// The filter chain that forwarded container traffic passes first (Docker's `DOCKER-USER`).
    pub forward_chain: String,
}

/// Public egress of containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Public addresses are reachable.
    #[default]
    Open,
    /// Only declared dependencies and `allow` entries are reachable.
    Deny,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            enabled: true,
            cluster_networks: vec![],
            control_plane: vec![],
            egress: Egress::Open,
            allow: vec![],
            iptables_restore: PathBuf::from("iptables-restore"),
            iptables: PathBuf::from("iptables"),
            conntrack: PathBuf::from("conntrack"),
            ip: PathBuf::from("ip"),
            netns: None,
            forward_chain: "DOCKER-USER".into(),
        }
    }
}

/// Per-container limits and hardening.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// PID limit per container.
    pub pids: i64,
    /// Grace period between SIGTERM and SIGKILL on teardown.
    pub stop_timeout_ms: u64,
    /// Capabilities kept after dropping all (for example `NET_BIND_SERVICE`).
    pub cap_add: Vec<String>,
    /// Docker restart policy name (`unless-stopped`, `always`, `on-failure`, `no`).
    pub restart_policy: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            pids: 256,
            stop_timeout_ms: 10_000,
            cap_add: vec![],
            restart_policy: "unless-stopped".into(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/atlantis/supervisor")
}
fn default_orphan_grace_ms() -> u64 {
    60_000
}
fn default_reconcile_ms() -> u64 {
    10_000
}
fn default_max_body() -> usize {
    4 * 1024 * 1024
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid supervisor config: {key}: {message}")]
pub struct ConfigCheckError {
    /// The key at fault.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Config {
    /// Checks ranges and combinations.
    pub fn check(&self) -> Result<(), ConfigCheckError> {
        let err = |key, message: String| Err(ConfigCheckError { key, message });
        let c = &self.capacity;
        if c.slots == 0 || c.slots > 10_000 {
            return err(
                "capacity.slots",
                format!("must be 1 to 10000, got {}", c.slots),
            );
        }
        let p = &self.ports;
        if p.per_slot == 0 || p.min_port == 0 {
            return err("ports", "min_port and per_slot must be positive".into());
        }
        let last = u32::from(p.min_port) + c.slots * u32::from(p.per_slot) - 1;
        if last > 65535 {
            return err(
                "ports",
                format!("min_port + slots * per_slot reaches {last}, past 65535"),
            );
        }
        let d = &self.docker;
        if !(8..=29).contains(&d.prefix_len) {
            return err("docker.prefix_len", "must be 8 to 29".into());
        }
        let hosts = (1u64 << (32 - d.prefix_len)) - 3;
        if u64::from(c.slots) > hosts {
            return err(
                "docker.subnet",
                format!(
                    "a /{} holds {hosts} containers, fewer than {} slots",
                    d.prefix_len, c.slots
                ),
            );
        }
        if u32::from(d.subnet) & !prefix_mask(d.prefix_len) != 0 {
            return err(
                "docker.subnet",
                format!(
                    "{} is not the start of a /{} network",
                    d.subnet, d.prefix_len
                ),
            );
        }
        for n in &self.firewall.cluster_networks {
            if let Err(m) = parse_cidr(n) {
                return err("firewall.cluster_networks", m);
            }
        }
        for h in &self.firewall.control_plane {
            if crate::control_plane::string_target(&format!("x://{h}")).is_none() {
                return err(
                    "firewall.control_plane",
                    format!(
                        "{h:?}: expected a host name or an IPv4 address, optionally with :PORT"
                    ),
                );
            }
        }
        for g in &self.firewall.allow {
            if let Err(m) = g.parse::<crate::firewall::Grant>() {
                return err("firewall.allow", m);
            }
        }
        if !["no", "always", "unless-stopped", "on-failure"]
            .contains(&self.limits.restart_policy.as_str())
        {
            return err(
                "limits.restart_policy",
                format!("unknown policy {:?}", self.limits.restart_policy),
            );
        }
        if let Some(c) = self
            .limits
            .cap_add
            .iter()
            .find(|c| !c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'))
        {
            return err(
                "limits.cap_add",
                format!("{c:?} is not a capability name like NET_BIND_SERVICE"),
            );
        }
        Ok(())
    }

    /// Orphan grace period.
    pub fn orphan_grace(&self) -> Duration {
        Duration::from_millis(self.orphan_grace_ms)
    }

    /// Reconcile period.
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.reconcile_interval_ms.max(100))
    }
}

/// The network mask of a prefix length.
pub fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// Parses `a.b.c.d/len` (or a bare address, taken as /32) into (network, len).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>()
                .map_err(|_| format!("{s:?}: bad prefix length"))?,
        ),
        None => (s, 32),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?}: not an IPv4 address"))?;
    if len > 32 {
        return Err(format!("{s:?}: prefix length above 32"));
    }
    Ok((Ipv4Addr::from(u32::from(addr) & prefix_mask(len)), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        atlantis_common::config::load_with_env(
            None,
            "X",
            [
                ("X__HOST".to_string(), "h1".to_string()),
                ("X__ZONE".to_string(), "z1".to_string()),
                ("X__REGION".to_string(), "r1".to_string()),
                ("X__TOKEN_FILE".to_string(), "/tmp/t".to_string()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn defaults_are_sane() {
        let c = base();
        c.check().unwrap();
        assert_eq!(c.ports.health_ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(c.limits.restart_policy, "unless-stopped");
        // Safe by default: isolation on, public egress open, nothing granted.
        assert!(c.firewall.enabled);
        assert_eq!(c.firewall.egress, Egress::Open);
        assert!(c.firewall.allow.is_empty());
    }

    #[test]
    fn impossible_configs_are_refused() {
        let mut c = base();
        c.ports.min_port = 65500;
        assert!(c.check().unwrap_err().to_string().contains("past 65535"));
        let mut c = base();
        c.docker.prefix_len = 29;
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("fewer than 20 slots")
        );
        let mut c = base();
        c.firewall.cluster_networks = vec!["10.0.0.0/33".into()];
        assert!(c.check().is_err());
        let mut c = base();
        c.docker.subnet = Ipv4Addr::new(172, 30, 0, 5);
        assert!(c.check().is_err());
        let mut c = base();
        c.firewall.allow = vec!["10.0.0.2:53".into()];
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("firewall.allow")
        );
    }

    #[test]
    fn the_documented_example_loads_and_checks() {
        let dir =
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
        let path = std::path::Path::new(&dir).join("supervisor.example.toml");
        let c: Config = atlantis_common::config::load_with_env(Some(&path), "X", []).unwrap();
        c.check().unwrap();
        assert_eq!(c.capacity.slots, 20);
        assert_eq!(
            c.zookeeper.as_ref().unwrap().servers,
            "zk1:2181,zk2:2181,zk3:2181"
        );
        assert!(c.docker.registry_auth.is_none());
        assert!(c.firewall.enabled);
        assert_eq!(c.firewall.egress, Egress::Open);
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.1.2.3/8").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 0), 8)
        );
        assert_eq!(
            parse_cidr("10.1.2.3").unwrap(),
            (Ipv4Addr::new(10, 1, 2, 3), 32)
        );
        assert!(parse_cidr("10.1.2/8").is_err());
        assert!(parse_cidr("x").is_err());
    }
}
