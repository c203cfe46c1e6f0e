//! The test cluster: a real ZooKeeper, two supervisors in two zones (each on its own dockerd in a network
//! namespace), an in-process registry holding `apps/<app>:<sha>` manifests, a real router, and the
//! manager. One cluster per test binary, built by the one test that needs it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use atlantis_common::api::manager::{TaskState, TaskStatus};
use atlantis_common::shutdown::CancellationToken;
use atlantis_common::zk::{Coord, RouterKind, ZkConfig};
use atlantis_manager::config::{DeployConfig, ImageRef, RegistryConfig, RoutingConfig};
use atlantis_supervisor::config::{
    CapacityConfig, DockerConfig, FirewallConfig, LimitsConfig, PortsConfig,
};
use atlantis_testkit::docker::Dockerd;
use atlantis_testkit::{ZooKeeper, eventually};
use sha2::Digest as _;

/// The cluster token.
pub const TOKEN: &str = "manager-it-token-0123456789";
/// The local busybox image every app tag points at on the hosts.
pub const BASE_IMAGE: &str = "atlantis-test/busybox:1";
/// The managers' `deploy.drain_deadline_ms`, and the routers' `limits.backend_drain_deadline_ms`: long
/// enough for the 10-second request of `drain::slow_request_survives_a_deploy`.
pub const DRAIN_DEADLINE_MS: u64 = 20_000;

/// A unique suffix.
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

/// A supervisor host.
pub struct Host {
    pub docker: Dockerd,
    _dir: tempfile::TempDir,
    // Held to keep the supervisor running; taken by `crash` (HA tests).
    #[allow(dead_code)]
    supervisor: Option<atlantis_supervisor::App>,
}

impl Host {
    /// Starts dockerd in a namespace and a supervisor `name` in `zone` on it (mutual TLS with `ca`).
    pub fn start(
        name: &str,
        zone: &str,
        zk: ZkConfig,
        ca: atlantis_common::tls::DevCa,
    ) -> impl Future<Output = Host> + use<> {
        let (name, zone) = (name.to_owned(), zone.to_owned());
        async move {
            let (docker, dir) = tokio::task::spawn_blocking(|| {
                let d = Dockerd::start();
                d.import_busybox(BASE_IMAGE);
                let dir = tempfile::Builder::new()
                    .prefix("atlantis-mgr-it-")
                    .tempdir()
                    .unwrap();
                atlantis_testkit::write_secret(&dir.path().join("token"), TOKEN);
                (d, dir)
            })
            .await
            .unwrap();
            let cfg = atlantis_supervisor::Config {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                advertise_url: None,
                host: name.parse().unwrap(),
                zone: zone.parse().unwrap(),
                region: "test".parse().unwrap(),
                token_file: dir.path().join("token"),
                data_dir: dir.path().join("data"),
                docker: DockerConfig {
                    socket: docker.socket(),
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
                    min_port: 42000,
                    per_slot: 4,
                    publish_ip: docker.ns_ip(),
                    health_ip: None,
                },
                firewall: FirewallConfig {
                    cluster_networks: vec![docker.subnet()],
                    netns: Some(docker.netns_path()),
                    ..Default::default()
                },
                limits: LimitsConfig {
                    pids: 512,
                    stop_timeout_ms: 1000,
                    ..Default::default()
                },
                zookeeper: Some(zk),
                orphan_grace_ms: 5000,
                reconcile_interval_ms: 1000,
                max_body_bytes: 256 * 1024,
                // Only managers with a client certificate of the cluster CA may call it.
                tls: Some(atlantis_supervisor::config::TlsConfig {
                    cert_file: ca.server.0.clone(),
                    key_file: ca.server.1.clone(),
                    client_ca_file: ca.ca.clone(),
                    reload_interval_ms: 10_000,
                }),
            };
            let app = atlantis_supervisor::App::build(cfg)
                .await
                .expect("supervisor starts");
            Host {
                docker,
                _dir: dir,
                supervisor: Some(app),
            }
        }
    }

    /// The host dies: its network is cut, its engine killed, and its supervisor stops with its ZooKeeper
    /// session closed without deregistering (an in-process stand-in for SIGKILL: the registration goes
    /// when the session ends).
    #[allow(dead_code)]
    pub async fn crash(&mut self) {
        self.docker.kill();
        if let Some(app) = self.supervisor.take() {
            if let Some(c) = app.coord() {
                c.close();
            }
            app.shutdown().await;
        }
    }

    /// Names of the containers the engine has.
    pub fn containers(&self) -> Vec<String> {
        let out = self
            .docker
            .docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
        let mut v: Vec<String> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    /// Tags the base image as `reference` (the image the manager will hand out).
    pub fn tag(&self, reference: &str) {
        self.docker.docker_ok(&["tag", BASE_IMAGE, reference]);
    }
}

/// The in-process registry.
pub struct Registry {
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Registry {
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let config = atlantis_registry::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            storage: atlantis_registry::config::StorageConfig {
                kind: atlantis_registry::config::StorageKind::Filesystem,
                root: dir.path().join("storage"),
                s3: None,
            },
            ..Default::default()
        };
        let app = atlantis_registry::App::build(config).await.unwrap();
        let addr = app.local_addr();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = app.serve(s).await;
        });
        Registry {
            addr,
            _dir: dir,
            stop,
        }
    }

    async fn blob(&self, http: &reqwest::Client, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)));
        let r = http
            .post(format!("http://{}/v2/{repo}/blobs/uploads/", self.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "upload start");
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let url = if loc.starts_with('/') {
            format!("http://{}{loc}", self.addr)
        } else {
            loc
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let r = http
            .put(format!("{url}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "blob put: {}", r.text().await.unwrap());
        digest
    }

    /// Pushes a small OCI image as `apps/<app>:<sha>`; returns its manifest digest.
    pub async fn push(&self, app: &str, sha: &str) -> String {
        self.push_labelled(app, sha, serde_json::json!({ "sha": sha }))
            .await
    }

    /// Pushes `apps/<app>:<sha>` whose image config carries `labels`.
    pub async fn push_labelled(&self, app: &str, sha: &str, labels: serde_json::Value) -> String {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let repo = format!("apps/{app}");
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let layer = format!("layer of {app} {sha}").into_bytes();
        let cd = self.blob(&http, &repo, &config).await;
        let ld = self.blob(&http, &repo, &layer).await;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
        }))
        .unwrap();
        let r = http
            .put(format!("http://{}/v2/{repo}/manifests/{sha}", self.addr))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "manifest put: {}", r.text().await.unwrap());
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest)))
    }
}

/// A running router.
pub struct Router {
    stop: CancellationToken,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Router {
    /// A router of `kind` in `zone`, listening on `ip`, registered as the binary registers (its status
    /// listener on loopback; `address` is `ip` unless it is loopback). An internal router must listen
    /// where its zone's containers reach it (the root end of the zone's veth).
    pub async fn start(
        zk: ZkConfig,
        kind: RouterKind,
        zone: &str,
        host: &str,
        ip: Ipv4Addr,
    ) -> Router {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = atlantis_testkit::ports::free_port();
        let status: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cfg = atlantis_router::config::Config::for_tests();
        cfg.status_addr = status;
        cfg.listen_ip = ip.into();
        cfg.kind = kind.as_str().into();
        cfg.zone = zone.into();
        cfg.host = Some(host.into());
        cfg.limits.backend_drain_deadline_ms = DRAIN_DEADLINE_MS;
        let source = std::sync::Arc::new(atlantis_router::source::ZkSource::new(
            zk,
            kind,
            zone.parse().unwrap(),
            host.parse().unwrap(),
            cfg.registration(host, zone, status),
        ));
        let app = atlantis_router::App::build(cfg, source).await.unwrap();
        let stop = CancellationToken::new();
        let (_handle, _task) = app.spawn(stop.clone());
        Router { stop }
    }
}

/// The whole cluster and a client of the manager.
pub struct Cluster {
    pub coord: Coord,
    pub hosts: Vec<Host>,
    pub registry: Registry,
    _routers: Vec<Router>,
    pub router_port: u16,
    _manager: atlantis_manager::App,
    pub http: reqwest::Client,
    pub base: String,
    /// The admin (superuser) token every call of [`Cluster::call`] carries.
    pub token: String,
    _dir: tempfile::TempDir,
}

/// How many stable ports internal apps get (two may run at once: `internal_deps`).
const INTERNAL_PORTS: u16 = 4;

/// The first of `n` consecutive ports that were all free a moment ago on every address.
fn free_range(n: u16) -> u16 {
    for _ in 0..100 {
        let p = atlantis_testkit::ports::free_port();
        if p.checked_add(n).is_some()
            && (p..p + n).all(|q| std::net::TcpListener::bind(("0.0.0.0", q)).is_ok())
        {
            return p;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// The manager config for a cluster.
pub fn manager_config(
    zk: &ZkConfig,
    dir: &std::path::Path,
    registry: SocketAddr,
) -> atlantis_manager::Config {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join("secret.key");
    std::fs::write(&key, "42".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    atlantis_testkit::write_secret(&dir.join("token"), TOKEN);
    atlantis_manager::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        host: "manager-1".parse().unwrap(),
        zookeeper: zk.clone(),
        database_url: None,
        data_dir: dir.join("data"),
        secret_key_file: key,
        supervisor_token_file: dir.join("token"),
        registry: RegistryConfig {
            url: format!("http://{registry}"),
            pull_host: None,
            user: None,
            password_file: None,
            image_ref: ImageRef::Tag,
        },
        routing: {
            let p = free_range(INTERNAL_PORTS);
            RoutingConfig {
                internal_port_min: p,
                internal_port_max: p + INTERNAL_PORTS - 1,
                ..RoutingConfig::default()
            }
        },
        deploy: DeployConfig {
            switch_wait_ms: 15_000,
            drain_ms: 1500,
            drain_deadline_ms: DRAIN_DEADLINE_MS,
            start_timeout_ms: 60_000,
        },
        max_body_bytes: 64 * 1024,
        auth: Default::default(),
        tls: None,
        supervisor_tls: None,
        ha: atlantis_manager::config::HaConfig::default(),
    }
}

/// The admin token a manager without LDAP wrote at its first start.
pub fn admin_token(m: &atlantis_manager::App) -> String {
    let f = m
        .admin_token_file
        .as_ref()
        .expect("no LDAP: an admin token file");
    std::fs::read_to_string(f).unwrap().trim().to_owned()
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with(None).await
    }

    /// As [`Cluster::start`]; with `ldap`, the manager logs users in against that directory and
    /// [`Cluster::token`] is the session of the (superuser) `(user, password)` given with it.
    #[allow(dead_code)] // not every test binary that includes this file logs in
    pub async fn start_with(
        ldap: Option<(atlantis_manager::auth::LdapConfig, &str, &str)>,
    ) -> Cluster {
        atlantis_common::telemetry::init("manager-it");
        let zk_server = ZooKeeper::shared();
        let mut zk = ZkConfig::new(zk_server.connect_string(), "test".parse().unwrap());
        zk.session_timeout = Duration::from_secs(6);
        zk.root = Some(format!("/mgr-it-{}", unique()));
        let coord = Coord::connect(zk.clone()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = atlantis_common::tls::dev_ca(&dir.path().join("ca"), &[]).unwrap();
        let (a, b) = tokio::join!(
            Host::start("host-a", "zone-a", zk.clone(), ca.clone()),
            Host::start("host-b", "zone-b", zk.clone(), ca.clone())
        );
        let registry = Registry::start().await;
        let lo = Ipv4Addr::LOCALHOST;
        // Internal routers listen on the root end of their zone's veth: the address that zone's
        // containers route to (the supervisor's firewall lets a declared dependency through).
        let routers = vec![
            Router::start(zk.clone(), RouterKind::External, "zone-a", "router-1", lo).await,
            Router::start(
                zk.clone(),
                RouterKind::Internal,
                "zone-a",
                "internal-a",
                a.docker.host_ip(),
            )
            .await,
            Router::start(
                zk.clone(),
                RouterKind::Internal,
                "zone-b",
                "internal-b",
                b.docker.host_ip(),
            )
            .await,
        ];
        let mut cfg = manager_config(&zk, dir.path(), registry.addr);
        cfg.supervisor_tls = Some(atlantis_manager::config::ClientTlsConfig {
            ca_file: ca.ca.clone(),
            cert_file: ca.client.0.clone(),
            key_file: ca.client.1.clone(),
        });
        let login = ldap.map(|(l, u, p)| {
            cfg.auth.ldap = Some(l);
            (u.to_owned(), p.to_owned())
        });
        let manager = atlantis_manager::App::build(cfg)
            .await
            .expect("manager starts");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let router_port = atlantis_testkit::ports::free_port();
        let token = match login {
            None => admin_token(&manager),
            Some((user, password)) => {
                let r = http
                    .post(format!("http://{}/v1/login", manager.addr))
                    .json(&serde_json::json!({"user": user, "password": password}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "login {user}");
                let v: serde_json::Value = r.json().await.unwrap();
                v["token"].as_str().unwrap().to_owned()
            }
        };
        Cluster {
            base: format!("http://{}", manager.addr),
            token,
            coord,
            hosts: vec![a, b],
            registry,
            _routers: routers,
            router_port,
            _manager: manager,
            http,
            _dir: dir,
        }
    }

    /// Sends a request to the manager; returns status and JSON (Null for an empty body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.call_as(&self.token.clone(), method, path, body).await
    }

    /// As [`Cluster::call`] with another bearer token.
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("manager answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
        };
        (status, v)
    }

    /// Expects an error `status` with `code`; returns the message.
    pub async fn expect_err(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        status: u16,
        code: &str,
    ) -> String {
        let (s, v) = self.call(method, path, body).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{v}");
        v["message"].as_str().unwrap().to_owned()
    }

    /// Pushes `apps/<app>:<sha>` and tags it on every host.
    pub async fn publish(&self, app: &str, sha: &str) {
        self.registry.push(app, sha).await;
        let reference = format!("{}/apps/{app}:{sha}", self.registry.addr);
        for h in &self.hosts {
            h.tag(&reference);
        }
    }

    /// Follows a task's stream until it ends; returns the final status.
    pub async fn wait_task(&self, id: &str) -> TaskStatus {
        let resp = self
            .http
            .get(format!("{}/v1/tasks/{id}/stream", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(180))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/x-ndjson"
        );
        let text = resp.text().await.unwrap();
        let last = text.lines().last().expect("at least one status line");
        let s: TaskStatus = serde_json::from_str(last).unwrap();
        assert_ne!(
            s.state,
            TaskState::Running,
            "the stream ends with the final status"
        );
        // The same status is then served by GET (from memory or the history).
        let (code, v) = self
            .call(reqwest::Method::GET, &format!("/v1/tasks/{id}"), None)
            .await;
        assert_eq!(code, 200);
        assert_eq!(v["state"], serde_json::to_value(s.state).unwrap());
        s
    }

    /// Starts a task-returning call, expects 202, waits for the task.
    pub async fn run_task(&self, path: &str, body: serde_json::Value) -> TaskStatus {
        let (s, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(s, 202, "{path}: {v}");
        self.wait_task(v["task_id"].as_str().unwrap()).await
    }

    /// GET through the router with `Host: <host>`; returns status and body.
    pub async fn through_router(&self, host: &str, path: &str) -> (u16, String) {
        via_router(&self.http, self.router_port, host, path).await
    }

    /// Waits until the router answers `want` for `host` `path`.
    pub async fn router_serves(&self, host: &str, path: &str, want: &str) {
        eventually(
            Duration::from_secs(30),
            &format!("router serves {want:?} for {host}{path}"),
            || async {
                let (s, b) = self.through_router(host, path).await;
                (s == 200 && b.trim() == want).then_some(())
            },
        )
        .await;
    }

    /// Every container on every host.
    pub fn all_containers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosts.iter().flat_map(Host::containers).collect();
        v.sort();
        v
    }

    /// Children of a ZooKeeper path under the cluster root (empty if absent).
    pub async fn zk_children(&self, path: &str) -> Vec<String> {
        self.coord.children(path).await.unwrap()
    }
}

/// GET `path` through the router on loopback `port` with `Host: <host>`: status and body (status 0 when
/// the request failed).
pub async fn via_router(
    http: &reqwest::Client,
    port: u16,
    host: &str,
    path: &str,
) -> (u16, String) {
    let r = http
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match r {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}
