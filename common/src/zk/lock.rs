//! Prefix locks: a lock on `app/env` conflicts with any lock on `app`, and with any lock on `app/env/...`.
//!
//! Holders are ephemeral children of `locks/`, named by their key's segments joined with `:`, so a lock
//! is released when its holder's session dies. Acquisition is linearizable: it reads the version of the
//! `locks` node, checks the holders for a conflict, then in one transaction checks that version, bumps
//! it, and creates its holder node. Two racing acquisitions both bump the version, so at most one
//! commits; the loser re-reads and sees the winner.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::client::Coord;
use super::error::CoordError;
use super::layout::is_segment;

/// A lock key: one or more segments, each a valid path segment without `:` (for example `["hello",
/// "prod"]` for a deploy of hello.prod, `["hello"]` for a teardown of every env of hello).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockKey(Vec<String>);

impl LockKey {
    /// Builds a key; refuses empty keys and segments that are empty, contain `/` or `:`, or are `.`/`..`.
    pub fn new<I, S>(segments: I) -> Result<LockKey, LockError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segs: Vec<String> = segments.into_iter().map(Into::into).collect();
        if segs.is_empty() {
            return Err(LockError::BadKey(
                "a lock key needs at least one segment".into(),
            ));
        }
        for s in &segs {
            if !is_segment(s) || s.contains(':') {
                return Err(LockError::BadKey(format!("invalid lock key segment {s:?}")));
            }
        }
        Ok(LockKey(segs))
    }

    fn encode(&self) -> String {
        self.0.join(":")
    }

    fn decode(s: &str) -> LockKey {
        LockKey(s.split(':').map(str::to_owned).collect())
    }

    /// True when one key is a prefix of the other (equal keys included).
    pub fn conflicts_with(&self, other: &LockKey) -> bool {
        let n = self.0.len().min(other.0.len());
        self.0[..n] == other.0[..n]
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// Who holds a lock, stored in the holder node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Schema version of this payload.
    #[serde(default = "one")]
    pub version: u32,
    /// Who took it (a manager host, a user).
    pub owner: String,
    /// What for (a task ID, an operation).
    #[serde(default)]
    pub purpose: String,
    /// When, in ms since the Unix epoch.
    #[serde(default)]
    pub since_ms: u64,
}

fn one() -> u32 {
    1
}

impl LockHolder {
    /// A holder record stamped with the current time.
    pub fn new(owner: impl Into<String>, purpose: impl Into<String>) -> LockHolder {
        let since_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        LockHolder {
            version: 1,
            owner: owner.into(),
            purpose: purpose.into(),
            since_ms,
        }
    }
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone holds a conflicting lock.
    #[error("{wanted} is locked: {held} is held by {} ({})", holder.owner, holder.purpose)]
    Conflict {
        wanted: String,
        held: String,
        holder: LockHolder,
    },
    /// The key is not valid.
    #[error("bad lock key: {0}")]
    BadKey(String),
    /// Waiting for the lock took too long.
    #[error("timed out waiting for lock {0}")]
    Timeout(String),
    /// ZooKeeper failed.
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// A held lock. Release it with [`LockGuard::release`]; dropping it releases it in the background; the
/// session's death releases it too.
#[derive(Debug)]
pub struct LockGuard {
    coord: Coord,
    path: String,
    session: i64,
    key: LockKey,
    released: bool,
}

impl LockGuard {
    /// The key held.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// True while the holder node still exists and belongs to the session that took it.
    pub async fn is_held(&self) -> Result<bool, CoordError> {
        Ok(self
            .coord
            .stat(&self.path)
            .await?
            .is_some_and(|s| s.ephemeral_owner == self.session))
    }

    /// Releases the lock.
    pub async fn release(mut self) -> Result<(), CoordError> {
        self.released = true;
        release(&self.coord, &self.path, self.session).await
    }
}

async fn release(coord: &Coord, path: &str, session: i64) -> Result<(), CoordError> {
    match coord.stat(path).await? {
        Some(s) if s.ephemeral_owner == session => {
            coord.delete(path, Some(s.version)).await.map(|_| ())
        }
        _ => Ok(()),
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (coord, path, session) = (self.coord.clone(), self.path.clone(), self.session);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = release(&coord, &path, session).await {
                    tracing::warn!(path, error = %e, "Cannot release a dropped lock; the session's end will.");
                }
            });
        }
    }
}

impl Coord {
    /// Takes the lock on `key` now, or fails with [`LockError::Conflict`] naming the holder.
    pub async fn try_lock(
        &self,
        key: &LockKey,
        holder: &LockHolder,
    ) -> Result<LockGuard, LockError> {
        let locks = self.layout().locks();
        self.ensure_path(&locks).await?;
        let data = serde_json::to_vec(holder).map_err(CoordError::Encode)?;
        let path = self.layout().lock(&key.encode());
        for _ in 0..32 {
            let Some(stat) = self.stat(&locks).await? else {
                continue;
            };
            for name in self.children(&locks).await? {
                let other = LockKey::decode(&name);
                if other.conflicts_with(key) {
                    let held = self
                        .get::<LockHolder>(&self.layout().lock(&name))
                        .await
                        .ok()
                        .flatten();
                    let Some(held_by) = held else { continue };
                    return Err(LockError::Conflict {
                        wanted: key.to_string(),
                        held: other.to_string(),
                        holder: held_by.value,
                    });
                }
            }
            let session = self.session_id()?;
            let r = self
                .txn()
                .check(&locks, stat.version)
                .set_raw(&locks, b"", Some(stat.version))
                .create_ephemeral_raw(&path, &data)
                .commit()
                .await;
            match r {
                Ok(_) => {
                    return Ok(LockGuard {
                        coord: self.clone(),
                        path,
                        session,
                        key: key.clone(),
                        released: false,
                    });
                }
                Err(CoordError::Txn { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoordError::Conflict { path: locks }.into())
    }

    /// Takes the lock on `key`, waiting up to `timeout` for conflicting holders to go away.
    pub async fn lock(
        &self,
        key: &LockKey,
        holder: &LockHolder,
        timeout: Duration,
    ) -> Result<LockGuard, LockError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let locks = self.layout().locks();
        loop {
            let seen = self.stat(&locks).await?;
            match self.try_lock(key, holder).await {
                Err(LockError::Conflict { .. }) => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if remaining.is_zero() {
                        return Err(LockError::Timeout(key.to_string()));
                    }
                    // Any release bumps the cversion of `locks`; wait for a change, bounded.
                    let _ = tokio::time::timeout(
                        remaining.min(Duration::from_secs(1)),
                        self.wait_for_change(&locks, seen),
                    )
                    .await;
                }
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_conflicts() {
        let k = |s: &[&str]| LockKey::new(s.iter().copied()).unwrap();
        assert!(k(&["app", "env"]).conflicts_with(&k(&["app"])));
        assert!(k(&["app"]).conflicts_with(&k(&["app", "env"])));
        assert!(k(&["app", "env"]).conflicts_with(&k(&["app", "env"])));
        assert!(!k(&["app", "env"]).conflicts_with(&k(&["app", "other"])));
        assert!(!k(&["app"]).conflicts_with(&k(&["apple"])));
        assert!(LockKey::new(Vec::<String>::new()).is_err());
        assert!(LockKey::new(["a:b"]).is_err());
        assert!(LockKey::new(["a/b"]).is_err());
        assert!(LockKey::new([".."]).is_err());
        assert_eq!(LockKey::decode(&k(&["a", "b"]).encode()), k(&["a", "b"]));
    }
}
