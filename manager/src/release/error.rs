//! What the engine fails with. The API maps it to its `ApiError` in one place (`impl From<EngineError>
//! for ApiError` in `crate::api`); tasks record its text.

use atlantis_common::api::manager::FieldError;
use atlantis_common::zk::{CoordError, LockError};

use crate::deps::OpenError;
use crate::history::HistoryError;
use crate::images::ImageError;
use crate::tasks::TaskError;

/// An engine failure: a refusal before anything happens (answered to the request), or why a task stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such app, env, release or container.
    #[error("{0}")]
    NotFound(String),
    /// A field of the request or the resulting container spec is not acceptable.
    #[error("{0}")]
    InvalidField(#[from] FieldError),
    /// The image or the request cannot be used.
    #[error("{0}")]
    InvalidRequest(String),
    /// The registry has no image for the commit.
    #[error("{0}")]
    ImageNotFound(String),
    /// The registry did not answer.
    #[error("{0}")]
    Registry(String),
    /// Some zone lacks room, or no stable port is left.
    #[error("{0}")]
    NoCapacity(String),
    /// The container is not in a state that allows it.
    #[error("{0}")]
    InUse(String),
    /// The app depends on something it is not granted (`crate::grants`).
    #[error("{0}")]
    DependencyNotGranted(String),
    /// Another task holds a conflicting lock (or the lock could not be taken).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// ZooKeeper failed.
    #[error("ZooKeeper: {0}")]
    Coord(#[from] CoordError),
    /// The history database failed.
    #[error("history database: {0}")]
    History(#[from] HistoryError),
    /// A stored dependency cannot be opened.
    #[error(transparent)]
    Dependency(#[from] OpenError),
    /// Containers did not start (each failure named); the ones that did were removed again.
    #[error("containers did not start: {}", .0.join("; "))]
    NotStarted(Vec<String>),
    /// The switch transaction did not commit; the old release still serves.
    #[error("the switch transaction failed (old release still serves): {0}")]
    Switch(CoordError),
    /// The task was taken over by another manager, or its journal could not be written.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// Something that cannot happen with validated names (an unusable lock key).
    #[error("internal error: {0}")]
    Internal(String),
    /// TEST-ONLY: the task stopped at a chosen phase as if its manager had died (no cleanup, the
    /// task node left running for recovery).
    #[error("simulated crash at {0:?}")]
    Crashed(crate::tasks::Phase),
}

impl From<ImageError> for EngineError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::NotFound { .. } => EngineError::ImageNotFound(e.to_string()),
            ImageError::Manifest(m) => EngineError::InvalidRequest(m),
            ImageError::Registry(m) => EngineError::Registry(m),
        }
    }
}
