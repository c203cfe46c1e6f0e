//! Two hosts in two zones: both register EPHEMERAL in ZooKeeper with zone and capacity, keep their free
//! capacity current, register again after a session loss, and vanish on shutdown. The binary starts too.

use std::time::Duration;

use atlantis_common::api::supervisor::{ContainerState, SupervisorRecord};
use atlantis_common::supervisor_client::SupervisorClient;
use atlantis_common::zk::Coord;
use atlantis_supervisor::App;
use atlantis_testkit::{ZooKeeper, eventually};

use crate::{Client, Host, init_tracing, spec, unique, zk_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_zones_register_and_survive_session_loss() {
    init_tracing();
    let mut zk = ZooKeeper::start();
    let zkc = zk_config(&zk, &format!("/sup-zones-{}", unique()));
    let manager = Coord::connect(zkc.clone()).await.unwrap();
    let layout = manager.layout().clone();
    let (a, b) = (
        Host::start("host-a", "zone-a"),
        Host::start("host-b", "zone-b"),
    );
    let app_a = App::build(a.config(Some(zkc.clone())))
        .await
        .expect("supervisor a");
    let app_b = App::build(b.config(Some(zkc.clone())))
        .await
        .expect("supervisor b");

    let hosts = manager.children(&layout.supervisors()).await.unwrap();
    assert_eq!(hosts, vec!["host-a".to_string(), "host-b".to_string()]);
    let host_a: atlantis_common::HostName = "host-a".parse().unwrap();
    let host_b: atlantis_common::HostName = "host-b".parse().unwrap();
    let rec_a = manager
        .get::<SupervisorRecord>(&layout.supervisor(&host_a))
        .await
        .unwrap()
        .unwrap()
        .value;
    let rec_b = manager
        .get::<SupervisorRecord>(&layout.supervisor(&host_b))
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        (rec_a.zone.as_str(), rec_b.zone.as_str()),
        ("zone-a", "zone-b")
    );
    assert_eq!(rec_a.capacity.slots, 4);
    assert_eq!(
        (rec_a.version, rec_a.software_version.as_str()),
        (1, env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(rec_a.free, rec_a.capacity);
    assert_eq!(rec_a.address, format!("http://{}", app_a.addr));
    let stat = manager
        .stat(&layout.supervisor(&host_a))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(stat.ephemeral_owner, 0, "the registration is ephemeral");

    // One container per zone; the records follow the free capacity.
    for (app, host) in [(&app_a, "host-a"), (&app_b, "host-b")] {
        let s = spec("web", "prod");
        let node = layout.instance(&s.app, &s.env, &s.container_id);
        manager
            .create(&node, &serde_json::json!({ "host": host }))
            .await
            .unwrap();
        let typed = SupervisorClient::new(&format!("http://{}", app.addr), crate::TOKEN).unwrap();
        let info = typed.deploy(&s).await.unwrap();
        assert_eq!(
            typed.deploy(&s).await.unwrap_err().code(),
            Some("duplicate")
        );
        assert_eq!(
            typed.get(&s.container_id).await.unwrap().unwrap().ports,
            info.ports
        );
        assert_eq!(
            typed.health().await.unwrap().zone.as_str(),
            info.host.as_str().replace("host", "zone")
        );
        let bad = SupervisorClient::new(&format!("http://{}", app.addr), "wrong-token-0123456789")
            .unwrap();
        assert_eq!(bad.list().await.unwrap_err().code(), Some("unauthorized"));
        assert_eq!(info.state, ContainerState::Healthy);
        assert_eq!(info.host.as_str(), host);
    }
    let rec_a = manager
        .get::<SupervisorRecord>(&layout.supervisor(&host_a))
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        (
            rec_a.free.slots,
            rec_a.free.memory_mb,
            rec_a.free.cpu_millis
        ),
        (3, 512 - 32, 2000 - 200)
    );

    openapi_matches_the_router(&Client::for_app(&app_a)).await;

    // Session loss: the supervisor's node is re-created on the new session, with the current payload.
    let owner_before = stat.ephemeral_owner;
    app_a
        .coord()
        .expect("zk configured")
        .expire_session()
        .await
        .unwrap();
    let rec = eventually(
        Duration::from_secs(20),
        "re-registration after session loss",
        || async {
            let st = manager.stat(&layout.supervisor(&host_a)).await.ok()??;
            if st.ephemeral_owner == owner_before {
                return None;
            }
            manager
                .get::<SupervisorRecord>(&layout.supervisor(&host_a))
                .await
                .ok()?
                .map(|v| v.value)
        },
    )
    .await;
    assert_eq!(rec.free.slots, 3);
    // Its container is still wanted and kept.
    assert_eq!(a.container_names().len(), 1);

    // ZooKeeper away: the supervisors keep serving and remove nothing (intent unknown is not "unwanted").
    zk.stop();
    let client_a = Client::for_app(&app_a);
    let mut status = app_a.coord().unwrap().status();
    tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| !s.connected))
        .await
        .expect("the supervisor noticed ZooKeeper is away")
        .unwrap();
    // As many reconcile passes as would remove an orphan (see lifecycle.rs), all while disconnected.
    let cfg = a.config(None);
    let passes = cfg.orphan_grace_ms.div_ceil(cfg.reconcile_interval_ms) + 3;
    let before = client_a.reconcile_passes().await;
    eventually(
        Duration::from_secs(30),
        &format!("{passes} reconcile passes while ZooKeeper is away"),
        || async {
            let (s, _) = client_a
                .send(reqwest::Method::GET, "/v1/health", None)
                .await;
            assert_eq!(s, 200);
            assert_eq!(
                client_a.list().await.len(),
                1,
                "no container removed while ZooKeeper is away"
            );
            (client_a.reconcile_passes().await >= before + passes).then_some(())
        },
    )
    .await;
    assert!(
        !status.borrow().connected,
        "ZooKeeper stayed away meanwhile"
    );
    assert_eq!(a.container_names().len(), 1);
    zk.restart();
    eventually(
        Duration::from_secs(30),
        "registration back after the outage",
        || async {
            manager
                .get::<SupervisorRecord>(&layout.supervisor(&host_a))
                .await
                .ok()?
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(client_a.list().await.len(), 1);
    for app in [&app_a, &app_b] {
        let mut status = app.coord().unwrap().status();
        tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.connected))
            .await
            .unwrap()
            .unwrap();
    }

    // Graceful shutdown removes the registration; containers stay for the next supervisor.
    app_b.shutdown().await;
    assert!(
        manager
            .stat(&layout.supervisor(&host_b))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.container_names().len(), 1);
    app_a.shutdown().await;
}

/// Every path and method of the OpenAPI document is routed (none falls through to "no such route").
async fn openapi_matches_the_router(client: &Client) {
    let (s, doc) = client
        .send(reqwest::Method::GET, "/openapi.json", None)
        .await;
    assert_eq!(s, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 8, "{paths:?}");
    for (path, item) in paths {
        let path = path.replace("{id}", "nobody-0123456-prod-aaaaaa");
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method == "post" || method == "put").then(|| "{}".to_string());
            let (s, text) = client.send(m.clone(), &path, body).await;
            assert!(
                s != 405 && !text.contains("no such route"),
                "{method} {path}: {s} {text}"
            );
            // Without the token: refused unless the document says the route needs none.
            let open = item[method]["security"]
                .as_array()
                .is_some_and(|a| a.is_empty());
            let anon = client
                .http
                .request(m, format!("{}{path}", client.base))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            assert_eq!(
                anon == 401,
                !open,
                "{method} {path} without the token: {anon}"
            );
        }
    }
    let (s, text) = client.send(reqwest::Method::GET, "/v1/nope", None).await;
    assert!(s == 404 && text.contains("no such route"), "{s} {text}");
}

#[test]
fn the_binary_starts_with_a_config_file_and_env_overrides() {
    let host = Host::start("host-c", "zone-c");
    let bin = env!("CARGO_BIN_EXE_atlantis-supervisor");
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));
    let cfg = host.dir.path().join("supervisor.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nhost = \"host-c\"\nzone = \"zone-c\"\nregion = \"test\"\ntoken_file = \"{}\"\ndata_dir = \"{}\"\n\
             [docker]\nsocket = \"{}\"\nsubnet = \"172.30.0.0\"\nprefix_len = 24\n[firewall]\nnetns = \"{}\"\n",
            host.dir.path().join("token").display(),
            host.dir.path().join("data").display(),
            host.docker.socket().display(),
            host.docker.netns_path().display(),
        ),
    )
    .unwrap();
    let log = host.dir.path().join("bin.log");
    // An environment override wins over the file: 3 slots instead of the default 20.
    let env_bin = atlantis_testkit::require_bin("env", "coreutils");
    let args = vec![
        "ATLANTIS_SUPERVISOR__CAPACITY__SLOTS=3".to_string(),
        bin.to_string(),
        "--config".to_string(),
        cfg.display().to_string(),
    ];
    let proc = atlantis_testkit::process::Guarded::spawn("supervisor", &env_bin, &args, &log, None);
    let addr = atlantis_testkit::wait_until(
        Duration::from_secs(20),
        "supervisor binary listening",
        || {
            std::fs::read_to_string(&log)
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("listening on ").map(str::to_owned))
        },
    );
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-m",
            "3",
            "-H",
            &format!("Authorization: Bearer {}", crate::TOKEN),
            &format!("http://{addr}/v1/health"),
        ])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("\"slots\":3"),
        "{body}\n{}",
        proc.log_tail(20)
    );
    // SIGTERM: a graceful stop (the guard sends TERM first and waits).
    drop(proc);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("Supervisor stopped."), "{log_text}");
}
