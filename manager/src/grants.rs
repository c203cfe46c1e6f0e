//! Dependency grants (the Go Atlantis `request-app-dependency` flow).
//!
//! A dependency belongs to a team: a registered dependency (`dependencies/<name>`) to the team named in
//! it, an internal app to its app's team. An app may declare a dependency, and be deployed with it, only
//! when its own team owns the dependency or the owning team (or a superuser) granted it to that app; a
//! dependency without a team is granted by superusers only. Grants and pending requests live in
//! ZooKeeper (`dependency_grants/<dependency>/<app>`, `dependency_requests/<dependency>/<app>`); every
//! write is a transaction that also bumps the app's record (compare-and-set on its version), so a grant
//! never outlives the app it was given to (see [`purge_app`]).
//!
//! [`granted`] is the one check: the API calls it when an app is registered or updated, and the engine
//! when it resolves an app's dependencies (deploy, rollback, scale refuse; a re-placement or the
//! replacement after a revoke, [`replace`], drops the dependency).

pub mod cut;
pub mod replace;

use atlantis_common::api::grants::{DependencyGrant, DependencyRequest};
use atlantis_common::api::manager::AppRecord;
use atlantis_common::zk::{CoordError, Layout, Versioned};
use atlantis_common::{AppName, TeamName};

use crate::engine::Ctx;
use crate::error::ApiError;
use crate::tasks::now_ms;

/// Who owns a dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owning team (`None`: superusers only).
    pub team: Option<TeamName>,
    /// True for an internal app (false for a registered dependency).
    pub internal_app: bool,
}

/// The owner of `dep`: a registered dependency's team, else an internal app's team; 404 when it is
/// neither.
pub async fn owner(ctx: &Ctx, dep: &AppName) -> Result<Owner, ApiError> {
    if let Some(rec) = crate::api::deps::load(ctx, dep).await? {
        return Ok(Owner {
            team: rec.team,
            internal_app: false,
        });
    }
    match ctx
        .coord
        .get::<AppRecord>(&ctx.coord.layout().app(dep))
        .await?
    {
        Some(a) if a.value.spec.internal => Ok(Owner {
            team: a.value.spec.team,
            internal_app: true,
        }),
        _ => Err(ApiError::NotFound(format!(
            "dependency {dep} is neither registered nor an internal app"
        ))),
    }
}

/// True when `app` may use `dep`: its team owns it, or a grant exists.
pub async fn granted(ctx: &Ctx, app: &AppRecord, dep: &AppName) -> Result<bool, ApiError> {
    let o = owner(ctx, dep).await?;
    if o.team.is_some() && o.team == app.spec.team {
        return Ok(true);
    }
    Ok(ctx
        .coord
        .stat(&ctx.coord.layout().dependency_grant(dep, &app.spec.name))
        .await?
        .is_some())
}

/// The refusal for an ungranted dependency: names it, its owner and how to ask for it.
pub fn not_granted(app: &AppName, dep: &AppName, owner: &Option<TeamName>) -> ApiError {
    let who = match owner {
        Some(t) => format!("its owning team {t}"),
        None => "a superuser (it has no team)".to_owned(),
    };
    ApiError::DependencyNotGranted(format!(
        "app {app} may not use dependency {dep} until {who} grants it: ask with \
         `atlantis request-dependency {dep} --app {app}` (PUT /v1/dependencies/{dep}/requests/{app})"
    ))
}

/// Refuses (403 `dependency_not_granted`) when `app` declares a dependency it is not granted.
pub async fn check_declared(ctx: &Ctx, app: &AppRecord) -> Result<(), ApiError> {
    for dep in &app.spec.dependencies {
        if !granted(ctx, app, dep).await? {
            let o = owner(ctx, dep).await?;
            return Err(not_granted(&app.spec.name, dep, &o.team));
        }
    }
    Ok(())
}

fn conflict(what: &str) -> impl Fn(CoordError) -> ApiError + '_ {
    move |e| match e {
        CoordError::Txn { source, .. }
            if matches!(
                *source,
                CoordError::Conflict { .. } | CoordError::NotFound { .. }
            ) =>
        {
            ApiError::Exists(format!("{what} changed concurrently; try again"))
        }
        e => e.into(),
    }
}

async fn app_record(ctx: &Ctx, app: &AppName) -> Result<Versioned<AppRecord>, ApiError> {
    ctx.app(app).await
}

/// Makes sure `parent` exists (transactions do not create parents).
async fn ensure(ctx: &Ctx, parent: &str) -> Result<(), ApiError> {
    Ok(ctx.coord.ensure_path(parent).await?)
}

/// Records `app`'s request for `dep` (idempotent: an existing request is kept and returned).
pub async fn request(
    ctx: &Ctx,
    dep: &AppName,
    app: &AppName,
    by: &str,
    reason: String,
) -> Result<(bool, DependencyRequest), ApiError> {
    if reason.len() > 512 || reason.chars().any(char::is_control) {
        return Err(ApiError::InvalidField(
            atlantis_common::api::manager::FieldError {
                field: "reason".into(),
                message: "at most 512 characters, no control characters".into(),
            },
        ));
    }
    let o = owner(ctx, dep).await?;
    let rec = app_record(ctx, app).await?;
    if granted(ctx, &rec.value, dep).await? {
        return Err(ApiError::Exists(format!(
            "app {app} is granted dependency {dep} already"
        )));
    }
    let l = ctx.coord.layout();
    let path = l.dependency_request(dep, app);
    if let Some(v) = ctx.coord.get::<DependencyRequest>(&path).await? {
        return Ok((false, v.value));
    }
    let req = DependencyRequest {
        version: 1,
        dependency: dep.clone(),
        owner: o.team,
        app: app.clone(),
        team: rec.value.spec.team.clone(),
        requested_by: by.to_owned(),
        requested_ms: now_ms(),
        reason,
    };
    ensure(ctx, &l.dependency_requests_of(dep)).await?;
    ctx.coord
        .txn()
        .set(&l.app(app), &rec.value, Some(rec.version))
        .create(&path, &req)
        .commit()
        .await
        .map_err(conflict(&format!("app {app} or its request")))?;
    Ok((true, req))
}

/// Grants `dep` to `app` (idempotent) and clears the app's pending request.
pub async fn grant(
    ctx: &Ctx,
    dep: &AppName,
    app: &AppName,
    by: &str,
) -> Result<DependencyGrant, ApiError> {
    owner(ctx, dep).await?;
    let rec = app_record(ctx, app).await?;
    let l = ctx.coord.layout();
    let path = l.dependency_grant(dep, app);
    if let Some(g) = ctx.coord.get::<DependencyGrant>(&path).await? {
        return Ok(g.value);
    }
    let g = DependencyGrant {
        version: 1,
        dependency: dep.clone(),
        app: app.clone(),
        granted_by: by.to_owned(),
        granted_ms: now_ms(),
    };
    ensure(ctx, &l.dependency_grants_of(dep)).await?;
    let mut txn = ctx
        .coord
        .txn()
        .set(&l.app(app), &rec.value, Some(rec.version))
        .create(&path, &g);
    let req_path = l.dependency_request(dep, app);
    if let Some(stat) = ctx.coord.stat(&req_path).await? {
        txn = txn.delete(&req_path, Some(stat.version));
    }
    txn.commit()
        .await
        .map_err(conflict(&format!("app {app} or its grant")))?;
    Ok(g)
}

/// Takes a grant back; false when there was none.
pub async fn revoke(ctx: &Ctx, dep: &AppName, app: &AppName) -> Result<bool, ApiError> {
    let path = ctx.coord.layout().dependency_grant(dep, app);
    let Some(stat) = ctx.coord.stat(&path).await? else {
        return Ok(false);
    };
    match ctx.coord.delete(&path, Some(stat.version)).await {
        Ok(gone) => Ok(gone),
        Err(CoordError::Conflict { .. }) => Err(ApiError::Exists(format!(
            "the grant of {dep} to {app} changed concurrently; try again"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Drops a pending request; false when there was none.
pub async fn drop_request(ctx: &Ctx, dep: &AppName, app: &AppName) -> Result<bool, ApiError> {
    Ok(ctx
        .coord
        .delete(&ctx.coord.layout().dependency_request(dep, app), None)
        .await?)
}

/// Every grant of `dep`, by app name.
pub async fn grants_of(ctx: &Ctx, dep: &AppName) -> Result<Vec<DependencyGrant>, ApiError> {
    let l = ctx.coord.layout();
    let mut out = Vec::new();
    for a in ctx.coord.children(&l.dependency_grants_of(dep)).await? {
        let Ok(app) = a.parse::<AppName>() else {
            continue;
        };
        if let Some(g) = ctx
            .coord
            .get::<DependencyGrant>(&l.dependency_grant(dep, &app))
            .await?
        {
            out.push(g.value);
        }
    }
    Ok(out)
}

/// Every pending request.
pub async fn all_requests(ctx: &Ctx) -> Result<Vec<DependencyRequest>, ApiError> {
    let l = ctx.coord.layout();
    let mut out = Vec::new();
    for d in ctx.coord.children(&l.dependency_requests()).await? {
        let Ok(dep) = d.parse::<AppName>() else {
            continue;
        };
        for a in ctx.coord.children(&l.dependency_requests_of(&dep)).await? {
            let Ok(app) = a.parse::<AppName>() else {
                continue;
            };
            if let Some(r) = ctx
                .coord
                .get::<DependencyRequest>(&l.dependency_request(&dep, &app))
                .await?
            {
                out.push(r.value);
            }
        }
    }
    Ok(out)
}

/// Every grant and request that names `app` as depender or, with `as_dependency`, as dependency: their
/// paths, for deletion with the app.
pub async fn paths_of_app(
    ctx: &Ctx,
    app: &AppName,
    as_dependency: bool,
) -> Result<Vec<String>, ApiError> {
    let l = ctx.coord.layout();
    let mut out = Vec::new();
    for (root, one, of) in [
        (
            l.dependency_grants(),
            Layout::dependency_grant as PathFn,
            Layout::dependency_grants_of as OfFn,
        ),
        (
            l.dependency_requests(),
            Layout::dependency_request as PathFn,
            Layout::dependency_requests_of as OfFn,
        ),
    ] {
        for d in ctx.coord.children(&root).await? {
            let Ok(dep) = d.parse::<AppName>() else {
                continue;
            };
            for a in ctx.coord.children(&of(l, &dep)).await? {
                let Ok(depender) = a.parse::<AppName>() else {
                    continue;
                };
                if (as_dependency && &dep == app) || &depender == app {
                    out.push(one(l, &dep, &depender));
                }
            }
        }
    }
    Ok(out)
}

type PathFn = fn(&Layout, &AppName, &AppName) -> String;
type OfFn = fn(&Layout, &AppName) -> String;

/// Unregisters `app` (at `version`) together with every grant and request naming it, in one
/// transaction: a grant written concurrently bumps the app's version and makes this fail (409).
pub async fn purge_app(ctx: &Ctx, app: &AppName, version: i32) -> Result<usize, ApiError> {
    // A registered dependency of the same name owns `dependency_grants/<app>`: those stay.
    let as_dependency = crate::api::deps::load(ctx, app).await?.is_none();
    let paths = paths_of_app(ctx, app, as_dependency).await?;
    let l = ctx.coord.layout();
    let mut txn = ctx.coord.txn();
    for p in &paths {
        txn = txn.delete(p, None);
    }
    txn.delete(&l.app(app), Some(version))
        .commit()
        .await
        .map_err(conflict(&format!("app {app}")))?;
    // Empty parents of the app as a dependency go too (best effort).
    if as_dependency {
        for p in [l.dependency_grants_of(app), l.dependency_requests_of(app)] {
            let _ = ctx.coord.delete(&p, None).await;
        }
    }
    Ok(paths.len())
}

/// The team that decides about `dep`, for the policy: `Ok(None)` when only superusers do.
pub async fn deciding_team(ctx: &Ctx, dep: &AppName) -> Result<Option<String>, ApiError> {
    Ok(owner(ctx, dep).await?.team.map(|t| t.to_string()))
}

/// True when `app` is granted `dep` explicitly (a grant node), for views.
pub async fn has_grant(ctx: &Ctx, dep: &AppName, app: &AppName) -> Result<bool, ApiError> {
    Ok(ctx
        .coord
        .stat(&ctx.coord.layout().dependency_grant(dep, app))
        .await?
        .is_some())
}
