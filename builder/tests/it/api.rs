//! The HTTP API: start a build, follow its log, read its status; a token is required, sources must
//! lie under the allowed directories, and failed builds report their error code.

use std::time::Duration;

use atlantis_builder::api::{App, BuildStatus};
use atlantis_builder::cache::LayerCache;
use atlantis_builder::{Builder, Config};
use atlantis_common::shutdown::CancellationToken;

use crate::common::{Reg, git, sample};

struct Api {
    base: String,
    client: reqwest::Client,
    token: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn start_api(registry: &str, allowed: &std::path::Path, cache: &std::path::Path) -> Api {
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
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move { app.serve(t).await.unwrap() });
    Api {
        base,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        token,
    }
}

impl Api {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(m, format!("{}{path}", self.base))
            .bearer_auth("api-secret")
    }

    async fn start(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .req(reqwest::Method::POST, "/v1/builds")
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn wait(&self, id: &str) -> BuildStatus {
        atlantis_testkit::eventually(Duration::from_secs(60), "the build to finish", || async {
            let s: BuildStatus = self
                .req(reqwest::Method::GET, &format!("/v1/builds/{id}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            use atlantis_builder::api::BuildState::*;
            matches!(s.state, Succeeded | Failed).then_some(s)
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_over_http_with_status_and_streamed_log() {
    let reg = Reg::start().await;
    let (allowed, app) = sample("busybox-web");
    let cache = tempfile::tempdir().unwrap();
    let api = start_api(&reg.host(), allowed.path(), cache.path()).await;

    let (code, v) = api
        .start(serde_json::json!({
            "source": { "dir": app },
            "app": "busybox-web",
            "sha": "1a2b3c4",
        }))
        .await;
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    // The log streams until the build ends, then the body closes.
    let log = api
        .req(reqwest::Method::GET, &format!("/v1/builds/{id}/log"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("base layer"), "{log}");
    assert!(log.contains("pushed "), "{log}");
    let s = api.wait(&id).await;
    assert!(s.error.is_none(), "{:?}", s.error);
    assert_eq!(s.image, format!("{}/apps/busybox-web:1a2b3c4", reg.host()));
    let digest = s.digest.unwrap();
    assert!(log.contains(&digest));
    assert_eq!(s.app_config.unwrap()["name"], "busybox-web");
    assert_eq!(s.push.unwrap()["uploaded"], 3);
    assert_eq!(reg.uploads().await, 3);

    // A git source under the allowed dir.
    let repo = allowed.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    let out = std::process::Command::new("cp")
        .arg("-r")
        .arg(&app)
        .arg(repo.join("web"))
        .output()
        .unwrap();
    assert!(out.status.success());
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let (code, v) = api
        .start(serde_json::json!({
            "source": { "git": { "repo": repo, "sha": sha, "root": "web" } },
            "app": "busybox-web",
        }))
        .await;
    assert_eq!(code, 202, "{v}");
    let s = api.wait(v["id"].as_str().unwrap()).await;
    assert!(s.error.is_none(), "{:?}", s.error);
    assert_eq!(s.image, format!("{}/apps/busybox-web:{sha}", reg.host()));
    // Same files at that commit: both layers are there already, only the config (new sha) is new.
    let push = s.push.unwrap();
    assert_eq!(
        (push["existed"].as_u64(), push["uploaded"].as_u64()),
        (Some(2), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_strangers_outside_dirs_and_reports_failed_builds() {
    let reg = Reg::start().await;
    let (allowed, app) = sample("busybox-web");
    let cache = tempfile::tempdir().unwrap();
    let api = start_api(&reg.host(), allowed.path(), cache.path()).await;
    let body =
        serde_json::json!({ "source": { "dir": app }, "app": "busybox-web", "sha": "1a2b3c4" });

    for auth in [None, Some("wrong")] {
        let mut r = api
            .client
            .post(format!("{}/v1/builds", api.base))
            .json(&body);
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "unauthorized");
    }
    let health = api
        .client
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Outside the allowed dirs: the builder's own files, another temp dir, a path that climbs out.
    let other = tempfile::tempdir().unwrap();
    // A symlink inside the allowed dir that leads out of it.
    std::os::unix::fs::symlink(other.path(), allowed.path().join("out")).unwrap();
    for dir in [
        "/etc".to_owned(),
        other.path().display().to_string(),
        format!("{}/../..", allowed.path().display()),
        allowed.path().join("out").display().to_string(),
    ] {
        let (code, v) = api
            .start(serde_json::json!({ "source": { "dir": dir }, "app": "busybox-web", "sha": "1a2b3c4" }))
            .await;
        assert_eq!(code, 400, "{dir}: {v}");
        assert_eq!(v["code"], "invalid_request", "{v}");
    }
    for bad in [
        serde_json::json!({ "source": { "dir": app } }),
        serde_json::json!({ "source": { "dir": app }, "push": "nowhere" }),
        serde_json::json!({ "source": { "dir": app }, "app": "busybox-web", "sha": "xyz" }),
        serde_json::json!({ "source": { "tarball": "x" }, "app": "busybox-web", "sha": "1a2b3c4" }),
        serde_json::json!({ "source": { "dir": app }, "app": "busybox-web", "sha": "1a2b3c4", "extra": 1 }),
    ] {
        let (code, v) = api.start(bad.clone()).await;
        assert_eq!(code, 400, "{bad}: {v}");
    }

    // A build that fails: its status carries the code and the message naming line and field.
    std::fs::write(
        app.join("atlantis.toml"),
        "name = \"busybox-web\"\ntemplate = \"busybox\"\nrun = [\"/bin/sh\"]\nmemory_mb = 1\n",
    )
    .unwrap();
    let (code, v) = api.start(body.clone()).await;
    assert_eq!(code, 202);
    let s = api.wait(v["id"].as_str().unwrap()).await;
    let e = s.error.unwrap();
    assert_eq!(e.code, "invalid_config");
    assert!(
        e.message.contains("line 4, field `memory_mb`"),
        "{}",
        e.message
    );
    assert!(s.digest.is_none());
    assert_eq!(reg.uploads().await, 0);
    let r = api
        .req(reqwest::Method::GET, "/v1/builds/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_listener_needs_a_token() {
    let cache = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "0.0.0.0:0".parse().unwrap(),
        cache_dir: cache.path().to_owned(),
        ..Config::default()
    };
    let builder = Builder::new(
        LayerCache::open(cache.path(), 1 << 20).unwrap(),
        config.settings(),
    );
    let e = App::build(config, builder).await.err().unwrap();
    assert!(e.to_string().contains("without api_token"), "{e}");
}
