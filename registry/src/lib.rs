//! Atlantis registry: an OCI Distribution v1.1 server with filesystem and S3 storage.
//!
//! Layers, bottom to top:
//! - [`storage`]: the `StorageDriver` seam with the filesystem and S3 drivers;
//! - [`digest`], [`names`], [`manifest`], [`paths`]: validated inputs and the storage layout;
//! - [`registry`] and [`uploads`]: blob, upload, manifest, tag and referrer logic, written once against
//!   `Arc<dyn StorageDriver>`; [`gc`]: mark and sweep;
//! - [`api`], [`auth`], [`metrics`], [`app`], [`config`]: the HTTP server.
//!
//! Errors are [`error::RegistryError`]: an HTTP status plus an OCI error code.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod digest;
pub mod error;
pub mod gc;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod paths;
pub mod registry;
pub mod storage;
pub mod uploads;

pub use app::App;
pub use config::Config;
pub use registry::Registry;
