//! The switch transaction against a real ZooKeeper.

use std::time::Duration;

use atlantis_common::api::manager::{InstanceRecord, InstanceState};
use atlantis_common::zk::{Coord, RouterKind, ZkConfig};
use atlantis_manager::routing::{self, NewBackend, Publish, ReleaseWrite, Route};
use atlantis_testkit::ZooKeeper;

use crate::support::unique;

fn instance(cid: &str) -> InstanceRecord {
    InstanceRecord {
        version: 1,
        container_id: cid.parse().unwrap(),
        app: "hello".parse().unwrap(),
        env: "prod".parse().unwrap(),
        sha: "1a2b3c4d".parse().unwrap(),
        host: "host-a".parse().unwrap(),
        zone: "zone-a".parse().unwrap(),
        backend: None,
        state: InstanceState::Starting,
        release: 1,
        cpu_millis: 250,
        memory_mb: 64,
    }
}

/// A backend left in the pool by a container that is gone (its host died, it was removed by hand) sits at
/// the address the supervisor now gives a new container: the switch replaces it instead of failing with
/// "node exists", and the pool names the new container.
#[tokio::test]
async fn a_stale_backend_at_the_new_address_is_replaced() {
    let zk = ZooKeeper::shared();
    let mut cfg = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    cfg.session_timeout = Duration::from_secs(6);
    cfg.root = Some(format!("/mgr-routing-{}", unique()));
    let coord = Coord::connect(cfg).await.unwrap();
    let (app, env) = ("hello".parse().unwrap(), "prod".parse().unwrap());
    let route = Route {
        kind: RouterKind::External,
        publish: Publish::External {
            trie: "apps".into(),
            domain: "apps.test".into(),
        },
    };
    let l = coord.layout();
    for cid in ["hello-1a2b3c4-prod-aaaaaa", "hello-1a2b3c4-prod-bbbbbb"] {
        let rec = instance(cid);
        let path = l.instance(&app, &env, &rec.container_id);
        coord.create(&path, &rec).await.unwrap();
    }
    let first = NewBackend {
        backend: "10.1.2.3:42000".into(),
        instance: instance("hello-1a2b3c4-prod-aaaaaa"),
    };
    routing::switch_in(
        &coord,
        &route,
        &app,
        &env,
        &[first],
        ReleaseWrite::Keep,
        None,
    )
    .await
    .unwrap();
    // The first container disappears without its backend being removed; a new one gets its address.
    let second = NewBackend {
        backend: "10.1.2.3:42000".into(),
        instance: instance("hello-1a2b3c4-prod-bbbbbb"),
    };
    routing::switch_in(
        &coord,
        &route,
        &app,
        &env,
        &[second],
        ReleaseWrite::Keep,
        None,
    )
    .await
    .expect("the stale backend is replaced");
    let path = l.pool_backend(
        RouterKind::External,
        &routing::pool_name(&app, &env),
        "10.1.2.3:42000",
    );
    let doc = coord
        .get::<serde_json::Value>(&path)
        .await
        .unwrap()
        .expect("the backend is there");
    assert_eq!(doc.value["container"], "hello-1a2b3c4-prod-bbbbbb");
    let backends = coord
        .children(&l.router_item(
            RouterKind::External,
            atlantis_common::zk::Section::Pools,
            &routing::pool_name(&app, &env),
        ))
        .await
        .unwrap();
    assert_eq!(backends, ["10.1.2.3:42000"]);
}

/// A router whose status listener is off loopback takes a token: the manager's check that routers see
/// new backends is refused without it (the router stays pending) and passes with
/// `routing.router_status_token_file`; a token file group or others can read stops the manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_status_is_read_with_the_status_token() {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let zk = ZooKeeper::shared();
    let mut zc = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    zc.root = Some(format!("/mgr-status-token-{}", unique()));
    let coord = Coord::connect(zc.clone()).await.unwrap();
    let l = coord.layout();
    coord
        .put(
            &l.router_item(
                RouterKind::External,
                atlantis_common::zk::Section::Pools,
                "p",
            ),
            &serde_json::json!({"version": 1, "healthz_every_ms": 0}),
        )
        .await
        .unwrap();
    coord
        .put(
            &l.pool_backend(RouterKind::External, "p", "10.9.9.9:4000"),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("status.token");
    std::fs::write(&token, "router-status-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut rc = atlantis_router::config::Config::for_tests();
    rc.status_addr = "0.0.0.0:0".parse().unwrap();
    rc.status_token_file = Some(token.clone());
    let port = atlantis_testkit::ports::free_port();
    rc.status_addr.set_port(port);
    let status: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let source = std::sync::Arc::new(atlantis_router::source::ZkSource::new(
        zc,
        RouterKind::External,
        "zone-a".parse().unwrap(),
        "tok-router".parse().unwrap(),
        rc.registration("tok-router", "zone-a", status),
    ));
    let app = atlantis_router::App::build(rc, source).await.unwrap();
    let stop = atlantis_common::shutdown::CancellationToken::new();
    let (_h, task) = app.spawn(stop.clone());

    let mut cfg = crate::support::manager_config(
        &ZkConfig::new(zk.connect_string(), "test".parse().unwrap()),
        dir.path(),
        "127.0.0.1:9".parse().unwrap(),
    );
    let backends = ["10.9.9.9:4000".to_string()];
    let wait = |http: reqwest::Client, limit: u64| {
        let coord = coord.clone();
        let backends = backends.clone();
        async move {
            routing::wait_usable(
                &coord,
                &http,
                RouterKind::External,
                "p",
                &backends,
                Duration::from_millis(limit),
            )
            .await
        }
    };
    atlantis_testkit::eventually(Duration::from_secs(15), "router registered", || async {
        let r = atlantis_manager::state::routers(&coord, RouterKind::External)
            .await
            .ok()?;
        (r.len() == 1).then_some(())
    })
    .await;
    // Registered and serving: with the token the router confirms.
    cfg.routing.router_status_token_file = Some(token.clone());
    let with = atlantis_manager::server::router_status_client(&cfg).unwrap();
    assert!(
        wait(with, 15_000).await.is_empty(),
        "confirmed with the token"
    );
    // Without it: 401, so the router never confirms.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(
        wait(plain.clone(), 1000).await,
        vec!["zone-a/tok-router".to_string()]
    );
    let r = plain
        .get(format!("http://{status}/statusz.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A token file others can read is refused.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = atlantis_manager::server::router_status_client(&cfg).expect_err("refused");
    assert!(
        e.to_string()
            .contains("readable or writable by group or others"),
        "{e}"
    );
    stop.cancel();
    task.await.unwrap();
}
