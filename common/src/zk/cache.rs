//! `TreeCache`: a live mirror of a subtree, delivered as events.
//!
//! One persistent recursive watch covers the subtree; each event re-reads only the node it names, so a
//! change among 10,000 nodes costs one read. After every (re)connection, and on a new session, the whole
//! subtree is read again and sent as a [`TreeEvent::Reset`]: events missed while disconnected
//! (ZOOKEEPER-4698) or while the session was being replaced are never lost. Consumers keep their own map:
//! apply `Reset` by replacing it (diffing by version if they cache derived state), `Upsert` and `Remove`
//! by editing it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::mpsc;
use zookeeper_client as zkc;

use super::client::Coord;
use super::error::CoordError;

/// One node of the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Raw payload.
    pub data: Vec<u8>,
    /// Data version.
    pub version: i32,
}

/// A change to the mirror. Paths are relative to the cache root, without a leading slash
/// (`pools/web/10.0.0.1:80`); the root itself is not part of the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEvent {
    /// The complete subtree as just read; replaces everything known before.
    Reset(BTreeMap<String, Node>),
    /// A node was created or its data changed.
    Upsert {
        /// Relative path.
        path: String,
        /// The node now.
        node: Node,
    },
    /// A node was deleted.
    Remove {
        /// Relative path.
        path: String,
    },
}

/// Starts mirroring `root` (created if missing). The mirror runs until the receiver is dropped or the
/// [`Coord`] closes.
pub struct TreeCache;

type DataRead = Result<(Vec<u8>, zkc::Stat), zkc::Error>;

/// Reads at most this many nodes at once during a full scan.
const SCAN_CONCURRENCY: usize = 64;

impl TreeCache {
    /// Starts the mirror; the first event is a `Reset` with the current subtree.
    pub fn start(coord: Coord, root: &str) -> mpsc::UnboundedReceiver<TreeEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let root = root.to_owned();
        tokio::spawn(async move {
            run(coord, root, tx).await;
        });
        rx
    }
}

async fn run(coord: Coord, root: String, tx: mpsc::UnboundedSender<TreeEvent>) {
    let closed = coord.closed();
    let mut status = coord.status();
    let mut map: BTreeMap<String, Node> = BTreeMap::new();
    loop {
        let connects = status.borrow_and_update().connects;
        let Ok(client) = coord.client() else { return };
        let attempt = async {
            coord.ensure_path(&root).await?;
            let watcher = client
                .watch(&root, zkc::AddWatchMode::PersistentRecursive)
                .await
                .map_err(|e| CoordError::from_zk(&root, e))?;
            let snapshot = scan(&client, &root).await?;
            Ok::<_, CoordError>((watcher, snapshot))
        };
        let (mut watcher, snapshot) = match attempt.await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(root, error = %e, "Tree cache cannot read yet, retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = tx.closed() => return,
                    _ = closed.cancelled() => return,
                }
            }
        };
        if snapshot != map || map.is_empty() {
            map = snapshot;
            if tx.send(TreeEvent::Reset(map.clone())).is_err() {
                return;
            }
        }
        // Follow events until the connection is lost or re-established.
        loop {
            let event = tokio::select! {
                ev = watcher.changed() => ev,
                r = status.changed() => {
                    if r.is_err() { return; }
                    if status.borrow().connects != connects { break; }
                    continue;
                }
                _ = tx.closed() => return,
                _ = closed.cancelled() => return,
            };
            let Some(rel) = relative(&root, &event.path) else {
                continue;
            };
            match event.event_type {
                zkc::EventType::Session => match event.session_state {
                    zkc::SessionState::SyncConnected => break,
                    zkc::SessionState::Disconnected => continue,
                    // Terminal: this watcher must not be polled again; wait for the new session.
                    _ => {
                        let epoch = status.borrow().epoch;
                        tokio::select! {
                            r = status.wait_for(|s| s.epoch != epoch && s.connected) => if r.is_err() { return },
                            _ = tx.closed() => return,
                            _ = closed.cancelled() => return,
                        }
                        break;
                    }
                },
                zkc::EventType::NodeCreated | zkc::EventType::NodeDataChanged => {
                    match client.get_data(&event.path).await {
                        Ok((data, stat)) => {
                            let node = Node {
                                data,
                                version: stat.version,
                            };
                            if map.get(&rel) != Some(&node) {
                                map.insert(rel.clone(), node.clone());
                                if tx.send(TreeEvent::Upsert { path: rel, node }).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(zkc::Error::NoNode) => {
                            if map.remove(&rel).is_some()
                                && tx.send(TreeEvent::Remove { path: rel }).is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(path = event.path, error = %e, "Tree cache read failed, rescanning.");
                            break;
                        }
                    }
                }
                zkc::EventType::NodeDeleted => {
                    if map.remove(&rel).is_some()
                        && tx.send(TreeEvent::Remove { path: rel }).is_err()
                    {
                        return;
                    }
                }
                zkc::EventType::NodeChildrenChanged => {}
            }
        }
    }
}

/// `path` relative to `root`; `Some("")` is the root itself and session events have an empty path.
fn relative(root: &str, path: &str) -> Option<String> {
    if path.is_empty() {
        return Some(String::new());
    }
    let rest = path.strip_prefix(root)?;
    if rest.is_empty() {
        return None;
    }
    rest.strip_prefix('/').map(str::to_owned)
}

/// Reads the whole subtree under `root`, level by level, many reads in flight.
async fn scan(client: &zkc::Client, root: &str) -> Result<BTreeMap<String, Node>, CoordError> {
    let mut out = BTreeMap::new();
    let mut level = vec![root.to_owned()];
    while !level.is_empty() {
        let listed: Vec<(String, Result<Vec<String>, zkc::Error>)> = futures::stream::iter(level)
            .map(|p| async move {
                let r = client.list_children(&p).await;
                (p, r)
            })
            .buffer_unordered(SCAN_CONCURRENCY)
            .collect()
            .await;
        let mut next = Vec::new();
        for (parent, r) in listed {
            match r {
                Ok(children) => next.extend(children.into_iter().map(|c| format!("{parent}/{c}"))),
                Err(zkc::Error::NoNode) => {}
                Err(e) => return Err(CoordError::from_zk(&parent, e)),
            }
        }
        let read: Vec<(String, DataRead)> = futures::stream::iter(next.clone())
            .map(|p| async move {
                let r = client.get_data(&p).await;
                (p, r)
            })
            .buffer_unordered(SCAN_CONCURRENCY)
            .collect()
            .await;
        for (path, r) in read {
            match r {
                Ok((data, stat)) => {
                    let rel = relative(root, &path).unwrap_or_default();
                    out.insert(
                        rel,
                        Node {
                            data,
                            version: stat.version,
                        },
                    );
                }
                Err(zkc::Error::NoNode) => {}
                Err(e) => return Err(CoordError::from_zk(&path, e)),
            }
        }
        level = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn relative_paths() {
        assert_eq!(super::relative("/a/b", "/a/b/c/d").as_deref(), Some("c/d"));
        assert_eq!(super::relative("/a/b", "/a/b"), None);
        assert_eq!(super::relative("/a/b", "/a/bc"), None);
        assert_eq!(super::relative("/a/b", "").as_deref(), Some(""));
    }
}
