//! Every command a team uses, run as the real binary against one shared cluster: register, deploy (in a
//! terminal and not), releases, rollback, scale, logs, exec, maintenance, tasks, usage, several regions,
//! teardown, unregister. `--json` answers are parsed and checked; failures give one line and an exit code,
//! and change nothing on the cluster.

use std::path::Path;

use serde_json::{Value, json};

use crate::run::{Run, run_async, run_in_terminal, run_in_terminal_no_color, run_stdin};
use crate::support::Cluster;

const HOST: &str = "hello.prod.apps.localhost";
const SHA1: &str = "1111111aaaaaaa";
const SHA2: &str = "2222222bbbbbbb";

/// Pushes `apps/hello:<sha>` labelled as the builder labels images (its `atlantis.toml`), tags it on the
/// hosts: the container writes its sha to `/www/version`, says so on stdout, serves `/www`.
async fn publish(c: &Cluster, sha: &str) {
    let config = format!(
        "name = \"hello\"\ntemplate = \"busybox\"\nport = 8080\nrun = [\"/bin/sh\", \"-c\", \"echo {sha} > /www/version; echo started {sha}; exec httpd -f -p 8080 -h /www\"]\n"
    );
    c.registry
        .push_labelled("hello", sha, json!({ "atlantis.toml": config }))
        .await;
    let reference = format!("{}/apps/hello:{sha}", c.registry.addr);
    for h in &c.hosts {
        h.tag(&reference);
    }
}

/// Runs the binary; with `ATLANTIS_CLI_TRANSCRIPT=FILE` set, appends the command and what it printed to
/// FILE (the user guide's examples are captured that way).
async fn atl(cfg: &Path, args: &[&str]) -> Run {
    let r = run_async(cfg, args).await;
    transcript(args, &r);
    r
}

fn transcript(args: &[&str], r: &Run) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("ATLANTIS_CLI_TRANSCRIPT") else {
        return;
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let line: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') || a.contains('$') {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    writeln!(f, "$ atlantis {}", line.join(" ")).unwrap();
    write!(f, "{}{}", r.stdout, r.stderr).unwrap();
    writeln!(f, "[exit {}]\n", r.code).unwrap();
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["container_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_drives_a_real_cluster() {
    let c = Cluster::start().await;
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path();
    atl(cfg, &["config", "set", "manager", &c.base]).await.ok();

    // --- The real manager refuses a CLI with no token; the admin token stored as `login` stores one
    // (a 0600 file) lets it in.
    atl(cfg, &["status"]).await.fails(4, "atlantis login");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(cfg.join("atlantis/token"))
            .unwrap();
        f.write_all(c.token.as_bytes()).unwrap();
    }
    let v = atl(cfg, &["whoami", "--json"]).await.ok().json();
    assert_eq!(v["superuser"], true, "{v}");

    // --- The cluster as the CLI sees it.
    let v = atl(cfg, &["status", "--json"]).await.ok().json();
    let r = atl(cfg, &["status"]).await.ok();
    assert!(r.stdout.contains("supervisors  2"), "{r:?}");
    assert_eq!(
        (v["supervisors"].as_u64(), v["routers"].as_u64()),
        (Some(2), Some(3)),
        "{v}"
    );
    assert_eq!(v["health"]["status"], "OK");
    let v = atl(cfg, &["supervisors", "--json"]).await.ok().json();
    let mut hosts: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["host"].as_str().unwrap())
        .collect();
    hosts.sort_unstable();
    assert_eq!(hosts, ["host-a", "host-b"]);
    let r = atl(cfg, &["supervisors"]).await.ok();
    assert!(
        r.stdout.starts_with("HOST") && r.stdout.contains("zone-b"),
        "{r:?}"
    );
    let v = atl(cfg, &["routers", "--json"]).await.ok().json();
    assert_eq!(v.as_array().unwrap().len(), 3);
    let r = atl(cfg, &["routers"]).await.ok();
    assert!(
        r.stdout.starts_with("KIND") && r.stdout.contains("internal-b"),
        "{r:?}"
    );

    // --- Dependencies: values go in from a file (here stdin) and never come back out.
    let cfg_owned = cfg.to_owned();
    let r = tokio::task::spawn_blocking(move || {
        run_stdin(
            &cfg_owned,
            &[
                "set-dependency",
                "db",
                "--team",
                "data",
                "--endpoint",
                "10.0.0.5:5432",
                "--data-file",
                "-",
            ],
            "# the database\nDB_URL=postgres://s3cret@10.0.0.5/db\n",
        )
    })
    .await
    .unwrap()
    .ok();
    transcript(
        &[
            "set-dependency",
            "db",
            "--team",
            "data",
            "--endpoint",
            "10.0.0.5:5432",
            "--data-file",
            "-",
        ],
        &r,
    );
    assert!(
        r.stdout
            .contains("stored dependency db (1 variables, 1 endpoints)"),
        "{r:?}"
    );
    let r = atl(cfg, &["dependencies"]).await.ok();
    assert!(
        r.stdout.contains("DB_URL") && r.stdout.contains("10.0.0.5:5432"),
        "{r:?}"
    );
    assert!(!r.stdout.contains("s3cret"), "{r:?}");
    let v = atl(cfg, &["show-dependency", "db", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["data_keys"], json!(["DB_URL"]));
    atl(cfg, &["set-dependency", "db", "--endpoint", "10.0.0.5"])
        .await
        .fails(2, "expected IPv4:PORT");
    atl(cfg, &["delete-dependency", "db"]).await.ok();
    let r = atl(cfg, &["dependencies"]).await.ok();
    assert_eq!(r.stdout, "no dependencies\n");

    // --- Apps and envs.
    let r = atl(cfg, &["create-env", "prod", "--description", "production"])
        .await
        .ok();
    assert_eq!(r.stdout, "created env prod\n");
    let r = atl(
        cfg,
        &[
            "register-app",
            "hello",
            "--team",
            "web",
            "--repo",
            "https://git.example.com/hello.git",
        ],
    )
    .await
    .ok();
    assert_eq!(r.stdout, "registered app hello\n");
    let v = atl(cfg, &["show", "hello", "--json"]).await.ok().json();
    assert_eq!(
        (v["name"].as_str(), v["team"].as_str(), v["repo"].as_str()),
        (
            Some("hello"),
            Some("web"),
            Some("https://git.example.com/hello.git")
        )
    );
    let v = atl(cfg, &["envs", "--json"]).await.ok().json();
    assert_eq!(v[0]["description"], "production");
    atl(cfg, &["register-app", "hello"])
        .await
        .fails(1, "(exists, HTTP 409)");
    atl(cfg, &["register-app", "other", "--dep", "nosuch"])
        .await
        .fails(1, "not_found");
    let v = atl(cfg, &["apps", "--json"]).await.ok().json();
    let r = atl(cfg, &["apps"]).await.ok();
    assert!(
        r.stdout.starts_with("APP ") && r.stdout.contains("web"),
        "{r:?}"
    );
    let r = atl(cfg, &["envs"]).await.ok();
    assert!(r.stdout.contains("production"), "{r:?}");
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "refusals registered nothing: {v}"
    );
    let r = atl(cfg, &["update-app", "hello", "--root", "svc"])
        .await
        .ok();
    assert!(r.stdout.starts_with("updated app hello\n"), "{r:?}");
    let v = atl(cfg, &["update-app", "hello", "--root", "svc", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (v["root"].as_str(), v["team"].as_str()),
        (Some("svc"), Some("web")),
        "only --root changed"
    );
    let r = atl(cfg, &["show", "hello"]).await.ok();
    assert!(
        r.stdout.contains("routing") && r.stdout.contains("external"),
        "{r:?}"
    );

    // --- Dependency grants: declared only once asked for and granted; a revoke takes it back.
    atl(
        cfg,
        &[
            "set-dependency",
            "cache",
            "--team",
            "data",
            "--endpoint",
            "10.0.0.6:6379",
        ],
    )
    .await
    .ok();
    atl(cfg, &["update-app", "hello", "--dep", "cache"])
        .await
        .fails(4, "atlantis request-dependency cache --app hello");
    let r = atl(
        cfg,
        &[
            "request-dependency",
            "cache",
            "--app",
            "hello",
            "--reason",
            "sessions",
        ],
    )
    .await
    .ok();
    assert!(r.stdout.starts_with("asked team data for cache"), "{r:?}");
    let r = atl(cfg, &["dependency-requests"]).await.ok();
    assert!(
        r.stdout.starts_with("DEPENDENCY ")
            && r.stdout.contains("hello")
            && r.stdout.contains("sessions"),
        "{r:?}"
    );
    let r = atl(cfg, &["grant-dependency", "cache", "--app", "hello"])
        .await
        .ok();
    assert_eq!(r.stdout, "granted cache to app hello\n");
    let v = atl(cfg, &["dependency-grants", "cache", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v[0]["app"], "hello");
    let r = atl(cfg, &["dependency-requests"]).await.ok();
    assert_eq!(r.stdout, "no pending requests\n");
    atl(cfg, &["update-app", "hello", "--dep", "cache"])
        .await
        .ok();
    let r = atl(cfg, &["revoke-dependency", "cache", "--app", "hello"])
        .await
        .ok();
    assert_eq!(
        r.stdout,
        "revoked cache from app hello: nothing of hello runs\n"
    );
    atl(cfg, &["update-app", "hello", "--clear-deps"])
        .await
        .ok();
    atl(cfg, &["delete-dependency", "cache"]).await.ok();

    // --- The router's port for the apps trie, from stdin.
    let doc = json!({"port": c.router_port, "trie": "apps"}).to_string();
    let cfg_owned = cfg.to_owned();
    let r = tokio::task::spawn_blocking(move || {
        run_stdin(
            &cfg_owned,
            &[
                "router-config",
                "put",
                "external",
                "ports",
                "http",
                "-f",
                "-",
            ],
            &doc,
        )
    })
    .await
    .unwrap()
    .ok();
    transcript(
        &[
            "router-config",
            "put",
            "external",
            "ports",
            "http",
            "-f",
            "-",
        ],
        &r,
    );
    assert_eq!(r.json()["port"].as_u64(), Some(u64::from(c.router_port)));
    let v = atl(cfg, &["router-config", "get", "external", "ports"])
        .await
        .ok()
        .json();
    assert!(v["http"].is_object(), "{v}");

    publish(&c, SHA1).await;
    publish(&c, SHA2).await;

    // --- A deploy the manager refuses changes nothing.
    atl(cfg, &["deploy", "hello", "9999999", "prod"])
        .await
        .fails(1, "image_not_found");
    atl(cfg, &["deploy", "hello", SHA1, "nope"])
        .await
        .fails(1, "not_found");
    assert!(c.all_containers().is_empty(), "{:?}", c.all_containers());

    // --- Deploy, waiting (the default), JSON answer.
    let v = atl(cfg, &["deploy", "hello", SHA1, "prod", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (v["state"].as_str(), v["release"].as_i64()),
        (Some("done"), Some(1)),
        "{v}"
    );
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps[0], "start containers");
    assert!(steps.contains(&"switch traffic"), "{steps:?}");
    c.router_serves(HOST, "/version", SHA1).await;
    let v = atl(cfg, &["ps", "hello", "prod", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v.as_array().unwrap().len(), 2, "one per zone: {v}");
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "serving" && i["sha"] == SHA1)
    );
    let r = atl(cfg, &["ps", "hello", "prod"]).await.ok();
    assert!(
        r.stdout.starts_with("CONTAINER") && r.stdout.matches("serving").count() == 2,
        "{r:?}"
    );
    let r = atl(cfg, &["status", "hello"]).await.ok();
    assert!(
        r.stdout.contains("prod: release 1 (1111111aaaaaaa)"),
        "{r:?}"
    );

    // --- Deploy in a terminal: live progress, a line per step, the result.
    let r = run_in_terminal(cfg, &["deploy", "hello", SHA2, "prod"]).await;
    transcript(&["deploy", "hello", SHA2, "prod", "(in a terminal)"], &r);
    assert_eq!(r.code, 0, "{r:?}");
    for want in [
        "start containers",
        "switch traffic",
        "record release",
        "✓",
        "deploy of hello.prod done: release 2",
    ] {
        assert!(
            r.stdout.contains(want),
            "terminal lacks {want:?}: {}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains("\x1b["),
        "a terminal gets colour and cursor control"
    );
    c.router_serves(HOST, "/version", SHA2).await;
    // Colour only on a terminal, and never with NO_COLOR.
    let r = run_in_terminal(cfg, &["apps"]).await.ok();
    assert!(
        r.stdout.contains("\x1b[1mAPP"),
        "bold header on a terminal: {r:?}"
    );
    let r = run_in_terminal_no_color(cfg, &["apps"]).await.ok();
    assert!(
        r.stdout.starts_with("APP") && !r.stdout.contains('\x1b'),
        "{r:?}"
    );
    let r = atl(cfg, &["apps"]).await.ok();
    assert!(!r.stdout.contains('\x1b'), "no colour into a pipe: {r:?}");

    // --- Rollback without a terminal: plain lines, no escape codes.
    let r = atl(cfg, &["rollback", "hello", "prod"]).await.ok();
    assert!(
        r.stdout.contains("rollback of hello.prod done: release 3"),
        "{r:?}"
    );
    assert!(r.stderr.contains("✓ start containers"), "{r:?}");
    assert!(
        !r.stdout.contains('\x1b') && !r.stderr.contains('\x1b'),
        "{r:?}"
    );
    c.router_serves(HOST, "/version", SHA1).await;
    let v = atl(cfg, &["releases", "hello", "prod", "--json"])
        .await
        .ok()
        .json();
    let nums: Vec<(i64, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["number"].as_i64().unwrap(), r["sha"].as_str().unwrap()))
        .collect();
    assert_eq!(nums, [(3, SHA1), (2, SHA2), (1, SHA1)]);
    let r = atl(cfg, &["releases", "hello", "prod"]).await.ok();
    assert!(
        r.stdout.starts_with("RELEASE") && r.stdout.contains(SHA2),
        "{r:?}"
    );
    atl(cfg, &["rollback", "hello", "prod", "--to", "99"])
        .await
        .fails(1, "not_found");

    // --- A deploy whose containers never get healthy fails at its step; the old release keeps serving.
    let r = atl(
        cfg,
        &[
            "deploy",
            "hello",
            SHA2,
            "prod",
            "--health-path",
            "/nope",
            "--start-timeout",
            "3",
        ],
    )
    .await;
    let r = r.fails(1, "deploy of hello.prod failed at step `start containers`");
    assert!(r.stderr.contains("(task "), "{r:?}");
    c.router_serves(HOST, "/version", SHA1).await;
    let v = atl(cfg, &["ps", "hello", "prod", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        v.as_array().unwrap().len(),
        2,
        "nothing left of the failed deploy: {v}"
    );

    // --- Scale up (JSON), then down without waiting and follow the task by ID.
    let r = atl(cfg, &["scale", "hello", "prod", "--instances", "2"])
        .await
        .ok();
    assert!(r.stdout.contains("scale of hello.prod done"), "{r:?}");
    assert!(r.stderr.contains("✓ start containers"), "{r:?}");
    let v = atl(cfg, &["ps", "hello", "prod", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v.as_array().unwrap().len(), 4, "two per zone: {v}");
    let v = atl(cfg, &["usage", "--json"]).await.ok().json();
    assert_eq!(v["apps"]["hello"]["containers"], 4, "{v}");
    assert_eq!(v["teams"]["web"]["containers"], 4, "{v}");
    let r = atl(cfg, &["usage"]).await.ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("hello ") && l.contains(" 4 ")),
        "{r:?}"
    );

    // --- Logs: every container (prefixed), one container (bare), JSON lines.
    let r = atl(cfg, &["logs", "hello", "prod"]).await.ok();
    let started: Vec<&str> = r.stdout.lines().filter(|l| l.contains("started")).collect();
    assert_eq!(started.len(), 4, "{r:?}");
    assert!(
        started
            .iter()
            .all(|l| l.starts_with("hello-") && l.contains(" | started ")),
        "{r:?}"
    );
    let v = atl(cfg, &["ps", "hello", "prod", "--json"])
        .await
        .ok()
        .json();
    let containers = ids(&v);
    let one = containers[0].as_str();
    let r = atl(cfg, &["logs", "hello", "prod", "--container", one])
        .await
        .ok();
    assert!(r.stdout.lines().any(|l| l.starts_with("started ")), "{r:?}");
    let r = atl(
        cfg,
        &["logs", "hello", "prod", "--container", one, "--json"],
    )
    .await
    .ok();
    let lines: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["container"] == one && l["line"].as_str().unwrap().starts_with("started")),
        "{r:?}"
    );

    // Following: a line the container writes later arrives on the open stream (written to the
    // container's stdout through exec).
    let (first, later) = {
        let (cfg, one) = (cfg.to_owned(), one.to_owned());
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead as _;
            let mut child =
                crate::run::command(&cfg, &["logs", "hello", "prod", "-f", "--container", &one])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut first = String::new();
            out.read_line(&mut first).unwrap();
            crate::run::run(
                &cfg,
                &[
                    "exec",
                    "hello",
                    "prod",
                    "--container",
                    &one,
                    "--",
                    "sh",
                    "-c",
                    "echo follow-me > /proc/1/fd/1",
                ],
            )
            .ok();
            let mut later = String::new();
            out.read_line(&mut later).unwrap();
            child.kill().unwrap();
            let _ = child.wait();
            (first, later)
        })
        .await
        .unwrap()
    };
    assert!(first.starts_with("started "), "{first:?}");
    assert_eq!(later, "follow-me\n", "logs -f streams new lines");

    // --- Exec: output on the right streams, the command's exit code, argv without a shell.
    let r = atl(
        cfg,
        &[
            "exec",
            "hello",
            "prod",
            "--",
            "sh",
            "-c",
            "echo out-$((1+2)); echo err >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.stdout, "out-3\n");
    assert_eq!(r.stderr, "err\n");
    // The run is in the manager's audit log with its argv, who ran it and the result, as `atlantis
    // audit` shows it.
    let v = atl(
        cfg,
        &["audit", "--app", "hello", "--since", "10m", "--json"],
    )
    .await
    .ok()
    .json();
    let exec = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("echo out-$((1+2))"))
        })
        .unwrap_or_else(|| panic!("no audit entry of the exec: {v}"));
    assert_eq!(exec["user"], "admin", "{exec}");
    assert_eq!(exec["app"], "hello", "{exec}");
    assert!(
        exec["detail"].as_str().unwrap().contains(r#"["sh","-c","#),
        "the argv as given: {exec}"
    );
    let r = atl(
        cfg,
        &[
            "exec",
            "hello",
            "prod",
            "--container",
            one,
            "--",
            "echo",
            "$HOME;",
            "`id`",
        ],
    )
    .await
    .ok();
    assert_eq!(
        r.stdout, "$HOME; `id`\n",
        "arguments reach the program untouched"
    );
    let r = atl(
        cfg,
        &[
            "exec",
            "hello",
            "prod",
            "--json",
            "--",
            "cat",
            "/www/version",
        ],
    )
    .await
    .ok();
    let events: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "exit", "exit_code": 0, "timed_out": false})
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "stdout" && e["data"] == format!("{SHA1}\n")),
        "{events:?}"
    );
    let r = atl(
        cfg,
        &[
            "exec",
            "hello",
            "prod",
            "--timeout",
            "1",
            "--",
            "sleep",
            "30",
        ],
    )
    .await;
    assert_eq!(r.code, 137, "killed at the time limit: {r:?}");
    assert!(r.stderr.contains("time limit"), "{r:?}");
    // A caller that goes away takes its command with it, even a silent one.
    let left = {
        let (cfg, one) = (cfg.to_owned(), one.to_owned());
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead as _;
            let mut child = crate::run::command(
                &cfg,
                &[
                    "exec",
                    "hello",
                    "prod",
                    "--container",
                    &one,
                    "--",
                    "sh",
                    "-c",
                    "echo ready; exec sleep 299",
                ],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut ready = String::new();
            out.read_line(&mut ready).unwrap();
            assert_eq!(ready, "ready\n");
            let ps = || {
                crate::run::run(
                    &cfg,
                    &["exec", "hello", "prod", "--container", &one, "--", "ps"],
                )
                .ok()
                .stdout
            };
            assert!(
                ps().contains("sleep 299"),
                "running while its caller is there"
            );
            child.kill().unwrap();
            let _ = child.wait();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let now = ps();
                if !now.contains("sleep 299") || std::time::Instant::now() > deadline {
                    return now;
                }
            }
        })
        .await
        .unwrap()
    };
    assert!(
        !left.contains("sleep 299"),
        "killed once its caller left: {left}"
    );
    let r = atl(cfg, &["exec", "hello", "prod", "--", "/no/such/program"]).await;
    assert!(r.code == 126 || r.code == 127, "{r:?}");
    assert!(
        r.stdout.contains("no such file") || r.stderr.contains("no such file"),
        "{r:?}"
    );
    let other = "hello-1111111-staging-abcdef";
    atl(
        cfg,
        &["exec", "hello", "prod", "--container", other, "--", "true"],
    )
    .await
    .fails(1, "not_found");

    // Every exec is in the history with its command line and outcome.
    let v = atl(cfg, &["tasks", "--app", "hello", "--json", "--limit", "50"])
        .await
        .ok()
        .json();
    let execs: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "exec")
        .collect();
    assert!(execs.len() >= 4, "{v}");
    assert!(
        execs.iter().any(|t| {
            let s = &t["steps"][0];
            s["name"]
                .as_str()
                .unwrap()
                .starts_with("exec sh -c \"echo out-$((1+2)); echo err >&2; exit 3\" in hello-")
                && s["detail"] == "exit code 3"
        }),
        "{execs:?}"
    );
    let r = atl(cfg, &["tasks", "--app", "hello"]).await.ok();
    assert!(
        r.stdout.starts_with("TASK") && r.stdout.contains("exec"),
        "{r:?}"
    );

    // --- Maintenance and one container.
    let v = atl(cfg, &["maintenance", "on", one, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["state"], "maintenance");
    let v = atl(cfg, &["container", one, "--json"]).await.ok().json();
    assert_eq!(
        (v["state"].as_str(), v["app"].as_str()),
        (Some("maintenance"), Some("hello"))
    );
    let v = atl(cfg, &["maintenance", "off", one, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["state"], "serving");
    let r = atl(cfg, &["maintenance", "on", one]).await.ok();
    assert_eq!(
        r.stdout,
        format!("{one} is out of its pool (maintenance)\n")
    );
    let r = atl(cfg, &["container", one]).await.ok();
    assert!(
        r.stdout.contains("maintenance") && r.stdout.contains("250 millicores"),
        "{r:?}"
    );
    atl(cfg, &["maintenance", "off", one]).await.ok();

    let v = atl(
        cfg,
        &[
            "scale",
            "hello",
            "prod",
            "--instances",
            "1",
            "--no-wait",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let task = v["task_id"].as_str().unwrap().to_owned();
    let r = atl(cfg, &["task", &task]).await.ok();
    assert!(
        r.stdout.contains("kind") && r.stdout.contains("scale"),
        "{r:?}"
    );
    let v = atl(cfg, &["task", &task, "--wait", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (v["kind"].as_str(), v["state"].as_str()),
        (Some("scale"), Some("done")),
        "{v}"
    );
    let v = atl(cfg, &["ps", "hello", "prod", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");

    // --- Two regions at once (both served by this manager here): each is reported, in parallel. The
    // second deploy of the same app.env may find the first one's lock: then it says so, and the exit
    // code is non-zero.
    atl(cfg, &["config", "set", "manager", &c.base, "-R", "second"])
        .await
        .ok();
    let r = atl(
        cfg,
        &[
            "deploy", "hello", SHA2, "prod", "-R", "default", "-R", "second", "--json",
        ],
    )
    .await;
    let v = r.json();
    let regions: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["default", "second"], "{v}");
    let failed = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| !x["error"].is_null())
        .count();
    assert_eq!(r.code == 0, failed == 0, "{r:?}");
    for x in v.as_array().unwrap() {
        if x["error"].is_null() {
            assert_eq!(x["task"]["state"], "done", "{x}");
        } else {
            assert!(
                x["error"]["message"].as_str().unwrap().contains("locked")
                    || x["error"]["code"] == "locked",
                "{x}"
            );
        }
    }
    assert!(failed < 2, "at least one region deployed: {v}");
    c.router_serves(HOST, "/version", SHA2).await;

    // --- Teardown: nothing left; then the app and env can go.
    let r = atl(cfg, &["teardown", "hello", "prod"]).await.ok();
    assert!(r.stdout.contains("teardown of hello.prod done"), "{r:?}");
    let v = atl(cfg, &["tasks", "--app", "hello", "--limit", "1", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (v[0]["kind"].as_str(), v[0]["state"].as_str()),
        (Some("teardown"), Some("done")),
        "{v}"
    );
    let v = atl(cfg, &["ps", "--json"]).await.ok().json();
    assert_eq!(v, json!([]));
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !c.all_containers().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("no container left on the hosts");
    let v = atl(cfg, &["status", "hello", "--json"]).await.ok().json();
    assert!(
        v["envs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["containers"] == json!([])),
        "{v}"
    );
    let r = atl(cfg, &["unregister-app", "hello"]).await.ok();
    assert_eq!(r.stdout, "unregistered app hello\n");
    atl(cfg, &["unregister-app", "hello", "--json"])
        .await
        .fails(1, "not_found");
    atl(cfg, &["delete-env", "prod"]).await.ok();
    let r = atl(cfg, &["apps"]).await.ok();
    assert_eq!(r.stdout, "no apps registered\n");
}
