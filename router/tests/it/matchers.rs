//! Every matcher type routes as documented, forward references resolve, and the trace endpoint explains.

use atlantis_testkit::{ZooKeeper, ports::free_port};
use serde_json::json;

use crate::support::{Backend, Conf, Router, client, get, wait_route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_matcher_routes_to_its_pool() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "matchers").await;
    let names = [
        "host", "multi", "header", "prefix", "suffix", "regexp", "qparam", "qregexp", "canary",
        "static",
    ];
    let mut backends = Vec::new();
    for n in names {
        let b = Backend::start(n).await;
        conf.pool(n, json!({"healthz_every_ms": 200, "slow_start_ms": 0}))
            .await;
        conf.backend(n, &b.node()).await;
        backends.push(b);
    }
    conf.rule("r-host", "host", "a.example.com, b.example.com", "host")
        .await;
    conf.rule(
        "r-multi",
        "multi-host",
        "m:example.com,example.org",
        "multi",
    )
    .await;
    conf.rule("r-header", "header", "X-Env:canary", "header")
        .await;
    conf.rule("r-prefix", "path-prefix", "/api/", "prefix")
        .await;
    conf.rule("r-suffix", "path-suffix", ".css", "suffix").await;
    conf.rule("r-regexp", "path-regexp", "^/users/[0-9]+$", "regexp")
        .await;
    conf.rule("r-qparam", "query-param-value", "lang=fr", "qparam")
        .await;
    conf.rule(
        "r-qregexp",
        "query-regexp",
        "(^|&)debug=(1|true)(&|$)",
        "qregexp",
    )
    .await;
    conf.rule_next("r-canary-path", "path-prefix", "/canary", "canary-trie")
        .await;
    conf.rule("r-canary", "percent", "50", "canary").await;
    conf.rule("r-static", "static", "true", "static").await;
    conf.rule("r-never", "static", "false", "host").await;
    conf.trie("canary-trie", &["r-canary", "r-static"]).await;
    conf.trie(
        "root",
        &[
            "r-never",
            "r-host",
            "r-multi",
            "r-header",
            "r-prefix",
            "r-suffix",
            "r-regexp",
            "r-qparam",
            "r-qregexp",
            "r-canary-path",
        ],
    )
    .await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let router = Router::start(&conf).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    wait_route(&c, &format!("{base}/users/12"), "x.test", 200, "regexp").await;

    type Case = (
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("/", "a.example.com", vec![], 200, "host"),
        ("/", "B.Example.COM:8080", vec![], 200, "host"),
        ("/", "m.example.org", vec![], 200, "multi"),
        ("/", "x.test", vec![("x-env", "canary")], 200, "header"),
        ("/", "x.test", vec![("x-env", "stable")], 404, ""),
        ("/api/v1/things", "x.test", vec![], 200, "prefix"),
        ("/apiv1", "x.test", vec![], 404, ""),
        ("/static/site.css", "x.test", vec![], 200, "suffix"),
        ("/users/12", "x.test", vec![], 200, "regexp"),
        ("/users/12/x", "x.test", vec![], 404, ""),
        ("/?a=1&lang=fr", "x.test", vec![], 200, "qparam"),
        ("/?lang=de", "x.test", vec![], 404, ""),
        ("/?x=2&debug=true", "x.test", vec![], 200, "qregexp"),
        ("/?debug=10", "x.test", vec![], 404, ""),
    ];
    for (path, host, headers, status, backend) in cases {
        let (s, b, body) = get(&c, &format!("{base}{path}"), host, &headers).await;
        assert_eq!(
            (s, b.as_str()),
            (status, backend),
            "{path} host {host} {headers:?}: {body}"
        );
    }
    // percent: about half of the /canary requests go to the canary, the rest fall through to static.
    let mut canary = 0;
    for _ in 0..200 {
        let (s, b, _) = get(&c, &format!("{base}/canary"), "x.test", &[]).await;
        assert_eq!(s, 200);
        canary += usize::from(b == "canary");
    }
    assert!((60..=140).contains(&canary), "canary got {canary} of 200");

    // The trace endpoint shows the walk.
    let trace: serde_json::Value = c
        .get(format!(
            "http://{}/trace?port={port}&host=x.test&path=/canary/x",
            router.status
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let steps = trace["steps"].as_array().unwrap();
    assert_eq!(steps[0]["rule"], "r-never");
    assert_eq!(steps[0]["matched"], false);
    assert!(
        steps
            .iter()
            .any(|s| s["rule"] == "r-canary-path" && s["matched"] == true),
        "{trace}"
    );
    assert_eq!(trace["outcome"]["result"], "pool", "{trace}");
    let trace: serde_json::Value = c
        .get(format!(
            "http://{}/trace?port={port}&host=x.test&path=/users/1&header=X-Env:canary",
            router.status
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trace["outcome"]["pool"], "header", "{trace}");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_references_resolve_when_the_target_appears() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "forward").await;
    let port = free_port();
    // Port first, then a trie that names a rule that names a pool: nothing exists yet.
    conf.port("web", port, "root").await;
    let router = Router::start(&conf).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/later");
    wait_route(&c, &url, "x.test", 503, "").await; // the port's trie is missing
    conf.trie("root", &["to-later"]).await;
    conf.rule("to-later", "path-prefix", "/later", "later")
        .await;
    wait_route(&c, &url, "x.test", 503, "").await;
    let (_, _, body) = get(&c, &url, "x.test", &[]).await;
    assert!(body.contains("route target missing"), "{body}");
    let b = Backend::start("later").await;
    conf.pool("later", json!({"healthz_every_ms": 200})).await;
    conf.backend("later", &b.node()).await;
    wait_route(&c, &url, "x.test", 200, "later").await;
    let (s, _, _) = get(&c, &format!("http://127.0.0.1:{port}/other"), "x.test", &[]).await;
    assert_eq!(s, 404);
    router.stop().await;
}
