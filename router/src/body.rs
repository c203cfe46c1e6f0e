//! The response body the router sends: a backend body streamed through (never buffered), or a short
//! router-made answer.
//!
//! A streamed body carries the request's accounting: when the backend body ends, the connection goes
//! back to the backend's idle list; when the body is dropped (finished or not), the backend's in-flight
//! count drops. A backend body that makes no progress for the body idle timeout ends with an error (hyper
//! then closes the client connection, since the answer cannot be completed) and its connection is
//! dropped, not reused. Past the drain deadline of a backend that left its pool (`crate::drain`), a
//! waiting body ends cleanly instead.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::idle::{IdleBound, stalled};
use crate::pool::BackendState;
use crate::upstream::Upstream;

/// The error of a response body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The router's response body.
pub struct ProxyBody {
    inner: Inner,
    /// The HTTP/2 stream this body answers, counted open until the body is done or dropped.
    _open: Option<crate::listener::OpenStream>,
}

enum Inner {
    Full(Option<Bytes>),
    Backend(Box<Streamed>),
}

struct Streamed {
    body: Incoming,
    lease: Lease,
    bound: IdleBound,
    /// Allocated the first time the backend keeps the body waiting.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The backend's drain deadline (`crate::drain`), watched once the body waits.
    close: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
}

/// A backend's in-flight slot and, once the exchange completes, its reusable connection.
pub struct Lease {
    backend: Arc<BackendState>,
    conn: Option<Upstream>,
    /// The stream claimed on a shared HTTP/2 connection, released with the lease.
    stream: Option<crate::h2c::Stream>,
    max_idle: crate::pool::IdleLimits,
    keepalive_ms: u64,
    complete: bool,
}

impl Lease {
    /// Takes an in-flight slot on `backend`; the connection is kept (at most `max_idle` per worker) for
    /// reuse within `keepalive_ms`.
    pub fn new(
        backend: Arc<BackendState>,
        max_idle: crate::pool::IdleLimits,
        keepalive_ms: u64,
    ) -> Lease {
        backend.in_flight.fetch_add(1, Relaxed);
        Lease {
            backend,
            conn: None,
            stream: None,
            max_idle,
            keepalive_ms,
            complete: false,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }

    /// Holds a stream of a shared HTTP/2 connection until the response body ends.
    pub fn set_stream(&mut self, s: crate::h2c::Stream) {
        self.stream = Some(s);
    }

    /// Hands over the connection to return to the idle list when the response body ends.
    pub fn set_conn(&mut self, conn: Upstream) {
        self.conn = Some(conn);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Relaxed);
        if self.complete
            && let Some(c) = self.conn.take()
        {
            self.backend.checkin(c, self.max_idle, self.keepalive_ms);
        }
    }
}

impl ProxyBody {
    /// A router-made body.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            inner: Inner::Full(Some(b.into())),
            _open: None,
        }
    }

    /// An empty body.
    pub fn empty() -> ProxyBody {
        ProxyBody {
            inner: Inner::Full(None),
            _open: None,
        }
    }

    /// A backend body, accounted for by `lease`, failing after `idle` without progress.
    pub fn streamed(body: Incoming, mut lease: Lease, idle: Duration) -> ProxyBody {
        if body.is_end_stream() {
            lease.complete = true;
        }
        ProxyBody {
            inner: Inner::Backend(Box::new(Streamed {
                body,
                lease,
                bound: IdleBound::new(idle),
                timer: None,
                close: None,
            })),
            _open: None,
        }
    }

    /// This body, counting `open` as an open stream of its connection while it lives.
    pub(crate) fn tracked(mut self, open: crate::listener::OpenStream) -> ProxyBody {
        self._open = Some(open);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Backend(s) => {
                // The backend connection is driven from here: it fills the body this task reads.
                if let Some(up) = &mut s.lease.conn {
                    up.poll_conn(cx);
                }
                let r = Pin::new(&mut s.body).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => s.lease.complete = true,
                    Poll::Ready(Some(Ok(_))) if s.body.is_end_stream() => s.lease.complete = true,
                    Poll::Ready(Some(Ok(_))) => s.bound.progress(),
                    Poll::Pending => {
                        // Past the drain deadline of a backend that left its pool, the body ends
                        // here: a chunked answer gets its last chunk (the connection is not reused).
                        // Watched once the backend left (a body waiting since before is woken by
                        // its backend or its idle bound).
                        if s.close.is_none() && s.lease.backend.draining() {
                            s.close = Some(Box::pin(s.lease.backend.closing_signal()));
                        }
                        if let Some(close) = &mut s.close
                            && close.as_mut().poll(cx).is_ready()
                        {
                            tracing::debug!(backend = %s.lease.backend.name, "Drain deadline: ending the streamed body.");
                            return Poll::Ready(None);
                        }
                        if s.bound.poll_stalled(&mut s.timer, cx).is_ready() {
                            tracing::warn!(backend = %s.lease.backend.name, "Backend stopped sending the response body.");
                            return Poll::Ready(Some(Err(stalled("backend body stalled").into())));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Err(_))) => {}
                }
                r.map_err(|e| -> BodyError { e.into() })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Backend(s) => s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Backend(s) => s.body.size_hint(),
        }
    }
}
