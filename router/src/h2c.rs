//! HTTP/2 over cleartext TCP (prior knowledge) to the backends of `protocol: h2c` pools, such as gRPC
//! servers.
//!
//! Each worker keeps one multiplexed connection per backend, driven by a task of its own on that worker;
//! the worker's requests to that backend share it. A connection that ended, or that the backend shut
//! with GOAWAY, is replaced on the next request; a request the old connection gave back unsent goes on a
//! new one. Requests get an absolute URI (scheme `http`, authority from the `Host` header) so that the
//! backend sees `:scheme` and `:authority`, and `TE: trailers` is kept when the client sent it (gRPC
//! requires it). Response trailers pass through as body frames.

use std::time::Duration;

use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::pool::{BackendState, PoolState};
use crate::upstream::UpBody;

/// The sending half of a backend HTTP/2 connection (cheap to clone).
pub type Sender = http2::SendRequest<UpBody>;

/// Opens a connection and spawns the task that drives it.
pub async fn connect(b: &BackendState) -> std::io::Result<Sender> {
    let addr = b.socket_addr().await?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sr, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Pings find a backend that vanished without closing the connection.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let name = b.name.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(backend = %name, error = %e, "HTTP/2 backend connection ended.");
        }
    });
    Ok(sr)
}

/// Whether a request asks for trailers (`TE: trailers`), read before the hop-by-hop headers go.
pub fn wants_trailers<B>(req: &Request<B>) -> bool {
    req.headers().get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
    })
}

/// Turns a prepared request (origin-form target, `Host` header) into an HTTP/2 one.
pub fn to_h2(req: &mut Request<UpBody>, trailers: bool, fallback_authority: &str) {
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_owned))
        .unwrap_or_else(|| fallback_authority.to_owned());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let built = http::Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path)
        .build();
    if let Ok(uri) = built {
        *req.uri_mut() = uri;
    } else if let Ok(v) = HeaderValue::try_from(authority) {
        // An authority the URI refuses stays a Host header.
        req.headers_mut().insert(header::HOST, v);
    }
    *req.version_mut() = Version::HTTP_2;
    if trailers {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// How an exchange with one backend ended.
pub enum Outcome {
    /// The response head arrived.
    Answer(Response<Incoming>),
    /// No connection could be opened; the request comes back for another backend.
    Refused(Request<UpBody>),
    /// The backend failed the request.
    Failed(hyper::Error),
    /// The deadline passed before the response head.
    Timeout,
}

/// A worker's shared connection to one backend. Requests that find none wait on the lock while one of
/// them connects; when that fails, they are refused at once (for another backend) rather than trying
/// again one after another.
#[derive(Default)]
pub struct Slot {
    sender: Option<Sender>,
    failed_at: Option<tokio::time::Instant>,
}

/// One slot per worker.
pub type Slots = Box<[tokio::sync::Mutex<Slot>]>;

/// Empty slots for every worker.
pub fn slots() -> Slots {
    (0..crate::workers::slots())
        .map(|_| tokio::sync::Mutex::new(Slot::default()))
        .collect()
}

/// Drops the cached connections (each closes once its last request is done).
pub fn clear(slots: &Slots) {
    for s in slots.iter() {
        if let Ok(mut g) = s.try_lock() {
            g.sender = None;
        }
    }
}

/// This worker's open connection to `b`, opened if needed.
async fn sender(pool: &PoolState, b: &BackendState, connect_timeout: Duration) -> Option<Sender> {
    let mut slot = b.h2_slot().lock().await;
    if let Some(s) = slot.sender.as_ref().filter(|s| !s.is_closed()) {
        return Some(s.clone());
    }
    if slot
        .failed_at
        .is_some_and(|t| t.elapsed() < connect_timeout.min(Duration::from_secs(1)))
    {
        return None;
    }
    let opened = pool.connect_within(b, connect_timeout, connect(b)).await;
    match &opened {
        Some(s) if !b.removed() => slot.sender = Some(s.clone()),
        Some(_) => {}
        None => slot.failed_at = Some(tokio::time::Instant::now()),
    }
    opened
}

/// Forgets this worker's connection to `b` (it failed a request); requests on it finish.
async fn forget(b: &BackendState) {
    b.h2_slot().lock().await.sender = None;
}

/// Sends `req` to `b` on this worker's shared connection (opened if needed, within `connect_timeout`)
/// and waits, until `deadline`, for the response head.
pub async fn exchange(
    pool: &PoolState,
    b: &BackendState,
    mut req: Request<UpBody>,
    deadline: tokio::time::Instant,
    connect_timeout: Duration,
) -> Outcome {
    // A cached connection can turn out closed; its unsent request then goes on a new one.
    for _ in 0..3 {
        let Some(mut sr) = sender(pool, b, connect_timeout).await else {
            return Outcome::Refused(req);
        };
        match tokio::time::timeout_at(deadline, sr.ready()).await {
            Err(_) => return Outcome::Timeout,
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The connection is gone; the request was not handed over.
                forget(b).await;
                continue;
            }
        }
        match tokio::time::timeout_at(deadline, sr.try_send_request(req)).await {
            Err(_) => return Outcome::Timeout,
            Ok(Ok(resp)) => return Outcome::Answer(resp),
            Ok(Err(mut e)) => {
                forget(b).await;
                match e.take_message() {
                    Some(back) => req = back,
                    None => return Outcome::Failed(e.into_error()),
                }
            }
        }
    }
    Outcome::Refused(req)
}
