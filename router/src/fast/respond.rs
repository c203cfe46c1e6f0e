//! The backend's answer on the fast path: its head rewritten (hop-by-hop headers dropped, framing
//! checked), sent with the first body bytes in one write, then the rest of the body copied through a
//! bounded buffer, bounded in time by the body idle timeout.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::net::TcpStream;

use super::wire::{BadChunk, Chunked};
use super::{CHUNK, Conn, Head, MAX_HEADERS, io};
use crate::idle::IdleBound;
use crate::pool::{BackendState, PoolState};
use crate::proxy::Shared;

/// How the answer's body ends.
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

impl Conn<'_> {
    /// Rewrites the backend's response head, sends it with the first body bytes, then copies the body;
    /// the backend connection is kept for reuse within `keepalive_ms` if its exchange ended cleanly.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn respond(
        &mut self,
        client: &mut TcpStream,
        up: TcpStream,
        head: &Head,
        pool: &PoolState,
        backend: &Arc<BackendState>,
        shared: &Shared,
        keepalive_ms: u64,
    ) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        // The head is complete or refused (see `head_ended`): parsed here, once.
        let parsed = resp.parse(&self.rbuf);
        let resp_len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            _ => 0,
        };
        let code = resp.code.unwrap_or(502);
        let mut framing = if head.head_request || code == 204 || code == 304 {
            Framing::Empty
        } else {
            Framing::Close
        };
        let mut backend_keep = resp.version == Some(1);
        let mut length: Option<u64> = None;
        let mut bad = resp_len == 0 || (100..200).contains(&code);
        let mut conn_tokens: Vec<&str> = Vec::new();
        let mut te: &[u8] = b"chunked";
        let mut chunked_seen = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                let v = std::str::from_utf8(h.value).unwrap_or("");
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if t.eq_ignore_ascii_case("close") {
                        backend_keep = false;
                    } else if !HOP_BY_HOP.iter().any(|x| t.eq_ignore_ascii_case(x)) {
                        // Hop-by-hop names (`keep-alive`) are dropped anyway: no list, no allocation.
                        conn_tokens.push(t);
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") && !chunked_seen {
                    // Other codings before `chunked` (gzip) stay in the header the client gets.
                    chunked_seen = true;
                    te = h.value;
                    if !matches!(framing, Framing::Empty) {
                        framing = Framing::Chunked;
                    }
                } else {
                    bad = true;
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                // Digits only (no sign, no list); the client gets it rewritten in canonical form.
                let v = h.value.trim_ascii();
                let v = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .flatten();
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
        backend.served.fetch_add(1, Relaxed);
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
            // Framing headers are written below, never copied: a `Connection` token naming one
            // cannot take it away from the client.
            if HOP_BY_HOP.iter().any(|x| n.eq_ignore_ascii_case(x))
                || n.eq_ignore_ascii_case("x-request-id")
                || n.eq_ignore_ascii_case("content-length")
                || conn_tokens.iter().any(|t| n.eq_ignore_ascii_case(t))
            {
                continue;
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        match (&framing, length) {
            (Framing::Chunked, _) => {
                out.extend_from_slice(b"transfer-encoding: ");
                out.extend_from_slice(te);
                out.extend_from_slice(b"\r\n");
            }
            // A HEAD answer (or 304) tells the length the body would have.
            (Framing::Length(_) | Framing::Empty, Some(l)) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa_u64(l, &mut [0u8; 20]));
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(&head.out[head.rid.clone()]);
        out.extend_from_slice(match framing {
            Framing::Close => b"\r\nconnection: close\r\n\r\n".as_slice(),
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
        let mut body_ok = done.is_ok();
        let done = done.unwrap_or(false);
        // From here on, no progress for the body idle timeout either way closes both connections.
        let mut bound = IdleBound::new(Duration::from_millis(self.limits.body_idle_timeout_ms));
        if let Err(e) = io::write_all(client, out, &mut self.timer, &mut bound).await {
            tracing::debug!(pool = %pool.name, error = %e, "Client write failed.");
            return false;
        }
        let mut finished = done;
        // The backend left its pool: its drain deadline (`crate::drain`) is watched.
        let mut close = None;
        let mut closing = false;
        while !finished && body_ok {
            if closing {
                // Past the drain deadline: a chunked body ends between two chunks with a last chunk;
                // any other is cut (the connections close).
                if matches!(framing, Framing::Chunked) && chunks.between_chunks() {
                    out.clear();
                    out.extend_from_slice(b"0\r\n\r\n");
                    if io::write_all(client, out, &mut self.timer, &mut bound)
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    tracing::debug!(pool = %pool.name, backend = %backend.name, "Drain deadline: ended the streamed body.");
                    return client_keep;
                }
                if !matches!(framing, Framing::Chunked) {
                    return false;
                }
            }
            // `try_read`/`try_write` spend no scheduler budget: a body that never blocks yields here.
            tokio::task::coop::consume_budget().await;
            self.rbuf.clear();
            self.rbuf.reserve(CHUNK);
            if close.is_none() && !closing && backend.draining() {
                close = Some(Box::pin(backend.closing_signal()));
            }
            let read = io::read_buf(&up, &mut self.rbuf, &mut self.timer, &mut bound);
            let read = match close.as_mut() {
                None => read.await,
                Some(c) => tokio::select! {
                    biased;
                    _ = c.as_mut() => {
                        close = None;
                        closing = true;
                        continue;
                    }
                    r = read => r,
                },
            };
            match read {
                Ok(0) if matches!(framing, Framing::Close) => break,
                Ok(0) => {
                    body_ok = false;
                    break;
                }
                Err(e) => {
                    tracing::warn!(pool = %pool.name, backend = %backend.name, error = %e, "Backend response body failed.");
                    body_ok = false;
                    break;
                }
                Ok(_) => {}
            }
            out.clear();
            match copy_some(&framing, &mut chunks, &mut left, &mut self.rbuf, out) {
                Ok(f) => finished = f,
                Err(BadChunk) => {
                    tracing::warn!(pool = %pool.name, backend = %backend.name, "Backend sent a malformed chunked body; closing.");
                    body_ok = false;
                }
            }
            if let Err(e) = io::write_all(client, out, &mut self.timer, &mut bound).await {
                tracing::debug!(pool = %pool.name, error = %e, "Client write failed.");
                return false;
            }
        }
        if !body_ok {
            return false;
        }
        // Extra bytes after the response: the backend connection is not in a known state.
        if backend_keep && finished && self.rbuf.is_empty() {
            backend.checkin_raw(up, shared.max_idle, keepalive_ms);
        }
        client_keep
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

/// Moves body bytes from `src` to `out` as the framing allows; true when the body is complete. Bytes
/// past the body's end stay in `src`. A malformed chunked body is an error (nothing more is copied).
fn copy_some(
    framing: &Framing,
    chunks: &mut Chunked,
    left: &mut u64,
    src: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<bool, BadChunk> {
    Ok(match framing {
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
            let (n, done) = chunks.feed(src)?;
            out.extend_from_slice(&src[..n]);
            src.advance(n);
            done
        }
    })
}

/// `v` in decimal, written into `buf`.
fn itoa_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}
