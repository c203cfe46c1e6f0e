//! Without a cluster: help, completions, the config and token files, bad input and a manager that is
//! down. Every failure is one line on stderr with a documented exit code, never a stack dump.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;

use crate::run::{run, run_stdin};

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn help_lists_the_command_groups_with_examples() {
    let d = dir();
    let text = run(d.path(), &["--help"]).ok().stdout;
    for cmd in [
        "register-app",
        "apps",
        "envs",
        "dependencies",
        "request-dependency",
        "dependency-requests",
        "grant-dependency",
        "revoke-dependency",
        "dependency-grants",
        "deploy",
        "releases",
        "rollback",
        "scale",
        "teardown",
        "status",
        "ps",
        "logs",
        "maintenance",
        "exec",
        "supervisors",
        "routers",
        "router-config",
        "tasks",
        "usage",
        "teams",
        "allow-app",
        "audit",
        "login",
        "completions",
    ] {
        assert!(
            text.contains(&format!("  {cmd}")),
            "--help lacks {cmd}: {text}"
        );
    }
    for cmd in ["deploy", "logs", "exec", "rollback", "config set"] {
        let mut args: Vec<&str> = cmd.split(' ').collect();
        args.push("--help");
        let h = run(d.path(), &args).ok().stdout;
        assert!(h.contains("Example"), "{cmd} --help has no example: {h}");
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    let d = dir();
    for (shell, marker) in [
        ("bash", "_atlantis()"),
        ("zsh", "#compdef atlantis"),
        ("fish", "complete -c atlantis"),
    ] {
        let out = run(d.path(), &["completions", shell]).ok().stdout;
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("deploy"), "{shell} completes commands");
    }
}

#[test]
fn bad_usage_is_refused_before_anything_is_sent() {
    let d = dir();
    // No config at all: these are refused by parsing (exit 2), not by "no manager configured" (exit 5).
    let r = run(d.path(), &["deploy", "hello", "ZZZ", "prod"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("invalid sha \"ZZZ\""), "{r:?}");
    let r = run(d.path(), &["register-app", "Hello_World"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("invalid app name"), "{r:?}");
    let r = run(d.path(), &["frobnicate"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("unrecognized subcommand 'frobnicate'"),
        "{r:?}"
    );
    let r = run(d.path(), &["apps", "--colour"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("unexpected argument '--colour'"), "{r:?}");
    let r = run(d.path(), &["exec", "hello", "prod"]);
    assert_eq!(r.code, 2, "exec needs a command: {r:?}");
    let r = run(d.path(), &["scale", "hello", "prod"]);
    assert_eq!(r.code, 2, "scale needs --instances: {r:?}");
    assert!(
        !d.path().join("atlantis").exists(),
        "nothing was written by refused commands"
    );
}

#[test]
fn missing_config_says_what_to_run() {
    let d = dir();
    run(d.path(), &["apps"]).fails(
        5,
        "no manager configured: run `atlantis config set manager URL`",
    );
    run(
        d.path(),
        &["deploy", "hello", "1a2b3c4", "prod", "-R", "eu-west"],
    )
    .fails(5, "no manager configured for region eu-west");
}

#[test]
fn a_manager_that_is_down_is_named_with_its_url() {
    let d = dir();
    // A port that was free a moment ago: nothing listens.
    let port = atlantis_testkit::ports::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let r = run(d.path(), &["--manager", &url, "apps"])
        .fails(3, &format!("cannot reach the manager at {url}"));
    assert!(r.stdout.is_empty(), "{r:?}");
    let r = run(
        d.path(),
        &[
            "--manager",
            &url,
            "--json",
            "deploy",
            "hello",
            "1a2b3c4",
            "prod",
        ],
    );
    assert_eq!(r.code, 3, "{r:?}");
    let v = r.json();
    assert_eq!(v["error"]["code"], "unreachable");
    assert_eq!(v["error"]["exit"], 3);
    assert!(v["error"]["message"].as_str().unwrap().contains(&url));
    // Through the config file too.
    run(d.path(), &["config", "set", "manager", &url]).ok();
    run(d.path(), &["status"]).fails(3, &url);
}

#[test]
fn config_is_written_privately_and_checked() {
    let d = dir();
    let r = run(
        d.path(),
        &[
            "config",
            "set",
            "manager",
            "https://m.us-east.example.com",
            "-R",
            "us-east",
        ],
    )
    .ok();
    assert!(r.stdout.contains("wrote"), "{r:?}");
    run(
        d.path(),
        &[
            "config",
            "set",
            "manager",
            "http://m.eu.example.com:7700/",
            "-R",
            "eu-west",
        ],
    )
    .ok();
    let path = d.path().join("atlantis/config.toml");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let v = run(d.path(), &["config", "show", "--json"]).ok().json();
    assert_eq!(
        v["config"]["default_region"], "us-east",
        "the first region is the default"
    );
    assert_eq!(
        v["config"]["regions"]["us-east"]["manager"],
        "https://m.us-east.example.com"
    );
    assert_eq!(
        v["config"]["regions"]["eu-west"]["manager"],
        "http://m.eu.example.com:7700"
    );
    run(d.path(), &["config", "set", "default-region", "eu-west"]).ok();
    let before = std::fs::read_to_string(&path).unwrap();
    assert!(before.contains("default_region = \"eu-west\""), "{before}");
    // Refusals leave the file as it was.
    run(
        d.path(),
        &["config", "set", "manager", "m.example.com:7700"],
    )
    .fails(5, "invalid manager URL");
    run(d.path(), &["config", "set", "default-region", "mars"])
        .fails(2, "region mars has no manager yet");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    // A broken file is named, with the reason.
    std::fs::write(&path, "default_region = \"eu-west\"\nmanagers = 1\n").unwrap();
    run(d.path(), &["apps"]).fails(5, "unknown field `managers`");
}

/// A one-shot HTTP listener standing in for the manager's auth endpoints (which the security work adds):
/// it records the request it gets and sends `answer`. This checks what the client puts on the wire.
fn one_answer(status: u16, answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        head.push_str(&String::from_utf8_lossy(&body));
        let mut s = s;
        write!(
            s,
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        head
    });
    (url, h)
}

#[test]
fn the_token_is_sent_stored_privately_and_401_says_log_in() {
    let d = dir();
    // Login: the password comes from stdin, never from an argument; the token lands in a 0600 file.
    let (url, h) = one_answer(
        200,
        r#"{"token":"tok-123","user":"alice","teams":["web"],"superuser":false,"expires_ms":1796581800000}"#,
    );
    let r = run_stdin(
        d.path(),
        &[
            "--manager",
            &url,
            "login",
            "--user",
            "alice",
            "--password-stdin",
        ],
        "pw with spaces\n",
    )
    .ok();
    assert!(r.stdout.contains("logged in as alice (teams web"), "{r:?}");
    assert!(!r.stdout.contains("tok-123"), "the token is never printed");
    let req = h.join().unwrap();
    assert!(req.starts_with("POST /v1/login "), "{req}");
    assert!(req.contains(r#""password":"pw with spaces""#), "{req}");
    let token = d.path().join("atlantis/token");
    assert_eq!(std::fs::read_to_string(&token).unwrap().trim(), "tok-123");
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Later calls carry it; a 401 answer tells the user what to do.
    let (url, h) = one_answer(
        401,
        r#"{"code":"unauthorized","message":"session expired"}"#,
    );
    run(d.path(), &["--manager", &url, "apps"])
        .fails(4, "not logged in or session expired: run atlantis login");
    let req = h.join().unwrap().to_ascii_lowercase();
    assert!(req.contains("authorization: bearer tok-123"), "{req}");

    // ATLANTIS_TOKEN comes before the stored file; --token-file before both.
    let (url, h) = one_answer(200, "[]");
    let r = crate::run::command(d.path(), &["--manager", &url, "teams"])
        .env("ATLANTIS_TOKEN", "from-env")
        .output()
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    assert!(
        h.join()
            .unwrap()
            .to_ascii_lowercase()
            .contains("bearer from-env")
    );
    let f = d.path().join("other-token");
    std::fs::write(&f, "from-file\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fs = f.display().to_string();
    run(
        d.path(),
        &[
            "--manager",
            "http://127.0.0.1:9",
            "--token-file",
            &fs,
            "apps",
        ],
    )
    .fails(5, "readable by others");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (url, h) = one_answer(200, "[]");
    let r = crate::run::command(d.path(), &["--manager", &url, "--token-file", &fs, "teams"])
        .env("ATLANTIS_TOKEN", "from-env")
        .output()
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    assert!(
        h.join()
            .unwrap()
            .to_ascii_lowercase()
            .contains("bearer from-file")
    );

    // A password is never taken from an argument; logout removes the token.
    let r = run(d.path(), &["login", "--password", "x"]);
    assert_eq!(r.code, 2, "{r:?}");
    run(d.path(), &["logout"]).ok();
    assert!(!token.exists());
}

#[test]
fn a_manager_without_a_route_is_told_apart_from_a_missing_object() {
    let d = dir();
    let (url, h) = one_answer(404, r#"{"code":"not_found","message":"no such route"}"#);
    run(d.path(), &["--manager", &url, "audit", "--since", "2h"])
        .fails(1, "does not offer this (no such route; an older manager?)");
    let req = h.join().unwrap();
    assert!(req.starts_with("GET /v1/audit?limit=50&since_ms="), "{req}");
    let (url, _h) = one_answer(404, r#"{"code":"not_found","message":"no app nope"}"#);
    run(d.path(), &["--manager", &url, "show", "nope"])
        .fails(1, "no app nope (not_found, HTTP 404)");
}
