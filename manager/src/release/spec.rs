//! What a release runs ([`Spec`]): the image, the manifest, the app's dependencies resolved (registered
//! ones opened, internal apps through their zone's internal router, ungranted ones refused or dropped),
//! the route; its container spec; and its placement.

use std::collections::{BTreeMap, BTreeSet};

use atlantis_common::api::manager::{
    AppRecord, InstanceRecord, InstanceState, Manifest, ReleaseTarget,
};
use atlantis_common::api::supervisor::{ContainerSpec, Dependency, HealthCheck};
use atlantis_common::zk::RouterKind;
use atlantis_common::{AppName, ContainerId, EnvName, HostName, Sha, ZoneName};

use super::{Engine, EngineError};
use crate::placement::{self, Need, Slot};
use crate::routing::{self, Publish, Route};
use crate::state;

/// What a release runs: the same for deploy, rollback and scale.
#[derive(Debug, Clone)]
pub struct Spec {
    pub(crate) app: AppName,
    pub(crate) env: EnvName,
    pub(crate) sha: Sha,
    pub(crate) image: String,
    pub(crate) manifest: Manifest,
    pub(crate) dependencies: Vec<Dependency>,
    /// Dependencies on internal apps: through the zone's internal routers.
    pub(crate) zone_dependencies: BTreeMap<ZoneName, Vec<Dependency>>,
    pub(crate) dep_env: BTreeMap<String, String>,
    pub(crate) route: Route,
}

/// What resolving an app's dependencies does with one its owner has not granted it
/// (`crate::grants::is_granted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ungranted {
    /// Refuse (`dependency_not_granted`): deploy, rollback, scale.
    Refuse,
    /// Leave it out of the containers: re-placements and the replacement after a revoke.
    Drop,
}

/// Resolved dependencies of an app.
struct Deps {
    common: Vec<Dependency>,
    by_zone: BTreeMap<ZoneName, Vec<Dependency>>,
    env: BTreeMap<String, String>,
}

impl Engine {
    /// How app.env is published: on the external fleet, or (internal apps) on its stable port.
    pub async fn route(&self, app: &AppRecord, env: &EnvName) -> Result<Route, EngineError> {
        if !app.spec.internal {
            return Ok(Route::external(&self.cfg.routing));
        }
        let port = self.stable_port(&app.spec.name, env).await?;
        Ok(Route {
            kind: RouterKind::Internal,
            publish: Publish::Internal { port },
        })
    }

    async fn stable_port(&self, app: &AppName, env: &EnvName) -> Result<u16, EngineError> {
        routing::stable_port(&self.coord, &self.cfg.routing, app, env)
            .await?
            .ok_or_else(|| {
                EngineError::NoCapacity(format!(
                    "no free internal port left in {}-{}",
                    self.cfg.routing.internal_port_min, self.cfg.routing.internal_port_max
                ))
            })
    }

    /// Reads the app's dependencies: registered ones give their data (decrypted) and endpoints;
    /// internal apps resolve, per zone, to the zone's internal router and the app.env's stable port.
    /// A dependency the app is not granted is refused or dropped, as `ungranted` says.
    async fn dependencies(
        &self,
        app: &AppRecord,
        env: &EnvName,
        ungranted: Ungranted,
    ) -> Result<Deps, EngineError> {
        let mut d = Deps {
            common: Vec::new(),
            by_zone: BTreeMap::new(),
            env: BTreeMap::new(),
        };
        for name in &app.spec.dependencies {
            let owner = crate::grants::find_owner(&self.coord, name)
                .await?
                .ok_or_else(|| EngineError::NotFound(crate::grants::unknown_dependency(name)))?;
            if !crate::grants::is_granted(&self.coord, app, &owner, name).await? {
                match ungranted {
                    Ungranted::Drop => continue,
                    Ungranted::Refuse => {
                        return Err(EngineError::DependencyNotGranted(
                            crate::grants::not_granted_message(&app.spec.name, name, &owner.team),
                        ));
                    }
                }
            }
            if let Some(rec) = crate::deps::load(&self.coord, name).await? {
                let spec = crate::deps::open(&self.sealer, name, &rec)?;
                for e in &spec.endpoints {
                    d.common.push(Dependency {
                        name: name.to_string(),
                        address: e.address,
                        port: e.port,
                    });
                }
                d.env.extend(spec.data);
                continue;
            }
            let internal = self
                .coord
                .get::<AppRecord>(&self.coord.layout().app(name))
                .await?
                .filter(|a| a.value.spec.internal)
                .ok_or_else(|| {
                    EngineError::NotFound(format!(
                        "app depends on {name}, which is neither a registered dependency nor an internal app"
                    ))
                })?;
            let port = self.stable_port(&internal.value.spec.name, env).await?;
            let routers = state::routers(&self.coord, RouterKind::Internal).await?;
            let zones: BTreeSet<ZoneName> = state::supervisors(&self.coord)
                .await?
                .into_iter()
                .map(|s| s.zone)
                .collect();
            for zone in zones {
                let here: Vec<_> = routers.iter().filter(|r| r.zone == zone.as_str()).collect();
                let address = here.iter().find_map(|r| router_address(r)).ok_or_else(|| {
                    EngineError::NotFound(if here.is_empty() {
                        format!("no internal router registered in zone {zone} for dependency {name}")
                    } else {
                        format!(
                            "no internal router of zone {zone} registered an address containers can \
                             reach ({} registered without one: set listen_ip to a specific IPv4 \
                             address or advertise_ip in their config) for dependency {name}",
                            here.iter().map(|r| r.host.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    })
                })?;
                d.by_zone.entry(zone).or_default().push(Dependency {
                    name: name.to_string(),
                    address,
                    port,
                });
            }
        }
        Ok(d)
    }

    pub(crate) fn container_spec(
        &self,
        s: &Spec,
        id: ContainerId,
        zone: Option<&ZoneName>,
    ) -> ContainerSpec {
        let mut env_vars = s.manifest.env_vars.clone();
        env_vars.extend(s.dep_env.clone());
        let mut dependencies = s.dependencies.clone();
        let zone_deps = match zone {
            Some(z) => s.zone_dependencies.get(z),
            None => s.zone_dependencies.values().next(),
        };
        dependencies.extend(zone_deps.into_iter().flatten().cloned());
        ContainerSpec {
            container_id: id,
            app: s.app.clone(),
            sha: s.sha.clone(),
            env: s.env.clone(),
            image: s.image.clone(),
            cpu_millis: s.manifest.cpu_millis,
            memory_mb: s.manifest.memory_mb,
            ports: vec![s.manifest.port],
            env_vars,
            config: None,
            dependencies,
            health: HealthCheck {
                path: s.manifest.health_path.clone(),
                port: None,
                timeout_ms: 2000,
                start_timeout_ms: s.manifest.start_timeout_ms,
                interval_ms: 2000,
            },
            command: s.manifest.command.clone(),
            read_only_rootfs: false,
            allow_ping: false,
        }
    }

    fn check_spec(&self, s: &Spec) -> Result<(), EngineError> {
        let probe = self.container_spec(s, ContainerId::generate(&s.app, &s.sha, &s.env), None);
        probe.validate().map_err(|e| {
            EngineError::InvalidField(atlantis_common::api::manager::FieldError {
                field: e.field,
                message: e.message,
            })
        })
    }

    /// The release of `sha` with `image` and `manifest` for app.env: dependencies and route resolved,
    /// the container spec checked, and its placement over every zone.
    pub(crate) async fn prepare(
        &self,
        rec: &AppRecord,
        app: &AppName,
        env: &EnvName,
        sha: Sha,
        image: String,
        manifest: Manifest,
    ) -> Result<(Spec, Vec<Slot>), EngineError> {
        let deps = self.dependencies(rec, env, Ungranted::Refuse).await?;
        let route = self.route(rec, env).await?;
        let spec = Spec {
            app: app.clone(),
            env: env.clone(),
            sha,
            image,
            manifest,
            dependencies: deps.common,
            zone_dependencies: deps.by_zone,
            dep_env: deps.env,
            route,
        };
        self.check_spec(&spec)?;
        let slots = self.place(&spec, spec.manifest.instances, None).await?;
        Ok((spec, slots))
    }

    /// The spec of the running release `target` of app.env with `instances` per zone (dependencies and
    /// route resolved again; ungranted dependencies refused or dropped as `ungranted` says).
    pub async fn release_spec(
        &self,
        rec: &AppRecord,
        env: &EnvName,
        target: &ReleaseTarget,
        instances: u32,
        ungranted: Ungranted,
    ) -> Result<Spec, EngineError> {
        let app = &rec.spec.name;
        let deps = self.dependencies(rec, env, ungranted).await?;
        let route = self.route(rec, env).await?;
        let mut manifest = target.manifest.clone();
        manifest.instances = instances;
        Ok(Spec {
            app: app.clone(),
            env: env.clone(),
            sha: target.sha.clone(),
            image: target.image.clone(),
            manifest,
            dependencies: deps.common,
            zone_dependencies: deps.by_zone,
            dep_env: deps.env,
            route,
        })
    }

    /// Places `per_zone` containers of `spec` (in `only_zone` when given).
    pub async fn place(
        &self,
        spec: &Spec,
        per_zone: u32,
        only_zone: Option<&ZoneName>,
    ) -> Result<Vec<Slot>, EngineError> {
        let mut sups = state::supervisors(&self.coord).await?;
        if let Some(z) = only_zone {
            sups.retain(|s| &s.zone == z);
        }
        let mut copies: BTreeMap<HostName, u32> = BTreeMap::new();
        for i in state::instances(&self.coord, &spec.app, &spec.env).await? {
            if i.value.sha == spec.sha {
                *copies.entry(i.value.host.clone()).or_default() += 1;
            }
        }
        placement::place(
            &sups,
            &copies,
            Need {
                per_zone,
                cpu_millis: spec.manifest.cpu_millis,
                memory_mb: spec.manifest.memory_mb,
            },
        )
        .map_err(|e| EngineError::NoCapacity(e.to_string()))
    }
}

/// The instance records of the containers to start in `slots` (IDs chosen now, nothing written).
pub(crate) fn plan_instances(spec: &Spec, slots: &[Slot], release: i64) -> Vec<InstanceRecord> {
    slots
        .iter()
        .map(|slot| InstanceRecord {
            version: 1,
            container_id: ContainerId::generate(&spec.app, &spec.sha, &spec.env),
            app: spec.app.clone(),
            env: spec.env.clone(),
            sha: spec.sha.clone(),
            host: slot.host.clone(),
            zone: slot.zone.clone(),
            backend: None,
            state: InstanceState::Starting,
            release,
            cpu_millis: spec.manifest.cpu_millis,
            memory_mb: spec.manifest.memory_mb,
        })
        .collect()
}

/// The address a router registration offers to containers: its `address` field (where its routed
/// ports are reachable, registered by the router from `advertise_ip` or `listen_ip`), when it is a
/// specific IPv4 address that is not loopback. Never the status address: the status listener is on
/// loopback by default, which inside a container is the container itself.
fn router_address(r: &atlantis_common::api::manager::RouterView) -> Option<std::net::Ipv4Addr> {
    let ip: std::net::Ipv4Addr = r.record.get("address")?.as_str()?.parse().ok()?;
    (!(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()))
        .then_some(ip)
}
