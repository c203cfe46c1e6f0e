//! Reuse of idle backend connections against a backend with a short keep-alive timeout (the stale
//! pooled-connection race): a request that must not be sent twice never lands on a connection the
//! backend is closing, idempotent requests are retried when they do, quick requests still reuse
//! connections, and `keepalive_ms: 0` turns reuse off. On the fast path and on the hyper path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::fast_path::read_resp;
use crate::support::{Conf, Router, raw_backend, raw_pool, read_request, wait_ok};

/// The backend's keep-alive timeout.
const BACKEND_IDLE_MS: u64 = 300;
/// Pause between requests: just beyond the backend's timeout.
const PAUSE_MS: u64 = 350;

/// Connections accepted and connections closed on a request, by a [`closing_backend`].
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    dropped: AtomicUsize,
    served: AtomicUsize,
}

/// A raw keep-alive backend that gives up connections idle for more than [`BACKEND_IDLE_MS`]: a request
/// arriving on such a connection finds it closing (it is closed without an answer), exactly the race of
/// a backend whose idle timer fires as the request arrives (Node.js, 5 s by default).
async fn closing_backend() -> (SocketAddr, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    let addr = raw_backend(move |mut s| {
        let c = c.clone();
        async move {
            c.accepted.fetch_add(1, SeqCst);
            let mut buf = Vec::new();
            let mut last: Option<Instant> = None;
            while read_request(&mut s, &mut buf).await.is_some() {
                if last.is_some_and(|t| t.elapsed() > Duration::from_millis(BACKEND_IDLE_MS)) {
                    c.dropped.fetch_add(1, SeqCst);
                    return;
                }
                c.served.fetch_add(1, SeqCst);
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
                last = Some(Instant::now());
            }
        }
    })
    .await;
    (addr, counts)
}

async fn setup(test: &str, keepalive_ms: u64) -> (Conf, u16, Router, Arc<Counts>) {
    let (addr, counts) = closing_backend().await;
    let (conf, port) = raw_pool(
        test,
        addr,
        serde_json::json!({"healthz_every_ms": 0, "keepalive_ms": keepalive_ms}),
    )
    .await;
    let router = Router::start(&conf).await;
    wait_ok(port, "/", "").await;
    (conf, port, router, counts)
}

/// Sends requests on one client connection, `pause` apart; returns the statuses. `extra` headers send
/// them to hyper instead of the fast path. GETs have no body, other methods a small one.
async fn send(port: u16, method: &str, n: usize, pause: Duration, extra: &str) -> Vec<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..n {
        if i > 0 {
            // The pause is the point: it lets the backend connection age.
            tokio::time::sleep(pause).await;
        }
        let req = if method == "GET" {
            format!("GET /{i} HTTP/1.1\r\nHost: x.test\r\n{extra}\r\n")
        } else {
            format!(
                "{method} /{i} HTTP/1.1\r\nHost: x.test\r\nContent-Length: 5\r\n{extra}\r\nhello"
            )
        };
        s.write_all(req.as_bytes()).await.unwrap();
        statuses.push(read_resp(&mut s, &mut buf, false).await.status);
    }
    statuses
}

fn assert_all_ok(what: &str, statuses: &[u16]) {
    let bad: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} not 200: {statuses:?}",
        bad.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_never_meet_a_closing_connection_on_the_fast_path() {
    // The router may keep connections longer than the backend does (500 > 300 ms): a POST still uses
    // only those idle under 250 ms.
    let (_conf, port, router, counts) = setup("keepfast", 500).await;
    let pause = Duration::from_millis(PAUSE_MS);
    let posts = send(port, "POST", 30, pause, "").await;
    assert_all_ok("POST", &posts);
    assert_eq!(
        counts.dropped.load(SeqCst),
        0,
        "a POST reached a closing connection"
    );
    // GETs may reuse such a connection: when it is closing, they are sent again on a fresh one.
    let gets = send(port, "GET", 10, pause, "").await;
    assert_all_ok("GET", &gets);
    assert!(
        counts.dropped.load(SeqCst) >= 1,
        "GETs never reused an idle connection"
    );
    // Requests close together share one connection, POSTs too.
    let before = counts.accepted.load(SeqCst);
    for method in ["GET", "POST"] {
        let quick = send(port, method, 10, Duration::ZERO, "").await;
        assert_all_ok(method, &quick);
    }
    let opened = counts.accepted.load(SeqCst) - before;
    assert!(opened <= 1, "{opened} connections for 20 quick requests");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_bounds_reuse_on_the_hyper_path() {
    let (conf, port, router, counts) = setup("keephyper", 500).await;
    let hyper = "Connection: keep-alive\r\n";
    let posts = send(port, "POST", 15, Duration::from_millis(PAUSE_MS), hyper).await;
    assert_all_ok("POST", &posts);
    assert_eq!(
        counts.dropped.load(SeqCst),
        0,
        "a POST reached a closing connection"
    );
    // GETs may reuse a connection the backend is closing: sent again on a fresh one when it closes
    // unanswered.
    let gets = send(port, "GET", 10, Duration::from_millis(PAUSE_MS), hyper).await;
    assert_all_ok("GET", &gets);
    assert!(
        counts.dropped.load(SeqCst) >= 1,
        "GETs never reused an idle connection"
    );
    let dropped = counts.dropped.load(SeqCst);
    let before = counts.accepted.load(SeqCst);
    for method in ["GET", "POST"] {
        let quick = send(port, method, 10, Duration::ZERO, hyper).await;
        assert_all_ok(method, &quick);
    }
    let opened = counts.accepted.load(SeqCst) - before;
    assert!(opened <= 1, "{opened} connections for 20 quick requests");
    // keepalive_ms 0: every request on a connection of its own, on both paths.
    conf.pool(
        "p",
        serde_json::json!({"healthz_every_ms": 0, "keepalive_ms": 0}),
    )
    .await;
    atlantis_testkit::eventually(
        Duration::from_secs(10),
        "keepalive_ms 0 applied",
        || async {
            (router.status_json().await["pools"]["p"]["config"]["keepalive_ms"] == 0).then_some(())
        },
    )
    .await;
    let before = counts.accepted.load(SeqCst);
    for extra in ["", hyper] {
        let quick = send(port, "GET", 5, Duration::ZERO, extra).await;
        assert_all_ok("GET", &quick);
    }
    assert_eq!(counts.accepted.load(SeqCst) - before, 10);
    assert_eq!(counts.dropped.load(SeqCst), dropped);
    router.stop().await;
}
