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
//!                   -d <addr>/32 -j ATLANTIS-REFUSE               the control plane: ZooKeeper servers,
//!                                                                 registered supervisors, managers, routers,
//!                                                                 the registry (crate::control_plane), when
//!                                                                 not inside a refused network already
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
//! vectors, never a shell. The control-plane addresses change at run time ([`Firewall::set_control_plane`]);
//! a change that refuses more, and a container's dependencies replaced by fewer, cut the connections the
//! new rules refuse at once.
//!
//! Files: this one holds the model (policy, grants, the seam); `render` the rules as text; `iptables`
//! the programs that install them.

use std::net::Ipv4Addr;
use std::str::FromStr;

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::Dependency;
use sha2::{Digest as _, Sha256};

use crate::conntrack::Flow;

mod iptables;
mod render;

pub use iptables::{Iptables, IptablesOptions};
pub use render::{hook_rule, render};

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
pub(crate) const MAX_CUTS: usize = 4096;

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
    /// Control-plane addresses refused whatever their range (sorted, no duplicates): see
    /// [`crate::control_plane`].
    pub control_plane: Vec<Ipv4Addr>,
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
            control_plane: Vec::new(),
            deny_egress,
            grants,
        }
    }

    /// This policy with `addrs` as its control-plane addresses.
    pub fn with_control_plane(&self, addrs: &[Ipv4Addr]) -> Policy {
        let mut control_plane = addrs.to_vec();
        control_plane.sort();
        control_plane.dedup();
        Policy {
            control_plane,
            ..self.clone()
        }
    }

    /// The control-plane addresses that need a rule of their own (not in a refused network already).
    pub fn control_plane_rules(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.control_plane
            .iter()
            .copied()
            .filter(|a| !self.refused.iter().any(|n| in_net(*a, *n)))
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
            || self.control_plane.contains(&flow.dst)
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
    /// Replaces the control-plane addresses refused to every container; true when they changed. They
    /// take effect at the next [`Firewall::sync`] (the caller runs one).
    fn set_control_plane(&self, _addrs: &[Ipv4Addr]) -> bool {
        false
    }
}

/// The chain name of a container.
pub fn chain_name(id: &ContainerId) -> String {
    let digest = Sha256::digest(id.as_str().as_bytes());
    format!("{CHAIN_PREFIX}{}", &hex::encode(digest)[..20])
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
    use super::render::fingerprint;
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
