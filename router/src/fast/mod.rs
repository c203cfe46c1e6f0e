//! The HTTP/1.1 fast path for plain connections.
//!
//! The common exchange (an HTTP/1.1 request in origin form with no body or a `Content-Length` body, none of
//! the hop-by-hop headers, answered with a `Content-Length`, chunked or empty body) is handled here on raw
//! sockets: the request head is parsed with `httparse`, routed with the compiled table, rewritten (only
//! the forwarding headers) and written to a pooled backend connection in one write; the response head is
//! parsed, its hop-by-hop headers dropped, and written with the first body bytes in one write; the rest of
//! each body is copied through a bounded buffer.
//!
//! Anything else (the h2c preface, `Upgrade`, `Connection`, `Transfer-Encoding`, `Expect`, duplicate or
//! odd framing headers, an absolute-form target, HTTP/1.0, a malformed or oversized head) hands the whole
//! connection to hyper with the bytes already read replayed in front ([`Rewind`]), so hyper answers it
//! exactly as before (400, 431, h2c, upgrades...). Requests already answered here are complete by then.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::listener::{self, Protocols};
use crate::pool::{BackendState, PoolState};
use crate::proxy::{ConnInfo, Shared, View, strip_port};
use crate::table::Route;

mod wire;
use wire::{Chunked, Rewind};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_HEADERS: usize = 100;
const BAD_FRAMING: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
    content-length: 42\r\nconnection: close\r\n\r\nboth Content-Length and Transfer-Encoding\n";
/// Body bytes copied per read.
const CHUNK: usize = 16 * 1024;
/// Largest request body the fast path forwards (it sends the body before reading the answer).
const MAX_FAST_BODY: u64 = 64 * 1024;
/// Largest backend response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Serves a plain connection: the fast path while requests are simple, then hyper.
pub(crate) async fn serve(
    mut client: TcpStream,
    info: ConnInfo,
    builder: Arc<Protocols>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    limits: &Limits,
) {
    let mut c = Conn {
        buf: BytesMut::with_capacity(8 * 1024),
        rbuf: BytesMut::with_capacity(8 * 1024),
        out: Vec::with_capacity(1024),
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        info,
        peer_ip: info.peer.ip().to_string(),
        shared: &shared,
        limits,
    };
    let cancelled = cancel.clone().cancelled_owned();
    tokio::pin!(cancelled);
    let mut first = true;
    loop {
        match c.read_head(&mut client, first, cancelled.as_mut()).await {
            Next::Close => return,
            Next::Hyper { h2 } => {
                let pre = std::mem::take(&mut c.buf).freeze();
                let io = Rewind { pre, inner: client };
                listener::serve(io, h2, info, builder, shared.clone(), cancel, limits).await;
                return;
            }
            Next::Request(req) => {
                first = false;
                if !c.exchange(&mut client, req).await {
                    return;
                }
            }
        }
    }
}

enum Next {
    Close,
    Hyper { h2: bool },
    Request(Head),
}

/// What the fast path needs of a parsed request head (the head's bytes are gone from the buffer).
struct Head {
    route: Route,
    /// The request head to send to the backend, and the body bytes that were already buffered.
    out: Vec<u8>,
    /// Body bytes still to come from the client.
    body_left: u64,
    head_request: bool,
    /// GET, HEAD or OPTIONS: may be sent again when a reused connection turns out closed.
    idempotent: bool,
    start: Instant,
    /// Where the request id is in `out`.
    rid: std::ops::Range<usize>,
}

enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

struct Conn<'a> {
    /// Client bytes read and not yet used.
    buf: BytesMut,
    /// Backend bytes read and not yet sent.
    rbuf: BytesMut,
    out: Vec<u8>,
    timer: Pin<Box<tokio::time::Sleep>>,
    info: ConnInfo,
    /// The client's address as text (for `X-Forwarded-For`).
    peer_ip: String,
    shared: &'a Arc<Shared>,
    limits: &'a Limits,
}

impl Conn<'_> {
    /// Reads the next request head (bounded by the header-read timeout, which also closes idle
    /// connections) and decides who serves it.
    async fn read_head(
        &mut self,
        client: &mut TcpStream,
        first: bool,
        mut cancelled: Pin<&mut tokio_util::sync::WaitForCancellationFutureOwned>,
    ) -> Next {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.limits.header_read_timeout_ms);
        self.timer.as_mut().reset(deadline);
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(H2_PREFACE.len());
                if first && self.buf[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Next::Hyper { h2: true };
                    }
                } else {
                    match self.parse() {
                        Ok(Some(head)) => return Next::Request(head),
                        Ok(None) if self.buf.len() < self.limits.max_header_bytes => {}
                        _ if self.ambiguous_framing() => {
                            // Both Content-Length and Transfer-Encoding: refused, never guessed.
                            let _ = client.write_all(BAD_FRAMING).await;
                            return Next::Close;
                        }
                        _ => return Next::Hyper { h2: false },
                    }
                }
            }
            self.buf.reserve(4096);
            let idle = self.buf.is_empty();
            tokio::select! {
                biased;
                r = client.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => {}
                },
                _ = self.timer.as_mut() => return Next::Close,
                _ = cancelled.as_mut(), if idle => return Next::Close,
            }
        }
    }

    /// Whether the buffered head carries both `Content-Length` and `Transfer-Encoding` (a request
    /// smuggling vector: hyper would let Transfer-Encoding win; the router refuses it).
    fn ambiguous_framing(&self) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&self.buf), Ok(httparse::Status::Complete(_))) {
            return false;
        }
        let has = |n: &str| req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n));
        has("content-length") && has("transfer-encoding")
    }

    /// Parses a complete simple head: `Ok(None)` for more bytes, `Err` for hyper.
    fn parse(&mut self) -> Result<Option<Head>, ()> {
        let start = Instant::now();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&self.buf) {
            // A complete head over the limit is hyper's to refuse (431).
            Ok(httparse::Status::Complete(n)) if n <= self.limits.max_header_bytes => n,
            Ok(httparse::Status::Complete(_)) => return Err(()),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Err(());
        };
        if !matches!(
            method,
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH"
        ) || !target.starts_with('/')
            || !target.bytes().all(uri_byte)
        {
            return Err(());
        }
        let mut host = None;
        let mut length: Option<u64> = None;
        let (mut xff, mut rid) = (None, None);
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                if host.is_some() || !h.value.iter().all(|b| b.is_ascii_graphic()) {
                    return Err(());
                }
                host = Some(std::str::from_utf8(h.value).map_err(|_| ())?);
            } else if name.eq_ignore_ascii_case("content-length") {
                // One plain decimal value only: anything else (duplicates too) is hyper's to judge.
                if length.is_some()
                    || h.value.is_empty()
                    || h.value.len() > 18
                    || !h.value.iter().all(u8::is_ascii_digit)
                {
                    return Err(());
                }
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse().ok());
                // Larger bodies go to hyper, which streams both ways at once (an echoing backend
                // would otherwise block on a full socket).
                if length.is_none_or(|l| l > MAX_FAST_BODY) {
                    return Err(());
                }
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                if xff.is_some() || !h.value.iter().all(|b| *b == b' ' || b.is_ascii_graphic()) {
                    return Err(());
                }
                xff = Some(h.value);
            } else if name.eq_ignore_ascii_case("x-request-id") {
                if rid.is_some() {
                    return Err(());
                }
                rid = Some(h.value);
            } else if [
                "connection",
                "transfer-encoding",
                "upgrade",
                "expect",
                "te",
                "trailer",
                "keep-alive",
                "proxy-connection",
                "http2-settings",
            ]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
            {
                return Err(());
            }
        }
        let Some(host_hdr) = host else {
            return Err(());
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let route = {
            let table = self.shared.table.load();
            let view = View::raw(strip_port(host_hdr), path, query, req.headers);
            table.route(self.info.port, &view, None)
        };
        // The head for the backend: the request line and headers as they came, minus the forwarding
        // headers, which are set here.
        let mut out = Vec::with_capacity(len + 160);
        let mut rid_at = 0..0;
        if matches!(route, Route::Pool(_)) {
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(target.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
            for h in req.headers.iter() {
                if [
                    "x-forwarded-for",
                    "x-forwarded-proto",
                    "x-forwarded-host",
                    "x-request-id",
                ]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
                {
                    continue;
                }
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"x-forwarded-for: ");
            if let Some(prev) = xff {
                out.extend_from_slice(prev);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(self.peer_ip.as_bytes());
            out.extend_from_slice(if self.info.tls {
                b"\r\nx-forwarded-proto: https\r\nx-forwarded-host: "
            } else {
                b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: "
            });
            out.extend_from_slice(host_hdr.as_bytes());
            out.extend_from_slice(b"\r\nx-request-id: ");
            rid_at.start = out.len();
            match rid {
                Some(v) if !v.is_empty() && v.len() <= 128 => out.extend_from_slice(v),
                _ => {
                    let mut id = [0u8; 20];
                    self.shared.ids.fill(&mut id);
                    out.extend_from_slice(&id);
                }
            }
            rid_at.end = out.len();
            out.extend_from_slice(b"\r\n\r\n");
        }
        let head_request = method == "HEAD";
        let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS");
        self.buf.advance(len);
        let length = length.unwrap_or(0);
        let buffered = (self.buf.len() as u64).min(length);
        out.extend_from_slice(&self.buf[..buffered as usize]);
        self.buf.advance(buffered as usize);
        Ok(Some(Head {
            route,
            out,
            body_left: length - buffered,
            head_request,
            idempotent,
            start,
            rid: rid_at,
        }))
    }

    /// Answers one request; false when the client connection must close.
    async fn exchange(&mut self, client: &mut TcpStream, head: Head) -> bool {
        let pool = match &head.route {
            Route::Pool(p) => p.clone(),
            other => {
                let (status, code, text) = match other {
                    Route::NoPort | Route::NoMatch => {
                        (self.shared.not_found, "no_route", "no route\n")
                    }
                    Route::Missing(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "target_missing",
                        "route target missing\n",
                    ),
                    _ => (StatusCode::LOOP_DETECTED, "loop", "routing loop\n"),
                };
                self.shared
                    .unrouted
                    .record(status.as_u16(), head.start.elapsed().as_secs_f64());
                if self.shared.access_log {
                    tracing::info!(target: "atlantis_router::access", port = self.info.port, peer = %self.info.peer,
                        status = status.as_u16(), error = code, "Request not routed.");
                }
                return self.answer(client, &head, status, code, text).await;
            }
        };
        let shared = self.shared.clone();
        let cfg = pool.config();
        let deadline = tokio::time::Instant::from_std(head.start)
            + Duration::from_millis(cfg.request_timeout_ms);
        self.timer.as_mut().reset(deadline);
        let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
        // A request whose body is all in `out` can be sent again on another connection, if it is
        // idempotent (the backend may have seen it before closing).
        let retryable = head.body_left == 0 && head.idempotent;
        let mut tried: Vec<usize> = Vec::new();
        let mut stale = 0;
        loop {
            let Some(backend) = pool.choose(&tried) else {
                let (status, code, text) = if tried.is_empty() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_backend",
                        "no healthy backend\n",
                    )
                } else {
                    (
                        StatusCode::BAD_GATEWAY,
                        "backend_refused",
                        "backend refused the connection\n",
                    )
                };
                return self
                    .routed_answer(client, &head, &pool, None, status, code, text)
                    .await;
            };
            let _flight = InFlight::new(&backend);
            let pooled = if head.body_left == 0 {
                checkout_open(&backend)
            } else {
                None
            };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(s) => s,
                None => {
                    let connect = async {
                        let addr = backend.socket_addr().await?;
                        let s = TcpStream::connect(addr).await?;
                        s.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(s)
                    };
                    match tokio::time::timeout(connect_timeout, connect).await {
                        Ok(Ok(s)) => s,
                        r => {
                            let why = match r {
                                Ok(Err(e)) => e.to_string(),
                                _ => "connect timeout".into(),
                            };
                            tracing::warn!(pool = %pool.name, backend = %backend.name, error = %why, "Backend connection failed, trying another.");
                            pool.connect_failed(&backend);
                            tried.push(Arc::as_ptr(&backend) as usize);
                            if tried.len() > cfg.retries as usize {
                                return self
                                    .routed_answer(
                                        client,
                                        &head,
                                        &pool,
                                        Some(&backend),
                                        StatusCode::BAD_GATEWAY,
                                        "backend_refused",
                                        "backend refused the connection\n",
                                    )
                                    .await;
                            }
                            continue;
                        }
                    }
                }
            };
            // Send the head (and buffered body), stream the rest of the body, read the response head.
            self.rbuf.clear();
            let sent = if head.body_left == 0 {
                // Nothing to read from the client meanwhile: watch it, so a client that goes away
                // frees the backend at once (pipelined bytes stop the watch; they wait their turn).
                let send = send_and_read_head(None, &mut up, &head, &mut self.buf, &mut self.rbuf);
                tokio::pin!(send);
                let mut watch = true;
                let mut probe = [0u8; 1];
                loop {
                    tokio::select! {
                        biased;
                        r = send.as_mut() => break Some(r),
                        _ = self.timer.as_mut() => break None,
                        r = client.peek(&mut probe), if watch => match r {
                            Ok(0) | Err(_) => {
                                tracing::debug!(pool = %pool.name, backend = %backend.name, "Client left before the answer.");
                                return false;
                            }
                            Ok(_) => watch = false,
                        },
                    }
                }
            } else {
                let send =
                    send_and_read_head(Some(client), &mut up, &head, &mut self.buf, &mut self.rbuf);
                tokio::select! {
                    biased;
                    r = send => Some(r),
                    _ = self.timer.as_mut() => None,
                }
            };
            let resp_len = match sent {
                None => {
                    return self
                        .routed_answer(
                            client,
                            &head,
                            &pool,
                            Some(&backend),
                            StatusCode::GATEWAY_TIMEOUT,
                            "backend_timeout",
                            "backend timeout\n",
                        )
                        .await
                        && head.body_left == 0;
                }
                Some(Ok(n)) => n,
                Some(Err(SendError::Stale)) if reused && retryable && stale < 3 => {
                    stale += 1;
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(pool = %pool.name, backend = %backend.name, error = ?e, "Backend request failed.");
                    backend.failures.fetch_add(1, Relaxed);
                    let keep = self
                        .routed_answer(
                            client,
                            &head,
                            &pool,
                            Some(&backend),
                            StatusCode::BAD_GATEWAY,
                            "backend_error",
                            "backend error\n",
                        )
                        .await;
                    // A body not fully read leaves the client stream mid-request: close it.
                    return keep && head.body_left == 0 && !matches!(e, SendError::Client);
                }
            };
            backend.served.fetch_add(1, Relaxed);
            return self
                .respond(client, up, &head, &pool, &backend, resp_len, &shared)
                .await;
        }
    }

    /// Rewrites the backend's response head, sends it with the first body bytes, then copies the body.
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &mut self,
        client: &mut TcpStream,
        mut up: TcpStream,
        head: &Head,
        pool: &PoolState,
        backend: &Arc<BackendState>,
        resp_len: usize,
        shared: &Shared,
    ) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let _ = resp.parse(&self.rbuf[..resp_len]);
        let code = resp.code.unwrap_or(502);
        let mut framing = if head.head_request || code == 204 || code == 304 {
            Framing::Empty
        } else {
            Framing::Close
        };
        let mut backend_keep = resp.version == Some(1);
        let mut length: Option<u64> = None;
        let mut bad = (100..200).contains(&code);
        let mut conn_tokens: Vec<&str> = Vec::new();
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                let v = std::str::from_utf8(h.value).unwrap_or("");
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if t.eq_ignore_ascii_case("close") {
                        backend_keep = false;
                    }
                    conn_tokens.push(t);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    if !matches!(framing, Framing::Empty) {
                        framing = Framing::Chunked;
                    }
                } else {
                    bad = true;
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match (v, length) {
                    (None, _) => bad = true,
                    (Some(v), Some(l)) if v != l => bad = true,
                    (Some(v), _) => length = Some(v),
                }
            }
        }
        if let (Some(l), Framing::Close) = (length, &framing) {
            framing = Framing::Length(l);
        }
        if bad {
            tracing::warn!(pool = %pool.name, backend = %backend.name, status = code, "Backend answered an unusable response head.");
            backend.failures.fetch_add(1, Relaxed);
            return self
                .routed_answer(
                    client,
                    head,
                    pool,
                    Some(backend),
                    StatusCode::BAD_GATEWAY,
                    "backend_error",
                    "backend error\n",
                )
                .await
                && head.body_left == 0;
        }
        let client_keep = !matches!(framing, Framing::Close);
        if matches!(framing, Framing::Close) {
            backend_keep = false;
        }
        pool.metrics
            .record(code, head.start.elapsed().as_secs_f64());
        if shared.access_log {
            let rid = &head.out[head.rid.clone()];
            tracing::info!(target: "atlantis_router::access", port = self.info.port, peer = %self.info.peer,
                pool = pool.name.as_str(), backend = backend.name.as_str(), status = code,
                ms = head.start.elapsed().as_secs_f64() * 1000.0,
                request_id = std::str::from_utf8(rid).unwrap_or(""), "Request routed.");
        }
        // The head for the client.
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&[
            b'0' + (code / 100 % 10) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
            b' ',
        ]);
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in resp.headers.iter() {
            let n = h.name;
            if HOP_BY_HOP.iter().any(|x| n.eq_ignore_ascii_case(x))
                || n.eq_ignore_ascii_case("x-request-id")
                || conn_tokens.iter().any(|t| n.eq_ignore_ascii_case(t))
                || (matches!(framing, Framing::Chunked) && n.eq_ignore_ascii_case("content-length"))
            {
                continue;
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(&head.out[head.rid.clone()]);
        out.extend_from_slice(match framing {
            Framing::Chunked => b"\r\ntransfer-encoding: chunked\r\n\r\n".as_slice(),
            Framing::Close => b"\r\nconnection: close\r\n\r\n",
            _ => b"\r\n\r\n",
        });
        self.rbuf.advance(resp_len);
        // Body bytes already read go out with the head.
        let mut chunks = Chunked::default();
        let mut left = match framing {
            Framing::Empty => 0,
            Framing::Length(n) => n,
            Framing::Chunked | Framing::Close => u64::MAX,
        };
        let done = copy_some(&framing, &mut chunks, &mut left, &mut self.rbuf, out);
        if client.write_all(out).await.is_err() {
            return false;
        }
        let mut finished = done;
        let mut body_ok = true;
        while !finished {
            self.rbuf.clear();
            self.rbuf.reserve(CHUNK);
            match up.read_buf(&mut self.rbuf).await {
                Ok(0) if matches!(framing, Framing::Close) => break,
                Ok(0) | Err(_) => {
                    body_ok = false;
                    break;
                }
                Ok(_) => {}
            }
            out.clear();
            finished = copy_some(&framing, &mut chunks, &mut left, &mut self.rbuf, out);
            if client.write_all(out).await.is_err() {
                return false;
            }
        }
        if !body_ok {
            return false;
        }
        // Extra bytes after the response: the backend connection is not in a known state.
        if backend_keep && finished && self.rbuf.is_empty() {
            backend.checkin_raw(up, shared.max_idle);
        }
        client_keep
    }

    /// A router-made answer for a routed request (counted in the pool's metrics).
    #[allow(clippy::too_many_arguments)]
    async fn routed_answer(
        &mut self,
        client: &mut TcpStream,
        head: &Head,
        pool: &PoolState,
        backend: Option<&Arc<BackendState>>,
        status: StatusCode,
        code: &'static str,
        text: &'static str,
    ) -> bool {
        pool.metrics
            .record(status.as_u16(), head.start.elapsed().as_secs_f64());
        if self.shared.access_log {
            tracing::info!(target: "atlantis_router::access", port = self.info.port, peer = %self.info.peer,
                pool = pool.name.as_str(), backend = backend.map(|b| b.name.as_str()).unwrap_or("-"),
                status = status.as_u16(), ms = head.start.elapsed().as_secs_f64() * 1000.0,
                "Request routed.");
        }
        self.answer(client, head, status, code, text).await
    }

    /// Writes a router-made answer. The connection stays open unless the request body is unread.
    async fn answer(
        &mut self,
        client: &mut TcpStream,
        head: &Head,
        status: StatusCode,
        code: &'static str,
        text: &'static str,
    ) -> bool {
        let keep = head.body_left == 0;
        let out = &mut self.out;
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\nx-atlantis-error: {}\r\ncontent-length: {}\r\n{}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            code,
            text.len(),
            if keep { "" } else { "connection: close\r\n" },
        );
        if !head.head_request {
            out.extend_from_slice(text.as_bytes());
        }
        client.write_all(out).await.is_ok() && keep
    }
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// An idle connection of this worker that has not been seen closing (the readiness check costs no
/// system call unless the socket became readable, which an idle connection only does when closed).
fn checkout_open(b: &BackendState) -> Option<TcpStream> {
    while let Some(s) = b.checkout_raw() {
        if let Err(e) = s.try_read(&mut [0u8; 1])
            && e.kind() == std::io::ErrorKind::WouldBlock
        {
            return Some(s);
        }
    }
    None
}

/// Bytes allowed in a fast-path request target (RFC 3986 characters); others go to hyper.
fn uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

#[derive(Debug)]
enum SendError {
    /// A reused connection was closed before any response byte: the request can be sent again.
    Stale,
    /// The client went away while its body was streamed.
    Client,
    Backend(#[allow(dead_code)] std::io::Error),
    Malformed,
}

/// Sends the request to the backend and reads the response head into `rbuf`; returns the head length.
async fn send_and_read_head(
    mut client: Option<&mut TcpStream>,
    up: &mut TcpStream,
    head: &Head,
    cbuf: &mut BytesMut,
    rbuf: &mut BytesMut,
) -> Result<usize, SendError> {
    if up.write_all(&head.out).await.is_err() {
        return Err(SendError::Stale);
    }
    // Stream the rest of the request body.
    let mut left = head.body_left;
    while left > 0 {
        if cbuf.is_empty() {
            cbuf.reserve(CHUNK);
            let Some(client) = client.as_deref_mut() else {
                return Err(SendError::Client);
            };
            match client.read_buf(cbuf).await {
                Ok(0) | Err(_) => return Err(SendError::Client),
                Ok(_) => {}
            }
        }
        let n = (cbuf.len() as u64).min(left) as usize;
        up.write_all(&cbuf[..n]).await.map_err(SendError::Backend)?;
        cbuf.advance(n);
        left -= n as u64;
    }
    loop {
        rbuf.reserve(4096);
        match up.read_buf(rbuf).await {
            Ok(0) if rbuf.is_empty() => return Err(SendError::Stale),
            Err(e) if rbuf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(SendError::Stale);
            }
            Ok(0) => return Err(SendError::Malformed),
            Err(e) => return Err(SendError::Backend(e)),
            Ok(_) => {}
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(rbuf) {
            Ok(httparse::Status::Complete(n)) => return Ok(n),
            Ok(httparse::Status::Partial) if rbuf.len() < MAX_RESPONSE_HEAD => {}
            _ => return Err(SendError::Malformed),
        }
    }
}

/// Moves body bytes from `src` to `out` as the framing allows; true when the body is complete. Bytes
/// past the body's end stay in `src`.
fn copy_some(
    framing: &Framing,
    chunks: &mut Chunked,
    left: &mut u64,
    src: &mut BytesMut,
    out: &mut Vec<u8>,
) -> bool {
    match framing {
        Framing::Empty => true,
        Framing::Close => {
            out.extend_from_slice(src);
            src.clear();
            false
        }
        Framing::Length(_) => {
            let n = (src.len() as u64).min(*left) as usize;
            out.extend_from_slice(&src[..n]);
            src.advance(n);
            *left -= n as u64;
            *left == 0
        }
        Framing::Chunked => {
            let (n, done) = chunks.feed(src);
            out.extend_from_slice(&src[..n]);
            src.advance(n);
            done
        }
    }
}

/// Counts a request in the backend's in-flight load while it lives.
struct InFlight<'a>(&'a BackendState);

impl<'a> InFlight<'a> {
    fn new(b: &'a BackendState) -> InFlight<'a> {
        b.in_flight.fetch_add(1, Relaxed);
        InFlight(b)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}
