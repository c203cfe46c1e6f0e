//! After a revoke: the app's containers are replaced, in every env where it runs, by copies of the same
//! release (same sha, image and manifest) resolved without the dependencies it is no longer granted.
//! Each env goes through the engine's phase machine (`super::phases`: start, healthy, one switch
//! transaction, routers, drain), so
//! no request fails, and the release keeps its number. One task (kind `replace`) holds the app's lock
//! (which conflicts with every app.env lock); when another task holds it, the replacement waits for it.

use std::time::{Duration, Instant};

use atlantis_common::AppName;
use atlantis_common::api::manager::TaskKind;
use tokio::sync::oneshot;

use atlantis_common::zk::LockError;

use super::{Engine, EngineError, Ungranted, conclude};
use crate::state;
use crate::tasks::{Task, Tasks};

/// How long a replacement waits for the app's lock before giving up (the containers then keep the
/// dependency until the app's next deploy, which is refused until the app drops it).
const LOCK_WAIT: Duration = Duration::from_secs(600);
/// How long the revoke's answer waits for the task to start.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// What became of the replacement when the revoke answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// Nothing of the app runs.
    NotRunning,
    /// The task replacing its containers.
    Task(String),
    /// Another task holds the app's lock; the replacement starts when it ends.
    Waiting(String),
}

/// Starts the replacement of `app`'s containers (see the module docs).
pub async fn start(ctx: &Engine, app: &AppName) -> Result<Started, EngineError> {
    if state::app_envs(&ctx.coord, app).await?.is_empty() {
        return Ok(Started::NotRunning);
    }
    let (tx, rx) = oneshot::channel();
    let (c, a) = (ctx.clone(), app.clone());
    tokio::spawn(async move { run(c, a, tx).await });
    match tokio::time::timeout(ANSWER_WAIT, rx).await {
        Ok(Ok(Ok(id))) => Ok(Started::Task(id)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(EngineError::Internal("the replacement stopped".into())),
        Err(_) => Ok(Started::Waiting(format!(
            "another task holds app {app}'s lock; its containers are replaced without the \
             dependency when it ends"
        ))),
    }
}

/// Takes the app's lock (waiting for it), then runs the task; says its ID (or why not) on `tx`.
async fn run(ctx: Engine, app: AppName, tx: oneshot::Sender<Result<String, EngineError>>) {
    let task_id = Tasks::new_id();
    let deadline = Instant::now() + LOCK_WAIT;
    let guard = loop {
        match ctx.lock(&[app.as_str()], &task_id).await {
            Ok(g) => break g,
            Err(EngineError::Lock(e @ LockError::Conflict { .. })) if Instant::now() < deadline => {
                tracing::debug!(%app, error = %e, "Replacement waits for the app's lock.");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                tracing::error!(%app, error = %e, "Containers not replaced after a revoke.");
                let _ = tx.send(Err(e));
                return;
            }
        }
    };
    let task = ctx
        .tasks
        .start(
            task_id.clone(),
            TaskKind::Replace,
            app.as_str(),
            None,
            &[app.as_str()],
        )
        .await;
    let _ = tx.send(Ok(task_id));
    let r = steps(&ctx, &task, &app).await;
    conclude(task, guard, r.map(|()| None)).await;
}

/// Every env of the app in turn: a full set of new containers, switched in, the old ones drained.
async fn steps(ctx: &Engine, task: &Task, app: &AppName) -> Result<(), EngineError> {
    let rec = ctx.app(app).await?;
    let envs = state::app_envs(&ctx.coord, app).await?;
    task.warn(format!(
        "replacing the containers of {app} in {} without the dependencies it is no longer granted",
        envs.iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for env in envs {
        let Some(current) = state::release(&ctx.coord, app, &env).await? else {
            continue;
        };
        task.step(&format!("replace {app}.{env}")).await;
        let per_zone = current.value.manifest.instances;
        let spec = ctx
            .release_spec(&rec.value, &env, &current.value, per_zone, Ungranted::Drop)
            .await?;
        let old: Vec<_> = state::instances(&ctx.coord, app, &env)
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect();
        let slots = ctx.place(&spec, per_zone, None).await?;
        let change = ctx.same_release(&spec, current, &slots, old);
        ctx.run_phases(task, &change).await?;
        task.detail(format!("{app}.{env} replaced"));
    }
    Ok(())
}
