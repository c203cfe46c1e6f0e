//! Where the routing table comes from: the [`RouteSource`] seam.
//!
//! A source delivers the router configuration subtree (`ports/..`, `tries/..`, `rules/..`, `pools/..` and
//! `pools/<pool>/<host:port>`) as [`SourceEvent`]s, with paths relative to the subtree root, plus its
//! connection state. [`ZkSource`] mirrors ZooKeeper through common's `TreeCache` (a full `Reset` after every
//! reconnect, so edits made during an outage are applied); [`StaticSource`] is driven by hand in tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atlantis_common::zk::{Coord, Node, Registration, RouterKind, TreeCache, TreeEvent, ZkConfig};
use atlantis_common::{HostName, ZoneName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A change to the configuration subtree, or to the source's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// The whole subtree; replaces everything known before.
    Reset(BTreeMap<String, Node>),
    /// A node was created or changed.
    Upsert {
        /// Relative path, such as `rules/api`.
        path: String,
        /// Its data and version.
        node: Node,
    },
    /// A node was deleted.
    Remove {
        /// Relative path.
        path: String,
    },
    /// The source lost (`false`) or regained (`true`) its backing store. While lost, the router keeps its
    /// last table and reports DEGRADED.
    Connected(bool),
}

/// A stream of configuration changes.
pub trait RouteSource: Send + Sync + 'static {
    /// Starts delivering events; the first should be a `Reset` once the source can read.
    fn start(&self, shutdown: CancellationToken) -> mpsc::UnboundedReceiver<SourceEvent>;
}

impl From<TreeEvent> for SourceEvent {
    fn from(e: TreeEvent) -> Self {
        match e {
            TreeEvent::Reset(m) => SourceEvent::Reset(m),
            TreeEvent::Upsert { path, node } => SourceEvent::Upsert { path, node },
            TreeEvent::Remove { path } => SourceEvent::Remove { path },
        }
    }
}

/// A source fed by hand: tests push changes through [`StaticSource::send`].
pub struct StaticSource {
    tx: mpsc::UnboundedSender<SourceEvent>,
    rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<SourceEvent>>>,
}

impl StaticSource {
    /// A source whose first event is `Reset(initial)`.
    pub fn new(initial: BTreeMap<String, Node>) -> Arc<StaticSource> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(SourceEvent::Connected(true));
        let _ = tx.send(SourceEvent::Reset(initial));
        Arc::new(StaticSource {
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
        })
    }

    /// Delivers an event to the router.
    pub fn send(&self, ev: SourceEvent) {
        let _ = self.tx.send(ev);
    }

    /// Shorthand: upsert `path` with JSON `data` at `version`.
    pub fn upsert(&self, path: &str, data: &str, version: i32) {
        self.send(SourceEvent::Upsert {
            path: path.into(),
            node: Node {
                data: data.as_bytes().to_vec(),
                version,
            },
        });
    }
}

impl RouteSource for StaticSource {
    fn start(&self, _shutdown: CancellationToken) -> mpsc::UnboundedReceiver<SourceEvent> {
        self.rx.lock().take().unwrap_or_else(|| {
            let (_tx, rx) = mpsc::unbounded_channel();
            rx
        })
    }
}

/// The ZooKeeper source: mirrors `router/<kind>` and registers this router as an ephemeral node
/// `routers/<kind>/<zone>/<host>`.
pub struct ZkSource {
    cfg: ZkConfig,
    kind: RouterKind,
    zone: ZoneName,
    host: HostName,
    registration: serde_json::Value,
}

impl ZkSource {
    /// A source for fleet `kind`; `registration` is the JSON payload of the router's ephemeral node.
    pub fn new(
        cfg: ZkConfig,
        kind: RouterKind,
        zone: ZoneName,
        host: HostName,
        registration: serde_json::Value,
    ) -> ZkSource {
        ZkSource {
            cfg,
            kind,
            zone,
            host,
            registration,
        }
    }
}

impl RouteSource for ZkSource {
    fn start(&self, shutdown: CancellationToken) -> mpsc::UnboundedReceiver<SourceEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = self.cfg.clone();
        let (kind, zone, host, reg) = (
            self.kind,
            self.zone.clone(),
            self.host.clone(),
            self.registration.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = run_zk(cfg, kind, zone, host, reg, tx) => {}
                _ = shutdown.cancelled() => {}
            }
        });
        rx
    }
}

async fn run_zk(
    cfg: ZkConfig,
    kind: RouterKind,
    zone: ZoneName,
    host: HostName,
    reg: serde_json::Value,
    tx: mpsc::UnboundedSender<SourceEvent>,
) {
    // Connect, retrying: the router serves (nothing, or a table it is told about) while ZooKeeper is away.
    let coord = loop {
        match Coord::connect(cfg.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot reach ZooKeeper yet, retrying.");
                let _ = tx.send(SourceEvent::Connected(false));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let root = coord.layout().router_config(kind);
    let reg_path = coord.layout().router(kind, &zone, &host);
    let _registration: Option<Registration> = match coord.register_ephemeral(&reg_path, &reg).await
    {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(path = reg_path, error = %e, "Cannot register the router.");
            None
        }
    };
    let mut status = coord.status();
    let mut events = TreeCache::start(coord.clone(), &root);
    let mut connected = status.borrow().connected;
    let _ = tx.send(SourceEvent::Connected(connected));
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => {
                    if tx.send(ev.into()).is_err() { return; }
                }
                None => return,
            },
            r = status.changed() => {
                if r.is_err() { return; }
                let now = status.borrow().connected;
                if now != connected {
                    connected = now;
                    if now { tracing::info!("ZooKeeper connection is back."); } else { tracing::warn!("ZooKeeper connection lost; serving the last table."); }
                    if tx.send(SourceEvent::Connected(now)).is_err() { return; }
                }
            }
        }
    }
}
