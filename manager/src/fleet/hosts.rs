//! The engine's view of the fleet: [`HostFleet`] gives the [`HostApi`] of a registered supervisor.
//! [`Supervisors`] is the real one (a [`SupervisorClient`] with the cluster token and mutual TLS);
//! [`FakeFleet`] maps host names to in-memory hosts ([`FakeHost`], or any `HostApi`, e.g. one that injects
//! faults) so the release engine runs in tests without a supervisor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atlantis_common::HostName;
use atlantis_common::api::supervisor::SupervisorRecord;
use atlantis_common::supervisor_client::SupervisorClient;
use parking_lot::Mutex;

use super::{FakeHost, HostApi, HostError};

/// Gives the API of one host, from its registration.
pub trait HostFleet: Send + Sync {
    /// The host behind `sup`.
    fn host(&self, sup: &SupervisorRecord) -> Result<Arc<dyn HostApi>, HostError>;
}

/// The real fleet: supervisors over HTTP(S) with the cluster token.
pub struct Supervisors {
    token: Arc<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    deploy_timeout: Duration,
}

impl Supervisors {
    /// Supervisors reached with `token` (and mutual `tls` when configured); one deploy call may take
    /// `deploy_timeout` (pull, start, health).
    pub fn new(
        token: Arc<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
        deploy_timeout: Duration,
    ) -> Supervisors {
        Supervisors {
            token,
            tls,
            deploy_timeout,
        }
    }

    /// The client of `sup` (also for what only the real supervisor offers: logs, exec).
    pub fn client(&self, sup: &SupervisorRecord) -> Result<SupervisorClient, HostError> {
        SupervisorClient::with_tls(&sup.address, &self.token, self.tls.as_deref().cloned())
            .map(|c| c.with_deploy_timeout(self.deploy_timeout))
            .map_err(HostError::from)
    }
}

impl HostFleet for Supervisors {
    fn host(&self, sup: &SupervisorRecord) -> Result<Arc<dyn HostApi>, HostError> {
        Ok(Arc::new(self.client(sup)?))
    }
}

/// An in-memory fleet: host name to host.
#[derive(Default, Clone)]
pub struct FakeFleet {
    hosts: Arc<Mutex<BTreeMap<HostName, Arc<dyn HostApi>>>>,
}

impl FakeFleet {
    /// Adds (or replaces) a host.
    pub fn insert(&self, host: HostName, api: Arc<dyn HostApi>) {
        self.hosts.lock().insert(host, api);
    }

    /// Adds a [`FakeHost`] under its own name; returns its registration (to write in ZooKeeper).
    pub fn add(&self, fake: FakeHost) -> SupervisorRecord {
        let rec = fake.record();
        self.insert(rec.host.clone(), Arc::new(fake));
        rec
    }
}

impl HostFleet for FakeFleet {
    fn host(&self, sup: &SupervisorRecord) -> Result<Arc<dyn HostApi>, HostError> {
        self.hosts.lock().get(&sup.host).cloned().ok_or(HostError {
            code: None,
            message: format!("no host {} in the fake fleet", sup.host),
        })
    }
}
