//! Shared test helpers: in-process registries on port 0 over the filesystem or over a real S3 server
//! (one moto per test binary, a fresh bucket per registry), request shorthands on the registry and on
//! `reqwest::RequestBuilder` ([`Call`]), pushes of blobs, manifests and images, OCI error bodies, raw
//! half-sent requests, and checks of child process output.

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use atlantis_common::shutdown::CancellationToken;
use atlantis_registry::auth::AuthConfig;
use atlantis_registry::config::{StorageConfig, StorageKind};
use atlantis_registry::storage::s3::S3Config;
use atlantis_registry::{App, Config, Registry};
use atlantis_testkit::s3::S3Server;
use sha2::Digest as _;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

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
    client: reqwest::Client,
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
            client: client(),
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

    /// The storage root of a filesystem registry.
    pub fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("storage")
    }

    pub fn get(&self, path: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.client.get(self.url(path.as_ref()))
    }

    pub fn head(&self, path: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.client.head(self.url(path.as_ref()))
    }

    pub fn post(&self, path: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.client.post(self.url(path.as_ref()))
    }

    pub fn put(&self, path: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.client.put(self.url(path.as_ref()))
    }

    pub fn patch(&self, path: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.client.patch(self.url(path.as_ref()))
    }

    pub fn delete(&self, path: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path.as_ref()))
    }

    /// A PATCH of `data` to the upload at `loc` with `Content-Range: range`.
    pub fn chunk(
        &self,
        loc: &str,
        range: &str,
        data: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.patch(loc).header("content-range", range).body(data)
    }

    /// A PUT of a manifest body under `reference` with the given media type.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.put(format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body)
    }

    /// Opens an upload session in `repo` (202 expected); returns its location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let resp = self.post(format!("/v2/{repo}/blobs/uploads/")).call().await;
        assert_eq!(resp.status(), 202, "start upload in {repo}");
        header(&resp, "location").to_owned()
    }

    /// Pushes a blob monolithically (201 expected); returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let resp = self
            .post(format!("/v2/{repo}/blobs/uploads/?digest={d}"))
            .body(data.to_vec())
            .call()
            .await;
        assert_eq!(
            resp.status(),
            201,
            "push blob: {}",
            resp.text().await.unwrap()
        );
        d
    }

    /// Pushes config, layers and the manifest under `reference`; returns (manifest bytes, digest).
    pub async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        config: &[u8],
        layers: &[&[u8]],
    ) -> (Vec<u8>, String) {
        self.push_blob(repo, config).await;
        for l in layers {
            self.push_blob(repo, l).await;
        }
        let m = image_manifest(config, layers, None, None);
        let resp = self
            .put_manifest(repo, reference, OCI_MANIFEST, m.clone())
            .call()
            .await;
        assert_eq!(
            resp.status(),
            201,
            "push manifest: {}",
            resp.text().await.unwrap()
        );
        let d = sha256(&m);
        (m, d)
    }

    /// The content of a blob, after checking it is served with 200.
    pub async fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let resp = self.get(format!("/v2/{repo}/blobs/{digest}")).call().await;
        assert_eq!(resp.status(), 200, "GET blob {digest} from {repo}");
        resp.bytes().await.unwrap().to_vec()
    }

    /// The status of a HEAD of a blob.
    pub async fn blob_status(&self, repo: &str, digest: &str) -> u16 {
        self.head(format!("/v2/{repo}/blobs/{digest}"))
            .status()
            .await
    }

    /// The status of a GET of a manifest.
    pub async fn manifest_status(&self, repo: &str, reference: &str) -> u16 {
        self.get(format!("/v2/{repo}/manifests/{reference}"))
            .status()
            .await
    }

    /// The tags of `repo`, as the tags list returns them.
    pub async fn tags(&self, repo: &str) -> serde_json::Value {
        self.get(format!("/v2/{repo}/tags/list")).json_value().await["tags"].clone()
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

/// A client that keeps no idle connections: the registry answers some refused uploads before reading
/// their bodies and closes the connection, and a pooled client could meet that close on its next
/// request (a BrokenPipe on the body write) instead of a fresh connection.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A response header as text ("" when absent or not text).
pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Sending a request and reading what a test looks at, in one call each.
pub trait Call {
    /// Sends the request; panics when it cannot be sent.
    fn call(self) -> impl Future<Output = reqwest::Response> + Send;
    /// The response status.
    fn status(self) -> impl Future<Output = u16> + Send;
    /// The response body as JSON.
    fn json_value(self) -> impl Future<Output = serde_json::Value> + Send;
    /// The response body as text.
    fn text_body(self) -> impl Future<Output = String> + Send;
    /// The response's OCI error body; panics when the body is not one.
    fn error(self) -> impl Future<Output = ErrorBody> + Send;
}

impl Call for reqwest::RequestBuilder {
    async fn call(self) -> reqwest::Response {
        self.send().await.unwrap()
    }

    async fn status(self) -> u16 {
        self.call().await.status().as_u16()
    }

    async fn json_value(self) -> serde_json::Value {
        self.call().await.json().await.unwrap()
    }

    async fn text_body(self) -> String {
        self.call().await.text().await.unwrap()
    }

    async fn error(self) -> ErrorBody {
        error_code(self.call().await).await
    }
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

/// An OCI image manifest over a config and layers (each given as bytes).
pub fn image_manifest(
    config: &[u8],
    layers: &[&[u8]],
    subject: Option<(&str, usize)>,
    artifact_type: Option<&str>,
) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len() },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(l), "size": l.len()
        })).collect::<Vec<_>>(),
    });
    if let Some((d, size)) = subject {
        m["subject"] = serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": d, "size": size });
    }
    if let Some(a) = artifact_type {
        m["artifactType"] = serde_json::json!(a);
    }
    serde_json::to_vec(&m).unwrap()
}

/// An OCI error response: the status and the first error's code. Compares with `(status, "CODE")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub status: u16,
    pub code: String,
}

impl PartialEq<(u16, &str)> for ErrorBody {
    fn eq(&self, other: &(u16, &str)) -> bool {
        self.status == other.0 && self.code == other.1
    }
}

/// The OCI error body of a response; panics when the body is not one.
pub async fn error_code(resp: reqwest::Response) -> ErrorBody {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("not an error body ({status}): {text:?}"));
    ErrorBody {
        status,
        code: v["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
    }
}

/// What to do after a raw request's body was cut short.
#[derive(Debug, Clone, Copy)]
pub enum Then {
    /// Close the write side and read until the server closes (at most the timeout).
    Close(Duration),
    /// Keep the connection open and read the first reply bytes (at most the timeout).
    Stall(Duration),
}

/// Sends `head` (a request line) with `Content-Length: announced` but only `sent` body bytes, over a
/// blocking socket. Returns what the server answered and how long the answer took.
pub fn partial_request(
    addr: SocketAddr,
    head: &str,
    announced: usize,
    sent: &[u8],
    then: Then,
) -> (String, Duration) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{head}\r\nHost: {addr}\r\nContent-Length: {announced}\r\n\r\n"
    )
    .unwrap();
    s.write_all(sent).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    match then {
        Then::Close(timeout) => {
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.set_read_timeout(Some(timeout)).unwrap();
            let _ = s.read_to_end(&mut buf);
        }
        Then::Stall(timeout) => {
            s.set_read_timeout(Some(timeout)).unwrap();
            buf.resize(4096, 0);
            let n = s.read(&mut buf).unwrap_or(0);
            buf.truncate(n);
        }
    }
    (
        String::from_utf8_lossy(&buf).into_owned(),
        started.elapsed(),
    )
}

/// Checks a child process succeeded (its stderr in the message otherwise) and returns its output.
pub fn succeeded(what: &str, out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Declares two tests running `scenario(Backend)`: one on the filesystem, one on S3.
macro_rules! on_both_backends {
    ($scenario:ident: $fs:ident, $s3:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $fs() {
            $scenario($crate::common::Backend::Fs).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $s3() {
            $scenario($crate::common::Backend::S3).await;
        }
    };
}
pub(crate) use on_both_backends;
