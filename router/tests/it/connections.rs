//! Connections on both sides: idle backend pools sized by demand (no churn under 256 concurrent
//! clients), no response desync from bytes a backend sends after its answer, WebSocket tunnels that hold
//! a connection slot and end with their port, idle HTTP/2 clients closed, and 504 for a backend that
//! does not answer the connection in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use atlantis_common::zk::Section;
use atlantis_testkit::eventually;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fast_path::read_resp;
use crate::protocols::{ws_echo, ws_open};
use crate::support::{Router, client, get, one_pool, raw_backend, raw_pool, read_request, wait_ok};

/// Requests sent by 256 keep-alive clients at once, each `per_client` in a row on its own connection;
/// `extra` is added to every request head (a `Connection` header moves them to the hyper path).
async fn load(port: u16, clients: usize, per_client: usize, extra: &'static str) {
    let start = Arc::new(tokio::sync::Barrier::new(clients));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let start = start.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                start.wait().await;
                let mut buf = Vec::new();
                for _ in 0..per_client {
                    s.write_all(
                        format!("GET /x HTTP/1.1\r\nHost: x.test\r\n{extra}\r\n").as_bytes(),
                    )
                    .await
                    .unwrap();
                    let r = read_resp(&mut s, &mut buf, false).await;
                    assert_eq!(
                        (r.status, r.body.as_slice()),
                        (200, &b"ok"[..]),
                        "{}",
                        r.head
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pools_follow_demand_so_256_clients_do_not_churn_connections() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    let addr = raw_backend(move |mut s| {
        a.fetch_add(1, SeqCst);
        async move {
            let mut buf = Vec::new();
            while read_request(&mut s, &mut buf).await.is_some() {
                // A little work, so the clients' requests overlap at the backend.
                tokio::time::sleep(Duration::from_millis(1)).await;
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    let (conf, port) = raw_pool("churn", addr, json!({"healthz_every_ms": 0})).await;
    let router = Router::start(&conf).await;
    wait_ok(port, "/x", "").await;
    const CLIENTS: usize = 256;
    // The fast path, then the hyper path (each has its own idle connections).
    for (path, extra) in [("fast", ""), ("hyper", "Connection: keep-alive\r\n")] {
        let before = accepted.load(SeqCst);
        load(port, CLIENTS, 20, extra).await;
        let opened = accepted.load(SeqCst) - before;
        eprintln!("{path} path: {opened} backend connections for {CLIENTS} clients x 20 requests");
        // At most one connection per concurrent request: none closed only to be opened again.
        assert!(
            opened <= CLIENTS + 8,
            "{path} path: {opened} backend connections opened for {CLIENTS} concurrent clients"
        );
    }
    router.stop().await;
}

/// A backend that answers `/one` (GET: `first`; HEAD: its head) and `/nocontent` (204), then sends a
/// forged second answer in a later segment; everything else gets `clean`. Counts the forged answers.
async fn desync_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let forged = Arc::new(AtomicUsize::new(0));
    let f = forged.clone();
    let addr = raw_backend(move |mut s| {
        let f = f.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_request(&mut s, &mut buf).await {
                let answer: &[u8] = if head.starts_with("get /one") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"
                } else if head.starts_with("head /one") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
                } else if head.starts_with("get /nocontent") {
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nclean"
                };
                if s.write_all(answer).await.is_err() {
                    return;
                }
                if answer.ends_with(b"clean") {
                    continue;
                }
                // The next segment, once the router has the answer.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-forged: 1\r\n\r\nforged")
                    .await
                    .is_err()
                {
                    return;
                }
                f.fetch_add(1, SeqCst);
            }
        }
    })
    .await;
    (addr, forged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_backend_sends_after_its_answer_never_reach_the_next_request() {
    let (addr, forged) = desync_backend().await;
    let (conf, port) = raw_pool("desync", addr, json!({"healthz_every_ms": 0})).await;
    // One worker: every request meets the same idle list.
    let router = Router::start_with(&conf, |c| c.workers = 1).await;
    wait_ok(port, "/x", "").await;
    for (path, extra) in [("fast", ""), ("hyper", "Connection: keep-alive\r\n")] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = Vec::new();
        for (method, target, status, body) in [
            ("GET", "/one", 200, &b"first"[..]),
            ("HEAD", "/one", 200, b""),
            ("GET", "/nocontent", 204, b""),
        ] {
            s.write_all(
                format!("{method} {target} HTTP/1.1\r\nHost: x.test\r\n{extra}\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let r = read_resp(&mut s, &mut buf, method == "HEAD" || status == 204).await;
            assert_eq!(
                (r.status, r.body.as_slice()),
                (status, body),
                "{path} path, {method} {target}: {}",
                r.head
            );
            let sent = forged.load(SeqCst);
            eventually(Duration::from_secs(5), "the forged answer", || async {
                (forged.load(SeqCst) > sent).then_some(())
            })
            .await;
            s.write_all(format!("GET /two HTTP/1.1\r\nHost: x.test\r\n{extra}\r\n").as_bytes())
                .await
                .unwrap();
            let r = read_resp(&mut s, &mut buf, false).await;
            assert_eq!(
                (r.status, r.body.as_slice()),
                (200, &b"clean"[..]),
                "{path} path, after {method} {target}: the backend's extra bytes answered the next request: {}",
                r.head
            );
        }
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_hold_a_connection_slot_and_end_with_their_port() {
    let (conf, _b, port) = one_pool("wsslot", "static", "true").await;
    let router = Router::start_with(&conf, |c| {
        c.workers = 1;
        c.limits.max_connections = 1;
    })
    .await;
    wait_ok(port, "/x", "b").await;
    let mut ws = ws_open(port).await;
    ws_echo(&mut ws).await;
    // The tunnel takes the only slot: another connection waits (in the kernel's accept queue).
    let mut other = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    other
        .write_all(b"GET /x HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(800), other.read(&mut byte)).await;
    assert!(
        waited.is_err(),
        "a connection was served while a tunnel held the only slot: {waited:?}"
    );
    // The tunnel closes: the waiting connection is served.
    drop(ws);
    let mut buf = Vec::new();
    let r = read_resp(&mut other, &mut buf, false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    drop(other);
    // A tunnel ends when its port closes.
    let mut ws = eventually(Duration::from_secs(10), "a free slot", || async {
        tokio::time::timeout(Duration::from_secs(2), ws_open(port))
            .await
            .ok()
    })
    .await;
    ws_echo(&mut ws).await;
    conf.delete(Section::Ports, "web").await;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), ws.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the tunnel outlived its port");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_client_connections_are_closed() {
    let (conf, _b, port) = one_pool("h2idle", "static", "true").await;
    let router = Router::start_with(&conf, |c| c.limits.header_read_timeout_ms = 500).await;
    wait_ok(port, "/x", "b").await;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sr, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let send = |sr: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>, path: &str| {
        let req = http::Request::get(format!("http://x.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sr.send_request(req)
    };
    // A stream open longer than the idle time keeps the connection.
    let r = send(&mut sr, "/slow?ms=1200").await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    let r = send(&mut sr, "/x").await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    // Then nothing: the router closes the connection.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_the_connection_gets_504() {
    // A listener whose accept queue is full: the kernel drops further connection attempts (SYNs), so
    // connecting to it hangs, as to a backend host that went silent.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    while let Ok(Ok(s)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    {
        queued.push(s);
        assert!(queued.len() < 64, "the accept queue does not fill");
    }
    let (conf, port) = raw_pool(
        "connect504",
        addr,
        json!({"healthz_every_ms": 0, "connect_timeout_ms": 300}),
    )
    .await;
    let router = Router::start(&conf).await;
    let url = format!("http://127.0.0.1:{port}/x");
    let c = client();
    let status = eventually(Duration::from_secs(15), "an answer", || async {
        let (s, _, _) = get(&c, &url, "x.test", &[]).await;
        (s != 404 && s != 0).then_some(s)
    })
    .await;
    assert_eq!(status, 504, "fast path");
    for connection in ["keep-alive", "close"] {
        let r = c
            .get(&url)
            .header("host", "x.test")
            .header("connection", connection)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()["x-atlantis-error"], "backend_timeout");
    }
    // The same over HTTP/2 to the backend.
    conf.pool(
        "p",
        json!({"healthz_every_ms": 0, "connect_timeout_ms": 300, "protocol": "h2c"}),
    )
    .await;
    eventually(Duration::from_secs(15), "the pool to speak h2c", || async {
        (router.status_json().await["pools"]["p"]["config"]["protocol"] == "h2c").then_some(())
    })
    .await;
    let r = c.get(&url).header("host", "x.test").send().await.unwrap();
    assert_eq!(r.status(), 504, "h2c pool");
    assert_eq!(r.headers()["x-atlantis-error"], "backend_timeout");
    drop(listener);
    router.stop().await;
}
