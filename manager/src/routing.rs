//! The routing side of a release: the app.env pool, its host rule, and the switch transaction.
//!
//! Every deployed app/env has a pool named `<app>.<env>` whose children are its backends
//! (`address:host_port` of each serving container), and a rule of the same name, `host
//! <app>.<env>.<domain>` pointing at the pool, appended to the configured trie. The first deploy creates
//! pool and rule in the same ZooKeeper transaction that adds the backends and records the release, so
//! routers see a release whole or not at all.
//!
//! Internal apps are published on the internal routers instead: the same pool, a `static true` rule in a
//! trie of their own, and a port node `<app>.<env>` listening on the app.env's stable port (allocated once
//! in `ports/internal`, lowest free first, kept until the app is deleted).

use std::time::Duration;

use atlantis_common::api::manager::{InstanceRecord, InstanceState, ReleaseTarget};
use atlantis_common::routing::{Pool, Rule, RuleType, SCHEMA_VERSION, Trie};
use std::collections::BTreeMap;

use atlantis_common::routing::Port;
use atlantis_common::zk::{Coord, CoordError, RouterKind, Section, Versioned};
use atlantis_common::{AppName, EnvName};
use serde::{Deserialize, Serialize};

use crate::config::RoutingConfig;

pub mod acks;

/// How an app.env is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// A host rule `<app>.<env>.<domain>` in `trie`.
    External {
        /// The trie host rules go into.
        trie: String,
        /// The domain suffix.
        domain: String,
    },
    /// Its own listener on the internal routers.
    Internal {
        /// The stable port.
        port: u16,
    },
}

/// Which fleet serves an app.env, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The router fleet.
    pub kind: RouterKind,
    /// How.
    pub publish: Publish,
}

impl Route {
    /// The external route of the configuration.
    pub fn external(cfg: &RoutingConfig) -> Route {
        Route {
            kind: cfg.kind,
            publish: Publish::External {
                trie: cfg.trie.clone(),
                domain: cfg.domain.clone(),
            },
        }
    }

    fn trie(&self, pool: &str) -> String {
        match &self.publish {
            Publish::External { trie, .. } => trie.clone(),
            Publish::Internal { .. } => pool.to_owned(),
        }
    }
}

/// The node `ports/internal`: stable ports by `app.env`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StablePorts {
    /// Schema version.
    #[serde(default)]
    pub version: u32,
    /// `app.env` → port.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

/// The stable port of app.env on the internal routers, allocated (lowest free in the configured range)
/// on first use. `None` when the range is exhausted.
pub async fn stable_port(
    coord: &Coord,
    cfg: &RoutingConfig,
    app: &AppName,
    env: &EnvName,
) -> Result<Option<u16>, CoordError> {
    let path = coord.layout().stable_ports(RouterKind::Internal);
    let key = pool_name(app, env);
    let (min, max) = (cfg.internal_port_min, cfg.internal_port_max);
    coord
        .update::<StablePorts, _>(&path, |cur| {
            let mut cur = cur.unwrap_or_default();
            if cur.ports.contains_key(&key) {
                return None;
            }
            let used: std::collections::BTreeSet<u16> = cur.ports.values().copied().collect();
            let free = (min..=max).find(|p| !used.contains(p))?;
            cur.version = 1;
            cur.ports.insert(key.clone(), free);
            Some(cur)
        })
        .await?;
    Ok(coord
        .get::<StablePorts>(&path)
        .await?
        .and_then(|v| v.value.ports.get(&key).copied()))
}

/// Frees every stable port of `app` (when the app is deleted).
pub async fn release_stable_ports(coord: &Coord, app: &AppName) -> Result<(), CoordError> {
    let path = coord.layout().stable_ports(RouterKind::Internal);
    let prefix = format!("{app}.");
    coord
        .update::<StablePorts, _>(&path, |cur| {
            let mut cur = cur?;
            let before = cur.ports.len();
            cur.ports.retain(|k, _| !k.starts_with(&prefix));
            (cur.ports.len() != before).then_some(cur)
        })
        .await?;
    Ok(())
}

/// The pool (and rule) name of app/env.
pub fn pool_name(app: &AppName, env: &EnvName) -> String {
    format!("{app}.{env}")
}

/// The pool settings a first deploy creates: checks every second, so new backends become usable fast.
pub fn default_pool() -> Pool {
    Pool {
        healthz_every_ms: 1000,
        healthz_timeout_ms: 1000,
        slow_start_ms: 5000,
        ..Pool::default()
    }
}

/// A new backend to switch in, with its instance record (set to serving by the same transaction).
pub struct NewBackend {
    /// `address:port`.
    pub backend: String,
    /// The instance node's new content.
    pub instance: InstanceRecord,
}

/// What the switch writes besides backends.
pub enum ReleaseWrite<'a> {
    /// Record a new release target (compare-and-set on the node's version, None = create).
    Target(&'a ReleaseTarget, Option<i32>),
    /// Leave the release node alone (scale, maintenance).
    Keep,
}

/// Adds the generation bump to `txn` (its last operation): the data version of `router/<kind>/generation`,
/// which routers report once they serve it (see [`acks`]).
async fn bump_generation(
    coord: &Coord,
    kind: RouterKind,
    txn: atlantis_common::zk::Txn,
) -> Result<atlantis_common::zk::Txn, CoordError> {
    let path = coord.layout().router_generation(kind);
    if coord.stat(&path).await?.is_none() {
        coord.ensure_path(&path).await?;
    }
    Ok(txn.set(&path, &serde_json::json!({"version": 1}), None))
}

/// The generation a committed transaction built with [`bump_generation`] produced.
fn generation_of(results: &[atlantis_common::zk::TxnResult]) -> u64 {
    match results.last() {
        Some(atlantis_common::zk::TxnResult::Set { version }) => (*version).max(0) as u64,
        _ => 0,
    }
}

/// Puts `new` in the app.env pool in one transaction, creating pool, rule and trie entry when missing,
/// marking the instances serving and writing the release target. With `owner` (a task node's path and
/// the version its owner wrote last), the transaction also checks that version: a task taken over by
/// another manager cannot switch any more. The transaction bumps the fleet's configuration generation;
/// the new generation is returned (wait for routers with [`acks::wait_generation`]).
pub async fn switch_in(
    coord: &Coord,
    route: &Route,
    app: &AppName,
    env: &EnvName,
    new: &[NewBackend],
    release: ReleaseWrite<'_>,
    owner: Option<(&str, i32)>,
) -> Result<u64, CoordError> {
    let l = coord.layout();
    let kind = route.kind;
    for s in Section::ALL {
        coord.ensure_path(&l.router_section(kind, s)).await?;
    }
    coord.ensure_path(&l.app_releases(app)).await?;
    let name = pool_name(app, env);
    let pool_path = l.router_item(kind, Section::Pools, &name);
    let rule_path = l.router_item(kind, Section::Rules, &name);
    let trie_path = l.router_item(kind, Section::Tries, &route.trie(&name));
    let port_path = l.router_item(kind, Section::Ports, &name);
    let mut last = None;
    for _ in 0..8 {
        let mut txn = coord.txn();
        if let Some((path, version)) = owner {
            txn = txn.check(path, version);
        }
        if coord.stat(&pool_path).await?.is_none() {
            txn = txn.create(&pool_path, &default_pool());
        }
        if coord.stat(&rule_path).await?.is_none() {
            let (kind, value) = match &route.publish {
                Publish::External { domain, .. } => {
                    (RuleType::Host, format!("{app}.{env}.{domain}"))
                }
                Publish::Internal { .. } => (RuleType::Static, "true".to_owned()),
            };
            let rule = Rule {
                version: SCHEMA_VERSION,
                kind,
                value,
                pool: Some(name.clone()),
                next: None,
            };
            txn = txn.create(&rule_path, &rule);
        }
        if let Publish::Internal { port } = route.publish
            && coord.stat(&port_path).await?.is_none()
        {
            let p = Port {
                version: SCHEMA_VERSION,
                port,
                trie: name.clone(),
                tls: false,
            };
            txn = txn.create(&port_path, &p);
        }
        match coord.get::<Trie>(&trie_path).await? {
            None => {
                let t = Trie {
                    version: SCHEMA_VERSION,
                    rules: vec![name.clone()],
                };
                txn = txn.create(&trie_path, &t);
            }
            Some(Versioned {
                value: mut t,
                version,
            }) => {
                if t.rules.contains(&name) {
                    txn = txn.check(&trie_path, version);
                } else {
                    t.rules.push(name.clone());
                    txn = txn.set(&trie_path, &t, Some(version));
                }
            }
        }
        // One read of the pool's backends (empty while the pool does not exist yet).
        let present = coord.children(&pool_path).await?;
        for b in new {
            let p = l.pool_backend(kind, &name, &b.backend);
            let doc = serde_json::json!({"version": 1, "container": b.instance.container_id});
            // The supervisor just gave this address to the new container, so a backend already at it
            // names a container that is gone (lost with its host, removed by hand): it is replaced.
            txn = if present.contains(&b.backend) {
                tracing::warn!(backend = %b.backend, pool = %name, "Replacing a stale backend at the new container's address.");
                txn.set(&p, &doc, None)
            } else {
                txn.create(&p, &doc)
            };
            let ip = l.instance(app, env, &b.instance.container_id);
            let mut rec = b.instance.clone();
            rec.state = InstanceState::Serving;
            rec.backend = Some(b.backend.clone());
            txn = txn.set(&ip, &rec, None);
        }
        match &release {
            ReleaseWrite::Target(t, Some(v)) => {
                txn = txn.set(&l.release(app, env), t, Some(*v));
            }
            ReleaseWrite::Target(t, None) => {
                txn = txn.create(&l.release(app, env), t);
            }
            ReleaseWrite::Keep => {}
        }
        txn = bump_generation(coord, kind, txn).await?;
        match txn.commit().await {
            Ok(results) => return Ok(generation_of(&results)),
            Err(e @ CoordError::Txn { .. }) => {
                // A concurrent edit of the trie (another app's first deploy): read again and retry. A
                // lost compare-and-set on the release node is final (it is under our lock, so it means
                // someone bypassed it).
                if (matches!(&release, ReleaseWrite::Target(..))
                    && e.to_string().contains("releases"))
                    || matches!(&e, CoordError::Txn { index: 0, .. } if owner.is_some())
                {
                    return Err(e);
                }
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(CoordError::Conflict { path: trie_path }))
}

/// Removes backends from the app.env pool in one transaction (missing ones are skipped) that bumps the
/// fleet's configuration generation; returns it (wait for the drain with [`acks::wait_drained`]).
pub async fn remove_backends(
    coord: &Coord,
    kind: RouterKind,
    app: &AppName,
    env: &EnvName,
    backends: &[String],
) -> Result<u64, CoordError> {
    let l = coord.layout();
    let name = pool_name(app, env);
    let mut txn = coord.txn();
    for b in backends {
        let p = l.pool_backend(kind, &name, b);
        if coord.stat(&p).await?.is_some() {
            txn = txn.delete(&p, None);
        }
    }
    let txn = bump_generation(coord, kind, txn).await?;
    txn.commit().await.map(|r| generation_of(&r))
}

/// Adds one backend back (maintenance off).
pub async fn add_backend(
    coord: &Coord,
    kind: RouterKind,
    app: &AppName,
    env: &EnvName,
    backend: &str,
    container: &str,
) -> Result<(), CoordError> {
    let p = coord
        .layout()
        .pool_backend(kind, &pool_name(app, env), backend);
    match coord
        .create(
            &p,
            &serde_json::json!({"version": 1, "container": container}),
        )
        .await
    {
        Ok(_) | Err(CoordError::Exists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the app.env pool (with any backends left), its rule and its trie entry (and for internal apps
/// its port and trie; the stable port stays reserved).
pub async fn remove_app_env(
    coord: &Coord,
    route: &Route,
    app: &AppName,
    env: &EnvName,
) -> Result<(), CoordError> {
    let l = coord.layout();
    let kind = route.kind;
    let name = pool_name(app, env);
    if let Publish::Internal { .. } = route.publish {
        coord
            .delete(&l.router_item(kind, Section::Ports, &name), None)
            .await?;
        coord
            .delete(&l.router_item(kind, Section::Tries, &name), None)
            .await?;
    }
    let trie_path = l.router_item(kind, Section::Tries, &route.trie(&name));
    // Unlink the rule first, so no request is routed to a pool that is going away.
    coord
        .update::<Trie, _>(&trie_path, |t| {
            let mut t = t?;
            let before = t.rules.len();
            t.rules.retain(|r| r != &name);
            (t.rules.len() != before).then_some(t)
        })
        .await?;
    coord
        .delete(&l.router_item(kind, Section::Rules, &name), None)
        .await?;
    coord
        .delete_recursive(&l.router_item(kind, Section::Pools, &name))
        .await?;
    Ok(())
}

/// Waits until every router of the fleet that answers its status reports `backends` of `pool` usable
/// (OK or DEGRADED), or `limit` runs out. Returns the routers that did not confirm.
pub async fn wait_usable(
    coord: &Coord,
    http: &reqwest::Client,
    kind: RouterKind,
    pool: &str,
    backends: &[String],
    limit: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let routers = crate::state::routers(coord, kind).await.unwrap_or_default();
        let mut pending = Vec::new();
        for r in &routers {
            let Some(addr) = r.record.get("status_addr").and_then(|v| v.as_str()) else {
                continue;
            };
            let ok = async {
                let s: serde_json::Value = http
                    .get(format!("http://{addr}/statusz.json"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let list = s["pools"][pool]["backends"].as_array()?.clone();
                backends
                    .iter()
                    .all(|b| {
                        list.iter().any(|e| {
                            e["backend"] == b.as_str()
                                && matches!(e["health"].as_str(), Some("OK" | "DEGRADED"))
                        })
                    })
                    .then_some(())
            }
            .await;
            if ok.is_none() {
                pending.push(format!("{}/{}", r.zone, r.host));
            }
        }
        if pending.is_empty() || tokio::time::Instant::now() >= deadline {
            return pending;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
