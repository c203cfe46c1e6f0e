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
//! [`is_granted`] is the one check: the API calls it (through [`granted`]) when an app is registered or
//! updated, and the release engine when it resolves an app's dependencies (deploy, rollback, scale
//! refuse; a re-placement or the replacement after a revoke, `crate::release::replace`, drops the
//! dependency). This module only reads and writes grants; acting on containers is the engine's.

use atlantis_common::api::grants::{DependencyGrant, DependencyRequest};
use atlantis_common::api::manager::AppRecord;
use atlantis_common::zk::{Coord, CoordError, Layout, Versioned};
use atlantis_common::{AppName, TeamName};

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

/// The owner of `dep`: a registered dependency's team, else an internal app's team; `None` when it is
/// neither.
pub async fn find_owner(coord: &Coord, dep: &AppName) -> Result<Option<Owner>, CoordError> {
    if let Some(rec) = crate::deps::load(coord, dep).await? {
        return Ok(Some(Owner {
            team: rec.team,
            internal_app: false,
        }));
    }
    Ok(
        match coord.get::<AppRecord>(&coord.layout().app(dep)).await? {
            Some(a) if a.value.spec.internal => Some(Owner {
                team: a.value.spec.team,
                internal_app: true,
            }),
            _ => None,
        },
    )
}

/// What an unknown dependency is called in refusals.
pub fn unknown_dependency(dep: &AppName) -> String {
    format!("dependency {dep} is neither registered nor an internal app")
}

/// The owner of `dep`, or 404 when it is neither registered nor an internal app.
pub async fn owner(coord: &Coord, dep: &AppName) -> Result<Owner, ApiError> {
    find_owner(coord, dep)
        .await?
        .ok_or_else(|| ApiError::NotFound(unknown_dependency(dep)))
}

/// True when `app` may use `dep` (owned by `owner`): its team owns it, or a grant exists.
pub async fn is_granted(
    coord: &Coord,
    app: &AppRecord,
    owner: &Owner,
    dep: &AppName,
) -> Result<bool, CoordError> {
    if owner.team.is_some() && owner.team == app.spec.team {
        return Ok(true);
    }
    Ok(coord
        .stat(&coord.layout().dependency_grant(dep, &app.spec.name))
        .await?
        .is_some())
}

/// True when `app` may use `dep` (404 for an unknown dependency).
pub async fn granted(coord: &Coord, app: &AppRecord, dep: &AppName) -> Result<bool, ApiError> {
    let o = owner(coord, dep).await?;
    Ok(is_granted(coord, app, &o, dep).await?)
}

/// Why an ungranted dependency is refused: names it, its owner and how to ask for it.
pub fn not_granted_message(app: &AppName, dep: &AppName, owner: &Option<TeamName>) -> String {
    let who = match owner {
        Some(t) => format!("its owning team {t}"),
        None => "a superuser (it has no team)".to_owned(),
    };
    format!(
        "app {app} may not use dependency {dep} until {who} grants it: ask with \
         `atlantis request-dependency {dep} --app {app}` (PUT /v1/dependencies/{dep}/requests/{app})"
    )
}

/// The refusal for an ungranted dependency (403 `dependency_not_granted`).
pub fn not_granted(app: &AppName, dep: &AppName, owner: &Option<TeamName>) -> ApiError {
    ApiError::DependencyNotGranted(not_granted_message(app, dep, owner))
}

/// Refuses (403 `dependency_not_granted`) when `app` declares a dependency it is not granted.
pub async fn check_declared(coord: &Coord, app: &AppRecord) -> Result<(), ApiError> {
    for dep in &app.spec.dependencies {
        if !granted(coord, app, dep).await? {
            let o = owner(coord, dep).await?;
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

async fn app_record(coord: &Coord, app: &AppName) -> Result<Versioned<AppRecord>, ApiError> {
    coord
        .get::<AppRecord>(&coord.layout().app(app))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no app {app} (register it first)")))
}

/// Makes sure `parent` exists (transactions do not create parents).
async fn ensure(coord: &Coord, parent: &str) -> Result<(), ApiError> {
    Ok(coord.ensure_path(parent).await?)
}

/// Records `app`'s request for `dep` (idempotent: an existing request is kept and returned).
pub async fn request(
    coord: &Coord,
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
    let o = owner(coord, dep).await?;
    let rec = app_record(coord, app).await?;
    if granted(coord, &rec.value, dep).await? {
        return Err(ApiError::Exists(format!(
            "app {app} is granted dependency {dep} already"
        )));
    }
    let l = coord.layout();
    let path = l.dependency_request(dep, app);
    if let Some(v) = coord.get::<DependencyRequest>(&path).await? {
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
    ensure(coord, &l.dependency_requests_of(dep)).await?;
    coord
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
    coord: &Coord,
    dep: &AppName,
    app: &AppName,
    by: &str,
) -> Result<DependencyGrant, ApiError> {
    owner(coord, dep).await?;
    let rec = app_record(coord, app).await?;
    let l = coord.layout();
    let path = l.dependency_grant(dep, app);
    if let Some(g) = coord.get::<DependencyGrant>(&path).await? {
        return Ok(g.value);
    }
    let g = DependencyGrant {
        version: 1,
        dependency: dep.clone(),
        app: app.clone(),
        granted_by: by.to_owned(),
        granted_ms: now_ms(),
    };
    ensure(coord, &l.dependency_grants_of(dep)).await?;
    let mut txn = coord
        .txn()
        .set(&l.app(app), &rec.value, Some(rec.version))
        .create(&path, &g);
    let req_path = l.dependency_request(dep, app);
    if let Some(stat) = coord.stat(&req_path).await? {
        txn = txn.delete(&req_path, Some(stat.version));
    }
    txn.commit()
        .await
        .map_err(conflict(&format!("app {app} or its grant")))?;
    Ok(g)
}

/// Takes a grant back; false when there was none.
pub async fn revoke(coord: &Coord, dep: &AppName, app: &AppName) -> Result<bool, ApiError> {
    let path = coord.layout().dependency_grant(dep, app);
    let Some(stat) = coord.stat(&path).await? else {
        return Ok(false);
    };
    match coord.delete(&path, Some(stat.version)).await {
        Ok(gone) => Ok(gone),
        Err(CoordError::Conflict { .. }) => Err(ApiError::Exists(format!(
            "the grant of {dep} to {app} changed concurrently; try again"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Drops a pending request; false when there was none.
pub async fn drop_request(coord: &Coord, dep: &AppName, app: &AppName) -> Result<bool, ApiError> {
    Ok(coord
        .delete(&coord.layout().dependency_request(dep, app), None)
        .await?)
}

/// Every grant of `dep`, by app name.
pub async fn grants_of(coord: &Coord, dep: &AppName) -> Result<Vec<DependencyGrant>, ApiError> {
    let l = coord.layout();
    let mut out = Vec::new();
    for a in coord.children(&l.dependency_grants_of(dep)).await? {
        let Ok(app) = a.parse::<AppName>() else {
            continue;
        };
        if let Some(g) = coord
            .get::<DependencyGrant>(&l.dependency_grant(dep, &app))
            .await?
        {
            out.push(g.value);
        }
    }
    Ok(out)
}

/// Every pending request.
pub async fn all_requests(coord: &Coord) -> Result<Vec<DependencyRequest>, ApiError> {
    let l = coord.layout();
    let mut out = Vec::new();
    for d in coord.children(&l.dependency_requests()).await? {
        let Ok(dep) = d.parse::<AppName>() else {
            continue;
        };
        for a in coord.children(&l.dependency_requests_of(&dep)).await? {
            let Ok(app) = a.parse::<AppName>() else {
                continue;
            };
            if let Some(r) = coord
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
    coord: &Coord,
    app: &AppName,
    as_dependency: bool,
) -> Result<Vec<String>, ApiError> {
    let l = coord.layout();
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
        for d in coord.children(&root).await? {
            let Ok(dep) = d.parse::<AppName>() else {
                continue;
            };
            for a in coord.children(&of(l, &dep)).await? {
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
pub async fn purge_app(coord: &Coord, app: &AppName, version: i32) -> Result<usize, ApiError> {
    // A registered dependency of the same name owns `dependency_grants/<app>`: those stay.
    let as_dependency = crate::deps::load(coord, app).await?.is_none();
    let paths = paths_of_app(coord, app, as_dependency).await?;
    let l = coord.layout();
    let mut txn = coord.txn();
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
            let _ = coord.delete(&p, None).await;
        }
    }
    Ok(paths.len())
}

/// The team that decides about `dep`, for the policy: `Ok(None)` when only superusers do.
pub async fn deciding_team(coord: &Coord, dep: &AppName) -> Result<Option<String>, ApiError> {
    Ok(owner(coord, dep).await?.team.map(|t| t.to_string()))
}

/// True when `app` is granted `dep` explicitly (a grant node), for views.
pub async fn has_grant(coord: &Coord, dep: &AppName, app: &AppName) -> Result<bool, ApiError> {
    Ok(coord
        .stat(&coord.layout().dependency_grant(dep, app))
        .await?
        .is_some())
}
