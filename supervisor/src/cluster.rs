//! The supervisor's view of the cluster: its EPHEMERAL registration and the intent it obeys.
//!
//! [`Cluster`] is the narrow seam; [`ZkCluster`] implements it over common's [`Coord`] (registration at
//! `supervisors/<host>`, re-created by `Coord` after a session loss; intent read from
//! `instances/<app>/<env>/<cid>` nodes whose `host` is this host). The intent comes from a [`TreeCache`]
//! mirror of `instances` (one recursive watch, no polling of the whole tree every pass); until the mirror
//! has its first full read the tree is read directly, and while the session is disconnected the intent is
//! unknown (so nothing is removed). [`Standalone`] is the no-ZooKeeper mode for development and
//! benchmarks: it registers nowhere and wants whatever runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use atlantis_common::api::supervisor::SupervisorRecord;
use atlantis_common::zk::{Coord, CoordError, Registration, TreeCache, TreeEvent};
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
    /// (standalone: keep everything). An error means "unknown now": callers must not remove anything.
    async fn wanted(&self) -> Result<Option<BTreeSet<ContainerId>>, ClusterError>;
    /// Removes the registration (graceful shutdown).
    async fn deregister(&self);
}

/// The part of an instance node a supervisor reads (the manager owns the rest of it).
#[derive(Debug, Deserialize)]
struct InstancePlacement {
    host: HostName,
}

/// The mirror of `instances`: relative path (`app/env/cid`) to payload, and the connection count when it was
/// last read in full; `None` until the first full read.
type Mirror = Arc<std::sync::Mutex<Option<(BTreeMap<String, Vec<u8>>, u64)>>>;

/// ZooKeeper through [`Coord`].
pub struct ZkCluster {
    coord: Coord,
    host: HostName,
    registration: Mutex<Option<Registration>>,
    mirror: Mirror,
}

impl ZkCluster {
    /// A cluster view for `host`; starts mirroring the instances tree (must run inside a tokio runtime).
    pub fn new(coord: Coord, host: HostName) -> ZkCluster {
        let mirror: Mirror = Default::default();
        let mut events = TreeCache::start(coord.clone(), &coord.layout().all_instances());
        let m = mirror.clone();
        let status = coord.status();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let mut guard = m.lock().unwrap_or_else(|p| p.into_inner());
                match ev {
                    TreeEvent::Reset(all) => {
                        let connects = status.borrow().connects;
                        *guard = Some((
                            all.into_iter().map(|(k, n)| (k, n.data)).collect(),
                            connects,
                        ));
                    }
                    TreeEvent::Upsert { path, node } => {
                        if let Some((map, _)) = guard.as_mut() {
                            map.insert(path, node.data);
                        }
                    }
                    TreeEvent::Remove { path } => {
                        if let Some((map, _)) = guard.as_mut() {
                            map.remove(&path);
                        }
                    }
                }
            }
        });
        ZkCluster {
            coord,
            host,
            registration: Mutex::new(None),
            mirror,
        }
    }

    fn connected(&self) -> bool {
        self.coord.status().borrow().connected
    }

    /// The containers the mirror places on this host, once the mirror has been read in full on the
    /// current connection (events missed while disconnected are only repaired by that full read).
    fn wanted_from_mirror(&self) -> Option<BTreeSet<ContainerId>> {
        let guard = self.mirror.lock().unwrap_or_else(|p| p.into_inner());
        let (map, connects) = guard.as_ref()?;
        if *connects != self.coord.status().borrow().connects {
            return None;
        }
        let mut out = BTreeSet::new();
        for (path, data) in map {
            let mut parts = path.split('/');
            let (Some(_app), Some(_env), Some(cid), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(cid) = cid.parse::<ContainerId>() else {
                continue;
            };
            match serde_json::from_slice::<InstancePlacement>(data) {
                Ok(p) if p.host == self.host => {
                    out.insert(cid);
                }
                Ok(_) => {}
                // A node we cannot read says nothing about us; a manager bug must not kill containers.
                Err(e) => tracing::debug!(path, error = %e, "Unreadable instance node, ignored."),
            }
        }
        Some(out)
    }

    /// Reads the instances tree node by node (before the mirror is complete).
    async fn wanted_direct(&self) -> Result<BTreeSet<ContainerId>, ClusterError> {
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
                        Err(CoordError::Decode { path, source }) => {
                            tracing::warn!(path, error = %source, "Unreadable instance node, ignored.");
                        }
                        Err(CoordError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(out)
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
        if !self.connected() {
            return Err(ClusterError(CoordError::Unavailable(
                "disconnected from ZooKeeper".into(),
            )));
        }
        if let Some(w) = self.wanted_from_mirror() {
            return Ok(Some(w));
        }
        Ok(Some(self.wanted_direct().await?))
    }

    async fn deregister(&self) {
        let Some(r) = self.registration.lock().await.take() else {
            return;
        };
        let path = r.path().to_owned();
        // Stop re-creating it first; then delete, retrying briefly while a reconnect is under way.
        if let Err(e) = r.deregister().await {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut last = e;
            while last.is_transient() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                match self.coord.delete(&path, None).await {
                    Ok(_) => return,
                    Err(e) => last = e,
                }
            }
            tracing::warn!(path, error = %last, "Cannot deregister from ZooKeeper; the node goes with the session.");
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
