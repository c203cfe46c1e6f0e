//! `Coord`: a ZooKeeper client that outlives its sessions.
//!
//! A ZooKeeper session can expire (a long partition, a server restart); the underlying client is then
//! dead for good. `Coord` watches the session, and on expiry builds a new client, re-creates every
//! ephemeral node registered through it, and publishes a new [`SessionStatus`] so watchers re-arm and
//! caches re-read. Reads issued while the session is being replaced wait for the new one (bounded);
//! writes report [`CoordError::SessionExpired`] and let the caller decide, since a write may or may not
//! have been applied before the session died.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zkc;

use super::error::CoordError;
use super::layout::Layout;
use crate::names::RegionName;

/// How to reach the ensemble.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZkConfig {
    /// Connect string: `host:port[,host:port...]`.
    pub servers: String,
    /// Session timeout (the server bounds it to 2..20 ticks).
    #[serde(
        rename = "session_timeout_ms",
        with = "duration_ms",
        default = "default_session_timeout"
    )]
    pub session_timeout: Duration,
    /// The region, which names the tree root `/atlantis/<region>`.
    pub region: RegionName,
    /// Another tree root instead of `/atlantis/<region>` (tests isolate themselves this way).
    #[serde(default)]
    pub root: Option<String>,
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl ZkConfig {
    /// A config for `servers` in `region` with the default session timeout.
    pub fn new(servers: impl Into<String>, region: RegionName) -> ZkConfig {
        ZkConfig {
            servers: servers.into(),
            session_timeout: default_session_timeout(),
            region,
            root: None,
        }
    }

    /// The layout this config selects.
    pub fn layout(&self) -> Layout {
        match &self.root {
            Some(root) => Layout::with_root(root),
            None => Layout::new(&self.region),
        }
    }
}

/// The state of the connection, as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStatus {
    /// Counts sessions: bumps each time a new session replaces an expired one.
    pub epoch: u64,
    /// Counts (re)connections, new sessions included. Whoever mirrors ZooKeeper state re-reads it when this
    /// changes, because events that happen while disconnected may be lost (ZOOKEEPER-4698).
    pub connects: u64,
    /// True while connected.
    pub connected: bool,
    /// True from the moment the session is known to be dead until a new one is established.
    pub replacing: bool,
}

/// A node's data and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The decoded payload.
    pub value: T,
    /// The node's data version, for compare-and-set.
    pub version: i32,
}

/// A node's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStat {
    /// Data version.
    pub version: i32,
    /// Child list version.
    pub cversion: i32,
    /// The session that owns an ephemeral node, 0 for a persistent one.
    pub ephemeral_owner: i64,
    /// Number of children.
    pub children: i32,
    /// Last modification time, ms since the epoch.
    pub mtime_ms: i64,
}

impl From<&zkc::Stat> for NodeStat {
    fn from(s: &zkc::Stat) -> Self {
        NodeStat {
            version: s.version,
            cversion: s.cversion,
            ephemeral_owner: s.ephemeral_owner,
            children: s.num_children,
            mtime_ms: s.mtime,
        }
    }
}

pub(crate) struct Inner {
    cfg: ZkConfig,
    layout: Layout,
    client: RwLock<Option<zkc::Client>>,
    status: watch::Sender<SessionStatus>,
    ephemerals: Mutex<BTreeMap<String, Vec<u8>>>,
    closed: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// The coordination client. Cheap to clone; the session closes when the last clone is dropped or
/// [`Coord::close`] is called.
#[derive(Clone)]
pub struct Coord {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord")
            .field("servers", &self.inner.cfg.servers)
            .field("root", &self.inner.layout.root())
            .finish()
    }
}

pub(crate) fn acl() -> zkc::CreateOptions<'static> {
    zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all())
}

pub(crate) fn ephemeral() -> zkc::CreateOptions<'static> {
    zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all())
}

async fn connect_client(cfg: &ZkConfig) -> Result<zkc::Client, CoordError> {
    let connect = zkc::Client::connector()
        .with_session_timeout(cfg.session_timeout)
        .with_connection_timeout(Duration::from_secs(2))
        .connect(&cfg.servers);
    match tokio::time::timeout(cfg.session_timeout.max(Duration::from_secs(3)), connect).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(CoordError::Unavailable(format!(
            "cannot connect to {}: {e}",
            cfg.servers
        ))),
        Err(_) => Err(CoordError::Unavailable(format!(
            "cannot connect to {}: timed out",
            cfg.servers
        ))),
    }
}

impl Coord {
    /// Connects to the ensemble and makes sure the tree root exists.
    pub async fn connect(cfg: ZkConfig) -> Result<Coord, CoordError> {
        let client = connect_client(&cfg).await?;
        let layout = cfg.layout();
        let state = client.state_watcher();
        let (status, _) = watch::channel(SessionStatus {
            epoch: 0,
            connects: 1,
            connected: true,
            replacing: false,
        });
        let inner = Arc::new(Inner {
            cfg,
            layout,
            client: RwLock::new(Some(client)),
            status,
            ephemerals: Mutex::new(BTreeMap::new()),
            closed: CancellationToken::new(),
        });
        tokio::spawn(monitor(Arc::downgrade(&inner), state, inner.closed.clone()));
        let coord = Coord { inner };
        coord.ensure_path(coord.layout().root()).await?;
        tracing::info!(servers = %coord.inner.cfg.servers, root = coord.layout().root(), "Connected to ZooKeeper.");
        Ok(coord)
    }

    /// The paths of this region's tree.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The connection state; changes whenever the session connects, disconnects or is replaced.
    pub fn status(&self) -> watch::Receiver<SessionStatus> {
        self.inner.status.subscribe()
    }

    /// A token that is cancelled when this client is closed.
    pub fn closed(&self) -> CancellationToken {
        self.inner.closed.clone()
    }

    /// The current session's ID (the owner recorded in the ephemeral nodes it creates).
    pub fn session_id(&self) -> Result<i64, CoordError> {
        Ok(self.client()?.session_id().0)
    }

    /// Closes the session now: its ephemeral nodes go away and every watcher stops.
    pub fn close(&self) {
        self.inner.closed.cancel();
        let old = self
            .inner
            .client
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(old);
    }

    /// Fault injection for tests: makes the server end this client's session, as after a partition
    /// longer than the session timeout, and returns once `Coord` runs on a new session.
    pub async fn expire_session(&self) -> Result<(), CoordError> {
        let client = self.client()?;
        let epoch = self.inner.status.borrow().epoch;
        let mut status = self.status();
        let mut last = String::from("session survived");
        // The twin and the original fight over the session (each connection kicks the other out), so
        // the twin's close may be lost; repeat until the original reports a new session. The original's
        // reconnect backoff grows each round, so the twin soon wins.
        for _ in 0..12 {
            let twin = zkc::Client::connector()
                .with_session(client.session().clone())
                .with_session_timeout(self.inner.cfg.session_timeout)
                .with_connection_timeout(Duration::from_millis(500))
                .connect(&self.inner.cfg.servers);
            match tokio::time::timeout(Duration::from_secs(2), twin).await {
                Ok(Ok(twin)) => drop(twin),
                Ok(Err(zkc::Error::SessionExpired)) => {}
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timeout".into(),
            }
            let replaced = status.wait_for(|s| s.epoch != epoch && s.connected);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1500), replaced).await {
                return Ok(());
            }
        }
        Err(CoordError::Unavailable(format!(
            "cannot expire the session: {last}"
        )))
    }

    /// The current client, for one operation.
    pub(crate) fn client(&self) -> Result<zkc::Client, CoordError> {
        if self.inner.closed.is_cancelled() {
            return Err(CoordError::Closed);
        }
        self.inner
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(CoordError::Closed)
    }

    /// Waits (at most one session timeout) until the session epoch differs from `epoch`.
    pub(crate) async fn wait_new_session(&self, epoch: u64) -> Result<(), CoordError> {
        let mut rx = self.status();
        let limit = self.inner.cfg.session_timeout * 2;
        let wait = rx.wait_for(|s| s.epoch != epoch && s.connected);
        tokio::select! {
            r = tokio::time::timeout(limit, wait) => match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(CoordError::Closed),
                Err(_) => Err(CoordError::SessionExpired),
            },
            _ = self.inner.closed.cancelled() => Err(CoordError::Closed),
        }
    }

    /// Runs a read, retrying it once on a new session if the current one expired under it.
    async fn read<T, F, Fut>(&self, path: &str, op: F) -> Result<T, CoordError>
    where
        F: Fn(zkc::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, zkc::Error>>,
    {
        let epoch = self.inner.status.borrow().epoch;
        match op(self.client()?).await {
            Err(zkc::Error::SessionExpired | zkc::Error::ClientClosed)
                if !self.inner.closed.is_cancelled() =>
            {
                self.wait_new_session(epoch).await?;
                op(self.client()?)
                    .await
                    .map_err(|e| CoordError::from_zk(path, e))
            }
            r => r.map_err(|e| CoordError::from_zk(path, e)),
        }
    }

    /// Raw data and stat of a node, `None` if it does not exist.
    pub async fn get_raw(&self, path: &str) -> Result<Option<(Vec<u8>, NodeStat)>, CoordError> {
        let r = self
            .read(path, |c| async move { c.get_data(path).await })
            .await;
        match r {
            Ok((data, stat)) => Ok(Some((data, NodeStat::from(&stat)))),
            Err(CoordError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A node's JSON payload and version, `None` if it does not exist.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<Versioned<T>>, CoordError> {
        match self.get_raw(path).await? {
            None => Ok(None),
            Some((data, stat)) => {
                let value = serde_json::from_slice(&data).map_err(|source| CoordError::Decode {
                    path: path.to_owned(),
                    source,
                })?;
                Ok(Some(Versioned {
                    value,
                    version: stat.version,
                }))
            }
        }
    }

    /// A node's stat, `None` if it does not exist.
    pub async fn stat(&self, path: &str) -> Result<Option<NodeStat>, CoordError> {
        let r = self
            .read(path, |c| async move { c.check_stat(path).await })
            .await?;
        Ok(r.as_ref().map(NodeStat::from))
    }

    /// The sorted names of a node's children; empty if the node does not exist.
    pub async fn children(&self, path: &str) -> Result<Vec<String>, CoordError> {
        match self
            .read(path, |c| async move { c.list_children(path).await })
            .await
        {
            Ok(mut v) => {
                v.sort();
                Ok(v)
            }
            Err(CoordError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Creates `path` and any missing parents as empty persistent nodes.
    pub async fn ensure_path(&self, path: &str) -> Result<(), CoordError> {
        let client = self.client()?;
        client
            .mkdir(path, &acl())
            .await
            .map_err(|e| CoordError::from_zk(path, e))
    }

    async fn ensure_parent(&self, path: &str) -> Result<(), CoordError> {
        match path.rfind('/') {
            Some(i) if i > 0 => self.ensure_path(&path[..i]).await,
            _ => Ok(()),
        }
    }

    /// Creates a persistent node (and its parents) with raw data; fails with `Exists` if it is there.
    pub async fn create_raw(&self, path: &str, data: &[u8]) -> Result<i32, CoordError> {
        self.ensure_parent(path).await?;
        let client = self.client()?;
        let (stat, _) = client
            .create(path, data, &acl())
            .await
            .map_err(|e| CoordError::from_zk(path, e))?;
        Ok(stat.version)
    }

    /// Creates a persistent node (and its parents) holding `value` as JSON.
    pub async fn create<T: Serialize>(&self, path: &str, value: &T) -> Result<i32, CoordError> {
        let data = serde_json::to_vec(value).map_err(CoordError::Encode)?;
        self.create_raw(path, &data).await
    }

    /// Replaces a node's data if its version is still `expected` (any version with `None`). Returns the new
    /// version; `Conflict` if someone changed it first, `NotFound` if it is gone.
    pub async fn set_raw(
        &self,
        path: &str,
        data: &[u8],
        expected: Option<i32>,
    ) -> Result<i32, CoordError> {
        let client = self.client()?;
        let stat = client
            .set_data(path, data, expected)
            .await
            .map_err(|e| CoordError::from_zk(path, e))?;
        Ok(stat.version)
    }

    /// [`Coord::set_raw`] with a JSON payload.
    pub async fn set<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        expected: Option<i32>,
    ) -> Result<i32, CoordError> {
        let data = serde_json::to_vec(value).map_err(CoordError::Encode)?;
        self.set_raw(path, &data, expected).await
    }

    /// Creates or overwrites a persistent node holding `value` as JSON.
    pub async fn put<T: Serialize>(&self, path: &str, value: &T) -> Result<i32, CoordError> {
        let data = serde_json::to_vec(value).map_err(CoordError::Encode)?;
        loop {
            match self.set_raw(path, &data, None).await {
                Err(CoordError::NotFound { .. }) => match self.create_raw(path, &data).await {
                    Err(CoordError::Exists { .. }) => continue,
                    r => return r,
                },
                r => return r,
            }
        }
    }

    /// Read-modify-write with compare-and-set, retried on conflicts: `f` gets the current value (or
    /// `None`) and returns the new one, or `None` to leave the node alone. Returns what was written.
    pub async fn update<T, F>(&self, path: &str, mut f: F) -> Result<Option<T>, CoordError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Option<T>,
    {
        for _ in 0..64 {
            let current = self.get::<T>(path).await?;
            let version = current.as_ref().map(|v| v.version);
            let Some(next) = f(current.map(|v| v.value)) else {
                return Ok(None);
            };
            let r = match version {
                Some(v) => self.set(path, &next, Some(v)).await,
                None => self.create(path, &next).await,
            };
            match r {
                Ok(_) => return Ok(Some(next)),
                Err(
                    CoordError::Conflict { .. }
                    | CoordError::Exists { .. }
                    | CoordError::NotFound { .. },
                ) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(CoordError::Conflict {
            path: path.to_owned(),
        })
    }

    /// Deletes a node if its version is `expected` (any with `None`). Returns false if it did not exist.
    pub async fn delete(&self, path: &str, expected: Option<i32>) -> Result<bool, CoordError> {
        let client = self.client()?;
        match client.delete(path, expected).await {
            Ok(()) => Ok(true),
            Err(zkc::Error::NoNode) => Ok(false),
            Err(e) => Err(CoordError::from_zk(path, e)),
        }
    }

    /// Deletes a node and everything under it (not atomic; concurrent creations under it may survive).
    pub async fn delete_recursive(&self, path: &str) -> Result<(), CoordError> {
        let mut stack = vec![path.to_owned()];
        let mut order = Vec::new();
        while let Some(p) = stack.pop() {
            for c in self.children(&p).await? {
                stack.push(format!("{p}/{c}"));
            }
            order.push(p);
        }
        for p in order.into_iter().rev() {
            self.delete(&p, None).await?;
        }
        Ok(())
    }

    /// Creates an ephemeral node now, without re-creating it after a session loss.
    pub async fn create_ephemeral_raw(
        &self,
        path: &str,
        data: &[u8],
    ) -> Result<NodeStat, CoordError> {
        self.ensure_parent(path).await?;
        let client = self.client()?;
        let (stat, _) = client
            .create(path, data, &ephemeral())
            .await
            .map_err(|e| CoordError::from_zk(path, e))?;
        Ok(NodeStat::from(&stat))
    }

    /// Registers an ephemeral node holding `value`. It lives as long as this client's session, and is
    /// created again on every new session until [`Registration::deregister`]. A stale node left by an
    /// earlier session of ours (a ZooKeeper restart keeps those for up to one session timeout) is replaced.
    pub async fn register_ephemeral<T: Serialize>(
        &self,
        path: &str,
        value: &T,
    ) -> Result<Registration, CoordError> {
        let data = serde_json::to_vec(value).map_err(CoordError::Encode)?;
        self.inner
            .ephemerals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), data.clone());
        if let Err(e) = self.claim_ephemeral(path, &data).await {
            self.inner
                .ephemerals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(path);
            return Err(e);
        }
        Ok(Registration {
            coord: self.clone(),
            path: path.to_owned(),
        })
    }

    /// Creates the ephemeral `path`, replacing a node owned by another session.
    async fn claim_ephemeral(&self, path: &str, data: &[u8]) -> Result<(), CoordError> {
        for _ in 0..16 {
            match self.create_ephemeral_raw(path, data).await {
                Ok(_) => return Ok(()),
                Err(CoordError::Exists { .. }) => {
                    let Some(stat) = self.stat(path).await? else {
                        continue;
                    };
                    if stat.ephemeral_owner == self.session_id()? {
                        self.set_raw(path, data, None).await?;
                        return Ok(());
                    }
                    tracing::warn!(
                        path,
                        owner = format!("{:#x}", stat.ephemeral_owner),
                        "Replacing an ephemeral node held by another session."
                    );
                    match self.delete(path, Some(stat.version)).await {
                        Ok(_) | Err(CoordError::Conflict { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(CoordError::Conflict {
            path: path.to_owned(),
        })
    }

    async fn restore_ephemerals(&self) {
        let all: Vec<(String, Vec<u8>)> = self
            .inner
            .ephemerals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (path, data) in all {
            match self.claim_ephemeral(&path, &data).await {
                Ok(()) => {
                    tracing::info!(path, "Ephemeral registration restored on the new session.")
                }
                Err(e) => {
                    tracing::error!(path, error = %e, "Cannot restore an ephemeral registration.")
                }
            }
        }
    }

    /// Starts a transaction: every operation applies, or none.
    pub fn txn(&self) -> super::txn::Txn {
        super::txn::Txn::new(self.clone())
    }
}

/// An ephemeral registration kept alive across sessions.
#[derive(Debug)]
pub struct Registration {
    coord: Coord,
    path: String,
}

impl Registration {
    /// The registered path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Replaces the registered payload (now, and for future sessions).
    pub async fn update<T: Serialize>(&self, value: &T) -> Result<(), CoordError> {
        let data = serde_json::to_vec(value).map_err(CoordError::Encode)?;
        self.coord
            .inner
            .ephemerals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.path.clone(), data.clone());
        match self.coord.set_raw(&self.path, &data, None).await {
            Err(CoordError::NotFound { .. }) => self.coord.claim_ephemeral(&self.path, &data).await,
            r => r.map(|_| ()),
        }
    }

    /// Removes the node and stops re-creating it.
    pub async fn deregister(self) -> Result<(), CoordError> {
        self.coord
            .inner
            .ephemerals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.path);
        self.coord.delete(&self.path, None).await.map(|_| ())
    }
}

/// Follows the session: publishes connects and disconnects, and replaces an expired session.
async fn monitor(weak: Weak<Inner>, mut state: zkc::StateWatcher, closed: CancellationToken) {
    loop {
        let s = tokio::select! {
            s = state.changed() => s,
            _ = closed.cancelled() => return,
        };
        let Some(inner) = weak.upgrade() else { return };
        match s {
            zkc::SessionState::Disconnected => {
                tracing::warn!(servers = %inner.cfg.servers, "Disconnected from ZooKeeper.");
                inner.status.send_modify(|st| st.connected = false);
            }
            zkc::SessionState::SyncConnected => {
                tracing::info!(servers = %inner.cfg.servers, "Reconnected to ZooKeeper, same session.");
                inner.status.send_modify(|st| {
                    st.connected = true;
                    st.connects += 1;
                });
            }
            other => {
                tracing::warn!(state = ?other, "ZooKeeper session ended, starting a new one.");
                inner.status.send_modify(|st| {
                    st.connected = false;
                    st.replacing = true;
                });
                let cfg = inner.cfg.clone();
                drop(inner);
                let mut backoff = Duration::from_millis(100);
                let client = loop {
                    let attempt = tokio::select! {
                        r = connect_client(&cfg) => r,
                        _ = closed.cancelled() => return,
                    };
                    match attempt {
                        Ok(c) => break c,
                        Err(e) => {
                            tracing::debug!(error = %e, "New ZooKeeper session not yet possible.");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = closed.cancelled() => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                };
                let Some(inner) = weak.upgrade() else { return };
                state = client.state_watcher();
                *inner.client.write().unwrap_or_else(|p| p.into_inner()) = Some(client);
                let coord = Coord { inner };
                coord.restore_ephemerals().await;
                coord.inner.status.send_modify(|st| {
                    st.epoch += 1;
                    st.connects += 1;
                    st.connected = true;
                    st.replacing = false;
                });
                tracing::info!(
                    epoch = coord.inner.status.borrow().epoch,
                    "New ZooKeeper session established."
                );
            }
        }
    }
}
