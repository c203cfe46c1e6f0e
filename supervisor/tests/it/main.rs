//! Integration tests of the supervisor against real parts: a dockerd in a network namespace of its own
//! (which plays the supervisor's host: its bridges and iptables rules live and die there), real iptables
//! (nft), a real ZooKeeper, a real Docker registry, and a busybox image built locally.
//!
//! The supervisor runs in this process (its API on 127.0.0.1:0); it reaches the engine through its unix
//! socket and runs iptables inside the namespace (`firewall.netns`). Published ports are bound on the
//! namespace's veth address, which the test reaches from the root namespace.

mod bad_input;
mod cluster;
mod control_plane;
mod dependencies;
mod escape;
mod firewall;
mod hardening;
mod lifecycle;
mod mtls;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use atlantis_common::api::supervisor::{
    ContainerInfo, ContainerSpec, Dependency, ErrorBody, HealthCheck,
};
use atlantis_common::zk::ZkConfig;
use atlantis_supervisor::config::{
    CapacityConfig, DockerConfig, FirewallConfig, LimitsConfig, PortsConfig,
};
use atlantis_supervisor::{App, Config};
use atlantis_testkit::docker::Dockerd;
use atlantis_testkit::process::Guarded;

/// The locally built test image (busybox httpd on 8080 serving /www with /healthz).
pub const IMAGE: &str = "atlantis-test/busybox:1";
/// The cluster token every test uses.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// One supervisor host: an engine in its namespace, a data dir and a token file.
pub struct Host {
    pub docker: Dockerd,
    pub dir: tempfile::TempDir,
    pub name: String,
    pub zone: String,
}

impl Host {
    /// Starts an engine and imports the test image.
    pub fn start(name: &str, zone: &str) -> Host {
        let docker = Dockerd::start();
        docker.import_busybox(IMAGE);
        let dir = tempfile::Builder::new()
            .prefix("atlantis-sup-it-")
            .tempdir()
            .unwrap();
        write_secret(&dir.path().join("token"), &format!("{TOKEN}\n"));
        Host {
            docker,
            dir,
            name: name.into(),
            zone: zone.into(),
        }
    }

    /// The supervisor config for this host.
    pub fn config(&self, zk: Option<ZkConfig>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_url: None,
            host: self.name.parse().unwrap(),
            zone: self.zone.parse().unwrap(),
            region: "test".parse().unwrap(),
            token_file: self.dir.path().join("token"),
            data_dir: self.dir.path().join("data"),
            docker: DockerConfig {
                socket: self.docker.socket(),
                subnet: Ipv4Addr::new(172, 30, 0, 0),
                prefix_len: 24,
                pull_timeout_ms: 30_000,
                ..Default::default()
            },
            capacity: CapacityConfig {
                slots: 4,
                cpu_millis: 2000,
                memory_mb: 512,
            },
            ports: PortsConfig {
                min_port: 41000,
                per_slot: 4,
                publish_ip: self.docker.ns_ip(),
                health_ip: None,
            },
            firewall: FirewallConfig {
                cluster_networks: vec![self.docker.subnet()],
                netns: Some(self.docker.netns_path()),
                ..Default::default()
            },
            limits: LimitsConfig {
                pids: 64,
                stop_timeout_ms: 1000,
                ..Default::default()
            },
            zookeeper: zk,
            orphan_grace_ms: 1000,
            reconcile_interval_ms: 300,
            max_body_bytes: 256 * 1024,
            tls: None,
        }
    }

    /// The filter table of the namespace (`iptables -S`).
    pub fn iptables_rules(&self) -> String {
        self.docker.iptables(&["-S"])
    }

    /// Names of the Atlantis per-container chains in the namespace.
    pub fn atlantis_chains(&self) -> Vec<String> {
        self.iptables_rules()
            .lines()
            .filter_map(|l| l.strip_prefix("-N ATL-"))
            .map(|c| format!("ATL-{c}"))
            .collect()
    }

    /// Names of all containers the engine has (running or not).
    pub fn container_names(&self) -> Vec<String> {
        let out = self
            .docker
            .docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Serves `dir` with busybox httpd on `ip:port`, inside the host's namespace when `in_ns`.
    pub fn http_server(&self, ip: Ipv4Addr, port: u16, in_ns: bool, body: &str) -> Guarded {
        let www = self.dir.path().join(format!("www-{port}"));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), body).unwrap();
        let busybox = atlantis_testkit::require_bin("busybox", "busybox-static");
        let args: Vec<String> = vec![
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            format!("{ip}:{port}"),
            "-h".into(),
            www.display().to_string(),
        ];
        let ns = self.docker.netns_path();
        let g = Guarded::spawn(
            "httpd",
            &busybox,
            &args,
            &self.dir.path().join(format!("httpd-{port}.log")),
            in_ns.then_some(ns.as_path()),
        );
        let url = format!("http://{ip}:{port}/");
        atlantis_testkit::wait_until(Duration::from_secs(10), "dependency httpd", || {
            let mut c = if in_ns {
                self.docker.in_netns("curl")
            } else {
                std::process::Command::new("curl")
            };
            c.args(["-sf", "-m", "2", &url])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        });
        g
    }
}

/// An API client for one supervisor.
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            token: TOKEN.into(),
        }
    }

    pub fn for_app(app: &App) -> Client {
        Client::new(app.addr)
    }

    /// Reconcile passes completed so far (`atlantis_supervisor_reconcile_passes_total`).
    pub async fn reconcile_passes(&self) -> u64 {
        let (status, m) = self.send(reqwest::Method::GET, "/metrics", None).await;
        assert_eq!(status, 200, "{m}");
        m.lines()
            .find_map(|l| l.strip_prefix("atlantis_supervisor_reconcile_passes_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no reconcile pass counter in the metrics:\n{m}"))
    }

    /// Sends a request with the token; returns status and body text.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, String) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(120));
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// Deploys and expects 201.
    pub async fn deploy_ok(&self, spec: &ContainerSpec) -> ContainerInfo {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/v1/containers",
                Some(serde_json::to_string(spec).unwrap()),
            )
            .await;
        assert_eq!(
            status, 201,
            "deploy of {} failed: {body}",
            spec.container_id
        );
        serde_json::from_str(&body).unwrap()
    }

    /// Sends raw JSON to deploy and expects an error with `status` and `code`; returns the message.
    pub async fn deploy_err(&self, body: String, status: u16, code: &str) -> String {
        let (s, text) = self
            .send(reqwest::Method::POST, "/v1/containers", Some(body))
            .await;
        assert_eq!(s, status, "expected {status} {code}, got {s}: {text}");
        let e: ErrorBody = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("error body is not JSON: {text}"));
        assert_eq!(e.code, code, "{text}");
        e.message
    }

    pub async fn list(&self) -> Vec<ContainerInfo> {
        let (s, body) = self
            .send(reqwest::Method::GET, "/v1/containers", None)
            .await;
        assert_eq!(s, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// A spec for the busybox image: `app`, a fresh container ID, port 8080, 32 MiB, 0.2 CPU.
pub fn spec(app: &str, env: &str) -> ContainerSpec {
    let app: atlantis_common::AppName = app.parse().unwrap();
    let env: atlantis_common::EnvName = env.parse().unwrap();
    let sha: atlantis_common::Sha = "0123456789abcdef".parse().unwrap();
    ContainerSpec {
        container_id: atlantis_common::ContainerId::generate(&app, &sha, &env),
        app,
        sha,
        env,
        image: IMAGE.into(),
        cpu_millis: 200,
        memory_mb: 32,
        ports: vec![8080],
        env_vars: BTreeMap::new(),
        config: None,
        dependencies: vec![],
        health: HealthCheck {
            start_timeout_ms: 20_000,
            interval_ms: 500,
            ..Default::default()
        },
        command: None,
        read_only_rootfs: false,
        allow_ping: false,
    }
}

/// A dependency on `ip:port`.
pub fn dep(name: &str, ip: Ipv4Addr, port: u16) -> Dependency {
    Dependency {
        name: name.into(),
        address: ip,
        port,
    }
}

/// GETs `url` from the root namespace with curl; `Some(body)` on a 2xx.
pub fn curl(url: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-sf", "-m", "3", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A ZooKeeper config rooted at a unique path.
pub fn zk_config(zk: &atlantis_testkit::ZooKeeper, root: &str) -> ZkConfig {
    let mut c = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    c.session_timeout = Duration::from_secs(4);
    c.root = Some(root.to_owned());
    c
}

/// A unique suffix for ZooKeeper roots.
pub fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

/// Writes a secret file readable by its owner only (the supervisor refuses a token file others can read).
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Path of a file under the test's data dir.
pub fn data_path(host: &Host, rel: &str) -> PathBuf {
    host.dir.path().join(rel)
}

/// True if `p` exists.
pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Installs the tracing subscriber once (RUST_LOG filters).
pub fn init_tracing() {
    atlantis_common::telemetry::init("supervisor-it");
}
