//! The registry's configuration (TOML plus `ATLANTIS_REGISTRY__...` environment overrides, loaded with
//! `atlantis_common::config::load`). See `docs/registry.md` for a commented example.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::registry::Limits;
use crate::storage::fs::FsDriver;
use crate::storage::s3::{S3Config, S3Driver};
use crate::storage::{StorageDriver, StorageError};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to listen. Without `[auth]` only loopback addresses are allowed.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where content lives.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Limits on requests.
    #[serde(default)]
    pub limits: Limits,
    /// Users, tokens and per-prefix permissions; absent means no authentication (loopback only).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Whether `DELETE` of blobs and manifests is allowed.
    #[serde(default = "yes")]
    pub delete_enabled: bool,
    /// Garbage collection settings.
    #[serde(default)]
    pub gc: GcConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}
fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            storage: StorageConfig::default(),
            limits: Limits::default(),
            auth: None,
            delete_enabled: true,
            gc: GcConfig::default(),
        }
    }
}

/// The storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Filesystem,
    S3,
}

/// Storage settings: `kind` picks the driver, whose section must be present.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub kind: StorageKind,
    /// Root directory of the filesystem driver.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Settings of the S3 driver.
    #[serde(default)]
    pub s3: Option<S3Config>,
}

fn default_root() -> PathBuf {
    PathBuf::from("/var/lib/atlantis-registry")
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageKind::Filesystem,
            root: default_root(),
            s3: None,
        }
    }
}

impl StorageConfig {
    /// Builds the configured driver.
    pub fn driver(&self) -> Result<Arc<dyn StorageDriver>, StorageError> {
        Ok(match self.kind {
            StorageKind::Filesystem => Arc::new(FsDriver::new(&self.root)?),
            StorageKind::S3 => {
                let s3 = self.s3.as_ref().ok_or_else(|| StorageError::Backend {
                    path: String::new(),
                    message: "storage.kind is s3 but there is no [storage.s3] section".into(),
                })?;
                Arc::new(S3Driver::new(s3)?)
            }
        })
    }
}

/// Garbage collection settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Blobs written or re-linked more recently than this many seconds are never swept: a push in progress
    /// uploads its blobs before the manifest that references them.
    pub grace_secs: u64,
    /// Upload sessions older than this many seconds are deleted.
    pub upload_expiry_secs: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace_secs: 3600,
            upload_expiry_secs: 7 * 24 * 3600,
        }
    }
}
