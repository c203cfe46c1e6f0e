//! Backend connections driven by the request's own task.
//!
//! A hyper client connection is a future that does the socket work. Instead of spawning it as a task of
//! its own (two tasks and a channel hop per request), the router polls it from the task that serves the
//! client: while waiting for the response head, then from the response body, then once more when the
//! connection is taken from the idle list. One task, no cross-task wake-ups on the hot path. Upgrade
//! requests (WebSocket) get a dedicated connection driven by a spawned task, which hands the socket over
//! after the backend's 101.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::pool::BackendState;

/// A request body sent to a backend: the client's, or none (a bodiless request sent again).
pub type UpBody = Either<Incoming, Empty<Bytes>>;

type ClientConn = http1::Connection<TokioIo<tokio::net::TcpStream>, UpBody>;

/// One HTTP/1.1 connection to a backend.
pub struct Upstream {
    sr: SendRequest<UpBody>,
    /// `None` once the connection ended, or when a spawned task drives it (upgrades).
    conn: Option<Pin<Box<ClientConn>>>,
    spawned: bool,
}

impl Upstream {
    /// Opens a connection; with `upgrade`, it is driven by a task of its own and supports upgrades.
    pub async fn connect(b: &BackendState, upgrade: bool) -> std::io::Result<Upstream> {
        let addr = b.socket_addr().await?;
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sr, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        if upgrade {
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            return Ok(Upstream {
                sr,
                conn: None,
                spawned: true,
            });
        }
        Ok(Upstream {
            sr,
            conn: Some(Box::pin(conn)),
            spawned: false,
        })
    }

    /// Drives the connection; false once it has ended.
    pub fn poll_conn(&mut self, cx: &mut Context<'_>) -> bool {
        if self.spawned {
            return !self.sr.is_closed();
        }
        match &mut self.conn {
            Some(c) => match c.as_mut().poll(cx) {
                Poll::Pending => true,
                Poll::Ready(_) => {
                    self.conn = None;
                    false
                }
            },
            None => false,
        }
    }

    /// Waits until a request can be sent; false if the connection is gone.
    pub async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            let alive = self.poll_conn(cx);
            match self.sr.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(true),
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Pending if alive => Poll::Pending,
                Poll::Pending => Poll::Ready(false),
            }
        })
        .await
    }

    /// Sends a request and waits for the response head, driving the connection meanwhile.
    pub async fn send(
        &mut self,
        req: http::Request<UpBody>,
    ) -> Result<http::Response<Incoming>, TrySendError<http::Request<UpBody>>> {
        let mut fut = std::pin::pin!(self.sr.try_send_request(req));
        let (conn, spawned) = (&mut self.conn, self.spawned);
        poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if !spawned
                && let Some(c) = conn
                && c.as_mut().poll(cx).is_ready()
            {
                *conn = None;
                // The connection ended; the response future now resolves with its error.
                return fut.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await
    }

    /// Whether the connection can carry another request now: open, and idle (a request body still
    /// being uploaded after the backend answered keeps it busy, and it must not wait in an idle list).
    pub fn reusable(&mut self) -> bool {
        if self.spawned || self.conn.is_none() || self.sr.is_closed() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.poll_conn(&mut cx);
        matches!(self.sr.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}
