//! The supervisor's view of the cluster: its EPHEMERAL registration and the intent it obeys.
//!
//! [`Cluster`] is the narrow seam; [`ZkCluster`] implements it over common's [`Coord`] (registration at
//! `supervisors/<host>`, re-created by `Coord` after a session loss; intent read from
//! `instances/<app>/<env>/<cid>` nodes whose `host` is this host). [`Standalone`] is the no-ZooKeeper
//! mode for development and benchmarks: it registers nowhere and wants whatever runs.

use std::collections::BTreeSet;

use atlantis_common::api::supervisor::SupervisorRecord;
use atlantis_common::zk::{Coord, CoordError, Registration};
use atlantis_common::{AppName, ContainerId, EnvName, HostName};
use serde::Deserialize;
use tokio::sync::Mutex;

/// Why the cluster could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cluster state: {0}")]
pub struct ClusterError(#[from] pub CoordError);

/// The cluster seam.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    /// Registers (or refreshes) this supervisor's ephemeral record.
    async fn register(&self, record: &SupervisorRecord) -> Result<(), ClusterError>;
    /// The containers the cluster wants on this host; `None` when there is no source of intent
    /// (standalone: keep everything).
    async fn wanted(&self) -> Result<Option<BTreeSet<ContainerId>>, ClusterError>;
    /// Removes the registration (graceful shutdown).
    async fn deregister(&self);
}

/// The part of an instance node a supervisor reads (the manager owns the rest of it).
#[derive(Debug, Deserialize)]
struct InstancePlacement {
    host: HostName,
}

/// ZooKeeper through [`Coord`].
pub struct ZkCluster {
    coord: Coord,
    host: HostName,
    registration: Mutex<Option<Registration>>,
}

impl ZkCluster {
    /// A cluster view for `host`.
    pub fn new(coord: Coord, host: HostName) -> ZkCluster {
        ZkCluster {
            coord,
            host,
            registration: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl Cluster for ZkCluster {
    async fn register(&self, record: &SupervisorRecord) -> Result<(), ClusterError> {
        let mut reg = self.registration.lock().await;
        match reg.as_ref() {
            Some(r) => r.update(record).await?,
            None => {
                let path = self.coord.layout().supervisor(&self.host);
                *reg = Some(self.coord.register_ephemeral(&path, record).await?);
                tracing::info!(path, "Registered in ZooKeeper.");
            }
        }
        Ok(())
    }

    async fn wanted(&self) -> Result<Option<BTreeSet<ContainerId>>, ClusterError> {
        let layout = self.coord.layout();
        let mut out = BTreeSet::new();
        for app in self.coord.children(&layout.all_instances()).await? {
            let Ok(app) = app.parse::<AppName>() else {
                continue;
            };
            for env in self
                .coord
                .children(&format!("{}/{app}", layout.all_instances()))
                .await?
            {
                let Ok(env) = env.parse::<EnvName>() else {
                    continue;
                };
                for cid in self.coord.children(&layout.instances(&app, &env)).await? {
                    let Ok(cid) = cid.parse::<ContainerId>() else {
                        continue;
                    };
                    match self
                        .coord
                        .get::<InstancePlacement>(&layout.instance(&app, &env, &cid))
                        .await
                    {
                        Ok(Some(v)) if v.value.host == self.host => {
                            out.insert(cid);
                        }
                        Ok(_) => {}
                        // A node we cannot read says nothing about us; a manager bug must not kill containers.
                        Err(CoordError::Decode { path, source }) => {
                            tracing::warn!(path, error = %source, "Unreadable instance node, ignored.");
                        }
                        Err(CoordError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(Some(out))
    }

    async fn deregister(&self) {
        if let Some(r) = self.registration.lock().await.take()
            && let Err(e) = r.deregister().await
        {
            tracing::warn!(error = %e, "Cannot deregister from ZooKeeper.");
        }
    }
}

/// No ZooKeeper: no registration, no intent.
#[derive(Debug, Default)]
pub struct Standalone;

#[async_trait::async_trait]
impl Cluster for Standalone {
    async fn register(&self, _record: &SupervisorRecord) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn wanted(&self) -> Result<Option<BTreeSet<ContainerId>>, ClusterError> {
        Ok(None)
    }
    async fn deregister(&self) {}
}
