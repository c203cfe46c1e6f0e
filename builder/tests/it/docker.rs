//! The images run: the samples of every template are built and pushed by the CLI (with registry credentials), pulled by
//! a real Docker Engine in its own network namespace, started, and answer HTTP.
//!
//! The registry listens on the root end of the engine's veth (not loopback, so it requires
//! authentication for pushes; pulls are anonymous), and the engine treats 10.0.0.0/8 registries as
//! plain HTTP.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use atlantis_registry::auth::{AccessRule, AuthConfig, UserConfig};
use atlantis_testkit::docker::Dockerd;

use crate::common::{Reg, sample};

fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "-m", "2", "--noproxy", "*", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn pushed_images_pull_run_and_answer_http() {
    let d = Dockerd::start_with_args(&["--insecure-registry", "10.0.0.0/8"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let auth = AuthConfig {
        users: vec![UserConfig {
            name: "builder".into(),
            password: Some("s3cret".into()),
            password_sha256: None,
        }],
        tokens: vec![],
        access: vec![AccessRule {
            prefix: String::new(),
            pull: vec!["anonymous".into()],
            push: vec!["builder".into()],
        }],
        token: None,
    };
    let listen = SocketAddr::new(d.host_ip().into(), 0);
    let reg = rt.block_on(Reg::start_with(listen, Some(auth)));
    // The debian test's cache: its Debian root is made once per machine.
    let cache = crate::debian::debian_builder().cache().dir().to_owned();
    // The engine logs in too: the registry asks every client without credentials for them.
    let docker_config = tempfile::tempdir().unwrap();
    let docker = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write as _;
        let mut c = d.docker();
        c.env("DOCKER_CONFIG", docker_config.path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    docker(
        &["login", "-u", "builder", "--password-stdin", &reg.host()],
        Some("s3cret"),
    );
    let sha = "0123abcd";
    let cases = [
        ("static-web", "/", "static-web index v1\n"),
        (
            "busybox-web",
            "/greeting.txt",
            "hello from the busybox template\n",
        ),
    ];
    for (i, (name, path, body)) in cases.into_iter().enumerate() {
        let (_dir, app) = sample(name);
        let target = format!("{}/apps/{name}:{sha}", reg.host());
        let out = Command::new(env!("CARGO_BIN_EXE_atlantis-builder"))
            .arg("build")
            .arg(&app)
            .args(["--push", &target, "--cache-dir"])
            .arg(&cache)
            .env("ATLANTIS_REGISTRY_USER", "builder")
            .env("ATLANTIS_REGISTRY_PASSWORD", "s3cret")
            .env_remove("ATLANTIS_REGISTRY_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pushed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let digest = pushed.rsplit_once('@').unwrap().1.to_owned();

        docker(&["pull", "-q", &target], None);
        let repo_digests = d.docker_ok(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &target,
        ]);
        assert!(
            repo_digests.contains(&digest),
            "{name}: pulled {repo_digests}, pushed {digest}"
        );
        let label = d.docker_ok(&[
            "image",
            "inspect",
            "--format",
            "{{index .Config.Labels \"atlantis.sha\"}}",
            &target,
        ]);
        assert_eq!(label, sha);

        let port = 18080 + i as u16;
        let publish = format!("{}:{port}:8080", d.ns_ip());
        d.docker_ok(&["run", "-d", "--name", name, "-p", &publish, &target]);
        let url = format!("http://{}:{port}{path}", d.ns_ip());
        let got = atlantis_testkit::wait_until(
            Duration::from_secs(30),
            &format!("{name} to answer {url}"),
            || curl(&url),
        );
        assert_eq!(got, body, "{name}");
        let health = curl(&format!("http://{}:{port}/healthz", d.ns_ip()));
        assert_eq!(health.as_deref(), Some("ok\n"), "{name}");
    }
    drop(reg);
    drop(rt);
}
