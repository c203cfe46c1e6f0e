//! The aquarium end to end, with real everything (ZooKeeper, two Docker Engines in network namespaces,
//! iptables, the workspace's own service binaries from `target/<profile>`, which `.ci/test` builds first):
//! one cluster for the whole binary, brought up from nothing by the `aquarium` binary itself.
//!
//! `up` → `verify` → `up` again (idempotent) → a new sha deployed under load with zero failed requests →
//! a broken sha refused by its health check while the old release keeps serving → one zone's external
//! router killed under load while the other zone's keeps serving → `up` repairs it → `down` leaves no
//! process, listener, mount or namespace behind.

mod load;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const AQUARIUM: &str = env!("CARGO_BIN_EXE_aquarium");

/// The `aquarium` binary on one data directory; `down --purge` on drop if the test did not get there.
struct Aq {
    data: tempfile::TempDir,
    down: bool,
}

impl Aq {
    fn new() -> Aq {
        Aq {
            data: tempfile::Builder::new()
                .prefix("aquarium-it-")
                .tempdir()
                .expect("temp dir"),
            down: false,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(AQUARIUM);
        c.arg("--data-dir").arg(self.data.path()).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `aquarium args...` and returns its output, success or not (printed for the test log).
    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().expect("run aquarium");
        println!(
            "$ aquarium {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "aquarium {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn plan(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.data.path().join("cluster.json")).unwrap())
            .unwrap()
    }

    fn pid(&self, component: &str) -> u32 {
        std::fs::read_to_string(self.data.path().join(format!("run/{component}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Aq {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.run(&["down", "--purge"]);
        }
    }
}

/// The directory of the workspace binaries this test was built with.
fn bin_dir() -> PathBuf {
    let dir = Path::new(AQUARIUM).parent().unwrap().to_owned();
    for b in atlantis_aquarium::components::BINARIES {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: run `cargo build --workspace --bins` first (.ci/test does)",
            dir.join(b).display()
        );
    }
    dir
}

/// A copy of the sample app with its page (and, for `health`, its health path) changed.
fn variant(root: &Path, name: &str, page: &str, health: Option<&str>) -> PathBuf {
    let src = atlantis_aquarium::sample::sample_dir();
    let dst = root.join(name);
    std::fs::create_dir_all(dst.join("www")).unwrap();
    let mut toml = std::fs::read_to_string(src.join("atlantis.toml")).unwrap();
    if let Some(h) = health {
        toml = toml.replace(
            "health_path = \"/healthz\"",
            &format!("health_path = \"{h}\""),
        );
        assert!(toml.contains(h));
    }
    std::fs::write(dst.join("atlantis.toml"), toml).unwrap();
    std::fs::write(dst.join("www/index.html"), page).unwrap();
    std::fs::copy(src.join("www/healthz"), dst.join("www/healthz")).unwrap();
    dst
}

fn sample_page() -> String {
    std::fs::read_to_string(atlantis_aquarium::sample::sample_dir().join("www/index.html")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_verify_deploy_fail_over_and_down() {
    let bins = bin_dir();
    let bins = bins.to_str().unwrap();
    let mut aq = Aq::new();

    // --- From nothing: up serves the sample app and says how to use it.
    let out = aq.ok(&["up", "--bin-dir", bins, "--no-build"]);
    assert!(
        out.contains("hello is served at http://hello.dev.apps.localhost:"),
        "{out}"
    );
    assert!(out.contains("export ATLANTIS_MANAGER=http://"), "{out}");
    assert!(out.contains("token file:"), "{out}");
    let verify = aq.ok(&["verify"]);
    assert!(verify.contains(" 0 failed"), "{verify}");
    assert!(!verify.contains("FAIL"), "{verify}");
    for line in [
        "isolation zone-a: supervisor API",
        "isolation zone-b: registry",
        "hello served by router-external-b",
    ] {
        assert!(
            verify
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(line)),
            "{line}: {verify}"
        );
    }

    // --- Again: nothing restarts, nothing is redeployed.
    let pids: Vec<u32> = ["zookeeper", "manager", "dockerd-a", "router-external-b"]
        .iter()
        .map(|c| aq.pid(c))
        .collect();
    let out = aq.ok(&["up", "--bin-dir", bins, "--no-build"]);
    assert!(out.contains("already running"), "{out}");
    assert!(
        !out.contains(": started"),
        "a second up restarted something: {out}"
    );
    assert!(
        out.contains("is the current release and is served"),
        "{out}"
    );
    let again: Vec<u32> = ["zookeeper", "manager", "dockerd-a", "router-external-b"]
        .iter()
        .map(|c| aq.pid(c))
        .collect();
    assert_eq!(pids, again);
    let status = aq.ok(&["status"]);
    for c in [
        "zookeeper",
        "registry",
        "builder",
        "dockerd-b",
        "supervisor-a",
        "manager",
        "router-internal-b",
    ] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(c) && l.contains(" ok (")),
            "{c} not ok in:\n{status}"
        );
    }
    let logs = aq.ok(&["logs", "manager", "-n", "5"]);
    assert!(logs.contains("manager.log"), "{logs}");
    assert!(!aq.run(&["logs", "nonsense"]).status.success());

    let plan = aq.plan();
    let port = plan["http_port"].as_u64().unwrap() as u16;
    let ext_a = format!(
        "{}:{port}",
        plan["zones"][0]["external_ip"].as_str().unwrap()
    );
    let ext_b = format!(
        "{}:{port}",
        plan["zones"][1]["external_ip"].as_str().unwrap()
    );
    let work = tempfile::tempdir().unwrap();
    let v1 = sample_page();

    // --- A new sha under load: zero failed requests, then v2 everywhere.
    let v2 = "hello v2 from the aquarium test\n".to_owned();
    let dir2 = variant(work.path(), "v2", &v2, None);
    let load = load::start(
        &[&ext_a, &ext_b],
        "hello.dev.apps.localhost",
        vec![v1.clone(), v2.clone()],
        40,
    );
    let out = tokio::task::spawn_blocking({
        let cmd = aq.cmd(&["deploy", dir2.to_str().unwrap()]);
        move || run_cmd(cmd)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "deploy v2: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = load.finish().await;
    println!("deploy v2 under load: {r:?}");
    assert!(r.ok > 20, "too little load to mean anything: {r:?}");
    assert_eq!(
        r.failed, 0,
        "failed requests during the deploy: {:?}",
        r.errors
    );
    load::expect_body(&ext_a, &v2).await;
    load::expect_body(&ext_b, &v2).await;

    // --- A broken sha (health path answers 404): refused, v2 keeps serving, no request fails.
    let broken = variant(work.path(), "broken", "broken\n", Some("/not-there"));
    let load = load::start(
        &[&ext_a, &ext_b],
        "hello.dev.apps.localhost",
        vec![v2.clone()],
        40,
    );
    let out = tokio::task::spawn_blocking({
        let cmd = aq.cmd(&[
            "deploy",
            broken.to_str().unwrap(),
            "--start-timeout-ms",
            "10000",
        ]);
        move || run_cmd(cmd)
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a broken sha deployed: {text}");
    assert!(
        text.contains("deploy task") && text.contains("failed"),
        "{text}"
    );
    let r = load.finish().await;
    println!("broken sha under load: {r:?}");
    assert_eq!(
        r.failed, 0,
        "the old release stopped serving: {:?}",
        r.errors
    );
    load::expect_body(&ext_a, &v2).await;

    // --- Through the `atlantis` CLI with the printed settings: the releases, then a rollback to the
    // first release under load: zero failed requests, v1 everywhere.
    let manager = {
        let ip = plan["manager_ip"].as_str().unwrap();
        let ip = if ip == "0.0.0.0" { "127.0.0.1" } else { ip };
        format!("http://{ip}:{}", plan["manager_port"].as_u64().unwrap())
    };
    let token_file = aq.data.path().join("secrets/admin.token");
    let cli_home = tempfile::tempdir().unwrap();
    let atlantis = |args: &[&str]| {
        let mut c = Command::new(Path::new(&bins).join("atlantis"));
        c.arg("--manager")
            .arg(&manager)
            .arg("--token-file")
            .arg(&token_file)
            .args(args)
            .env("XDG_CONFIG_HOME", cli_home.path())
            .env("NO_COLOR", "1")
            .env_remove("ATLANTIS_TOKEN")
            .stdin(Stdio::null());
        c
    };
    let out = run_cmd(atlantis(&["--json", "releases", "hello", "dev"]));
    assert!(out.status.success(), "atlantis releases: {out:?}");
    let releases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        releases.as_array().is_some_and(|r| r.len() >= 2),
        "two releases (the sample and v2): {releases}"
    );
    let load = load::start(
        &[&ext_a, &ext_b],
        "hello.dev.apps.localhost",
        vec![v1.clone(), v2.clone()],
        40,
    );
    let out = tokio::task::spawn_blocking({
        let cmd = atlantis(&["rollback", "hello", "dev"]);
        move || run_cmd(cmd)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "atlantis rollback: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = load.finish().await;
    println!("atlantis rollback under load: {r:?}");
    assert_eq!(
        r.failed, 0,
        "failed requests during the rollback: {:?}",
        r.errors
    );
    load::expect_body(&ext_a, &v1).await;
    load::expect_body(&ext_b, &v1).await;
    // Without the token the CLI is refused by the real manager (exit 4, one line).
    let mut c = Command::new(Path::new(&bins).join("atlantis"));
    c.args(["--manager", &manager, "apps"])
        .env("XDG_CONFIG_HOME", cli_home.path())
        .env_remove("ATLANTIS_TOKEN")
        .stdin(Stdio::null());
    let out = run_cmd(c);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // And forward again to release 2 (v2) with --to.
    let out = run_cmd(atlantis(&["rollback", "hello", "dev", "--to", "2"]));
    assert!(out.status.success(), "atlantis rollback --to 2: {out:?}");
    load::expect_body(&ext_a, &v2).await;
    load::expect_body(&ext_b, &v2).await;

    // --- Kill zone a's external router under load: zone b's keeps serving.
    let load_b = load::start(&[&ext_b], "hello.dev.apps.localhost", vec![v2.clone()], 30);
    let load_a = load::start(&[&ext_a], "hello.dev.apps.localhost", vec![v2.clone()], 30);
    load_a.settle(20, Duration::from_secs(10)).await;
    load_b.settle(20, Duration::from_secs(10)).await;
    let victim = aq.pid("router-external-a");
    atlantis_aquarium::process::signal(victim, "KILL");
    assert!(atlantis_aquarium::process::wait_gone(
        victim,
        Duration::from_secs(5)
    ));
    // Zone b keeps being asked after the kill; zone a's clients meet the dead router.
    load_b.settle(40, Duration::from_secs(10)).await;
    load_a.settle(20, Duration::from_secs(30)).await;
    let (ra, rb) = (load_a.finish().await, load_b.finish().await);
    println!("router-external-a killed: zone a {ra:?}; zone b {rb:?}");
    assert_eq!(
        rb.failed, 0,
        "zone b's router failed requests: {:?}",
        rb.errors
    );
    assert!(rb.ok > 20, "{rb:?}");
    assert!(
        ra.failed > 0,
        "requests to a killed router cannot all succeed: {ra:?}"
    );
    // `verify` notices, `up` repairs.
    assert!(!aq.run(&["verify"]).status.success());
    let out = aq.ok(&["up", "--bin-dir", bins, "--no-build"]);
    assert!(out.contains("router-external-a: started"), "{out}");
    load::expect_body(&ext_a, &v2).await;
    aq.ok(&["verify"]);

    // --- Down: nothing left running, listening, mounted or in `ip netns list`.
    let comps = [
        "zookeeper",
        "registry",
        "builder",
        "dockerd-a",
        "dockerd-b",
        "supervisor-a",
        "supervisor-b",
        "manager",
        "router-external-a",
        "router-external-b",
        "router-internal-a",
        "router-internal-b",
    ];
    let pids: Vec<u32> = comps.iter().map(|c| aq.pid(c)).collect();
    aq.ok(&["down"]);
    aq.down = true;
    for (c, pid) in comps.iter().zip(&pids) {
        assert!(
            !atlantis_aquarium::process::alive(*pid),
            "{c} (pid {pid}) still runs"
        );
    }
    let netns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for z in plan["zones"].as_array().unwrap() {
        let ns = z["netns"].as_str().unwrap();
        assert!(!netns.contains(ns), "{ns} left in: {netns}");
        let link = Command::new("ip")
            .args(["link", "show", "dev", z["veth_host"].as_str().unwrap()])
            .output()
            .unwrap();
        assert!(!link.status.success(), "veth left behind");
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(aq.data.path().to_str().unwrap()),
        "mounts left: {mounts}"
    );
    // No iptables rule of the root namespace names our interfaces or addresses (every chain lived in
    // the zones' namespaces).
    for table in ["filter", "nat"] {
        let rules = String::from_utf8_lossy(
            &Command::new("iptables")
                .args(["-t", table, "-S"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        for z in plan["zones"].as_array().unwrap() {
            for k in ["veth_host", "host_ip", "ns_ip"] {
                let v = z[k].as_str().unwrap();
                assert!(
                    !rules.contains(v),
                    "iptables -t {table} still names {v}:\n{rules}"
                );
            }
        }
    }
    let listening =
        String::from_utf8_lossy(&Command::new("ss").args(["-Hltn"]).output().unwrap().stdout)
            .into_owned();
    let mut ports: Vec<u64> = [
        "zk_port",
        "registry_port",
        "builder_port",
        "manager_port",
        "http_port",
    ]
    .iter()
    .map(|k| plan[k].as_u64().unwrap())
    .collect();
    for z in plan["zones"].as_array().unwrap() {
        for k in [
            "supervisor_port",
            "external_status_port",
            "internal_status_port",
        ] {
            ports.push(z[k].as_u64().unwrap());
        }
    }
    for p in ports {
        assert!(
            !listening.lines().any(|l| l
                .split_whitespace()
                .nth(3)
                .is_some_and(|a| a.ends_with(&format!(":{p}")))),
            "port {p} still listening:\n{listening}"
        );
    }
    // Data is kept: the next up reuses the plan and brings back what was deployed (v2, not the
    // sample); purge removes everything.
    assert!(aq.data.path().join("cluster.json").exists());
    aq.down = false;
    let out = aq.ok(&["up", "--bin-dir", bins, "--no-build"]);
    assert!(out.contains("hello.dev: redeploy"), "{out}");
    load::expect_body(&ext_a, &v2).await;
    load::expect_body(&ext_b, &v2).await;
    aq.ok(&["down", "--purge"]);
    aq.down = true;
    assert!(!aq.data.path().exists());
    let netns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !netns.contains(plan["zones"][0]["netns"].as_str().unwrap()),
        "{netns}"
    );
}

fn run_cmd(mut c: Command) -> Output {
    let out = c.output().expect("run aquarium");
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn vagrantfile_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let home = tempfile::tempdir().unwrap();
    let vagrant = atlantis_testkit::require_bin("vagrant", "vagrant");
    let out = Command::new(vagrant)
        .args(["validate", "--ignore-provider"])
        .current_dir(root)
        .env("VAGRANT_HOME", home.path())
        .env("VAGRANT_DOTFILE_PATH", home.path().join("dot"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Vagrantfile validated successfully"),
        "{text}"
    );
}

#[test]
fn a_failing_step_says_which_and_why() {
    let aq = Aq::new();
    let out = aq.run(&[
        "up",
        "--bin-dir",
        "/nonexistent",
        "--no-build",
        "--no-install",
    ]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("binaries: FAILED"), "{stdout}");
    assert!(
        stderr.contains("step `binaries` failed")
            && stderr.contains("missing binaries in /nonexistent"),
        "{stderr}"
    );
    assert!(
        !aq.data.path().join("cluster.json").exists(),
        "nothing was set up"
    );
}

#[test]
fn status_without_a_cluster_says_so() {
    let aq = Aq::new();
    let out = aq.run(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no aquarium in") && err.contains("aquarium up"),
        "{err}"
    );
}
