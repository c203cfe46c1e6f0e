//! Taking over the tasks of dead managers (run by the leader).
//!
//! A running task always holds its lock, an ephemeral node naming the task as its purpose: the lock is
//! taken before the task node is written and released after the task node is gone. So a task node that
//! says `running` while no lock names it belongs to a manager whose ZooKeeper session ended: it was
//! killed or cut off. The leader reads the task nodes first and the locks second (a task that finished in
//! between has changed or removed its node, so the claim below fails), takes the lock itself, claims the
//! task node by compare-and-set on the version it read, and then:
//!
//! - a deploy, rollback, scale or re-placement whose journal says it is past the switch, or whose switch
//!   committed (its journal says `switching` or earlier, but its new instance nodes are `serving`, or for
//!   a pure scale-down the release node moved on), is finished from the phase its journal names
//!   (`crate::release::phases`): routers acknowledged, the old containers drained and removed, the
//!   release recorded;
//! - one that had not switched is rolled back: its containers are torn down on their hosts and its
//!   instance nodes deleted; pools and the release node were never touched;
//! - a teardown is run again (every step of it is idempotent);
//! - a task that had recorded nothing yet is closed as abandoned.
//!
//! The outcome is the task's own final state (`done` or `failed` with the reason) in the history.

use std::collections::BTreeSet;

use atlantis_common::api::manager::{InstanceRecord, InstanceState, TaskKind, TaskState};
use atlantis_common::zk::{CoordError, LockHolder};
use atlantis_common::{AppName, ContainerId, EnvName};

use crate::release::Engine;
use crate::routing;
use crate::state;
use crate::tasks::{Phase, Plan, Task, TaskNode};

/// The purposes (task IDs) of every lock held now.
async fn lock_purposes(ctx: &Engine) -> Result<BTreeSet<String>, CoordError> {
    let l = ctx.coord.layout();
    let mut out = BTreeSet::new();
    for name in ctx.coord.children(&l.locks()).await? {
        if let Ok(Some(h)) = ctx.coord.get::<LockHolder>(&l.lock(&name)).await {
            out.insert(h.value.purpose);
        }
    }
    Ok(out)
}

/// Finds orphaned tasks and takes them over, one after the other. Returns how many were taken over.
pub async fn recover_orphans(ctx: &Engine) -> Result<usize, CoordError> {
    let nodes = ctx.tasks.in_flight().await?;
    if nodes.is_empty() {
        return Ok(0);
    }
    let held = lock_purposes(ctx).await?;
    let mut n = 0;
    for (node, version) in nodes {
        let id = node.status.id.clone();
        if node.status.state != TaskState::Running {
            if let Err(e) = ctx.tasks.archive(&node, version).await {
                tracing::warn!(task = %id, error = %e, "Cannot archive a finished task.");
            }
            continue;
        }
        if held.contains(&id) {
            continue;
        }
        if node.status.kind == TaskKind::Exec {
            // An exec holds no lock (it must not block deploys): it is orphaned only once the manager
            // that runs it has lost its registration.
            let managers = ctx.coord.children(&ctx.coord.layout().managers()).await?;
            if managers.contains(&node.journal.owner) {
                continue;
            }
            if let Some(task) = ctx.tasks.adopt(node.clone(), version).await {
                task.fail("its manager died while the command ran".into())
                    .await;
                n += 1;
            }
            continue;
        }
        let key: Vec<String> = if node.journal.lock.is_empty() {
            std::iter::once(node.status.app.clone())
                .chain(node.status.env.clone())
                .collect()
        } else {
            node.journal.lock.clone()
        };
        let key: Vec<&str> = key.iter().map(String::as_str).collect();
        let guard = match ctx.lock(&key, &id).await {
            Ok(g) => g,
            Err(e) => {
                tracing::info!(task = %id, error = %e, "Orphaned task's lock is taken; trying later.");
                continue;
            }
        };
        let Some(task) = ctx.tasks.adopt(node.clone(), version).await else {
            let _ = guard.release().await;
            continue;
        };
        tracing::warn!(task = %id, previous = %node.journal.owner, "Taking over an orphaned task.");
        resume(ctx, task, &node).await;
        let _ = guard.release().await;
        n += 1;
    }
    Ok(n)
}

/// Brings a taken-over task to its end: forward if it had switched, back otherwise.
async fn resume(ctx: &Engine, task: Task, node: &TaskNode) {
    let Some(plan) = task.journal().plan else {
        task.fail("abandoned by its manager before it changed anything".into())
            .await;
        return;
    };
    if node.status.kind == TaskKind::Teardown {
        let r = teardown_again(ctx, &task, node, &plan).await;
        match r {
            Ok(()) => task.done().await,
            Err(e) => task.fail(e.to_string()).await,
        }
        return;
    }
    let past = if plan.phase.past_switch() {
        Ok(true)
    } else {
        switched(ctx, &plan).await
    };
    match past {
        Ok(true) => {
            task.step("finish after takeover").await;
            task.detail(format!("the journal says {:?}", plan.phase));
            let from = plan.phase.max(Phase::Acknowledging);
            match ctx.after_switch(&task, &plan, from, None).await {
                Ok(n) => {
                    if let Some(n) = n {
                        task.set_release(n);
                    }
                    task.detail("the previous owner had switched traffic; finished here");
                    task.done().await;
                }
                Err(e) => task.fail(e.to_string()).await,
            }
        }
        Ok(false) => {
            task.step("roll back after takeover").await;
            roll_back(ctx, &task, &plan).await;
            task.fail(format!(
                "manager {} died before switching traffic (journal: {:?}); rolled back ({} new containers removed, the previous release keeps serving)",
                node.journal.owner,
                plan.phase,
                plan.created.len()
            ))
            .await;
        }
        Err(e) => {
            task.fail(format!("cannot read the task's state: {e}"))
                .await
        }
    }
}

/// Did the task's switch transaction commit? Its new instance nodes turned `serving` in it; a task that
/// creates nothing moved the release node on.
async fn switched(ctx: &Engine, plan: &Plan) -> Result<bool, CoordError> {
    let l = ctx.coord.layout();
    if plan.created.is_empty() {
        let Some(first) = plan.remove.first() else {
            return Ok(true);
        };
        let now = state::release(&ctx.coord, &first.app, &first.env).await?;
        return Ok(now.map(|v| v.version) != plan.release_version);
    }
    for r in &plan.created {
        if let Some(v) = ctx
            .coord
            .get::<InstanceRecord>(&l.instance(&r.app, &r.env, &r.container_id))
            .await?
            && matches!(
                v.value.state,
                InstanceState::Serving | InstanceState::Maintenance
            )
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes what the task created: pool backends that name its containers (none, unless the switch
/// committed), the containers on their supervisors, the instance nodes.
async fn roll_back(ctx: &Engine, task: &Task, plan: &Plan) {
    let Some(first) = plan.created.first() else {
        return;
    };
    let (app, env) = (first.app.clone(), first.env.clone());
    let stale = backends_naming(ctx, plan, &app, &env, &plan.created).await;
    if !stale.is_empty()
        && let Err(e) =
            routing::remove_backends(&ctx.coord, plan.route_kind, &app, &env, &stale).await
    {
        task.warn(format!(
            "cannot remove backends of rolled-back containers: {e}"
        ));
    }
    let n = ctx.remove_containers(task, &plan.created).await;
    task.detail(format!("removed {n} containers the task had created"));
}

/// The backends in the app.env pool whose node names one of `recs`.
async fn backends_naming(
    ctx: &Engine,
    plan: &Plan,
    app: &AppName,
    env: &EnvName,
    recs: &[InstanceRecord],
) -> Vec<String> {
    let l = ctx.coord.layout();
    let ids: BTreeSet<&ContainerId> = recs.iter().map(|r| &r.container_id).collect();
    let pool = routing::pool_name(app, env);
    let base = l.router_item(plan.route_kind, atlantis_common::zk::Section::Pools, &pool);
    let mut out = Vec::new();
    for b in ctx.coord.children(&base).await.unwrap_or_default() {
        let path = l.pool_backend(plan.route_kind, &pool, &b);
        if let Ok(Some(v)) = ctx.coord.get::<serde_json::Value>(&path).await
            && let Some(c) = v.value.get("container").and_then(|c| c.as_str())
            && ids.iter().any(|id| id.as_str() == c)
        {
            out.push(b);
        }
    }
    out
}

async fn teardown_again(
    ctx: &Engine,
    task: &Task,
    node: &TaskNode,
    plan: &Plan,
) -> Result<(), crate::release::EngineError> {
    let app: AppName = node
        .status
        .app
        .parse()
        .map_err(|e: atlantis_common::NameError| {
            crate::release::EngineError::Internal(e.to_string())
        })?;
    let rec = ctx.app(&app).await?.value;
    let scope = plan.teardown.clone().unwrap_or(crate::tasks::TeardownPlan {
        envs: node.status.env.iter().cloned().collect(),
        container: None,
    });
    let envs: Vec<EnvName> = scope.envs.iter().filter_map(|e| e.parse().ok()).collect();
    let container: Option<ContainerId> = scope.container.and_then(|c| c.parse().ok());
    task.step("tear down again after takeover").await;
    ctx.teardown_steps(task, &rec, &envs, container.as_ref())
        .await
}
