//! The static source (the seam unit tests use) drives a real router the same way ZooKeeper does:
//! a reset, upserts, removals and connection changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use atlantis_common::zk::Node;
use atlantis_router::App;
use atlantis_router::config::Config;
use atlantis_router::source::{SourceEvent, StaticSource};
use atlantis_testkit::{eventually, ports::free_port};
use tokio_util::sync::CancellationToken;

use crate::support::{Backend, client, get, wait_route};

fn n(s: &str) -> Node {
    Node {
        data: s.as_bytes().to_vec(),
        version: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_source_drives_the_router() {
    let b = Backend::start("s").await;
    let port = free_port();
    let mut m = BTreeMap::new();
    m.insert(
        "ports/web".to_string(),
        n(&format!(r#"{{"port":{port},"trie":"root"}}"#)),
    );
    m.insert("tries/root".into(), n(r#"{"rules":["all"]}"#));
    m.insert(
        "rules/all".into(),
        n(r#"{"type":"static","value":"true","pool":"p"}"#),
    );
    m.insert("pools/p".into(), n(r#"{"healthz_every_ms":0}"#));
    m.insert(format!("pools/p/{}", b.node()), n(""));
    let source = StaticSource::new(m);
    let app = App::build(Config::for_tests(), source.clone())
        .await
        .unwrap();
    let status = app.status_addr();
    let stop = CancellationToken::new();
    let (handle, task) = app.spawn(stop.clone());
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    wait_route(&c, &url, "x", 200, "s").await;
    assert!(handle.connected());
    source.upsert(
        "rules/all",
        r#"{"type":"static","value":"false","pool":"p"}"#,
        1,
    );
    wait_route(&c, &url, "x", 404, "").await;
    source.send(SourceEvent::Connected(false));
    eventually(std::time::Duration::from_secs(5), "DEGRADED", || async {
        let r = c
            .get(format!("http://{status}/healthz"))
            .send()
            .await
            .ok()?;
        (r.headers()["server-status"] == "DEGRADED").then_some(())
    })
    .await;
    source.send(SourceEvent::Remove {
        path: "ports/web".into(),
    });
    eventually(std::time::Duration::from_secs(5), "port closed", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // A new connection is refused (a fresh client: the old one may hold a connection still draining).
    let (s, _, _) = get(&client(), &url, "x", &[]).await;
    assert_eq!(s, 0);
    stop.cancel();
    task.await.unwrap();
    drop(Arc::clone(&source));
}
