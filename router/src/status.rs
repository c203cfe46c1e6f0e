//! The status listener: `/healthz`, `/statusz.json`, `/statusz`, `/metrics` and `/trace`.
//!
//! - `/healthz`: 200 with `Server-Status: OK`, or `DEGRADED` while the configuration source is unreachable
//!   (the router keeps serving its last table, or its local snapshot, meanwhile); 503 `CRITICAL` while
//!   it has no configuration at all (nothing read from the source, no usable snapshot).
//! - `/statusz.json`: the table generation, listeners, invalid nodes, and per backend its health, in-flight
//!   and served counts, and the time left in its slow start; `ack` is what the router reports to the
//!   manager (the configuration generation it serves, backends still draining). `/statusz` is the same as text.
//! - `/metrics`: Prometheus text.
//! - `/trace?port=P&host=H&path=/p&query=q&header=Name:value`: how that request walks the rules.
//!
//! With a status token (`status_token_file`, required when the listener is not on loopback) every path
//! but `/healthz` needs `Authorization: Bearer <token>`, else 401: the pages name backends, rules and
//! traffic, which a client of the routed ports must not learn.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::{Shared, View};
use crate::table::{Route, Step};

/// What the status pages show beyond the shared state.
pub struct StatusState {
    /// Shared router state.
    pub shared: Arc<Shared>,
    /// Ports that could not be opened.
    pub failed: Arc<parking_lot::Mutex<std::collections::BTreeMap<u16, String>>>,
    /// SHA-256 of the status token, when one is required.
    pub token: Option<[u8; 32]>,
    /// What the router reports to the manager (generation served, draining backends).
    pub acks: tokio::sync::watch::Receiver<atlantis_common::routing::RouterAck>,
}

/// The digest [`StatusState::token`] holds.
pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Whether the request carries the token. Digests of equal length are compared without an early
/// exit, so the time taken says nothing about how much of a guess was right.
fn authorized(want: &[u8; 32], headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let got = token_digest(given.trim());
    got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Serves the status listener until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<StatusState>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(v) => v, Err(_) => { tokio::time::sleep(std::time::Duration::from_millis(20)).await; continue } },
            _ = shutdown.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn handle(state: &StatusState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    let shared = &state.shared;
    if req.uri().path() != "/healthz"
        && let Some(want) = &state.token
        && !authorized(want, req.headers())
    {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "this status page needs Authorization: Bearer <status token>\n",
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    match req.uri().path() {
        "/healthz" => {
            let ok = shared.connected.load(Relaxed);
            let (status, s, text) = match (shared.origin(), ok) {
                // Nothing to serve: no configuration was read, from the source or a snapshot.
                ("none", _) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "CRITICAL",
                    "CRITICAL: no configuration yet (configuration source unreachable, no snapshot)\n",
                ),
                (_, true) => (StatusCode::OK, "OK", "OK\n"),
                ("snapshot", false) => (
                    StatusCode::OK,
                    "DEGRADED",
                    "DEGRADED: configuration source unreachable, serving the local snapshot\n",
                ),
                (_, false) => (
                    StatusCode::OK,
                    "DEGRADED",
                    "DEGRADED: configuration source unreachable, serving the last table\n",
                ),
            };
            let mut r = reply(status, "text/plain", text);
            r.headers_mut()
                .insert("server-status", HeaderValue::from_static(s));
            r
        }
        "/statusz.json" => reply(
            StatusCode::OK,
            "application/json",
            status_json(state).to_string(),
        ),
        "/statusz" => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            status_text(state),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            atlantis_common::telemetry::METRICS_CONTENT_TYPE,
            shared.metrics.registry.render(),
        ),
        "/trace" => trace(shared, req.uri().query().unwrap_or("")),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn status_json(state: &StatusState) -> serde_json::Value {
    let table = state.shared.table.load();
    let pools: serde_json::Map<String, serde_json::Value> = table
        .pools
        .iter()
        .map(|(name, p)| {
            let slow_start_ms = p.config().slow_start_ms;
            let backends: Vec<_> = p
                .backends()
                .iter()
                .map(|b| {
                    json!({
                        "backend": b.name, "health": b.health().as_str(), "in_flight": b.in_flight.load(Relaxed),
                        "served": b.served.load(Relaxed), "failures": b.failures.load(Relaxed), "idle_connections": b.idle_count(),
                        "slow_start_left_ms": b.slow_start_left_ms(slow_start_ms),
                    })
                })
                .collect();
            (name.clone(), json!({ "config": *p.config(), "backends": backends }))
        })
        .collect();
    let mut ports: Vec<_> = table.ports.values().collect();
    ports.sort_by_key(|p| p.port);
    let failed: std::collections::BTreeMap<String, String> = state
        .failed
        .lock()
        .iter()
        .map(|(p, e)| (p.to_string(), e.clone()))
        .collect();
    json!({
        "connected": state.shared.connected.load(Relaxed),
        "config_origin": state.shared.origin(),
        "generation": table.generation,
        "rules": table.rule_count,
        "compile_ms": table.compile_ms,
        "tries": table.tries.len(),
        "ports": ports,
        "listen_errors": failed,
        "invalid": table.errors,
        "pools": pools,
        "ack": *state.acks.borrow(),
    })
}

fn status_text(state: &StatusState) -> String {
    use std::fmt::Write as _;
    let table = state.shared.table.load();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "config source connected: {}",
        state.shared.connected.load(Relaxed)
    );
    let _ = writeln!(s, "configuration from: {}", state.shared.origin());
    let _ = writeln!(
        s,
        "table generation {}: {} ports, {} tries, {} rules",
        table.generation,
        table.ports.len(),
        table.tries.len(),
        table.rule_count
    );
    for e in &table.errors {
        let _ = writeln!(s, "invalid: {e}");
    }
    for (name, p) in &table.pools {
        let _ = writeln!(s, "pool {name}");
        for b in p.backends().iter() {
            let _ = writeln!(
                s,
                "  {:<24} {:<11} in_flight={} served={} failures={}",
                b.name,
                b.health().as_str(),
                b.in_flight.load(Relaxed),
                b.served.load(Relaxed),
                b.failures.load(Relaxed)
            );
        }
    }
    s
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len() + 1
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn trace(shared: &Shared, query: &str) -> Response<Full<Bytes>> {
    let (mut port, mut host, mut path, mut q) = (None, String::new(), "/".to_owned(), None);
    let mut headers = HeaderMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()).take(64) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v);
        match k {
            "port" => port = v.parse::<u16>().ok(),
            "host" => host = v,
            "path" => path = v,
            "query" => q = Some(v),
            "header" => {
                if let Some((n, hv)) = v.split_once(':')
                    && let (Ok(n), Ok(hv)) = (
                        HeaderName::try_from(n.trim()),
                        HeaderValue::try_from(hv.trim()),
                    )
                {
                    headers.append(n, hv);
                }
            }
            _ => {}
        }
    }
    let Some(port) = port else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "trace needs port=<number>, and host, path, query, header=Name:value\n",
        );
    };
    let table = shared.table.load();
    let view = View::from_parts(&host, &path, q.as_deref(), &headers);
    let mut steps: Vec<Step> = Vec::new();
    let result = match table.route(port, &view, Some(&mut steps)) {
        Route::Pool(p) => json!({"result": "pool", "pool": p.name}),
        Route::NoPort => json!({"result": "no_port"}),
        Route::NoMatch => json!({"result": "no_match"}),
        Route::Missing(n) => json!({"result": "missing", "target": n}),
        Route::TooDeep => json!({"result": "loop"}),
    };
    let body = json!({ "port": port, "host": host, "path": path, "query": q, "generation": table.generation, "steps": steps, "outcome": result });
    reply(StatusCode::OK, "application/json", body.to_string())
}

/// Binds the status listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
