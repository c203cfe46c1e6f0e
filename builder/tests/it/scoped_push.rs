//! Pushes go only to the configured registry, only to `apps/<app>` of the app built, and only with a
//! token the manager scoped to that app; credentials never reach another host, the build log or the
//! status; git sources are limited to allowed directories and the https and ssh transports.

use std::sync::Arc;

use atlantis_builder::build::{BuildRequest, Source};
use atlantis_builder::push::Credentials;
use serde_json::json;

use crate::common::{builder, git, log, sample, skopeo};
use crate::guard::{Api, Recorder, TokenReg};

const SHA: &str = "1a2b3c4d5e6f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_push_only_their_app_to_the_configured_registry_with_a_scoped_token() {
    let tr = TokenReg::start().await;
    let (allowed, app) = sample("busybox-web");
    let cache = tempfile::tempdir().unwrap();
    let api = Api::start(&tr.reg.host(), allowed.path(), cache.path()).await;
    let foreign = Recorder::silent().await;
    let token = tr.token("busybox-web", &["pull", "push"]);
    let other_token = tr.token("other-web", &["pull", "push"]);
    let pull_only = tr.token("busybox-web", &["pull"]);

    let refused: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "a foreign push host",
            json!({"source": {"dir": app}, "push": format!("{}/apps/busybox-web:{SHA}", foreign.host()),
                   "app": "busybox-web", "registry_token": token}),
            "is not this builder's registry",
        ),
        (
            "a foreign push host, without app",
            json!({"source": {"dir": app}, "push": format!("localhost:{}/apps/busybox-web:{SHA}", foreign.addr.port()),
                   "registry_token": token}),
            "is not this builder's registry",
        ),
        (
            "another app's repository",
            json!({"source": {"dir": app}, "push": format!("{}/apps/other-web:{SHA}", tr.reg.host()),
                   "app": "busybox-web", "registry_token": token}),
            "may push only apps/busybox-web",
        ),
        (
            "a repository outside apps/",
            json!({"source": {"dir": app}, "push": format!("{}/base/debian:{SHA}", tr.reg.host()),
                   "registry_token": token}),
            "is not apps/<app>",
        ),
        (
            "another app's token",
            json!({"source": {"dir": app}, "app": "busybox-web", "sha": SHA, "registry_token": other_token}),
            "a build token is scoped to apps/busybox-web only",
        ),
        (
            "a pull-only token",
            json!({"source": {"dir": app}, "app": "busybox-web", "sha": SHA, "registry_token": pull_only}),
            "does not grant push",
        ),
        (
            "not a registry token",
            json!({"source": {"dir": app}, "app": "busybox-web", "sha": SHA, "registry_token": "api-secret"}),
            "is not a manager-issued registry token",
        ),
        (
            "no token while the registry wants one",
            json!({"source": {"dir": app}, "app": "busybox-web", "sha": SHA}),
            "needs credentials: pass registry_token",
        ),
    ];
    for (what, body, want) in refused {
        let (code, v) = api.start_build(body).await;
        assert_eq!(code, 400, "{what}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{what}: {v}");
        for t in [&token, &other_token, &pull_only] {
            assert!(
                !msg.contains(t.as_str()),
                "{what}: the message echoes a token"
            );
        }
    }
    assert!(
        foreign.saw_nothing().await,
        "the foreign host was contacted: {:?}",
        foreign.heads.lock().unwrap()
    );
    assert!(tr.catalog().await.is_empty(), "nothing was pushed");

    // The app's own token: built and pushed; the token appears in neither the status nor the log.
    let (code, v) = api
        .start_build(json!({"source": {"dir": app}, "app": "busybox-web", "sha": SHA, "registry_token": token}))
        .await;
    assert_eq!(code, 202, "{v}");
    let (raw, s, log) = api.finish(v["id"].as_str().unwrap()).await;
    assert!(s.error.is_none(), "{:?}\n{log}", s.error);
    assert_eq!(s.image, format!("{}/apps/busybox-web:{SHA}", tr.reg.host()));
    let signature = token.rsplit('.').next().unwrap();
    for text in [&raw, &log] {
        assert!(
            !text.contains(&token) && !text.contains(signature),
            "a credential leaked: {text}"
        );
    }
    assert_eq!(tr.catalog().await, ["apps/busybox-web"]);
    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--registry-token",
        &token,
        &format!("docker://{}/apps/busybox-web:{SHA}", tr.reg.host()),
    ])
    .await;
    assert!(out.contains(s.digest.as_deref().unwrap()), "{out}");

    // A build whose atlantis.toml names another app than the request: refused, nothing pushed.
    let (_d2, renamed) = sample("busybox-web");
    let (_a2, _) = (&allowed, ());
    let dest = allowed.path().join("renamed");
    std::fs::rename(&renamed, &dest).unwrap();
    let toml = std::fs::read_to_string(dest.join("atlantis.toml"))
        .unwrap()
        .replace("name = \"busybox-web\"", "name = \"other-web\"");
    std::fs::write(dest.join("atlantis.toml"), toml).unwrap();
    let (code, v) = api
        .start_build(json!({"source": {"dir": dest}, "app": "busybox-web", "sha": "2b3c4d5", "registry_token": token}))
        .await;
    assert_eq!(code, 202, "{v}");
    let (_, s, _) = api.finish(v["id"].as_str().unwrap()).await;
    let e = s.error.expect("refused");
    assert!(
        e.message.contains("a build pushes only apps/other-web"),
        "{}",
        e.message
    );
    assert_eq!(tr.catalog().await, ["apps/busybox-web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_refuses_a_token_of_another_app() {
    // The builder library alone (no API check before): the registry itself refuses the push.
    let tr = TokenReg::start().await;
    let (_d, app) = sample("busybox-web");
    let toml = std::fs::read_to_string(app.join("atlantis.toml"))
        .unwrap()
        .replace("name = \"busybox-web\"", "name = \"other-web\"");
    std::fs::write(app.join("atlantis.toml"), toml).unwrap();
    let (_c, b) = builder();
    let (l, _) = log();
    let e = b
        .build_as(
            BuildRequest {
                source: Source::Dir(app.clone()),
                sha: None,
                push: Some(
                    format!("{}/apps/other-web:{SHA}", tr.reg.host())
                        .parse()
                        .unwrap(),
                ),
            },
            Some(Credentials::Bearer(
                tr.token("busybox-web", &["pull", "push"]),
            )),
            l,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("DENIED") || e.contains("403"), "{e}");
    assert!(tr.catalog().await.is_empty());
    assert_eq!(tr.reg.uploads().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_follow_a_redirect_an_upload_location_or_a_realm() {
    let (_d, app) = sample("busybox-web");
    let elsewhere = Arc::new(Recorder::silent().await);
    let other = elsewhere.host();
    // Three hostile registries: each sends the builder somewhere else at one step.
    type Mode = fn(&str, &str, &str) -> String;
    let modes: Vec<(&str, Mode)> = vec![
        ("redirect", |other, _m, _p| {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{other}/v2/x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        }),
        ("upload location", |other, m, _p| match m {
            "HEAD" => {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            }
            _ => format!(
                "HTTP/1.1 202 Accepted\r\nlocation: http://{other}/v2/apps/busybox-web/blobs/uploads/1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            ),
        }),
        ("token realm", |other, _m, _p| {
            format!(
                "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"http://{other}/token\",service=\"x\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        }),
    ];
    for (what, mode) in modes {
        let o = other.clone();
        let hostile = Recorder::start(Arc::new(move |m, p| mode(&o, m, p))).await;
        let (_c, b) = builder();
        let (l, _) = log();
        let e = b
            .build_as(
                BuildRequest {
                    source: Source::Dir(app.clone()),
                    sha: None,
                    push: Some(
                        format!("{}/apps/busybox-web:{SHA}", hostile.host())
                            .parse()
                            .unwrap(),
                    ),
                },
                Some(Credentials::Bearer("the-scoped-token".into())),
                l,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains("the-scoped-token"), "{what}: {e}");
        assert!(
            hostile.authorizations() > 0,
            "{what}: the registry got the token"
        );
        if what == "upload location" {
            assert!(
                e.contains("sent the upload to another place"),
                "{what}: {e}"
            );
        }
    }
    assert!(
        elsewhere.saw_nothing().await,
        "another host was contacted: {:?}",
        elsewhere.heads.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_sources_are_limited_to_allowed_dirs_and_https_or_ssh() {
    let tr = TokenReg::start().await;
    let (allowed, app) = sample("busybox-web");
    let cache = tempfile::tempdir().unwrap();
    let api = Api::start(&tr.reg.host(), allowed.path(), cache.path()).await;
    let token = tr.token("busybox-web", &["pull", "push"]);
    // Two repositories holding the app: one under the allowed dir, one outside it.
    let make_repo = |dir: &std::path::Path| {
        std::fs::create_dir_all(dir).unwrap();
        git(dir, &["init", "-q"]);
        let out = std::process::Command::new("cp")
            .arg("-r")
            .arg(&app)
            .arg(dir.join("web"))
            .output()
            .unwrap();
        assert!(out.status.success());
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", "one"]);
        git(dir, &["rev-parse", "HEAD"])
    };
    let inside = allowed.path().join("repo");
    let sha = make_repo(&inside);
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = outside_dir.path().join("repo");
    let sha_out = make_repo(&outside);
    // A symlink under the allowed dir to the outside repository.
    std::os::unix::fs::symlink(&outside, allowed.path().join("link")).unwrap();
    let marker = outside_dir.path().join("pwned");
    let m = marker.display().to_string();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("file://{}", outside.display()),
            &sha_out,
            "allowed_dirs",
        ),
        (
            format!("file://{}/link", allowed.path().display()),
            &sha_out,
            "allowed_dirs",
        ),
        (
            format!("file://{}/repo/../../", allowed.path().display()),
            &sha,
            "allowed_dirs",
        ),
        (outside.display().to_string(), &sha_out, "allowed_dirs"),
        (format!("ext::sh -c touch% {m}"), &sha, "spaces"),
        (format!("ext::touch%20{m}"), &sha, "transport helper"),
        ("fd::0".into(), &sha, "transport helper"),
        (format!("-u touch {m}"), &sha, "option"),
        (format!("--upload-pack=touch {m}"), &sha, "option"),
        ("git://127.0.0.1:9/r".into(), &sha, "git:// transport"),
        ("http://127.0.0.1:9/r".into(), &sha, "http:// transport"),
        ("file://localhost/etc".into(), &sha, "with a host"),
        ("127.0.0.1:r".into(), &sha, "scp-style"),
        ("ssh://-oProxyCommand=touch/r".into(), &sha, "host and path"),
    ];
    for (repo, sha, want) in cases {
        let (code, v) = api
            .start_build(
                json!({"source": {"git": {"repo": repo, "sha": sha, "root": "web"}},
                               "app": "busybox-web", "registry_token": token}),
            )
            .await;
        assert_eq!(code, 400, "{repo}: {v}");
        assert!(
            v["message"].as_str().unwrap_or_default().contains(want),
            "{repo}: {v}"
        );
    }
    assert!(!marker.exists(), "a refused URL ran a command");
    // A file:// URL under the allowed dir builds.
    let (code, v) = api
        .start_build(json!({"source": {"git": {"repo": format!("file://{}", inside.display()), "sha": sha, "root": "web"}},
                           "app": "busybox-web", "registry_token": token}))
        .await;
    assert_eq!(code, 202, "{v}");
    let (_, s, log) = api.finish(v["id"].as_str().unwrap()).await;
    assert!(s.error.is_none(), "{:?}\n{log}", s.error);
    assert_eq!(s.image, format!("{}/apps/busybox-web:{sha}", tr.reg.host()));
}
