//! Response bodies that stop moving: a backend that stalls mid-body and a client that stops reading are
//! cut off after `limits.body_idle_timeout_ms` on the fast path and on the hyper path (reached with a
//! `Connection` header), while a slow but steady reader is not; and the router's own answers carry a
//! `Date` header. A TLS client that stops reading is cut off too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atlantis_common::zk::Section;
use atlantis_router::config::CertConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::fast_path::read_resp;
use crate::protocols::{make_ca, make_leaf};
use crate::support::{
    Conf, Router, client, in_flight, one_pool, raw_backend, read_request, wait_ok, wait_route,
};

const IDLE_MS: u64 = 600;
/// Requests for each path: the fast path, and hyper (a `Connection` header sends the request there).
const PATHS: [(&str, &str); 2] = [("fast", ""), ("hyper", "Connection: keep-alive\r\n")];

/// A raw backend: `/ok` answers at once; `/stall` promises 100,000 bytes, sends 1,000 and waits;
/// `/endless` sends a 1 GiB body as fast as it is read. The latter two report on `closed` when the
/// router closes their connection.
async fn stalling_backend() -> (SocketAddr, mpsc::UnboundedReceiver<&'static str>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = raw_backend(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_request(&mut s, &mut buf).await {
                if head.starts_with("get /ok ") {
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                } else if head.starts_with("get /stall ") {
                    let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
                    out.extend_from_slice(&[b'x'; 1000]);
                    let _ = s.write_all(&out).await;
                    let mut sink = [0u8; 1024];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                    let _ = tx.send("stall");
                    return;
                } else if head.starts_with("get /endless ") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
                        .await;
                    let chunk = vec![b'y'; 64 * 1024];
                    while s.write_all(&chunk).await.is_ok() {}
                    let _ = tx.send("endless");
                    return;
                } else {
                    return;
                }
            }
        }
    })
    .await;
    (addr, rx)
}

/// The stalling backend behind a port, TLS with the certificate in `tls` (name, cert, key).
async fn setup_with(
    test: &str,
    tls: Option<CertConfig>,
) -> (Conf, u16, Router, mpsc::UnboundedReceiver<&'static str>) {
    let zk = atlantis_testkit::ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), test).await;
    let (addr, closed) = stalling_backend().await;
    conf.pool("p", serde_json::json!({"healthz_every_ms": 0}))
        .await;
    conf.backend("p", &addr.to_string()).await;
    conf.rule("all", "static", "true", "p").await;
    conf.trie("root", &["all"]).await;
    let port = atlantis_testkit::ports::free_port();
    let is_tls = tls.is_some();
    conf.put(
        Section::Ports,
        "web",
        serde_json::json!({"port": port, "trie": "root", "tls": is_tls}),
    )
    .await;
    let router = Router::start_with(&conf, |c| {
        c.limits.body_idle_timeout_ms = IDLE_MS;
        c.tls.certs = tls.into_iter().collect();
    })
    .await;
    (conf, port, router, closed)
}

async fn setup(test: &str) -> (Conf, u16, Router, mpsc::UnboundedReceiver<&'static str>) {
    let (conf, port, router, closed) = setup_with(test, None).await;
    wait_ok(port, "/ok", "").await;
    (conf, port, router, closed)
}

/// Reads until the connection ends (EOF or reset); `None` if it is still open after `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut tmp = vec![0u8; 65536];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut tmp)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&tmp[..n]),
        }
    }
}

/// Waits (bounded) until the backend reports `what` closed.
async fn backend_closed(closed: &mut mpsc::UnboundedReceiver<&'static str>, what: &str) {
    let got = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .unwrap_or_else(|_| panic!("the router kept the {what} backend connection"));
    assert_eq!(got, Some(what));
}

async fn wait_idle_backend(router: &Router) {
    atlantis_testkit::eventually(Duration::from_secs(5), "in_flight back to 0", || async {
        (in_flight(router, "p").await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_stalling_mid_body_is_cut_off() {
    let (_conf, port, router, mut closed) = setup("bodystall").await;
    for (path, extra) in PATHS {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let sent = Instant::now();
        s.write_all(format!("GET /stall HTTP/1.1\r\nHost: x.test\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        let got = read_until_closed(&mut s, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{path}: the client connection stayed open"));
        let took = sent.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text:?}");
        let body = got.len() - text.find("\r\n\r\n").unwrap() - 4;
        assert_eq!(body, 1000, "{path}: body bytes before the stall");
        assert!(
            took >= Duration::from_millis(IDLE_MS - 50) && took < Duration::from_secs(5),
            "{path}: closed after {took:?}"
        );
        backend_closed(&mut closed, "stall").await;
        wait_idle_backend(&router).await;
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_frees_the_backend() {
    let (_conf, port, router, mut closed) = setup("bodynoread").await;
    for (path, extra) in PATHS {
        // A small receive buffer, so the router's writes block soon.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let sent = Instant::now();
        s.write_all(format!("GET /endless HTTP/1.1\r\nHost: x.test\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        backend_closed(&mut closed, "endless").await;
        let took = sent.elapsed();
        assert!(
            took >= Duration::from_millis(IDLE_MS - 50),
            "{path}: cut off after {took:?}"
        );
        wait_idle_backend(&router).await;
        // The client connection is closed too (after what the buffers held).
        let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
        let got = got.unwrap_or_else(|| panic!("{path}: the client connection stayed open"));
        assert!(got.len() < 1 << 30, "{path}");
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_is_not_cut_off() {
    let (_conf, port, router, _closed) = setup("bodyslow").await;
    for (path, extra) in PATHS {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        s.write_all(format!("GET /endless HTTP/1.1\r\nHost: x.test\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        // 8 KiB every 100 ms for three idle timeouts: each read is progress, so the copy goes on.
        let mut total = 0;
        let mut tmp = vec![0u8; 8192];
        let until = Instant::now() + Duration::from_millis(3 * IDLE_MS);
        while Instant::now() < until {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
                .await
                .unwrap_or_else(|_| panic!("{path}: no bytes for 5 s"))
                .unwrap();
            assert!(n > 0, "{path}: closed after {total} bytes");
            total += n;
            // Pacing is the point of this client.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(in_flight(&router, "p").await, 1, "{path}");
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stops_reading_frees_the_backend() {
    atlantis_testkit::require_bin("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d);
    make_leaf(d, "a.example", "idle");
    let cert = CertConfig {
        names: vec!["a.example".into()],
        cert: d.join("a.example.pem"),
        key: d.join("a.example.key"),
    };
    let (_conf, port, router, mut closed) = setup_with("bodytls", Some(cert)).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(d.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let name = ServerName::try_from("a.example").unwrap();
    // Once the TLS port serves, ask for the endless body and read nothing.
    let mut s = atlantis_testkit::eventually(Duration::from_secs(15), "TLS port to serve", || {
        let (tls, name) = (tls.clone(), name.clone());
        async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let tcp = sock.connect(([127, 0, 0, 1], port).into()).await.ok()?;
            let mut s = tls.connect(name, tcp).await.ok()?;
            s.write_all(b"GET /ok HTTP/1.1\r\nHost: x.test\r\n\r\n")
                .await
                .ok()?;
            let mut buf = Vec::new();
            (read_resp(&mut s, &mut buf, false).await.status == 200).then_some(s)
        }
    })
    .await;
    let sent = Instant::now();
    s.write_all(b"GET /endless HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    s.flush().await.unwrap();
    backend_closed(&mut closed, "endless").await;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(IDLE_MS - 50),
        "cut off after {took:?}"
    );
    wait_idle_backend(&router).await;
    router.stop().await;
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), checking its weekday.
fn parse_http_date(v: &str) -> Option<u64> {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = v.split(' ').collect();
    let [wday, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    let wday = wday.strip_suffix(',')?;
    let (day, year): (u64, u64) = (day.parse().ok()?, year.parse().ok()?);
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let hms: Vec<u64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else { return None };
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days since 1970-01-01 (proleptic Gregorian).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (DAYS[(days % 7) as usize] == wday).then_some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_answers_carry_a_date() {
    let (conf, b, port) = one_pool("answerdate", "host", "x.test").await;
    // An empty pool (503), a dead backend (502) and a short request timeout (504).
    conf.pool("empty", serde_json::json!({"healthz_every_ms": 0}))
        .await;
    conf.pool("dead", serde_json::json!({"healthz_every_ms": 0}))
        .await;
    let dead = atlantis_testkit::ports::free_port();
    conf.backend("dead", &format!("127.0.0.1:{dead}")).await;
    conf.pool(
        "short",
        serde_json::json!({"healthz_every_ms": 0, "request_timeout_ms": 300}),
    )
    .await;
    conf.backend("short", &b.node()).await;
    conf.rule("e", "host", "empty.test", "empty").await;
    conf.rule("d", "host", "dead.test", "dead").await;
    conf.rule("s", "host", "short.test", "short").await;
    conf.trie("root", &["all", "e", "d", "s"]).await;
    let router = Router::start(&conf).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    wait_route(&c, &url, "x.test", 200, "b").await;
    wait_route(&c, &url, "empty.test", 503, "").await;
    let cases: [(&str, &str, u16); 6] = [
        ("GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n", "fast", 404),
        ("GET / HTTP/1.1\r\nHost: empty.test\r\n\r\n", "fast", 503),
        ("GET / HTTP/1.1\r\nHost: dead.test\r\n\r\n", "fast", 502),
        (
            "GET /slow?ms=3000 HTTP/1.1\r\nHost: short.test\r\n\r\n",
            "fast",
            504,
        ),
        (
            "POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "fast",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: nowhere.test\r\nConnection: keep-alive\r\n\r\n",
            "hyper",
            404,
        ),
    ];
    for (raw, path, status) in cases {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let r = read_resp(&mut s, &mut buf, false).await;
        assert_eq!(r.status, status, "{path}: {}", r.head);
        let date = r
            .head
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .unwrap_or_else(|| panic!("{path} {status}: no date header: {}", r.head));
        // The head was lower-cased: restore the case of the names of days and months.
        let date: String = date
            .split(' ')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(" ")
            .replace("Gmt", "GMT");
        let at = parse_http_date(&date)
            .unwrap_or_else(|| panic!("{path} {status}: not an HTTP date: {date:?}"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(at.abs_diff(now) <= 5, "{path} {status}: {date} is not now");
    }
    router.stop().await;
}
