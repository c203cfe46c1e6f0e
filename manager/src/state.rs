//! Reading cluster state from ZooKeeper: supervisors, routers, instances, releases.

use atlantis_common::api::manager::{InstanceRecord, ReleaseTarget, RouterView};
use atlantis_common::api::supervisor::SupervisorRecord;
use atlantis_common::zk::{Coord, CoordError, RouterKind, Versioned};
use atlantis_common::{AppName, ContainerId, EnvName, HostName};

/// Every registered supervisor (unreadable records are skipped with a log line). The records are read
/// 64 at a time (a region may have a thousand hosts).
pub async fn supervisors(coord: &Coord) -> Result<Vec<SupervisorRecord>, CoordError> {
    use futures::StreamExt as _;
    let l = coord.layout();
    let hosts: Vec<HostName> = coord
        .children(&l.supervisors())
        .await?
        .into_iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let reads: Vec<_> = futures::stream::iter(hosts)
        .map(|host| async move { coord.get::<SupervisorRecord>(&l.supervisor(&host)).await })
        .buffered(64)
        .collect()
        .await;
    let mut out = Vec::new();
    for r in reads {
        match r {
            Ok(Some(v)) => out.push(v.value),
            Ok(None) => {}
            Err(CoordError::Decode { path, source }) => {
                tracing::warn!(%path, error = %source, "Unreadable supervisor record.");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// One supervisor's record.
pub async fn supervisor(
    coord: &Coord,
    host: &HostName,
) -> Result<Option<SupervisorRecord>, CoordError> {
    Ok(coord
        .get::<SupervisorRecord>(&coord.layout().supervisor(host))
        .await?
        .map(|v| v.value))
}

/// Every registered router of `kind`.
pub async fn routers(coord: &Coord, kind: RouterKind) -> Result<Vec<RouterView>, CoordError> {
    let l = coord.layout();
    let base = l.routers(kind);
    let mut out = Vec::new();
    for zone in coord.children(&base).await? {
        for host in coord.children(&format!("{base}/{zone}")).await? {
            let path = format!("{base}/{zone}/{host}");
            if let Ok(Some(v)) = coord.get::<serde_json::Value>(&path).await {
                out.push(RouterView {
                    kind: kind.to_string(),
                    zone: zone.clone(),
                    host,
                    record: v.value,
                });
            }
        }
    }
    Ok(out)
}

/// The instances of app/env with their node versions.
pub async fn instances(
    coord: &Coord,
    app: &AppName,
    env: &EnvName,
) -> Result<Vec<Versioned<InstanceRecord>>, CoordError> {
    let l = coord.layout();
    let mut out = Vec::new();
    for name in coord.children(&l.instances(app, env)).await? {
        let Ok(id) = name.parse::<ContainerId>() else {
            continue;
        };
        if let Some(v) = coord
            .get::<InstanceRecord>(&l.instance(app, env, &id))
            .await?
        {
            out.push(v);
        }
    }
    Ok(out)
}

/// The envs that have instances or a release of `app`.
pub async fn app_envs(coord: &Coord, app: &AppName) -> Result<Vec<EnvName>, CoordError> {
    let l = coord.layout();
    let mut envs: Vec<EnvName> = coord
        .children(&l.app_instances(app))
        .await?
        .into_iter()
        .chain(coord.children(&l.app_releases(app)).await?)
        .filter_map(|e| e.parse().ok())
        .collect();
    envs.sort();
    envs.dedup();
    Ok(envs)
}

/// The current release target of app/env.
pub async fn release(
    coord: &Coord,
    app: &AppName,
    env: &EnvName,
) -> Result<Option<Versioned<ReleaseTarget>>, CoordError> {
    coord.get(&coord.layout().release(app, env)).await
}

/// Finds a container's instance record by its ID (searching every app and env).
pub async fn find_instance(
    coord: &Coord,
    id: &ContainerId,
) -> Result<Option<InstanceRecord>, CoordError> {
    let l = coord.layout();
    for app in coord.children(&l.all_instances()).await? {
        let Ok(app) = app.parse::<AppName>() else {
            continue;
        };
        if !id.as_str().starts_with(&format!("{app}-")) {
            continue;
        }
        for env in coord.children(&l.app_instances(&app)).await? {
            let Ok(env) = env.parse::<EnvName>() else {
                continue;
            };
            if let Some(v) = coord
                .get::<InstanceRecord>(&l.instance(&app, &env, id))
                .await?
            {
                return Ok(Some(v.value));
            }
        }
    }
    Ok(None)
}
