//! The HA cluster: a three-node ZooKeeper ensemble, three supervisors (two in zone-a, one in zone-b) on
//! dockerd in network namespaces, the registry, a real router, and managers run as child processes of
//! their real binary so that they can be killed with SIGKILL.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atlantis_common::api::manager::{TaskState, TaskStatus};
use atlantis_common::zk::{Coord, RouterKind, ZkConfig};
use atlantis_testkit::load::Load;
use atlantis_testkit::{Ensemble, eventually};

use crate::support::{self, Host, Registry, Router, TOKEN};

/// A manager child process.
pub struct Manager {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// The cluster CA and this manager's client certificate and key (mutual TLS to supervisors).
    ca: atlantis_common::tls::DevCa,
}

impl Manager {
    fn config(&self, zk: &ZkConfig, registry: std::net::SocketAddr) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let key = self.dir.join("secret.key");
        std::fs::write(&key, "42".repeat(32)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        atlantis_testkit::write_secret(&self.dir.join("token"), TOKEN);
        let cfg = format!(
            r#"listen = "127.0.0.1:{port}"
host = "{name}"
database_url = "sqlite://{history}"
secret_key_file = "{key}"
supervisor_token_file = "{token}"

[zookeeper]
servers = "{servers}"
region = "test"
root = "{root}"
session_timeout_ms = 6000

[registry]
url = "http://{registry}"
image_ref = "tag"

[auth]
key_file = "{shared}/auth.key"
admin_token_file = "{shared}/admin.token"

[supervisor_tls]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{cert_key}"

[deploy]
switch_wait_ms = 8000
drain_ms = 1000
start_timeout_ms = 60000

[ha]
interval_ms = 500
host_grace_ms = 3000
max_moves_per_pass = 20
cooldown_ms = 1000
"#,
            port = self.port,
            name = self.name,
            // Every manager shares one history, as managers of a region share one database.
            history = self.dir.parent().unwrap().join("history.db").display(),
            key = key.display(),
            token = self.dir.join("token").display(),
            servers = zk.servers,
            root = zk.root.clone().unwrap(),
            // Managers of a region share their token keys, so a token from one is good on all.
            shared = self.dir.parent().unwrap().display(),
            ca = self.ca.ca.display(),
            cert = self.ca.client.0.display(),
            cert_key = self.ca.client.1.display(),
        );
        let path = self.dir.join("manager.toml");
        std::fs::write(&path, cfg).unwrap();
        path
    }

    /// Starts the binary (pausing at `pause_at` when given: the test-only hook).
    pub fn start(&mut self, zk: &ZkConfig, registry: std::net::SocketAddr, pause_at: Option<&str>) {
        let cfg = self.config(zk, registry);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("manager.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atlantis-manager"));
        cmd.arg("--config")
            .arg(cfg)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .env("NO_PROXY", "127.0.0.1")
            .env_remove("ATLANTIS_MANAGER_TEST_PAUSE_AT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(step) = pause_at {
            let _ = std::fs::remove_file(self.dir.join(format!("paused-{step}")));
            cmd.env("ATLANTIS_MANAGER_TEST_PAUSE_AT", step)
                .env("ATLANTIS_MANAGER_TEST_PAUSE_DIR", &self.dir);
        }
        self.child = Some(cmd.spawn().expect("the manager binary starts"));
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Waits until the manager paused at `step`.
    pub async fn paused_at(&self, step: &str) {
        let f = self.dir.join(format!("paused-{step}"));
        eventually(
            Duration::from_secs(90),
            &format!("{} paused at {step}", self.name),
            || async { f.exists().then_some(()) },
        )
        .await;
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(self.dir.join("manager.log")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Waits until a manager answers its health check.
pub async fn wait_up(m: &Manager) {
    let url = format!("{}/healthz", m.base());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not come up:\n{}",
            m.name,
            m.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct HaCluster {
    pub ensemble: Ensemble,
    pub zk: ZkConfig,
    pub coord: Coord,
    pub hosts: Vec<Host>,
    pub registry: Registry,
    _router: Router,
    pub router_port: u16,
    pub managers: Vec<Manager>,
    pub http: reqwest::Client,
    /// The admin token every [`HaCluster::call`] carries.
    pub token: String,
    /// The cluster CA the supervisors trust, with the managers' client certificate.
    pub ca: atlantis_common::tls::DevCa,
    _dir: tempfile::TempDir,
}

impl HaCluster {
    pub async fn start() -> HaCluster {
        atlantis_common::telemetry::init("manager-ha");
        let ensemble = tokio::task::spawn_blocking(Ensemble::start).await.unwrap();
        let mut zk = ZkConfig::new(ensemble.connect_string(), "test".parse().unwrap());
        zk.session_timeout = Duration::from_secs(6);
        zk.root = Some(format!("/mgr-ha-{}", support::unique()));
        let coord = Coord::connect(zk.clone()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = atlantis_common::tls::dev_ca(&dir.path().join("ca"), &[]).unwrap();
        let (a1, a2, b) = tokio::join!(
            Host::start("host-a1", "zone-a", zk.clone(), ca.clone()),
            Host::start("host-a2", "zone-a", zk.clone(), ca.clone()),
            Host::start("host-b", "zone-b", zk.clone(), ca.clone()),
        );
        let registry = Registry::start().await;
        let router = Router::start(
            zk.clone(),
            RouterKind::External,
            "zone-a",
            "router-1",
            Ipv4Addr::LOCALHOST,
        )
        .await;
        // The region's managers share one token key file (an operator file: 64 hex digits, 0600).
        {
            use std::os::unix::fs::PermissionsExt as _;
            let key = dir.path().join("auth.key");
            std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut managers = Vec::new();
        for name in ["manager-1", "manager-2"] {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            let mut m = Manager {
                name: name.into(),
                port: atlantis_testkit::ports::free_port(),
                child: None,
                dir: d,
                ca: ca.clone(),
            };
            m.start(&zk, registry.addr, None);
            managers.push(m);
            // One after the other: they share the history database and its migrations.
            wait_up(&managers[managers.len() - 1]).await;
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let token = std::fs::read_to_string(dir.path().join("admin.token"))
            .expect("the first manager wrote the admin token")
            .trim()
            .to_owned();
        HaCluster {
            token,
            ca,
            ensemble,
            zk,
            coord,
            hosts: vec![a1, a2, b],
            registry,
            _router: router,
            router_port: atlantis_testkit::ports::free_port(),
            managers,
            http,
            _dir: dir,
        }
    }

    /// Restarts manager `i` (without a pause point unless given).
    pub async fn restart(&mut self, i: usize, pause_at: Option<&str>) {
        self.managers[i].kill();
        let (zk, reg) = (self.zk.clone(), self.registry.addr);
        self.managers[i].start(&zk, reg, pause_at);
        wait_up(&self.managers[i]).await;
    }

    /// A request to manager `i`: status and JSON (Null when empty or unreachable: status 0).
    pub async fn call(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.managers[i].base()))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let Ok(resp) = r.send().await else {
            return (0, serde_json::Value::Null);
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Polls the task through any live manager until it is no longer running (bounded).
    pub async fn task_end(&self, id: &str, limit: Duration) -> TaskStatus {
        let start = Instant::now();
        loop {
            for i in 0..self.managers.len() {
                let (s, v) = self
                    .call(i, reqwest::Method::GET, &format!("/v1/tasks/{id}"), None)
                    .await;
                if s == 200 {
                    let t: TaskStatus = serde_json::from_value(v).unwrap();
                    if t.state != TaskState::Running {
                        return t;
                    }
                }
            }
            assert!(
                start.elapsed() < limit,
                "task {id} still running after {limit:?}\n--- manager-1:\n{}\n--- manager-2:\n{}",
                self.managers[0].log_tail(),
                self.managers[1].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Pushes `apps/<app>:<sha>` and tags it on every live host.
    pub async fn publish(&self, app: &str, sha: &str) {
        self.registry.push(app, sha).await;
        let reference = format!("{}/apps/{app}:{sha}", self.registry.addr);
        for h in &self.hosts {
            h.tag(&reference);
        }
    }

    /// GET through the router.
    pub async fn through_router(&self, host: &str, path: &str) -> (u16, String) {
        support::via_router(&self.http, self.router_port, host, path).await
    }

    /// Waits until the router answers `want`.
    pub async fn router_serves(&self, host: &str, want: &str, limit: Duration) {
        eventually(limit, &format!("router serves {want:?}"), || async {
            let (s, b) = self.through_router(host, "/version").await;
            (s == 200 && b.trim() == want).then_some(())
        })
        .await;
    }
}

/// Paced load on `/version` through the router on `port`: `workers` clients, one request every
/// `every` each, accepting the bodies in `accept`.
pub fn load(port: u16, host: &str, accept: &[&str], workers: usize, every: Duration) -> Load {
    let accept: Vec<String> = accept.iter().map(|a| (*a).to_owned()).collect();
    Load::start(
        &[format!("http://127.0.0.1:{port}/version")],
        host,
        &accept,
        workers,
        every,
    )
}
