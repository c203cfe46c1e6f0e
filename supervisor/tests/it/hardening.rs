//! Container root is not host root, and the cluster token file must be private.
//!
//! The test engine runs with `--userns-remap=default` (common/testkit/src/docker.rs), as
//! docs/operations.md tells operators to run theirs. A container the supervisor deploys (with its config
//! bind mount, exec and health check working) is uid 0 inside and the remapped uid on the host: the
//! kernel's view of its process (`/proc/<pid>/status` on the host), its own `uid_map`, and the owner on
//! the host of a file it creates. A token file readable by group or others stops the supervisor at start
//! with a clear message.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::process::Command;

use atlantis_supervisor::App;

use crate::{Client, Host, TOKEN, init_tracing, spec};

/// The Uid line of a process on the host: real, effective, saved, filesystem.
fn host_uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_root_is_not_host_root() {
    init_tracing();
    let first = atlantis_testkit::docker::ensure_remap_user();
    let host = Host::start("host-u", "zone-u");
    let app = App::build(host.config(None))
        .await
        .expect("supervisor starts");
    let client = Client::for_app(&app);
    let mut web = spec("web", "prod");
    web.config = Some("remapped\n".into());
    let info = client.deploy_ok(&web).await;
    let cid = web.container_id.to_string();
    assert!(info.docker_id.is_some());

    let inside = host.docker.docker_ok(&["exec", &cid, "id", "-u"]);
    assert_eq!(inside, "0", "root inside the container");
    let map = host
        .docker
        .docker_ok(&["exec", &cid, "cat", "/proc/self/uid_map"]);
    let map: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(
        map,
        ["0", &first.to_string(), "65536"],
        "uid 0 inside maps to {first} outside"
    );
    let config = host
        .docker
        .docker_ok(&["exec", &cid, "cat", "/etc/atlantis/config"]);
    assert_eq!(config, "remapped", "the config bind mount is readable");

    // The kernel's view from the host: the container's first process runs as the remapped uid.
    let pid: u32 = host
        .docker
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", &cid])
        .parse()
        .unwrap();
    let uids = host_uids(pid);
    assert!(
        uids.iter().all(|u| *u == first),
        "uids of the container's process on the host: {uids:?}"
    );
    assert!(!uids.contains(&0));

    // A file root creates in the container belongs to the remapped uid on the host.
    host.docker
        .docker_ok(&["exec", &cid, "sh", "-c", "echo x > /tmp/made-by-root"]);
    let merged = host
        .docker
        .docker_ok(&["inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", &cid]);
    let made = PathBuf::from(merged).join("tmp/made-by-root");
    let meta = std::fs::metadata(&made).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (first, first),
        "{}",
        made.display()
    );

    let (s, body) = client
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/containers/{cid}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    app.shutdown().await;
}

#[test]
fn a_token_file_others_can_read_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let cfg = dir.path().join("supervisor.toml");
    std::fs::write(
        &cfg,
        format!(
            "host = \"h1\"\nzone = \"z1\"\nregion = \"test\"\ntoken_file = \"{}\"\ndata_dir = \"{}\"\n\
             [docker]\nsocket = \"{}\"\n",
            token.display(),
            dir.path().join("data").display(),
            dir.path().join("no-engine.sock").display()
        ),
    )
    .unwrap();
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_atlantis-supervisor"));
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = Command::new(&bin)
            .args(["--config", &cfg.display().to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "mode {mode:o}: started");
        assert!(
            err.contains("readable or writable by group or others")
                && err.contains(&format!("mode {mode:04o}"))
                && err.contains("chmod 600")
                && err.contains(&token.display().to_string()),
            "mode {mode:o}: {err}"
        );
    }
    // 0600 passes the token check (it then stops at the missing engine, not at the token).
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(atlantis_supervisor::read_token(&token).is_ok());
    let out = Command::new(&bin)
        .args(["--config", &cfg.display().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !err.contains("group or others") && err.contains("docker"),
        "{err}"
    );
}
