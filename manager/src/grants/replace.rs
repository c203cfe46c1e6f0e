//! After a revoke: the app's containers are replaced, in every env where it runs, by copies of the same
//! release (same sha, image and manifest) resolved without the dependencies it is no longer granted.
//! Each env goes the usual way (start, healthy, one switch transaction, drain: `Ctx::scale_steps`), so
//! no request fails, and the release keeps its number. One task (kind `replace`) holds the app's lock
//! (which conflicts with every app.env lock); when another task holds it, the replacement waits for it.

use std::time::{Duration, Instant};

use atlantis_common::AppName;
use atlantis_common::api::manager::TaskKind;
use tokio::sync::oneshot;

use crate::engine::{Ctx, Ungranted};
use crate::error::ApiError;
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
pub async fn start(ctx: &Ctx, app: &AppName) -> Result<Started, ApiError> {
    if state::app_envs(&ctx.coord, app).await?.is_empty() {
        return Ok(Started::NotRunning);
    }
    let (tx, rx) = oneshot::channel();
    let (c, a) = (ctx.clone(), app.clone());
    tokio::spawn(async move { run(c, a, tx).await });
    match tokio::time::timeout(ANSWER_WAIT, rx).await {
        Ok(Ok(Ok(id))) => Ok(Started::Task(id)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(ApiError::Internal("the replacement stopped".into())),
        Err(_) => Ok(Started::Waiting(format!(
            "another task holds app {app}'s lock; its containers are replaced without the \
             dependency when it ends"
        ))),
    }
}

/// Takes the app's lock (waiting for it), then runs the task; says its ID (or why not) on `tx`.
async fn run(ctx: Ctx, app: AppName, tx: oneshot::Sender<Result<String, ApiError>>) {
    let task_id = Tasks::new_id();
    let deadline = Instant::now() + LOCK_WAIT;
    let guard = loop {
        match ctx.lock(&[app.as_str()], &task_id).await {
            Ok(g) => break g,
            Err(ApiError::Locked { message }) if Instant::now() < deadline => {
                tracing::debug!(%app, %message, "Replacement waits for the app's lock.");
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
    match r {
        Ok(()) => task.done().await,
        Err(e) => task.fail(e).await,
    }
    let _ = guard.release().await;
}

/// Every env of the app in turn: a full set of new containers, switched in, the old ones drained.
async fn steps(ctx: &Ctx, task: &Task, app: &AppName) -> Result<(), String> {
    let rec = ctx.app(app).await.map_err(|e| e.to_string())?;
    let envs = state::app_envs(&ctx.coord, app)
        .await
        .map_err(|e| e.to_string())?;
    task.warn(format!(
        "replacing the containers of {app} in {} without the dependencies it is no longer granted",
        envs.iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for env in envs {
        let Some(current) = state::release(&ctx.coord, app, &env)
            .await
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        task.step(&format!("replace {app}.{env}")).await;
        let per_zone = current.value.manifest.instances;
        let spec = ctx
            .release_spec(&rec.value, &env, &current.value, per_zone, Ungranted::Drop)
            .await
            .map_err(|e| format!("{app}.{env}: {e}"))?;
        let old: Vec<_> = state::instances(&ctx.coord, app, &env)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|v| v.value)
            .collect();
        let slots = ctx
            .place(&spec, per_zone, None)
            .await
            .map_err(|e| format!("{app}.{env}: {e}"))?;
        ctx.scale_steps(task, &spec, current, &slots, old)
            .await
            .map_err(|e| format!("{app}.{env}: {e}"))?;
        task.detail(format!("{app}.{env} replaced"));
    }
    Ok(())
}
