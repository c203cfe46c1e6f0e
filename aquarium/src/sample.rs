//! Apps from a directory: a content sha, a snapshot the builder may read, a build with our builder
//! (pushed to our registry), and a deploy through the manager's API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::client::Manager;
use crate::paths::DataDir;
use crate::plan::Plan;

/// Largest app directory the aquarium snapshots.
const MAX_APP_BYTES: u64 = 64 * 1024 * 1024;

/// The sample app shipped with the aquarium.
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello")
}

/// Files of `dir` (relative paths, sorted), refusing symlinks and special files.
fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut total = 0u64;
    while let Some(rel) = stack.pop() {
        let full = dir.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&full)
            .with_context(|| format!("reading {}", full.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let name = e.file_name();
            if name == ".git" {
                continue;
            }
            let t = e.file_type()?;
            let r = rel.join(&name);
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() {
                total += e.metadata()?.len();
                anyhow::ensure!(
                    total <= MAX_APP_BYTES,
                    "{} is larger than {MAX_APP_BYTES} bytes",
                    dir.display()
                );
                out.push(r);
            } else {
                anyhow::bail!(
                    "{}: only regular files and directories are allowed in an app",
                    dir.join(r).display()
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A sha for the directory's content: 12 hex digits of SHA-256 over paths, exec bits and contents.
/// The same files always give the same sha; any edit gives a new one.
pub fn content_sha(dir: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut h = sha2::Sha256::new();
    for rel in files(dir)? {
        let full = dir.join(&rel);
        let exec = std::fs::metadata(&full)?.permissions().mode() & 0o111 != 0;
        let data = std::fs::read(&full)?;
        h.update(rel.display().to_string().as_bytes());
        h.update([0, u8::from(exec)]);
        h.update((data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    Ok(hex::encode(h.finalize())[..12].to_owned())
}

/// The app name from `atlantis.toml` (the builder checks the whole file).
pub fn app_name(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("atlantis.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("name")
            && let Some(v) = rest.trim_start().strip_prefix('=')
        {
            let v = v.split('#').next().unwrap_or("").trim().trim_matches('"');
            if !v.is_empty() {
                return Ok(v.to_owned());
            }
        }
    }
    anyhow::bail!("{} has no `name = \"...\"` line", path.display())
}

/// Copies the app to `<data>/apps/<app>-<sha>` (where the builder may read), once per sha.
pub fn snapshot(data: &DataDir, dir: &Path, app: &str, sha: &str) -> anyhow::Result<PathBuf> {
    let dest = data.apps().join(format!("{app}-{sha}"));
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = data.apps().join(format!(".{app}-{sha}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    for rel in files(dir)? {
        let to = tmp.join(&rel);
        std::fs::create_dir_all(to.parent().expect("a file has a parent"))?;
        std::fs::copy(dir.join(&rel), &to)
            .with_context(|| format!("copying {}", dir.join(&rel).display()))?;
    }
    std::fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Builds `dir` with the builder and pushes `apps/<app>:<sha>`, unless the registry has it already.
/// The push uses a registry token the manager scopes to `apps/<app>` (the builder holds none of its
/// own). Returns a one-line description.
pub async fn build(
    mgr: &Manager,
    plan: &Plan,
    data: &DataDir,
    dir: &Path,
    app: &str,
    sha: &str,
) -> anyhow::Result<String> {
    let http = crate::health::http_client();
    let token = mgr
        .expect(
            Method::POST,
            &format!("/v1/apps/{app}/build-token"),
            None,
            &[200],
        )
        .await
        .context("asking the manager for a build token")?;
    let token = token["token"]
        .as_str()
        .context("the manager answered no build token")?
        .to_owned();
    let manifest = format!(
        "http://{}/v2/apps/{app}/manifests/{sha}",
        plan.registry_host()
    );
    let head = http
        .head(&manifest)
        .bearer_auth(&token)
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await;
    if let Ok(r) = &head
        && r.status() == 200
    {
        return Ok(format!(
            "{}/apps/{app}:{sha} already in the registry",
            plan.registry_host()
        ));
    }
    let snap = snapshot(data, dir, app, sha)?;
    let r = http
        .post(format!("{}/v1/builds", plan.builder_url()))
        .json(&json!({"source": {"dir": snap}, "app": app, "sha": sha, "registry_token": token}))
        .send()
        .await
        .context("calling the builder")?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(
        status == 202,
        "the builder refused the build ({status}): {v}"
    );
    let id = v["id"]
        .as_str()
        .context("the builder answered no build id")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v: Value = http
            .get(format!("{}/v1/builds/{id}", plan.builder_url()))
            .send()
            .await?
            .json()
            .await?;
        match v["state"].as_str() {
            Some("succeeded") => {
                return Ok(format!(
                    "{} ({})",
                    v["image"].as_str().unwrap_or("?"),
                    v["digest"].as_str().unwrap_or("?")
                ));
            }
            Some("failed") => {
                let log = http
                    .get(format!("{}/v1/builds/{id}/log", plan.builder_url()))
                    .send()
                    .await?
                    .text()
                    .await
                    .unwrap_or_default();
                anyhow::bail!("build {id} failed: {}\n{log}", v["error"]);
            }
            _ if Instant::now() > deadline => anyhow::bail!("build {id} did not finish in 600 s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Creates the env, the app and the external routers' HTTP port when missing (409 means it exists).
pub async fn ensure_setup(mgr: &Manager, plan: &Plan, app: &str) -> anyhow::Result<()> {
    mgr.expect(
        Method::POST,
        "/v1/envs",
        Some(json!({"name": plan.env, "description": "the aquarium's environment"})),
        &[201, 409],
    )
    .await?;
    mgr.expect(
        Method::POST,
        "/v1/apps",
        Some(json!({"name": app, "repo": format!("aquarium/examples/{app}")})),
        &[201, 409],
    )
    .await?;
    let (s, v) = mgr
        .call(Method::GET, "/v1/router-config/external/ports/http", None)
        .await?;
    if s != 200 || v["port"] != plan.http_port {
        mgr.expect(
            Method::PUT,
            "/v1/router-config/external/ports/http",
            Some(json!({"port": plan.http_port, "trie": "apps"})),
            &[200],
        )
        .await?;
    }
    Ok(())
}

/// The sha of the current release of `app` in the plan's env, if any.
pub async fn current_sha(mgr: &Manager, plan: &Plan, app: &str) -> anyhow::Result<Option<String>> {
    current_sha_in(mgr, app, &plan.env).await
}

/// The sha of the newest release of `app` in `env`, if any.
pub async fn current_sha_in(mgr: &Manager, app: &str, env: &str) -> anyhow::Result<Option<String>> {
    let (s, v) = mgr
        .call(
            Method::GET,
            &format!("/v1/apps/{app}/envs/{env}/releases"),
            None,
        )
        .await?;
    Ok(if s == 200 {
        v.get(0).and_then(|r| r["sha"].as_str()).map(str::to_owned)
    } else {
        None
    })
}

/// Deploys `sha` and waits for the task; returns the final task status. A failed task is an error
/// carrying the manager's reason.
pub async fn deploy(
    mgr: &Manager,
    plan: &Plan,
    app: &str,
    sha: &str,
    start_timeout_ms: Option<u64>,
    on_step: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    deploy_in(mgr, app, &plan.env, sha, start_timeout_ms, on_step).await
}

/// Deploys `sha` of `app` to `env` and waits for the task.
pub async fn deploy_in(
    mgr: &Manager,
    app: &str,
    env: &str,
    sha: &str,
    start_timeout_ms: Option<u64>,
    on_step: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    let mut body = json!({"sha": sha});
    if let Some(t) = start_timeout_ms {
        body["start_timeout_ms"] = json!(t);
    }
    let v = mgr
        .expect(
            Method::POST,
            &format!("/v1/apps/{app}/envs/{env}/deploy"),
            Some(body),
            &[202],
        )
        .await?;
    let id = v["task_id"].as_str().context("no task_id in the answer")?;
    let t = mgr.wait_task(id, Duration::from_secs(300), on_step).await?;
    anyhow::ensure!(
        t["state"] == "done",
        "deploy task {id} {}: {}",
        t["state"].as_str().unwrap_or("?"),
        t["error"].as_str().unwrap_or("no reason given")
    );
    Ok(t)
}

/// One GET of `path` for `app` through the external router of zone `zone` (index); status and body.
pub async fn get_through_router(
    http: &reqwest::Client,
    plan: &Plan,
    zone: usize,
    app: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let addr = plan.external_addr(&plan.zones[zone]);
    let r = http
        .get(format!("http://{addr}{path}"))
        .header("host", plan.app_host(app))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| crate::health::error_chain(&e))?;
    let s = r.status().as_u16();
    Ok((s, r.text().await.unwrap_or_default()))
}

/// Waits until every zone's external router serves `app` with 200 (and the body `want`, if given).
pub async fn wait_served(
    plan: &Plan,
    app: &str,
    want: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let http = crate::health::http_client();
    let deadline = Instant::now() + timeout;
    loop {
        let mut last = String::new();
        let mut all = true;
        for z in 0..plan.zones.len() {
            match get_through_router(&http, plan, z, app, "/").await {
                Ok((200, body)) if want.is_none_or(|w| body == w) => {}
                Ok((s, body)) => {
                    all = false;
                    last = format!(
                        "zone {z}: {s} {:?}",
                        body.chars().take(80).collect::<String>()
                    );
                }
                Err(e) => {
                    all = false;
                    last = format!("zone {z}: {e}");
                }
            }
        }
        if all {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{app} not served through the routers after {timeout:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_sha_follows_the_content_only() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("www")).unwrap();
        std::fs::write(
            a.path().join("atlantis.toml"),
            "name = \"hello\" # the app\n",
        )
        .unwrap();
        std::fs::write(a.path().join("www/index.html"), "one\n").unwrap();
        let s1 = content_sha(a.path()).unwrap();
        assert_eq!(s1.len(), 12);
        assert!(
            s1.parse::<atlantis_common::Sha>().is_ok(),
            "{s1} is a valid sha"
        );
        assert_eq!(content_sha(a.path()).unwrap(), s1, "stable");
        std::fs::write(a.path().join("www/index.html"), "two\n").unwrap();
        let s2 = content_sha(a.path()).unwrap();
        assert_ne!(s1, s2, "an edit gives a new sha");
        std::fs::write(a.path().join("www/index.html"), "one\n").unwrap();
        assert_eq!(content_sha(a.path()).unwrap(), s1, "same content, same sha");
        assert_eq!(app_name(a.path()).unwrap(), "hello");
        std::os::unix::fs::symlink("/etc/passwd", a.path().join("www/link")).unwrap();
        let e = content_sha(a.path()).unwrap_err().to_string();
        assert!(e.contains("only regular files"), "{e}");
    }

    #[test]
    fn the_sample_app_has_a_name_and_a_page() {
        let d = sample_dir();
        assert_eq!(app_name(&d).unwrap(), "hello");
        assert!(d.join("www/index.html").is_file());
        assert!(d.join("www/healthz").is_file());
    }
}
