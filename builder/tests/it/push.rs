//! Builds pushed to a real registry: every template, what skopeo sees, same input same digest, a
//! one-file change re-sends one layer, mounts between repositories, chunked uploads, credentials, git.

use atlantis_builder::build::{BuildRequest, Source};
use atlantis_builder::git::GitSource;
use atlantis_builder::push::{Credentials, PushOptions};
use atlantis_builder::{BuildOutput, Builder, Settings};
use atlantis_common::api::app_config::AppConfig;
use atlantis_registry::auth::{AccessRule, AuthConfig, TokenConfig, UserConfig};

use crate::common::{Reg, builder, builder_with, git, log, sample, skopeo};

const SHA: &str = "1a2b3c4d5e6f";

async fn build_push(b: &Builder, dir: &std::path::Path, target: &str) -> BuildOutput {
    let (l, _) = log();
    b.build(
        BuildRequest {
            source: Source::Dir(dir.to_owned()),
            sha: None,
            push: Some(target.parse().unwrap()),
        },
        l,
    )
    .await
    .unwrap_or_else(|e| panic!("build of {} failed: {e}", dir.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_pushes_and_skopeo_sees_config_and_labels() {
    let reg = Reg::start().await;
    let (_c, b) = builder();
    for name in ["static-web", "busybox-web"] {
        let (_d, app) = sample(name);
        let target = format!("{}/apps/{name}:{SHA}", reg.host());
        let before = reg.uploads().await;
        let out = build_push(&b, &app, &target).await;
        let (_, stats) = out.pushed.clone().unwrap();
        assert_eq!(
            (stats.uploaded, stats.existed, stats.mounted),
            (3, 0, 0),
            "{name}"
        );
        assert_eq!(
            reg.uploads().await - before,
            3,
            "{name}: base, app layer, config"
        );

        let docker_ref = format!("docker://{target}");
        let inspect: serde_json::Value =
            serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &docker_ref]).await)
                .unwrap();
        assert_eq!(inspect["Digest"], out.image.digest.as_str(), "{name}");
        assert_eq!(inspect["Labels"]["atlantis.sha"], SHA);
        assert_eq!(inspect["Labels"]["atlantis.app"], name);
        assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
        let label = inspect["Labels"]["atlantis.toml"].as_str().unwrap();
        let cfg = AppConfig::parse(label).unwrap();
        assert_eq!(cfg, out.app);
        assert_eq!(cfg.name.as_str(), name);

        let config: serde_json::Value = serde_json::from_str(
            &skopeo(&["inspect", "--config", "--tls-verify=false", &docker_ref]).await,
        )
        .unwrap();
        assert_eq!(config["config"]["Cmd"], serde_json::json!(cfg.run.0));
        assert!(config["config"]["ExposedPorts"]["8080/tcp"].is_object());
        assert_eq!(config["config"]["WorkingDir"], "/app");
        if name == "busybox-web" {
            let env = config["config"]["Env"].as_array().unwrap();
            assert!(
                env.iter()
                    .any(|e| e == "GREETING=hello from the busybox template"),
                "{env:?}"
            );
        }
    }
    // Both images share nothing but the registry: two repositories.
    let mut cat = reg.catalog().await;
    cat.sort();
    assert_eq!(cat, ["apps/busybox-web", "apps/static-web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_input_gives_the_same_digest_and_sends_nothing_again() {
    let reg = Reg::start().await;
    let target = format!("{}/apps/busybox-web:{SHA}", reg.host());
    let (_d1, app1) = sample("busybox-web");
    let (_c1, b1) = builder();
    let first = build_push(&b1, &app1, &target).await;

    // A second copy, at another path, with other mtimes, built by a builder with an empty cache.
    let (_d2, app2) = sample("busybox-web");
    let out = std::process::Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(app2.join("www/index.html"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let (_c2, b2) = builder();
    let before = (reg.uploads().await, reg.bytes_received().await);
    let second = build_push(&b2, &app2, &target).await;
    assert_eq!(second.image.digest, first.image.digest);
    assert_eq!(second.cached, [false, false], "the second cache was empty");
    let (_, stats) = second.pushed.unwrap();
    assert_eq!((stats.uploaded, stats.existed), (0, 3));
    assert_eq!(
        (reg.uploads().await, reg.bytes_received().await),
        before,
        "nothing was uploaded again"
    );

    // The first builder again: both layers from its cache, same digest.
    let third = build_push(&b1, &app1, &target).await;
    assert_eq!(third.image.digest, first.image.digest);
    assert_eq!(third.cached, [true, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_file_change_sends_only_the_app_layer_and_the_config() {
    let reg = Reg::start().await;
    let target = format!("{}/apps/busybox-web:{SHA}", reg.host());
    let (_d, app) = sample("busybox-web");
    let (_c, b) = builder();
    let first = build_push(&b, &app, &target).await;
    std::fs::write(app.join("www/index.html"), "busybox-web index v2\n").unwrap();
    let before = (reg.uploads().await, reg.bytes_received().await);
    let second = build_push(&b, &app, &target).await;
    assert_ne!(second.image.digest, first.image.digest);
    assert_eq!(
        second.image.layers[0], first.image.layers[0],
        "same base layer"
    );
    assert_ne!(second.image.layers[1], first.image.layers[1]);
    assert_eq!(second.cached, [true, false]);
    let (_, stats) = second.pushed.unwrap();
    assert_eq!((stats.uploaded, stats.existed, stats.mounted), (2, 1, 0));
    let sent = second.image.layers[1].size + second.image.config.len() as u64;
    assert_eq!(stats.bytes_uploaded, sent);
    assert_eq!(
        reg.uploads().await - before.0,
        2,
        "the app layer and the config"
    );
    assert_eq!(reg.bytes_received().await - before.1, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_app_mounts_the_shared_base_layer() {
    let reg = Reg::start().await;
    let (_c, b) = builder();
    let (_d, app) = sample("busybox-web");
    let first = build_push(&b, &app, &format!("{}/apps/busybox-web:{SHA}", reg.host())).await;
    let (_d2, other) = sample("busybox-web");
    let toml = std::fs::read_to_string(other.join("atlantis.toml"))
        .unwrap()
        .replace("name = \"busybox-web\"", "name = \"other-web\"");
    std::fs::write(other.join("atlantis.toml"), toml).unwrap();
    let before = reg.bytes_received().await;
    let out = build_push(&b, &other, &format!("{}/apps/other-web:{SHA}", reg.host())).await;
    let (_, stats) = out.pushed.unwrap();
    assert_eq!(stats.mounted, 1, "{stats:?}");
    assert_eq!(out.image.layers[0], first.image.layers[0]);
    let sent = out.image.layers[1].size + out.image.config.len() as u64;
    assert_eq!(
        reg.bytes_received().await - before,
        sent,
        "the base layer was not sent"
    );
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/apps/other-web:{SHA}", reg.host()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_layers_go_up_in_chunks_and_pull_back_intact() {
    let reg = Reg::start().await;
    let settings = Settings {
        push: PushOptions {
            chunk_size: 64 * 1024,
            ..PushOptions::default()
        },
        ..Settings::default()
    };
    let (_c, b) = builder_with(settings);
    let (_d, app) = sample("static-web");
    let target = format!("{}/apps/static-web:{SHA}", reg.host());
    let patches_before = reg
        .metric(
            "atlantis_registry_http_requests_total",
            &["method=\"PATCH\"", "status=\"202\""],
        )
        .await;
    let out = build_push(&b, &app, &target).await;
    let patches = reg
        .metric(
            "atlantis_registry_http_requests_total",
            &["method=\"PATCH\"", "status=\"202\""],
        )
        .await
        - patches_before;
    let app_layer = out.image.layers[1].size;
    assert!(
        app_layer > 10 * 64 * 1024,
        "the busybox binary makes a big layer"
    );
    assert!(
        patches >= (app_layer / (64 * 1024)) as f64,
        "{patches} chunks"
    );
    // skopeo copies it out and checks every digest on the way.
    let dir = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:x", dir.path().display()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_sent_and_a_refused_push_leaves_nothing() {
    let auth = AuthConfig {
        users: vec![UserConfig {
            name: "builder".into(),
            password: Some("s3cret".into()),
            password_sha256: None,
        }],
        tokens: vec![TokenConfig {
            user: "builder".into(),
            token: Some("tok-123".into()),
            token_sha256: None,
        }],
        access: vec![AccessRule {
            prefix: String::new(),
            pull: vec!["anonymous".into()],
            push: vec!["builder".into()],
        }],
        token: None,
    };
    let reg = Reg::start_with("127.0.0.1:0".parse().unwrap(), Some(auth)).await;
    let (_d, app) = sample("static-web");
    let target = format!("{}/apps/static-web:{SHA}", reg.host());
    let with = |c: Option<Credentials>| {
        builder_with(Settings {
            push: PushOptions {
                credentials: c,
                ..PushOptions::default()
            },
            ..Settings::default()
        })
    };
    for creds in [
        None,
        Some(Credentials::Basic {
            username: "builder".into(),
            password: "wrong".into(),
        }),
        Some(Credentials::Bearer("nope".into())),
    ] {
        let (_c, b) = with(creds.clone());
        let (l, _) = log();
        let e = b
            .build(
                BuildRequest {
                    source: Source::Dir(app.clone()),
                    sha: None,
                    push: Some(target.parse().unwrap()),
                },
                l,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("401") || e.contains("UNAUTHORIZED") || e.contains("DENIED"),
            "{creds:?}: {e}"
        );
    }
    assert_eq!(reg.uploads().await, 0);
    assert!(reg.catalog().await.is_empty());
    let (_c, b) = with(Some(Credentials::Basic {
        username: "builder".into(),
        password: "s3cret".into(),
    }));
    build_push(&b, &app, &target).await;
    let (_c, b) = with(Some(Credentials::Bearer("tok-123".into())));
    let out = build_push(&b, &app, &format!("{}/apps/static-web:2b3c4d5", reg.host())).await;
    assert_eq!(out.pushed.unwrap().1.existed, 2, "layers already there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_input_gives_the_same_image_as_the_directory() {
    let reg = Reg::start().await;
    let (_d, app) = sample("busybox-web");
    // A repository holding the app under apps/web, then a later commit that changes it.
    let repo = tempfile::tempdir().unwrap();
    let r = repo.path();
    git(r, &["init", "-q"]);
    std::fs::create_dir_all(r.join("apps")).unwrap();
    let out = std::process::Command::new("cp")
        .arg("-r")
        .arg(&app)
        .arg(r.join("apps/web"))
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(r.join("README"), "not part of the app").unwrap();
    git(r, &["add", "-A"]);
    git(r, &["commit", "-q", "-m", "web"]);
    let sha = git(r, &["rev-parse", "HEAD"]);
    std::fs::write(r.join("apps/web/www/index.html"), "later").unwrap();
    git(r, &["commit", "-q", "-am", "later"]);

    let short = &sha[..10];
    let (_c, b) = builder();
    let (l, lines) = log();
    let from_git = b
        .build(
            BuildRequest {
                source: Source::Git(GitSource {
                    repo: r.display().to_string(),
                    sha: short.parse().unwrap(),
                    root: "apps/web".into(),
                }),
                sha: None,
                push: Some(
                    format!("{}/apps/busybox-web:{short}", reg.host())
                        .parse()
                        .unwrap(),
                ),
            },
            l,
        )
        .await
        .unwrap();
    assert!(
        lines.lock().unwrap().iter().any(|l| l.contains(&sha)),
        "the log names the full commit"
    );
    let cfg: serde_json::Value = serde_json::from_slice(&from_git.image.config).unwrap();
    assert_eq!(cfg["config"]["Labels"]["atlantis.sha"], short);
    assert_eq!(
        cfg["config"]["Labels"]["org.opencontainers.image.revision"],
        sha.as_str()
    );

    // The directory at that commit, built with the same sha and revision, is the same image.
    let (_c2, b2) = builder();
    let (l2, _) = log();
    let from_dir = b2
        .build(
            BuildRequest {
                source: Source::Dir(app.clone()),
                sha: Some(short.parse().unwrap()),
                push: None,
            },
            l2,
        )
        .await
        .unwrap();
    assert_eq!(from_dir.image.layers, from_git.image.layers, "same layers");
}
