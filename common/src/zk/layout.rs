//! The ZooKeeper tree: the only place that builds paths.
//!
//! Every component reads and writes ZooKeeper through these functions, so a path is spelled once. All
//! payloads are JSON objects that carry a `version` field (their schema version). The tree of one region:
//!
//! ```text
//! /atlantis/<region>
//! ├── apps/<app>                                   app record: owner team, repo, internal/external, allowed dependants
//! ├── envs/<env>                                   environment record
//! ├── dependencies/<name>                          named dependency: encrypted data, reachable endpoints
//! ├── dependency_grants/<dependency>/<app>         the owner team's grant of a dependency to an app
//! ├── dependency_requests/<dependency>/<app>       an app's pending request for a dependency
//! ├── releases/<app>/<env>                         current release number and target
//! ├── instances/<app>/<env>/<container-id>         one node per container: sha, host, zone, host port, state
//! ├── supervisors/<host>                           EPHEMERAL: address, zone, capacity, free now, version
//! ├── routers/<internal|external>/<zone>/<host>    EPHEMERAL: router registration
//! ├── router_acks/<internal|external>/<zone>/<host> EPHEMERAL: generation served, draining backends
//! ├── managers/
//! │   ├── hosts/<host>                             EPHEMERAL: manager registration
//! │   └── leader                                   EPHEMERAL: the elected leader (background work)
//! ├── router/<internal|external>/
//! │   ├── generation                               its data version counts switches (bumped in them)
//! │   ├── ports/<name>                             listener: port, trie, tls
//! │   ├── tries/<name>                             ordered rule names
//! │   ├── rules/<name>                             matcher plus next trie or pool
//! │   └── pools/<name>                             health and timeout settings
//! │       └── <host:port>                          one child per backend
//! ├── ports/<internal|external>                    stable port per app.env for internal apps
//! ├── teams/<team>                                 apps the team may act on
//! ├── locks/<key>                                  EPHEMERAL: prefix locks (see `zk::lock`)
//! └── tasks/<id>                                   progress of in-flight work
//! ```
//!
//! Architecture invariant: no other module formats a ZooKeeper path; names come in as validated newtypes,
//! so a path segment can never contain `/` or `..`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{
    AppName, ContainerId, EnvName, HostName, NameError, RegionName, TeamName, ZoneName,
};

/// Which router fleet a piece of router state belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterKind {
    /// Routers that serve apps to other apps inside the cluster.
    Internal,
    /// Routers that serve the outside world.
    External,
}

impl RouterKind {
    /// Both kinds, internal first.
    pub const ALL: [RouterKind; 2] = [RouterKind::Internal, RouterKind::External];

    /// `internal` or `external`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterKind::Internal => "internal",
            RouterKind::External => "external",
        }
    }
}

impl fmt::Display for RouterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RouterKind {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        match s {
            "internal" => Ok(RouterKind::Internal),
            "external" => Ok(RouterKind::External),
            _ => Err(NameError {
                kind: "router kind",
                value: s.to_owned(),
                reason: "must be internal or external".into(),
            }),
        }
    }
}

/// The four sections of a router configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    /// Listeners.
    Ports,
    /// Ordered rule lists.
    Tries,
    /// Matchers.
    Rules,
    /// Backend pools.
    Pools,
}

impl Section {
    /// All sections, in dependency order (pools first).
    pub const ALL: [Section; 4] = [
        Section::Pools,
        Section::Rules,
        Section::Tries,
        Section::Ports,
    ];

    /// The path segment of this section.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Ports => "ports",
            Section::Tries => "tries",
            Section::Rules => "rules",
            Section::Pools => "pools",
        }
    }
}

/// Paths of one region's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Layout {
    /// The tree of `region`, rooted at `/atlantis/<region>`.
    pub fn new(region: &RegionName) -> Layout {
        Layout {
            root: format!("/atlantis/{region}"),
        }
    }

    /// A tree rooted somewhere else (tests isolate themselves under a unique root). `root` must be an
    /// absolute path without a trailing slash.
    pub fn with_root(root: &str) -> Layout {
        assert!(
            root.starts_with('/') && !root.ends_with('/') && !root.contains("//"),
            "bad layout root {root:?}"
        );
        Layout {
            root: root.to_owned(),
        }
    }

    /// The region's root.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn join(&self, parts: &[&str]) -> String {
        let mut p = self.root.clone();
        for part in parts {
            p.push('/');
            p.push_str(part);
        }
        p
    }

    /// `apps`
    pub fn apps(&self) -> String {
        self.join(&["apps"])
    }
    /// `apps/<app>`
    pub fn app(&self, app: &AppName) -> String {
        self.join(&["apps", app.as_str()])
    }
    /// `envs`
    pub fn envs(&self) -> String {
        self.join(&["envs"])
    }
    /// `envs/<env>`
    pub fn env(&self, env: &EnvName) -> String {
        self.join(&["envs", env.as_str()])
    }
    /// `dependencies`
    pub fn dependencies(&self) -> String {
        self.join(&["dependencies"])
    }
    /// `dependencies/<name>`: a named dependency (its data encrypted by the manager).
    pub fn dependency(&self, name: &AppName) -> String {
        self.join(&["dependencies", name.as_str()])
    }
    /// `dependency_grants`
    pub fn dependency_grants(&self) -> String {
        self.join(&["dependency_grants"])
    }
    /// `dependency_grants/<dependency>`: the apps a dependency is granted to.
    pub fn dependency_grants_of(&self, dependency: &AppName) -> String {
        self.join(&["dependency_grants", dependency.as_str()])
    }
    /// `dependency_grants/<dependency>/<app>`: one grant (written by the dependency's owner team).
    pub fn dependency_grant(&self, dependency: &AppName, app: &AppName) -> String {
        self.join(&["dependency_grants", dependency.as_str(), app.as_str()])
    }
    /// `dependency_requests`
    pub fn dependency_requests(&self) -> String {
        self.join(&["dependency_requests"])
    }
    /// `dependency_requests/<dependency>`: the pending requests for a dependency.
    pub fn dependency_requests_of(&self, dependency: &AppName) -> String {
        self.join(&["dependency_requests", dependency.as_str()])
    }
    /// `dependency_requests/<dependency>/<app>`: an app's pending request.
    pub fn dependency_request(&self, dependency: &AppName, app: &AppName) -> String {
        self.join(&["dependency_requests", dependency.as_str(), app.as_str()])
    }
    /// `releases/<app>`
    pub fn app_releases(&self, app: &AppName) -> String {
        self.join(&["releases", app.as_str()])
    }
    /// `instances/<app>`
    pub fn app_instances(&self, app: &AppName) -> String {
        self.join(&["instances", app.as_str()])
    }
    /// `releases/<app>/<env>`
    pub fn release(&self, app: &AppName, env: &EnvName) -> String {
        self.join(&["releases", app.as_str(), env.as_str()])
    }
    /// `instances`
    pub fn all_instances(&self) -> String {
        self.join(&["instances"])
    }
    /// `instances/<app>/<env>`
    pub fn instances(&self, app: &AppName, env: &EnvName) -> String {
        self.join(&["instances", app.as_str(), env.as_str()])
    }
    /// `instances/<app>/<env>/<cid>`
    pub fn instance(&self, app: &AppName, env: &EnvName, id: &ContainerId) -> String {
        self.join(&["instances", app.as_str(), env.as_str(), id.as_str()])
    }
    /// `supervisors`
    pub fn supervisors(&self) -> String {
        self.join(&["supervisors"])
    }
    /// `supervisors/<host>`
    pub fn supervisor(&self, host: &HostName) -> String {
        self.join(&["supervisors", host.as_str()])
    }
    /// `routers/<kind>`
    pub fn routers(&self, kind: RouterKind) -> String {
        self.join(&["routers", kind.as_str()])
    }
    /// `routers/<kind>/<zone>/<host>`
    pub fn router(&self, kind: RouterKind, zone: &ZoneName, host: &HostName) -> String {
        self.join(&["routers", kind.as_str(), zone.as_str(), host.as_str()])
    }
    /// `router_acks/<kind>`: what each router of the fleet serves.
    pub fn router_acks(&self, kind: RouterKind) -> String {
        self.join(&["router_acks", kind.as_str()])
    }
    /// `router_acks/<kind>/<zone>/<host>`: EPHEMERAL, the configuration generation a router serves and the
    /// requests and tunnels it still has open to backends that left its pools.
    pub fn router_ack(&self, kind: RouterKind, zone: &ZoneName, host: &HostName) -> String {
        self.join(&["router_acks", kind.as_str(), zone.as_str(), host.as_str()])
    }
    /// `router/<kind>/generation`: the node whose data version is the fleet's configuration generation.
    /// The manager sets it in every transaction that changes a pool's backends, so a router that has
    /// compiled the node's version `g` has applied every change of those transactions up to `g`.
    pub fn router_generation(&self, kind: RouterKind) -> String {
        self.join(&["router", kind.as_str(), GENERATION_NODE])
    }
    /// `managers/hosts`
    pub fn managers(&self) -> String {
        self.join(&["managers", "hosts"])
    }
    /// `managers/hosts/<host>`
    pub fn manager(&self, host: &HostName) -> String {
        self.join(&["managers", "hosts", host.as_str()])
    }
    /// `managers/leader`
    pub fn manager_leader(&self) -> String {
        self.join(&["managers", "leader"])
    }
    /// `router/<kind>`: the root of one fleet's router configuration.
    pub fn router_config(&self, kind: RouterKind) -> String {
        self.join(&["router", kind.as_str()])
    }
    /// `router/<kind>/<section>`
    pub fn router_section(&self, kind: RouterKind, section: Section) -> String {
        self.join(&["router", kind.as_str(), section.as_str()])
    }
    /// `router/<kind>/<section>/<name>`. Router object names are checked by the routing module; this
    /// refuses anything that is not a single path segment.
    pub fn router_item(&self, kind: RouterKind, section: Section, name: &str) -> String {
        assert_segment(name);
        self.join(&["router", kind.as_str(), section.as_str(), name])
    }
    /// `router/<kind>/pools/<pool>/<host:port>`
    pub fn pool_backend(&self, kind: RouterKind, pool: &str, backend: &str) -> String {
        assert_segment(pool);
        assert_segment(backend);
        self.join(&["router", kind.as_str(), "pools", pool, backend])
    }
    /// `ports/<kind>`
    pub fn stable_ports(&self, kind: RouterKind) -> String {
        self.join(&["ports", kind.as_str()])
    }
    /// `teams/<team>`
    pub fn team(&self, team: &TeamName) -> String {
        self.join(&["teams", team.as_str()])
    }
    /// `teams`
    pub fn teams(&self) -> String {
        self.join(&["teams"])
    }
    /// `locks`
    pub fn locks(&self) -> String {
        self.join(&["locks"])
    }
    /// `locks/<encoded key>`
    pub fn lock(&self, encoded_key: &str) -> String {
        assert_segment(encoded_key);
        self.join(&["locks", encoded_key])
    }
    /// `tasks`
    pub fn tasks(&self) -> String {
        self.join(&["tasks"])
    }
    /// `tasks/<id>`
    pub fn task(&self, id: &str) -> String {
        assert_segment(id);
        self.join(&["tasks", id])
    }
}

/// The name of the generation node under `router/<kind>` (a path relative to that root, as routers see it).
pub const GENERATION_NODE: &str = "generation";

/// True when `s` can be one ZooKeeper path segment of ours: non-empty, at most 255 bytes, printable ASCII
/// without `/`, and not `.` or `..`.
pub fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

fn assert_segment(s: &str) {
    assert!(
        is_segment(s),
        "not a valid ZooKeeper path segment: {s:?} (callers validate names before building paths)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let l = Layout::new(&"us-east".parse().unwrap());
        let app: AppName = "hello".parse().unwrap();
        let env: EnvName = "prod".parse().unwrap();
        assert_eq!(l.app(&app), "/atlantis/us-east/apps/hello");
        assert_eq!(
            l.release(&app, &env),
            "/atlantis/us-east/releases/hello/prod"
        );
        let cid: ContainerId = "hello-1a2b3c4-prod-abc123".parse().unwrap();
        assert_eq!(
            l.instance(&app, &env, &cid),
            "/atlantis/us-east/instances/hello/prod/hello-1a2b3c4-prod-abc123"
        );
        assert_eq!(
            l.supervisor(&"host-1".parse().unwrap()),
            "/atlantis/us-east/supervisors/host-1"
        );
        assert_eq!(
            l.router(
                RouterKind::External,
                &"z1".parse().unwrap(),
                &"r1".parse().unwrap()
            ),
            "/atlantis/us-east/routers/external/z1/r1"
        );
        assert_eq!(
            l.router_item(RouterKind::Internal, Section::Pools, "web"),
            "/atlantis/us-east/router/internal/pools/web"
        );
        assert_eq!(
            l.pool_backend(RouterKind::Internal, "web", "10.0.0.1:8080"),
            "/atlantis/us-east/router/internal/pools/web/10.0.0.1:8080"
        );
        assert_eq!(l.manager_leader(), "/atlantis/us-east/managers/leader");
        assert_eq!(
            l.router_generation(RouterKind::External),
            "/atlantis/us-east/router/external/generation"
        );
        assert_eq!(
            l.router_ack(
                RouterKind::Internal,
                &"z1".parse().unwrap(),
                &"r1".parse().unwrap()
            ),
            "/atlantis/us-east/router_acks/internal/z1/r1"
        );
        assert_eq!(
            l.dependency_grant(&"b-db".parse().unwrap(), &app),
            "/atlantis/us-east/dependency_grants/b-db/hello"
        );
        assert_eq!(
            l.dependency_request(&"b-db".parse().unwrap(), &app),
            "/atlantis/us-east/dependency_requests/b-db/hello"
        );
        assert_eq!(l.lock("hello:prod"), "/atlantis/us-east/locks/hello:prod");
    }

    #[test]
    #[allow(clippy::panic)]
    fn refuses_bad_segments() {
        let l = Layout::with_root("/t");
        for bad in ["", "a/b", "..", ".", "a b"] {
            let r = std::panic::catch_unwind(|| {
                l.router_item(RouterKind::Internal, Section::Rules, bad)
            });
            assert!(r.is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            "internal".parse::<RouterKind>().unwrap(),
            RouterKind::Internal
        );
        assert!("both".parse::<RouterKind>().is_err());
    }
}
