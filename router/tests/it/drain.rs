//! Routers acknowledge and drain: the generation a router serves and what it still has open to backends
//! that left its pools are published in `router_acks/<kind>/<zone>/<host>`; at the drain deadline a
//! WebSocket gets a close frame (1001) and a streamed answer ends with its last chunk.

use std::time::{Duration, Instant};

use atlantis_common::routing::RouterAck;
use atlantis_testkit::{eventually, ports::free_port};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Backend, Conf, Router, client, get, wait_ok};

/// The router's acknowledgement node, as the manager reads it.
async fn ack(conf: &Conf) -> Option<RouterAck> {
    let l = conf.coord.layout();
    let path = l.router_ack(
        conf.kind,
        &"z1".parse().unwrap(),
        &"test-router".parse().unwrap(),
    );
    conf.coord
        .get::<RouterAck>(&path)
        .await
        .unwrap()
        .map(|v| v.value)
}

/// Removes `backend` from pool `p` and bumps the generation in one transaction, as the manager's
/// `routing::remove_backends` does; returns the new generation.
async fn remove(conf: &Conf, backend: &str) -> u64 {
    let l = conf.coord.layout();
    let gen_path = l.router_generation(conf.kind);
    conf.coord.ensure_path(&gen_path).await.unwrap();
    let r = conf
        .coord
        .txn()
        .delete(&l.pool_backend(conf.kind, "p", backend), None)
        .set(&gen_path, &json!({"version": 1}), None)
        .commit()
        .await
        .unwrap();
    match r.last() {
        Some(atlantis_common::zk::TxnResult::Set { version }) => *version as u64,
        other => panic!("no generation in {other:?}"),
    }
}

/// One pool `p` with `old` and a rule sending everything to it; a router with the given drain deadline.
async fn setup(test: &str, deadline_ms: u64) -> (Conf, Backend, u16, Router) {
    let zk = atlantis_testkit::ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), test).await;
    let old = Backend::start("old").await;
    conf.pool("p", json!({"healthz_every_ms": 0})).await;
    conf.backend("p", &old.node()).await;
    conf.rule("all", "static", "true", "p").await;
    conf.trie("root", &["all"]).await;
    let port = free_port();
    conf.port("web", port, "root").await;
    let router =
        Router::start_with(&conf, |c| c.limits.backend_drain_deadline_ms = deadline_ms).await;
    wait_ok(port, "/x", "old").await;
    (conf, old, port, router)
}

/// The generation appears in the router's node once it serves the tree, and advances with each change
/// that bumps it; a 10-second request in flight across the removal of its backend completes with 200
/// while the router reports it in flight, and the report then goes back to nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generation_advances_and_a_long_request_drains_with_200() {
    let (conf, old, port, router) = setup("acks-gen", 30_000).await;
    // No generation node yet: the router says so.
    eventually(Duration::from_secs(5), "an acknowledgement", || async {
        ack(&conf).await.filter(|a| a.version == 1)
    })
    .await;
    let slow = tokio::spawn(async move {
        let url = format!("http://127.0.0.1:{port}/slow?ms=10000");
        get(&client(), &url, "x.test", &[]).await
    });
    eventually(
        Duration::from_secs(15),
        "a request in flight to old",
        || async {
            router
                .backend_status("p", &old.node())
                .await
                .filter(|b| b["in_flight"] == 1)
        },
    )
    .await;
    let new = Backend::start("new").await;
    conf.backend("p", &new.node()).await;
    let g = remove(&conf, &old.node()).await;
    let t0 = Instant::now();
    let a = eventually(
        Duration::from_secs(5),
        "generation acknowledged",
        || async { ack(&conf).await.filter(|a| a.generation == Some(g)) },
    )
    .await;
    let took = t0.elapsed();
    eprintln!("generation {g} acknowledged {took:?} after the removal was committed");
    assert!(took < Duration::from_secs(2), "acknowledged after {took:?}");
    let d = a.draining.iter().find(|d| d.backend == old.node());
    let d = match d {
        Some(d) => d.clone(),
        None => {
            eventually(Duration::from_secs(2), "old reported draining", || async {
                ack(&conf)
                    .await
                    .and_then(|a| a.draining.into_iter().find(|d| d.backend == old.node()))
            })
            .await
        }
    };
    assert_eq!(
        (d.pool.as_str(), d.in_flight, d.tunnels, d.closing),
        ("p", 1, 0, false)
    );
    let (status, backend, body) = slow.await.unwrap();
    assert_eq!((status, backend.as_str()), (200, "old"), "{body}");
    eventually(Duration::from_secs(3), "nothing left draining", || async {
        ack(&conf).await.filter(|a| a.draining.is_empty())
    })
    .await;
    // A later change advances the generation again.
    let g2 = remove(&conf, &new.node()).await;
    assert!(g2 > g);
    eventually(Duration::from_secs(5), "second generation", || async {
        ack(&conf).await.filter(|a| a.generation == Some(g2))
    })
    .await;
    assert_eq!(router.handle.ack().generation, Some(g2));
    router.stop().await;
}

/// A WebSocket open across its backend's removal is counted as a tunnel, then gets a close frame with
/// status 1001 at the drain deadline, and the stream ends (no reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_gets_a_close_frame_at_the_drain_deadline() {
    let (conf, old, port, router) = setup("acks-ws", 1500).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // A masked text frame "hi" goes through and the echo comes back (the backend echoes raw bytes).
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    s.write_all(&frame).await.unwrap();
    let mut echo = [0u8; 8];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, frame);
    let g = remove(&conf, &old.node()).await;
    let removed = Instant::now();
    let a = eventually(Duration::from_secs(5), "the tunnel reported", || async {
        ack(&conf).await.filter(|a| {
            a.generation == Some(g)
                && a.draining
                    .iter()
                    .any(|d| d.backend == old.node() && d.tunnels == 1)
        })
    })
    .await;
    assert!(!a.draining[0].closing);
    // Then, at the deadline: the close frame, then the end of the stream.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    let waited = removed.elapsed();
    assert!(
        matches!(end, Ok(Ok(_))),
        "the stream did not end cleanly: {end:?}"
    );
    assert_eq!(rest, [0x88, 0x02, 0x03, 0xE9], "close frame, status 1001");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "closed {waited:?} after the removal"
    );
    eventually(Duration::from_secs(3), "nothing left draining", || async {
        ack(&conf).await.filter(|a| a.draining.is_empty())
    })
    .await;
    router.stop().await;
}

/// An endless chunked event stream open across its backend's removal ends cleanly at the drain deadline
/// (its last chunk, the answer complete), on the fast path and on hyper's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_ends_cleanly_at_the_drain_deadline() {
    let (conf, old, port, router) = setup("acks-sse", 1500).await;
    let url = format!("http://127.0.0.1:{port}/sse");
    let mut streams = Vec::new();
    for connection in [None, Some("keep-alive")] {
        let mut rb = client().get(&url).header("host", "x.test");
        if let Some(v) = connection {
            rb = rb.header("connection", v);
        }
        let mut resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: "), "{first:?}");
        streams.push(resp);
    }
    let g = remove(&conf, &old.node()).await;
    let removed = Instant::now();
    eventually(Duration::from_secs(5), "both streams reported", || async {
        ack(&conf).await.filter(|a| {
            a.generation == Some(g)
                && a.draining
                    .iter()
                    .any(|d| d.backend == old.node() && d.in_flight == 2)
        })
    })
    .await;
    for (i, mut resp) in streams.into_iter().enumerate() {
        let mut events = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
                Ok(Ok(Some(c))) => {
                    assert!(c.starts_with(b"data: "), "stream {i}: {c:?}");
                    events += 1;
                }
                Ok(Ok(None)) => break,
                other => panic!("stream {i} did not end cleanly: {other:?}"),
            }
        }
        let waited = removed.elapsed();
        assert!(events > 3, "stream {i}: {events} events during the drain");
        assert!(
            waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
            "stream {i} ended {waited:?} after the removal"
        );
    }
    eventually(Duration::from_secs(3), "nothing left draining", || async {
        ack(&conf).await.filter(|a| a.draining.is_empty())
    })
    .await;
    router.stop().await;
}
