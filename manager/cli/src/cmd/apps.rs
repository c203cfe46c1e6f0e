//! Apps, envs and dependencies.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use atlantis_common::api::manager::{
    AppRecord, AppSpec, DependencySpec, DependencyView, Endpoint, EnvRecord, EnvSpec,
};
use atlantis_common::{AppName, EnvName, TeamName};
use reqwest::Method;

use super::{Ctx, deleted, read_input};
use crate::args::AppFields;
use crate::error::CliError;
use crate::output::{fields, println_safe, table, when};

fn app_fields(a: &AppRecord) -> Vec<(&'static str, String)> {
    vec![
        ("name", a.spec.name.to_string()),
        (
            "team",
            a.spec.team.as_ref().map_or("-".into(), ToString::to_string),
        ),
        (
            "routing",
            if a.spec.internal {
                "internal"
            } else {
                "external"
            }
            .into(),
        ),
        ("repo", a.spec.repo.clone()),
        ("root", a.spec.root.clone()),
        ("dependencies", join(&a.spec.dependencies)),
        ("registered", when(a.created_ms)),
    ]
}

fn join<T: ToString>(v: &[T]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `atlantis apps`
pub async fn list(ctx: &Ctx) -> Result<i32, CliError> {
    let apps: Vec<AppRecord> = ctx.one()?.get("/v1/apps").await?;
    ctx.out.show(&apps, || {
        let rows = apps
            .iter()
            .map(|a| {
                vec![
                    a.spec.name.to_string(),
                    a.spec.team.as_ref().map_or("-".into(), ToString::to_string),
                    if a.spec.internal {
                        "internal"
                    } else {
                        "external"
                    }
                    .into(),
                    join(&a.spec.dependencies),
                    if a.spec.repo.is_empty() {
                        "-".into()
                    } else {
                        a.spec.repo.clone()
                    },
                ]
            })
            .collect::<Vec<_>>();
        table(
            &["APP", "TEAM", "ROUTING", "DEPENDENCIES", "REPO"],
            &rows,
            "no apps registered",
        );
    });
    Ok(0)
}

/// `atlantis show APP`
pub async fn show(ctx: &Ctx, app: &AppName) -> Result<i32, CliError> {
    let a: AppRecord = ctx.one()?.get(&format!("/v1/apps/{app}")).await?;
    ctx.out.show(&a, || fields(&app_fields(&a)));
    Ok(0)
}

/// `atlantis register-app APP ...`
pub async fn register(ctx: &Ctx, app: AppName, f: AppFields) -> Result<i32, CliError> {
    let spec = AppSpec {
        name: app,
        repo: f.repo.unwrap_or_default(),
        root: f.root.unwrap_or_default(),
        internal: f.internal,
        team: f.team,
        dependencies: dedup(f.deps),
    };
    spec.validate()
        .map_err(|e| CliError::Usage(format!("--{e}")))?;
    let a: AppRecord = ctx.one()?.call(Method::POST, "/v1/apps", &spec).await?;
    ctx.out.show(&a, || {
        println_safe(&format!("registered app {}", a.spec.name));
    });
    Ok(0)
}

fn dedup(mut v: Vec<AppName>) -> Vec<AppName> {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|d| seen.insert(d.clone()));
    v
}

/// `atlantis update-app APP ...`: only the given fields change.
pub async fn update(
    ctx: &Ctx,
    app: AppName,
    f: AppFields,
    external: bool,
    clear_deps: bool,
) -> Result<i32, CliError> {
    let c = ctx.one()?;
    let cur: AppRecord = c.get(&format!("/v1/apps/{app}")).await?;
    let mut spec = cur.spec;
    if let Some(r) = f.repo {
        spec.repo = r;
    }
    if let Some(r) = f.root {
        spec.root = r;
    }
    if let Some(t) = f.team {
        spec.team = Some(t);
    }
    if f.internal {
        spec.internal = true;
    }
    if external {
        spec.internal = false;
    }
    if clear_deps {
        spec.dependencies.clear();
    }
    spec.dependencies.extend(f.deps);
    spec.dependencies = dedup(spec.dependencies);
    spec.validate()
        .map_err(|e| CliError::Usage(format!("--{e}")))?;
    let a: AppRecord = c
        .call(Method::PUT, &format!("/v1/apps/{app}"), &spec)
        .await?;
    ctx.out.show(&a, || {
        println_safe(&format!("updated app {}", a.spec.name));
        fields(&app_fields(&a));
    });
    Ok(0)
}

/// `atlantis unregister-app APP`
pub async fn unregister(ctx: &Ctx, app: &AppName) -> Result<i32, CliError> {
    ctx.one()?
        .call_empty::<()>(Method::DELETE, &format!("/v1/apps/{app}"), None)
        .await?;
    ctx.out.show(&deleted("app", app.as_str()), || {
        println_safe(&format!("unregistered app {app}"));
    });
    Ok(0)
}

/// `atlantis envs`
pub async fn envs(ctx: &Ctx) -> Result<i32, CliError> {
    let envs: Vec<EnvRecord> = ctx.one()?.get("/v1/envs").await?;
    ctx.out.show(&envs, || {
        let rows = envs
            .iter()
            .map(|e| {
                vec![
                    e.spec.name.to_string(),
                    when(e.created_ms),
                    e.spec.description.clone(),
                ]
            })
            .collect::<Vec<_>>();
        table(&["ENV", "CREATED", "DESCRIPTION"], &rows, "no envs");
    });
    Ok(0)
}

/// `atlantis create-env ENV`
pub async fn create_env(ctx: &Ctx, env: EnvName, description: String) -> Result<i32, CliError> {
    let spec = EnvSpec {
        name: env,
        description,
    };
    spec.validate()
        .map_err(|e| CliError::Usage(format!("--{e}")))?;
    let e: EnvRecord = ctx.one()?.call(Method::POST, "/v1/envs", &spec).await?;
    ctx.out.show(&e, || {
        println_safe(&format!("created env {}", e.spec.name));
    });
    Ok(0)
}

/// `atlantis delete-env ENV`
pub async fn delete_env(ctx: &Ctx, env: &EnvName) -> Result<i32, CliError> {
    ctx.one()?
        .call_empty::<()>(Method::DELETE, &format!("/v1/envs/{env}"), None)
        .await?;
    ctx.out.show(&deleted("env", env.as_str()), || {
        println_safe(&format!("deleted env {env}"));
    });
    Ok(0)
}

fn dep_row(d: &DependencyView) -> Vec<String> {
    if d.restricted {
        let hidden = "(not granted to your teams)".to_owned();
        return vec![
            d.name.to_string(),
            d.team.as_ref().map_or("-".into(), ToString::to_string),
            hidden.clone(),
            hidden,
        ];
    }
    vec![
        d.name.to_string(),
        d.team.as_ref().map_or("-".into(), ToString::to_string),
        join(&d.data_keys),
        join(
            &d.endpoints
                .iter()
                .map(|e| format!("{}:{}", e.address, e.port))
                .collect::<Vec<_>>(),
        ),
    ]
}

/// `atlantis dependencies`
pub async fn dependencies(ctx: &Ctx) -> Result<i32, CliError> {
    let deps: Vec<DependencyView> = ctx.one()?.get("/v1/dependencies").await?;
    ctx.out.show(&deps, || {
        let rows = deps.iter().map(dep_row).collect::<Vec<_>>();
        table(
            &["DEPENDENCY", "TEAM", "VARIABLES", "ENDPOINTS"],
            &rows,
            "no dependencies",
        );
    });
    Ok(0)
}

/// `atlantis show-dependency NAME`
pub async fn show_dependency(ctx: &Ctx, name: &AppName) -> Result<i32, CliError> {
    let d: DependencyView = ctx.one()?.get(&format!("/v1/dependencies/{name}")).await?;
    ctx.out.show(&d, || {
        let r = dep_row(&d);
        fields(&[
            ("name", r[0].clone()),
            ("team", r[1].clone()),
            ("variables", r[2].clone()),
            ("endpoints", r[3].clone()),
        ]);
    });
    Ok(0)
}

/// Parses `KEY=VALUE` lines (blank lines and `#` comments skipped).
pub fn parse_env_lines(text: &str) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("line {}: expected KEY=VALUE", i + 1)))?;
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

/// `atlantis set-dependency NAME ...`
pub async fn set_dependency(
    ctx: &Ctx,
    name: &AppName,
    team: Option<TeamName>,
    data_file: Option<String>,
    endpoints: Vec<String>,
) -> Result<i32, CliError> {
    let data = match data_file {
        Some(f) => parse_env_lines(&read_input(&f, 1024 * 1024)?)
            .map_err(|e| CliError::Usage(format!("{f}: {e}")))?,
        None => BTreeMap::new(),
    };
    let endpoints = endpoints
        .iter()
        .map(|e| {
            e.parse::<SocketAddrV4>()
                .map(|a| Endpoint {
                    address: *a.ip(),
                    port: a.port(),
                })
                .map_err(|_| CliError::Usage(format!("--endpoint {e:?}: expected IPv4:PORT")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let spec = DependencySpec {
        team,
        data,
        endpoints,
    };
    spec.validate()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let d: DependencyView = ctx
        .one()?
        .call(Method::PUT, &format!("/v1/dependencies/{name}"), &spec)
        .await?;
    ctx.out.show(&d, || {
        println_safe(&format!(
            "stored dependency {} ({} variables, {} endpoints)",
            d.name,
            d.data_keys.len(),
            d.endpoints.len()
        ));
    });
    Ok(0)
}

/// `atlantis delete-dependency NAME`
pub async fn delete_dependency(ctx: &Ctx, name: &AppName) -> Result<i32, CliError> {
    ctx.one()?
        .call_empty::<()>(Method::DELETE, &format!("/v1/dependencies/{name}"), None)
        .await?;
    ctx.out.show(&deleted("dependency", name.as_str()), || {
        println_safe(&format!("deleted dependency {name}"));
    });
    Ok(0)
}
