//! The immediate half of a revoke: before the replacement task runs (`replace`), every running
//! container of the app has the revoked dependency taken out of its firewall grants on its host
//! (`HostApi::set_dependencies`; the supervisor re-renders the container's chain and cuts the open
//! connections the new rules refuse). The dependency's data leaves with the replacement, which starts
//! containers without it.

use std::collections::{BTreeMap, BTreeSet};

use atlantis_common::api::supervisor::Dependency;
use atlantis_common::{AppName, HostName};

use super::Engine;
use crate::fleet::{HostApi, HostError};
use crate::state;

/// What the cut did: containers whose grants were narrowed, and what could not be done.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Containers that no longer reach the dependency.
    pub containers: usize,
    /// Hosts that could not be asked or refused (their containers go with the replacement).
    pub failures: Vec<String>,
}

/// Takes `dep` away from every running container of `app`, on every host that runs one.
pub async fn cut(ctx: &Engine, app: &AppName, dep: &AppName) -> Cut {
    let mut out = Cut::default();
    let mut hosts: BTreeSet<HostName> = BTreeSet::new();
    let envs = match state::app_envs(&ctx.coord, app).await {
        Ok(e) => e,
        Err(e) => {
            out.failures.push(format!("cannot list {app}'s envs: {e}"));
            return out;
        }
    };
    for env in envs {
        match state::instances(&ctx.coord, app, &env).await {
            Ok(list) => hosts.extend(list.into_iter().map(|i| i.value.host)),
            Err(e) => out
                .failures
                .push(format!("cannot list {app}.{env}'s containers: {e}")),
        }
    }
    let calls = hosts.into_iter().map(|host| async move {
        let sup = match state::supervisor(&ctx.coord, &host).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(format!("supervisor {host} is not registered")),
            Err(e) => return Err(format!("supervisor {host}: {e}")),
        };
        let api = ctx.hosts.host(&sup).map_err(|e| format!("{host}: {e}"))?;
        cut_on(api.as_ref(), app, dep.as_str())
            .await
            .map_err(|e| format!("{host}: {e}"))
    });
    for r in futures::future::join_all(calls).await {
        match r {
            Ok(n) => out.containers += n,
            Err(e) => out.failures.push(e),
        }
    }
    out
}

/// On one host: every container of `app` that may reach `dep` gets its dependencies without it.
/// Returns how many changed.
pub async fn cut_on(host: &dyn HostApi, app: &AppName, dep: &str) -> Result<usize, HostError> {
    let mut keep: BTreeMap<_, Vec<Dependency>> = BTreeMap::new();
    for c in host.list().await? {
        if &c.app == app && c.dependencies.iter().any(|d| d.name == dep) {
            let rest = c.dependencies.into_iter().filter(|d| d.name != dep);
            keep.insert(c.container_id, rest.collect());
        }
    }
    for (id, deps) in &keep {
        host.set_dependencies(id, deps).await?;
    }
    Ok(keep.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FakeHost;
    use atlantis_common::ContainerId;
    use atlantis_common::api::supervisor::{ContainerSpec, Resources};

    /// The contract's spec, for `app`, with `deps` (name, port).
    fn spec(app: &str, deps: &[(&str, u16)]) -> ContainerSpec {
        let mut s = crate::fleet::contract::tests::template();
        s.app = app.parse().unwrap();
        s.container_id = ContainerId::generate(&s.app, &s.sha, &s.env);
        s.dependencies = deps
            .iter()
            .map(|(n, p)| Dependency {
                name: (*n).into(),
                address: std::net::Ipv4Addr::new(10, 0, 0, 9),
                port: *p,
            })
            .collect();
        s
    }

    #[tokio::test]
    async fn only_the_revoked_dependency_of_the_app_goes() {
        let host = FakeHost::new(
            "h1".parse().unwrap(),
            "z1".parse().unwrap(),
            Resources {
                slots: 8,
                cpu_millis: 8000,
                memory_mb: 8192,
            },
            "127.0.0.1",
        );
        let mine = spec("web", &[("db", 5432), ("cache", 6379)]);
        let other = spec("other", &[("db", 5432)]);
        let plain = spec("web", &[("cache", 6379)]);
        for s in [&mine, &other, &plain] {
            host.deploy(s).await.unwrap();
        }
        let app: AppName = "web".parse().unwrap();
        assert_eq!(cut_on(&host, &app, "db").await.unwrap(), 1);
        let deps = |id: &ContainerId, list: &[atlantis_common::api::supervisor::ContainerInfo]| {
            let c = list.iter().find(|c| &c.container_id == id).unwrap();
            c.dependencies
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>()
        };
        let list = host.list().await.unwrap();
        assert_eq!(deps(&mine.container_id, &list), ["cache"]);
        assert_eq!(
            deps(&other.container_id, &list),
            ["db"],
            "another app keeps its grant"
        );
        assert_eq!(deps(&plain.container_id, &list), ["cache"]);
        // Nothing left to cut: a second run changes nothing.
        assert_eq!(cut_on(&host, &app, "db").await.unwrap(), 0);
    }
}
