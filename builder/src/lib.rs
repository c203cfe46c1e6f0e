//! Atlantis builder: turns an app (a directory, or a git repository at a commit) into a reproducible
//! OCI image and pushes it to the registry.
//!
//! - [`source`] and [`git`] read the input, with its safety checks and limits; [`beneath`] opens app
//!   files by descriptor below the root without following links.
//! - [`template`], [`layer`] and [`image`] assemble deterministic layers, the config and the manifest;
//!   [`cache`] keeps layers on disk by content.
//! - [`push`] speaks the OCI Distribution API; [`build`] runs one build end to end.
//! - [`api`] serves builds over HTTP; the binary adds a CLI.
//!
//! The app config type itself, `atlantis.toml`, lives in `atlantis_common::api::app_config` because
//! the manager reads it back from the image label.

pub mod api;
pub mod beneath;
pub mod build;
pub mod cache;
pub mod debian;
pub mod error;
pub mod git;
pub mod image;
pub mod layer;
pub mod push;
pub mod source;
pub mod template;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use build::{BuildOutput, BuildRequest, Builder, Settings, Source};
pub use error::BuildError;

/// The builder service's configuration (`atlantis-builder serve`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP API listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The registry, `host:port`: the only one API builds push to (a request naming another is
    /// refused). The builder holds no credentials for it: each request brings a token scoped to its app.
    #[serde(default = "default_registry")]
    pub registry: String,
    /// The layer cache directory.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// The layer cache's size cap in bytes.
    #[serde(default = "default_cache_max")]
    pub cache_max_bytes: u64,
    /// The largest app accepted (bytes of regular files).
    #[serde(default = "default_max_input")]
    pub max_input_bytes: u64,
    /// The most files and directories an app may have.
    #[serde(default = "default_max_entries")]
    pub max_input_entries: usize,
    /// The static busybox binary (Debian package busybox-static).
    #[serde(default = "default_busybox")]
    pub busybox: PathBuf,
    /// Bearer token callers of the API must send. Required unless `listen` is a loopback address.
    #[serde(default)]
    pub api_token: Option<String>,
    /// Directories (and git repositories) on this host that API callers may build from. Empty: only
    /// git URLs are accepted.
    #[serde(default)]
    pub allowed_dirs: Vec<PathBuf>,
    /// Builds running at once; more wait their turn.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_builds: usize,
    /// The Debian mirror of the debian template.
    #[serde(default = "default_mirror")]
    pub debian_mirror: String,
    /// The Debian suite of the debian template.
    #[serde(default = "default_suite")]
    pub debian_suite: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            registry: default_registry(),
            cache_dir: default_cache_dir(),
            cache_max_bytes: default_cache_max(),
            max_input_bytes: default_max_input(),
            max_input_entries: default_max_entries(),
            busybox: default_busybox(),
            api_token: None,
            allowed_dirs: Vec::new(),
            max_concurrent_builds: default_concurrency(),
            debian_mirror: default_mirror(),
            debian_suite: default_suite(),
        }
    }
}

impl Config {
    /// The build settings this config gives. They hold no registry credentials: an API build pushes
    /// with the scoped token of its request (`registry_token`), or anonymously to a registry that
    /// allows it.
    pub fn settings(&self) -> Settings {
        Settings {
            limits: source::Limits {
                max_bytes: self.max_input_bytes,
                max_entries: self.max_input_entries,
            },
            busybox: self.busybox.clone(),
            push: push::PushOptions::default(),
            debian: debian::DebianSettings {
                mirror: self.debian_mirror.clone(),
                suite: self.debian_suite.clone(),
                ..debian::DebianSettings::default()
            },
        }
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:7090".parse().expect("valid address")
}

fn default_registry() -> String {
    "127.0.0.1:5000".into()
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/cache/atlantis-builder")
}

fn default_cache_max() -> u64 {
    4 * 1024 * 1024 * 1024
}

fn default_max_input() -> u64 {
    512 * 1024 * 1024
}

fn default_max_entries() -> usize {
    100_000
}

fn default_busybox() -> PathBuf {
    PathBuf::from("/bin/busybox")
}

fn default_mirror() -> String {
    debian::DebianSettings::default().mirror
}

fn default_suite() -> String {
    debian::DebianSettings::default().suite
}

fn default_concurrency() -> usize {
    2
}
