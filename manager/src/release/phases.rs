//! The phase machine every release-like task runs: deploy, rollback, scale, the leader's re-placement
//! and the replacement after a revoke.
//!
//! plan → start → healthy → switch → routers acknowledged → drain → record. Each phase is written to the
//! task's journal (`crate::tasks::Phase`, in ZooKeeper `tasks/<id>`) before it acts, so a manager that
//! takes the task over (`crate::recovery`) knows how far it got:
//!
//! | journal says | the task had | a takeover |
//! |---|---|---|
//! | `planned`, `starting`, `healthy` | not switched | rolls back: new containers and nodes removed |
//! | `switching` | maybe switched | reads ZooKeeper (are the new instances serving?) and goes either way |
//! | `switched`, `acknowledging` | switched | waits for the routers, drains, records |
//! | `draining` | switched | drains (again: idempotent), records |
//! | `recording` | drained | records the release (unless the history has it) |
//!
//! Before the switch, any failure removes what the task started, and the old release keeps serving.
//! From the switch on, the task goes forward, whoever finishes it.

use std::time::Duration;

use atlantis_common::api::manager::{InstanceRecord, Release, ReleaseTarget};
use atlantis_common::{AppName, EnvName};

use super::spec::{Spec, plan_instances};
use super::start::new_backends;
use super::{Engine, EngineError};
use crate::placement::Slot;
use crate::routing::{self, ReleaseWrite};
use crate::state;
use crate::tasks::{Journal, Phase, Plan, Task, TaskError, now_ms};
use crate::testhook;

/// One change of an app.env's containers, as the phase machine runs it.
#[derive(Debug, Clone)]
pub struct Change {
    /// What the new containers run.
    pub spec: Spec,
    /// The release target the switch writes (a new one, or the current one with a new count).
    pub target: ReleaseTarget,
    /// The release node's version before the switch (`None`: the first release creates it).
    pub expected: Option<i32>,
    /// True for a new release (deploy, rollback): recorded in the history at the end.
    pub new_release: bool,
    /// Containers to start (IDs chosen, nothing written).
    pub created: Vec<InstanceRecord>,
    /// Containers to drain and remove once the new ones serve.
    pub remove: Vec<InstanceRecord>,
}

pub(crate) fn set_phase(j: &mut Journal, phase: Phase) {
    if let Some(p) = &mut j.plan {
        p.phase = phase;
    }
}

impl Engine {
    /// A deploy's or rollback's change: a new release number, `slots` started, every current container
    /// removed after the switch.
    pub(crate) async fn new_release(
        &self,
        spec: &Spec,
        slots: &[Slot],
    ) -> Result<Change, EngineError> {
        let (app, env) = (&spec.app, &spec.env);
        let old = state::instances(&self.coord, app, env).await?;
        let current = state::release(&self.coord, app, env).await?;
        let number = self
            .history
            .next_release_number(app.as_str(), env.as_str())
            .await?
            .max(current.as_ref().map_or(0, |c| c.value.number) + 1);
        Ok(Change {
            spec: spec.clone(),
            target: ReleaseTarget {
                version: 1,
                number,
                sha: spec.sha.clone(),
                image: spec.image.clone(),
                manifest: spec.manifest.clone(),
            },
            expected: current.as_ref().map(|c| c.version),
            new_release: true,
            created: plan_instances(spec, slots, number),
            remove: old.into_iter().map(|v| v.value).collect(),
        })
    }

    /// Records `phase` in the journal before the phase acts. (Tests may stop the task here, as if its
    /// manager died.)
    async fn enter(&self, task: &Task, phase: Phase) -> Result<(), EngineError> {
        task.record(|j| set_phase(j, phase)).await?;
        self.hooks.reached(phase)
    }

    /// After the switch a journal write that fails does not stop the task (it goes forward whoever
    /// finishes it); losing the task does.
    async fn advance(&self, task: &Task, phase: Phase) -> Result<(), EngineError> {
        match self.enter(task, phase).await {
            Err(EngineError::Task(TaskError::Unrecorded)) => Ok(()),
            r => r,
        }
    }

    /// Before the switch: on a failure to go on, the new containers go (unless another manager owns the
    /// task now, or the test stopped it as a crash).
    async fn enter_or_undo(
        &self,
        task: &Task,
        phase: Phase,
        created: &[InstanceRecord],
    ) -> Result<(), EngineError> {
        let r = self.enter(task, phase).await;
        if let Err(e) = &r
            && !task.is_lost()
            && !matches!(e, EngineError::Crashed(_))
        {
            self.undo(task, created).await;
        }
        r
    }

    /// Runs `c` through every phase. Returns the release number it recorded (new releases).
    pub async fn run_phases(&self, task: &Task, c: &Change) -> Result<Option<i64>, EngineError> {
        let (app, env) = (&c.spec.app, &c.spec.env);
        let plan = Plan {
            phase: Phase::Planned,
            route_kind: c.spec.route.kind,
            created: c.created.clone(),
            remove: c.remove.clone(),
            target: c.new_release.then(|| c.target.clone()),
            release_version: c.expected,
            teardown: None,
        };
        task.record(|j| j.plan = Some(plan)).await?;
        self.hooks.reached(Phase::Planned)?;
        let mut new = Vec::new();
        if !c.created.is_empty() {
            testhook::pause("start").await;
            self.enter(task, Phase::Starting).await?;
            task.step("start containers").await;
            let started = self.start_all(task, &c.spec, &c.created).await?;
            new = match new_backends(c.spec.manifest.port, started) {
                Ok(n) => n,
                Err((e, recs)) => {
                    self.undo(task, &recs).await;
                    return Err(EngineError::NotStarted(vec![e]));
                }
            };
            self.enter_or_undo(task, Phase::Healthy, &c.created).await?;
        }
        testhook::pause("switch").await;
        task.check_owned()?;
        self.enter_or_undo(task, Phase::Switching, &c.created)
            .await?;
        task.step("switch traffic").await;
        if let Err(e) = routing::switch_in(
            &self.coord,
            &c.spec.route,
            app,
            env,
            &new,
            ReleaseWrite::Target(&c.target, c.expected),
            task.owner_check().as_ref().map(|(p, v)| (p.as_str(), *v)),
        )
        .await
        {
            let recs: Vec<InstanceRecord> = new.iter().map(|b| b.instance.clone()).collect();
            self.undo(task, &recs).await;
            return Err(EngineError::Switch(e));
        }
        // From here on the task goes forward, whoever finishes it.
        if !new.is_empty() {
            task.detail(format!(
                "pool {} now has {}",
                routing::pool_name(app, env),
                new.iter()
                    .map(|b| b.backend.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let plan = task.journal().plan.unwrap_or_else(|| Plan {
            phase: Phase::Switched,
            route_kind: c.spec.route.kind,
            created: c.created.clone(),
            remove: c.remove.clone(),
            target: c.new_release.then(|| c.target.clone()),
            release_version: c.expected,
            teardown: None,
        });
        let backends: Vec<String> = new.iter().map(|b| b.backend.clone()).collect();
        self.after_switch(task, &plan, Phase::Acknowledging, Some(backends))
            .await
    }

    /// The phases after the switch, from `from` on: routers acknowledged, drain, record. The task's run
    /// and a takeover (`crate::recovery`) share it; every phase is safe to run again. `backends`: the
    /// new backends the routers must serve (read from the instance nodes when `None`). Returns the
    /// release number recorded, if the plan has a new release.
    pub async fn after_switch(
        &self,
        task: &Task,
        plan: &Plan,
        from: Phase,
        backends: Option<Vec<String>>,
    ) -> Result<Option<i64>, EngineError> {
        let Some(first) = plan.created.first().or(plan.remove.first()) else {
            return Ok(plan.target.as_ref().map(|t| t.number));
        };
        let (app, env) = (first.app.clone(), first.env.clone());
        if from <= Phase::Acknowledging {
            self.advance(task, Phase::Acknowledging).await?;
            task.check_owned()?;
            let backends = match backends {
                Some(b) => b,
                None => self.serving_backends(&plan.created).await,
            };
            if !backends.is_empty() {
                self.confirm_usable(task, plan, &app, &env, &backends).await;
            }
        }
        if from <= Phase::Draining {
            testhook::pause("drain").await;
            task.check_owned()?;
            self.advance(task, Phase::Draining).await?;
            task.check_owned()?;
            if plan.target.is_some() {
                task.step("drain old release").await;
                self.drain(task, plan.route_kind, &app, &env, plan.remove.clone())
                    .await;
            } else if !plan.remove.is_empty() {
                task.step("drain removed containers").await;
                self.drain(task, plan.route_kind, &app, &env, plan.remove.clone())
                    .await;
            }
        }
        let Some(target) = &plan.target else {
            return Ok(None);
        };
        self.advance(task, Phase::Recording).await?;
        task.check_owned()?;
        self.record_release(task, plan, target, &app, &env).await;
        Ok(Some(target.number))
    }

    /// The backends the switch gave `created` (from their instance nodes).
    async fn serving_backends(&self, created: &[InstanceRecord]) -> Vec<String> {
        let l = self.coord.layout();
        let mut out = Vec::new();
        for r in created {
            if let Ok(Some(v)) = self
                .coord
                .get::<InstanceRecord>(&l.instance(&r.app, &r.env, &r.container_id))
                .await
                && let Some(b) = v.value.backend
            {
                out.push(b);
            }
        }
        out
    }

    /// Writes the release to the history unless it is there already.
    async fn record_release(
        &self,
        task: &Task,
        plan: &Plan,
        target: &ReleaseTarget,
        app: &AppName,
        env: &EnvName,
    ) {
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
    }

    /// Routers acknowledged: waits (bounded by `deploy.switch_wait_ms`) until every router of the fleet
    /// serves `backends` of the app.env pool healthy; the ones that do not are named in a warning.
    async fn confirm_usable(
        &self,
        task: &Task,
        plan: &Plan,
        app: &AppName,
        env: &EnvName,
        backends: &[String],
    ) {
        task.step("wait for routers").await;
        // The switch bumped the generation; any later one includes it.
        let generation = routing::acks::current_generation(&self.coord, plan.route_kind)
            .await
            .unwrap_or(0);
        let limit = Duration::from_millis(self.cfg.deploy.switch_wait_ms);
        let acks =
            routing::acks::wait_generation(&self.coord, plan.route_kind, generation, limit).await;
        task.detail(format!(
            "routers {}/{} on generation {generation}",
            acks.on, acks.of
        ));
        if !acks.all() {
            task.warn(format!("routers lagging: {}", acks.lagging.join(", ")));
        }
        let pending = routing::wait_usable(
            &self.coord,
            &self.http,
            plan.route_kind,
            &routing::pool_name(app, env),
            backends,
            Duration::from_millis(self.cfg.deploy.switch_wait_ms),
        )
        .await;
        if pending.is_empty() {
            task.detail(format!("{} backends confirmed", backends.len()));
        } else {
            task.warn(format!(
                "routers that did not confirm the new backends healthy in time: {}",
                pending.join(", ")
            ));
        }
    }
}
