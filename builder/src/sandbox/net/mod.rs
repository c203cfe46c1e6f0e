//! Networked builds (`network = true` in `[build]`, allowed by `allow_network_builds`): a network
//! namespace of the build's own with outbound access only, never the host's namespace.
//!
//! For each networked build the builder, as root, takes a free *slot* `N` (an exclusive `flock` on
//! `/run/atlantis-builder/net/slot-N.lock`, held for the life of the build) and makes:
//! - the namespace `atl-build-N` (`ip netns add`), with its loopback up;
//! - a veth pair: `atlbNh` in the root namespace (IPv6 off, IPv4 forwarding on for that interface
//!   only, strict reverse-path filtering) and `eth0` in the build's namespace, on the `N`th /30 of
//!   the pool (`build_network_pool`): the host end is `.1`, the build `.2`, its default route the
//!   host end;
//! - iptables chains of its own, jumped from the built-in chains for that interface only:
//!   `ATLB-N-FWD` (filter, from `FORWARD`), `ATLB-N-IN` (filter, from `INPUT`) and `ATLB-N-NAT` (nat,
//!   from `POSTROUTING`). Replies come back (conntrack `ESTABLISHED,RELATED`), nothing else goes in;
//!   out, every address of the builder host (`INPUT`, and `--dst-type LOCAL`), every [`DENIED`] range
//!   (loopback, RFC 1918, 100.64/10, link-local, multicast, reserved), the pool itself and the
//!   operator's `build_network_deny` (the cluster's networks, the registry, managers and ZooKeeper)
//!   are refused (`REJECT`, so the build fails fast), and connections that some DNAT rule of the host
//!   would redirect are refused too; the rest is accepted and masqueraded;
//! - a `resolv.conf` naming the resolvers (`build_network_dns`, or the host's resolvers that are not
//!   in a refused range), which the sandbox binds over `/etc/resolv.conf`. Resolvers named in
//!   `build_network_dns` are reachable on port 53 only, even inside a refused range.
//!
//! The sandbox's child joins the namespace with `setns` before it drops to the build uid, and bwrap then
//! keeps it (no `--unshare-net`): the namespace belongs to the host's user namespace, so the build's
//! root, in a user namespace of its own, cannot change its addresses, routes or rules.
//!
//! When the build ends (even when it fails) the jumps, chains, veth and namespace are removed, then the
//! slot's lock released. A builder that died holding slots leaves them unlocked: the next builder that
//! takes such a slot, or [`reap`] (called when `atlantis-builder serve` starts and before every
//! networked build), removes what is left. Names come from the slot number only, never from the app.
//! `ip` and `iptables` are run with argument vectors.

use std::fs::File;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{BuildError, io};

mod plan;

pub use plan::{Cidr, DENIED, NetSettings, Plan};

/// Prefix of the build namespaces: `atl-build-N`.
pub const NETNS_PREFIX: &str = "atl-build-";
/// Where the slot locks live.
const LOCK_DIR: &str = "/run/atlantis-builder/net";
/// At most this many networked builds at once per host (interface names stay under 16 bytes).
pub(crate) const MAX_SLOTS: u32 = 4096;
/// The interface name of the build's end, inside its namespace.
const BUILD_IF: &str = "eth0";

/// The names of slot `n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// The host end of the veth.
    pub link: String,
    /// The filter chain of forwarded traffic.
    pub fwd: String,
    /// The filter chain of traffic to the host.
    pub input: String,
    /// The nat chain.
    pub nat: String,
}

impl Names {
    /// The names of slot `n`.
    pub fn of(n: u32) -> Names {
        Names {
            netns: format!("{NETNS_PREFIX}{n}"),
            link: format!("atlb{n}h"),
            fwd: format!("ATLB-{n}-FWD"),
            input: format!("ATLB-{n}-IN"),
            nat: format!("ATLB-{n}-NAT"),
        }
    }

    /// The slot of a namespace, link or chain name of ours.
    fn slot_of(name: &str) -> Option<u32> {
        let digits = |s: &str| s.parse::<u32>().ok().filter(|n| *n < MAX_SLOTS);
        if let Some(r) = name.strip_prefix(NETNS_PREFIX) {
            return digits(r);
        }
        if let Some(r) = name.strip_prefix("atlb").and_then(|r| r.strip_suffix('h')) {
            return digits(r);
        }
        let r = name.strip_prefix("ATLB-")?;
        let (n, kind) = r.split_once('-')?;
        matches!(kind, "FWD" | "IN" | "NAT")
            .then(|| digits(n))
            .flatten()
    }
}

/// The built-in chains ours are jumped from: (table, chain).
const HOOKS: [(&str, &str); 3] = [
    ("filter", "FORWARD"),
    ("filter", "INPUT"),
    ("nat", "POSTROUTING"),
];

fn run(program: &str, args: &[&str]) -> Result<String, BuildError> {
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| BuildError::Io {
            what: format!(
                "networked builds need {program} (Debian packages iproute2 and iptables)"
            ),
            source: e,
        })?;
    if !out.status.success() {
        return Err(BuildError::Io {
            what: format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            source: std::io::Error::other("the build network setup failed"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ipt(table: &str, args: &[&str]) -> Result<String, BuildError> {
    let mut v = vec!["-w", "-t", table];
    v.extend_from_slice(args);
    run("iptables", &v)
}

fn sysctl(path: &str, value: &str) -> Result<(), BuildError> {
    std::fs::write(path, value).map_err(io(format!("writing {value} to {path}")))
}

/// The exclusive lock of a slot; released when dropped.
#[derive(Debug)]
pub struct SlotLock {
    file: File,
}

impl SlotLock {
    fn path(n: u32) -> PathBuf {
        Path::new(LOCK_DIR).join(format!("slot-{n}.lock"))
    }

    /// The slot's lock when nobody holds it. Lock files are never removed, so a lock always guards
    /// the same file.
    pub fn try_take(n: u32) -> Result<Option<SlotLock>, BuildError> {
        std::fs::create_dir_all(LOCK_DIR).map_err(io(format!("creating {LOCK_DIR}")))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::path(n))
            .map_err(io(format!("opening {}", Self::path(n).display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(SlotLock { file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(BuildError::Io {
                what: format!("locking {}", Self::path(n).display()),
                source: e,
            }),
        }
    }
}

impl Drop for SlotLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// What exists of slot `n`: its namespace, link, chains and jumps, as readable names.
pub fn leftovers(n: u32) -> Result<Vec<String>, BuildError> {
    let names = Names::of(n);
    let mut left = Vec::new();
    if Path::new("/run/netns").join(&names.netns).exists() {
        left.push(format!("namespace {}", names.netns));
    }
    if Path::new("/sys/class/net").join(&names.link).exists() {
        left.push(format!("link {}", names.link));
    }
    for table in ["filter", "nat"] {
        for line in ipt(table, &["-S"])?.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let ours = |c: &str| [&names.fwd, &names.input, &names.nat].contains(&&c.to_owned());
            match w.as_slice() {
                ["-N", c] if ours(c) => left.push(format!("chain {table}/{c}")),
                ["-A", _, ..] if w.windows(2).any(|p| p[0] == "-j" && ours(p[1])) => {
                    left.push(format!("rule {table}: {line}"))
                }
                _ => {}
            }
        }
    }
    Ok(left)
}

/// Removes everything of slot `n` (jumps, chains, the veth, the namespace); succeeds when nothing is
/// left. The caller holds the slot's lock.
fn remove(n: u32) -> Result<(), BuildError> {
    let names = Names::of(n);
    let ours = [&names.fwd, &names.input, &names.nat];
    for (table, hook) in HOOKS {
        for line in ipt(table, &["-S", hook])?.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.first() == Some(&"-A")
                && w.windows(2)
                    .any(|p| p[0] == "-j" && ours.iter().any(|c| c.as_str() == p[1]))
            {
                let mut del = vec!["-D"];
                del.extend_from_slice(&w[1..]);
                let _ = ipt(table, &del);
            }
        }
    }
    for table in ["filter", "nat"] {
        let existing = ipt(table, &["-S"])?;
        for c in ours {
            if existing.lines().any(|l| l == format!("-N {c}")) {
                let _ = ipt(table, &["-F", c]);
                let _ = ipt(table, &["-X", c]);
            }
        }
    }
    if Path::new("/sys/class/net").join(&names.link).exists() {
        let _ = run("ip", &["link", "del", &names.link]);
    }
    if Path::new("/run/netns").join(&names.netns).exists() {
        let _ = run("ip", &["netns", "del", &names.netns]);
    }
    let left = leftovers(n)?;
    if !left.is_empty() {
        return Err(BuildError::Io {
            what: format!("removing the build network of slot {n}: left {left:?}"),
            source: std::io::Error::other("cleanup failed"),
        });
    }
    Ok(())
}

/// Removes what builds that are no longer running left (their slot is not locked): namespaces
/// `atl-build-N`, links `atlbNh`, chains `ATLB-N-*`. Returns the slots cleaned.
pub fn reap() -> Result<Vec<u32>, BuildError> {
    let mut slots = std::collections::BTreeSet::new();
    for dir in ["/run/netns", "/sys/class/net"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Some(n) = e.file_name().to_str().and_then(Names::slot_of) {
                slots.insert(n);
            }
        }
    }
    for table in ["filter", "nat"] {
        for line in ipt(table, &["-S"])?.lines() {
            if let Some(n) = line.strip_prefix("-N ").and_then(Names::slot_of) {
                slots.insert(n);
            }
        }
    }
    let mut cleaned = Vec::new();
    for n in slots {
        if let Some(_lock) = SlotLock::try_take(n)? {
            remove(n)?;
            cleaned.push(n);
        }
    }
    Ok(cleaned)
}

/// Checks `settings` and removes what dead builds left ([`reap`]); for the builder's start. Returns the
/// slots cleaned.
pub fn prepare(settings: &NetSettings) -> Result<Vec<u32>, BuildError> {
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    Plan::new(settings, &host_resolv)?;
    reap()
}

/// Waits (up to `timeout`) until slot `n` is free, then returns what is left of it (for tests and
/// checks: a free slot should have nothing).
pub fn leftovers_of_free_slot(n: u32, timeout: Duration) -> Result<Vec<String>, BuildError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(_lock) = SlotLock::try_take(n)? {
            return leftovers(n);
        }
        if Instant::now() >= deadline {
            return Err(BuildError::Io {
                what: format!("slot {n} stayed busy"),
                source: ErrorKind::TimedOut.into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A build's own network namespace, with everything around it; removed by [`BuildNet::remove`] (or,
/// failing that, when dropped).
#[derive(Debug)]
pub struct BuildNet {
    slot: u32,
    netns: Option<File>,
    lock: Option<SlotLock>,
    /// The build's address.
    pub build_addr: Ipv4Addr,
    /// The host end's address (the build's default gateway).
    pub host_addr: Ipv4Addr,
    /// The build's `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// Warnings for the build log (an uplink without IPv4 forwarding).
    pub warnings: Vec<String>,
}

impl BuildNet {
    /// Makes a network namespace for one build (see the module docs).
    pub fn create(settings: &NetSettings) -> Result<BuildNet, BuildError> {
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let plan = Plan::new(settings, &host_resolv)?;
        reap()?;
        let mut found = None;
        for n in 0..plan.slots() {
            if let Some(lock) = SlotLock::try_take(n)? {
                found = Some((n, lock));
                break;
            }
        }
        let Some((slot, lock)) = found else {
            return Err(BuildError::Io {
                what: format!(
                    "every one of the {} build network slots of {} is in use",
                    plan.slots(),
                    plan.pool
                ),
                source: ErrorKind::ResourceBusy.into(),
            });
        };
        // Leftovers of a builder that died holding this slot.
        remove(slot)?;
        let (host_addr, build_addr) = plan.addresses(slot);
        let mut net = BuildNet {
            slot,
            netns: None,
            lock: Some(lock),
            build_addr,
            host_addr,
            resolv_conf: plan.resolv_conf(),
            warnings: uplink_warnings(),
        };
        // On failure `net` is dropped, which removes what was made.
        net.setup(&plan)?;
        Ok(net)
    }

    fn setup(&mut self, plan: &Plan) -> Result<(), BuildError> {
        let names = Names::of(self.slot);
        let (ns, link) = (names.netns.as_str(), names.link.as_str());
        let host = format!("{}/30", self.host_addr);
        let build = format!("{}/30", self.build_addr);
        run("ip", &["netns", "add", ns])?;
        run(
            "ip",
            &[
                "link", "add", link, "type", "veth", "peer", "name", BUILD_IF, "netns", ns,
            ],
        )?;
        sysctl(&format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "1")?;
        sysctl(&format!("/proc/sys/net/ipv4/conf/{link}/forwarding"), "1")?;
        // Strict reverse-path filtering: only the build's own /30 comes in from it.
        sysctl(&format!("/proc/sys/net/ipv4/conf/{link}/rp_filter"), "1")?;
        run("ip", &["addr", "add", &host, "dev", link])?;
        run("ip", &["link", "set", link, "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        run("ip", &["-n", ns, "addr", "add", &build, "dev", BUILD_IF])?;
        run("ip", &["-n", ns, "link", "set", BUILD_IF, "up"])?;
        let gw = self.host_addr.to_string();
        run("ip", &["-n", ns, "route", "add", "default", "via", &gw])?;

        // The chains first, complete; the jumps last.
        let reject = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"];
        let f = |args: &[&str]| ipt("filter", args);
        f(&["-N", &names.fwd])?;
        f(&["-N", &names.input])?;
        ipt("nat", &["-N", &names.nat])?;
        let fwd = names.fwd.as_str();
        let est = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"];
        f(&[&["-A", fwd, "-o", link][..], &est, &["-j", "ACCEPT"]].concat())?;
        f(&["-A", fwd, "-o", link, "-j", "DROP"])?;
        f(&[
            "-A",
            fwd,
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "DROP",
        ])?;
        f(&[
            &["-A", fwd, "-m", "conntrack", "--ctstate", "DNAT"][..],
            &reject,
        ]
        .concat())?;
        if plan.dns_configured {
            for d in &plan.dns {
                let d = d.to_string();
                for proto in ["udp", "tcp"] {
                    f(&[
                        "-A", fwd, "-d", &d, "-p", proto, "--dport", "53", "-j", "ACCEPT",
                    ])?;
                }
            }
        }
        f(&[
            &["-A", fwd, "-m", "addrtype", "--dst-type", "LOCAL"][..],
            &reject,
        ]
        .concat())?;
        for d in &plan.deny {
            f(&[&["-A", fwd, "-d", &d.to_string()][..], &reject].concat())?;
        }
        f(&["-A", fwd, "-j", "ACCEPT"])?;
        let input = names.input.as_str();
        f(&[
            "-A",
            input,
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])?;
        f(&[&["-A", input][..], &reject].concat())?;
        let src = format!("{}/32", self.build_addr);
        ipt("nat", &["-A", &names.nat, "-s", &src, "-j", "MASQUERADE"])?;

        f(&["-I", "INPUT", "1", "-i", link, "-j", input])?;
        f(&["-I", "FORWARD", "1", "-o", link, "-j", fwd])?;
        f(&["-I", "FORWARD", "1", "-i", link, "-j", fwd])?;
        let sub = format!("{}/30", Ipv4Addr::from(u32::from(self.host_addr) - 1));
        ipt(
            "nat",
            &[
                "-I",
                "POSTROUTING",
                "1",
                "-s",
                &sub,
                "!",
                "-o",
                link,
                "-j",
                &names.nat,
            ],
        )?;

        let path = Path::new("/run/netns").join(ns);
        self.netns = Some(File::open(&path).map_err(io(format!("opening {}", path.display())))?);
        Ok(())
    }

    /// The slot (its names are [`Names::of`] it).
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The namespace's descriptor, for `setns` (open until the build network is removed).
    pub fn netns_fd(&self) -> Option<RawFd> {
        self.netns.as_ref().map(|f| f.as_raw_fd())
    }

    /// Removes the namespace, the veth and the rules, then frees the slot.
    pub fn remove(mut self) -> Result<(), BuildError> {
        self.netns = None;
        let r = remove(self.slot);
        self.lock = None;
        r
    }
}

impl Drop for BuildNet {
    fn drop(&mut self) {
        if self.lock.is_some() {
            self.netns = None;
            if let Err(e) = remove(self.slot) {
                tracing::error!(slot = self.slot, error = %e, "build network left behind");
            }
            self.lock = None;
        }
    }
}

/// A warning per interface of a default route whose IPv4 forwarding is off (replies from the outside
/// that come in there are not forwarded to the build).
fn uplink_warnings() -> Vec<String> {
    let routes = run("ip", &["-4", "route", "show", "default"]).unwrap_or_default();
    let mut out = Vec::new();
    for l in routes.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let Some(dev) = w.windows(2).find(|p| p[0] == "dev").map(|p| p[1]) {
            let f = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/forwarding"))
                .unwrap_or_default();
            if f.trim() == "0" {
                out.push(format!(
                    "IPv4 forwarding is off on {dev} (the default route's interface): replies from \
                     the outside coming in there do not reach the build (docs/builder.md, Network)"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_parsed_back() {
        let n = Names::of(MAX_SLOTS - 1);
        assert!(n.link.len() <= 15, "{}", n.link);
        assert!(n.fwd.len() <= 28 && n.input.len() <= 28 && n.nat.len() <= 28);
        for name in [&n.netns, &n.link, &n.fwd, &n.input, &n.nat] {
            assert_eq!(Names::slot_of(name), Some(MAX_SLOTS - 1), "{name}");
        }
        for other in [
            "atl-build-x",
            "atlb12",
            "ATLB-1-OTHER",
            "DOCKER",
            "atl-build-99999",
        ] {
            assert_eq!(Names::slot_of(other), None, "{other}");
        }
    }
}
