//! Deploy, rollback, scale, teardown (tasks, in parallel over regions), releases and tasks.

use std::collections::BTreeMap;

use atlantis_common::api::manager::{
    DeployRequest, ManifestOverrides, Release, RollbackRequest, ScaleRequest, TaskAccepted,
    TaskState, TaskStatus,
};
use atlantis_common::{AppName, ContainerId, EnvName, Sha};
use serde::Serialize;

use super::{Ctx, Target};
use crate::args::{Overrides, Wait};
use crate::client::seg;
use crate::error::CliError;
use crate::output::{clean, duration, println_safe, table, when};
use crate::progress::{Display, failure, follow};

/// What one region's task came to.
enum Outcome {
    Accepted(TaskAccepted),
    Finished(TaskStatus),
}

/// One region's result in `--json` output of a several-region task: `{"region", "task", "error"}`.
#[derive(Serialize)]
struct RegionResult {
    region: Option<String>,
    task: Option<TaskDoc>,
    error: Option<serde_json::Value>,
}

/// A task as answered: accepted (`--no-wait`) or its final status.
#[derive(Clone, Serialize)]
#[serde(untagged)]
enum TaskDoc {
    Accepted(TaskAccepted),
    Status(Box<TaskStatus>),
}

/// Starts the task on every target in parallel, follows each (unless `--no-wait`), reports each.
async fn run_task<B: Serialize + Sync>(
    ctx: &Ctx,
    what: &str,
    path: &str,
    body: &B,
    wait: Wait,
) -> Result<i32, CliError> {
    let many = ctx.targets.len() > 1;
    let display = Display::new(ctx.out.tty_err, ctx.out.json);
    let results: Vec<Result<Outcome, CliError>> = futures::future::join_all(
        ctx.targets
            .iter()
            .map(|t| start_one(ctx, t, many, what, path, body, wait, &display)),
    )
    .await;

    let mut errors: Vec<(Option<String>, CliError)> = Vec::new();
    let mut json = Vec::new();
    for (t, r) in ctx.targets.iter().zip(results) {
        let region = t.region.as_ref().map(ToString::to_string);
        let prefix = t.prefix(many);
        let (task, error) = match r {
            Ok(Outcome::Accepted(a)) => {
                if !ctx.out.json {
                    println_safe(&format!(
                        "{prefix}{what}: started task {} (follow it with `atlantis task {} --wait`)",
                        a.task_id, a.task_id
                    ));
                }
                (Some(TaskDoc::Accepted(a)), None)
            }
            Ok(Outcome::Finished(s)) if s.state != TaskState::Failed => {
                if !ctx.out.json {
                    println_safe(&success_line(&s, &prefix));
                }
                (Some(TaskDoc::Status(Box::new(s))), None)
            }
            Ok(Outcome::Finished(s)) => {
                let e = failure(&s, if many { region.as_deref() } else { None });
                (Some(TaskDoc::Status(Box::new(s))), Some(e))
            }
            Err(e) => (None, Some(e)),
        };
        json.push(RegionResult {
            region: region.clone(),
            task: task.clone(),
            error: error.as_ref().map(|e| e.to_json()["error"].clone()),
        });
        if let Some(e) = error {
            // A failed task's document is the JSON answer; other failures are reported by main.
            if ctx.out.json && !many && task.is_some() {
                ctx.out.print_json(&task);
            }
            errors.push((region, e));
        } else if ctx.out.json && !many {
            ctx.out.print_json(&task);
        }
    }
    if ctx.out.json && many {
        ctx.out.print_json(&json);
    }
    if !many {
        return match errors.pop() {
            None => Ok(0),
            Some((_, e)) => Err(e),
        };
    }
    if errors.is_empty() {
        return Ok(0);
    }
    for (region, e) in &errors {
        eprintln!("error: [{}] {e}", region.as_deref().unwrap_or("-"));
    }
    Err(CliError::TaskFailed(format!(
        "{what} failed in {} of {} regions",
        errors.len(),
        ctx.targets.len()
    )))
}

/// Starts the task on one target and follows it unless `--no-wait`.
#[allow(clippy::too_many_arguments)]
async fn start_one<B: Serialize + Sync>(
    ctx: &Ctx,
    t: &Target,
    many: bool,
    what: &str,
    path: &str,
    body: &B,
    wait: Wait,
    display: &Display,
) -> Result<Outcome, CliError> {
    let prefix = t.prefix(many);
    let accepted = t.client.start_task(path, body).await?;
    if !wait.follow() {
        return Ok(Outcome::Accepted(accepted));
    }
    if !ctx.out.json || ctx.out.tty_err {
        display.line(&format!(
            "{prefix}{what}: task {} on {}",
            accepted.task_id,
            t.client.base()
        ));
    }
    follow(&t.client, &accepted.task_id, &prefix, display)
        .await
        .map(Outcome::Finished)
}

fn success_line(s: &TaskStatus, prefix: &str) -> String {
    let kind = serde_json::to_value(s.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let target = match &s.env {
        Some(e) => format!("{}.{e}", s.app),
        None => s.app.clone(),
    };
    let took = s
        .finished_ms
        .map(|f| format!(" in {}", duration(f.saturating_sub(s.created_ms))))
        .unwrap_or_default();
    let release = s
        .release
        .map(|n| format!(": release {n}"))
        .unwrap_or_default();
    let warnings = match s.warnings.len() {
        0 => String::new(),
        n => format!(" ({n} warning{})", if n == 1 { "" } else { "s" }),
    };
    format!(
        "{} {prefix}{kind} of {target} done{release}{took}{warnings}",
        console::style("✓").green().bold()
    )
}

fn parse_vars(vars: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    vars.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("--env {kv:?}: expected KEY=VALUE")))
        })
        .collect()
}

/// `atlantis deploy APP SHA ENV`
pub async fn deploy(
    ctx: &Ctx,
    app: &AppName,
    sha: Sha,
    env: &EnvName,
    o: &Overrides,
    wait: Wait,
) -> Result<i32, CliError> {
    let req = DeployRequest {
        sha,
        overrides: ManifestOverrides {
            instances: o.instances,
            cpu_millis: o.cpu,
            memory_mb: o.mem,
            port: o.port,
            health_path: o.health_path.clone(),
            start_timeout_ms: o.start_timeout.map(|s| s.saturating_mul(1000)),
            command: None,
            env_vars: parse_vars(&o.env_vars)?,
        },
    };
    let what = format!("deploy {app} {} to {env}", req.sha);
    run_task(
        ctx,
        &what,
        &format!("/v1/apps/{app}/envs/{env}/deploy"),
        &req,
        wait,
    )
    .await
}

/// `atlantis rollback APP ENV [--to N]`
pub async fn rollback(
    ctx: &Ctx,
    app: &AppName,
    env: &EnvName,
    to: Option<i64>,
    wait: Wait,
) -> Result<i32, CliError> {
    let what = match to {
        Some(n) => format!("rollback of {app}.{env} to release {n}"),
        None => format!("rollback of {app}.{env}"),
    };
    run_task(
        ctx,
        &what,
        &format!("/v1/apps/{app}/envs/{env}/rollback"),
        &RollbackRequest { to },
        wait,
    )
    .await
}

/// `atlantis scale APP ENV --instances N`
pub async fn scale(
    ctx: &Ctx,
    app: &AppName,
    env: &EnvName,
    instances: u32,
    wait: Wait,
) -> Result<i32, CliError> {
    run_task(
        ctx,
        &format!("scale of {app}.{env} to {instances} per zone"),
        &format!("/v1/apps/{app}/envs/{env}/scale"),
        &ScaleRequest { instances },
        wait,
    )
    .await
}

/// `atlantis teardown APP [ENV] | --container ID`
pub async fn teardown(
    ctx: &Ctx,
    app: Option<AppName>,
    env: Option<EnvName>,
    container: Option<ContainerId>,
    wait: Wait,
) -> Result<i32, CliError> {
    let (what, path) = match (app, env, container) {
        (_, _, Some(c)) => (
            format!("teardown of {c}"),
            format!("/v1/containers/{c}/teardown"),
        ),
        (Some(a), Some(e), None) => (
            format!("teardown of {a}.{e}"),
            format!("/v1/apps/{a}/envs/{e}/teardown"),
        ),
        (Some(a), None, None) => (format!("teardown of {a}"), format!("/v1/apps/{a}/teardown")),
        (None, _, None) => {
            return Err(CliError::Usage("name an app or a --container".into()));
        }
    };
    run_task(ctx, &what, &path, &serde_json::json!({}), wait).await
}

/// `atlantis releases APP ENV`
pub async fn releases(ctx: &Ctx, app: &AppName, env: &EnvName) -> Result<i32, CliError> {
    let rs: Vec<Release> = ctx
        .one()?
        .get(&format!("/v1/apps/{app}/envs/{env}/releases"))
        .await?;
    ctx.out.show(&rs, || {
        let rows = rs
            .iter()
            .map(|r| {
                vec![
                    r.number.to_string(),
                    r.sha.clone(),
                    when(u64::try_from(r.created_ms).unwrap_or(0)),
                    r.manifest.instances.to_string(),
                    format!("{}m/{}MiB", r.manifest.cpu_millis, r.manifest.memory_mb),
                    r.containers.len().to_string(),
                    r.task_id.clone(),
                ]
            })
            .collect::<Vec<_>>();
        table(
            &[
                "RELEASE",
                "SHA",
                "CREATED",
                "PER ZONE",
                "CPU/MEM",
                "CONTAINERS",
                "TASK",
            ],
            &rows,
            &format!("no releases of {app}.{env}"),
        );
    });
    Ok(0)
}

fn task_row(t: &TaskStatus) -> Vec<String> {
    let kind = serde_json::to_value(t.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let state = match t.state {
        TaskState::Running => console::style("running").cyan().to_string(),
        TaskState::Done => console::style("done").green().to_string(),
        TaskState::Failed => console::style("failed").red().to_string(),
    };
    vec![
        t.id.clone(),
        kind,
        t.app.clone(),
        t.env.clone().unwrap_or_else(|| "-".into()),
        state,
        t.release.map_or("-".into(), |n| n.to_string()),
        when(t.created_ms),
        t.finished_ms
            .map_or("-".into(), |f| duration(f.saturating_sub(t.created_ms))),
        t.error.as_deref().map_or(String::new(), |e| {
            let e = clean(e);
            if e.chars().count() > 60 {
                format!("{}…", e.chars().take(60).collect::<String>())
            } else {
                e
            }
        }),
    ]
}

/// `atlantis tasks [--app A] [--limit N]`
pub async fn tasks(ctx: &Ctx, app: Option<AppName>, limit: u32) -> Result<i32, CliError> {
    let mut path = format!("/v1/tasks?limit={}", limit.clamp(1, 1000));
    if let Some(a) = app {
        path.push_str(&format!("&app={a}"));
    }
    let ts: Vec<TaskStatus> = ctx.one()?.get(&path).await?;
    ctx.out.show(&ts, || {
        let rows = ts.iter().map(task_row).collect::<Vec<_>>();
        table(
            &[
                "TASK", "KIND", "APP", "ENV", "STATE", "RELEASE", "CREATED", "TOOK", "ERROR",
            ],
            &rows,
            "no tasks",
        );
    });
    Ok(0)
}

/// `atlantis task ID [--wait]`
pub async fn task(ctx: &Ctx, id: &str, wait: bool) -> Result<i32, CliError> {
    let c = ctx.one()?;
    let s: TaskStatus = if wait {
        let display = Display::new(ctx.out.tty_err, ctx.out.json);
        follow(c, id, "", &display).await?
    } else {
        c.get(&format!("/v1/tasks/{}", seg(id))).await?
    };
    ctx.out.show(&s, || {
        let r = task_row(&s);
        crate::output::fields(&[
            ("task", r[0].clone()),
            ("kind", r[1].clone()),
            ("app", r[2].clone()),
            ("env", r[3].clone()),
            ("state", r[4].clone()),
            ("release", r[5].clone()),
            ("created", r[6].clone()),
            ("took", r[7].clone()),
        ]);
        for st in &s.steps {
            let took = st.took_ms.map_or("running".into(), duration);
            let detail = if st.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", clean(&st.detail))
            };
            println_safe(&format!("  - {} {took}{detail}", clean(&st.name)));
        }
        for w in &s.warnings {
            println_safe(&format!("  warning: {}", clean(w)));
        }
        if let Some(e) = &s.error {
            println_safe(&format!("  error: {}", clean(e)));
        }
    });
    if s.state == TaskState::Failed && wait {
        return Err(failure(&s, None));
    }
    Ok(0)
}
