//! The backend exchange of the fast path: choosing a backend, reusing or opening a connection, sending
//! the request (retried on another connection when a reused one turns out closed and the request may be
//! sent again) and reading the response head.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{CHUNK, Conn, Head, MAX_HEADERS, MAX_RESPONSE_HEAD};
use crate::pool::{BackendState, ConnectFailed, Reuse};

/// The answer when the backend did not answer the connection in time.
const TIMEOUT: (StatusCode, &str, &str) = (
    StatusCode::GATEWAY_TIMEOUT,
    "backend_timeout",
    "backend timeout\n",
);
use crate::table::Route;

impl Conn<'_> {
    /// Answers one request; false when the client connection must close.
    pub(super) async fn exchange(&mut self, client: &mut TcpStream, head: Head) -> bool {
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
        // A request that must not be sent twice avoids connections idle long enough to be closing.
        let reuse = Reuse::new(head.start, cfg.keepalive_ms, head.idempotent);
        let mut tried: Vec<usize> = Vec::new();
        let mut stale = 0;
        // The last connection attempt timed out: giving up answers 504, not 502.
        let mut timed_out = false;
        loop {
            let Some(backend) = pool.choose(&tried) else {
                let (status, code, text) = if tried.is_empty() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_backend",
                        "no healthy backend\n",
                    )
                } else if timed_out {
                    TIMEOUT
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
                checkout_open(&backend, reuse)
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
                    match pool
                        .connect_within(&backend, connect_timeout, connect)
                        .await
                    {
                        Ok(s) => s,
                        Err(failed) => {
                            tried.push(Arc::as_ptr(&backend) as usize);
                            timed_out = failed == ConnectFailed::Timeout;
                            if tried.len() > cfg.retries as usize {
                                let (status, code, text) = if timed_out {
                                    TIMEOUT
                                } else {
                                    (
                                        StatusCode::BAD_GATEWAY,
                                        "backend_refused",
                                        "backend refused the connection\n",
                                    )
                                };
                                return self
                                    .routed_answer(
                                        client,
                                        &head,
                                        &pool,
                                        Some(&backend),
                                        status,
                                        code,
                                        text,
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
            match sent {
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
                Some(Ok(())) => {}
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
            return self
                .respond(
                    client,
                    up,
                    &head,
                    &pool,
                    &backend,
                    &shared,
                    cfg.keepalive_ms,
                )
                .await;
        }
    }
}

/// An idle connection of this worker, within `reuse`, that has not been seen closing (the readiness check costs no
/// system call unless the socket became readable, which an idle connection only does when closed).
fn checkout_open(b: &BackendState, reuse: Reuse) -> Option<TcpStream> {
    while let Some(s) = b.checkout_raw(reuse) {
        if let Err(e) = s.try_read(&mut [0u8; 1])
            && e.kind() == std::io::ErrorKind::WouldBlock
        {
            return Some(s);
        }
    }
    None
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

/// Sends the request to the backend and reads until `rbuf` holds the response head (or what ends one:
/// [`head_ended`]); the head is parsed once, by the caller.
async fn send_and_read_head(
    mut client: Option<&mut TcpStream>,
    up: &mut TcpStream,
    head: &Head,
    cbuf: &mut BytesMut,
    rbuf: &mut BytesMut,
) -> Result<(), SendError> {
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
        let before = rbuf.len();
        match up.read_buf(rbuf).await {
            Ok(0) if rbuf.is_empty() => return Err(SendError::Stale),
            Err(e) if rbuf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(SendError::Stale);
            }
            Ok(0) => return Err(SendError::Malformed),
            Err(e) => return Err(SendError::Backend(e)),
            Ok(_) => {}
        }
        // Interim answers (100 Continue, 103 Early Hints) are dropped, as hyper's client does.
        let mut from = before;
        while head_ended(rbuf, from) {
            match interim_len(rbuf) {
                None => return Ok(()),
                Some(n) => {
                    rbuf.advance(n);
                    from = 0;
                }
            }
        }
        if rbuf.len() >= MAX_RESPONSE_HEAD {
            return Err(SendError::Malformed);
        }
    }
}

/// Whether `b` holds a whole response head, or bytes the parser refuses (the caller's parse then
/// judges); `from` bytes were looked at before. The common head, CRLF line ends and a blank line, is
/// found with a vectorised search over the new bytes (a backend sending its head byte by byte costs no
/// rescans); the parser sees only heads without `\r\n\r\n` (partial, bare-LF line ends or garbage), and
/// only when a line ended or on the first look.
pub(super) fn head_ended(b: &[u8], from: usize) -> bool {
    // Empty lines before the status line are skipped by the parser; skip them here too.
    let start = b
        .iter()
        .position(|c| !matches!(c, b'\r' | b'\n'))
        .unwrap_or(b.len());
    let search = start.max(from.saturating_sub(3));
    if memchr::memmem::find(&b[search..], b"\r\n\r\n").is_some() {
        return true;
    }
    if from > 0 && memchr::memchr(b'\n', &b[from.min(b.len())..]).is_none() {
        return false;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    !matches!(
        httparse::Response::new(&mut headers).parse(b),
        Ok(httparse::Status::Partial)
    )
}

/// The length of a complete interim (1xx, not 101) response head at the start of `b`.
fn interim_len(b: &[u8]) -> Option<usize> {
    let start = b.iter().position(|c| !matches!(c, b'\r' | b'\n'))?;
    let line = b.get(start..start + 12)?;
    if !line.starts_with(b"HTTP/1.") || line[9] != b'1' || &line[9..12] == b"101" {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Response::new(&mut headers).parse(b) {
        Ok(httparse::Status::Complete(n)) => Some(n),
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::{head_ended, interim_len};

    #[test]
    fn response_head_end_is_found_without_a_full_parse() {
        let ended = |b: &[u8]| head_ended(b, 0);
        assert!(ended(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
        assert!(ended(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!ended(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"));
        assert!(!ended(b"HTTP/1.1 200 OK\r\nContent-Le"));
        assert!(!ended(b""));
        // Empty lines before the status line do not end the head.
        assert!(!ended(b"\r\n\r\nHTTP/1.1 200 OK\r\nA: b\r\n"));
        assert!(ended(b"\r\n\r\nHTTP/1.1 200 OK\r\nA: b\r\n\r\n"));
        // Bare LF line ends are the parser's to judge.
        assert!(ended(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"));
        assert!(!ended(b"HTTP/1.1 200 OK\nContent-Length: 2\n"));
        // Garbage is handed on at once, for the caller's parse to refuse.
        assert!(ended(b"SMTP ready\r\n"));
    }

    #[test]
    fn a_head_arriving_in_pieces_is_found_across_them() {
        let head = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        for split in 1..head.len() {
            // The end straddling the split is found when only the new bytes are searched.
            assert!(!head_ended(&head[..split], 0) || split == head.len());
            assert!(head_ended(head, split), "split {split}");
        }
        let lf = b"HTTP/1.1 200 OK\nA: b\n\n";
        assert!(head_ended(lf, lf.len() - 1));
    }

    #[test]
    fn interim_heads_are_measured() {
        let b = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(interim_len(b), Some(44));
        assert_eq!(interim_len(b"HTTP/1.1 100 Continue\r\n\r\n"), Some(25));
        assert_eq!(interim_len(b"HTTP/1.1 101 Switching\r\n\r\n"), None);
        assert_eq!(interim_len(b"HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(interim_len(b"HTTP/1.1 100 Continue\r\n"), None);
    }
}
