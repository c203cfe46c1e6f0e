//! Pools with `protocol: h2c`: the router speaks HTTP/2 to backends that speak nothing else (as gRPC
//! servers do), checks their health over HTTP/2, shares one connection per worker among requests, passes
//! `TE: trailers` and response trailers through (a gRPC exchange), replaces a connection the backend
//! shut down, sends refused bodiless streams again, and follows a pool's protocol changed live. A real gRPC server (Python grpcio) is served
//! through the router for every call shape, and checked with the gRPC health protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{Conf, Router, client, get, wait_health, wait_ok};

type Body = BoxBody<Bytes, hyper::Error>;

/// An HTTP/2-only backend. `/echo` streams the request body back, then trailers (`grpc-status: 0`);
/// every answer tells in headers what the backend saw (version, scheme, authority, `te`).
struct H2Backend {
    addr: std::net::SocketAddr,
    /// Connections that carried a request other than a health check.
    app_conns: Arc<AtomicUsize>,
    /// Shuts every open connection down (GOAWAY), as a restarting server does.
    shut: Arc<parking_lot::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Requests held by `/hold?n=N` until N are held at once.
#[derive(Default)]
struct Hold {
    held: AtomicUsize,
    all_in: tokio::sync::Notify,
}

impl H2Backend {
    async fn start() -> H2Backend {
        Self::start_with(None).await
    }

    /// With `max_streams`, the backend announces that `MAX_CONCURRENT_STREAMS`.
    async fn start_with(max_streams: Option<u32>) -> H2Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app_conns = Arc::new(AtomicUsize::new(0));
        let shut = Arc::new(parking_lot::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (conns, shut2, stop2) = (app_conns.clone(), shut.clone(), stop.clone());
        let hold = Arc::new(Hold::default());
        tokio::spawn(async move {
            loop {
                let s = tokio::select! {
                    r = listener.accept() => r.unwrap().0,
                    _ = stop2.cancelled() => return,
                };
                let (conns, shut, hold) = (conns.clone(), shut2.lock().clone(), hold.clone());
                tokio::spawn(async move {
                    let counted = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let svc = hyper::service::service_fn(move |req| {
                        if req.uri().path() != "/healthz" && !counted.swap(true, SeqCst) {
                            conns.fetch_add(1, SeqCst);
                        }
                        answer(req, hold.clone())
                    });
                    let mut builder =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    builder.max_concurrent_streams(max_streams);
                    let conn = builder.serve_connection(TokioIo::new(s), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shut.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        H2Backend {
            addr,
            app_conns,
            shut,
            stop,
        }
    }

    fn shut_down_connections(&self) {
        let mut t = self.shut.lock();
        t.cancel();
        *t = CancellationToken::new();
    }
}

async fn answer(req: Request<Incoming>, hold: Arc<Hold>) -> Result<Response<Body>, hyper::Error> {
    let mut seen = HeaderMap::new();
    seen.insert("x-version", format!("{:?}", req.version()).parse().unwrap());
    let uri = req.uri().clone();
    let scheme = uri.scheme_str().unwrap_or("").to_owned();
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    seen.insert("x-scheme", scheme.parse().unwrap());
    seen.insert("x-authority", authority.parse().unwrap());
    if let Some(te) = req.headers().get("te") {
        seen.insert("x-te", te.clone());
    }
    let body: Body = match uri.path() {
        "/healthz" => {
            seen.insert("server-status", "OK".parse().unwrap());
            Full::new(Bytes::from_static(b"ok"))
                .map_err(|e| match e {})
                .boxed()
        }
        "/echo" => {
            // The request's data frames, then trailers.
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let data = req.into_body().into_data_stream();
            let frames = futures::StreamExt::chain(
                futures::StreamExt::map(data, |r| r.map(Frame::data)),
                futures::stream::iter([Ok(Frame::trailers(trailers))]),
            );
            StreamBody::new(frames).boxed()
        }
        "/hold" => {
            let n: usize = uri
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let all_in = hold.all_in.notified();
            let text = if hold.held.fetch_add(1, SeqCst) + 1 >= n {
                hold.all_in.notify_waiters();
                "released"
            } else if tokio::time::timeout(Duration::from_secs(10), all_in)
                .await
                .is_ok()
            {
                "released"
            } else {
                "timeout"
            };
            Full::new(Bytes::from_static(text.as_bytes()))
                .map_err(|e| match e {})
                .boxed()
        }
        _ => Full::new(Bytes::from_static(b"hello over h2"))
            .map_err(|e| match e {})
            .boxed(),
    };
    let mut r = Response::new(body);
    *r.headers_mut() = seen;
    Ok(r)
}

async fn setup(test: &str, b: &H2Backend) -> (Conf, u16, Router) {
    let (conf, port) = crate::support::raw_pool(
        test,
        b.addr,
        json!({"protocol": "h2c", "healthz_every_ms": 100, "slow_start_ms": 0}),
    )
    .await;
    let router = Router::start(&conf).await;
    wait_ok(port, "/hello", "").await;
    (conf, port, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_only_backend_is_checked_and_served_over_http2() {
    let b = H2Backend::start().await;
    let (_conf, port, router) = setup("h2back", &b).await;
    // Health checks speak HTTP/2 too: an HTTP/1.1 check of this backend would fail.
    let health = router
        .backend_status("p", &b.addr.to_string())
        .await
        .unwrap();
    assert_eq!(health["health"], "OK", "{health}");
    // An HTTP/1.1 client (the fast path hands over) and an h2c client both reach it over HTTP/2.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // The authority is the client's Host, or for HTTP/2 its `:authority` (an extra Host header loses).
    let h2_authority = format!("127.0.0.1:{port}");
    for (c, authority) in [(client(), "x.test"), (h2, h2_authority.as_str())] {
        let r = c
            .get(format!("http://127.0.0.1:{port}/hello?x=1"))
            .header("host", "x.test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers().clone();
        assert_eq!(h["x-version"], "HTTP/2.0");
        assert_eq!(h["x-scheme"], "http");
        assert_eq!(h["x-authority"], authority);
        assert!(h.contains_key("x-request-id"));
        assert_eq!(r.text().await.unwrap(), "hello over h2");
    }
    // Fifty concurrent requests share the workers' connections instead of opening fifty.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let url = format!("http://127.0.0.1:{port}/hello");
            tokio::spawn(async move { get(&client(), &url, "x.test", &[]).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let conns = b.app_conns.load(SeqCst);
    assert!(
        (1..=4).contains(&conns),
        "{conns} backend connections for 52 requests"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_style_exchange_passes_te_and_trailers() {
    let b = H2Backend::start().await;
    let (_conf, port, router) = setup("h2grpc", &b).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sr, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://x.test:{port}/echo"))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x04ping")))
        .unwrap();
    let resp = sr.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-te"], "trailers");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x04ping");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_backend_shuts_is_replaced() {
    let b = H2Backend::start().await;
    let (_conf, port, router) = setup("h2shut", &b).await;
    let url = format!("http://127.0.0.1:{port}/hello");
    for round in 0..5 {
        b.shut_down_connections();
        for i in 0..10 {
            let (status, _, body) = get(&client(), &url, "x.test", &[]).await;
            assert_eq!(status, 200, "round {round}, request {i}: {body}");
        }
    }
    assert!(b.app_conns.load(SeqCst) >= 5);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_changes_live() {
    let b = H2Backend::start().await;
    let (conf, port) =
        crate::support::raw_pool("h2live", b.addr, json!({"healthz_every_ms": 0})).await;
    let router = Router::start(&conf).await;
    // Spoken to in HTTP/1.1, an HTTP/2-only backend cannot answer.
    let url = format!("http://127.0.0.1:{port}/hello");
    crate::support::wait_route(&client(), &url, "x.test", 502, "").await;
    conf.pool("p", json!({"healthz_every_ms": 0, "protocol": "h2c"}))
        .await;
    wait_ok(port, "/hello", "").await;
    let (status, _, body) = get(&client(), &url, "x.test", &[]).await;
    assert_eq!((status, body.as_str()), (200, "hello over h2"));
    router.stop().await;
}

/// A real gRPC server (Python grpcio, `tests/grpc/echo.py`), stopped when dropped.
struct GrpcServer {
    port: u16,
    python: std::path::PathBuf,
    script: std::path::PathBuf,
    _proc: atlantis_testkit::process::Guarded,
    _dir: tempfile::TempDir,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let python = atlantis_testkit::venv::python(
            &["grpc", "grpc_health.v1"],
            "grpcio grpcio-health-checking",
        );
        let manifest =
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
        let script = std::path::Path::new(&manifest).join("tests/grpc/echo.py");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("grpc.log");
        let args = [script.to_string_lossy().into_owned(), "server".into()];
        let proc = atlantis_testkit::process::Guarded::spawn("grpc", &python, &args, &log, None);
        let port =
            atlantis_testkit::wait_until(Duration::from_secs(30), "the gRPC server's port", || {
                std::fs::read_to_string(&log)
                    .ok()?
                    .lines()
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            });
        GrpcServer {
            port,
            python,
            script,
            _proc: proc,
            _dir: dir,
        }
    }

    /// Runs `echo.py ARGS...` and returns its stdout, failing the test on a non-zero exit.
    async fn run(&self, args: &[String]) -> String {
        let mut cmd = std::process::Command::new(&self.python);
        cmd.arg(&self.script).args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "echo.py {args:?}: {stdout}{stderr}");
        stdout.into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_grpc_server_is_served_and_health_checked() {
    let server = GrpcServer::start();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], server.port).into();
    let cfg = json!({"protocol": "h2c", "healthz_grpc": true, "healthz_every_ms": 100, "slow_start_ms": 0});
    let (conf, port) = crate::support::raw_pool("grpcreal", addr, cfg).await;
    let router = Router::start(&conf).await;
    let node = addr.to_string();
    wait_health(&router, "p", &node, "OK").await;
    // Unary, server streaming, client streaming, an error status and an unknown method, through the router.
    let out = server
        .run(&["client".into(), format!("127.0.0.1:{port}")])
        .await;
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["say"]["got"], "ping", "{got}");
    assert_eq!(got["say"]["x-forwarded-for"], "127.0.0.1", "{got}");
    assert!(got["say"]["x-request-id"].is_string(), "{got}");
    assert_eq!(got["trailer"], "yes", "{got}");
    assert_eq!(got["count"], 1000, "{got}");
    assert_eq!(got["collect"], 190, "{got}");
    assert_eq!(got["Fail"], "PERMISSION_DENIED", "{got}");
    assert_eq!(got["Nope"], "UNIMPLEMENTED", "{got}");
    // The gRPC health status drives the router's: NOT_SERVING is CRITICAL, SERVING is OK again.
    let direct = format!("127.0.0.1:{}", server.port);
    server
        .run(&["serving".into(), direct.clone(), "no".into()])
        .await;
    wait_health(&router, "p", &node, "CRITICAL").await;
    server.run(&["serving".into(), direct, "yes".into()]).await;
    wait_health(&router, "p", &node, "OK").await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_a_backends_limit_open_another_connection() {
    // The backend takes 100 streams per connection; 150 requests must all be there at once to be
    // answered, so a router queueing behind the limit would see them time out.
    let b = H2Backend::start_with(Some(100)).await;
    let (_conf, port, router) = setup("h2limit", &b).await;
    // One client connection: all its streams are served by one router worker.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (sr, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let tasks: Vec<_> = (0..150)
        .map(|_| {
            let mut sr = sr.clone();
            tokio::spawn(async move {
                let req = Request::get(format!("http://x.test:{port}/hold?n=150"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = sr.send_request(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), (StatusCode::OK, "released".to_owned()));
    }
    let conns = b.app_conns.load(SeqCst);
    assert!(conns >= 2, "{conns} backend connections for 150 streams");
    router.stop().await;
}

/// An HTTP/2 backend (the `h2` crate, so that it can refuse streams) that answers `REFUSED_STREAM` to
/// every other stream, starting with the first, and `200 ok` to the rest. Counts the streams it saw.
async fn refusing_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let seen = counter.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if req.uri().path() == "/healthz" {
                        let _ = respond.send_response(Response::new(()), true);
                    } else if seen.fetch_add(1, SeqCst).is_multiple_of(2) {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else if let Ok(mut body) = respond.send_response(Response::new(()), false) {
                        let _ = body.send_data(Bytes::from_static(b"ok"), true);
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_sent_again_unless_they_carried_a_body() {
    let (addr, seen) = refusing_backend().await;
    let (conf, port) = crate::support::raw_pool(
        "h2refused",
        addr,
        json!({"protocol": "h2c", "healthz_every_ms": 0}),
    )
    .await;
    let router = Router::start(&conf).await;
    let url = format!("http://127.0.0.1:{port}/x");
    crate::support::wait_route(&client(), &url, "x.test", 200, "").await;
    // Every request meets a refusal first, then goes through: bodiless ones of any method.
    for method in [
        reqwest::Method::GET,
        reqwest::Method::DELETE,
        reqwest::Method::GET,
    ] {
        let before = seen.load(SeqCst);
        let expect_refusal = before.is_multiple_of(2);
        let r = client()
            .request(method.clone(), &url)
            .header("host", "x.test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{method}");
        assert_eq!(r.text().await.unwrap(), "ok");
        let streams = seen.load(SeqCst) - before;
        assert_eq!(streams, if expect_refusal { 2 } else { 1 }, "{method}");
    }
    // A request with a body is not sent again: its body went with the refused stream.
    while !seen.load(SeqCst).is_multiple_of(2) {
        get(&client(), &url, "x.test", &[]).await;
    }
    let r = client()
        .post(&url)
        .header("host", "x.test")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers()["x-atlantis-error"], "backend_error");
    router.stop().await;
}
