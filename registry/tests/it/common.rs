//! Shared test helpers: in-process registries on port 0 over the filesystem or over a real S3 server
//! (one moto per test binary, a fresh bucket per registry), an HTTP client, and small image builders.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use atlantis_common::shutdown::CancellationToken;
use atlantis_registry::auth::AuthConfig;
use atlantis_registry::config::{StorageConfig, StorageKind};
use atlantis_registry::storage::s3::S3Config;
use atlantis_registry::{App, Config, Registry};
use atlantis_testkit::s3::S3Server;
use sha2::Digest as _;

static S3: OnceLock<S3Server> = OnceLock::new();
static BUCKETS: AtomicU32 = AtomicU32::new(0);

/// The test binary's S3 server.
pub fn s3_server() -> &'static S3Server {
    S3.get_or_init(S3Server::start)
}

/// A fresh bucket on the shared S3 server, and the driver config for it.
pub fn s3_config() -> S3Config {
    let s3 = s3_server();
    let bucket = format!(
        "reg-{}-{}",
        std::process::id(),
        BUCKETS.fetch_add(1, Ordering::SeqCst)
    );
    s3.create_bucket(&bucket);
    S3Config {
        bucket,
        prefix: "registry".into(),
        region: "us-east-1".into(),
        endpoint: Some(s3.endpoint()),
        access_key: Some(S3Server::ACCESS_KEY.into()),
        secret_key: Some(S3Server::SECRET_KEY.into()),
        force_path_style: true,
        part_size: 5 * 1024 * 1024,
    }
}

/// Which storage a test registry uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Fs,
    S3,
}

/// An in-process registry serving on 127.0.0.1:<random>.
pub struct TestRegistry {
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub dir: tempfile::TempDir,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestRegistry {
    pub async fn start(backend: Backend) -> TestRegistry {
        Self::start_with(backend, None, |_| {}).await
    }

    pub async fn start_with(
        backend: Backend,
        auth: Option<AuthConfig>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestRegistry {
        let dir = tempfile::Builder::new()
            .prefix("atlantis-reg-test-")
            .tempdir()
            .unwrap();
        let storage = match backend {
            Backend::Fs => StorageConfig {
                kind: StorageKind::Filesystem,
                root: dir.path().join("storage"),
                s3: None,
            },
            Backend::S3 => StorageConfig {
                kind: StorageKind::S3,
                root: dir.path().join("unused"),
                s3: Some(s3_config()),
            },
        };
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            storage,
            auth,
            ..Config::default()
        };
        tweak(&mut config);
        let app = App::build(config).await.expect("build registry");
        let addr = app.local_addr();
        let registry = app.registry();
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move {
            app.serve(t).await.expect("serve");
        });
        TestRegistry {
            addr,
            registry,
            dir,
            token,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `127.0.0.1:<port>`, as image references spell the registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift), so blobs differ by seed without a rand dependency.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Pushes a blob monolithically; returns its digest.
pub async fn push_blob(c: &reqwest::Client, r: &TestRegistry, repo: &str, data: &[u8]) -> String {
    let d = sha256(data);
    let resp = c
        .post(r.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "push blob: {}",
        resp.text().await.unwrap()
    );
    d
}

/// An OCI image manifest over a config and layers (each given as bytes).
pub fn image_manifest(
    config: &[u8],
    layers: &[&[u8]],
    subject: Option<(&str, usize)>,
    artifact_type: Option<&str>,
) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len() },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(l), "size": l.len()
        })).collect::<Vec<_>>(),
    });
    if let Some((d, size)) = subject {
        m["subject"] = serde_json::json!({ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": size });
    }
    if let Some(a) = artifact_type {
        m["artifactType"] = serde_json::json!(a);
    }
    serde_json::to_vec(&m).unwrap()
}

/// Pushes config, layers and the manifest under `reference`; returns (manifest bytes, digest).
pub async fn push_image(
    c: &reqwest::Client,
    r: &TestRegistry,
    repo: &str,
    reference: &str,
    config: &[u8],
    layers: &[&[u8]],
) -> (Vec<u8>, String) {
    push_blob(c, r, repo, config).await;
    for l in layers {
        push_blob(c, r, repo, l).await;
    }
    let m = image_manifest(config, layers, None, None);
    let resp = c
        .put(r.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "push manifest: {}",
        resp.text().await.unwrap()
    );
    let d = sha256(&m);
    (m, d)
}

/// The OCI error code of a response body.
pub async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("not an error body ({status}): {text:?}"));
    (
        status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
    )
}
