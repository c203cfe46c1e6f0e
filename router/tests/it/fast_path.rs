//! The HTTP/1.1 fast path on raw sockets: pipelining, bodies both ways, HEAD, chunked answers, request
//! smuggling attempts refused, and the hand-over to hyper mid-connection (chunked request bodies,
//! `Connection: close`, upgrades).

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Backend, Conf, Router, one_pool, wait_ok};

async fn setup(test: &str) -> (Conf, Backend, u16, Router) {
    let (conf, b, port) = one_pool(test, "host", "x.test").await;
    let router = Router::start(&conf).await;
    wait_ok(port, "/", "b").await;
    (conf, b, port, router)
}

/// One response read from a raw stream: status, lower-cased head, body (de-chunked).
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

/// Reads one response; `buf` keeps bytes read past it. `head_request`: no body follows.
pub(crate) async fn read_resp<R: AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> Resp {
    async fn fill<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) {
        let mut tmp = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut tmp))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(
            n > 0,
            "closed early; have {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    buf.drain(..end);
    let status: u16 = head[9..12].parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    };
    let mut body = Vec::new();
    if head_request {
    } else if let Some(len) = header("content-length") {
        let len: usize = len.trim().parse().unwrap();
        while buf.len() < len {
            fill(s, buf).await;
        }
        body = buf.drain(..len).collect();
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf).await;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap();
            buf.drain(..line + 2);
            while buf.len() < size + 2 {
                fill(s, buf).await;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else {
        panic!("response without framing: {head}");
    }
    Resp { status, head, body }
}

fn json_of(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "not json ({e}): {} {:?}",
            r.head,
            String::from_utf8_lossy(&r.body)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_with_bodies_keep_their_order() {
    let (_conf, b, port, router) = setup("fastpipe").await;
    let before = b.served.load(SeqCst);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Five requests in one write: a GET, a POST whose body looks like a request (it must stay a body),
    // a HEAD, an unrouted host, and a GET with a client request id.
    let inner = "GET /smuggled HTTP/1.1\r\nHost: x.test\r\n\r\n";
    let raw = format!(
        "GET /one?a=1 HTTP/1.1\r\nHost: x.test\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n\
         POST /p/echo HTTP/1.1\r\nHost: x.test\r\nContent-Length: {}\r\n\r\n{inner}\
         HEAD /three HTTP/1.1\r\nHost: x.test\r\n\r\n\
         GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n\
         GET /five HTTP/1.1\r\nHost: x.test:8080\r\nX-Request-Id: my-id-5\r\n\r\n",
        inner.len()
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let one = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(one.status, 200, "{}", one.head);
    let j = json_of(&one);
    assert_eq!(j["path"], "/one");
    assert_eq!(j["query"], "a=1");
    assert_eq!(j["headers"]["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert_eq!(j["headers"]["x-forwarded-host"], "x.test");
    let id = j["headers"]["x-request-id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 20, "{id}");
    assert!(
        one.head.contains(&format!("x-request-id: {id}\r\n")),
        "{}",
        one.head
    );
    // Hop-by-hop headers of the backend (and those its Connection header names) are gone.
    assert!(!one.head.contains("x-hop"), "{}", one.head);
    assert!(!one.head.contains("connection:"), "{}", one.head);
    let two = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(two.status, 200, "{}", two.head);
    assert_eq!(two.body, inner.as_bytes());
    let three = read_resp(&mut s, &mut buf, true).await;
    assert_eq!(three.status, 200, "{}", three.head);
    let four = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(four.status, 404, "{}", four.head);
    assert!(
        four.head.contains("x-atlantis-error: no_route"),
        "{}",
        four.head
    );
    let five = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(five.status, 200, "{}", five.head);
    assert_eq!(json_of(&five)["headers"]["x-request-id"], "my-id-5");
    assert_eq!(json_of(&five)["headers"]["x-forwarded-host"], "x.test:8080");
    assert!(
        five.head.contains("x-request-id: my-id-5\r\n"),
        "{}",
        five.head
    );
    assert!(buf.is_empty());
    // one, echo, three, five: the body that looked like a request was not one.
    assert_eq!(b.served.load(SeqCst), before + 4);
    // A streamed (chunked) 8 MiB answer, then the same connection still works.
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let big = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), 8 << 20);
    assert!(big.body.iter().all(|b| *b == b'x'));
    // Content-Length bodies: a small one (fast path, read in pieces) and a large one (hyper), each
    // written while the answer is read.
    let (mut rd, mut wr) = s.into_split();
    for size in [40_000usize, 3 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let mut req =
            format!("PUT /echo HTTP/1.1\r\nHost: x.test\r\nContent-Length: {size}\r\n\r\n")
                .into_bytes();
        req.extend_from_slice(&payload);
        let write = async {
            for piece in req.chunks(7000) {
                wr.write_all(piece).await.unwrap();
            }
        };
        let (_, echoed) = tokio::join!(write, read_resp(&mut rd, &mut buf, false));
        assert_eq!(echoed.status, 200, "{}", echoed.head);
        assert!(echoed.body == payload, "body of {size} bytes changed");
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_are_refused() {
    let (_conf, b, port, router) = setup("fastsmuggle").await;
    let before = b.served.load(SeqCst);
    let attempts: [&[u8]; 4] = [
        b"POST /echo HTTP/1.1\r\nHost: x.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x.test\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x.test\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: x.test\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x.test\r\nContent-Length: +4\r\n\r\nabcd",
        b"POST /echo HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: gzip, chunked, identity\r\n\r\n0\r\n\r\n",
    ];
    for raw in attempts {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{:?} -> {out:?}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(
            out.matches("HTTP/1.1").count(),
            1,
            "a second answer: {out:?}"
        );
    }
    assert_eq!(
        b.served.load(SeqCst),
        before,
        "a refused request reached the backend"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_requests_fall_back_to_hyper_mid_connection() {
    let (_conf, _b, port, router) = setup("fastfallback").await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Fast path first, then a chunked request body (hyper), then more requests, the last asking to close.
    s.write_all(
        b"GET /a HTTP/1.1\r\nHost: x.test\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: x.test\r\n\r\n\
          GET /d HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let a = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(json_of(&a)["path"], "/a");
    let echo = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(echo.status, 200, "{}", echo.head);
    assert_eq!(echo.body, b"hello world");
    let c = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(json_of(&c)["path"], "/c");
    let d = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(json_of(&d)["path"], "/d");
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(r, Ok(Ok(0))) && buf.is_empty(),
        "connection not closed: {r:?}"
    );
    // HTTP/1.0 and an absolute-form target are served too (by hyper).
    for raw in [
        &b"GET /ten HTTP/1.0\r\nHost: x.test\r\n\r\n"[..],
        b"GET http://x.test/abs HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains(" 200 OK"), "{out}");
        assert!(out.contains("\"backend\":\"b\""), "{out}");
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_frees_its_backend_slot() {
    let (_conf, b, port, router) = setup("fastleave").await;
    let in_flight = |s: serde_json::Value| {
        s["pools"]["p"]["backends"].as_array().unwrap()[0]["in_flight"]
            .as_u64()
            .unwrap()
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /slow?ms=4000 HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while in_flight(router.status_json().await) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = tokio::time::Instant::now();
    drop(s);
    while in_flight(router.status_json().await) != 0 {
        assert!(
            left.elapsed() < Duration::from_millis(1500),
            "the slot was held after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.served.load(SeqCst) >= 1);
    router.stop().await;
}

/// A raw backend answering each request with the byte parts `answer` gives for its path, written
/// 50 ms apart so that each arrives on its own.
async fn scripted_backend(answer: fn(&str) -> &'static [&'static [u8]]) -> std::net::SocketAddr {
    crate::support::raw_backend(move |mut s| async move {
        let mut buf = Vec::new();
        while let Some(head) = crate::support::read_request(&mut s, &mut buf).await {
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            for (i, p) in answer(&path).iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if s.write_all(p).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_heads_odd_or_broken_are_read_or_refused() {
    // The backend answers by path: a head split over two writes, bare-LF line ends, empty lines before
    // the status line, garbage, and conflicting lengths.
    let addr = scripted_backend(|path| match path {
        "/split" => &[b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r\nsplit"],
        "/lf" => &[b"HTTP/1.1 200 OK\nContent-Length: 2\n\nlf"],
        "/lead" => &[
            b"\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"Content-Length: 4\r\n\r\nlead",
        ],
        "/garbage" => &[b"SMTP ready\r\n\r\n"],
        _ => &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"],
    })
    .await;
    let (conf, port) =
        crate::support::raw_pool("oddheads", addr, serde_json::json!({"healthz_every_ms": 0}))
            .await;
    let router = Router::start(&conf).await;
    wait_ok(port, "/lf", "").await;
    for (path, status, body) in [
        ("/split", 200, "split"),
        ("/lf", 200, "lf"),
        ("/lead", 200, "lead"),
        ("/garbage", 502, "backend error\n"),
        ("/lengths", 502, "backend error\n"),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), read_resp(&mut s, &mut buf, false))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer"));
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).as_ref()),
            (status, body),
            "{path}: {}",
            r.head
        );
    }
    router.stop().await;
}

/// Reads until the router closes the connection (`None` if it is still open after 5 s).
async fn read_to_close(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut tmp = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&tmp[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_framing_reaches_the_client_unambiguous() {
    // A backend naming its Content-Length in Connection, a signed length, interim 103 answers, a
    // transfer coding before chunked, and a malformed chunked body.
    let addr = scripted_backend(|path| match path {
                "/conncl" => &[b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"],
                "/victim" => &[b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nVICTIM"],
                "/plus" => &[b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"],
                "/hints" => &[
                    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints",
                ],
                "/hints1" => &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints"],
                "/gzip" => &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
                _ => &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloJUNK\n0\r\n\r\n"],
    })
    .await;
    let (conf, port) =
        crate::support::raw_pool("framing", addr, serde_json::json!({"healthz_every_ms": 0})).await;
    let router = Router::start(&conf).await;
    wait_ok(port, "/victim", "").await;
    let connect = || TcpStream::connect(("127.0.0.1", port));
    // Pipelined: the first answer keeps its length, so the second is read as an answer of its own.
    let mut s = connect().await.unwrap();
    s.write_all(
        b"GET /conncl HTTP/1.1\r\nHost: x.test\r\n\r\nGET /victim HTTP/1.1\r\nHost: x.test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let first = read_resp(&mut s, &mut buf, false).await;
    assert!(
        first.head.contains("content-length: 5\r\n"),
        "{}",
        first.head
    );
    assert_eq!((first.status, &first.body[..]), (200, &b"hello"[..]));
    let second = read_resp(&mut s, &mut buf, false).await;
    assert_eq!((second.status, &second.body[..]), (200, &b"VICTIM"[..]));
    for (path, status, body) in [
        ("/plus", 502, "backend error\n"),
        ("/hints", 200, "hints"),
        ("/hints1", 200, "hints"),
    ] {
        let mut s = connect().await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_resp(&mut s, &mut Vec::new(), false).await;
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).as_ref()),
            (status, body),
            "{path}: {}",
            r.head
        );
    }
    // The coding before chunked is kept; the body goes through as sent.
    let mut s = connect().await.unwrap();
    s.write_all(b"GET /gzip HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
            .await
            .expect("gzip answer")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(
        text.contains("transfer-encoding: gzip, chunked\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{text}");
    // A malformed chunked body: the client connection is closed before any end the client could trust.
    let mut s = connect().await.unwrap();
    s.write_all(b"GET /badchunk HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s)
        .await
        .expect("the router kept the connection after a malformed chunked body");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("0\r\n\r\n"), "{text}");
    router.stop().await;
}
