//! Containers: status, ps, one container, logs, maintenance, exec.

use std::io::Write as _;

use atlantis_common::api::exec::{ExecEvent, ExecRequest, MAX_EXEC_TIMEOUT_MS};
use atlantis_common::api::manager::{
    AppRecord, EnvRecord, InstanceRecord, InstanceState, MaintenanceRequest, Release, RouterView,
};
use atlantis_common::api::supervisor::SupervisorRecord;
use atlantis_common::{AppName, ContainerId, EnvName};
use futures::StreamExt as _;
use reqwest::Method;
use serde::Serialize;

use super::Ctx;
use crate::args::OnOff;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{clean, fields, println_safe, table, when};

/// Containers of `app` in `env`; an app never deployed there has none.
async fn instances(
    c: &Client,
    app: &AppName,
    env: &EnvName,
) -> Result<Vec<InstanceRecord>, CliError> {
    match c
        .get::<Vec<InstanceRecord>>(&format!("/v1/apps/{app}/envs/{env}/containers"))
        .await
    {
        Err(CliError::Api { status: 404, .. }) => Ok(Vec::new()),
        r => r,
    }
}

async fn env_names(c: &Client) -> Result<Vec<EnvName>, CliError> {
    let envs: Vec<EnvRecord> = c.get("/v1/envs").await?;
    Ok(envs.into_iter().map(|e| e.spec.name).collect())
}

fn state_name(s: InstanceState) -> String {
    let n = serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match s {
        InstanceState::Serving => console::style(n).green().to_string(),
        InstanceState::Maintenance => console::style(n).yellow().to_string(),
        _ => console::style(n).cyan().to_string(),
    }
}

fn instance_rows(list: &[InstanceRecord]) -> Vec<Vec<String>> {
    list.iter()
        .map(|i| {
            vec![
                i.container_id.to_string(),
                i.app.to_string(),
                i.env.to_string(),
                i.sha.to_string(),
                i.release.to_string(),
                state_name(i.state),
                i.host.to_string(),
                i.zone.to_string(),
                i.backend.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

const INSTANCE_HEADERS: [&str; 9] = [
    "CONTAINER",
    "APP",
    "ENV",
    "SHA",
    "RELEASE",
    "STATE",
    "HOST",
    "ZONE",
    "BACKEND",
];

/// `atlantis ps [APP [ENV]]`
pub async fn ps(ctx: &Ctx, app: Option<AppName>, env: Option<EnvName>) -> Result<i32, CliError> {
    let c = ctx.one()?;
    let apps: Vec<AppName> = match &app {
        Some(a) => {
            // Refuse an unknown app rather than print an empty list.
            let _: AppRecord = c.get(&format!("/v1/apps/{a}")).await?;
            vec![a.clone()]
        }
        None => c
            .get::<Vec<AppRecord>>("/v1/apps")
            .await?
            .into_iter()
            .map(|a| a.spec.name)
            .collect(),
    };
    let envs = match &env {
        Some(e) => vec![e.clone()],
        None => env_names(c).await?,
    };
    let mut all = Vec::new();
    for a in &apps {
        for e in &envs {
            all.extend(instances(c, a, e).await?);
        }
    }
    ctx.out.show(&all, || {
        table(&INSTANCE_HEADERS, &instance_rows(&all), "no containers");
    });
    Ok(0)
}

/// `atlantis container ID`
pub async fn container(ctx: &Ctx, id: &ContainerId) -> Result<i32, CliError> {
    let i: InstanceRecord = ctx.one()?.get(&format!("/v1/containers/{id}")).await?;
    ctx.out.show(&i, || {
        fields(&[
            ("container", i.container_id.to_string()),
            ("app", i.app.to_string()),
            ("env", i.env.to_string()),
            ("sha", i.sha.to_string()),
            ("release", i.release.to_string()),
            ("state", state_name(i.state)),
            ("host", i.host.to_string()),
            ("zone", i.zone.to_string()),
            ("backend", i.backend.clone().unwrap_or_else(|| "-".into())),
            ("cpu", format!("{} millicores", i.cpu_millis)),
            ("memory", format!("{} MiB", i.memory_mb)),
        ]);
    });
    Ok(0)
}

/// `atlantis maintenance on|off ID`
pub async fn maintenance(ctx: &Ctx, state: OnOff, id: &ContainerId) -> Result<i32, CliError> {
    let i: InstanceRecord = ctx
        .one()?
        .call(
            Method::POST,
            &format!("/v1/containers/{id}/maintenance"),
            &MaintenanceRequest {
                on: state == OnOff::On,
            },
        )
        .await?;
    ctx.out.show(&i, || {
        let how = if i.state == InstanceState::Maintenance {
            "out of its pool"
        } else {
            "in its pool"
        };
        println_safe(&format!(
            "{} is {how} ({})",
            i.container_id,
            state_name(i.state)
        ));
    });
    Ok(0)
}

/// What `atlantis status APP --json` prints per env.
#[derive(Serialize)]
struct EnvStatus {
    env: EnvName,
    release: Option<Release>,
    containers: Vec<InstanceRecord>,
}

/// `atlantis status [APP]`
pub async fn status(ctx: &Ctx, app: Option<AppName>) -> Result<i32, CliError> {
    let c = ctx.one()?;
    let Some(app) = app else {
        return cluster_status(ctx, c).await;
    };
    let rec: AppRecord = c.get(&format!("/v1/apps/{app}")).await?;
    let mut envs = Vec::new();
    for e in env_names(c).await? {
        let containers = instances(c, &app, &e).await?;
        let release = match c
            .get::<Vec<Release>>(&format!("/v1/apps/{app}/envs/{e}/releases"))
            .await
        {
            Err(CliError::Api { status: 404, .. }) => None,
            r => r?.into_iter().next(),
        };
        if release.is_some() || !containers.is_empty() {
            envs.push(EnvStatus {
                env: e,
                release,
                containers,
            });
        }
    }
    let doc = serde_json::json!({"app": rec, "envs": envs});
    ctx.out.show(&doc, || {
        println_safe(&format!(
            "{} ({}, team {})",
            console::style(app.as_str()).bold(),
            if rec.spec.internal {
                "internal"
            } else {
                "external"
            },
            rec.spec
                .team
                .as_ref()
                .map_or("-".into(), ToString::to_string)
        ));
        if envs.is_empty() {
            println_safe("not deployed");
        }
        for e in &envs {
            let rel = e.release.as_ref().map_or("no release".into(), |r| {
                format!(
                    "release {} ({}), {} per zone, {}",
                    r.number,
                    r.sha,
                    r.manifest.instances,
                    when(u64::try_from(r.created_ms).unwrap_or(0))
                )
            });
            println_safe(&format!(
                "\n{}: {rel}",
                console::style(e.env.as_str()).bold()
            ));
            table(
                &INSTANCE_HEADERS,
                &instance_rows(&e.containers),
                "  no containers",
            );
        }
    });
    Ok(0)
}

async fn cluster_status(ctx: &Ctx, c: &Client) -> Result<i32, CliError> {
    let health: serde_json::Value = c.get("/healthz").await?;
    let sups: Vec<SupervisorRecord> = c.get("/v1/supervisors").await?;
    let routers: Vec<RouterView> = c.get("/v1/routers").await?;
    let apps: Vec<AppRecord> = c.get("/v1/apps").await?;
    let envs: Vec<EnvRecord> = c.get("/v1/envs").await?;
    let slots: (u32, u32) = sups
        .iter()
        .fold((0, 0), |(f, t), s| (f + s.free.slots, t + s.capacity.slots));
    let doc = serde_json::json!({
        "manager": c.base(),
        "health": health,
        "apps": apps.len(),
        "envs": envs.len(),
        "supervisors": sups.len(),
        "routers": routers.len(),
        "free_slots": slots.0,
        "total_slots": slots.1,
    });
    ctx.out.show(&doc, || {
        fields(&[
            ("manager", c.base().to_owned()),
            (
                "health",
                format!(
                    "{} (ZooKeeper {}, {})",
                    health["status"].as_str().unwrap_or("?"),
                    if health["zookeeper_connected"].as_bool() == Some(true) {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    if health["leader"].as_bool() == Some(true) {
                        "leader"
                    } else {
                        "follower"
                    }
                ),
            ),
            ("apps", apps.len().to_string()),
            ("envs", envs.len().to_string()),
            ("supervisors", sups.len().to_string()),
            ("routers", routers.len().to_string()),
            ("slots free", format!("{} of {}", slots.0, slots.1)),
        ]);
    });
    Ok(0)
}

/// The containers a logs or exec command acts on: the named one (checked to belong to app.env), or every
/// one of app.env.
async fn chosen(
    c: &Client,
    app: &AppName,
    env: &EnvName,
    container: Option<ContainerId>,
) -> Result<Vec<InstanceRecord>, CliError> {
    if let Some(id) = container {
        let i: InstanceRecord = c.get(&format!("/v1/containers/{id}")).await?;
        if &i.app != app || &i.env != env {
            return Err(CliError::Usage(format!(
                "container {id} belongs to {}.{}, not {app}.{env}",
                i.app, i.env
            )));
        }
        return Ok(vec![i]);
    }
    let list = instances(c, app, env).await?;
    if list.is_empty() {
        return Err(CliError::Api {
            status: 404,
            code: "not_found".into(),
            message: format!("no containers of {app}.{env}"),
        });
    }
    Ok(list)
}

/// `atlantis logs APP ENV [-f] [--container ID]`: every container's output, each line prefixed with the
/// container when there are several (`--json`: one `{"container", "line"}` document per line).
pub async fn logs(
    ctx: &Ctx,
    app: &AppName,
    env: &EnvName,
    follow: bool,
    container: Option<ContainerId>,
    tail: u32,
) -> Result<i32, CliError> {
    if tail > 10_000 {
        return Err(CliError::Usage("--tail: at most 10000".into()));
    }
    let c = ctx.one()?;
    let list = chosen(c, app, env, container).await?;
    let many = list.len() > 1;
    let json = ctx.out.json;
    let one = |i: &InstanceRecord| {
        let id = i.container_id.to_string();
        async move {
            let resp = c
                .stream(
                    Method::GET,
                    &format!("/v1/containers/{id}/logs?follow={follow}&tail={tail}"),
                    None,
                )
                .await?;
            let mut body = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            let emit = |line: &[u8]| {
                let text = String::from_utf8_lossy(line);
                let text = text.trim_end_matches(['\n', '\r']);
                let out = if json {
                    serde_json::json!({"container": id, "line": text}).to_string()
                } else if many {
                    format!("{} | {text}", console::style(&id).dim())
                } else {
                    text.to_owned()
                };
                println_safe(&out);
            };
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| c.stream_error(&e))?;
                buf.extend_from_slice(&chunk);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    emit(&line);
                }
                if buf.len() > 1024 * 1024 {
                    emit(&std::mem::take(&mut buf));
                }
            }
            if !buf.is_empty() {
                emit(&buf);
            }
            Ok::<(), CliError>(())
        }
    };
    let results = futures::future::join_all(list.iter().map(one)).await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(0)
}

/// `atlantis exec APP ENV [--container ID] -- CMD...`: streams the output, returns the command's exit code.
pub async fn exec(
    ctx: &Ctx,
    app: &AppName,
    env: &EnvName,
    container: Option<ContainerId>,
    timeout: u64,
    argv: Vec<String>,
) -> Result<i32, CliError> {
    let timeout_ms = timeout.saturating_mul(1000);
    if timeout_ms == 0 || timeout_ms > MAX_EXEC_TIMEOUT_MS {
        return Err(CliError::Usage("--timeout: 1 to 3600 seconds".into()));
    }
    let req = ExecRequest {
        argv,
        timeout_ms: Some(timeout_ms),
    };
    req.validate().map_err(|e| CliError::Usage(e.to_string()))?;
    let c = ctx.one()?;
    let list = chosen(c, app, env, container).await?;
    let target = list
        .iter()
        .find(|i| i.state == InstanceState::Serving)
        .or_else(|| list.first())
        .ok_or_else(|| CliError::Usage(format!("no containers of {app}.{env}")))?;
    let body = serde_json::to_value(&req).map_err(|e| CliError::Other(e.to_string()))?;
    let resp = c
        .stream(
            Method::POST,
            &format!("/v1/containers/{}/exec", target.container_id),
            Some(&body),
        )
        .await?;
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut exit: Option<i32> = None;
    let mut handle = |line: &[u8]| -> Result<(), CliError> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return Ok(());
        }
        let ev: ExecEvent = serde_json::from_slice(line)
            .map_err(|e| CliError::Other(format!("undecodable exec output: {e}")))?;
        if ctx.out.json {
            println_safe(&String::from_utf8_lossy(line));
        }
        match ev {
            ExecEvent::Stdout { data } if !ctx.out.json => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(data.as_bytes()).and_then(|()| o.flush());
            }
            ExecEvent::Stderr { data } if !ctx.out.json => {
                let mut o = std::io::stderr().lock();
                let _ = o.write_all(data.as_bytes()).and_then(|()| o.flush());
            }
            ExecEvent::Exit {
                exit_code,
                timed_out,
            } => {
                if timed_out {
                    eprintln!(
                        "atlantis: the command ran past its time limit of {timeout}s and was killed"
                    );
                }
                exit = Some(i32::try_from(exit_code).unwrap_or(1).clamp(0, 255));
            }
            ExecEvent::Error { code, message } => {
                return Err(CliError::Other(format!(
                    "cannot run the command: {} ({code})",
                    clean(&message)
                )));
            }
            _ => {}
        }
        Ok(())
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| c.stream_error(&e))?;
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            handle(&line)?;
        }
        if buf.len() > 4 * 1024 * 1024 {
            return Err(CliError::Other("an exec output line over 4 MiB".into()));
        }
    }
    if !buf.is_empty() {
        handle(&buf)?;
    }
    exit.ok_or_else(|| {
        CliError::Other(format!(
            "the exec stream from {} ended without an exit code",
            c.base()
        ))
    })
}
