//! Dependency grants: an app uses a dependency once the dependency's owning team granted it.

use atlantis_common::AppName;
use atlantis_common::api::grants::{DependencyGrant, DependencyRequest, RequestBody, Revoked};
use reqwest::Method;

use super::Ctx;
use crate::error::CliError;
use crate::output::{println_safe, table, when};

/// `atlantis request-dependency DEP --app APP [--reason TEXT]`
pub async fn request(
    ctx: &Ctx,
    dep: &AppName,
    app: &AppName,
    reason: String,
) -> Result<i32, CliError> {
    let r: DependencyRequest = ctx
        .one()?
        .call(
            Method::PUT,
            &format!("/v1/dependencies/{dep}/requests/{app}"),
            &RequestBody { reason },
        )
        .await?;
    ctx.out.show(&r, || {
        let who = r
            .owner
            .as_ref()
            .map_or("a superuser".to_owned(), |t| format!("team {t}"));
        println_safe(&format!(
            "asked {who} for {dep} for app {app}; once granted, declare it with \
             `atlantis update-app {app} --dep {dep}`"
        ));
    });
    Ok(0)
}

/// `atlantis dependency-requests`
pub async fn requests(ctx: &Ctx) -> Result<i32, CliError> {
    let rs: Vec<DependencyRequest> = ctx.one()?.get("/v1/dependency-requests").await?;
    ctx.out.show(&rs, || {
        let rows = rs
            .iter()
            .map(|r| {
                vec![
                    r.dependency.to_string(),
                    r.owner.as_ref().map_or("-".into(), ToString::to_string),
                    r.app.to_string(),
                    r.team.as_ref().map_or("-".into(), ToString::to_string),
                    r.requested_by.clone(),
                    when(r.requested_ms),
                    r.reason.clone(),
                ]
            })
            .collect::<Vec<_>>();
        table(
            &["DEPENDENCY", "OWNER", "APP", "TEAM", "BY", "WHEN", "REASON"],
            &rows,
            "no pending requests",
        );
    });
    Ok(0)
}

/// `atlantis grant-dependency DEP --app APP`
pub async fn grant(ctx: &Ctx, dep: &AppName, app: &AppName) -> Result<i32, CliError> {
    let g: DependencyGrant = ctx
        .one()?
        .call(
            Method::PUT,
            &format!("/v1/dependencies/{dep}/grants/{app}"),
            &serde_json::json!({}),
        )
        .await?;
    ctx.out.show(&g, || {
        println_safe(&format!("granted {dep} to app {app}"));
    });
    Ok(0)
}

/// `atlantis revoke-dependency DEP --app APP`
pub async fn revoke(ctx: &Ctx, dep: &AppName, app: &AppName) -> Result<i32, CliError> {
    let r: Revoked = ctx
        .one()?
        .call(
            Method::DELETE,
            &format!("/v1/dependencies/{dep}/grants/{app}"),
            &serde_json::json!({}),
        )
        .await?;
    ctx.out.show(&r, || {
        println_safe(&format!("revoked {dep} from app {app}: {}", r.message));
        if let Some(t) = &r.task_id {
            println_safe(&format!(
                "replacement task {t} (follow it with `atlantis task {t} --wait`)"
            ));
        }
    });
    Ok(0)
}

/// `atlantis dependency-grants DEP`
pub async fn grants(ctx: &Ctx, dep: &AppName) -> Result<i32, CliError> {
    let gs: Vec<DependencyGrant> = ctx
        .one()?
        .get(&format!("/v1/dependencies/{dep}/grants"))
        .await?;
    ctx.out.show(&gs, || {
        let rows = gs
            .iter()
            .map(|g| vec![g.app.to_string(), g.granted_by.clone(), when(g.granted_ms)])
            .collect::<Vec<_>>();
        table(&["APP", "GRANTED BY", "WHEN"], &rows, "no grants");
    });
    Ok(0)
}
