//! Bad input gets a clear 4xx and starts nothing; images are pulled by digest from a real registry;
//! a container that never gets healthy is removed and reported.

use std::time::Duration;

use atlantis_common::api::supervisor::{ContainerState, SupervisorHealth, TeardownResponse};
use atlantis_supervisor::App;
use atlantis_testkit::process::Guarded;
use reqwest::Method;

use crate::{Client, Host, init_tracing, spec};

/// The registry user and password (basic auth, as our registry requires credentials for pulls).
const REG_USER: &str = "puller";
const REG_PASSWORD: &str = "s3cret-pull-password";

/// Debian's `docker-registry` inside the host's namespace on 127.0.0.1:5000 (the engine treats loopback
/// registries as insecure, so no daemon flag is needed), with htpasswd (bcrypt) basic auth.
fn registry(host: &Host) -> Guarded {
    let bin = atlantis_testkit::require_bin("docker-registry", "docker-registry");
    let python = atlantis_testkit::require_bin("python3", "python3");
    let dir = host.dir.path().join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    let script =
        "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))";
    let hash = std::process::Command::new(python)
        .args(["-W", "ignore", "-c", script, REG_PASSWORD])
        .output()
        .unwrap();
    assert!(
        hash.status.success(),
        "bcrypt via python3: {}",
        String::from_utf8_lossy(&hash.stderr)
    );
    let line = format!(
        "{REG_USER}:{}\n",
        String::from_utf8_lossy(&hash.stdout).trim()
    );
    std::fs::write(dir.join("htpasswd"), line).unwrap();
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
             auth: {{htpasswd: {{realm: atlantis, path: {}}}}}\nhttp: {{addr: \"127.0.0.1:5000\", secret: test-secret}}\n",
            dir.join("data").display(),
            dir.join("htpasswd").display()
        ),
    )
    .unwrap();
    let ns = host.docker.netns_path();
    let g = Guarded::spawn(
        "registry",
        &bin,
        &["serve".into(), cfg.display().to_string()],
        &dir.join("log"),
        Some(&ns),
    );
    atlantis_testkit::wait_until(Duration::from_secs(10), "registry", || {
        let out = host
            .docker
            .in_netns("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:5000/v2/",
            ])
            .output()
            .ok()?;
        (String::from_utf8_lossy(&out.stdout) == "401").then_some(())
    });
    g
}

/// Pushes the test image as `127.0.0.1:5000/apps/web:v1` (logged in with a private docker CLI config),
/// untags it locally, checks that an anonymous pull is refused, returns the digest reference.
fn push_image(host: &Host) -> String {
    use std::io::Write as _;
    let cli_cfg = host.dir.path().join("docker-cli").display().to_string();
    let tag = "127.0.0.1:5000/apps/web:v1";
    let mut login = host.docker.docker();
    login.args([
        "--config",
        &cli_cfg,
        "login",
        "-u",
        REG_USER,
        "--password-stdin",
        "127.0.0.1:5000",
    ]);
    login
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(REG_PASSWORD.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    host.docker.docker_ok(&["tag", crate::IMAGE, tag]);
    let out = host.docker.docker_ok(&["--config", &cli_cfg, "push", tag]);
    let digest = out
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in: {out}"))
        .to_owned();
    host.docker.docker_ok(&["rmi", tag]);
    let reference = format!("127.0.0.1:5000/apps/web@{digest}");
    let missing = host.docker.docker_output(&["image", "inspect", &reference]);
    assert!(
        !missing.status.success(),
        "the digest must not be present locally before the deploy"
    );
    let anonymous = host.docker.docker_output(&["pull", &reference]);
    assert!(
        !anonymous.status.success(),
        "the registry must refuse anonymous pulls"
    );
    reference
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_starts() {
    init_tracing();
    let host = Host::start("host-b", "zone-b");
    let _registry = registry(&host);
    let by_digest = push_image(&host);
    let password_file = host.dir.path().join("registry-password");
    std::fs::write(&password_file, format!("{REG_PASSWORD}\n")).unwrap();
    let mut cfg = host.config(None);
    cfg.docker.registry_auth = Some(atlantis_supervisor::config::RegistryAuth {
        server: "127.0.0.1:5000".into(),
        username: REG_USER.into(),
        password_file,
    });
    let app = App::build(cfg).await.expect("supervisor starts");
    let client = Client::for_app(&app);
    let good = spec("web", "prod");
    let good_json = serde_json::to_value(&good).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good_json.clone();
        f(&mut v);
        v.to_string()
    };

    // Authentication.
    let anon = Client {
        token: "wrong-token-0123456789".into(),
        ..Client::new(app.addr)
    };
    let (s, body) = anon.send(Method::GET, "/v1/containers", None).await;
    assert_eq!(
        (s, body.contains("\"unauthorized\"")),
        (401, true),
        "{body}"
    );
    let (s, _) = anon
        .send(Method::POST, "/v1/containers", Some(good_json.to_string()))
        .await;
    assert_eq!(s, 401);

    // Malformed and invalid specs.
    client
        .deploy_err("{not json".into(), 400, "invalid_request")
        .await;
    let m = client
        .deploy_err(
            with(&|v| v["app"] = "Bad_App".into()),
            400,
            "invalid_request",
        )
        .await;
    assert!(m.contains("invalid app name"), "{m}");
    let m = client
        .deploy_err(
            with(&|v| v["container_id"] = "../../etc".into()),
            400,
            "invalid_request",
        )
        .await;
    assert!(m.contains("invalid container id"), "{m}");
    let m = client
        .deploy_err(
            with(&|v| v["ports"] = serde_json::json!([70000])),
            400,
            "invalid_request",
        )
        .await;
    assert!(m.contains("70000"), "{m}");
    let m = client
        .deploy_err(
            with(&|v| v["ports"] = serde_json::json!([0])),
            400,
            "invalid_spec",
        )
        .await;
    assert!(m.contains("ports[0]"), "{m}");
    let m = client
        .deploy_err(with(&|v| v["memory_mb"] = 0.into()), 400, "invalid_spec")
        .await;
    assert!(m.contains("memory_mb"), "{m}");
    let m = client
        .deploy_err(with(&|v| v["bogus"] = 1.into()), 400, "invalid_request")
        .await;
    assert!(m.contains("unknown field `bogus`"), "{m}");
    let m = client
        .deploy_err(
            with(&|v| v["env_vars"] = serde_json::json!({"ATLANTIS_HOST": "x"})),
            400,
            "invalid_spec",
        )
        .await;
    assert!(m.contains("reserved"), "{m}");
    let m = client
        .deploy_err(
            with(&|v| v["image"] = "atlantis-test/busybox:1 --privileged".into()),
            400,
            "invalid_spec",
        )
        .await;
    assert!(m.contains("image"), "{m}");
    let huge = with(&|v| v["config"] = "x".repeat(300 * 1024).into());
    client.deploy_err(huge, 413, "too_large").await;

    // Unknown image: a digest our registry does not have.
    let unknown = format!("127.0.0.1:5000/apps/web@sha256:{}", "0".repeat(64));
    let m = client
        .deploy_err(
            with(&|v| v["image"] = unknown.clone().into()),
            422,
            "image_not_found",
        )
        .await;
    assert!(m.contains(&unknown), "{m}");

    // No capacity (the host offers 512 MiB and 2 cores).
    let m = client
        .deploy_err(with(&|v| v["memory_mb"] = 600.into()), 409, "no_capacity")
        .await;
    assert!(m.contains("memory_mb requested 600, free 512"), "{m}");
    let m = client
        .deploy_err(with(&|v| v["cpu_millis"] = 2500.into()), 409, "no_capacity")
        .await;
    assert!(m.contains("cpu_millis"), "{m}");

    // The engine fails halfway (slot 0's host port is taken by someone else on the host): 502, and the
    // created container, the reservation and the rules are all undone.
    let squatter = host.http_server(host.docker.ns_ip(), 41000, true, "squatter\n");
    let m = client
        .deploy_err(
            serde_json::to_string(&spec("web", "prod")).unwrap(),
            502,
            "engine_error",
        )
        .await;
    assert!(m.contains("41000"), "{m}");
    drop(squatter);

    // A container of someone else's already holds the name: refused as a duplicate, and left alone.
    let clash = spec("clash", "prod");
    let clash_id = clash.container_id.to_string();
    host.docker
        .docker_ok(&["create", "--name", &clash_id, crate::IMAGE]);
    let m = client
        .deploy_err(serde_json::to_string(&clash).unwrap(), 409, "duplicate")
        .await;
    assert!(m.contains("already has a container"), "{m}");
    assert_eq!(
        host.container_names(),
        vec![clash_id.clone()],
        "the foreign container is untouched"
    );
    host.docker.docker_ok(&["rm", &clash_id]);

    // Nothing of the above started anything or left a rule.
    assert!(
        host.container_names().is_empty(),
        "{:?}",
        host.container_names()
    );
    assert!(host.atlantis_chains().is_empty());

    // A good deploy by digest pulls from the registry; a duplicate is refused.
    let mut pulled = spec("web", "prod");
    pulled.image = by_digest.clone();
    let info = client.deploy_ok(&pulled).await;
    assert_eq!(info.state, ContainerState::Healthy);
    let m = client
        .deploy_err(serde_json::to_string(&pulled).unwrap(), 409, "duplicate")
        .await;
    assert!(m.contains(pulled.container_id.as_str()), "{m}");
    assert_eq!(
        host.container_names(),
        vec![pulled.container_id.to_string()]
    );

    // Concurrent deploys of one container ID: exactly one wins, the others are duplicates.
    let twin = spec("filler", "prod");
    let body = serde_json::to_string(&twin).unwrap();
    let tries = (0..3).map(|_| client.send(Method::POST, "/v1/containers", Some(body.clone())));
    let mut codes: Vec<u16> = futures::future::join_all(tries)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    codes.sort();
    assert_eq!(codes, vec![201, 409, 409]);
    // Concurrent deploys for the last two slots: exactly two fit, the rest are refused; nothing is
    // double-booked.
    let racers: Vec<_> = (0..4).map(|_| spec("filler", "prod")).collect();
    let tries = racers.iter().map(|r| {
        client.send(
            Method::POST,
            "/v1/containers",
            Some(serde_json::to_string(r).unwrap()),
        )
    });
    let results = futures::future::join_all(tries).await;
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 201).count(),
        2,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .filter(|(s, _)| *s != 201)
            .all(|(s, b)| *s == 409 && b.contains("no_capacity")),
        "{results:?}"
    );
    let held = client.list().await;
    let mut slots: Vec<u32> = held.iter().map(|c| c.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![0, 1, 2, 3]);
    assert_eq!(host.container_names().len(), 4);
    assert_eq!(host.atlantis_chains().len(), 4);
    let (_, h) = client.send(Method::GET, "/v1/health", None).await;
    let h: SupervisorHealth = serde_json::from_str(&h).unwrap();
    assert_eq!(serde_json::to_value(h.status).unwrap(), "FULL");
    let m = client
        .deploy_err(
            serde_json::to_string(&spec("late", "prod")).unwrap(),
            409,
            "no_capacity",
        )
        .await;
    assert!(m.contains("slots"), "{m}");
    assert_eq!(host.container_names().len(), 4);

    // Teardown of an app frees its slots.
    let (s, body) = client
        .send(
            Method::POST,
            "/v1/teardown",
            Some(r#"{"app":"filler"}"#.into()),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let t: TeardownResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(t.removed.len(), 3);

    // A container that exits, and one that never answers its health check: 422, nothing left.
    let mut crash = spec("crash", "prod");
    crash.command = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo going down; exit 3".into(),
    ]);
    crash.ports = vec![8080];
    let m = client
        .deploy_err(serde_json::to_string(&crash).unwrap(), 422, "unhealthy")
        .await;
    assert!(m.contains("exited") && m.contains("going down"), "{m}");
    let mut sick = spec("sick", "prod");
    sick.health.path = "/missing".into();
    sick.health.start_timeout_ms = 1500;
    let m = client
        .deploy_err(serde_json::to_string(&sick).unwrap(), 422, "unhealthy")
        .await;
    assert!(m.contains("404"), "{m}");
    assert_eq!(
        host.container_names(),
        vec![pulled.container_id.to_string()]
    );
    assert_eq!(host.atlantis_chains().len(), 1);

    // Teardown by IDs reports what it did not find.
    let ghost: atlantis_common::ContainerId = "ghost-0123456-prod-aaaaaa".parse().unwrap();
    let body = serde_json::json!({ "container_ids": [pulled.container_id, ghost] }).to_string();
    let (s, body) = client.send(Method::POST, "/v1/teardown", Some(body)).await;
    assert_eq!(s, 200, "{body}");
    let t: TeardownResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (t.removed, t.not_found),
        (vec![pulled.container_id.clone()], vec![ghost])
    );
    client
        .deploy_err(r#"{"env":"prod"}"#.into(), 400, "invalid_request")
        .await;
    let (s, _) = client
        .send(
            Method::POST,
            "/v1/teardown",
            Some(r#"{"env":"prod"}"#.into()),
        )
        .await;
    assert_eq!(s, 400);
    assert!(host.container_names().is_empty());
    assert!(host.atlantis_chains().is_empty());

    // A read-only root filesystem, then a container removed behind the supervisor's back: it is
    // forgotten, its slot freed and its rules removed.
    let mut ro = spec("readonly", "prod");
    ro.read_only_rootfs = true;
    let info = client.deploy_ok(&ro).await;
    let id = ro.container_id.to_string();
    assert_eq!(
        host.docker
            .docker_ok(&["inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", &id]),
        "true"
    );
    assert!(
        !host
            .docker
            .docker_output(&["exec", &id, "touch", "/www/x"])
            .status
            .success()
    );
    assert!(
        host.docker
            .docker_output(&["exec", &id, "touch", "/tmp/x"])
            .status
            .success(),
        "/tmp is writable"
    );
    assert_eq!(info.state, ContainerState::Healthy);
    host.docker.docker_ok(&["rm", "-f", &id]);
    atlantis_testkit::eventually(
        Duration::from_secs(10),
        "removed container forgotten",
        || async {
            let (_, h) = client.send(Method::GET, "/v1/health", None).await;
            let h: SupervisorHealth = serde_json::from_str(&h).ok()?;
            (h.free == h.capacity && host.atlantis_chains().is_empty()).then_some(())
        },
    )
    .await;
    assert!(client.list().await.is_empty());
    app.shutdown().await;
}
