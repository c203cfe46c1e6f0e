//! Wire types of the manager API (the CLI and the manager share them), and the manager's ZooKeeper
//! records (`apps/`, `envs/`, `dependencies/`, `releases/`, `instances/`, `tasks/`).
//!
//! Every request type has a `validate()` for what its types do not check, so the manager refuses bad
//! input with the offending field named before it writes anything.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::names::{AppName, ContainerId, EnvName, HostName, Sha, TeamName, ZoneName};

pub use super::supervisor::ErrorBody;

/// Schema version of every record below.
pub const RECORD_VERSION: u32 = 1;

fn v1() -> u32 {
    RECORD_VERSION
}

/// Why a request was refused: the field at fault and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The JSON field at fault.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// `POST /v1/apps`, `PUT /v1/apps/{app}`: register or update an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The app's name.
    pub name: AppName,
    /// Its source repository (informational, at most 512 characters).
    #[serde(default)]
    pub repo: String,
    /// The app's directory inside the repository.
    #[serde(default)]
    pub root: String,
    /// Internal apps are served by the internal routers on a stable port per app.env.
    #[serde(default)]
    pub internal: bool,
    /// The owning team.
    #[serde(default)]
    pub team: Option<TeamName>,
    /// Dependencies (registered by name) its containers receive and may reach.
    #[serde(default)]
    pub dependencies: Vec<AppName>,
}

impl AppSpec {
    /// Checks lengths and counts.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (field, v) in [("repo", &self.repo), ("root", &self.root)] {
            if v.len() > 512 || v.chars().any(char::is_control) {
                return Err(bad(field, "at most 512 characters, no control characters"));
            }
        }
        if self.dependencies.len() > super::supervisor::MAX_DEPENDENCIES {
            return Err(bad("dependencies", "at most 64 dependencies"));
        }
        Ok(())
    }
}

/// The ZooKeeper record `apps/<app>` (also the API's answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppRecord {
    /// Schema version.
    #[serde(default = "v1")]
    pub version: u32,
    /// What was registered.
    #[serde(flatten)]
    pub spec: AppSpec,
    /// Registration time, ms since the epoch.
    pub created_ms: u64,
}

/// `POST /v1/envs`: an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// The env's name.
    pub name: EnvName,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

impl EnvSpec {
    /// Checks lengths.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.description.len() > 1024 || self.description.chars().any(char::is_control) {
            return Err(bad(
                "description",
                "at most 1024 characters, no control characters",
            ));
        }
        Ok(())
    }
}

/// The ZooKeeper record `envs/<env>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvRecord {
    /// Schema version.
    #[serde(default = "v1")]
    pub version: u32,
    /// What was registered.
    #[serde(flatten)]
    pub spec: EnvSpec,
    /// Registration time, ms since the epoch.
    pub created_ms: u64,
}

/// One address a dependency's users may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// IPv4 address.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "ipv4"))]
    pub address: Ipv4Addr,
    /// TCP port.
    pub port: u16,
}

/// `PUT /v1/dependencies/{name}`: a named dependency (a database, a queue): secret data its users
/// receive as environment variables, and the addresses their firewall lets them reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DependencySpec {
    /// Owning team (informational until authentication lands).
    #[serde(default)]
    pub team: Option<TeamName>,
    /// Environment variables given to users (names `[A-Z_][A-Z0-9_]*`, not `ATLANTIS_*`). Secret.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Addresses the users may reach.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

impl DependencySpec {
    /// Checks names, sizes and addresses.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.data.len() > 64 {
            return Err(bad("data", "at most 64 variables"));
        }
        for (k, v) in &self.data {
            let ok = !k.is_empty()
                && k.len() <= 128
                && k.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(bad(
                    format!("data.{k}"),
                    "names must match [A-Z_][A-Z0-9_]{0,127}",
                ));
            }
            if k.starts_with("ATLANTIS_") {
                return Err(bad(format!("data.{k}"), "ATLANTIS_ names are reserved"));
            }
            if v.len() > 4096 || v.contains('\0') {
                return Err(bad(
                    format!("data.{k}"),
                    "values: at most 4096 bytes, no NUL",
                ));
            }
        }
        if self.endpoints.len() > 16 {
            return Err(bad("endpoints", "at most 16 endpoints"));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.port == 0 {
                return Err(bad(format!("endpoints[{i}].port"), "must be 1-65535"));
            }
            if e.address.is_unspecified() || e.address.is_broadcast() || e.address.is_multicast() {
                return Err(bad(
                    format!("endpoints[{i}].address"),
                    format!("{} is not a unicast address", e.address),
                ));
            }
        }
        Ok(())
    }
}

/// What the API shows of a dependency: the data's variable names, never their values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DependencyView {
    /// Its name.
    pub name: AppName,
    /// Owning team.
    pub team: Option<TeamName>,
    /// Names of the secret variables (values are never returned).
    pub data_keys: Vec<String>,
    /// Addresses its users may reach.
    pub endpoints: Vec<Endpoint>,
    /// True when the caller may see only its name and owner (its team has not been granted it): the
    /// variable names and endpoints are left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restricted: bool,
}

/// The manifest of a release: how its containers run. Defaults fit the busybox/static templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Manifest {
    /// Containers per zone.
    pub instances: u32,
    /// CPU per container, thousandths of a core.
    pub cpu_millis: u32,
    /// Memory per container, MiB.
    pub memory_mb: u64,
    /// The HTTP port inside the container.
    pub port: u16,
    /// Health check path.
    pub health_path: String,
    /// Time allowed from start to first passing health check, ms.
    pub start_timeout_ms: u64,
    /// Command instead of the image's default.
    pub command: Option<Vec<String>>,
    /// Extra environment variables.
    pub env_vars: BTreeMap<String, String>,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            instances: 1,
            cpu_millis: 250,
            memory_mb: 64,
            port: 8080,
            health_path: "/healthz".into(),
            start_timeout_ms: 60_000,
            command: None,
            env_vars: BTreeMap::new(),
        }
    }
}

/// Overrides of the manifest given with a deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ManifestOverrides {
    /// Containers per zone.
    #[serde(default)]
    pub instances: Option<u32>,
    /// CPU per container, thousandths of a core.
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Memory per container, MiB.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// The HTTP port inside the container.
    #[serde(default)]
    pub port: Option<u16>,
    /// Health check path.
    #[serde(default)]
    pub health_path: Option<String>,
    /// Start deadline, ms.
    #[serde(default)]
    pub start_timeout_ms: Option<u64>,
    /// Command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Extra environment variables (merged over the manifest's).
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
}

impl Manifest {
    /// Applies overrides.
    pub fn apply(&mut self, o: &ManifestOverrides) {
        if let Some(v) = o.instances {
            self.instances = v;
        }
        if let Some(v) = o.cpu_millis {
            self.cpu_millis = v;
        }
        if let Some(v) = o.memory_mb {
            self.memory_mb = v;
        }
        if let Some(v) = o.port {
            self.port = v;
        }
        if let Some(v) = &o.health_path {
            self.health_path.clone_from(v);
        }
        if let Some(v) = o.start_timeout_ms {
            self.start_timeout_ms = v;
        }
        if let Some(v) = &o.command {
            self.command = Some(v.clone());
        }
        for (k, v) in &o.env_vars {
            self.env_vars.insert(k.clone(), v.clone());
        }
    }

    /// Checks the ranges the container spec does not (instances); the rest is checked by building a
    /// [`super::supervisor::ContainerSpec`].
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.instances == 0 || self.instances > 100 {
            return Err(bad("instances", "must be 1 to 100 per zone"));
        }
        if self.port == 0 {
            return Err(bad("port", "must be 1-65535"));
        }
        Ok(())
    }
}

/// `POST /v1/apps/{app}/envs/{env}/deploy`. Unknown fields are refused (by the flattened overrides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployRequest {
    /// The commit to deploy; its image is `apps/<app>:<sha>` in the registry.
    pub sha: Sha,
    /// Overrides of the manifest.
    #[serde(default, flatten)]
    pub overrides: ManifestOverrides,
}

/// `POST /v1/apps/{app}/envs/{env}/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release number to go back to; default: the one before the current.
    #[serde(default)]
    pub to: Option<i64>,
}

/// `POST /v1/apps/{app}/envs/{env}/scale`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The new number of containers per zone.
    pub instances: u32,
}

/// `POST /v1/containers/{id}/maintenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// True takes the container out of its pool (it keeps running); false puts it back.
    pub on: bool,
}

/// The ZooKeeper record `releases/<app>/<env>`: what runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseTarget {
    /// Schema version.
    #[serde(default = "v1")]
    pub version: u32,
    /// Release number (per app/env, from 1).
    pub number: i64,
    /// The commit.
    pub sha: Sha,
    /// The image reference the containers run.
    pub image: String,
    /// The manifest (instances per zone included).
    pub manifest: Manifest,
}

/// A release as recorded in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Release {
    /// The app.
    pub app: String,
    /// The env.
    pub env: String,
    /// Number, from 1.
    pub number: i64,
    /// Commit.
    pub sha: String,
    /// Image reference (by digest in production).
    pub image: String,
    /// The manifest.
    pub manifest: Manifest,
    /// The task that made it.
    pub task_id: String,
    /// Containers it started.
    pub containers: Vec<String>,
    /// When, ms since the epoch.
    pub created_ms: i64,
}

/// Where a container is in the manager's eyes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Being started (the node exists before the supervisor is asked).
    Starting,
    /// Healthy and in its pool.
    Serving,
    /// Healthy, taken out of its pool on purpose.
    Maintenance,
    /// Being drained and removed.
    Stopping,
}

/// The ZooKeeper record `instances/<app>/<env>/<cid>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceRecord {
    /// Schema version.
    #[serde(default = "v1")]
    pub version: u32,
    /// Container ID.
    pub container_id: ContainerId,
    /// App.
    pub app: AppName,
    /// Env.
    pub env: EnvName,
    /// Commit.
    pub sha: Sha,
    /// Supervisor host.
    pub host: HostName,
    /// Its zone.
    pub zone: ZoneName,
    /// The backend (`address:host_port`) once known.
    #[serde(default)]
    pub backend: Option<String>,
    /// State.
    pub state: InstanceState,
    /// Release number it belongs to.
    pub release: i64,
    /// CPU, thousandths of a core.
    pub cpu_millis: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
}

/// Task kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A new release.
    Deploy,
    /// Back to an older release.
    Rollback,
    /// More or fewer containers of the current release.
    Scale,
    /// Removal of an app, an app.env or a container.
    Teardown,
    /// A command run in a container (`atlantis exec`); the first step names the command line.
    Exec,
    /// The app's containers replaced by copies of the same release in every env it runs in, without
    /// a dependency whose grant was revoked.
    Replace,
}

/// Task states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Running.
    Running,
    /// Finished well.
    Done,
    /// Failed; `error` says why (and what was undone).
    Failed,
}

/// One step of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskStep {
    /// What it does.
    pub name: String,
    /// When it started, ms since the epoch.
    pub started_ms: u64,
    /// How long it took (None while running).
    pub took_ms: Option<u64>,
    /// Details.
    #[serde(default)]
    pub detail: String,
}

/// `GET /v1/tasks/{id}`, and the ZooKeeper record `tasks/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskStatus {
    /// Schema version.
    #[serde(default = "v1")]
    pub version: u32,
    /// Task ID.
    pub id: String,
    /// Kind.
    pub kind: TaskKind,
    /// App.
    pub app: String,
    /// Env, when the task is about one.
    pub env: Option<String>,
    /// State.
    pub state: TaskState,
    /// Steps so far.
    pub steps: Vec<TaskStep>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The release it made (deploy, rollback).
    pub release: Option<i64>,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Finished, ms since the epoch.
    pub finished_ms: Option<u64>,
}

/// The answer to every task-starting request (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskAccepted {
    /// The task to follow.
    pub task_id: String,
    /// `/v1/tasks/<id>`.
    pub status_url: String,
}

/// The schema version of a router registration the manager reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouterView {
    /// internal or external.
    pub kind: String,
    /// Zone.
    pub zone: String,
    /// Host.
    pub host: String,
    /// What the router registered.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub record: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_merge_and_validate() {
        let mut m = Manifest::default();
        m.apply(&ManifestOverrides {
            instances: Some(3),
            health_path: Some("/up".into()),
            ..Default::default()
        });
        assert_eq!(m.instances, 3);
        assert_eq!(m.health_path, "/up");
        m.validate().unwrap();
        m.instances = 0;
        assert_eq!(m.validate().unwrap_err().field, "instances");
    }

    #[test]
    fn dependency_data_names_are_checked() {
        let mut d = DependencySpec {
            team: None,
            data: BTreeMap::from([("DB_URL".into(), "x".into())]),
            endpoints: vec![Endpoint {
                address: Ipv4Addr::new(10, 0, 0, 1),
                port: 5432,
            }],
        };
        d.validate().unwrap();
        d.data.insert("db".into(), "x".into());
        assert_eq!(d.validate().unwrap_err().field, "data.db");
        d.data.remove("db");
        d.endpoints[0].port = 0;
        assert_eq!(d.validate().unwrap_err().field, "endpoints[0].port");
    }

    #[test]
    fn deploy_requests_refuse_unknown_fields() {
        let ok: DeployRequest =
            serde_json::from_str(r#"{"sha":"0123456789abcdef","instances":2}"#).unwrap();
        assert_eq!(ok.overrides.instances, Some(2));
        assert!(serde_json::from_str::<DeployRequest>(r#"{"sha":"ZZZ"}"#).is_err());
    }
}
