//! The network of networked builds, checked: the pool of /30 links, the refused destinations, the
//! resolvers (config keys `build_network_*`), and the build's `resolv.conf`.

use std::net::Ipv4Addr;
use std::str::FromStr;

use super::MAX_SLOTS;
use crate::error::BuildError;

/// Destinations a build never reaches, whatever the config says (IPv4; the build has no IPv6 route).
pub const DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The network of networked builds (config keys `build_network_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSettings {
    /// The IPv4 pool the builds' /30 links come from (`build_network_pool`).
    pub pool: String,
    /// More destinations builds never reach, addresses or CIDRs (`build_network_deny`): the cluster's
    /// networks and the registry, manager and ZooKeeper addresses.
    pub deny: Vec<String>,
    /// The resolvers written into the build's `/etc/resolv.conf` (`build_network_dns`); empty: the
    /// host's resolvers (from its `/etc/resolv.conf`) that are outside every refused range.
    pub dns: Vec<String>,
}

impl Default for NetSettings {
    fn default() -> Self {
        NetSettings {
            pool: "10.254.0.0/16".into(),
            deny: Vec::new(),
            dns: Vec::new(),
        }
    }
}

/// An IPv4 network, `a.b.c.d/n` (a plain address is a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The first address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
        let c = Cidr { addr, prefix };
        if u32::from(addr) & !c.mask() != 0 {
            return Err(format!("{s:?} has host bits set (write {})", c.network()));
        }
        Ok(c)
    }
}

impl Cidr {
    fn network(&self) -> Cidr {
        Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }
}

/// [`NetSettings`] checked: the pool, every refused network, the resolvers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The pool of /30 links.
    pub pool: Cidr,
    /// Refused destinations: [`DENIED`], the pool, `build_network_deny`.
    pub deny: Vec<Cidr>,
    /// The resolvers.
    pub dns: Vec<Ipv4Addr>,
    /// Whether `dns` was configured (then reachable on port 53 even inside `deny`).
    pub dns_configured: bool,
}

impl Plan {
    /// Checks `s`, reading the host's resolvers from `host_resolv_conf` when none is configured.
    pub fn new(s: &NetSettings, host_resolv_conf: &str) -> Result<Plan, BuildError> {
        let bad = |key: &str, e: String| BuildError::Request(format!("{key}: {e}"));
        let pool: Cidr = s.pool.parse().map_err(|e| bad("build_network_pool", e))?;
        if !(8..=30).contains(&pool.prefix) {
            return Err(bad(
                "build_network_pool",
                format!("{pool} must be a /8 to /30 (one /30 per build)"),
            ));
        }
        let mut deny: Vec<Cidr> = DENIED
            .iter()
            .map(|d| d.parse().expect("valid built-in range"))
            .collect();
        deny.push(pool);
        for d in &s.deny {
            deny.push(d.parse().map_err(|e| bad("build_network_deny", e))?);
        }
        let mut dns = Vec::new();
        for d in &s.dns {
            let ip: Ipv4Addr = d
                .parse()
                .map_err(|_| bad("build_network_dns", format!("{d:?} is not an IPv4 address")))?;
            let local = ["127.0.0.0/8", "0.0.0.0/8"]
                .iter()
                .any(|n| n.parse::<Cidr>().expect("valid").contains(ip));
            if local || pool.contains(ip) {
                return Err(bad(
                    "build_network_dns",
                    format!("{ip} is not reachable from a build (loopback or the pool)"),
                ));
            }
            dns.push(ip);
        }
        let dns_configured = !dns.is_empty();
        if !dns_configured {
            dns = host_resolv_conf
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some("nameserver"))
                        .then(|| w.next()?.parse::<Ipv4Addr>().ok())
                        .flatten()
                })
                .filter(|ip| !deny.iter().any(|d| d.contains(*ip)))
                .take(3)
                .collect();
        }
        Ok(Plan {
            pool,
            deny,
            dns,
            dns_configured,
        })
    }

    /// How many builds the pool holds at once.
    pub fn slots(&self) -> u32 {
        (1u32 << (30 - self.pool.prefix)).min(MAX_SLOTS)
    }

    /// The host end and the build end of slot `n`'s /30.
    pub fn addresses(&self, slot: u32) -> (Ipv4Addr, Ipv4Addr) {
        let base = u32::from(self.pool.addr) + 4 * slot;
        (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
    }

    /// The build's `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> String {
        let mut s =
            String::from("# Written by the Atlantis builder for this build (docs/builder.md).\n");
        if self.dns.is_empty() {
            s.push_str(
                "# No resolver: the host's are in refused ranges and build_network_dns is empty.\n",
            );
        }
        for d in &self.dns {
            s.push_str(&format!("nameserver {d}\n"));
        }
        s.push_str("options timeout:2 attempts:2\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_contain() {
        let c: Cidr = "10.254.0.0/16".parse().unwrap();
        assert!(c.contains("10.254.3.2".parse().unwrap()));
        assert!(!c.contains("10.253.3.2".parse().unwrap()));
        let one: Cidr = "198.51.100.7".parse().unwrap();
        assert_eq!(one.to_string(), "198.51.100.7/32");
        assert!(one.contains("198.51.100.7".parse().unwrap()));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "x", "::1/128", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn plan_checks_keys_and_picks_public_resolvers() {
        let host = "search x\nnameserver 10.255.255.53\nnameserver 9.9.9.9\nnameserver ::1\n";
        let p = Plan::new(&NetSettings::default(), host).unwrap();
        assert_eq!(p.dns, ["9.9.9.9".parse::<Ipv4Addr>().unwrap()]);
        assert!(!p.dns_configured);
        assert_eq!(p.slots(), MAX_SLOTS);
        assert_eq!(
            p.addresses(3),
            (
                "10.254.0.13".parse().unwrap(),
                "10.254.0.14".parse().unwrap()
            )
        );
        assert!(p.resolv_conf().contains("nameserver 9.9.9.9\n"));
        assert!(p.deny.contains(&"10.254.0.0/16".parse().unwrap()));

        let s = NetSettings {
            pool: "192.0.2.0/28".into(),
            deny: vec!["198.51.100.0/24".into(), "203.0.113.9".into()],
            dns: vec!["10.0.0.2".into()],
        };
        let p = Plan::new(&s, host).unwrap();
        assert_eq!(p.slots(), 4);
        assert!(p.dns_configured);
        assert_eq!(p.dns, ["10.0.0.2".parse::<Ipv4Addr>().unwrap()]);
        assert!(p.deny.contains(&"203.0.113.9/32".parse().unwrap()));
        assert!(p.deny.contains(&"192.0.2.0/28".parse().unwrap()));

        let p = Plan::new(&NetSettings::default(), "nameserver 127.0.0.53\n").unwrap();
        assert!(p.dns.is_empty());
        assert!(p.resolv_conf().contains("No resolver"));

        for (s, key) in [
            (
                NetSettings {
                    pool: "10.0.0.0/31".into(),
                    ..NetSettings::default()
                },
                "build_network_pool",
            ),
            (
                NetSettings {
                    pool: "fd00::/64".into(),
                    ..NetSettings::default()
                },
                "build_network_pool",
            ),
            (
                NetSettings {
                    deny: vec!["10.1.2.3/8".into()],
                    ..NetSettings::default()
                },
                "build_network_deny",
            ),
            (
                NetSettings {
                    dns: vec!["127.0.0.53".into()],
                    ..NetSettings::default()
                },
                "build_network_dns",
            ),
            (
                NetSettings {
                    dns: vec!["resolver.example".into()],
                    ..NetSettings::default()
                },
                "build_network_dns",
            ),
        ] {
            let e = Plan::new(&s, "").unwrap_err().to_string();
            assert!(e.contains(key), "{s:?}: {e}");
        }
    }
}
