//! The hot path: route one request, pick a backend, forward, stream the answer back.
//!
//! Answers made by the router: no port or no rule 404 (configurable), missing target or no usable
//! backend 503, backend failure 502 (after trying other backends when a connection is refused), backend
//! timeout 504. Each carries `x-atlantis-error` with a stable code.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use atlantis_common::routing::{Protocol, RequestView};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;

use crate::body::{Lease, ProxyBody};
use crate::metrics::{PoolMetrics, RouterMetrics};
use crate::pool::{BackendState, PoolState, Reuse};
use crate::table::{Route, Table};
use crate::upstream::{UpBody, Upstream};

/// State shared by every connection.
pub struct Shared {
    /// The current table.
    pub table: ArcSwap<Table>,
    /// Metrics.
    pub metrics: RouterMetrics,
    /// Counters for answers given without a pool.
    pub unrouted: PoolMetrics,
    /// Whether the configuration source is connected.
    pub connected: AtomicBool,
    /// Log one line per request.
    pub access_log: bool,
    /// Answer when nothing matches.
    pub not_found: StatusCode,
    /// Bounds of the idle backend connection pools.
    pub max_idle: crate::pool::IdleLimits,
    /// How long a response body may go without progress.
    pub body_idle: Duration,
    /// How long an upgraded connection may go without a byte either way.
    pub tunnel_idle: Duration,
    pub(crate) ids: RequestIds,
    origin: std::sync::atomic::AtomicU8,
}

/// No table yet: `/healthz` answers 503.
pub const ORIGIN_NONE: u8 = 0;
/// The table comes from the local snapshot (the source has not answered yet).
pub const ORIGIN_SNAPSHOT: u8 = 1;
/// The table comes from the configuration source.
pub const ORIGIN_SOURCE: u8 = 2;

impl Shared {
    /// Shared state with an empty table.
    pub fn new(
        metrics: RouterMetrics,
        access_log: bool,
        not_found: StatusCode,
        max_idle: crate::pool::IdleLimits,
        body_idle: Duration,
        tunnel_idle: Duration,
    ) -> Shared {
        Shared {
            table: ArcSwap::from_pointee(Table::default()),
            unrouted: metrics.pool("-"),
            metrics,
            connected: AtomicBool::new(false),
            access_log,
            not_found,
            max_idle,
            body_idle,
            tunnel_idle,
            ids: RequestIds::new(),
            origin: std::sync::atomic::AtomicU8::new(ORIGIN_NONE),
        }
    }

    /// Records where the table in use came from ([`ORIGIN_SNAPSHOT`], [`ORIGIN_SOURCE`]).
    pub fn set_origin(&self, origin: u8) {
        self.origin.store(origin, Relaxed);
    }

    /// Where the table in use came from: `none`, `snapshot` or `source`.
    pub fn origin(&self) -> &'static str {
        match self.origin.load(Relaxed) {
            ORIGIN_NONE => "none",
            ORIGIN_SNAPSHOT => "snapshot",
            _ => "source",
        }
    }
}

/// Who is calling, on which listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The listener's port.
    pub port: u16,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client.
    pub peer: SocketAddr,
}

pub(crate) struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        RequestIds {
            prefix: rand::random::<u64>() & 0xffff_ffff,
            next: AtomicU64::new(0),
        }
    }
    fn next(&self) -> HeaderValue {
        let mut b = [0u8; 20];
        self.fill(&mut b);
        HeaderValue::from_bytes(&b).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }

    /// Writes the next id (20 lowercase hex digits) into `b`, without allocating.
    pub(crate) fn fill(&self, b: &mut [u8; 20]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Relaxed);
        for i in 0..8 {
            b[i] = HEX[((self.prefix >> (4 * (7 - i))) & 0xf) as usize];
        }
        for i in 0..12 {
            b[8 + i] = HEX[((n >> (4 * (11 - i))) & 0xf) as usize];
        }
    }
}

/// A request as the matchers see it.
pub struct View<'a> {
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: Headers<'a>,
}

/// The request headers, as hyper parsed them or as the fast path's raw parse.
enum Headers<'a> {
    Map(&'a HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

impl<'a> View<'a> {
    /// The view of `req`.
    pub fn of<B>(req: &'a Request<B>) -> View<'a> {
        View {
            host: request_host(req),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: Headers::Map(req.headers()),
        }
    }

    /// A view from parts (the trace endpoint).
    pub fn from_parts(
        host: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> View<'a> {
        View {
            host: strip_port(host),
            path,
            query,
            headers: Headers::Map(headers),
        }
    }

    /// A view of a raw HTTP/1.1 head (the fast path); `host` already without port.
    pub(crate) fn raw(
        host: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a [httparse::Header<'a>],
    ) -> View<'a> {
        View {
            host,
            path,
            query,
            headers: Headers::Raw(headers),
        }
    }
}

impl RequestView for View<'_> {
    fn host(&self) -> &str {
        self.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn header_is(&self, name: &str, value: &str) -> bool {
        match self.headers {
            Headers::Map(h) => h
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes()),
            Headers::Raw(h) => h
                .iter()
                .any(|x| x.name.eq_ignore_ascii_case(name) && x.value == value.as_bytes()),
        }
    }
    fn roll(&self) -> u32 {
        rand::random::<u32>() % 10_000
    }
}

/// The request's host without port: the URI authority (HTTP/2, absolute form) or the `Host` header.
pub fn request_host<B>(req: &Request<B>) -> &str {
    if let Some(h) = req.uri().host() {
        return h.trim_start_matches('[').trim_end_matches(']');
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(strip_port)
        .unwrap_or("")
}

pub(crate) fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

fn answer(status: StatusCode, code: &'static str, text: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(&X_ATLANTIS_ERROR, HeaderValue::from_static(code));
    r
}

// Header names used on every request, parsed once.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_ATLANTIS_ERROR: HeaderName = HeaderName::from_static("x-atlantis-error");
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those named by `Connection`.
/// Every `Connection` header counts; names the router sets or frames by (`Host`, `Content-Length`, the
/// forwarding headers) are never taken away this way.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    for name in &named {
        if !name.is_empty()
            && !matches!(
                name.as_str(),
                "keep-alive"
                    | "close"
                    | "host"
                    | "content-length"
                    | "x-forwarded-for"
                    | "x-forwarded-proto"
                    | "x-forwarded-host"
                    | "x-request-id"
            )
        {
            h.remove(name.as_str());
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

/// An upgrade request: HTTP/1.1, `Connection: upgrade` and `Upgrade`, and no body (a body announced
/// before the switch would hold the client's side of the tunnel until it arrived).
fn is_upgrade<B: hyper::body::Body>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.body().is_end_stream()
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Handles one request on a routed port.
pub async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
    hold: Arc<crate::listener::ConnHold>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        // RFC 9112 section 3.2: the router and the backend could each pick a different one.
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "more than one Host header\n",
        ));
    }
    let route = {
        let table = shared.table.load();
        table.route(conn.port, &View::of(&req), None)
    };
    let (pool, resp, backend) = match route {
        Route::Pool(pool) => {
            let (resp, backend) = Box::pin(forward(&shared, &pool, conn, req, start, hold)).await;
            pool.metrics
                .record(resp.status().as_u16(), start.elapsed().as_secs_f64());
            (Some(pool), resp, backend)
        }
        other => {
            let resp = match other {
                Route::NoPort | Route::NoMatch => {
                    answer(shared.not_found, "no_route", "no route\n")
                }
                Route::Missing(_) => answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "target_missing",
                    "route target missing\n",
                ),
                Route::TooDeep => answer(StatusCode::LOOP_DETECTED, "loop", "routing loop\n"),
                Route::Pool(_) => unreachable!("handled above"),
            };
            shared
                .unrouted
                .record(resp.status().as_u16(), start.elapsed().as_secs_f64());
            if shared.access_log {
                tracing::info!(target: "atlantis_router::access", port = conn.port, peer = %conn.peer,
                    status = resp.status().as_u16(), error = resp.headers().get(&X_ATLANTIS_ERROR).and_then(|v| v.to_str().ok()).unwrap_or(""),
                    "Request not routed.");
            }
            return Ok(resp);
        }
    };
    if shared.access_log {
        tracing::info!(target: "atlantis_router::access", port = conn.port, peer = %conn.peer,
            pool = pool.as_ref().map(|p| p.name.as_str()).unwrap_or("-"),
            backend = backend.as_ref().map(|b| b.name.as_str()).unwrap_or("-"),
            status = resp.status().as_u16(), ms = start.elapsed().as_secs_f64() * 1000.0,
            request_id = resp.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or(""),
            "Request routed.");
    }
    Ok(resp)
}

/// Rewrites the request for the backend: origin-form URI, HTTP/1.1, `Host` kept, forwarding headers.
fn prepare(
    req: &mut Request<Incoming>,
    conn: ConnInfo,
    ids: &RequestIds,
    upgrade: bool,
) -> HeaderValue {
    let host = req.uri().authority().map(|a| a.as_str().to_owned());
    let upgrade_hdr = if upgrade {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    if req.uri().authority().is_some() || req.uri().scheme().is_some() {
        // Absolute form (HTTP/2, or a proxy-style request): keep only the path and query.
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    strip_hop_by_hop(h);
    if let Some(up) = upgrade_hdr {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, up);
    }
    // The authority the request was routed by is the one the backend sees (RFC 9112 section 3.2.2,
    // RFC 9113 section 8.3.1): a `Host` header that disagrees with it is replaced.
    if let Some(v) = host.and_then(|a| HeaderValue::try_from(a).ok()) {
        h.insert(header::HOST, v);
    }
    let ip = conn.peer.ip().to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        h.insert(&X_FORWARDED_FOR, v);
    }
    h.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    if let Some(v) = h.get(header::HOST).cloned() {
        h.insert(&X_FORWARDED_HOST, v);
    }
    let id = match h.get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 128 => v.clone(),
        _ => ids.next(),
    };
    h.insert(&X_REQUEST_ID, id.clone());
    id
}

async fn forward(
    shared: &Shared,
    pool: &Arc<PoolState>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
    start: Instant,
    hold: Arc<crate::listener::ConnHold>,
) -> (Response<ProxyBody>, Option<Arc<BackendState>>) {
    let cfg = pool.config();
    let upgrade = is_upgrade(&req);
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    // HTTP/2 to the backend, except for upgrades (HTTP/1.1 only).
    let h2c = cfg.protocol == Protocol::H2c && !upgrade;
    let trailers = h2c && crate::h2c::wants_trailers(&req);
    let request_id = prepare(&mut req, conn, &shared.ids, upgrade);
    let mut req = req.map(Either::Left);
    // A request that must not be sent twice avoids connections idle long enough to be closing.
    let idempotent = matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let reuse = Reuse::new(start, cfg.keepalive_ms, idempotent);
    let deadline =
        tokio::time::Instant::from_std(start) + Duration::from_millis(cfg.request_timeout_ms);
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let mut tried: Vec<usize> = Vec::new();
    let mut stale_retries = 0;
    // The last connection attempt timed out: giving up answers 504, not 502.
    let mut timed_out = false;
    loop {
        let Some(backend) = pool.choose(&tried) else {
            return if timed_out && !tried.is_empty() {
                (timed_out_answer(), None)
            } else if tried.is_empty() {
                (
                    answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_backend",
                        "no healthy backend\n",
                    ),
                    None,
                )
            } else {
                (
                    answer(
                        StatusCode::BAD_GATEWAY,
                        "backend_refused",
                        "backend refused the connection\n",
                    ),
                    None,
                )
            };
        };
        let lease = Lease::new(backend.clone(), shared.max_idle, cfg.keepalive_ms);
        if h2c {
            if req.version() != Version::HTTP_2 {
                crate::h2c::to_h2(&mut req, trailers, &backend.name);
            }
            let outcome =
                crate::h2c::exchange(pool, &backend, req, deadline, connect_timeout, idempotent)
                    .await;
            let mut lease = lease;
            let resp = match outcome {
                crate::h2c::Outcome::Answer(resp, stream) => {
                    lease.set_stream(stream);
                    resp
                }
                crate::h2c::Outcome::Refused(back, why) => {
                    req = back;
                    tried.push(Arc::as_ptr(&backend) as usize);
                    timed_out = why == crate::pool::ConnectFailed::Timeout;
                    if tried.len() > cfg.retries as usize {
                        let resp = if timed_out {
                            timed_out_answer()
                        } else {
                            refused()
                        };
                        return (resp, Some(backend));
                    }
                    continue;
                }
                crate::h2c::Outcome::Timeout => return (timed_out_answer(), Some(backend)),
                crate::h2c::Outcome::Failed(err) => {
                    return (failed(pool, &backend, &err), Some(backend));
                }
            };
            return (respond(shared, resp, lease, request_id), Some(backend));
        }
        let mut lease = lease;
        let idle = if upgrade {
            None
        } else {
            checkout_ready(&backend, reuse).await
        };
        let (mut up, reused) = match idle {
            Some(up) => (up, true),
            None => {
                let connect = Upstream::connect(&backend, upgrade);
                match pool
                    .connect_within(&backend, connect_timeout, connect)
                    .await
                {
                    Ok(up) => (up, false),
                    Err(failed) => {
                        tried.push(Arc::as_ptr(&backend) as usize);
                        timed_out = failed == crate::pool::ConnectFailed::Timeout;
                        if tried.len() > cfg.retries as usize {
                            let resp = if timed_out {
                                timed_out_answer()
                            } else {
                                refused()
                            };
                            return (resp, Some(backend));
                        }
                        continue;
                    }
                }
            }
        };
        // A bodiless idempotent request on a reused connection is kept, to be sent again should the
        // backend close that connection without answering (it was closing as the request arrived).
        let again = (reused && idempotent && stale_retries < 3 && req.body().is_end_stream())
            .then(|| bodiless_copy(&req));
        let sent = tokio::time::timeout_at(deadline, up.send(req)).await;
        let mut resp = match sent {
            Err(_) => return (timed_out_answer(), Some(backend)),
            Ok(Ok(resp)) => resp,
            Ok(Err(mut e)) => match e.take_message() {
                // The request never left: a reused connection the backend had closed. Try again.
                Some(back) if reused && stale_retries < 3 => {
                    stale_retries += 1;
                    req = back;
                    continue;
                }
                _ => {
                    let err = e.into_error();
                    if let Some(copy) = again
                        && closed_unanswered(&err)
                    {
                        tracing::debug!(pool = %pool.name, backend = %backend.name, error = %err, "Reused connection closed unanswered; sending again.");
                        stale_retries += 1;
                        req = copy;
                        continue;
                    }
                    return (failed(pool, &backend, &err), Some(backend));
                }
            },
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            backend.served.fetch_add(1, Relaxed);
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let idle = shared.tunnel_idle;
            let websocket = resp
                .headers()
                .get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            tokio::spawn(async move {
                // Counted as a tunnel (and in flight) until it ends; closed at the backend's drain
                // deadline once it left its pool (`crate::drain`).
                let _tunnel = lease.backend().tunnel();
                let close = lease.backend().closing_signal();
                let _lease = lease;
                // The tunnel keeps the client connection's slot, and ends when its port closes.
                let port = hold.port.clone();
                let _hold = hold;
                // Both sides switch at once normally; a client that never completes its side is dropped.
                let both = tokio::time::timeout(idle.min(Duration::from_secs(30)), async {
                    tokio::try_join!(client_upgrade, backend_upgrade)
                });
                let Ok(both) = both.await else {
                    tracing::debug!("Upgrade not completed in time.");
                    return;
                };
                match both {
                    Ok((c, b)) => {
                        let tunnel = crate::tunnel::run(
                            TokioIo::new(c),
                            TokioIo::new(b),
                            idle,
                            close,
                            websocket,
                        );
                        tokio::select! {
                            r = tunnel => if let Err(e) = r {
                                tracing::debug!(error = %e, "Tunnel ended.");
                            },
                            _ = port.cancelled() => tracing::debug!("Tunnel closed with its port."),
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "Upgrade failed."),
                }
            });
            let (parts, _) = resp.into_parts();
            return (
                Response::from_parts(parts, ProxyBody::empty()),
                Some(backend),
            );
        }
        lease.set_conn(up);
        return (respond(shared, resp, lease, request_id), Some(backend));
    }
}

/// The backend's answer on its way to the client: hop-by-hop headers dropped, the request id set, the
/// body streamed under `lease`.
fn respond(
    shared: &Shared,
    resp: Response<Incoming>,
    lease: Lease,
    request_id: HeaderValue,
) -> Response<ProxyBody> {
    lease.backend().served.fetch_add(1, Relaxed);
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(&X_REQUEST_ID, request_id);
    Response::from_parts(parts, ProxyBody::streamed(body, lease, shared.body_idle))
}

fn refused() -> Response<ProxyBody> {
    answer(
        StatusCode::BAD_GATEWAY,
        "backend_refused",
        "backend refused the connection\n",
    )
}

fn timed_out_answer() -> Response<ProxyBody> {
    answer(
        StatusCode::GATEWAY_TIMEOUT,
        "backend_timeout",
        "backend timeout\n",
    )
}

fn failed(pool: &PoolState, backend: &BackendState, err: &hyper::Error) -> Response<ProxyBody> {
    tracing::warn!(pool = %pool.name, backend = %backend.name, error = %err, "Backend request failed.");
    backend.failures.fetch_add(1, Relaxed);
    answer(StatusCode::BAD_GATEWAY, "backend_error", "backend error\n")
}

/// A copy of a request without a body (method, target, version, headers).
pub(crate) fn bodiless_copy(req: &Request<UpBody>) -> Request<UpBody> {
    let mut r = Request::new(Either::Right(Empty::new()));
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// Whether a backend error means the connection ended before any answer: closed (EOF) mid-exchange,
/// reset, or a broken pipe.
fn closed_unanswered(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        source = e.source();
    }
    false
}

/// Takes an idle connection of this worker, within `reuse`'s limits, that is still open and ready for a
/// request.
async fn checkout_ready(b: &BackendState, reuse: Reuse) -> Option<Upstream> {
    while let Some(mut up) = b.checkout(reuse) {
        if tokio::time::timeout(Duration::from_secs(1), up.ready()).await == Ok(true) {
            return Some(up);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        let req = Request::get("http://Api.Example.com:81/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), "Api.Example.com");
        let req = Request::get("/x")
            .header("host", "a.example:9")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), "a.example");
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("x-keep", "y"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }
}
