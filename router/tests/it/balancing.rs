//! Health tiers, slow start, retries on refused connections, and each router-made error status.

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use atlantis_testkit::{ZooKeeper, eventually, ports::free_port};
use serde_json::json;

use crate::support::{Backend, Conf, Router, client, get, wait_health, wait_route};

async fn spread(c: &reqwest::Client, url: &str, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let (s, b, body) = get(c, url, "x.test", &[]).await;
        let key = if s == 200 {
            b
        } else {
            format!("status {s}: {body}")
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// The backend's `slow_start_left_ms` in `/statusz.json` (None while it is not listed).
async fn slow_start_left(router: &Router, pool: &str, backend: &str) -> Option<u64> {
    router.backend_status(pool, backend).await?["slow_start_left_ms"].as_u64()
}

async fn wait_slow_start_over(router: &Router, pool: &str, backend: &str) {
    eventually(
        Duration::from_secs(15),
        &format!("the slow start of {backend} in {pool} to be over"),
        || async { (slow_start_left(router, pool, backend).await? == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_health_tier_wins_and_plain_200_is_ok() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "tiers").await;
    let (a, b, cc) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    a.set_health(200, Some("OK"));
    b.set_health(200, Some("DEGRADED"));
    cc.set_health(500, Some("CRITICAL"));
    conf.pool("p", json!({"healthz_every_ms": 100, "slow_start_ms": 0}))
        .await;
    for x in [&a, &b, &cc] {
        conf.backend("p", &x.node()).await;
    }
    conf.rule("all", "static", "true", "p").await;
    conf.trie("root", &["all"]).await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let router = Router::start(&conf).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    wait_health(&router, "p", &a.node(), "OK").await;
    wait_health(&router, "p", &cc.node(), "CRITICAL").await;
    assert_eq!(
        spread(&c, &url, 30).await,
        HashMap::from([("a".to_string(), 30)])
    );
    // OK gone to maintenance: DEGRADED is the best tier left.
    a.set_health(200, Some("MAINTENANCE"));
    wait_health(&router, "p", &a.node(), "MAINTENANCE").await;
    assert_eq!(
        spread(&c, &url, 20).await,
        HashMap::from([("b".to_string(), 20)])
    );
    // DEGRADED turns CRITICAL: the pool accepts DEGRADED at worst, so nothing is usable.
    b.set_health(503, None);
    wait_health(&router, "p", &b.node(), "CRITICAL").await;
    let (s, _, _) = get(&c, &url, "x.test", &[]).await;
    assert_eq!(s, 503);
    // A plain 200 without the header counts as OK.
    cc.set_health(200, None);
    wait_health(&router, "p", &cc.node(), "OK").await;
    assert_eq!(
        spread(&c, &url, 10).await,
        HashMap::from([("c".to_string(), 10)])
    );
    // A pool that accepts CRITICAL uses it as a last resort.
    cc.set_health(200, Some("MAINTENANCE"));
    conf.pool(
        "p",
        json!({"healthz_every_ms": 100, "slow_start_ms": 0, "accept": "CRITICAL"}),
    )
    .await;
    wait_health(&router, "p", &cc.node(), "MAINTENANCE").await;
    wait_route(&c, &url, "x.test", 200, "b").await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_new_backend() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "slowstart").await;
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    conf.pool("p", json!({"healthz_every_ms": 100, "slow_start_ms": 4000}))
        .await;
    conf.backend("p", &old.node()).await;
    conf.rule("all", "static", "true", "p").await;
    conf.trie("root", &["all"]).await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let router = Router::start(&conf).await;
    wait_health(&router, "p", &old.node(), "OK").await;
    // Let the old backend finish its own slow start.
    wait_slow_start_over(&router, "p", &old.node()).await;
    conf.backend("p", &new.node()).await;
    wait_health(&router, "p", &new.node(), "OK").await;
    let url = format!("http://127.0.0.1:{port}/slow?ms=20");
    let load = |n: usize| {
        let url = url.clone();
        async move {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        let c = client();
                        for _ in 0..n {
                            let (s, _, _) = get(&c, &url, "x.test", &[]).await;
                            assert_eq!(s, 200);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    let (o0, n0) = (old.served.load(SeqCst), new.served.load(SeqCst));
    load(10).await;
    let (o1, n1) = (old.served.load(SeqCst) - o0, new.served.load(SeqCst) - n0);
    // The whole load ran inside the new backend's slow start.
    let left = slow_start_left(&router, "p", &new.node()).await;
    assert!(
        left.is_some_and(|ms| ms > 0),
        "the load outlasted the slow start (left: {left:?} ms)"
    );
    assert!(
        n1 * 3 < o1,
        "during slow start the new backend got {n1}, the old one {o1}"
    );
    wait_slow_start_over(&router, "p", &new.node()).await;
    load(10).await;
    let (o2, n2) = (
        old.served.load(SeqCst) - o0 - o1,
        new.served.load(SeqCst) - n0 - n1,
    );
    assert!(
        n2 * 3 >= o2 && o2 * 3 >= n2,
        "after slow start: new {n2}, old {o2}"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_on_another_backend() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "retry").await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    // Health checks rarely, so the router learns about the dead backend from refused connections.
    conf.pool("p", json!({"healthz_every_ms": 60000, "slow_start_ms": 0}))
        .await;
    conf.backend("p", &a.node()).await;
    conf.backend("p", &b.node()).await;
    conf.rule("all", "static", "true", "p").await;
    conf.trie("root", &["all"]).await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let router = Router::start(&conf).await;
    wait_health(&router, "p", &a.node(), "OK").await;
    wait_health(&router, "p", &b.node(), "OK").await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let before = spread(&c, &url, 10).await;
    assert_eq!(before.values().sum::<usize>(), 10, "{before:?}");
    assert!(before.keys().all(|k| k == "a" || k == "b"), "{before:?}");
    let b_node = b.node();
    drop(b);
    assert_eq!(
        spread(&c, &url, 20).await,
        HashMap::from([("a".to_string(), 20)])
    );
    wait_health(&router, "p", &b_node, "CRITICAL").await;
    let s = router.status_json().await;
    let failures = s["pools"]["p"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["backend"] == b_node.as_str())
        .unwrap()["failures"]
        .as_u64()
        .unwrap();
    assert!(failures >= 1, "{s}");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_status() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "errors").await;
    let a = Backend::start("a").await;
    conf.pool(
        "p",
        json!({"healthz_every_ms": 200, "request_timeout_ms": 400}),
    )
    .await;
    conf.backend("p", &a.node()).await;
    conf.pool("empty", json!({})).await;
    // A backend that refuses, taken as healthy because checks are off: 502 after the retries.
    let dead = format!("127.0.0.1:{}", free_port());
    conf.pool("dead", json!({"healthz_every_ms": 0, "retries": 1}))
        .await;
    conf.backend("dead", &dead).await;
    conf.rule("to-p", "path-prefix", "/p/", "p").await;
    conf.rule("to-empty", "path-prefix", "/empty", "empty")
        .await;
    conf.rule("to-dead", "path-prefix", "/dead", "dead").await;
    conf.rule("to-nowhere", "path-prefix", "/nowhere", "no-such-pool")
        .await;
    conf.trie("root", &["to-p", "to-empty", "to-dead", "to-nowhere"])
        .await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let router = Router::start(&conf).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    wait_route(&c, &format!("{base}/p/x"), "x.test", 200, "a").await;
    let expect: Vec<(&str, u16, &str)> = vec![
        ("/unrouted", 404, "no_route"),
        ("/empty", 503, "no_backend"),
        ("/nowhere", 503, "target_missing"),
        ("/dead", 502, "backend_refused"),
        ("/p/slow?ms=3000", 504, "backend_timeout"),
    ];
    for (path, status, code) in expect {
        let r = c
            .get(format!("{base}{path}"))
            .header("host", "x.test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_eq!(r.headers()["x-atlantis-error"], code, "{path}");
    }
    // A backend that drops the connection mid-request: 502.
    conf.rule("to-reset", "path-prefix", "/reset", "p").await;
    conf.trie("root", &["to-reset", "to-p"]).await;
    wait_route(&c, &format!("{base}/reset"), "x.test", 502, "").await;
    let r = c
        .get(format!("{base}/reset"))
        .header("host", "x.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-atlantis-error"], "backend_error");
    // The pool still serves afterwards, and the metrics counted the answers by class.
    wait_route(&c, &format!("{base}/p/ok"), "x.test", 200, "a").await;
    let m = c
        .get(format!("http://{}/metrics", router.status))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(r#"atlantis_router_requests_total{pool="p",code="5xx"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"atlantis_router_requests_total{pool="-",code="4xx"}"#),
        "{m}"
    );
    assert!(
        m.contains("atlantis_router_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains("atlantis_router_backend_health{"), "{m}");
    router.stop().await;
}
