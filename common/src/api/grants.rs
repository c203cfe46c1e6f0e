//! Dependency grants (the manager's `/v1/dependencies/{name}/grants` and `/requests` routes): an app
//! may use a dependency only once the dependency's owning team (or a superuser) granted it.

use serde::{Deserialize, Serialize};

use crate::names::{AppName, TeamName};

/// A grant of a dependency to an app (`dependency_grants/<dependency>/<app>` in ZooKeeper).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DependencyGrant {
    /// Schema version.
    pub version: u32,
    /// The dependency.
    pub dependency: AppName,
    /// The app granted it.
    pub app: AppName,
    /// Who granted it.
    pub granted_by: String,
    /// When, ms since the epoch.
    pub granted_ms: u64,
}

/// A pending request of an app for a dependency (`dependency_requests/<dependency>/<app>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DependencyRequest {
    /// Schema version.
    pub version: u32,
    /// The dependency asked for.
    pub dependency: AppName,
    /// The owning team of the dependency (who is asked), `None` for superusers only.
    pub owner: Option<TeamName>,
    /// The app that asks.
    pub app: AppName,
    /// The app's team when it asked.
    pub team: Option<TeamName>,
    /// Who asked.
    pub requested_by: String,
    /// When, ms since the epoch.
    pub requested_ms: u64,
    /// Why (free text, at most 512 characters).
    #[serde(default)]
    pub reason: String,
}

/// `PUT /v1/dependencies/{name}/requests/{app}` body (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    /// Why the app needs it (at most 512 characters, no control characters).
    #[serde(default)]
    pub reason: String,
}

/// The answer of a revoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revoked {
    /// The dependency.
    pub dependency: AppName,
    /// The app that lost it.
    pub app: AppName,
    /// The task replacing the app's containers without the dependency (`None` when nothing of the app
    /// runs, or while another task holds the app's lock: the replacement then starts when it ends).
    pub task_id: Option<String>,
    /// What happens to the running containers, in words.
    pub message: String,
    /// Running containers whose firewall no longer lets them reach the dependency (narrowed at once,
    /// before the replacement).
    #[serde(default)]
    pub firewall_cut: u32,
}
