//! Support of the push and source tests: a registry that takes only tokens of a manager signing key
//! (the manager's own `Signer`), a builder API in front of it, and a tiny TCP listener that records
//! what reaches it (the foreign host a hostile request names) and answers what a hostile registry
//! would.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atlantis_builder::api::{App, BuildStatus};
use atlantis_builder::cache::LayerCache;
use atlantis_builder::{Builder, Config};
use atlantis_common::api::registry_token::{Access, PULL};
use atlantis_common::shutdown::CancellationToken;
use atlantis_manager::auth::registry::{RegistryTokenConfig, Signer};
use atlantis_registry::auth::{AuthConfig, TokenAuthConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::Reg;

/// A registry with token auth, and the manager's signer it trusts.
pub struct TokenReg {
    pub reg: Reg,
    pub signer: Signer,
    _dir: tempfile::TempDir,
}

impl TokenReg {
    pub async fn start() -> TokenReg {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RegistryTokenConfig {
            key_file: dir.path().join("registry.key"),
            service: "atlantis-registry".into(),
            issuer: "atlantis-manager".into(),
            ttl_s: 300,
            build_ttl_s: 3600,
        };
        let signer = Signer::new(cfg).unwrap();
        let public_key =
            atlantis_manager::auth::registry::public_key(&dir.path().join("registry.key")).unwrap();
        let auth = AuthConfig {
            token: Some(TokenAuthConfig {
                realm: "http://127.0.0.1:9/v1/registry/token".into(),
                service: "atlantis-registry".into(),
                issuer: "atlantis-manager".into(),
                public_key,
                advertise: true,
            }),
            ..AuthConfig::default()
        };
        let reg = Reg::start_with("127.0.0.1:0".parse().unwrap(), Some(auth)).await;
        TokenReg {
            reg,
            signer,
            _dir: dir,
        }
    }

    /// A token granting `actions` on `apps/<app>`, as `POST /v1/apps/{app}/build-token` signs it.
    pub fn token(&self, app: &str, actions: &[&str]) -> String {
        let g = Access::repository(format!("apps/{app}"), actions);
        self.signer.sign_for("build:test", &[g], 600)
    }

    /// The catalog as a reader of every repository the tests use sees it.
    pub async fn catalog(&self) -> Vec<String> {
        let grants: Vec<Access> = ["apps/busybox-web", "apps/other-web", "base/debian"]
            .iter()
            .map(|r| Access::repository(*r, &[PULL]))
            .collect();
        let token = self.signer.sign_for("reader", &grants, 600);
        let v: serde_json::Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/v2/_catalog", self.reg.addr))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut out: Vec<String> = v["repositories"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// A builder API serving on loopback.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Api {
    pub async fn start(registry: &str, allowed: &Path, cache: &Path) -> Api {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            registry: registry.to_owned(),
            cache_dir: cache.to_owned(),
            api_token: Some("api-secret".into()),
            allowed_dirs: vec![allowed.to_owned()],
            ..Config::default()
        };
        let builder = Builder::new(LayerCache::open(cache, 1 << 30).unwrap(), config.settings());
        let app = App::build(config, builder).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move { app.serve(s).await.unwrap() });
        Api {
            base,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            stop,
        }
    }

    pub async fn start_build(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(format!("{}/v1/builds", self.base))
            .bearer_auth("api-secret")
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Waits for the build; returns its status as the raw JSON text and parsed, and its log.
    pub async fn finish(&self, id: &str) -> (String, BuildStatus, String) {
        let get = |path: String| {
            let c = self.client.clone();
            async move {
                c.get(path)
                    .bearer_auth("api-secret")
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()
            }
        };
        let raw = atlantis_testkit::eventually(Duration::from_secs(120), "the build", || async {
            let t = get(format!("{}/v1/builds/{id}", self.base)).await?;
            let s: BuildStatus = serde_json::from_str(&t).ok()?;
            use atlantis_builder::api::BuildState::*;
            matches!(s.state, Succeeded | Failed).then_some(t)
        })
        .await;
        let log = get(format!("{}/v1/builds/{id}/log", self.base))
            .await
            .unwrap();
        let status = serde_json::from_str(&raw).unwrap();
        (raw, status, log)
    }
}

/// What a [`Recorder`] answers: status line and headers for a method and path.
pub type Answer = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// A TCP listener that records each request head it gets and answers with [`Answer`].
pub struct Recorder {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<Mutex<usize>>,
}

impl Recorder {
    pub async fn start(answer: Answer) -> Recorder {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (h, c) = (heads.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = l.accept().await {
                *c.lock().unwrap() += 1;
                let (h, answer) = (h.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let mut first = head.lines().next().unwrap_or("").split(' ');
                        let (m, p) = (
                            first.next().unwrap_or("").to_owned(),
                            first.next().unwrap_or("").to_owned(),
                        );
                        h.lock().unwrap().push(head);
                        let resp = answer(&m, &p);
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        // One request per connection keeps bodies out of the way.
                        return;
                    }
                });
            }
        });
        Recorder {
            addr,
            heads,
            connections,
        }
    }

    /// A listener that answers every request 404 (a host that should never be called at all).
    pub async fn silent() -> Recorder {
        Recorder::start(Arc::new(|_, _| {
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
        }))
        .await
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Whether no one but the test connected. The listener accepts in order, so once a connection of the
    /// test's own (made now) is counted, every earlier connection is counted too: no waiting on luck.
    pub async fn saw_nothing(&self) -> bool {
        let before = *self.connections.lock().unwrap();
        let _probe = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = *self.connections.lock().unwrap();
            if now > before {
                // The probe is the last one counted; anything else came from the code under test.
                return now == 1;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the recorder never accepted the probe"
            );
            tokio::task::yield_now().await;
        }
    }

    pub fn authorizations(&self) -> usize {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| {
                h.lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("authorization:"))
            })
            .count()
    }
}
