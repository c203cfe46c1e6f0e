//! The cluster's components: how each is started (program, arguments, generated config), where it
//! listens, and how its health is probed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::Digest as _;

use crate::health;
use crate::paths::DataDir;
use crate::plan::{Plan, ZonePlan};
use crate::process::Spec;

/// Where the workspace binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// The directory holding `atlantis-manager`, `atlantis-supervisor`...
    pub dir: PathBuf,
}

/// The binaries every cluster needs.
pub const BINARIES: &[&str] = &[
    "atlantis-manager",
    "atlantis-supervisor",
    "atlantis-router",
    "atlantis-registry",
    "atlantis-builder",
];

impl Bins {
    /// The path of one binary.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Fails naming every missing binary.
    pub fn check(&self) -> anyhow::Result<()> {
        let missing: Vec<&str> = BINARIES
            .iter()
            .copied()
            .filter(|b| !self.bin(b).is_file())
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "missing binaries in {}: {} (build them with `cargo build --release --bins`, or give --bin-dir)",
            self.dir.display(),
            missing.join(", ")
        );
        Ok(())
    }
}

/// How a component's health is probed.
#[derive(Debug, Clone)]
pub enum Health {
    /// ZooKeeper `ruok`.
    Zk(SocketAddr),
    /// `GET url` answers 200 (with the token in this file, if any).
    Http {
        /// The URL.
        url: String,
        /// A file holding a bearer token.
        token_file: Option<PathBuf>,
    },
    /// The router's status port answers HTTP at all while it has no config (then 503), 200 after.
    Router(String),
    /// Docker `/_ping`.
    Docker(PathBuf),
}

impl Health {
    /// Probes once: `Ok(detail)` or `Err(why)`.
    pub async fn probe(&self, http: &reqwest::Client) -> Result<String, String> {
        match self {
            Health::Zk(a) => health::zk_ok(*a).await.map(|()| "imok".into()),
            Health::Docker(s) => health::docker_ok(s).await.map(|()| "ping ok".into()),
            Health::Http { url, token_file } => {
                let token = token_file
                    .as_ref()
                    .and_then(|f| std::fs::read_to_string(f).ok())
                    .map(|t| t.trim().to_owned());
                match health::http_status(http, url, token.as_deref()).await? {
                    200 => Ok("200".into()),
                    s => Err(format!("{url} answered {s}")),
                }
            }
            Health::Router(url) => match health::http_status(http, url, None).await? {
                200 => Ok("200".into()),
                503 => Ok("503 (no routes yet)".into()),
                s => Err(format!("{url} answered {s}")),
            },
        }
    }
}

/// One component of the cluster.
#[derive(Debug, Clone)]
pub struct Component {
    /// Its name (`zookeeper`, `dockerd-a`, `router-external-b`...), used for logs and pid files.
    pub name: String,
    /// How it is started.
    pub spec: Spec,
    /// Where it listens (for `status` and for the `down` check).
    pub ports: Vec<SocketAddr>,
    /// How its health is probed.
    pub health: Health,
    /// The zone it belongs to, if any.
    pub zone: Option<String>,
    /// Seconds to wait for it to become healthy.
    pub start_timeout_secs: u64,
}

impl Component {
    /// The argument that identifies this component's process: the first one naming a path under the
    /// data directory (its config file, or the engine's socket).
    pub fn marker(&self, data: &DataDir) -> String {
        let root = data.root().display().to_string();
        self.spec
            .args
            .iter()
            .find(|a| a.contains(&root))
            .cloned()
            .unwrap_or_default()
    }
}

/// Every component in start order.
pub fn all(plan: &Plan, data: &DataDir, bins: &Bins) -> anyhow::Result<Vec<Component>> {
    let java = which("java").unwrap_or_else(|| PathBuf::from("/usr/bin/java"));
    let dockerd = which("dockerd").unwrap_or_else(|| PathBuf::from("/usr/sbin/dockerd"));
    let zk_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, plan.zk_port));
    let registry_addr: SocketAddr = plan.registry_host().parse()?;
    let builder_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, plan.builder_port));
    let manager_addr = SocketAddr::from((plan.manager_ip, plan.manager_port));
    let cwd = data.root().to_owned();
    let spec = |program: &Path, args: Vec<String>, netns: Option<PathBuf>| Spec {
        program: program.to_owned(),
        args,
        env: vec![("RUST_LOG".into(), "info".into())],
        netns,
        cwd: cwd.clone(),
    };
    let mut v = vec![
        Component {
            name: "zookeeper".into(),
            spec: spec(
                &java,
                vec![
                    "-Xmx256m".into(),
                    "-XX:+UseSerialGC".into(),
                    "-XX:TieredStopAtLevel=1".into(),
                    "-cp".into(),
                    "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar".into(),
                    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn".into(),
                    "-Dzookeeper.admin.enableServer=false".into(),
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
                    data.config("zookeeper", "cfg").display().to_string(),
                ],
                None,
            ),
            ports: vec![zk_addr],
            health: Health::Zk(zk_addr),
            zone: None,
            start_timeout_secs: 60,
        },
        Component {
            name: "registry".into(),
            spec: spec(
                &bins.bin("atlantis-registry"),
                config_arg(data, "registry"),
                None,
            ),
            ports: vec![registry_addr],
            health: Health::Http {
                url: format!("http://{registry_addr}/healthz"),
                token_file: None,
            },
            zone: None,
            start_timeout_secs: 30,
        },
        Component {
            name: "builder".into(),
            spec: spec(
                &bins.bin("atlantis-builder"),
                std::iter::once("serve".to_owned())
                    .chain(config_arg(data, "builder"))
                    .collect(),
                None,
            ),
            ports: vec![builder_addr],
            health: Health::Http {
                url: format!("http://{builder_addr}/healthz"),
                token_file: None,
            },
            zone: None,
            start_timeout_secs: 30,
        },
    ];
    for z in &plan.zones {
        let dir = data.dir(&format!("dockerd-{}", z.key));
        v.push(Component {
            name: format!("dockerd-{}", z.key),
            spec: spec(
                &dockerd,
                vec![
                    "--data-root".into(),
                    dir.join("data").display().to_string(),
                    "--exec-root".into(),
                    dir.join("exec").display().to_string(),
                    "-H".into(),
                    format!("unix://{}", docker_socket(data, z).display()),
                    "--pidfile".into(),
                    dir.join("engine.pid").display().to_string(),
                    "--bip".into(),
                    "172.29.0.1/24".into(),
                    "--insecure-registry".into(),
                    plan.registry_host(),
                    // Container root is not host root (ensure_userns_remap makes its ids).
                    "--userns-remap".into(),
                    "default".into(),
                ],
                Some(z.netns_path()),
            ),
            ports: vec![],
            health: Health::Docker(docker_socket(data, z)),
            zone: Some(z.zone.clone()),
            start_timeout_secs: 60,
        });
    }
    for z in &plan.zones {
        let addr = SocketAddr::from((z.host_ip, z.supervisor_port));
        v.push(Component {
            name: format!("supervisor-{}", z.key),
            spec: spec(
                &bins.bin("atlantis-supervisor"),
                config_arg(data, &format!("supervisor-{}", z.key)),
                None,
            ),
            ports: vec![addr],
            health: Health::Http {
                url: format!("https://{addr}/healthz"),
                token_file: None,
            },
            zone: Some(z.zone.clone()),
            start_timeout_secs: 60,
        });
    }
    v.push(Component {
        name: "manager".into(),
        spec: spec(
            &bins.bin("atlantis-manager"),
            config_arg(data, "manager"),
            None,
        ),
        ports: vec![manager_addr],
        health: Health::Http {
            url: format!("{}/healthz", plan.manager_url()),
            token_file: None,
        },
        zone: None,
        start_timeout_secs: 60,
    });
    for z in &plan.zones {
        for kind in ["external", "internal"] {
            let status_port = if kind == "external" {
                z.external_status_port
            } else {
                z.internal_status_port
            };
            let status = SocketAddr::from((Ipv4Addr::LOCALHOST, status_port));
            let mut ports = vec![status];
            if kind == "external" {
                ports.push(plan.external_addr(z));
            }
            v.push(Component {
                name: router_name(kind, z),
                spec: spec(
                    &bins.bin("atlantis-router"),
                    config_arg(data, &router_name(kind, z)),
                    None,
                ),
                ports,
                health: Health::Router(format!("http://{status}/healthz")),
                zone: Some(z.zone.clone()),
                start_timeout_secs: 30,
            });
        }
    }
    Ok(v)
}

/// `router-<kind>-<zone key>`.
pub fn router_name(kind: &str, z: &ZonePlan) -> String {
    format!("router-{kind}-{}", z.key)
}

/// The unix socket of a zone's engine.
pub fn docker_socket(data: &DataDir, z: &ZonePlan) -> PathBuf {
    data.dir(&format!("dockerd-{}", z.key)).join("docker.sock")
}

fn config_arg(data: &DataDir, name: &str) -> Vec<String> {
    vec![
        "--config".into(),
        data.config(name, "toml").display().to_string(),
    ]
}

/// Finds a program on `PATH` (and in the sbin directories, which a non-login root shell may lack).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// A TOML string literal (JSON string escapes are valid TOML basic-string escapes).
fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("a string serialises")
}

fn qp(p: &Path) -> String {
    q(p.display().to_string())
}

/// Writes every generated config file.
pub fn write_configs(plan: &Plan, data: &DataDir) -> anyhow::Result<()> {
    ensure_ca(plan, data)?;
    std::fs::create_dir_all(data.root().join("etc"))?;
    let zk_section = format!(
        "[zookeeper]\nservers = {}\nregion = {}\nsession_timeout_ms = 10000\n",
        q(plan.zk_servers()),
        q(&plan.region)
    );
    // Configs name secret files: owner only.
    let write = |name: &str, ext: &str, text: String| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let p = data.config(name, ext);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    };
    let secret = |path: PathBuf| -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    };
    let sha256 = |s: &str| hex::encode(sha2::Sha256::digest(s.as_bytes()));
    let puller_pw = secret(data.registry_password("puller"))?;
    // The manager signs registry tokens with this seed; the registry checks them with its public key.
    let token_key = registry_token_key(data);
    let token_public = registry_public_key(&secret(token_key.clone())?)?;
    let zk_data = data.dir("zookeeper");
    std::fs::create_dir_all(&zk_data)?;
    write(
        "zookeeper",
        "cfg",
        format!(
            "tickTime=500\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,stat,mntr,conf\nmaxSessionTimeout=60000\nautopurge.snapRetainCount=3\n\
             autopurge.purgeInterval=1\n",
            zk_data.display(),
            plan.zk_port
        ),
    )?;
    write(
        "registry",
        "toml",
        format!(
            "listen = {}\n\n[storage]\nkind = \"filesystem\"\nroot = {}\n\n\
             [[auth.users]]\nname = \"puller\"\npassword_sha256 = {}\n\n\
             [[auth.access]]\nprefix = \"apps/\"\npull = [\"*\"]\npush = []\n\n\
             [auth.token]\nrealm = {}\npublic_key = {}\nadvertise = false\n",
            q(plan.registry_host()),
            qp(&data.dir("registry")),
            q(sha256(&puller_pw)),
            q(format!("{}/v1/registry/token", plan.manager_url())),
            q(&token_public),
        ),
    )?;
    std::fs::create_dir_all(data.apps())?;
    write(
        "builder",
        "toml",
        format!(
            "listen = {}\nregistry = {}\ncache_dir = {}\nallowed_dirs = [{}]\n",
            q(format!("127.0.0.1:{}", plan.builder_port)),
            q(plan.registry_host()),
            qp(&data.dir("builder").join("cache")),
            qp(&data.apps()),
        ),
    )?;
    let networks: Vec<String> = plan.zones.iter().map(|z| q(z.subnet())).collect();
    for z in &plan.zones {
        write(
            &format!("supervisor-{}", z.key),
            "toml",
            format!(
                "listen = {listen}\nhost = {host}\nzone = {zone}\nregion = {region}\ntoken_file = {token}\n\
                 data_dir = {dir}\norphan_grace_ms = 60000\nreconcile_interval_ms = 5000\n\n\
                 [docker]\nsocket = {socket}\nsubnet = \"172.30.0.0\"\nprefix_len = 24\npull_timeout_ms = 120000\n\n\
                 [docker.registry_auth]\nserver = {registry}\nusername = \"puller\"\npassword_file = {puller}\n\n\
                 [capacity]\nslots = 8\ncpu_millis = 4000\nmemory_mb = 2048\n\n\
                 [ports]\nmin_port = 42000\nper_slot = 4\npublish_ip = {publish}\n\n\
                 [firewall]\ncluster_networks = [{networks}]\nnetns = {netns}\n\n\
                 [limits]\nstop_timeout_ms = 2000\n\n\
                 [tls]\ncert_file = {cert}\nkey_file = {cert_key}\nclient_ca_file = {ca}\n\n{zk_section}",
                listen = q(format!("{}:{}", z.host_ip, z.supervisor_port)),
                host = q(&z.host),
                zone = q(&z.zone),
                region = q(&plan.region),
                token = qp(&data.cluster_token()),
                dir = qp(&data.dir(&format!("supervisor-{}", z.key))),
                socket = qp(&docker_socket(data, z)),
                publish = q(z.ns_ip.to_string()),
                networks = networks.join(", "),
                netns = qp(&z.netns_path()),
                registry = q(plan.registry_host()),
                puller = qp(&data.registry_password("puller")),
                cert = qp(&data.ca_dir().join("server.pem")),
                cert_key = qp(&data.ca_dir().join("server-key.pem")),
                ca = qp(&data.ca_dir().join("ca.pem")),
            ),
        )?;
    }
    let auth = format!(
        "\n[auth]\nadmin_token_file = {}\n\n[auth.registry]\nkey_file = {}\n",
        qp(&data.admin_token()),
        qp(&token_key)
    );
    write(
        "manager",
        "toml",
        format!(
            "listen = {listen}\nhost = \"aquarium-manager\"\ndata_dir = {dir}\nsecret_key_file = {key}\n\
             supervisor_token_file = {token}\n\n[registry]\nurl = {registry}\nuser = \"puller\"\npassword_file = {puller}\n\n\
             [deploy]\nswitch_wait_ms = 15000\ndrain_ms = 2000\nstart_timeout_ms = 120000\n\n\
             [supervisor_tls]\nca_file = {ca}\ncert_file = {client}\nkey_file = {client_key}\n\n{zk_section}{auth}",
            listen = q(format!("{}:{}", plan.manager_ip, plan.manager_port)),
            dir = qp(&data.dir("manager")),
            key = qp(&data.secret_key()),
            token = qp(&data.cluster_token()),
            registry = q(format!("http://{}", plan.registry_host())),
            puller = qp(&data.registry_password("puller")),
            ca = qp(&data.ca_dir().join("ca.pem")),
            client = qp(&data.ca_dir().join("client.pem")),
            client_key = qp(&data.ca_dir().join("client-key.pem")),
        ),
    )?;
    for z in &plan.zones {
        for (kind, status, ip) in [
            ("external", z.external_status_port, z.external_ip),
            ("internal", z.internal_status_port, z.host_ip),
        ] {
            let name = router_name(kind, z);
            std::fs::create_dir_all(data.dir(&name))?;
            write(
                &name,
                "toml",
                format!(
                    "status_addr = {status}\nlisten_ip = {ip}\nkind = {kind}\nzone = {zone}\nhost = {host}\n\
                     snapshot_path = {snap}\n\n{zk_section}",
                    status = q(format!("127.0.0.1:{status}")),
                    ip = q(ip.to_string()),
                    kind = q(kind),
                    zone = q(&z.zone),
                    host = q(&name),
                    snap = qp(&data.dir(&name).join("snapshot.json")),
                ),
            )?;
        }
    }
    Ok(())
}

/// The seed of the manager's registry token key (`[auth.registry] key_file`): the builder pushes with
/// the tokens it signs, scoped to one app (`POST /v1/apps/{app}/build-token`).
pub fn registry_token_key(data: &DataDir) -> PathBuf {
    data.secrets().join("registry-token.key")
}

/// The Ed25519 public key (hex) of a registry token seed, as `atlantis-manager registry-public-key`
/// prints it.
fn registry_public_key(seed_hex: &str) -> anyhow::Result<String> {
    use ring::signature::KeyPair as _;
    let seed = hex::decode(seed_hex.trim()).context("the registry token key is not hex")?;
    let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|e| anyhow::anyhow!("the registry token key: {e}"))?;
    Ok(hex::encode(key.public_key().as_ref()))
}

/// Creates the secrets (0600 files in a 0700 folder) that are missing: the cluster token, the
/// manager's sealing key, the registry password of the pullers and the registry token key, 32 random
/// bytes each, hex.
/// The development CA for mutual TLS between the manager and the supervisors: made once, and again only
/// when the supervisors' addresses (the server certificate's names) change.
fn ensure_ca(plan: &Plan, data: &DataDir) -> anyhow::Result<()> {
    let dir = data.ca_dir();
    let names: Vec<String> = plan.zones.iter().map(|z| z.host_ip.to_string()).collect();
    let stamp = dir.join("names");
    let want = names.join("\n");
    if dir.join("ca.pem").exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&want)
    {
        return Ok(());
    }
    atlantis_common::tls::dev_ca(&dir, &names).context("generating the development CA")?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

/// Makes what `dockerd --userns-remap=default` needs, when missing: the `dockremap` system user and its
/// `/etc/subuid` and `/etc/subgid` ranges (65536 ids from 100000), so the zones' engines, started in
/// parallel, do not race to create them. Idempotent; see docs/operations.md.
pub fn ensure_userns_remap() -> anyhow::Result<()> {
    let known = std::process::Command::new("getent")
        .args(["passwd", "dockremap"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !known {
        let st = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "dockremap",
            ])
            .status()
            .context("running useradd")?;
        anyhow::ensure!(st.success(), "useradd dockremap failed ({st})");
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("dockremap:")) {
            continue;
        }
        let mut t = text;
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        t.push_str("dockremap:100000:65536\n");
        let tmp = format!("{file}.aquarium-tmp");
        std::fs::write(&tmp, t).with_context(|| format!("writing {tmp}"))?;
        std::fs::rename(&tmp, file).with_context(|| format!("replacing {file}"))?;
    }
    Ok(())
}

pub fn ensure_secrets(data: &DataDir) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let dir = data.secrets();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    for f in [
        data.cluster_token(),
        data.secret_key(),
        data.registry_password("puller"),
        registry_token_key(data),
    ] {
        if f.exists() {
            continue;
        }
        let mut b = [0u8; 32];
        use std::io::{Read as _, Write as _};
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&f)
            .with_context(|| format!("creating {}", f.display()))?;
        file.write_all(hex::encode(b).as_bytes())?;
    }
    Ok(())
}
