//! Atlantis common: what two or more Atlantis crates share.
//!
//! - [`names`]: validated newtypes for every name (app, env, sha, zone, region, team, host, container ID).
//! - [`api`] (feature `api`): wire types exchanged between components, serde only.
//! - [`zk`] (feature `zk`): the ZooKeeper layout (the only place that builds paths) and the coordination layer.
//! - [`secret_file`]: token files read only when private (mode 0600 or stricter).
//! - [`telemetry`], [`config`], [`shutdown`] (feature `server`): helpers every service binary uses.
//!
//! Architecture invariant: this crate never depends on a service crate or on a runtime backend (no axum,
//! bollard, S3 SDK or hyper here), so the CLI can use it without compiling servers.

pub mod names;
pub mod secret_file;

#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "api")]
pub mod routing;

#[cfg(feature = "zk")]
pub mod zk;

#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod shutdown;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;

pub use names::{
    AppName, ContainerId, EnvName, HostName, NameError, RegionName, Sha, TeamName, ZoneName,
};
