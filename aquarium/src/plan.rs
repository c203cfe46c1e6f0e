//! The cluster plan: every name, address and port the aquarium uses, chosen by the first `up` and saved
//! in the data directory, so every later command (and a second `up`) finds the same cluster.
//!
//! Preferred ports are the components' usual ones (ZooKeeper 2181, registry 5000, manager 7700, apps on
//! 8080...); a port already taken by something else on the machine is replaced by a free one. Names of
//! network namespaces and veth interfaces carry an id derived from the data directory, so two aquariums
//! (a developer's and a test's) can run side by side.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::paths::DataDir;

/// The schema version of `cluster.json`.
const PLAN_VERSION: u32 = 1;

/// The whole cluster's layout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    /// Schema version.
    pub version: u32,
    /// Short id (hex) unique to the data directory, used in interface and namespace names.
    pub id: String,
    /// The region name.
    pub region: String,
    /// The environment the sample app is deployed to.
    pub env: String,
    /// The domain app host names end with (`<app>.<env>.<domain>`).
    pub domain: String,
    /// ZooKeeper's client port (on 127.0.0.1).
    pub zk_port: u16,
    /// The registry's port (on the first zone's host address, where engines pull from).
    pub registry_port: u16,
    /// The builder API's port (127.0.0.1).
    pub builder_port: u16,
    /// The manager API's address.
    pub manager_ip: Ipv4Addr,
    /// The manager API's port.
    pub manager_port: u16,
    /// The port external routers serve apps on.
    pub http_port: u16,
    /// The zones, each with one supervisor (and its engine) and two routers.
    pub zones: Vec<ZonePlan>,
}

/// One zone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ZonePlan {
    /// `a`, `b`: the suffix of this zone's component names.
    pub key: String,
    /// The zone name (`zone-a`).
    pub zone: String,
    /// The supervisor's host name (`host-a`).
    pub host: String,
    /// The network namespace of this zone's Docker Engine.
    pub netns: String,
    /// The root namespace's end of the veth pair.
    pub veth_host: String,
    /// The namespace's end.
    pub veth_ns: String,
    /// Address of the root end (the supervisor API and internal router listen here).
    pub host_ip: Ipv4Addr,
    /// Address of the namespace end (container ports are published here).
    pub ns_ip: Ipv4Addr,
    /// The supervisor API port (on `host_ip`).
    pub supervisor_port: u16,
    /// The external router's listen address.
    pub external_ip: Ipv4Addr,
    /// The external router's status port (127.0.0.1).
    pub external_status_port: u16,
    /// The internal router's status port (127.0.0.1); it serves apps on `host_ip`.
    pub internal_status_port: u16,
}

impl ZonePlan {
    /// The /30 of the veth pair.
    pub fn subnet(&self) -> String {
        let o = self.host_ip.octets();
        format!("{}.{}.{}.{}/30", o[0], o[1], o[2], o[3] & !3)
    }

    /// `/run/netns/<netns>`.
    pub fn netns_path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

/// Options that shape a new plan (ignored when one exists).
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Address for the manager API and the first zone's external router (default 127.0.0.1): a VM
    /// forwarding ports sets its own address here.
    pub public_ip: Option<Ipv4Addr>,
}

impl Plan {
    /// Loads the saved plan, if any.
    pub fn load(data: &DataDir) -> anyhow::Result<Option<Plan>> {
        let path = data.plan_file();
        match std::fs::read(&path) {
            Ok(b) => {
                let p: Plan = serde_json::from_slice(&b).map_err(|e| {
                    anyhow::anyhow!("{} is not a valid cluster plan: {e}", path.display())
                })?;
                anyhow::ensure!(
                    p.version == PLAN_VERSION,
                    "{} has plan version {}, this aquarium reads {PLAN_VERSION}; run `aquarium down --purge`",
                    path.display(),
                    p.version
                );
                Ok(Some(p))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Loads the saved plan or fails with a hint.
    pub fn require(data: &DataDir) -> anyhow::Result<Plan> {
        Plan::load(data)?.ok_or_else(|| {
            anyhow::anyhow!(
                "no aquarium in {} (run `aquarium up` first)",
                data.root().display()
            )
        })
    }

    /// Loads the plan, or makes and saves a new one.
    pub fn load_or_create(data: &DataDir, opts: &PlanOptions) -> anyhow::Result<Plan> {
        if let Some(p) = Plan::load(data)? {
            return Ok(p);
        }
        let p = Plan::create(data, opts)?;
        std::fs::create_dir_all(data.root())?;
        let tmp = data.plan_file().with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&p)?)?;
        std::fs::rename(&tmp, data.plan_file())?;
        Ok(p)
    }

    fn create(data: &DataDir, opts: &PlanOptions) -> anyhow::Result<Plan> {
        let id =
            hex::encode(&sha2::Sha256::digest(data.root().display().to_string().as_bytes())[..3]);
        let mut ports = PortPicker::default();
        let public = opts.public_ip.unwrap_or(Ipv4Addr::LOCALHOST);
        let zk_port = ports.pick(2181);
        let registry_port = ports.pick(5000);
        let builder_port = ports.pick(7090);
        let manager_port = ports.pick(7700);
        let http_port = ports.pick(8080);
        let subnets = pick_subnets(2)?;
        let mut zones = Vec::new();
        for (i, (key, (host_ip, ns_ip))) in ["a", "b"].into_iter().zip(subnets).enumerate() {
            let i16 = i as u16;
            zones.push(ZonePlan {
                key: key.into(),
                zone: format!("zone-{key}"),
                host: format!("host-{key}"),
                netns: format!("aq-{id}-{key}"),
                veth_host: format!("aq{id}{key}h"),
                veth_ns: format!("aq{id}{key}n"),
                host_ip,
                ns_ip,
                supervisor_port: ports.pick(7070 + i16),
                external_ip: if i == 0 {
                    public
                } else {
                    Ipv4Addr::new(127, 0, 0, 1 + i as u8)
                },
                external_status_port: ports.pick(8180 + i16),
                internal_status_port: ports.pick(8190 + i16),
            });
        }
        Ok(Plan {
            version: PLAN_VERSION,
            id,
            region: "dev".into(),
            env: "dev".into(),
            domain: "apps.localhost".into(),
            zk_port,
            registry_port,
            builder_port,
            manager_ip: public,
            manager_port,
            http_port,
            zones,
        })
    }

    /// `127.0.0.1:<zk>`.
    pub fn zk_servers(&self) -> String {
        format!("127.0.0.1:{}", self.zk_port)
    }

    /// The registry as engines, the builder and the manager reach it (`<host_ip of zone a>:<port>`).
    pub fn registry_host(&self) -> String {
        format!("{}:{}", self.zones[0].host_ip, self.registry_port)
    }

    /// The manager's base URL.
    pub fn manager_url(&self) -> String {
        let ip = if self.manager_ip.is_unspecified() {
            Ipv4Addr::LOCALHOST
        } else {
            self.manager_ip
        };
        format!("http://{ip}:{}", self.manager_port)
    }

    /// The builder's base URL.
    pub fn builder_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.builder_port)
    }

    /// The host name an app answers to.
    pub fn app_host(&self, app: &str) -> String {
        format!("{app}.{}.{}", self.env, self.domain)
    }

    /// Where a zone's external router serves apps.
    pub fn external_addr(&self, zone: &ZonePlan) -> SocketAddr {
        let ip = if zone.external_ip.is_unspecified() {
            Ipv4Addr::LOCALHOST
        } else {
            zone.external_ip
        };
        SocketAddr::from((ip, self.http_port))
    }
}

/// Hands out preferred ports when they are free and unused by this plan, else free ones.
#[derive(Default)]
struct PortPicker {
    taken: Vec<u16>,
}

impl PortPicker {
    fn pick(&mut self, preferred: u16) -> u16 {
        let p = if !self.taken.contains(&preferred) && port_free(preferred) {
            preferred
        } else {
            loop {
                let p = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .unwrap_or(0);
                if p != 0 && !self.taken.contains(&p) {
                    break p;
                }
            }
        };
        self.taken.push(p);
        p
    }
}

/// True when nothing listens on `port` on any address (binding the wildcard address fails otherwise).
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).is_ok()
}

/// Picks `n` /30 subnets in 10.200.0.0-10.251.255.255 that no interface or route of this machine uses;
/// returns (root end, namespace end) for each.
fn pick_subnets(n: usize) -> anyhow::Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
    let used = crate::net::output("ip", &["-4", "-o", "addr", "show"]).unwrap_or_default()
        + &crate::net::output("ip", &["-4", "route", "show"]).unwrap_or_default();
    let mut seed = {
        let mut b = [0u8; 8];
        use std::io::Read as _;
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = f.read_exact(&mut b);
        }
        u64::from_le_bytes(b)
    };
    let mut out: Vec<(Ipv4Addr, Ipv4Addr)> = Vec::new();
    for _ in 0..1000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (seed >> 33) as u32;
        let b = 200 + (r % 52) as u8;
        let c = ((r >> 8) & 0xff) as u8;
        let d = (((r >> 16) & 0x3f) as u8) * 4;
        let net = format!("10.{b}.{c}.{d}/30");
        let host = Ipv4Addr::new(10, b, c, d + 1);
        let ns = Ipv4Addr::new(10, b, c, d + 2);
        let clash = used.contains(&net)
            || used.contains(&format!(" {host}/"))
            || used.contains(&format!(" {ns}/"))
            || out.iter().any(|(h, _)| *h == host);
        if !clash {
            out.push((host, ns));
            if out.len() == n {
                return Ok(out);
            }
        }
    }
    anyhow::bail!("no free 10.x.y.z/30 subnet found for the zones' network namespaces")
}
