//! Test support: real HTTP backends on loopback, a router fed by a real ZooKeeper, and a config writer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use atlantis_common::zk::{Coord, RouterKind, Section, ZkConfig};
use atlantis_router::config::Config;
use atlantis_router::source::ZkSource;
use atlantis_router::{App, Handle};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub type Body = BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// A real HTTP server on loopback that names itself in every answer.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// `(status, Server-Status header)` answered on `/healthz`.
    pub health: Arc<parking_lot::Mutex<(u16, Option<&'static str>)>>,
    /// Requests served, health checks excluded.
    pub served: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    /// Starts a backend on a free port.
    pub async fn start(name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: tokio::net::TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let b = Backend {
            name: name.to_owned(),
            addr,
            health: Arc::new(parking_lot::Mutex::new((200, Some("OK")))),
            served: Arc::new(AtomicUsize::new(0)),
            stop: CancellationToken::new(),
        };
        let (name, health, served, stop) = (
            b.name.clone(),
            b.health.clone(),
            b.served.clone(),
            b.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(v) => v, Err(_) => continue },
                    _ = stop.cancelled() => return,
                };
                let (name, health, served, stop) =
                    (name.clone(), health.clone(), served.clone(), stop.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        answer(name.clone(), health.clone(), served.clone(), req)
                    });
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let c = conn.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! { _ = c => {}, _ = stop.cancelled() => {} }
                });
            }
        });
        b
    }

    /// `host:port`, the backend node name.
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_health(&self, status: u16, header: Option<&'static str>) {
        *self.health.lock() = (status, header);
    }
}

async fn answer(
    name: String,
    health: Arc<parking_lot::Mutex<(u16, Option<&'static str>)>>,
    served: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        let (code, header) = *health.lock();
        let mut r = Response::new(full("health"));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        if let Some(h) = header {
            r.headers_mut().insert("server-status", h.parse().unwrap());
        }
        return Ok(r);
    }
    served.fetch_add(1, SeqCst);
    let query = req.uri().query().unwrap_or("").to_owned();
    // The last path segment picks the behaviour, so `/any/prefix/slow` works behind prefix rules.
    let last = format!("/{}", path.rsplit('/').next().unwrap_or(""));
    match last.as_str() {
        "/slow" => {
            let ms: u64 = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        "/reset" => return Err(std::io::Error::other("reset on purpose")),
        "/echo" => {
            let body = req.into_body().boxed();
            let mut r = Response::new(body);
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            return Ok(r);
        }
        "/big" => {
            // 8 MiB in 64 KiB chunks, streamed.
            let chunks = futures::stream::iter((0..128).map(|_| {
                Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from(vec![b'x'; 65536])))
            }));
            let mut r = Response::new(http_body_util::StreamBody::new(chunks).boxed());
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            return Ok(r);
        }
        "/sse" => {
            // An endless event stream: one chunk every 200 ms.
            let events = futures::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let chunk = Bytes::from(format!("data: {n}\n\n"));
                Some((
                    Ok::<_, hyper::Error>(hyper::body::Frame::data(chunk)),
                    n + 1,
                ))
            });
            let mut r = Response::new(http_body_util::StreamBody::new(events).boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            return Ok(r);
        }
        "/ws" => {
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = up.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 4096];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            return Ok(r);
        }
        _ => {}
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = serde_json::json!({ "backend": name, "path": path, "query": query, "headers": headers, "version": format!("{:?}", req.version()) });
    let mut r = Response::new(full(body.to_string()));
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r.headers_mut()
        .insert("connection", "keep-alive, x-hop".parse().unwrap());
    r.headers_mut().insert("x-hop", "secret".parse().unwrap());
    Ok(r)
}

/// Writes router configuration into ZooKeeper, under a root of its own.
pub struct Conf {
    pub coord: Coord,
    pub zk: ZkConfig,
    pub kind: RouterKind,
}

impl Conf {
    /// A writer for a fresh root on the server `servers`.
    pub async fn new(servers: &str, test: &str) -> Conf {
        let mut zk = ZkConfig::new(servers, "test".parse().unwrap());
        zk.root = Some(format!("/router-it-{test}-{}", std::process::id()));
        zk.session_timeout = Duration::from_secs(4);
        let coord = Coord::connect(zk.clone()).await.unwrap();
        Conf {
            coord,
            zk,
            kind: RouterKind::External,
        }
    }

    fn item(&self, section: Section, name: &str) -> String {
        self.coord.layout().router_item(self.kind, section, name)
    }

    pub async fn put(&self, section: Section, name: &str, v: serde_json::Value) {
        self.coord.put(&self.item(section, name), &v).await.unwrap();
    }

    pub async fn port(&self, name: &str, port: u16, trie: &str) {
        self.put(
            Section::Ports,
            name,
            serde_json::json!({"port": port, "trie": trie}),
        )
        .await;
    }

    pub async fn trie(&self, name: &str, rules: &[&str]) {
        self.put(Section::Tries, name, serde_json::json!({ "rules": rules }))
            .await;
    }

    pub async fn rule(&self, name: &str, kind: &str, value: &str, pool: &str) {
        self.put(
            Section::Rules,
            name,
            serde_json::json!({"type": kind, "value": value, "pool": pool}),
        )
        .await;
    }

    pub async fn rule_next(&self, name: &str, kind: &str, value: &str, next: &str) {
        self.put(
            Section::Rules,
            name,
            serde_json::json!({"type": kind, "value": value, "next": next}),
        )
        .await;
    }

    pub async fn pool(&self, name: &str, cfg: serde_json::Value) {
        self.put(Section::Pools, name, cfg).await;
    }

    pub async fn backend(&self, pool: &str, b: &str) {
        let p = self.coord.layout().pool_backend(self.kind, pool, b);
        self.coord.create_raw(&p, b"").await.unwrap();
    }

    pub async fn remove_backend(&self, pool: &str, b: &str) {
        let p = self.coord.layout().pool_backend(self.kind, pool, b);
        self.coord.delete(&p, None).await.unwrap();
    }

    pub async fn delete(&self, section: Section, name: &str) {
        self.coord
            .delete(&self.item(section, name), None)
            .await
            .unwrap();
    }
}

/// A running router.
pub struct Router {
    pub status: SocketAddr,
    pub handle: Handle,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Router {
    /// Starts a router reading `conf`'s tree.
    pub async fn start(conf: &Conf) -> Router {
        Self::start_with(conf, |_| {}).await
    }

    /// Starts a router with a tweaked config.
    pub async fn start_with(conf: &Conf, tweak: impl FnOnce(&mut Config)) -> Router {
        Self::start_as(conf, "test-router", tweak).await
    }

    /// Starts a router registered as `host` (a second router beside the usual `test-router`).
    pub async fn start_as(conf: &Conf, host: &str, tweak: impl FnOnce(&mut Config)) -> Router {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cfg = Config::for_tests();
        cfg.access_log = true;
        tweak(&mut cfg);
        let source = Arc::new(ZkSource::new(
            conf.zk.clone(),
            conf.kind,
            "z1".parse().unwrap(),
            host.parse().unwrap(),
            serde_json::json!({"version": 1}),
        ));
        let app = App::build(cfg, source).await.unwrap();
        let status = app.status_addr();
        let stop = CancellationToken::new();
        let (handle, task) = app.spawn(stop.clone());
        Router {
            status,
            handle,
            stop,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// A backend's entry in `/statusz.json` (None while the pool or the backend is not listed).
    pub async fn backend_status(&self, pool: &str, backend: &str) -> Option<serde_json::Value> {
        let s = self.status_json().await;
        s["pools"][pool]["backends"]
            .as_array()?
            .iter()
            .find(|b| b["backend"] == backend)
            .cloned()
    }

    pub async fn status_json(&self) -> serde_json::Value {
        client()
            .get(format!("http://{}/statusz.json", self.status))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A plain reqwest client that never uses a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET `url` with `Host: host`; returns status, `x-backend` and body.
pub async fn get(
    c: &reqwest::Client,
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut rb = c.get(url).header("host", host);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    match rb.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let backend = r
                .headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            (status, backend, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, String::new(), e.to_string()),
    }
}

/// Polls until `GET url` answers with `want_status` from `want_backend` (empty: any).
pub async fn wait_route(
    c: &reqwest::Client,
    url: &str,
    host: &str,
    want_status: u16,
    want_backend: &str,
) {
    atlantis_testkit::eventually(
        Duration::from_secs(15),
        &format!("{url} (host {host}) -> {want_status} {want_backend}"),
        || async {
            let (s, b, _) = get(c, url, host, &[]).await;
            (s == want_status && (want_backend.is_empty() || b == want_backend)).then_some(())
        },
    )
    .await;
}

/// Polls until `GET http://127.0.0.1:{port}{path}` (host `x.test`) answers 200 from `backend` (empty:
/// any).
pub async fn wait_ok(port: u16, path: &str, backend: &str) {
    let url = format!("http://127.0.0.1:{port}{path}");
    wait_route(&client(), &url, "x.test", 200, backend).await;
}

/// A config with pool `p` (settings `cfg`) holding the one backend at `addr`, rule `all` (static true)
/// from trie `root`, and port `web` on a free port.
pub async fn raw_pool(test: &str, addr: SocketAddr, cfg: serde_json::Value) -> (Conf, u16) {
    let zk = atlantis_testkit::ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), test).await;
    conf.pool("p", cfg).await;
    conf.backend("p", &addr.to_string()).await;
    conf.rule("all", "static", "true", "p").await;
    conf.trie("root", &["all"]).await;
    let port = atlantis_testkit::ports::free_port();
    conf.port("web", port, "root").await;
    (conf, port)
}

/// A config with one pool `p` holding one backend `b`, one rule `all` of `rule_type`/`value` sending to
/// it from trie `root`, and port `web` on a free port: the setup most tests start from.
pub async fn one_pool(test: &str, rule_type: &str, value: &str) -> (Conf, Backend, u16) {
    let zk = atlantis_testkit::ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), test).await;
    let b = Backend::start("b").await;
    conf.pool("p", serde_json::json!({"healthz_every_ms": 200}))
        .await;
    conf.backend("p", &b.node()).await;
    conf.rule("all", rule_type, value, "p").await;
    conf.trie("root", &["all"]).await;
    let port = atlantis_testkit::ports::free_port();
    conf.port("web", port, "root").await;
    (conf, b, port)
}

/// A raw TCP backend on loopback: `serve` handles each accepted connection (until the test ends).
pub async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// Reads one request (head, lower-cased, and its `Content-Length` body) from a raw connection; bytes
/// after it stay in `buf`. `None` when the connection ends first.
pub async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    buf.drain(..end + len);
    Some(head)
}

/// The `in_flight` count of the first backend of pool `pool`, from `/statusz.json`.
pub async fn in_flight(router: &Router, pool: &str) -> u64 {
    router.status_json().await["pools"][pool]["backends"][0]["in_flight"]
        .as_u64()
        .unwrap()
}

/// Polls `/statusz.json` until `backend` of `pool` has `health`.
pub async fn wait_health(router: &Router, pool: &str, backend: &str, health: &str) {
    atlantis_testkit::eventually(
        Duration::from_secs(10),
        &format!("{backend} in {pool} to be {health}"),
        || async {
            let s = router.status_json().await;
            let bs = s["pools"][pool]["backends"].as_array()?.clone();
            bs.iter()
                .any(|b| b["backend"] == backend && b["health"] == health)
                .then_some(())
        },
    )
    .await;
}
