//! Egress isolation with iptables (see docs/supervisor.md, "Isolation model").
//!
//! Every container gets a chain `ATL-<20 hex of sha256(container ID)>`. The dispatch chain `ATLANTIS`
//! sends each container's packets (matched by its fixed source address on the container network) to its
//! chain; it is hooked FIRST into `INPUT` (packets to any address of the host itself) and into Docker's
//! `DOCKER-USER` (forwarded packets, including those DNAT'd to a published port). The rules apply to
//! every packet a container sends in the original direction of a connection, not only to the first:
//! a connection the rules refuse is cut at its next packet even if it was opened while the rules were
//! missing. A container chain, then the shared chains:
//!
//! ```text
//! ATL-x:            -m conntrack --ctdir REPLY -j ACCEPT          replies on connections made TO it
//!                   -p tcp -m conntrack --ctorigdst <dep>/32 --ctorigdstport <port> -j ACCEPT
//!                                                                 one per declared dependency, as dialled
//!                   -j ATLANTIS-DEFAULT
//! ATLANTIS-DEFAULT: -p <proto> -m conntrack --ctorigdst <a>/32 --ctorigdstport <p> -j ACCEPT
//!                                                                 operator grants (firewall.allow)
//!                   -m conntrack --ctstate DNAT -j ATLANTIS-REFUSE     published ports, any DNAT
//!                   -m addrtype --dst-type LOCAL -j ATLANTIS-REFUSE    every address of this host
//!                   -m addrtype --dst-type BROADCAST|MULTICAST -j ATLANTIS-REFUSE
//!                   -d <net> -j ATLANTIS-REFUSE                   RFC 1918, 100.64/10, 169.254/16,
//!                                                                 cluster networks, the container network
//!                  [-j ATLANTIS-REFUSE]                           only with firewall.egress = "deny"
//! ATLANTIS-REFUSE:  -p tcp -j REJECT --reject-with tcp-reset
//!                   -j REJECT --reject-with icmp-port-unreachable
//! ```
//!
//! Anything not refused falls through to Docker's usual path (public egress). The rules are a pure
//! function of the desired containers and the [`Policy`] ([`render`]); [`Firewall::sync`] installs the
//! whole set in ONE `iptables-restore --noflush` transaction (atomic with the nft backend: no window where
//! a chain is empty) and deletes chains of containers that are gone in the same transaction. A restart
//! therefore rebuilds exactly the same rules. When a repair finds the kernel's rules differ from what was
//! installed last (or at the first pass after a start), the connections the containers opened that the
//! rules now refuse are deleted from conntrack ([`crate::conntrack`]). Programs run with argument
//! vectors, never a shell.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::Dependency;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::conntrack::{self, Flow};

/// The dispatch chain.
pub const DISPATCH: &str = "ATLANTIS";
/// The chain of refusals shared by every container.
pub const DEFAULT_CHAIN: &str = "ATLANTIS-DEFAULT";
/// The chain that rejects (a TCP reset, or ICMP port unreachable): refusals are immediate.
pub const REFUSE_CHAIN: &str = "ATLANTIS-REFUSE";
/// Prefix of per-container chains.
pub const CHAIN_PREFIX: &str = "ATL-";
/// The comment that marks our hooks in `INPUT` and the forward chain.
pub const HOOK_COMMENT: &str = "atlantis-dispatch";
/// Most connections deleted in one repair (the per-packet rules cut the rest at their next packet).
const MAX_CUTS: usize = 4096;

/// Networks every container is refused unless declared, whatever the configuration: the RFC 1918
/// private networks, the shared address space of carrier-grade NAT (RFC 6598) and link-local (where
/// clouds serve instance metadata, 169.254.169.254).
pub const ALWAYS_REFUSED: [(Ipv4Addr, u8); 5] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
];

/// A transport protocol of an operator grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The name iptables and conntrack use.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// An address and port every container may reach (`firewall.allow`, such as the host's DNS resolver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// Protocol.
    pub proto: Proto,
    /// Address.
    pub address: Ipv4Addr,
    /// Port.
    pub port: u16,
}

impl FromStr for Grant {
    type Err = String;

    /// `ADDRESS:PORT/tcp` or `ADDRESS:PORT/udp`.
    fn from_str(s: &str) -> Result<Grant, String> {
        let bad = || format!("{s:?}: expected ADDRESS:PORT/tcp or ADDRESS:PORT/udp");
        let (hostport, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        let (addr, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let address: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || address.is_unspecified() {
            return Err(bad());
        }
        Ok(Grant {
            proto,
            address,
            port,
        })
    }
}

/// What every container is refused unless declared, and what it may reach anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Refused networks: [`ALWAYS_REFUSED`], then the configured cluster networks and the container
    /// network (duplicates removed).
    pub refused: Vec<(Ipv4Addr, u8)>,
    /// Refuse public egress too (`firewall.egress = "deny"`).
    pub deny_egress: bool,
    /// Open to every container.
    pub grants: Vec<Grant>,
}

impl Policy {
    /// The policy refusing [`ALWAYS_REFUSED`] plus `extra` networks.
    pub fn new(extra: &[(Ipv4Addr, u8)], deny_egress: bool, grants: Vec<Grant>) -> Policy {
        let mut refused = ALWAYS_REFUSED.to_vec();
        for n in extra {
            if !refused.contains(n) {
                refused.push(*n);
            }
        }
        let mut grants = grants;
        grants.sort();
        grants.dedup();
        Policy {
            refused,
            deny_egress,
            grants,
        }
    }

    /// True when the rules refuse `flow` for a container with `deps`, on a host with addresses `local`.
    /// The same decisions as the rules of [`render`], for the connections conntrack lists.
    pub fn refuses(&self, deps: &[Dependency], flow: &Flow, local: &[Ipv4Addr]) -> bool {
        let port = flow.dport();
        let dialled = |proto: &str, address: Ipv4Addr, p: u16| {
            flow.proto == proto && flow.dst == address && port == Some(p)
        };
        if deps.iter().any(|d| dialled("tcp", d.address, d.port))
            || self
                .grants
                .iter()
                .any(|g| dialled(g.proto.name(), g.address, g.port))
        {
            return false;
        }
        flow.dnat
            || local.contains(&flow.dst)
            || flow.dst.is_broadcast()
            || flow.dst.is_multicast()
            || self.refused.iter().any(|n| in_net(flow.dst, *n))
            || self.deny_egress
    }
}

/// The nameservers of a `resolv.conf` the policy would keep containers from: the engine forwards the
/// lookups of containers to the host's nameservers from inside each container (loopback ones excepted:
/// the engine replaces those), so a private resolver needs an entry in `firewall.allow`.
pub fn refused_resolvers(policy: &Policy, resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()?.parse::<Ipv4Addr>().ok())?
        })
        .filter(|ns| {
            let lookup = Flow {
                proto: "udp".into(),
                src: Ipv4Addr::UNSPECIFIED,
                dst: *ns,
                ports: Some((0, 53)),
                dnat: false,
            };
            !ns.is_loopback() && policy.refuses(&[], &lookup, &[])
        })
        .collect()
}

fn in_net(a: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    u32::from(a) & crate::config::prefix_mask(len) == u32::from(net)
}

/// What the firewall must allow and refuse for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRules {
    /// The container.
    pub id: ContainerId,
    /// Its address on the container network.
    pub ip: Ipv4Addr,
    /// What it may reach.
    pub dependencies: Vec<Dependency>,
}

/// Why the firewall could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The program could not be run.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The program failed.
    #[error("{program} failed: {stderr}")]
    Failed { program: String, stderr: String },
}

/// The firewall seam.
#[async_trait::async_trait]
pub trait Firewall: Send + Sync {
    /// Makes the installed rules exactly those of `desired` (and removes chains of other containers).
    /// The fast path of deploys and teardowns: it trusts what it installed itself.
    async fn sync(&self, desired: &[ContainerRules]) -> Result<(), FirewallError>;
    /// As [`Firewall::sync`], but re-reads the kernel's rules and re-checks the hooks first: repairs
    /// whatever someone else changed, and cuts the connections opened meanwhile that the rules refuse
    /// (the reconcile loop calls it).
    async fn repair(&self, desired: &[ContainerRules]) -> Result<(), FirewallError> {
        self.sync(desired).await
    }
}

/// The chain name of a container.
pub fn chain_name(id: &ContainerId) -> String {
    let digest = Sha256::digest(id.as_str().as_bytes());
    format!("{CHAIN_PREFIX}{}", &hex::encode(digest)[..20])
}

/// The `iptables-restore` input that installs `desired` under `policy`, given the chains that exist now
/// (stale ones are deleted).
pub fn render(desired: &[ContainerRules], policy: &Policy, existing: &[String]) -> String {
    let mut sorted: Vec<&ContainerRules> = desired.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let wanted: Vec<String> = sorted.iter().map(|c| chain_name(&c.id)).collect();
    let stale: Vec<&String> = existing
        .iter()
        .filter(|c| c.starts_with(CHAIN_PREFIX) && !wanted.contains(c))
        .collect();
    let mut out = String::from("*filter\n");
    for c in [DISPATCH, DEFAULT_CHAIN, REFUSE_CHAIN] {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for c in wanted.iter().chain(stale.iter().copied()) {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    out.push_str(&format!(
        "-A {REFUSE_CHAIN} -p tcp -j REJECT --reject-with tcp-reset\n"
    ));
    out.push_str(&format!(
        "-A {REFUSE_CHAIN} -j REJECT --reject-with icmp-port-unreachable\n"
    ));
    let d = DEFAULT_CHAIN;
    for g in &policy.grants {
        out.push_str(&format!(
            "-A {d} -p {p} -m conntrack --ctorigdst {}/32 --ctorigdstport {} -j ACCEPT\n",
            g.address,
            g.port,
            p = g.proto.name()
        ));
    }
    out.push_str(&format!(
        "-A {d} -m conntrack --ctstate DNAT -j {REFUSE_CHAIN}\n"
    ));
    for t in ["LOCAL", "BROADCAST", "MULTICAST"] {
        out.push_str(&format!(
            "-A {d} -m addrtype --dst-type {t} -j {REFUSE_CHAIN}\n"
        ));
    }
    for (net, len) in &policy.refused {
        out.push_str(&format!("-A {d} -d {net}/{len} -j {REFUSE_CHAIN}\n"));
    }
    if policy.deny_egress {
        out.push_str(&format!("-A {d} -j {REFUSE_CHAIN}\n"));
    }
    for (c, chain) in sorted.iter().zip(&wanted) {
        out.push_str(&format!("-A {DISPATCH} -s {}/32 -j {chain}\n", c.ip));
    }
    for (c, chain) in sorted.iter().zip(&wanted) {
        out.push_str(&format!(
            "-A {chain} -m conntrack --ctdir REPLY -j ACCEPT\n"
        ));
        let mut deps = c.dependencies.clone();
        deps.sort();
        deps.dedup_by(|a, b| a.address == b.address && a.port == b.port);
        for dep in &deps {
            out.push_str(&format!(
                "-A {chain} -p tcp -m conntrack --ctorigdst {}/32 --ctorigdstport {} -j ACCEPT\n",
                dep.address, dep.port
            ));
        }
        out.push_str(&format!("-A {chain} -j {DEFAULT_CHAIN}\n"));
    }
    for c in stale {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// The rule that hooks the dispatch chain into `chain`, as `iptables -S` prints it.
pub fn hook_rule(chain: &str) -> String {
    format!("-A {chain} -m comment --comment {HOOK_COMMENT} -j {DISPATCH}")
}

/// The first rule of `chain` in `iptables -S` output.
fn first_rule<'a>(table: &'a str, chain: &str) -> Option<&'a str> {
    let prefix = format!("-A {chain} ");
    table.lines().find(|l| l.starts_with(&prefix))
}

/// What of the filter table the firewall owns: our chains' rules and whether each hook comes first.
/// Two equal fingerprints mean nothing of ours changed in between.
fn fingerprint(table: &str, hooked: &[&str]) -> String {
    let mut out: String = table
        .lines()
        .filter(|l| l.contains(DISPATCH) || l.contains(CHAIN_PREFIX))
        .flat_map(|l| [l, "\n"])
        .collect();
    for chain in hooked {
        let first = first_rule(table, chain) == Some(hook_rule(chain).as_str());
        out.push_str(&format!("first {chain}: {first}\n"));
    }
    out
}

/// The programs and settings of [`Iptables`].
#[derive(Debug, Clone)]
pub struct IptablesOptions {
    /// `iptables`.
    pub iptables: PathBuf,
    /// `iptables-restore`.
    pub restore: PathBuf,
    /// `conntrack`.
    pub conntrack: PathBuf,
    /// `ip` (lists the host's addresses).
    pub ip: PathBuf,
    /// Run them in this network namespace (`/run/netns/NAME`).
    pub netns: Option<PathBuf>,
    /// The chain forwarded packets pass first (`DOCKER-USER`; `FORWARD` when it does not exist).
    pub forward_chain: String,
    /// What is refused.
    pub policy: Policy,
}

/// The iptables implementation (Debian's default nft backend or legacy: the same commands).
#[derive(Debug, Clone)]
pub struct Iptables {
    opts: IptablesOptions,
    /// Serialises changes and remembers what was installed last (`None`: read the kernel first).
    state: std::sync::Arc<tokio::sync::Mutex<Known>>,
}

#[derive(Debug, Default)]
struct Known {
    /// Chains installed last.
    chains: Option<Vec<String>>,
    /// The hooks were checked.
    hooked: bool,
    /// The fingerprint of the kernel's rules after our last change.
    snapshot: Option<String>,
}

impl Iptables {
    /// A firewall over the given programs; the policy must already include the container network.
    pub fn new(opts: IptablesOptions) -> Iptables {
        Iptables {
            opts,
            state: Default::default(),
        }
    }

    /// The policy it installs.
    pub fn policy(&self) -> &Policy {
        &self.opts.policy
    }

    fn command(&self, program: &PathBuf) -> tokio::process::Command {
        let mut c = match &self.opts.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run(
        &self,
        program: &PathBuf,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, FirewallError> {
        let name = program.display().to_string();
        let mut cmd = self.command(program);
        cmd.args(args);
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(|source| FirewallError::Spawn {
            program: name.clone(),
            source,
        })?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|source| FirewallError::Spawn {
                    program: name.clone(),
                    source,
                })?;
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
                .await
                .map_err(|_| FirewallError::Failed {
                    program: name.clone(),
                    stderr: "timed out after 30 s".into(),
                })?
                .map_err(|source| FirewallError::Spawn {
                    program: name.clone(),
                    source,
                })?;
        if !out.status.success() {
            return Err(FirewallError::Failed {
                program: name,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The filter table (`iptables -S`).
    async fn table(&self) -> Result<String, FirewallError> {
        self.run(&self.opts.iptables, &["-w", "5", "-S"], None)
            .await
    }

    async fn iptables(&self, args: &[&str]) -> Result<String, FirewallError> {
        let mut a = vec!["-w", "5"];
        a.extend_from_slice(args);
        self.run(&self.opts.iptables, &a, None).await
    }

    /// Makes the dispatch hook the first rule of `chain`, exactly once, never leaving the chain without a
    /// hook on the way: a plain hook goes first, then the marked ones are removed, the marked hook is
    /// inserted first, and the plain ones are removed.
    async fn hook(&self, chain: &str, table: &str) -> Result<(), FirewallError> {
        let ours = hook_rule(chain);
        let count = table
            .lines()
            .filter(|l| {
                l.starts_with(&format!("-A {chain} ")) && l.ends_with(&format!("-j {DISPATCH}"))
            })
            .count();
        if first_rule(table, chain) == Some(ours.as_str()) && count == 1 {
            return Ok(());
        }
        let marked = ["-m", "comment", "--comment", HOOK_COMMENT, "-j", DISPATCH];
        self.iptables(&["-I", chain, "1", "-j", DISPATCH]).await?;
        for _ in 0..32 {
            let mut a = vec!["-D", chain];
            a.extend_from_slice(&marked);
            if self.iptables(&a).await.is_err() {
                break;
            }
        }
        let mut a = vec!["-I", chain, "1"];
        a.extend_from_slice(&marked);
        self.iptables(&a).await?;
        for _ in 0..32 {
            if self.iptables(&["-D", chain, "-j", DISPATCH]).await.is_err() {
                break;
            }
        }
        tracing::info!(chain, "Hooked the Atlantis dispatch chain first.");
        Ok(())
    }

    /// The chains the dispatch chain is hooked into, given the table.
    fn hooked_chains(&self, table: &str) -> [String; 2] {
        let f = &self.opts.forward_chain;
        let forward = if f == "FORWARD" || table.lines().any(|l| l == format!("-N {f}")) {
            f.clone()
        } else {
            // No Docker-managed chain (engine without iptables): hook FORWARD itself.
            "FORWARD".to_owned()
        };
        ["INPUT".to_owned(), forward]
    }

    /// Deletes the connections the containers opened that the policy refuses; returns how many.
    async fn cut(&self, desired: &[ContainerRules]) -> Result<usize, FirewallError> {
        if desired.is_empty() {
            return Ok(0);
        }
        let local = conntrack::parse_local_addresses(
            &self
                .run(&self.opts.ip, &["-4", "-o", "addr", "show"], None)
                .await?,
        );
        let mut cut = 0;
        for c in desired {
            let ip = c.ip.to_string();
            let listed = self
                .run(&self.opts.conntrack, &["-L", "-f", "ipv4", "-s", &ip], None)
                .await?;
            for flow in conntrack::parse(&listed) {
                if flow.src != c.ip || !self.opts.policy.refuses(&c.dependencies, &flow, &local) {
                    continue;
                }
                if cut >= MAX_CUTS {
                    tracing::warn!(
                        max = MAX_CUTS,
                        "More refused connections than one repair deletes; the rules cut the rest at their next packet."
                    );
                    return Ok(cut);
                }
                let args = flow.delete_args();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                match self.run(&self.opts.conntrack, &args, None).await {
                    Ok(_) => {
                        cut += 1;
                        tracing::info!(container = %c.id, proto = %flow.proto, dst = %flow.dst, port = ?flow.dport(), "Cut a connection the rules refuse.");
                    }
                    // Gone meanwhile (closed, timed out): nothing to cut.
                    Err(e) => {
                        tracing::debug!(container = %c.id, error = %e, "Connection not deleted.")
                    }
                }
            }
        }
        Ok(cut)
    }

    async fn apply(
        &self,
        known: &mut Known,
        desired: &[ContainerRules],
    ) -> Result<(), FirewallError> {
        let before = match (&known.chains, known.hooked) {
            (Some(_), true) => None,
            _ => Some(self.table().await?),
        };
        let existing = match (&before, known.chains.take()) {
            (Some(t), _) => t
                .lines()
                .filter_map(|l| l.strip_prefix("-N "))
                .map(str::to_owned)
                .collect(),
            (None, Some(c)) => c,
            (None, None) => unreachable!("the table is read when the chains are unknown"),
        };
        let text = render(desired, &self.opts.policy, &existing);
        let drift = before.as_ref().map(|t| {
            let hooked = self.hooked_chains(t);
            let hooked: Vec<&str> = hooked.iter().map(String::as_str).collect();
            known.snapshot.as_deref() != Some(fingerprint(t, &hooked).as_str())
        });
        if let Err(e) = self
            .run(&self.opts.restore, &["-w", "5", "--noflush"], Some(&text))
            .await
        {
            // Unknown kernel state now: read it again next time.
            *known = Known::default();
            return Err(e);
        }
        known.chains = Some(desired.iter().map(|c| chain_name(&c.id)).collect());
        if let Some(t) = &before
            && !known.hooked
        {
            for chain in self.hooked_chains(t) {
                if let Err(e) = self.hook(&chain, t).await {
                    *known = Known::default();
                    return Err(e);
                }
            }
            known.hooked = true;
        }
        let after = match self.table().await {
            Ok(t) => t,
            Err(e) => {
                *known = Known::default();
                return Err(e);
            }
        };
        let hooked = self.hooked_chains(&after);
        let hooked: Vec<&str> = hooked.iter().map(String::as_str).collect();
        known.snapshot = Some(fingerprint(&after, &hooked));
        if drift == Some(true) {
            match self.cut(desired).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    connections = n,
                    "Cut the connections containers opened that the rules refuse (opened while the rules were missing or different)."
                ),
                Err(e) => {
                    // The rules are in place and refuse such connections at their next packet; the
                    // cut is tried again at the next repair.
                    known.snapshot = None;
                    tracing::error!(error = %e, "Cannot cut the connections the rules refuse (is the conntrack program installed?); retrying at the next repair.");
                }
            }
        }
        tracing::debug!(containers = desired.len(), drift, "Firewall in sync.");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Firewall for Iptables {
    async fn sync(&self, desired: &[ContainerRules]) -> Result<(), FirewallError> {
        let mut known = self.state.lock().await;
        self.apply(&mut known, desired).await
    }

    async fn repair(&self, desired: &[ContainerRules]) -> Result<(), FirewallError> {
        let mut known = self.state.lock().await;
        known.chains = None;
        known.hooked = false;
        self.apply(&mut known, desired).await
    }
}

/// No isolation at all (`firewall.enabled = false`, development only).
#[derive(Debug, Default)]
pub struct NoFirewall;

#[async_trait::async_trait]
impl Firewall for NoFirewall {
    async fn sync(&self, _desired: &[ContainerRules]) -> Result<(), FirewallError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(id: &str, ip: [u8; 4], deps: &[([u8; 4], u16)]) -> ContainerRules {
        ContainerRules {
            id: id.parse().unwrap(),
            ip: Ipv4Addr::from(ip),
            dependencies: deps
                .iter()
                .map(|(a, p)| Dependency {
                    name: "d".into(),
                    address: Ipv4Addr::from(*a),
                    port: *p,
                })
                .collect(),
        }
    }

    fn policy() -> Policy {
        Policy::new(
            &[
                (Ipv4Addr::new(10, 0, 0, 0), 8),
                (Ipv4Addr::new(203, 0, 113, 0), 24),
            ],
            false,
            vec!["10.0.0.2:53/udp".parse().unwrap()],
        )
    }

    #[test]
    fn renders_chains_in_a_stable_order_and_drops_stale_ones() {
        let a = rules(
            "b-1234567-prod-aaaaaa",
            [172, 30, 0, 3],
            &[([10, 0, 0, 9], 5432)],
        );
        let b = rules("a-1234567-prod-bbbbbb", [172, 30, 0, 2], &[]);
        let stale = "ATL-00000000000000000000".to_owned();
        let one = render(
            &[a.clone(), b.clone()],
            &policy(),
            &[stale.clone(), "DOCKER".into()],
        );
        let two = render(
            &[b.clone(), a.clone()],
            &policy(),
            std::slice::from_ref(&stale),
        );
        assert_eq!(one, two, "order of the input does not matter");
        let ca = chain_name(&a.id);
        for want in [
            format!("-A ATLANTIS -s 172.30.0.3/32 -j {ca}\n"),
            format!("-A {ca} -m conntrack --ctdir REPLY -j ACCEPT\n"),
            format!(
                "-A {ca} -p tcp -m conntrack --ctorigdst 10.0.0.9/32 --ctorigdstport 5432 -j ACCEPT\n"
            ),
            format!("-A {ca} -j ATLANTIS-DEFAULT\n"),
            "-A ATLANTIS-DEFAULT -p udp -m conntrack --ctorigdst 10.0.0.2/32 --ctorigdstport 53 -j ACCEPT\n".into(),
            "-A ATLANTIS-DEFAULT -m conntrack --ctstate DNAT -j ATLANTIS-REFUSE\n".into(),
            "-A ATLANTIS-DEFAULT -m addrtype --dst-type LOCAL -j ATLANTIS-REFUSE\n".into(),
            "-A ATLANTIS-DEFAULT -d 192.168.0.0/16 -j ATLANTIS-REFUSE\n".into(),
            "-A ATLANTIS-DEFAULT -d 169.254.0.0/16 -j ATLANTIS-REFUSE\n".into(),
            "-A ATLANTIS-DEFAULT -d 100.64.0.0/10 -j ATLANTIS-REFUSE\n".into(),
            "-A ATLANTIS-DEFAULT -d 203.0.113.0/24 -j ATLANTIS-REFUSE\n".into(),
            "-A ATLANTIS-REFUSE -p tcp -j REJECT --reject-with tcp-reset\n".into(),
            format!("-X {stale}\n"),
        ] {
            assert!(one.contains(&want), "missing {want:?} in\n{one}");
        }
        assert!(!one.contains("-X DOCKER"), "{one}");
        assert_eq!(
            one.matches("-d 10.0.0.0/8").count(),
            1,
            "a configured network already refused is not repeated"
        );
        // Public egress stays open by default: the shared chain does not end with a refusal.
        assert!(
            !one.contains("-A ATLANTIS-DEFAULT -j ATLANTIS-REFUSE"),
            "{one}"
        );
        let mut deny = policy();
        deny.deny_egress = true;
        let closed = render(std::slice::from_ref(&a), &deny, &[]);
        let last_default = closed
            .lines()
            .rfind(|l| l.starts_with("-A ATLANTIS-DEFAULT"))
            .unwrap();
        assert_eq!(last_default, "-A ATLANTIS-DEFAULT -j ATLANTIS-REFUSE");
        assert_eq!(chain_name(&a.id).len(), 24);
    }

    fn flow(proto: &str, dst: [u8; 4], dport: Option<u16>, dnat: bool) -> Flow {
        Flow {
            proto: proto.into(),
            src: Ipv4Addr::new(172, 30, 0, 3),
            dst: Ipv4Addr::from(dst),
            ports: dport.map(|d| (40000, d)),
            dnat,
        }
    }

    #[test]
    fn policy_decides_like_the_rules() {
        let p = policy();
        let deps = rules(
            "b-1234567-prod-aaaaaa",
            [172, 30, 0, 3],
            &[([10, 0, 0, 9], 5432)],
        )
        .dependencies;
        let local = [Ipv4Addr::new(198, 51, 100, 1)];
        let refused = |f: &Flow| p.refuses(&deps, f, &local);
        assert!(!refused(&flow("tcp", [10, 0, 0, 9], Some(5432), false)));
        assert!(
            !refused(&flow("tcp", [10, 0, 0, 9], Some(5432), true)),
            "a dependency on a published port"
        );
        assert!(
            refused(&flow("tcp", [10, 0, 0, 9], Some(5433), false)),
            "another port of the dependency"
        );
        assert!(
            refused(&flow("udp", [10, 0, 0, 9], Some(5432), false)),
            "dependencies are TCP"
        );
        assert!(
            !refused(&flow("udp", [10, 0, 0, 2], Some(53), false)),
            "a grant"
        );
        assert!(
            refused(&flow("tcp", [10, 0, 0, 2], Some(53), false)),
            "a grant is per protocol"
        );
        assert!(
            refused(&flow("tcp", [198, 51, 100, 1], Some(7070), false)),
            "the host itself"
        );
        assert!(
            refused(&flow("tcp", [93, 184, 216, 34], Some(41000), true)),
            "any DNAT"
        );
        assert!(refused(&flow("tcp", [169, 254, 169, 254], Some(80), false)));
        assert!(refused(&flow("tcp", [192, 168, 1, 1], Some(80), false)));
        assert!(refused(&flow("tcp", [172, 16, 0, 1], Some(80), false)));
        assert!(refused(&flow("tcp", [100, 64, 0, 1], Some(80), false)));
        assert!(
            refused(&flow("tcp", [203, 0, 113, 9], Some(80), false)),
            "a cluster network"
        );
        assert!(refused(&flow("udp", [255, 255, 255, 255], Some(67), false)));
        assert!(refused(&flow("udp", [239, 1, 1, 1], Some(5000), false)));
        assert!(
            !refused(&flow("tcp", [93, 184, 216, 34], Some(443), false)),
            "public egress is open"
        );
        assert!(!refused(&flow("icmp", [93, 184, 216, 34], None, false)));
        let mut deny = p.clone();
        deny.deny_egress = true;
        assert!(deny.refuses(
            &deps,
            &flow("tcp", [93, 184, 216, 34], Some(443), false),
            &local
        ));
        assert!(!deny.refuses(
            &deps,
            &flow("tcp", [10, 0, 0, 9], Some(5432), false),
            &local
        ));
    }

    #[test]
    fn private_resolvers_are_reported() {
        let conf = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 1.1.1.1\nnameserver fe80::1\nsearch example\n";
        let p = Policy::new(&[], false, vec!["10.0.0.3:53/udp".parse().unwrap()]);
        assert_eq!(
            refused_resolvers(&p, conf),
            vec![Ipv4Addr::new(10, 0, 0, 2)]
        );
    }

    #[test]
    fn grants_parse_strictly() {
        let g: Grant = "10.0.0.2:53/udp".parse().unwrap();
        assert_eq!(
            (g.proto, g.address, g.port),
            (Proto::Udp, Ipv4Addr::new(10, 0, 0, 2), 53)
        );
        for bad in [
            "10.0.0.2:53",
            "10.0.0.2/udp",
            "10.0.0.2:0/tcp",
            "x:53/tcp",
            "10.0.0.2:53/icmp",
            "0.0.0.0:53/tcp",
        ] {
            assert!(bad.parse::<Grant>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_sees_our_rules_and_hook_order() {
        let t1 = format!(
            "-P INPUT ACCEPT\n-N ATLANTIS\n{}\n-A INPUT -j ACCEPT\n-A ATLANTIS -s 172.30.0.2/32 -j ATL-x\n",
            hook_rule("INPUT")
        );
        let t2 = format!(
            "-P INPUT ACCEPT\n-N ATLANTIS\n-A INPUT -j ACCEPT\n{}\n-A ATLANTIS -s 172.30.0.2/32 -j ATL-x\n",
            hook_rule("INPUT")
        );
        assert_ne!(fingerprint(&t1, &["INPUT"]), fingerprint(&t2, &["INPUT"]));
        let t3 = t1.replace("-A INPUT -j ACCEPT\n", "");
        assert_eq!(fingerprint(&t1, &["INPUT"]), fingerprint(&t3, &["INPUT"]));
        assert_ne!(
            fingerprint(&t1, &["INPUT"]),
            fingerprint(
                &t1.replace("-A ATLANTIS -s 172.30.0.2/32 -j ATL-x\n", ""),
                &["INPUT"]
            )
        );
    }
}
