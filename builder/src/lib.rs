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
pub mod log;
pub mod push;
pub mod sandbox;
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
    /// The bubblewrap binary of the build sandbox.
    #[serde(default = "default_bwrap")]
    pub bwrap: PathBuf,
    /// The unprivileged host uid build commands run as.
    #[serde(default = "default_build_id")]
    pub build_uid: u32,
    /// Their gid.
    #[serde(default = "default_build_id")]
    pub build_gid: u32,
    /// Memory limit of each build command (bytes).
    #[serde(default = "default_build_memory")]
    pub build_memory_bytes: u64,
    /// Processes and threads a build command may have at once.
    #[serde(default = "default_build_processes")]
    pub build_max_processes: u64,
    /// CPUs a build command may use.
    #[serde(default = "default_build_cpus")]
    pub build_cpus: f64,
    /// Size of the build's `/tmp` (bytes).
    #[serde(default = "default_build_tmp")]
    pub build_tmp_bytes: u64,
    /// Whether apps may ask for `network = true` in `[build]` (see docs/builder.md).
    #[serde(default)]
    pub allow_network_builds: bool,
    /// The IPv4 pool the networked builds' /30 links come from.
    #[serde(default = "default_build_network_pool")]
    pub build_network_pool: String,
    /// Destinations networked builds never reach besides the built-in ranges (addresses or CIDRs):
    /// the cluster's networks, the registry, managers and ZooKeeper.
    #[serde(default)]
    pub build_network_deny: Vec<String>,
    /// The resolvers of networked builds (IPv4); empty: the host's resolvers outside refused ranges.
    #[serde(default)]
    pub build_network_dns: Vec<String>,
}

fn default_build_network_pool() -> String {
    sandbox::net::NetSettings::default().pool
}

fn default_bwrap() -> PathBuf {
    sandbox::SandboxSettings::default().bwrap
}

fn default_build_id() -> u32 {
    sandbox::SandboxSettings::default().uid
}

fn default_build_memory() -> u64 {
    sandbox::SandboxSettings::default().limits.memory_bytes
}

fn default_build_processes() -> u64 {
    sandbox::SandboxSettings::default().limits.max_processes
}

fn default_build_cpus() -> f64 {
    sandbox::SandboxSettings::default().limits.cpus
}

fn default_build_tmp() -> u64 {
    sandbox::SandboxSettings::default().tmp_bytes
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
            bwrap: default_bwrap(),
            build_uid: default_build_id(),
            build_gid: default_build_id(),
            build_memory_bytes: default_build_memory(),
            build_max_processes: default_build_processes(),
            build_cpus: default_build_cpus(),
            build_tmp_bytes: default_build_tmp(),
            allow_network_builds: false,
            build_network_pool: default_build_network_pool(),
            build_network_deny: Vec::new(),
            build_network_dns: Vec::new(),
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
                sandbox: sandbox::SandboxSettings {
                    bwrap: self.bwrap.clone(),
                    uid: self.build_uid,
                    gid: self.build_gid,
                    limits: sandbox::Limits {
                        memory_bytes: self.build_memory_bytes,
                        max_processes: self.build_max_processes,
                        cpus: self.build_cpus,
                    },
                    tmp_bytes: self.build_tmp_bytes,
                    allow_network: self.allow_network_builds,
                    network: sandbox::net::NetSettings {
                        pool: self.build_network_pool.clone(),
                        deny: self.build_network_deny.clone(),
                        dns: self.build_network_dns.clone(),
                    },
                    ..sandbox::SandboxSettings::default()
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_keys_reach_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("builder.toml");
        std::fs::write(
            &path,
            "build_uid = 1234\nbuild_gid = 1235\nbuild_memory_bytes = 1048576\n\
             build_max_processes = 7\nbuild_cpus = 0.5\nbuild_tmp_bytes = 4096\n\
             build_network_pool = \"10.99.0.0/20\"\nbuild_network_deny = [\"198.51.100.0/24\"]\n\
             build_network_dns = [\"192.0.2.53\"]\n",
        )
        .unwrap();
        let env = [(
            "ATLANTIS_BUILDER__ALLOW_NETWORK_BUILDS".to_owned(),
            "true".to_owned(),
        )];
        let c: Config =
            atlantis_common::config::load_with_env(Some(&path), "ATLANTIS_BUILDER", env).unwrap();
        let s = c.settings().debian.sandbox;
        assert_eq!((s.uid, s.gid, s.tmp_bytes), (1234, 1235, 4096));
        assert_eq!(
            s.limits,
            sandbox::Limits {
                memory_bytes: 1 << 20,
                max_processes: 7,
                cpus: 0.5
            }
        );
        assert!(s.allow_network);
        assert_eq!(
            s.network,
            sandbox::net::NetSettings {
                pool: "10.99.0.0/20".into(),
                deny: vec!["198.51.100.0/24".into()],
                dns: vec!["192.0.2.53".into()],
            }
        );
        let d = Config::default().settings().debian.sandbox;
        assert_eq!(d, sandbox::SandboxSettings::default());
        assert!(!d.allow_network);
    }
}
