//! Active health checks: one task per backend, for as long as the backend is in its pool.
//!
//! Each check opens a fresh connection, in the pool's protocol. By default it is `GET <healthz_path>`:
//! the `Server-Status` header decides (OK, DEGRADED, CRITICAL, MAINTENANCE), a plain 200 is OK, anything
//! else is CRITICAL. Pools of gRPC servers (`healthz_grpc`) use the gRPC health protocol instead: a
//! `grpc.health.v1.Health/Check` call for the whole server, where SERVING is OK and anything else
//! (NOT_SERVING, an error status, a malformed answer) is CRITICAL. A timeout or network error is CRITICAL.

use std::sync::{Arc, Weak};
use std::time::Duration;

use atlantis_common::routing::{Health, Pool, Protocol};
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::pool::{BackendState, PoolState};

const USER_AGENT: &str = "atlantis-router-healthz";
/// The most of a gRPC health answer that is read.
const GRPC_ANSWER_MAX: usize = 1024;

/// Checks `b` every `healthz_every_ms` (or marks it OK when checks are off) until it leaves its pool.
pub async fn run(pool: Weak<PoolState>, b: Arc<BackendState>) {
    loop {
        let Some(cfg) = pool.upgrade().map(|p| p.config()) else {
            return;
        };
        b.expire_idle(cfg.keepalive_ms);
        let wait = if cfg.healthz_every_ms == 0 {
            b.set_health(Health::Ok);
            Duration::from_secs(1)
        } else {
            b.set_health(check_once(&b, &cfg).await);
            Duration::from_millis(cfg.healthz_every_ms)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = b.removed_signal() => return,
        }
    }
}

/// One check of `b` with the pool's settings, bounded by `healthz_timeout_ms`.
pub async fn check_once(b: &BackendState, cfg: &Pool) -> Health {
    let attempt = async {
        if cfg.healthz_grpc {
            let resp = send(b, cfg.protocol, grpc_request(b)).await?;
            grpc_health(resp).await
        } else {
            let req = Request::get(format!("http://{}{}", b.name, cfg.healthz_path))
                .header(header::USER_AGENT, USER_AGENT)
                .body(Full::default())
                .ok()?;
            Some(http_health(&send(b, cfg.protocol, req).await?))
        }
    };
    tokio::time::timeout(Duration::from_millis(cfg.healthz_timeout_ms), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(Health::Critical)
}

/// Sends `req` (absolute URI) on a fresh connection and returns the response head.
async fn send(
    b: &BackendState,
    proto: Protocol,
    mut req: Request<Full<Bytes>>,
) -> Option<Response<Incoming>> {
    let addr = b.socket_addr().await.ok()?;
    let stream = TokioIo::new(tokio::net::TcpStream::connect(addr).await.ok()?);
    if proto == Protocol::H2c {
        let (mut sr, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), stream)
            .await
            .ok()?;
        tokio::spawn(conn);
        sr.send_request(req).await.ok()
    } else {
        let (mut sr, conn) = hyper::client::conn::http1::handshake(stream).await.ok()?;
        tokio::spawn(conn);
        // HTTP/1.1 wants the origin form and a Host header.
        let path = req.uri().path_and_query()?.clone();
        *req.uri_mut() = http::Uri::from(path);
        let h = req.headers_mut();
        h.insert(header::HOST, b.name.parse().ok()?);
        h.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        sr.send_request(req).await.ok()
    }
}

fn http_health(resp: &Response<Incoming>) -> Health {
    let header = resp
        .headers()
        .get("server-status")
        .and_then(|v| v.to_str().ok())
        .and_then(Health::from_header);
    match (resp.status().as_u16(), header) {
        (_, Some(h)) => h,
        (200, None) => Health::Ok,
        _ => Health::Critical,
    }
}

/// `Check` with an empty `HealthCheckRequest` (service "": the whole server), in one gRPC frame.
fn grpc_request(b: &BackendState) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{}/grpc.health.v1.Health/Check", b.name)
        .parse()
        .unwrap_or_default();
    let h = req.headers_mut();
    h.insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
    h.insert(header::TE, "trailers".parse().unwrap());
    h.insert(header::USER_AGENT, USER_AGENT.parse().unwrap());
    req
}

/// OK when the call succeeded (`grpc-status: 0`) with `status: SERVING`.
async fn grpc_health(resp: Response<Incoming>) -> Option<Health> {
    let ok_status = |h: Option<&http::HeaderMap>| {
        h.and_then(|h| h.get("grpc-status"))
            .is_some_and(|v| v.as_bytes() == b"0")
    };
    if resp.status() != http::StatusCode::OK {
        return Some(Health::Critical);
    }
    let body = Limited::new(resp.into_body(), GRPC_ANSWER_MAX)
        .collect()
        .await
        .ok()?;
    if !ok_status(body.trailers()) {
        return Some(Health::Critical);
    }
    let serving = grpc_message(&body.to_bytes()).and_then(serving_status) == Some(1);
    Some(if serving {
        Health::Ok
    } else {
        Health::Critical
    })
}

/// The message of a single uncompressed gRPC frame.
fn grpc_message(frame: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = frame.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    (flag == 0 && rest.len() == 4 + len).then(|| &rest[4..])
}

/// Field 1 (`status`, a varint enum) of a `HealthCheckResponse`; 0 (UNKNOWN) when absent.
fn serving_status(mut msg: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match key & 7 {
            0 => {
                let v = varint(&mut msg)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let len = usize::try_from(varint(&mut msg)?).ok()?;
                msg = msg.get(len..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_answers_are_read() {
        // SERVING (1), NOT_SERVING (2), absent (UNKNOWN), with an unknown length-delimited field.
        let frame = |msg: &[u8]| {
            let mut f = vec![0];
            f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            f.extend_from_slice(msg);
            f
        };
        let status = |f: &[u8]| grpc_message(f).and_then(serving_status);
        assert_eq!(status(&frame(&[0x08, 0x01])), Some(1));
        assert_eq!(status(&frame(&[0x08, 0x02])), Some(2));
        assert_eq!(status(&frame(&[])), Some(0));
        assert_eq!(
            status(&frame(&[0x12, 0x02, b'h', b'i', 0x08, 0x01])),
            Some(1)
        );
        // Truncated, compressed, trailing bytes, bad varints, unknown wire types.
        assert_eq!(status(&[0, 0, 0, 0, 2, 0x08]), None);
        assert_eq!(status(&[1, 0, 0, 0, 2, 0x08, 0x01]), None);
        assert_eq!(status(&[0, 0, 0, 0, 2, 0x08, 0x01, 0]), None);
        assert_eq!(status(&frame(&[0x08, 0xff])), None);
        assert_eq!(status(&frame(&[0x0d, 0, 0, 0, 0])), None);
        assert_eq!(status(&[]), None);
    }
}
