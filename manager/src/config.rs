//! The manager's configuration (TOML, overridable by `ATLANTIS_MANAGER__<KEY>` variables).

use std::net::SocketAddr;

use atlantis_common::HostName;
use atlantis_common::zk::ZkConfig;
use serde::Deserialize;

/// Everything the manager needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the API listens. Port 0 picks a free port (tests).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// This manager's name in ZooKeeper.
    pub host: HostName,
    /// The region's ZooKeeper ensemble.
    pub zookeeper: ZkConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7700))
}
