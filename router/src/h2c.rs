//! HTTP/2 over cleartext TCP (prior knowledge) to the backends of `protocol: h2c` pools, such as gRPC
//! servers.
//!
//! Each worker keeps multiplexed connections per backend, each driven by a task of its own on that
//! worker; the worker's requests to that backend share them, a new one opening beside when every one
//! carries [`STREAMS_PER_CONN`] streams. A connection that ended, or that the backend shut
//! with GOAWAY, is replaced on the next request; a request the old connection gave back unsent goes on a
//! new one. Requests get an absolute URI (scheme `http`, authority from the `Host` header) so that the
//! backend sees `:scheme` and `:authority`, and `TE: trailers` is kept when the client sent it (gRPC
//! requires it). Response trailers pass through as body frames.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::pool::{BackendState, ConnectFailed, PoolState};
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
        // Pings find a backend that vanished without closing the connection, idle or not.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
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
    // A Host the URI refuses (`a b`) is not the backend's fault: its own name stands in.
    let uri = built.or_else(|_| {
        http::Uri::builder()
            .scheme("http")
            .authority(fallback_authority)
            .path_and_query(path)
            .build()
    });
    if let Ok(uri) = uri {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
    if trailers {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// How an exchange with one backend ended.
pub enum Outcome {
    /// The response head arrived; the stream claim goes with the body.
    Answer(Response<Incoming>, Stream),
    /// No connection could be opened (refused, or not answered in time); the request comes back for
    /// another backend.
    Refused(Request<UpBody>, ConnectFailed),
    /// The backend failed the request.
    Failed(hyper::Error),
    /// The deadline passed before the response head.
    Timeout,
}

/// Streams a connection carries before the next request opens another connection beside it: below
/// common server limits (Go 250, nginx 128), so that long-lived streams (gRPC) do not queue others
/// behind the backend's `MAX_CONCURRENT_STREAMS`.
pub const STREAMS_PER_CONN: usize = 100;
/// The most connections per backend and worker.
pub const MAX_CONNS: usize = 8;

/// A worker's shared connections to one backend. Requests that find none (or only busy ones) wait on
/// the lock while one of them connects; when that fails, they are refused at once (for another
/// backend) rather than trying again one after another.
#[derive(Default)]
pub struct Slot {
    conns: Vec<Conn>,
    next_id: u64,
    failed_at: Option<(tokio::time::Instant, ConnectFailed)>,
}

struct Conn {
    id: u64,
    sender: Sender,
    streams: Arc<AtomicUsize>,
}

/// A request's claim on a stream of a shared connection, held until its response ends.
pub struct Stream(Arc<AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
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
            g.conns.clear();
        }
    }
}

/// The least busy open connection of this worker to `b`, or a new one when all carry
/// [`STREAMS_PER_CONN`] streams (up to [`MAX_CONNS`]); with its id and the request's stream claim.
async fn sender(
    pool: &PoolState,
    b: &BackendState,
    connect_timeout: Duration,
) -> Result<(u64, Sender, Stream), ConnectFailed> {
    let mut slot = b.h2_slot().lock().await;
    slot.conns.retain(|c| !c.sender.is_closed());
    let least = slot
        .conns
        .iter()
        .min_by_key(|c| c.streams.load(Relaxed))
        .filter(|c| c.streams.load(Relaxed) < STREAMS_PER_CONN || slot.conns.len() >= MAX_CONNS);
    let claim = |c: &Conn| {
        c.streams.fetch_add(1, Relaxed);
        Some((c.id, c.sender.clone(), Stream(c.streams.clone())))
    };
    if let Some(c) = least {
        return claim(c).ok_or(ConnectFailed::Refused);
    }
    let failed_recently = slot
        .failed_at
        .filter(|(t, _)| t.elapsed() < connect_timeout.min(Duration::from_secs(1)))
        .map(|(_, why)| why);
    let opened = match failed_recently {
        Some(why) => Err(why),
        None => pool.connect_within(b, connect_timeout, connect(b)).await,
    };
    let sender = match opened {
        Ok(s) => s,
        Err(why) => {
            if failed_recently.is_none() {
                slot.failed_at = Some((tokio::time::Instant::now(), why));
            }
            // All connections busy and no new one: queue on the least busy rather than fail.
            return slot
                .conns
                .iter()
                .min_by_key(|c| c.streams.load(Relaxed))
                .and_then(claim)
                .ok_or(why);
        }
    };
    slot.next_id += 1;
    let conn = Conn {
        id: slot.next_id,
        sender,
        streams: Arc::new(AtomicUsize::new(0)),
    };
    let got = claim(&conn);
    if !b.removed() {
        slot.conns.push(conn);
    }
    got.ok_or(ConnectFailed::Refused)
}

/// Forgets connection `id` of this worker to `b` (it failed a request); its requests finish.
async fn forget(b: &BackendState, id: u64) {
    b.h2_slot().lock().await.conns.retain(|c| c.id != id);
}

/// Sends `req` to `b` on one of this worker's shared connections (opened if needed, within
/// `connect_timeout`) and waits, until `deadline`, for the response head; `idempotent`: the request may be
/// sent twice. The stream claim of an answer
/// is to be held until the response body ends.
pub async fn exchange(
    pool: &PoolState,
    b: &BackendState,
    mut req: Request<UpBody>,
    deadline: tokio::time::Instant,
    connect_timeout: Duration,
    idempotent: bool,
) -> Outcome {
    // A cached connection can turn out closed; its unsent request then goes on a new one. So does a
    // bodiless request whose stream the backend refused (REFUSED_STREAM, or above a GOAWAY's last
    // stream): HTTP/2 guarantees it was not processed.
    let mut again = req
        .body()
        .is_end_stream()
        .then(|| crate::proxy::bodiless_copy(&req));
    for _ in 0..3 {
        // Waiting for another request's connect counts against this request's deadline too.
        let got = tokio::time::timeout_at(deadline, sender(pool, b, connect_timeout)).await;
        let Ok(got) = got else {
            return Outcome::Timeout;
        };
        let (id, mut sr, stream) = match got {
            Ok(v) => v,
            Err(why) => return Outcome::Refused(req, why),
        };
        match tokio::time::timeout_at(deadline, sr.ready()).await {
            Err(_) => return Outcome::Timeout,
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The connection is gone; the request was not handed over.
                forget(b, id).await;
                continue;
            }
        }
        match tokio::time::timeout_at(deadline, sr.try_send_request(req)).await {
            Err(_) => return Outcome::Timeout,
            Ok(Ok(resp)) => return Outcome::Answer(resp, stream),
            Ok(Err(mut e)) => {
                forget(b, id).await;
                match (e.take_message(), again.take()) {
                    (Some(back), copy) => {
                        req = back;
                        again = copy;
                    }
                    (None, Some(copy)) if unprocessed(e.error(), idempotent) => {
                        tracing::debug!(backend = %b.name, "Stream refused by the backend; sending again.");
                        again = Some(crate::proxy::bodiless_copy(&copy));
                        req = copy;
                    }
                    (None, _) => return Outcome::Failed(e.into_error()),
                }
            }
        }
    }
    Outcome::Refused(req, ConnectFailed::Refused)
}

/// Whether the backend left the stream unprocessed: refused it (REFUSED_STREAM, RFC 9113 section
/// 8.7), or, for a request that may be sent twice, dropped it with a GOAWAY (streams above the GOAWAY's
/// last stream id were not processed, but the error does not tell those from others cut by the close).
fn unprocessed(err: &hyper::Error, idempotent: bool) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (idempotent && h2.is_go_away() && h2.is_remote());
        }
        source = e.source();
    }
    false
}
