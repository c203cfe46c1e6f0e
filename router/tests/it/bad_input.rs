//! Hostile clients: malformed requests, oversized headers, slow senders and idle connections.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Backend, Conf, Router, client, get, one_pool, wait_ok};

async fn setup(test: &str) -> (Conf, Backend, u16, Router) {
    let (conf, b, port) = one_pool(test, "static", "true").await;
    let router = Router::start_with(&conf, |c| {
        c.limits.header_read_timeout_ms = 600;
        c.limits.max_header_bytes = 16 * 1024;
    })
    .await;
    wait_ok(port, "/", "b").await;
    (conf, b, port, router)
}

/// Sends `raw` and reads what comes back until the router closes the connection (bounded).
async fn exchange(port: u16, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_clear_errors() {
    let (_conf, b, port, router) = setup("badreq").await;
    let before = b.served.load(std::sync::atomic::Ordering::SeqCst);
    let r = exchange(port, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    let r = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    let mut big = b"GET / HTTP/1.1\r\nHost: x.test\r\n".to_vec();
    for i in 0..400 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(100)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let r = exchange(port, &big).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r:?}");
    // Few but long headers, over the limit in one write, are refused too.
    let long = format!(
        "GET / HTTP/1.1\r\nHost: x.test\r\nX-Long: {}\r\nX-Long2: {}\r\n\r\n",
        "y".repeat(9000),
        "z".repeat(9000)
    );
    let r = exchange(port, long.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r:?}");
    assert_eq!(
        b.served.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "a bad request reached the backend"
    );
    // The router is fine afterwards.
    let (s, _, _) = get(
        &client(),
        &format!("http://127.0.0.1:{port}/"),
        "x.test",
        &[],
    )
    .await;
    assert_eq!(s, 200);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off() {
    let (_conf, _b, port, router) = setup("slowloris").await;
    // Fifty slowloris clients: a partial request head, then a byte now and then.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // Meanwhile a normal client is served at once.
    let started = Instant::now();
    let (s, _, _) = get(
        &client(),
        &format!("http://127.0.0.1:{port}/"),
        "x.test",
        &[],
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "normal request took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    for s in &mut slow {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let _ = s.write_all(b"X").await;
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(_)) => return, // a 408 answer, then close
                    Err(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a slowloris connection was still open after 5 s"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "slow clients were cut after {:?}",
        started.elapsed()
    );
    // A connection that never sends a byte is closed too.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut one = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut one)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection was kept open: {r:?}"
    );
    // An idle keep-alive connection is closed too.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(r.is_ok(), "idle keep-alive connection was not closed");
    assert!(
        idle_start.elapsed() >= Duration::from_millis(400),
        "closed too early: {:?}",
        idle_start.elapsed()
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_connection_tricks_are_refused_or_neutralised() {
    let (_conf, _b, port, router) = setup("hosttricks").await;
    // Two Host headers: the router and the backend could pick different ones.
    let got = exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: x.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    // `Connection` may not take Host away; every Connection header counts.
    let got = exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: x.test\r\nConnection: host, close\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n",
    )
    .await;
    let body = &got[got.find("\r\n\r\n").expect("an answer") + 4..];
    let seen: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {got}"));
    assert_eq!(seen["headers"]["host"], "x.test", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-host"], "x.test", "{seen}");
    assert!(seen["headers"].get("x-secret").is_none(), "{seen}");
    router.stop().await;
}
