//! Atlantis builder: turns an app directory into an OCI image and pushes it to the registry.
//!
//! This crate holds the service's configuration so far; image assembly and the build API follow
//! DESIGN.md section 8.

use serde::Deserialize;

/// The builder's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The registry images are pushed to, `host:port`.
    #[serde(default = "default_registry")]
    pub registry: String,
}

fn default_registry() -> String {
    "127.0.0.1:5000".into()
}
