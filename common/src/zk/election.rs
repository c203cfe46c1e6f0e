//! Leader election: whoever holds the ephemeral leader node leads.
//!
//! Candidates try to create the node; the others watch it and try again when it goes. Leadership ends
//! when the session that created the node ends (the node goes with it) or on [`Leadership::resign`].
//! After a ZooKeeper restart a dead leader's node can linger for one session timeout; candidates simply
//! wait it out.

use serde::{Deserialize, Serialize};

use super::client::Coord;
use super::error::CoordError;

/// What the leader node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// Schema version.
    pub version: u32,
    /// The leader's identity (a host name).
    pub id: String,
}

/// A won election.
#[derive(Debug)]
pub struct Leadership {
    coord: Coord,
    path: String,
    session: i64,
    epoch: u64,
    id: String,
}

impl Coord {
    /// Campaigns for leadership at `path` as `id` and returns once elected.
    pub async fn campaign(&self, path: &str, id: &str) -> Result<Leadership, CoordError> {
        let data = serde_json::to_vec(&LeaderRecord {
            version: 1,
            id: id.to_owned(),
        })
        .map_err(CoordError::Encode)?;
        loop {
            let session = self.session_id()?;
            let epoch = self.inner_status().epoch;
            tracing::debug!(path, id, session = format!("{session:#x}"), "Campaigning.");
            match self.create_ephemeral_raw(path, &data).await {
                Ok(_) => {
                    tracing::info!(path, id, "Elected leader.");
                    return Ok(Leadership {
                        coord: self.clone(),
                        path: path.to_owned(),
                        session,
                        epoch,
                        id: id.to_owned(),
                    });
                }
                Err(CoordError::Exists { .. }) => {
                    tracing::debug!(path, id, "Leader node exists, waiting.");
                    // Ours from a restored session? Then we already lead.
                    let seen = self.stat(path).await?;
                    if seen.is_none() {
                        continue; // gone already: try again at once
                    }
                    if seen.is_some_and(|s| s.ephemeral_owner == session) {
                        return Ok(Leadership {
                            coord: self.clone(),
                            path: path.to_owned(),
                            session,
                            epoch,
                            id: id.to_owned(),
                        });
                    }
                    match self.wait_for_change(path, seen).await {
                        Ok(s) => tracing::debug!(path, id, ?s, "Leader node changed."),
                        Err(CoordError::Closed) => return Err(CoordError::Closed),
                        Err(e) => {
                            tracing::debug!(error = %e, "Election watch failed, retrying.");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The current leader's identity, if any.
    pub async fn leader(&self, path: &str) -> Result<Option<String>, CoordError> {
        Ok(self.get::<LeaderRecord>(path).await?.map(|v| v.value.id))
    }
}

impl Leadership {
    /// This candidate's identity.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True while the leader node exists and belongs to the session that won.
    pub async fn is_leader(&self) -> bool {
        matches!(self.coord.stat(&self.path).await, Ok(Some(s)) if s.ephemeral_owner == self.session)
    }

    /// Resolves when leadership is lost: the node is gone or owned by another session, or our session
    /// ended. Background work must stop when this fires.
    pub async fn lost(&self) {
        let mut status = self.coord.status();
        let closed = self.coord.closed();
        loop {
            let seen = match self.coord.stat(&self.path).await {
                Ok(Some(s)) if s.ephemeral_owner == self.session => Some(s),
                Ok(_) | Err(CoordError::Closed) => return,
                Err(_) => None,
            };
            if status.borrow_and_update().epoch != self.epoch {
                return;
            }
            tokio::select! {
                _ = self.coord.wait_for_change(&self.path, seen) => {}
                r = status.changed() => if r.is_err() { return },
                _ = closed.cancelled() => return,
            }
        }
    }

    /// Gives leadership up.
    pub async fn resign(self) -> Result<(), CoordError> {
        match self.coord.stat(&self.path).await? {
            Some(s) if s.ephemeral_owner == self.session => self
                .coord
                .delete(&self.path, Some(s.version))
                .await
                .map(|_| ()),
            _ => Ok(()),
        }
    }
}
