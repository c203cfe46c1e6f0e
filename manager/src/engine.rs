//! The release engine: deploy, rollback, scale, teardown and maintenance.
//!
//! A deploy, step for step: the app/env prefix lock; the image resolved by digest; the manifest (defaults,
//! then the request's overrides) and the app's dependencies resolved; placement over every zone (a zone
//! without room fails it all, before anything starts). Those checks answer the request directly (4xx).
//! Then, as a task: instance nodes written, then the supervisors called, all containers in parallel,
//! each answering once its health check passes; ONE ZooKeeper transaction puts the new backends in the
//! app.env pool (creating pool and rule the first time) and records the release target; the routers are
//! given a bounded time to see the new backends healthy; the old backends leave the pool, get a bounded
//! drain, and their containers are removed; the release goes into the history. Any failure before the
//! switch removes the new containers and their nodes, and the old release keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use atlantis_common::api::manager::{
    AppRecord, DependencySpec, EnvRecord, InstanceRecord, InstanceState, Manifest,
    ManifestOverrides, Release, ReleaseTarget, TaskKind,
};
use atlantis_common::api::supervisor::{
    ContainerInfo, ContainerSpec, Dependency, HealthCheck, SupervisorRecord, TeardownRequest,
};
use atlantis_common::zk::{Coord, LockGuard, LockHolder, LockKey, Versioned};
use atlantis_common::{AppName, ContainerId, EnvName, HostName, Sha, ZoneName};
use atlantis_supervisor::client::SupervisorClient;

use crate::config::Config;
use crate::error::ApiError;
use crate::history::History;
use crate::images::{ImageError, Images};
use crate::placement::{self, Need, Slot};
use crate::routing::{self, NewBackend, Publish, ReleaseWrite, Route};
use crate::secrets::Sealer;
use crate::state;
use crate::tasks::{Journal, Phase, Plan, Task, Tasks, TeardownPlan, now_ms};
use crate::testhook;

/// Everything handlers and tasks share.
#[derive(Clone)]
pub struct Ctx {
    /// ZooKeeper.
    pub coord: Coord,
    /// SQL history.
    pub history: History,
    /// Tasks.
    pub tasks: Tasks,
    /// Dependency data sealer.
    pub sealer: Sealer,
    /// Image resolution.
    pub images: Images,
    /// Cluster token for supervisors.
    pub token: Arc<String>,
    /// Mutual TLS to supervisors (the cluster CA and this manager's client certificate), when configured.
    pub supervisor_tls: Option<Arc<rustls::ClientConfig>>,
    /// The configuration.
    pub cfg: Arc<Config>,
    /// HTTP client (router status).
    pub http: reqwest::Client,
}

/// What a release runs: the same for deploy, rollback and scale.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    app: AppName,
    env: EnvName,
    sha: Sha,
    image: String,
    manifest: Manifest,
    dependencies: Vec<Dependency>,
    /// Dependencies on internal apps: through the zone's internal routers.
    zone_dependencies: BTreeMap<ZoneName, Vec<Dependency>>,
    dep_env: BTreeMap<String, String>,
    route: Route,
}

/// What resolving an app's dependencies does with one its owner has not granted it
/// (`crate::grants::granted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ungranted {
    /// Refuse (403 `dependency_not_granted`): deploy, rollback, scale.
    Refuse,
    /// Leave it out of the containers: re-placements and the replacement after a revoke.
    Drop,
}

/// Resolved dependencies of an app.
struct Deps {
    common: Vec<Dependency>,
    by_zone: BTreeMap<ZoneName, Vec<Dependency>>,
    env: BTreeMap<String, String>,
}

impl Ctx {
    pub(crate) fn client(&self, sup: &SupervisorRecord) -> Result<SupervisorClient, String> {
        SupervisorClient::with_tls(
            &sup.address,
            &self.token,
            self.supervisor_tls.as_deref().cloned(),
        )
        .map(|c| c.with_deploy_timeout(Duration::from_millis(self.cfg.deploy.start_timeout_ms)))
        .map_err(|e| e.to_string())
    }

    /// The app's record, or 404.
    pub async fn app(&self, app: &AppName) -> Result<Versioned<AppRecord>, ApiError> {
        self.coord
            .get::<AppRecord>(&self.coord.layout().app(app))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no app {app} (register it first)")))
    }

    /// The env's record, or 404.
    pub async fn env(&self, env: &EnvName) -> Result<EnvRecord, ApiError> {
        Ok(self
            .coord
            .get::<EnvRecord>(&self.coord.layout().env(env))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no env {env} (create it first)")))?
            .value)
    }

    pub(crate) async fn lock(&self, key: &[&str], task_id: &str) -> Result<LockGuard, ApiError> {
        let key =
            LockKey::new(key.iter().copied()).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(self
            .coord
            .try_lock(&key, &LockHolder::new(self.cfg.host.as_str(), task_id))
            .await?)
    }

    /// How app.env is published: on the external fleet, or (internal apps) on its stable port.
    pub async fn route(&self, app: &AppRecord, env: &EnvName) -> Result<Route, ApiError> {
        if !app.spec.internal {
            return Ok(Route::external(&self.cfg.routing));
        }
        let port = self.stable_port(&app.spec.name, env).await?;
        Ok(Route {
            kind: atlantis_common::zk::RouterKind::Internal,
            publish: Publish::Internal { port },
        })
    }

    async fn stable_port(&self, app: &AppName, env: &EnvName) -> Result<u16, ApiError> {
        routing::stable_port(&self.coord, &self.cfg.routing, app, env)
            .await?
            .ok_or_else(|| {
                ApiError::NoCapacity(format!(
                    "no free internal port left in {}-{}",
                    self.cfg.routing.internal_port_min, self.cfg.routing.internal_port_max
                ))
            })
    }

    /// Reads the app's dependencies: registered ones give their data (decrypted) and endpoints;
    /// internal apps resolve, per zone, to the zone's internal router and the app.env's stable port.
    /// A dependency the app is not granted is refused or dropped, as `ungranted` says.
    async fn dependencies(
        &self,
        app: &AppRecord,
        env: &EnvName,
        ungranted: Ungranted,
    ) -> Result<Deps, ApiError> {
        let mut d = Deps {
            common: Vec::new(),
            by_zone: BTreeMap::new(),
            env: BTreeMap::new(),
        };
        for name in &app.spec.dependencies {
            if !crate::grants::granted(self, app, name).await? {
                match ungranted {
                    Ungranted::Drop => continue,
                    Ungranted::Refuse => {
                        let owner = crate::grants::owner(self, name).await?;
                        return Err(crate::grants::not_granted(
                            &app.spec.name,
                            name,
                            &owner.team,
                        ));
                    }
                }
            }
            if let Some(rec) = crate::api::deps::load(self, name).await? {
                let spec: DependencySpec = crate::api::deps::open(self, name, &rec)?;
                for e in &spec.endpoints {
                    d.common.push(Dependency {
                        name: name.to_string(),
                        address: e.address,
                        port: e.port,
                    });
                }
                d.env.extend(spec.data);
                continue;
            }
            let internal = self
                .coord
                .get::<AppRecord>(&self.coord.layout().app(name))
                .await?
                .filter(|a| a.value.spec.internal)
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "app depends on {name}, which is neither a registered dependency nor an internal app"
                    ))
                })?;
            let port = self.stable_port(&internal.value.spec.name, env).await?;
            let routers =
                state::routers(&self.coord, atlantis_common::zk::RouterKind::Internal).await?;
            let zones: std::collections::BTreeSet<ZoneName> = state::supervisors(&self.coord)
                .await?
                .into_iter()
                .map(|s| s.zone)
                .collect();
            for zone in zones {
                let here: Vec<_> = routers.iter().filter(|r| r.zone == zone.as_str()).collect();
                let address = here.iter().find_map(|r| router_address(r)).ok_or_else(|| {
                    ApiError::NotFound(if here.is_empty() {
                        format!("no internal router registered in zone {zone} for dependency {name}")
                    } else {
                        format!(
                            "no internal router of zone {zone} registered an address containers can \
                             reach ({} registered without one: set listen_ip to a specific IPv4 \
                             address or advertise_ip in their config) for dependency {name}",
                            here.iter().map(|r| r.host.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    })
                })?;
                d.by_zone.entry(zone).or_default().push(Dependency {
                    name: name.to_string(),
                    address,
                    port,
                });
            }
        }
        Ok(d)
    }

    fn container_spec(&self, s: &Spec, id: ContainerId, zone: Option<&ZoneName>) -> ContainerSpec {
        let mut env_vars = s.manifest.env_vars.clone();
        env_vars.extend(s.dep_env.clone());
        let mut dependencies = s.dependencies.clone();
        let zone_deps = match zone {
            Some(z) => s.zone_dependencies.get(z),
            None => s.zone_dependencies.values().next(),
        };
        dependencies.extend(zone_deps.into_iter().flatten().cloned());
        ContainerSpec {
            container_id: id,
            app: s.app.clone(),
            sha: s.sha.clone(),
            env: s.env.clone(),
            image: s.image.clone(),
            cpu_millis: s.manifest.cpu_millis,
            memory_mb: s.manifest.memory_mb,
            ports: vec![s.manifest.port],
            env_vars,
            config: None,
            dependencies,
            health: HealthCheck {
                path: s.manifest.health_path.clone(),
                port: None,
                timeout_ms: 2000,
                start_timeout_ms: s.manifest.start_timeout_ms,
                interval_ms: 2000,
            },
            command: s.manifest.command.clone(),
            read_only_rootfs: false,
            allow_ping: false,
        }
    }

    fn check_spec(&self, s: &Spec) -> Result<(), ApiError> {
        let probe = self.container_spec(s, ContainerId::generate(&s.app, &s.sha, &s.env), None);
        probe.validate().map_err(|e| {
            ApiError::InvalidField(atlantis_common::api::manager::FieldError {
                field: e.field,
                message: e.message,
            })
        })
    }

    /// Starts a deploy of `sha` (202 with the task) or refuses it.
    pub async fn deploy(
        &self,
        app: AppName,
        env: EnvName,
        sha: Sha,
        overrides: ManifestOverrides,
    ) -> Result<String, ApiError> {
        let rec = self.app(&app).await?;
        self.env(&env).await?;
        let mut check = Manifest::default();
        check.apply(&overrides);
        check.validate()?;
        let task_id = Tasks::new_id();
        let guard = self.lock(&[app.as_str(), env.as_str()], &task_id).await?;
        let prepared = async {
            let image_err = |e: ImageError| match e {
                ImageError::NotFound { .. } => ApiError::ImageNotFound(e.to_string()),
                ImageError::Manifest(m) => ApiError::InvalidRequest(m),
                ImageError::Registry(m) => ApiError::Unavailable(m),
            };
            let image = self.images.resolve(&app, &sha).await.map_err(image_err)?;
            // The image's own manifest first, then the request's overrides.
            let mut manifest = Manifest::default();
            manifest.apply(
                &self
                    .images
                    .manifest_overrides(&app, &image.digest)
                    .await
                    .map_err(image_err)?,
            );
            manifest.apply(&overrides);
            manifest.validate()?;
            self.prepare(
                &rec.value,
                &app,
                &env,
                sha.clone(),
                image.reference,
                manifest,
            )
            .await
        }
        .await;
        self.launch(task_id, guard, TaskKind::Deploy, prepared, None)
            .await
    }

    /// The release of `sha` with `image` and `manifest` for app.env: dependencies and route resolved,
    /// the container spec checked, and its placement over every zone.
    async fn prepare(
        &self,
        rec: &AppRecord,
        app: &AppName,
        env: &EnvName,
        sha: Sha,
        image: String,
        manifest: Manifest,
    ) -> Result<(Spec, Vec<Slot>), ApiError> {
        let deps = self.dependencies(rec, env, Ungranted::Refuse).await?;
        let route = self.route(rec, env).await?;
        let spec = Spec {
            app: app.clone(),
            env: env.clone(),
            sha,
            image,
            manifest,
            dependencies: deps.common,
            zone_dependencies: deps.by_zone,
            dep_env: deps.env,
            route,
        };
        self.check_spec(&spec)?;
        let slots = self.place(&spec, spec.manifest.instances, None).await?;
        Ok((spec, slots))
    }

    /// Frees the lock when preparing failed; otherwise records the task and runs the release in the
    /// background.
    async fn launch(
        &self,
        task_id: String,
        guard: LockGuard,
        kind: TaskKind,
        prepared: Result<(Spec, Vec<Slot>), ApiError>,
        warning: Option<String>,
    ) -> Result<String, ApiError> {
        let (spec, slots) = match prepared {
            Ok(v) => v,
            Err(e) => {
                let _ = guard.release().await;
                return Err(e);
            }
        };
        let task = self
            .tasks
            .start(
                task_id.clone(),
                kind,
                spec.app.as_str(),
                Some(spec.env.as_str()),
                &[spec.app.as_str(), spec.env.as_str()],
            )
            .await;
        if let Some(w) = warning {
            task.warn(w);
        }
        let ctx = self.clone();
        tokio::spawn(async move { ctx.run_release(task, guard, spec, slots).await });
        Ok(task_id)
    }

    /// Starts a rollback to release `to` (default: the one before the current).
    pub async fn rollback(
        &self,
        app: AppName,
        env: EnvName,
        to: Option<i64>,
    ) -> Result<String, ApiError> {
        let rec = self.app(&app).await?;
        self.env(&env).await?;
        let current = state::release(&self.coord, &app, &env).await?;
        let target = match to {
            Some(n) => n,
            None => {
                let cur = current
                    .as_ref()
                    .map(|c| c.value.number)
                    .ok_or_else(|| ApiError::NotFound(format!("{app}.{env} is not deployed")))?;
                let list = self
                    .history
                    .releases(app.as_str(), env.as_str(), 1000)
                    .await?;
                list.iter()
                    .map(|r| r.number)
                    .filter(|n| *n < cur)
                    .max()
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("{app}.{env} has no release before {cur}"))
                    })?
            }
        };
        let release = self
            .history
            .release(app.as_str(), env.as_str(), target)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("{app}.{env} has no release {target}")))?;
        let sha: Sha = release
            .sha
            .parse()
            .map_err(|e: atlantis_common::NameError| ApiError::Internal(e.to_string()))?;
        let task_id = Tasks::new_id();
        let guard = self.lock(&[app.as_str(), env.as_str()], &task_id).await?;
        let prepared = self
            .prepare(
                &rec.value,
                &app,
                &env,
                sha,
                release.image.clone(),
                release.manifest.clone(),
            )
            .await;
        let warning = format!("rolling back to release {target} (sha {})", release.sha);
        self.launch(task_id, guard, TaskKind::Rollback, prepared, Some(warning))
            .await
    }

    /// Places `per_zone` containers of `spec` (in `only_zone` when given).
    pub(crate) async fn place(
        &self,
        spec: &Spec,
        per_zone: u32,
        only_zone: Option<&atlantis_common::ZoneName>,
    ) -> Result<Vec<Slot>, ApiError> {
        let mut sups = state::supervisors(&self.coord).await?;
        if let Some(z) = only_zone {
            sups.retain(|s| &s.zone == z);
        }
        let mut copies: BTreeMap<HostName, u32> = BTreeMap::new();
        for i in state::instances(&self.coord, &spec.app, &spec.env).await? {
            if i.value.sha == spec.sha {
                *copies.entry(i.value.host.clone()).or_default() += 1;
            }
        }
        placement::place(
            &sups,
            &copies,
            Need {
                per_zone,
                cpu_millis: spec.manifest.cpu_millis,
                memory_mb: spec.manifest.memory_mb,
            },
        )
        .map_err(|e| ApiError::NoCapacity(e.to_string()))
    }

    /// The instance records of the containers to start in `slots` (IDs chosen now, nothing written).
    pub(crate) fn plan_instances(spec: &Spec, slots: &[Slot], release: i64) -> Vec<InstanceRecord> {
        slots
            .iter()
            .map(|slot| InstanceRecord {
                version: 1,
                container_id: ContainerId::generate(&spec.app, &spec.sha, &spec.env),
                app: spec.app.clone(),
                env: spec.env.clone(),
                sha: spec.sha.clone(),
                host: slot.host.clone(),
                zone: slot.zone.clone(),
                backend: None,
                state: InstanceState::Starting,
                release,
                cpu_millis: spec.manifest.cpu_millis,
                memory_mb: spec.manifest.memory_mb,
            })
            .collect()
    }

    /// Writes the instance nodes of `recs`, then starts every container in parallel. On any failure
    /// everything started is removed again and the error returned.
    async fn start_all(
        &self,
        task: &Task,
        spec: &Spec,
        recs: &[InstanceRecord],
    ) -> Result<Vec<(InstanceRecord, ContainerInfo)>, String> {
        let l = self.coord.layout();
        let mut planned = Vec::new();
        // Each instance node is created only while this manager still owns the task (the transaction
        // checks the task node's version), so a task taken over elsewhere creates nothing more.
        let owner = task.owner_check();
        let _ = self
            .coord
            .ensure_path(&l.instances(&spec.app, &spec.env))
            .await;
        for rec in recs {
            let id = rec.container_id.clone();
            let mut txn = self.coord.txn();
            if let Some((path, version)) = &owner {
                txn = txn.check(path, *version);
            }
            let created = txn
                .create(&l.instance(&spec.app, &spec.env, &id), rec)
                .commit()
                .await;
            if let Err(e) = created {
                self.undo(task, &planned).await;
                return Err(format!("cannot write instance node {id}: {e}"));
            }
            planned.push(rec.clone());
        }
        task.detail(format!(
            "{} containers: {}",
            planned.len(),
            planned
                .iter()
                .map(|r| format!("{} on {} ({})", r.container_id, r.host, r.zone))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let sups: HashMap<HostName, SupervisorRecord> = state::supervisors(&self.coord)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|s| (s.host.clone(), s))
            .collect();
        let calls = planned.iter().map(|rec| {
            let cspec = self.container_spec(spec, rec.container_id.clone(), Some(&rec.zone));
            let sup = sups.get(&rec.host).cloned();
            async move {
                let sup = sup.ok_or_else(|| format!("supervisor {} went away", rec.host))?;
                let client = self.client(&sup)?;
                client
                    .deploy(&cspec)
                    .await
                    .map_err(|e| format!("{} on {}: {e}", rec.container_id, rec.host))
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (rec, r) in planned.iter().zip(results) {
            match r {
                Ok(info) => out.push((rec.clone(), info)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            self.undo(task, &planned).await;
            return Err(format!("containers did not start: {}", errors.join("; ")));
        }
        Ok(out)
    }

    /// Removes containers (on their supervisors) and their instance nodes, logging what fails.
    async fn undo(&self, task: &Task, recs: &[InstanceRecord]) {
        if recs.is_empty() {
            return;
        }
        let removed = self.remove_containers(task, recs).await;
        task.detail(format!("removed {removed} new containers"));
    }

    /// Tears containers down host by host, then deletes their instance nodes. Returns how many went.
    pub(crate) async fn remove_containers(&self, task: &Task, recs: &[InstanceRecord]) -> usize {
        let l = self.coord.layout();
        let mut by_host: BTreeMap<HostName, Vec<ContainerId>> = BTreeMap::new();
        for r in recs {
            by_host
                .entry(r.host.clone())
                .or_default()
                .push(r.container_id.clone());
        }
        let calls = by_host.into_iter().map(|(host, ids)| async move {
            let sup = match state::supervisor(&self.coord, &host).await {
                Ok(Some(s)) => s,
                _ => {
                    return Err(format!(
                        "supervisor {host} is not registered; its containers {ids:?} are left to its orphan reconciliation"
                    ));
                }
            };
            let client = self.client(&sup)?;
            client
                .teardown(&TeardownRequest {
                    container_ids: ids,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("teardown on {host}: {e}"))
        });
        for r in futures::future::join_all(calls).await {
            if let Err(e) = r {
                task.warn(e);
            }
        }
        let mut n = 0;
        for r in recs {
            match self
                .coord
                .delete(&l.instance(&r.app, &r.env, &r.container_id), None)
                .await
            {
                Ok(_) => n += 1,
                Err(e) => task.warn(format!(
                    "cannot delete instance node {}: {e}",
                    r.container_id
                )),
            }
        }
        n
    }

    fn backend_of(spec_port: u16, info: &ContainerInfo) -> Option<String> {
        info.ports
            .iter()
            .find(|p| p.container_port == spec_port)
            .map(|p| format!("{}:{}", info.address, p.host_port))
    }

    /// Runs a deploy or rollback after its checks passed.
    async fn run_release(&self, task: Task, guard: LockGuard, spec: Spec, slots: Vec<Slot>) {
        let r = self.release_steps(&task, &spec, &slots).await;
        // The task ends before its lock goes: a running task without a lock is an orphan to the leader.
        match r {
            Ok(n) => {
                task.set_release(n);
                task.done().await;
            }
            Err(e) => task.fail(e).await,
        }
        let _ = guard.release().await;
    }

    async fn release_steps(&self, task: &Task, spec: &Spec, slots: &[Slot]) -> Result<i64, String> {
        let (app, env) = (&spec.app, &spec.env);
        let old = state::instances(&self.coord, app, env)
            .await
            .map_err(|e| e.to_string())?;
        let current = state::release(&self.coord, app, env)
            .await
            .map_err(|e| e.to_string())?;
        let number = self
            .history
            .next_release_number(app.as_str(), env.as_str())
            .await
            .map_err(|e| e.to_string())?
            .max(current.as_ref().map_or(0, |c| c.value.number) + 1);
        let target = ReleaseTarget {
            version: 1,
            number,
            sha: spec.sha.clone(),
            image: spec.image.clone(),
            manifest: spec.manifest.clone(),
        };
        let created = Self::plan_instances(spec, slots, number);
        task.record(|j| {
            j.plan = Some(Plan {
                phase: Phase::Starting,
                route_kind: spec.route.kind,
                created: created.clone(),
                remove: old.iter().map(|v| v.value.clone()).collect(),
                target: Some(target.clone()),
                release_version: current.as_ref().map(|c| c.version),
                teardown: None,
            })
        })
        .await?;
        testhook::pause("start").await;
        task.step("start containers").await;
        let started = self.start_all(task, spec, &created).await?;
        let new = match new_backends(spec.manifest.port, started) {
            Ok(n) => n,
            Err((e, recs)) => {
                self.undo(task, &recs).await;
                return Err(e);
            }
        };
        if let Err(e) = task.record(|j| set_phase(j, Phase::Started)).await {
            if !task.is_lost() {
                self.undo(task, &created).await;
            }
            return Err(e);
        }
        testhook::pause("switch").await;
        task.check_owned()?;
        task.step("switch traffic").await;
        if let Err(e) = routing::switch_in(
            &self.coord,
            &spec.route,
            app,
            env,
            &new,
            ReleaseWrite::Target(&target, current.as_ref().map(|c| c.version)),
            task.owner_check().as_ref().map(|(p, v)| (p.as_str(), *v)),
        )
        .await
        {
            let recs: Vec<InstanceRecord> = new.iter().map(|b| b.instance.clone()).collect();
            self.undo(task, &recs).await;
            return Err(format!(
                "the switch transaction failed (old release still serves): {e}"
            ));
        }
        // From here on the task goes forward, whoever finishes it.
        let _ = task.record(|j| set_phase(j, Phase::Switched)).await;
        task.check_owned()?;
        task.detail(format!(
            "pool {} now has {}",
            routing::pool_name(app, env),
            new.iter()
                .map(|b| b.backend.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.confirm_usable(task, &spec.route, app, env, &new).await;
        testhook::pause("drain").await;
        task.check_owned()?;
        self.finish_release(
            task,
            spec.route.kind,
            &task.journal().plan.unwrap_or_else(|| Plan {
                phase: Phase::Switched,
                route_kind: spec.route.kind,
                created,
                remove: old.into_iter().map(|v| v.value).collect(),
                target: Some(target.clone()),
                release_version: None,
                teardown: None,
            }),
        )
        .await
    }

    /// After the switch: drains and removes `plan.remove`, records the release (when the plan has a
    /// target) in the history unless it is there already. Safe to run again.
    pub(crate) async fn finish_release(
        &self,
        task: &Task,
        kind: atlantis_common::zk::RouterKind,
        plan: &Plan,
    ) -> Result<i64, String> {
        let Some(first) = plan.created.first().or(plan.remove.first()) else {
            return Ok(plan.target.as_ref().map_or(0, |t| t.number));
        };
        let (app, env) = (first.app.clone(), first.env.clone());
        task.step("drain old release").await;
        let _ = task.record(|j| set_phase(j, Phase::Draining)).await;
        task.check_owned()?;
        self.drain(task, kind, &app, &env, plan.remove.clone())
            .await;
        let Some(target) = &plan.target else {
            return Ok(0);
        };
        task.step("record release").await;
        let number = target.number;
        let known = self
            .history
            .release(app.as_str(), env.as_str(), number)
            .await
            .ok()
            .flatten()
            .is_some();
        if !known {
            let release = Release {
                app: app.to_string(),
                env: env.to_string(),
                number,
                sha: target.sha.to_string(),
                image: target.image.clone(),
                manifest: target.manifest.clone(),
                task_id: task.id(),
                containers: plan
                    .created
                    .iter()
                    .map(|r| r.container_id.to_string())
                    .collect(),
                created_ms: now_ms() as i64,
            };
            if let Err(e) = self.history.record_release(&release).await {
                task.warn(format!(
                    "release {number} serves but is not in the history: {e}"
                ));
            }
        }
        task.detail(format!("release {number}: sha {}", target.sha));
        Ok(number)
    }

    async fn confirm_usable(
        &self,
        task: &Task,
        route: &Route,
        app: &AppName,
        env: &EnvName,
        new: &[NewBackend],
    ) {
        task.step("wait for routers").await;
        // The switch bumped the generation; any later one includes it.
        let generation = routing::acks::current_generation(&self.coord, route.kind)
            .await
            .unwrap_or(0);
        let limit = Duration::from_millis(self.cfg.deploy.switch_wait_ms);
        let acks = routing::acks::wait_generation(&self.coord, route.kind, generation, limit).await;
        task.detail(format!(
            "routers {}/{} on generation {generation}",
            acks.on, acks.of
        ));
        if !acks.all() {
            task.warn(format!("routers lagging: {}", acks.lagging.join(", ")));
        }
        let backends: Vec<String> = new.iter().map(|b| b.backend.clone()).collect();
        let pending = routing::wait_usable(
            &self.coord,
            &self.http,
            route.kind,
            &routing::pool_name(app, env),
            &backends,
            Duration::from_millis(self.cfg.deploy.switch_wait_ms),
        )
        .await;
        if !pending.is_empty() {
            task.warn(format!(
                "routers that did not confirm the new backends healthy in time: {}",
                pending.join(", ")
            ));
        }
    }

    /// Takes `old` out of the pool, waits the drain time, then removes the containers and nodes.
    pub(crate) async fn drain(
        &self,
        task: &Task,
        kind: atlantis_common::zk::RouterKind,
        app: &AppName,
        env: &EnvName,
        old: Vec<InstanceRecord>,
    ) {
        if old.is_empty() {
            task.detail("nothing to drain");
            return;
        }
        let backends: Vec<String> = old.iter().filter_map(|r| r.backend.clone()).collect();
        let generation =
            match routing::remove_backends(&self.coord, kind, app, env, &backends).await {
                Ok(g) => Some(g),
                Err(e) => {
                    task.warn(format!("cannot remove old backends from the pool: {e}"));
                    None
                }
            };
        let l = self.coord.layout();
        for r in &old {
            let mut s = r.clone();
            s.state = InstanceState::Stopping;
            let _ = self
                .coord
                .set(&l.instance(app, env, &r.container_id), &s, None)
                .await;
        }
        if !backends.is_empty() {
            // Until every router reports nothing open to them (routers close what is left at their
            // own drain deadline; 3 s more for them to say so).
            let limit = Duration::from_millis(self.cfg.deploy.drain_deadline_ms + 3_000);
            let g = generation.unwrap_or(0);
            let d = routing::acks::wait_drained(&self.coord, kind, g, &backends, limit).await;
            task.detail(d.summary());
        }
        let n = self.remove_containers(task, &old).await;
        task.detail(format!("removed {n} old containers"));
    }

    /// The spec of the running release `target` of app.env with `instances` per zone (dependencies and
    /// route resolved again; ungranted dependencies refused or dropped as `ungranted` says).
    pub(crate) async fn release_spec(
        &self,
        rec: &AppRecord,
        env: &EnvName,
        target: &ReleaseTarget,
        instances: u32,
        ungranted: Ungranted,
    ) -> Result<Spec, ApiError> {
        let app = &rec.spec.name;
        let deps = self.dependencies(rec, env, ungranted).await?;
        let route = self.route(rec, env).await?;
        let mut manifest = target.manifest.clone();
        manifest.instances = instances;
        Ok(Spec {
            app: app.clone(),
            env: env.clone(),
            sha: target.sha.clone(),
            image: target.image.clone(),
            manifest,
            dependencies: deps.common,
            zone_dependencies: deps.by_zone,
            dep_env: deps.env,
            route,
        })
    }

    /// Starts a scale of app/env to `instances` per zone, without a new release.
    pub async fn scale(
        &self,
        app: AppName,
        env: EnvName,
        instances: u32,
    ) -> Result<String, ApiError> {
        if instances == 0 || instances > 100 {
            return Err(ApiError::InvalidField(
                atlantis_common::api::manager::FieldError {
                    field: "instances".into(),
                    message: "must be 1 to 100 per zone (use teardown to remove all)".into(),
                },
            ));
        }
        let rec = self.app(&app).await?;
        let task_id = Tasks::new_id();
        let guard = self.lock(&[app.as_str(), env.as_str()], &task_id).await?;
        let prepared = async {
            let current = state::release(&self.coord, &app, &env)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("{app}.{env} is not deployed")))?;
            let spec = self
                .release_spec(
                    &rec.value,
                    &env,
                    &current.value,
                    instances,
                    Ungranted::Refuse,
                )
                .await?;
            let live = state::instances(&self.coord, &app, &env).await?;
            let mut per_zone: BTreeMap<atlantis_common::ZoneName, Vec<InstanceRecord>> =
                BTreeMap::new();
            for s in state::supervisors(&self.coord).await? {
                per_zone.entry(s.zone).or_default();
            }
            for i in live {
                per_zone
                    .entry(i.value.zone.clone())
                    .or_default()
                    .push(i.value);
            }
            let mut slots = Vec::new();
            let mut remove = Vec::new();
            for (zone, mut list) in per_zone {
                let have = list.len() as u32;
                if have < instances {
                    slots.extend(self.place(&spec, instances - have, Some(&zone)).await?);
                } else if have > instances {
                    // Remove from the hosts with the most copies first.
                    let mut count: BTreeMap<HostName, usize> = BTreeMap::new();
                    for r in &list {
                        *count.entry(r.host.clone()).or_default() += 1;
                    }
                    list.sort_by_key(|r| std::cmp::Reverse(count[&r.host]));
                    remove.extend(list.into_iter().take((have - instances) as usize));
                }
            }
            Ok::<_, ApiError>((spec, current, slots, remove))
        }
        .await;
        let (spec, current, slots, remove) = match prepared {
            Ok(v) => v,
            Err(e) => {
                let _ = guard.release().await;
                return Err(e);
            }
        };
        let task = self
            .tasks
            .start(
                task_id.clone(),
                TaskKind::Scale,
                app.as_str(),
                Some(env.as_str()),
                &[app.as_str(), env.as_str()],
            )
            .await;
        let ctx = self.clone();
        tokio::spawn(async move {
            let r = ctx.scale_steps(&task, &spec, current, &slots, remove).await;
            match r {
                Ok(()) => task.done().await,
                Err(e) => task.fail(e).await,
            }
            let _ = guard.release().await;
        });
        Ok(task_id)
    }

    /// Starts the containers of `slots`, switches them in (the release target keeps its number, with
    /// `spec`'s instance count), then drains `remove`. Shared by scale and the leader's re-placement.
    pub(crate) async fn scale_steps(
        &self,
        task: &Task,
        spec: &Spec,
        current: Versioned<ReleaseTarget>,
        slots: &[Slot],
        remove: Vec<InstanceRecord>,
    ) -> Result<(), String> {
        let (app, env) = (&spec.app, &spec.env);
        let mut target = current.value.clone();
        target.manifest.instances = spec.manifest.instances;
        let created = Self::plan_instances(spec, slots, target.number);
        task.record(|j| {
            j.plan = Some(Plan {
                phase: Phase::Starting,
                route_kind: spec.route.kind,
                created: created.clone(),
                remove: remove.clone(),
                target: None,
                release_version: Some(current.version),
                teardown: None,
            })
        })
        .await?;
        let mut new = Vec::new();
        if !created.is_empty() {
            testhook::pause("start").await;
            task.step("start containers").await;
            let started = self.start_all(task, spec, &created).await?;
            new = match new_backends(spec.manifest.port, started) {
                Ok(n) => n,
                Err((e, recs)) => {
                    self.undo(task, &recs).await;
                    return Err(e);
                }
            };
            if let Err(e) = task.record(|j| set_phase(j, Phase::Started)).await {
                if !task.is_lost() {
                    self.undo(task, &created).await;
                }
                return Err(e);
            }
        }
        testhook::pause("switch").await;
        task.check_owned()?;
        task.step("switch traffic").await;
        if let Err(e) = routing::switch_in(
            &self.coord,
            &spec.route,
            app,
            env,
            &new,
            ReleaseWrite::Target(&target, Some(current.version)),
            task.owner_check().as_ref().map(|(p, v)| (p.as_str(), *v)),
        )
        .await
        {
            let recs: Vec<InstanceRecord> = new.iter().map(|b| b.instance.clone()).collect();
            self.undo(task, &recs).await;
            return Err(format!("the switch transaction failed: {e}"));
        }
        let _ = task.record(|j| set_phase(j, Phase::Switched)).await;
        task.check_owned()?;
        if !new.is_empty() {
            self.confirm_usable(task, &spec.route, app, env, &new).await;
        }
        testhook::pause("drain").await;
        task.check_owned()?;
        if !remove.is_empty() {
            task.step("drain removed containers").await;
            let _ = task.record(|j| set_phase(j, Phase::Draining)).await;
            task.check_owned()?;
            self.drain(task, spec.route.kind, app, env, remove).await;
        }
        Ok(())
    }

    /// Starts a teardown of an app (every env), an app/env, or one container.
    pub async fn teardown(
        &self,
        app: AppName,
        env: Option<EnvName>,
        container: Option<ContainerId>,
    ) -> Result<String, ApiError> {
        let rec = self.app(&app).await?.value;
        let task_id = Tasks::new_id();
        let key: Vec<&str> = match &env {
            Some(e) => vec![app.as_str(), e.as_str()],
            None => vec![app.as_str()],
        };
        let guard = self.lock(&key, &task_id).await?;
        let prepared = async {
            let envs = match &env {
                Some(e) => vec![e.clone()],
                None => state::app_envs(&self.coord, &app).await?,
            };
            if let (Some(c), Some(e)) = (&container, &env) {
                let found = state::instances(&self.coord, &app, e)
                    .await?
                    .iter()
                    .any(|i| &i.value.container_id == c);
                if !found {
                    return Err(ApiError::NotFound(format!("no container {c} in {app}.{e}")));
                }
            }
            Ok::<_, ApiError>(envs)
        }
        .await;
        let envs = match prepared {
            Ok(v) => v,
            Err(e) => {
                let _ = guard.release().await;
                return Err(e);
            }
        };
        let task = self
            .tasks
            .start(
                task_id.clone(),
                TaskKind::Teardown,
                app.as_str(),
                env.as_ref().map(EnvName::as_str),
                &key,
            )
            .await;
        let ctx = self.clone();
        tokio::spawn(async move {
            let r = async {
                let route_kind = ctx.cfg.routing.kind;
                task.record(|j| {
                    j.plan = Some(Plan {
                        phase: Phase::Draining,
                        route_kind,
                        created: Vec::new(),
                        remove: Vec::new(),
                        target: None,
                        release_version: None,
                        teardown: Some(TeardownPlan {
                            envs: envs.iter().map(ToString::to_string).collect(),
                            container: container.as_ref().map(ToString::to_string),
                        }),
                    })
                })
                .await?;
                ctx.teardown_steps(&task, &rec, &envs, container.as_ref())
                    .await
            }
            .await;
            match r {
                Ok(()) => task.done().await,
                Err(e) => task.fail(e).await,
            }
            let _ = guard.release().await;
        });
        Ok(task_id)
    }

    pub(crate) async fn teardown_steps(
        &self,
        task: &Task,
        rec: &AppRecord,
        envs: &[EnvName],
        container: Option<&ContainerId>,
    ) -> Result<(), String> {
        let l = self.coord.layout();
        let app = &rec.spec.name;
        for env in envs {
            let route = self.route(rec, env).await.map_err(|e| e.to_string())?;
            task.step(&format!("tear down {app}.{env}")).await;
            let mut list: Vec<InstanceRecord> = state::instances(&self.coord, app, env)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|v| v.value)
                .collect();
            if let Some(c) = container {
                list.retain(|i| &i.container_id == c);
                self.drain(task, route.kind, app, env, list).await;
                // The release target now has one container less in that zone; leave the target alone
                // (a later scale restores the count).
                continue;
            }
            if let Err(e) = routing::remove_app_env(&self.coord, &route, app, env).await {
                return Err(format!("cannot remove the routing of {app}.{env}: {e}"));
            }
            if !list.is_empty() {
                tokio::time::sleep(Duration::from_millis(self.cfg.deploy.drain_ms)).await;
            }
            let n = self.remove_containers(task, &list).await;
            task.detail(format!("removed {n} containers, pool and rule"));
            let _ = self.coord.delete(&l.release(app, env), None).await;
            let _ = self.coord.delete(&l.instances(app, env), None).await;
        }
        if container.is_none() {
            // Only empty parents go (a delete of a node with children fails and is ignored).
            let _ = self.coord.delete(&l.app_releases(app), None).await;
            let _ = self.coord.delete(&l.app_instances(app), None).await;
        }
        Ok(())
    }

    /// Puts a container in or out of maintenance: out of its pool, still running.
    pub async fn maintenance(&self, id: ContainerId, on: bool) -> Result<InstanceRecord, ApiError> {
        let rec = state::find_instance(&self.coord, &id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no container {id}")))?;
        let kind = self
            .route(&self.app(&rec.app).await?.value, &rec.env)
            .await?
            .kind;
        let guard = self
            .lock(
                &[rec.app.as_str(), rec.env.as_str()],
                &format!("maintenance-{id}"),
            )
            .await?;
        let r = async {
            let backend = rec.backend.clone().ok_or_else(|| {
                ApiError::InUse(format!("container {id} is {:?}, not serving", rec.state))
            })?;
            let mut next = rec.clone();
            match (on, rec.state) {
                (true, InstanceState::Serving) => {
                    routing::remove_backends(
                        &self.coord,
                        kind,
                        &rec.app,
                        &rec.env,
                        std::slice::from_ref(&backend),
                    )
                    .await?;
                    next.state = InstanceState::Maintenance;
                }
                (false, InstanceState::Maintenance) => {
                    routing::add_backend(
                        &self.coord,
                        kind,
                        &rec.app,
                        &rec.env,
                        &backend,
                        id.as_str(),
                    )
                    .await?;
                    next.state = InstanceState::Serving;
                }
                (true, InstanceState::Maintenance) | (false, InstanceState::Serving) => {
                    return Ok(rec.clone());
                }
                (_, s) => {
                    return Err(ApiError::InUse(format!("container {id} is {s:?}")));
                }
            }
            self.coord
                .set(
                    &self.coord.layout().instance(&rec.app, &rec.env, &id),
                    &next,
                    None,
                )
                .await?;
            Ok(next)
        }
        .await;
        let _ = guard.release().await;
        r
    }
}

type Started = Vec<(InstanceRecord, ContainerInfo)>;

fn set_phase(j: &mut Journal, phase: Phase) {
    if let Some(p) = &mut j.plan {
        p.phase = phase;
    }
}

fn new_backends(
    port: u16,
    started: Started,
) -> Result<Vec<NewBackend>, (String, Vec<InstanceRecord>)> {
    let mut out = Vec::new();
    for (rec, info) in &started {
        match Ctx::backend_of(port, info) {
            Some(b) => out.push(NewBackend {
                backend: b,
                instance: rec.clone(),
            }),
            None => {
                return Err((
                    format!("{} publishes no host port for {port}", rec.container_id),
                    started.iter().map(|(r, _)| r.clone()).collect(),
                ));
            }
        }
    }
    Ok(out)
}

/// The address a router registration offers to containers: its `address` field (where its routed
/// ports are reachable, registered by the router from `advertise_ip` or `listen_ip`), when it is a
/// specific IPv4 address that is not loopback. Never the status address: the status listener is on
/// loopback by default, which inside a container is the container itself.
fn router_address(r: &atlantis_common::api::manager::RouterView) -> Option<std::net::Ipv4Addr> {
    let ip: std::net::Ipv4Addr = r.record.get("address")?.as_str()?.parse().ok()?;
    (!(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()))
        .then_some(ip)
}
