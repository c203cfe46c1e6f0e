//! Live configuration: changes under load drop nothing, a release switch lets in-flight requests to the
//! old backend finish, ports open and close, and a ZooKeeper outage (a partition, then a full stop) leaves
//! the router serving its last table and applying what changed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use atlantis_common::zk::Section;
use atlantis_testkit::{ZooKeeper, eventually, ports::free_port};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{Backend, Conf, Router, client, get, in_flight, wait_ok, wait_route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_changes_under_load_drop_no_request() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "underload").await;
    let (b1, b2, b3) = (
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    );
    for (p, b) in [("p1", &b1), ("p2", &b2)] {
        conf.pool(p, json!({"healthz_every_ms": 200, "slow_start_ms": 0}))
            .await;
        conf.backend(p, &b.node()).await;
    }
    conf.rule("all", "static", "true", "p1").await;
    conf.trie("root", &["all"]).await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let router = Router::start(&conf).await;
    let url = format!("http://127.0.0.1:{port}/x");
    wait_route(&client(), &url, "x.test", 200, "b1").await;
    // Load runs until the flipper has made at least MIN_FLIPS changes (at least 250 requests per
    // client), so the test always overlaps reconfiguration however fast the proxy is.
    const MIN_FLIPS: usize = 20;
    let done = Arc::new(AtomicBool::new(false));
    let flipped = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            let flipped = flipped.clone();
            tokio::spawn(async move {
                let c = client();
                let mut seen = Vec::new();
                while seen.len() < 250 || (flipped.load(SeqCst) < MIN_FLIPS && seen.len() < 50_000)
                {
                    let (s, b, body) = get(&c, &url, "x.test", &[]).await;
                    assert_eq!(s, 200, "a request failed during reconfiguration: {body}");
                    seen.push(b);
                }
                seen
            })
        })
        .collect();
    let flipper = {
        let done = done.clone();
        let flipped = flipped.clone();
        let b3 = b3.node();
        tokio::spawn(async move {
            let mut i = 0;
            while !done.load(SeqCst) && i < 200 {
                let pool = if i % 2 == 0 { "p2" } else { "p1" };
                conf.rule("all", "static", "true", pool).await;
                if i % 4 == 0 {
                    conf.backend("p1", &b3).await;
                } else if i % 4 == 2 {
                    conf.remove_backend("p1", &b3).await;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
                i += 1;
                flipped.store(i, SeqCst);
            }
            (conf, i)
        })
    };
    let mut all = Vec::new();
    for t in load {
        all.extend(t.await.unwrap());
    }
    done.store(true, SeqCst);
    let (_conf, flips) = flipper.await.unwrap();
    assert!(
        flips >= MIN_FLIPS,
        "only {flips} changes happened during the load"
    );
    assert!(all.len() >= 1000, "{} requests", all.len());
    assert!(
        all.iter().any(|b| b == "b1") && all.iter().any(|b| b == "b2"),
        "the rule changes were not seen"
    );
    drop(b3);
    router.stop().await;
}

/// What a deploy does to the router: the rule moves to the new release's pool, then the old backend and
/// its pool are deleted, while slow requests to the old backend are in flight on both paths. Those
/// finish with their whole answer from the old backend; new requests go to the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_switch_lets_in_flight_requests_finish() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "drain").await;
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    for (p, b) in [("v1", &old), ("v2", &new)] {
        conf.pool(p, json!({"healthz_every_ms": 0})).await;
        conf.backend(p, &b.node()).await;
    }
    conf.rule("all", "static", "true", "v1").await;
    conf.trie("root", &["all"]).await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let router = Router::start(&conf).await;
    wait_ok(port, "/x", "old").await;
    // Two requests on the fast path, two on hyper's (a Connection header sends them there).
    let url = format!("http://127.0.0.1:{port}/slow?ms=1500");
    let slow: Vec<_> = [None, None, Some("keep-alive"), Some("keep-alive")]
        .into_iter()
        .map(|connection| {
            let url = url.clone();
            tokio::spawn(async move {
                let headers: Vec<(&str, &str)> =
                    connection.map(|v| ("connection", v)).into_iter().collect();
                get(&client(), &url, "x.test", &headers).await
            })
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "4 requests in flight to v1",
        || async { (in_flight(&router, "v1").await == 4).then_some(()) },
    )
    .await;
    conf.rule("all", "static", "true", "v2").await;
    conf.remove_backend("v1", &old.node()).await;
    conf.delete(Section::Pools, "v1").await;
    wait_ok(port, "/x", "new").await;
    for (i, t) in slow.into_iter().enumerate() {
        let (status, backend, body) = t.await.unwrap();
        assert_eq!(
            (status, backend.as_str()),
            (200, "old"),
            "slow request {i}: {body}"
        );
        assert!(
            body.contains(r#""path":"/slow""#),
            "slow request {i}: {body}"
        );
    }
    for _ in 0..20 {
        let (status, backend, _) = get(
            &client(),
            &format!("http://127.0.0.1:{port}/x"),
            "x.test",
            &[],
        )
        .await;
        assert_eq!((status, backend.as_str()), (200, "new"));
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_open_and_close_gracefully() {
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "ports").await;
    let b = Backend::start("b").await;
    conf.pool("p", json!({"healthz_every_ms": 200})).await;
    conf.backend("p", &b.node()).await;
    conf.rule("all", "static", "true", "p").await;
    conf.trie("root", &["all"]).await;
    let (port1, port2) = (free_port(), free_port());
    conf.port("one", port1, "root").await;
    let router = Router::start(&conf).await;
    let c = client();
    wait_route(
        &c,
        &format!("http://127.0.0.1:{port1}/"),
        "x.test",
        200,
        "b",
    )
    .await;
    // The router registered itself (ephemeral) under routers/<kind>/<zone>/<host>.
    let reg = conf.coord.layout().router(
        conf.kind,
        &"z1".parse().unwrap(),
        &"test-router".parse().unwrap(),
    );
    let (data, stat) = conf
        .coord
        .get_raw(&reg)
        .await
        .unwrap()
        .expect("router registration");
    assert_ne!(stat.ephemeral_owner, 0, "registration must be ephemeral");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&data).unwrap()["version"],
        1
    );
    conf.port("two", port2, "root").await;
    wait_route(
        &c,
        &format!("http://127.0.0.1:{port2}/"),
        "x.test",
        200,
        "b",
    )
    .await;
    // A slow request in flight on port two survives the port's deletion.
    let served_before = b.served.load(SeqCst);
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            get(
                &c,
                &format!("http://127.0.0.1:{port2}/slow?ms=1500"),
                "x.test",
                &[],
            )
            .await
        })
    };
    eventually(
        Duration::from_secs(5),
        "the slow request to be in flight at the backend and at the router",
        || async {
            let at_router = router.backend_status("p", &b.node()).await?["in_flight"].as_u64()?;
            (b.served.load(SeqCst) > served_before && at_router >= 1).then_some(())
        },
    )
    .await;
    conf.delete(Section::Ports, "two").await;
    eventually(Duration::from_secs(10), "port two to close", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port2))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let (s, who, body) = slow.await.unwrap();
    assert_eq!((s, who.as_str()), (200, "b"), "{body}");
    let (s, _, _) = get(&c, &format!("http://127.0.0.1:{port1}/"), "x.test", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(router.handle.ports(), vec![port1]);
    router.stop().await;
    // Stopped: the session closed and the registration is gone.
    eventually(
        Duration::from_secs(10),
        "the registration to go away",
        || async {
            conf.coord
                .get_raw(&reg)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// A TCP relay that can be cut (every connection dropped, new ones refused) and restored.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<parking_lot::Mutex<CancellationToken>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(parking_lot::Mutex::new(CancellationToken::new()));
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(SeqCst) {
                    continue; // dropped at once
                }
                let token = g.lock().clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Relay {
            addr,
            cut,
            generation,
        }
    }

    fn cut(&self) {
        self.cut.store(true, SeqCst);
        let mut g = self.generation.lock();
        g.cancel();
        *g = CancellationToken::new();
    }

    fn restore(&self) {
        self.cut.store(false, SeqCst);
    }
}

async fn healthz(router: &Router) -> String {
    let r = client()
        .get(format!("http://{}/healthz", router.status))
        .send()
        .await
        .unwrap();
    r.headers()["server-status"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_outage_keeps_serving_and_edits_made_meanwhile_apply() {
    // This test stops its ZooKeeper, so it has one of its own.
    let mut zk = ZooKeeper::start();
    let relay = Relay::start(zk.addr()).await;
    let writer = Conf::new(&zk.connect_string(), "outage").await;
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    for (p, b) in [("p1", &b1), ("p2", &b2)] {
        writer
            .pool(p, json!({"healthz_every_ms": 200, "slow_start_ms": 0}))
            .await;
        writer.backend(p, &b.node()).await;
    }
    writer.rule("all", "static", "true", "p1").await;
    writer.trie("root", &["all"]).await;
    let port = free_port();
    writer.port("web", port, "root").await;
    // The router reaches ZooKeeper only through the relay.
    let mut via_relay = Conf::new(&relay.addr.to_string(), "outage").await;
    via_relay.zk.session_timeout = Duration::from_secs(3);
    let router = Router::start(&via_relay).await;
    drop(via_relay);
    // A control router reaches ZooKeeper directly and listens on 127.0.0.2: it shows when the edits
    // made during the partition have reached a router watching the tree.
    let control = Router::start_as(&writer, "control-router", |c| {
        c.listen_ip = Ipv4Addr::new(127, 0, 0, 2).into();
    })
    .await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    wait_route(&c, &url, "x.test", 200, "b1").await;
    wait_route(
        &c,
        &format!("http://127.0.0.2:{port}/"),
        "x.test",
        200,
        "b1",
    )
    .await;
    assert_eq!(healthz(&router).await, "OK");
    let registration = writer.coord.layout().router(
        writer.kind,
        &"z1".parse().unwrap(),
        &"test-router".parse().unwrap(),
    );
    assert!(writer.coord.get_raw(&registration).await.unwrap().is_some());

    // Partition: the router loses ZooKeeper (long enough for its session to expire), keeps serving, and
    // reports DEGRADED; meanwhile the rule is edited and a port is added.
    relay.cut();
    eventually(Duration::from_secs(15), "healthz DEGRADED", || async {
        (healthz(&router).await == "DEGRADED").then_some(())
    })
    .await;
    for _ in 0..20 {
        let (s, b, _) = get(&c, &url, "x.test", &[]).await;
        assert_eq!((s, b.as_str()), (200, "b1"));
    }
    let generation = router.handle.generation();
    writer.rule("all", "static", "true", "p2").await;
    let port2 = free_port();
    writer.port("web2", port2, "root").await;
    // The edits are in ZooKeeper and reach a connected router...
    wait_route(
        &c,
        &format!("http://127.0.0.2:{port}/"),
        "x.test",
        200,
        "b2",
    )
    .await;
    wait_route(
        &c,
        &format!("http://127.0.0.2:{port2}/"),
        "x.test",
        200,
        "b2",
    )
    .await;
    // ...and the cut-off router's session is over: ZooKeeper expired it and dropped its registration.
    eventually(
        Duration::from_secs(20),
        "the cut-off router's session to expire",
        || async {
            writer
                .coord
                .get_raw(&registration)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    // The cut-off router saw none of it: same table, same ports, same answers, still DEGRADED.
    assert_eq!(healthz(&router).await, "DEGRADED");
    assert_eq!(
        router.handle.generation(),
        generation,
        "the router changed its table without ZooKeeper"
    );
    assert_eq!(router.handle.ports(), vec![port]);
    let (s, b, _) = get(&c, &url, "x.test", &[]).await;
    assert_eq!(
        (s, b.as_str()),
        (200, "b1"),
        "the router changed without ZooKeeper"
    );
    control.stop().await;
    relay.restore();
    wait_route(&c, &url, "x.test", 200, "b2").await;
    wait_route(
        &c,
        &format!("http://127.0.0.1:{port2}/"),
        "x.test",
        200,
        "b2",
    )
    .await;
    eventually(Duration::from_secs(15), "healthz OK", || async {
        (healthz(&router).await == "OK").then_some(())
    })
    .await;

    // ZooKeeper itself stops: same story, and after a restart an edit is applied again.
    zk.stop();
    eventually(Duration::from_secs(15), "healthz DEGRADED", || async {
        (healthz(&router).await == "DEGRADED").then_some(())
    })
    .await;
    for _ in 0..20 {
        let (s, b, _) = get(&c, &url, "x.test", &[]).await;
        assert_eq!((s, b.as_str()), (200, "b2"));
    }
    zk.restart();
    eventually(
        Duration::from_secs(20),
        "healthz OK after the restart",
        || async { (healthz(&router).await == "OK").then_some(()) },
    )
    .await;
    let writer = Conf::new(&zk.connect_string(), "outage").await;
    writer.rule("all", "static", "true", "p1").await;
    wait_route(&c, &url, "x.test", 200, "b1").await;
    router.stop().await;
}
