//! Errors of the coordination layer.

/// What went wrong talking to ZooKeeper.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The node does not exist.
    #[error("{path}: no such node")]
    NotFound { path: String },
    /// The node already exists.
    #[error("{path}: node already exists")]
    Exists { path: String },
    /// A compare-and-set lost: someone else changed the node since it was read.
    #[error("{path}: changed concurrently (version conflict)")]
    Conflict { path: String },
    /// The node still has children.
    #[error("{path}: node has children")]
    NotEmpty { path: String },
    /// A transaction failed; nothing of it was applied.
    #[error("transaction failed at operation {index}: {source}")]
    Txn {
        index: usize,
        source: Box<CoordError>,
    },
    /// The session expired; the coordination layer is building a new one.
    #[error("ZooKeeper session expired")]
    SessionExpired,
    /// No answer from ZooKeeper in time.
    #[error("ZooKeeper unavailable: {0}")]
    Unavailable(String),
    /// The [`crate::zk::Coord`] was closed.
    #[error("coordination client closed")]
    Closed,
    /// A payload could not be decoded.
    #[error("{path}: invalid JSON payload: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
    /// A payload could not be encoded.
    #[error("cannot encode payload: {0}")]
    Encode(serde_json::Error),
    /// Any other ZooKeeper error.
    #[error("{path}: {source}")]
    Zk {
        path: String,
        source: zookeeper_client::Error,
    },
}

impl CoordError {
    /// Maps a client error on `path` to ours.
    pub(crate) fn from_zk(path: &str, e: zookeeper_client::Error) -> CoordError {
        use zookeeper_client::Error as E;
        let path = path.to_owned();
        match e {
            E::NoNode => CoordError::NotFound { path },
            E::NodeExists => CoordError::Exists { path },
            E::BadVersion => CoordError::Conflict { path },
            E::NotEmpty => CoordError::NotEmpty { path },
            E::SessionExpired => CoordError::SessionExpired,
            E::ClientClosed => CoordError::Closed,
            E::ConnectionLoss | E::Timeout | E::NoHosts => CoordError::Unavailable(e.to_string()),
            other => CoordError::Zk {
                path,
                source: other,
            },
        }
    }

    /// True for errors that a retry on a new or restored session may cure.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CoordError::SessionExpired | CoordError::Unavailable(_)
        )
    }
}
