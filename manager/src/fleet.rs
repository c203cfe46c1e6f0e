//! The seam between the engine and the supervisors: [`HostApi`] is what the manager asks of one host
//! (deploy, teardown, list, replace a container's dependencies). [`SupervisorClient`] is the real one (HTTP to a supervisor); [`FakeHost`] is
//! an in-memory host for scale tests and benchmarks (a thousand hosts in one process). Both pass the same
//! contract, [`contract::check`]: the fake in this crate's unit tests, the real one against a supervisor on
//! a real dockerd in `manager/tests/ha`.

use std::collections::BTreeMap;
use std::sync::Arc;

use atlantis_common::api::supervisor::{
    ContainerInfo, ContainerSpec, ContainerState, Dependency, PortBinding, Resources,
    SupervisorRecord, TeardownRequest, validate_dependencies,
};
use atlantis_common::supervisor_client::{ClientError, SupervisorClient};
use atlantis_common::{ContainerId, HostName, ZoneName};
use futures::future::BoxFuture;
use parking_lot::Mutex;

pub mod contract;
pub mod hosts;

/// Why a host call failed: the supervisor's stable code when it answered (`duplicate`, `no_capacity`,
/// `invalid_spec`, ...), `None` when it did not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HostError {
    /// The stable code.
    pub code: Option<String>,
    /// What happened.
    pub message: String,
}

impl From<ClientError> for HostError {
    fn from(e: ClientError) -> HostError {
        HostError {
            code: e.code().map(str::to_owned),
            message: e.to_string(),
        }
    }
}

/// What the manager asks of one supervisor.
pub trait HostApi: Send + Sync {
    /// Starts a container; answers once it is healthy.
    fn deploy<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<ContainerInfo, HostError>>;
    /// Removes containers; returns the IDs removed (unknown IDs are not an error).
    fn teardown<'a>(
        &'a self,
        ids: &'a [ContainerId],
    ) -> BoxFuture<'a, Result<Vec<ContainerId>, HostError>>;
    /// Every container the host runs.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerInfo>, HostError>>;
    /// Replaces what a running container may reach (its firewall grants) at once; `not_found` for a
    /// container the host does not run.
    fn set_dependencies<'a>(
        &'a self,
        id: &'a ContainerId,
        dependencies: &'a [Dependency],
    ) -> BoxFuture<'a, Result<ContainerInfo, HostError>>;
}

impl HostApi for SupervisorClient {
    fn deploy<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<ContainerInfo, HostError>> {
        Box::pin(async move { Ok(SupervisorClient::deploy(self, spec).await?) })
    }

    fn teardown<'a>(
        &'a self,
        ids: &'a [ContainerId],
    ) -> BoxFuture<'a, Result<Vec<ContainerId>, HostError>> {
        Box::pin(async move {
            let r = SupervisorClient::teardown(
                self,
                &TeardownRequest {
                    container_ids: ids.to_vec(),
                    ..Default::default()
                },
            )
            .await?;
            Ok(r.removed)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerInfo>, HostError>> {
        Box::pin(async move { Ok(SupervisorClient::list(self).await?) })
    }

    fn set_dependencies<'a>(
        &'a self,
        id: &'a ContainerId,
        dependencies: &'a [Dependency],
    ) -> BoxFuture<'a, Result<ContainerInfo, HostError>> {
        Box::pin(
            async move { Ok(SupervisorClient::set_dependencies(self, id, dependencies).await?) },
        )
    }
}

#[derive(Debug)]
struct FakeState {
    free: Resources,
    next_port: u16,
    containers: BTreeMap<ContainerId, ContainerInfo>,
    slots: Vec<bool>,
}

/// An in-memory supervisor: the same accounting (slots, CPU, memory), errors and answers as a real one,
/// and no containers behind it.
#[derive(Debug, Clone)]
pub struct FakeHost {
    host: HostName,
    zone: ZoneName,
    capacity: Resources,
    address: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeHost {
    /// A host with `capacity`, publishing on `address`.
    pub fn new(host: HostName, zone: ZoneName, capacity: Resources, address: &str) -> FakeHost {
        FakeHost {
            host,
            zone,
            capacity,
            address: address.to_owned(),
            state: Arc::new(Mutex::new(FakeState {
                free: capacity,
                next_port: 42000,
                containers: BTreeMap::new(),
                slots: vec![false; capacity.slots as usize],
            })),
        }
    }

    /// The registration a real supervisor would write for this host now.
    pub fn record(&self) -> SupervisorRecord {
        SupervisorRecord {
            version: 1,
            software_version: "fake".into(),
            address: format!("fake://{}", self.host),
            host: self.host.clone(),
            zone: self.zone.clone(),
            capacity: self.capacity,
            free: self.state.lock().free,
        }
    }
}

fn err(code: &str, message: String) -> HostError {
    HostError {
        code: Some(code.to_owned()),
        message,
    }
}

impl HostApi for FakeHost {
    fn deploy<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<ContainerInfo, HostError>> {
        Box::pin(async move {
            spec.validate()
                .map_err(|e| err("invalid_spec", format!("{}: {}", e.field, e.message)))?;
            let mut s = self.state.lock();
            if s.containers.contains_key(&spec.container_id) {
                return Err(err("duplicate", format!("{} exists", spec.container_id)));
            }
            let slot = s.slots.iter().position(|used| !used);
            let Some(slot) = slot else {
                return Err(err("no_capacity", "no free slot".into()));
            };
            if s.free.cpu_millis < spec.cpu_millis {
                return Err(err("no_capacity", "not enough CPU".into()));
            }
            if s.free.memory_mb < spec.memory_mb {
                return Err(err("no_capacity", "not enough memory".into()));
            }
            s.slots[slot] = true;
            s.free.slots -= 1;
            s.free.cpu_millis -= spec.cpu_millis;
            s.free.memory_mb -= spec.memory_mb;
            let mut ports = Vec::new();
            for p in &spec.ports {
                ports.push(PortBinding {
                    container_port: *p,
                    host_port: s.next_port,
                });
                s.next_port = s.next_port.wrapping_add(1).max(42000);
            }
            let info = ContainerInfo {
                container_id: spec.container_id.clone(),
                app: spec.app.clone(),
                sha: spec.sha.clone(),
                env: spec.env.clone(),
                image: spec.image.clone(),
                state: ContainerState::Healthy,
                host: self.host.clone(),
                address: self.address.clone(),
                ports,
                cpu_millis: spec.cpu_millis,
                memory_mb: spec.memory_mb,
                slot: slot as u32,
                ip: std::net::Ipv4Addr::new(172, 31, (slot / 250) as u8, (slot % 250) as u8 + 2),
                dependencies: spec.dependencies.clone(),
                docker_id: Some(format!("fake-{}", spec.container_id)),
            };
            s.containers.insert(spec.container_id.clone(), info.clone());
            Ok(info)
        })
    }

    fn teardown<'a>(
        &'a self,
        ids: &'a [ContainerId],
    ) -> BoxFuture<'a, Result<Vec<ContainerId>, HostError>> {
        Box::pin(async move {
            let mut s = self.state.lock();
            let mut removed = Vec::new();
            for id in ids {
                if let Some(c) = s.containers.remove(id) {
                    s.slots[c.slot as usize] = false;
                    s.free.slots += 1;
                    s.free.cpu_millis += c.cpu_millis;
                    s.free.memory_mb += c.memory_mb;
                    removed.push(id.clone());
                }
            }
            Ok(removed)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerInfo>, HostError>> {
        Box::pin(async move { Ok(self.state.lock().containers.values().cloned().collect()) })
    }

    fn set_dependencies<'a>(
        &'a self,
        id: &'a ContainerId,
        dependencies: &'a [Dependency],
    ) -> BoxFuture<'a, Result<ContainerInfo, HostError>> {
        Box::pin(async move {
            validate_dependencies(dependencies)
                .map_err(|e| err("invalid_spec", format!("{}: {}", e.field, e.message)))?;
            let mut s = self.state.lock();
            let c = s
                .containers
                .get_mut(id)
                .ok_or_else(|| err("not_found", format!("no container {id}")))?;
            c.dependencies = dependencies.to_vec();
            Ok(c.clone())
        })
    }
}
