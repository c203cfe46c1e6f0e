//! The axum state: the release engine plus what only handlers need (the real supervisors' clients for
//! logs and exec, the cluster token). Handlers call the engine through it; the engine never sees it.

use std::ops::Deref;
use std::sync::Arc;

use atlantis_common::api::supervisor::SupervisorRecord;
use atlantis_common::supervisor_client::SupervisorClient;

use crate::fleet::HostError;
use crate::fleet::hosts::Supervisors;
use crate::release::Engine;

/// What handlers share.
#[derive(Clone)]
pub struct Ctx {
    /// The engine (and through it ZooKeeper, the history, tasks, configuration).
    pub engine: Engine,
    /// The real supervisors (logs and exec stream from them).
    pub supervisors: Arc<Supervisors>,
    /// The cluster token (also what registry tokens are derived from).
    pub token: Arc<String>,
}

impl Deref for Ctx {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl Ctx {
    /// The HTTP client of a supervisor.
    pub fn client(&self, sup: &SupervisorRecord) -> Result<SupervisorClient, HostError> {
        self.supervisors.client(sup)
    }
}
