//! Teardown (an app, an app/env, one container) and maintenance (a container out of its pool, still
//! running).

use std::time::Duration;

use atlantis_common::api::manager::{AppRecord, InstanceRecord, InstanceState, TaskKind};
use atlantis_common::{AppName, ContainerId, EnvName};

use super::{Engine, EngineError, conclude};
use crate::routing;
use crate::state;
use crate::tasks::{Phase, Plan, Task, Tasks, TeardownPlan};

impl Engine {
    /// Starts a teardown of an app (every env), an app/env, or one container.
    pub async fn teardown(
        &self,
        app: AppName,
        env: Option<EnvName>,
        container: Option<ContainerId>,
    ) -> Result<String, EngineError> {
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
                    return Err(EngineError::NotFound(format!(
                        "no container {c} in {app}.{e}"
                    )));
                }
            }
            Ok::<_, EngineError>(envs)
        }
        .await;
        let (envs, guard) = super::prepared_or_unlock(prepared, guard).await?;
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
        let engine = self.clone();
        tokio::spawn(async move {
            let r = async {
                let route_kind = engine.cfg.routing.kind;
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
                engine
                    .teardown_steps(&task, &rec, &envs, container.as_ref())
                    .await
            }
            .await;
            conclude(task, guard, r.map(|()| None)).await;
        });
        Ok(task_id)
    }

    /// Tears down `envs` of the app (or only `container`): routing, containers, nodes. Idempotent.
    pub(crate) async fn teardown_steps(
        &self,
        task: &Task,
        rec: &AppRecord,
        envs: &[EnvName],
        container: Option<&ContainerId>,
    ) -> Result<(), EngineError> {
        let l = self.coord.layout();
        let app = &rec.spec.name;
        for env in envs {
            let route = self.route(rec, env).await?;
            task.step(&format!("tear down {app}.{env}")).await;
            let mut list: Vec<InstanceRecord> = state::instances(&self.coord, app, env)
                .await?
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
            routing::remove_app_env(&self.coord, &route, app, env).await?;
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
    pub async fn maintenance(
        &self,
        id: ContainerId,
        on: bool,
    ) -> Result<InstanceRecord, EngineError> {
        let rec = state::find_instance(&self.coord, &id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no container {id}")))?;
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
                EngineError::InUse(format!("container {id} is {:?}, not serving", rec.state))
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
                    return Err(EngineError::InUse(format!("container {id} is {s:?}")));
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
