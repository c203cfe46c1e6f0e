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
//!
//! Layout: this module reads request heads and decides who serves them; [`head`] parses and rewrites a
//! head, [`exchange`] talks to the backend (with retries), [`respond`] rewrites the answer and copies its
//! body, [`answer`] writes the router's own answers (with [`date`]), [`io`] bounds socket operations by
//! the body idle timeout, and [`wire`] holds byte-level helpers (chunked framing, the hand-over replay).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::idle::StallIo;
use crate::listener::{self, Protocols};
use crate::proxy::{ConnInfo, Shared};
use crate::table::Route;

mod answer;
mod date;
mod exchange;
mod head;
mod io;
mod respond;
mod wire;
use wire::Rewind;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_HEADERS: usize = 100;
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
    hold: Arc<listener::ConnHold>,
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
                // Writes to a client that stops reading fail after the body idle timeout.
                let idle = Duration::from_millis(limits.body_idle_timeout_ms);
                let io = Rewind {
                    pre,
                    inner: StallIo::new(client, idle),
                };
                listener::serve(io, h2, info, builder, shared.clone(), cancel, hold, limits).await;
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

/// Who serves what comes next on a connection.
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

/// One client connection on the fast path: its buffers and its timer (header read, request deadline,
/// then the body idle bound), reused from request to request.
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
                            self.refuse_framing(client).await;
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
}
