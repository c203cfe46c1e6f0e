//! The status listener shows backends, rules and traffic: off loopback it takes a token, and a router
//! configured to expose it without one refuses to start. The real binary registers the address its
//! routed ports are reachable on (what the manager hands to containers for internal apps).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use atlantis_common::zk::{Coord, Node, RouterKind};
use atlantis_router::App;
use atlantis_router::config::Config;
use atlantis_router::source::StaticSource;
use atlantis_testkit::{ZooKeeper, eventually, ports::free_port};
use tokio_util::sync::CancellationToken;

use crate::support::client;

const TOKEN: &str = "status-token-0123456789abcdef";

fn token_file(dir: &Path, mode: u32) -> PathBuf {
    let p = dir.join(format!("status-token-{mode:o}"));
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn source() -> std::sync::Arc<StaticSource> {
    let mut m = BTreeMap::new();
    let n = |s: &str| Node {
        data: s.as_bytes().to_vec(),
        version: 0,
    };
    m.insert("tries/root".to_string(), n(r#"{"rules":["all"]}"#));
    m.insert(
        "rules/all".into(),
        n(r#"{"type":"static","value":"true","pool":"p"}"#),
    );
    m.insert("pools/p".into(), n(r#"{"healthz_every_ms":0}"#));
    m.insert("pools/p/10.9.8.7:4242".into(), n(""));
    StaticSource::new(m)
}

/// GET on the status listener with an optional `Authorization` value: status and body.
async fn get(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut r = client().get(format!("http://{addr}{path}"));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = r.send().await.expect("status listener answers");
    let s = r.status().as_u16();
    (s, r.text().await.unwrap())
}

const GUARDED: [&str; 5] = [
    "/statusz",
    "/statusz.json",
    "/trace?port=1&host=x",
    "/metrics",
    "/nope",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_listener_off_loopback_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    // 0.0.0.0 is not loopback: the listener is reachable from other hosts (and here from 127.0.0.1).
    let mut cfg = Config::for_tests();
    cfg.status_addr = "0.0.0.0:0".parse().unwrap();
    let Err(e) = App::build(cfg.clone(), source()).await else {
        panic!("a router with a public status listener and no token started");
    };
    let e = e.to_string();
    assert!(
        e.contains("status_addr 0.0.0.0:0 is not a loopback address")
            && e.contains("status_token_file"),
        "{e}"
    );
    // A token file group or others can read is refused.
    for mode in [0o640, 0o604, 0o660] {
        cfg.status_token_file = Some(token_file(dir.path(), mode));
        let Err(e) = App::build(cfg.clone(), source()).await else {
            panic!("a token file of mode {mode:o} was accepted");
        };
        assert!(
            e.to_string()
                .contains("readable or writable by group or others"),
            "{e}"
        );
    }
    // Too short, and missing.
    let short = dir.path().join("short");
    std::fs::write(&short, "abc").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (f, want) in [
        (short, "at least 16 characters"),
        (dir.path().join("missing"), "No such file"),
    ] {
        cfg.status_token_file = Some(f);
        let e = App::build(cfg.clone(), source())
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(want), "{e}");
    }

    cfg.status_token_file = Some(token_file(dir.path(), 0o600));
    let app = App::build(cfg, source()).await.unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], app.status_addr().port()));
    let stop = CancellationToken::new();
    let (_handle, task) = app.spawn(stop.clone());
    eventually(Duration::from_secs(10), "a table", || async {
        (get(addr, "/healthz", None).await.0 == 200).then_some(())
    })
    .await;
    let wrong_len = format!("Bearer {TOKEN}x");
    let wrong = format!("Bearer {}", TOKEN.replace('0', "1"));
    let basic = format!("Basic {TOKEN}");
    for path in GUARDED {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(wrong_len.as_str()),
            Some(basic.as_str()),
            Some("Bearer "),
        ] {
            let (s, b) = get(addr, path, auth).await;
            assert_eq!(s, 401, "{path} with {auth:?}: {b}");
            assert!(!b.contains("10.9.8.7"), "{path} leaked a backend: {b}");
        }
    }
    // /healthz stays open (load balancers and the aquarium probe it), and shows no backend.
    let (s, b) = get(addr, "/healthz", None).await;
    assert_eq!((s, b.as_str()), (200, "OK\n"));
    let good = format!("Bearer {TOKEN}");
    let (s, b) = get(addr, "/statusz", Some(&good)).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("10.9.8.7:4242"), "{b}");
    let (s, b) = get(addr, "/statusz.json", Some(&good)).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = get(addr, "/metrics", Some(&good)).await;
    assert!(s == 200 && b.ends_with("# EOF\n"), "{s} {b}");
    let (s, b) = get(addr, "/trace?port=1&host=x", Some(&good)).await;
    assert_eq!(s, 200, "{b}");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_listener_on_loopback_is_open_by_default() {
    let cfg: Config = toml_config("");
    assert_eq!(cfg.status_addr.to_string(), "127.0.0.1:8080");
    assert!(cfg.status_token_file.is_none());
    cfg.validate().expect("the default config is valid");
    let app = App::build(Config::for_tests(), source()).await.unwrap();
    let addr = app.status_addr();
    assert!(addr.ip().is_loopback());
    let stop = CancellationToken::new();
    let (_handle, task) = app.spawn(stop.clone());
    eventually(Duration::from_secs(10), "backend listed", || async {
        let (s, b) = get(addr, "/statusz", None).await;
        (s == 200 && b.contains("10.9.8.7:4242")).then_some(())
    })
    .await;
    assert_eq!(get(addr, "/metrics", None).await.0, 200);
    assert_eq!(get(addr, "/trace?port=1&host=x", None).await.0, 200);
    stop.cancel();
    task.await.unwrap();
}

fn toml_config(extra: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.toml");
    std::fs::write(&f, extra).unwrap();
    atlantis_common::config::load(Some(&f), "ATLANTIS_ROUTER_TEST_UNUSED").unwrap()
}

#[test]
fn internal_router_config_needs_a_reachable_address() {
    let internal = |s: &str| toml_config(&format!("kind = \"internal\"\n{s}"));
    for (extra, want) in [
        ("", "listen_ip 0.0.0.0 is not one"),
        (
            "listen_ip = \"127.0.0.1\"\n",
            "listen_ip 127.0.0.1 is not one",
        ),
        (
            "listen_ip = \"10.1.2.3\"\nadvertise_ip = \"127.0.0.1\"\n",
            "advertise_ip 127.0.0.1 is not an address",
        ),
    ] {
        let e = internal(extra).validate().expect_err(extra).to_string();
        assert!(e.contains(want), "{extra:?}: {e}");
    }
    let c = internal("listen_ip = \"10.1.2.3\"\n");
    c.validate().unwrap();
    let reg = c.registration("r1", "z1", c.status_addr);
    assert_eq!(reg["address"], "10.1.2.3");
    assert_eq!(reg["status_addr"], "127.0.0.1:8080");
    let c = internal("advertise_ip = \"10.4.5.6\"\n");
    c.validate().unwrap();
    assert_eq!(
        c.registration("r1", "z1", c.status_addr)["address"],
        "10.4.5.6"
    );
    // An external router on every address registers none (clients reach it through DNS).
    let c = toml_config("");
    assert!(
        c.registration("r1", "z1", c.status_addr)
            .get("address")
            .is_none()
    );
}

/// The real binary: refuses a public status listener without a token with one clear line, and with a
/// token registers the address of its routed ports and guards its pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_binary_refuses_an_open_status_listener_and_registers_its_address() {
    let bin = env!("CARGO_BIN_EXE_atlantis-router");
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::shared();
    let root = format!("/router-it-status-{}", std::process::id());
    let sp = free_port();
    let common = format!(
        "kind = \"internal\"\nzone = \"z1\"\nhost = \"bin-router\"\nlisten_ip = \"127.0.0.1\"\n\
         advertise_ip = \"192.0.2.10\"\nsnapshot_path = \"\"\n\
         [zookeeper]\nservers = \"{}\"\nregion = \"test\"\nroot = \"{root}\"\n",
        zk.connect_string()
    );
    let write = |name: &str, text: String| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        f
    };
    let open = write(
        "open.toml",
        format!("status_addr = \"0.0.0.0:{sp}\"\n{common}"),
    );
    let out = Command::new(bin)
        .arg("--config")
        .arg(&open)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "status_addr 0.0.0.0:{sp} is not a loopback address"
        )) && err.contains("status_token_file"),
        "{err}"
    );
    let loose = token_file(dir.path(), 0o644);
    let cfg = write(
        "loose.toml",
        format!("status_addr = \"0.0.0.0:{sp}\"\nstatus_token_file = {loose:?}\n{common}"),
    );
    let out = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable or writable by group or others"),
        "{err}"
    );

    let tight = token_file(dir.path(), 0o600);
    let cfg = write(
        "ok.toml",
        format!("status_addr = \"0.0.0.0:{sp}\"\nstatus_token_file = {tight:?}\n{common}"),
    );
    // Under a watchdog: the router goes when the test does, even on a panic.
    let child = atlantis_testkit::process::Guarded::spawn(
        "router",
        Path::new(bin),
        &["--config".into(), cfg.display().to_string()],
        &dir.path().join("router.log"),
        None,
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], sp));
    let mut zc = atlantis_common::zk::ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    zc.root = Some(root);
    let coord = Coord::connect(zc).await.unwrap();
    let reg_path = coord.layout().router(
        RouterKind::Internal,
        &"z1".parse().unwrap(),
        &"bin-router".parse().unwrap(),
    );
    let reg: serde_json::Value = eventually(Duration::from_secs(20), "registered", || async {
        let raw = coord.get_raw(&reg_path).await.ok()??;
        serde_json::from_slice(&raw.0).ok()
    })
    .await;
    assert_eq!(reg["address"], "192.0.2.10", "{reg}");
    assert_eq!(reg["status_addr"], format!("0.0.0.0:{sp}"), "{reg}");
    assert_eq!(reg["status_token"], true, "{reg}");
    eventually(Duration::from_secs(10), "healthz", || async {
        let r = client()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    for path in GUARDED {
        assert_eq!(get(addr, path, None).await.0, 401, "{path}");
        assert_eq!(
            get(addr, path, Some("Bearer wrong-token-wrong-token"))
                .await
                .0,
            401,
            "{path}"
        );
    }
    let (s, b) = get(addr, "/statusz.json", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(s, 200, "{b}");
    drop(child);
}
