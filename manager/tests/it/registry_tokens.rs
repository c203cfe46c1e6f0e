//! Registry tokens issued by the manager, checked by a real registry and used by real clients (skopeo,
//! docker): what each token may pull and push, build tokens scoped to one app, and the audit of issues.

use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::Env;
use crate::support::{admin_token, unique};

/// A one-layer OCI layout in `dir` tagged `tag`.
fn oci_layout(dir: &std::path::Path, tag: &str) {
    use sha2::Digest as _;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let h = hex::encode(sha2::Sha256::digest(data));
        std::fs::write(blobs.join(&h), data).unwrap();
        (format!("sha256:{h}"), data.len())
    };
    let (ld, ls) = put(format!("layer {}", unique()).as_bytes());
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [ld]}
    }))
    .unwrap();
    let (cd, cs) = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]
    }))
    .unwrap();
    let (md, ms) = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
        .unwrap(),
    )
    .unwrap();
}

async fn skopeo(args: &[String]) -> (bool, String) {
    let bin = atlantis_testkit::require_bin("skopeo", "skopeo");
    let out = tokio::process::Command::new(bin)
        .arg("--insecure-policy")
        .args(args)
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A registry on `ip` that accepts only tokens of `e`'s manager.
async fn token_registry(
    e: &Env,
    ip: std::net::IpAddr,
    public_key: String,
) -> (
    std::net::SocketAddr,
    atlantis_common::shutdown::CancellationToken,
    tempfile::TempDir,
) {
    let store = tempfile::tempdir().unwrap();
    let reg = atlantis_registry::App::build(atlantis_registry::Config {
        listen: std::net::SocketAddr::new(ip, 0),
        storage: atlantis_registry::config::StorageConfig {
            kind: atlantis_registry::config::StorageKind::Filesystem,
            root: store.path().join("storage"),
            s3: None,
        },
        auth: Some(atlantis_registry::auth::AuthConfig {
            token: Some(atlantis_registry::auth::TokenAuthConfig {
                realm: format!("{}/v1/registry/token", e.base),
                service: "atlantis-registry".into(),
                issuer: "atlantis-manager".into(),
                public_key,
                advertise: true,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = reg.local_addr();
    let stop = atlantis_common::shutdown::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = reg.serve(s).await;
    });
    (addr, stop, store)
}

fn registry_token_config(
    dir: &std::path::Path,
) -> atlantis_manager::auth::registry::RegistryTokenConfig {
    atlantis_manager::auth::registry::RegistryTokenConfig {
        key_file: dir.join("registry.key"),
        service: "atlantis-registry".into(),
        issuer: "atlantis-manager".into(),
        ttl_s: 300,
        build_ttl_s: 3600,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_tokens_from_the_manager_with_skopeo() {
    let (e, admin, public_key) = manager_issuing_registry_tokens().await;

    // The registry trusts the manager's tokens, and nothing else.
    let (reg_addr, stop, _store) =
        token_registry(&e, "127.0.0.1".parse().unwrap(), public_key).await;

    for (app, team) in [("web", "team-a"), ("other", "team-b")] {
        let (s, v) = e
            .call(
                Some(&admin),
                Method::POST,
                "/v1/apps",
                Some(json!({"name": app, "team": team})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let mint = |apps: &str, scope: &str| {
        let body = json!({"name": "ci", "apps": [apps], "scope": scope, "ttl_s": 600});
        let e = &e;
        let admin = admin.clone();
        async move {
            let (s, v) = e
                .call(Some(&admin), Method::POST, "/v1/tokens", Some(body))
                .await;
            assert_eq!(s, 200, "{v}");
            v["token"].as_str().unwrap().to_owned()
        }
    };
    let deploy = mint("web", "deploy").await;
    let read = mint("web", "read").await;
    let other = mint("other", "deploy").await;

    let layout = tempfile::tempdir().unwrap();
    oci_layout(layout.path(), "v1");
    let src = format!("oci:{}:v1", layout.path().display());
    let dest = format!("docker://{reg_addr}/apps/web:v1");
    let push = |creds: Option<String>| {
        let mut a: Vec<String> = vec!["copy".into(), "--dest-tls-verify=false".into()];
        if let Some(c) = creds {
            a.push("--dest-creds".into());
            a.push(c);
        }
        a.push(src.clone());
        a.push(dest.clone());
        a
    };
    let inspect = |creds: Option<String>| {
        let mut a: Vec<String> = vec![
            "inspect".into(),
            "--raw".into(),
            "--tls-verify=false".into(),
        ];
        if let Some(c) = creds {
            a.push("--creds".into());
            a.push(c);
        }
        a.push(dest.clone());
        a
    };
    // Refused pushes: no credentials, a pull-only token, another app's token, a tampered token.
    let tampered = format!("{}x", &deploy[..deploy.len() - 1]);
    for (what, creds) in [
        ("anonymous", None),
        ("read token", Some(format!("ci:{read}"))),
        ("other app's token", Some(format!("ci:{other}"))),
        ("tampered token", Some(format!("ci:{tampered}"))),
        (
            "cluster token",
            Some(format!("supervisor:{}", crate::support::TOKEN)),
        ),
    ] {
        let (ok, out) = skopeo(&push(creds)).await;
        assert!(!ok, "{what} must not push: {out}");
    }
    let r = e
        .http
        .get(format!("http://{reg_addr}/v2/apps/web/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("/v1/registry/token"),
        "{:?}",
        r.headers()
    );
    // The deploy token of the app pushes; the read token and the cluster token pull; anonymous does not.
    let (ok, out) = skopeo(&push(Some(format!("ci:{deploy}")))).await;
    assert!(ok, "push with the app's deploy token: {out}");
    for creds in [
        format!("ci:{read}"),
        format!("supervisor:{}", crate::support::TOKEN),
        format!("admin:{admin}"),
    ] {
        let (ok, out) = skopeo(&inspect(Some(creds.clone()))).await;
        assert!(ok && out.contains("schemaVersion"), "{creds}: {out}");
    }
    for creds in [None, Some(format!("ci:{other}"))] {
        let (ok, out) = skopeo(&inspect(creds)).await;
        assert!(!ok, "{out}");
    }
    // The token endpoint itself wants credentials.
    let r = e
        .http
        .get(format!(
            "{}/v1/registry/token?service=atlantis-registry&scope=repository:apps/web:pull",
            e.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    stop.cancel();
    e.manager.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_logs_in_and_pushes_with_a_team_token() {
    use atlantis_testkit::docker::Dockerd;
    let d = tokio::task::spawn_blocking(|| {
        let d = Dockerd::start_with_args(&["--insecure-registry", "10.0.0.0/8"]);
        d.import_busybox("atlantis-test/busybox:1");
        d
    })
    .await
    .unwrap();
    let ip: std::net::IpAddr = d.host_ip().into();
    // The engine in its namespace reaches the manager (the token realm) and the registry on the host's
    // address of its link.
    let e = Env::start_with(None, |cfg, dir| {
        cfg.listen = std::net::SocketAddr::new(ip, 0);
        cfg.auth.registry = Some(registry_token_config(dir));
    })
    .await;
    let m = e.manager.as_ref().unwrap();
    let admin = admin_token(m);
    let dir = m
        .admin_token_file
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let public_key =
        atlantis_manager::auth::registry::public_key(&dir.join("registry.key")).unwrap();
    let (reg_addr, stop, _store) = token_registry(&e, ip, public_key).await;
    let (s, v) = e
        .call(
            Some(&admin),
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "web", "team": "team-a"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let mut tokens = Vec::new();
    for scope in ["deploy", "read"] {
        let (s, v) = e
            .call(
                Some(&admin),
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": "ci", "apps": ["web"], "scope": scope, "ttl_s": 600})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        tokens.push(v["token"].as_str().unwrap().to_owned());
    }
    let config = tempfile::tempdir().unwrap();
    let docker = |args: Vec<String>, stdin: Option<String>| {
        use std::io::Write as _;
        let mut c = d.docker();
        c.env("DOCKER_CONFIG", config.path())
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let image = format!("{reg_addr}/apps/web:v1");
    // The token goes through stdin, never the command line.
    let login = || {
        [
            "login",
            "-u",
            "ci",
            "--password-stdin",
            &reg_addr.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let (ok, out) = docker(
        vec![
            "tag".into(),
            "atlantis-test/busybox:1".into(),
            image.clone(),
        ],
        None,
    );
    assert!(ok, "{out}");
    // Without logging in the push is refused; with the read token too; with the deploy token it works.
    let (ok, out) = docker(vec!["push".into(), image.clone()], None);
    assert!(!ok, "anonymous push: {out}");
    let (ok, out) = docker(login(), Some(tokens[1].clone()));
    assert!(ok, "docker login with a read token: {out}");
    let (ok, out) = docker(vec!["push".into(), image.clone()], None);
    assert!(!ok, "push with a read token: {out}");
    let (ok, out) = docker(login(), Some(tokens[0].clone()));
    assert!(ok, "docker login with a deploy token: {out}");
    let (ok, out) = docker(vec!["push".into(), image.clone()], None);
    assert!(ok, "push with the team's deploy token: {out}");
    // A wrong password does not log in.
    let (ok, out) = docker(login(), Some("v1.bogus.token".into()));
    assert!(!ok, "docker login with a bogus token: {out}");
    stop.cancel();
    e.manager.unwrap().shutdown().await;
}

/// `POST /v1/apps/{app}/build-token`: whoever may deploy the app gets a token that pushes `apps/<app>`
/// and nothing else (the registry checks it); read tokens and other apps' tokens get none; every issue
/// is audited without the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_tokens_push_only_their_app() {
    let (e, admin, public_key) = manager_issuing_registry_tokens().await;
    let (reg_addr, stop, _store) =
        token_registry(&e, "127.0.0.1".parse().unwrap(), public_key).await;
    for (app, team) in [("web", "team-a"), ("other", "team-b")] {
        let (s, v) = e
            .call(
                Some(&admin),
                Method::POST,
                "/v1/apps",
                Some(json!({"name": app, "team": team})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let mut ci = std::collections::HashMap::new();
    for (app, scope) in [("web", "deploy"), ("web", "read"), ("other", "deploy")] {
        let body = json!({"name": "ci", "apps": [app], "scope": scope, "ttl_s": 600});
        let (s, v) = e
            .call(Some(&admin), Method::POST, "/v1/tokens", Some(body))
            .await;
        assert_eq!(s, 200, "{v}");
        ci.insert((app, scope), v["token"].as_str().unwrap().to_owned());
    }
    let issue = |token: String, app: &'static str| {
        let e = &e;
        async move {
            e.call(
                Some(&token),
                Method::POST,
                &format!("/v1/apps/{app}/build-token"),
                None,
            )
            .await
        }
    };
    // Refused: a read token, another app's token, no token; an unknown app.
    for (what, token, app, want) in [
        ("read scope", ci[&("web", "read")].clone(), "web", 403),
        ("other app", ci[&("other", "deploy")].clone(), "web", 403),
        ("no token", String::new(), "web", 401),
        ("unknown app", admin.clone(), "nope", 404),
    ] {
        let (s, v) = issue(token, app).await;
        assert_eq!(s, want, "{what}: {v}");
    }
    let (s, v) = issue(ci[&("web", "deploy")].clone(), "web").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["repository"], "apps/web");
    assert_eq!(v["expires_in"], 3600);
    let token = v["token"].as_str().unwrap().to_owned();

    let layout = tempfile::tempdir().unwrap();
    oci_layout(layout.path(), "v1");
    let src = format!("oci:{}:v1", layout.path().display());
    let push = |repo: &str| {
        vec![
            "copy".to_owned(),
            "--dest-tls-verify=false".into(),
            "--dest-registry-token".into(),
            token.clone(),
            src.clone(),
            format!("docker://{reg_addr}/{repo}:v1"),
        ]
    };
    let (ok, out) = skopeo(&push("apps/web")).await;
    assert!(ok, "the build token pushes apps/web: {out}");
    for repo in ["apps/other", "base/debian"] {
        let (ok, out) = skopeo(&push(repo)).await;
        assert!(!ok, "the build token of web pushed {repo}: {out}");
    }
    // Audited: who asked, for which app, and never the token.
    let (s, v) = e
        .call(Some(&admin), Method::GET, "/v1/audit?app=web", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let text = v.to_string();
    assert!(!text.contains(&token), "the token is in the audit log");
    let entries: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "POST /v1/apps/{app}/build-token")
        .collect();
    assert!(
        entries
            .iter()
            .any(|a| a["user"] == "admin/ci" && a["result"] == "ok"),
        "{text}"
    );
    assert!(
        entries.iter().any(|a| a["result"] == "denied"),
        "refusals are audited too: {text}"
    );
    stop.cancel();
    e.manager.unwrap().shutdown().await;
}

/// A manager that issues registry tokens (`[auth.registry]`), its admin token, and the public key a
/// registry checks those tokens with.
async fn manager_issuing_registry_tokens() -> (Env, String, String) {
    let e = Env::start_with(None, |cfg, dir| {
        cfg.auth.registry = Some(registry_token_config(dir));
    })
    .await;
    let m = e.manager.as_ref().unwrap();
    let admin = admin_token(m);
    let key_file = m
        .admin_token_file
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("registry.key");
    let public_key = atlantis_manager::auth::registry::public_key(&key_file).unwrap();
    (e, admin, public_key)
}
