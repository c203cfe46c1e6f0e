//! `docker push` / `docker pull` through a real Docker Engine (Debian's docker.io, in its own network
//! namespace via the testkit). The registry binary runs inside that namespace on its 127.0.0.1, which
//! Docker treats as a plain-HTTP registry, with basic auth turned on, so `docker login` is exercised too.

use std::process::Stdio;
use std::time::Duration;

use atlantis_testkit::docker::Dockerd;
use atlantis_testkit::process::Guarded;

use crate::common::succeeded;

const PORT: u16 = 5000;

fn digest_of_push(output: &str) -> String {
    // "1: digest: sha256:... size: 527"
    let line = output
        .lines()
        .find(|l| l.contains("digest: sha256:"))
        .unwrap_or_else(|| panic!("no digest in push output: {output}"));
    line.split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
fn docker_push_and_pull_digest_for_digest() {
    let d = Dockerd::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("storage");
    let config = work.path().join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{PORT}\"\n[storage]\nkind = \"filesystem\"\nroot = \"{}\"\n\
             [auth]\n[[auth.users]]\nname = \"builder\"\npassword = \"s3cret\"\n\
             [[auth.access]]\nprefix = \"\"\npull = [\"*\"]\npush = [\"builder\"]\n",
            root.display()
        ),
    )
    .unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_atlantis-registry"));
    let args = vec!["--config".to_owned(), config.display().to_string()];
    let server = Guarded::spawn(
        "atlantis-registry",
        &bin,
        &args,
        &work.path().join("registry.log"),
        Some(&d.netns_path()),
    );
    atlantis_testkit::wait_until(
        Duration::from_secs(20),
        "the registry to answer in the namespace",
        || {
            assert!(
                server.is_running(),
                "registry exited: {}",
                server.log_tail(20)
            );
            let out = d
                .in_netns("curl")
                .args(["-sf", &format!("http://127.0.0.1:{PORT}/healthz")])
                .output()
                .ok()?;
            out.status.success().then_some(())
        },
    );

    let reg = format!("127.0.0.1:{PORT}");
    let base = format!("{reg}/apps/busybox:1");
    let app = format!("{reg}/apps/web:2");
    let base_id = d.import_busybox(&base);
    // A second image on top of the first: shares its layer, adds one.
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let payload = crate::common::bytes(77, 512 * 1024);
    std::fs::write(ctx.join("data.bin"), &payload).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nCOPY data.bin /data.bin\n"),
    )
    .unwrap();
    let out = d
        .docker()
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &app])
        .arg(&ctx)
        .output()
        .unwrap();
    succeeded("docker build", out);
    let app_id = d.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &app]);

    let docker_config = work.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let docker = |args: &[&str]| {
        let out = d
            .docker()
            .env("DOCKER_CONFIG", &docker_config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };

    // Without credentials the push is refused.
    let (ok, text) = docker(&["push", &base]);
    assert!(!ok, "anonymous push must fail: {text}");
    assert!(
        text.contains("authentication")
            || text.contains("unauthorized")
            || text.contains("no basic auth"),
        "{text}"
    );
    // Wrong password, then the right one.
    let login = |pw: &str| {
        let mut c = d.docker();
        c.env("DOCKER_CONFIG", &docker_config).args([
            "login",
            &reg,
            "-u",
            "builder",
            "--password-stdin",
        ]);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pw.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap().status.success()
    };
    assert!(!login("wrong"), "a wrong password is refused");
    assert!(login("s3cret"), "docker login works");

    let (ok, text) = docker(&["push", &base]);
    assert!(ok, "push base: {text}");
    let base_digest = digest_of_push(&text);
    let (ok, text) = docker(&["push", &app]);
    assert!(ok, "push app: {text}");
    assert!(
        text.contains("Mounted from apps/busybox") || text.contains("Layer already exists"),
        "shared layer not re-sent: {text}"
    );
    let app_digest = digest_of_push(&text);
    // The registry's tags point at exactly what docker reported.
    for (repo, tag, digest) in [
        ("apps/busybox", "1", &base_digest),
        ("apps/web", "2", &app_digest),
    ] {
        let link = std::fs::read_to_string(root.join(format!(
            "repositories/{repo}/_manifests/tags/{tag}/current/link"
        )))
        .unwrap();
        assert_eq!(&link, digest);
    }

    // Remove the local images, pull them back, compare IDs and digests, and run the result.
    let (ok, text) = docker(&["rmi", &app, &base]);
    assert!(ok, "rmi: {text}");
    assert!(!docker(&["image", "inspect", &app]).0);
    let (ok, text) = docker(&["pull", &app]);
    assert!(ok, "pull app: {text}");
    assert!(
        text.contains(&app_digest),
        "pull reports the pushed digest: {text}"
    );
    let (ok, text) = docker(&["pull", &base]);
    assert!(ok, "pull base: {text}");
    assert_eq!(
        d.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &app]),
        app_id,
        "same image ID after the round trip"
    );
    assert_eq!(
        d.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &base]),
        base_id.trim()
    );
    let repo_digests = d.docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &app,
    ]);
    assert!(repo_digests.contains(&app_digest), "{repo_digests}");
    let out = d
        .docker()
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            &app,
            "/bin/busybox",
            "sha256sum",
            "/data.bin",
        ])
        .output()
        .unwrap();
    let out = succeeded("run", out);
    let sum = String::from_utf8_lossy(&out.stdout);
    assert!(
        sum.starts_with(crate::common::sha256(&payload).trim_start_matches("sha256:")),
        "layer content intact: {sum}"
    );
    drop(server);
}
