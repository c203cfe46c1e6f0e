//! The control plane's addresses, which every container is refused whatever range they are in (see
//! docs/supervisor.md, "Isolation model"): ZooKeeper has no authentication, and managers, supervisors,
//! routers and the registry are not for apps to call except through a declared dependency.
//!
//! Where they come from:
//! - the ZooKeeper servers of this supervisor's config (`zookeeper.servers`, host names resolved);
//! - every registration under `supervisors/`, `managers/hosts/` and `routers/<kind>/<zone>/`, followed with
//!   one [`TreeCache`] each, so a new registration is refused within a ZooKeeper round trip: the
//!   addresses written in the payload (any string that is an IPv4 address, `address:port` or a URL), and
//!   the host names the payload and the node name give (resolved);
//! - the registry: `docker.registry_auth.server` and the registry host of every image this supervisor
//!   runs ([`ControlPlane::start`] takes them as a watch);
//! - `firewall.control_plane`, names or addresses the operator adds (a registry behind a load balancer).
//!
//! Loopback, unspecified, broadcast and multicast addresses are left out (a container's loopback is its
//! own; the others are refused anyway). Names are resolved in the background (IPv4 only, bounded in
//! time, again every [`RESOLVE_EVERY`]): a literal address is refused at once, a name once it resolves.
//! The set only feeds the firewall ([`crate::firewall::Firewall::set_control_plane`]); a declared
//! dependency still opens exactly its address and port, since a container's own chain accepts it before
//! the shared refusals.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use atlantis_common::zk::layout::RouterKind;
use atlantis_common::zk::{Coord, TreeCache, TreeEvent};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// The longest one resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Something a registration or the config names: an address, or a host name to resolve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// An IPv4 address.
    Addr(Ipv4Addr),
    /// A DNS name.
    Name(String),
}

/// True for addresses worth a rule: not loopback, unspecified, broadcast or multicast.
pub fn worth_refusing(a: Ipv4Addr) -> bool {
    !(a.is_loopback() || a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}

/// True when `s` is a plausible DNS name (letters, digits, `-`, `.`; labels of 1 to 63).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
        })
}

/// `host` or `host:port` (no brackets: IPv6 is out of scope) as a target.
fn host_target(hostport: &str) -> Option<Target> {
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        Some(_) => return None,
        None => hostport,
    };
    if let Ok(a) = host.parse::<Ipv4Addr>() {
        return Some(Target::Addr(a));
    }
    // A bare word is a name only when it is spelt like one and is not a number.
    (is_dns_name(host) && host.parse::<f64>().is_err()).then(|| Target::Name(host.to_owned()))
}

/// What one string of a registration names: an IPv4 address, `address:port`, or the host of a URL.
/// Other strings (zones, versions, free text) name nothing.
pub fn string_target(s: &str) -> Option<Target> {
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Some(Target::Addr(a));
    }
    if let Ok(a) = s.parse::<SocketAddrV4>() {
        return Some(Target::Addr(*a.ip()));
    }
    let (_, rest) = s.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_target(hostport)
}

/// Everything a registration names: every string in its JSON payload that is an address or a URL,
/// the values of `host`/`hostname` fields, and the node's own name (the registering host's name).
pub fn registration_targets(node_name: &str, payload: &[u8]) -> BTreeSet<Target> {
    fn walk(v: &serde_json::Value, key: Option<&str>, out: &mut BTreeSet<Target>) {
        match v {
            serde_json::Value::String(s) => {
                if let Some(t) = string_target(s) {
                    out.insert(t);
                } else if matches!(key, Some("host" | "hostname")) && is_dns_name(s) {
                    out.insert(Target::Name(s.clone()));
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, key, out)),
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| walk(v, Some(k), out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
        walk(&v, None, &mut out);
    }
    if let Some(t) = host_target(node_name) {
        out.insert(t);
    }
    out
}

/// The hosts of a ZooKeeper connect string (`host:port[,host:port...][/chroot]`).
pub fn zk_server_targets(servers: &str) -> Vec<Target> {
    let servers = servers.split('/').next().unwrap_or("");
    servers
        .split(',')
        .filter_map(|s| host_target(s.trim()))
        .collect()
}

/// The registry host of an image reference (`registry.example:5000/apps/web@sha256:...`), as Docker
/// reads it: the first path component when it has a `.` or a `:` or is `localhost`.
pub fn image_registry(image: &str) -> Option<String> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then(|| first.to_owned())
}

/// The address set, kept current in the background.
pub struct ControlPlane {
    rx: watch::Receiver<Option<BTreeSet<Ipv4Addr>>>,
}

impl ControlPlane {
    /// Follows the registrations (when `coord` is given), the `static_targets` of the config and the
    /// registry hosts in `registries`, until `stop`. Must run inside a tokio runtime.
    pub fn start(
        coord: Option<Coord>,
        static_targets: Vec<Target>,
        registries: watch::Receiver<BTreeSet<String>>,
        stop: CancellationToken,
    ) -> ControlPlane {
        let (tx, rx) = watch::channel(None);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let mut trees = 0;
        if let Some(coord) = &coord {
            let l = coord.layout();
            let mut roots = vec![l.supervisors(), l.managers()];
            roots.extend(RouterKind::ALL.iter().map(|k| l.routers(*k)));
            trees = roots.len();
            for (i, root) in roots.into_iter().enumerate() {
                let mut events = TreeCache::start(coord.clone(), &root);
                let ev_tx = ev_tx.clone();
                tokio::spawn(async move {
                    while let Some(ev) = events.recv().await {
                        if ev_tx.send((i, ev)).is_err() {
                            return;
                        }
                    }
                });
            }
        }
        let state = State {
            trees: vec![None; trees],
            static_targets,
            cache: BTreeMap::new(),
            pending: BTreeSet::new(),
        };
        tokio::spawn(run(state, ev_rx, registries, tx, stop));
        ControlPlane { rx }
    }

    /// The addresses now, and every change.
    pub fn subscribe(&self) -> watch::Receiver<Option<BTreeSet<Ipv4Addr>>> {
        self.rx.clone()
    }

    /// Waits (at most `timeout`) until every registration tree was read once and the names known at start
    /// were resolved; returns the set then (what is known so far when the time is up).
    pub async fn ready(&self, timeout: Duration) -> BTreeSet<Ipv4Addr> {
        let mut rx = self.rx.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        let now = rx.borrow().clone();
        now.unwrap_or_default()
    }
}

struct State {
    /// Each tree's nodes (relative path to payload); `None` until its first full read.
    trees: Vec<Option<BTreeMap<String, Vec<u8>>>>,
    static_targets: Vec<Target>,
    /// Resolved names: addresses and when.
    cache: BTreeMap<String, (Vec<Ipv4Addr>, Instant)>,
    /// Names being resolved.
    pending: BTreeSet<String>,
}

impl State {
    fn apply(&mut self, i: usize, ev: TreeEvent) {
        match ev {
            TreeEvent::Reset(all) => {
                self.trees[i] = Some(all.into_iter().map(|(k, n)| (k, n.data)).collect());
            }
            TreeEvent::Upsert { path, node } => {
                if let Some(t) = self.trees[i].as_mut() {
                    t.insert(path, node.data);
                }
            }
            TreeEvent::Remove { path } => {
                if let Some(t) = self.trees[i].as_mut() {
                    t.remove(&path);
                }
            }
        }
    }

    fn targets(&self, registries: &BTreeSet<String>) -> BTreeSet<Target> {
        let mut out: BTreeSet<Target> = self.static_targets.iter().cloned().collect();
        out.extend(registries.iter().filter_map(|r| host_target(r)));
        for tree in self.trees.iter().flatten() {
            for (path, data) in tree {
                // Only leaves are registrations (`routers/<kind>/<zone>` is a folder of them).
                if data.is_empty() {
                    continue;
                }
                let name = path.rsplit('/').next().unwrap_or(path);
                out.extend(registration_targets(name, data));
            }
        }
        out
    }
}

async fn run(
    mut st: State,
    mut events: mpsc::UnboundedReceiver<(usize, TreeEvent)>,
    mut registries: watch::Receiver<BTreeSet<String>>,
    tx: watch::Sender<Option<BTreeSet<Ipv4Addr>>>,
    stop: CancellationToken,
) {
    let (res_tx, mut res_rx) = mpsc::unbounded_channel::<(String, Vec<Ipv4Addr>)>();
    let mut tick = tokio::time::interval(RESOLVE_EVERY / 4);
    loop {
        let targets = st.targets(&registries.borrow());
        let now = Instant::now();
        let mut set = BTreeSet::new();
        let mut unresolved = false;
        for t in &targets {
            match t {
                Target::Addr(a) => {
                    set.insert(*a);
                }
                Target::Name(n) => {
                    match st.cache.get(n) {
                        Some((addrs, _)) => set.extend(addrs.iter().copied()),
                        None => unresolved = true,
                    }
                    let stale = st
                        .cache
                        .get(n)
                        .is_none_or(|(_, at)| now.duration_since(*at) >= RESOLVE_EVERY);
                    if stale && st.pending.insert(n.clone()) {
                        let (n, res_tx) = (n.clone(), res_tx.clone());
                        tokio::spawn(async move {
                            let addrs = resolve(&n).await;
                            let _ = res_tx.send((n, addrs));
                        });
                    }
                }
            }
        }
        set.retain(|a| worth_refusing(*a));
        let complete = st.trees.iter().all(Option::is_some) && !unresolved;
        // Once published, the set is always published (an unresolved new name must not hold back a
        // new literal address).
        if complete || tx.borrow().is_some() {
            tx.send_if_modified(|cur| {
                if cur.as_ref() == Some(&set) {
                    return false;
                }
                tracing::info!(addresses = ?set, "Control-plane addresses refused to containers changed.");
                *cur = Some(set);
                true
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            // Without ZooKeeper there are no trees: only names and registries change.
            ev = events.recv(), if !st.trees.is_empty() => match ev {
                Some((i, ev)) => {
                    st.apply(i, ev);
                    // Take whatever else is queued before recomputing.
                    while let Ok((i, ev)) = events.try_recv() {
                        st.apply(i, ev);
                    }
                }
                None => return,
            },
            r = registries.changed() => if r.is_err() { return },
            Some((name, addrs)) = res_rx.recv() => {
                st.pending.remove(&name);
                if addrs.is_empty() {
                    tracing::debug!(name, "Control-plane name does not resolve (to IPv4).");
                }
                st.cache.insert(name, (addrs, Instant::now()));
            }
            _ = tick.tick() => {}
        }
    }
}

/// The IPv4 addresses of `name` (empty when it does not resolve in time).
async fn resolve(name: &str) -> Vec<Ipv4Addr> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, 0))).await {
        Ok(Ok(addrs)) => {
            let mut v: Vec<Ipv4Addr> = addrs
                .filter_map(|a| match a.ip() {
                    std::net::IpAddr::V4(a) => Some(a),
                    std::net::IpAddr::V6(_) => None,
                })
                .collect();
            v.sort();
            v.dedup();
            v
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Target {
        Target::Addr(s.parse().unwrap())
    }
    fn n(s: &str) -> Target {
        Target::Name(s.into())
    }

    #[test]
    fn strings_name_addresses_and_url_hosts_only() {
        assert_eq!(string_target("198.51.100.4"), Some(a("198.51.100.4")));
        assert_eq!(string_target("198.51.100.4:7070"), Some(a("198.51.100.4")));
        assert_eq!(
            string_target("https://user@198.51.100.4:7070/v1?x"),
            Some(a("198.51.100.4"))
        );
        assert_eq!(
            string_target("http://sup-1.example:7070"),
            Some(n("sup-1.example"))
        );
        for none in ["zone-a", "0.1.0", "1", "free text", "", "http://[::1]:80/"] {
            assert_eq!(string_target(none), None, "{none:?}");
        }
    }

    #[test]
    fn registrations_give_every_address_and_host_name() {
        let router = br#"{"version":1,"host":"rtr-1","zone":"zone-a","status_addr":"0.0.0.0:9090",
            "router_version":"0.1.0","listen":["203.0.113.7:80","203.0.113.8:8080"]}"#;
        let got = registration_targets("rtr-1", router);
        let want: BTreeSet<Target> =
            [n("rtr-1"), a("0.0.0.0"), a("203.0.113.7"), a("203.0.113.8")].into();
        assert_eq!(got, want);
        let manager = br#"{"version":1,"addr":"198.51.100.20:7700","software":"0.1.0"}"#;
        assert!(registration_targets("mgr-a", manager).contains(&a("198.51.100.20")));
        // A payload that is not JSON still names its host.
        assert_eq!(
            registration_targets("h1", b"garbage"),
            [n("h1")].into_iter().collect()
        );
    }

    #[test]
    fn zookeeper_servers_and_registries() {
        assert_eq!(
            zk_server_targets("zk1.example:2181, 203.0.113.9:2181,127.0.0.1:2181/atlantis"),
            vec![n("zk1.example"), a("203.0.113.9"), a("127.0.0.1")]
        );
        assert_eq!(
            image_registry("registry.example:5000/apps/web@sha256:00"),
            Some("registry.example:5000".into())
        );
        assert_eq!(
            image_registry("10.0.0.5:5000/apps/web:1"),
            Some("10.0.0.5:5000".into())
        );
        assert_eq!(image_registry("atlantis-test/busybox:1"), None);
        assert_eq!(image_registry("busybox"), None);
        assert!(!worth_refusing(Ipv4Addr::LOCALHOST) && !worth_refusing(Ipv4Addr::UNSPECIFIED));
        assert!(worth_refusing(Ipv4Addr::new(203, 0, 113, 9)));
    }
}
