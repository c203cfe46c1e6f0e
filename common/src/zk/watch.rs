//! Data and child watch streams.
//!
//! ZooKeeper watches fire once and die with their session. These streams re-arm them after every event
//! and on every new session, and deliver the *latest state* (not the raw events), skipping duplicates.
//! A stream ends when its receiver is dropped or the [`Coord`] closes.

use std::time::Duration;

use tokio::sync::mpsc;
use zookeeper_client as zkc;

use super::client::{Coord, NodeStat};

/// A node's data as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeData {
    /// Raw payload.
    pub data: Vec<u8>,
    /// Data version.
    pub version: i32,
}

/// What woke a watch loop.
enum Wake {
    Again,
    Stop,
}

impl Coord {
    /// Follows a node's data: `Some` with the current payload, `None` while it does not exist. The first
    /// item is the state at the time of the call.
    pub fn watch_data(&self, path: &str) -> mpsc::Receiver<Option<NodeData>> {
        self.follow(path, |client, path| async move {
            match client.get_and_watch_data(&path).await {
                Ok((data, stat, w)) => Ok(Some((
                    Some(NodeData {
                        data,
                        version: stat.version,
                    }),
                    w,
                ))),
                Err(zkc::Error::NoNode) => match client.check_and_watch_stat(&path).await? {
                    (None, w) => Ok(Some((None, w))),
                    (Some(_), _) => Ok(None), // created in between: read again
                },
                Err(e) => Err(e),
            }
        })
    }

    /// Follows a node's children: the sorted child names, empty while the node does not exist.
    pub fn watch_children(&self, path: &str) -> mpsc::Receiver<Vec<String>> {
        self.follow(path, |client, path| async move {
            match client.get_and_watch_children(&path).await {
                Ok((mut names, _, w)) => {
                    names.sort();
                    Ok(Some((names, w)))
                }
                Err(zkc::Error::NoNode) => match client.check_and_watch_stat(&path).await? {
                    (None, w) => Ok(Some((Vec::new(), w))),
                    (Some(_), _) => Ok(None),
                },
                Err(e) => Err(e),
            }
        })
    }

    /// The loop behind both watches: read and arm, send the state if it changed, wait, repeat; wait for
    /// a new session when the current one ends. `read` returns `None` to ask for an immediate re-read.
    fn follow<T, F, Fut>(&self, path: &str, read: F) -> mpsc::Receiver<T>
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(zkc::Client, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Option<(T, zkc::OneshotWatcher)>, zkc::Error>>
            + Send,
    {
        let (tx, rx) = mpsc::channel(16);
        let coord = self.clone();
        let path = path.to_owned();
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            loop {
                let Ok(client) = coord.client() else { return };
                let epoch = coord.inner_status().epoch;
                let (item, watcher) = match read(client, path.clone()).await {
                    Ok(Some(v)) => v,
                    Ok(None) => continue,
                    Err(e) => {
                        if let Wake::Stop = coord.recover(&e, epoch, &tx).await {
                            return;
                        }
                        continue;
                    }
                };
                if last.as_ref() != Some(&item) {
                    if tx.send(item.clone()).await.is_err() {
                        return;
                    }
                    last = Some(item);
                }
                if let Wake::Stop = coord.wait_watch(watcher, epoch, &tx).await {
                    return;
                }
            }
        });
        rx
    }

    /// Waits until a node differs from `seen` (its stat when last looked at, `None` for absent): created,
    /// deleted, data or children changed. Returns at once if it already differs. Returns the stat then.
    pub async fn wait_for_change(
        &self,
        path: &str,
        seen: Option<NodeStat>,
    ) -> Result<Option<NodeStat>, super::CoordError> {
        let client = self.client()?;
        let (now, watcher) = client
            .check_and_watch_stat(path)
            .await
            .map_err(|e| super::CoordError::from_zk(path, e))?;
        let now = now.as_ref().map(NodeStat::from);
        let same = match (&now, &seen) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.version == b.version
                    && a.cversion == b.cversion
                    && a.ephemeral_owner == b.ephemeral_owner
            }
            _ => false,
        };
        if !same {
            return Ok(now);
        }
        let closed = self.closed();
        tokio::select! {
            _ = watcher.changed() => {}
            _ = closed.cancelled() => return Err(super::CoordError::Closed),
        }
        self.stat(path).await
    }

    pub(crate) fn inner_status(&self) -> super::SessionStatus {
        *self.status().borrow()
    }

    async fn wait_watch<T>(
        &self,
        watcher: zkc::OneshotWatcher,
        epoch: u64,
        tx: &mpsc::Sender<T>,
    ) -> Wake {
        let closed = self.closed();
        let event = tokio::select! {
            ev = watcher.changed() => ev,
            _ = tx.closed() => return Wake::Stop,
            _ = closed.cancelled() => return Wake::Stop,
        };
        if event.event_type == zkc::EventType::Session {
            // The session ended under the watch: wait for its replacement.
            return self.await_session(epoch, tx).await;
        }
        Wake::Again
    }

    async fn recover<T>(&self, e: &zkc::Error, epoch: u64, tx: &mpsc::Sender<T>) -> Wake {
        match e {
            zkc::Error::SessionExpired | zkc::Error::ClientClosed => {
                self.await_session(epoch, tx).await
            }
            other => {
                tracing::debug!(error = %other, "Watch could not be set, retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => Wake::Again,
                    _ = tx.closed() => Wake::Stop,
                }
            }
        }
    }

    async fn await_session<T>(&self, epoch: u64, tx: &mpsc::Sender<T>) -> Wake {
        let mut status = self.status();
        let closed = self.closed();
        tokio::select! {
            r = status.wait_for(|s| s.epoch != epoch && s.connected) => if r.is_ok() { Wake::Again } else { Wake::Stop },
            _ = tx.closed() => Wake::Stop,
            _ = closed.cancelled() => Wake::Stop,
        }
    }
}
