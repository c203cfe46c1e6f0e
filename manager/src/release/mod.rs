//! The release engine: deploy, rollback, scale, teardown, maintenance, and the replacement of an app's
//! containers after a revoke.
//!
//! [`Engine`] works over a fleet of hosts ([`HostFleet`]: the real supervisors, or in-memory hosts in
//! tests) and a store: ZooKeeper (pools, instances, release targets, locks, task journals), the SQL history
//! and the task registry. It knows nothing of HTTP: the API's handlers (`crate::api`, through
//! `crate::ctx::Ctx`) call it, and map its [`EngineError`] to their errors in one place.
//!
//! A request is checked first, answering directly (4xx): the app/env prefix lock; the image resolved by
//! digest; the manifest (defaults, then the request's overrides) and the app's dependencies resolved
//! ([`spec`]); placement over every zone (a zone without room fails it all, before anything starts). Then
//! a task runs the one phase machine shared by deploy, rollback, scale, re-placement and the replacement
//! after a revoke ([`phases`]): plan → start → healthy → switch → routers acknowledged → drain → record,
//! each phase written to the task's journal before it acts. Any failure before the switch removes the
//! new containers and their nodes, and the old release keeps serving; after it the task goes forward.

pub mod cut;
mod drain;
pub mod error;
mod phases;
pub mod replace;
mod scale;
pub mod spec;
mod start;
mod teardown;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use atlantis_common::api::manager::{AppRecord, EnvRecord, Manifest, ManifestOverrides, TaskKind};
use atlantis_common::zk::{Coord, LockGuard, LockHolder, LockKey, Versioned};
use atlantis_common::{AppName, EnvName, Sha};

pub use error::EngineError;
pub use phases::Change;
pub use spec::{Spec, Ungranted};

use crate::config::Config;
use crate::fleet::hosts::HostFleet;
use crate::history::History;
use crate::images::Images;
use crate::placement::Slot;
use crate::secrets::Sealer;
use crate::state;
use crate::tasks::{Task, Tasks};

/// The engine and its store.
#[derive(Clone)]
pub struct Engine {
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
    /// The hosts.
    pub hosts: Arc<dyn HostFleet>,
    /// The configuration.
    pub cfg: Arc<Config>,
    /// HTTP client (router status).
    pub http: reqwest::Client,
    /// TEST-ONLY interruption points.
    pub(crate) hooks: Hooks,
}

/// TEST-ONLY: where a task stops as if its manager died (see [`EngineError::Crashed`]). Empty outside
/// this crate's unit tests.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    /// The phase at which the next task stops.
    #[cfg(test)]
    pub(crate) crash_at: Arc<parking_lot::Mutex<Option<crate::tasks::Phase>>>,
    /// Every phase entered, in order.
    #[cfg(test)]
    pub(crate) seen: Arc<parking_lot::Mutex<Vec<crate::tasks::Phase>>>,
}

impl Hooks {
    /// A task entered `phase` (its journal says so): in tests, noted, and maybe the simulated crash.
    #[cfg_attr(not(test), allow(clippy::unused_self))]
    pub(crate) fn reached(&self, phase: crate::tasks::Phase) -> Result<(), EngineError> {
        #[cfg(test)]
        {
            self.seen.lock().push(phase);
            if *self.crash_at.lock() == Some(phase) {
                return Err(EngineError::Crashed(phase));
            }
        }
        let _ = phase;
        Ok(())
    }
}

impl Engine {
    /// An engine over `hosts` and the store.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        coord: Coord,
        history: History,
        tasks: Tasks,
        sealer: Sealer,
        images: Images,
        hosts: Arc<dyn HostFleet>,
        cfg: Arc<Config>,
        http: reqwest::Client,
    ) -> Engine {
        Engine {
            coord,
            history,
            tasks,
            sealer,
            images,
            hosts,
            cfg,
            http,
            hooks: Hooks::default(),
        }
    }

    /// The app's record, or not found.
    pub async fn app(&self, app: &AppName) -> Result<Versioned<AppRecord>, EngineError> {
        self.coord
            .get::<AppRecord>(&self.coord.layout().app(app))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no app {app} (register it first)")))
    }

    /// The env's record, or not found.
    pub async fn env(&self, env: &EnvName) -> Result<EnvRecord, EngineError> {
        Ok(self
            .coord
            .get::<EnvRecord>(&self.coord.layout().env(env))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no env {env} (create it first)")))?
            .value)
    }

    /// Takes the lock `key` for `task_id` (fails at once when a conflicting one is held).
    pub async fn lock(&self, key: &[&str], task_id: &str) -> Result<LockGuard, EngineError> {
        let key =
            LockKey::new(key.iter().copied()).map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(self
            .coord
            .try_lock(&key, &LockHolder::new(self.cfg.host.as_str(), task_id))
            .await?)
    }

    /// Starts a deploy of `sha` (the task's ID) or refuses it.
    pub async fn deploy(
        &self,
        app: AppName,
        env: EnvName,
        sha: Sha,
        overrides: ManifestOverrides,
    ) -> Result<String, EngineError> {
        let rec = self.app(&app).await?;
        self.env(&env).await?;
        let mut check = Manifest::default();
        check.apply(&overrides);
        check.validate()?;
        let task_id = Tasks::new_id();
        let guard = self.lock(&[app.as_str(), env.as_str()], &task_id).await?;
        let prepared = async {
            let image = self.images.resolve(&app, &sha).await?;
            // The image's own manifest first, then the request's overrides.
            let mut manifest = Manifest::default();
            manifest.apply(&self.images.manifest_overrides(&app, &image.digest).await?);
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

    /// Starts a rollback to release `to` (default: the one before the current).
    pub async fn rollback(
        &self,
        app: AppName,
        env: EnvName,
        to: Option<i64>,
    ) -> Result<String, EngineError> {
        let rec = self.app(&app).await?;
        self.env(&env).await?;
        let current = state::release(&self.coord, &app, &env).await?;
        let target = match to {
            Some(n) => n,
            None => {
                let cur = current
                    .as_ref()
                    .map(|c| c.value.number)
                    .ok_or_else(|| EngineError::NotFound(format!("{app}.{env} is not deployed")))?;
                let list = self
                    .history
                    .releases(app.as_str(), env.as_str(), 1000)
                    .await?;
                list.iter()
                    .map(|r| r.number)
                    .filter(|n| *n < cur)
                    .max()
                    .ok_or_else(|| {
                        EngineError::NotFound(format!("{app}.{env} has no release before {cur}"))
                    })?
            }
        };
        let release = self
            .history
            .release(app.as_str(), env.as_str(), target)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("{app}.{env} has no release {target}")))?;
        let sha: Sha = release
            .sha
            .parse()
            .map_err(|e: atlantis_common::NameError| EngineError::Internal(e.to_string()))?;
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

    /// Starts a release of `image` with `manifest` as it is (no registry lookup): what a deploy does once
    /// the image is resolved. The engine's tests drive it on the fake fleet.
    pub async fn release_image(
        &self,
        app: AppName,
        env: EnvName,
        sha: Sha,
        image: String,
        manifest: Manifest,
    ) -> Result<String, EngineError> {
        let rec = self.app(&app).await?;
        self.env(&env).await?;
        manifest.validate()?;
        let task_id = Tasks::new_id();
        let guard = self.lock(&[app.as_str(), env.as_str()], &task_id).await?;
        let prepared = self
            .prepare(&rec.value, &app, &env, sha, image, manifest)
            .await;
        self.launch(task_id, guard, TaskKind::Deploy, prepared, None)
            .await
    }

    /// Frees the lock when preparing failed; otherwise records the task and runs the release in the
    /// background.
    async fn launch(
        &self,
        task_id: String,
        guard: LockGuard,
        kind: TaskKind,
        prepared: Result<(Spec, Vec<Slot>), EngineError>,
        warning: Option<String>,
    ) -> Result<String, EngineError> {
        let ((spec, slots), guard) = prepared_or_unlock(prepared, guard).await?;
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
        let engine = self.clone();
        tokio::spawn(async move {
            let r = async {
                let change = engine.new_release(&spec, &slots).await?;
                engine.run_phases(&task, &change).await
            }
            .await;
            conclude(task, guard, r).await;
        });
        Ok(task_id)
    }
}

/// Ends a task with `r` (its release number when it made one), then frees its lock: a running task
/// without a lock is an orphan to the leader, so the task ends first. A simulated crash (tests) leaves
/// the task node running, as a dead manager would.
pub(crate) async fn conclude(task: Task, guard: LockGuard, r: Result<Option<i64>, EngineError>) {
    match r {
        Ok(n) => {
            if let Some(n) = n {
                task.set_release(n);
            }
            task.done().await;
        }
        Err(EngineError::Crashed(phase)) => {
            tracing::warn!(task = %task.id(), ?phase, "TEST: task stopped as if its manager died.");
        }
        Err(e) => task.fail(e.to_string()).await,
    }
    let _ = guard.release().await;
}

/// What a task's preparation gave (with the lock taken for the task), or its error once that lock is
/// freed: a refused request leaves no lock behind.
pub(crate) async fn prepared_or_unlock<T, E>(
    prepared: Result<T, E>,
    guard: LockGuard,
) -> Result<(T, LockGuard), E> {
    match prepared {
        Ok(v) => Ok((v, guard)),
        Err(e) => {
            let _ = guard.release().await;
            Err(e)
        }
    }
}
