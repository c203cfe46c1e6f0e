//! Convergence: rebuilding state at start, and the two background loops.
//!
//! [`Supervisor::rebuild`] runs once at start: it adopts every Atlantis container the engine runs (read
//! back from its labels into the allocator), starts the ones that stopped, marks those ZooKeeper no longer
//! wants as orphans, and installs exactly the firewall rules of what it adopted. Nothing comes from a
//! private file.
//!
//! The monitor loop health-checks running containers (healthy <-> unhealthy). The reconcile loop removes
//! orphans once their grace period is over, forgets containers someone removed behind our back, restores
//! firewall rules (one atomic transaction, so a deleted rule comes back), and refreshes the registration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::ContainerState;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::health::Probe;
use crate::labels::{self, Deployed};
use crate::service::{Entry, Supervisor};

/// Consecutive failed checks before a healthy container is marked unhealthy.
const FAILURES_BEFORE_UNHEALTHY: u32 = 3;
/// Health checks in flight at once.
const MONITOR_CONCURRENCY: usize = 16;

impl Supervisor {
    /// Rebuilds the allocator, the entries and the firewall from the engine and ZooKeeper.
    pub async fn rebuild(&self) -> Result<(), ApiError> {
        let d = &self.cfg.docker;
        self.runtime
            .ensure_network(&d.network, d.subnet, d.prefix_len)
            .await?;
        let observed = self.runtime.list_labelled(labels::MANAGED, "true").await?;
        let wanted = match self.cluster.wanted().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read intent from ZooKeeper at start; keeping every container for now.");
                None
            }
        };
        let now = Instant::now();
        let mut to_start = Vec::new();
        let mut to_remove = Vec::new();
        {
            let mut inner = self.lock();
            for o in &observed {
                let deployed = match Deployed::from_labels(&o.labels) {
                    Ok(d) if d.container_id.as_str() == o.name => d,
                    Ok(d) => {
                        tracing::error!(name = %o.name, id = %d.container_id, "Container name and labels disagree; removing it.");
                        to_remove.push(o.id.clone());
                        continue;
                    }
                    Err(e) => {
                        // Never delete what we do not understand: it may be a newer supervisor's work.
                        tracing::error!(name = %o.name, error = %e, "Unreadable Atlantis labels; leaving the container alone (not managed).");
                        continue;
                    }
                };
                let mut deployed = deployed;
                self.note_registry(&deployed.image);
                if let Some(deps) =
                    crate::dependencies::load(&self.cfg.data_dir, &deployed.container_id)
                {
                    deployed.dependencies = deps;
                }
                let id = deployed.container_id.clone();
                if let Err(e) = inner.alloc.restore(&id, deployed.reservation()) {
                    tracing::error!(container = %id, error = %e, "Container does not fit the allocator; removing it.");
                    to_remove.push(o.id.clone());
                    continue;
                }
                let is_wanted = wanted.as_ref().is_none_or(|w| w.contains(&id));
                if !o.running && !o.restarting && is_wanted {
                    to_start.push((id.clone(), o.id.clone()));
                }
                let state = if o.running {
                    ContainerState::Starting
                } else {
                    ContainerState::Unhealthy
                };
                tracing::info!(container = %id, to = ?state, why = "adopted at start", running = o.running, "Container state changed.");
                inner.entries.insert(
                    id,
                    Entry {
                        deployed,
                        state,
                        docker_id: Some(o.id.clone()),
                        op: Default::default(),
                        orphan_since: (!is_wanted).then_some(now),
                        failures: 0,
                        last_check: None,
                    },
                );
            }
        }
        for docker_id in to_remove {
            if let Err(e) = self.runtime.remove(&docker_id).await {
                tracing::error!(docker_id, error = %e, "Cannot remove a broken container.");
            }
        }
        for (id, docker_id) in to_start {
            match self.runtime.start(&docker_id).await {
                Ok(()) => {
                    self.transition(
                        &id,
                        ContainerState::Starting,
                        "restarted at supervisor start",
                    );
                }
                Err(e) => {
                    tracing::error!(container = %id, error = %e, "Cannot start a stopped container.")
                }
            }
        }
        self.repair_firewall().await?;
        self.remove_stale_config_dirs();
        let n = self.lock().entries.len();
        tracing::info!(
            containers = n,
            "State rebuilt from the engine and ZooKeeper."
        );
        Ok(())
    }

    fn remove_stale_config_dirs(&self) {
        let root = self.cfg.data_dir.join("containers");
        let Ok(dir) = std::fs::read_dir(&root) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let known = name
                .parse::<ContainerId>()
                .is_ok_and(|id| self.lock().entries.contains_key(&id));
            if !known {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// One pass of health checks over running containers whose interval is due.
    pub async fn monitor_once(&self) {
        let now = Instant::now();
        let due: Vec<(ContainerId, Deployed, ContainerState)> = {
            let inner = self.lock();
            inner
                .entries
                .iter()
                .filter(|(_, e)| {
                    matches!(
                        e.state,
                        ContainerState::Starting
                            | ContainerState::Healthy
                            | ContainerState::Unhealthy
                    )
                })
                .filter(|(_, e)| e.op.try_lock().is_ok())
                .filter(|(_, e)| {
                    e.last_check.is_none_or(|t| {
                        now.duration_since(t)
                            >= Duration::from_millis(e.deployed.health.interval_ms)
                    })
                })
                .map(|(id, e)| (id.clone(), e.deployed.clone(), e.state))
                .collect()
        };
        // Checks run concurrently (bounded), so one slow container does not delay the others.
        futures::stream::iter(due)
            .for_each_concurrent(MONITOR_CONCURRENCY, |(id, d, state)| async move {
                self.check_one(id, d, state).await;
            })
            .await;
    }

    async fn check_one(&self, id: ContainerId, d: Deployed, state: ContainerState) {
        let result = match d.health_host_port() {
            Some(port) => {
                let t = Duration::from_millis(d.health.timeout_ms);
                self.prober
                    .check(self.cfg.ports.health_ip(), port, &d.health.path, t)
                    .await
            }
            None => match self.runtime.inspect(id.as_str()).await {
                Ok(Some(o)) if o.running => Probe::Pass,
                Ok(_) => Probe::Fail("not running".into()),
                Err(e) => Probe::Fail(e.to_string()),
            },
        };
        let next = {
            let mut inner = self.lock();
            let Some(e) = inner.entries.get_mut(&id) else {
                return;
            };
            e.last_check = Some(Instant::now());
            match &result {
                Probe::Pass => {
                    e.failures = 0;
                    Some(ContainerState::Healthy)
                }
                Probe::Fail(_) => {
                    e.failures += 1;
                    (state == ContainerState::Starting || e.failures >= FAILURES_BEFORE_UNHEALTHY)
                        .then_some(ContainerState::Unhealthy)
                }
            }
        };
        if let Some(to) = next {
            let why = match &result {
                Probe::Pass => "health check passed".to_owned(),
                Probe::Fail(w) => format!("health check failed: {w}"),
            };
            self.transition(&id, to, &why);
        }
    }

    /// One reconcile pass: orphans, vanished containers, firewall, registration.
    pub async fn reconcile_once(&self) {
        match self.cluster.wanted().await {
            Ok(Some(wanted)) => {
                let now = Instant::now();
                let grace = self.cfg.orphan_grace();
                let expired: Vec<(ContainerId, Arc<tokio::sync::Mutex<()>>)> = {
                    let mut inner = self.lock();
                    let mut out = Vec::new();
                    for (id, e) in inner.entries.iter_mut() {
                        if wanted.contains(id) {
                            e.orphan_since = None;
                        } else if e.op.try_lock().is_ok() {
                            let since = *e.orphan_since.get_or_insert(now);
                            if now.duration_since(since) >= grace {
                                out.push((id.clone(), e.op.clone()));
                            }
                        }
                    }
                    out
                };
                for (id, op) in expired {
                    let _g = op.lock().await;
                    tracing::warn!(container = %id, grace_ms = grace.as_millis() as u64, "ZooKeeper no longer wants this container; removing the orphan.");
                    self.remove_container(&id).await;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read intent from ZooKeeper; orphans are kept for now.")
            }
        }
        self.retry_stuck_removals().await;
        self.forget_vanished().await;
        if let Err(e) = self.repair_firewall().await {
            tracing::error!(error = %e, "Cannot restore firewall rules.");
        }
        self.refresh_registration().await;
        self.metrics.reconcile_pass();
    }

    /// Retries removals that failed earlier (entries left in `stopping` with no operation running).
    async fn retry_stuck_removals(&self) {
        let stuck: Vec<(ContainerId, Arc<tokio::sync::Mutex<()>>)> = {
            let inner = self.lock();
            inner
                .entries
                .iter()
                .filter(|(_, e)| e.state == ContainerState::Stopping && e.op.try_lock().is_ok())
                .map(|(id, e)| (id.clone(), e.op.clone()))
                .collect()
        };
        for (id, op) in stuck {
            let _g = op.lock().await;
            tracing::info!(container = %id, "Retrying the removal of a container.");
            self.remove_container(&id).await;
        }
    }

    /// Drops entries whose container was removed behind our back (not by us, not mid-deploy).
    async fn forget_vanished(&self) {
        let observed = match self.runtime.list_labelled(labels::MANAGED, "true").await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot list containers.");
                return;
            }
        };
        let present: std::collections::BTreeSet<String> =
            observed.iter().map(|o| o.name.clone()).collect();
        let gone: Vec<ContainerId> = {
            let inner = self.lock();
            inner
                .entries
                .iter()
                .filter(|(id, e)| {
                    e.op.try_lock().is_ok()
                        && e.docker_id.is_some()
                        && !present.contains(id.as_str())
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in gone {
            tracing::warn!(container = %id, "Container vanished from the engine.");
            self.transition(&id, ContainerState::Gone, "removed outside the supervisor");
            let mut inner = self.lock();
            inner.entries.remove(&id);
            inner.alloc.release(&id);
        }
    }

    /// Follows the engine's events: an exit marks a container unhealthy at once, a start schedules a check,
    /// a removal behind our back forgets the container. Resubscribes when the stream drops.
    pub async fn follow_events(self: Arc<Self>, stop: CancellationToken) {
        use futures::StreamExt as _;
        loop {
            let mut events = self.runtime.events();
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = events.next() => ev,
                };
                match ev {
                    Some(Ok(ev)) => self.on_event(ev).await,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Engine event stream failed; resubscribing.");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn on_event(&self, ev: crate::runtime::RuntimeEvent) {
        let Ok(id) = ev.name.parse::<ContainerId>() else {
            return;
        };
        let busy = {
            let mut inner = self.lock();
            let Some(e) = inner.entries.get_mut(&id) else {
                return;
            };
            if ev.action == "start" {
                e.last_check = None;
            }
            // A deploy or teardown in flight owns the container's story.
            e.op.try_lock().is_err()
        };
        if busy {
            return;
        }
        match ev.action.as_str() {
            "die" => {
                let why = format!("container exited with code {}", ev.exit_code.unwrap_or(-1));
                if let Some(e) = self.lock().entries.get_mut(&id) {
                    e.failures = FAILURES_BEFORE_UNHEALTHY;
                    e.last_check = None;
                }
                self.transition(&id, ContainerState::Unhealthy, &why);
            }
            "oom" => {
                self.transition(&id, ContainerState::Unhealthy, "out of memory");
            }
            "destroy" => self.forget_vanished().await,
            _ => {}
        }
    }

    /// Runs the monitor and reconcile loops until `stop` fires.
    pub async fn run_loops(self: Arc<Self>, stop: CancellationToken) {
        tokio::spawn(self.clone().follow_events(stop.clone()));
        let mut monitor = tokio::time::interval(Duration::from_millis(500));
        let mut reconcile = tokio::time::interval(self.cfg.reconcile_interval());
        monitor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = monitor.tick() => self.monitor_once().await,
                _ = reconcile.tick() => self.reconcile_once().await,
            }
        }
    }
}
