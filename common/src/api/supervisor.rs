//! Wire types of the supervisor API (managers are its only callers), and the supervisor's ZooKeeper record.
//!
//! Every request type validates itself with `validate()`, so the manager can refuse a bad spec before it
//! ever reaches a host, and the supervisor checks again at its boundary. Names are the validated newtypes
//! of [`crate::names`]; everything else is bounded here (counts, lengths, ranges).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::names::{AppName, ContainerId, EnvName, HostName, RegionName, Sha, ZoneName};

/// At most this many container ports per container.
pub const MAX_PORTS: usize = 8;
/// At most this many environment variables.
pub const MAX_ENV_VARS: usize = 256;
/// At most this many bytes per environment variable value.
pub const MAX_ENV_VALUE: usize = 32 * 1024;
/// At most this many bytes of config data.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// At most this many declared dependencies.
pub const MAX_DEPENDENCIES: usize = 64;
/// At most this many command arguments, each at most [`MAX_ARG_BYTES`].
pub const MAX_ARGS: usize = 64;
/// At most this many bytes per command argument.
pub const MAX_ARG_BYTES: usize = 4096;
/// The smallest memory limit a container may ask for, in MiB.
pub const MIN_MEMORY_MB: u64 = 4;

/// What a manager asks a supervisor to run: one container of one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// `<app>-<sha7>-<env>-<rand6>`, chosen by the manager (it writes the instance node first).
    pub container_id: ContainerId,
    /// The application.
    pub app: AppName,
    /// The commit being run.
    pub sha: Sha,
    /// The environment.
    pub env: EnvName,
    /// Image reference, normally by digest: `<registry>/apps/<app>@sha256:<64 hex>`. A tag is accepted
    /// too (`<name>:<tag>`), which only makes sense for images present on the host.
    pub image: String,
    /// CPU limit in thousandths of a core (1000 = one core).
    pub cpu_millis: u32,
    /// Memory limit in MiB; swap is disabled.
    pub memory_mb: u64,
    /// TCP ports the container listens on; the first is the primary (HTTP) port. Each gets a host port.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Extra environment variables (names `[A-Za-z_][A-Za-z0-9_]*`, not starting with `ATLANTIS_`).
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// Config data, mounted read-only at `/etc/atlantis/config` inside the container.
    #[serde(default)]
    pub config: Option<String>,
    /// Resolved dependencies: the only cluster addresses the container may reach.
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    /// How the supervisor decides the container is healthy.
    #[serde(default)]
    pub health: HealthCheck,
    /// Command to run instead of the image's default.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Mount the root filesystem read-only (a tmpfs is mounted at `/tmp`).
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// Let processes open unprivileged ICMP echo ("ping") sockets; closed by default. Left out of the
    /// JSON when false, so a spec that does not ask reads the same to an older supervisor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_ping: bool,
}

/// Checks a list of dependencies: at most [`MAX_DEPENDENCIES`], valid names, ports 1-65535, unicast
/// addresses. Field names are `dependencies[i].<field>`.
pub fn validate_dependencies(deps: &[Dependency]) -> Result<(), SpecError> {
    if deps.len() > MAX_DEPENDENCIES {
        return Err(bad(
            "dependencies",
            format!("at most {MAX_DEPENDENCIES} dependencies"),
        ));
    }
    for (i, d) in deps.iter().enumerate() {
        let field = format!("dependencies[{i}]");
        if d.name.parse::<AppName>().is_err() {
            return Err(bad(
                format!("{field}.name"),
                "must match [a-z][a-z0-9-]{0,62}",
            ));
        }
        if d.port == 0 {
            return Err(bad(
                format!("{field}.port"),
                "port 0 is out of range 1-65535",
            ));
        }
        if d.address.is_unspecified() || d.address.is_broadcast() || d.address.is_multicast() {
            return Err(bad(
                format!("{field}.address"),
                format!("{} is not a unicast address", d.address),
            ));
        }
    }
    Ok(())
}

/// The body of `PUT /v1/containers/{id}/dependencies`: the container's whole new set of dependencies
/// (what its firewall chain allows from then on; its environment keeps what it was started with).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependenciesRequest {
    /// Every dependency the container may reach (an empty list takes them all away).
    pub dependencies: Vec<Dependency>,
}

impl DependenciesRequest {
    /// See [`validate_dependencies`].
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_dependencies(&self.dependencies)
    }
}

/// A dependency resolved to an address: traffic to `address:port` (TCP) is allowed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// A label for the dependency (`[a-z][a-z0-9-]{0,62}`), exported as `ATLANTIS_DEP_<NAME>=addr:port`.
    pub name: String,
    /// IPv4 address the container may reach.
    pub address: Ipv4Addr,
    /// TCP port at that address.
    pub port: u16,
}

/// The health check: `GET <path>` on the container's `port` must answer 200, or carry a
/// `Server-Status: OK|DEGRADED` header, before `start_timeout_ms` runs out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Path to request; starts with `/`.
    pub path: String,
    /// Container port to check; default: the first of `ports`. With no ports at all, the container is
    /// healthy as soon as it runs.
    pub port: Option<u16>,
    /// Timeout of one check.
    pub timeout_ms: u64,
    /// Time allowed from start until the first passing check (1 s to 10 min).
    pub start_timeout_ms: u64,
    /// Interval of checks while the container runs.
    pub interval_ms: u64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/healthz".into(),
            port: None,
            timeout_ms: 2000,
            start_timeout_ms: 60_000,
            interval_ms: 5000,
        }
    }
}

/// Why a request was refused; `field` names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The JSON field at fault (`ports[2]`, `env_vars.FOO`, ...).
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

impl ContainerSpec {
    /// Checks everything the types do not: consistency of the ID, ranges, counts and lengths.
    pub fn validate(&self) -> Result<(), SpecError> {
        let prefix = format!("{}-{}-{}-", self.app, self.sha.short(), self.env);
        if !self.container_id.as_str().starts_with(&prefix)
            || self.container_id.as_str().len() != prefix.len() + 6
        {
            return Err(bad(
                "container_id",
                format!("must be {prefix}<6 characters of a-z0-9> for this app, sha and env"),
            ));
        }
        validate_image(&self.image)?;
        if self.cpu_millis == 0 || self.cpu_millis > 1_024_000 {
            return Err(bad(
                "cpu_millis",
                "must be 1 to 1024000 (thousandths of a core)",
            ));
        }
        if self.memory_mb < MIN_MEMORY_MB || self.memory_mb > 4 * 1024 * 1024 {
            return Err(bad(
                "memory_mb",
                format!(
                    "must be {MIN_MEMORY_MB} to 4194304 MiB, got {}",
                    self.memory_mb
                ),
            ));
        }
        if self.ports.len() > MAX_PORTS {
            return Err(bad(
                "ports",
                format!("at most {MAX_PORTS} ports, got {}", self.ports.len()),
            ));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if *p == 0 {
                return Err(bad(format!("ports[{i}]"), "port 0 is out of range 1-65535"));
            }
            if self.ports[..i].contains(p) {
                return Err(bad(
                    format!("ports[{i}]"),
                    format!("port {p} is listed twice"),
                ));
            }
        }
        if self.env_vars.len() > MAX_ENV_VARS {
            return Err(bad("env_vars", format!("at most {MAX_ENV_VARS} variables")));
        }
        for (k, v) in &self.env_vars {
            let field = format!("env_vars.{k}");
            let mut chars = k.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || k.len() > 128 {
                return Err(bad(field, "names must match [A-Za-z_][A-Za-z0-9_]{0,127}"));
            }
            if k.starts_with("ATLANTIS_") {
                return Err(bad(
                    field,
                    "names starting with ATLANTIS_ are reserved for the supervisor",
                ));
            }
            if v.len() > MAX_ENV_VALUE || v.contains('\0') {
                return Err(bad(
                    field,
                    format!("values must be at most {MAX_ENV_VALUE} bytes without NUL"),
                ));
            }
        }
        if let Some(c) = &self.config
            && c.len() > MAX_CONFIG_BYTES
        {
            return Err(bad(
                "config",
                format!("at most {MAX_CONFIG_BYTES} bytes, got {}", c.len()),
            ));
        }
        validate_dependencies(&self.dependencies)?;
        if let Some(cmd) = &self.command {
            if cmd.is_empty() || cmd.len() > MAX_ARGS {
                return Err(bad(
                    "command",
                    format!("must have 1 to {MAX_ARGS} arguments"),
                ));
            }
            if let Some(i) = cmd
                .iter()
                .position(|a| a.len() > MAX_ARG_BYTES || a.contains('\0'))
            {
                return Err(bad(
                    format!("command[{i}]"),
                    format!("at most {MAX_ARG_BYTES} bytes without NUL"),
                ));
            }
        }
        let h = &self.health;
        if !h.path.starts_with('/')
            || h.path.len() > 256
            || h.path.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(bad(
                "health.path",
                "must start with '/', be at most 256 characters, without spaces or controls",
            ));
        }
        if let Some(p) = h.port
            && !self.ports.contains(&p)
        {
            return Err(bad(
                "health.port",
                format!("{p} is not one of the container's ports"),
            ));
        }
        if !(100..=60_000).contains(&h.timeout_ms) {
            return Err(bad("health.timeout_ms", "must be 100 to 60000"));
        }
        if !(1000..=600_000).contains(&h.start_timeout_ms) {
            return Err(bad("health.start_timeout_ms", "must be 1000 to 600000"));
        }
        if !(200..=600_000).contains(&h.interval_ms) {
            return Err(bad("health.interval_ms", "must be 200 to 600000"));
        }
        Ok(())
    }

    /// The port the health check targets, if any.
    pub fn health_port(&self) -> Option<u16> {
        self.health.port.or_else(|| self.ports.first().copied())
    }
}

/// Checks an image reference: `[host[:port]/]path[:tag][@sha256:<64 hex>]`, lowercase path components.
pub fn validate_image(image: &str) -> Result<(), SpecError> {
    let err = |m: &str| Err(bad("image", format!("{image:?} {m}")));
    if image.is_empty() || image.len() > 512 {
        return err("must be 1 to 512 characters");
    }
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let Some(hex) = d.strip_prefix("sha256:") else {
            return err("has a digest that is not sha256:<64 hex>");
        };
        if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return err("has a digest that is not sha256:<64 lowercase hex>");
        }
    }
    // A tag follows the last ':' after the last '/'.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag
        && (t.is_empty()
            || t.len() > 128
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return err("has an invalid tag");
    }
    if tag.is_none() && digest.is_none() {
        return err("needs a digest (@sha256:...) or a tag");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first component is a registry host when it has a '.' or ':' or is localhost.
    if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        let host = parts.remove(0);
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'))
        {
            return err("has an invalid registry host");
        }
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
            && p.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return err("has an invalid repository path (lowercase a-z, 0-9, '.', '_', '-')");
        }
    }
    Ok(())
}

/// The lifecycle of a container on a supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Fetching the image.
    Pulling,
    /// Created and started; waiting for the first passing health check.
    Starting,
    /// Passing health checks.
    Healthy,
    /// Running, but failing health checks (or exited and being restarted by its policy).
    Unhealthy,
    /// Being stopped and removed.
    Stopping,
    /// Removed.
    Gone,
}

/// A host port bound to a container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// The port inside the container.
    pub container_port: u16,
    /// The port on the host's `address`.
    pub host_port: u16,
}

/// What a supervisor knows about one of its containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// The Atlantis container ID.
    pub container_id: ContainerId,
    /// The application.
    pub app: AppName,
    /// The commit.
    pub sha: Sha,
    /// The environment.
    pub env: EnvName,
    /// The image reference it was started from.
    pub image: String,
    /// Where it is in its lifecycle.
    pub state: ContainerState,
    /// The supervisor's host.
    pub host: HostName,
    /// The address its host ports are published on.
    pub address: String,
    /// Published ports.
    pub ports: Vec<PortBinding>,
    /// CPU limit (thousandths of a core).
    pub cpu_millis: u32,
    /// Memory limit (MiB).
    pub memory_mb: u64,
    /// The allocator slot it occupies.
    pub slot: u32,
    /// The container's address on the supervisor's container network.
    pub ip: Ipv4Addr,
    /// Its declared dependencies (what the firewall allows).
    pub dependencies: Vec<Dependency>,
    /// Docker's ID for it, when it exists.
    pub docker_id: Option<String>,
}

/// Teardown: either explicit container IDs, or every container of an app (optionally one env of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeardownRequest {
    /// Containers to remove.
    #[serde(default)]
    pub container_ids: Vec<ContainerId>,
    /// Remove every container of this app...
    #[serde(default)]
    pub app: Option<AppName>,
    /// ...in this env only.
    #[serde(default)]
    pub env: Option<EnvName>,
}

impl TeardownRequest {
    /// Exactly one form must be used: `container_ids`, or `app` (with an optional `env`).
    pub fn validate(&self) -> Result<(), SpecError> {
        match (self.container_ids.is_empty(), &self.app, &self.env) {
            (false, None, None) if self.container_ids.len() <= 1000 => Ok(()),
            (false, None, None) => Err(bad("container_ids", "at most 1000 per request")),
            (false, _, _) => Err(bad(
                "container_ids",
                "give either container_ids or app/env, not both",
            )),
            (true, Some(_), _) => Ok(()),
            (true, None, Some(_)) => Err(bad("env", "env needs an app")),
            (true, None, None) => Err(bad(
                "container_ids",
                "give container_ids, or an app (and optionally an env)",
            )),
        }
    }
}

/// The answer to a teardown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeardownResponse {
    /// Containers that were removed.
    pub removed: Vec<ContainerId>,
    /// Requested IDs this supervisor does not run.
    pub not_found: Vec<ContainerId>,
}

/// Slots, CPU and memory: a capacity, or what is free of it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Container slots.
    pub slots: u32,
    /// CPU in thousandths of a core.
    pub cpu_millis: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
}

/// Whether the supervisor can take more containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SupervisorStatus {
    /// Serving, with room left.
    Ok,
    /// Serving, but no slot is free.
    Full,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorHealth {
    /// OK or FULL.
    pub status: SupervisorStatus,
    /// This host.
    pub host: HostName,
    /// Its zone.
    pub zone: ZoneName,
    /// Its region.
    pub region: RegionName,
    /// Software version.
    pub version: String,
    /// Total capacity.
    pub capacity: Resources,
    /// Free now.
    pub free: Resources,
    /// Containers it runs.
    pub containers: u32,
}

/// The schema version of [`SupervisorRecord`].
pub const SUPERVISOR_RECORD_VERSION: u32 = 1;

/// The EPHEMERAL node `supervisors/<host>` in ZooKeeper.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorRecord {
    /// Schema version of this payload ([`SUPERVISOR_RECORD_VERSION`]).
    pub version: u32,
    /// The supervisor's software version.
    pub software_version: String,
    /// Base URL of the supervisor API (`http://10.0.0.5:7070`).
    pub address: String,
    /// The host.
    pub host: HostName,
    /// Its zone.
    pub zone: ZoneName,
    /// Total capacity.
    pub capacity: Resources,
    /// Free now (refreshed as containers come and go).
    pub free: Resources,
}

/// The error body of every non-2xx answer: a stable machine-readable `code` and a human message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code, for example `invalid_spec`, `no_capacity`, `image_not_found`, `duplicate`.
    pub code: String,
    /// What went wrong, for humans.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            container_id: "web-1a2b3c4-prod-abc123".parse().unwrap(),
            app: "web".parse().unwrap(),
            sha: "1a2b3c4d".parse().unwrap(),
            env: "prod".parse().unwrap(),
            image: "registry.local:5000/apps/web@sha256:".to_owned() + &"a".repeat(64),
            cpu_millis: 500,
            memory_mb: 64,
            ports: vec![8080],
            env_vars: BTreeMap::new(),
            config: None,
            dependencies: vec![],
            health: HealthCheck::default(),
            command: None,
            read_only_rootfs: false,
            allow_ping: false,
        }
    }

    #[test]
    fn a_good_spec_passes() {
        spec().validate().unwrap();
        let mut s = spec();
        s.image = "atlantis-test/busybox:1".into();
        s.validate().unwrap();
    }

    #[test]
    fn bad_specs_name_the_field() {
        type Edit = Box<dyn Fn(&mut ContainerSpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.memory_mb = 0), "memory_mb"),
            (Box::new(|s| s.cpu_millis = 0), "cpu_millis"),
            (Box::new(|s| s.ports = vec![8080, 0]), "ports[1]"),
            (Box::new(|s| s.ports = vec![8080, 8080]), "ports[1]"),
            (
                Box::new(|s| s.container_id = "api-1a2b3c4-prod-abc123".parse().unwrap()),
                "container_id",
            ),
            (Box::new(|s| s.image = "Web:1".into()), "image"),
            (Box::new(|s| s.image = "web".into()), "image"),
            (Box::new(|s| s.image = "web@sha256:abc".into()), "image"),
            (Box::new(|s| s.image = "web:1; rm -rf /".into()), "image"),
            (
                Box::new(|s| drop(s.env_vars.insert("ATLANTIS_X".into(), "1".into()))),
                "env_vars.ATLANTIS_X",
            ),
            (
                Box::new(|s| drop(s.env_vars.insert("A-B".into(), "1".into()))),
                "env_vars.A-B",
            ),
            (
                Box::new(|s| s.health.path = "healthz".into()),
                "health.path",
            ),
            (Box::new(|s| s.health.port = Some(9)), "health.port"),
            (Box::new(|s| s.command = Some(vec![])), "command"),
            (
                Box::new(|s| {
                    s.dependencies = vec![Dependency {
                        name: "db".into(),
                        address: Ipv4Addr::UNSPECIFIED,
                        port: 5432,
                    }]
                }),
                "dependencies[0].address",
            ),
        ];
        for (f, field) in cases {
            let mut s = spec();
            f(&mut s);
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn teardown_forms() {
        let id: ContainerId = "web-1a2b3c4-prod-abc123".parse().unwrap();
        assert!(
            TeardownRequest {
                container_ids: vec![id.clone()],
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
        assert!(
            TeardownRequest {
                app: Some("web".parse().unwrap()),
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
        assert!(TeardownRequest::default().validate().is_err());
        assert!(
            TeardownRequest {
                env: Some("prod".parse().unwrap()),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        let both = TeardownRequest {
            container_ids: vec![id],
            app: Some("web".parse().unwrap()),
            env: None,
        };
        assert!(both.validate().is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"container_ids":[],"bogus":1}"#;
        let e = serde_json::from_str::<TeardownRequest>(json).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    }
}
