//! Never route wrong, never start empty: a bad document written over a live node keeps the last valid
//! version; a router started while ZooKeeper is down serves its local snapshot (and says 503 when it has
//! none); ZooKeeper's return is noticed within a second, and the time from its return to the first
//! applied change is measured.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use atlantis_common::zk::Section;
use atlantis_testkit::{ZooKeeper, eventually, ports::free_port};
use serde_json::json;

use crate::support::{Backend, Conf, Router, client, get, wait_ok, wait_route};

/// `(status, Server-Status)` of `/healthz`.
async fn healthz(router: &Router) -> (u16, String) {
    let r = client()
        .get(format!("http://{}/healthz", router.status))
        .send()
        .await
        .unwrap();
    let s = r.headers()["server-status"].to_str().unwrap().to_owned();
    (r.status().as_u16(), s)
}

/// A counter's value from `/metrics`.
async fn metric(router: &Router, name: &str) -> f64 {
    let text = client()
        .get(format!("http://{}/metrics", router.status))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const REFUSALS: &str = "atlantis_router_invalid_config_refusals_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_document_over_a_live_node_keeps_its_last_valid_version() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "keepvalid").await;
    let (api, other) = (Backend::start("api").await, Backend::start("other").await);
    for (p, b) in [("api", &api), ("other", &other)] {
        conf.pool(p, json!({"healthz_every_ms": 0})).await;
        conf.backend(p, &b.node()).await;
    }
    conf.rule("api", "path-prefix", "/api/", "api").await;
    conf.rule("all", "static", "true", "other").await;
    conf.trie("root", &["api", "all"]).await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let router = Router::start(&conf).await;
    wait_ok(port, "/api/x", "api").await;
    wait_ok(port, "/x", "other").await;
    assert_eq!(metric(&router, REFUSALS).await, 0.0);
    let c = client();
    let url = format!("http://127.0.0.1:{port}/api/x");
    // Bad documents over a live rule, trie, pool and port, one after the other.
    let mut bad = 0;
    for (section, dir, name, doc) in [
        (Section::Rules, "rules", "api", "{not json"),
        (Section::Tries, "tries", "root", r#"{"rules": "api"}"#),
        (
            Section::Pools,
            "pools",
            "api",
            r#"{"healthz_every_ms": "often"}"#,
        ),
        (
            Section::Ports,
            "ports",
            "web",
            r#"{"port": 0, "trie": "root"}"#,
        ),
    ] {
        let path = conf.coord.layout().router_item(conf.kind, section, name);
        let (_, stat) = conf.coord.get_raw(&path).await.unwrap().unwrap();
        let version = conf
            .coord
            .set_raw(&path, doc.as_bytes(), None)
            .await
            .unwrap();
        bad += 1;
        let node = format!("{dir}/{name}");
        let invalid = eventually(Duration::from_secs(10), &node, || async {
            let s = router.status_json().await;
            s["invalid"]
                .as_array()?
                .iter()
                .find(|e| e["node"] == node.as_str())
                .cloned()
        })
        .await;
        assert_eq!(invalid["version"], version, "{invalid}");
        assert_eq!(invalid["serving_version"], stat.version, "{invalid}");
        assert!(!invalid["error"].as_str().unwrap().is_empty());
        // The live version still routes: /api is not sent to the catch-all.
        for _ in 0..10 {
            let (s, b, body) = get(&c, &url, "x.test", &[]).await;
            assert_eq!((s, b.as_str()), (200, "api"), "after a bad {node}: {body}");
        }
        assert_eq!(metric(&router, REFUSALS).await, bad as f64);
    }
    let text = client()
        .get(format!("http://{}/statusz", router.status))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("invalid: rules/api version 1") && text.contains("still serving"),
        "{text}"
    );
    // Unrelated changes rebuild the table; the refusals are not logged again.
    for i in 0..5 {
        let generation = router.handle.generation();
        conf.rule("extra", "path-prefix", &format!("/extra{i}/"), "other")
            .await;
        let mut h = router.handle.clone();
        tokio::time::timeout(Duration::from_secs(10), h.wait_generation(generation))
            .await
            .unwrap();
    }
    assert_eq!(metric(&router, REFUSALS).await, bad as f64);
    // A fix applies at once and leaves the list.
    conf.rule("api", "path-prefix", "/v2/", "api").await;
    wait_route(&c, &url, "x.test", 200, "other").await;
    let s = router.status_json().await;
    assert!(
        !s["invalid"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["node"] == "rules/api"),
        "{s}"
    );
    router.stop().await;
}

/// Polls `GET url` (host `x.test`) every 10 ms until it answers 200 from `backend`; the time it took.
async fn time_to_route(url: String, backend: &'static str, from: Instant) -> Duration {
    let c = client();
    let deadline = from + Duration::from_secs(30);
    loop {
        let (s, b, _) = get(&c, &url, "x.test", &[]).await;
        if s == 200 && b == backend {
            return from.elapsed();
        }
        assert!(Instant::now() < deadline, "{url} never reached {backend}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `/healthz` every 10 ms until it says OK; the time it took.
async fn time_to_ok(router: &Router, from: Instant) -> Duration {
    let deadline = from + Duration::from_secs(30);
    loop {
        if healthz(router).await == (200, "OK".into()) {
            return from.elapsed();
        }
        assert!(Instant::now() < deadline, "healthz never OK");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_started_while_zookeeper_is_down_serves_its_snapshot_and_catches_up_fast() {
    // This test stops its ZooKeeper, so it has one of its own.
    let mut zk = ZooKeeper::start();
    let mut conf = Conf::new(&zk.connect_string(), "snapshot").await;
    // Sessions outlive the outage: the client library reconnects the same session (with its own,
    // growing backoff) unless the router does better.
    conf.zk.session_timeout = Duration::from_secs(20);
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    for (p, b) in [("p1", &b1), ("p2", &b2)] {
        conf.pool(p, json!({"healthz_every_ms": 0})).await;
        conf.backend(p, &b.node()).await;
    }
    conf.rule("all", "static", "true", "p1").await;
    conf.trie("root", &["all"]).await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("router.snapshot.json");
    let a = Router::start_with(&conf, |c| c.snapshot_path = Some(snap.clone())).await;
    wait_ok(port, "/", "b1").await;
    let origin = format!("zookeeper:{}", conf.zk.layout().router_config(conf.kind));
    eventually(Duration::from_secs(10), "the snapshot", || async {
        let s = atlantis_router::snapshot::load(&snap, &origin).ok()?;
        let rule = String::from_utf8(s.nodes.get("rules/all")?.data.clone()).ok()?;
        rule.contains("p1").then_some(())
    })
    .await;

    zk.stop();
    let stopped = Instant::now();
    eventually(Duration::from_secs(15), "healthz DEGRADED", || async {
        (healthz(&a).await == (200, "DEGRADED".into())).then_some(())
    })
    .await;
    // Started now: router b has the snapshot and serves it; router c has none, serves nothing and
    // says so.
    let b = Router::start_as(&conf, "router-b", |c| {
        c.snapshot_path = Some(snap.clone());
        c.listen_ip = Ipv4Addr::new(127, 0, 0, 2).into();
    })
    .await;
    let c = Router::start_as(&conf, "router-c", |c| {
        c.snapshot_path = Some(dir.path().join("none.json"));
        c.listen_ip = Ipv4Addr::new(127, 0, 0, 3).into();
    })
    .await;
    wait_route(
        &client(),
        &format!("http://127.0.0.2:{port}/"),
        "x.test",
        200,
        "b1",
    )
    .await;
    assert_eq!(healthz(&b).await, (200, "DEGRADED".into()));
    assert_eq!(b.status_json().await["config_origin"], "snapshot");
    assert_eq!(healthz(&c).await, (503, "CRITICAL".into()));
    assert_eq!(c.status_json().await["config_origin"], "none");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.3", port))
            .await
            .is_err()
    );

    // An outage of several seconds, as when a ZooKeeper server is restarted: the client library's own
    // reconnect backoff has grown by then.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(stopped.elapsed())).await;
    zk.restart();
    let back = Instant::now();
    let measure = async {
        tokio::join!(
            time_to_ok(&a, back),
            time_to_ok(&b, back),
            time_to_ok(&c, back),
            async {
                let writer = Conf::new(&zk.connect_string(), "snapshot").await;
                writer.rule("all", "static", "true", "p2").await;
                let written = back.elapsed();
                let applied = tokio::join!(
                    time_to_route(format!("http://127.0.0.1:{port}/"), "b2", back),
                    time_to_route(format!("http://127.0.0.2:{port}/"), "b2", back),
                    time_to_route(format!("http://127.0.0.3:{port}/"), "b2", back),
                );
                (written, applied)
            }
        )
    };
    let (ok_a, ok_b, ok_c, (written, (applied_a, applied_b, applied_c))) = measure.await;
    eprintln!(
        "ZooKeeper return -> reconnected (healthz OK): a {ok_a:?}, b {ok_b:?}, c {ok_c:?}; \
         change written at {written:?}; first applied change: a {applied_a:?}, b {applied_b:?}, \
         c {applied_c:?}"
    );
    for (what, t) in [("a", ok_a), ("b", ok_b), ("c", ok_c)] {
        assert!(
            t < Duration::from_millis(1500),
            "router {what} reconnected {t:?} after ZooKeeper's return"
        );
    }
    for (what, t) in [("a", applied_a), ("b", applied_b), ("c", applied_c)] {
        assert!(
            t < written + Duration::from_millis(1000),
            "router {what} applied the change {t:?} after ZooKeeper's return (written at {written:?})"
        );
    }
    assert_eq!(b.status_json().await["config_origin"], "source");
    // Every router is registered again.
    let writer = Conf::new(&zk.connect_string(), "snapshot").await;
    for host in ["test-router", "router-b", "router-c"] {
        let reg =
            conf.coord
                .layout()
                .router(conf.kind, &"z1".parse().unwrap(), &host.parse().unwrap());
        eventually(
            Duration::from_secs(10),
            &format!("{host} registered"),
            || async { writer.coord.get_raw(&reg).await.ok()?.map(|_| ()) },
        )
        .await;
    }
    for r in [a, b, c] {
        r.stop().await;
    }
}
