//! Where the routing table comes from: the [`RouteSource`] seam.
//!
//! A source delivers the router configuration subtree (`ports/..`, `tries/..`, `rules/..`, `pools/..` and
//! `pools/<pool>/<host:port>`) as [`SourceEvent`]s, with paths relative to the subtree root, plus its
//! connection state. [`ZkSource`] mirrors ZooKeeper through common's `TreeCache` (a full `Reset` after every
//! reconnect, so edits made during an outage are applied); [`StaticSource`] is driven by hand in tests.
//!
//! Reconnecting: the ZooKeeper client library backs off without bound between attempts, so after an
//! outage of a few seconds it may reconnect seconds after the server is back. While disconnected (and
//! before the first session) [`ZkSource`] probes the servers itself (`srvr`, every 100 ms doubling to
//! 400 ms) and, once one answers while the session is still down, closes it and opens a new one. The
//! registration is retried with bounded backoff until it succeeds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atlantis_common::routing::RouterAck;
use atlantis_common::zk::{Coord, Node, Registration, RouterKind, TreeCache, TreeEvent, ZkConfig};
use atlantis_common::{HostName, ZoneName};
use tokio::sync::{mpsc, watch};
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

    /// Names the configuration this source delivers (a snapshot is used only by a source of the same
    /// origin).
    fn origin(&self) -> String {
        "static".into()
    }

    /// Hands the source what the router reports about itself (generation served, draining backends),
    /// to publish where the manager reads it. Called before [`RouteSource::start`]; the default keeps
    /// it to itself.
    fn report(&self, _acks: watch::Receiver<RouterAck>) {}
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
    acks: parking_lot::Mutex<Option<watch::Receiver<RouterAck>>>,
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
            acks: parking_lot::Mutex::new(None),
        }
    }
}

impl RouteSource for ZkSource {
    fn origin(&self) -> String {
        format!("zookeeper:{}", self.cfg.layout().router_config(self.kind))
    }

    fn report(&self, acks: watch::Receiver<RouterAck>) {
        *self.acks.lock() = Some(acks);
    }

    fn start(&self, shutdown: CancellationToken) -> mpsc::UnboundedReceiver<SourceEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Without a reporter (a source started on its own), nothing is published.
        let acks = self
            .acks
            .lock()
            .take()
            .unwrap_or_else(|| watch::channel(RouterAck::default()).1);
        let cfg = self.cfg.clone();
        let (kind, zone, host, reg) = (
            self.kind,
            self.zone.clone(),
            self.host.clone(),
            self.registration.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = run_zk(cfg, Me { kind, zone, host, reg }, acks, tx) => {}
                _ = shutdown.cancelled() => {}
            }
        });
        rx
    }
}

/// The first wait between probes of an unreachable ZooKeeper; it doubles up to [`PROBE_MAX`].
const PROBE_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between probes, so the router notices ZooKeeper's return within this much.
const PROBE_MAX: Duration = Duration::from_millis(400);
/// How long one probe of one server may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a new session may take to open once a server answers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Doubling waits, bounded.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(PROBE_FIRST)
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(PROBE_MAX);
        d
    }
}

/// Whether a server of `servers` (a connect string, `host:port,...[/chroot]`) is up and serving: it
/// answers the `srvr` command. A server that refuses the command (not in its whitelist) is up too; one
/// that says it is not serving (no quorum), closes at once or does not answer is not.
pub async fn zookeeper_answers(servers: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hosts = servers.split('/').next().unwrap_or("");
    for hp in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let probe = async {
            let mut s = tokio::net::TcpStream::connect(hp).await.ok()?;
            s.write_all(b"srvr").await.ok()?;
            let mut buf = Vec::with_capacity(512);
            let _ = (&mut s).take(4096).read_to_end(&mut buf).await;
            let text = String::from_utf8_lossy(&buf);
            (!buf.is_empty() && !text.contains("not currently serving")).then_some(())
        };
        if let Ok(Some(())) = tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            return true;
        }
    }
    false
}

/// Opens a session as soon as ZooKeeper answers: probes with bounded backoff (the client library's own
/// reconnect backs off without bound, up to seconds after the server is back), then connects.
async fn connect_when_up(cfg: &ZkConfig) -> Coord {
    let mut backoff = Backoff::new();
    let mut warned = false;
    loop {
        if zookeeper_answers(&cfg.servers).await {
            let error =
                match tokio::time::timeout(CONNECT_TIMEOUT, Coord::connect(cfg.clone())).await {
                    Ok(Ok(c)) => return c,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
            // Warned once; then quiet (it is retried every 400 ms at most).
            if std::mem::replace(&mut warned, true) {
                tracing::debug!(error, "ZooKeeper answers but the session failed, retrying.");
            } else {
                tracing::warn!(error, "ZooKeeper answers but the session failed, retrying.");
            }
        } else if !warned {
            warned = true;
            tracing::warn!(servers = %cfg.servers, "Cannot reach ZooKeeper yet, retrying.");
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Who this router is: its fleet, zone, host and registration document.
struct Me {
    kind: RouterKind,
    zone: ZoneName,
    host: HostName,
    reg: serde_json::Value,
}

/// The shortest time between two writes of the router's acknowledgement node.
const ACK_EVERY: Duration = Duration::from_millis(100);

async fn run_zk(
    cfg: ZkConfig,
    me: Me,
    mut acks: watch::Receiver<RouterAck>,
    tx: mpsc::UnboundedSender<SourceEvent>,
) {
    let _ = tx.send(SourceEvent::Connected(false));
    loop {
        // Connect, retrying: the router serves its snapshot (or nothing) while ZooKeeper is away.
        let coord = connect_when_up(&cfg).await;
        // A new session publishes the current report again.
        acks.mark_changed();
        let outcome = follow(&coord, &cfg.servers, &me, &mut acks, &tx).await;
        // Closing stops this session's tree cache and keeps it from re-registering later.
        coord.close();
        if outcome.is_none() {
            return;
        }
        tracing::info!(
            "ZooKeeper answers again but the session has not reconnected; opening a new one."
        );
    }
}

/// Mirrors the tree and keeps the registration on one `Coord` until the receiver is gone (`None`), or
/// until ZooKeeper answers while this session is still disconnected (`Some`: the caller opens another).
async fn follow(
    coord: &Coord,
    servers: &str,
    me: &Me,
    acks: &mut watch::Receiver<RouterAck>,
    tx: &mpsc::UnboundedSender<SourceEvent>,
) -> Option<()> {
    let Me {
        kind,
        zone,
        host,
        reg,
    } = me;
    let kind = *kind;
    let root = coord.layout().router_config(kind);
    let reg_path = coord.layout().router(kind, zone, host);
    let ack_path = coord.layout().router_ack(kind, zone, host);
    // The acknowledgement node: created on the first report, then updated (re-created with the
    // latest report on every new session by the registration itself).
    let mut ack: Option<Registration> = None;
    // A report waits to be written (at most one write per ACK_EVERY).
    let mut ack_pending = false;
    let mut acks_open = true;
    let ack_next = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(ack_next);
    let mut status = coord.status();
    let mut events = TreeCache::start(coord.clone(), &root);
    let mut connected = status.borrow().connected;
    tx.send(SourceEvent::Connected(connected)).ok()?;
    // Registration is retried (bounded backoff) until it succeeds; it does not hold up the tree.
    let mut registration: Option<Registration> = None;
    let mut reg_backoff = Backoff::new();
    let reg_retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(reg_retry);
    let mut reg_failures = 0u32;
    let mut probe_backoff = Backoff::new();
    let probe = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(probe);
    loop {
        tokio::select! {
            ev = events.recv() => {
                tx.send(ev?.into()).ok()?;
            }
            r = status.changed() => {
                r.ok()?;
                let now = status.borrow().connected;
                if now != connected {
                    connected = now;
                    if now {
                        tracing::info!("ZooKeeper connection is back.");
                    } else {
                        tracing::warn!("ZooKeeper connection lost; serving the last table.");
                        probe_backoff = Backoff::new();
                        probe.as_mut().reset(tokio::time::Instant::now() + probe_backoff.next());
                    }
                    tx.send(SourceEvent::Connected(now)).ok()?;
                }
            }
            _ = &mut reg_retry, if registration.is_none() => {
                match tokio::time::timeout(CONNECT_TIMEOUT, coord.register_ephemeral(&reg_path, reg)).await {
                    Ok(Ok(r)) => {
                        if reg_failures > 0 {
                            tracing::info!(path = reg_path, "Router registered.");
                        }
                        registration = Some(r);
                    }
                    failed => {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".into(),
                        };
                        if reg_failures == 0 {
                            tracing::warn!(path = reg_path, error, "Cannot register the router yet, retrying.");
                        }
                        reg_failures += 1;
                        let wait = if connected { reg_backoff.next() } else { PROBE_MAX };
                        reg_retry.as_mut().reset(tokio::time::Instant::now() + wait);
                    }
                }
            }
            r = acks.changed(), if !ack_pending && acks_open => {
                // An error: the router is gone, nothing more to report.
                acks_open = r.is_ok();
                ack_pending = acks_open;
            }
            _ = &mut ack_next, if ack_pending && connected => {
                let doc = acks.borrow_and_update().clone();
                let wrote = match &ack {
                    Some(r) => tokio::time::timeout(CONNECT_TIMEOUT, r.update(&doc)).await.map(|r| r.map(|_| None)),
                    None => tokio::time::timeout(CONNECT_TIMEOUT, coord.register_ephemeral(&ack_path, &doc)).await.map(|r| r.map(Some)),
                };
                match wrote {
                    Ok(Ok(created)) => {
                        if let Some(r) = created {
                            ack = Some(r);
                        }
                        ack_pending = false;
                        tracing::debug!(generation = ?doc.generation, draining = doc.draining.len(), "Router acknowledgement written.");
                    }
                    Ok(Err(e)) => tracing::debug!(path = ack_path, error = %e, "Cannot write the router acknowledgement yet, retrying."),
                    Err(_) => tracing::debug!(path = ack_path, "Writing the router acknowledgement timed out, retrying."),
                }
                ack_next.as_mut().reset(tokio::time::Instant::now() + ACK_EVERY);
            }
            _ = &mut probe, if !connected => {
                if zookeeper_answers(servers).await && !status.borrow().connected {
                    return Some(());
                }
                probe.as_mut().reset(tokio::time::Instant::now() + probe_backoff.next());
            }
        }
    }
}
