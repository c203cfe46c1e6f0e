//! The supervisor's core: deploy, teardown, list, get, health, and each container's lifecycle.
//!
//! State lives in one `std::sync::Mutex` (never held across an await): the allocator and one entry per
//! container. Each entry also has an async operation lock, so a teardown waits for an in-flight deploy of
//! the same container instead of racing it. Every lifecycle transition (pulling, starting, healthy,
//! unhealthy, stopping, gone) is logged as one tracing event with `from` and `to`.
//!
//! Deploy: validate, reserve (refusing clearly when full or duplicate), pull, install firewall rules,
//! create and start with limits and hardening, wait until healthy or failed. Any failure removes what was
//! made and releases the reservation, so a refused or failed deploy leaves nothing behind.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::{
    ContainerInfo, ContainerSpec, ContainerState, Resources, SupervisorHealth, SupervisorRecord,
    SupervisorStatus, TeardownRequest, TeardownResponse,
};
use futures::StreamExt as _;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::alloc::{AllocConfig, Allocator};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::ApiError;
use crate::firewall::{ContainerRules, Firewall};
use crate::health::{Probe, Prober};
use crate::labels::Deployed;
use crate::metrics::SupervisorMetrics;
use crate::runtime::{ContainerRuntime, CreateSpec, RuntimeError};

/// Containers stopped at once by one teardown.
const TEARDOWN_CONCURRENCY: usize = 8;

/// Mount point of the config data inside containers.
pub const CONFIG_MOUNT: &str = "/etc/atlantis/config";

/// One container the supervisor knows.
pub(crate) struct Entry {
    pub(crate) deployed: Deployed,
    pub(crate) state: ContainerState,
    pub(crate) docker_id: Option<String>,
    pub(crate) op: Arc<AsyncMutex<()>>,
    pub(crate) orphan_since: Option<Instant>,
    pub(crate) failures: u32,
    pub(crate) last_check: Option<Instant>,
}

pub(crate) struct Inner {
    pub(crate) alloc: Allocator,
    pub(crate) entries: BTreeMap<ContainerId, Entry>,
}

/// The supervisor service; shared by the API handlers and the background loops.
pub struct Supervisor {
    pub(crate) cfg: Arc<Config>,
    pub(crate) runtime: Arc<dyn ContainerRuntime>,
    pub(crate) firewall: Arc<dyn Firewall>,
    pub(crate) cluster: Arc<dyn Cluster>,
    pub(crate) prober: Prober,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) advertise_url: Mutex<String>,
    pub(crate) metrics: SupervisorMetrics,
    /// Registry hosts of the images run here (refused to containers: [`crate::control_plane`]).
    registries: tokio::sync::watch::Sender<std::collections::BTreeSet<String>>,
}

impl Supervisor {
    /// A supervisor with an empty allocator; [`Supervisor::rebuild`] fills it from the engine.
    pub fn new(
        cfg: Arc<Config>,
        runtime: Arc<dyn ContainerRuntime>,
        firewall: Arc<dyn Firewall>,
        cluster: Arc<dyn Cluster>,
        metrics: SupervisorMetrics,
    ) -> Supervisor {
        let alloc = Allocator::new(AllocConfig {
            capacity: cfg.capacity.into(),
            min_port: cfg.ports.min_port,
            per_slot: cfg.ports.per_slot,
            subnet: cfg.docker.subnet,
        });
        Supervisor {
            advertise_url: Mutex::new(cfg.advertise_url.clone().unwrap_or_default()),
            cfg,
            runtime,
            firewall,
            cluster,
            prober: Prober::new(),
            inner: Mutex::new(Inner {
                alloc,
                entries: BTreeMap::new(),
            }),
            metrics,
            registries: tokio::sync::watch::channel(Default::default()).0,
        }
    }

    /// The registry hosts of the images run here, and every change.
    pub fn registries(&self) -> tokio::sync::watch::Receiver<std::collections::BTreeSet<String>> {
        self.registries.subscribe()
    }

    /// Notes the registry `image` comes from.
    pub(crate) fn note_registry(&self, image: &str) {
        if let Some(r) = crate::control_plane::image_registry(image) {
            self.registries.send_if_modified(|s| s.insert(r));
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves a container to `to` if the state machine allows it, logging the transition. Returns false
    /// (and changes nothing) for a transition the machine does not have, such as a late health check
    /// result for a container that is being stopped.
    pub(crate) fn transition(&self, id: &ContainerId, to: ContainerState, why: &str) -> bool {
        let from = {
            let mut inner = self.lock();
            let Some(e) = inner.entries.get_mut(id) else {
                return false;
            };
            if e.state == to {
                return true;
            }
            if !allowed(e.state, to) {
                tracing::debug!(container = %id, from = ?e.state, ?to, why, "Transition refused by the state machine.");
                return false;
            }
            std::mem::replace(&mut e.state, to)
        };
        tracing::info!(container = %id, ?from, ?to, why, "Container state changed.");
        self.metrics.transition(to);
        true
    }

    fn config_dir(&self, id: &ContainerId) -> PathBuf {
        self.cfg.data_dir.join("containers").join(id.as_str())
    }

    /// The firewall rules of every container that holds a reservation.
    pub(crate) fn desired_rules(&self) -> Vec<ContainerRules> {
        self.lock()
            .entries
            .values()
            .map(|e| ContainerRules {
                id: e.deployed.container_id.clone(),
                ip: e.deployed.ip,
                dependencies: e.deployed.dependencies.clone(),
            })
            .collect()
    }

    /// Installs exactly the rules of the containers held now.
    pub(crate) async fn sync_firewall(&self) -> Result<(), ApiError> {
        let rules = self.desired_rules();
        self.firewall.sync(&rules).await.map_err(ApiError::from)
    }

    /// As [`Supervisor::sync_firewall`], re-reading the kernel first (repairs outside changes).
    pub(crate) async fn repair_firewall(&self) -> Result<(), ApiError> {
        let rules = self.desired_rules();
        self.firewall.repair(&rules).await.map_err(ApiError::from)
    }

    /// Deploys a container and returns once it is healthy, or fails having removed everything it made.
    pub async fn deploy(&self, spec: ContainerSpec) -> Result<ContainerInfo, ApiError> {
        spec.validate()?;
        self.note_registry(&spec.image);
        let id = spec.container_id.clone();
        let guard: OwnedMutexGuard<()> = {
            let mut inner = self.lock();
            if inner.entries.contains_key(&id) {
                return Err(ApiError::Duplicate(id.to_string()));
            }
            let r = inner
                .alloc
                .reserve(&id, spec.cpu_millis, spec.memory_mb, &spec.ports)?;
            let op = Arc::new(AsyncMutex::new(()));
            let guard = op.clone().try_lock_owned().expect("a new lock is free");
            let deployed = Deployed::new(&spec, &r);
            inner.entries.insert(
                id.clone(),
                Entry {
                    deployed,
                    state: ContainerState::Pulling,
                    docker_id: None,
                    op,
                    orphan_since: None,
                    failures: 0,
                    last_check: None,
                },
            );
            guard
        };
        tracing::info!(container = %id, to = ?ContainerState::Pulling, why = "deploy requested", "Container state changed.");
        let started = Instant::now();
        let result = self.bring_up(&spec).await;
        match result {
            Ok(()) => {
                // Read the answer while the operation lock still keeps a teardown out.
                let info = self.info(&id);
                drop(guard);
                self.metrics.deploy("ok", started.elapsed());
                self.refresh_registration().await;
                info.ok_or_else(|| ApiError::Internal("container vanished after deploy".into()))
            }
            Err(e) => {
                let (_, code) = e.status_and_code();
                self.metrics.deploy(code, started.elapsed());
                tracing::warn!(container = %id, error = %e, "Deploy failed; removing what was made.");
                // A name clash in the engine means the container there is not ours to remove.
                let ours = !matches!(e, ApiError::Duplicate(_));
                self.remove_container_with(&id, ours).await;
                drop(guard);
                self.refresh_registration().await;
                Err(e)
            }
        }
    }

    async fn bring_up(&self, spec: &ContainerSpec) -> Result<(), ApiError> {
        let id = &spec.container_id;
        self.runtime.ensure_image(&spec.image).await?;
        let deployed = self
            .lock()
            .entries
            .get(id)
            .map(|e| e.deployed.clone())
            .ok_or_else(|| ApiError::Internal("entry lost".into()))?;
        let mut binds = Vec::new();
        if let Some(config) = &spec.config {
            let dir = self.config_dir(id);
            let file = dir.join("config");
            write_config(&dir, &file, config)
                .map_err(|e| ApiError::Internal(format!("cannot write config for {id}: {e}")))?;
            binds.push(format!("{}:{CONFIG_MOUNT}:ro", file.display()));
        }
        let create = self.create_spec(spec, &deployed, binds);
        self.transition(id, ContainerState::Starting, "image present, creating");
        // Rules are installed while the container is created, and always before it starts: it never
        // runs without its isolation.
        let t = Instant::now();
        let ((rules, rules_ms), (created, create_ms)) = tokio::join!(
            async {
                let r = self.sync_firewall().await;
                (r, t.elapsed().as_millis() as u64)
            },
            async {
                let r = self.runtime.create(&create).await;
                (r, t.elapsed().as_millis() as u64)
            }
        );
        tracing::debug!(container = %id, rules_ms, create_ms, "Rules installed and container created.");
        let created = created.map_err(|e| match e {
            RuntimeError::Conflict(m) => ApiError::Duplicate(format!(
                "{id} (the engine already has a container of that name: {m})"
            )),
            other => ApiError::from(other),
        });
        if let Ok(docker_id) = &created
            && let Some(e) = self.lock().entries.get_mut(id)
        {
            e.docker_id = Some(docker_id.clone());
        }
        rules?;
        let docker_id = created?;
        let t = Instant::now();
        self.runtime.start(&docker_id).await?;
        tracing::debug!(container = %id, start_ms = t.elapsed().as_millis() as u64, "Container started.");
        let t = Instant::now();
        self.wait_healthy(id, &deployed, &docker_id).await?;
        tracing::debug!(container = %id, health_ms = t.elapsed().as_millis() as u64, "First health check passed.");
        self.transition(id, ContainerState::Healthy, "health check passed");
        Ok(())
    }

    fn create_spec(&self, spec: &ContainerSpec, d: &Deployed, binds: Vec<String>) -> CreateSpec {
        let cfg = &self.cfg;
        let mut env: Vec<String> = vec![
            format!("ATLANTIS_CONTAINER_ID={}", spec.container_id),
            format!("ATLANTIS_APP={}", spec.app),
            format!("ATLANTIS_ENV={}", spec.env),
            format!("ATLANTIS_SHA={}", spec.sha),
            format!("ATLANTIS_HOST={}", cfg.host),
            format!("ATLANTIS_ZONE={}", cfg.zone),
            format!("ATLANTIS_REGION={}", cfg.region),
        ];
        if let Some(p) = spec.ports.first() {
            env.push(format!("ATLANTIS_PORT={p}"));
        }
        if spec.config.is_some() {
            env.push(format!("ATLANTIS_CONFIG={CONFIG_MOUNT}"));
        }
        for dep in &spec.dependencies {
            let name = dep.name.to_ascii_uppercase().replace('-', "_");
            env.push(format!("ATLANTIS_DEP_{name}={}:{}", dep.address, dep.port));
        }
        env.extend(spec.env_vars.iter().map(|(k, v)| format!("{k}={v}")));
        CreateSpec {
            name: spec.container_id.to_string(),
            image: spec.image.clone(),
            cmd: spec.command.clone(),
            env,
            labels: d.labels(&cfg.host),
            memory_bytes: (spec.memory_mb * 1024 * 1024) as i64,
            nano_cpus: i64::from(spec.cpu_millis) * 1_000_000,
            pids_limit: cfg.limits.pids,
            ports: d
                .ports
                .iter()
                .map(|p| (p.container_port, cfg.ports.publish_ip, p.host_port))
                .collect(),
            network: cfg.docker.network.clone(),
            ip: d.ip,
            binds,
            read_only_rootfs: spec.read_only_rootfs,
            cap_add: cfg.limits.cap_add.clone(),
            restart_policy: cfg.limits.restart_policy.clone(),
            stop_timeout: Duration::from_millis(cfg.limits.stop_timeout_ms),
            sysctls: container_sysctls(spec),
        }
    }

    /// Polls the health check until it passes, the container exits, or the start deadline passes.
    async fn wait_healthy(
        &self,
        id: &ContainerId,
        d: &Deployed,
        docker_id: &str,
    ) -> Result<(), ApiError> {
        let deadline = Instant::now() + Duration::from_millis(d.health.start_timeout_ms);
        let timeout = Duration::from_millis(d.health.timeout_ms);
        let mut pause = Duration::from_millis(10);
        let started = Instant::now();
        let mut last = String::from("no check yet");
        loop {
            // Probe first: the common case (it answers) costs no engine round trip.
            if let Some(port) = d.health_host_port() {
                let ip = self.cfg.ports.health_ip();
                match self.prober.check(ip, port, &d.health.path, timeout).await {
                    Probe::Pass => return Ok(()),
                    Probe::Fail(why) => last = why,
                }
            }
            let o = self.runtime.inspect(docker_id).await?.ok_or_else(|| {
                ApiError::Unhealthy(format!("container {id} disappeared while starting"))
            })?;
            // While starting, any exit is a failure, even one the restart policy already undid.
            if !o.running || o.restarting || o.restart_count > 0 {
                let tail = self.log_tail(docker_id, 20).await;
                // Once the restart policy brought it back, the engine no longer reports the exit code.
                let how = if o.running || o.restarting {
                    format!(
                        "exited and was restarted {} time(s)",
                        o.restart_count.max(1)
                    )
                } else {
                    format!("exited with code {}", o.exit_code.unwrap_or(-1))
                };
                return Err(ApiError::Unhealthy(format!(
                    "container {id} {how} before becoming healthy; last output: {tail}"
                )));
            }
            if d.health_host_port().is_none() {
                return Ok(());
            }
            if Instant::now() + pause > deadline {
                return Err(ApiError::Unhealthy(format!(
                    "container {id} did not pass its health check within {} ms: {last}",
                    d.health.start_timeout_ms
                )));
            }
            tokio::time::sleep(pause).await;
            // Poll fast at first (most apps answer within a second), then back off.
            if started.elapsed() > Duration::from_secs(2) {
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }

    async fn log_tail(&self, docker_id: &str, lines: u32) -> String {
        use futures::StreamExt as _;
        let mut s = self.runtime.logs(docker_id, false, lines);
        let mut out = Vec::new();
        while let Some(Ok(chunk)) = s.next().await {
            out.extend_from_slice(&chunk);
            if out.len() > 4096 {
                break;
            }
        }
        String::from_utf8_lossy(&out).trim().replace('\n', " | ")
    }

    /// Stops and removes a container, its config and its rules, and releases its reservation. The caller
    /// holds the container's operation lock (or the container has none yet).
    pub(crate) async fn remove_container(&self, id: &ContainerId) {
        self.remove_container_with(id, true).await;
    }

    /// As [`Supervisor::remove_container`]; with `engine` false the engine is left alone (the name
    /// belongs to a container this deploy did not create).
    async fn remove_container_with(&self, id: &ContainerId, engine: bool) {
        self.transition(id, ContainerState::Stopping, "teardown");
        let stop = Duration::from_millis(self.cfg.limits.stop_timeout_ms);
        let docker_id = self
            .lock()
            .entries
            .get(id)
            .and_then(|e| e.docker_id.clone())
            .unwrap_or_else(|| id.to_string());
        if engine {
            if let Err(e) = self.runtime.stop(&docker_id, stop).await {
                tracing::debug!(container = %id, error = %e, "Stop failed; removing by force.");
            }
            if let Err(e) = self.runtime.remove(&docker_id).await {
                tracing::error!(container = %id, error = %e, "Cannot remove the container; the reconcile loop will retry.");
                return;
            }
        }
        let _ = std::fs::remove_dir_all(self.config_dir(id));
        self.transition(id, ContainerState::Gone, "removed");
        {
            let mut inner = self.lock();
            inner.entries.remove(id);
            inner.alloc.release(id);
        }
        if let Err(e) = self.sync_firewall().await {
            tracing::error!(error = %e, "Cannot remove firewall rules; the reconcile loop will retry.");
        }
    }

    /// Tears down the requested containers.
    pub async fn teardown(&self, req: TeardownRequest) -> Result<TeardownResponse, ApiError> {
        req.validate()?;
        let mut resp = TeardownResponse::default();
        let targets: Vec<(ContainerId, Option<Arc<AsyncMutex<()>>>)> = {
            let inner = self.lock();
            if req.container_ids.is_empty() {
                inner
                    .entries
                    .iter()
                    .filter(|(_, e)| {
                        Some(&e.deployed.app) == req.app.as_ref()
                            && req.env.as_ref().is_none_or(|env| env == &e.deployed.env)
                    })
                    .map(|(id, e)| (id.clone(), Some(e.op.clone())))
                    .collect()
            } else {
                req.container_ids
                    .iter()
                    .map(|id| (id.clone(), inner.entries.get(id).map(|e| e.op.clone())))
                    .collect()
            }
        };
        // Containers go in parallel (bounded): apps that ignore SIGTERM cost one stop timeout, not N.
        enum Outcome {
            Removed(ContainerId),
            NotFound(ContainerId),
            Stuck(ContainerId),
        }
        let outcomes: Vec<Outcome> = futures::stream::iter(targets)
            .map(|(id, op)| async move {
                let Some(op) = op else {
                    return Outcome::NotFound(id);
                };
                let _guard = op.lock().await;
                // A failed deploy may have removed it while we waited.
                if !self.lock().entries.contains_key(&id) {
                    return Outcome::NotFound(id);
                }
                self.remove_container(&id).await;
                if self.lock().entries.contains_key(&id) {
                    Outcome::Stuck(id)
                } else {
                    Outcome::Removed(id)
                }
            })
            .buffered(TEARDOWN_CONCURRENCY)
            .collect()
            .await;
        let mut stuck = Vec::new();
        for o in outcomes {
            match o {
                Outcome::Removed(id) => resp.removed.push(id),
                Outcome::NotFound(id) => resp.not_found.push(id),
                Outcome::Stuck(id) => stuck.push(id.to_string()),
            }
        }
        if !stuck.is_empty() {
            self.refresh_registration().await;
            return Err(ApiError::Internal(format!(
                "could not remove {} (the reconcile loop retries); see the supervisor log",
                stuck.join(", ")
            )));
        }
        self.refresh_registration().await;
        Ok(resp)
    }

    /// One container's info.
    pub fn info(&self, id: &ContainerId) -> Option<ContainerInfo> {
        let inner = self.lock();
        inner.entries.get(id).map(|e| self.to_info(e))
    }

    /// Every container's info, sorted by ID.
    pub fn list(&self) -> Vec<ContainerInfo> {
        let inner = self.lock();
        inner.entries.values().map(|e| self.to_info(e)).collect()
    }

    fn to_info(&self, e: &Entry) -> ContainerInfo {
        let d = &e.deployed;
        ContainerInfo {
            container_id: d.container_id.clone(),
            app: d.app.clone(),
            sha: d.sha.clone(),
            env: d.env.clone(),
            image: d.image.clone(),
            state: e.state,
            host: self.cfg.host.clone(),
            address: self.cfg.ports.publish_ip.to_string(),
            ports: d.ports.clone(),
            cpu_millis: d.cpu_millis,
            memory_mb: d.memory_mb,
            slot: d.slot,
            ip: d.ip,
            dependencies: d.dependencies.clone(),
            docker_id: e.docker_id.clone(),
        }
    }

    /// Capacity and what is free.
    pub fn health(&self) -> SupervisorHealth {
        let inner = self.lock();
        let free = inner.alloc.free();
        SupervisorHealth {
            status: if free.slots == 0 {
                SupervisorStatus::Full
            } else {
                SupervisorStatus::Ok
            },
            host: self.cfg.host.clone(),
            zone: self.cfg.zone.clone(),
            region: self.cfg.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: inner.alloc.capacity(),
            free,
            containers: inner.entries.len() as u32,
        }
    }

    /// The ZooKeeper record of this supervisor now.
    pub fn record(&self) -> SupervisorRecord {
        let h = self.health();
        SupervisorRecord {
            version: atlantis_common::api::supervisor::SUPERVISOR_RECORD_VERSION,
            software_version: h.version,
            address: self
                .advertise_url
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            host: h.host,
            zone: h.zone,
            capacity: h.capacity,
            free: h.free,
        }
    }

    /// Free resources now.
    pub fn free(&self) -> Resources {
        self.lock().alloc.free()
    }

    /// Registers or refreshes the ephemeral record; failures are logged and retried by the reconcile loop.
    pub async fn refresh_registration(&self) {
        let record = self.record();
        self.metrics
            .set_free(&record.free, self.lock().entries.len());
        if let Err(e) = self.cluster.register(&record).await {
            tracing::warn!(error = %e, "Cannot refresh the ZooKeeper registration; will retry.");
        }
    }

    /// The Docker ID of a container, for logs.
    pub fn docker_id(&self, id: &ContainerId) -> Option<String> {
        self.lock()
            .entries
            .get(id)
            .map(|e| e.docker_id.clone().unwrap_or_else(|| id.to_string()))
    }
}

/// The kernel settings of a container: no IPv6 (the container network and the firewall are IPv4; a
/// link-local IPv6 address would reach the host around the rules), and no group may open unprivileged
/// ICMP echo ("ping") sockets (the empty range "1 0") unless the spec asks (groups 0 to 65535).
pub fn container_sysctls(spec: &ContainerSpec) -> std::collections::HashMap<String, String> {
    let mut s = std::collections::HashMap::new();
    s.insert("net.ipv6.conf.all.disable_ipv6".to_owned(), "1".to_owned());
    s.insert(
        "net.ipv6.conf.default.disable_ipv6".to_owned(),
        "1".to_owned(),
    );
    // Explicit both ways: under `userns-remap` the engine sets no default (the kernel's "1 0", closed),
    // and a range is read in the container's user namespace, where 2147483647 has no mapping (the
    // container would not start); 0-65535 is the default remapped range (docs/operations.md).
    let range = if spec.allow_ping { "0 65535" } else { "1 0" };
    s.insert("net.ipv4.ping_group_range".to_owned(), range.to_owned());
    s
}

/// Writes the config file read-only (0444), atomically.
fn write_config(dir: &std::path::Path, file: &std::path::Path, data: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("config.tmp");
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
    std::fs::rename(&tmp, file)
}

/// The container state machine: which transitions exist.
///
/// ```text
/// pulling -> starting -> healthy <-> unhealthy
///    |          |           |            |  \-> starting (restarted after a supervisor restart)
///    +----------+-----------+------------+--> stopping -> gone
///               +-----------+------------+--> gone (removed behind our back)
/// ```
pub fn allowed(from: ContainerState, to: ContainerState) -> bool {
    use ContainerState::*;
    matches!(
        (from, to),
        (Pulling, Starting | Stopping)
            | (Starting, Healthy | Unhealthy | Stopping | Gone)
            | (Healthy, Unhealthy | Stopping | Gone)
            | (Unhealthy, Healthy | Starting | Stopping | Gone)
            | (Stopping, Gone)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerState::*;

    #[test]
    fn state_machine() {
        assert!(
            allowed(Pulling, Starting) && allowed(Starting, Healthy) && allowed(Healthy, Unhealthy)
        );
        assert!(
            allowed(Unhealthy, Healthy) && allowed(Healthy, Stopping) && allowed(Stopping, Gone)
        );
        // A late health result must not resurrect a container being stopped, nor anything gone.
        for to in [Pulling, Starting, Healthy, Unhealthy] {
            assert!(!allowed(Stopping, to), "stopping -> {to:?}");
            assert!(!allowed(Gone, to), "gone -> {to:?}");
        }
        assert!(
            !allowed(Pulling, Healthy),
            "no health before the container started"
        );
    }
}
