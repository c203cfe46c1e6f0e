//! Atlantis common: what two or more Atlantis crates share.
//!
//! - [`names`]: validated newtypes for every name (app, env, sha, zone, region, team, host, container ID).
//! - [`api`] (feature `api`): wire types exchanged between components, serde only.
//! - [`zk`] (feature `zk`): the ZooKeeper layout (the only place that builds paths) and the coordination layer.
//! - [`secret_file`]: token files read only when private (mode 0600 or stricter).
//! - [`telemetry`], [`config`], [`shutdown`] (feature `server`): helpers every service binary uses.
//! - `tls` (feature `tls`): rustls server and client configs, an HTTPS accept loop, a development CA.
//! - `supervisor_client` (feature `client`): the typed client of the supervisor API.
//!
//! Architecture invariant: this crate never depends on a service crate or on a runtime backend (no
//! bollard, no S3 SDK). The HTTP and TLS stacks come only with the features that need them (`tls`,
//! `client`), so the CLI, which takes only `api`, compiles no server or client stack from here.

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
#[cfg(feature = "client")]
pub mod supervisor_client;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;

pub use names::{
    AppName, ContainerId, EnvName, HostName, NameError, RegionName, Sha, TeamName, ZoneName,
};
