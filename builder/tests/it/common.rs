//! Shared helpers: an in-process registry with its metrics, sample apps copied to temp dirs, a builder
//! over a temp cache with a log that is kept, and skopeo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use atlantis_builder::build::Log;
use atlantis_builder::cache::LayerCache;
use atlantis_builder::{Builder, Settings};
use atlantis_common::shutdown::CancellationToken;
use atlantis_registry::auth::AuthConfig;
use atlantis_registry::config::{StorageConfig, StorageKind};

/// A registry serving on `listen` (port 0 picks one).
pub struct Reg {
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    token: CancellationToken,
}

impl Reg {
    pub async fn start() -> Reg {
        Self::start_with("127.0.0.1:0".parse().unwrap(), None).await
    }

    pub async fn start_with(listen: SocketAddr, auth: Option<AuthConfig>) -> Reg {
        let dir = tempfile::Builder::new()
            .prefix("atlantis-builder-reg-")
            .tempdir()
            .unwrap();
        let config = atlantis_registry::Config {
            listen,
            storage: StorageConfig {
                kind: StorageKind::Filesystem,
                root: dir.path().join("storage"),
                s3: None,
            },
            auth,
            ..atlantis_registry::Config::default()
        };
        let app = atlantis_registry::App::build(config)
            .await
            .expect("registry");
        let addr = app.local_addr();
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move { app.serve(t).await.expect("serve") });
        Reg {
            addr,
            _dir: dir,
            token,
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The sum of the metric samples whose line starts with `name` and contains every `label`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Blob uploads the registry completed (a PUT closing an upload, answered 201).
    pub async fn uploads(&self) -> u64 {
        self.metric(
            "atlantis_registry_http_requests_total",
            &["method=\"PUT\"", "route=\"upload\"", "status=\"201\""],
        )
        .await as u64
    }

    /// Blob bytes the registry received.
    pub async fn bytes_received(&self) -> u64 {
        self.metric("atlantis_registry_blob_bytes_received_total", &[])
            .await as u64
    }

    /// The repositories of the catalog.
    pub async fn catalog(&self) -> Vec<String> {
        let v: serde_json::Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/v2/_catalog", self.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["repositories"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The samples directory of the crate.
pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

/// A copy of the sample `name` in a temp dir (its path is `dir/app`); the static sample gets Debian's
/// busybox as its `busybox` binary.
pub fn sample(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let app = d.path().join("app");
    let out = std::process::Command::new("cp")
        .arg("-r")
        .arg(samples().join(name))
        .arg(&app)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if name == "static-web" {
        let bb = atlantis_testkit::require_file("/bin/busybox", "busybox-static");
        std::fs::copy(bb, app.join("busybox")).unwrap();
    }
    (d, app)
}

/// A builder over a fresh cache (kept with the returned dir).
pub fn builder() -> (tempfile::TempDir, Builder) {
    builder_with(Settings::default())
}

pub fn builder_with(settings: Settings) -> (tempfile::TempDir, Builder) {
    let d = tempfile::tempdir().unwrap();
    let cache = LayerCache::open(d.path(), 1 << 30).unwrap();
    (d, Builder::new(cache, settings))
}

/// A log that keeps its lines.
pub fn log() -> (Log, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    (Arc::new(move |s: String| l2.lock().unwrap().push(s)), lines)
}

/// Runs skopeo with `args` and returns stdout; panics with stderr on failure.
pub async fn skopeo(args: &[&str]) -> String {
    let bin = atlantis_testkit::require_bin("skopeo", "skopeo");
    let out = tokio::process::Command::new(bin)
        .arg("--insecure-policy")
        .args(args)
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs git in `dir` with fixed identities; returns trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.test")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
